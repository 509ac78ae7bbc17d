//! Usage alerts through the ledger: levels fired once per period as usage is recorded (units
//! and rated amount, one-shot and recurring), a new period starting over, deletion, refusals.

use super::*;
use crate::alert::{AlertOn, UsageAlert};

fn alert(
    id: &str,
    on: AlertOn,
    metric: Option<&str>,
    threshold: Decimal,
    every: Option<Decimal>,
) -> Command {
    Command::CreateUsageAlert(UsageAlert {
        alert_id: id.into(),
        subscription_id: "s1".into(),
        metric_code: metric.map(str::to_string),
        on,
        threshold,
        every,
    })
}

/// (alert id, level, value) of the alert events.
fn fired(events: &[Event]) -> Vec<(String, Decimal, Decimal)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::UsageAlertTriggered { alert_id, level, value, .. } => {
                Some((alert_id.clone(), *level, *value))
            }
            _ => None,
        })
        .collect()
}

/// Graduated calls (first 100 at 1.00 + 5 flat, then 0.50): units every 100 from 100, and an
/// amount alert at 150.00 once.
#[test]
fn alerts_fire_once_per_level_per_period() {
    let mut w = World::new(dec!(0));
    w.plan("metered", dec!(10.00), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
    w.start("metered", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let now = "2025-01-02T00:00:00Z";
    w.run(alert("units", AlertOn::Units, Some("calls"), dec!(100), Some(dec!(100))), now).unwrap();
    w.run(alert("spend", AlertOn::Amount, None, dec!(150), None), now).unwrap();
    let u = |w: &mut World, tx: &str, n: &str| {
        w.usage(tx, n, "2025-01-05T00:00:00Z", "2025-01-05T00:00:00Z").unwrap()
    };
    // (usage, what fires): 90 → nothing; +30 = 120 units, 115.00 → units 100;
    // +130 = 250 units, 180.00 → units 200 and spend 150; +10 = 260 → nothing new.
    type Fired = Vec<(&'static str, Decimal, Decimal)>;
    let cases: [(&str, Fired); 4] = [
        ("90", vec![]),
        ("30", vec![("units", dec!(100), dec!(120))]),
        ("130", vec![("units", dec!(200), dec!(250)), ("spend", dec!(150), dec!(180.00))]),
        ("10", vec![]),
    ];
    for (i, (n, want)) in cases.into_iter().enumerate() {
        let events = u(&mut w, &format!("t{i}"), n);
        let want: Vec<(String, Decimal, Decimal)> =
            want.into_iter().map(|(a, l, v)| (a.to_string(), l, v)).collect();
        assert_eq!(fired(&events), want, "after +{n}");
    }
    // A new period starts over.
    w.bill("2025-02-01T00:00:00Z");
    let feb = w.usage("f1", "100", "2025-02-03T00:00:00Z", "2025-02-03T00:00:00Z").unwrap();
    assert_eq!(fired(&feb), [("units".to_string(), dec!(100), dec!(100))]);
    // Deleted: nothing more.
    let delete =
        Command::DeleteUsageAlert { subscription_id: "s1".into(), alert_id: "units".into() };
    w.run(delete, "2025-02-03T00:00:00Z").unwrap();
    let more = w.usage("f2", "500", "2025-02-04T00:00:00Z", "2025-02-04T00:00:00Z").unwrap();
    assert_eq!(fired(&more).iter().map(|f| f.0.as_str()).collect::<Vec<_>>(), ["spend"]);
}

#[test]
fn alert_refusals() {
    let mut w = World::new(dec!(0));
    w.plan("metered", dec!(10.00), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
    w.start("metered", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let now = "2025-01-02T00:00:00Z";
    let unknown_metric = w.run(alert("a", AlertOn::Units, Some("nope"), dec!(1), None), now);
    assert!(matches!(unknown_metric, Err(DomainError::NotFound { .. })), "{unknown_metric:?}");
    let no_metric = w.run(alert("a", AlertOn::Units, None, dec!(1), None), now);
    assert!(matches!(no_metric, Err(DomainError::Invalid(_))), "{no_metric:?}");
    w.run(alert("a", AlertOn::Amount, None, dec!(1), None), now).unwrap();
    let twice = w.run(alert("a", AlertOn::Amount, None, dec!(2), None), now);
    assert!(matches!(twice, Err(DomainError::Conflict(_))), "{twice:?}");
    let delete = Command::DeleteUsageAlert { subscription_id: "s1".into(), alert_id: "b".into() };
    assert!(matches!(w.run(delete, now), Err(DomainError::NotFound { .. })));
}
