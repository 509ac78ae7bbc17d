//! Accrual's append-only event log: the [`EventStore`] trait, the stored envelope
//! ([`RecordedEvent`], SPEC §2), the SHA-256 hash chain, and two backends
//! ([`SledStore`] for production, [`MemoryStore`] for unit tests).
//!
//! # Architecture invariant
//!
//! This crate **knows envelopes and bytes, not billing**. Payloads are opaque `Vec<u8>`, event
//! types are opaque strings; nothing here depends on `domain` or on gRPC types. Events are never
//! updated or deleted.
//!
//! # Storage layout (sled backend)
//!
//! * Tree `log`: the events, a few hundred per key. A group commit (every request that shares
//!   one `fsync`) is encoded as one or more **chunks** of at most 96 KiB of records (~250 usage
//!   events) before compression; key = the chunk's first [`Position`] as a `u64` big-endian (key
//!   order = log order), value = the chunk encoding of [`envelope`]: format 2 (written since
//!   issue 12: a format byte, the first position, the event count, the records' length, then
//!   the records LZ4-compressed) or format 1 (older chunks: the same records uncompressed).
//!   A record is an event's [`canonical_bytes`] (length-prefixed) and its 32-byte hash;
//!   compression changes how records are stored, never the bytes that are hashed.
//! * Tree `idempotency`: idempotency key → digest, first and last position of the request
//!   (48 bytes). Written in the **same sled transaction** as the chunks of the commit that used
//!   the key, so a key is never durable without its events nor the reverse.
//! * Tree `index`: the index checkpoint (see `checkpoint.rs`): head, last hash, last
//!   `recorded_at` and every stream's first position and last version, with a SHA-256 digest,
//!   in pages of at most 64 KiB. Derived data, written only after a flush (it never claims what
//!   is not on disk) every `index_checkpoint_interval_events` events and at close.
//! * Default tree, key `event-store-format`: the store format version (`[2]`; a `[1]` store
//!   is upgraded at open, its format-1 chunks read as they are). A binary that reads only
//!   format-1 chunks refuses a format-2 store by this marker.
//! * No per-event and no per-stream sled keys. sled sustains ~65k keys/s but ~1.1M events/s
//!   when the same bytes are written as hundreds of events per key (SPEC §7).
//!
//! Why chunks rather than one value per commit: sled 0.34 writes any item larger than a quarter
//! of its segment size to a separate blob file that it **never fsyncs**, and it periodically
//! rewrites whole leaf nodes (up to 17 values). The store uses 8 MiB segments (a sled storage
//! parameter, fixed for the life of a database) and ≤ 96 KiB values, so every write, including
//! leaf rewrites, stays inside sled's log, which `Db::flush` syncs. A test checks that no blob
//! file ever appears. sled's page cache is bounded by `SledConfig::cache_bytes_max`
//! (default [`DEFAULT_CACHE_BYTES_MAX`]; sled's own default is 1 GiB).
//!
//! # The in-memory index and the open
//!
//! In memory: the head, the last hash, the last `recorded_at`, and per stream its first
//! position and last version (16 bytes plus the name): **memory grows with streams, not with
//! events**. No chunk list (the chunk holding position `p` is found by
//! `log.range(..=p).next_back()`) and no idempotency map (a keyed request costs one lookup in
//! the `idempotency` tree). `read_stream` scans the log from the stream's first position and
//! stops at the last version wanted, reading only the stream name of other streams' events: its
//! cost is the events of every stream between those two positions. It is a tools-and-tests path;
//! the serving path reads the log in order with `read_all` and asks `stream_version`.
//!
//! At open the store loads the checkpoint, checks its digest and checks it against the log:
//! the last 64 chunks before its head decode, follow each other without a gap (and start at 0
//! when they are the whole log), link by `prev_hash`, never go back in `recorded_at`, and end
//! exactly at its head with its hash and `recorded_at`. It then scans only the chunks after the
//! head, with the same checks as a full scan (contiguous positions, `prev_hash` links,
//! contiguous stream versions, non-decreasing `recorded_at`), rewriting the idempotency entries
//! of the events it scans. A missing, corrupt or mismatching checkpoint is logged and the whole
//! log is scanned as before; either way the result is saved as a new checkpoint. The log line
//! "event store index rebuilt …" gives the events scanned and the time; `SledStore::open_report`
//! returns the same. An open scans at most `index_checkpoint_interval_events` plus one group
//! commit after a crash, nothing after a clean close. Neither scan recomputes hashes (that is
//! [`verify_chain`]'s job), and links older than the 64 chunks before a valid checkpoint are not
//! re-checked at open: damage there is found by `accrual audit verify`. Because the open refuses
//! a log with broken links, the audit reads the log through [`LogScan`] instead: the chunks in
//! key order, decoded (both formats) but never judged, without the index and without writing.
//!
//! # Write path (group commit, SPEC §3)
//!
//! Callers validate their request and send it into a bounded queue. A single writer thread takes
//! what is waiting (up to `commit_events_max` events), checks idempotency and expected versions
//! request by request (a later request sees the effects of earlier ones in the same group; a
//! rejected request has no effect), assigns positions, stamps `recorded_at = max(clock(), last)`,
//! encodes and chains the events, writes the chunks in one batch (one sled transaction with the
//! group's idempotency keys when it carries any), calls `Db::flush` once, and only then updates
//! the in-memory index, publishes the new head and replies. So the index never claims anything
//! that is not on disk, and an acknowledged append is durable. If the write or
//! the flush fails, the whole group gets `Unavailable` and the store refuses further appends
//! (reopen to recover). While a flush runs, new requests queue and form the next group.
//!
//! `read_all` reads never beyond the published head and fetch only the chunks holding the
//! positions asked; reads of up to 4,096 events run inline, larger ones (and every
//! `read_stream` scan) on tokio's blocking pool.
//!
//! # Formats
//!
//! [`canonical_bytes`] (format byte `1`) and the chunk encodings (format bytes `1` and `2`) are
//! persisted boundaries; golden tests (`tests/golden.rs`) pin them. A new layout gets a new format byte
//! and the decoder keeps reading (upcasting) every older one; since hashes cover the canonical
//! bytes of the format an event was written in, a future format must keep those bytes
//! reproducible for [`verify_chain`].

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

