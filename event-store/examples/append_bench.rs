//! Append throughput of the sled backend.
//!
//! `cargo run --release -p event-store --example append_bench -- events=1000000 tasks=4 batch=1000`
//!
//! C concurrent tasks append batches of B events with 150-byte payloads, each task to its own
//! stream, on a fresh sled store in a temp dir. Prints
//! `append events=N secs=S events_per_s=X`, then the time to reopen (rebuild the index) and the
//! speed of a sequential `read_all` scan.

use std::sync::Arc;
use std::time::Instant;

use event_store::{
    AppendRequest, EventStore, ExpectedVersion, Idempotency, NewEvent, SledConfig, SledStore,
    StreamWrite,
};
use uuid::Uuid;

#[path = "common/mod.rs"]
mod common;

struct Args {
    events: usize,
    tasks: usize,
    batch: usize,
    payload: usize,
    idempotency: bool,
}

fn parse_args() -> Args {
    let mut args =
        Args { events: 1_000_000, tasks: 4, batch: 1_000, payload: 150, idempotency: true };
    for arg in std::env::args().skip(1) {
        let (key, value) = arg.split_once('=').expect("arguments are key=value");
        let value: usize = value.parse().expect("numeric value");
        match key {
            "events" => args.events = value,
            "tasks" => args.tasks = value,
            "batch" => args.batch = value,
            "payload" => args.payload = value,
            "idempotency" => args.idempotency = value != 0,
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// Ids are derived from (task, batch, index) so the benchmark measures the store, not the RNG.
fn batch(task: usize, version: Option<u64>, args: &Args, n: usize) -> AppendRequest {
    let stream = format!("usage-{task}");
    let batch_id = ((task as u64) << 40) | n as u64;
    let events = (0..args.batch)
        .map(|i| NewEvent {
            event_id: Uuid::from_u64_pair(batch_id, i as u64),
            event_type: "UsageRecorded".into(),
            schema_version: 1,
            occurred_at_us: 1_700_000_000_000_000 + i as i64,
            causation_id: None,
            correlation_id: Some(Uuid::from_u64_pair(batch_id, u64::MAX)),
            payload: vec![b'x'; args.payload],
        })
        .collect();
    let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
    let write = StreamWrite { stream: stream.clone(), expected, events };
    let idempotency = args
        .idempotency
        .then(|| Idempotency { key: format!("{stream}-batch-{n}"), digest: [n as u8; 32] });
    AppendRequest { writes: vec![write], idempotency, expected_position: None }
}

async fn run_task(store: Arc<SledStore>, args: Arc<Args>, task: usize, batches: usize) {
    let mut version = None;
    for n in 0..batches {
        let req = batch(task, version, &args, n);
        let committed = store.append(req).await.expect("append");
        version =
            Some(version.map_or(0, |v| v + 1) + committed.last_position - committed.first_position);
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_ansi(false).with_env_filter("event_store=info").init();
    let args = Arc::new(parse_args());
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SledStore::open(SledConfig::new(dir.path())).expect("open"));
    let batches = args.events / args.batch / args.tasks;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.tasks)
        .map(|t| tokio::spawn(run_task(store.clone(), args.clone(), t, batches)))
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let secs = started.elapsed().as_secs_f64();
    let events = store.head();
    println!("append events={events} secs={secs:.3} events_per_s={:.0}", events as f64 / secs);
    store.close().await.expect("close");
    drop(store);
    let started = Instant::now();
    let store = SledStore::open(SledConfig::new(dir.path())).expect("reopen");
    let reopen = started.elapsed().as_secs_f64();
    println!("reopen events={} secs={reopen:.3} (index rebuilt from the log)", store.head());
    read_all(&store).await;
}

/// Sequential scan of the whole log in pages of 10,000 events (what a projection does).
async fn read_all(store: &SledStore) {
    let (from, secs, bytes) = common::scan_all(store).await;
    let per_s = from as f64 / secs;
    println!("read_all events={from} secs={secs:.3} events_per_s={per_s:.0} payload_bytes={bytes}");
}
