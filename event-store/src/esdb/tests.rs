//! The backend over an in-memory log stream: the conformance suite, several nodes appending to
//! one log, and injected failures. (The same suite runs against a live server in
//! `tests/esdb.rs` when `ACCRUAL_ESDB_URL` is set.)

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::testkit::{append_hot, one};
use super::*;
use crate::conformance::{run_all, StoreFactory};
use crate::{verify_chain, ExpectedVersion, Idempotency, GENESIS_HASH};

fn fast_options(stream: &str) -> EsdbOptions {
    let mut o = EsdbOptions::new(stream);
    o.retry =
        RetryPolicy { attempts_max: 4, backoff_first_ms: 1, backoff_max_ms: 5, conflicts_max: 64 };
    o
}

async fn node(log: &MemoryLog) -> EsdbStore {
    EsdbStore::open_on(Arc::new(log.clone()), fast_options("test-log")).await.expect("open")
}

#[derive(Default)]
struct Factory {
    last: parking_lot::Mutex<Option<MemoryLog>>,
}

#[async_trait]
impl StoreFactory for Factory {
    type Store = EsdbStore;

    async fn create(&self) -> EsdbStore {
        let log = MemoryLog::new();
        *self.last.lock() = Some(log.clone());
        node(&log).await
    }

    async fn reopen(&self) -> Option<EsdbStore> {
        let log = self.last.lock().clone()?;
        Some(node(&log).await)
    }

    async fn create_with_clock(&self, clock: Clock) -> Option<EsdbStore> {
        let mut options = fast_options("test-log");
        options.clock = clock;
        Some(EsdbStore::open_on(Arc::new(MemoryLog::new()), options).await.expect("open"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_an_in_memory_log_stream() {
    run_all(&Factory::default()).await;
}

async fn wait_for_head(store: &EsdbStore, head: Position) {
    let mut rx = store.watch_head();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|h| *h >= head))
        .await
        .expect("the follower catches up")
        .expect("open");
}

/// Two nodes append to the same Accrual stream with expected versions and retries: every
/// append lands exactly once, versions are contiguous, both nodes see the same chained log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_log() {
    let log = MemoryLog::new();
    let (a, b) = (Arc::new(node(&log).await), Arc::new(node(&log).await));
    let mut tasks = Vec::new();
    for (n, store) in [(0, a.clone()), (1, b.clone())] {
        for t in 0..3 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..30 {
                    append_hot(&store, &format!("{n}-{t}-{i}")).await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_for_head(&a, 180).await;
    wait_for_head(&b, 180).await;
    let (la, lb) =
        (a.read_all(0, usize::MAX).await.unwrap(), b.read_all(0, usize::MAX).await.unwrap());
    assert_eq!(la, lb, "both nodes read the same log");
    assert_eq!(la.len(), 180);
    assert_eq!(verify_chain(la.clone(), GENESIS_HASH), Ok(la[179].hash));
    let hot = a.read_stream("hot", 0, 1_000).await.unwrap();
    assert_eq!(
        hot.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        (0..180).collect::<Vec<_>>()
    );
    let payloads: HashSet<_> = hot.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(payloads.len(), 180, "no append lost or doubled");
    assert!(la.windows(2).all(|w| w[0].recorded_at_us <= w[1].recorded_at_us));
    assert_eq!(b.stream_version("hot"), Some(179));
}

/// A stale node's expected version is checked against the log as it really is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_the_race_reports_the_real_version() {
    let log = MemoryLog::new();
    let a = node(&log).await;
    a.append(one("s", ExpectedVersion::NoStream, "a0")).await.unwrap();
    let b = node(&log).await;
    a.append(one("s", ExpectedVersion::Exact(0), "a1")).await.unwrap();
    // b may not have seen a1 yet; its append at Exact(0) must fail either way.
    let r = b.append(one("s", ExpectedVersion::Exact(0), "b1")).await;
    assert!(matches!(&r, Err(StoreError::WrongExpectedVersion { actual: Some(1), .. })), "{r:?}");
    let c = b.append(one("t", ExpectedVersion::Any, "b2")).await.unwrap();
    assert_eq!(c.first_position, 2, "b planned again on top of a's event");
}

/// Idempotency keys hold across nodes: a retry sent to another node is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_hold_across_nodes() {
    let log = MemoryLog::new();
    let (a, b) = (node(&log).await, node(&log).await);
    let keyed = |digest: u8| {
        let mut r = one("k", ExpectedVersion::Any, "k");
        r.idempotency = Some(Idempotency { key: "req-1".into(), digest: [digest; 32] });
        r
    };
    let first = a.append(keyed(1)).await.unwrap();
    let again = b.append(keyed(1)).await.unwrap();
    assert_eq!(again, Committed { duplicate: true, ..first });
    assert!(matches!(b.append(keyed(2)).await, Err(StoreError::IdempotencyConflict { .. })));
    assert_eq!(log.len(), 1, "nothing written twice");
}

/// A reply lost after the write: the retry is recognised, nothing is doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_not_written_twice() {
    let log = MemoryLog::new();
    let store = node(&log).await;
    log.fail_after_write(2);
    let c = store.append(one("s", ExpectedVersion::NoStream, "x")).await.unwrap();
    assert_eq!((c.first_position, c.last_position), (0, 0));
    assert_eq!((log.len(), store.head()), (1, 1));
    store.append(one("s", ExpectedVersion::Exact(0), "y")).await.unwrap();
    assert_eq!(store.read_all(0, 10).await.unwrap().len(), 2);
}

