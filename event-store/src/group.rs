//! Planning one group commit: idempotency and expected-version checks request by request, then
//! position assignment, `recorded_at` stamping, encoding and hash chaining.
//!
//! The planner reads the index but changes nothing: the resulting [`Delta`] is applied by the
//! backend only after the commit bytes are durable.

use std::collections::HashMap;

use crate::envelope::{record_len, ChunkWriter, EnvelopeRef};
use crate::index::{Delta, IdemEntry, IdemStore, Index};
use crate::{AppendRequest, Committed, ExpectedVersion, NewEvent, Position, StoreError};

/// Size bound of one stored chunk (one sled value). A group commit is split into chunks of at
/// most this size (an event larger than that gets a chunk of its own), all written in one
/// atomic batch. Why: sled 0.34 writes an item larger than a quarter of its segment size to a
/// blob file that it never fsyncs; with the 8 MiB segments of the sled backend that threshold
/// is 2 MiB, and a sled leaf holds up to 17 values, so 96 KiB values keep every write, even a
/// leaf consolidation, inside the log that `Db::flush` syncs. (Exception: a leaf holding
/// several near-1-MiB single-event chunks may be rewritten into a blob; the acknowledged write
/// itself is still in the log.)
pub(crate) const CHUNK_BYTES_MAX: usize = 96 * 1024;

/// A planned group commit: the chunks to store (keyed by their first position) and the index
/// changes to apply once they are durable.
pub(crate) struct Commit {
    pub chunks: Vec<(Position, Vec<u8>)>,
    pub delta: Delta,
}

/// Encodes events into chunks of at most [`CHUNK_BYTES_MAX`] bytes.
struct Chunks {
    done: Vec<(Position, Vec<u8>)>,
    current: ChunkWriter,
    /// Chunk format 2 (compressed) rather than 1.
    compressed: bool,
}

impl Chunks {
    fn push(&mut self, env: &EnvelopeRef<'_>) -> [u8; 32] {
        if self.current.count() > 0 && self.current.len() + record_len(env) > CHUNK_BYTES_MAX {
            let full = std::mem::replace(&mut self.current, ChunkWriter::new(env.position));
            self.done.push((full.first(), finish(full, self.compressed)));
        }
        self.current.push(env)
    }

    fn finish(mut self) -> Vec<(Position, Vec<u8>)> {
        if self.current.count() > 0 {
            self.done.push((self.current.first(), finish(self.current, self.compressed)));
        }
        self.done
    }
}

fn finish(chunk: ChunkWriter, compressed: bool) -> Vec<u8> {
    if compressed {
        chunk.finish_compressed()
    } else {
        chunk.finish()
    }
}

pub(crate) struct Planner<'a> {
    index: &'a Index,
    /// Where idempotency keys of earlier commits are looked up.
    idem: &'a dyn IdemStore,
    chunks: Chunks,
    recorded_at: i64,
    next_position: Position,
    last_hash: [u8; 32],
    /// Last version of every stream written earlier in this group.
    versions: HashMap<String, u64>,
    pending_idem: HashMap<String, IdemEntry>,
    runs: Vec<(String, u64, Position, u64)>,
}

impl<'a> Planner<'a> {
    /// `now` is the clock reading for the whole group; `recorded_at = max(now, last)`.
    /// Idempotency keys are looked up in the index.
    pub(crate) fn new(index: &'a Index, now: i64) -> Self {
        Self::with_idempotency(index, index, now)
    }

    /// Idempotency keys are looked up in `idem` (the sled backend's tree).
    pub(crate) fn with_idempotency(index: &'a Index, idem: &'a dyn IdemStore, now: i64) -> Self {
        Planner {
            index,
            idem,
            chunks: Chunks {
                done: Vec::new(),
                current: ChunkWriter::new(index.head()),
                compressed: false,
            },
            recorded_at: now.max(index.last_recorded_at()),
            next_position: index.head(),
            last_hash: index.last_hash(),
            versions: HashMap::new(),
            pending_idem: HashMap::new(),
            runs: Vec::new(),
        }
    }

    /// Writes chunk format 2 (compressed records) instead of format 1. The sled and memory
    /// backends do; the EventStoreDB backend keeps format 1, whose size its server's
    /// `MaxAppendSize` accounting (and its tests) are built on.
    pub(crate) fn compressed(mut self) -> Self {
        self.chunks.compressed = true;
        self
    }

