//! The dedup index on its own: notes, flushes, reopens from its covered position, and rebuilds
//! from the log when its files are missing, corrupt or of another log.

use std::collections::BTreeMap;

use domain::events::Usage;
use event_store::{AppendRequest, ExpectedVersion, MemoryStore, NewEvent, StreamWrite};
use uuid::Uuid;

use super::*;

fn usage(sub: &str, tx: &str) -> Usage {
    Usage {
        subscription_id: sub.into(),
        transaction_id: tx.into(),
        metric_code: "calls".into(),
        occurred_at: "2026-01-05T00:00:00Z".parse().unwrap(),
        properties: BTreeMap::from([("n".to_string(), "1".to_string())]),
    }
}

/// Appends events to `store`: usage `tx-<from>..tx-<to>` of subscription s1 and, first, one
/// event of another type.
async fn append(store: &dyn EventStore, from: u32, to: u32) {
    let other = Event::BillableMetricDefined(domain::catalog::Metric {
        code: format!("m{from}"),
        name: "m".into(),
        aggregation: domain::rating::Aggregation::Count,
        property: None,
        allow_negative: false,
    });
    let usages = (from..to).map(|i| Event::UsageRecorded(usage("s1", &format!("tx-{i}"))));
    let mut writes = Vec::new();
    for event in std::iter::once(other).chain(usages) {
        let new = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: event.type_name().to_string(),
            schema_version: domain::events::SCHEMA_VERSION,
            occurred_at_us: 0,
            causation_id: None,
            correlation_id: None,
            payload: event.encode(),
        };
        let events = vec![new];
        writes.push(StreamWrite { stream: event.stream(), expected: ExpectedVersion::Any, events });
    }
    let req = AppendRequest { writes, idempotency: None, expected_position: None };
    store.append(req).await.unwrap();
}

fn key_of(tx: u32) -> Vec<u8> {
    key("s1", &format!("tx-{tx}"))
}

async fn store_with(usages: u32) -> Arc<dyn EventStore> {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    append(&*store, 0, usages).await;
    store
}

#[tokio::test]
async fn notes_the_log_flushes_and_reopens_from_its_covered_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dedup");
    let store = store_with(10).await;
    let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
    assert_eq!((index.covered_position(), index.next_position()), (0, 11));
    assert_eq!(index.pending_len(), 10);
    let hit = index.lookup(&key_of(3)).unwrap().unwrap();
    assert_eq!(
        hit,
        Hit { entry: Entry { digest: hit.entry.digest, position: 4 }, from_disk: false }
    );
    assert_eq!(index.lookup(&key_of(99)).unwrap(), None);
    index.flush_through(11).await.unwrap();
    assert_eq!((index.covered_position(), index.pending_len()), (11, 0));
    let hit = index.lookup(&key_of(3)).unwrap().unwrap();
    assert!(hit.from_disk);
    assert_eq!(index.confirm(&key_of(3), &hit).await.unwrap(), Some(hit.entry));
    // Flushing at or below the covered position does nothing; past the noted one is refused.
    index.flush_through(5).await.unwrap();
    assert_eq!(index.covered_position(), 11);
    let past = index.flush_through(12).await.unwrap_err();
    assert_eq!(past.code(), tonic::Code::FailedPrecondition);
    drop(index);

    // More of the log after the flush: a reopen reads only from the covered position.
    append(&*store, 10, 15).await;
    let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
    assert_eq!((index.covered_position(), index.next_position()), (11, 17));
    assert_eq!(index.pending_len(), 5, "tx-10..tx-14 noted from the log, the rest on disk");
    assert!(index.lookup(&key_of(0)).unwrap().unwrap().from_disk);
    assert!(!index.lookup(&key_of(14)).unwrap().unwrap().from_disk);
}

#[tokio::test]
async fn missing_files_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dedup");
    let store = store_with(20).await;
    let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
    index.flush_through(21).await.unwrap();
    drop(index);
    std::fs::remove_dir_all(&path).unwrap();
    let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
    assert_eq!((index.covered_position(), index.next_position()), (0, 21));
    for tx in 0..20 {
        let hit = index.lookup(&key_of(tx)).unwrap().expect("rebuilt from the log");
        assert_eq!(hit.entry.position, u64::from(tx) + 1);
    }
}

