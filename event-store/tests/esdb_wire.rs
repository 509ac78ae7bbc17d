//! The EventStoreDB backend over the wire: the real `EsdbLog` and the real `eventstore` client
//! against `esdb-fake`, a **protocol fake** of the gRPC subset the backend uses, on a real TCP
//! port. Everything on Accrual's side of the socket is the production code; the server is not
//! EventStoreDB (see esdb-fake's crate docs for what it implements and what it cannot prove).
//! `esdb_live.rs` runs the same conformance suite against a real server when one is available.
#![cfg(feature = "esdb")]

mod esdb_factory;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use esdb_fake::{FakeServer, Fault};
use event_store::conformance::{new_event, run_all};
use event_store::esdb::testkit::{append_hot, one};
use event_store::esdb::{RetryPolicy, CHUNK_EVENT_TYPE};
use event_store::{
    verify_chain, AppendRequest, EsdbStore, EventStore, ExpectedVersion, Position, StoreError,
    StreamWrite, GENESIS_HASH,
};

use esdb_factory::EsdbFactory;

/// Quick retries for the fault tests (the stop test uses the production default).
const FAST: RetryPolicy =
    RetryPolicy { attempts_max: 4, backoff_first_ms: 10, backoff_max_ms: 50, conflicts_max: 64 };

/// `MaxAppendSize` of a server set up for Accrual's largest requests (see the docs).
const CONFIGURED_MAX_APPEND_SIZE: usize = 32 << 20;

async fn fake() -> FakeServer {
    FakeServer::start().await.expect("start esdb-fake")
}

/// Three events over two streams in one request (all land or none).
fn triple(tag: &str) -> AppendRequest {
    let ev = |i: u32| new_event("T", format!("{tag}/{i}").as_bytes());
    let write =
        |s: &str, events| StreamWrite { stream: s.into(), expected: ExpectedVersion::Any, events };
    AppendRequest {
        writes: vec![write("x", vec![ev(0), ev(1)]), write("y", vec![ev(2)])],
        idempotency: None,
        expected_position: None,
    }
}

async fn wait_for_head(store: &EsdbStore, head: Position) {
    let mut rx = store.watch_head();
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|h| *h >= head))
        .await
        .expect("the follower catches up")
        .expect("open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_the_wire_against_the_esdb_fake() {
    // A server configured for Accrual's request limits (ESDB's default MaxAppendSize of 1 MiB
    // refuses a 1 MiB payload: see `the_servers_max_append_size_...`).
    let server = FakeServer::start_with(CONFIGURED_MAX_APPEND_SIZE).await.expect("start esdb-fake");
    run_all(&EsdbFactory::new(&server.url(), None)).await;
    assert!(server.attempts().len() > 10, "the suite went through the fake");
}

/// Two command nodes (two clients, two connections) race for the one log stream: every append
/// lands once, positions are dense, both nodes read the same chained log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_append_concurrently_through_the_fake() {
    let server = fake().await;
    let factory = EsdbFactory::new(&server.url(), Some(FAST));
    let stream = factory.fresh_stream();
    let a = Arc::new(factory.open(&stream, None).await);
    let b = Arc::new(factory.open(&stream, None).await);
    let mut tasks = Vec::new();
    for (n, store) in [(0, a.clone()), (1, b.clone())] {
        for t in 0..3 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..15 {
                    append_hot(&store, &format!("{n}-{t}-{i}")).await;
                    let free = one(&format!("free-{n}"), ExpectedVersion::Any, "f");
                    store.append(free).await.expect("append Any");
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = 2 * 3 * 15 * 2;
    wait_for_head(&a, total).await;
    wait_for_head(&b, total).await;
    let (la, lb) =
        (a.read_all(0, usize::MAX).await.unwrap(), b.read_all(0, usize::MAX).await.unwrap());
    assert_eq!(la, lb, "both nodes read the same log");
    assert_eq!(la.iter().map(|e| e.position).collect::<Vec<_>>(), (0..total).collect::<Vec<_>>());
    assert_eq!(verify_chain(la.clone(), GENESIS_HASH), Ok(la[la.len() - 1].hash));
    let hot = a.read_stream("hot", 0, 1_000).await.unwrap();
    let versions: Vec<u64> = hot.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, (0..90).collect::<Vec<_>>());
    let payloads: HashSet<_> = hot.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(payloads.len(), 90, "no append lost or doubled");
    let chunks = server.events(&stream);
    assert_eq!(chunks.len() as u64, a.chunk_count());
    assert!(chunks.iter().all(|c| c.event_type == CHUNK_EVENT_TYPE));
    let ids: HashSet<_> = chunks.iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), chunks.len(), "no chunk written twice");
}

