//! The EventStoreDB / KurrentDB backend (cargo feature `esdb`, on by default).
//!
//! # Layout: one log stream of chunks
//!
//! Accrual's whole log lives in **one ESDB stream** (`accrual-log` unless the URL says
//! `stream=NAME`). Each ESDB event of that stream is one **chunk**, byte for byte the chunk the
//! sled backend stores (format byte, first position, count, then per event its canonical bytes
//! and hash; ≤ 96 KiB unless a single event is larger). So:
//!
//! * stream revision `r` = the `r`-th chunk; Accrual's dense `Position`s are the events of the
//!   chunks in revision order, the same on every node;
//! * an append is one `AppendToStream` of a group commit's chunks with
//!   `ExpectedRevision::Exact(last revision this node knows)` (`NoStream` for the first): the
//!   log stream's revision is a compare-and-swap over the whole log, so an append is atomic
//!   across all of Accrual's streams, and expected versions, idempotency keys, `prev_hash` and
//!   `recorded_at = max(clock, last)` are checked and computed by the writer against the exact
//!   log it extends, as on sled;
//! * ESDB's `WrongExpectedVersion` on the log stream means another node appended first: the
//!   writer catches up (reads the new chunks), plans the group again against the new log (an
//!   Accrual expected version that no longer holds is now a [`StoreError::WrongExpectedVersion`]
//!   → ABORTED) and retries, at most [`RetryPolicy::conflicts_max`] times;
//! * chunk event ids are UUIDv5 of (log stream, first position, SHA-256 of the bytes): a retry
//!   after a lost reply is recognised by ESDB (idempotent write) or, failing that, by the writer
//!   reading its own id back at the revision it aimed for — never written twice;
//! * every node follows the log stream with a catch-up subscription and keeps the in-memory
//!   index (streams, idempotency keys, head, last hash), rebuilt at open from the stream; reads
//!   fetch chunks by revision (recent ones are cached); an append returns once this node's
//!   index holds it, so a read after a write on the same node sees it.
//!
//! Accrual's logical streams (`customer-…`, `subscription-…`) are therefore not ESDB streams:
//! ESDB cannot append atomically to several streams through this client, and Accrual's hash
//! chain needs one total order known at write time. What this costs: appends from all command
//! nodes serialise on one stream (a lost race costs a catch-up read and a retry).

mod config;
mod errors;
mod log;
mod mapping;
mod memory_log;
mod mirror;
#[cfg(feature = "nats")]
pub mod nats_cluster;
#[cfg(feature = "nats")]
mod nats_config;
#[cfg(feature = "nats")]
pub mod nats_log;
pub mod testkit;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

pub use config::{redact, validate_log_stream, EsdbConfig, DEFAULT_LOG_STREAM};
pub use errors::{classify, Failure, RetryPolicy};
pub use log::{server_append_size, ChunkLog, EsdbLog, OutChunk, StoredChunk, READ_PAGE_CHUNKS_MAX};
pub use mapping::{
    chunk_event_id, subscription_start, Expected, LogPosition, CHUNK_EVENT_TYPE, CHUNK_ID_NAMESPACE,
};
pub use memory_log::MemoryLog;
pub use mirror::{Ingest, Mirror, RECENT_BYTES_MAX, RECENT_CHUNKS_MAX};
#[cfg(feature = "nats")]
pub use nats_config::{NatsConfig, DEFAULT_NATS_STREAM};

use crate::group::Planner;
use crate::index::{read_slices, ChunkLog as IndexChunks};
use crate::{
    system_clock, validate, AppendRequest, AppendTicket, Clock, Committed, EventStore, Position,
    RecordedEvent, StoreError,
};

/// Requests waiting for the writer (backpressure beyond that).
pub const QUEUE_REQUESTS_MAX: usize = 1_024;
/// Size of one ESDB append as the server counts it ([`server_append_size`]): several requests
/// share an append only while their chunks fit (a group that does not is split); a single
/// larger request gets an append of its own, which the server refuses unless its
/// `MaxAppendSize` (default 1 MiB, the value here) was raised. Also the bound, in request bytes,
/// of the requests the writer takes into one group before planning.
pub const GROUP_BYTES_MAX: usize = 1 << 20;

/// Everything the backend needs besides the log stream itself.
#[derive(Clone)]
pub struct EsdbOptions {
    pub log_stream: String,
    pub commit_events_max: usize,
    pub retry: RetryPolicy,
    pub clock: Clock,
}

