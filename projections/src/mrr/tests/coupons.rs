//! The MRR `discount` effect of `recurring` and `forever` coupons (issue 13, item 6;
//! docs/decisions/0034-mrr-discounts.md): dated from the customer-local day a coupon is applied
//! to the day it is removed, applied again, or a recurring coupon's last discounted period ends.

use domain::calendar::local_midnight;
use domain::coupon::{CouponKind, CouponUse, Frequency};
use domain::invoice::with_discounts;

use super::*;

pub(super) fn pct(p: &str) -> CouponKind {
    CouponKind::Percentage { percent: d(p) }
}

pub(super) fn fixed(a: &str) -> CouponKind {
    CouponKind::FixedAmount { amount: d(a), currency: usd() }
}

pub(super) fn define(code: &str, kind: CouponKind, frequency: Frequency, plans: &[&str]) -> Event {
    Event::CouponDefined(Coupon {
        code: code.into(),
        kind,
        frequency,
        plan_codes: plans.iter().map(|p| p.to_string()).collect(),
        metric_codes: vec![],
        applies_to_add_ons: false,
        expires_on: None,
    })
}

/// Noon UTC of `on` (the fixture's customers are in UTC).
fn noon(on: Date) -> Timestamp {
    local_midnight(on, &jiff::tz::TimeZone::UTC) + jiff::SignedDuration::from_hours(12)
}

pub(super) fn apply(cust: &str, code: &str, on: Date) -> Event {
    Event::CouponApplied {
        customer_id: cust.into(),
        coupon_code: code.into(),
        occurred_at: noon(on),
    }
}

pub(super) fn remove(cust: &str, code: &str, on: Date) -> Event {
    Event::CouponRemoved {
        customer_id: cust.into(),
        coupon_code: code.into(),
        occurred_at: noon(on),
    }
}

fn month(y: i16, m: i8) -> Period {
    let start = date(y, m, 1);
    Period { start, end: start.checked_add(jiff::Span::new().months(1)).unwrap() }
}

/// A base-fee invoice of `sub` for `period`, with `uses` (coupon, amount) taken off its line.
fn invoice(
    id: &str,
    cust: &str,
    sub: &str,
    period: Period,
    base: &str,
    uses: &[(&str, &str)],
) -> Event {
    let header = InvoiceHeader {
        invoice_id: id.into(),
        customer_id: cust.into(),
        subscription_id: sub.into(),
        currency: usd(),
        period,
        issued_at: noon(period.start),
        reason: IssueReason::PeriodClose,
        tax_rate: Decimal::ZERO,
    };
    let line = LineDraft {
        kind: LineKind::BaseFee,
        description: "base".into(),
        metric_code: None,
        charge_model: None,
        units: None,
        service_period: period,
        unrounded: d(base),
    };
    let built = build_invoice(header, vec![line]).unwrap();
    let cut: Decimal = uses.iter().map(|(_, a)| d(a)).sum();
    let uses = uses.iter().map(|(c, a)| CouponUse { coupon_code: c.to_string(), amount: d(a) });
    Event::InvoiceIssued(with_discounts(built, &[cut], uses.collect()).unwrap())
}

fn monthly_plans() -> Vec<Event> {
    vec![
        customer("c1"),
        customer("c2"),
        plan("basic", Interval::Monthly, "100", 0),
        plan("pro", Interval::Monthly, "200", 0),
        plan("weekly", Interval::Weekly, "12", 0),
        plan("yearly", Interval::Yearly, "120", 0),
    ]
}

