use std::sync::Arc;

use domain::calendar::{Anchor, Interval, Period};
use domain::catalog::{Customer, FeeTiming};
use domain::events::PlanChangeKind;
use domain::invoice::{build_invoice, InvoiceHeader, IssueReason, LineDraft};
use event_store::MemoryStore;
use jiff::civil::date;
use jiff::Timestamp;
use tempfile::TempDir;

use super::*;
use crate::{Runner, RunnerConfig};
use Movement::{Churn, Contraction, Expansion, New, Reactivation};

mod coupons;

use coupons::{apply, define, fixed, pct, remove};
use domain::coupon::Frequency;
use domain::mrr::{discounted_mrr, BaseMrr};

type Store = Arc<MemoryStore>;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn at(n: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + n).unwrap()
}

fn customer(id: &str) -> Event {
    Event::CustomerRegistered(Customer {
        customer_id: id.into(),
        name: format!("Customer {id}"),
        currency: usd(),
        time_zone: "UTC".into(),
        tax_rate: Decimal::ZERO,
    })
}

fn plan(code: &str, interval: Interval, fee: &str, trial_days: u32) -> Event {
    Event::PlanPublished(Plan {
        code: code.into(),
        version: 1,
        name: code.into(),
        currency: usd(),
        interval,
        base_fee: d(fee),
        fee_timing: FeeTiming::Advance,
        trial_days,
        minimum_commitment: None,
        progressive_billing: None,
        charges: vec![],
    })
}

fn pref(code: &str) -> PlanRef {
    PlanRef { code: code.into(), version: 1 }
}

fn start(sub: &str, cust: &str, plan: &str, on: Date, trial_end: Option<Date>) -> Event {
    Event::SubscriptionStarted {
        subscription_id: sub.into(),
        customer_id: cust.into(),
        plan: pref(plan),
        anchor: Anchor::Anniversary,
        start_date: on,
        trial_end,
        occurred_at: at(0),
        billed_until: None,
    }
}

fn change(sub: &str, plan: &str, kind: PlanChangeKind, on: Date) -> Event {
    Event::PlanChanged { subscription_id: sub.into(), plan: pref(plan), kind, effective_date: on }
}

fn cancel(sub: &str, on: Date) -> Event {
    Event::SubscriptionCanceled {
        subscription_id: sub.into(),
        effective_date: on,
        immediately: false,
        occurred_at: at(0),
    }
}

fn usage_invoice(id: &str, period: Period, base: &str, usage: &[&str]) -> Event {
    let header = InvoiceHeader {
        invoice_id: id.into(),
        customer_id: "c1".into(),
        subscription_id: "s1".into(),
        currency: usd(),
        period,
        issued_at: at(1),
        reason: IssueReason::PeriodClose,
        tax_rate: d("20"),
    };
    let line = |kind, amount: &str| LineDraft {
        kind,
        description: "line".into(),
        metric_code: None,
        charge_model: None,
        units: None,
        service_period: period,
        unrounded: d(amount),
    };
    let mut lines = vec![line(LineKind::BaseFee, base)];
    lines.extend(usage.iter().map(|a| line(LineKind::Usage, a)));
    Event::InvoiceIssued(build_invoice(header, lines).expect("in range"))
}

async fn append_all(store: &Store, events: &[Event]) {
    for event in events {
        crate::testkit::append_event(store, event).await;
    }
}

struct Fixture {
    _dir: TempDir,
    store: Store,
    runner: Runner<Store, MrrProjection>,
    reader: MrrReader,
}

impl Fixture {
    async fn new(events: &[Event], batch: usize) -> Fixture {
        let dir = TempDir::new().unwrap();
        let store: Store = Arc::new(MemoryStore::new());
        append_all(&store, events).await;
        let db = crate::open_db(dir.path()).unwrap();
        let config = RunnerConfig { batch_events_max: batch, poll_interval_ms: 20 };
        let mut runner = Runner::open(&db, store.clone(), MrrProjection, config).unwrap();
        runner.catch_up().await.unwrap();
        let reader = MrrReader::new(runner.read_model());
        Fixture { _dir: dir, store, runner, reader }
    }

    async fn push(&mut self, events: &[Event]) {
        append_all(&self.store, events).await;
        self.runner.catch_up().await.unwrap();
    }

