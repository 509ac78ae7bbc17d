//! In-memory backend for unit tests: the same planner, encoding, index and read path as the sled
//! backend, with chunks kept in a map instead of on disk (no fsync, nothing survives a drop).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::group::Planner;
use crate::index::{read_range, read_stream_scan, ChunkLog, Index};
use crate::{
    system_clock, validate, AppendRequest, Clock, Committed, EventStore, Position, RecordedEvent,
    StoreError, DEFAULT_COMMIT_EVENTS_MAX,
};

#[derive(Default)]
struct State {
    index: Index,
    chunks: Chunks,
}

#[derive(Default)]
struct Chunks(BTreeMap<Position, Arc<[u8]>>);

impl ChunkLog for Chunks {
    type Bytes = Arc<[u8]>;

    fn chunk_at(&self, position: Position) -> Result<Option<(Position, Arc<[u8]>)>, StoreError> {
        Ok(self.0.range(..=position).next_back().map(|(first, b)| (*first, b.clone())))
    }
}

/// Non-durable [`EventStore`] for tests. Each append is its own commit.
pub struct MemoryStore {
    state: RwLock<State>,
    head_tx: watch::Sender<Position>,
    closed: AtomicBool,
    clock: Clock,
    commit_events_max: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store using the system clock.
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    /// An empty store reading `recorded_at` from `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        MemoryStore {
            state: RwLock::new(State::default()),
            head_tx: watch::channel(0).0,
            closed: AtomicBool::new(false),
            clock,
            commit_events_max: DEFAULT_COMMIT_EVENTS_MAX,
        }
    }

    /// Head position and the hash of the last event (`GENESIS_HASH` when empty).
    pub fn head_hash(&self) -> (Position, [u8; 32]) {
        let state = self.state.read();
        (state.index.head(), state.index.last_hash())
    }

    fn append_sync(&self, req: &AppendRequest) -> Result<Committed, StoreError> {
        validate(req, self.commit_events_max)?;
        let mut state = self.state.write();
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("store is closed".into()));
        }
        let mut planner = Planner::new(&state.index, (self.clock)()).compressed();
        let result = planner.add(req);
        if let Some(commit) = planner.finish() {
            let head = commit.delta.end_position;
            state.chunks.0.extend(commit.chunks.into_iter().map(|(first, b)| (first, b.into())));
            state.index.apply(commit.delta);
            self.head_tx.send_replace(head);
        }
        result
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(&self, req: AppendRequest) -> Result<Committed, StoreError> {
        self.append_sync(&req)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.state.read();
        let Some(head) = state.index.stream(stream) else { return Ok(Vec::new()) };
        let log_head = state.index.head();
        read_stream_scan(&state.chunks, stream, head, log_head, from_version, max_count)
    }

    async fn read_all(
        &self,
        from: Position,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.state.read();
        read_range(&state.chunks, state.index.all_range(from, max_count))
    }

    fn head(&self) -> Position {
        self.state.read().index.head()
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.head_tx.subscribe()
    }

    fn stream_version(&self, stream: &str) -> Option<u64> {
        self.state.read().index.stream_version(stream)
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::SeqCst);
        drop(self.state.write()); // waits for an in-flight append
        Ok(())
    }
}
