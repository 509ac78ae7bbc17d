//! The in-memory index, rebuilt from the log at open, and the read path built on it.
//!
//! * streams: stream → runs of `(first version, first position, length)`; one run covers the
//!   events a write appended to one stream (their versions and positions are both contiguous),
//!   and adjacent runs merge, so memory grows with writes, not with events;
//! * chunks: first position of every stored chunk, ascending (to find the chunk of a position);
//! * idempotency: key → digest and the positions the original request got;
//! * head, last hash, last `recorded_at`.

use std::collections::HashMap;
use std::ops::Range;

use crate::envelope::{ChunkView, EnvelopeRef, GENESIS_HASH};
use crate::{Committed, Position, RecordedEvent, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    version: u64,
    position: Position,
    len: u64,
}

impl Run {
    fn last_version(&self) -> u64 {
        self.version + self.len - 1
    }
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

/// A contiguous piece of one chunk to read: positions `[first, first + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slice {
    pub chunk: Position,
    pub first: Position,
    pub len: u64,
}

#[derive(Debug)]
pub(crate) struct Index {
    head: Position,
    last_hash: [u8; 32],
    last_recorded_at: i64,
    streams: HashMap<String, Vec<Run>>,
    idempotency: HashMap<String, IdemEntry>,
    chunks: Vec<Position>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            head: 0,
            last_hash: GENESIS_HASH,
            last_recorded_at: i64::MIN,
            streams: HashMap::new(),
            idempotency: HashMap::new(),
            chunks: Vec::new(),
        }
    }
}

impl Index {
    pub(crate) fn head(&self) -> Position {
        self.head
    }

    pub(crate) fn last_hash(&self) -> [u8; 32] {
        self.last_hash
    }

    pub(crate) fn last_recorded_at(&self) -> i64 {
        self.last_recorded_at
    }

    pub(crate) fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Ordinal (0-based, in log order) of the stored chunk starting at `first`, if one does.
    pub(crate) fn chunk_ordinal(&self, first: Position) -> Option<usize> {
        self.chunks.binary_search(&first).ok()
    }

    pub(crate) fn stream_count(&self) -> usize {
        self.streams.len()
    }

    pub(crate) fn stream_version(&self, stream: &str) -> Option<u64> {
        self.streams.get(stream).and_then(|runs| runs.last()).map(Run::last_version)
    }

    pub(crate) fn idempotency(&self, key: &str) -> Option<&IdemEntry> {
        self.idempotency.get(key)
    }

    /// Applies a flushed commit. Asserts the log invariants.
    pub(crate) fn apply(&mut self, delta: Delta) {
        assert_eq!(delta.first_position, self.head, "commit must start at head");
        assert!(delta.end_position > delta.first_position, "a commit holds events");
        assert!(delta.last_recorded_at >= self.last_recorded_at, "recorded_at non-decreasing");
        assert_eq!(delta.chunks.first(), Some(&delta.first_position), "first chunk at head");
        assert!(delta.chunks.windows(2).all(|w| w[0] < w[1]), "chunks ascending");
        assert!(delta.chunks.last() < Some(&delta.end_position), "chunks hold events");
        self.chunks.extend(delta.chunks);
        for (stream, version, position, len) in delta.runs {
            debug_assert!(position >= self.head && position + len <= delta.end_position);
            self.push_run(stream, Run { version, position, len });
        }
        self.idempotency.extend(delta.idempotency);
        self.head = delta.end_position;
        self.last_hash = delta.last_hash;
        self.last_recorded_at = delta.last_recorded_at;
    }

    fn push_run(&mut self, stream: String, run: Run) {
        let runs = self.streams.entry(stream).or_default();
        let next = runs.last().map_or(0, |r| r.last_version() + 1);
        assert_eq!(run.version, next, "stream versions contiguous");
        match runs.last_mut() {
            Some(last) if last.position + last.len == run.position => last.len += run.len,
            _ => runs.push(run),
        }
    }

    /// Rebuild: registers a chunk about to be observed event by event.
    pub(crate) fn begin_chunk(&mut self, view: &ChunkView<'_>) -> Result<(), StoreError> {
        if view.first != self.head {
            let detail =
                format!("chunk starts at {} but the log ends at {}", view.first, self.head);
            return Err(StoreError::Corrupt { position: view.first, detail });
        }
        self.chunks.push(view.first);
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
        let run = Run { version: env.stream_version, position: env.position, len: 1 };
        match self.streams.get_mut(env.stream) {
            Some(runs) => extend_runs(runs, run).or_else(corrupt)?,
            None if env.stream_version == 0 => {
                drop(self.streams.insert(env.stream.into(), vec![run]))
            }
            None => {
                return corrupt(format!(
                    "stream {:?} starts at version {}",
                    env.stream, run.version
                ))
            }
        }
        self.observe_idempotency(env);
        self.head += 1;
        self.last_hash = hash;
        self.last_recorded_at = env.recorded_at_us;
        Ok(())
    }

