//! The storage of a read model: the write buffer a batch is applied into, the commit of that
//! buffer with the checkpoint, consistent reads, and the canonical digest.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use event_store::Position;
use parking_lot::RwLock;
use sha2::{Digest as _, Sha256};
use sled::{IVec, Tree};

use crate::{ProjectionError, Result};

/// First byte of every meta key; model keys must not start with it.
pub const META_PREFIX: u8 = 0x00;
/// sled segment size of the read-model database (as the event store's: values stay in the log).
pub const SEGMENT_SIZE_BYTES: usize = 8 << 20;
pub(crate) const CHECKPOINT_KEY: &[u8] = b"\x00checkpoint";
pub(crate) const VERSION_KEY: &[u8] = b"\x00version";
/// A snapshot of the projection's in-memory state ([`crate::state_snapshot`]), committed with
/// the checkpoint it covers.
pub(crate) const STATE_KEY: &[u8] = b"\x00state";
/// Smallest model key: everything at or after it is part of the digest.
const MODEL_START: &[u8] = &[META_PREFIX + 1];

/// sled page cache of the read-model database (sled's default is 1 GiB). Reads of a model are
/// short (a page of keys) and every batch rewrites the keys it reads, so a small cache holds
/// the working set (docs/decisions/0027-shared-reader-and-journal-batches.md; not yet compared
/// against other sizes by measurement).
pub const CACHE_CAPACITY_BYTES: u64 = 64 << 20;

/// Opens (or creates) a read-model database at `path` and reads every key of it once, so a
/// damaged page shows now rather than in the middle of verifying or exporting: the offline
/// commands use it. `accrual serve` opens with [`open_db_unchecked`] and runs [`check_db`]
/// while it serves, so its restart does not grow with the read models.
pub fn open_db(path: impl AsRef<Path>) -> Result<sled::Db> {
    let db = open_db_unchecked(&path)?;
    check_db(&db, path)?;
    Ok(db)
}

/// Opens (or creates) a read-model database at `path` without reading its pages. A file lock
/// held a moment after the last handle was dropped is waited for
/// ([`event_store::open_sled_waiting`]); a lock held longer (another process) is the error it
/// was. Files sled refuses are [`ProjectionError::Damaged`], naming the store and how to
/// rebuild it, never a panic (sled 0.34 panics on some of them, so the open runs under
/// [`event_store::contain_panic`]).
pub fn open_db_unchecked(path: impl AsRef<Path>) -> Result<sled::Db> {
    let path = path.as_ref();
    let config = sled::Config::new()
        .path(path)
        .segment_size(SEGMENT_SIZE_BYTES)
        .cache_capacity(CACHE_CAPACITY_BYTES);
    let db = event_store::contain_panic(|| event_store::open_sled_waiting(&config))
        .map_err(|detail| damaged(path, detail))?;
    db.map_err(|e| match e {
        sled::Error::Corruption { .. }
        | sled::Error::ReportableBug(_)
        | sled::Error::Unsupported(_) => damaged(path, e.to_string()),
        other => ProjectionError::Sled(other),
    })
}

/// Reads every key and value of every tree of `db` (opened from `path`): a damaged page is
/// [`ProjectionError::Damaged`], never a panic. Time and I/O grow with the read models.
pub fn check_db(db: &sled::Db, path: impl AsRef<Path>) -> Result<()> {
    match event_store::contain_panic(|| read_everything(db)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(damaged(path.as_ref(), e.to_string())),
        Err(panic) => Err(damaged(path.as_ref(), panic)),
    }
}

fn damaged(path: &Path, detail: String) -> ProjectionError {
    ProjectionError::Damaged {
        path: path.display().to_string(),
        data_dir: path.parent().unwrap_or(Path::new(".")).display().to_string(),
        detail,
    }
}

fn read_everything(db: &sled::Db) -> sled::Result<()> {
    for name in db.tree_names() {
        for item in db.open_tree(name)?.iter() {
            item?;
        }
    }
    Ok(())
}

/// The writes of one batch, not yet committed. Reads see the batch's own writes first.
pub struct Writes<'a> {
    tree: &'a Tree,
    pending: BTreeMap<Vec<u8>, Option<IVec>>,
    /// Decoded records a projection keeps for the rest of the batch (see [`Writes::memo`]).
    memo: Option<Box<dyn std::any::Any + Send>>,
    /// A state snapshot to commit under [`STATE_KEY`] with this batch's checkpoint.
    state: Option<Vec<u8>>,
}

