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

async fn find(index: &DedupIndex, tx: u32) -> Option<Hit> {
    index.find(&key_of(tx)).await.unwrap()
}

/// Appends `tx-<10 i>..tx-<10 i + 10>`, notes them from the log and writes them as one run.
async fn append_and_flush(index: &DedupIndex, store: &dyn EventStore, i: u32) {
    append(store, i * 10, i * 10 + 10).await;
    index.recover().await.unwrap(); // notes the new events from the log
    index.flush_through(store.head()).await.unwrap();
}

/// `tx-0..tx-<n>` are each found in a run (and confirmed by the log).
async fn assert_all_in_runs(index: &DedupIndex, n: u32, when: &str) {
    for tx in 0..n {
        let hit = find(index, tx).await.unwrap_or_else(|| panic!("tx-{tx} not found ({when})"));
        assert!(hit.from_disk, "tx-{tx} pending, not in a run ({when})");
    }
}

fn run_files(path: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn notes_the_log_flushes_and_reopens_from_its_covered_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dedup");
    let store = store_with(10).await;
    let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
    assert_eq!((index.covered_position(), index.next_position()), (0, 11));
    assert_eq!(index.pending_len(), 10);
    let hit = find(&index, 3).await.unwrap();
    assert_eq!(
        hit,
        Hit { entry: Entry { digest: hit.entry.digest, position: 4 }, from_disk: false }
    );
    assert_eq!(find(&index, 99).await, None);
    index.flush_through(11).await.unwrap();
    assert_eq!((index.covered_position(), index.pending_len()), (11, 0));
    assert_eq!(run_files(&path), vec![run::file_name(0, 11)]);
    let from_run = find(&index, 3).await.unwrap();
    assert_eq!(from_run, Hit { entry: hit.entry, from_disk: true }, "confirmed by the log");
    assert_eq!(find(&index, 99).await, None);
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
    assert!(find(&index, 0).await.unwrap().from_disk);
    assert!(!find(&index, 14).await.unwrap().from_disk);
}

#[tokio::test]
async fn runs_merge_in_the_background_and_every_transaction_stays_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dedup");
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
    // 16 flushes of 10 transactions (each append also adds one other event).
    for i in 0..16u32 {
        append_and_flush(&index, &*store, i).await;
        assert!(index.runs_len() <= 2 + i as usize);
        index.merge_due().await.unwrap();
    }
    assert!(index.runs_len() <= 5, "merged: {} runs", index.runs_len());
    assert_eq!(run_files(&path).len(), index.runs_len(), "merged inputs removed");
    assert_all_in_runs(&index, 160, "merged").await;
    drop(index);
    let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
    assert_eq!((index.covered_position(), index.pending_len()), (store.head(), 0));
    assert_all_in_runs(&index, 160, "after reopen").await;
}

#[tokio::test]
async fn a_merge_cut_short_leaves_files_the_open_sorts_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dedup");
    let store = store_with(0).await;
    let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
    for i in 0..2u32 {
        append_and_flush(&index, &*store, i).await;
    }
    let runs = index.state.lock().runs.clone();
    assert_eq!(runs.len(), 2);
    // The merged run was renamed into place, the inputs not yet removed; a temporary file too.
    Run::merge(Some(&path), &runs).unwrap();
    std::fs::write(path.join("run-x.dedup.tmp"), b"half").unwrap();
    drop((runs, index));
    let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
    assert_eq!(index.runs_len(), 1, "the merged run replaces its inputs");
    assert_eq!(run_files(&path), vec![run::file_name(0, store.head())]);
    assert_eq!(index.pending_len(), 0);
    assert_all_in_runs(&index, 20, "merge cut short").await;
}

#[tokio::test]
async fn a_rebuild_writes_runs_as_it_goes_so_its_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dedup");
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    for i in 0..10u32 {
        append(&*store, i * 10, i * 10 + 10).await; // 100 transactions, 110 events
    }
    // The default open keeps what it noted pending (100 entries, below its threshold) ...
    let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
    assert_eq!((index.covered_position(), index.pending_len()), (0, 100));
    drop(index);
    // ... past the threshold it writes them as a run while it reads (one chunk here).
    let index = DedupIndex::open_flushing_every(Some(&path), store.clone(), 25).await.unwrap();
    assert_eq!((index.covered_position(), index.pending_len()), (110, 0));
    assert_eq!(index.runs_len(), 1);
    assert_all_in_runs(&index, 100, "rebuilt").await;
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
        let hit = find(&index, tx).await.expect("rebuilt from the log");
        assert_eq!(hit.entry.position, u64::from(tx) + 1);
    }
}