/// The server goes away mid-run (port closed, connections cut): appends end in UNAVAILABLE
/// within the retry bound, nothing is half-written, and appends resume after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_unavailable_within_the_bound_and_appends_resume_after_restart() {
    let server = Arc::new(fake().await);
    let factory = EsdbFactory::new(&server.url(), None);
    let stream = factory.fresh_stream();
    let store = Arc::new(factory.open(&stream, None).await);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..10_000 {
                let tag = format!("r{i}");
                let r = store.append(triple(&tag)).await;
                let failed = r.is_err();
                results.push((tag, r));
                if failed {
                    break;
                }
            }
            results
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop().await;
    let stopped = Instant::now();
    let results = tokio::time::timeout(Duration::from_secs(60), writer).await.unwrap().unwrap();
    let waited = stopped.elapsed();
    let (last_tag, last) = results.last().unwrap();
    assert!(matches!(last, Err(StoreError::Unavailable(_))), "{last_tag}: {last:?}");
    // One append's retries, then the read-back's retries, plus slack for the client.
    let bound = RetryPolicy::default().total_backoff() * 2 + Duration::from_secs(5);
    assert!(waited < bound, "UNAVAILABLE after {waited:?} (bound {bound:?})");
    println!("UNAVAILABLE {waited:?} after the stop (bound {bound:?})");
    assert!(results.len() > 1, "some appends went through before the stop");
    server.restart().await.expect("restart on the same port");
    let after = store.append(one("z", ExpectedVersion::Any, "after")).await;
    after.expect("appends resume after the restart");
    let fresh = factory.open(&stream, None).await;
    let log = fresh.read_all(0, usize::MAX).await.unwrap();
    assert_eq!(verify_chain(log.clone(), GENESIS_HASH).map(|_| ()), Ok(()));
    let mut per_tag: HashMap<String, usize> = HashMap::new();
    for e in log.iter().filter(|e| e.stream != "z") {
        let payload = String::from_utf8(e.payload.clone()).unwrap();
        *per_tag.entry(payload.split('/').next().unwrap().to_owned()).or_default() += 1;
    }
    for (tag, r) in &results {
        let n = per_tag.get(tag).copied().unwrap_or(0);
        match r {
            Ok(_) => assert_eq!(n, 3, "{tag} acknowledged: all three events, once"),
            Err(_) => assert!(n == 0 || n == 3, "{tag} failed: all or nothing, got {n}"),
        }
    }
    assert_eq!(per_tag.values().sum::<usize>() + 1, log.len(), "nothing else in the log");
}

/// Transient failures before the write, a lost reply after it, and a leader change: each is
/// retried with the same chunk ids, and nothing is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_the_same_ids_and_never_duplicated() {
    let server = fake().await;
    let factory = EsdbFactory::new(&server.url(), Some(FAST));
    let stream = factory.fresh_stream();
    let store = factory.open(&stream, None).await;
    let cases = [(Fault::Unavailable, 2), (Fault::LoseReply, 1), (Fault::NotLeader, 1)];
    for (i, (fault, n)) in cases.into_iter().enumerate() {
        let before = server.attempts().len();
        server.fail_appends(n, fault);
        let tag = format!("{fault:?}");
        store.append(one("s", ExpectedVersion::Any, &tag)).await.expect(&tag);
        assert_eq!(server.pending_faults(), 0, "{tag}: every fault met");
        let tried: Vec<_> =
            server.attempts()[before..].iter().map(|a| a.event_ids.clone()).collect();
        assert_eq!(tried.len(), n as usize + 1, "{tag}: one attempt per fault, then success");
        assert!(tried.windows(2).all(|w| w[0] == w[1]), "{tag}: retried with the same ids");
        assert_eq!(server.events(&stream).len(), i + 1, "{tag}: written once");
    }
    server.fail_appends(FAST.attempts_max, Fault::Unavailable);
    let r = store.append(one("s", ExpectedVersion::Any, "gives up")).await;
    assert!(matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("after retries")), "{r:?}");
    assert_eq!(server.events(&stream).len(), 3, "the refused append wrote nothing");
    store.append(one("s", ExpectedVersion::Exact(2), "again")).await.expect("works again");
}

