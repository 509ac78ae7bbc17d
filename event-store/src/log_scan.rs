//! A raw, read-only scan of a sled store's log, for audits.
//!
//! [`SledStore::open`](crate::SledStore::open) rebuilds its index and **refuses** a log whose
//! positions are not contiguous or whose `prev_hash` links are broken, so a tampered log cannot
//! be audited through the store. [`LogScan`] reads the `log` tree's chunks in key order with the
//! chunk decoder and yields every event it can decode, in stored order, without building an
//! index and without judging links: that is the caller's job ([`crate::ChainVerifier`]).
//!
//! A chunk that does not decode is reported as an `Err(StoreError::Corrupt)` item: at the chunk's
//! key when its header is bad, at the record's position when one of its records is bad (the
//! records before it are yielded first). The scan then goes on with the next chunk.
//!
//! The scan never inserts or removes anything. It opens the database through sled, which takes
//! sled's file lock (a running `accrual serve` holding the log makes the open fail) and may
//! recover its own files as any open does; it does not create a missing database, a missing
//! `log` tree or the format marker.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use crate::envelope::Chunk;
use crate::sled_store::{
    key_position, FORMAT_KEY, LOG_TREE, SLED_SEGMENT_BYTES, STORE_FORMATS_READ,
};
use crate::{Position, RecordedEvent, StoreError};

/// A sled event log opened for a raw scan (see the module docs).
pub struct LogScan {
    path: PathBuf,
    /// Kept open for as long as the tree is read.
    _db: sled::Db,
    /// `None` when the database has no `log` tree (nothing was ever appended).
    log: Option<sled::Tree>,
}

impl std::fmt::Debug for LogScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogScan").field("path", &self.path).finish_non_exhaustive()
    }
}

impl LogScan {
    /// Opens the sled database of a [`crate::SledStore`] at `path` for scanning. Fails if there
    /// is no sled database there (nothing is created), if another process holds it, or if its
    /// format marker names an unsupported store format. A missing marker is tolerated: the
    /// chunks carry their own format byte.
    pub fn open(path: impl AsRef<Path>) -> Result<LogScan, StoreError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display();
        // sled's files: `conf` (its storage parameters) and `db`. Checked first, so a mistyped
        // path is reported instead of sled creating an empty database there.
        if !path.join("conf").is_file() || !path.join("db").is_file() {
            return Err(StoreError::Unavailable(format!("no sled event log at {shown}")));
        }
        let config = sled::Config::new().path(&path).segment_size(SLED_SEGMENT_BYTES);
        let db = crate::sled_store::open_waiting(&config).map_err(|e| match e {
            e if crate::sled_store::is_lock_held(&e) => StoreError::Unavailable(format!(
                "the event log at {shown} is in use by another process \
                 (stop `accrual serve` first): {e}"
            )),
            other => {
                StoreError::Unavailable(format!("cannot open the event log at {shown}: {other}"))
            }
        })?;
        match db.get(FORMAT_KEY).map_err(io_error)? {
            Some(v) if v.len() != 1 || !STORE_FORMATS_READ.contains(&v[0]) => {
                return Err(StoreError::Unavailable(format!("unsupported store format {v:?}")))
            }
            _ => {}
        }
        let has_log = db.tree_names().iter().any(|name| name.as_ref() == LOG_TREE.as_bytes());
        let log = if has_log { Some(db.open_tree(LOG_TREE).map_err(io_error)?) } else { None };
        Ok(LogScan { path, _db: db, log })
    }

    /// The position one past the last event, as the last chunk's header claims it (`Some(0)` for
    /// an empty log, `None` if that header does not decode). Cheap (one key read); meant for
    /// progress reports, not to be trusted: only a full scan establishes what the log holds.
    pub fn claimed_end(&self) -> Result<Option<Position>, StoreError> {
        let Some(log) = &self.log else { return Ok(Some(0)) };
        let Some((key, value)) = log.last().map_err(io_error)? else { return Ok(Some(0)) };
        let parsed = key_position(&key).and_then(|first| Chunk::parse(first, &value));
        Ok(parsed.ok().map(|view| view.end()))
    }

    /// Every stored event in key order, then position order within a chunk (see the module docs
    /// for how undecodable chunks are reported).
    pub fn events(&self) -> ScanEvents {
        ScanEvents {
            chunks: self.log.as_ref().map(sled::Tree::iter),
            pending: VecDeque::new(),
            next: 0,
        }
    }
}

