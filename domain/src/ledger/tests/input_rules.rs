//! The input rules of issue 11 (decision 0011), table-driven where the rule is a table.

use super::*;
use crate::ledger::{METRIC_NOT_ON_PLAN, PAYMENT_BEFORE_ISSUE};
use crate::rating::PercentTier;

/// Redefines `calls` (the World's metric) before anything uses it.
fn world_with_metric(aggregation: Aggregation, allow_negative: bool) -> World {
    let mut w = World::new(dec!(0));
    let metric = Metric {
        code: "calls".into(),
        name: "Calls".into(),
        aggregation,
        property: Some("n".into()),
        allow_negative,
    };
    w.ledger.metrics.insert("calls".into(), metric);
    w
}

fn kind_of(e: &DomainError) -> &str {
    match e {
        DomainError::Precondition { kind, .. } => kind,
        DomainError::Invalid(v) => &v[0].field,
        DomainError::NotFound { .. } => "not found",
        DomainError::Conflict(_) => "conflict",
    }
}

/// Negative values: refused unless the metric allows them; `weighted_sum` values are level
/// changes (a level may go down, never below zero); even when allowed, a period never rates
/// below zero units. The charge is the SPEC's graduated one (first tier flat 5.00).
#[test]
fn negative_usage_table() {
    // (aggregation, allow_negative, values in time order (day of January, value),
    //  accepted per event, rated units on the close line, usage line amount)
    type Case =
        (Aggregation, bool, &'static [(i8, &'static str)], &'static [bool], Decimal, Decimal);
    let cases: Vec<Case> = vec![
        (Aggregation::Sum, false, &[(2, "7"), (3, "-1000000")], &[true, false], dec!(7), dec!(12)),
        // "-0" is zero: accepted (the property string is kept whole, its value is 0).
        (Aggregation::Sum, false, &[(2, "7"), (3, "-0")], &[true, true], dec!(7), dec!(12)),
        (Aggregation::Sum, true, &[(2, "10"), (3, "-3")], &[true, true], dec!(7), dec!(12)),
        (Aggregation::Sum, true, &[(2, "10"), (3, "-30")], &[true, true], dec!(0), dec!(5)),
        (Aggregation::Max, false, &[(2, "-5")], &[false], dec!(0), dec!(5)),
        (Aggregation::Latest, true, &[(2, "4"), (3, "-2")], &[true, true], dec!(0), dec!(5)),
        // weighted_sum over January (31 days): +10 on day 1 (the 2nd), -10 on day 11: 10
        // units for 10 days = 100/31 average.
        (
            Aggregation::WeightedSum,
            false,
            &[(2, "10"), (12, "-10")],
            &[true, true],
            dec!(100) / dec!(31),
            dec!(5) + dec!(100) / dec!(31),
        ),
        // Going below zero is refused; a later rise is fine.
        (
            Aggregation::WeightedSum,
            false,
            &[(2, "10"), (12, "-11"), (12, "5")],
            &[true, false, true],
            (dec!(10) * dec!(10) + dec!(15) * dec!(20)) / dec!(31),
            dec!(5) + (dec!(100) + dec!(300)) / dec!(31),
        ),
        // Allowed below zero: the level is -10 for the whole period, rated as 0 units.
        (Aggregation::WeightedSum, true, &[(1, "-10")], &[true], dec!(0), dec!(5)),
    ];
    for (aggregation, allow, events, accepted, units, amount) in cases {
        let name = format!("{aggregation} allow_negative={allow} {events:?}");
        let mut w = world_with_metric(aggregation, allow);
        w.plan("m", dec!(0), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
        w.start("m", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T00:00:00Z");
        for (i, ((day, value), ok)) in events.iter().zip(accepted).enumerate() {
            let t = format!("2025-01-{day:02}T00:00:00Z");
            let result = w.usage(&format!("t{i}"), value, &t, &t);
            assert_eq!(result.is_ok(), *ok, "{name}: event {i}: {result:?}");
            if let Err(e) = result {
                assert_eq!(kind_of(&e), "properties[n]", "{name}");
            }
        }
        let inv = &w.bill("2025-02-01T00:00:00Z")[0];
        let line = &inv.lines[0];
        assert_eq!(line.units, Some(units), "{name}: rated units never below zero");
        assert_eq!(
            line.amount,
            crate::money::Currency::parse("USD").unwrap().round(amount),
            "{name}"
        );
    }
}

/// A weighted_sum change arriving late that would take an already recorded later level below
/// zero is refused; one that keeps every later level at zero or above is accepted.
#[test]
fn a_late_weighted_sum_change_is_checked_against_every_later_level() {
    let mut w = world_with_metric(Aggregation::WeightedSum, false);
    w.plan("m", dec!(0), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
    w.start("m", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T00:00:00Z");
    let now = "2025-01-20T00:00:00Z";
    w.usage("up", "10", "2025-01-02T00:00:00Z", now).unwrap();
    w.usage("down", "-8", "2025-01-10T00:00:00Z", now).unwrap();
    // Late, on the 5th: level 10 → 7 there, then 7 − 8 = −1 from the 10th: refused.
    let late = w.usage("late", "-3", "2025-01-05T00:00:00Z", now);
    assert_eq!(late.map_err(|e| kind_of(&e).to_string()), Err("properties[n]".to_string()));
    // −2 keeps the level at 0 from the 10th: accepted.
    w.usage("late2", "-2", "2025-01-05T00:00:00Z", now).unwrap();
}

#[test]
fn instants_past_the_clock_are_refused() {
    let mut w = World::new(dec!(0));
    w.plan("m", dec!(10), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
    w.start("m", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T00:00:00Z");
    let now = "2025-02-01T00:00:00Z";
    // (as_of, accepted): the clock plus 300 s is the latest run.
    for (as_of, ok) in [
        ("2025-03-01T00:00:00Z", false),
        ("2025-02-01T00:05:01Z", false),
        ("2025-02-01T00:05:00Z", true),
    ] {
        let run = w.run(Command::RunBilling { as_of: at(as_of) }, now);
        match ok {
            true => assert_eq!(invoices(&run.unwrap()).len(), 1, "{as_of}"),
            false => assert_eq!(kind_of(&run.unwrap_err()), "as_of", "{as_of}"),
        }
    }
    let id = w.ledger.subscriptions["s1"].invoice_ids[0].clone();
    let pay = |occurred_at: &str| Command::RecordPayment {
        invoice_id: id.clone(),
        outcome: PaymentOutcome::Succeeded { amount: dec!(1) },
        occurred_at: at(occurred_at),
    };
    let position = w.position;
    for (when, kind) in [
        ("3000-01-01T00:00:00Z", "occurred_at"),
        ("2025-02-01T00:05:01Z", "occurred_at"),
        ("2025-01-31T23:59:59Z", PAYMENT_BEFORE_ISSUE),
    ] {
        assert_eq!(kind_of(&w.run(pay(when), now).unwrap_err()), kind, "{when}");
    }
    assert_eq!(w.position, position, "refused payments append nothing");
    w.run(pay("2025-02-01T00:00:00Z"), now).unwrap();
}

#[test]
fn usage_for_a_metric_off_the_plan_is_a_failed_precondition() {
    let mut w = World::new(dec!(0));
    w.plan("flat", dec!(10), FeeTiming::Arrears, 0, vec![], None);
    w.start("flat", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T00:00:00Z");
    let t = "2025-01-02T00:00:00Z";
    match w.usage("t1", "5", t, t) {
        Err(DomainError::Precondition { kind, subject, description }) => {
            assert_eq!((kind, subject.as_str()), (METRIC_NOT_ON_PLAN, "subscription-s1"));
            assert!(
                description.contains("calls") && description.contains("flat v1"),
                "{description}"
            );
        }
        other => panic!("expected METRIC_NOT_ON_PLAN, got {other:?}"),
    }
}

fn graduated_percentage(flat: Decimal) -> ChargeModel {
    ChargeModel::GraduatedPercentage {
        tiers: vec![
            PercentTier { up_to: Some(dec!(100)), rate: dec!(10), flat_fee: flat },
            PercentTier { up_to: None, rate: dec!(1), flat_fee: dec!(0) },
        ],
    }
}

fn graduated(flat: Decimal) -> ChargeModel {
    ChargeModel::Graduated {
        tiers: vec![
            Tier { up_to: Some(dec!(100)), unit_price: dec!(1), flat_fee: flat },
            Tier { up_to: None, unit_price: dec!(0.5), flat_fee: dec!(0) },
        ],
    }
}

/// Pay in advance: what zero usage costs (the first tier's flat fee, SPEC §4) is billed once
/// per period, with its first event, or at its close when it had none.
#[test]
fn in_advance_first_tier_flat_fee_table() {
    // (model, January event values, fee invoiced per event, close line of January,
    //  close line of February, which has no event)
    type Case = (ChargeModel, &'static [&'static str], Vec<Decimal>, Option<Decimal>);
    let cases: Vec<Case> = vec![
        // 50 → 10 % = 5.00 + flat 2.00; then 50 → 60 more: 5.00 + 100 × 1 % ... (100→150: 0.50)
        (
            graduated_percentage(dec!(2)),
            &["50", "100"],
            vec![dec!(7.00), dec!(5.50)],
            Some(dec!(2.00)),
        ),
        (graduated_percentage(dec!(0)), &["50"], vec![dec!(5.00)], None),
        (graduated(dec!(3)), &["10", "10"], vec![dec!(13.00), dec!(10.00)], Some(dec!(3.00))),
        (ChargeModel::Standard { unit_price: dec!(2) }, &["4"], vec![dec!(8.00)], None),
    ];
    for (model, values, fees, empty_close) in cases {
        let name = format!("{} {values:?}", model.name());
        let mut w = World::new(dec!(0));
        let charge = Charge { metric_code: "calls".into(), model, pay_in_advance: true };
        w.plan("adv", dec!(0), FeeTiming::Arrears, 0, vec![charge], None);
        w.start("adv", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T00:00:00Z");
        let mut billed = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let t = format!("2025-01-{:02}T00:00:00Z", i + 2);
            let issued = invoices(&w.usage(&format!("t{i}"), v, &t, &t).unwrap());
            billed.extend(issued.iter().map(|inv| inv.total));
        }
        assert_eq!(billed, fees, "{name}: fees per event");
        let january = &w.bill("2025-02-01T00:00:00Z")[0];
        assert_eq!(january.total, dec!(0), "{name}: the period with events pays nothing more");
        let february = &w.bill("2025-03-01T00:00:00Z")[0];
        let expected: Vec<(LineKind, Decimal)> =
            empty_close.iter().map(|a| (LineKind::UsageInAdvance, *a)).collect();
        assert_eq!(amounts(february), expected, "{name}: the period without events");
    }
}

#[test]
fn identical_catalog_reruns_are_replays_and_different_ones_conflict() {
    let mut w = World::new(dec!(0));
    w.plan("p", dec!(10), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
    let plan_position = w.position - 1;
    let ctx = ctx("2025-01-01T00:00:00Z");
    let same = Command::PublishPlan(w.ledger.plans["p"][0].clone());
    assert_eq!(w.ledger.replay_position(&same, &ctx), Some(plan_position));
    let mut other = w.ledger.plans["p"][0].clone();
    other.base_fee = dec!(11);
    assert_eq!(w.ledger.replay_position(&Command::PublishPlan(other.clone()), &ctx), None);
    let published = w.run(Command::PublishPlan(other), "2025-01-01T00:00:00Z").unwrap();
    assert!(matches!(&published[0], Event::PlanPublished(p) if p.version == 2));

    let customer = w.ledger.customers["acme"].customer.clone();
    let register = Command::RegisterCustomer(customer.clone());
    assert_eq!(w.ledger.replay_position(&register, &ctx), Some(0));
    let renamed = Command::RegisterCustomer(Customer { name: "Other".into(), ..customer });
    assert_eq!(w.ledger.replay_position(&renamed, &ctx), None);
    assert!(matches!(w.run(renamed, "2025-01-01T00:00:00Z"), Err(DomainError::Conflict(_))));
    let metric = w.ledger.metrics["calls"].clone();
    assert_eq!(w.ledger.replay_position(&Command::DefineMetric(metric.clone()), &ctx), Some(1));
    let changed = Metric { allow_negative: true, ..metric };
    assert!(matches!(
        w.run(Command::DefineMetric(changed), "2025-01-01T00:00:00Z"),
        Err(DomainError::Conflict(_))
    ));
}

#[test]
fn catalog_field_rules() {
    let mut w = World::new(dec!(0));
    let twice = vec![graduated_spec_charge(), graduated_spec_charge()];
    let plan = Plan {
        version: 0,
        charges: twice,
        ..legacy_plan("p", Interval::Monthly, dec!(1), FeeTiming::Arrears)
    };
    let err = w.run(Command::PublishPlan(plan), "2025-01-01T00:00:00Z").unwrap_err();
    assert_eq!(kind_of(&err), "charges[1].metric_code");
    for name in ["A\0B", "line\nbreak", "esc\u{1b}[31m", "del\u{7f}"] {
        let c = Customer {
            customer_id: "c2".into(),
            name: name.into(),
            currency: Currency::parse("USD").unwrap(),
            time_zone: "UTC".into(),
            tax_rate: dec!(0),
        };
        let err = w.run(Command::RegisterCustomer(c), "2025-01-01T00:00:00Z").unwrap_err();
        assert_eq!(kind_of(&err), "name", "{name:?}");
    }
    let counted = Metric {
        code: "n".into(),
        name: "N".into(),
        aggregation: Aggregation::Count,
        property: None,
        allow_negative: true,
    };
    let err = w.run(Command::DefineMetric(counted), "2025-01-01T00:00:00Z").unwrap_err();
    assert_eq!(kind_of(&err), "allow_negative");
}

/// A subscription may start up to 366 days ago; its ended periods are billed by the next run.
#[test]
fn a_backdated_start_is_billed_by_the_next_run() {
    let mut w = World::new(dec!(0));
    w.plan("m", dec!(10), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
    let now = "2025-03-15T00:00:00Z";
    let too_early = Command::StartSubscription {
        subscription_id: "old".into(),
        customer_id: "acme".into(),
        plan_code: "m".into(),
        plan_version: None,
        anchor: Anchor::Anniversary,
        start_date: Some(date(2024, 3, 13)),
        billed_until: None,
    };
    assert_eq!(kind_of(&w.run(too_early, now).unwrap_err()), "start_date");
    w.start("m", Anchor::Anniversary, date(2025, 1, 1), now);
    w.usage("t1", "250", "2025-01-20T00:00:00Z", now).unwrap();
    let issued = w.bill(now);
    let totals: Vec<Decimal> = issued.iter().map(|i| i.total).collect();
    // January: 10.00 + 180.00 usage; February: 10.00 + the first tier's flat 5.00.
    assert_eq!(totals, vec![dec!(190.00), dec!(15.00)]);
}
