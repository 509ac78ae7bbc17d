//! Amounts past `Decimal`'s range in a log written before the input bounds: a projection's
//! checked sum fails the event through the runner's error path (`Inconsistent`, naming what
//! overflowed and the position), never a panic, and nothing of that event is written.

mod common;

use common::{customer, dec, issued, paid, store_with, Store};
use domain::calendar::{Anchor, Interval};
use domain::catalog::{FeeTiming, Plan, PlanRef};
use domain::events::Event;
use domain::money::Currency;
use event_store::Position;
use jiff::civil::date;
use projections::invoices::InvoicesProjection;
use projections::journal::JournalProjection;
use projections::mrr::MrrProjection;
use projections::{Digest, Projection, ProjectionError, Runner};
use tempfile::TempDir;

use crate::common::config;

/// Applies `store` one event per batch until the runner stops; the error and the digest.
async fn run<P: Projection>(store: &Store, projection: P) -> (Option<ProjectionError>, Digest) {
    let dir = TempDir::new().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    let mut runner = Runner::open(&db, store.clone(), projection, config(1)).unwrap();
    let error = runner.catch_up().await.err();
    (error, runner.read_model().digest().unwrap())
}

/// The log fails at `position` with a message naming `what`, and the model is exactly the one
/// of the log without that event (and what follows it): nothing of the event is written.
async fn fails_at<P: Projection>(
    make: impl Fn() -> P,
    events: &[Event],
    position: Position,
    what: &str,
) {
    let (error, digest) = run(&store_with(events).await, make()).await;
    match error {
        Some(ProjectionError::Inconsistent { position: p, detail, .. }) => {
            assert_eq!(p, position, "{what}: {detail}");
            assert!(detail.contains(what), "want {what:?} in {detail:?}");
            assert!(detail.ends_with("overflows the decimal range"), "{detail}");
        }
        other => panic!("{what}: want Inconsistent at {position}, got {other:?}"),
    }
    let prefix = store_with(&events[..position as usize]).await;
    let (error, clean) = run(&prefix, make()).await;
    assert!(error.is_none(), "{what}: the prefix applies: {error:?}");
    assert_eq!(digest, clean, "{what}: nothing of the failing event is written");
}

const MAX: &str = "79228162514264337593543950335";

/// One line of 7.9·10^25 USD (the recognition rules take up to ≈ 7.9·10^25) and 1,000 % tax
/// (subtotal × rate stays in range): total 8.69·10^26; 92 of them pass `Decimal::MAX`.
fn huge(n: u32) -> Event {
    issued(&format!("s{n}"), 1, "c1", &["79000000000000000000000000"], "1000")
}

fn plan(fee: &str) -> Event {
    Event::PlanPublished(Plan {
        code: "p".into(),
        version: 1,
        name: "p".into(),
        currency: Currency::parse("USD").unwrap(),
        interval: Interval::Monthly,
        base_fee: dec(fee),
        fee_timing: FeeTiming::Arrears,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        charges: vec![],
    })
}

fn start(sub: &str) -> Event {
    Event::SubscriptionStarted {
        subscription_id: sub.into(),
        customer_id: "c1".into(),
        plan: PlanRef { code: "p".into(), version: 1 },
        anchor: Anchor::Anniversary,
        start_date: date(2025, 1, 1),
        trial_end: None,
        occurred_at: common::at(0),
        billed_until: None,
    }
}

#[tokio::test]
async fn journal_sums_that_overflow_fail_the_event_and_write_nothing() {
    let mut many = vec![customer("c1")];
    many.extend((1..=92).map(huge));
    // (log, failing position, what overflows)
    let cases: Vec<(Vec<Event>, Position, &str)> = vec![
        (many, 92, "balance of accounts_receivable (USD) on 2023-11-14 adding invoice inv-s92-1"),
        // A line whose minor units do not fit the recognition rules (it would have panicked).
        (vec![customer("c1"), issued("s1", 1, "c1", &[MAX], "0")], 1, "invoice inv-s1-1 line 0"),
    ];
    for (events, position, what) in cases {
        fails_at(JournalProjection::default, &events, position, what).await;
    }
}

#[tokio::test]
async fn invoice_payments_that_overflow_fail_the_event_and_write_nothing() {
    let inv = "inv-s1-1";
    let events =
        [customer("c1"), issued("s1", 1, "c1", &[MAX], "0"), paid(inv, MAX, 5), paid(inv, "1", 6)];
    let what = "sum of the payments of invoice inv-s1-1 (customer c1)";
    fails_at(|| InvoicesProjection, &events, 3, what).await;
}

#[tokio::test]
async fn mrr_sums_that_overflow_fail_the_event_and_write_nothing() {
    let usage = |sub| issued(sub, 1, "c1", &["0", "50000000000000000000000000000"], "0");
    // (log, failing position, what overflows)
    let cases: Vec<(Vec<Event>, Position, &str)> = vec![
        (vec![customer("c1"), usage("s1"), usage("s2")], 2, "usage revenue (USD) on 2025-01-31"),
        (
            vec![customer("c1"), plan("50000000000000000000000000000"), start("s1"), start("s2")],
            3,
            "MRR of customer c1 (USD) on 2025-01-01",
        ),
    ];
    for (events, position, what) in cases {
        fails_at(|| MrrProjection, &events, position, what).await;
    }
}
