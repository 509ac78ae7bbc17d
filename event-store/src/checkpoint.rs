//! The sled backend's index checkpoint: the in-memory [`Index`] (head, last hash, last
//! `recorded_at`, every stream's first position and last version) saved in the `index` tree of
//! the log's database, so an open reads it and scans only the log written after it.
//!
//! A checkpoint is derived data, never a source of truth. It is written only after the commits
//! it covers were flushed (so it never claims anything that is not on disk), in one atomic sled
//! batch (header and pages), and at open it is used only if its digest matches and the log agrees
//! with it ([`verify`]); otherwise the store scans the whole log as before.
//!
//! # Format 1
//!
//! Key `checkpoint` (the header):
//!
//! ```text
//! u8        format = 1
//! u64       head              (positions < head are covered)
//! [u8; 32]  last_hash         (hash of the event at head - 1; GENESIS_HASH when head = 0)
//! i64       last_recorded_at
//! u64       stream_count
//! u32       page_count
//! [u8; 32]  digest = SHA-256(the header bytes above || every page in order)
//! ```
//!
//! Keys `checkpoint-page-` + `u32` big-endian page number, each at most 64 KiB (far below
//! sled's blob threshold): stream entries `{ u16 name_len, name, u64 first_position,
//! u64 last_version }`, an entry never split across pages.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::envelope::{Chunk, GENESIS_HASH};
use crate::index::{Index, StreamHead};
use crate::sled_store::key_position;
use crate::Position;

/// The tree of the checkpoint (in the log's sled database).
pub(crate) const INDEX_TREE: &str = "index";
const HEADER_KEY: &[u8] = b"checkpoint";
const PAGE_PREFIX: &[u8] = b"checkpoint-page-";
const CHECKPOINT_FORMAT: u8 = 1;
const PAGE_BYTES_MAX: usize = 64 * 1024;
const HEADER_LEN: usize = 1 + 8 + 32 + 8 + 8 + 4 + 32;
/// Chunks before the checkpoint's head whose links an open re-checks (about 64 × 250 events):
/// recent damage (a torn or edited tail) is still refused at open, at a bounded cost. Older
/// history is checked by `audit verify`.
pub(crate) const VERIFY_CHUNKS: usize = 64;

fn page_key(page: u32) -> Vec<u8> {
    let mut key = PAGE_PREFIX.to_vec();
    key.extend_from_slice(&page.to_be_bytes());
    key
}

/// The checkpoint of `index` as a sled batch (header, pages, and the removal of any page of an
/// older, larger checkpoint).
pub(crate) fn batch(tree: &sled::Tree, index: &Index) -> Result<sled::Batch, sled::Error> {
    let mut pages: Vec<Vec<u8>> = vec![Vec::new()];
    let mut names: Vec<(&Box<str>, &StreamHead)> = index.streams().iter().collect();
    names.sort_unstable_by(|a, b| a.0.cmp(b.0)); // deterministic bytes
    for (name, head) in names {
        let entry_len = 2 + name.len() + 16;
        if pages.last().is_some_and(|p| p.len() + entry_len > PAGE_BYTES_MAX) {
            pages.push(Vec::new());
        }
        let page = pages.last_mut().expect("at least one page");
        let name_len = u16::try_from(name.len()).expect("stream names are at most 256 bytes");
        page.extend_from_slice(&name_len.to_be_bytes());
        page.extend_from_slice(name.as_bytes());
        page.extend_from_slice(&head.first_position.to_be_bytes());
        page.extend_from_slice(&head.last_version.to_be_bytes());
    }
    let page_count = u32::try_from(pages.len()).expect("fewer than 2^32 pages");
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.push(CHECKPOINT_FORMAT);
    header.extend_from_slice(&index.head().to_be_bytes());
    header.extend_from_slice(&index.last_hash());
    header.extend_from_slice(&index.last_recorded_at().to_be_bytes());
    header.extend_from_slice(&(index.stream_count() as u64).to_be_bytes());
    header.extend_from_slice(&page_count.to_be_bytes());
    let digest = digest(&header, pages.iter().map(Vec::as_slice));
    header.extend_from_slice(&digest);
    let mut batch = sled::Batch::default();
    for item in tree.range(page_key(page_count)..) {
        let (key, _) = item?;
        if key.starts_with(PAGE_PREFIX) {
            batch.remove(key);
        }
    }
    for (n, page) in (0..page_count).zip(pages) {
        batch.insert(page_key(n), page);
    }
    batch.insert(HEADER_KEY, header);
    Ok(batch)
}