    fn mrr(&self, on: Date) -> Decimal {
        self.reader.mrr_at(on, usd()).unwrap()
    }

    fn cust(&self, c: &str, on: Date) -> Decimal {
        self.reader.customer_mrr_at(c, on, usd()).unwrap()
    }

    /// (date, customer, movement, delta) in [from, to].
    fn moves(&self, from: Date, to: Date) -> Vec<(Date, String, Movement, Decimal)> {
        let list = self.reader.customer_movements(from, to, usd()).unwrap();
        list.into_iter()
            .map(|m| (m.record.date, m.customer_id, m.record.movement, m.record.delta()))
            .collect()
    }

    /// Per bucket: (start, [(movement, count, amount) with count > 0], net).
    fn buckets(&self, from: Date, to: Date, g: Granularity) -> Vec<BucketView> {
        let list = self.reader.movements(from, to, g, usd()).unwrap();
        list.into_iter()
            .map(|b| {
                let kinds = b
                    .totals
                    .iter()
                    .filter(|(_, t)| t.count > 0)
                    .map(|(m, t)| (*m, t.count, t.amount))
                    .collect();
                (b.start, kinds, b.net)
            })
            .collect()
    }
}

type BucketView = (Date, Vec<(Movement, u64, Decimal)>, Decimal);

fn mv(on: Date, c: &str, m: Movement, delta: &str) -> (Date, String, Movement, Decimal) {
    (on, c.to_string(), m, d(delta))
}

#[tokio::test]
async fn new_subscriptions_normalize_to_a_month() {
    let events = [
        customer("c1"),
        customer("c2"),
        customer("c3"),
        plan("monthly", Interval::Monthly, "30", 0),
        plan("yearly", Interval::Yearly, "120", 0),
        plan("weekly", Interval::Weekly, "12", 0),
        start("s1", "c1", "monthly", date(2025, 1, 1), None),
        start("s2", "c2", "yearly", date(2025, 1, 10), None),
        start("s3", "c3", "weekly", date(2025, 1, 20), None),
    ];
    let f = Fixture::new(&events, 4).await;
    assert_eq!(f.mrr(date(2024, 12, 31)), d("0"));
    assert_eq!(f.mrr(date(2025, 1, 1)), d("30"));
    assert_eq!(f.mrr(date(2025, 1, 10)), d("40"));
    assert_eq!(f.mrr(date(2025, 1, 19)), d("40"));
    // 12 × 52 / 12 = 52.
    assert_eq!(f.mrr(date(2025, 1, 20)), d("92"));
    assert_eq!(f.mrr(date(2030, 1, 1)), d("92"));
    assert_eq!(f.cust("c1", date(2025, 6, 1)), d("30"));
    assert_eq!(f.cust("c2", date(2025, 6, 1)), d("10"));
    assert_eq!(f.cust("c3", date(2025, 6, 1)), d("52"));
    assert_eq!(f.cust("c3", date(2025, 1, 19)), d("0"));
    assert_eq!(f.cust("nobody", date(2025, 6, 1)), d("0"));
    let (jan1, jan31) = (date(2025, 1, 1), date(2025, 1, 31));
    assert_eq!(
        f.moves(jan1, jan31),
        [
            mv(date(2025, 1, 1), "c1", New, "30"),
            mv(date(2025, 1, 10), "c2", New, "10"),
            mv(date(2025, 1, 20), "c3", New, "52"),
        ]
    );
    assert_eq!(
        f.buckets(jan1, jan31, Granularity::Day),
        [
            (date(2025, 1, 1), vec![(New, 1, d("30"))], d("30")),
            (date(2025, 1, 10), vec![(New, 1, d("10"))], d("10")),
            (date(2025, 1, 20), vec![(New, 1, d("52"))], d("52")),
        ]
    );
    assert_eq!(
        f.buckets(date(2024, 1, 1), date(2025, 12, 31), Granularity::Month),
        [(jan1, vec![(New, 3, d("92"))], d("92"))]
    );
    // Inclusive bounds; nothing on Jan 2–9.
    assert_eq!(f.buckets(date(2025, 1, 2), date(2025, 1, 9), Granularity::Day), []);
    assert_eq!(f.buckets(date(2025, 1, 10), date(2025, 1, 10), Granularity::Day).len(), 1);
    let bad = f.reader.movements(jan31, jan1, Granularity::Day, usd());
    assert!(matches!(bad, Err(ProjectionError::InvalidArgument(_))));
}

