//! Durable backend on sled 0.34 with group commit (see the crate docs for the layout).

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use sled::Transactional;
use tokio::sync::{mpsc, oneshot, watch};

use crate::checkpoint::{self, INDEX_TREE};
use crate::envelope::Chunk;
use crate::group::{Commit, Planner};
use crate::index::{read_range, read_stream_scan, ChunkLog, IdemEntry, IdemStore, Index};
use crate::metrics::{self, AppendLatency};
use crate::{
    system_clock, validate, AppendRequest, AppendTicket, Clock, Committed, EventStore, Position,
    RecordedEvent, RequestSize, StoreError, DEFAULT_COMMIT_EVENTS_MAX,
};

/// Name of the sled tree that holds the log's chunks (see the crate docs for the layout).
pub const LOG_TREE: &str = "log";
/// Name of the sled tree of idempotency keys (key → digest and positions), written in the same
/// sled transaction as the chunks of the commit that used the key.
pub const IDEMPOTENCY_TREE: &str = "idempotency";
pub(crate) const FORMAT_KEY: &str = "event-store-format";
/// The store format: 2 since chunks are written in chunk format 2 (compressed), so a binary
/// that reads only format-1 chunks refuses the store by its marker instead of calling its
/// chunks damaged. A format-1 store is upgraded (its marker rewritten) at open; its chunks stay
/// as they are and are read as before.
pub(crate) const STORE_FORMAT: u8 = 2;
/// Store formats this binary opens.
pub(crate) const STORE_FORMATS_READ: [u8; 2] = [1, 2];
/// A group stops taking requests once it holds this many request bytes.
const GROUP_BYTES_TARGET: usize = 8 << 20;
/// sled segment size. Persisted by sled in the database: never change it for existing stores
/// (sled refuses to open a database with another one, so anything opening the log directly must
/// use this value). sled writes items larger than a quarter of it to blob files it never
/// fsyncs; 8 MiB (the maximum is 16 MiB) puts that threshold at 2 MiB, far above a chunk's leaf
/// (see `group.rs`).
pub const SLED_SEGMENT_BYTES: usize = 8 << 20;
/// Default of [`SledConfig::index_checkpoint_interval_events`].
pub const DEFAULT_INDEX_CHECKPOINT_INTERVAL_EVENTS: u64 = 1_000_000;
/// Default of [`SledConfig::cache_bytes_max`]: 128 MiB (chosen by measurement, see
/// docs/decisions/0026-store-index-and-chunks.md).
pub const DEFAULT_CACHE_BYTES_MAX: u64 = 128 << 20;
/// Reads of more events than this run on the blocking pool.
const INLINE_READ_EVENTS: u64 = 4_096;

/// Configuration of [`SledStore::open`].
#[derive(Clone)]
pub struct SledConfig {
    /// Directory of the sled database (created if missing).
    pub path: PathBuf,
    /// Maximum events per group commit, and per request.
    pub commit_events_max: usize,
    /// Capacity of the bounded queue of append requests waiting for the writer.
    pub queue_requests_max: usize,
    /// Source of `recorded_at` (unix micros).
    pub clock: Clock,
    /// The index checkpoint is written after the first commit that ends this many events
    /// after the previous checkpoint (and when the store closes): an open after a crash scans at
    /// most about this many events (plus one group commit).
    pub index_checkpoint_interval_events: u64,
    /// Bound of sled's page cache (sled's `cache_capacity`), in bytes. sled's own default is
    /// 1 GiB per database; see [`DEFAULT_CACHE_BYTES_MAX`].
    pub cache_bytes_max: u64,
}

impl SledConfig {
    /// Defaults: 16,384 events per commit, 1,024 queued requests, system clock.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SledConfig {
            path: path.into(),
            commit_events_max: DEFAULT_COMMIT_EVENTS_MAX,
            queue_requests_max: 1_024,
            clock: system_clock(),
            index_checkpoint_interval_events: DEFAULT_INDEX_CHECKPOINT_INTERVAL_EVENTS,
            cache_bytes_max: DEFAULT_CACHE_BYTES_MAX,
        }
    }
}

