//! The in-memory index and the read path built on it.
//!
//! The index holds what appends need and nothing that grows with the number of events:
//!
//! * streams: stream → [`StreamHead`] (its first position and its last version), 16 bytes plus
//!   the name per stream, whatever the number of events or writes;
//! * head, last hash, last `recorded_at`;
//! * idempotency: key → digest and positions, **in memory only for the backends that keep it
//!   there** (the in-memory and EventStoreDB backends); the sled backend keeps it in a sled tree
//!   and looks keys up through [`IdemStore`].
//!
//! Chunks are found by position in the log itself (the chunk holding position `p` is the one
//! with the greatest first position ≤ `p`: [`ChunkLog::chunk_at`]). `read_stream` scans the log
//! forward from the stream's first position, decoding only the stream name of other streams'
//! events, and stops at the stream's last version (see [`read_stream_scan`] for the cost).

use std::collections::HashMap;
use std::ops::Range;

use crate::envelope::{canonical_stream, Chunk, EnvelopeRef, GENESIS_HASH};
use crate::{Committed, Position, RecordedEvent, StoreError};

/// What the index keeps per stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamHead {
    /// Position of the stream's version 0 (where [`read_stream_scan`] starts).
    pub first_position: Position,
    pub last_version: u64,
}

/// What an idempotency key stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdemEntry {
    pub digest: [u8; 32],
    pub first: Position,
    pub last: Position,
}

impl IdemEntry {
    pub(crate) fn duplicate(&self) -> Committed {
        Committed { first_position: self.first, last_position: self.last, duplicate: true }
    }

    /// Stored form (sled backend): digest, first, last (48 bytes).
    pub(crate) fn encode(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[..32].copy_from_slice(&self.digest);
        out[32..40].copy_from_slice(&self.first.to_be_bytes());
        out[40..].copy_from_slice(&self.last.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<IdemEntry> {
        let bytes: &[u8; 48] = bytes.try_into().ok()?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&bytes[..32]);
        let first = Position::from_be_bytes(bytes[32..40].try_into().ok()?);
        let last = Position::from_be_bytes(bytes[40..].try_into().ok()?);
        (first <= last).then_some(IdemEntry { digest, first, last })
    }
}

/// Where the planner looks idempotency keys up.
pub(crate) trait IdemStore {
    fn idempotency(&self, key: &str) -> Result<Option<IdemEntry>, StoreError>;
}

/// Everything a planned commit changes in the index (applied only after the flush).
#[derive(Debug)]
pub(crate) struct Delta {
    pub first_position: Position,
    /// First position of every stored chunk of the commit, ascending.
    pub chunks: Vec<Position>,
    pub end_position: Position,
    /// (stream, first version, first position, number of events)
    pub runs: Vec<(String, u64, Position, u64)>,
    pub idempotency: Vec<(String, IdemEntry)>,
    pub last_hash: [u8; 32],
    pub last_recorded_at: i64,
}

#[cfg(feature = "esdb")] // the EventStoreDB backend's read path
/// A contiguous piece of one chunk to read: positions `[first, first + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slice {
    pub chunk: Position,
    pub first: Position,
    pub len: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Index {
    head: Position,
    last_hash: [u8; 32],
    last_recorded_at: i64,
    streams: HashMap<Box<str>, StreamHead>,
    /// `None`: idempotency is kept elsewhere (the sled backend's tree).
    idempotency: Option<HashMap<String, IdemEntry>>,
}

impl Default for Index {
    /// An empty index that keeps idempotency in memory.
    fn default() -> Self {
        Index {
            head: 0,
            last_hash: GENESIS_HASH,
            last_recorded_at: i64::MIN,
            streams: HashMap::new(),
            idempotency: Some(HashMap::new()),
        }
    }
}

impl Index {
    /// An empty index whose backend keeps idempotency itself.
    pub(crate) fn without_idempotency() -> Self {
        Index { idempotency: None, ..Index::default() }
    }

    /// An index restored from a checkpoint (sled backend; idempotency kept on disk).
    pub(crate) fn restored(
        head: Position,
        last_hash: [u8; 32],
        last_recorded_at: i64,
        streams: HashMap<Box<str>, StreamHead>,
    ) -> Self {
        Index { head, last_hash, last_recorded_at, streams, idempotency: None }
    }

    pub(crate) fn head(&self) -> Position {
        self.head
    }

