//! Rebuilding read models from the log into a fresh store.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use domain::events::Event;
use event_store::{EventStore, Position, RecordedEvent};
use projections::invoices::InvoicesProjection;
use projections::journal::JournalProjection;
use projections::mrr::MrrProjection;
use projections::{decode_event, Digest, Projection, ReadModel, Runner, RunnerConfig};
use serde::{Deserialize, Serialize};

use crate::capped::CappedStore;
use crate::cutoff::{resolve, Cutoff};
use crate::{ReplayError, Result};

/// Subdirectory of a rebuild's output holding the read models (as `accrual serve` lays out a
/// data directory, so the query service can serve it).
pub const READ_MODELS_DIR: &str = "read-models";
/// The rebuild's manifest, in its output directory.
pub const MANIFEST_FILE: &str = "replay.json";
/// Events read from the log and applied as one batch: the largest a runner takes, since the
/// journal's usage meter re-rates each subscription a batch touches once at its end.
const REPLAY_BATCH_EVENTS_MAX: usize = projections::BATCH_EVENTS_MAX_LIMIT;

/// A read model that can be rebuilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Invoices,
    Mrr,
    Journal,
}

impl Kind {
    /// Every read model, in report order.
    pub const ALL: [Kind; 3] = [Kind::Invoices, Kind::Mrr, Kind::Journal];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Invoices => projections::invoices::NAME,
            Kind::Mrr => projections::mrr::NAME,
            Kind::Journal => projections::journal::NAME,
        }
    }

    pub fn parse(name: &str) -> Result<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| ReplayError::UnknownProjection(name.to_string()))
    }

    /// The layout version the projection writes (a model of another version is stale).
    pub fn version(self) -> u32 {
        match self {
            Kind::Invoices => InvoicesProjection.version(),
            Kind::Mrr => MrrProjection.version(),
            Kind::Journal => JournalProjection::default().version(),
        }
    }
}

/// One rebuilt model's digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionDigest {
    pub projection: Kind,
    pub version: u32,
    /// Events `[0, position)` are applied.
    pub position: Position,
    /// Hex SHA-256 (see `projections` "Digest").
    pub sha256: String,
}

impl ProjectionDigest {
    fn new(projection: Kind, digest: Digest) -> Self {
        ProjectionDigest {
            projection,
            version: projection.version(),
            position: digest.position,
            sha256: hex::encode(digest.sha256),
        }
    }
}

/// What a rebuild wrote, kept beside it as `replay.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub cutoff: Cutoff,
    /// Events `[0, end_position)` were replayed.
    pub end_position: Position,
    /// Stored hash of the last replayed event (hex; the genesis hash when none): ties the
    /// rebuild to one log. `accrual audit verify` recomputes the chain up to it.
    pub log_head_hash: String,
    pub projections: Vec<ProjectionDigest>,
}

/// The outcome of [`rebuild`].
#[derive(Clone, Debug)]
pub struct Rebuild {
    pub manifest: Manifest,
    pub events: u64,
    pub secs: f64,
    /// The rebuilt read models, still open. Use this handle rather than opening `out` again:
    /// sled releases its file lock only when its flusher thread has stopped, a moment after
    /// the last handle is dropped, so an immediate reopen can fail with `WouldBlock`.
    pub read_models: sled::Db,
}

impl Rebuild {
    pub fn events_per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.events as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// A runner being fed by the replay loop (type-erased over projections).
trait Feed: Send {
    fn apply(
        &mut self,
        events: &[RecordedEvent],
        decoded: &[Option<Event>],
    ) -> projections::Result<Position>;
    fn model(&self) -> ReadModel;
}

impl<S: EventStore, P: Projection> Feed for Runner<S, P> {
    fn apply(
        &mut self,
        events: &[RecordedEvent],
        decoded: &[Option<Event>],
    ) -> projections::Result<Position> {
        self.apply_decoded(events, decoded)
    }