#[tokio::test]
async fn upgrade_downgrade_and_cancellation_are_dated_by_effect() {
    let (jan1, jan16, feb1, mar1) =
        (date(2025, 1, 1), date(2025, 1, 16), date(2025, 2, 1), date(2025, 3, 1));
    let mut f = Fixture::new(
        &[
            customer("c1"),
            plan("basic", Interval::Monthly, "30", 0),
            plan("pro", Interval::Monthly, "62", 0),
            start("s1", "c1", "basic", jan1, None),
            // Mid-month upgrade: effective the day it is made.
            change("s1", "pro", PlanChangeKind::Upgrade, jan16),
            // A downgrade is scheduled for the period end: no movement yet.
            Event::PlanChangeScheduled {
                subscription_id: "s1".into(),
                plan: pref("basic"),
                effective_date: feb1,
                occurred_at: at(5),
            },
        ],
        1,
    )
    .await;
    assert_eq!(f.mrr(date(2025, 1, 15)), d("30"));
    assert_eq!(f.mrr(jan16), d("62"));
    assert_eq!(f.mrr(feb1), d("62"));
    // The close of January applies it, dated at the period end.
    f.push(&[change("s1", "basic", PlanChangeKind::Downgrade, feb1)]).await;
    assert_eq!(f.mrr(date(2025, 1, 31)), d("62"));
    assert_eq!(f.mrr(feb1), d("30"));
    // Canceled at period end on Feb 10: churn at the end of service, Mar 1.
    f.push(&[cancel("s1", mar1)]).await;
    assert_eq!(f.mrr(date(2025, 2, 28)), d("30"));
    assert_eq!(f.mrr(mar1), d("0"));
    assert_eq!(
        f.moves(jan1, date(2025, 12, 31)),
        [
            mv(jan1, "c1", New, "30"),
            mv(jan16, "c1", Expansion, "32"),
            mv(feb1, "c1", Contraction, "-32"),
            mv(mar1, "c1", Churn, "-30"),
        ]
    );
    assert_eq!(
        f.buckets(jan1, date(2025, 12, 31), Granularity::Month),
        [
            (jan1, vec![(New, 1, d("30")), (Expansion, 1, d("32"))], d("62")),
            (feb1, vec![(Contraction, 1, d("-32"))], d("-32")),
            (mar1, vec![(Churn, 1, d("-30"))], d("-30")),
        ]
    );
}

#[tokio::test]
async fn reactivation_and_several_subscriptions() {
    let mut f = Fixture::new(
        &[
            customer("c1"),
            customer("c2"),
            plan("basic", Interval::Monthly, "30", 0),
            plan("weekly", Interval::Weekly, "12", 0),
            start("s1", "c1", "basic", date(2025, 1, 1), None),
            start("s3", "c2", "basic", date(2025, 1, 1), None),
            start("s4", "c2", "weekly", date(2025, 1, 5), None),
            cancel("s1", date(2025, 1, 11)),
            cancel("s3", date(2025, 2, 1)),
        ],
        3,
    )
    .await;
    f.push(&[start("s2", "c1", "basic", date(2025, 3, 1), None)]).await;
    assert_eq!(
        f.moves(date(2025, 1, 1), date(2025, 12, 31)),
        [
            mv(date(2025, 1, 1), "c1", New, "30"),
            mv(date(2025, 1, 1), "c2", New, "30"),
            mv(date(2025, 1, 5), "c2", Expansion, "52"),
            mv(date(2025, 1, 11), "c1", Churn, "-30"),
            mv(date(2025, 2, 1), "c2", Contraction, "-30"),
            mv(date(2025, 3, 1), "c1", Reactivation, "30"),
        ]
    );
    assert_eq!(f.mrr(date(2025, 1, 10)), d("112"));
    assert_eq!(f.mrr(date(2025, 2, 1)), d("52"));
    assert_eq!(f.mrr(date(2025, 3, 1)), d("82"));
    assert_eq!(
        f.buckets(date(2025, 1, 1), date(2025, 1, 1), Granularity::Day),
        [(date(2025, 1, 1), vec![(New, 2, d("60"))], d("60"))]
    );
}

