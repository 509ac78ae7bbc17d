//! Usage revenue is recognized as it is consumed (SPEC §5): each day accrues the increase of
//! the period's rated usage (Dr unbilled receivable / Cr usage revenue); the invoice bills it
//! out of unbilled receivable. Hand-computed expectations over events decided by the real
//! domain ledger.

use std::collections::BTreeMap;
use std::sync::Arc;

use domain::calendar::{Anchor, Interval};
use domain::catalog::{Charge, Customer, FeeTiming, Metric, Plan};
use domain::commands::{Command, Context, Policy};
use domain::events::{Event, Usage};
use domain::invoice::LineKind;
use domain::ledger::Ledger;
use domain::money::Currency;
use domain::rating::{Aggregation, ChargeModel, Tier};
use domain::recognition::RevenueType;
use event_store::MemoryStore;
use jiff::civil::{date, Date};
use jiff::Timestamp;
use projections::journal::{Account, Balances, EntryKind, JournalProjection, JournalReader};
use projections::{Runner, RunnerConfig};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

/// Monthly, base fee in advance, calls graduated: the first 100 free, then `price` each.
fn plan(code: &str, fee: Decimal, price: Decimal) -> Plan {
    let tiers = vec![
        Tier { up_to: Some(dec!(100)), unit_price: Decimal::ZERO, flat_fee: Decimal::ZERO },
        Tier { up_to: None, unit_price: price, flat_fee: Decimal::ZERO },
    ];
    Plan {
        code: code.into(),
        version: 0,
        name: code.into(),
        currency: usd(),
        interval: Interval::Monthly,
        base_fee: fee,
        fee_timing: FeeTiming::Advance,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        charges: vec![Charge {
            metric_code: "calls".into(),
            model: ChargeModel::Graduated { tiers },
            pay_in_advance: false,
        }],
    }
}

fn at(s: &str) -> Timestamp {
    format!("{s}T12:00:00Z").parse().unwrap()
}

fn usage(n: u32, day: &str, calls: u32) -> (Timestamp, Command) {
    let u = Usage {
        subscription_id: "s1".into(),
        transaction_id: format!("t{n}"),
        metric_code: "calls".into(),
        occurred_at: at(day),
        properties: BTreeMap::from([("n".to_string(), calls.to_string())]),
    };
    (at(day), Command::RecordUsage(u))
}

/// Jan: 50 calls on the 3rd (free), 100 + 30 on the 10th (8.00 so far), 100 on the 20th
/// (18.00). Billing on Feb 1 invoices 18.00 of usage. Feb: 200 calls on the 5th (10.00), an
/// upgrade to "pro" (0.05 a call) on the 15th re-rates February to 5.00.
fn events() -> Vec<Event> {
    decide(commands())
}

fn commands() -> Vec<(Timestamp, Command)> {
    let setup = [
        Command::DefineMetric(Metric {
            code: "calls".into(),
            name: "Calls".into(),
            aggregation: Aggregation::Sum,
            property: Some("n".into()),
            allow_negative: false,
        }),
        Command::PublishPlan(plan("api", dec!(10), dec!(0.10))),
        Command::PublishPlan(plan("pro", dec!(20), dec!(0.05))),
        Command::RegisterCustomer(Customer {
            customer_id: "c1".into(),
            name: "C".into(),
            currency: usd(),
            time_zone: "UTC".into(),
            tax_rate: Decimal::ZERO,
        }),
        Command::StartSubscription {
            subscription_id: "s1".into(),
            customer_id: "c1".into(),
            plan_code: "api".into(),
            plan_version: None,
            anchor: Anchor::Calendar,
            start_date: None,
            billed_until: None,
        },
    ];
    let mut commands: Vec<(Timestamp, Command)> =
        setup.into_iter().map(|c| (at("2025-01-01"), c)).collect();
    commands.extend([
        usage(1, "2025-01-03", 50),
        usage(2, "2025-01-10", 100),
        usage(3, "2025-01-10", 30),
        usage(4, "2025-01-20", 100),
        (at("2025-02-01"), Command::RunBilling { as_of: at("2025-02-01") }),
        usage(5, "2025-02-05", 200),
    ]);
    commands.push((
        at("2025-02-15"),
        Command::ChangePlan {
            subscription_id: "s1".into(),
            plan_code: "pro".into(),
            plan_version: None,
            effective_date: None,
        },
    ));
    commands
}

fn decide(commands: Vec<(Timestamp, Command)>) -> Vec<Event> {
    let mut ledger = Ledger::default();
    let mut events = Vec::new();
    for (now, cmd) in commands {
        let ctx = Context { now, policy: Policy::default() };
        let new = ledger.execute(&cmd, &ctx, events.len() as u64).expect("a valid command");
        events.extend(new);
    }
    events
}