    fn model(&self) -> ReadModel {
        self.read_model()
    }
}

type Log = Arc<dyn EventStore>;

async fn feed(db: &sled::Db, store: &Log, end: Position, kind: Kind) -> Result<Box<dyn Feed>> {
    let capped = CappedStore::new(store.clone(), end);
    let config = RunnerConfig { batch_events_max: REPLAY_BATCH_EVENTS_MAX, ..Default::default() };
    Ok(match kind {
        Kind::Invoices => Box::new(Runner::open(db, capped, InvoicesProjection, config)?),
        Kind::Mrr => Box::new(Runner::open(db, capped, MrrProjection, config)?),
        Kind::Journal => {
            let mut r = Runner::open(db, capped, JournalProjection::default(), config)?;
            r.warm_up().await?;
            Box::new(r)
        }
    })
}

/// Rebuilds `kinds` from the events of `store` before `cutoff` into `out` (which must not
/// exist), reading the log once and applying each read to every model in parallel.
/// `progress(applied, end)` is called after each batch. Writes `out/replay.json`.
pub async fn rebuild(
    store: Log,
    cutoff: Cutoff,
    kinds: &[Kind],
    out: &Path,
    progress: &(dyn Fn(Position, Position) + Sync),
) -> Result<Rebuild> {
    let end = resolve(&store, cutoff).await?;
    if out.exists() {
        return Err(ReplayError::OutputExists(out.display().to_string()));
    }
    std::fs::create_dir_all(out)?;
    let db = projections::open_db(out.join(READ_MODELS_DIR))?;
    let mut feeds = Vec::with_capacity(kinds.len());
    for kind in kinds {
        feeds.push(feed(&db, &store, end, *kind).await?);
    }
    let started = Instant::now();
    let (feeds, last_hash) = replay_loop(&store, 0, end, kinds, feeds, progress).await?;
    let secs = started.elapsed().as_secs_f64();
    db.flush_async().await?;
    let mut digests = Vec::with_capacity(kinds.len());
    for (kind, feed) in kinds.iter().zip(&feeds) {
        let digest = feed.model().digest()?;
        assert_eq!(digest.position, end, "every model is rebuilt to the cutoff");
        digests.push(ProjectionDigest::new(*kind, digest));
    }
    let manifest = Manifest {
        format: 1,
        cutoff,
        end_position: end,
        log_head_hash: hex::encode(last_hash),
        projections: digests,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
    std::fs::write(out.join(MANIFEST_FILE), json)?;
    drop(feeds);
    Ok(Rebuild { manifest, events: end, secs, read_models: db })
}

/// Brings the read models in `db` (every kind, all at one position: empty, or an earlier
/// `advance`'s) forward to `end`, reading only the events after their position. Read models
/// for queries at a past log position (bitemporal queries): no manifest, no digests. Refuses
/// models already past `end`.
pub async fn advance(store: Log, end: Position, db: &sled::Db) -> Result<()> {
    let kinds = Kind::ALL;
    // Checked before the runners open: the journal's warm-up reads up to its checkpoint.
    let mut at: Vec<Position> = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let model = ReadModel::open_existing(db, kind.name(), kind.version())?;
        at.push(model.map(|m| m.checkpoint()).transpose()?.unwrap_or(0));
    }
    let start = at[0];
    if at.iter().any(|p| *p != start) || start > end {
        return Err(ReplayError::Projection(projections::ProjectionError::InvalidArgument(
            format!("read models at positions {at:?} cannot be advanced to {end}"),
        )));
    }
    let mut feeds = Vec::with_capacity(kinds.len());
    for kind in kinds {
        feeds.push(feed(db, &store, end, kind).await?);
    }
    replay_loop(&store, start, end, &kinds, feeds, &|_, _| {}).await?;
    db.flush_async().await?;
    Ok(())
}

/// The event types any of the rebuilt projections reads (only those are decoded).
struct Wanted {
    invoices: Option<InvoicesProjection>,
    mrr: Option<MrrProjection>,
    journal: Option<JournalProjection>,
}

impl Wanted {
    fn new(kinds: &[Kind]) -> Wanted {
        let has = |k: Kind| kinds.contains(&k);
        Wanted {
            invoices: has(Kind::Invoices).then_some(InvoicesProjection),
            mrr: has(Kind::Mrr).then_some(MrrProjection),
            journal: has(Kind::Journal).then(JournalProjection::default),
        }
    }