    pub(crate) fn last_hash(&self) -> [u8; 32] {
        self.last_hash
    }

    pub(crate) fn last_recorded_at(&self) -> i64 {
        self.last_recorded_at
    }

    pub(crate) fn stream_count(&self) -> usize {
        self.streams.len()
    }

    pub(crate) fn streams(&self) -> &HashMap<Box<str>, StreamHead> {
        &self.streams
    }

    pub(crate) fn stream(&self, stream: &str) -> Option<StreamHead> {
        self.streams.get(stream).copied()
    }

    pub(crate) fn stream_version(&self, stream: &str) -> Option<u64> {
        self.streams.get(stream).map(|s| s.last_version)
    }

    /// Applies a flushed commit. Asserts the log invariants.
    pub(crate) fn apply(&mut self, delta: Delta) {
        assert_eq!(delta.first_position, self.head, "commit must start at head");
        assert!(delta.end_position > delta.first_position, "a commit holds events");
        assert!(delta.last_recorded_at >= self.last_recorded_at, "recorded_at non-decreasing");
        assert_eq!(delta.chunks.first(), Some(&delta.first_position), "first chunk at head");
        assert!(delta.chunks.windows(2).all(|w| w[0] < w[1]), "chunks ascending");
        assert!(delta.chunks.last() < Some(&delta.end_position), "chunks hold events");
        for (stream, version, position, len) in delta.runs {
            debug_assert!(position >= self.head && position + len <= delta.end_position);
            assert!(len > 0, "a run holds events");
            match self.streams.get_mut(stream.as_str()) {
                Some(head) => {
                    assert_eq!(version, head.last_version + 1, "stream versions contiguous");
                    head.last_version += len;
                }
                None => {
                    assert_eq!(version, 0, "a stream starts at version 0");
                    let head = StreamHead { first_position: position, last_version: len - 1 };
                    self.streams.insert(stream.into_boxed_str(), head);
                }
            }
        }
        if let Some(map) = &mut self.idempotency {
            map.extend(delta.idempotency);
        }
        self.head = delta.end_position;
        self.last_hash = delta.last_hash;
        self.last_recorded_at = delta.last_recorded_at;
    }

    /// Rebuild: checks a chunk about to be observed event by event starts at the head.
    pub(crate) fn begin_chunk(&self, chunk: &Chunk<'_>) -> Result<(), StoreError> {
        if chunk.first != self.head {
            let detail =
                format!("chunk starts at {} but the log ends at {}", chunk.first, self.head);
            return Err(StoreError::Corrupt { position: chunk.first, detail });
        }
        Ok(())
    }

    /// Rebuild: checks one stored event against the index and records it.
    pub(crate) fn observe(
        &mut self,
        env: &EnvelopeRef<'_>,
        hash: [u8; 32],
    ) -> Result<(), StoreError> {
        let corrupt = |detail: String| Err(StoreError::Corrupt { position: env.position, detail });
        if env.position != self.head {
            return corrupt(format!("expected position {}", self.head));
        }
        if env.prev_hash != self.last_hash {
            return corrupt("prev_hash does not match the previous event's hash".into());
        }
        if env.recorded_at_us < self.last_recorded_at {
            return corrupt("recorded_at decreases".into());
        }
        match self.streams.get_mut(env.stream) {
            Some(head) if env.stream_version == head.last_version + 1 => {
                head.last_version = env.stream_version
            }
            Some(head) => {
                let last = head.last_version;
                return corrupt(format!("stream version {} follows {last}", env.stream_version));
            }
            None if env.stream_version == 0 => {
                let head = StreamHead { first_position: env.position, last_version: 0 };
                self.streams.insert(env.stream.into(), head);
            }
            None => {
                return corrupt(format!(
                    "stream {:?} starts at version {}",
                    env.stream, env.stream_version
                ))
            }
        }
        if let (Some(map), Some(key), Some(digest)) =
            (&mut self.idempotency, env.idempotency_key, env.idempotency_digest)
        {
            match map.get_mut(key) {
                Some(entry) => entry.last = env.position,
                None => {
                    let entry = IdemEntry { digest, first: env.position, last: env.position };
                    map.insert(key.to_owned(), entry);
                }
            }
        }
        self.head += 1;
        self.last_hash = hash;
        self.last_recorded_at = env.recorded_at_us;
        Ok(())
    }

