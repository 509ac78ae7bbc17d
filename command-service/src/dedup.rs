//! The dedup index: (subscription, transaction id) → (payload digest, log position) of every
//! usage event ever recorded, so a retried transaction is answered as a duplicate for the
//! subscription's whole life (after its period closed, after any restart) while the write model
//! keeps no per-event state (docs/decisions/0024-dedup-index.md).
//!
//! Three layers:
//! - a sled tree in its own directory (`<data-dir>/dedup`): key `subscription_id 0x00
//!   transaction_id`, value `digest u64 ‖ position u64` (big-endian), plus meta keys (they start
//!   with 0x00, which no id does): the *covered position* C (every usage event of the log below
//!   C is in the tree) and the hash of the log's event at C − 1;
//! - an in-memory growable bloom filter over every key noted, so a new id (the common case)
//!   rarely touches disk (≈ 1.2–2.5 bytes per transaction: see the decision record);
//! - a bounded map of *pending* entries (positions ≥ C): noted when decided (or folded from the
//!   log), written to sled in batches by [`DedupIndex::flush_through`], never one per event.
//!
//! It is derived data: [`DedupIndex::open`] checks C and the hash at C − 1 against the log and
//! brings the index up to the log head from C; missing, unreadable or inconsistent files are
//! rebuilt from the log (a warning, never a panic). A hit is a claim the caller confirms: a
//! pending hit was decided by this process on the model it holds (and the reply waits for that
//! append to be durable); a hit read from sled is always confirmed against the event in the log
//! at its position (hits are retries only, so this costs one log read per retry).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use domain::events::Event;
use event_store::{EventStore, Position};
use growable_bloom_filter::{GrowableBloom, GrowableBloomBuilder};
use tonic::Status;

use crate::status::from_store;

/// Pending entries at which the engine starts a background flush.
pub const FLUSH_EVENTS: usize = 32_768;
/// Pending entries past which a decision first flushes (bounds the pending map's memory).
pub const PENDING_EVENTS_MAX: usize = 262_144;
/// Events read per call while bringing the index up to the log.
pub const CATCH_UP_CHUNK_EVENTS: usize = 10_000;
/// False-positive ratio of the filter's first stage (later stages tighten it).
pub const FILTER_ERROR_RATIO: f64 = 0.01;
/// Transactions the filter's first stage is sized for; each later stage doubles.
pub const FILTER_FIRST_STAGE_ENTRIES: usize = 1 << 16;
const FILTER_TIGHTENING_RATIO: f64 = 0.9;
const FILTER_GROWTH_FACTOR: usize = 2;

const META_COVERED: &[u8] = b"\x00covered";
const META_HASH: &[u8] = b"\x00hash";
const META_FORMAT: &[u8] = b"\x00format";
const META_ENTRIES: &[u8] = b"\x00entries";
const FORMAT: &[u8] = b"1";
const ENTRY_BYTES: usize = 16;

/// What the index knows of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub digest: u64,
    pub position: Position,
}

/// A lookup's answer: the entry, and whether it came from disk (then the caller confirms it
/// against the log) or from the pending map (decided by this process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub entry: Entry,
    pub from_disk: bool,
}

struct State {
    filter: GrowableBloom,
    /// Entries at positions ≥ `covered`, not yet in sled.
    pending: HashMap<Vec<u8>, Entry>,
    /// Every usage event below this position is in sled.
    covered: Position,
    /// Every event below this position has been noted (pending or in sled).
    next: Position,
    /// Entries in sled (sizes the filter on open).
    entries: u64,
}

/// See the module documentation.
pub struct DedupIndex {
    store: Arc<dyn EventStore>,
    tree: sled::Db,
    dir: Option<PathBuf>,
    state: parking_lot::Mutex<State>,
    /// Transactions the filter's first stage was sized for.
    filter_first_stage: usize,
    /// One flush at a time.
    flushing: tokio::sync::Mutex<()>,
}