impl std::fmt::Debug for SledConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledConfig")
            .field("path", &self.path)
            .field("commit_events_max", &self.commit_events_max)
            .field("queue_requests_max", &self.queue_requests_max)
            .field("index_checkpoint_interval_events", &self.index_checkpoint_interval_events)
            .field("cache_bytes_max", &self.cache_bytes_max)
            .finish_non_exhaustive()
    }
}

type Reply = oneshot::Sender<Result<Committed, StoreError>>;

struct Job {
    req: AppendRequest,
    size: RequestSize,
    reply: Reply,
    /// When the caller asked (before waiting for room in the queue): for `APPEND_SECONDS`.
    enqueued_at: Instant,
}

impl Job {
    fn answer(self, outcome: Result<Committed, StoreError>, latency: &AppendLatency) {
        latency.record(self.enqueued_at);
        let _ = self.reply.send(outcome); // the caller may have gone away
    }
}

/// State shared by the store handle and the writer thread.
struct Shared {
    db: sled::Db,
    log: sled::Tree,
    idem: sled::Tree,
    /// The index checkpoint's tree.
    meta: sled::Tree,
    index: RwLock<Index>,
    /// Head covered by the last checkpoint written (writer thread only, after open).
    checkpoint_head: Mutex<Position>,
    checkpoint_interval_events: u64,
    head_tx: watch::Sender<Position>,
    /// Set on a storage failure; appends are refused from then on.
    failure: Mutex<Option<String>>,
    clock: Clock,
    /// Test hook: the next flush fails.
    #[cfg(test)]
    fail_next_flush: std::sync::atomic::AtomicBool,
    /// Test hook: the writer stops without writing its checkpoint (as after a kill -9).
    #[cfg(test)]
    skip_exit_checkpoint: std::sync::atomic::AtomicBool,
}

/// How [`SledStore::open`] built its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    /// The index came from the checkpoint (only the log after it was scanned).
    pub from_checkpoint: bool,
    /// Why the checkpoint was not used, when one was there but was not usable.
    pub checkpoint_refused: Option<String>,
    /// Events read and checked by the scan (the whole log without a usable checkpoint).
    pub events_scanned: u64,
    /// Time from opening the database to a ready index.
    pub elapsed: std::time::Duration,
}

/// Durable [`EventStore`] on sled: one atomic batch of chunk keys and one `Db::flush` per group
/// commit.
pub struct SledStore {
    shared: Arc<Shared>,
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    commit_events_max: usize,
    open_report: OpenReport,
}

fn io_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("storage error: {e}"))
}

impl SledStore {
    /// Opens (or creates) the store and rebuilds the in-memory index by scanning the log.
    pub fn open(config: SledConfig) -> Result<SledStore, StoreError> {
        if config.commit_events_max == 0
            || config.queue_requests_max == 0
            || config.index_checkpoint_interval_events == 0
        {
            return Err(StoreError::Invalid(
                "commit_events_max, queue_requests_max and index_checkpoint_interval_events ≥ 1"
                    .into(),
            ));
        }
        let opened = open_and_index(&config.path, config.cache_bytes_max)?;
        let index = opened.index;
        metrics::record_head(index.head());
        let shared = Arc::new(Shared {
            head_tx: watch::channel(index.head()).0,
            checkpoint_head: Mutex::new(index.head()),
            checkpoint_interval_events: config.index_checkpoint_interval_events,
            index: RwLock::new(index),
            failure: Mutex::new(None),
            clock: config.clock,
            #[cfg(test)]
            fail_next_flush: Default::default(),
            #[cfg(test)]
            skip_exit_checkpoint: Default::default(),
            db: opened.db,
            log: opened.log,
            idem: opened.idem,
            meta: opened.meta,
        });
        if opened.report.events_scanned > 0 || opened.report.checkpoint_refused.is_some() {
            // The scan's result is saved now, so the next open does not scan it again.
            shared.write_checkpoint().map_err(io_error)?;
        }
        let (sender, receiver) = mpsc::channel(config.queue_requests_max);
        let writer_shared = shared.clone();
        let events_max = config.commit_events_max;
        let writer = std::thread::Builder::new()
            .name("event-store-writer".into())
            .spawn(move || writer_loop(&writer_shared, receiver, events_max))
            .map_err(io_error)?;
        Ok(SledStore {
            shared,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            commit_events_max: events_max,
            open_report: opened.report,
        })
    }