    /// Adds a validated request to the group, or rejects it without effect.
    pub(crate) fn add(&mut self, req: &AppendRequest) -> Result<Committed, StoreError> {
        if req.writes.iter().all(|w| w.events.is_empty()) {
            return Err(StoreError::Invalid("an append must carry at least one event".into()));
        }
        if let Some(idem) = &req.idempotency {
            if let Some(seen) = self.seen_idempotency(&idem.key)? {
                if seen.digest != idem.digest {
                    return Err(StoreError::IdempotencyConflict { key: idem.key.clone() });
                }
                return Ok(seen.duplicate());
            }
        }
        if let Some(expected) = req.expected_position {
            if expected != self.next_position {
                let actual = self.next_position;
                return Err(StoreError::WrongExpectedPosition { expected, actual });
            }
        }
        self.check_versions(req)?;
        let first = self.next_position;
        for write in &req.writes {
            self.encode_write(&write.stream, &write.events, req);
        }
        let last = self.next_position - 1;
        if let Some(idem) = &req.idempotency {
            let entry = IdemEntry { digest: idem.digest, first, last };
            self.pending_idem.insert(idem.key.clone(), entry);
        }
        Ok(Committed { first_position: first, last_position: last, duplicate: false })
    }

    fn seen_idempotency(&self, key: &str) -> Result<Option<IdemEntry>, StoreError> {
        match self.pending_idem.get(key) {
            Some(entry) => Ok(Some(entry.clone())),
            None => self.idem.idempotency(key),
        }
    }

    fn current_version(&self, stream: &str) -> Option<u64> {
        self.versions.get(stream).copied().or_else(|| self.index.stream_version(stream))
    }

    /// Checks every write in order (a stream written twice sees its first write).
    fn check_versions(&self, req: &AppendRequest) -> Result<(), StoreError> {
        let mut local: HashMap<&str, u64> = HashMap::new();
        for write in &req.writes {
            let stream = write.stream.as_str();
            let actual = local.get(stream).copied().or_else(|| self.current_version(stream));
            let ok = match write.expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => actual.is_none(),
                ExpectedVersion::Exact(v) => actual == Some(v),
            };
            if !ok {
                let (stream, expected) = (write.stream.clone(), write.expected);
                return Err(StoreError::WrongExpectedVersion { stream, expected, actual });
            }
            if !write.events.is_empty() {
                let next = actual.map_or(0, |v| v + 1);
                local.insert(stream, next + write.events.len() as u64 - 1);
            }
        }
        Ok(())
    }

    fn encode_write(&mut self, stream: &str, events: &[NewEvent], req: &AppendRequest) {
        if events.is_empty() {
            return;
        }
        let first_version = self.current_version(stream).map_or(0, |v| v + 1);
        let first_position = self.next_position;
        for (i, event) in events.iter().enumerate() {
            let env = self.envelope(stream, first_version + i as u64, event, req);
            self.last_hash = self.chunks.push(&env);
            self.next_position += 1;
        }
        let len = events.len() as u64;
        self.versions.insert(stream.to_owned(), first_version + len - 1);
        self.runs.push((stream.to_owned(), first_version, first_position, len));
    }

    fn envelope<'e>(
        &self,
        stream: &'e str,
        stream_version: u64,
        event: &'e NewEvent,
        req: &'e AppendRequest,
    ) -> EnvelopeRef<'e> {
        EnvelopeRef {
            event_id: event.event_id,
            stream,
            stream_version,
            position: self.next_position,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            occurred_at_us: event.occurred_at_us,
            recorded_at_us: self.recorded_at,
            causation_id: event.causation_id,
            correlation_id: event.correlation_id,
            idempotency_key: req.idempotency.as_ref().map(|i| i.key.as_str()),
            idempotency_digest: req.idempotency.as_ref().map(|i| i.digest),
            payload: &event.payload,
            prev_hash: self.last_hash,
        }
    }

    /// The commit to persist, or `None` when no request of the group added events.
    pub(crate) fn finish(self) -> Option<Commit> {
        let first_position = self.index.head();
        if self.next_position == first_position {
            return None;
        }
        let chunks = self.chunks.finish();
        let delta = Delta {
            first_position,
            chunks: chunks.iter().map(|(first, _)| *first).collect(),
            end_position: self.next_position,
            runs: self.runs,
            idempotency: self.pending_idem.into_iter().collect(),
            last_hash: self.last_hash,
            last_recorded_at: self.recorded_at,
        };
        Some(Commit { chunks, delta })
    }
}