/// The key of a transaction: `subscription_id 0x00 transaction_id`.
pub fn key(subscription_id: &str, transaction_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(subscription_id.len() + 1 + transaction_id.len());
    k.extend_from_slice(subscription_id.as_bytes());
    k.push(0);
    k.extend_from_slice(transaction_id.as_bytes());
    k
}

fn encode(e: Entry) -> [u8; ENTRY_BYTES] {
    let mut v = [0u8; ENTRY_BYTES];
    v[..8].copy_from_slice(&e.digest.to_be_bytes());
    v[8..].copy_from_slice(&e.position.to_be_bytes());
    v
}

fn decode_entry(v: &[u8]) -> Option<Entry> {
    let v: &[u8; ENTRY_BYTES] = v.try_into().ok()?;
    let digest = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
    let position = u64::from_be_bytes(v[8..].try_into().expect("8 bytes"));
    Some(Entry { digest, position })
}

fn new_filter(first_stage: usize) -> GrowableBloom {
    GrowableBloomBuilder::new()
        .estimated_insertions(first_stage)
        .desired_error_ratio(FILTER_ERROR_RATIO)
        .growth_factor(FILTER_GROWTH_FACTOR)
        .tightening_ratio(FILTER_TIGHTENING_RATIO)
        .build()
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
    /// Opens the index in `dir` (`None`: a temporary sled that lives as long as the index, for
    /// tests: same code path) and brings it up to the log head. Files that are missing,
    /// unreadable (sled's panics on damaged files are contained), of another format, or that do
    /// not match the log (covered position past the head, another event at covered − 1) are
    /// discarded and the index is rebuilt from the log.
    pub async fn open(dir: Option<&Path>, store: Arc<dyn EventStore>) -> Result<Self, Status> {
        let started = std::time::Instant::now();
        let checked = match open_disk(dir) {
            Ok(disk) => check_against_log(&disk, &*store).await.map(|()| disk),
            Err(why) => Err(why),
        };
        let disk = match checked {
            Ok(disk) => disk,
            Err(why) => {
                if dir.is_some_and(|d| d.exists()) {
                    tracing::warn!(reason = %why, "dedup index discarded; rebuilding it from the log");
                }
                create_disk(dir)?
            }
        };
        let Disk { tree, covered, entries, filter, filter_first_stage } = disk;
        let state = State { filter, pending: HashMap::new(), covered, next: covered, entries };
        let index = DedupIndex {
            store,
            tree,
            dir: dir.map(Path::to_path_buf),
            state: parking_lot::Mutex::new(state),
            filter_first_stage,
            flushing: tokio::sync::Mutex::new(()),
        };
        index.catch_up().await?;
        tracing::info!(
            entries,
            covered,
            head = index.next_position(),
            ms = started.elapsed().as_millis() as u64,
            "dedup index open"
        );
        Ok(index)
    }

    /// Notes the events of the log from the index's next position up to the head.
    async fn catch_up(&self) -> Result<(), Status> {
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
        self.catch_up().await
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
            s.filter.insert(&k[..]);
            s.pending.insert(k, e);
        }
    }

    /// What the index holds for `key`: pending first, then (if the filter says maybe) sled.
    pub fn lookup(&self, key: &[u8]) -> Result<Option<Hit>, Status> {
        {
            let s = self.state.lock();
            if let Some(e) = s.pending.get(key) {
                return Ok(Some(Hit { entry: *e, from_disk: false }));
            }
            if !s.filter.contains(key) {
                return Ok(None);
            }
        }
        let Some(v) = self.tree.get(key).map_err(|e| internal("read", e))? else { return Ok(None) };
        match decode_entry(&v) {
            Some(entry) => Ok(Some(Hit { entry, from_disk: true })),
            None => {
                tracing::error!("dedup index: an entry of {} bytes; ignored", v.len());
                Ok(None)
            }
        }
    }

    /// Whether the event in the log at `hit`'s position is the usage event `key` names (with
    /// any payload): a disk hit the log does not hold is never answered as a duplicate.
    pub async fn confirm(&self, key: &[u8], hit: &Hit) -> Result<Option<Entry>, Status> {
        let at = self.store.read_all(hit.entry.position, 1).await.map_err(from_store)?;
        let found = match at.first().filter(|r| r.position == hit.entry.position) {
            Some(r) => usage_entry(r)?,
            None => None,
        };
        match found {
            Some((k, entry)) if k == key => Ok(Some(entry)),
            _ => {
                tracing::error!(
                    position = hit.entry.position,
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

    /// Bytes the in-memory filter's bit arrays take, computed from its stages as the crate sizes
    /// them (slices of ⌈capacity / ln 2⌉ bits, ⌈log2(1 / error)⌉ slices), for the figures in
    /// the decision record.
    pub fn filter_bytes(&self) -> usize {
        filter_bytes_of(self.state.lock().filter.capacity(), self.filter_first_stage)
    }

    /// Persists every pending entry below `position` with the covered position `position` (one
    /// sled batch, then an fsync). The caller guarantees that every event below `position` is
    /// durable in the log as noted (the engine's `flush_dedup` waits for that); `position` must
    /// not be past the next position. A position at or below the covered one is a no-op.
    pub async fn flush_through(&self, position: Position) -> Result<(), Status> {
        let _flush = self.flushing.lock().await;
        let (batch, flushed) = {
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
            let mut batch = sled::Batch::default();
            let mut flushed = Vec::new();
            for (k, e) in s.pending.iter().filter(|(_, e)| e.position < position) {
                batch.insert(&k[..], &encode(*e)[..]);
                flushed.push((k.clone(), e.position));
            }
            (batch, flushed)
        };
        let mut batch = batch;
        let at = self.store.read_all(position - 1, 1).await.map_err(from_store)?;
        let hash = at.first().filter(|r| r.position == position - 1).map(|r| r.hash);
        let hash =
            hash.ok_or_else(|| internal("flush", format!("no event at {}", position - 1)))?;
        batch.insert(META_HASH, &hash[..]);
        batch.insert(META_COVERED, &position.to_be_bytes()[..]);
        batch.insert(META_FORMAT, FORMAT);
        let entries = self.state.lock().entries + flushed.len() as u64;
        batch.insert(META_ENTRIES, &entries.to_be_bytes()[..]);
        let tree = self.tree.clone();
        tokio::task::spawn_blocking(move || {
            tree.apply_batch(batch)?;
            tree.flush()
        })
        .await
        .map_err(|e| internal("flush task", e))?
        .map_err(|e| internal("write", e))?;
        let mut s = self.state.lock();
        for (k, p) in flushed {
            if s.pending.get(&k).is_some_and(|e| e.position == p) {
                s.pending.remove(&k);
            }
        }
        s.covered = s.covered.max(position);
        s.entries = entries;
        Ok(())
    }

    /// The index's directory, if it has one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}

/// See [`DedupIndex::filter_bytes`]: the bytes of a filter of `capacity_total` transactions whose
/// first stage holds `first_stage`.
fn filter_bytes_of(capacity_total: usize, first_stage: usize) -> usize {
    let (mut bytes, mut capacity, mut error) = (0usize, 0usize, FILTER_ERROR_RATIO);
    let mut stage_capacity = first_stage;
    while capacity < capacity_total {
        let slices = (1.0 / error).log2().ceil() as usize;
        let slice_bits = (stage_capacity as f64 / std::f64::consts::LN_2).ceil() as usize;
        bytes += (slices * slice_bits).div_ceil(8);
        capacity += stage_capacity;
        stage_capacity *= FILTER_GROWTH_FACTOR;
        error *= FILTER_TIGHTENING_RATIO;
    }
    bytes
}

/// The index's files as opened, with the filter filled from them.
struct Disk {
    tree: sled::Db,
    covered: Position,
    entries: u64,
    filter: GrowableBloom,
    filter_first_stage: usize,
}

/// Opens the files in `dir` and reads them whole (meta, and every key into the filter); `Err`
/// says why they are not usable. A temporary index (`dir` `None`) is created empty.
fn open_disk(dir: Option<&Path>) -> Result<Disk, String> {
    let Some(path) = dir else { return Err("a temporary index".into()) };
    if !path.join("conf").exists() {
        return Err(format!("no index in {}", path.display()));
    }
    let opened = event_store::contain_panic(|| -> Result<Disk, String> {
        let tree = open_tree(dir).map_err(|e| format!("sled: {e}"))?;
        let meta = |k: &[u8]| tree.get(k).map_err(|e| format!("sled: {e}"));
        if meta(META_FORMAT)?.as_deref() != Some(FORMAT) {
            return Err("missing or unknown format".into());
        }
        let number = |k: &[u8]| -> Result<u64, String> {
            let v = meta(k)?.ok_or_else(|| format!("no {}", String::from_utf8_lossy(&k[1..])))?;
            let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| "a meta value of bad size")?;
            Ok(u64::from_be_bytes(bytes))
        };
        let (covered, entries) = (number(META_COVERED)?, number(META_ENTRIES)?);
        // Sized for what is on disk (one stage, no growth on open), at least the first stage.
        let filter_first_stage = usize::try_from(entries)
            .map_err(|_| "too many entries")?
            .max(FILTER_FIRST_STAGE_ENTRIES);
        let mut filter = new_filter(filter_first_stage);
        for kv in tree.iter() {
            let (k, v) = kv.map_err(|e| format!("sled: {e}"))?;
            if k.first() == Some(&0) {
                continue;
            }
            if decode_entry(&v).is_none() {
                return Err(format!("an entry of {} bytes", v.len()));
            }
            filter.insert(&k[..]);
        }
        Ok(Disk { tree, covered, entries, filter, filter_first_stage })
    });
    opened.unwrap_or_else(Err)
}

/// Whether the files match the log: the covered position is not past the head and the log's
/// event at covered − 1 is the one whose hash was recorded.
async fn check_against_log(disk: &Disk, store: &dyn EventStore) -> Result<(), String> {
    let head = store.head();
    if disk.covered > head {
        return Err(format!("it covers {} events, the log has {head}", disk.covered));
    }
    if disk.covered == 0 {
        return Ok(());
    }
    let at = store.read_all(disk.covered - 1, 1).await.map_err(|e| format!("log: {e}"))?;
    let hash = disk.tree.get(META_HASH).map_err(|e| format!("sled: {e}"))?;
    if at.first().map(|r| &r.hash[..]) != hash.as_deref() {
        return Err(format!("the log's event at {} is not the one indexed", disk.covered - 1));
    }
    Ok(())
}

/// A new, empty index in `dir` (whatever was there is removed), covering nothing.
fn create_disk(dir: Option<&Path>) -> Result<Disk, Status> {
    if let Some(d) = dir.filter(|d| d.exists()) {
        std::fs::remove_dir_all(d).map_err(|e| internal(&format!("remove {}", d.display()), e))?;
    }
    let tree = open_tree(dir).map_err(|e| internal("create", e))?;
    let mut batch = sled::Batch::default();
    batch.insert(META_FORMAT, FORMAT);
    batch.insert(META_COVERED, &0u64.to_be_bytes()[..]);
    batch.insert(META_ENTRIES, &0u64.to_be_bytes()[..]);
    tree.apply_batch(batch).map_err(|e| internal("create", e))?;
    tree.flush().map_err(|e| internal("create", e))?;
    let filter_first_stage = FILTER_FIRST_STAGE_ENTRIES;
    let filter = new_filter(filter_first_stage);
    Ok(Disk { tree, covered: 0, entries: 0, filter, filter_first_stage })
}

/// sled's page cache for the index: lookups that pass the filter are retries or false
/// positives, so a small cache does (sled's default, 1 GiB, would grow with the index).
pub const SLED_CACHE_BYTES: u64 = 32 * 1024 * 1024;

fn open_tree(dir: Option<&Path>) -> sled::Result<sled::Db> {
    // Every batch is flushed explicitly (`flush_through`); no periodic flush in between.
    let config = sled::Config::new().cache_capacity(SLED_CACHE_BYTES).flush_every_ms(None);
    match dir {
        Some(d) => config.path(d).open(),
        None => config.temporary(true).open(),
    }
}

#[cfg(test)]
mod tests;