    /// Test hook: the writer will stop without writing its checkpoint, as if killed.
    #[cfg(test)]
    pub(crate) fn crash_on_close(&self) {
        self.shared.skip_exit_checkpoint.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// How the open built the index (from the checkpoint or by a full scan, events scanned).
    pub fn open_report(&self) -> &OpenReport {
        &self.open_report
    }

    /// Head position and the hash of the last event (`GENESIS_HASH` when empty).
    pub fn head_hash(&self) -> (Position, [u8; 32]) {
        let index = self.shared.index.read();
        (index.head(), index.last_hash())
    }

    fn unavailable_reason(&self) -> Option<String> {
        self.shared.failure.lock().clone()
    }

    /// Runs a read inline when `inline`, else on tokio's blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        inline: bool,
        read: impl FnOnce(&SledLog<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if inline {
            return read(&SledLog(&self.shared.log));
        }
        let shared = self.shared.clone();
        let task = tokio::task::spawn_blocking(move || read(&SledLog(&shared.log)));
        task.await.map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }

    /// Stops the writer (it drains the queue first) and waits for it.
    fn stop_writer(&self) -> Option<JoinHandle<()>> {
        drop(self.sender.lock().take());
        self.writer.lock().take()
    }
}

impl Drop for SledStore {
    /// Finishes queued appends and waits for the writer, so the database is closed (and its
    /// lock released) when the drop returns.
    fn drop(&mut self) {
        if let Some(handle) = self.stop_writer() {
            let _ = handle.join();
        }
    }
}

/// Attempts to take sled's file lock: a store dropped a moment ago in this process may still be
/// releasing it (sled's background threads let go of the database shortly after the drop).
const OPEN_LOCK_ATTEMPTS_MAX: u32 = 100;
const OPEN_LOCK_RETRY_MS: u64 = 20;

fn open_db(path: &std::path::Path, cache_bytes_max: u64) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(path)
        .segment_size(SLED_SEGMENT_BYTES)
        .cache_capacity(cache_bytes_max)
        .flush_every_ms(None); // durability comes from the flush of every group commit
    open_waiting(&config).map_err(io_error)
}

/// Whether sled refused to open because another handle holds its file lock (sled 0.34 reports
/// it as an `Other` I/O error naming the lock, wrapping the OS's `WouldBlock`).
pub(crate) fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

/// Opens sled with `config`, retrying for at most `OPEN_LOCK_ATTEMPTS_MAX × OPEN_LOCK_RETRY_MS`
/// (2 s) while its file lock is held: a store closed a moment ago in this process may still be
/// releasing it. A lock still held after that is returned as the error.
pub fn open_waiting(config: &sled::Config) -> sled::Result<sled::Db> {
    for attempt in 1..=OPEN_LOCK_ATTEMPTS_MAX {
        match config.open() {
            Err(e) if is_lock_held(&e) && attempt < OPEN_LOCK_ATTEMPTS_MAX => {
                std::thread::sleep(std::time::Duration::from_millis(OPEN_LOCK_RETRY_MS));
            }
            other => return other,
        }
    }
    unreachable!("the last attempt returns")
}

/// Opens the database and rebuilds the index from the log. A damaged log is an error naming the
/// log and what to do, never a panic: sled 0.34 panics on some damaged files (at open, or when
/// it first reads a page), so this runs under [`crate::contain_panic`].
fn open_and_index(path: &std::path::Path, cache_bytes_max: u64) -> Result<Opened, StoreError> {
    let opened = crate::contain_panic(|| -> Result<_, StoreError> {
        let started = Instant::now();
        let db = open_db(path, cache_bytes_max)?;
        let log = db.open_tree(LOG_TREE).map_err(io_error)?;
        let idem = db.open_tree(IDEMPOTENCY_TREE).map_err(io_error)?;
        let meta = db.open_tree(INDEX_TREE).map_err(io_error)?;
        check_format(&db, &log)?;
        let (index, report) = build_index(&log, &idem, &meta, started)?;
        Ok(Opened { db, log, idem, meta, index, report })
    });
    match opened {
        Ok(Err(StoreError::Corrupt { position, detail })) => {
            Err(StoreError::Corrupt { position, detail: log_damaged(path, &detail) })
        }
        Ok(Err(StoreError::Unavailable(m)))
            if m.contains("corrupt")
                || m.contains("Unsupported")
                || m.contains("ReportableBug") =>
        {
            Err(StoreError::Unavailable(log_damaged(path, &m)))
        }
        Ok(other) => other,
        Err(panic) => Err(StoreError::Unavailable(log_damaged(path, &panic))),
    }
}

