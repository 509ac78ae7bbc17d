//! Replay and audit over logs decided by the real domain: bitemporal rebuilds (the books as
//! they stood at a recorded time), rebuild = live, `verify` catching a tampered read model,
//! and the chain head.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use domain::calendar::{Anchor, Interval};
use domain::catalog::{Customer, FeeTiming, Plan};
use domain::commands::{Command, Context, PaymentOutcome, Policy};
use domain::events::Event;
use domain::ledger::Ledger;
use domain::money::Currency;
use event_store::{EventStore, MemoryStore};
use jiff::civil::{date, Date};
use jiff::Timestamp;
use projections::invoices::InvoicesProjection;
use projections::journal::{Balances, JournalProjection, JournalReader};
use projections::mrr::MrrProjection;
use projections::{ReadModel, Runner, RunnerConfig};
use replay::{rebuild, resolve, verify, Cutoff, Kind, ReplayError, Verdict};
use rust_decimal_macros::dec;

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn at(s: &str) -> Timestamp {
    format!("{s}T12:00:00Z").parse().unwrap()
}

/// A log whose `recorded_at` is each command's `now`.
struct Books {
    store: Arc<MemoryStore>,
    clock: Arc<AtomicI64>,
    ledger: Ledger,
}

impl Books {
    fn new() -> Books {
        let clock = Arc::new(AtomicI64::new(0));
        let c = clock.clone();
        let store = Arc::new(MemoryStore::with_clock(Arc::new(move || c.load(Ordering::SeqCst))));
        Books { store, clock, ledger: Ledger::default() }
    }

    async fn run(&mut self, now: &str, cmd: Command) -> Vec<Event> {
        let now = at(now);
        self.clock.store(now.as_microsecond(), Ordering::SeqCst);
        let ctx = Context { now, policy: Policy::default() };
        let events = self.ledger.execute(&cmd, &ctx, self.store.head()).expect("valid command");
        for e in &events {
            projections::testkit::append_event(&self.store, e).await;
        }
        events
    }

    /// The invoice issued on `day` (UTC): the month's fee, billed in advance.
    fn invoice_issued_on(&self, day: Date) -> String {
        let utc = |t: Timestamp| t.to_zoned(jiff::tz::TimeZone::UTC).date();
        let found = self.ledger.invoices.values().find(|i| utc(i.invoice.issued_at) == day);
        found.expect("an invoice issued that day").invoice.invoice_id.clone()
    }
}

fn pay(invoice_id: String, amount: rust_decimal::Decimal, occurred: &str) -> Command {
    let outcome = PaymentOutcome::Succeeded { amount };
    Command::RecordPayment { invoice_id, outcome, occurred_at: at(occurred) }
}

/// Q1 of a 100/month plan billed in advance: January paid on Jan 5, February and March open.
/// Recorded on Apr 5, a correction: February's invoice was in fact paid on Mar 20 (a late
/// record of a past payment), and March's invoice is voided.
async fn q1_with_april_correction() -> Books {
    let mut b = Books::new();
    let plan = Plan {
        code: "std".into(),
        version: 0,
        name: "Standard".into(),
        currency: usd(),
        interval: Interval::Monthly,
        base_fee: dec!(100),
        fee_timing: FeeTiming::Advance,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        charges: vec![],
    };
    let customer = Customer {
        customer_id: "c1".into(),
        name: "C".into(),
        currency: usd(),
        time_zone: "UTC".into(),
        tax_rate: dec!(0),
    };
    b.run("2025-01-01", Command::PublishPlan(plan)).await;
    b.run("2025-01-01", Command::RegisterCustomer(customer)).await;
    let start = Command::StartSubscription {
        subscription_id: "s1".into(),
        customer_id: "c1".into(),
        plan_code: "std".into(),
        plan_version: None,
        anchor: Anchor::Calendar,
        start_date: None,
        billed_until: None,
    };
    b.run("2025-01-01", start).await;
    b.run("2025-01-05", pay(b.invoice_issued_on(date(2025, 1, 1)), dec!(100), "2025-01-05")).await;
    for day in ["2025-02-01", "2025-03-01", "2025-04-01"] {
        b.run(day, Command::RunBilling { as_of: at(day) }).await;
    }
    let feb = b.invoice_issued_on(date(2025, 2, 1));
    b.run("2025-04-05", pay(feb, dec!(100), "2025-03-20")).await;
    let void = Command::VoidInvoice {
        invoice_id: b.invoice_issued_on(date(2025, 3, 1)),
        reason: "x".into(),
    };
    b.run("2025-04-05", void).await;
    b
}