pub mod chain;
mod checkpoint;
mod codec;
pub mod conformance;
mod contain;
pub mod envelope;
#[cfg(feature = "esdb")]
pub mod esdb;
mod group;
mod index;
mod log_scan;
mod memory_store;
pub mod metrics;
mod sled_store;

pub use chain::{verify_chain, BreakKind, ChainBreak, ChainVerifier};
pub use contain::contain_panic;
pub use envelope::{canonical_bytes, compute_hash, GENESIS_HASH};
#[cfg(feature = "nats")]
pub use esdb::NatsConfig;
#[cfg(feature = "esdb")]
pub use esdb::{EsdbConfig, EsdbStore};
pub use log_scan::{LogScan, ScanEvents};
pub use memory_store::MemoryStore;
pub use sled_store::{
    open_waiting as open_sled_waiting, OpenReport, SledConfig, SledStore, DEFAULT_CACHE_BYTES_MAX,
    DEFAULT_INDEX_CHECKPOINT_INTERVAL_EVENTS, IDEMPOTENCY_TREE, LOG_TREE, SLED_SEGMENT_BYTES,
};

/// Global position of an event in the log (0-based, contiguous).
pub type Position = u64;

/// The hash of the log's event at `position`, if the log has it: what a snapshot, checkpoint or
/// index records to be checked against the log later.
pub async fn hash_at<S: EventStore + ?Sized>(
    store: &S,
    position: Position,
) -> Result<Option<[u8; 32]>, StoreError> {
    let events = store.read_all(position, 1).await?;
    Ok(events.first().filter(|e| e.position == position).map(|e| e.hash))
}

/// Clock read by the store to stamp `recorded_at`: unix time in microseconds.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 256;
/// Longest event type, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 128;
/// Largest payload of one event, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Largest request: sum of payload, stream name and event type bytes.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// Default bound of events per group commit (and per request).
pub const DEFAULT_COMMIT_EVENTS_MAX: usize = 16_384;

/// The system clock: unix time in microseconds.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)).unwrap_or(0)
    })
}

/// An event to append; the store adds stream, version, position, times and the hash chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u16,
    /// Business (effective) time, unix micros, given by the caller.
    pub occurred_at_us: i64,
    pub causation_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub payload: Vec<u8>,
}