/// What a damaged log is and what to do about it: the log is the only source of the books, so
/// it is restored, never rebuilt.
fn log_damaged(path: &std::path::Path, detail: &str) -> String {
    let data_dir = path.parent().unwrap_or(std::path::Path::new("."));
    format!(
        "the event log {path} is damaged ({detail}). The log is the books' only source and \
         cannot be rebuilt: stop accrual and restore {path} from a backup, checked first with \
         `accrual audit verify --data-dir <the backup's data dir>` (the read models in {data} \
         are rebuilt from the restored log)",
        path = path.display(),
        data = data_dir.join("read-models").display()
    )
}

fn check_format(db: &sled::Db, log: &sled::Tree) -> Result<(), StoreError> {
    match db.get(FORMAT_KEY).map_err(io_error)? {
        Some(v) if v.as_ref() == [STORE_FORMAT] => Ok(()),
        Some(v) if v.len() == 1 && STORE_FORMATS_READ.contains(&v[0]) => {
            db.insert(FORMAT_KEY, &[STORE_FORMAT]).map_err(io_error)?;
            db.flush().map_err(io_error)?;
            Ok(())
        }
        Some(v) => Err(StoreError::Unavailable(format!("unsupported store format {v:?}"))),
        None if log.is_empty() => {
            db.insert(FORMAT_KEY, &[STORE_FORMAT]).map_err(io_error)?;
            db.flush().map_err(io_error)?;
            Ok(())
        }
        None => {
            Err(StoreError::Corrupt { position: 0, detail: "store format marker missing".into() })
        }
    }
}

struct Opened {
    db: sled::Db,
    log: sled::Tree,
    idem: sled::Tree,
    meta: sled::Tree,
    index: Index,
    report: OpenReport,
}

/// The index from the checkpoint when it is there and the log agrees with it, else from
/// nothing; then the log after it is scanned (all of it without a checkpoint).
fn build_index(
    log: &sled::Tree,
    idem: &sled::Tree,
    meta: &sled::Tree,
    started: Instant,
) -> Result<(Index, OpenReport), StoreError> {
    let restored = checkpoint::load(meta).and_then(|loaded| match loaded {
        Some(index) => checkpoint::verify(log, &index).map(|()| Some(index)),
        None => Ok(None),
    });
    let (index, refused) = match restored {
        Ok(Some(index)) => (Some(index), None),
        Ok(None) => (None, None),
        Err(why) => {
            tracing::warn!(reason = %why, "index checkpoint not used; scanning the whole log");
            (None, Some(why))
        }
    };
    let from_checkpoint = index.is_some();
    let index = index.unwrap_or_else(Index::without_idempotency);
    let from = index.head();
    let (index, chunks) = scan(log, idem, index)?;
    let report = OpenReport {
        from_checkpoint,
        checkpoint_refused: refused,
        events_scanned: index.head() - from,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        events = index.head(),
        from_checkpoint,
        events_scanned = report.events_scanned,
        chunks_scanned = chunks,
        streams = index.stream_count(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "event store index rebuilt from the checkpoint and the log after it"
    );
    Ok((index, report))
}

/// Scans the log from the index's head, checking its links, updating the index and (re)writing
/// the idempotency entries of the events scanned. Returns the index and the chunks scanned.
fn scan(log: &sled::Tree, idem: &sled::Tree, mut index: Index) -> Result<(Index, u64), StoreError> {
    let mut chunks = 0_u64;
    let mut keys = IdemRebuild { tree: idem, current: None };
    for item in log.range(index.head().to_be_bytes()..) {
        let (key, value) = item.map_err(io_error)?;
        let position = key_position(&key)?;
        let view = Chunk::parse(position, &value)?;
        index.begin_chunk(&view)?;
        chunks += 1;
        let mut records = view.records();
        while let Some(raw) = records.next_raw()? {
            let env = raw.decode()?;
            index.observe(&env, raw.hash)?;
            if let (Some(key), Some(digest)) = (env.idempotency_key, env.idempotency_digest) {
                keys.observe(key, digest, env.position)?;
            }
        }
    }
    keys.finish()?;
    Ok((index, chunks))
}

/// Rewrites the idempotency entries of scanned events (they are derived from the log): the
/// events of one request are contiguous, so one entry is open at a time.
struct IdemRebuild<'a> {
    tree: &'a sled::Tree,
    current: Option<(String, IdemEntry)>,
}

