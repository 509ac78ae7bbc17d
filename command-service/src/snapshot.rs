//! Snapshots of the write model at a log position (issue 12): restart loads the newest valid
//! snapshot and folds only the log's tail, instead of the whole log.
//!
//! A snapshot is an optimisation, never a source of truth. It records the position `P` it
//! covers (a log length: events `[0, P)`) and the hash of event `P - 1` (the log's head hash at
//! `P`), and is checked against the log on load. One file, `<data-dir>/write-model.snapshot`:
//!
//! ```text
//! magic "ACRLWMS1" (8 bytes) | format version u32 LE | P u64 LE | hash of event P-1 (32 bytes)
//!   | payload length u64 LE | SHA-256 of the bytes before it and the payload (32 bytes) | payload
//! ```
//!
//! The payload is the model in JSON (`serde_json`), chosen by measurement (see
//! docs/decisions/0025-write-model-snapshots.md). A snapshot that is missing, of an unknown
//! format, damaged (checksum, length), stale (the log has no event `P - 1` or another one
//! there: a different or restored log) or undecodable is logged with the reason and ignored:
//! the model is rebuilt from the log. A write goes to a temporary file (per process) that is
//! fsync'd, renamed over the snapshot, and the directory fsync'd, so a crash leaves the old
//! snapshot or the new one, never a mix.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_store::{EventStore, Position};
use sha2::{Digest, Sha256};

/// File name of the write-model snapshot in a command node's data dir.
pub const FILE_NAME: &str = "write-model.snapshot";
/// Default bound on the events a restart folds after the snapshot (while the server runs): a
/// snapshot is written in the background once the log grew this much since the last one; 0
/// writes one only at a graceful stop. It was 0 while the model held every transaction id of the
/// open period (a periodic copy took RSS to 10.2 GiB at 20M events, docs/decisions/0025); the
/// dedup index holds them now and the model is per subscription.
pub const INTERVAL_EVENTS_DEFAULT: u64 = 1_000_000;
/// How often the background task checks the log's growth.
pub const CHECK_INTERVAL_MS: u64 = 1_000;

const MAGIC: &[u8; 8] = b"ACRLWMS1";
/// Format of the header and payload. Bump it when either changes (or the model's serde shape
/// changes incompatibly): an unknown version is ignored and the model rebuilt.
pub const FORMAT_VERSION: u32 = 3;
const HEADER_BYTES: usize = 8 + 4 + 8 + 32 + 8 + 32;

/// Makes everything else the snapshot relies on durable through a position before a snapshot
/// at that position is written (the dedup index's `flush_through(P)`).
pub type FlushThrough = Arc<dyn Fn(Position) -> Result<(), String> + Send + Sync>;

/// Where and how often the engine snapshots its model.
#[derive(Clone)]
pub struct SnapshotOptions {
    /// The snapshot file (`<data-dir>/write-model.snapshot`).
    pub path: PathBuf,
    /// A background snapshot is written once the log grew this many events since the last one
    /// (0: only at graceful shutdown).
    pub interval_events: u64,
    /// Called with `P` before a snapshot at `P` is written; an error skips that snapshot.
    /// HOOK for the dedup index: the lead connects `flush_through(P)` here (see
    /// docs/decisions/0025-write-model-snapshots.md).
    pub flush_through: Option<FlushThrough>,
}

impl SnapshotOptions {
    /// Snapshots in `data_dir` every [`INTERVAL_EVENTS_DEFAULT`] events and at shutdown.
    pub fn in_dir(data_dir: &Path) -> Self {
        SnapshotOptions {
            path: data_dir.join(FILE_NAME),
            interval_events: INTERVAL_EVENTS_DEFAULT,
            flush_through: None,
        }
    }
}

impl fmt::Debug for SnapshotOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotOptions")
            .field("path", &self.path)
            .field("interval_events", &self.interval_events)
            .field("flush_through", &self.flush_through.as_ref().map(|_| "hook"))
            .finish()
    }
}

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub position: Position,
    pub head_hash: [u8; 32],
}

