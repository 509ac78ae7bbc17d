//! Backend-independent conformance suite for [`EventStore`] implementations.
//!
//! Compiled always (not only under `cfg(test)`) so every backend, in any crate, runs the same
//! cases: implement [`StoreFactory`] and call [`run_all`] from a `#[tokio::test]` (use the
//! multi-threaded runtime). Each case creates a fresh store and panics on a violation.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::chain::{verify_chain, BreakKind};
use crate::envelope::{compute_hash, GENESIS_HASH};
use crate::{
    AppendRequest, Clock, Committed, EventStore, ExpectedVersion, Idempotency, NewEvent,
    RecordedEvent, StoreError, StreamWrite,
};

/// Creates stores for the suite.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    type Store: EventStore;
    /// A fresh, empty store.
    async fn create(&self) -> Self::Store;
    /// Opens again the store most recently created, after its handle was dropped. `None` when
    /// the backend cannot (in-memory): the reopen case is then skipped.
    async fn reopen(&self) -> Option<Self::Store>;
    /// A fresh store reading `recorded_at` from `clock`; `None` if the backend cannot inject a
    /// clock (the backwards-clock case is then skipped).
    async fn create_with_clock(&self, _clock: Clock) -> Option<Self::Store> {
        None
    }
}

/// Runs every case.
pub async fn run_all<F: StoreFactory>(f: &F) {
    round_trip(f).await;
    stream_versions(f).await;
    expected_versions(f).await;
    multi_stream_atomic(f).await;
    idempotency(f).await;
    validation(f).await;
    enqueue_order(f).await;
    expected_position(f).await;
    concurrent_one_stream(f).await;
    concurrent_many_streams(f).await;
    group_isolation(f).await;
    read_all_paging(f).await;
    large_commit(f).await;
    watch_head(f).await;
    hash_chain(f).await;
    reopen(f).await;
    recorded_at(f).await;
    append_after_close(f).await;
}

// ---------------------------------------------------------------- helpers

const OCCURRED: i64 = 1_700_000_000_000_000;

/// A plain event with the given type and payload.
pub fn new_event(event_type: &str, payload: &[u8]) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        occurred_at_us: OCCURRED,
        causation_id: None,
        correlation_id: None,
        payload: payload.to_vec(),
    }
}

fn events(n: usize, tag: &str) -> Vec<NewEvent> {
    (0..n).map(|i| new_event("Tested", format!("{tag}-{i}").as_bytes())).collect()
}

fn write(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> StreamWrite {
    StreamWrite { stream: stream.to_owned(), expected, events }
}

fn request(writes: Vec<StreamWrite>) -> AppendRequest {
    AppendRequest { writes, idempotency: None, expected_position: None }
}

fn one(stream: &str, expected: ExpectedVersion, n: usize) -> AppendRequest {
    request(vec![write(stream, expected, events(n, stream))])
}

fn with_key(mut req: AppendRequest, key: &str, digest: u8) -> AppendRequest {
    req.idempotency = Some(Idempotency { key: key.to_owned(), digest: [digest; 32] });
    req
}

async fn ok(store: &impl EventStore, req: AppendRequest) -> Committed {
    match store.append(req).await {
        Ok(c) => c,
        Err(e) => panic!("append failed: {e}"),
    }
}

async fn all(store: &impl EventStore) -> Vec<RecordedEvent> {
    store.read_all(0, usize::MAX).await.expect("read_all")
}

fn assert_wrong_version(r: Result<Committed, StoreError>, stream: &str, actual: Option<u64>) {
    match r {
        Err(StoreError::WrongExpectedVersion { stream: s, actual: a, .. }) => {
            assert_eq!((s.as_str(), a), (stream, actual), "WrongExpectedVersion details");
        }
        other => panic!("expected WrongExpectedVersion on {stream}, got {other:?}"),
    }
}

fn assert_invalid(r: Result<Committed, StoreError>, what: &str) {
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{what}: expected Invalid, got {r:?}");
}

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.stream_version).collect()
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

fn case(name: &str) {
    println!("conformance: {name}");
}

// ---------------------------------------------------------------- cases