async fn journal(events: &[Event], batch_events_max: usize) -> (tempfile::TempDir, JournalReader) {
    let store = Arc::new(MemoryStore::new());
    for e in events {
        projections::testkit::append_event(&store, e).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    let config = RunnerConfig { batch_events_max, ..RunnerConfig::default() };
    let mut runner = Runner::open(&db, store, JournalProjection::default(), config).unwrap();
    runner.catch_up().await.unwrap();
    (dir, JournalReader::new(runner.read_model()))
}

fn balances(books: &JournalReader, d: Date) -> Balances {
    books.balances(d).unwrap().into_iter().next().map(|(_, b)| b).unwrap_or_default()
}

fn usage_revenue(b: &Balances) -> Decimal {
    b.recognized_revenue.get(&RevenueType::Usage).copied().unwrap_or_default()
}

#[tokio::test]
async fn usage_accrues_day_by_day_and_the_invoice_bills_it_out_of_unbilled() {
    let (_dir, books) = journal(&events(), 1_000).await;
    let expect = [
        (date(2025, 1, 9), dec!(0), dec!(0)),
        (date(2025, 1, 10), dec!(8.00), dec!(8.00)),
        (date(2025, 1, 19), dec!(8.00), dec!(8.00)),
        (date(2025, 1, 31), dec!(18.00), dec!(18.00)),
        // Invoiced on Feb 1: out of unbilled receivable, into accounts receivable.
        (date(2025, 2, 1), dec!(0), dec!(18.00)),
        (date(2025, 2, 5), dec!(10.00), dec!(28.00)),
        // The upgrade re-rates February with pro's price: 100 × 0.05 = 5.00.
        (date(2025, 2, 15), dec!(5.00), dec!(23.00)),
    ];
    for (d, unbilled, revenue) in expect {
        let b = balances(&books, d);
        assert_eq!((b.unbilled_receivable, usage_revenue(&b)), (unbilled, revenue), "as of {d}");
    }
    // Nothing is paid: January's fee (10, at the start) + the Feb 1 invoice (18 + 10).
    let feb1 = balances(&books, date(2025, 2, 1));
    assert_eq!(feb1.accounts_receivable, dec!(38.00));
}

#[tokio::test]
async fn the_usage_line_schedule_is_what_was_accrued() {
    let events = events();
    let (_dir, books) = journal(&events, 1_000).await;
    let invoice = events
        .iter()
        .find_map(|e| match e {
            Event::InvoiceIssued(i) if i.lines.iter().any(|l| l.kind == LineKind::Usage) => {
                Some(i.clone())
            }
            _ => None,
        })
        .expect("the Feb 1 invoice");
    let index = invoice.lines.iter().position(|l| l.kind == LineKind::Usage).unwrap();
    assert_eq!(invoice.lines[index].amount, dec!(18.00));
    let schedule = books.line_schedule(&invoice.invoice_id, index).unwrap().unwrap();
    let nonzero: Vec<(Date, Decimal)> =
        schedule.entries.into_iter().filter(|(_, a)| !a.is_zero()).collect();
    assert_eq!(nonzero, vec![(date(2025, 1, 10), dec!(8.00)), (date(2025, 1, 20), dec!(10.00))]);
    let page = books.entries(None, 1_000).unwrap();
    let accruals: Vec<(Date, Decimal)> = page
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::UsageAccrual)
        .map(|e| {
            let unbilled = e.postings.iter().filter(|p| p.account == Account::UnbilledReceivable);
            (e.date, unbilled.map(|p| p.debit - p.credit).sum())
        })
        .collect();
    assert_eq!(
        accruals,
        vec![
            (date(2025, 1, 10), dec!(8.00)),
            (date(2025, 1, 20), dec!(10.00)),
            (date(2025, 2, 5), dec!(10.00)),
            (date(2025, 2, 15), dec!(-5.00)),
        ]
    );
}

#[tokio::test]
async fn current_usage_draft_follows_the_open_period() {
    let (_dir, books) = journal(&events(), 1_000).await;
    let draft = books.current_usage("s1").unwrap().expect("February is open");
    let usage: Vec<Decimal> =
        draft.lines.iter().filter(|l| l.kind == LineKind::Usage).map(|l| l.amount).collect();
    assert_eq!(usage, vec![dec!(5.00)]);
    assert_eq!(draft.period.start, date(2025, 2, 1));
    assert!(books.current_usage("nope").unwrap().is_none());
}

