//! Ledger scenarios with hand-computed expectations (SPEC §4). Each drives commands through
//! `execute` with explicit times, as the service does.

use std::collections::BTreeMap;

use jiff::civil::date;
use jiff::Timestamp;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use super::*;
use crate::calendar::{Anchor, Interval};
use crate::catalog::{Charge, FeeTiming};
use crate::commands::Policy;
use crate::events::{PlanChangeKind, Usage};
use crate::invoice::LineKind;
use crate::money::Currency;
use crate::rating::{Aggregation, ChargeModel, Tier};

struct World {
    ledger: Ledger,
    position: u64,
    policy: Policy,
    /// Every event appended, in order (position = index).
    log: Vec<Event>,
}

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn ctx(now: &str) -> Context {
    Context { now: at(now), policy: Policy::default() }
}

impl World {
    fn new(tax_rate: Decimal) -> World {
        World::in_zone(tax_rate, "UTC")
    }

    fn in_zone(tax_rate: Decimal, time_zone: &str) -> World {
        let mut w = World {
            ledger: Ledger::default(),
            position: 0,
            policy: Policy::default(),
            log: Vec::new(),
        };
        let customer = Customer {
            customer_id: "acme".into(),
            name: "Acme".into(),
            currency: Currency::parse("USD").unwrap(),
            time_zone: time_zone.into(),
            tax_rate,
        };
        w.run(Command::RegisterCustomer(customer), "2025-01-01T00:00:00Z").unwrap();
        let metric = Metric {
            code: "calls".into(),
            name: "API calls".into(),
            aggregation: Aggregation::Sum,
            property: Some("n".into()),
            allow_negative: false,
        };
        w.run(Command::DefineMetric(metric), "2025-01-01T00:00:00Z").unwrap();
        w
    }

    fn run(&mut self, cmd: Command, now: &str) -> Result<Vec<Event>, DomainError> {
        let c = Context { now: at(now), policy: self.policy.clone() };
        let events = self.ledger.execute(&cmd, &c, self.position)?;
        self.position += events.len() as u64;
        self.log.extend(events.iter().cloned());
        Ok(events)
    }

    fn plan(
        &mut self,
        code: &str,
        fee: Decimal,
        timing: FeeTiming,
        trial_days: u32,
        charges: Vec<Charge>,
        minimum: Option<Decimal>,
    ) {
        let plan = Plan {
            code: code.into(),
            version: 0,
            name: code.into(),
            currency: Currency::parse("USD").unwrap(),
            interval: Interval::Monthly,
            base_fee: fee,
            fee_timing: timing,
            trial_days,
            minimum_commitment: minimum,
            progressive_billing: None,
            charges,
        };
        self.run(Command::PublishPlan(plan), "2025-01-01T00:00:00Z").unwrap();
    }

    fn start(
        &mut self,
        plan: &str,
        anchor: Anchor,
        start: jiff::civil::Date,
        now: &str,
    ) -> Vec<Event> {
        let cmd = Command::StartSubscription {
            subscription_id: "s1".into(),
            customer_id: "acme".into(),
            plan_code: plan.into(),
            plan_version: None,
            anchor,
            start_date: Some(start),
            billed_until: None,
        };
        self.run(cmd, now).unwrap()
    }

    fn usage(
        &mut self,
        tx: &str,
        n: &str,
        occurred: &str,
        now: &str,
    ) -> Result<Vec<Event>, DomainError> {
        self.run(Command::RecordUsage(s1_usage(tx, n, occurred)), now)
    }

    fn bill(&mut self, as_of: &str) -> Vec<Invoice> {
        invoices(&self.run(Command::RunBilling { as_of: at(as_of) }, as_of).unwrap())
    }
}

/// A usage event of subscription s1 on metric calls with property n.
fn s1_usage(tx: &str, n: &str, occurred: &str) -> Usage {
    Usage {
        subscription_id: "s1".into(),
        transaction_id: tx.into(),
        metric_code: "calls".into(),
        occurred_at: at(occurred),
        properties: BTreeMap::from([("n".to_string(), n.to_string())]),
    }
}

fn invoices(events: &[Event]) -> Vec<Invoice> {
    events
        .iter()
        .filter_map(|e| if let Event::InvoiceIssued(i) = e { Some(i.clone()) } else { None })
        .collect()
}

fn amounts(inv: &Invoice) -> Vec<(LineKind, Decimal)> {
    inv.lines.iter().map(|l| (l.kind, l.amount)).collect()
}

fn graduated_spec_charge() -> Charge {
    let tiers = vec![
        Tier { up_to: Some(dec!(100)), unit_price: dec!(1.00), flat_fee: dec!(5) },
        Tier { up_to: Some(dec!(1000)), unit_price: dec!(0.50), flat_fee: dec!(0) },
        Tier { up_to: None, unit_price: dec!(0.10), flat_fee: dec!(0) },
    ];
    Charge {
        metric_code: "calls".into(),
        model: ChargeModel::Graduated { tiers },
        pay_in_advance: false,
    }
}