impl<'a> Writes<'a> {
    pub(crate) fn new(tree: &'a Tree) -> Self {
        Writes { tree, pending: BTreeMap::new(), memo: None, state: None }
    }

    /// Decoded records of type `T` by key, kept for this batch only, so a record that many
    /// events of a batch change is decoded and encoded once per batch rather than once per
    /// event. The projection owns the protocol: it takes a record from here before reading
    /// its key, and [`Writes::put`]s every record left here in `finish_batch` (a failed batch
    /// drops them with the rest of its writes). One type per batch; another type is a bug.
    pub fn memo<T: std::any::Any + Send>(&mut self) -> &mut BTreeMap<Vec<u8>, T> {
        let slot = self.memo.get_or_insert_with(|| Box::new(BTreeMap::<Vec<u8>, T>::new()));
        slot.downcast_mut().expect("one memo type per batch")
    }

    /// The value of `key` as this batch left it (or as committed, if the batch did not touch it).
    pub fn get(&self, key: &[u8]) -> Result<Option<IVec>> {
        match self.pending.get(key) {
            Some(value) => Ok(value.clone()),
            None => Ok(self.tree.get(key)?),
        }
    }

    /// Sets a model key. Panics on an empty key or one starting with [`META_PREFIX`] (a bug).
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<IVec>) {
        let key = key.into();
        check_model_key(&key);
        self.pending.insert(key, Some(value.into()));
    }

    /// Removes a model key.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        let key = key.into();
        check_model_key(&key);
        self.pending.insert(key, None);
    }

    /// Commits `snapshot` (a framed [`crate::state_snapshot`] covering this batch's checkpoint)
    /// under [`STATE_KEY`] in the same sled batch as the checkpoint.
    pub(crate) fn put_state(&mut self, snapshot: Vec<u8>) {
        self.state = Some(snapshot);
    }

    /// Number of keys this batch writes or removes.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn into_batch(self, checkpoint: Position) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in self.pending {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        if let Some(state) = self.state {
            batch.insert(STATE_KEY, state);
        }
        batch.insert(CHECKPOINT_KEY, &checkpoint.to_be_bytes());
        batch
    }
}

fn check_model_key(key: &[u8]) {
    assert!(
        key.first().is_some_and(|b| *b != META_PREFIX),
        "model keys are non-empty and do not start with 0x00"
    );
}

/// The canonical digest of a read model at a log position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    /// The checkpoint: events `[0, position)` are applied.
    pub position: Position,
    pub sha256: [u8; 32],
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", hex::encode(self.sha256), self.position)
    }
}

/// A handle on one projection's tree. Cheap to clone; reads are consistent with whole batches.
#[derive(Clone)]
pub struct ReadModel {
    name: &'static str,
    tree: Tree,
    gate: Arc<RwLock<()>>,
}

impl ReadModel {
    pub(crate) fn new(name: &'static str, tree: Tree) -> Self {
        ReadModel { name, tree, gate: Arc::new(RwLock::new(())) }
    }

    /// The model of projection `name` (at layout `version`) in `db` as it is, without a runner
    /// and without writing: `None` if the tree is missing or holds another version (a runner
    /// would rebuild it). For serving or auditing a model some other process built.
    pub fn open_existing(db: &sled::Db, name: &'static str, version: u32) -> Result<Option<Self>> {
        let tree_name = format!("projection/{name}");
        if !db.tree_names().iter().any(|t| t.as_ref() == tree_name.as_bytes()) {
            return Ok(None);
        }
        let tree = db.open_tree(tree_name)?;
        if tree.get(VERSION_KEY)?.as_deref() != Some(&version.to_be_bytes()[..]) {
            return Ok(None);
        }
        Ok(Some(ReadModel::new(name, tree)))
    }

