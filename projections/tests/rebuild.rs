//! Rebuild equality (SPEC §1): drop a read model, rebuild it from the log, get the same digest
//! at the same position. For every projection (invoices, MRR, journal) over random valid logs
//! decided by the real domain: batches of one event, one batch for everything, and a runner
//! stopped midway and reopened on its sled directory, whose directory is then deleted and
//! rebuilt from scratch, all reach the same digest; the stopped runner's digest also equals a
//! fresh build to the same position.

mod common;

use std::path::Path;

use common::sim::{op, simulate, store_of, Op};
use common::{config, Store};
use event_store::{EventStore, Position};
use projections::invoices::InvoicesProjection;
use projections::journal::JournalProjection;
use projections::mrr::MrrProjection;
use projections::{Digest, Projection, Runner, BATCH_EVENTS_MAX_LIMIT};
use proptest::prelude::*;

/// Opens `projection` in `db` (creating its tree or resuming from its checkpoint) and applies
/// batches of `batch` events until the checkpoint reaches `until` (the head when `None`).
/// Returns the model's digest.
async fn run<P: Projection>(
    db: &sled::Db,
    store: &Store,
    projection: P,
    batch: usize,
    until: Option<Position>,
) -> Digest {
    let mut runner = Runner::open(db, store.clone(), projection, config(batch)).unwrap();
    match until {
        None => {
            runner.catch_up().await.unwrap();
        }
        Some(stop) => {
            while runner.checkpoint() < stop {
                assert!(runner.step().await.unwrap() > 0, "the log ends before {stop}");
            }
        }
    }
    let digest = runner.read_model().digest().unwrap();
    assert_eq!(digest.position, runner.checkpoint());
    digest
}

/// The three read models' digests, in the order invoices, MRR, journal.
type Digests = [Digest; 3];
const NAMES: [&str; 3] = ["invoices", "mrr", "journal"];

/// Opens the read-model database at `path` as `accrual serve` does (one sled database, one tree
/// per projection), runs every projection as [`run`] does, and closes the database.
async fn build(
    path: &Path,
    store: &Store,
    batch: usize,
    until: impl Fn(usize) -> Option<Position>,
) -> Digests {
    let db = projections::open_db(path).unwrap();
    [
        run(&db, store, InvoicesProjection, batch, until(0)).await,
        run(&db, store, MrrProjection, batch, until(1)).await,
        run(&db, store, JournalProjection::default(), batch, until(2)).await,
    ]
}

fn agree(a: &Digests, b: &Digests, what: &str) -> Result<(), TestCaseError> {
    for ((a, b), name) in a.iter().zip(b).zip(NAMES) {
        prop_assert_eq!(a, b, "{}: {}", name, what);
    }
    Ok(())
}

fn check(
    ops: &[Op],
    arrears: bool,
    mid_permille: u64,
    first_batch: usize,
    resumed_batch: usize,
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let store = store_of(&simulate(ops, arrears)).await;
        let head = store.head();
        let dirs = tempfile::tempdir().unwrap();
        let path = |d: &str| dirs.path().join(d);

        let one_by_one = build(&path("one"), &store, 1, |_| None).await;
        prop_assert!(one_by_one.iter().all(|d| d.position == head), "whole log applied");
        let one_batch = build(&path("big"), &store, BATCH_EVENTS_MAX_LIMIT, |_| None).await;
        agree(&one_batch, &one_by_one, "one batch vs batches of 1")?;

        // A runner stopped after the first batch that reaches `mid`, then reopened.
        let live = path("live");
        let mid = head * mid_permille / 1_000;
        let stopped = build(&live, &store, first_batch, |_| Some(mid)).await;
        let fresh = build(&path("mid"), &store, 1, |i| Some(stopped[i].position)).await;
        agree(&stopped, &fresh, "stopped runner vs a fresh build to its position")?;
        let resumed = build(&live, &store, resumed_batch, |_| None).await;
        agree(&resumed, &one_by_one, "stopped, reopened and caught up")?;

        // Drop the read models and rebuild them from the log.
        std::fs::remove_dir_all(&live).unwrap();
        let rebuilt = build(&live, &store, 1_024, |_| None).await;
        agree(&rebuilt, &one_by_one, "dropped and rebuilt")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn every_read_model_rebuilds_to_the_same_digest(
        ops in proptest::collection::vec(op(), 1..80),
        arrears in any::<bool>(),
        mid_permille in 0u64..=1_000,
        first_batch in 1usize..=16,
        resumed_batch in 1usize..=64,
    ) {
        check(&ops, arrears, mid_permille, first_batch, resumed_batch)?;
    }
}