/// Optimistic concurrency check for one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last version must be exactly this.
    Exact(u64),
}

/// Events for one stream, with their expected version. A write may carry zero events (a pure
/// version check) as long as the request as a whole carries at least one.
#[derive(Clone, Debug)]
pub struct StreamWrite {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// Idempotency key of a request and the digest of the request payload it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub digest: [u8; 32],
}

/// One atomic append: all writes commit together or none does.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    pub writes: Vec<StreamWrite>,
    pub idempotency: Option<Idempotency>,
    /// Commit only if the request's first event gets exactly this position: the log's head
    /// when the caller decided it. A write model that decided on the log up to here is then
    /// refused ([`StoreError::WrongExpectedPosition`]) if anything else was appended first (a
    /// request enqueued before it and refused, another writer on a shared log), so no decision
    /// lands on a log it did not see. Checked after idempotency (a duplicate stays a duplicate)
    /// and before expected versions. `None`: no check.
    pub expected_position: Option<Position>,
}

/// Result of a successful append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub first_position: Position,
    /// Inclusive.
    pub last_position: Position,
    /// True for an idempotent replay; positions are then the original ones.
    pub duplicate: bool,
}

/// The stored envelope (SPEC §2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub event_id: Uuid,
    pub stream: String,
    pub stream_version: u64,
    pub position: Position,
    pub event_type: String,
    pub schema_version: u16,
    pub occurred_at_us: i64,
    pub recorded_at_us: i64,
    pub causation_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
    pub idempotency_digest: Option<[u8; 32]>,
    pub payload: Vec<u8>,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// Errors of the event store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "wrong expected version for stream {stream:?}: expected {expected:?}, actual {actual:?}"
    )]
    WrongExpectedVersion { stream: String, expected: ExpectedVersion, actual: Option<u64> },
    #[error(
        "the log moved on: the append was decided for position {expected}, the log is at {actual}"
    )]
    WrongExpectedPosition { expected: Position, actual: Position },
    #[error("idempotency key {key:?} was already used with a different request")]
    IdempotencyConflict { key: String },
    #[error("invalid append: {0}")]
    Invalid(String),
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt event log at position {position}: {detail}")]
    Corrupt { position: Position, detail: String },
}

/// An append-only, totally ordered, hash-chained event log.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Atomic across all writes of the request: every expected version is checked first; on any
    /// mismatch nothing is written. Returns only after the commit is fsync'd (sled: `Db::flush`).
    /// An idempotency key seen before with the same digest returns the original [`Committed`]
    /// with `duplicate = true` and writes nothing; with another digest →
    /// [`StoreError::IdempotencyConflict`].
    async fn append(&self, req: AppendRequest) -> Result<Committed, StoreError>;
    /// Submits an append and returns as soon as it is queued; the ticket resolves like
    /// [`EventStore::append`] once the commit is durable (or rejected). Requests enqueued one
    /// after another (each `enqueue` awaited before the next starts) are committed in that
    /// order, so a caller can pipeline appends and still share fsyncs; a rejected request takes
    /// no positions. The default implementation performs the whole append before returning.
    async fn enqueue(&self, req: AppendRequest) -> AppendTicket {
        AppendTicket::ready(self.append(req).await)
    }
    /// Events of `stream` with version ≥ `from_version`, at most `max_count`, in version order.
    /// An unknown stream yields an empty vector.
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;
    /// Events with position ≥ `from`, at most `max_count`, in position order.
    async fn read_all(
        &self,
        from: Position,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;
    /// Next position to be assigned (= number of events in the log).
    fn head(&self) -> Position;
    /// Wakes when head changes (a `tokio::sync::watch` of head) — used to follow the log.
    fn watch_head(&self) -> tokio::sync::watch::Receiver<Position>;
    /// Last version of `stream`, `None` if it has no events.
    fn stream_version(&self, stream: &str) -> Option<u64>;
    /// Stop accepting appends, finish and flush in-flight ones. Idempotent.
    async fn close(&self) -> Result<(), StoreError>;
}

/// The pending outcome of an [`EventStore::enqueue`]d append.
#[must_use = "the append's outcome is only known by awaiting the ticket"]
pub struct AppendTicket(Ticket);