/// Connection lost before the write: retried within the bound, then UNAVAILABLE; the store
/// keeps working once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_then_reported() {
    let log = MemoryLog::new();
    let store = node(&log).await;
    log.fail_before_write(3); // attempts_max = 4
    store.append(one("s", ExpectedVersion::Any, "a")).await.expect("retried through");
    log.fail_before_write(4);
    let r = store.append(one("s", ExpectedVersion::Any, "b")).await;
    assert!(matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("after retries")), "{r:?}");
    assert_eq!(log.len(), 1, "the failed append wrote nothing");
    log.refuse(1);
    let r = store.append(one("s", ExpectedVersion::Any, "c")).await;
    assert!(matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("denied")), "{r:?}");
    store.append(one("s", ExpectedVersion::Exact(0), "d")).await.expect("works again");
    assert_eq!(store.stream_version("s"), Some(1));
}

/// A chunk that does not continue the log (written by something else) stops appends with a
/// clear reason; reads of what came before keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_chunk_stops_appends() {
    let log = MemoryLog::new();
    let store = node(&log).await;
    store.append(one("s", ExpectedVersion::Any, "a")).await.unwrap();
    log.push_raw(uuid::Uuid::new_v4(), vec![1, 2, 3]);
    let r = store.append(one("s", ExpectedVersion::Any, "b")).await;
    assert!(matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("corrupt")), "{r:?}");
    assert_eq!(store.read_all(0, 10).await.unwrap().len(), 1);
    let reopened = EsdbStore::open_on(Arc::new(log.clone()), fast_options("test-log")).await;
    assert!(matches!(reopened, Err(StoreError::Corrupt { .. })), "open refuses a broken log");
}

/// Reads of chunks no longer cached go to the log stream by revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_chunks_are_fetched_from_the_log_stream() {
    let log = MemoryLog::new();
    let writer = node(&log).await;
    for i in 0..(RECENT_CHUNKS_MAX + 20) {
        writer
            .append(one(&format!("s{}", i % 3), ExpectedVersion::Any, &i.to_string()))
            .await
            .unwrap();
    }
    let fresh = node(&log).await;
    let all = fresh.read_all(0, usize::MAX).await.unwrap();
    assert_eq!(all, writer.read_all(0, usize::MAX).await.unwrap());
    assert_eq!(
        fresh
            .read_stream("s1", 3, 2)
            .await
            .unwrap()
            .iter()
            .map(|e| e.stream_version)
            .collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(fresh.chunk_count(), (RECENT_CHUNKS_MAX + 20) as u64);
    assert!(fresh.last_log_position().is_some());
}