    fn wants(&self, event_type: &str) -> bool {
        self.invoices.as_ref().is_some_and(|p| p.wants(event_type))
            || self.mrr.as_ref().is_some_and(|p| p.wants(event_type))
            || self.journal.as_ref().is_some_and(|p| p.wants(event_type))
    }
}

/// A batch read from the log, decoded once for every projection.
type Batch = (Vec<RecordedEvent>, Vec<Option<Event>>);

/// Reads the batch at `from` and decodes it on the blocking pool (decoding is CPU work).
async fn read_batch(
    capped: &CappedStore<Log>,
    from: Position,
    wanted: &Arc<Wanted>,
) -> Result<Batch> {
    let events = capped.read_all(from, REPLAY_BATCH_EVENTS_MAX).await?;
    let wanted = wanted.clone();
    let decode = tokio::task::spawn_blocking(move || {
        let decoded: projections::Result<Vec<Option<Event>>> = events
            .iter()
            .map(|e| wanted.wants(&e.event_type).then(|| decode_event(e)).transpose())
            .collect();
        decoded.map(|d| (events, d))
    });
    Ok(decode.await.expect("decoding does not panic")?)
}

/// Reads `[start, end)` once, in batches, decoding each batch once; while one batch is applied
/// (one thread per model) the next is read and decoded. Returns the feeds and the stored hash
/// of the last event.
async fn replay_loop(
    store: &Log,
    start: Position,
    end: Position,
    kinds: &[Kind],
    mut feeds: Vec<Box<dyn Feed>>,
    progress: &(dyn Fn(Position, Position) + Sync),
) -> Result<(Vec<Box<dyn Feed>>, [u8; 32])> {
    let capped = CappedStore::new(store.clone(), end);
    let wanted = Arc::new(Wanted::new(kinds));
    let mut last_hash = event_store::GENESIS_HASH;
    let mut next: Position = start;
    let mut batch = read_batch(&capped, start, &wanted).await?;
    let rounds = (end - start).div_ceil(REPLAY_BATCH_EVENTS_MAX as u64) + 1;
    for _ in 0..rounds {
        if batch.0.is_empty() {
            break;
        }
        next += batch.0.len() as u64;
        last_hash = batch.0.last().expect("not empty").hash;
        let apply = tokio::task::spawn_blocking(move || apply_parallel(feeds, &batch));
        let read_ahead = read_batch(&capped, next, &wanted);
        let (applied, read) = tokio::join!(apply, read_ahead);
        feeds = applied.expect("replay workers do not panic")?;
        batch = read?;
        progress(next, end);
    }
    assert_eq!(next, end, "the replay covers the whole prefix");
    Ok((feeds, last_hash))
}

/// Applies one batch to every feed, one scoped thread each.
fn apply_parallel(mut feeds: Vec<Box<dyn Feed>>, batch: &Batch) -> Result<Vec<Box<dyn Feed>>> {
    let (events, decoded) = (&batch.0[..], &batch.1[..]);
    let results: Vec<projections::Result<Position>> = std::thread::scope(|s| {
        let handles: Vec<_> =
            feeds.iter_mut().map(|f| s.spawn(move || f.apply(events, decoded))).collect();
        handles.into_iter().map(|h| h.join().expect("projection threads do not panic")).collect()
    });
    for r in results {
        r?;
    }
    Ok(feeds)
}