    pub(crate) fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The projection's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs `f` on a consistent view: no batch is committed while it runs, so keep it short
    /// (bounded scans, a page of gets).
    pub fn read<T>(&self, f: impl FnOnce(&Snapshot<'_>) -> Result<T>) -> Result<T> {
        let _shared = self.gate.read();
        f(&Snapshot { name: self.name, tree: &self.tree })
    }

    /// Next position to apply (= events applied).
    pub fn checkpoint(&self) -> Result<Position> {
        self.read(|s| s.checkpoint())
    }

    /// The canonical digest with its position. Scans the whole model while holding off commits.
    pub fn digest(&self) -> Result<Digest> {
        self.read(|s| s.digest())
    }

    /// The stored state snapshot (see [`STATE_KEY`]), if any.
    pub(crate) fn state(&self) -> Result<Option<IVec>> {
        Ok(self.tree.get(STATE_KEY)?)
    }

    /// Writes a batch and its checkpoint atomically.
    pub(crate) fn commit(&self, writes: Writes<'_>, checkpoint: Position) -> Result<()> {
        let batch = writes.into_batch(checkpoint);
        let _exclusive = self.gate.write();
        Ok(self.tree.apply_batch(batch)?)
    }
}

/// A consistent view of a read model (see [`ReadModel::read`]).
pub struct Snapshot<'a> {
    name: &'static str,
    tree: &'a Tree,
}

impl Snapshot<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<IVec>> {
        Ok(self.tree.get(key)?)
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order, after `prefix ‖ after`
    /// (exclusive) when `after` is given.
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(IVec, IVec)>> {
        let start = match after {
            Some(after) => Bound::Excluded([prefix, after].concat()),
            None => Bound::Included(prefix.to_vec()),
        };
        let mut out = Vec::new();
        for item in self.tree.range((start, Bound::Unbounded)).take(limit) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key, value));
        }
        Ok(out)
    }

    /// The last `limit` entries whose key starts with `prefix`, in reverse key order.
    pub fn scan_rev(&self, prefix: &[u8], limit: usize) -> Result<Vec<(IVec, IVec)>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix).rev().take(limit) {
            out.push(item?);
        }
        Ok(out)
    }

    pub fn checkpoint(&self) -> Result<Position> {
        read_checkpoint(self.name, self.tree)
    }

    pub fn digest(&self) -> Result<Digest> {
        let mut hasher = Sha256::new();
        for item in self.tree.range(MODEL_START..) {
            let (key, value) = item?;
            for part in [&key, &value] {
                hasher.update((part.len() as u64).to_be_bytes());
                hasher.update(part);
            }
        }
        Ok(Digest { position: self.checkpoint()?, sha256: hasher.finalize().into() })
    }
}

pub(crate) fn read_checkpoint(name: &'static str, tree: &Tree) -> Result<Position> {
    match tree.get(CHECKPOINT_KEY)? {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref())
            .map(Position::from_be_bytes)
            .map_err(|_| corrupt(name, "checkpoint is not 8 bytes")),
    }
}

/// Makes the tree hold `version`'s model: clears it if it was built by another version.
/// Returns the checkpoint.
pub(crate) fn prepare(name: &'static str, tree: &Tree, version: u32) -> Result<Position> {
    let stored = tree.get(VERSION_KEY)?;
    if stored.as_deref() != Some(&version.to_be_bytes()[..]) {
        if !tree.is_empty() {
            tracing::warn!(projection = name, version, "read model version changed; rebuilding");
            tree.clear()?;
        }
        tree.insert(VERSION_KEY, &version.to_be_bytes())?;
    }
    read_checkpoint(name, tree)
}

pub(crate) fn corrupt(projection: &'static str, detail: impl Into<String>) -> ProjectionError {
    ProjectionError::Corrupt { projection, detail: detail.into() }
}

#[cfg(test)]
mod tests {
    /// A database whose lock is still held (here: by a handle dropped 300 ms later, as sled's
    /// flusher thread holds it a moment after the last handle is dropped) opens once the lock
    /// is released; a lock held past the bound stays an error.
    #[test]
    fn open_waits_a_bounded_time_for_the_file_lock() {
        let dir = tempfile::tempdir().unwrap();
        let held = super::open_db(dir.path()).unwrap();
        held.insert([1], vec![7]).unwrap();
        held.flush().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let db = super::open_db(dir.path()).expect("opened once the lock was released");
        assert_eq!(db.get([1]).unwrap().unwrap().to_vec(), vec![7]);
        release.join().unwrap();
        // The bound itself is event-store's (`open_waiting`'s own test).
        assert!(super::open_db(dir.path()).is_err(), "held for good: an error");
    }
}