#[test]
fn spec_upgrade_example_credits_and_charges_by_days() {
    let mut w = World::new(dec!(0));
    w.plan("basic", dec!(30.00), FeeTiming::Advance, 0, vec![], None);
    w.plan("pro", dec!(62.00), FeeTiming::Advance, 0, vec![], None);
    let started =
        invoices(&w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z"));
    assert_eq!(amounts(&started[0]), vec![(LineKind::BaseFee, dec!(30.00))]);
    let cmd = Command::ChangePlan {
        subscription_id: "s1".into(),
        plan_code: "pro".into(),
        plan_version: None,
        effective_date: None,
    };
    let upgrade = invoices(&w.run(cmd, "2025-01-16T09:00:00Z").unwrap());
    assert_eq!(
        amounts(&upgrade[0]),
        vec![(LineKind::Credit, dec!(-15.48)), (LineKind::BaseFee, dec!(32.00))]
    );
    assert_eq!(upgrade[0].total, dec!(16.52));
    let closed = w.bill("2025-02-01T00:00:00Z");
    assert_eq!(
        amounts(&closed[0]),
        vec![(LineKind::BaseFee, dec!(62.00))],
        "February in advance on pro"
    );
    assert!(
        w.bill("2025-02-01T00:00:00Z").is_empty(),
        "a second run for the same as_of issues nothing"
    );
}

#[test]
fn arrears_fee_and_graduated_usage_with_tax() {
    let mut w = World::new(dec!(20));
    w.plan("metered", dec!(10.00), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
    assert!(invoices(&w.start(
        "metered",
        Anchor::Anniversary,
        date(2025, 1, 1),
        "2025-01-01T10:00:00Z"
    ))
    .is_empty());
    w.usage("t1", "200", "2025-01-05T00:00:00Z", "2025-01-05T00:00:00Z").unwrap();
    w.usage("t2", "50", "2025-01-31T23:59:59Z", "2025-01-31T23:59:59Z").unwrap();
    assert!(w.bill("2025-01-31T23:59:59Z").is_empty(), "the period has not ended");
    let inv = &w.bill("2025-02-01T00:00:00Z")[0];
    assert_eq!(
        amounts(inv),
        vec![(LineKind::BaseFee, dec!(10.00)), (LineKind::Usage, dec!(180.00))]
    );
    assert_eq!((inv.subtotal, inv.tax, inv.total), (dec!(190.00), dec!(38.00), dec!(228.00)));
}

#[test]
fn usage_duplicates_conflicts_and_closed_periods() {
    let mut w = World::new(dec!(0));
    w.plan("metered", dec!(0), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
    w.start("metered", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let first = w.usage("t1", "5", "2025-01-05T00:00:00Z", "2025-01-05T00:00:00Z").unwrap();
    assert_eq!(first.len(), 1);
    let u = s1_usage("t1", "5", "2025-01-05T00:00:00Z");
    let c = ctx("2025-01-06T00:00:00Z");
    let prior = Some(PriorUsage { digest: usage_digest(&u), position: 7 });
    let duplicate = w.ledger.decide_usage(&u, &c, prior);
    assert_eq!(duplicate, Ok(UsageOutcome::Duplicate { position: 7 }));
    let changed =
        Usage { properties: BTreeMap::from([("n".to_string(), "6".to_string())]), ..u.clone() };
    assert!(matches!(w.ledger.decide_usage(&changed, &c, prior), Err(DomainError::Conflict(_))));
    let bad = Usage {
        properties: BTreeMap::from([("n".to_string(), "five".to_string())]),
        transaction_id: "t9".into(),
        ..u.clone()
    };
    assert!(matches!(w.ledger.decide_usage(&bad, &c, None), Err(DomainError::Invalid(_))));
    w.bill("2025-02-01T00:00:00Z");
    let late = w.usage("t2", "1", "2025-01-20T00:00:00Z", "2025-02-02T00:00:00Z");
    assert!(
        matches!(late, Err(DomainError::Precondition { kind: "PERIOD_CLOSED", .. })),
        "{late:?}"
    );
    let before_start = w.usage("t3", "1", "2024-12-31T00:00:00Z", "2025-02-02T00:00:00Z");
    assert!(matches!(before_start, Err(DomainError::Precondition { kind: "OUT_OF_SERVICE", .. })));
    let future = w.usage("t4", "1", "2025-03-01T00:00:00Z", "2025-02-02T00:00:00Z");
    assert!(matches!(future, Err(DomainError::Invalid(_))));
}

#[test]
fn three_failed_payments_make_an_invoice_uncollectible_and_past_due() {
    let mut w = World::new(dec!(0));
    w.plan("basic", dec!(30.00), FeeTiming::Advance, 0, vec![], None);
    let inv =
        invoices(&w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z"))
            .remove(0);
    let fail = |w: &mut World| {
        let cmd = Command::RecordPayment {
            invoice_id: inv.invoice_id.clone(),
            outcome: PaymentOutcome::Failed { reason: "card declined".into() },
            occurred_at: at("2025-01-02T00:00:00Z"),
        };
        w.run(cmd, "2025-01-02T00:00:00Z")
    };
    fail(&mut w).unwrap();
    assert_eq!(
        w.ledger.subscription_status(&w.ledger.subscriptions["s1"], date(2025, 1, 2)),
        "past_due"
    );
    fail(&mut w).unwrap();
    let third = fail(&mut w).unwrap();
    assert!(matches!(third.last(), Some(Event::InvoiceMarkedUncollectible { .. })));
    assert_eq!(w.ledger.invoices[&inv.invoice_id].status, InvoiceStatus::Uncollectible);
    assert!(fail(&mut w).is_err(), "no more attempts on an uncollectible invoice");
}

#[test]
fn partial_then_full_payment_and_overpayment_refused() {
    let mut w = World::new(dec!(0));
    w.plan("basic", dec!(30.00), FeeTiming::Advance, 0, vec![], None);
    let inv =
        invoices(&w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z"))
            .remove(0);
    let pay = |w: &mut World, amount: Decimal| {
        let cmd = Command::RecordPayment {
            invoice_id: inv.invoice_id.clone(),
            outcome: PaymentOutcome::Succeeded { amount },
            occurred_at: at("2025-01-02T00:00:00Z"),
        };
        w.run(cmd, "2025-01-02T00:00:00Z")
    };
    pay(&mut w, dec!(10)).unwrap();
    assert_eq!(w.ledger.invoices[&inv.invoice_id].amount_due(), dec!(20.00));
    assert!(matches!(
        pay(&mut w, dec!(20.01)),
        Err(DomainError::Precondition { kind: "OVERPAYMENT", .. })
    ));
    pay(&mut w, dec!(20)).unwrap();
    assert_eq!(w.ledger.invoices[&inv.invoice_id].status, InvoiceStatus::Paid);
}

#[test]
fn trial_then_in_advance_fee_for_the_rest_of_the_period() {
    let mut w = World::new(dec!(0));
    w.plan("trial", dec!(31.00), FeeTiming::Advance, 14, vec![], None);
    assert!(invoices(&w.start(
        "trial",
        Anchor::Anniversary,
        date(2025, 1, 1),
        "2025-01-01T10:00:00Z"
    ))
    .is_empty());
    assert!(w.bill("2025-01-14T23:00:00Z").is_empty());
    let events = w
        .run(Command::RunBilling { as_of: at("2025-01-15T00:00:00Z") }, "2025-01-15T00:00:00Z")
        .unwrap();
    assert!(matches!(events[0], Event::TrialEnded { .. }));
    // Jan 15..Feb 1 = 17 of 31 days × 31.00
    assert_eq!(amounts(&invoices(&events)[0]), vec![(LineKind::BaseFee, dec!(17.00))]);
    let feb = w.bill("2025-02-01T00:00:00Z");
    assert_eq!(amounts(&feb[0]), vec![(LineKind::BaseFee, dec!(31.00))]);
}

#[test]
fn immediate_cancel_credits_unused_days_and_closes_the_period() {
    let mut w = World::new(dec!(0));
    w.plan("basic", dec!(31.00), FeeTiming::Advance, 0, vec![graduated_spec_charge()], None);
    w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    w.usage("t1", "10", "2025-01-03T00:00:00Z", "2025-01-03T00:00:00Z").unwrap();
    let cmd = Command::CancelSubscription {
        subscription_id: "s1".into(),
        immediately: true,
        effective_date: None,
    };
    let events = w.run(cmd, "2025-01-11T12:00:00Z").unwrap();
    let inv = &invoices(&events)[0];
    // Service ends at the end of Jan 11. Usage 10 × 1.00 + 5 flat = 15.00;
    // unused Jan 12..Feb 1 = 20 of 31 days × 31.00 = 20.00 credited.
    assert_eq!(
        amounts(inv),
        vec![(LineKind::Usage, dec!(15.00)), (LineKind::Credit, dec!(-20.00))]
    );
    assert_eq!(inv.period.end, date(2025, 1, 12));
    assert_eq!(
        w.ledger.subscription_status(&w.ledger.subscriptions["s1"], date(2025, 1, 11)),
        "canceled"
    );
    assert!(w.bill("2025-03-01T00:00:00Z").is_empty(), "nothing more after cancellation");
    let again = Command::CancelSubscription {
        subscription_id: "s1".into(),
        immediately: true,
        effective_date: None,
    };
    assert!(matches!(
        w.run(again, "2025-01-12T00:00:00Z"),
        Err(DomainError::Precondition { kind: "SUBSCRIPTION_CANCELED", .. })
    ));
}

#[test]
fn minimum_commitment_true_up() {
    let mut w = World::new(dec!(0));
    w.plan(
        "committed",
        dec!(10.00),
        FeeTiming::Arrears,
        0,
        vec![graduated_spec_charge()],
        Some(dec!(100)),
    );
    w.start("committed", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    w.usage("t1", "20", "2025-01-03T00:00:00Z", "2025-01-03T00:00:00Z").unwrap();
    let inv = &w.bill("2025-02-01T00:00:00Z")[0];
    // 10.00 base + (20 × 1.00 + 5) usage = 35.00 → true-up 65.00
    assert_eq!(
        amounts(inv),
        vec![
            (LineKind::BaseFee, dec!(10.00)),
            (LineKind::Usage, dec!(25.00)),
            (LineKind::MinimumCommitmentTrueUp, dec!(65.00))
        ]
    );
    assert_eq!(inv.total, dec!(100.00));
}

#[test]
fn downgrade_waits_for_the_period_end() {
    let mut w = World::new(dec!(0));
    w.plan("pro", dec!(62.00), FeeTiming::Advance, 0, vec![], None);
    w.plan("basic", dec!(30.00), FeeTiming::Advance, 0, vec![], None);
    w.start("pro", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let cmd = Command::ChangePlan {
        subscription_id: "s1".into(),
        plan_code: "basic".into(),
        plan_version: None,
        effective_date: None,
    };
    let events = w.run(cmd, "2025-01-10T00:00:00Z").unwrap();
    assert!(
        matches!(&events[..], [Event::PlanChangeScheduled { effective_date, .. }] if *effective_date == date(2025, 2, 1))
    );
    let events = w
        .run(Command::RunBilling { as_of: at("2025-02-01T00:00:00Z") }, "2025-02-01T00:00:00Z")
        .unwrap();
    assert!(matches!(events[0], Event::PlanChanged { kind: PlanChangeKind::Downgrade, .. }));
    assert_eq!(amounts(&invoices(&events)[0]), vec![(LineKind::BaseFee, dec!(30.00))]);
    assert_eq!(w.ledger.subscriptions["s1"].current_plan().code, "basic");
}

#[test]
fn calendar_anchor_prorates_the_first_period() {
    let mut w = World::new(dec!(0));
    w.plan("monthly", dec!(31.00), FeeTiming::Arrears, 0, vec![], None);
    w.start("monthly", Anchor::Calendar, date(2025, 1, 16), "2025-01-16T10:00:00Z");
    let inv = &w.bill("2025-02-01T00:00:00Z")[0];
    assert_eq!(inv.period, Period { start: date(2025, 1, 16), end: date(2025, 2, 1) });
    assert_eq!(amounts(inv), vec![(LineKind::BaseFee, dec!(16.00))]);
    let feb = &w.bill("2025-03-01T00:00:00Z")[0];
    assert_eq!(amounts(feb), vec![(LineKind::BaseFee, dec!(31.00))]);
}

#[test]
fn errors_change_nothing() {
    let mut w = World::new(dec!(0));
    let before = (w.ledger.customers.len(), w.ledger.plans.len(), w.position);
    let bad_plan = Plan {
        code: "bad".into(),
        version: 0,
        name: "".into(),
        currency: Currency::parse("USD").unwrap(),
        interval: Interval::Monthly,
        base_fee: dec!(-1),
        fee_timing: FeeTiming::Advance,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        charges: vec![Charge {
            metric_code: "nope".into(),
            model: ChargeModel::Standard { unit_price: dec!(1) },
            pay_in_advance: false,
        }],
    };
    match w.run(Command::PublishPlan(bad_plan), "2025-01-01T00:00:00Z") {
        Err(DomainError::Invalid(v)) => {
            let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
            assert_eq!(fields, vec!["name", "base_fee"]);
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let start = Command::StartSubscription {
        subscription_id: "s1".into(),
        customer_id: "ghost".into(),
        plan_code: "basic".into(),
        plan_version: None,
        anchor: Anchor::Anniversary,
        start_date: None,
        billed_until: None,
    };
    assert!(matches!(
        w.run(start, "2025-01-01T00:00:00Z"),
        Err(DomainError::NotFound { kind: "customer", .. })
    ));
    assert_eq!((w.ledger.customers.len(), w.ledger.plans.len(), w.position), before);
}

#[test]
fn periods_are_local_days_across_a_dst_change() {
    // New York: DST starts 2025-03-09, so March ends at 2025-04-01T04:00Z (EDT), not 05:00Z.
    let mut w = World::in_zone(dec!(0), "America/New_York");
    let standard = Charge {
        metric_code: "calls".into(),
        model: ChargeModel::Standard { unit_price: dec!(1) },
        pay_in_advance: false,
    };
    w.plan("metered", dec!(31.00), FeeTiming::Arrears, 0, vec![standard], None);
    w.start("metered", Anchor::Anniversary, date(2025, 3, 1), "2025-03-01T15:00:00Z");
    // 23:30 local on March 31 is already April in UTC, but belongs to March here.
    w.usage("late-march", "7", "2025-04-01T03:30:00Z", "2025-04-01T03:31:00Z").unwrap();
    w.usage("early-april", "100", "2025-04-01T04:30:00Z", "2025-04-01T04:31:00Z").unwrap();
    assert!(w.bill("2025-04-01T03:59:59Z").is_empty(), "March has not ended in New York yet");
    let march = &w.bill("2025-04-01T04:00:00Z")[0];
    assert_eq!(march.period, Period { start: date(2025, 3, 1), end: date(2025, 4, 1) });
    assert_eq!(amounts(march), vec![(LineKind::BaseFee, dec!(31.00)), (LineKind::Usage, dec!(7))]);
}

#[test]
fn arrears_to_advance_upgrade_charges_the_new_plan_at_once() {
    let mut w = World::new(dec!(0));
    w.plan("basic", dec!(31.00), FeeTiming::Arrears, 0, vec![], None);
    w.plan("pro", dec!(62.00), FeeTiming::Advance, 0, vec![], None);
    w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let cmd = Command::ChangePlan {
        subscription_id: "s1".into(),
        plan_code: "pro".into(),
        plan_version: None,
        effective_date: None,
    };
    let up = invoices(&w.run(cmd, "2025-01-16T09:00:00Z").unwrap());
    assert_eq!(amounts(&up[0]), vec![(LineKind::BaseFee, dec!(32.00))], "16 of 31 days of pro");
    let jan = &w.bill("2025-02-01T00:00:00Z")[0];
    // basic in arrears for Jan 1..16 (15 days) = 15.00; February in advance on pro = 62.00
    assert_eq!(
        amounts(jan),
        vec![(LineKind::BaseFee, dec!(15.00)), (LineKind::BaseFee, dec!(62.00))]
    );
}

#[test]
fn upgrade_while_the_previous_period_is_in_grace_is_billed_at_its_close() {
    let mut w = World::new(dec!(0));
    w.policy.grace_period_secs = 3 * 86_400;
    w.plan("basic", dec!(28.00), FeeTiming::Advance, 0, vec![], None);
    w.plan("pro", dec!(56.00), FeeTiming::Advance, 0, vec![], None);
    w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let cmd = Command::ChangePlan {
        subscription_id: "s1".into(),
        plan_code: "pro".into(),
        plan_version: None,
        effective_date: None,
    };
    assert!(
        invoices(&w.run(cmd, "2025-02-02T09:00:00Z").unwrap()).is_empty(),
        "February is not billed yet"
    );
    let jan = &w.bill("2025-02-04T00:00:00Z")[0];
    // February (28 days) in advance: basic for Feb 1 (1 day) = 1.00, pro for Feb 2..Mar 1 (27 days) = 54.00
    assert_eq!(
        amounts(jan),
        vec![(LineKind::BaseFee, dec!(1.00)), (LineKind::BaseFee, dec!(54.00))]
    );
}

#[test]
fn cancel_on_the_upgrade_day_credits_the_new_plan_and_a_pending_downgrade_does_not_block_it() {
    let mut w = World::new(dec!(0));
    w.plan("basic", dec!(31.00), FeeTiming::Advance, 0, vec![], None);
    w.plan("pro", dec!(62.00), FeeTiming::Advance, 0, vec![], None);
    w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let up = Command::ChangePlan {
        subscription_id: "s1".into(),
        plan_code: "pro".into(),
        plan_version: None,
        effective_date: None,
    };
    w.run(up, "2025-01-16T09:00:00Z").unwrap();
    let down = Command::ChangePlan {
        subscription_id: "s1".into(),
        plan_code: "basic".into(),
        plan_version: None,
        effective_date: None,
    };
    assert!(matches!(
        w.run(down, "2025-01-16T10:00:00Z").unwrap()[..],
        [Event::PlanChangeScheduled { .. }]
    ));
    let cancel = Command::CancelSubscription {
        subscription_id: "s1".into(),
        immediately: true,
        effective_date: None,
    };
    let inv = &invoices(&w.run(cancel, "2025-01-16T11:00:00Z").unwrap())[0];
    // pro was charged for Jan 16..Feb 1; service ends after Jan 16: Jan 17..Feb 1 = 15 days of pro
    assert_eq!(amounts(inv), vec![(LineKind::Credit, dec!(-30.00))]);
}

#[test]
fn pay_in_advance_charges_invoice_each_event_and_skip_the_close() {
    let mut w = World::new(dec!(0));
    let package = ChargeModel::Package {
        package_size: dec!(10),
        package_price: dec!(4),
        free_units: dec!(5),
    };
    let charge = Charge { metric_code: "calls".into(), model: package, pay_in_advance: true };
    w.plan("credits", dec!(0), FeeTiming::Arrears, 0, vec![charge], None);
    w.start("credits", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    // 5 free units: nothing due, no invoice
    assert_eq!(
        w.usage("t1", "5", "2025-01-02T00:00:00Z", "2025-01-02T00:00:00Z").unwrap().len(),
        1
    );
    // 5 → 12 units: one package started = 4.00
    let second =
        invoices(&w.usage("t2", "7", "2025-01-03T00:00:00Z", "2025-01-03T00:00:00Z").unwrap());
    assert_eq!(amounts(&second[0]), vec![(LineKind::UsageInAdvance, dec!(4.00))]);
    // 12 → 30 units: packages 1 → 3 = 8.00
    let third =
        invoices(&w.usage("t3", "18", "2025-01-04T00:00:00Z", "2025-01-04T00:00:00Z").unwrap());
    assert_eq!(amounts(&third[0]), vec![(LineKind::UsageInAdvance, dec!(8.00))]);
    let draft = w
        .ledger
        .draft_invoice("s1", at("2025-01-05T00:00:00Z"), crate::anomaly::Completeness::PeriodSoFar)
        .unwrap()
        .unwrap();
    assert!(draft.lines.is_empty(), "in-advance charges are not billed again at close");
    let close = &w.bill("2025-02-01T00:00:00Z")[0];
    assert_eq!(close.total, dec!(0));
}

#[test]
fn the_current_usage_draft_prices_the_open_period() {
    let mut w = World::new(dec!(20));
    w.plan("metered", dec!(10.00), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
    w.start("metered", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    w.usage("t1", "250", "2025-01-05T00:00:00Z", "2025-01-05T00:00:00Z").unwrap();
    let draft = w
        .ledger
        .draft_invoice("s1", at("2025-01-06T00:00:00Z"), crate::anomaly::Completeness::PeriodSoFar)
        .unwrap()
        .unwrap();
    assert_eq!(
        amounts(&draft),
        vec![(LineKind::BaseFee, dec!(10.00)), (LineKind::Usage, dec!(180.00))]
    );
    assert_eq!(draft.total, dec!(228.00));
    let issued = &w.bill("2025-02-01T00:00:00Z")[0];
    assert_eq!(
        (issued.lines.clone(), issued.total),
        (draft.lines, draft.total),
        "the draft is what the close issues"
    );
}

#[test]
fn percentage_charges_price_events_in_occurred_order() {
    let mut w = World::new(dec!(0));
    let model = ChargeModel::Percentage {
        rate: dec!(2.9),
        fixed_amount: dec!(0.30),
        free_events: Some(1),
        free_amount: None,
        min_per_event: None,
        max_per_event: None,
    };
    let charge = Charge { metric_code: "calls".into(), model, pay_in_advance: false };
    w.plan("payments", dec!(0), FeeTiming::Arrears, 0, vec![charge], None);
    w.start("payments", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    // Recorded out of order: the Jan 3 event (100.00) is the first by occurred_at, so it is the
    // free one; the Jan 5 event pays 2.9 % of 200.00 + 0.30 = 6.10.
    w.usage("late", "200.00", "2025-01-05T00:00:00Z", "2025-01-06T00:00:00Z").unwrap();
    w.usage("early", "100.00", "2025-01-03T00:00:00Z", "2025-01-06T00:00:01Z").unwrap();
    let inv = &w.bill("2025-02-01T00:00:00Z")[0];
    assert_eq!(amounts(inv), vec![(LineKind::Usage, dec!(6.10))]);
    assert_eq!(inv.lines[0].units, Some(dec!(300.00)));
}

mod replay_equivalence {
    //! Property: whatever valid commands ran, folding the events they produced into a fresh
    //! ledger gives the same state the live ledger reached (evolve reproduces what execute did).
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Usage { day: u8, calls: u16 },
        Change { to_pro: bool },
        Cancel { immediately: bool },
        Bill,
        Pay { fail: bool },
        NextDay(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..28, 0u16..2_000).prop_map(|(day, calls)| Op::Usage { day, calls }),
            1 => any::<bool>().prop_map(|to_pro| Op::Change { to_pro }),
            1 => any::<bool>().prop_map(|immediately| Op::Cancel { immediately }),
            2 => Just(Op::Bill),
            1 => any::<bool>().prop_map(|fail| Op::Pay { fail }),
            3 => (1u8..20).prop_map(Op::NextDay),
        ]
    }

    fn snapshot(l: &Ledger) -> String {
        let mut out = String::new();
        let mut invoices: Vec<_> = l.invoices.values().collect();
        invoices.sort_by(|a, b| a.invoice.invoice_id.cmp(&b.invoice.invoice_id));
        out += &format!("{invoices:?}\n");
        for s in l.subscriptions.values() {
            let open: Vec<_> = s
                .open
                .iter()
                .map(|(k, o)| {
                    let usage: Vec<_> = o
                        .usage
                        .iter()
                        .map(|(m, u)| (m, u.aggregate.event_count(), u.amounts.len()))
                        .collect();
                    (k, usage)
                })
                .collect();
            out += &format!(
                "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}\n",
                s.plans,
                s.trial_ended,
                s.pending_change,
                s.ends_on,
                s.next_close,
                s.fee_billed_until,
                s.billed_by_period,
                s.invoice_ids,
                open
            );
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn rebuild_equals_live(ops in proptest::collection::vec(op(), 1..60), advance in any::<bool>(), trial in 0u32..20) {
            let mut w = World::new(dec!(8.25));
            let timing = if advance { FeeTiming::Advance } else { FeeTiming::Arrears };
            w.plan("basic", dec!(30.00), timing, trial, vec![graduated_spec_charge()], Some(dec!(50)));
            w.plan("pro", dec!(62.00), timing, trial, vec![graduated_spec_charge()], None);
            let mut now: Timestamp = at("2025-01-01T10:00:00Z");
            let all = w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
            let mut events: Vec<Event> = Vec::new();
            let mut n = 0u32;
            for o in ops {
                n += 1;
                let c = Context { now, policy: Policy::default() };
                let cmd = match o {
                    Op::Usage { day, calls } => {
                        let occurred = now.checked_sub(jiff::SignedDuration::from_hours(i64::from(day) * 24)).unwrap();
                        Command::RecordUsage(Usage {
                            subscription_id: "s1".into(),
                            transaction_id: format!("t{n}"),
                            metric_code: "calls".into(),
                            occurred_at: occurred,
                            properties: BTreeMap::from([("n".to_string(), calls.to_string())]),
                        })
                    }
                    Op::Change { to_pro } => Command::ChangePlan { subscription_id: "s1".into(), plan_code: if to_pro { "pro" } else { "basic" }.into(), plan_version: None, effective_date: None },
                    Op::Cancel { immediately } => Command::CancelSubscription { subscription_id: "s1".into(), immediately, effective_date: None },
                    Op::Bill => Command::RunBilling { as_of: now },
                    Op::Pay { fail } => {
                        let Some(id) = w.ledger.subscriptions["s1"].invoice_ids.last().cloned() else { continue };
                        let due = w.ledger.invoices[&id].amount_due();
                        let outcome = if fail || due.is_zero() { PaymentOutcome::Failed { reason: "declined".into() } } else { PaymentOutcome::Succeeded { amount: due } };
                        Command::RecordPayment { invoice_id: id, outcome, occurred_at: now }
                    }
                    Op::NextDay(d) => {
                        now = now.checked_add(jiff::SignedDuration::from_hours(i64::from(d) * 24)).unwrap();
                        continue;
                    }
                };
                if let Ok(evs) = w.ledger.execute(&cmd, &c, w.position) {
                    w.position += evs.len() as u64;
                    events.extend(evs);
                }
            }
            for inv in w.ledger.invoices.values() {
                let lines: Decimal = inv.invoice.lines.iter().map(|l| l.amount).sum();
                prop_assert_eq!(inv.invoice.subtotal, lines);
                prop_assert_eq!(inv.invoice.total, inv.invoice.subtotal + inv.invoice.tax);
                prop_assert!(inv.amount_paid <= inv.invoice.total.max(Decimal::ZERO));
            }
            let mut fresh = World::new(dec!(8.25));
            fresh.plan("basic", dec!(30.00), timing, trial, vec![graduated_spec_charge()], Some(dec!(50)));
            fresh.plan("pro", dec!(62.00), timing, trial, vec![graduated_spec_charge()], None);
            let mut position = fresh.position;
            for e in all.iter().chain(events.iter()) {
                fresh.ledger.evolve(e, position);
                position += 1;
            }
            prop_assert_eq!(position, w.position);
            prop_assert_eq!(snapshot(&fresh.ledger), snapshot(&w.ledger));
        }
    }
}

/// Absurd magnitudes (issue #5): the period bound refuses the usage that would take a metric's
/// usage in one billing period past 10^15, and the refusal changes nothing.
#[test]
fn period_usage_past_10_15_is_refused_and_changes_nothing() {
    let mut w = World::new(dec!(0));
    w.plan("metered", dec!(0), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
    w.start("metered", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let (t1, t2) = ("2025-01-05T00:00:00Z", "2025-01-06T00:00:00Z");
    w.usage("t1", "999999999999999", t1, t1).unwrap();
    w.usage("t2", "1", t2, t2).unwrap();
    let position = w.position;
    match w.usage("t4", "-1", t2, t2) {
        Err(DomainError::Invalid(v)) => assert!(v[0].description.contains("must not be negative")),
        other => panic!("-1: expected Invalid, got {other:?}"),
    }
    for (tx, n) in [("t3", "0.000000000001"), ("t5", "1000000000000000")] {
        match w.usage(tx, n, t2, t2) {
            Err(DomainError::Invalid(v)) => {
                assert_eq!(v[0].field, "properties[n]", "{n}");
                assert!(v[0].description.contains("past 10^15"), "{n}: {}", v[0].description);
            }
            other => panic!("{n}: expected Invalid, got {other:?}"),
        }
    }
    assert_eq!(w.position, position, "a refused event appends nothing");
    let inv = &w.bill("2025-02-01T00:00:00Z")[0];
    // 100 × 1.00 + 5 + 900 × 0.50 + (10^15 − 1000) × 0.10
    assert_eq!(amounts(inv), vec![(LineKind::Usage, dec!(100000000000455.00))]);
    w.usage("t6", "1000000000000000", "2025-02-02T00:00:00Z", "2025-02-02T00:00:00Z")
        .expect("the next period has its own bound");
}

/// One value of 10^15 is the largest accepted (the constant was 999,998,482,350,080 before).
#[test]
fn usage_values_are_bounded_at_exactly_10_15() {
    let mut w = World::new(dec!(0));
    w.plan("metered", dec!(0), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
    w.start("metered", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let t = "2025-01-05T00:00:00Z";
    w.usage("t1", "1000000000000000", t, t).expect("10^15 is in range");
    for (tx, n) in [("t2", "1000000000000000.000000000001"), ("t3", "1e30"), ("t4", "NaN")] {
        let err = w.usage(tx, n, t, t).unwrap_err();
        assert!(matches!(&err, DomainError::Invalid(v) if v[0].field == "properties[n]"), "{n}");
    }
}

/// Every bound at its maximum at once: 50 charges (100-tier graduated, volume, package,
/// percentage, graduated_percentage, standard) on a period holding 10^15 units, a 10^12 base
/// fee and minimum commitment, 100 % tax. Billing issues a finite invoice: no overflow anywhere.
#[test]
fn a_plan_at_every_bound_bills_without_overflow() {
    use crate::money::{AMOUNT_MAX, UNITS_MAX, UNIT_PRICE_MAX};
    use crate::rating::PercentTier;
    let mut w = World::new(dec!(100));
    let tiers: Vec<Tier> = (1..=100)
        .map(|i| Tier {
            up_to: (i < 100).then(|| Decimal::from(i) * dec!(1_000_000)),
            unit_price: UNIT_PRICE_MAX,
            flat_fee: AMOUNT_MAX,
        })
        .collect();
    let percent_tiers = tiers
        .iter()
        .map(|t| PercentTier { up_to: t.up_to, rate: dec!(100), flat_fee: t.flat_fee })
        .collect();
    let models = [
        ChargeModel::Standard { unit_price: UNIT_PRICE_MAX },
        ChargeModel::Graduated { tiers: tiers.clone() },
        ChargeModel::Volume { tiers },
        ChargeModel::Package {
            package_size: dec!(0.000001),
            package_price: dec!(1000),
            free_units: dec!(0),
        },
        ChargeModel::Percentage {
            rate: dec!(100),
            fixed_amount: UNIT_PRICE_MAX,
            free_events: None,
            free_amount: None,
            min_per_event: Some(UNIT_PRICE_MAX),
            max_per_event: Some(UNIT_PRICE_MAX),
        },
        ChargeModel::GraduatedPercentage { tiers: percent_tiers },
    ];
    // One metric per charge (a plan charges a metric once), each at the period bound.
    let metric_of = |i: usize| if i == 0 { "calls".to_string() } else { format!("calls{i}") };
    for i in 1..crate::catalog::CHARGES_MAX {
        let metric = Metric {
            code: metric_of(i),
            name: metric_of(i),
            aggregation: Aggregation::Sum,
            property: Some("n".into()),
            allow_negative: false,
        };
        w.run(Command::DefineMetric(metric), "2025-01-01T00:00:00Z").unwrap();
    }
    let charges: Vec<Charge> = (0..crate::catalog::CHARGES_MAX)
        .map(|i| Charge {
            metric_code: metric_of(i),
            model: models[i % models.len()].clone(),
            pay_in_advance: false,
        })
        .collect();
    w.plan("max", AMOUNT_MAX, FeeTiming::Arrears, 0, charges, Some(AMOUNT_MAX));
    w.start("max", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let t = "2025-01-05T00:00:00Z";
    for i in 0..crate::catalog::CHARGES_MAX {
        let u = Usage {
            subscription_id: "s1".into(),
            transaction_id: format!("t{i}"),
            metric_code: metric_of(i),
            occurred_at: at(t),
            properties: BTreeMap::from([("n".to_string(), UNITS_MAX.to_string())]),
        };
        w.run(Command::RecordUsage(u), t).unwrap();
    }
    let inv = &w.bill("2025-02-01T00:00:00Z")[0];
    assert_eq!(inv.lines.len(), 1 + crate::catalog::CHARGES_MAX);
    assert!(inv.total > dec!(1e25) && inv.total < dec!(1e27), "total {}", inv.total);
    assert_eq!(inv.total, inv.subtotal * dec!(2), "100 % tax doubles the subtotal");
}

/// A `weighted_sum` level of 10^15 held for a whole leap year: the integral in level·µs
/// (3.16·10^28) is the largest the bounds allow, and still fits a Decimal.
#[test]
fn weighted_sum_at_the_bound_over_a_leap_year() {
    let mut w = World::new(dec!(0));
    let metric = Metric {
        code: "seats".into(),
        name: "Seats".into(),
        aggregation: Aggregation::WeightedSum,
        property: Some("delta".into()),
        allow_negative: false,
    };
    w.run(Command::DefineMetric(metric), "2024-01-01T00:00:00Z").unwrap();
    let mut plan_charge = graduated_spec_charge();
    plan_charge.metric_code = "seats".into();
    plan_charge.model = ChargeModel::Standard { unit_price: dec!(1) };
    let plan = Plan {
        code: "yearly".into(),
        version: 0,
        name: "yearly".into(),
        currency: Currency::parse("USD").unwrap(),
        interval: Interval::Yearly,
        base_fee: dec!(0),
        fee_timing: FeeTiming::Arrears,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        charges: vec![plan_charge],
    };
    w.run(Command::PublishPlan(plan), "2024-01-01T00:00:00Z").unwrap();
    w.start("yearly", Anchor::Anniversary, date(2024, 1, 1), "2024-01-01T00:00:00Z");
    let u = Usage {
        subscription_id: "s1".into(),
        transaction_id: "t1".into(),
        metric_code: "seats".into(),
        occurred_at: at("2024-01-01T00:00:00Z"),
        properties: BTreeMap::from([("delta".to_string(), "1000000000000000".to_string())]),
    };
    w.run(Command::RecordUsage(u), "2024-01-01T00:00:00Z").unwrap();
    let inv = &w.bill("2025-01-01T00:00:00Z")[0];
    assert_eq!(amounts(inv), vec![(LineKind::Usage, dec!(1000000000000000.00))]);
}

/// A plan from a log written before the input bounds (evolved, never decided now) whose unit
/// price rating now refuses: the subscription's billing stops, the error is reported to the
/// shell (which logs it) rather than dropped, and nothing is issued for it.
#[test]
fn a_billing_step_that_overflows_is_reported_not_dropped() {
    let mut w = World::new(dec!(0));
    let plan = Plan {
        code: "legacy".into(),
        version: 1,
        name: "legacy".into(),
        currency: Currency::parse("USD").unwrap(),
        interval: Interval::Monthly,
        base_fee: dec!(0),
        fee_timing: FeeTiming::Arrears,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        charges: vec![Charge {
            metric_code: "calls".into(),
            model: ChargeModel::Standard { unit_price: dec!(1e20) },
            pay_in_advance: false,
        }],
    };
    w.ledger.evolve(&Event::PlanPublished(plan), w.position);
    w.position += 1;
    w.start("legacy", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let t = "2025-01-05T00:00:00Z";
    w.usage("t1", "1000000000000000", t, t).expect("in bounds when recorded");
    let as_of = "2025-02-01T00:00:00Z";
    let (events, stopped) =
        w.ledger.run_subscription_reporting("s1", at(as_of), &ctx(as_of), w.position);
    assert!(events.is_empty(), "no invoice from an overflowing step: {events:?}");
    let error = stopped.expect("the overflow is reported");
    let out_of_bounds = crate::error::PLAN_OUT_OF_BOUNDS;
    assert!(
        matches!(&error, DomainError::Precondition { kind, .. } if *kind == out_of_bounds),
        "a stored plan outside the bounds, not a bad request: {error:?}"
    );
}

// ------------------------------------------------- overflow of a log written before the bounds

/// A plan as a log written before the input bounds may hold it: applied with `evolve`, never
/// validated (version 1 of `code`).
fn legacy_plan(code: &str, interval: Interval, fee: Decimal, timing: FeeTiming) -> Plan {
    Plan {
        code: code.into(),
        version: 1,
        name: code.into(),
        currency: Currency::parse("USD").unwrap(),
        interval,
        base_fee: fee,
        fee_timing: timing,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        charges: Vec::new(),
    }
}

impl World {
    /// Applies an event as replay does, bypassing `decide` (and its validation).
    fn evolve(&mut self, event: Event) {
        self.ledger.evolve(&event, self.position);
        self.position += 1;
    }

    fn start_as(&mut self, id: &str, customer: &str, plan: &str, anchor: Anchor, day: i8) {
        let cmd = Command::StartSubscription {
            subscription_id: id.into(),
            customer_id: customer.into(),
            plan_code: plan.into(),
            plan_version: None,
            anchor,
            start_date: Some(date(2025, 1, day)),
            billed_until: None,
        };
        self.run(cmd, "2025-01-01T10:00:00Z").unwrap();
    }
}

/// One subscription on a pre-bounds plan whose invoice overflows, one on a normal plan, billed
/// in one run: the first stops with an `AMOUNT_OVERFLOW` naming it and what overflowed (no
/// panic, nothing issued for it, also on a second run); the second is invoiced exactly as usual.
#[test]
fn an_overflowing_invoice_stops_its_subscription_and_the_run_bills_the_others() {
    const MAX: Decimal = Decimal::MAX;
    let usage_charge = Charge {
        metric_code: "calls".into(),
        model: ChargeModel::Standard { unit_price: dec!(1) },
        pay_in_advance: false,
    };
    // (tax %, base fee, minimum commitment, usage charge, anchor, start day, what overflows)
    let cases = [
        (dec!(10), MAX, None, false, Anchor::Anniversary, 1, "tax (10 % of"),
        (dec!(1), MAX, None, false, Anchor::Anniversary, 1, "total (subtotal + tax)"),
        (dec!(0), MAX, None, true, Anchor::Anniversary, 1, "subtotal (adding line 1"),
        (dec!(0), MAX, None, false, Anchor::Calendar, 15, "base fee of plan legacy v1 (17 of 31"),
        (dec!(0), dec!(0), Some(MAX), false, Anchor::Calendar, 15, "minimum commitment prorat"),
        (dec!(0), MAX, Some(dec!(1)), true, Anchor::Anniversary, 1, "charges counted against"),
    ];
    for (tax, fee, minimum, usage, anchor, day, what) in cases {
        let mut w = World::new(tax);
        let mut plan = legacy_plan("legacy", Interval::Monthly, fee, FeeTiming::Arrears);
        plan.minimum_commitment = minimum;
        plan.charges.extend(usage.then(|| usage_charge.clone()));
        w.evolve(Event::PlanPublished(plan));
        w.plan("basic", dec!(30), FeeTiming::Arrears, 0, Vec::new(), None);
        w.start_as("s1", "acme", "legacy", anchor, day);
        w.start_as("s2", "acme", "basic", Anchor::Anniversary, 1);
        if usage {
            w.usage("t1", "1", "2025-01-05T00:00:00Z", "2025-01-05T00:00:00Z").unwrap();
        }
        let as_of = "2025-02-01T00:00:00Z";
        for run in 0..2 {
            let issued = w.bill(as_of);
            let subs: Vec<&str> = issued.iter().map(|i| i.subscription_id.as_str()).collect();
            assert_eq!(subs, if run == 0 { vec!["s2"] } else { vec![] }, "{what}: run {run}");
            if run == 0 {
                let tax_amount = (dec!(30) * tax / dec!(100)).round_dp(2);
                let totals = (issued[0].subtotal, issued[0].tax, issued[0].total);
                assert_eq!(totals, (dec!(30), tax_amount, dec!(30) + tax_amount), "{what}");
            }
        }
        let (events, stopped) =
            w.ledger.run_subscription_reporting("s1", at(as_of), &ctx(as_of), w.position);
        assert!(events.is_empty(), "{what}: {events:?}");
        let error = stopped.expect("the overflow is reported");
        assert!(error.is_overflow(), "{what}: {error:?}");
        let DomainError::Precondition { subject, description, .. } = &error else { unreachable!() };
        assert_eq!(subject, "subscription-s1");
        assert!(description.contains(what), "want {what:?} in {description:?}");
        assert!(w.ledger.subscriptions["s1"].invoice_ids.is_empty(), "{what}");
    }
}

/// A stored plan whose charge is outside today's input bounds (a pre-bounds log: a unit price
/// of 10^20) cannot be rated: FAILED_PRECONDITION `PLAN_OUT_OF_BOUNDS` on the plan, never
/// INVALID_ARGUMENT (the request is fine). A billing run stops only that subscription; a usage
/// event of an in-advance charge is refused and changes nothing.
#[test]
fn a_plan_outside_the_input_bounds_is_a_failed_precondition_on_the_plan() {
    use crate::error::PLAN_OUT_OF_BOUNDS;
    let now = "2025-01-05T00:00:00Z";
    let mut w = World::new(dec!(0));
    for (code, pay_in_advance) in [("arrears-huge", false), ("advance-huge", true)] {
        let mut plan = legacy_plan(code, Interval::Monthly, dec!(0), FeeTiming::Arrears);
        plan.charges = vec![Charge {
            metric_code: "calls".into(),
            model: ChargeModel::Standard { unit_price: dec!(1e20) },
            pay_in_advance,
        }];
        w.evolve(Event::PlanPublished(plan));
    }
    w.plan("basic", dec!(30), FeeTiming::Arrears, 0, Vec::new(), None);
    w.start_as("s1", "acme", "arrears-huge", Anchor::Anniversary, 1);
    w.start_as("s2", "acme", "basic", Anchor::Anniversary, 1);
    w.start_as("s3", "acme", "advance-huge", Anchor::Anniversary, 1);
    let is_out_of_bounds = |e: &DomainError, plan: &str| {
        matches!(e, DomainError::Precondition { kind, subject, description }
            if *kind == PLAN_OUT_OF_BOUNDS && subject == plan && description.contains("unit_price"))
    };

    let before = (w.position, w.ledger.subscriptions["s3"].open.len());
    let usage = Usage {
        subscription_id: "s3".into(),
        transaction_id: "t1".into(),
        metric_code: "calls".into(),
        occurred_at: at(now),
        properties: BTreeMap::from([("n".to_string(), "1".to_string())]),
    };
    let refused = w.run(Command::RecordUsage(usage), now).expect_err("out of bounds");
    assert!(is_out_of_bounds(&refused, "plan-advance-huge"), "{refused:?}");
    assert_eq!((w.position, w.ledger.subscriptions["s3"].open.len()), before, "nothing applied");

    let as_of = "2025-02-01T00:00:00Z";
    let issued = w.bill(as_of);
    let subs: Vec<&str> = issued.iter().map(|i| i.subscription_id.as_str()).collect();
    assert!(subs.contains(&"s2") && !subs.contains(&"s1"), "{subs:?}");
    let (events, stopped) =
        w.ledger.run_subscription_reporting("s1", at(as_of), &ctx(as_of), w.position);
    assert!(events.is_empty(), "{events:?}");
    let error = stopped.expect("reported");
    assert!(is_out_of_bounds(&error, "plan-arrears-huge"), "{error:?}");
}

/// Commands that would issue an invoice (or compare fees) past `Decimal`'s range on pre-bounds
/// state are refused with `AMOUNT_OVERFLOW` and change nothing: a start on an in-advance plan,
/// usage of a pay-in-advance charge for a customer with an absurd tax rate, a plan change
/// between weekly plans whose monthly fee overflows.
#[test]
fn commands_that_would_issue_an_overflowing_invoice_are_refused_and_change_nothing() {
    let now = "2025-01-05T00:00:00Z";
    let mut w = World::new(dec!(10));
    let legacy = Customer {
        customer_id: "legacy".into(),
        name: "Legacy".into(),
        currency: Currency::parse("USD").unwrap(),
        time_zone: "UTC".into(),
        tax_rate: dec!(1e20),
    };
    w.evolve(Event::CustomerRegistered(legacy));
    w.evolve(Event::PlanPublished(legacy_plan(
        "huge",
        Interval::Monthly,
        Decimal::MAX,
        FeeTiming::Advance,
    )));
    w.evolve(Event::PlanPublished(legacy_plan(
        "weekly-huge",
        Interval::Weekly,
        Decimal::MAX,
        FeeTiming::Arrears,
    )));
    let mut weekly = legacy_plan("weekly", Interval::Weekly, dec!(10), FeeTiming::Arrears);
    weekly.version = 0;
    w.run(Command::PublishPlan(weekly), now).unwrap();
    let in_advance = Charge {
        metric_code: "calls".into(),
        model: ChargeModel::Standard { unit_price: dec!(1) },
        pay_in_advance: true,
    };
    w.plan("adv", dec!(0), FeeTiming::Arrears, 0, vec![in_advance], None);
    w.start_as("s1", "legacy", "adv", Anchor::Anniversary, 1);
    w.start_as("s2", "acme", "weekly", Anchor::Anniversary, 1);
    let usage = Usage {
        subscription_id: "s1".into(),
        transaction_id: "t1".into(),
        metric_code: "calls".into(),
        occurred_at: at(now),
        properties: BTreeMap::from([("n".to_string(), "1000000000000000".to_string())]),
    };
    let start = Command::StartSubscription {
        subscription_id: "s3".into(),
        customer_id: "acme".into(),
        plan_code: "huge".into(),
        plan_version: None,
        anchor: Anchor::Anniversary,
        start_date: None,
        billed_until: None,
    };
    let change = Command::ChangePlan {
        subscription_id: "s2".into(),
        plan_code: "weekly-huge".into(),
        plan_version: None,
        effective_date: None,
    };
    // (command, subject, what overflows)
    let cases = [
        (start, "subscription-s3", "invoice inv-s3-1 tax (10 % of"),
        (
            Command::RecordUsage(usage),
            "subscription-s1",
            "invoice inv-s1-1 tax (100000000000000000000 % of",
        ),
        (change, "subscription-s2", "monthly base fee of plan weekly-huge v1"),
    ];
    for (cmd, want_subject, what) in cases {
        let before = (w.position, w.ledger.subscriptions.len(), w.ledger.invoices.len());
        let error = w.run(cmd, now).expect_err(what);
        assert!(error.is_overflow(), "{what}: {error:?}");
        let DomainError::Precondition { subject, description, .. } = &error else { unreachable!() };
        assert_eq!(subject, want_subject);
        assert!(description.contains(what), "want {what:?} in {description:?}");
        let after = (w.position, w.ledger.subscriptions.len(), w.ledger.invoices.len());
        assert_eq!(after, before, "{what}: nothing applied");
    }
    assert!(w.ledger.subscriptions["s1"].open.is_empty(), "the usage was not recorded");
    assert!(w.ledger.subscriptions["s2"].pending_change.is_none());
}

mod alerts;
mod anomalies;
mod coupons;
mod credit_notes;
mod effective_dates;
mod imported_invoices;
mod input_rules;
mod progressive;
mod wallets;

/// A retry is recognised before anything that depends on the event being new: after its period
/// closed, after the service ended, even once its metric's value would be refused now.
#[test]
fn a_known_transaction_is_a_duplicate_or_a_conflict_before_period_and_service_checks() {
    let mut w = World::new(dec!(0));
    w.plan("metered", dec!(0), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
    w.start("metered", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    w.usage("t1", "5", "2025-01-05T00:00:00Z", "2025-01-05T00:00:00Z").unwrap();
    let u = s1_usage("t1", "5", "2025-01-05T00:00:00Z");
    let prior = Some(PriorUsage { digest: usage_digest(&u), position: 4 });
    w.bill("2025-02-01T00:00:00Z");
    let c = ctx("2025-02-02T00:00:00Z");
    // Without what the caller knows, the closed period refuses it ...
    let unknown = w.ledger.decide_usage(&u, &c, None);
    assert!(matches!(unknown, Err(DomainError::Precondition { kind: "PERIOD_CLOSED", .. })));
    // ... with it, it is the duplicate it is, at its original position.
    assert_eq!(w.ledger.decide_usage(&u, &c, prior), Ok(UsageOutcome::Duplicate { position: 4 }));
    let other = Usage { occurred_at: at("2025-01-06T00:00:00Z"), ..u.clone() };
    assert!(matches!(w.ledger.decide_usage(&other, &c, prior), Err(DomainError::Conflict(_))));
    // After the service ended (out of service), still a duplicate; and record_usage agrees.
    let cancel = Command::CancelSubscription {
        subscription_id: "s1".into(),
        immediately: true,
        effective_date: None,
    };
    w.run(cancel, "2025-02-02T00:00:00Z").unwrap();
    let late = ctx("2025-03-02T00:00:00Z");
    let before = w.position;
    let recorded = w.ledger.record_usage(u.clone(), &late, before, prior);
    assert_eq!(recorded, Ok(UsageOutcome::Duplicate { position: 4 }));
    // The shape and the subscription are checked first: a bad id or an unknown subscription
    // is refused whatever the caller passes.
    let ghost = Usage { subscription_id: "ghost".into(), ..u.clone() };
    assert!(matches!(
        w.ledger.decide_usage(&ghost, &late, prior),
        Err(DomainError::NotFound { .. })
    ));
    let bad = Usage { transaction_id: String::new(), ..u.clone() };
    assert!(matches!(w.ledger.decide_usage(&bad, &late, prior), Err(DomainError::Invalid(_))));
}

fn percentage_charge() -> Charge {
    let model = ChargeModel::Percentage {
        rate: dec!(2.9),
        fixed_amount: dec!(0.30),
        free_events: None,
        free_amount: None,
        min_per_event: None,
        max_per_event: None,
    };
    Charge { metric_code: "calls".into(), model, pay_in_advance: false }
}

#[test]
fn per_event_amounts_are_kept_only_for_metrics_priced_by_percentage() {
    let mut w = World::new(dec!(0));
    w.plan("metered", dec!(0), FeeTiming::Arrears, 0, vec![graduated_spec_charge()], None);
    w.start("metered", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    w.usage("t1", "5", "2025-01-05T00:00:00Z", "2025-01-05T00:00:00Z").unwrap();
    let usage = |w: &World| {
        let open = w.ledger.subscriptions["s1"].open.values().next().unwrap();
        let u = &open.usage["calls"];
        (u.amounts.len(), u.amounts_complete)
    };
    assert_eq!(usage(&w), (0, false), "no plan prices calls by percentage");
    assert!(w.ledger.percentage_metrics.is_empty());
    // A percentage plan on the metric is published now: from here on amounts are kept, but the
    // open period already holds an event without one.
    w.plan("payments", dec!(0), FeeTiming::Arrears, 0, vec![percentage_charge()], None);
    assert!(w.ledger.percentage_metrics.contains("calls"));
    w.usage("t2", "7", "2025-01-06T00:00:00Z", "2025-01-06T00:00:00Z").unwrap();
    assert_eq!(usage(&w), (1, false));
    // Moving the subscription onto it would rate that period from incomplete amounts: refused,
    // changing nothing.
    let change = Command::ChangePlan {
        subscription_id: "s1".into(),
        plan_code: "payments".into(),
        plan_version: None,
        effective_date: None,
    };
    let before = format!("{:?}", w.ledger.subscriptions["s1"].plans);
    let refused = w.run(change.clone(), "2025-01-07T00:00:00Z");
    assert!(
        matches!(&refused, Err(DomainError::Precondition { kind: AMOUNTS_NOT_KEPT, .. })),
        "{refused:?}"
    );
    assert_eq!(format!("{:?}", w.ledger.subscriptions["s1"].plans), before);
    // Once that period closed, the change goes through and the new period's amounts are whole.
    w.bill("2025-02-01T00:00:00Z");
    w.usage("t3", "100", "2025-02-03T00:00:00Z", "2025-02-03T00:00:00Z").unwrap();
    w.run(change, "2025-02-04T00:00:00Z").unwrap();
    let inv = &w.bill("2025-03-01T00:00:00Z")[0];
    // 2.9 % of 100 + 0.30 = 3.20.
    assert_eq!(amounts(inv), vec![(LineKind::Usage, dec!(3.20))]);
}