impl IdemRebuild<'_> {
    fn observe(
        &mut self,
        key: &str,
        digest: [u8; 32],
        position: Position,
    ) -> Result<(), StoreError> {
        if let Some((k, entry)) = &mut self.current {
            if k == key && entry.digest == digest {
                entry.last = position;
                return Ok(());
            }
        }
        self.finish()?;
        self.current =
            Some((key.to_owned(), IdemEntry { digest, first: position, last: position }));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        let Some((key, mut entry)) = self.current.take() else { return Ok(()) };
        let stored = self.tree.get(key.as_bytes()).map_err(io_error)?;
        match stored.as_deref().and_then(IdemEntry::decode) {
            Some(old) if old == entry => return Ok(()),
            Some(old) if old.digest == entry.digest && old.first < entry.first => {
                entry.first = old.first;
            }
            _ => {}
        }
        self.tree.insert(key.as_bytes(), &entry.encode()[..]).map_err(io_error)?;
        Ok(())
    }
}

/// Idempotency keys looked up in the sled tree.
struct IdemTree<'a>(&'a sled::Tree);

impl IdemStore for IdemTree<'_> {
    fn idempotency(&self, key: &str) -> Result<Option<IdemEntry>, StoreError> {
        let stored = self.0.get(key.as_bytes()).map_err(io_error)?;
        match stored {
            None => Ok(None),
            Some(bytes) => IdemEntry::decode(&bytes).map(Some).ok_or_else(|| {
                StoreError::Unavailable(format!("idempotency entry of {key:?} does not decode"))
            }),
        }
    }
}

pub(crate) fn key_position(key: &[u8]) -> Result<Position, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
        position: 0,
        detail: format!("log key of {} bytes", key.len()),
    })?;
    Ok(Position::from_be_bytes(bytes))
}

struct SledLog<'a>(&'a sled::Tree);

impl ChunkLog for SledLog<'_> {
    type Bytes = sled::IVec;

    fn chunk_at(&self, position: Position) -> Result<Option<(Position, sled::IVec)>, StoreError> {
        match self.0.range(..=position.to_be_bytes()).next_back() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item.map_err(io_error)?;
                Ok(Some((key_position(&key)?, value)))
            }
        }
    }
}

/// The single writer: forms groups from the queue and commits them until every sender is gone.
fn writer_loop(shared: &Shared, mut receiver: mpsc::Receiver<Job>, events_max: usize) {
    let _guard = FailOnPanic(shared);
    let mut carry = None;
    while let Some(first) = carry.take().or_else(|| receiver.blocking_recv()) {
        let group = collect_group(first, &mut receiver, &mut carry, events_max);
        shared.commit_group(group);
        let due = shared.index.read().head()
            >= shared.checkpoint_head.lock().saturating_add(shared.checkpoint_interval_events);
        if due && shared.failure.lock().is_none() {
            // Covers only flushed commits; made durable by the next group's flush (or at exit).
            if let Err(e) = shared.write_checkpoint_batch() {
                tracing::warn!(error = %e, "index checkpoint not written");
            }
        }
    }
    #[cfg(test)]
    if shared.skip_exit_checkpoint.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    if shared.failure.lock().is_none() {
        if let Err(e) = shared.write_checkpoint() {
            tracing::warn!(error = %e, "index checkpoint not written at close");
        }
    }
}

/// Marks the store failed if the writer panics (a violated invariant), so appends are refused.
struct FailOnPanic<'a>(&'a Shared);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let reason = "event store writer panicked (invariant violated)".to_owned();
            tracing::error!(%reason);
            *self.0.failure.lock() = Some(reason);
        }
    }
}