/// Something else writes into the log stream: a foreign event type makes the node refuse to
/// append (and a new node refuse to open); a chunk-typed event that does not continue the log
/// is corruption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_event_in_the_log_stream_makes_the_node_refuse() {
    let server = fake().await;
    let factory = EsdbFactory::new(&server.url(), Some(FAST));
    let stream = factory.fresh_stream();
    let store = factory.open(&stream, None).await;
    store.append(one("s", ExpectedVersion::Any, "a")).await.unwrap();
    server.append_raw(&stream, "SomethingElse", b"{}");
    let r = store.append(one("s", ExpectedVersion::Any, "b")).await;
    assert!(matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("foreign")), "{r:?}");
    assert_eq!(store.read_all(0, 10).await.unwrap().len(), 1, "what came before is readable");
    let reopened = factory.try_open(&stream, None).await;
    assert!(matches!(&reopened, Err(StoreError::Unavailable(m)) if m.contains("foreign")));
    let other = factory.fresh_stream();
    let store = factory.open(&other, None).await;
    store.append(one("s", ExpectedVersion::Any, "a")).await.unwrap();
    server.append_raw(&other, CHUNK_EVENT_TYPE, &[1, 2, 3]);
    let r = store.append(one("s", ExpectedVersion::Any, "b")).await;
    assert!(matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("corrupt")), "{r:?}");
    assert!(matches!(factory.try_open(&other, None).await, Err(StoreError::Corrupt { .. })));
}

/// `n` events of `size` payload bytes on stream `x`, tagged.
fn bulk(tag: &str, n: usize, size: usize) -> AppendRequest {
    let events =
        (0..n).map(|i| new_event("T", format!("{tag}/{i}/{}", "p".repeat(size)).as_bytes()));
    let write = StreamWrite {
        stream: "x".into(),
        expected: ExpectedVersion::Any,
        events: events.collect(),
    };
    AppendRequest { writes: vec![write], idempotency: None, expected_position: None }
}

/// EventStoreDB refuses an append whose events exceed its `MaxAppendSize` (1 MiB by default,
/// counted as data + 2 × type length per event). Requests that fit one by one but not together
/// are split into several appends instead of failing together; a request that cannot fit alone
/// is refused as INVALID_ARGUMENT naming the server limit, not reported as UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_split_to_fit_the_servers_max_append_size_and_oversize_requests_are_refused() {
    let server = fake().await;
    assert_eq!(esdb_fake::DEFAULT_MAX_APPEND_SIZE, 1 << 20, "EventStoreDB's default");
    let factory = EsdbFactory::new(&server.url(), Some(FAST));
    let stream = factory.fresh_stream();
    let store = factory.open(&stream, None).await;
    // ≈ 316 KB of request bytes each (three: 948 KB, under the group bound), ≈ 365 KB each once
    // encoded as chunks: three do not fit one append. The first request meets a fault, so the
    // writer retries it while the others queue up: at least three of them form one group.
    server.fail_appends(1, Fault::Unavailable);
    let mut tickets = vec![store.enqueue(one("v", ExpectedVersion::Any, "first")).await];
    for tag in ["a", "b", "c", "d"] {
        tickets.push(store.enqueue(bulk(tag, 350, 900)).await);
    }
    for t in tickets {
        t.await.expect("each request fits an append of its own");
    }
    assert_eq!(store.head(), 1_401);
    let sizes: Vec<usize> = server.attempts().iter().map(|a| a.size).collect();
    assert!(sizes.iter().all(|s| *s <= 1 << 20), "no append over the limit: {sizes:?}");
    let mut big = one("v", ExpectedVersion::Any, "big");
    big.writes[0].events[0].payload = vec![7; event_store::MAX_PAYLOAD_BYTES];
    let r = store.append(big).await;
    assert!(matches!(&r, Err(StoreError::Invalid(m)) if m.contains("MaxAppendSize")), "{r:?}");
    store.append(one("v", ExpectedVersion::Any, "small")).await.expect("the node goes on");
}