#[tokio::test]
async fn corrupt_files_are_rebuilt_from_the_log_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dedup");
    let store = store_with(20).await;
    for damage in ["garbage", "truncated", "format", "flipped"] {
        let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
        index.flush_through(21).await.unwrap();
        drop(index);
        let file = path.join(run::file_name(0, 21));
        let mut bytes = std::fs::read(&file).unwrap();
        match damage {
            "garbage" => bytes = vec![0xA5u8; 4096],
            "truncated" => bytes.truncate(bytes.len() / 2),
            "format" => bytes[8] = 77,
            _ => {
                let in_the_index_tail = bytes.len() - 6;
                bytes[in_the_index_tail] ^= 0x10
            }
        }
        std::fs::write(&file, &bytes).unwrap();
        let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
        assert_eq!((index.covered_position(), index.next_position()), (0, 21), "{damage}");
        assert!(run_files(&path).is_empty(), "{damage}: the damaged run is removed");
        for tx in 0..20 {
            let hit = find(&index, tx).await;
            assert_eq!(hit.map(|h| h.entry.position), Some(u64::from(tx) + 1), "{damage}");
        }
        drop(index);
    }
}

#[tokio::test]
async fn a_damaged_entry_is_an_error_naming_the_fix_never_a_wrong_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dedup");
    let store = store_with(20).await;
    let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
    index.flush_through(21).await.unwrap();
    drop(index);
    let file = path.join(run::file_name(0, 21));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[run::HEADER_BYTES + 3] ^= 0x10; // an entry (the open does not read entries)
    std::fs::write(&file, &bytes).unwrap();
    let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
    assert_eq!(index.covered_position(), 21);
    let err = index.find(&key_of(7)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(err.message().contains("remove its directory"), "{}", err.message());
    // Removing the directory, as the message says, rebuilds it from the log.
    drop(index);
    std::fs::remove_dir_all(&path).unwrap();
    let index = DedupIndex::open(Some(&path), store.clone()).await.unwrap();
    assert_eq!(find(&index, 7).await.map(|h| h.entry.position), Some(8));
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
    assert_eq!(find(&index, 10).await, None, "not in this log");
    index.flush_through(6).await.unwrap();
    drop(index);
    // A log as long, with other events (another hash at covered − 1).
    let other = store_with(5).await;
    let index = DedupIndex::open(Some(&path), other).await.unwrap();
    assert_eq!(index.covered_position(), 0, "rebuilt: the event at 5 is another one");
}

#[tokio::test]
async fn a_run_entry_the_log_does_not_hold_is_not_confirmed() {
    let store = store_with(3).await;
    let index = DedupIndex::open(None, store.clone()).await.unwrap();
    index.flush_through(4).await.unwrap();
    let hit = find(&index, 1).await.unwrap();
    assert_eq!(index.confirm_at(&key_of(1), hit.entry.position).await.unwrap(), Some(hit.entry));
    // tx-1's position claimed for tx-2, a position past the log, an event that is not usage.
    assert_eq!(index.confirm_at(&key_of(2), hit.entry.position).await.unwrap(), None);
    assert_eq!(index.confirm_at(&key_of(1), 99).await.unwrap(), None);
    assert_eq!(index.confirm_at(&key_of(1), 0).await.unwrap(), None);
}

#[tokio::test]
async fn recover_forgets_pending_entries_the_log_does_not_hold() {
    let store = store_with(3).await;
    let index = DedupIndex::open(None, store.clone()).await.unwrap();
    // Decided but never landed (a failed append).
    let entry = Entry { digest: 1, position: 4 };
    index.note(4, Some((key("s1", "ghost"), entry)));
    assert!(index.find(&key("s1", "ghost")).await.unwrap().is_some());
    index.recover().await.unwrap();
    assert_eq!(index.find(&key("s1", "ghost")).await.unwrap(), None);
    assert_eq!(index.next_position(), 4);
    assert!(find(&index, 2).await.is_some());
}

#[test]
fn merges_are_due_while_the_newest_runs_are_comparable() {
    let due = |sizes: &[u64]| {
        let mut at = 0;
        let runs: Vec<_> = sizes
            .iter()
            .map(|&n| {
                at += n + 1;
                (n, at - n - 1, at)
            })
            .collect();
        due_suffix(&runs).map_or(0, |start| runs.len() - start)
    };
    assert_eq!(due(&[]), 0);
    assert_eq!(due(&[8]), 0);
    assert_eq!(due(&[8, 1]), 0, "8 > 2 × 1");
    assert_eq!(due(&[8, 4]), 2);
    assert_eq!(due(&[8, 2, 1]), 2, "[2, 1] merge; 8 > 2 × 3");
    assert_eq!(due(&[4, 2, 1]), 3);
    assert_eq!(due(&[0, 0]), 2, "runs without usage merge");
    assert_eq!(due(&[RUN_ENTRIES_MAX, RUN_ENTRIES_MAX]), 0, "full runs are not merged");
    let rebuilt = (CATCH_UP_FLUSH_EVENTS + CATCH_UP_CHUNK_EVENTS) as u64;
    assert_eq!(due(&[rebuilt, rebuilt]), 2, "two runs of a rebuild make one full run");
    let wide = [
        (1, 0, run::SPAN_POSITIONS_MAX),
        (1, run::SPAN_POSITIONS_MAX, run::SPAN_POSITIONS_MAX + 5),
    ];
    assert_eq!(due_suffix(&wide), None, "a merged run would span more than 32 bits");
}