#[tokio::test]
async fn a_later_event_restates_future_movements() {
    // The cancellation at period end is recorded first (churn on Feb 1); a subscription
    // started afterwards on Jan 20 turns that churn into a contraction.
    let mut f = Fixture::new(
        &[
            customer("c1"),
            plan("basic", Interval::Monthly, "30", 0),
            plan("weekly", Interval::Weekly, "12", 0),
            start("s1", "c1", "basic", date(2025, 1, 1), None),
            cancel("s1", date(2025, 2, 1)),
        ],
        2,
    )
    .await;
    let all = (date(2025, 1, 1), date(2025, 12, 31));
    assert_eq!(
        f.moves(all.0, all.1),
        [mv(date(2025, 1, 1), "c1", New, "30"), mv(date(2025, 2, 1), "c1", Churn, "-30")]
    );
    f.push(&[start("s2", "c1", "weekly", date(2025, 1, 20), None)]).await;
    assert_eq!(
        f.moves(all.0, all.1),
        [
            mv(date(2025, 1, 1), "c1", New, "30"),
            mv(date(2025, 1, 20), "c1", Expansion, "52"),
            mv(date(2025, 2, 1), "c1", Contraction, "-30"),
        ]
    );
    assert_eq!(
        f.buckets(all.0, all.1, Granularity::Day)[2],
        (date(2025, 2, 1), vec![(Contraction, 1, d("-30"))], d("-30"))
    );
    assert_eq!(f.mrr(date(2025, 2, 1)), d("52"));
}

#[tokio::test]
async fn trial_counts_from_trial_end() {
    let (jan1, jan15) = (date(2025, 1, 1), date(2025, 1, 15));
    let mut f = Fixture::new(
        &[
            customer("c1"),
            plan("trial", Interval::Monthly, "30", 14),
            start("s1", "c1", "trial", jan1, Some(jan15)),
        ],
        5,
    )
    .await;
    // Until TrialEnded is recorded, the subscription has no MRR on any date.
    assert_eq!(f.mrr(date(2025, 6, 1)), d("0"));
    assert_eq!(f.moves(jan1, date(2025, 12, 31)), []);
    f.push(&[Event::TrialEnded { subscription_id: "s1".into(), date: jan15 }]).await;
    assert_eq!(f.mrr(date(2025, 1, 14)), d("0"));
    assert_eq!(f.mrr(jan15), d("30"));
    assert_eq!(f.moves(jan1, date(2025, 12, 31)), [mv(jan15, "c1", New, "30")]);
    assert_eq!(f.cust("c1", date(2025, 1, 14)), d("0"));
    assert_eq!(f.cust("c1", jan15), d("30"));
}

