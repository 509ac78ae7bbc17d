//! Snapshot files: framing, checks against the log, and the engine opening from a snapshot and
//! the log's tail (or from the whole log when the snapshot is missing, damaged or stale).

use std::collections::BTreeMap;
use std::sync::Arc;

use domain::calendar::Anchor;
use domain::commands::{Command, Policy};
use domain::events::Usage;
use domain::rating::Aggregation;
use event_store::{EventStore, MemoryStore};

use super::*;
use crate::engine::{Engine, EngineOptions, UsageItem};

const NOW: &str = "2025-01-20T12:00:00Z";

fn options(path: &Path) -> EngineOptions {
    let snapshots =
        SnapshotOptions { path: path.to_path_buf(), interval_events: 0, flush_through: None };
    EngineOptions { snapshots: Some(snapshots), ..EngineOptions::default() }
}

async fn open(store: &Arc<MemoryStore>, path: &Path) -> Engine {
    let clock: crate::engine::Clock = Arc::new(|| NOW.parse().unwrap());
    let store: Arc<dyn EventStore> = store.clone();
    Engine::open_with(store, Policy::default(), clock, options(path)).await.unwrap()
}

#[path = "../../examples/snapshot_figures/fixture.rs"]
mod fixture;

const METRICS: [(&str, Aggregation, &str); 2] =
    [("calls", Aggregation::Sum, "n"), ("users", Aggregation::UniqueCount, "u")];

async fn catalog(e: &Engine, subscriptions: u32) {
    fixture::catalog(e, u64::from(subscriptions), &METRICS).await;
}

/// `count` usage events from transaction `first` on, over subscriptions `s0..s{subscriptions}`.
async fn usage(e: &Engine, first: u32, count: u32, subscriptions: u32) -> Vec<UsageItem> {
    let items = (first..first + count)
        .map(|n| {
            let (metric, key, value) = if n % 2 == 0 {
                ("calls", "n", n.to_string())
            } else {
                ("users", "u", format!("u{}", n % 7))
            };
            Ok(Usage {
                subscription_id: format!("s{}", n % subscriptions),
                transaction_id: format!("t{n}"),
                metric_code: metric.into(),
                occurred_at: "2025-01-15T08:00:00Z".parse().unwrap(),
                properties: BTreeMap::from([(key.to_string(), value)]),
            })
        })
        .collect();
    e.record_usage(items).await.unwrap()
}

async fn state(e: &Engine) -> String {
    e.read(|l| serde_json::to_value(l).unwrap().to_string()).await
}

/// A log with a snapshot at some position and a tail after it; returns the store and the
/// snapshot's position.
async fn books(path: &Path, tail: u32) -> (Arc<MemoryStore>, Position) {
    let store = Arc::new(MemoryStore::new());
    let e = open(&store, path).await;
    catalog(&e, 5).await;
    usage(&e, 0, 40, 5).await;
    let position = e.write_snapshot().await;
    assert_eq!(position, store.head(), "a snapshot of the whole log so far");
    usage(&e, 40, tail, 5).await;
    (store, position)
}

/// Opens a second engine over `store` and checks it equals a full rebuild; returns the
/// position of the snapshot it loaded (0: rebuilt from the whole log).
async fn reopen_equals_rebuild(store: &Arc<MemoryStore>, path: &Path) -> Position {
    let reopened = open(store, path).await;
    let rebuilt = open(store, &path.with_extension("absent")).await;
    assert_eq!(rebuilt.snapshot_position().await, 0);
    assert_eq!(state(&reopened).await, state(&rebuilt).await);
    // Both decide alike: a duplicate, a replayed key and new usage.
    let again = usage(&reopened, 0, 1, 5).await;
    assert!(matches!(again[..], [UsageItem::Duplicate { position: _ }]), "{again:?}");
    let start = Command::StartSubscription {
        subscription_id: "s1".into(),
        customer_id: "c".into(),
        plan_code: "p".into(),
        plan_version: None,
        anchor: Anchor::Anniversary,
        start_date: Some("2025-01-01".parse().unwrap()),
        billed_until: None,
    };
    let replay = reopened.execute(start, Some(("start-1".into(), [1; 32])), None).await.unwrap();
    assert!(replay.duplicate, "the key is known from the snapshot");
    let fresh = usage(&reopened, 1_000 + store.head() as u32, 3, 5).await;
    assert!(fresh.iter().all(|u| matches!(u, UsageItem::Accepted { .. })), "{fresh:?}");
    reopened.snapshot_position().await
}