/// Every envelope field survives append and both reads.
pub async fn round_trip<F: StoreFactory>(f: &F) {
    case("round_trip");
    let store = f.create().await;
    let mut full = new_event("Full", &[0, 1, 2, 255, 254]);
    full.schema_version = 7;
    full.occurred_at_us = -42;
    full.causation_id = Some(Uuid::new_v4());
    full.correlation_id = Some(Uuid::new_v4());
    let bare = new_event("Bare", b"");
    let req = with_key(
        request(vec![write("rt", ExpectedVersion::NoStream, vec![full.clone(), bare.clone()])]),
        "rt-key",
        9,
    );
    let committed = ok(&store, req).await;
    assert_eq!(committed, Committed { first_position: 0, last_position: 1, duplicate: false });
    let read = store.read_stream("rt", 0, 10).await.expect("read_stream");
    assert_eq!(read.len(), 2);
    check_envelope(&read[0], &full, 0, GENESIS_HASH);
    check_envelope(&read[1], &bare, 1, read[0].hash);
    assert_eq!(all(&store).await, read, "read_all returns the same envelopes");
    assert_eq!((store.head(), store.stream_version("rt")), (2, Some(1)));
}

fn check_envelope(got: &RecordedEvent, sent: &NewEvent, n: u64, prev: [u8; 32]) {
    assert_eq!(got.event_id, sent.event_id);
    assert_eq!((got.stream.as_str(), got.stream_version, got.position), ("rt", n, n));
    assert_eq!(
        (got.event_type.as_str(), got.schema_version),
        (sent.event_type.as_str(), sent.schema_version)
    );
    assert_eq!(got.occurred_at_us, sent.occurred_at_us);
    assert!(got.recorded_at_us > 0, "recorded_at is set");
    assert_eq!((got.causation_id, got.correlation_id), (sent.causation_id, sent.correlation_id));
    assert_eq!(got.idempotency_key.as_deref(), Some("rt-key"));
    assert_eq!(got.idempotency_digest, Some([9; 32]));
    assert_eq!(got.payload, sent.payload);
    assert_eq!(got.prev_hash, prev, "prev_hash links to the previous event");
    assert_eq!(got.hash, compute_hash(got), "hash = SHA-256(prev || canonical)");
}

/// Stream versions start at 0 and are contiguous per stream; stream reads page correctly.
pub async fn stream_versions<F: StoreFactory>(f: &F) {
    case("stream_versions");
    let store = f.create().await;
    ok(&store, one("a", ExpectedVersion::Any, 3)).await;
    ok(&store, one("b", ExpectedVersion::Any, 2)).await;
    ok(&store, one("a", ExpectedVersion::Any, 1)).await;
    let a = store.read_stream("a", 0, 100).await.unwrap();
    assert_eq!((versions(&a), positions(&a)), (vec![0, 1, 2, 3], vec![0, 1, 2, 5]));
    assert_eq!(versions(&store.read_stream("b", 0, 100).await.unwrap()), vec![0, 1]);
    let page = store.read_stream("a", 2, 2).await.unwrap();
    assert_eq!(positions(&page), vec![2, 5]);
    assert!(store.read_stream("a", 4, 10).await.unwrap().is_empty());
    assert!(store.read_stream("a", 0, 0).await.unwrap().is_empty());
    assert!(store.read_stream("nope", 0, 10).await.unwrap().is_empty());
    assert_eq!((store.stream_version("a"), store.stream_version("nope")), (Some(3), None));
}

/// Any / NoStream / Exact, and a mismatch writes nothing.
pub async fn expected_versions<F: StoreFactory>(f: &F) {
    case("expected_versions");
    let store = f.create().await;
    ok(&store, one("s", ExpectedVersion::NoStream, 1)).await;
    assert_wrong_version(store.append(one("s", ExpectedVersion::NoStream, 1)).await, "s", Some(0));
    ok(&store, one("s", ExpectedVersion::Exact(0), 1)).await;
    assert_wrong_version(store.append(one("s", ExpectedVersion::Exact(5), 1)).await, "s", Some(1));
    assert_wrong_version(store.append(one("s", ExpectedVersion::Exact(0), 1)).await, "s", Some(1));
    assert_wrong_version(store.append(one("t", ExpectedVersion::Exact(0), 1)).await, "t", None);
    assert_eq!(
        (store.head(), store.stream_version("s"), store.stream_version("t")),
        (2, Some(1), None)
    );
    ok(&store, one("s", ExpectedVersion::Any, 1)).await;
    ok(&store, one("t", ExpectedVersion::Any, 1)).await;
    assert_eq!(
        (store.head(), store.stream_version("s"), store.stream_version("t")),
        (4, Some(2), Some(0))
    );
    assert_eq!(all(&store).await.len(), 4);
}