    /// Positions `[from, from + max_count)` clipped to the head.
    pub(crate) fn all_range(&self, from: Position, max_count: usize) -> Range<Position> {
        let end = from.saturating_add(max_count as u64).min(self.head);
        from..end.max(from)
    }
}

impl IdemStore for Index {
    fn idempotency(&self, key: &str) -> Result<Option<IdemEntry>, StoreError> {
        Ok(self.idempotency.as_ref().and_then(|m| m.get(key)).cloned())
    }
}

#[cfg(feature = "esdb")] // the EventStoreDB backend's read path
/// Splits position ranges (each within `[0, head)`) into per-chunk slices, given the first
/// position of every chunk in ascending order (a backend that numbers its chunks, such as the
/// EventStoreDB one, keeps that list).
pub(crate) fn slices(
    chunks: &[Position],
    head: Position,
    ranges: &[Range<Position>],
) -> Vec<Slice> {
    let mut out = Vec::new();
    for range in ranges {
        let mut at = range.start;
        while at < range.end {
            let idx = chunks.partition_point(|&s| s <= at) - 1;
            let chunk_end = chunks.get(idx + 1).copied().unwrap_or(head);
            let end = chunk_end.min(range.end);
            out.push(Slice { chunk: chunks[idx], first: at, len: end - at });
            at = end;
        }
    }
    out
}

/// Where stored chunks are read from.
pub(crate) trait ChunkLog {
    type Bytes: AsRef<[u8]>;
    /// The chunk holding `position`: the one with the greatest first position ≤ `position`
    /// (its first position and its stored value); `None` if there is none.
    fn chunk_at(&self, position: Position) -> Result<Option<(Position, Self::Bytes)>, StoreError>;
}

fn missing(position: Position) -> StoreError {
    StoreError::Corrupt { position, detail: "chunk missing".into() }
}

/// Calls `visit` on every stored chunk overlapping `[from, end)`, in order (each chunk fetched
/// once; the next chunk starts where the previous one ends). Bounded by the range.
fn for_chunks<L: ChunkLog>(
    log: &L,
    range: Range<Position>,
    mut visit: impl FnMut(&Chunk<'_>) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let mut at = range.start;
    while at < range.end {
        let (first, bytes) = log.chunk_at(at)?.ok_or_else(|| missing(at))?;
        let chunk = Chunk::parse(first, bytes.as_ref())?;
        if chunk.end() <= at {
            return Err(missing(at));
        }
        if !visit(&chunk)? {
            return Ok(());
        }
        at = chunk.end();
    }
    Ok(())
}

/// Events at positions `[range.start, range.end)` (which must lie below the head).
pub(crate) fn read_range<L: ChunkLog>(
    log: &L,
    range: Range<Position>,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let total = usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(total.min(1 << 20));
    let (start, end) = (range.start, range.end);
    for_chunks(log, range, |chunk| {
        let mut records = chunk.records();
        records.skip_to(start)?;
        while let Some(raw) = records.next_raw()? {
            if raw.position >= end {
                break;
            }
            out.push(raw.decode()?.to_owned(raw.hash));
        }
        Ok(true)
    })?;
    if out.len() != total {
        let detail = format!("read {} events where the index holds {total}", out.len());
        return Err(StoreError::Corrupt { position: start, detail });
    }
    Ok(out)
}

#[cfg(feature = "esdb")] // the EventStoreDB backend's read path
/// Reads slices (in order), fetching each chunk once even if several slices share it.
pub(crate) fn read_slices<L: ChunkLog>(
    log: &L,
    slices: &[Slice],
) -> Result<Vec<RecordedEvent>, StoreError> {
    let total: u64 = slices.iter().map(|s| s.len).sum();
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0).min(1 << 20));
    let mut cached: Option<(Position, L::Bytes)> = None;
    for slice in slices {
        if cached.as_ref().is_none_or(|(first, _)| *first != slice.chunk) {
            let found = log.chunk_at(slice.chunk)?.filter(|(first, _)| *first == slice.chunk);
            cached = Some(found.ok_or_else(|| missing(slice.chunk))?);
        }
        let bytes = cached.as_ref().map(|(_, b)| b.as_ref()).unwrap_or_default();
        let chunk = Chunk::parse(slice.chunk, bytes)?;
        let mut records = chunk.records();
        records.skip_to(slice.first)?;
        for _ in 0..slice.len {
            let Some(raw) = records.next_raw()? else {
                let detail = format!("chunk ends at {} before the index says", chunk.end());
                return Err(StoreError::Corrupt { position: slice.chunk, detail });
            };
            out.push(raw.decode()?.to_owned(raw.hash));
        }
    }
    Ok(out)
}