async fn balances_as_recorded(b: &Books, recorded: &str, effective: Date) -> Balances {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("replay");
    let cutoff = Cutoff::RecordedAt(at(recorded));
    let rebuilt = rebuild(b.store.clone(), cutoff, &[Kind::Journal], &out, &|_, _| {});
    let db = rebuilt.await.unwrap().read_models;
    let model = ReadModel::open_existing(&db, "journal", Kind::Journal.version()).unwrap();
    let books = JournalReader::new(model.expect("rebuilt"));
    books.balances(effective).unwrap().into_iter().next().map(|(_, b)| b).unwrap_or_default()
}

#[tokio::test]
async fn books_at_march_31_as_they_stood_before_and_after_the_april_correction() {
    let b = q1_with_april_correction().await;
    let before = balances_as_recorded(&b, "2025-04-02", date(2025, 3, 31)).await;
    assert_eq!((before.accounts_receivable, before.cash), (dec!(200), dec!(100)));
    assert_eq!(before.total_revenue(), dec!(300), "Q1 earned 3 × 100");
    let after = balances_as_recorded(&b, "2025-04-06", date(2025, 3, 31)).await;
    // The late payment is dated Mar 20: it changes Mar 31. The void is dated Apr 5: it does not.
    assert_eq!((after.accounts_receivable, after.cash), (dec!(100), dec!(200)));
    assert_eq!(after.total_revenue(), dec!(300));
    let april = balances_as_recorded(&b, "2025-04-06", date(2025, 4, 5)).await;
    // Voided on Apr 5: March's 100 leaves receivable and revenue. April's invoice (100, issued
    // Apr 1) is open and has earned 5 of its 30 days: round(100 × 5 / 30) = 16.67.
    assert_eq!(april.accounts_receivable, dec!(100));
    assert_eq!(april.total_revenue(), dec!(216.67));
}

#[tokio::test]
async fn a_recorded_time_resolves_to_the_events_recorded_at_or_before_it() {
    let b = q1_with_april_correction().await;
    let head = b.store.head();
    assert_eq!(resolve(&b.store, Cutoff::RecordedAt(at("2030-01-01"))).await.unwrap(), head);
    assert_eq!(resolve(&b.store, Cutoff::RecordedAt(at("2024-12-31"))).await.unwrap(), 0);
    let before_fix = resolve(&b.store, Cutoff::RecordedAt(at("2025-04-04"))).await.unwrap();
    assert_eq!(before_fix, head - 2, "the payment and the void are the last two events");
    let err = resolve(&b.store, Cutoff::Position(head + 1)).await.unwrap_err();
    assert!(matches!(err, ReplayError::BeyondHead { .. }), "{err}");
}

async fn live_models(store: Arc<MemoryStore>, dir: &std::path::Path) -> sled::Db {
    let db = projections::open_db(dir).unwrap();
    let config = RunnerConfig { batch_events_max: 3, ..RunnerConfig::default() };
    Runner::open(&db, store.clone(), InvoicesProjection, config).unwrap().catch_up().await.unwrap();
    Runner::open(&db, store.clone(), MrrProjection, config).unwrap().catch_up().await.unwrap();
    let mut journal = Runner::open(&db, store, JournalProjection::default(), config).unwrap();
    journal.catch_up().await.unwrap();
    db
}