#[tokio::test]
async fn retention_of_three_customers() {
    let (feb1, jun1) = (date(2025, 2, 1), date(2025, 6, 1));
    let f = Fixture::new(
        &[
            plan("p100", Interval::Monthly, "100", 0),
            plan("p150", Interval::Monthly, "150", 0),
            plan("p50", Interval::Monthly, "50", 0),
            plan("p40", Interval::Monthly, "40", 0),
            plan("p20", Interval::Monthly, "20", 0),
            plan("p999", Interval::Monthly, "999", 0),
            // A: 100 → upgraded to 150 on Mar 10.
            start("a", "A", "p100", date(2025, 1, 1), None),
            change("a", "p150", PlanChangeKind::Upgrade, date(2025, 3, 10)),
            // B: 50 → churned on Apr 1.
            start("b", "B", "p50", date(2025, 1, 1), None),
            cancel("b", date(2025, 4, 1)),
            // C: 40 → downgraded to 20 on May 1.
            start("c", "C", "p40", date(2025, 1, 15), None),
            change("c", "p20", PlanChangeKind::Downgrade, date(2025, 5, 1)),
            // D: starts after the window start: not in the cohort.
            start("d", "D", "p999", date(2025, 3, 1), None),
        ],
        1000,
    )
    .await;
    // Σ start = 100 + 50 + 40 = 190; Σ end = 150 + 0 + 20 = 170;
    // Σ min = 100 + 0 + 20 = 120. NRR = 170/190 ≈ 0.8947, GRR = 120/190 ≈ 0.6316.
    let r = f.reader.retention(feb1, jun1, usd()).unwrap();
    assert_eq!(r.cohort_size, 3);
    assert_eq!((r.mrr_start, r.mrr_end, r.mrr_kept), (d("190"), d("170"), d("120")));
    assert_eq!(r.nrr, Some(d("170") / d("190")));
    assert_eq!(r.grr, Some(d("120") / d("190")));
    assert_eq!(r.nrr.unwrap().round_dp(4), d("0.8947"));
    assert_eq!(r.grr.unwrap().round_dp(4), d("0.6316"));
    // The default window: 12 months ending Feb 1, 2026 starts on Feb 1, 2025.
    let year = f.reader.retention_trailing_year(date(2026, 2, 1), usd()).unwrap();
    assert_eq!((year.start, year.cohort_size), (feb1, 3));
    assert_eq!((year.nrr, year.grr), (r.nrr, r.grr));
    // Before anyone had MRR: an empty cohort.
    let empty = f.reader.retention(date(2024, 1, 1), jun1, usd()).unwrap();
    assert_eq!((empty.cohort_size, empty.nrr, empty.grr), (0, None, None));
    // Another currency has no customers.
    let eur = Currency::parse("EUR").unwrap();
    assert_eq!(f.reader.retention(feb1, jun1, eur).unwrap().cohort_size, 0);
    assert_eq!(f.reader.mrr_at(jun1, eur).unwrap(), d("0"));
}

#[tokio::test]
async fn usage_revenue_beside_mrr() {
    let jan = Period { start: date(2025, 1, 1), end: date(2025, 2, 1) };
    let feb = Period { start: date(2025, 2, 1), end: date(2025, 3, 1) };
    let mut f = Fixture::new(
        &[
            customer("c1"),
            plan("basic", Interval::Monthly, "30", 0),
            start("s1", "c1", "basic", date(2025, 1, 1), None),
            usage_invoice("i1", jan, "30", &["12.345", "0.004"]),
            usage_invoice("i2", feb, "30", &["7"]),
            usage_invoice("i3", jan, "30", &[]),
        ],
        2,
    )
    .await;
    let year = (date(2025, 1, 1), date(2025, 12, 31));
    let days = f.reader.usage_revenue(year.0, year.1, Granularity::Day, usd()).unwrap();
    // 12.345 → 12.35 and 0.004 → 0.00 dated Jan 31; 7 dated Feb 28; base fees excluded.
    assert_eq!(
        days,
        [
            UsageBucket { start: date(2025, 1, 31), lines: 2, amount: d("12.35") },
            UsageBucket { start: date(2025, 2, 28), lines: 1, amount: d("7") },
        ]
    );
    let months = f.reader.usage_revenue(year.0, year.1, Granularity::Month, usd()).unwrap();
    assert_eq!(months[0], UsageBucket { start: date(2025, 1, 1), lines: 2, amount: d("12.35") });
    // Usage is not MRR.
    assert_eq!(f.mrr(date(2025, 3, 1)), d("30"));
    f.push(&[Event::InvoiceVoided {
        invoice_id: "i2".into(),
        reason: "duplicate".into(),
        occurred_at: at(9),
    }])
    .await;
    let months = f.reader.usage_revenue(year.0, year.1, Granularity::Month, usd()).unwrap();
    assert_eq!(months, [UsageBucket { start: date(2025, 1, 1), lines: 2, amount: d("12.35") }]);
}

/// A deterministic pseudo-random generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn plus(on: Date, days: u64) -> Date {
    on.checked_add(jiff::Span::new().days(days as i64)).unwrap()
}

/// The coupons of [`random_log`]: forever and recurring, percentage and fixed, some limited
/// to the plans `p1*` or to a metric (never MRR), and a `once` coupon (never MRR).
fn random_coupons() -> Vec<Event> {
    let mut metric = define("metric", pct("30"), Frequency::Forever, &[]);
    if let Event::CouponDefined(c) = &mut metric {
        c.metric_codes = vec!["api".into()];
    }
    vec![
        define("pct20", pct("20"), Frequency::Forever, &[]),
        define("pct50p1", pct("50"), Frequency::Recurring { periods: 3 }, &["p10", "p11", "p12"]),
        define("fix7", fixed("7.00"), Frequency::Forever, &[]),
        define("fix100p1", fixed("100.00"), Frequency::Forever, &["p10", "p11", "p12"]),
        define("once", pct("90"), Frequency::Once, &[]),
        metric,
    ]
}