fn digest<'a>(header: &[u8], pages: impl Iterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(header);
    for page in pages {
        hasher.update(page);
    }
    hasher.finalize().into()
}

/// Loads the checkpoint: `Ok(None)` when there is none, `Err(why)` when it does not decode or
/// its digest does not match.
pub(crate) fn load(tree: &sled::Tree) -> Result<Option<Index>, String> {
    let Some(header) = tree.get(HEADER_KEY).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    if header.len() != HEADER_LEN || header[0] != CHECKPOINT_FORMAT {
        return Err(format!(
            "checkpoint header of {} bytes, format {:?}",
            header.len(),
            header.first()
        ));
    }
    let u64_at = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let head = u64_at(1);
    let last_hash: [u8; 32] = header[9..41].try_into().expect("32 bytes");
    let last_recorded_at = u64_at(41) as i64;
    let stream_count = u64_at(49);
    let page_count = u32::from_be_bytes(header[57..61].try_into().expect("4 bytes"));
    let mut pages = Vec::new();
    for n in 0..page_count {
        let page = tree.get(page_key(n)).map_err(|e| e.to_string())?;
        pages.push(page.ok_or_else(|| format!("checkpoint page {n} missing"))?);
    }
    let expected = digest(&header[..HEADER_LEN - 32], pages.iter().map(|p| p.as_ref()));
    if expected[..] != header[HEADER_LEN - 32..] {
        return Err("checkpoint digest does not match its bytes".into());
    }
    let mut streams =
        HashMap::with_capacity(usize::try_from(stream_count).unwrap_or(0).min(1 << 24));
    for page in &pages {
        let mut at = 0;
        while at < page.len() {
            let (name, head, next) = entry(page, at).ok_or("bad checkpoint entry")?;
            streams.insert(name.into(), head);
            at = next;
        }
    }
    if streams.len() as u64 != stream_count {
        return Err(format!("checkpoint holds {} streams, claims {stream_count}", streams.len()));
    }
    Ok(Some(Index::restored(head, last_hash, last_recorded_at, streams)))
}

fn entry(page: &[u8], at: usize) -> Option<(&str, StreamHead, usize)> {
    let len = usize::from(u16::from_be_bytes(page.get(at..at + 2)?.try_into().ok()?));
    let name = std::str::from_utf8(page.get(at + 2..at + 2 + len)?).ok()?;
    let at = at + 2 + len;
    let first_position = u64::from_be_bytes(page.get(at..at + 8)?.try_into().ok()?);
    let last_version = u64::from_be_bytes(page.get(at + 8..at + 16)?.try_into().ok()?);
    Some((name, StreamHead { first_position, last_version }, at + 16))
}

