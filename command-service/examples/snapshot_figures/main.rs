//! Prints the figures of write-model snapshots (issue 12, docs/decisions/0025): a model of
//! `SUBSCRIPTIONS` subscriptions with usage of three metrics (sum, max, unique_count, as
//! `accrual bench` sends), its snapshot's size and write time, and the open time of the engine
//! from the snapshot and from the whole log (over the in-memory store, so the figures are the
//! write model's own). Run in release:
//!
//! `cargo run --release -p command-service --example snapshot_figures -- 10000 1000000`
//! (subscriptions, usage events).

// The engine takes usage items as `Result<Usage, tonic::Status>`, as the gRPC layer hands them.
#![allow(clippy::result_large_err)]

mod fixture;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use command_service::engine::{Clock, Engine, EngineOptions};
use command_service::snapshot::SnapshotOptions;
use domain::commands::Policy;
use domain::events::Usage;
use domain::rating::Aggregation;
use event_store::{EventStore, MemoryStore};

const METRICS: [(&str, Aggregation, &str); 3] = [
    ("api_calls", Aggregation::Sum, "calls"),
    ("storage_gb", Aggregation::Max, "gb"),
    ("active_users", Aggregation::UniqueCount, "user"),
];
const BATCH_EVENTS: u64 = 1_000;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("a count"));
    let subscriptions = args.next().unwrap_or(10_000);
    let events = args.next().unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let options = || EngineOptions {
        snapshots: Some(SnapshotOptions {
            interval_events: 0,
            ..SnapshotOptions::in_dir(dir.path())
        }),
        ..EngineOptions::default()
    };
    let clock: Clock = Arc::new(|| "2025-01-20T12:00:00Z".parse().unwrap());
    let store = Arc::new(MemoryStore::new());
    let dyn_store = || store.clone() as Arc<dyn EventStore>;
    let e =
        Engine::open_with(dyn_store(), Policy::default(), clock.clone(), options()).await.unwrap();
    fixture::catalog(&e, subscriptions, &METRICS).await;
    let started = Instant::now();
    for first in (0..events).step_by(BATCH_EVENTS as usize) {
        let items = (first..(first + BATCH_EVENTS).min(events))
            .map(|n| {
                let (code, _, property) = METRICS[(n % 3) as usize];
                let value = if n % 3 == 2 { format!("u{}", n % 50) } else { (n % 100).to_string() };
                Ok(Usage {
                    subscription_id: format!("s{}", n % subscriptions),
                    transaction_id: format!("t{n}"),
                    metric_code: code.into(),
                    occurred_at: "2025-01-15T08:00:00Z".parse().unwrap(),
                    properties: BTreeMap::from([(property.to_string(), value)]),
                })
            })
            .collect();
        e.record_usage(items).await.unwrap();
    }
    let head = store.head();
    println!("snapshot_figures subscriptions={subscriptions} usage_events={events} log_events={head} ingest_s={:.1}", started.elapsed().as_secs_f64());
    let started = Instant::now();
    assert_eq!(e.write_snapshot().await, head);
    let write_ms = started.elapsed().as_millis();
    let bytes =
        std::fs::metadata(dir.path().join(command_service::snapshot::FILE_NAME)).unwrap().len();
    println!("snapshot_figures snapshot_bytes={bytes} bytes_per_subscription={} write_ms={write_ms} (clone, wait, encode, write, fsync)", bytes / subscriptions);
    drop(e);
    let started = Instant::now();
    let from_snapshot =
        Engine::open_with(dyn_store(), Policy::default(), clock.clone(), options()).await.unwrap();
    let snapshot_ms = started.elapsed().as_millis();
    assert_eq!(from_snapshot.snapshot_position().await, head);
    drop(from_snapshot);
    let started = Instant::now();
    let rebuilt =
        Engine::open_with(dyn_store(), Policy::default(), clock, EngineOptions::default())
            .await
            .unwrap();
    let rebuild_ms = started.elapsed().as_millis();
    drop(rebuilt);
    println!(
        "snapshot_figures open_from_snapshot_ms={snapshot_ms} open_from_whole_log_ms={rebuild_ms}"
    );
}