enum Ticket {
    Ready(Option<Result<Committed, StoreError>>),
    Waiting(tokio::sync::oneshot::Receiver<Result<Committed, StoreError>>),
}

impl AppendTicket {
    /// A ticket whose outcome is already known.
    pub fn ready(outcome: Result<Committed, StoreError>) -> Self {
        AppendTicket(Ticket::Ready(Some(outcome)))
    }

    /// A ticket resolved by whoever holds the sender (the backend's writer).
    pub fn waiting(
        receiver: tokio::sync::oneshot::Receiver<Result<Committed, StoreError>>,
    ) -> Self {
        AppendTicket(Ticket::Waiting(receiver))
    }
}

impl std::fmt::Debug for AppendTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppendTicket")
    }
}

impl std::future::Future for AppendTicket {
    type Output = Result<Committed, StoreError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let stopped = || StoreError::Unavailable("event store writer stopped".into());
        match &mut self.0 {
            Ticket::Ready(outcome) => std::task::Poll::Ready(outcome.take().unwrap_or_else(|| {
                Err(StoreError::Unavailable("append ticket polled after completion".into()))
            })),
            Ticket::Waiting(receiver) => {
                std::pin::Pin::new(receiver).poll(cx).map(|r| r.unwrap_or_else(|_| Err(stopped())))
            }
        }
    }
}

/// Size of a validated request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestSize {
    pub events: usize,
    pub bytes: usize,
}

/// Checks the limits of a request (shared by every backend).
pub fn validate(req: &AppendRequest, events_max: usize) -> Result<RequestSize, StoreError> {
    let mut size = RequestSize { events: 0, bytes: 0 };
    for write in &req.writes {
        check_len("stream name", &write.stream, MAX_STREAM_NAME_BYTES)?;
        for event in &write.events {
            check_len("event type", &event.event_type, MAX_EVENT_TYPE_BYTES)?;
            if event.payload.len() > MAX_PAYLOAD_BYTES {
                return Err(invalid(format!("payload larger than {MAX_PAYLOAD_BYTES} bytes")));
            }
            size.events += 1;
            size.bytes += event.payload.len() + event.event_type.len() + write.stream.len();
        }
    }
    if let Some(idem) = &req.idempotency {
        check_len("idempotency key", &idem.key, MAX_IDEMPOTENCY_KEY_BYTES)?;
    }
    check_size(size, events_max)?;
    Ok(size)
}

fn check_size(size: RequestSize, events_max: usize) -> Result<(), StoreError> {
    if size.events == 0 {
        return Err(invalid("an append must carry at least one event".into()));
    }
    if size.events > events_max {
        return Err(invalid(format!("{} events exceed the limit of {events_max}", size.events)));
    }
    if size.bytes > MAX_REQUEST_BYTES {
        return Err(invalid(format!("request larger than {MAX_REQUEST_BYTES} bytes")));
    }
    Ok(())
}

fn check_len(what: &str, value: &str, max: usize) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(invalid(format!("{what} must not be empty")));
    }
    if value.len() > max {
        return Err(invalid(format!("{what} longer than {max} bytes")));
    }
    Ok(())
}

fn invalid(msg: String) -> StoreError {
    StoreError::Invalid(msg)
}

/// A shared store is a store (so `Arc<dyn EventStore>` can be passed where `impl EventStore` is
/// expected).
#[async_trait]
impl<T: EventStore + ?Sized> EventStore for Arc<T> {
    async fn append(&self, req: AppendRequest) -> Result<Committed, StoreError> {
        (**self).append(req).await
    }

    async fn enqueue(&self, req: AppendRequest) -> AppendTicket {
        (**self).enqueue(req).await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        (**self).read_stream(stream, from_version, max_count).await
    }

    async fn read_all(
        &self,
        from: Position,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        (**self).read_all(from, max_count).await
    }

    fn head(&self) -> Position {
        (**self).head()
    }

    fn watch_head(&self) -> tokio::sync::watch::Receiver<Position> {
        (**self).watch_head()
    }

    fn stream_version(&self, stream: &str) -> Option<u64> {
        (**self).stream_version(stream)
    }

    async fn close(&self) -> Result<(), StoreError> {
        (**self).close().await
    }
}