/// Plans, customers and subscriptions with random starts, trials, plan changes and
/// cancellations, and coupons applied and removed; each subscription's (and each customer's
/// coupons') events in order, interleaved.
fn random_log(seed: u64) -> Vec<Event> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let fees = ["10", "30", "62", "12", "120", "0"];
    let intervals = [Interval::Monthly, Interval::Weekly, Interval::Yearly];
    let mut events: Vec<Event> = Vec::new();
    let mut plans = Vec::new();
    for (i, fee) in fees.iter().enumerate() {
        for (j, interval) in intervals.iter().enumerate() {
            let code = format!("p{i}{j}");
            events.push(plan(&code, *interval, fee, 0));
            plans.push(code);
        }
    }
    events.extend(random_coupons());
    let codes = ["pct20", "pct50p1", "fix7", "fix100p1", "once", "metric"];
    let base = date(2025, 1, 1);
    let mut per_sub: Vec<Vec<Event>> = Vec::new();
    for c in 0..6 {
        let cust = format!("c{c}");
        events.push(customer(&cust));
        // Up to three coupons, each applied on a random day and maybe removed (then maybe
        // applied again) later; never two open applications of one code at once.
        let mut evs = Vec::new();
        let mut day = plus(base, rng.below(150));
        for _ in 0..rng.below(4) {
            let code = codes[rng.below(codes.len() as u64) as usize];
            if evs.iter().any(
                |e| matches!(e, Event::CouponApplied { coupon_code, .. } if coupon_code == code),
            ) {
                continue;
            }
            evs.push(apply(&cust, code, day));
            if rng.below(2) == 0 {
                day = plus(day, rng.below(90));
                evs.push(remove(&cust, code, day));
                if rng.below(2) == 0 {
                    day = plus(day, rng.below(30));
                    evs.push(apply(&cust, code, day));
                }
            }
            day = plus(day, rng.below(40));
        }
        if !evs.is_empty() {
            evs.reverse();
            per_sub.push(evs);
        }
        for s in 0..=rng.below(3) {
            let sub = format!("s{c}-{s}");
            let mut evs = Vec::new();
            let on = plus(base, rng.below(200));
            let pick = |rng: &mut Rng| plans[rng.below(plans.len() as u64) as usize].clone();
            let trial = rng.below(3) == 0;
            let trial_end = plus(on, 14);
            evs.push(start(&sub, &cust, &pick(&mut rng), on, trial.then_some(trial_end)));
            let mut last = on;
            if trial && rng.below(4) != 0 {
                evs.push(Event::TrialEnded { subscription_id: sub.clone(), date: trial_end });
                last = trial_end;
            }
            for _ in 0..rng.below(3) {
                last = plus(last, rng.below(60));
                evs.push(change(&sub, &pick(&mut rng), PlanChangeKind::Upgrade, last));
            }
            if rng.below(2) == 0 {
                evs.push(cancel(&sub, plus(last, rng.below(90))));
            }
            evs.reverse();
            per_sub.push(evs);
        }
    }
    while !per_sub.is_empty() {
        let i = rng.below(per_sub.len() as u64) as usize;
        events.push(per_sub[i].pop().unwrap());
        if per_sub[i].is_empty() {
            per_sub.remove(i);
        }
    }
    events
}