impl EsdbOptions {
    pub fn new(log_stream: &str) -> EsdbOptions {
        EsdbOptions {
            log_stream: log_stream.to_owned(),
            commit_events_max: crate::DEFAULT_COMMIT_EVENTS_MAX,
            retry: RetryPolicy::default(),
            clock: system_clock(),
        }
    }
}

struct Job {
    req: AppendRequest,
    bytes: usize,
    reply: oneshot::Sender<Result<Committed, StoreError>>,
}

struct Shared {
    log: Arc<dyn ChunkLog>,
    options: EsdbOptions,
    mirror: RwLock<Mirror>,
    head_tx: watch::Sender<Position>,
    /// Set when the log stream holds something that does not continue the log: no more appends.
    failed: Mutex<Option<String>>,
}

/// [`EventStore`] on an EventStoreDB / KurrentDB log stream.
pub struct EsdbStore {
    shared: Arc<Shared>,
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    writer: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Dropped with the store: stops the follower.
    _stop: watch::Sender<bool>,
}

impl EsdbStore {
    /// Connects to the server of `config`, reads the whole log stream, and starts following it.
    /// Fails with [`StoreError::Unavailable`] if the server cannot be reached within the
    /// retry policy, [`StoreError::Corrupt`] if the stream is not a valid Accrual log.
    pub async fn open(config: &EsdbConfig) -> Result<EsdbStore, StoreError> {
        let log = EsdbLog::connect(&config.connection, &config.log_stream)
            .map_err(Failure::into_store_error)?;
        let mut options = EsdbOptions::new(&config.log_stream);
        options.commit_events_max = config.commit_events_max;
        tracing::info!(url = %config.redacted(), stream = %config.log_stream, "opening the EventStoreDB log");
        EsdbStore::open_on(Arc::new(log), options).await
    }

    /// Connects to the JetStream servers of `config` and opens the log on its stream.
    #[cfg(feature = "nats")]
    pub async fn open_nats(config: &NatsConfig) -> Result<EsdbStore, StoreError> {
        tracing::info!(servers = %config.redacted(), stream = %config.stream, replicas = config.replicas, "opening the NATS JetStream log");
        let log = nats_log::NatsLog::open(config).await.map_err(|f| match f {
            Failure::Transient(m) | Failure::Permanent(m) => StoreError::Unavailable(m),
            other => other.into_store_error(),
        })?;
        let mut options = EsdbOptions::new(&config.stream);
        options.commit_events_max = config.commit_events_max;
        EsdbStore::open_on(Arc::new(log), options).await
    }

    /// Opens the backend over any [`ChunkLog`] (a [`MemoryLog`] in tests).
    pub async fn open_on(
        log: Arc<dyn ChunkLog>,
        options: EsdbOptions,
    ) -> Result<EsdbStore, StoreError> {
        validate_log_stream(&options.log_stream)?;
        let shared = Arc::new(Shared {
            log,
            options,
            mirror: RwLock::new(Mirror::default()),
            head_tx: watch::channel(0).0,
            failed: Mutex::new(None),
        });
        let started = Instant::now();
        shared.catch_up().await?;
        tracing::info!(
            events = shared.mirror.read().head(),
            chunks = shared.mirror.read().next_revision(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "event store index rebuilt from the shared log (EventStoreDB or JetStream stream)"
        );
        let (tx, rx) = mpsc::channel(QUEUE_REQUESTS_MAX);
        let writer = tokio::spawn(writer_loop(shared.clone(), rx));
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(follow_loop(shared.clone(), stop_rx));
        Ok(EsdbStore {
            shared,
            sender: Mutex::new(Some(tx)),
            writer: tokio::sync::Mutex::new(Some(writer)),
            _stop: stop_tx,
        })
    }

    /// The `$all` position of the last chunk this node knows (when the server reported it).
    pub fn last_log_position(&self) -> Option<LogPosition> {
        self.shared.mirror.read().last_log_position()
    }

    /// Chunks (= log stream revisions) this node knows.
    pub fn chunk_count(&self) -> u64 {
        self.shared.mirror.read().next_revision()
    }

    /// Reads whatever other nodes appended since this node last looked (the follower does it
    /// continuously; this is for callers that need it now, e.g. read-your-writes across nodes).
    pub async fn catch_up(&self) -> Result<Position, StoreError> {
        self.shared.catch_up().await?;
        Ok(self.head())
    }

    async fn read_ranges(
        &self,
        ranges: &[Range<Position>],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (slices, wanted, mut chunks) = {
            let mirror = self.shared.mirror.read();
            let slices = mirror.slices(ranges);
            let mut wanted = Vec::new();
            let mut chunks = FetchedChunks::default();
            let mut seen = std::collections::HashSet::new();
            for s in &slices {
                if !seen.insert(s.chunk) {
                    continue;
                }
                match mirror.cached(s.chunk) {
                    Some(bytes) => drop(chunks.0.insert(s.chunk, bytes)),
                    None => wanted.push((s.chunk, ordinal(&mirror, s.chunk)?)),
                }
            }
            (slices, wanted, chunks)
        };
        self.shared.fetch(&wanted, &mut chunks).await?;
        read_slices(&chunks, &slices)
    }
}

/// Events read per page when `read_stream` scans the log.
const STREAM_SCAN_PAGE_EVENTS: usize = 4_096;

fn ordinal(mirror: &Mirror, first: Position) -> Result<u64, StoreError> {
    let missing = || StoreError::Corrupt { position: first, detail: "chunk not indexed".into() };
    mirror.chunk_ordinal(first).map(|o| o as u64).ok_or_else(missing)
}

#[derive(Default)]
struct FetchedChunks(HashMap<Position, Arc<[u8]>>);

impl IndexChunks for FetchedChunks {
    type Bytes = Arc<[u8]>;

