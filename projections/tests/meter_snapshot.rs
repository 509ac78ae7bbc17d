//! The journal's usage-meter snapshot (docs/decisions/0028-journal-meter-snapshot.md): stored
//! under `\0state` with the checkpoint it covers, restored before the warm-up so that only the
//! log's tail is folded, and ignored (the meter folded from the whole log) when it is missing,
//! stale or corrupt. Over random valid logs decided by the real domain, a restored meter rates
//! the following events exactly as one folded from the log, and a journal restarted from a
//! snapshot reaches the digest of a fresh build.

mod common;

use common::sim::{op, simulate, store_of, Op};
use common::{config, Store};
use domain::events::Event;
use event_store::{EventStore, Position};
use projections::journal::JournalProjection;
use projections::state_snapshot::{self, Covers};
use projections::usage_meter::{UsageMeter, METER_FORMAT_VERSION};
use projections::{decode_event, Digest, Runner, BATCH_EVENTS_MAX_LIMIT};
use proptest::prelude::*;

const TREE: &str = "projection/journal";
const STATE_KEY: &[u8] = b"\x00state";

type Journal = Runner<Store, JournalProjection>;

fn open(db: &sled::Db, store: &Store, interval_events: u64, batch: usize) -> Journal {
    let journal = JournalProjection::with_meter_snapshot_interval_events(interval_events);
    Runner::open(db, store.clone(), journal, config(batch)).unwrap()
}

/// Steps `runner` until its checkpoint reaches `until`.
async fn run_to(runner: &mut Journal, until: Position) {
    while runner.checkpoint() < until {
        assert!(runner.step().await.unwrap() > 0, "the log ends before {until}");
    }
}

/// The journal's digest built in one batch in a new database.
async fn fresh(store: &Store) -> Digest {
    let dir = tempfile::tempdir().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    let mut runner = open(&db, store, 0, BATCH_EVENTS_MAX_LIMIT);
    runner.catch_up().await.unwrap();
    runner.read_model().digest().unwrap()
}

/// The stored snapshot's frame, if any.
fn stored(db: &sled::Db) -> Option<Vec<u8>> {
    db.open_tree(TREE).unwrap().get(STATE_KEY).unwrap().map(|v| v.to_vec())
}

fn covers(db: &sled::Db) -> Option<Covers> {
    stored(db).map(|bytes| state_snapshot::decode(&bytes).unwrap().0)
}

fn put_stored(db: &sled::Db, bytes: &[u8]) {
    db.open_tree(TREE).unwrap().insert(STATE_KEY, bytes).unwrap();
}

fn decoded(store_events: &[event_store::RecordedEvent]) -> Vec<Event> {
    store_events.iter().map(|e| decode_event(e).unwrap()).collect()
}

