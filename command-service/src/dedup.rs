//! The dedup index: (subscription, transaction id) → log position of every usage event ever
//! recorded, so a retried transaction is answered as a duplicate for the subscription's whole
//! life (after its period closed, after any restart) while the write model keeps no per-event
//! state (docs/decisions/0029-dedup-index.md).
//!
//! Two layers:
//! - *runs* ([`run`]): immutable files in `<data-dir>/dedup`, each holding the 64-bit key hash
//!   and position of every usage event of a range of log positions, sorted by hash, with a
//!   binary fuse filter (~9 bits per transaction, kept in memory) so a new id (the common case)
//!   rarely reads a file. The runs tile `[0, covered)`; small runs are merged in the background
//!   into larger ones (up to [`RUN_ENTRIES_MAX`] entries), so a lookup checks few filters;
//! - a bounded map of *pending* entries (positions ≥ covered): noted when decided (or folded
//!   from the log), written as one new run by [`DedupIndex::flush_through`].
//!
//! It is derived data: [`DedupIndex::open`] keeps the runs that tile the log from 0 and whose
//! recorded hash of their last event matches the log, removes the others, and notes the log
//! from the covered position to the head. Missing, damaged or foreign runs are rebuilt from the
//! log (a warning, never a panic). A hit from a run is a claim checked against the log: the event
//! at its position must be the usage event of that key (a hash collision, or a damaged run, is
//! then not a duplicate); a pending hit was decided by this process on the model it holds (and
//! the reply waits for that append to be durable).

mod run;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use domain::events::Event;
use event_store::{EventStore, Position};
use tonic::Status;

use crate::status::from_store;
use run::{Run, RunEntry};

/// Pending entries at which the engine starts a background flush.
pub const FLUSH_EVENTS: usize = 65_536;
/// Pending entries past which a decision first flushes (bounds the pending map's memory).
pub const PENDING_EVENTS_MAX: usize = 262_144;
/// Events read per call while bringing the index up to the log.
pub const CATCH_UP_CHUNK_EVENTS: usize = 10_000;
/// While the open notes the log (a rebuild reads it all), a run is written every this many
/// pending entries: the log below the head is durable, and this bounds the pending map of a
/// rebuild (~100 bytes per entry) to ~200 MiB. Two such runs (each up to one read chunk
/// larger) merge into one full run.
pub const CATCH_UP_FLUSH_EVENTS: usize = (RUN_ENTRIES_MAX / 2) as usize - CATCH_UP_CHUNK_EVENTS;
/// Runs are not merged past this many entries: a merge holds its entries in memory (~30 bytes
/// each while the filter is built), so this bounds a merge's memory to ~130 MiB.
pub const RUN_ENTRIES_MAX: u64 = 1 << 22;

/// What the index knows of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub digest: u64,
    pub position: Position,
}

/// A lookup's answer: the entry, and whether it came from a run (then it was confirmed against
/// the log) or from the pending map (decided by this process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub entry: Entry,
    pub from_disk: bool,
}

/// What the index holds for a key, before the log is read: a pending entry, or the positions
/// the runs give for its hash (to confirm against the log; usually none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Pending(Entry),
    Candidates(Vec<Position>),
}

struct State {
    /// Entries at positions ≥ `covered`, not yet in a run.
    pending: HashMap<Vec<u8>, Entry>,
    /// Every usage event below this position is in a run.
    covered: Position,
    /// Every event below this position has been noted (pending or in a run).
    next: Position,
    /// Consecutive runs tiling `[0, covered)`.
    runs: Vec<Arc<Run>>,
}

impl State {
    fn assert_tiled(&self) {
        let mut at = 0;
        for r in &self.runs {
            assert_eq!(r.from, at, "dedup runs tile the log without gaps");
            at = r.to;
        }
        assert_eq!(at, self.covered, "dedup runs end at the covered position");
        assert!(self.covered <= self.next, "covered events have been noted");
    }
}

/// See the module documentation.
pub struct DedupIndex {
    store: Arc<dyn EventStore>,
    /// `None`: runs kept in memory (tests; same code path otherwise).
    dir: Option<PathBuf>,
    state: parking_lot::Mutex<State>,
    /// One flush at a time.
    flushing: tokio::sync::Mutex<()>,
    /// One merge at a time.
    merging: tokio::sync::Mutex<()>,
}

/// The key of a transaction: `subscription_id 0x00 transaction_id`.
pub fn key(subscription_id: &str, transaction_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(subscription_id.len() + 1 + transaction_id.len());
    k.extend_from_slice(subscription_id.as_bytes());
    k.push(0);
    k.extend_from_slice(transaction_id.as_bytes());
    k
}