/// A customer's MRR on `on`, by replaying the log naively, event by event; coupons: the
/// applications in force on `on` (applied by then, not removed by then), in log order.
fn oracle(log: &[Event], customer: &str, on: Date) -> Decimal {
    let mut defined: BTreeMap<String, Coupon> = BTreeMap::new();
    let mut applied: Vec<(Coupon, Date, Option<Date>)> = Vec::new();
    let mut plan_fee: BTreeMap<String, Plan> = BTreeMap::new();
    // subscription → (started by `on`, plan on `on`, in trial on `on`, ended by `on`)
    let mut subs: BTreeMap<String, (bool, Option<Plan>, bool, bool)> = BTreeMap::new();
    let day = |at: &Timestamp| at.to_zoned(jiff::tz::TimeZone::UTC).date();
    for event in log {
        match event {
            Event::CouponDefined(c) => {
                defined.insert(c.code.clone(), c.clone());
            }
            Event::CouponApplied { customer_id, coupon_code, occurred_at }
                if customer_id == customer =>
            {
                applied.push((defined[coupon_code].clone(), day(occurred_at), None));
            }
            Event::CouponRemoved { customer_id, coupon_code, occurred_at }
                if customer_id == customer =>
            {
                let last = applied.iter_mut().rev().find(|a| a.0.code == *coupon_code).unwrap();
                last.2 = Some(day(occurred_at));
            }
            Event::PlanPublished(p) => {
                plan_fee.insert(p.code.clone(), p.clone());
            }
            Event::SubscriptionStarted {
                subscription_id,
                customer_id,
                plan,
                start_date,
                trial_end,
                ..
            } if customer_id == customer => {
                let p = plan_fee[&plan.code].clone();
                subs.insert(
                    subscription_id.clone(),
                    (*start_date <= on, Some(p), trial_end.is_some(), false),
                );
            }
            Event::TrialEnded { subscription_id, date } if *date <= on => {
                if let Some(s) = subs.get_mut(subscription_id) {
                    s.2 = false;
                }
            }
            Event::PlanChanged { subscription_id, plan, effective_date, .. }
                if *effective_date <= on =>
            {
                if let Some(s) = subs.get_mut(subscription_id) {
                    s.1 = Some(plan_fee[&plan.code].clone());
                }
            }
            Event::SubscriptionCanceled { subscription_id, effective_date, .. }
                if *effective_date <= on =>
            {
                if let Some(s) = subs.get_mut(subscription_id) {
                    s.3 = true;
                }
            }
            _ => {}
        }
    }
    let coupons: Vec<&Coupon> = applied
        .iter()
        .filter(|(_, from, until)| *from <= on && until.is_none_or(|u| on < u))
        .map(|(c, _, _)| c)
        .collect();
    subs.values()
        .filter(|(started, _, in_trial, ended)| *started && !*in_trial && !*ended)
        .map(|(_, plan, _, _)| {
            let plan = plan.as_ref().unwrap();
            let mrr = subscription_mrr(plan, false);
            let base = BaseMrr { mrr, plan_code: &plan.code, interval: plan.interval };
            discounted_mrr(&base, &coupons, usd())
        })
        .sum()
}

#[tokio::test]
async fn movements_sum_to_the_change_of_mrr_over_random_logs() {
    let (mut total, mut kinds) = (0, BTreeSet::new());
    for seed in 1..=12 {
        let log = random_log(seed);
        let f = Fixture::new(&log, 7).await;
        let customers: Vec<String> = (0..6).map(|c| format!("c{c}")).collect();
        let mut rng = Rng(seed + 1000);
        let day0 = date(2024, 12, 1);
        for _ in 0..20 {
            let a = plus(day0, rng.below(500));
            let b = plus(a, rng.below(300));
            let moved: Decimal = f
                .reader
                .movements(a, b, Granularity::Day, usd())
                .unwrap()
                .iter()
                .map(|bucket| bucket.net)
                .sum();
            let before = f.mrr(a.yesterday().unwrap());
            assert_eq!(moved, f.mrr(b) - before, "seed {seed}: [{a}, {b}]");
            let monthly: Decimal = f
                .reader
                .movements(a, b, Granularity::Month, usd())
                .unwrap()
                .iter()
                .map(|bucket| bucket.net)
                .sum();
            assert_eq!(monthly, moved, "seed {seed}");
            // Total MRR = Σ of the customers' = what a naive replay of the log gives.
            let sum: Decimal = customers.iter().map(|c| f.cust(c, b)).sum();
            assert_eq!(f.mrr(b), sum, "seed {seed} at {b}");
            for c in &customers {
                assert_eq!(f.cust(c, b), oracle(&log, c, b), "seed {seed}: {c} at {b}");
            }
        }
        // Every movement's sign fits its kind, and each customer's list is a valid walk.
        let all = f.reader.customer_movements(day0, date(2027, 1, 1), usd()).unwrap();
        kinds.extend(all.iter().map(|m| m.record.movement));
        total += all.len();
        for m in &all {
            let up = matches!(m.record.movement, New | Expansion | Reactivation);
            assert_eq!(m.record.delta() > Decimal::ZERO, up, "seed {seed}: {m:?}");
            let day_before = m.record.date.yesterday().unwrap();
            assert_eq!(f.cust(&m.customer_id, day_before), m.record.before);
            assert_eq!(f.cust(&m.customer_id, m.record.date), m.record.after);
        }
    }
    // The logs are not vacuous: many movements, of every kind.
    assert!(total >= 100, "{total} movements");
    assert_eq!(kinds.len(), Movement::ALL.len(), "{kinds:?}");
}

