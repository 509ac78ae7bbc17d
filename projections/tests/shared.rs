//! The shared log reader (`SharedLog` + `Runner::run_shared`): every projection fed by one
//! reader reaches the digest of its own uninterrupted build, whatever the read sizes, ring size
//! and batch sizes (a ring smaller than a runner's batch forces the runner to read the log
//! itself); a projection stuck or far behind does not hold the others back; a failed batch
//! stops only its own runner.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::sim::{op, simulate, store_of};
use common::{append, bulk, config, store_with, FailingAt, Store};
use domain::events::Event;
use event_store::{EventStore, RecordedEvent};
use projections::invoices::InvoicesProjection;
use projections::journal::JournalProjection;
use projections::mrr::MrrProjection;
use projections::{
    Digest, Progress, Projection, ProjectionError, ReadModel, Runner, SharedConfig, SharedLog,
    Writes, BATCH_EVENTS_MAX_LIMIT,
};
use proptest::prelude::*;
use tokio::sync::watch;
use tokio::time::Instant;

fn soon(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

fn shared(read: usize, ring: usize) -> SharedConfig {
    SharedConfig { read_events_max: read, ring_events_max: ring, poll_interval_ms: 20 }
}

/// Each projection built alone, in one batch: the reference digests.
async fn alone(store: &Store) -> [Digest; 3] {
    let dir = tempfile::tempdir().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    let big = config(BATCH_EVENTS_MAX_LIMIT);
    let mut a = Runner::open(&db, store.clone(), InvoicesProjection, big).unwrap();
    let mut b = Runner::open(&db, store.clone(), MrrProjection, big).unwrap();
    let mut c = Runner::open(&db, store.clone(), JournalProjection::default(), big).unwrap();
    a.catch_up().await.unwrap();
    b.catch_up().await.unwrap();
    c.catch_up().await.unwrap();
    [a.read_model(), b.read_model(), c.read_model()].map(|m| m.digest().unwrap())
}

/// Spawns `runner` on the shared log; returns its progress, model and task.
fn spawn<P: Projection>(
    log: &mut SharedLog<Store>,
    runner: Runner<Store, P>,
    stop: &watch::Receiver<bool>,
) -> (Progress, ReadModel, tokio::task::JoinHandle<projections::Result<()>>) {
    let feed = log.subscribe(&runner);
    let (progress, model) = (runner.progress(), runner.read_model());
    (progress, model, tokio::spawn(runner.run_shared(feed, stop.clone())))
}

/// Runs the three projections on one shared reader while `later` is appended, until each
/// reaches the head; returns their digests.
async fn fed(store: &Store, later: &[Event], cfg: SharedConfig, batch: usize) -> [Digest; 3] {
    let dir = tempfile::tempdir().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    let mut log = SharedLog::new(store.clone(), cfg).unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let a = Runner::open(&db, store.clone(), InvoicesProjection, config(batch)).unwrap();
    let b = Runner::open(&db, store.clone(), MrrProjection, config(batch)).unwrap();
    let c = Runner::open(&db, store.clone(), JournalProjection::default(), config(batch)).unwrap();
    let runners = [spawn(&mut log, a, &stop), spawn(&mut log, b, &stop), spawn(&mut log, c, &stop)];
    let reader = tokio::spawn(log.run(stop.clone()));
    for event in later {
        append(store, event).await;
    }
    let head = store.head();
    for (progress, _, _) in &runners {
        assert_eq!(progress.wait_for(head, soon(20_000)).await, Ok(head));
    }
    stop_tx.send(true).unwrap();
    reader.await.unwrap().unwrap();
    let mut digests = Vec::new();
    for (_, model, task) in runners {
        task.await.unwrap().unwrap();
        digests.push(model.digest().unwrap());
    }
    digests.try_into().unwrap()
}

fn check(
    ops: &[common::sim::Op],
    arrears: bool,
    split_permille: usize,
    read: usize,
    ring: usize,
    batch: usize,
) -> Result<(), TestCaseError> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let events = simulate(ops, arrears);
        let split = events.len() * split_permille / 1_000;
        let store = store_of(&events[..split]).await;
        let fed = fed(&store, &events[split..], shared(read, ring.max(read)), batch).await;
        let alone = alone(&store).await;
        for (f, a) in fed.iter().zip(&alone) {
            prop_assert_eq!(f, a);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    /// SPEC §1 / §6: one reader for every projection gives each the digest of its own build.
    #[test]
    fn a_shared_reader_gives_every_projection_the_digest_of_its_own_build(
        ops in proptest::collection::vec(op(), 1..60),
        arrears in any::<bool>(),
        split_permille in 0usize..=1_000,
        read in 1usize..=16,
        ring in 1usize..=48,
        batch in 1usize..=64,
    ) {
        check(&ops, arrears, split_permille, read, ring, batch)?;
    }
}

/// The invoices projection, stuck in `apply` until released.
struct Stuck(Arc<AtomicBool>);

impl Projection for Stuck {
    fn name(&self) -> &'static str {
        "stuck"
    }

    fn wants(&self, event_type: &str) -> bool {
        InvoicesProjection.wants(event_type)
    }

    fn apply(
        &mut self,
        w: &mut Writes<'_>,
        e: &RecordedEvent,
        d: &Event,
    ) -> projections::Result<()> {
        for _ in 0..2_000 {
            if self.0.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        InvoicesProjection.apply(w, e, d)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_projection_does_not_hold_the_others_back_and_catches_up_once_released() {
    let events = bulk(40);
    let (first, rest) = events.split_at(20);
    let store = store_with(first).await;
    let dir = tempfile::tempdir().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    let mut log = SharedLog::new(store.clone(), shared(4, 8)).unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let release = Arc::new(AtomicBool::new(false));
    let stuck = Runner::open(&db, store.clone(), Stuck(release.clone()), config(16)).unwrap();
    let invoices = Runner::open(&db, store.clone(), InvoicesProjection, config(16)).unwrap();
    let (stuck_progress, stuck_model, stuck_task) = spawn(&mut log, stuck, &stop);
    let (progress, model, task) = spawn(&mut log, invoices, &stop);
    let reader = tokio::spawn(log.run(stop.clone()));
    for event in rest {
        append(&store, event).await;
    }
    let head = store.head();
    assert_eq!(progress.wait_for(head, soon(10_000)).await, Ok(head), "not held back");
    assert!(stuck_progress.checkpoint() < head, "the stuck one is still behind");
    release.store(true, Ordering::SeqCst);
    assert_eq!(stuck_progress.wait_for(head, soon(10_000)).await, Ok(head), "caught up");
    assert_eq!(stuck_model.digest().unwrap().sha256, model.digest().unwrap().sha256);
    stop_tx.send(true).unwrap();
    reader.await.unwrap().unwrap();
    task.await.unwrap().unwrap();
    stuck_task.await.unwrap().unwrap();
}

/// A runner whose projection version changed (rebuilding from 0) while the others are at the
/// head: the reader starts at the head, the rebuilding one reads the log itself.
#[tokio::test]
async fn a_projection_rebuilding_from_zero_reads_the_log_itself_while_the_others_follow() {
    let events = bulk(30);
    let store = store_with(&events[..40]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    Runner::open(&db, store.clone(), MrrProjection, config(64)).unwrap().catch_up().await.unwrap();
    let mut log = SharedLog::new(store.clone(), shared(8, 8)).unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let mrr = Runner::open(&db, store.clone(), MrrProjection, config(64)).unwrap();
    let journal =
        Runner::open(&db, store.clone(), JournalProjection::default(), config(3)).unwrap();
    assert_eq!((mrr.checkpoint(), journal.checkpoint()), (40, 0));
    let (mrr_progress, _, mrr_task) = spawn(&mut log, mrr, &stop);
    let (journal_progress, journal_model, journal_task) = spawn(&mut log, journal, &stop);
    let reader = tokio::spawn(log.run(stop.clone()));
    for event in &events[40..] {
        append(&store, event).await;
    }
    let head = store.head();
    assert_eq!(mrr_progress.wait_for(head, soon(10_000)).await, Ok(head));
    assert_eq!(journal_progress.wait_for(head, soon(10_000)).await, Ok(head));
    let reference = alone(&store).await;
    assert_eq!(journal_model.digest().unwrap(), reference[2]);
    stop_tx.send(true).unwrap();
    reader.await.unwrap().unwrap();
    mrr_task.await.unwrap().unwrap();
    journal_task.await.unwrap().unwrap();
}

/// After a kill -9 the projections' checkpoints differ and the log may never grow again: the
/// reader starts at the highest checkpoint with an empty ring, and a runner below it still
/// reads the rest of the log itself (found by tests/e2e.rs, where MRR stayed 2 events behind).
#[tokio::test]
async fn a_runner_below_the_reader_reaches_the_head_when_the_log_does_not_grow() {
    let events = bulk(30);
    let store = store_with(&events).await;
    let head = store.head();
    let dir = tempfile::tempdir().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    let big = config(BATCH_EVENTS_MAX_LIMIT);
    Runner::open(&db, store.clone(), InvoicesProjection, big).unwrap().catch_up().await.unwrap();
    let mut log = SharedLog::new(store.clone(), shared(8, 8)).unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let invoices = Runner::open(&db, store.clone(), InvoicesProjection, config(64)).unwrap();
    let mrr = Runner::open(&db, store.clone(), MrrProjection, config(64)).unwrap();
    assert_eq!((invoices.checkpoint(), mrr.checkpoint()), (head, 0));
    let (_, _, invoices_task) = spawn(&mut log, invoices, &stop);
    let (mrr_progress, mrr_model, mrr_task) = spawn(&mut log, mrr, &stop);
    let reader = tokio::spawn(log.run(stop.clone()));
    assert_eq!(mrr_progress.wait_for(head, soon(10_000)).await, Ok(head));
    assert_eq!(mrr_model.digest().unwrap(), alone(&store).await[1]);
    stop_tx.send(true).unwrap();
    reader.await.unwrap().unwrap();
    invoices_task.await.unwrap().unwrap();
    mrr_task.await.unwrap().unwrap();
}

/// A runner failing at one position stops with the error (nothing of the batch committed);
/// the other runner on the same reader goes on.
#[tokio::test]
async fn a_failed_batch_stops_only_its_own_runner() {
    let events = bulk(20);
    let store = store_with(&events).await;
    let dir = tempfile::tempdir().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    let mut log = SharedLog::new(store.clone(), shared(4, 16)).unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let failing = Runner::open(&db, store.clone(), FailingAt(17, "failing"), config(8)).unwrap();
    let invoices = Runner::open(&db, store.clone(), InvoicesProjection, config(8)).unwrap();
    let (failing_progress, _, failing_task) = spawn(&mut log, failing, &stop);
    let (progress, _, task) = spawn(&mut log, invoices, &stop);
    let reader = tokio::spawn(log.run(stop.clone()));
    let head = store.head();
    assert_eq!(progress.wait_for(head, soon(10_000)).await, Ok(head));
    let err = failing_task.await.unwrap().unwrap_err();
    assert!(matches!(err, ProjectionError::Inconsistent { position: 17, .. }), "{err}");
    assert!(failing_progress.checkpoint() <= 17, "nothing of the failed batch committed");
    stop_tx.send(true).unwrap();
    reader.await.unwrap().unwrap();
    task.await.unwrap().unwrap();
}

#[test]
fn bad_shared_config_is_refused() {
    let store: Store = Arc::new(event_store::MemoryStore::new());
    for cfg in [shared(0, 8), shared(8, 4), shared(8, (1 << 20) + 1)] {
        assert!(SharedLog::new(store.clone(), cfg).is_err(), "{cfg:?}");
    }
}