/// Takes what is waiting, up to `events_max` events; a request that does not fit is carried
/// over to the next group.
fn collect_group(
    first: Job,
    receiver: &mut mpsc::Receiver<Job>,
    carry: &mut Option<Job>,
    events_max: usize,
) -> Vec<Job> {
    let (mut events, mut bytes) = (first.size.events, first.size.bytes);
    let mut group = vec![first];
    while events < events_max && bytes < GROUP_BYTES_TARGET {
        let Ok(job) = receiver.try_recv() else { break };
        if events + job.size.events > events_max {
            *carry = Some(job);
            break;
        }
        events += job.size.events;
        bytes += job.size.bytes;
        group.push(job);
    }
    group
}

impl Shared {
    /// Writes the checkpoint of the current index (no flush).
    fn write_checkpoint_batch(&self) -> Result<(), sled::Error> {
        let index = self.index.read();
        self.meta.apply_batch(checkpoint::batch(&self.meta, &index)?)?;
        *self.checkpoint_head.lock() = index.head();
        Ok(())
    }

    /// Writes the checkpoint of the current index and flushes.
    fn write_checkpoint(&self) -> Result<(), sled::Error> {
        self.write_checkpoint_batch()?;
        self.db.flush().map(drop)
    }

    fn commit_group(&self, jobs: Vec<Job>) {
        if let Some(reason) = self.failure.lock().clone() {
            return reply_all(jobs, &reason);
        }
        let (outcomes, commit) = self.plan(&jobs);
        if let Some(commit) = commit {
            if let Err(e) = self.persist(&commit) {
                let reason = format!("storage failure, appends stopped: {e}");
                tracing::error!(%reason, position = commit.delta.first_position, "group commit failed");
                *self.failure.lock() = Some(reason.clone());
                metrics::record_commit_failure();
                return reply_all(jobs, &reason);
            }
            let head = commit.delta.end_position;
            tracing::trace!(
                requests = jobs.len(),
                first = commit.delta.first_position,
                head,
                "group committed"
            );
            let events = head - commit.delta.first_position;
            self.index.write().apply(commit.delta);
            self.head_tx.send_replace(head);
            metrics::record_commit(events, jobs.len(), head);
        }
        let latency = AppendLatency::new();
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            job.answer(outcome, &latency);
        }
    }

    fn plan(&self, jobs: &[Job]) -> (Vec<Result<Committed, StoreError>>, Option<Commit>) {
        let index = self.index.read();
        let idem = IdemTree(&self.idem);
        let mut planner = Planner::with_idempotency(&index, &idem, (self.clock)()).compressed();
        let outcomes = jobs.iter().map(|job| planner.add(&job.req)).collect();
        (outcomes, planner.finish())
    }

    /// Writes the commit's chunks under fresh keys in one atomic sled batch, then fsyncs.
    fn persist(&self, commit: &Commit) -> Result<(), String> {
        let first = commit.delta.first_position;
        match self.log.range(first.to_be_bytes()..).next() {
            None => {}
            Some(Ok((key, _))) => {
                return Err(format!("log key {key:?} exists at or after {first}"))
            }
            Some(Err(e)) => return Err(e.to_string()),
        }
        let mut batch = sled::Batch::default();
        for (position, bytes) in &commit.chunks {
            batch.insert(&position.to_be_bytes()[..], bytes.as_slice());
        }
        if commit.delta.idempotency.is_empty() {
            self.log.apply_batch(batch).map_err(|e| e.to_string())?;
        } else {
            let mut keys = sled::Batch::default();
            for (key, entry) in &commit.delta.idempotency {
                keys.insert(key.as_bytes(), &entry.encode()[..]);
            }
            // The chunks and the keys they used, atomically.
            (&self.log, &self.idem)
                .transaction(|(log, idem)| {
                    log.apply_batch(&batch)?;
                    idem.apply_batch(&keys)?;
                    Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(|e| format!("{e:?}"))?;
        }
        #[cfg(test)]
        if self.fail_next_flush.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.unwind(commit);
            return Err("injected flush failure".into());
        }
        let flush_started = Instant::now();
        let flushed = self.db.flush();
        metrics::record_fsync(flush_started.elapsed());
        flushed.map(drop).map_err(|e| {
            self.unwind(commit);
            e.to_string()
        })
    }

    /// Best effort removal of a commit that was never acknowledged.
    fn unwind(&self, commit: &Commit) {
        let mut batch = sled::Batch::default();
        for (position, _) in &commit.chunks {
            batch.remove(&position.to_be_bytes()[..]);
        }
        let _ = self.log.apply_batch(batch);
        let mut keys = sled::Batch::default();
        for (key, _) in &commit.delta.idempotency {
            keys.remove(key.as_bytes());
        }
        let _ = self.idem.apply_batch(keys);
    }
}

