//! The projection runner: catch-up and live follow, exactly once across crashes, digests
//! independent of batch sizes, lag and read-your-writes waits.

mod common;

use std::time::Duration;

use common::{append_all, bulk, config, runner, scenario, store_with, FailingAt, Store};
use domain::events::Event;
use domain::invoice::InvoiceStatus;
use event_store::{EventStore, Position, RecordedEvent};
use projections::invoices::{InvoiceFilter, InvoiceReader, InvoicesProjection};
use projections::{Digest, Projection, ProjectionError, Runner, WaitError, Writes};
use tempfile::TempDir;
use tokio::time::Instant;

fn soon(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

/// Digest of a fresh, uninterrupted rebuild with one big batch size.
async fn rebuilt_digest(store: &Store) -> Digest {
    let dir = TempDir::new().unwrap();
    let (_db, mut runner) = runner(&dir, store, 1_000);
    runner.catch_up().await.unwrap();
    runner.read_model().digest().unwrap()
}

#[tokio::test]
async fn digest_is_independent_of_batch_size() {
    let store = store_with(&bulk(60)).await;
    let mut digests = Vec::new();
    for batch in [1, 7, 1_000] {
        let dir = TempDir::new().unwrap();
        let (_db, mut runner) = runner(&dir, &store, batch);
        assert_eq!(runner.catch_up().await.unwrap(), store.head());
        digests.push(runner.read_model().digest().unwrap());
    }
    assert_eq!(digests[0].position, store.head());
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    let empty = TempDir::new().unwrap();
    let (_db, runner) = runner(&empty, &store, 7);
    assert_ne!(runner.read_model().digest().unwrap().sha256, digests[0].sha256);
}

#[tokio::test]
async fn catches_up_from_zero_then_follows_live_appends() {
    let events = bulk(20);
    let (first, rest) = events.split_at(events.len() / 2);
    let store = store_with(first).await;
    let dir = TempDir::new().unwrap();
    let (_db, runner) = runner(&dir, &store, 7);
    assert_eq!(runner.checkpoint(), 0);
    let (progress, reader) = (runner.progress(), InvoiceReader::new(runner.read_model()));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(runner.run(shutdown));
    progress.wait_for(first.len() as Position, soon(5_000)).await.unwrap();
    let paid = InvoiceFilter { status: Some(InvoiceStatus::Paid), ..Default::default() };
    let paid_before = reader.list(&paid, None, 0).unwrap().invoices.len();

    let last = append_all(&store, rest).await;
    assert_eq!(progress.wait_for(last + 1, soon(5_000)).await, Ok(last + 1));
    assert_eq!(progress.lag(), 0);
    assert!(reader.list(&paid, None, 0).unwrap().invoices.len() > paid_before);
    assert_eq!(reader.model().digest().unwrap(), rebuilt_digest(&store).await);

    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    let stopped = progress.wait_for(last + 2, soon(5_000)).await;
    assert_eq!(stopped, Err(WaitError::Stopped { checkpoint: last + 1 }));
}

#[tokio::test]
async fn lag_is_head_minus_checkpoint() {
    let store = store_with(&scenario()).await;
    let dir = TempDir::new().unwrap();
    let (_db, mut runner) = runner(&dir, &store, 7);
    let progress = runner.progress();
    assert_eq!((runner.lag(), progress.lag(), progress.head()), (15, 15, 15));
    let mut lags = Vec::new();
    for _ in 0..4 {
        runner.step().await.unwrap();
        lags.push((runner.checkpoint(), runner.lag(), progress.lag()));
    }
    assert_eq!(lags, [(7, 8, 8), (14, 1, 1), (15, 0, 0), (15, 0, 0)]);
    append_all(&store, &bulk(1)[15..]).await;
    assert_eq!((runner.lag(), progress.lag()), (2, 2));
    let timeout = progress.wait_for(16, soon(50)).await;
    assert_eq!(timeout, Err(WaitError::Timeout { position: 16, checkpoint: 15 }));
    assert_eq!(progress.wait_for(15, soon(50)).await, Ok(15), "already applied");
}

async fn digest_after_steps(store: &Store, batch: usize, steps: usize) -> Digest {
    let dir = TempDir::new().unwrap();
    let (_db, mut runner) = runner(&dir, store, batch);
    for _ in 0..steps {
        runner.step().await.unwrap();
    }
    runner.read_model().digest().unwrap()
}

#[tokio::test]
async fn a_failed_batch_leaves_no_trace_and_a_restart_applies_each_event_once() {
    let store = store_with(&bulk(40)).await;
    let dir = TempDir::new().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    let mut failing =
        Runner::open(&db, store.clone(), FailingAt(25, "invoices"), config(7)).unwrap();
    for _ in 0..3 {
        failing.step().await.unwrap();
    }
    assert!(failing.step().await.is_err(), "events 21..28 include the failing one");
    assert_eq!(failing.checkpoint(), 21);
    let after_failure = failing.read_model().digest().unwrap();
    assert_eq!(after_failure, digest_after_steps(&store, 7, 3).await, "no half batch");
    drop((failing, db));

    let (_db, mut reopened) = runner(&dir, &store, 7);
    assert_eq!((reopened.checkpoint(), reopened.lag()), (21, store.head() - 21));
    reopened.catch_up().await.unwrap();
    assert_eq!(reopened.read_model().digest().unwrap(), rebuilt_digest(&store).await);
}

#[tokio::test]
async fn dropping_the_runner_mid_way_and_reopening_gives_the_uninterrupted_state() {
    let store = store_with(&bulk(40)).await;
    let dir = TempDir::new().unwrap();
    let (db, mut first) = runner(&dir, &store, 5);
    first.step().await.unwrap();
    first.step().await.unwrap();
    drop((first, db));
    let (_db, mut second) = runner(&dir, &store, 13);
    assert_eq!(second.checkpoint(), 10);
    second.catch_up().await.unwrap();
    let reader = InvoiceReader::new(second.read_model());
    let expected = rebuilt_digest(&store).await;
    assert_eq!(reader.model().digest().unwrap(), expected);
    let all = reader.list(&InvoiceFilter::default(), None, 1_000).unwrap();
    assert_eq!(all.invoices.len(), 44);
}

/// The invoices projection under a new version number.
struct InvoicesV2;

impl Projection for InvoicesV2 {
    fn name(&self) -> &'static str {
        "invoices"
    }

    /// One more than the invoices projection's own version.
    fn version(&self) -> u32 {
        InvoicesProjection.version() + 1
    }

    fn apply(
        &mut self,
        w: &mut Writes<'_>,
        e: &RecordedEvent,
        d: &Event,
    ) -> projections::Result<()> {
        InvoicesProjection.apply(w, e, d)
    }
}

#[tokio::test]
async fn a_new_projection_version_rebuilds_from_zero() {
    let store = store_with(&scenario()).await;
    let dir = TempDir::new().unwrap();
    let (db, mut v1) = runner(&dir, &store, 7);
    v1.catch_up().await.unwrap();
    let before = v1.read_model().digest().unwrap();
    drop(v1);
    let mut v2 = Runner::open(&db, store.clone(), InvoicesV2, config(7)).unwrap();
    assert_eq!((v2.checkpoint(), v2.lag()), (0, 15));
    assert_eq!(v2.catch_up().await.unwrap(), 15);
    assert_eq!(v2.read_model().digest().unwrap(), before);
}

#[tokio::test]
async fn bad_config_is_refused() {
    let store = store_with(&scenario()).await;
    let dir = TempDir::new().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    for (batch, poll) in [(0, 20), (1 << 20, 20), (7, 0)] {
        let cfg = projections::RunnerConfig { batch_events_max: batch, poll_interval_ms: poll };
        let err = Runner::open(&db, store.clone(), InvoicesProjection, cfg).err().unwrap();
        assert!(matches!(err, ProjectionError::InvalidArgument(_)));
    }
}
