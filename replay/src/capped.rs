//! A read-only view of a log that ends at a position.

use async_trait::async_trait;
use event_store::{AppendRequest, Committed, EventStore, Position, RecordedEvent, StoreError};
use tokio::sync::watch;

/// The events `[0, end)` of `inner`; appends are refused, the head never moves past `end`.
pub struct CappedStore<S> {
    inner: S,
    end: Position,
    head: watch::Sender<Position>,
}

impl<S: EventStore> CappedStore<S> {
    /// `end` is clamped to the inner head.
    pub fn new(inner: S, end: Position) -> Self {
        let end = end.min(inner.head());
        CappedStore { inner, end, head: watch::channel(end).0 }
    }

    /// The position the view ends before.
    pub fn end(&self) -> Position {
        self.end
    }
}

#[async_trait]
impl<S: EventStore> EventStore for CappedStore<S> {
    async fn append(&self, _req: AppendRequest) -> Result<Committed, StoreError> {
        Err(StoreError::Invalid("a replay reads the log; it never appends".into()))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = self.inner.read_stream(stream, from_version, max_count).await?;
        events.retain(|e| e.position < self.end);
        Ok(events)
    }

    async fn read_all(
        &self,
        from: Position,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let left = usize::try_from(self.end.saturating_sub(from)).unwrap_or(usize::MAX);
        if left == 0 {
            return Ok(Vec::new());
        }
        self.inner.read_all(from, max_count.min(left)).await
    }

    fn head(&self) -> Position {
        self.end
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.head.subscribe()
    }

    fn stream_version(&self, _stream: &str) -> Option<u64> {
        None
    }

    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