fn reply_all(jobs: Vec<Job>, reason: &str) {
    let latency = AppendLatency::new();
    for job in jobs {
        job.answer(Err(StoreError::Unavailable(reason.to_owned())), &latency);
    }
}

#[async_trait]
impl EventStore for SledStore {
    async fn append(&self, req: AppendRequest) -> Result<Committed, StoreError> {
        self.enqueue(req).await.await
    }

    /// Validates, then waits for room in the bounded queue; the queue is FIFO, so the commit
    /// order is the enqueue order.
    async fn enqueue(&self, req: AppendRequest) -> AppendTicket {
        let enqueued_at = Instant::now();
        let size = match validate(&req, self.commit_events_max) {
            Ok(size) => size,
            Err(e) => return AppendTicket::ready(Err(e)),
        };
        if let Some(reason) = self.unavailable_reason() {
            return AppendTicket::ready(Err(StoreError::Unavailable(reason)));
        }
        let closed = || StoreError::Unavailable("store is closed or its writer stopped".into());
        let Some(sender) = self.sender.lock().clone() else {
            return AppendTicket::ready(Err(closed()));
        };
        let (reply, response) = oneshot::channel();
        match sender.send(Job { req, size, reply, enqueued_at }).await {
            Ok(()) => AppendTicket::waiting(response),
            Err(_) => AppendTicket::ready(Err(closed())),
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (head, log_head) = {
            let index = self.shared.index.read();
            (index.stream(stream), index.head())
        };
        let Some(head) = head else { return Ok(Vec::new()) };
        let stream = stream.to_owned();
        // A scan of the log from the stream's first position: always off the async threads.
        self.read(false, move |log| {
            read_stream_scan(log, &stream, head, log_head, from_version, max_count)
        })
        .await
    }

    async fn read_all(
        &self,
        from: Position,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let range = self.shared.index.read().all_range(from, max_count);
        let inline = range.end - range.start <= INLINE_READ_EVENTS;
        self.read(inline, move |log| read_range(log, range)).await
    }

    fn head(&self) -> Position {
        self.shared.index.read().head()
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.shared.head_tx.subscribe()
    }

    fn stream_version(&self, stream: &str) -> Option<u64> {
        self.shared.index.read().stream_version(stream)
    }

    async fn close(&self) -> Result<(), StoreError> {
        let join_failed = |e| StoreError::Unavailable(format!("writer join failed: {e}"));
        if let Some(handle) = self.stop_writer() {
            let joined = tokio::task::spawn_blocking(move || handle.join()).await;
            joined.map_err(join_failed)?.map_err(|_| io_error("event store writer panicked"))?;
        }
        let shared = self.shared.clone();
        let flushed = tokio::task::spawn_blocking(move || shared.db.flush()).await;
        flushed.map_err(join_failed)?.map_err(io_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::conformance::new_event;
    use crate::{ExpectedVersion, StreamWrite};

    fn req(stream: &str, n: usize) -> AppendRequest {
        let events = (0..n).map(|i| new_event("T", &[i as u8])).collect();
        let write = StreamWrite { stream: stream.into(), expected: ExpectedVersion::Any, events };
        AppendRequest { writes: vec![write], idempotency: None, expected_position: None }
    }

    /// (events, bytes) of every stored chunk.
    fn chunk_sizes(store: &SledStore) -> Vec<(u32, usize)> {
        let chunks = store.shared.log.iter().map(Result::unwrap);
        let parse = |(k, v): (sled::IVec, sled::IVec)| {
            (Chunk::parse(key_position(&k).unwrap(), &v).unwrap().count, v.len())
        };
        chunks.map(parse).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_commits_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let config = SledConfig { commit_events_max: 100, ..SledConfig::new(dir.path()) };
        let store = Arc::new(SledStore::open(config).unwrap());
        let r = store.append(req("big", 101)).await;
        assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move { store.append(req(&format!("s-{t}"), 30)).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let sizes: Vec<u32> = chunk_sizes(&store).into_iter().map(|(n, _)| n).collect();
        assert_eq!(sizes.iter().map(|&n| u64::from(n)).sum::<u64>(), 64 * 30);
        assert!(sizes.len() < 64, "requests were grouped: {sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 100), "commit_events_max respected: {sizes:?}");
    }

    /// Every acknowledged byte must live in sled's log (synced by flush), never in a blob file
    /// (which sled does not fsync), even after many leaf consolidations and splits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_commits_are_chunked_and_never_become_sled_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(SledConfig::new(dir.path())).unwrap());
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        let mut r = req(&format!("big-{t}"), 1_000);
                        r.writes[0].events.iter_mut().for_each(|e| e.payload = vec![7; 200]);
                        store.append(r).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let sizes = chunk_sizes(&store);
        assert!(sizes.len() > 100, "{} chunks", sizes.len());
        assert!(sizes.iter().all(|&(_, bytes)| bytes <= crate::group::CHUNK_BYTES_MAX));
        let blobs = std::fs::read_dir(dir.path().join("blobs")).map_or(0, |d| d.count());
        assert_eq!(blobs, 0, "sled wrote blob files");
        let log = store.read_all(0, usize::MAX).await.unwrap();
        assert_eq!(crate::verify_chain(log, crate::GENESIS_HASH).map(|_| ()), Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_failure_stops_appends_and_claims_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(SledConfig::new(dir.path())).unwrap();
        store.append(req("a", 2)).await.unwrap();
        store.shared.fail_next_flush.store(true, Ordering::SeqCst);
        let failed = store.append(req("a", 3)).await;
        assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
        let after = store.append(req("a", 1)).await;
        assert!(matches!(after, Err(StoreError::Unavailable(_))), "store is failed: {after:?}");
        assert_eq!((store.head(), store.stream_version("a")), (2, Some(1)));
        assert_eq!(store.read_all(0, 100).await.unwrap().len(), 2);
        drop(store);
        let store = SledStore::open(SledConfig::new(dir.path())).unwrap();
        assert_eq!(store.head(), 2);
        store.append(req("a", 1)).await.unwrap();
        assert_eq!(store.stream_version("a"), Some(2));
    }

    #[test]
    fn an_open_waits_for_a_lock_released_a_moment_later() {
        let dir = tempfile::tempdir().unwrap();
        let config = sled::Config::new().path(dir.path()).segment_size(SLED_SEGMENT_BYTES);
        let held = config.open().unwrap();
        // sled 0.34 reports the lock as an `Other` I/O error (not `WouldBlock`): recognised.
        let refused = config.open().map(drop).unwrap_err();
        assert!(is_lock_held(&refused), "{refused:?}");
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        assert!(open_waiting(&config).is_ok(), "opened once the lock was released");
        release.join().unwrap();
    }

    #[tokio::test]
    async fn corrupt_log_fails_open_with_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(SledConfig::new(dir.path())).unwrap();
        store.append(req("a", 2)).await.unwrap();
        drop(store);
        {
            let config = sled::Config::new().path(dir.path()).segment_size(SLED_SEGMENT_BYTES);
            let db = open_waiting(&config).unwrap();
            let log = db.open_tree(LOG_TREE).unwrap();
            log.insert(2u64.to_be_bytes(), &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0xff][..])
                .unwrap();
            db.flush().unwrap();
        }
        let r = SledStore::open(SledConfig::new(dir.path()));
        assert!(matches!(r, Err(StoreError::Corrupt { position: 2, .. })), "{:?}", r.err());
    }

    #[tokio::test]
    async fn a_store_opened_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _store = SledStore::open(SledConfig::new(dir.path())).unwrap();
        let second = SledStore::open(SledConfig::new(dir.path()));
        assert!(matches!(second, Err(StoreError::Unavailable(_))));
    }
}