/// Checks the checkpoint against the log: the last [`VERIFY_CHUNKS`] chunks before its head
/// decode, follow each other without a gap, link by `prev_hash`, never go back in
/// `recorded_at`, and end exactly at its head with its last hash and `recorded_at`; and no
/// stream claims a first position at or beyond the head. `Err(why)` otherwise.
pub(crate) fn verify(log: &sled::Tree, index: &Index) -> Result<(), String> {
    let head = index.head();
    if index.streams().values().any(|s| s.first_position >= head) {
        return Err("a stream starts beyond the checkpoint's head".into());
    }
    let mut window = Vec::new();
    for item in log.range(..head.to_be_bytes()).rev().take(VERIFY_CHUNKS) {
        window.push(item.map_err(|e| e.to_string())?);
    }
    window.reverse();
    let mut next: Option<Position> = None;
    let mut prev_hash: Option<[u8; 32]> = None;
    let mut recorded_at = i64::MIN;
    for (key, value) in &window {
        let first = key_position(key).map_err(|e| e.to_string())?;
        let chunk = Chunk::parse(first, value).map_err(|e| e.to_string())?;
        if next.is_some_and(|n| n != first) {
            return Err(format!("chunk at {first} does not follow the one before"));
        }
        if next.is_none() && window.len() < VERIFY_CHUNKS && first != 0 {
            return Err(format!("the log's first chunk starts at {first}"));
        }
        let mut records = chunk.records();
        while let Some(raw) = records.next_raw().map_err(|e| e.to_string())? {
            let env = raw.decode().map_err(|e| e.to_string())?;
            let expected_prev = prev_hash.or((raw.position == 0).then_some(GENESIS_HASH));
            if expected_prev.is_some_and(|h| h != env.prev_hash) {
                return Err(format!("broken link at {}", raw.position));
            }
            if env.recorded_at_us < recorded_at {
                return Err(format!("recorded_at decreases at {}", raw.position));
            }
            prev_hash = Some(raw.hash);
            recorded_at = env.recorded_at_us;
        }
        next = Some(chunk.end());
    }
    let end = next.unwrap_or(0);
    if end != head {
        return Err(format!("the log before the checkpoint ends at {end}, not at its head {head}"));
    }
    if prev_hash.unwrap_or(GENESIS_HASH) != index.last_hash() {
        return Err(format!(
            "the event at {} does not carry the checkpoint's hash",
            head.saturating_sub(1)
        ));
    }
    if head > 0 && recorded_at != index.last_recorded_at() {
        return Err("recorded_at differs from the checkpoint's".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::conformance::new_event;
    use crate::{
        AppendRequest, EventStore, ExpectedVersion, Idempotency, OpenReport, SledConfig, SledStore,
        StreamWrite, IDEMPOTENCY_TREE, LOG_TREE, SLED_SEGMENT_BYTES,
    };

    fn req(stream: &str, n: usize, key: Option<&str>) -> AppendRequest {
        let events = (0..n).map(|i| new_event("T", &[i as u8])).collect();
        let write = StreamWrite { stream: stream.into(), expected: ExpectedVersion::Any, events };
        let idempotency = key.map(|k| Idempotency { key: k.into(), digest: [k.len() as u8; 32] });
        AppendRequest { writes: vec![write], idempotency, expected_position: None }
    }

    fn config(path: &Path) -> SledConfig {
        SledConfig { index_checkpoint_interval_events: 10, ..SledConfig::new(path) }
    }

    /// Five commits of five events over two streams, keyed "k0".."k4"; closed.
    async fn written(path: &Path) {
        let store = SledStore::open(config(path)).unwrap();
        for i in 0..5 {
            let stream = if i % 2 == 0 { "even" } else { "odd" };
            store.append(req(stream, 5, Some(&format!("k{i}")))).await.unwrap();
        }
        store.close().await.unwrap();
    }

    /// Opens the store and checks it holds `written`'s log: head, versions, a duplicate
    /// answered with its original positions, a stream read.
    async fn reopened(path: &Path) -> OpenReport {
        let store = SledStore::open(config(path)).unwrap();
        assert_eq!(store.head(), 25);
        assert_eq!(store.stream_version("even"), Some(14));
        assert_eq!(store.stream_version("odd"), Some(9));
        let dup = store.append(req("odd", 5, Some("k3"))).await.unwrap();
        assert!(dup.duplicate && (dup.first_position, dup.last_position) == (15, 19), "{dup:?}");
        let odd = store.read_stream("odd", 3, 4).await.unwrap();
        let positions: Vec<_> = odd.iter().map(|e| e.position).collect();
        assert_eq!(positions, vec![8, 9, 15, 16]);
        store.open_report().clone()
    }

    fn raw(path: &Path, f: impl FnOnce(&sled::Db)) {
        let config = sled::Config::new().path(path).segment_size(SLED_SEGMENT_BYTES);
        let db = crate::sled_store::open_waiting(&config).unwrap();
        f(&db);
        db.flush().unwrap();
    }

    #[tokio::test]
    async fn a_valid_checkpoint_is_used_and_nothing_is_scanned() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path()).await;
        let report = reopened(dir.path()).await;
        assert!(report.from_checkpoint && report.events_scanned == 0, "{report:?}");
    }

    #[tokio::test]
    async fn a_missing_checkpoint_means_a_full_scan_and_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path()).await;
        raw(dir.path(), |db| assert!(db.drop_tree(INDEX_TREE).unwrap()));
        let report = reopened(dir.path()).await;
        assert!(!report.from_checkpoint && report.checkpoint_refused.is_none(), "{report:?}");
        assert_eq!(report.events_scanned, 25);
        assert!(reopened(dir.path()).await.from_checkpoint);
    }

    #[tokio::test]
    async fn a_corrupt_checkpoint_is_refused_and_the_log_scanned() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path()).await;
        raw(dir.path(), |db| {
            let tree = db.open_tree(INDEX_TREE).unwrap();
            let mut page = tree.get(page_key(0)).unwrap().unwrap().to_vec();
            page[3] ^= 0x01;
            tree.insert(page_key(0), page).unwrap();
        });
        let report = reopened(dir.path()).await;
        assert!(!report.from_checkpoint && report.events_scanned == 25, "{report:?}");
        assert!(report.checkpoint_refused.as_deref().unwrap().contains("digest"), "{report:?}");
        raw(dir.path(), |db| {
            db.open_tree(INDEX_TREE).unwrap().insert(HEADER_KEY, &[1, 2, 3][..]).unwrap();
        });
        let report = reopened(dir.path()).await;
        assert!(report.checkpoint_refused.is_some() && report.events_scanned == 25, "{report:?}");
    }

    #[tokio::test]
    async fn a_checkpoint_the_log_does_not_match_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path()).await;
        // The checkpoint of another log (same shape, other hashes): refused.
        let other = tempfile::tempdir().unwrap();
        written(other.path()).await;
        let mut foreign = Vec::new();
        raw(other.path(), |db| {
            let tree = db.open_tree(INDEX_TREE).unwrap();
            foreign = tree.iter().map(Result::unwrap).collect();
        });
        raw(dir.path(), |db| {
            let tree = db.open_tree(INDEX_TREE).unwrap();
            foreign.iter().for_each(|(k, v)| drop(tree.insert(k, v).unwrap()));
        });
        let report = reopened(dir.path()).await;
        assert!(report.checkpoint_refused.as_deref().unwrap().contains("hash"), "{report:?}");
        assert_eq!(report.events_scanned, 25);
        // A log shorter than its checkpoint (the last commit gone): refused, the log rules.
        raw(dir.path(), |db| drop(db.open_tree(LOG_TREE).unwrap().remove(20u64.to_be_bytes())));
        let store = SledStore::open(config(dir.path())).unwrap();
        let report = store.open_report();
        assert!(report.checkpoint_refused.as_deref().unwrap().contains("ends at"), "{report:?}");
        assert_eq!((store.head(), report.events_scanned), (20, 20));
    }

    #[tokio::test]
    async fn after_a_crash_only_the_log_after_the_checkpoint_is_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(config(dir.path())).unwrap();
        for i in 0..5 {
            let stream = if i % 2 == 0 { "even" } else { "odd" };
            store.append(req(stream, 5, Some(&format!("k{i}")))).await.unwrap();
        }
        store.crash_on_close();
        drop(store);
        // Checkpoints were written after the commits ending at 10 and 20 (interval 10).
        let report = reopened(dir.path()).await;
        assert!(report.from_checkpoint && report.events_scanned == 5, "{report:?}");
    }

    #[tokio::test]
    async fn idempotency_keys_are_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path()).await;
        raw(dir.path(), |db| {
            db.drop_tree(IDEMPOTENCY_TREE).unwrap();
            db.drop_tree(INDEX_TREE).unwrap();
        });
        let report = reopened(dir.path()).await;
        assert_eq!(report.events_scanned, 25);
    }
}