    /// Exact lookups only: the slices name the chunks they need.
    fn chunk_at(&self, first: Position) -> Result<Option<(Position, Arc<[u8]>)>, StoreError> {
        let missing =
            || StoreError::Corrupt { position: first, detail: "chunk not fetched".into() };
        self.0.get(&first).cloned().map(|b| Some((first, b))).ok_or_else(missing)
    }
}

impl Shared {
    async fn with_retry<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let policy = self.options.retry;
        let mut attempt = 0u32;
        loop {
            match call().await {
                Err(Failure::Transient(m)) if attempt + 1 < policy.attempts_max => {
                    tracing::warn!(attempt, error = %m, "log server {what} failed; retrying");
                    tokio::time::sleep(policy.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Reads every chunk after the ones known, until the end of the stream.
    async fn catch_up(&self) -> Result<(), StoreError> {
        loop {
            let from = self.mirror.read().next_revision();
            let page = self
                .with_retry("read", || self.log.read(from, READ_PAGE_CHUNKS_MAX))
                .await
                .map_err(Failure::into_store_error)?;
            let short = page.len() < READ_PAGE_CHUNKS_MAX;
            for chunk in &page {
                if let Ingest::Gap { next_revision } = self.ingest(chunk)? {
                    return Err(self.fail(format!(
                        "the log stream skips from revision {next_revision} to {} (truncated, \
                         scavenged or $tb/$maxCount metadata set on it?)",
                        chunk.revision
                    )));
                }
            }
            if short {
                return Ok(());
            }
        }
    }

    /// Ingests one chunk under the lock; a corrupt chunk stops all further appends.
    fn ingest(&self, chunk: &StoredChunk) -> Result<Ingest, StoreError> {
        let result = {
            let mut mirror = self.mirror.write();
            let result = mirror.ingest(chunk);
            let head = mirror.head();
            self.head_tx.send_if_modified(|h| std::mem::replace(h, head) != head);
            result
        };
        result.map_err(|e| match e {
            StoreError::Corrupt { detail, .. } => self.fail(detail),
            other => other,
        })
    }

    /// Fetches chunks by revision, in runs of consecutive revisions.
    async fn fetch(
        &self,
        wanted: &[(Position, u64)],
        into: &mut FetchedChunks,
    ) -> Result<(), StoreError> {
        let mut i = 0;
        while i < wanted.len() {
            let mut run = 1;
            while i + run < wanted.len()
                && run < READ_PAGE_CHUNKS_MAX
                && wanted[i + run].1 == wanted[i].1 + run as u64
            {
                run += 1;
            }
            let from = wanted[i].1;
            let page = self
                .with_retry("read", || self.log.read(from, run))
                .await
                .map_err(Failure::into_store_error)?;
            if page.len() != run {
                let detail =
                    format!("log stream revisions {from}.. returned {} of {run}", page.len());
                return Err(StoreError::Corrupt { position: wanted[i].0, detail });
            }
            for (k, chunk) in page.into_iter().enumerate() {
                into.0.insert(wanted[i + k].0, Arc::from(chunk.bytes));
            }
            i += run;
        }
        Ok(())
    }

    /// Stops appends for good, with the reason.
    fn fail(&self, detail: String) -> StoreError {
        let position = self.mirror.read().head();
        let err = StoreError::Corrupt { position, detail };
        tracing::error!(error = %err, "the shared log stream does not continue the log");
        *self.failed.lock() = Some(err.to_string());
        err
    }

    fn failed(&self) -> Option<String> {
        self.failed.lock().clone()
    }
}

// ---------------------------------------------------------------- writer

/// A planned group: each request's outcome, and the chunks to append if any request adds events.
struct Planned {
    results: Vec<Result<Committed, StoreError>>,
    batch: Option<Batch>,
}

struct Batch {
    expected: Expected,
    chunks: Vec<OutChunk>,
}

async fn writer_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let events_max = shared.options.commit_events_max;
    let mut next: Option<Job> = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let (mut events, mut bytes) = (job_size(&first).0, first.bytes);
        let mut jobs = vec![first];
        while let Ok(job) = rx.try_recv() {
            let (e, b) = (job_size(&job).0, job.bytes);
            if events + e > events_max || bytes + b > GROUP_BYTES_MAX {
                next = Some(job);
                break;
            }
            events += e;
            bytes += b;
            jobs.push(job);
        }
        commit_group(&shared, jobs).await;
    }
}

fn job_size(job: &Job) -> (usize, usize) {
    (job.req.writes.iter().map(|w| w.events.len()).sum(), job.bytes)
}

async fn commit_group(shared: &Shared, jobs: Vec<Job>) {
    // Halves of a group too large for one append, in queue order (each split halves a group,
    // so this ends; a single request is never split).
    let mut groups = vec![jobs];
    while let Some(mut jobs) = groups.pop() {
        let results = match commit_planned(shared, &jobs).await {
            Ok(Some(results)) => results,
            Ok(None) => {
                let rest = jobs.split_off(jobs.len() / 2);
                groups.push(rest);
                groups.push(jobs);
                continue;
            }
            Err(e) => jobs.iter().map(|_| Err(for_caller(&e))).collect(),
        };
        for (job, result) in jobs.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

/// A group's failure as each of its requests sees it: INVALID_ARGUMENT stays that (the request
/// can never be written), anything else is UNAVAILABLE.
fn for_caller(e: &StoreError) -> StoreError {
    match e {
        StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Plans and appends a group; `Ok(None)`: the group (of several requests) does not fit one
/// append and must be split.
async fn commit_planned(
    shared: &Shared,
    jobs: &[Job],
) -> Result<Option<Vec<Result<Committed, StoreError>>>, StoreError> {
    let conflicts_max = shared.options.retry.conflicts_max;
    for _ in 0..=conflicts_max {
        if let Some(reason) = shared.failed() {
            return Err(StoreError::Unavailable(format!("appends stopped: {reason}")));
        }
        let planned = plan(shared, jobs);
        let Some(batch) = planned.batch else { return Ok(Some(planned.results)) };
        if jobs.len() > 1 && server_append_size(&batch.chunks) > GROUP_BYTES_MAX {
            return Ok(None);
        }
        let failure = match shared
            .with_retry("append", || shared.log.append(batch.expected, &batch.chunks))
            .await
        {
            Ok(position) => {
                ingest_own(shared, &batch, position)?;
                return Ok(Some(planned.results));
            }
            Err(Failure::TooLarge(_)) if jobs.len() > 1 => return Ok(None),
            Err(failure) => failure,
        };
        // Whatever happened, look at the stream: the write may have landed (reply lost).
        shared.catch_up().await?;
        if landed(shared, &batch) {
            return Ok(Some(planned.results));
        }
        match failure {
            Failure::Conflict { current } => {
                tracing::debug!(?current, "lost the log stream to another node; planning again");
            }
            other => return Err(other.into_store_error()),
        }
    }
    Err(Failure::Conflict { current: None }.into_store_error())
}

/// Plans the group against this node's current view of the log.
fn plan(shared: &Shared, jobs: &[Job]) -> Planned {
    let mirror = shared.mirror.read();
    let mut planner = Planner::new(&mirror.index, (shared.options.clock)());
    let results: Vec<_> = jobs.iter().map(|job| planner.add(&job.req)).collect();
    let expected = Expected::for_next_revision(mirror.next_revision());
    let stream = &shared.options.log_stream;
    let batch = planner.finish().map(|commit| Batch {
        expected,
        chunks: commit
            .chunks
            .into_iter()
            .map(|(first, bytes)| OutChunk {
                event_id: chunk_event_id(stream, first, &bytes),
                bytes,
            })
            .collect(),
    });
    Planned { results, batch }
}

/// Applies the chunks this node just appended (unless the follower already did).
fn ingest_own(
    shared: &Shared,
    batch: &Batch,
    position: Option<LogPosition>,
) -> Result<(), StoreError> {
    let first_revision = batch.expected.next_revision();
    let last = batch.chunks.len().saturating_sub(1);
    for (i, c) in batch.chunks.iter().enumerate() {
        let chunk = StoredChunk {
            revision: first_revision + i as u64,
            event_id: c.event_id,
            bytes: c.bytes.clone(),
            log_position: if i == last { position } else { None },
        };
        if let Ingest::Gap { next_revision } = shared.ingest(&chunk)? {
            let detail =
                format!("appended at revision {} but only {next_revision} known", chunk.revision);
            return Err(StoreError::Corrupt { position: 0, detail });
        }
    }
    Ok(())
}

/// Whether the stream holds this batch's first chunk at the revision it aimed for.
fn landed(shared: &Shared, batch: &Batch) -> bool {
    let first = batch.expected.next_revision();
    let mirror = shared.mirror.read();
    batch.chunks.first().is_some_and(|c| mirror.chunk_id(first) == Some(c.event_id))
}

// ---------------------------------------------------------------- follower

async fn follow_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        let from = shared.mirror.read().next_revision();
        let mut chunks = shared.log.follow(from);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                item = chunks.next() => match item {
                    Some(Ok(chunk)) => {
                        failures = 0;
                        match shared.ingest(&chunk) {
                            Ok(Ingest::Gap { .. }) => {
                                if shared.catch_up().await.is_err() { break }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                    Some(Err(f)) => {
                        tracing::warn!(error = ?f, "following the shared log stream failed; resubscribing");
                        break;
                    }
                    None => break,
                },
            }
        }
        let pause = shared.options.retry.backoff(failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

// ---------------------------------------------------------------- trait

#[async_trait]
impl EventStore for EsdbStore {
    async fn append(&self, req: AppendRequest) -> Result<Committed, StoreError> {
        self.enqueue(req).await.await
    }

    async fn enqueue(&self, req: AppendRequest) -> AppendTicket {
        let size = match validate(&req, self.shared.options.commit_events_max) {
            Ok(size) => size,
            Err(e) => return AppendTicket::ready(Err(e)),
        };
        let Some(sender) = self.sender.lock().clone() else {
            return AppendTicket::ready(Err(StoreError::Unavailable("store is closed".into())));
        };
        let (reply, rx) = oneshot::channel();
        if sender.send(Job { req, bytes: size.bytes, reply }).await.is_err() {
            return AppendTicket::ready(Err(StoreError::Unavailable(
                "store writer stopped".into(),
            )));
        }
        AppendTicket::waiting(rx)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // The index keeps each stream's first position and last version only: page through the
        // log from the first position (bounded by the stream's last version and the head).
        let Some(head) = self.shared.mirror.read().index.stream(stream) else {
            return Ok(Vec::new());
        };
        if max_count == 0 || from_version > head.last_version {
            return Ok(Vec::new());
        }
        let wanted_last = from_version.saturating_add(max_count as u64 - 1).min(head.last_version);
        let mut out = Vec::new();
        let mut at = head.first_position;
        loop {
            let range = self.shared.mirror.read().index.all_range(at, STREAM_SCAN_PAGE_EVENTS);
            if range.is_empty() {
                return Ok(out);
            }
            at = range.end;
            for event in self.read_ranges(&[range]).await? {
                if event.stream != stream || event.stream_version < from_version {
                    continue;
                }
                let version = event.stream_version;
                out.push(event);
                if version >= wanted_last {
                    return Ok(out);
                }
            }
        }
    }

    async fn read_all(
        &self,
        from: Position,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let range = self.shared.mirror.read().index.all_range(from, max_count);
        self.read_ranges(&[range]).await
    }

    fn head(&self) -> Position {
        self.shared.mirror.read().head()
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.shared.head_tx.subscribe()
    }

    fn stream_version(&self, stream: &str) -> Option<u64> {
        self.shared.mirror.read().index.stream_version(stream)
    }

    async fn close(&self) -> Result<(), StoreError> {
        drop(self.sender.lock().take());
        if let Some(writer) = self.writer.lock().await.take() {
            writer.await.map_err(|e| StoreError::Unavailable(format!("writer task: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
