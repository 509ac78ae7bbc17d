//! Progressive billing through the ledger (docs/decisions/0037): invoices issued as usage
//! crosses the plan's thresholds, the closing invoice net of them, and the same totals as the
//! twin subscription billed only at close (with a minimum commitment and a coupon too).

use super::coupons;
use super::*;
use crate::coupon::{CouponKind, Frequency};
use crate::invoice::IssueReason;
use crate::progressive::ProgressiveBilling;

/// 1.00 per call in arrears, 10.00 base fee in arrears; thresholds at 50 and 120, then every 100.
fn publish(w: &mut World, code: &str, progressive: bool, minimum: Option<Decimal>) {
    let plan = Plan {
        code: code.into(),
        version: 0,
        name: code.into(),
        currency: Currency::parse("USD").unwrap(),
        interval: Interval::Monthly,
        base_fee: dec!(10.00),
        fee_timing: FeeTiming::Arrears,
        trial_days: 0,
        minimum_commitment: minimum,
        progressive_billing: progressive.then(|| ProgressiveBilling {
            thresholds: vec![dec!(50), dec!(120)],
            every: Some(dec!(100)),
        }),
        charges: vec![Charge {
            metric_code: "calls".into(),
            model: ChargeModel::Standard { unit_price: dec!(1.00) },
            pay_in_advance: false,
        }],
    };
    w.run(Command::PublishPlan(plan), "2025-01-01T00:00:00Z").unwrap();
}

/// Usage of January, each with the progressive invoice it brings: (calls, usage billed).
const JANUARY: [(&str, Option<Decimal>); 7] = [
    ("30", None),
    // 55 reaches 50: all 55 so far.
    ("25", Some(dec!(55.00))),
    // 95: the next threshold above the 55 billed is 120.
    ("40", None),
    ("30", Some(dec!(70.00))),
    // 225 reaches 220 (120 + 100): the 100 not billed yet.
    ("100", Some(dec!(100.00))),
    // 235: the next is 320.
    ("10", None),
    // Usage that adds nothing brings no invoice.
    ("0", None),
];