#[tokio::test]
async fn a_forever_percentage_is_a_contraction_from_the_day_applied() {
    let (jan1, jan15, feb1) = (date(2025, 1, 1), date(2025, 1, 15), date(2025, 2, 1));
    let mut log = monthly_plans();
    log.extend([
        define("p20", pct("20"), Frequency::Forever, &[]),
        start("s1", "c1", "basic", jan1, None),
        apply("c1", "p20", jan15),
        // Applied before the subscription starts: the discount starts with it, part of `new`.
        apply("c2", "p20", jan1),
        start("s2", "c2", "pro", feb1, None),
    ]);
    let f = Fixture::new(&log, 3).await;
    assert_eq!(f.cust("c1", date(2025, 1, 14)), d("100"));
    assert_eq!(f.cust("c1", jan15), d("80.00"));
    assert_eq!(f.cust("c1", date(2030, 1, 1)), d("80.00"));
    assert_eq!(f.cust("c2", feb1), d("160.00"));
    assert_eq!(f.mrr(feb1), d("240.00"));
    assert_eq!(
        f.moves(jan1, date(2030, 1, 1)),
        [
            mv(jan1, "c1", New, "100"),
            mv(jan15, "c1", Contraction, "-20"),
            mv(feb1, "c2", New, "160"),
        ]
    );
    let r = f.reader.retention(jan1, feb1, usd()).unwrap();
    assert_eq!((r.mrr_start, r.mrr_end), (d("100"), d("80")));
}

#[tokio::test]
async fn a_fixed_amount_is_per_interval_and_never_below_zero() {
    let jan1 = date(2025, 1, 1);
    let mut log = monthly_plans();
    log.extend([
        define("f5", fixed("5.00"), Frequency::Forever, &[]),
        define("f500", fixed("500.00"), Frequency::Forever, &[]),
        // c1: weekly 12.00 (52.00 a month) and yearly 120.00 (10.00 a month). 5.00 off each
        // invoice: 21.67 a month off the weekly one, 0.42 off the yearly one.
        start("s1", "c1", "weekly", jan1, None),
        start("s2", "c1", "yearly", jan1, None),
        apply("c1", "f5", date(2025, 1, 10)),
        // c2: 500.00 off a 100.00 month takes MRR to zero: churn, then reactivation when the
        // coupon is removed (movements are classified by the customer's MRR only).
        start("s3", "c2", "basic", jan1, None),
        apply("c2", "f500", date(2025, 2, 1)),
        remove("c2", "f500", date(2025, 3, 1)),
    ]);
    let f = Fixture::new(&log, 1).await;
    assert_eq!(f.cust("c1", date(2025, 1, 9)), d("62"));
    assert_eq!(f.cust("c1", date(2025, 1, 10)), d("39.91"));
    assert_eq!(f.cust("c2", date(2025, 2, 1)), d("0"));
    assert_eq!(f.cust("c2", date(2025, 3, 1)), d("100"));
    assert_eq!(
        f.moves(jan1, date(2030, 1, 1)),
        [
            mv(jan1, "c1", New, "62"),
            mv(jan1, "c2", New, "100"),
            mv(date(2025, 1, 10), "c1", Contraction, "-22.09"),
            mv(date(2025, 2, 1), "c2", Churn, "-100"),
            mv(date(2025, 3, 1), "c2", Reactivation, "100"),
        ]
    );
}

#[tokio::test]
async fn a_recurring_coupon_ends_with_its_last_discounted_period() {
    let jan1 = date(2025, 1, 1);
    let mut log = monthly_plans();
    log.extend([
        define("half3", pct("50"), Frequency::Recurring { periods: 3 }, &[]),
        start("s1", "c1", "basic", jan1, None),
        apply("c1", "half3", jan1),
        invoice("i1", "c1", "s1", month(2025, 1), "100", &[("half3", "50")]),
        invoice("i2", "c1", "s1", month(2025, 2), "100", &[("half3", "50")]),
    ]);
    let mut f = Fixture::new(&log, 2).await;
    // Two of three periods used: how long it still applies is not known yet.
    assert_eq!(f.cust("c1", date(2026, 1, 1)), d("50"));
    assert_eq!(f.moves(jan1, date(2030, 1, 1)), [mv(jan1, "c1", New, "50")]);
    f.push(&[invoice("i3", "c1", "s1", month(2025, 3), "100", &[("half3", "50")])]).await;
    // The third invoice discounted March: full price from April 1.
    assert_eq!(f.cust("c1", date(2025, 3, 31)), d("50"));
    assert_eq!(f.cust("c1", date(2025, 4, 1)), d("100"));
    assert_eq!(
        f.moves(jan1, date(2030, 1, 1)),
        [mv(jan1, "c1", New, "50"), mv(date(2025, 4, 1), "c1", Expansion, "50")]
    );
    // A later invoice without the coupon changes nothing.
    f.push(&[invoice("i4", "c1", "s1", month(2025, 4), "100", &[])]).await;
    assert_eq!(f.moves(date(2025, 4, 2), date(2030, 1, 1)), []);
}