#[tokio::test]
async fn movement_pages_and_currencies_agree_with_the_whole_listing() {
    let empty = Fixture::new(&[customer("c1")], 7).await;
    assert!(empty.reader.movement_currencies().unwrap().is_empty());
    for seed in [2, 5] {
        let f = Fixture::new(&random_log(seed), 7).await;
        assert_eq!(f.reader.movement_currencies().unwrap(), [usd()], "seed {seed}");
        let mut rng = Rng(seed + 2000);
        let day0 = date(2024, 12, 1);
        for _ in 0..10 {
            let a = plus(day0, rng.below(500));
            let b = plus(a, rng.below(300));
            let whole = f.reader.customer_movements(a, b, usd()).unwrap();
            for size in [1, 3, 0] {
                let (mut paged, mut token) = (Vec::new(), None);
                loop {
                    let page = f
                        .reader
                        .customer_movements_page(a, b, usd(), token.as_deref(), size)
                        .unwrap();
                    let max = if size == 0 { PAGE_SIZE_DEFAULT } else { size };
                    assert!(page.movements.len() <= max);
                    paged.extend(page.movements);
                    match page.next_page_token {
                        Some(t) => token = Some(t),
                        None => break,
                    }
                }
                assert_eq!(paged, whole, "seed {seed}: [{a}, {b}] by {size}");
            }
        }
    }
    let f = Fixture::new(&[customer("c1")], 7).await;
    for token in ["", "x", "2025-01-01", "2025-13-01/c1", "2025-01-01/"] {
        let bad = f.reader.customer_movements_page(
            date(2025, 1, 1),
            date(2025, 2, 1),
            usd(),
            Some(token),
            1,
        );
        assert!(matches!(bad, Err(ProjectionError::InvalidArgument(_))), "{token:?}");
    }
}

#[tokio::test]
async fn digest_is_the_same_for_every_batch_size() {
    for seed in [3, 8] {
        let mut log = random_log(seed);
        let jan = Period { start: date(2025, 1, 1), end: date(2025, 2, 1) };
        log.push(customer("c1"));
        log.push(plan("basic", Interval::Monthly, "30", 0));
        log.push(start("s1", "c1", "basic", date(2025, 1, 1), None));
        log.push(usage_invoice("i1", jan, "30", &["12.345"]));
        log.push(usage_invoice("i2", jan, "30", &["1"]));
        log.push(Event::InvoiceVoided {
            invoice_id: "i2".into(),
            reason: "x".into(),
            occurred_at: at(3),
        });
        let mut digests = Vec::new();
        for batch in [1, 5, 1000] {
            let f = Fixture::new(&log, batch).await;
            assert_eq!(f.runner.checkpoint(), log.len() as u64);
            digests.push(f.reader.model().digest().unwrap());
        }
        assert_eq!(digests[0], digests[1], "seed {seed}");
        assert_eq!(digests[0], digests[2], "seed {seed}");
    }
}

#[tokio::test]
async fn unknown_references_abort_the_batch() {
    let f = Fixture::new(&[customer("c1")], 10).await;
    let mut f = f;
    append_all(&f.store, &[start("s1", "c1", "missing", date(2025, 1, 1), None)]).await;
    let err = f.runner.catch_up().await.unwrap_err();
    assert!(matches!(err, ProjectionError::Inconsistent { .. }), "{err}");
    assert_eq!(f.runner.checkpoint(), 1);
    let bad = f.reader.customer_mrr_at("a/b", date(2025, 1, 1), usd());
    assert!(matches!(bad, Err(ProjectionError::InvalidArgument(_))));
}