/// `read_stream` by scanning the log: events of `stream` with version in
/// `[from_version, from_version + max_count)`, in version order.
///
/// Starts at the stream's first position and stops once it has the last wanted version (at the
/// latest at the stream's last version, never beyond `head`), so its cost is the number of
/// events (of every stream) between the stream's first position and its last wanted event. For
/// other streams' events it reads only the stream name (no full decode, no allocation). This is
/// a tools-and-tests path (the serving path reads the log with `read_all`), see the crate docs.
pub(crate) fn read_stream_scan<L: ChunkLog>(
    log: &L,
    stream: &str,
    head: StreamHead,
    log_head: Position,
    from_version: u64,
    max_count: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    if max_count == 0 || from_version > head.last_version {
        return Ok(Vec::new());
    }
    let wanted_last = from_version.saturating_add(max_count as u64 - 1).min(head.last_version);
    let mut out = Vec::new();
    for_chunks(log, head.first_position..log_head, |chunk| {
        let mut records = chunk.records();
        records.skip_to(head.first_position)?;
        while let Some(raw) = records.next_raw()? {
            let corrupt = |detail: String| StoreError::Corrupt { position: raw.position, detail };
            if canonical_stream(raw.canonical).map_err(corrupt)? != stream.as_bytes() {
                continue;
            }
            let env = raw.decode()?;
            if env.stream_version < from_version {
                continue;
            }
            out.push(env.to_owned(raw.hash));
            if env.stream_version >= wanted_last {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(first: Position, runs: &[(&str, u64, u64)]) -> Delta {
        let mut at = first;
        let runs: Vec<_> = runs
            .iter()
            .map(|&(s, v, len)| {
                at += len;
                (s.to_owned(), v, at - len, len)
            })
            .collect();
        let end_position = at;
        let (last_hash, last_recorded_at) = ([1; 32], 0);
        Delta {
            first_position: first,
            chunks: vec![first],
            end_position,
            runs,
            idempotency: vec![],
            last_hash,
            last_recorded_at,
        }
    }

    #[test]
    fn streams_keep_their_first_position_and_last_version_and_ranges_split_into_slices() {
        let mut index = Index::default();
        index.apply(delta(0, &[("a", 0, 3), ("b", 0, 2)]));
        index.apply(delta(5, &[("b", 2, 1), ("a", 3, 2)]));
        index.apply(delta(8, &[("a", 5, 1)]));
        assert_eq!(index.stream("a"), Some(StreamHead { first_position: 0, last_version: 5 }));
        assert_eq!(index.stream("b"), Some(StreamHead { first_position: 3, last_version: 2 }));
        assert_eq!(index.stream_count(), 2);
        #[cfg(feature = "esdb")]
        {
            let slices = slices(&[0, 5, 8], index.head(), std::slice::from_ref(&(3..9)));
            let expected = [
                Slice { chunk: 0, first: 3, len: 2 },
                Slice { chunk: 5, first: 5, len: 3 },
                Slice { chunk: 8, first: 8, len: 1 },
            ];
            assert_eq!(slices, expected);
        }
        assert_eq!(index.all_range(7, usize::MAX), 7..9);
        assert_eq!(index.all_range(20, 5), 20..20);
    }

    #[test]
    #[should_panic(expected = "commit must start at head")]
    fn a_gap_is_refused() {
        let mut index = Index::default();
        index.apply(delta(1, &[("a", 0, 1)]));
    }

    #[test]
    #[should_panic(expected = "stream versions contiguous")]
    fn a_version_gap_is_refused() {
        let mut index = Index::default();
        index.apply(delta(0, &[("a", 0, 1)]));
        index.apply(delta(1, &[("a", 2, 1)]));
    }

    #[test]
    fn idempotency_entries_round_trip_and_refuse_bad_bytes() {
        let entry = IdemEntry { digest: [7; 32], first: 3, last: 9 };
        assert_eq!(IdemEntry::decode(&entry.encode()), Some(entry.clone()));
        assert_eq!(IdemEntry::decode(&entry.encode()[..47]), None);
        let mut backwards = entry.encode();
        backwards[32..40].copy_from_slice(&10u64.to_be_bytes());
        assert_eq!(IdemEntry::decode(&backwards), None);
    }
}