    fn observe_idempotency(&mut self, env: &EnvelopeRef<'_>) {
        let (Some(key), Some(digest)) = (env.idempotency_key, env.idempotency_digest) else {
            return;
        };
        match self.idempotency.get_mut(key) {
            Some(entry) => entry.last = env.position,
            None => {
                let entry = IdemEntry { digest, first: env.position, last: env.position };
                self.idempotency.insert(key.to_owned(), entry);
            }
        }
    }

    /// Position ranges of `stream`'s versions `[from_version, from_version + max_count)`.
    pub(crate) fn stream_ranges(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Vec<Range<Position>> {
        let Some(runs) = self.streams.get(stream) else { return Vec::new() };
        let mut remaining = max_count as u64;
        let start = runs.partition_point(|r| r.last_version() < from_version);
        let mut out = Vec::new();
        for run in &runs[start..] {
            if remaining == 0 {
                break;
            }
            let skip = from_version.saturating_sub(run.version);
            let take = (run.len - skip).min(remaining);
            out.push(run.position + skip..run.position + skip + take);
            remaining -= take;
        }
        out
    }

    /// Positions `[from, from + max_count)` clipped to the head.
    pub(crate) fn all_range(&self, from: Position, max_count: usize) -> Range<Position> {
        let end = from.saturating_add(max_count as u64).min(self.head);
        from..end.max(from)
    }

    /// Splits position ranges (each within `[0, head)`) into per-chunk slices.
    pub(crate) fn slices(&self, ranges: &[Range<Position>]) -> Vec<Slice> {
        let mut out = Vec::new();
        for range in ranges {
            let mut at = range.start;
            while at < range.end {
                let idx = self.chunks.partition_point(|&s| s <= at) - 1;
                let chunk_end = self.chunks.get(idx + 1).copied().unwrap_or(self.head);
                let end = chunk_end.min(range.end);
                out.push(Slice { chunk: self.chunks[idx], first: at, len: end - at });
                at = end;
            }
        }
        out
    }
}

/// Rebuild: appends one event (a run of length 1) to a stream's runs.
fn extend_runs(runs: &mut Vec<Run>, run: Run) -> Result<(), String> {
    let last = runs.last_mut().expect("a known stream has a run");
    if run.version != last.last_version() + 1 {
        return Err(format!("stream version {} follows {}", run.version, last.last_version()));
    }
    if last.position + last.len == run.position {
        last.len += 1;
    } else {
        runs.push(run);
    }
    Ok(())
}

/// Where stored chunks are read from.
pub(crate) trait ChunkLog {
    type Bytes: AsRef<[u8]>;
    /// The value of the chunk whose first position is `first`.
    fn chunk(&self, first: Position) -> Result<Self::Bytes, StoreError>;
}

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
            cached = Some((slice.chunk, log.chunk(slice.chunk)?));
        }
        let bytes = cached.as_ref().map(|(_, b)| b.as_ref()).unwrap_or_default();
        read_slice(bytes, slice, &mut out)?;
    }
    Ok(out)
}

fn read_slice(bytes: &[u8], slice: &Slice, out: &mut Vec<RecordedEvent>) -> Result<(), StoreError> {
    let view = ChunkView::parse(slice.chunk, bytes)?;
    let mut records = view.records();
    records.skip_to(slice.first)?;
    for _ in 0..slice.len {
        let Some(raw) = records.next_raw()? else {
            let detail = format!("chunk ends at {} before the index says", view.end());
            return Err(StoreError::Corrupt { position: slice.chunk, detail });
        };
        out.push(raw.decode()?.to_owned(raw.hash));
    }
    Ok(())
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
    fn runs_merge_and_split_into_chunk_slices() {
        let mut index = Index::default();
        index.apply(delta(0, &[("a", 0, 3), ("b", 0, 2)]));
        index.apply(delta(5, &[("b", 2, 1), ("a", 3, 2)]));
        index.apply(delta(8, &[("a", 5, 1)]));
        assert_eq!(index.streams["a"].len(), 2, "positions 5..7 and 7 of a merge into one run");
        assert_eq!(index.stream_version("a"), Some(5));
        assert_eq!(index.stream_ranges("a", 1, 4), vec![1..3, 6..8]);
        assert_eq!(index.stream_ranges("a", 4, 10), vec![7..9]);
        assert!(index.stream_ranges("a", 6, 10).is_empty());
        let slices = index.slices(std::slice::from_ref(&(3..9)));
        let expected = [
            Slice { chunk: 0, first: 3, len: 2 },
            Slice { chunk: 5, first: 5, len: 3 },
            Slice { chunk: 8, first: 8, len: 1 },
        ];
        assert_eq!(slices, expected);
        assert_eq!(index.all_range(7, usize::MAX), 7..9);
        assert_eq!(index.all_range(20, 5), 20..20);
    }

    #[test]
    #[should_panic(expected = "commit must start at head")]
    fn a_gap_is_refused() {
        let mut index = Index::default();
        index.apply(delta(1, &[("a", 0, 1)]));
    }
}