/// The hash a run keeps of a key (XXH3-64: fixed by its specification, so runs written by one
/// build are read by the next).
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("dedup index: {what}: {e}"))
}

/// The (key, entry) of a usage event of the log, if it is one.
fn usage_entry(r: &event_store::RecordedEvent) -> Result<Option<(Vec<u8>, Entry)>, Status> {
    if r.event_type != "UsageRecorded" {
        return Ok(None);
    }
    let event = Event::decode(&r.event_type, r.schema_version, &r.payload)
        .map_err(|e| Status::data_loss(format!("event at position {}: {e}", r.position)))?;
    let Event::UsageRecorded(u) = event else { return Ok(None) };
    let digest = domain::ledger::usage_digest(&u);
    Ok(Some((key(&u.subscription_id, &u.transaction_id), Entry { digest, position: r.position })))
}

impl DedupIndex {
    /// Opens the index in `dir` (`None`: runs in memory, for tests) and brings it up to the log
    /// head. Runs that are damaged, of another format, of another log (their last event's hash
    /// differs, or they reach past the head), subsumed by a merged run or not adjacent to the
    /// runs before them are removed; what they held is noted again from the log.
    pub async fn open(dir: Option<&Path>, store: Arc<dyn EventStore>) -> Result<Self, Status> {
        DedupIndex::open_flushing_every(dir, store, CATCH_UP_FLUSH_EVENTS).await
    }

    /// [`DedupIndex::open`], writing a run every `flush_events` entries while it notes the log.
    async fn open_flushing_every(
        dir: Option<&Path>,
        store: Arc<dyn EventStore>,
        flush_events: usize,
    ) -> Result<Self, Status> {
        let started = std::time::Instant::now();
        let runs = match dir {
            Some(d) => open_runs(d, &*store).await?,
            None => Vec::new(),
        };
        let covered = runs.last().map_or(0, |r| r.to);
        let state = State { pending: HashMap::new(), covered, next: covered, runs };
        state.assert_tiled();
        let index = DedupIndex {
            store,
            dir: dir.map(Path::to_path_buf),
            state: parking_lot::Mutex::new(state),
            flushing: tokio::sync::Mutex::new(()),
            merging: tokio::sync::Mutex::new(()),
        };
        index.catch_up(Some(flush_events)).await?;
        tracing::info!(
            covered,
            runs = index.runs_len(),
            head = index.next_position(),
            pending = index.pending_len(),
            ms = started.elapsed().as_millis() as u64,
            "dedup index open"
        );
        Ok(index)
    }

    /// Notes the events of the log from the index's next position up to the head. With
    /// `flush_events` (at open, where the log below the head is durable) it writes a run (and
    /// merges) every that many pending entries, so a rebuild keeps its memory bounded.
    async fn catch_up(&self, flush_events: Option<usize>) -> Result<(), Status> {
        loop {
            let from = self.next_position();
            let chunk =
                self.store.read_all(from, CATCH_UP_CHUNK_EVENTS).await.map_err(from_store)?;
            if chunk.is_empty() {
                return Ok(());
            }
            for r in &chunk {
                self.note(r.position, usage_entry(r)?);
            }
            if flush_events.is_some_and(|n| self.pending_len() >= n) {
                self.flush_through(self.next_position()).await?;
                self.merge_due().await?;
            }
        }
    }

    /// After a failed or diverged append: forgets every pending entry (some may claim events
    /// that never landed) and notes the log again from the covered position.
    pub async fn recover(&self) -> Result<(), Status> {
        let _flush = self.flushing.lock().await;
        {
            let mut s = self.state.lock();
            s.pending.clear();
            s.next = s.covered;
        }
        // The flushing lock is held: no run is written while recovering.
        self.catch_up(None).await
    }

    /// Notes the event at `position` (`entry`: its key and entry if it is a usage event).
    /// Positions below the next one are known already and ignored; events are noted in order.
    pub fn note(&self, position: Position, entry: Option<(Vec<u8>, Entry)>) {
        let mut s = self.state.lock();
        if position < s.next {
            return;
        }
        assert_eq!(position, s.next, "the dedup index notes the log without gaps");
        s.next = position + 1;
        if let Some((k, e)) = entry {
            debug_assert_eq!(e.position, position);
            s.pending.insert(k, e);
        }
    }