#[tokio::test]
async fn a_rebuild_equals_the_live_models_and_verify_catches_a_tampered_one() {
    let b = q1_with_april_correction().await;
    let dir = tempfile::tempdir().unwrap();
    let live = live_models(b.store.clone(), &dir.path().join("live")).await;
    let verdicts = verify(b.store.clone(), &live, &dir.path().join("scratch")).await.unwrap();
    assert_eq!(verdicts.len(), 3);
    assert!(verdicts.iter().all(Verdict::is_equal), "{verdicts:?}");
    let all = dir.path().join("all");
    let cutoff = Cutoff::Position(b.store.head());
    let full = rebuild(b.store.clone(), cutoff, &Kind::ALL, &all, &|_, _| {}).await.unwrap();
    for (verdict, rebuilt) in verdicts.iter().zip(&full.manifest.projections) {
        let Verdict::Equal { sha256, .. } = verdict else { unreachable!() };
        assert_eq!(sha256, &rebuilt.sha256, "{:?}", rebuilt.projection);
    }
    // Someone edits an invoice in the live read model behind the projections' back.
    live.open_tree("projection/invoices").unwrap().insert("inv/forged", "{}").unwrap();
    let verdicts = verify(b.store.clone(), &live, &dir.path().join("scratch2")).await.unwrap();
    assert!(matches!(verdicts[0], Verdict::Differs { projection: Kind::Invoices, .. }));
    assert!(verdicts[1].is_equal() && verdicts[2].is_equal(), "{verdicts:?}");
}

#[tokio::test]
async fn a_rebuild_never_writes_into_an_existing_directory() {
    let b = q1_with_april_correction().await;
    let dir = tempfile::tempdir().unwrap();
    let err = rebuild(b.store.clone(), Cutoff::Position(1), &Kind::ALL, dir.path(), &|_, _| {});
    assert!(matches!(err.await.unwrap_err(), ReplayError::OutputExists(_)));
}

#[tokio::test]
async fn the_manifest_names_the_cutoff_and_the_chain_head() {
    let b = q1_with_april_correction().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let cutoff = Cutoff::Position(b.store.head());
    let r = rebuild(b.store.clone(), cutoff, &[Kind::Mrr], &out, &|_, _| {}).await.unwrap();
    assert_eq!(r.manifest.end_position, b.store.head());
    assert_eq!(r.manifest.log_head_hash, hex_of(b.store.head_hash().1));
    let walked = replay::chain_head(&b.store, b.store.head()).await.unwrap();
    assert_eq!(hex_of(walked), r.manifest.log_head_hash);
    let on_disk: replay::Manifest =
        serde_json::from_slice(&std::fs::read(out.join(replay::MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(on_disk, r.manifest);
}

fn hex_of(h: [u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Past books built in steps (to the last event recorded before the April correction, then to
/// the head) hold exactly what one rebuild to the head holds; going back is refused.
#[tokio::test]
async fn read_models_advanced_in_steps_equal_one_rebuild() {
    let b = q1_with_april_correction().await;
    let dir = tempfile::tempdir().unwrap();
    let head = b.store.head();
    let db = projections::open_db(dir.path().join("stepped")).unwrap();
    let before_fix = resolve(&b.store, Cutoff::RecordedAt(at("2025-04-04"))).await.unwrap();
    for step in [3, before_fix, head] {
        replay::advance(b.store.clone(), step, &db).await.unwrap();
    }
    let full = dir.path().join("full");
    let cutoff = Cutoff::Position(head);
    let rebuilt = rebuild(b.store.clone(), cutoff, &Kind::ALL, &full, &|_, _| {}).await.unwrap();
    for digest in &rebuilt.manifest.projections {
        let kind = digest.projection;
        let model = ReadModel::open_existing(&db, kind.name(), kind.version()).unwrap().unwrap();
        let stepped = model.digest().unwrap();
        assert_eq!(stepped.position, head, "{kind:?}");
        assert_eq!(hex_of(stepped.sha256), digest.sha256, "{kind:?}");
    }
    let back = replay::advance(b.store.clone(), before_fix, &db).await.unwrap_err();
    assert!(back.to_string().contains("cannot be advanced"), "{back}");
}