#[tokio::test]
async fn a_valid_snapshot_is_loaded_and_only_the_tail_folded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let (store, position) = books(&path, 25).await;
    assert!(position > 0 && position < store.head());
    assert_eq!(reopen_equals_rebuild(&store, &path).await, position);
}

#[tokio::test]
async fn a_snapshot_is_written_at_close_and_covers_the_whole_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let store = Arc::new(MemoryStore::new());
    let e = open(&store, &path).await;
    catalog(&e, 2).await;
    assert!(!path.exists());
    e.close().await.unwrap();
    let (header, _) = read(&path, &*store).await.unwrap().expect("written at close");
    assert_eq!(header.position, store.head());
}

#[tokio::test]
async fn missing_damaged_and_stale_snapshots_are_ignored_and_the_log_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let (store, _) = books(&path, 10).await;
    let good = std::fs::read(&path).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("corrupt byte", flipped(&good, good.len() - 10), "SHA-256 does not match"),
        ("truncated", good[..good.len() - 100].to_vec(), "truncated"),
        ("header only", good[..50].to_vec(), "truncated"),
        ("empty", Vec::new(), "truncated"),
        ("bad magic", flipped(&good, 0), "bad magic"),
        ("unknown format", with_u32_at(&good, 8, FORMAT_VERSION + 1), "unknown format version"),
        ("beyond the head", with_u64_at(&good, 12, store.head() + 1), "SHA-256"),
    ];
    for (what, bytes, reason) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let err = read(&path, &*store).await.expect_err(what);
        assert!(err.contains(reason), "{what}: {err}");
        assert_eq!(reopen_equals_rebuild(&store, &path).await, 0, "{what}");
    }
    std::fs::remove_file(&path).unwrap();
    assert_eq!(read(&path, &*store).await, Ok(None));
    assert_eq!(reopen_equals_rebuild(&store, &path).await, 0, "missing");
}

#[tokio::test]
async fn a_snapshot_of_another_log_or_beyond_the_head_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    let (store, position) = books(&ours, 10).await;
    // Another log of the same commands: same length, other event ids and hashes.
    let (_other, other_position) = books(&theirs, 10).await;
    assert_eq!(position, other_position);
    let err = read(&theirs, &*store).await.unwrap_err();
    assert!(err.contains("another hash"), "{err}");
    assert_eq!(reopen_equals_rebuild(&store, &theirs).await, 0);
    // A snapshot past the head (a log restored from an older backup), framed correctly.
    let (_, payload) = read(&ours, &*store).await.unwrap().unwrap();
    let beyond = Header { position: store.head() + 5, head_hash: [7; 32] };
    write(&ours, beyond, &payload).unwrap();
    let err = read(&ours, &*store).await.unwrap_err();
    assert!(err.contains("stale") && err.contains("the log has"), "{err}");
    assert_eq!(reopen_equals_rebuild(&store, &ours).await, 0);
}

#[tokio::test]
async fn a_payload_that_does_not_match_its_header_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let (store, position) = books(&path, 10).await;
    let (header, model) = read(&path, &*store).await.unwrap().unwrap();
    // Well framed, the right hash, but not a model.
    write(&path, header, b"{\"not\": \"a model\"}").unwrap();
    assert!(read(&path, &*store).await.is_ok());
    assert_eq!(reopen_equals_rebuild(&store, &path).await, 0, "not a model");
    // The model at P under a header (and the log's hash) at P - 1.
    let head_hash = head_hash_at(&*store, position - 1).await.unwrap();
    write(&path, Header { position: position - 1, head_hash }, &model).unwrap();
    assert!(read(&path, &*store).await.is_ok());
    assert_eq!(reopen_equals_rebuild(&store, &path).await, 0, "model at P, header at P - 1");
}

#[test]
fn encode_and_decode_round_trip() {
    let header = Header { position: 42, head_hash: [9; 32] };
    let bytes = encode(header, b"payload");
    assert_eq!(decode(&bytes), Ok((header, &b"payload"[..])));
    assert!(decode(&encode(Header { position: 1, ..header }, b"")).is_ok());
}

fn flipped(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= 0x55;
    out
}

fn with_u32_at(bytes: &[u8], at: usize, v: u32) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
    out
}

fn with_u64_at(bytes: &[u8], at: usize, v: u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
    out
}