    /// What the index holds for `key` without reading the log: the pending entry, or the
    /// positions the runs give for its hash.
    pub fn lookup(&self, key: &[u8]) -> Result<Lookup, Status> {
        let s = self.state.lock();
        if let Some(e) = s.pending.get(key) {
            return Ok(Lookup::Pending(*e));
        }
        let hash = key_hash(key);
        let mut candidates = Vec::new();
        for r in &s.runs {
            candidates.extend(r.positions_of(hash).map_err(|e| internal("read a run", e))?);
        }
        Ok(Lookup::Candidates(candidates))
    }

    /// The earlier usage event of `key`, if any: pending, or in a run and confirmed by the log.
    pub async fn find(&self, key: &[u8]) -> Result<Option<Hit>, Status> {
        match self.lookup(key)? {
            Lookup::Pending(entry) => Ok(Some(Hit { entry, from_disk: false })),
            Lookup::Candidates(positions) => {
                for position in positions {
                    if let Some(entry) = self.confirm_at(key, position).await? {
                        return Ok(Some(Hit { entry, from_disk: true }));
                    }
                }
                Ok(None)
            }
        }
    }

    /// The entry of the event in the log at `position` if it is the usage event `key` names
    /// (with any payload): a run's claim the log does not hold is never a duplicate.
    pub async fn confirm_at(
        &self,
        key: &[u8],
        position: Position,
    ) -> Result<Option<Entry>, Status> {
        let at = self.store.read_all(position, 1).await.map_err(from_store)?;
        let found = match at.first().filter(|r| r.position == position) {
            Some(r) => usage_entry(r)?,
            None => None,
        };
        match found {
            Some((k, entry)) if k == key => Ok(Some(entry)),
            Some(_) => {
                tracing::debug!(position, "dedup: another transaction with the same key hash");
                Ok(None)
            }
            None => {
                tracing::error!(
                    position,
                    "dedup index entry not confirmed by the log; ignored (rebuild the index by \
                     removing its directory)"
                );
                Ok(None)
            }
        }
    }

    /// Every usage event of the log below this position is persisted in the index.
    pub fn covered_position(&self) -> Position {
        self.state.lock().covered
    }

    /// Every event below this position has been noted (persisted or pending).
    pub fn next_position(&self) -> Position {
        self.state.lock().next
    }