#[tokio::test]
async fn corrupt_files_are_rebuilt_from_the_log_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dedup");
    let store = store_with(20).await;
    for damage in ["garbage", "truncated", "bad meta"] {
        let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
        index.flush_through(21).await.unwrap();
        drop(index);
        match damage {
            "garbage" => {
                for entry in std::fs::read_dir(&path).unwrap() {
                    let p = entry.unwrap().path();
                    if p.is_file() {
                        std::fs::write(&p, vec![0xA5u8; 4096]).unwrap();
                    }
                }
            }
            "truncated" => std::fs::write(path.join("db"), b"").unwrap(),
            _ => {
                let tree = open_tree(Some(&path)).unwrap();
                tree.insert(META_COVERED, &b"xx"[..]).unwrap();
                tree.flush().unwrap();
            }
        }
        let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
        assert_eq!(index.next_position(), 21, "{damage}");
        for tx in 0..20 {
            let hit = index.lookup(&key_of(tx)).unwrap();
            assert_eq!(hit.map(|h| h.entry.position), Some(u64::from(tx) + 1), "{damage}");
        }
        drop(index);
    }
}

#[tokio::test]
async fn an_index_of_another_log_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dedup");
    let index = DedupIndex::open(Some(&path), store_with(20).await).await.unwrap();
    index.flush_through(21).await.unwrap();
    drop(index);
    // A shorter log: the covered position is past its head.
    let shorter = store_with(5).await;
    let index = DedupIndex::open(Some(&path), shorter).await.unwrap();
    assert_eq!((index.covered_position(), index.next_position()), (0, 6));
    assert_eq!(index.lookup(&key_of(10)).unwrap(), None, "not in this log");
    index.flush_through(6).await.unwrap();
    drop(index);
    // A log as long, with other events (another hash at covered − 1).
    let other = store_with(5).await;
    let index = DedupIndex::open(Some(&path), other).await.unwrap();
    assert_eq!(index.covered_position(), 0, "rebuilt: the event at 5 is another one");
}

#[tokio::test]
async fn a_disk_entry_the_log_does_not_hold_is_not_confirmed() {
    let store = store_with(3).await;
    let index = DedupIndex::open(None, store.clone()).await.unwrap();
    index.flush_through(4).await.unwrap();
    let hit = index.lookup(&key_of(1)).unwrap().unwrap();
    assert_eq!(index.confirm(&key_of(1), &hit).await.unwrap(), Some(hit.entry));
    // The entry of tx-1 claims tx-2's position, or a position past the log.
    assert_eq!(index.confirm(&key_of(2), &hit).await.unwrap(), None);
    let beyond = Hit { entry: Entry { digest: 0, position: 99 }, from_disk: true };
    assert_eq!(index.confirm(&key_of(1), &beyond).await.unwrap(), None);
    // An event that is not usage.
    let other = Hit { entry: Entry { digest: 0, position: 0 }, from_disk: true };
    assert_eq!(index.confirm(&key_of(1), &other).await.unwrap(), None);
}

#[tokio::test]
async fn recover_forgets_pending_entries_the_log_does_not_hold() {
    let store = store_with(3).await;
    let index = DedupIndex::open(None, store.clone()).await.unwrap();
    // Decided but never landed (a failed append).
    let entry = Entry { digest: 1, position: 4 };
    index.note(4, Some((key("s1", "ghost"), entry)));
    assert!(index.lookup(&key("s1", "ghost")).unwrap().is_some());
    index.recover().await.unwrap();
    assert_eq!(index.lookup(&key("s1", "ghost")).unwrap(), None);
    assert_eq!(index.next_position(), 4);
    assert!(index.lookup(&key_of(2)).unwrap().is_some());
}

/// Prints the filter's bytes per transaction as it grows (figures for the decision record:
/// `cargo test -p command-service --lib filter_memory -- --nocapture`).
#[test]
fn filter_memory_per_transaction_stays_small() {
    let mut filter = new_filter(FILTER_FIRST_STAGE_ENTRIES);
    let mut checkpoints = vec![100_000usize, 500_000, 1_000_000, 2_000_000];
    let mut inserted = 0usize;
    while let Some(&next) = checkpoints.first() {
        while inserted < next {
            filter.insert(key("sub-1234", &format!("txn-{inserted:012}")).as_slice());
            inserted += 1;
        }
        checkpoints.remove(0);
        let bytes = filter_bytes_of(filter.capacity(), FILTER_FIRST_STAGE_ENTRIES);
        let per = bytes as f64 / inserted as f64;
        let probes = 20_000u32;
        let false_positives = (0..probes)
            .filter(|i| filter.contains(key("sub-9999", &format!("new-{i}")).as_slice()))
            .count();
        println!(
            "{inserted} transactions: filter {bytes} bytes = {per:.2} bytes each, false \
             positives {false_positives}/{probes}"
        );
        assert!(per <= 3.0, "{per} bytes per transaction");
        assert!(false_positives * 20 < probes as usize, "under 5 % false positives");
    }
}
