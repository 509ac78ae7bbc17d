//! A node's view of the log stream: the same in-memory [`Index`] the sled backend rebuilds at
//! open, fed chunk by chunk in stream-revision order (whoever wrote them), plus each chunk's
//! event id and `$all` position, and a small cache of recent chunk bytes.

use std::collections::VecDeque;
use std::sync::Arc;

use uuid::Uuid;

use super::log::StoredChunk;
use super::mapping::LogPosition;
use crate::envelope::Chunk;
use crate::index::Index;
use crate::{Position, StoreError};

/// Recent chunks kept in memory (followers of the head read them without a round trip).
pub const RECENT_CHUNKS_MAX: usize = 256;
/// Bound of the recent-chunk cache in bytes.
pub const RECENT_BYTES_MAX: usize = 16 << 20;

/// What [`Mirror::ingest`] did with a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingest {
    /// The chunk was the next one; the index now holds it.
    Applied,
    /// Already known (delivered twice, e.g. by the writer and the follower).
    Known,
    /// A later chunk arrived before the next one: read the missing ones first.
    Gap { next_revision: u64 },
}

#[derive(Default)]
pub struct Mirror {
    pub(crate) index: Index,
    /// First position of every chunk, by revision (the index does not keep chunk positions).
    chunks: Vec<Position>,
    ids: Vec<Uuid>,
    positions: Vec<Option<LogPosition>>,
    recent: VecDeque<(Position, Arc<[u8]>)>,
    recent_bytes: usize,
}

impl Mirror {
    /// Revision of the next chunk expected from the log stream (= chunks known).
    pub fn next_revision(&self) -> u64 {
        self.ids.len() as u64
    }

    /// Next Accrual position (= events known).
    pub fn head(&self) -> Position {
        self.index.head()
    }

    /// The event id of the chunk at `revision`, if known.
    pub fn chunk_id(&self, revision: u64) -> Option<Uuid> {
        usize::try_from(revision).ok().and_then(|r| self.ids.get(r)).copied()
    }

    /// The `$all` position of the chunk at `revision`, if known and reported.
    pub fn log_position(&self, revision: u64) -> Option<LogPosition> {
        usize::try_from(revision).ok().and_then(|r| self.positions.get(r)).copied().flatten()
    }

    /// The last known `$all` position (a checkpoint for tools following `$all`).
    pub fn last_log_position(&self) -> Option<LogPosition> {
        self.positions.iter().rev().find_map(|p| *p)
    }

    /// Revision (ordinal) of the chunk starting at `first`, if one does.
    pub(crate) fn chunk_ordinal(&self, first: Position) -> Option<usize> {
        self.chunks.binary_search(&first).ok()
    }

    /// Splits position ranges (within the head) into per-chunk slices.
    pub(crate) fn slices(&self, ranges: &[std::ops::Range<Position>]) -> Vec<crate::index::Slice> {
        crate::index::slices(&self.chunks, self.index.head(), ranges)
    }

    /// Bytes of the chunk starting at `first`, if cached.
    pub fn cached(&self, first: Position) -> Option<Arc<[u8]>> {
        self.recent.iter().rev().find(|(f, _)| *f == first).map(|(_, b)| b.clone())
    }

    /// Adds the chunk if it is the next one. An `Err` means the stream holds something that is
    /// not a valid continuation of the log (bad encoding, broken link, wrong positions): the
    /// mirror may then be partly updated and must not be used for writing again.
    pub fn ingest(&mut self, chunk: &StoredChunk) -> Result<Ingest, StoreError> {
        let next = self.next_revision();
        if chunk.revision < next {
            return Ok(Ingest::Known);
        }
        if chunk.revision > next {
            return Ok(Ingest::Gap { next_revision: next });
        }
        let first = self.index.head();
        let view = Chunk::parse(first, &chunk.bytes).map_err(|e| at_revision(e, next))?;
        self.index.begin_chunk(&view)?;
        self.chunks.push(first);
        let mut records = view.records();
        while let Some(raw) = records.next_raw()? {
            self.index.observe(&raw.decode()?, raw.hash)?;
        }
        self.ids.push(chunk.event_id);
        self.positions.push(chunk.log_position);
        self.remember(first, &chunk.bytes);
        Ok(Ingest::Applied)
    }