fn world(progressive: bool, minimum: Option<Decimal>) -> World {
    let mut w = World::new(dec!(10));
    publish(&mut w, "p", progressive, minimum);
    w.start("p", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    w
}

fn january(w: &mut World) -> Vec<Invoice> {
    let mut issued = Vec::new();
    for (i, (calls, _)) in JANUARY.iter().enumerate() {
        let day = format!("2025-01-{:02}T12:00:00Z", i + 2);
        issued.extend(invoices(&w.usage(&format!("t{i}"), calls, &day, &day).unwrap()));
    }
    issued
}

#[test]
fn thresholds_invoice_the_usage_so_far_and_the_close_bills_the_rest() {
    let mut w = world(true, None);
    let progressive = january(&mut w);
    let want: Vec<Decimal> = JANUARY.iter().filter_map(|(_, billed)| *billed).collect();
    let got: Vec<Decimal> = progressive.iter().map(|i| i.subtotal).collect();
    assert_eq!(got, want);
    for inv in &progressive {
        assert_eq!(inv.reason, IssueReason::Progressive);
        assert_eq!(inv.period.start, date(2025, 1, 1));
        assert_eq!(inv.tax, inv.subtotal * dec!(0.10), "taxed like any invoice");
        assert!(inv.lines.iter().all(|l| l.kind == LineKind::Usage));
    }
    // The draft shows what the close will bill: usage net of the 225.00 already billed.
    let draft = w
        .ledger
        .draft_invoice("s1", at("2025-01-20T00:00:00Z"), crate::anomaly::Completeness::PeriodSoFar)
        .unwrap()
        .unwrap();
    let closing = w.bill("2025-02-01T00:00:00Z");
    assert_eq!(closing.len(), 1);
    let close = &closing[0];
    assert_eq!(close.reason, IssueReason::PeriodClose);
    let usage = close.lines.iter().find(|l| l.kind == LineKind::Usage).unwrap();
    assert_eq!(usage.amount, dec!(10.00), "235 rated less 225 billed");
    assert_eq!(usage.units, Some(dec!(235)));
    assert!(usage.description.contains("less 225.00 billed progressively"), "{usage:?}");
    assert_eq!(close.subtotal, dec!(20.00), "base fee 10.00 + usage 10.00");
    assert_eq!(draft.subtotal, close.subtotal);
    // The next period starts with nothing billed progressively.
    assert!(w.ledger.subscriptions["s1"].progressive_billed.is_empty());
}

/// The same usage with and without thresholds bills the same in all: Σ subtotals per line kind,
/// also with a minimum commitment above the usage and with a 10 % coupon.
#[test]
fn progressive_and_close_only_bill_the_same_table() {
    let percent = |p: Decimal| CouponKind::Percentage { percent: p };
    let fixed =
        CouponKind::FixedAmount { amount: dec!(10), currency: Currency::parse("USD").unwrap() };
    let cases = [
        (None, None),
        (Some(dec!(300)), None),
        (None, Some((percent(dec!(10)), Frequency::Forever))),
        (Some(dec!(300)), Some((percent(dec!(10)), Frequency::Forever))),
        (None, Some((percent(dec!(20)), Frequency::Recurring { periods: 1 }))),
        (None, Some((percent(dec!(20)), Frequency::Once))),
        (None, Some((fixed.clone(), Frequency::Forever))),
        (None, Some((fixed.clone(), Frequency::Once))),
    ];
    for (minimum, coupon) in cases {
        let totals = |progressive: bool| {
            let mut w = world(progressive, minimum);
            if let Some((kind, frequency)) = coupon.clone() {
                let c = coupons::coupon("ten", kind, frequency);
                w.run(Command::DefineCoupon(c), "2025-01-01T11:00:00Z").unwrap();
                coupons::apply(&mut w, "ten", "2025-01-01T11:00:00Z").unwrap();
            }
            let mut all = january(&mut w);
            all.extend(w.bill("2025-02-01T00:00:00Z"));
            let mut by_kind: BTreeMap<&'static str, Decimal> = BTreeMap::new();
            for line in all.iter().flat_map(|i| &i.lines) {
                *by_kind.entry(line.kind.as_str()).or_default() += line.amount + line.discount;
            }
            let discount: Decimal = all.iter().flat_map(|i| &i.lines).map(|l| l.discount).sum();
            let subtotal: Decimal = all.iter().map(|i| i.subtotal).sum();
            (by_kind, discount, subtotal, all.len())
        };
        let (with, without) = (totals(true), totals(false));
        assert_eq!(
            (&with.0, with.1, with.2),
            (&without.0, without.1, without.2),
            "{minimum:?} {coupon:?}"
        );
        assert_eq!((with.3, without.3), (4, 1), "three progressive invoices and the close");
    }
}

/// A progressive invoice is never voided (its usage is recognized and deducted from the close):
/// it is corrected by a credit note; the refusal changes nothing.
#[test]
fn a_progressive_invoice_is_not_voided() {
    let mut w = world(true, None);
    let progressive = january(&mut w);
    let void =
        Command::VoidInvoice { invoice_id: progressive[1].invoice_id.clone(), reason: "x".into() };
    match w.run(void, "2025-01-20T00:00:00Z") {
        Err(DomainError::Precondition { kind, .. }) => assert_eq!(kind, "INVOICE_NOT_VOIDABLE"),
        other => panic!("{other:?}"),
    }
    let billed = &w.ledger.subscriptions["s1"].progressive_billed[&date(2025, 1, 1)];
    assert_eq!(billed["calls"], dec!(225.00));
}

/// A metric whose rated amount fell since it was billed is not given back by a progressive
/// invoice (its lines only bill): the close nets it. Volume pricing of a second metric: its
/// rated amount falls when a higher tier's lower price applies to all units.
#[test]
fn progressive_lines_only_bill_and_the_close_nets_what_fell() {
    let mut w = World::new(dec!(10));
    let storage = Metric {
        code: "gb".into(),
        name: "Storage".into(),
        aggregation: Aggregation::Sum,
        property: Some("n".into()),
        allow_negative: false,
    };
    w.run(Command::DefineMetric(storage), "2025-01-01T00:00:00Z").unwrap();
    let tiers = vec![
        Tier { up_to: Some(dec!(100)), unit_price: dec!(1.00), flat_fee: dec!(0) },
        Tier { up_to: None, unit_price: dec!(0.10), flat_fee: dec!(0) },
    ];
    publish(&mut w, "p", true, None);
    let mut plan = w.ledger.plans["p"][0].clone();
    plan.code = "p2".into();
    plan.charges.push(Charge {
        metric_code: "gb".into(),
        model: ChargeModel::Volume { tiers },
        pay_in_advance: false,
    });
    w.run(Command::PublishPlan(plan), "2025-01-01T00:00:00Z").unwrap();
    w.start("p2", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let gb = |w: &mut World, tx: &str, n: &str, day: &str| {
        let mut u = s1_usage(tx, n, day);
        u.metric_code = "gb".into();
        invoices(&w.run(Command::RecordUsage(u), day).unwrap())
    };
    // 90 GB: 90.00 ≥ 50, billed. Then 20 GB more: 110 GB at 0.10 = 11.00, below the 90.00
    // billed. Then 200 calls: 211.00 rated ≥ 120: only the calls are billed (200.00).
    let first = gb(&mut w, "g1", "90", "2025-01-03T00:00:00Z");
    assert_eq!(first.iter().map(|i| i.subtotal).collect::<Vec<_>>(), [dec!(90.00)]);
    assert!(gb(&mut w, "g2", "20", "2025-01-04T00:00:00Z").is_empty());
    let day = "2025-01-05T00:00:00Z";
    let calls = invoices(&w.usage("c1", "200", day, day).unwrap());
    let lines: Vec<(Option<&str>, Decimal)> =
        calls[0].lines.iter().map(|l| (l.metric_code.as_deref(), l.amount)).collect();
    assert_eq!(lines, [(Some("calls"), dec!(200.00))]);
    let close = w.bill("2025-02-01T00:00:00Z");
    let usage: Vec<(Option<&str>, Decimal)> = close[0]
        .lines
        .iter()
        .filter(|l| l.kind == LineKind::Usage)
        .map(|l| (l.metric_code.as_deref(), l.amount))
        .collect();
    assert_eq!(usage, [(Some("calls"), dec!(0.00)), (Some("gb"), dec!(-79.00))]);
}

/// A recurring coupon that discounted a progressive invoice counts that period at the
/// subscription's close even when the close gives it nothing to discount (here: a coupon on
/// calls only, all billed progressively), as billing only at close would have.
#[test]
fn a_recurring_coupon_counts_the_period_a_progressive_invoice_used() {
    for progressive in [true, false] {
        let mut w = world(progressive, None);
        let mut c = coupons::coupon(
            "calls-20",
            CouponKind::Percentage { percent: dec!(20) },
            Frequency::Recurring { periods: 1 },
        );
        c.metric_codes = vec!["calls".into()];
        w.run(Command::DefineCoupon(c), "2025-01-01T11:00:00Z").unwrap();
        coupons::apply(&mut w, "calls-20", "2025-01-01T11:00:00Z").unwrap();
        let day = "2025-01-02T12:00:00Z";
        let billed = invoices(&w.usage("t1", "60", day, day).unwrap());
        assert_eq!(billed.len(), usize::from(progressive));
        let close = w.bill("2025-02-01T00:00:00Z");
        let given: Vec<Decimal> = close[0].coupons.iter().map(|u| u.amount).collect();
        let want = if progressive { dec!(0.00) } else { dec!(12.00) };
        assert_eq!(given, [want], "progressive: {progressive}");
        let held = &w.ledger.customers["acme"].coupons[0];
        assert_eq!(held.periods_left, 0, "progressive: {progressive}");
        assert!(held.pending_periods.is_empty());
    }
}

/// Folding the log into a fresh ledger gives the same progressive state and draft: it is
/// decided once, and replayed from the invoices.
#[test]
fn progressive_state_replays_from_the_log() {
    let mut w = world(true, None);
    january(&mut w);
    let mut replayed = Ledger::default();
    for (position, event) in w.log.iter().enumerate() {
        replayed.evolve(event, position as u64);
    }
    let (live, folded) = (&w.ledger.subscriptions["s1"], &replayed.subscriptions["s1"]);
    assert_eq!(live.progressive_billed, folded.progressive_billed);
    assert_eq!(live.billed_by_period, folded.billed_by_period);
    assert_eq!(live.progressive_billed[&date(2025, 1, 1)]["calls"], dec!(225.00));
    let at_ = at("2025-01-20T00:00:00Z");
    assert_eq!(
        w.ledger.draft_invoice("s1", at_, crate::anomaly::Completeness::PeriodSoFar).unwrap(),
        replayed.draft_invoice("s1", at_, crate::anomaly::Completeness::PeriodSoFar).unwrap()
    );
}