/// Folds `events[..mid]` into a meter, snapshots it, and feeds `events[mid..]` to both the
/// meter and its restored copy as the journal does (before, after, finish at batch ends):
/// every accrual, touched set and draft is equal.
fn restored_meter_rates_alike(
    events: &[Event],
    mid: usize,
    batch: usize,
) -> Result<(), TestCaseError> {
    let mut folded = UsageMeter::default();
    for (i, e) in events[..mid].iter().enumerate() {
        folded.remember(e, i as Position);
    }
    let mut restored = UsageMeter::decode(&folded.encode().expect("no open run")).unwrap();
    for (chunk_no, chunk) in events[mid..].chunks(batch).enumerate() {
        for (i, e) in chunk.iter().enumerate() {
            let position = (mid + chunk_no * batch + i) as Position;
            prop_assert_eq!(folded.before(e), restored.before(e), "accruals before {}", position);
            folded.after(e, position);
            restored.after(e, position);
        }
        let (a, b) = (folded.finish(), restored.finish());
        prop_assert_eq!(&a, &b, "batch end");
        for sub in &a.1 {
            prop_assert_eq!(folded.drafts(sub), restored.drafts(sub), "drafts of {}", sub);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn restart(
    ops: &[Op],
    arrears: bool,
    mid_permille: u64,
    interval_events: u64,
    first_batch: usize,
    resumed_batch: usize,
    graceful: bool,
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let events = simulate(ops, arrears);
        let store = store_of(&events).await;
        let head = store.head();
        let mid = head * mid_permille / 1_000;
        let all = decoded(&store.read_all(0, head as usize).await.unwrap());
        restored_meter_rates_alike(&all, mid as usize, resumed_batch)?;

        let dir = tempfile::tempdir().unwrap();
        let db = projections::open_db(dir.path()).unwrap();
        let mut first = open(&db, &store, interval_events, first_batch);
        run_to(&mut first, mid).await;
        let stopped_at = first.checkpoint();
        if graceful {
            first.save_state_at_stop().await;
        }
        drop(first);
        let snapshot = covers(&db);
        if let Some(c) = snapshot {
            prop_assert!(c.position <= stopped_at, "a snapshot never covers more than applied");
        }
        if graceful && stopped_at > 0 {
            prop_assert_eq!(snapshot.map(|c| c.position), Some(stopped_at), "written at the stop");
        }
        if interval_events > 0 && stopped_at >= interval_events {
            prop_assert!(snapshot.is_some(), "written every {} events", interval_events);
        }

        let mut resumed = open(&db, &store, interval_events, resumed_batch);
        resumed.warm_up().await.unwrap();
        resumed.catch_up().await.unwrap();
        let expected_from = if stopped_at == 0 { 0 } else { snapshot.map_or(0, |c| c.position) };
        prop_assert_eq!(resumed.warmed_from(), Some(expected_from), "folded only the tail");
        let digest = resumed.read_model().digest().unwrap();
        prop_assert_eq!(digest, fresh(&store).await, "restarted journal vs a fresh build");
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn a_journal_restarted_from_its_meter_snapshot_equals_a_fresh_build(
        ops in proptest::collection::vec(op(), 1..80),
        arrears in any::<bool>(),
        mid_permille in 0u64..=1_000,
        interval_events in 0u64..=24,
        first_batch in 1usize..=16,
        resumed_batch in 1usize..=64,
        graceful in any::<bool>(),
    ) {
        restart(&ops, arrears, mid_permille, interval_events, first_batch, resumed_batch, graceful)?;
    }
}

fn fixed_ops() -> Vec<Op> {
    use Op::*;
    let mut ops = vec![Start { customer: 0, pro: false }, Start { customer: 1, pro: true }];
    for n in 0..30u16 {
        ops.push(Usage { customer: (n % 3) as u8, calls: n * 7 });
        if n % 10 == 9 {
            ops.push(Days(9));
        }
    }
    ops.extend([Change { customer: 0, pro: true }, Pay { fail: false }, Days(20)]);
    ops.extend((0..10u16).map(|n| Usage { customer: (n % 2) as u8, calls: n }));
    ops
}

/// A journal stopped (snapshot at its checkpoint) at about two thirds of a fixed log; returns
/// that checkpoint.
async fn stopped_journal(dir: &tempfile::TempDir) -> (sled::Db, Store, Position) {
    let store = store_of(&simulate(&fixed_ops(), true)).await;
    let db = projections::open_db(dir.path()).unwrap();
    let mut runner = open(&db, &store, 0, 5);
    run_to(&mut runner, store.head() * 2 / 3).await;
    let mid = runner.checkpoint();
    runner.save_state_at_stop().await;
    assert_eq!(covers(&db).map(|c| c.position), Some(mid));
    (db, store, mid)
}

/// Reopens the journal after `damage` to its snapshot: it folds the whole log (never panics),
/// reaches a fresh build's digest, and the next stop stores a good snapshot at the head.
async fn falls_back(damage: impl FnOnce(&sled::Db, Vec<u8>, Position)) {
    let dir = tempfile::tempdir().unwrap();
    let (db, store, mid) = stopped_journal(&dir).await;
    damage(&db, stored(&db).unwrap(), mid);
    let mut runner = open(&db, &store, 0, 7);
    runner.catch_up().await.unwrap();
    assert_eq!(runner.warmed_from(), Some(0), "the snapshot is ignored");
    assert_eq!(runner.read_model().digest().unwrap(), fresh(&store).await);
    runner.save_state_at_stop().await;
    assert_eq!(covers(&db).map(|c| c.position), Some(store.head()), "rewritten at the stop");
    drop(runner);
    let mut again = open(&db, &store, 0, 7);
    again.warm_up().await.unwrap();
    assert_eq!(again.warmed_from(), Some(store.head()), "and used by the next start");
}

fn reframed(bytes: &[u8], edit: impl FnOnce(&mut Covers, &mut Vec<u8>)) -> Vec<u8> {
    let (mut covers, payload) = state_snapshot::decode(bytes).unwrap();
    let mut payload = payload.to_vec();
    edit(&mut covers, &mut payload);
    state_snapshot::encode(covers, &payload)
}

#[tokio::test]
async fn a_valid_snapshot_is_restored_and_only_the_tail_folded() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store, mid) = stopped_journal(&dir).await;
    let mut runner = open(&db, &store, 0, 7);
    runner.catch_up().await.unwrap();
    assert_eq!(runner.warmed_from(), Some(mid));
    assert_eq!(runner.read_model().digest().unwrap(), fresh(&store).await);
}

#[tokio::test]
async fn a_missing_snapshot_falls_back_to_the_full_fold() {
    falls_back(|db, _, _| {
        db.open_tree(TREE).unwrap().remove(STATE_KEY).unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_snapshot_falls_back_to_the_full_fold() {
    falls_back(|db, mut bytes, _| {
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        put_stored(db, &bytes);
    })
    .await;
    falls_back(|db, bytes, _| put_stored(db, &bytes[..10])).await;
    falls_back(|db, _, _| put_stored(db, b"")).await;
}

#[tokio::test]
async fn a_stale_snapshot_falls_back_to_the_full_fold() {
    // Beyond the checkpoint (cannot be the state at it).
    falls_back(|db, bytes, mid| put_stored(db, &reframed(&bytes, |c, _| c.position = mid + 3)))
        .await;
    // Another log: the event before the position has another hash.
    falls_back(|db, bytes, _| put_stored(db, &reframed(&bytes, |c, _| c.last_hash[0] ^= 1))).await;
}

#[tokio::test]
async fn a_snapshot_of_another_format_or_an_undecodable_meter_falls_back() {
    let version =
        |p: &mut Vec<u8>| p[..4].copy_from_slice(&(METER_FORMAT_VERSION + 1).to_be_bytes());
    falls_back(|db, bytes, _| put_stored(db, &reframed(&bytes, |_, p| version(p)))).await;
    let cut_block = |p: &mut Vec<u8>| p.truncate(4 + 10);
    falls_back(|db, bytes, _| put_stored(db, &reframed(&bytes, |_, p| cut_block(p)))).await;
    let huge_length = |p: &mut Vec<u8>| p[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    falls_back(|db, bytes, _| put_stored(db, &reframed(&bytes, |_, p| huge_length(p)))).await;
    let not_a_ledger = |p: &mut Vec<u8>| {
        p.truncate(4);
        p.extend(lz4_flex::block::compress_prepend_size(b"{\"customers\": 7}"));
    };
    falls_back(|db, bytes, _| put_stored(db, &reframed(&bytes, |_, p| not_a_ledger(p)))).await;
}

#[tokio::test]
async fn periodic_snapshots_commit_with_the_checkpoint_they_cover() {
    let store = store_of(&simulate(&fixed_ops(), false)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    let mut runner = open(&db, &store, 1, 3);
    let mut snapshots = 0;
    while runner.step().await.unwrap() > 0 {
        let c = covers(&db).expect("one with every batch at an interval of 1 event");
        assert_eq!(c.position, runner.checkpoint(), "the state at exactly this checkpoint");
        let last = store.read_all(c.position - 1, 1).await.unwrap();
        assert_eq!(c.last_hash, last[0].hash);
        snapshots += 1;
    }
    assert!(snapshots > 10);
    // With an interval of 10 events, one every batch that ends ≥ 10 events after the last.
    let dir = tempfile::tempdir().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    let mut runner = open(&db, &store, 10, 3);
    let mut positions = Vec::new();
    while runner.step().await.unwrap() > 0 {
        positions.extend(covers(&db).map(|c| c.position));
    }
    positions.dedup();
    let steps: Vec<u64> = positions.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(steps.iter().all(|s| (10..13).contains(s)), "{positions:?}");
    assert_eq!(positions.first(), Some(&12), "the first batch end at or after 10 events");
}