/// All writes of a request commit together, or none does.
pub async fn multi_stream_atomic<F: StoreFactory>(f: &F) {
    case("multi_stream_atomic");
    let store = f.create().await;
    let both = request(vec![
        write("x", ExpectedVersion::NoStream, events(2, "x")),
        write("y", ExpectedVersion::NoStream, events(3, "y")),
    ]);
    assert_eq!(
        ok(&store, both).await,
        Committed { first_position: 0, last_position: 4, duplicate: false }
    );
    let bad = request(vec![
        write("x", ExpectedVersion::Exact(1), events(1, "x")),
        write("z", ExpectedVersion::NoStream, events(1, "z")),
        write("y", ExpectedVersion::Exact(7), events(1, "y")),
    ]);
    assert_wrong_version(store.append(bad).await, "y", Some(2));
    assert_eq!(
        (store.head(), store.stream_version("x"), store.stream_version("z")),
        (5, Some(1), None)
    );
    assert_eq!(all(&store).await.len(), 5, "nothing of the rejected request is readable");
    let twice = request(vec![
        write("x", ExpectedVersion::Exact(1), events(1, "x")),
        write("x", ExpectedVersion::Exact(2), events(1, "x")),
        write("y", ExpectedVersion::Exact(2), vec![]), // a pure version check
    ]);
    assert_eq!(ok(&store, twice).await.last_position, 6);
    assert_eq!(versions(&store.read_stream("x", 0, 10).await.unwrap()), vec![0, 1, 2, 3]);
}

/// Same key and digest → the original positions, duplicate; another digest → conflict.
pub async fn idempotency<F: StoreFactory>(f: &F) {
    case("idempotency");
    let store = f.create().await;
    ok(&store, one("other", ExpectedVersion::Any, 2)).await;
    let first = ok(&store, with_key(one("i", ExpectedVersion::NoStream, 3), "k1", 1)).await;
    assert_eq!(first, Committed { first_position: 2, last_position: 4, duplicate: false });
    let again = ok(&store, with_key(one("i", ExpectedVersion::NoStream, 3), "k1", 1)).await;
    assert_eq!(again, Committed { duplicate: true, ..first.clone() });
    let conflict = store.append(with_key(one("i", ExpectedVersion::Any, 3), "k1", 2)).await;
    assert!(
        matches!(&conflict, Err(StoreError::IdempotencyConflict { key }) if key == "k1"),
        "{conflict:?}"
    );
    assert_eq!(store.head(), 5, "duplicates and conflicts write nothing");
    let stored = store.read_stream("i", 0, 10).await.unwrap();
    assert!(stored.iter().all(|e| e.idempotency_key.as_deref() == Some("k1")));
    concurrent_duplicates(&store).await;
}

/// The same keyed request sent concurrently commits once (even within one group).
async fn concurrent_duplicates<S: EventStore>(store: &S) {
    let sends =
        (0..6).map(|_| store.append(with_key(one("dup", ExpectedVersion::Any, 2), "k-conc", 3)));
    let results = futures::future::join_all(sends).await;
    let results: Vec<Committed> = results.into_iter().map(|r| r.expect("append")).collect();
    assert_eq!(results.iter().filter(|c| !c.duplicate).count(), 1, "exactly one original");
    let positions: HashSet<_> =
        results.iter().map(|c| (c.first_position, c.last_position)).collect();
    assert_eq!(positions.len(), 1, "duplicates report the original positions");
    assert_eq!(store.stream_version("dup"), Some(1));
}