/// Encodes a snapshot file: header and payload.
pub fn encode(header: Header, payload: &[u8]) -> Vec<u8> {
    assert!(header.position > 0, "a snapshot covers at least one event");
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&header.position.to_le_bytes());
    out.extend_from_slice(&header.head_hash);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let checksum = checksum(&out, payload);
    out.extend_from_slice(&checksum);
    out.extend_from_slice(payload);
    out
}

/// Checks a snapshot file's framing and checksum; returns its header and payload.
pub fn decode(bytes: &[u8]) -> Result<(Header, &[u8]), String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!(
            "truncated: {} bytes, the header alone is {HEADER_BYTES}",
            bytes.len()
        ));
    }
    let (head, payload) = bytes.split_at(HEADER_BYTES);
    if &head[0..8] != MAGIC {
        return Err("not a write-model snapshot (bad magic)".into());
    }
    let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!(
            "unknown format version {version} (this build reads {FORMAT_VERSION})"
        ));
    }
    let position = u64_at(12);
    let head_hash: [u8; 32] = head[20..52].try_into().expect("32 bytes");
    let length = u64_at(52);
    if length != payload.len() as u64 {
        return Err(format!("truncated: payload of {} bytes, header says {length}", payload.len()));
    }
    if checksum(&head[..60], payload) != head[60..92] {
        return Err("corrupt: the SHA-256 does not match the header and payload".into());
    }
    if position == 0 {
        return Err("corrupt: a snapshot at position 0".into());
    }
    Ok((Header { position, head_hash }, payload))
}

/// SHA-256 of the header's fields and the payload: a flipped bit anywhere is found.
fn checksum(fields: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(fields);
    hasher.update(payload);
    hasher.finalize().into()
}

/// Checks a header against the log: `P` ≤ head, and the log's event `P - 1` has the recorded
/// hash (works on every backend: one `read_all`).
pub async fn check_against_log(header: Header, store: &dyn EventStore) -> Result<(), String> {
    let head = store.head();
    if header.position > head {
        return Err(format!(
            "stale: it covers {} events, the log has {head} (a different or restored log)",
            header.position
        ));
    }
    let at = header.position - 1;
    let events = store.read_all(at, 1).await.map_err(|e| format!("reading event {at}: {e}"))?;
    match events.first() {
        Some(e) if e.position == at && e.hash == header.head_hash => Ok(()),
        Some(e) if e.position == at => Err(format!(
            "stale: the log's event {at} has another hash (a different or restored log)"
        )),
        _ => Err(format!("stale: the log has no event {at}")),
    }
}

/// Reads and checks the snapshot at `path`: `Ok(None)` if there is none, `Err(reason)` if it
/// must be ignored, else its header and payload (checked against the log).
pub async fn read(
    path: &Path,
    store: &dyn EventStore,
) -> Result<Option<(Header, Vec<u8>)>, String> {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    let header = {
        let (header, _) = decode(&bytes)?;
        header
    };
    check_against_log(header, store).await?;
    let mut bytes = bytes;
    bytes.drain(..HEADER_BYTES);
    Ok(Some((header, bytes)))
}

/// Writes a snapshot file atomically: temporary file, fsync, rename, directory fsync.
/// Blocking: call from `spawn_blocking`.
pub fn write(path: &Path, header: Header, payload: &[u8]) -> std::io::Result<()> {
    let bytes = encode(header, payload);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Per process: command nodes on a shared log (EventStoreDB) may share a data dir.
    let tmp = path.with_extension(format!("snapshot.tmp.{}", std::process::id()));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The hash of the log's event `position - 1`, which a snapshot at `position` records.
pub async fn head_hash_at(store: &dyn EventStore, position: Position) -> Result<[u8; 32], String> {
    assert!(position > 0, "a snapshot covers at least one event");
    let at = position - 1;
    let hash = event_store::hash_at(store, at).await;
    hash.map_err(|e| format!("reading event {at}: {e}"))?
        .ok_or_else(|| format!("the log has no event {at}"))
}

#[cfg(test)]
mod tests;