#[tokio::test]
async fn accruals_do_not_depend_on_batch_sizes() {
    let events = events();
    let mut digests = Vec::new();
    for batch in [1, 2, 3, 7, 1_000] {
        let (_dir, books) = journal(&events, batch).await;
        digests.push(books.model().digest().unwrap());
    }
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
}

#[tokio::test]
async fn a_reopened_journal_rebuilds_its_meter_from_the_log() {
    let events = events();
    let (_full_dir, full) = journal(&events, 1_000).await;
    let store = Arc::new(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let config = RunnerConfig { batch_events_max: 4, ..RunnerConfig::default() };
    let half = events.len() / 2;
    for e in &events[..half] {
        projections::testkit::append_event(&store, e).await;
    }
    {
        let db = projections::open_db(dir.path()).unwrap();
        let mut first = Runner::open(&db, store.clone(), JournalProjection::default(), config);
        first.as_mut().unwrap().catch_up().await.unwrap();
    }
    for e in &events[half..] {
        projections::testkit::append_event(&store, e).await;
    }
    let db = projections::open_db(dir.path()).unwrap();
    let mut reopened = Runner::open(&db, store, JournalProjection::default(), config).unwrap();
    assert_eq!(reopened.checkpoint(), half as u64, "resumes from its checkpoint");
    reopened.catch_up().await.unwrap();
    assert_eq!(reopened.read_model().digest().unwrap(), full.model().digest().unwrap());
}

#[tokio::test]
async fn each_open_period_has_its_draft() {
    // March usage arrives before February is billed: two open periods, two drafts.
    let mut commands = commands();
    commands.push(usage(6, "2025-03-03", 150));
    let (_dir, books) = journal(&decide(commands), 1_000).await;
    let drafts = books.open_drafts("s1").unwrap();
    let starts: Vec<Date> = drafts.iter().map(|d| d.period.start).collect();
    assert_eq!(starts, vec![date(2025, 2, 1), date(2025, 3, 1)]);
    let usage_of = |i: usize| -> Vec<Decimal> {
        let lines = drafts[i].lines.iter().filter(|l| l.kind == LineKind::Usage);
        lines.map(|l| l.amount).collect()
    };
    // February: 200 calls at pro's price (5.00); March: 150 calls, 50 over the free 100.
    assert_eq!((usage_of(0), usage_of(1)), (vec![dec!(5.00)], vec![dec!(2.50)]));
    assert_eq!(books.current_usage("s1").unwrap().unwrap().period.start, date(2025, 2, 1));
}

/// Every row of `usage_days(from, to)`, read in pages of `page_size`.
fn usage_days(
    books: &JournalReader,
    from: Date,
    to: Date,
    page_size: usize,
) -> Vec<(Date, String, String, Decimal, u64)> {
    let mut rows = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..1_000 {
        let page = books.usage_days(from, to, token.as_deref(), page_size).unwrap();
        assert!(page.rows.len() <= page_size.max(1));
        for r in page.rows {
            assert_eq!(r.usage.customer_id, "c1");
            rows.push((r.date, r.subscription_id, r.metric_code, r.usage.units, r.usage.events));
        }
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return rows,
        }
    }
    panic!("more than 1,000 pages")
}

#[tokio::test]
async fn usage_per_day_sums_each_business_days_events_whatever_the_batches_and_pages() {
    let row = |d: Date, units: Decimal, events: u64| {
        (d, "s1".to_string(), "calls".to_string(), units, events)
    };
    let all = vec![
        row(date(2025, 1, 3), dec!(50), 1),
        row(date(2025, 1, 10), dec!(130), 2),
        row(date(2025, 1, 20), dec!(100), 1),
        row(date(2025, 2, 5), dec!(200), 1),
    ];
    let events = events();
    for batch in [1, 2, 3, 1_000] {
        let (_dir, books) = journal(&events, batch).await;
        for page_size in [1, 2, 3, 1_000] {
            let got = usage_days(&books, Date::MIN, Date::MAX, page_size);
            assert_eq!(got, all, "batches of {batch}, pages of {page_size}");
        }
        let window = usage_days(&books, date(2025, 1, 10), date(2025, 2, 4), 1);
        assert_eq!(window, all[1..3].to_vec(), "batches of {batch}: Jan 10 to Feb 4");
        assert!(usage_days(&books, date(2025, 2, 6), Date::MAX, 2).is_empty());
    }
    let (_dir, books) = journal(&events, 1_000).await;
    for bad in ["", "2025-01-10", "2025-13-01/s1/calls", "2025-01-10/s1", "2025-01-10//calls"] {
        let err = books.usage_days(Date::MIN, Date::MAX, Some(bad), 10).unwrap_err();
        assert!(err.to_string().contains("page token"), "{bad:?}: {err}");
    }
}