/// Bad input is rejected with `Invalid` and writes nothing.
pub async fn validation<F: StoreFactory>(f: &F) {
    case("validation");
    let store = f.create().await;
    assert_invalid(store.append(request(vec![])).await, "no writes");
    assert_invalid(store.append(one("v", ExpectedVersion::Any, 0)).await, "zero events");
    assert_invalid(store.append(one("", ExpectedVersion::Any, 1)).await, "empty stream");
    assert_invalid(
        store.append(one(&"s".repeat(257), ExpectedVersion::Any, 1)).await,
        "long stream",
    );
    let mut bad_type = one("v", ExpectedVersion::Any, 2);
    bad_type.writes[0].events[1].event_type = String::new();
    assert_invalid(store.append(bad_type).await, "empty event type");
    let mut long_type = one("v", ExpectedVersion::Any, 1);
    long_type.writes[0].events[0].event_type = "t".repeat(129);
    assert_invalid(store.append(long_type).await, "long event type");
    let mut big = one("v", ExpectedVersion::Any, 1);
    big.writes[0].events[0].payload = vec![0; crate::MAX_PAYLOAD_BYTES + 1];
    assert_invalid(store.append(big).await, "payload over 1 MiB");
    assert_invalid(
        store.append(one("v", ExpectedVersion::Any, crate::DEFAULT_COMMIT_EVENTS_MAX * 64)).await,
        "too many events",
    );
    assert_eq!(store.head(), 0, "nothing written");
    ok(&store, one(&"s".repeat(256), ExpectedVersion::Any, 1)).await;
    let mut max_payload = one("v", ExpectedVersion::Any, 1);
    max_payload.writes[0].events[0].payload = vec![7; crate::MAX_PAYLOAD_BYTES];
    ok(&store, max_payload).await;
    assert_eq!(
        store.read_stream("v", 0, 1).await.unwrap()[0].payload.len(),
        crate::MAX_PAYLOAD_BYTES
    );
}

/// Appends enqueued one after another commit in that order; a rejected one takes no positions.
pub async fn enqueue_order<F: StoreFactory>(f: &F) {
    case("enqueue_order");
    let store = f.create().await;
    let mut tickets = Vec::new();
    for i in 0..20 {
        let expected = if i == 7 { ExpectedVersion::Exact(99) } else { ExpectedVersion::Any };
        tickets.push(store.enqueue(one("eq", expected, 2)).await);
    }
    let invalid = store.enqueue(one("", ExpectedVersion::Any, 1)).await;
    assert_invalid(invalid.await, "invalid enqueue");
    let mut next = 0;
    for (i, ticket) in tickets.into_iter().enumerate() {
        if i == 7 {
            assert_wrong_version(ticket.await, "eq", Some(13));
            continue;
        }
        let c = ticket.await.expect("enqueued append");
        assert_eq!((c.first_position, c.last_position), (next, next + 1), "request {i}");
        next += 2;
    }
    assert_eq!((store.head(), store.stream_version("eq")), (38, Some(37)));
}

/// `expected_position`: an append lands only at the position it was decided for. Requests
/// pipelined behind a refused one (decided as if it had landed) are refused too; a keyed
/// duplicate is a duplicate wherever the log is.
pub async fn expected_position<F: StoreFactory>(f: &F) {
    case("expected_position");
    let store = f.create().await;
    let at = |position: u64, expected: ExpectedVersion| {
        let mut req = one("ep", expected, 1);
        req.expected_position = Some(position);
        req
    };
    let first = store.append(at(0, ExpectedVersion::NoStream)).await.expect("at the head");
    assert_eq!((first.first_position, first.last_position), (0, 0));
    let stale = store.append(at(0, ExpectedVersion::Any)).await;
    assert!(
        matches!(stale, Err(StoreError::WrongExpectedPosition { expected: 0, actual: 1 })),
        "{stale:?}"
    );
    // Pipelined: the second is refused (its version), so the third, decided as if the second
    // had landed, is refused too; the fourth, decided for the real head, lands.
    let tickets = vec![
        store.enqueue(at(1, ExpectedVersion::Exact(0))).await,
        store.enqueue(at(2, ExpectedVersion::Exact(99))).await,
        store.enqueue(at(3, ExpectedVersion::Any)).await,
        store.enqueue(at(2, ExpectedVersion::Exact(1))).await,
    ];
    let mut outcomes = Vec::new();
    for ticket in tickets {
        outcomes.push(ticket.await);
    }
    assert!(matches!(outcomes[0], Ok(Committed { first_position: 1, .. })), "{outcomes:?}");
    assert_wrong_version(outcomes.remove(1), "ep", Some(1));
    let third = &outcomes[1];
    assert!(
        matches!(third, Err(StoreError::WrongExpectedPosition { expected: 3, actual: 2 })),
        "{third:?}"
    );
    assert!(matches!(outcomes[2], Ok(Committed { first_position: 2, .. })), "{outcomes:?}");
    // A keyed request seen before is a duplicate even when the log has moved on since.
    let keyed = |position| with_key(at(position, ExpectedVersion::Any), "ep-key", 1);
    let original = store.append(keyed(3)).await.expect("keyed");
    let again = store.append(keyed(3)).await.expect("duplicate");
    assert!(again.duplicate && again.first_position == original.first_position);
    assert_eq!(store.head(), 4, "refused requests took no positions");
}

