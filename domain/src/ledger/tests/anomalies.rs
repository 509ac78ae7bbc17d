//! Anomaly flags through the ledger (docs/decisions/0039): period-close invoices and drafts are
//! compared with the subscription's history and its plan's closing invoices; flags never
//! change an amount, and a replay of the log flags the same.

use super::*;
use crate::anomaly::{AnomalyKind, Completeness};
use crate::invoice::IssueReason;

fn standard(unit_price: Decimal) -> Vec<Charge> {
    vec![Charge {
        metric_code: "calls".into(),
        model: ChargeModel::Standard { unit_price },
        pay_in_advance: false,
    }]
}

/// `calls` per month of 2025 from January, billed at each month's end; the period-close
/// invoices, one per month.
fn months(w: &mut World, calls: &[&str]) -> Vec<Invoice> {
    let mut closing = Vec::new();
    for (i, n) in calls.iter().enumerate() {
        let month = i as i8 + 1;
        let day = format!("2025-{month:02}-10T12:00:00Z");
        w.usage(&format!("t{month}"), n, &day, &day).unwrap();
        let next = date(2025, month, 1).last_of_month().tomorrow().unwrap();
        let bill_at = format!("{next}T00:00:00Z");
        let issued = w.bill(&bill_at);
        closing.extend(issued.into_iter().filter(|i| i.reason == IssueReason::PeriodClose));
    }
    closing
}

fn kinds(inv: &Invoice) -> Vec<(AnomalyKind, &str)> {
    inv.anomalies.iter().map(|f| (f.kind, f.subject.as_str())).collect()
}

#[test]
fn a_spike_and_a_stop_after_steady_months_are_flagged_and_change_nothing() {
    let mut w = World::new(dec!(10));
    w.plan("metered", dec!(10.00), FeeTiming::Arrears, 0, standard(dec!(1.00)), None);
    w.start("metered", Anchor::Calendar, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let steady = months(&mut w, &["100", "110", "95", "105"]);
    assert_eq!(steady.len(), 4);
    assert!(steady.iter().all(|i| i.anomalies.is_empty()), "{steady:?}");

    // May: 900 calls. The draft shows the spike before the close, the close flags it.
    w.usage("t5", "900", "2025-05-10T12:00:00Z", "2025-05-10T12:00:00Z").unwrap();
    let draft = w
        .ledger
        .draft_invoice("s1", at("2025-05-11T00:00:00Z"), Completeness::PeriodSoFar)
        .unwrap()
        .unwrap();
    assert_eq!(kinds(&draft), [(AnomalyKind::Spike, "calls")]);
    let may = w.bill("2025-06-01T00:00:00Z");
    let may = &may[0];
    assert_eq!(kinds(may), [(AnomalyKind::Spike, "calls")]);
    let flag = &may.anomalies[0];
    assert_eq!((flag.amount, flag.typical, flag.baseline_size), (dec!(900), dec!(102.50), 4));
    assert!(flag.reason().contains("far above the median 102.50"), "{}", flag.reason());
    assert_eq!(may.subtotal, dec!(910.00), "a flag changes no amount");

    // June: no usage at all. A running period's draft is no drop yet; the close is a stop.
    let june = w
        .ledger
        .draft_invoice("s1", at("2025-06-20T00:00:00Z"), Completeness::PeriodSoFar)
        .unwrap()
        .unwrap();
    assert!(june.anomalies.is_empty(), "{:?}", june.anomalies);
    let whole = w
        .ledger
        .draft_invoice("s1", at("2025-06-20T00:00:00Z"), Completeness::WholePeriod)
        .unwrap()
        .unwrap();
    assert_eq!(kinds(&whole), [(AnomalyKind::UsageStopped, "calls")]);
    let june = &w.bill("2025-07-01T00:00:00Z")[0];
    assert_eq!(kinds(june), [(AnomalyKind::UsageStopped, "calls")]);

    // The history is bounded and holds the flagged periods too.
    let history = &w.ledger.subscriptions["s1"].billed_history;
    assert_eq!(history.len(), crate::anomaly::HISTORY_PERIODS_MAX);
    assert_eq!(history.last().unwrap().usage["calls"], dec!(0));

    // Replaying the log gives the same state: the same next flags.
    let mut replayed = Ledger::default();
    for (i, e) in w.log.iter().enumerate() {
        replayed.evolve(e, i as u64);
    }
    assert_eq!(replayed.plan_totals, w.ledger.plan_totals);
    assert_eq!(
        replayed.subscriptions["s1"].billed_history,
        w.ledger.subscriptions["s1"].billed_history
    );
}

#[test]
fn a_first_invoice_far_above_the_plans_typical_one_is_flagged() {
    let mut w = World::new(dec!(0));
    w.plan("metered", dec!(10.00), FeeTiming::Arrears, 0, standard(dec!(1.00)), None);
    // Five subscriptions of about 100 calls a month make the plan's typical invoice.
    for (i, calls) in ["100", "120", "90", "110", "105"].iter().enumerate() {
        let id = format!("s{}", i + 10);
        let cmd = Command::StartSubscription {
            subscription_id: id.clone(),
            customer_id: "acme".into(),
            plan_code: "metered".into(),
            plan_version: None,
            anchor: Anchor::Calendar,
            start_date: Some(date(2025, 1, 1)),
            billed_until: None,
        };
        w.run(cmd, "2025-01-01T10:00:00Z").unwrap();
        let mut u = s1_usage(&format!("u{i}"), calls, "2025-01-10T12:00:00Z");
        u.subscription_id = id;
        w.run(Command::RecordUsage(u), "2025-01-10T12:00:00Z").unwrap();
    }
    let january = w.bill("2025-02-01T00:00:00Z");
    assert!(january.iter().all(|i| i.anomalies.is_empty()));
    assert_eq!(w.ledger.plan_totals["metered"].len(), 5);
    // s1 starts in February and uses 20 times as much: its first invoice is flagged.
    w.start("metered", Anchor::Calendar, date(2025, 2, 1), "2025-02-01T10:00:00Z");
    w.usage("big", "2000", "2025-02-10T12:00:00Z", "2025-02-10T12:00:00Z").unwrap();
    let february = w.bill("2025-03-01T00:00:00Z");
    let s1 = february.iter().find(|i| i.subscription_id == "s1").unwrap();
    assert_eq!(
        s1.anomalies.iter().map(|f| (f.kind, f.typical)).collect::<Vec<_>>(),
        [(AnomalyKind::FirstInvoiceHigh, dec!(115.00))]
    );
    let others = february.iter().filter(|i| i.subscription_id != "s1");
    assert!(others.clone().all(|i| i.anomalies.is_empty()), "two periods are no history yet");
}