fn io_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("storage error: {e}"))
}

/// Iterator of [`LogScan::events`].
pub struct ScanEvents {
    /// `None` once exhausted or after a storage error.
    chunks: Option<sled::Iter>,
    pending: VecDeque<Result<RecordedEvent, StoreError>>,
    /// One past the last position a decoded chunk header covered (where the next chunk should
    /// start): the position reported for a chunk key that is not a position at all.
    next: Position,
}

impl ScanEvents {
    /// Decodes one chunk into `pending`: its events up to the first undecodable record, then
    /// that record's error.
    fn load(&mut self, key: &[u8], value: &[u8]) {
        let corrupt_key = |detail: String| StoreError::Corrupt { position: self.next, detail };
        let first = match key_position(key) {
            Ok(first) => first,
            Err(e) => return self.pending.push_back(Err(corrupt_key(format!("log key: {e}")))),
        };
        let in_chunk = |e: StoreError| match e {
            StoreError::Corrupt { position, detail } => {
                StoreError::Corrupt { position, detail: format!("chunk {first}: {detail}") }
            }
            other => other,
        };
        let view = match Chunk::parse(first, value) {
            Ok(view) => view,
            Err(e) => return self.pending.push_back(Err(in_chunk(e))),
        };
        self.next = view.end();
        let mut records = view.records();
        loop {
            let raw = match records.next_raw() {
                Ok(Some(raw)) => raw,
                Ok(None) => return,
                Err(e) => return self.pending.push_back(Err(in_chunk(e))),
            };
            match raw.decode() {
                Ok(env) => self.pending.push_back(Ok(env.to_owned(raw.hash))),
                Err(e) => return self.pending.push_back(Err(in_chunk(e))),
            }
        }
    }
}