/// 8 tasks × 50 appends to ONE stream with Exact versions and retries: no loss, no duplicate.
pub async fn concurrent_one_stream<F: StoreFactory>(f: &F) {
    case("concurrent_one_stream");
    let store = Arc::new(f.create().await);
    let tasks: Vec<_> =
        (0..8).map(|t| tokio::spawn(append_with_retry(store.clone(), t, 50))).collect();
    for task in tasks {
        task.await.expect("task");
    }
    let read = store.read_stream("hot", 0, 1_000).await.unwrap();
    assert_eq!(versions(&read), (0..400).collect::<Vec<u64>>(), "versions contiguous");
    let payloads: HashSet<_> = read.iter().map(|e| e.payload.clone()).collect();
    let expected: HashSet<_> =
        (0..8).flat_map(|t| (0..50).map(move |i| format!("{t}-{i}").into_bytes())).collect();
    assert_eq!(payloads, expected, "every append exactly once");
    assert_eq!(store.stream_version("hot"), Some(399));
}

async fn append_with_retry<S: EventStore>(store: Arc<S>, task: usize, count: usize) {
    for i in 0..count {
        loop {
            let expected = store
                .stream_version("hot")
                .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            let ev = new_event("Hot", format!("{task}-{i}").as_bytes());
            match store.append(request(vec![write("hot", expected, vec![ev])])).await {
                Ok(_) => break,
                Err(StoreError::WrongExpectedVersion { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("append failed: {e}"),
            }
        }
    }
}

/// Concurrent writers on many streams: positions contiguous and unique (group commit).
pub async fn concurrent_many_streams<F: StoreFactory>(f: &F) {
    case("concurrent_many_streams");
    let store = Arc::new(f.create().await);
    let tasks: Vec<_> = (0..16).map(|t| tokio::spawn(append_stream(store.clone(), t))).collect();
    let mut ranges = Vec::new();
    for task in tasks {
        ranges.extend(task.await.expect("task"));
    }
    ranges.sort();
    let mut next = 0;
    for (first, last) in &ranges {
        assert_eq!(*first, next, "committed ranges are contiguous and disjoint");
        next = last + 1;
    }
    assert_eq!((next, store.head()), (16 * 20 * 10, 16 * 20 * 10));
    let log = all(&store).await;
    assert_eq!(positions(&log), (0..next).collect::<Vec<u64>>());
    for t in 0..16 {
        let stream = store.read_stream(&format!("many-{t}"), 0, 1_000).await.unwrap();
        assert_eq!(versions(&stream), (0..200).collect::<Vec<u64>>());
    }
}

async fn append_stream<S: EventStore>(store: Arc<S>, task: usize) -> Vec<(u64, u64)> {
    let stream = format!("many-{task}");
    let mut expected = ExpectedVersion::NoStream;
    let mut out = Vec::new();
    for i in 0..20 {
        let c =
            ok(&*store, request(vec![write(&stream, expected, events(10, &format!("{i}")))])).await;
        assert_eq!(c.last_position - c.first_position, 9);
        out.push((c.first_position, c.last_position));
        expected = ExpectedVersion::Exact(i * 10 + 9);
    }
    out
}

/// Rejected requests sent concurrently with good ones do not disturb them.
pub async fn group_isolation<F: StoreFactory>(f: &F) {
    case("group_isolation");
    let store = Arc::new(f.create().await);
    let tasks: Vec<_> = (0..24u64)
        .map(|t| {
            let store = store.clone();
            let expected =
                if t % 2 == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(3) };
            tokio::spawn(async move { store.append(one(&format!("iso-{t}"), expected, 2)).await })
        })
        .collect();
    for (t, task) in tasks.into_iter().enumerate() {
        let result = task.await.expect("task");
        if t % 2 == 0 {
            assert!(result.is_ok(), "good request {t}: {result:?}");
        } else {
            assert_wrong_version(result, &format!("iso-{t}"), None);
        }
    }
    assert_eq!(store.head(), 24);
    assert_eq!(positions(&all(&store).await), (0..24).collect::<Vec<u64>>());
}

/// read_all from the middle, with max_count, past the head, and paging.
pub async fn read_all_paging<F: StoreFactory>(f: &F) {
    case("read_all_paging");
    let store = f.create().await;
    for i in 0..10 {
        ok(&store, one(&format!("p-{}", i % 3), ExpectedVersion::Any, 7)).await;
    }
    assert_eq!(positions(&store.read_all(23, 10).await.unwrap()), (23..33).collect::<Vec<u64>>());
    assert_eq!(positions(&store.read_all(65, 100).await.unwrap()), (65..70).collect::<Vec<u64>>());
    assert!(store.read_all(70, 5).await.unwrap().is_empty());
    assert!(store.read_all(1_000, 5).await.unwrap().is_empty());
    assert!(store.read_all(3, 0).await.unwrap().is_empty());
    let mut paged: Vec<RecordedEvent> = Vec::new();
    loop {
        let from = paged.last().map_or(0, |e| e.position + 1);
        let page = store.read_all(from, 9).await.unwrap();
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, all(&store).await);
}

/// A request far larger than one storage chunk (~96 KiB) reads back intact, including reads
/// that start and end inside it.
pub async fn large_commit<F: StoreFactory>(f: &F) {
    case("large_commit");
    let store = f.create().await;
    ok(&store, one("lc-0", ExpectedVersion::Any, 3)).await;
    let big = |tag: &str| -> Vec<NewEvent> {
        (0..400)
            .map(|i| new_event("Big", format!("{tag}-{i}-{}", "x".repeat(1_000)).as_bytes()))
            .collect()
    };
    let req = request(vec![
        write("lc-a", ExpectedVersion::NoStream, big("a")),
        write("lc-b", ExpectedVersion::NoStream, big("b")),
    ]);
    assert_eq!(ok(&store, req).await.last_position, 802);
    let a = store.read_stream("lc-a", 90, 250).await.unwrap();
    assert_eq!(positions(&a), (93..343).collect::<Vec<u64>>());
    assert!(a[0].payload.starts_with(b"a-90-xxx"));
    let b = store.read_stream("lc-b", 0, 1_000).await.unwrap();
    assert_eq!(versions(&b), (0..400).collect::<Vec<u64>>());
    assert!(b[399].payload.starts_with(b"b-399-xxx"));
    assert_eq!(
        positions(&store.read_all(150, 500).await.unwrap()),
        (150..650).collect::<Vec<u64>>()
    );
    let log = all(&store).await;
    assert_eq!(verify_chain(log.clone(), GENESIS_HASH), Ok(log[802].hash));
}

/// watch_head wakes on append.
pub async fn watch_head<F: StoreFactory>(f: &F) {
    case("watch_head");
    let store = Arc::new(f.create().await);
    let mut rx = store.watch_head();
    assert_eq!(*rx.borrow_and_update(), 0);
    let waiter = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("woken")
            .expect("open");
        let head = *rx.borrow_and_update();
        head
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    ok(&*store, one("w", ExpectedVersion::Any, 3)).await;
    assert_eq!(waiter.await.expect("waiter"), 3);
    assert_eq!(*store.watch_head().borrow(), 3);
}

/// The chain verifies and tampering is located.
pub async fn hash_chain<F: StoreFactory>(f: &F) {
    case("hash_chain");
    let store = f.create().await;
    for i in 0..6 {
        ok(&store, one(&format!("h-{}", i % 2), ExpectedVersion::Any, 5)).await;
    }
    let log = all(&store).await;
    let head = log.last().unwrap().hash;
    assert_eq!(verify_chain(log.clone(), GENESIS_HASH), Ok(head));
    assert_eq!(verify_chain(log[12..].to_vec(), log[11].hash), Ok(head), "verify from the middle");
    let mut flipped = log.clone();
    flipped[17].payload[0] ^= 0x01;
    assert_break(verify_chain(flipped, GENESIS_HASH), 17, "flipped byte", |k| {
        matches!(k, BreakKind::Hash { .. })
    });
    let mut removed = log.clone();
    removed.remove(9);
    assert_break(verify_chain(removed, GENESIS_HASH), 9, "removed event", |k| {
        matches!(k, BreakKind::Position { expected: 9, found: 10 })
    });
    let mut swapped = log.clone();
    swapped.swap(20, 21);
    assert_break(verify_chain(swapped, GENESIS_HASH), 20, "swapped events", |k| {
        matches!(k, BreakKind::Position { expected: 20, found: 21 })
    });
    let mut relinked = log;
    relinked[4].prev_hash[0] ^= 0x80;
    assert_break(verify_chain(relinked, GENESIS_HASH), 4, "bad link", |k| {
        matches!(k, BreakKind::PrevHash { .. })
    });
}

fn assert_break(
    r: Result<[u8; 32], crate::ChainBreak>,
    position: u64,
    what: &str,
    kind: impl Fn(&BreakKind) -> bool,
) {
    match r {
        Err(b) => assert!(b.position == position && kind(&b.kind), "{what}: unexpected {b:?}"),
        Ok(_) => panic!("{what}: tampering not detected"),
    }
}

/// Everything acknowledged survives a drop and reopen; the chain continues.
pub async fn reopen<F: StoreFactory>(f: &F) {
    case("reopen");
    let store = f.create().await;
    ok(&store, with_key(one("r-a", ExpectedVersion::NoStream, 3), "rk", 5)).await;
    ok(
        &store,
        request(vec![
            write("r-b", ExpectedVersion::Any, events(2, "b")),
            write("r-a", ExpectedVersion::Exact(2), events(1, "a")),
        ]),
    )
    .await;
    let before = all(&store).await;
    store.close().await.expect("close");
    drop(store);
    let Some(store) = f.reopen().await else {
        println!("conformance: reopen SKIPPED (backend cannot reopen)");
        return;
    };
    assert_eq!(all(&store).await, before, "everything acknowledged is there");
    assert_eq!(
        (store.head(), store.stream_version("r-a"), store.stream_version("r-b")),
        (6, Some(3), Some(1))
    );
    let dup = ok(&store, with_key(one("r-a", ExpectedVersion::NoStream, 3), "rk", 5)).await;
    assert_eq!(dup, Committed { first_position: 0, last_position: 2, duplicate: true });
    let conflict = store.append(with_key(one("r-a", ExpectedVersion::Any, 1), "rk", 6)).await;
    assert!(matches!(conflict, Err(StoreError::IdempotencyConflict { .. })), "{conflict:?}");
    ok(&store, one("r-b", ExpectedVersion::Exact(1), 2)).await;
    drop(store); // without close: drop alone must keep what was acknowledged
    let store = f.reopen().await.expect("second reopen");
    let log = all(&store).await;
    assert_eq!(log.len(), 8);
    assert_eq!(log[6].prev_hash, before[5].hash, "appends continue the chain");
    assert_eq!(verify_chain(log.clone(), GENESIS_HASH), Ok(log[7].hash));
}

/// recorded_at never decreases, even if the clock goes back.
pub async fn recorded_at<F: StoreFactory>(f: &F) {
    case("recorded_at");
    let store = Arc::new(f.create().await);
    let tasks: Vec<_> = (0..4).map(|t| tokio::spawn(append_stream(store.clone(), t))).collect();
    for task in tasks {
        task.await.expect("task");
    }
    let log = all(&store).await;
    assert!(log.windows(2).all(|w| w[0].recorded_at_us <= w[1].recorded_at_us), "non-decreasing");
    let now = Arc::new(AtomicI64::new(1_000));
    let clock_now = now.clone();
    let clock: Clock = Arc::new(move || clock_now.load(Ordering::SeqCst));
    let Some(store) = f.create_with_clock(clock).await else {
        println!("conformance: recorded_at with a backwards clock SKIPPED (no injectable clock)");
        return;
    };
    let mut stamps = Vec::new();
    for t in [1_000, 500, 2_000] {
        now.store(t, Ordering::SeqCst);
        let c = ok(&store, one("clock", ExpectedVersion::Any, 1)).await;
        stamps.push(store.read_all(c.first_position, 1).await.unwrap()[0].recorded_at_us);
    }
    assert_eq!(stamps, vec![1_000, 1_000, 2_000], "recorded_at = max(clock, last)");
}

/// After close, appends are refused with Unavailable; close is idempotent.
pub async fn append_after_close<F: StoreFactory>(f: &F) {
    case("append_after_close");
    let store = f.create().await;
    ok(&store, one("c", ExpectedVersion::Any, 1)).await;
    store.close().await.expect("close");
    let r = store.append(one("c", ExpectedVersion::Any, 1)).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "append after close: {r:?}");
    store.close().await.expect("second close");
    assert_eq!(store.head(), 1);
}