    /// Entries noted but not yet persisted.
    pub fn pending_len(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// Runs on disk.
    pub fn runs_len(&self) -> usize {
        self.state.lock().runs.len()
    }

    /// Bytes the runs keep in memory (filters and fences).
    pub fn runs_memory_bytes(&self) -> usize {
        self.state.lock().runs.iter().map(|r| r.memory_bytes()).sum()
    }

    /// Persists every pending entry below `position` as one run, covering `position`. The
    /// caller guarantees that every event below `position` is durable in the log as noted (the
    /// engine's `flush_dedup` waits for that); `position` must not be past the next position. A
    /// position at or below the covered one is a no-op.
    pub async fn flush_through(&self, position: Position) -> Result<(), Status> {
        let _flush = self.flushing.lock().await;
        let (from, entries, flushed) = {
            let s = self.state.lock();
            if position > s.next {
                let noted = s.next;
                return Err(Status::failed_precondition(format!(
                    "dedup index: flush through {position}, past the events noted ({noted})"
                )));
            }
            if position <= s.covered {
                return Ok(());
            }
            let mut entries = Vec::new();
            let mut flushed = Vec::new();
            for (k, e) in s.pending.iter().filter(|(_, e)| e.position < position) {
                entries.push(RunEntry { hash: key_hash(k), position: e.position });
                flushed.push((k.clone(), e.position));
            }
            (s.covered, entries, flushed)
        };
        let hash = event_store::hash_at(&*self.store, position - 1)
            .await
            .map_err(from_store)?
            .ok_or_else(|| internal("flush", format!("no event at {}", position - 1)))?;
        let dir = self.dir.clone();
        let run = tokio::task::spawn_blocking(move || {
            Run::write(dir.as_deref(), from, position, hash, entries)
        })
        .await
        .map_err(|e| internal("flush task", e))?
        .map_err(|e| internal("write a run", e))?;
        let mut s = self.state.lock();
        assert_eq!(s.covered, from, "only a flush moves the covered position");
        for (k, p) in flushed {
            if s.pending.get(&k).is_some_and(|e| e.position == p) {
                s.pending.remove(&k);
            }
        }
        s.runs.push(Arc::new(run));
        s.covered = position;
        s.assert_tiled();
        Ok(())
    }

    /// Merges the newest runs while they are due (a run is merged into the one before it when
    /// that one is at most twice as large, up to [`RUN_ENTRIES_MAX`] entries): the runs stay
    /// O(log n) + n / [`RUN_ENTRIES_MAX`]. Runs flushed meanwhile are kept; the merged inputs'
    /// files are removed once the merged run replaced them.
    pub async fn merge_due(&self) -> Result<(), Status> {
        let Ok(_merge) = self.merging.try_lock() else { return Ok(()) };
        // Each merge removes at least one run, so this ends.
        for _ in 0..self.runs_len() {
            let inputs = {
                let s = self.state.lock();
                let sizes: Vec<_> = s.runs.iter().map(|r| (r.entries, r.from, r.to)).collect();
                let Some(start) = due_suffix(&sizes) else { return Ok(()) };
                s.runs[start..].to_vec()
            };
            let dir = self.dir.clone();
            let taken = inputs.clone();
            let merged = tokio::task::spawn_blocking(move || Run::merge(dir.as_deref(), &taken))
                .await
                .map_err(|e| internal("merge task", e))?
                .map_err(|e| internal("merge runs", e))?;
            {
                let mut s = self.state.lock();
                let at = s.runs.iter().position(|r| Arc::ptr_eq(r, &inputs[0]));
                let at = at.expect("only a merge removes runs");
                let replaced: Vec<_> =
                    s.runs.splice(at..at + inputs.len(), [Arc::new(merged)]).collect();
                assert!(replaced.iter().zip(&inputs).all(|(a, b)| Arc::ptr_eq(a, b)));
                s.assert_tiled();
            }
            for r in &inputs {
                r.remove();
            }
        }
        Ok(())
    }

    /// The index's directory, if it has one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}

/// Where the newest runs to merge now start, if any (`runs`: each run's entries, from, to):
/// the longest suffix in which each run is at most twice as large as all the runs after it
/// together, within [`RUN_ENTRIES_MAX`] entries and the span a run may cover.
fn due_suffix(runs: &[(u64, Position, Position)]) -> Option<usize> {
    let &(last_entries, _, last_to) = runs.last()?;
    let (mut start, mut entries) = (runs.len() - 1, last_entries);
    while start > 0 {
        let (before, from, _) = runs[start - 1];
        let fits = before + entries <= RUN_ENTRIES_MAX && last_to - from <= run::SPAN_POSITIONS_MAX;
        if !(fits && before <= 2 * entries.max(1)) {
            break;
        }
        start -= 1;
        entries += before;
    }
    (start < runs.len() - 1).then_some(start)
}

/// The runs in `dir` that tile the log from 0 (created if missing). Every other file named as a
/// run is removed, with a warning when it was damaged or of another log.
async fn open_runs(dir: &Path, store: &dyn EventStore) -> Result<Vec<Arc<Run>>, Status> {
    std::fs::create_dir_all(dir).map_err(|e| internal(&format!("create {}", dir.display()), e))?;
    let listing = std::fs::read_dir(dir).map_err(|e| internal(&format!("{}", dir.display()), e))?;
    let mut named = Vec::new();
    for entry in listing {
        let path = entry.map_err(|e| internal("list", e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.ends_with(".tmp") {
            remove_quietly(&path);
        } else if let Some((from, to)) = run::parse_name(&name) {
            named.push((from, to, path));
        }
    }
    // Ascending start; for one start, the widest run (a merge's output) first.
    named.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let head = store.head();
    let mut runs = Vec::new();
    let mut at = 0;
    for (from, to, path) in named {
        if from != at || to <= from || to > head {
            if from == at && to > head {
                tracing::warn!(path = %path.display(), head, "dedup run past the log's head removed");
            }
            remove_quietly(&path);
            continue;
        }
        let opened = tokio::task::spawn_blocking({
            let path = path.clone();
            move || Run::open(&path)
        })
        .await
        .map_err(|e| internal("open task", e))?;
        let why = match opened {
            Ok(run)
                if event_store::hash_at(store, to - 1).await.map_err(from_store)?
                    == Some(run.log_hash) =>
            {
                runs.push(Arc::new(run));
                at = to;
                continue;
            }
            Ok(_) => format!("the log's event at {} is not the one indexed", to - 1),
            Err(why) => why,
        };
        tracing::warn!(path = %path.display(), reason = %why, "dedup run removed; the log rebuilds it");
        remove_quietly(&path);
    }
    Ok(runs)
}

fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "not removed");
    }
}

#[cfg(test)]
mod tests;