    fn remember(&mut self, first: Position, bytes: &[u8]) {
        self.recent.push_back((first, Arc::from(bytes)));
        self.recent_bytes += bytes.len();
        while self.recent.len() > RECENT_CHUNKS_MAX
            || (self.recent_bytes > RECENT_BYTES_MAX && self.recent.len() > 1)
        {
            let Some((_, old)) = self.recent.pop_front() else { break };
            self.recent_bytes -= old.len();
        }
    }
}

fn at_revision(err: StoreError, revision: u64) -> StoreError {
    match err {
        StoreError::Corrupt { position, detail } => StoreError::Corrupt {
            position,
            detail: format!("log stream revision {revision}: {detail}"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::new_event;
    use crate::envelope::encode_chunk;
    use crate::{AppendRequest, ExpectedVersion, StreamWrite};
    use crate::{EventStore, MemoryStore};

    async fn sample_log(n: usize) -> Vec<crate::RecordedEvent> {
        let store = MemoryStore::new();
        for i in 0..n {
            let ev = new_event("T", format!("e{i}").as_bytes());
            let w = StreamWrite {
                stream: format!("s{}", i % 2),
                expected: ExpectedVersion::Any,
                events: vec![ev],
            };
            store
                .append(AppendRequest {
                    writes: vec![w],
                    idempotency: None,
                    expected_position: None,
                })
                .await
                .unwrap();
        }
        store.read_all(0, usize::MAX).await.unwrap()
    }

    fn chunk(revision: u64, events: &[crate::RecordedEvent]) -> StoredChunk {
        let id = Uuid::from_u128(u128::from(revision) + 1);
        StoredChunk { revision, event_id: id, bytes: encode_chunk(events), log_position: None }
    }

    #[tokio::test]
    async fn chunks_are_ingested_in_revision_order_only() {
        let log = sample_log(5).await;
        let mut m = Mirror::default();
        assert_eq!(m.ingest(&chunk(1, &log[2..5])).unwrap(), Ingest::Gap { next_revision: 0 });
        assert_eq!(m.ingest(&chunk(0, &log[0..2])).unwrap(), Ingest::Applied);
        assert_eq!(m.ingest(&chunk(0, &log[0..2])).unwrap(), Ingest::Known);
        assert_eq!(m.ingest(&chunk(1, &log[2..5])).unwrap(), Ingest::Applied);
        assert_eq!((m.next_revision(), m.head()), (2, 5));
        assert_eq!(m.index.stream_version("s0"), Some(2));
        assert_eq!(m.chunk_id(1), Some(Uuid::from_u128(2)));
        assert_eq!(m.chunk_ordinal(2), Some(1));
        assert!(m.cached(2).is_some() && m.cached(1).is_none());
    }

    #[tokio::test]
    async fn a_chunk_that_does_not_continue_the_log_is_refused() {
        let log = sample_log(4).await;
        let mut m = Mirror::default();
        let skipped = m.ingest(&chunk(0, &log[1..3])).unwrap_err();
        assert!(skipped.to_string().contains("revision 0"), "{skipped}");
        let mut m = Mirror::default();
        m.ingest(&chunk(0, &log[0..2])).unwrap();
        let mut relinked = log[2..4].to_vec();
        relinked[0].prev_hash = [7; 32];
        let err = m.ingest(&chunk(1, &relinked)).unwrap_err();
        assert!(err.to_string().contains("prev_hash"), "{err}");
        let garbage = StoredChunk {
            revision: 0,
            event_id: Uuid::nil(),
            bytes: vec![9; 3],
            log_position: None,
        };
        assert!(matches!(Mirror::default().ingest(&garbage), Err(StoreError::Corrupt { .. })));
    }

    #[tokio::test]
    async fn the_recent_cache_is_bounded() {
        let log = sample_log(RECENT_CHUNKS_MAX + 10).await;
        let mut m = Mirror::default();
        for (i, e) in log.iter().enumerate() {
            m.ingest(&chunk(i as u64, std::slice::from_ref(e))).unwrap();
        }
        assert_eq!(m.recent.len(), RECENT_CHUNKS_MAX);
        assert!(m.cached(0).is_none() && m.cached(log.len() as u64 - 1).is_some());
        assert_eq!(m.recent_bytes, m.recent.iter().map(|(_, b)| b.len()).sum::<usize>());
    }
}