#[tokio::test]
async fn removal_and_applying_again_end_a_span_on_their_day() {
    let (jan1, jan20, feb1) = (date(2025, 1, 1), date(2025, 1, 20), date(2025, 2, 1));
    let mut log = monthly_plans();
    log.extend([
        define("p20", pct("20"), Frequency::Forever, &[]),
        define("once50", pct("50"), Frequency::Recurring { periods: 1 }, &[]),
        start("s1", "c1", "basic", jan1, None),
        start("s2", "c2", "basic", jan1, None),
        apply("c1", "p20", date(2025, 1, 10)),
        remove("c1", "p20", date(2025, 3, 10)),
        // Applied and removed on the same day: no effect.
        apply("c1", "p20", date(2025, 4, 1)),
        remove("c1", "p20", date(2025, 4, 1)),
        // c2: one period, used by January's invoice (discounted until Feb 1), applied again
        // on Jan 20 once used up: the new application takes over, never both at once.
        apply("c2", "once50", jan1),
        invoice("i1", "c2", "s2", month(2025, 1), "100", &[("once50", "50")]),
        apply("c2", "once50", jan20),
        invoice("i2", "c2", "s2", month(2025, 2), "100", &[("once50", "50")]),
    ]);
    let f = Fixture::new(&log, 4).await;
    assert_eq!(f.cust("c1", date(2025, 3, 9)), d("80"));
    assert_eq!(f.cust("c1", date(2025, 3, 10)), d("100"));
    assert_eq!(f.cust("c1", date(2025, 4, 1)), d("100"));
    assert_eq!(f.cust("c2", jan20), d("50"));
    assert_eq!(f.cust("c2", feb1), d("50"));
    assert_eq!(f.cust("c2", date(2025, 3, 1)), d("100"));
    assert_eq!(
        f.moves(jan1, date(2030, 1, 1)),
        [
            mv(jan1, "c1", New, "100"),
            mv(jan1, "c2", New, "50"),
            mv(date(2025, 1, 10), "c1", Contraction, "-20"),
            mv(date(2025, 3, 1), "c2", Expansion, "50"),
            mv(date(2025, 3, 10), "c1", Expansion, "20"),
        ]
    );
}

#[tokio::test]
async fn plan_limits_and_coupons_that_are_never_mrr() {
    let (jan1, feb1, mar1) = (date(2025, 1, 1), date(2025, 2, 1), date(2025, 3, 1));
    let mut log = monthly_plans();
    let mut usage_only = Coupon {
        code: "api50".into(),
        kind: pct("50"),
        frequency: Frequency::Forever,
        plan_codes: vec![],
        metric_codes: vec!["api".into()],
        applies_to_add_ons: true,
        expires_on: None,
    };
    log.extend([
        define("pro10", pct("10"), Frequency::Forever, &["pro"]),
        define("once", fixed("30.00"), Frequency::Once, &[]),
        Event::CouponDefined(usage_only.clone()),
        start("s1", "c1", "basic", jan1, None),
        start("s2", "c1", "pro", jan1, None),
        apply("c1", "pro10", jan1),
        apply("c1", "once", jan1),
        apply("c1", "api50", jan1),
        // A `once` coupon's use on an invoice is not MRR either.
        invoice("i1", "c1", "s1", month(2025, 1), "100", &[("once", "30")]),
        // The basic subscription moves to pro: the coupon covers it from then on.
        change("s1", "pro", PlanChangeKind::Upgrade, feb1),
        remove("c1", "once", mar1),
        remove("c1", "api50", mar1),
    ]);
    let f = Fixture::new(&log, 5).await;
    assert_eq!(f.cust("c1", jan1), d("280"));
    assert_eq!(f.cust("c1", feb1), d("360"));
    assert_eq!(
        f.moves(jan1, date(2030, 1, 1)),
        [mv(jan1, "c1", New, "280"), mv(feb1, "c1", Expansion, "80")]
    );
    // Coupons combine in the order applied: 10 % of pro, then a forever 50.00 off each.
    usage_only.code = "f50".into();
    usage_only.kind = fixed("50.00");
    usage_only.metric_codes.clear();
    let mut f = f;
    f.push(&[Event::CouponDefined(usage_only), apply("c1", "f50", mar1)]).await;
    assert_eq!(f.cust("c1", mar1), d("260"));
}

