//! What the sled backend costs as history grows (issue 12): memory, open time, disk.
//!
//! `cargo run --release -p event-store --no-default-features --example store_scale -- \
//!     events=2000000 streams=10000 cache_mib=128 interval=1000000`
//!
//! Four tasks append requests of 1,000 realistic usage envelopes (`UsageRecorded` JSON
//! payloads as the command service writes them, one idempotency key and one correlation id
//! per request); consecutive events go to different streams `usage-sub-…` (the `bench scale`
//! workload). Prints, in this order: append throughput and RSS, the bytes of the stored
//! chunks and of the whole sled directory per event, the open time after a clean close (from
//! the checkpoint) and after the checkpoint is removed (full scan), RSS after each open, a
//! `read_stream` of one stream and a `read_all` scan of the whole log.
//!
//! RSS after an open in the same process includes what the append phase left in the
//! allocator; for the RSS of a restart, keep the store (`STORE_SCALE_KEEP=1` prints its path and
//! leaves it) and open it in a fresh process with `STORE_SCALE_OPEN=<path>`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use event_store::{
    AppendRequest, EventStore, ExpectedVersion, Idempotency, NewEvent, SledConfig, SledStore,
    StreamWrite, LOG_TREE, SLED_SEGMENT_BYTES,
};
use uuid::Uuid;

#[path = "common/mod.rs"]
mod common;

struct Args {
    events: u64,
    streams: u64,
    batch: u64,
    tasks: u64,
    cache_mib: u64,
    interval: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        events: 2_000_000,
        streams: 10_000,
        batch: 1_000,
        tasks: 4,
        cache_mib: 0,
        interval: event_store::DEFAULT_INDEX_CHECKPOINT_INTERVAL_EVENTS,
    };
    for arg in std::env::args().skip(1) {
        let (key, value) = arg.split_once('=').expect("arguments are key=value");
        let value: u64 = value.parse().expect("numeric value");
        match key {
            "events" => args.events = value,
            "streams" => args.streams = value,
            "batch" => args.batch = value,
            "tasks" => args.tasks = value,
            "cache_mib" => args.cache_mib = value,
            "interval" => args.interval = value,
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn config(path: &Path, args: &Args) -> SledConfig {
    let mut config = SledConfig::new(path);
    config.index_checkpoint_interval_events = args.interval;
    if args.cache_mib > 0 {
        config.cache_bytes_max = args.cache_mib << 20;
    }
    config
}

/// The usage event `n` of the run, as the command service stores it.
fn usage(n: u64, streams: u64) -> (String, NewEvent) {
    let (stream, payload) = common::usage(n, streams);
    let event = NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "UsageRecorded".into(),
        schema_version: 1,
        occurred_at_us: 1_796_292_000_000_000 + n as i64 * 1_000,
        causation_id: None,
        correlation_id: None,
        payload,
    };
    (stream, event)
}

fn request(first: u64, args: &Args) -> AppendRequest {
    let correlation = Uuid::new_v4();
    let writes = (first..first + args.batch)
        .map(|n| {
            let (stream, mut event) = usage(n, args.streams);
            event.correlation_id = Some(correlation);
            StreamWrite { stream, expected: ExpectedVersion::Any, events: vec![event] }
        })
        .collect();
    let key = format!("ingest-{first}");
    let idempotency = Some(Idempotency { key, digest: [first as u8; 32] });
    AppendRequest { writes, idempotency, expected_position: None }
}

fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_default();
        let kib: f64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        kib / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn append(store: Arc<SledStore>, args: Arc<Args>) {
    let per_task = args.events / args.tasks;
    let tasks: Vec<_> = (0..args.tasks)
        .map(|t| {
            let (store, args) = (store.clone(), args.clone());
            tokio::spawn(async move {
                let mut n = t * per_task;
                while n < (t + 1) * per_task {
                    store.append(request(n, &args)).await.expect("append");
                    n += args.batch;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
}

fn reopen(path: &Path, args: &Args, what: &str) -> SledStore {
    let started = Instant::now();
    let store = SledStore::open(config(path, args)).expect("reopen");
    let secs = started.elapsed().as_secs_f64();
    let report = store.open_report();
    let (rss, _) = rss_mib();
    println!(
        "open={what} secs={secs:.3} from_checkpoint={} events_scanned={} rss_mib={rss:.0}",
        report.from_checkpoint, report.events_scanned
    );
    store
}

#[tokio::main]
async fn main() {
    let args = Arc::new(parse_args());
    if let Ok(path) = std::env::var("STORE_SCALE_OPEN") {
        let store = reopen(Path::new(&path), &args, "fresh-process");
        let started = Instant::now();
        let stream = store.read_stream("usage-sub-5f3a9c1e-000042", 0, 100).await.expect("read");
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let (rss, _) = rss_mib();
        println!("read_stream events={} ms={ms:.1} rss_mib={rss:.0}", stream.len());
        return;
    }
    let dir = tempfile::tempdir_in(std::env::var("STORE_SCALE_DIR").unwrap_or("/tmp".into()))
        .expect("temp dir");
    let store = Arc::new(SledStore::open(config(dir.path(), &args)).expect("open"));
    let started = Instant::now();
    append(store.clone(), args.clone()).await;
    let secs = started.elapsed().as_secs_f64();
    let events = store.head();
    let (rss, hwm) = rss_mib();
    println!(
        "append events={events} streams={} secs={secs:.2} events_per_s={:.0} rss_mib={rss:.0} \
         peak_rss_mib={hwm:.0} cache_mib={}",
        args.streams,
        events as f64 / secs,
        config(dir.path(), &args).cache_bytes_max >> 20
    );
    store.close().await.expect("close");
    drop(store);

    let disk = dir_bytes(dir.path());
    let (mut chunk_bytes, mut chunks) = (0_u64, 0_u64);
    {
        let db = sled::Config::new().path(dir.path()).segment_size(SLED_SEGMENT_BYTES).open();
        let db = db.expect("open sled");
        for item in db.open_tree(LOG_TREE).expect("log").iter() {
            let (_, value) = item.expect("chunk");
            chunk_bytes += value.len() as u64;
            chunks += 1;
        }
    }
    println!(
        "disk chunks={chunks} chunk_bytes_per_event={:.1} sled_dir_bytes_per_event={:.1} \
         sled_overhead={:.2}",
        chunk_bytes as f64 / events as f64,
        disk as f64 / events as f64,
        disk as f64 / chunk_bytes as f64
    );

    let store = reopen(dir.path(), &args, "checkpoint");
    let started = Instant::now();
    let stream = store.read_stream("usage-sub-5f3a9c1e-000042", 0, 100).await.expect("read");
    let ms = started.elapsed().as_secs_f64() * 1e3;
    println!("read_stream events={} ms={ms:.1}", stream.len());
    drop(store);
    {
        let db = sled::Config::new().path(dir.path()).segment_size(SLED_SEGMENT_BYTES).open();
        db.expect("open sled").drop_tree("index").expect("drop the checkpoint");
    }
    let store = reopen(dir.path(), &args, "full-scan");
    if std::env::var("STORE_SCALE_KEEP").is_ok() {
        println!("kept={}", dir.keep().display());
        return;
    }
    let (from, secs, bytes) = common::scan_all(&store).await;
    println!(
        "read_all events={from} secs={secs:.2} events_per_s={:.0} payload_bytes_per_event={:.1}",
        from as f64 / secs,
        bytes as f64 / from.max(1) as f64
    );
}
