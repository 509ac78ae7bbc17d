//! An in-memory log stream with ESDB's append semantics (expected revision, idempotent retry of
//! the same event ids), shared by several [`super::EsdbStore`]s to play several nodes, and
//! with fault injection (lost connection before or after the write). For tests: nothing here
//! is durable.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::errors::Failure;
use super::log::{ChunkLog, OutChunk, StoredChunk, READ_PAGE_CHUNKS_MAX};
use super::mapping::{Expected, LogPosition};

/// Faults the next appends meet.
#[derive(Default)]
struct Faults {
    /// Appends refused with a transient failure, nothing written.
    fail_before: AtomicU32,
    /// Appends written, then answered with a transient failure (the reply was lost).
    fail_after: AtomicU32,
    /// Appends refused with a permanent failure.
    refuse: AtomicU32,
}

/// A shared in-memory log stream.
#[derive(Clone, Default)]
pub struct MemoryLog {
    chunks: Arc<Mutex<Vec<StoredChunk>>>,
    len_tx: Arc<Mutex<Option<watch::Sender<u64>>>>,
    faults: Arc<Faults>,
}

impl MemoryLog {
    pub fn new() -> MemoryLog {
        MemoryLog::default()
    }

    /// The next `n` appends fail with a transient error and write nothing.
    pub fn fail_before_write(&self, n: u32) {
        self.faults.fail_before.store(n, Ordering::SeqCst);
    }

    /// The next `n` appends are written but answered with a transient error.
    pub fn fail_after_write(&self, n: u32) {
        self.faults.fail_after.store(n, Ordering::SeqCst);
    }

    /// The next `n` appends are refused with a permanent error.
    pub fn refuse(&self, n: u32) {
        self.faults.refuse.store(n, Ordering::SeqCst);
    }

    /// Number of chunks in the stream.
    pub fn len(&self) -> u64 {
        self.chunks.lock().len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes raw bytes as the next chunk, bypassing every check (tamper tests).
    pub fn push_raw(&self, event_id: uuid::Uuid, bytes: Vec<u8>) {
        let len = {
            let mut chunks = self.chunks.lock();
            let revision = chunks.len() as u64;
            chunks.push(StoredChunk { revision, event_id, bytes, log_position: None });
            revision + 1
        };
        self.publish(len);
    }

    fn publish(&self, len: u64) {
        let mut tx = self.len_tx.lock();
        tx.get_or_insert_with(|| watch::channel(0).0).send_replace(len);
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        let mut tx = self.len_tx.lock();
        let tx = tx.get_or_insert_with(|| watch::channel(self.chunks.lock().len() as u64).0);
        tx.subscribe()
    }

    fn take(counter: &AtomicU32) -> bool {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    fn append_now(&self, expected: Expected, out: &[OutChunk]) -> Result<u64, Failure> {
        let mut chunks = self.chunks.lock();
        let len = chunks.len() as u64;
        let at = expected.next_revision();
        let same_ids = |from: u64| {
            out.iter().enumerate().all(|(i, c)| {
                chunks.get(from as usize + i).is_some_and(|s| s.event_id == c.event_id)
            })
        };
        if at != len {
            if at < len && same_ids(at) {
                return Ok(len); // ESDB's idempotent write: the same events at the same place
            }
            return Err(Failure::Conflict { current: len.checked_sub(1) });
        }
        for (i, c) in out.iter().enumerate() {
            let revision = len + i as u64;
            let log_position =
                Some(LogPosition { commit: revision * 100, prepare: revision * 100 });
            let stored = StoredChunk {
                revision,
                event_id: c.event_id,
                bytes: c.bytes.clone(),
                log_position,
            };
            chunks.push(stored);
        }
        Ok(chunks.len() as u64)
    }
}

#[async_trait]
impl ChunkLog for MemoryLog {
    async fn append(
        &self,
        expected: Expected,
        chunks: &[OutChunk],
    ) -> Result<Option<LogPosition>, Failure> {
        if Self::take(&self.faults.refuse) {
            return Err(Failure::Permanent("access denied (injected)".into()));
        }
        if Self::take(&self.faults.fail_before) {
            return Err(Failure::Transient("connection lost before the write (injected)".into()));
        }
        let len = self.append_now(expected, chunks)?;
        self.publish(len);
        if Self::take(&self.faults.fail_after) {
            return Err(Failure::Transient("connection lost after the write (injected)".into()));
        }
        Ok(Some(LogPosition { commit: (len - 1) * 100, prepare: (len - 1) * 100 }))
    }

    async fn read(
        &self,
        from_revision: u64,
        max_count: usize,
    ) -> Result<Vec<StoredChunk>, Failure> {
        let chunks = self.chunks.lock();
        let from = usize::try_from(from_revision).unwrap_or(usize::MAX).min(chunks.len());
        let to = from.saturating_add(max_count.min(READ_PAGE_CHUNKS_MAX)).min(chunks.len());
        Ok(chunks[from..to].to_vec())
    }

    fn follow(&self, from_revision: u64) -> BoxStream<'static, Result<StoredChunk, Failure>> {
        let log = self.clone();
        let rx = self.subscribe();
        futures::stream::unfold((log, rx, from_revision), |(log, mut rx, next)| async move {
            loop {
                let page = log.read(next, READ_PAGE_CHUNKS_MAX).await.ok()?;
                if !page.is_empty() {
                    let next = next + page.len() as u64;
                    let items = futures::stream::iter(page.into_iter().map(Ok));
                    return Some((items, (log, rx, next)));
                }
                rx.changed().await.ok()?;
            }
        })
        .flatten()
        .boxed()
    }
}