#[tokio::test]
async fn coupons_are_dated_in_the_customers_time_zone() {
    let mut log = monthly_plans();
    log.push(Event::CustomerRegistered(Customer {
        customer_id: "ny".into(),
        name: "New York".into(),
        currency: usd(),
        time_zone: "America/New_York".into(),
        tax_rate: Decimal::ZERO,
    }));
    log.extend([
        define("p20", pct("20"), Frequency::Forever, &[]),
        start("s1", "ny", "basic", date(2025, 1, 1), None),
        // 02:00 UTC on Jan 15 is still Jan 14 in New York.
        Event::CouponApplied {
            customer_id: "ny".into(),
            coupon_code: "p20".into(),
            occurred_at: local_midnight(date(2025, 1, 15), &jiff::tz::TimeZone::UTC)
                + jiff::SignedDuration::from_hours(2),
        },
    ]);
    let f = Fixture::new(&log, 2).await;
    assert_eq!(f.cust("ny", date(2025, 1, 13)), d("100"));
    assert_eq!(f.cust("ny", date(2025, 1, 14)), d("80"));
}

#[tokio::test]
async fn the_digest_does_not_depend_on_batches_and_bad_references_abort() {
    let mut log = monthly_plans();
    log.extend([
        define("p20", pct("20"), Frequency::Forever, &[]),
        define("half3", pct("50"), Frequency::Recurring { periods: 2 }, &[]),
        start("s1", "c1", "basic", date(2025, 1, 1), None),
        apply("c1", "p20", date(2025, 1, 5)),
        apply("c1", "half3", date(2025, 1, 6)),
        invoice("i1", "c1", "s1", month(2025, 1), "100", &[("p20", "20"), ("half3", "40")]),
        invoice("i2", "c1", "s1", month(2025, 2), "100", &[("p20", "20"), ("half3", "40")]),
        remove("c1", "p20", date(2025, 5, 1)),
    ]);
    let mut digests = Vec::new();
    for batch in [1, 3, 1000] {
        let f = Fixture::new(&log, batch).await;
        assert_eq!(f.cust("c1", date(2025, 2, 28)), d("40"));
        assert_eq!(f.cust("c1", date(2025, 3, 1)), d("80"));
        assert_eq!(f.cust("c1", date(2025, 5, 1)), d("100"));
        digests.push(f.reader.model().digest().unwrap());
    }
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[0], digests[2]);

    // A coupon applied before it is defined, to an unknown customer, or an invoice using a
    // coupon the customer does not hold: the batch fails and nothing of it is written.
    let bad: [&[Event]; 3] = [
        &[apply("c1", "nope", date(2025, 1, 1))],
        &[apply("ghost", "p20", date(2025, 1, 1))],
        &[invoice("i9", "c2", "s2", month(2025, 1), "100", &[("p20", "20")])],
    ];
    for events in bad {
        let mut f = Fixture::new(&monthly_plans(), 10).await;
        let base = monthly_plans().len() as u64 + 1;
        f.push(&[define("p20", pct("20"), Frequency::Forever, &[])]).await;
        f.push(&[start("s2", "c2", "basic", date(2025, 1, 1), None)]).await;
        append_all(&f.store, events).await;
        let err = f.runner.catch_up().await.unwrap_err();
        assert!(matches!(err, ProjectionError::Inconsistent { .. }), "{err}");
        assert_eq!(f.runner.checkpoint(), base + 1);
    }
}