impl Iterator for ScanEvents {
    type Item = Result<RecordedEvent, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            match self.chunks.as_mut()?.next()? {
                Ok((key, value)) => self.load(&key, &value),
                Err(e) => {
                    self.chunks = None;
                    return Some(Err(io_error(e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::new_event;
    use crate::envelope::encode_chunk;
    use crate::{
        verify_chain, AppendRequest, BreakKind, EventStore, ExpectedVersion, SledConfig, SledStore,
        StreamWrite, GENESIS_HASH,
    };

    fn req(stream: &str, n: usize) -> AppendRequest {
        let events = (0..n).map(|i| new_event("T", &[i as u8])).collect();
        let write = StreamWrite { stream: stream.into(), expected: ExpectedVersion::Any, events };
        AppendRequest { writes: vec![write], idempotency: None, expected_position: None }
    }

    /// A store of three commits (chunks at 0, 3 and 5; 6 events), closed; returns its events.
    async fn written(path: &Path) -> Vec<RecordedEvent> {
        let store = SledStore::open(SledConfig::new(path)).unwrap();
        for (stream, n) in [("a", 3), ("b", 2), ("a", 1)] {
            store.append(req(stream, n)).await.unwrap();
        }
        let events = store.read_all(0, 100).await.unwrap();
        store.close().await.unwrap();
        events
    }

    fn scanned(path: &Path) -> Vec<Result<RecordedEvent, StoreError>> {
        LogScan::open(path).unwrap().events().collect()
    }

    /// Rewrites the log tree directly (the store must be closed).
    fn tamper(path: &Path, f: impl FnOnce(&sled::Tree)) {
        let config = sled::Config::new().path(path).segment_size(SLED_SEGMENT_BYTES);
        let db = crate::sled_store::open_waiting(&config).unwrap();
        f(&db.open_tree(LOG_TREE).unwrap());
        db.flush().unwrap();
    }

    #[tokio::test]
    async fn scan_yields_the_log_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        let events = written(dir.path()).await;
        let scan = LogScan::open(dir.path()).unwrap();
        assert_eq!(scan.claimed_end().unwrap(), Some(6));
        let got: Vec<_> = scan.events().map(Result::unwrap).collect();
        assert_eq!(got, events);
        drop(scan);
        // Still a healthy store afterwards: the scan wrote nothing.
        let store = SledStore::open(SledConfig::new(dir.path())).unwrap();
        assert_eq!(store.head(), 6);
    }

    #[tokio::test]
    async fn a_log_the_store_refuses_is_still_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let events = written(dir.path()).await;
        tamper(dir.path(), |log| drop(log.remove(3u64.to_be_bytes()).unwrap()));
        let r = SledStore::open(SledConfig::new(dir.path()));
        assert!(matches!(r, Err(StoreError::Corrupt { position: 5, .. })), "{:?}", r.err());
        let got: Vec<_> = scanned(dir.path()).into_iter().map(Result::unwrap).collect();
        let positions: Vec<_> = got.iter().map(|e| e.position).collect();
        assert_eq!(positions, vec![0, 1, 2, 5]);
        let broken = verify_chain(got, GENESIS_HASH).unwrap_err();
        assert_eq!(broken.kind, BreakKind::Position { expected: 3, found: 5 });
        assert_eq!(events.len(), 6);
    }

    #[tokio::test]
    async fn undecodable_records_and_chunks_are_items_at_their_position() {
        let dir = tempfile::tempdir().unwrap();
        let events = written(dir.path()).await;
        tamper(dir.path(), |log| {
            // Chunk 0: its second record claims position 7 (a record-level error at 1).
            let mut bad = events[1].clone();
            bad.position = 7;
            let mut value = encode_chunk(&events[..1]);
            value[9..13].copy_from_slice(&3u32.to_be_bytes());
            let tail = encode_chunk(&[bad]);
            value.extend_from_slice(&tail[13..]);
            log.insert(0u64.to_be_bytes(), value).unwrap();
            // Chunk 3: a header that does not match its key.
            log.insert(3u64.to_be_bytes(), encode_chunk(&events[4..5])).unwrap();
        });
        let got = scanned(dir.path());
        assert_eq!(got[0].as_ref().unwrap(), &events[0]);
        match &got[1] {
            Err(StoreError::Corrupt { position: 1, detail }) => {
                assert!(detail.starts_with("chunk 0: "), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&got[2], Err(StoreError::Corrupt { position: 3, .. })), "{:?}", got[2]);
        assert_eq!(got[3].as_ref().unwrap(), &events[5]);
        assert_eq!(got.len(), 4);
    }

    #[tokio::test]
    async fn no_database_no_tree_and_a_busy_database() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = LogScan::open(&missing).unwrap_err();
        assert!(err.to_string().contains("no sled event log"), "{err}");
        assert!(!missing.exists(), "nothing created");

        let empty = dir.path().join("empty");
        drop(sled::Config::new().path(&empty).segment_size(SLED_SEGMENT_BYTES).open().unwrap());
        let scan = LogScan::open(&empty).unwrap();
        assert_eq!((scan.claimed_end().unwrap(), scan.events().count()), (Some(0), 0));
        drop(scan);

        let store = SledStore::open(SledConfig::new(dir.path().join("busy"))).unwrap();
        let err = LogScan::open(dir.path().join("busy")).unwrap_err();
        assert!(err.to_string().contains("in use by another process"), "{err}");
        drop(store);
    }
}
