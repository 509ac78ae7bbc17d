//! The write engine: the in-memory write model (a [`Ledger`] folded from the log, the stream
//! versions, the idempotency keys), and the one path every command takes:
//! validate → decide/evolve under the write lock → submit to the store in decision order →
//! reply once the store has fsync'd the commit.
//!
//! Group commit: the lock is held only while deciding and *submitting* (an ordered, non-blocking
//! enqueue); the wait for fsync happens outside it, so many commands share one fsync.
//! Every append carries the position it was decided for (`expected_position`): the store
//! refuses it if anything else was appended first (another command node on a shared log, or an
//! append enqueued before it and refused), so no decision lands on a log it did not see. If an
//! append fails, is answered as a duplicate or is never enqueued, the model holds events the
//! log does not: the append is counted as diverged, and a model that does not account for every
//! divergence is recovered (from the whole log, or from its recovery copy) before the next
//! decision; a command that lost a race is decided again (≤ [`CONFLICT_RETRIES_MAX`]). On a log
//! with other writers ([`EngineOptions::shared_log`]) a decision first waits for this engine's
//! appends in flight.
//! Each append's outcome is awaited by a task of its own, so it is recorded even when the
//! caller stopped waiting.
//!
//! A reply that appends nothing (a duplicate usage event, an idempotent replay, a no-op) is
//! decided on a model that may hold appends still waiting for their fsync: it is sent only once
//! every append of this engine that the decision saw has its outcome and the durable head
//! covers it (`Engine::wait_durable`), and is UNAVAILABLE if any of them failed, whatever else
//! filled those positions. Otherwise a duplicate of a request in flight could be acknowledged
//! and then lost with its original in a crash (found by `tests/crash.rs`) or, on a shared log,
//! acknowledged on another node's event.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::commands::{Command, Context, Policy};
use domain::events::Event;
use domain::ledger::Ledger;
use event_store::{
    AppendRequest, Committed, EventStore, ExpectedVersion, Idempotency, NewEvent, Position,
    StreamWrite,
};
use jiff::Timestamp;
use tonic::Status;
use uuid::Uuid;

use crate::dedup::DedupIndex;
use crate::snapshot::SnapshotOptions;
use crate::status::{from_domain, from_store, unavailable};

mod dry_run;
mod snapshotting;
pub use dry_run::{DryOutcome, DryRun};
mod usage;
use usage::dedup_entry;

/// Events read per call while rebuilding the write model from the log.
pub const REBUILD_CHUNK_EVENTS: usize = 10_000;
/// A billing run is appended in pieces of about this many events (whole subscriptions each), so
/// a run over many subscriptions stays within the store's request bounds.
pub const BILLING_APPEND_EVENTS_MAX: usize = 4_096;
/// ... and of about this many bytes (payloads plus [`ENVELOPE_BYTES_ESTIMATE`] each), so a piece
/// fits one EventStoreDB append at the server's default `MaxAppendSize` (1 MiB).
pub const BILLING_APPEND_BYTES_MAX: usize = 768 * 1024;
/// Bytes an event's envelope adds to its payload in a stored chunk (ids, stream, times, hashes;
/// measured ≈ 140, rounded up).
pub const ENVELOPE_BYTES_ESTIMATE: usize = 256;
/// Longest a reply that appends nothing waits for the appends its decision saw to be durable
/// (then UNAVAILABLE: the caller retries).
pub const DURABLE_WAIT_MS_MAX: u64 = 10_000;
/// Times a command is decided again when its append lost a race with another command node (the
/// store's expected-version check failed on a version the engine derived, not one the caller
/// gave): each retry first brings the model up to the log. Then ABORTED reaches the caller.
pub const CONFLICT_RETRIES_MAX: u32 = 3;

pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct KeyedCommand {
    digest: [u8; 32],
    first: Position,
    last: Position,
}

/// Everything the deciders need, behind one lock.
#[derive(Clone, Default)]
struct WriteModel {
    ledger: Ledger,
    stream_versions: HashMap<String, u64>,
    next_position: Position,
    idempotency: HashMap<String, KeyedCommand>,
    /// The last keyed command folded from the log and its correlation id: a billing run's later
    /// pieces carry only the correlation id, and extend that command's range.
    last_keyed: Option<(Uuid, String)>,
    /// The count of diverged appends ([`Appends::diverged`]) this model accounts for: when the
    /// count moves past it, the model holds events the log does not and is recovered. Set only
    /// once a recovery succeeded, so a recovery cut short (an error, a cancelled call) is
    /// redone by the next decision.
    recovered_through: u64,
    /// The dedup index every folded and every decided event is noted in (shared by the model
    /// and its recovery copy: it ignores positions it has noted already). `None` only in a
    /// default model, before [`Engine::open_with`] sets it.
    dedup: Option<Arc<DedupIndex>>,
}

/// What a decision saw: the log up to `next_position`, of which this engine's appends with a
/// submission number below `submitted` may not be durable yet, when `diverged` appends had
/// come out otherwise than the model assumed.
#[derive(Clone, Copy, Debug)]
struct Seen {
    next_position: Position,
    submitted: u64,
    diverged: u64,
}

/// This engine's appends between submission and outcome, shared with the task that awaits each
/// outcome, so an outcome is recorded even when the caller stopped waiting (a cancelled call).
struct Appends {
    /// Submission number of the next append.
    next: AtomicU64,
    /// Submitted appends whose outcome is not known yet.
    unresolved: parking_lot::Mutex<BTreeSet<u64>>,
    /// Bumped whenever an outcome becomes known (wakes [`Engine::wait_durable`]).
    resolved: tokio::sync::watch::Sender<u64>,
    /// Appends that failed, were answered as duplicates or were never enqueued (a cancelled
    /// call): the model assumed they landed as decided. Counted before the append is marked
    /// resolved.
    diverged: tokio::sync::watch::Sender<u64>,
}

impl Appends {
    fn new() -> Self {
        Appends {
            next: AtomicU64::new(0),
            unresolved: parking_lot::Mutex::new(BTreeSet::new()),
            resolved: tokio::sync::watch::Sender::new(0),
            diverged: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Whether every append submitted before number `submitted` has its outcome.
    fn resolved_before(&self, submitted: u64) -> bool {
        self.unresolved.lock().first().is_none_or(|first| *first >= submitted)
    }

    /// Records an append's outcome: a divergence first (counted), then resolved.
    fn resolve(&self, number: u64, outcome: &Result<Committed, event_store::StoreError>) {
        self.resolve_as(number, outcome.as_ref().map_or(true, |c| c.duplicate));
    }

    fn resolve_as(&self, number: u64, diverged: bool) {
        if diverged {
            self.diverged.send_modify(|n| *n += 1);
        }
        let removed = self.unresolved.lock().remove(&number);
        debug_assert!(removed, "an append is resolved once");
        self.resolved.send_modify(|n| *n += 1);
    }
}

/// What a command came to.
#[derive(Debug)]
pub struct Executed {
    pub events: Vec<Event>,
    /// Position of the last event (of the original append for a duplicate); `None` if nothing
    /// was appended by a no-op.
    pub last_position: Option<Position>,
    pub duplicate: bool,
}

/// The result of one usage item.
#[derive(Debug)]
pub enum UsageItem {
    Accepted { position: Position, invoice_id: Option<String> },
    Duplicate { position: Position },
    Rejected(Status),
}

/// Options of the write engine.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// The log has other writers (command nodes sharing an EventStoreDB log). Then:
    /// - a decision waits until this engine's earlier appends have their outcome, because
    ///   while one is in flight the model cannot tell its own events from another writer's
    ///   (the head alone does not say which landed): no pipelining across decisions;
    /// - the engine keeps a recovery copy of its model as of a point of the log (taken at
    ///   open, brought up to the log at each recovery), so recovering from a lost race folds
    ///   only the events since the last recovery into the copy and clones it, instead of
    ///   folding the whole log (a second model in memory).
    ///
    /// On sled (the only writer) neither is needed: an append fails only with the disk.
    pub shared_log: bool,
    /// Write-model snapshots (`None`: none; the whole log is folded at open). See
    /// [`crate::snapshot`].
    pub snapshots: Option<SnapshotOptions>,
    /// Directory of the dedup index ([`crate::dedup`]; `accrual serve` uses `<data-dir>/dedup`).
    /// `None`: a temporary index that lives as long as the engine (tests, demo, in-process
    /// benchmarks), rebuilt from the log at each open.
    pub dedup_dir: Option<std::path::PathBuf>,
}

/// How often the model was recovered after a failed or lost append.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recoveries {
    /// Folded from the start of the log.
    pub full: u64,
    /// Folded from the recovery copy.
    pub from_copy: u64,
}

pub struct Engine {
    store: Arc<dyn EventStore>,
    model: tokio::sync::Mutex<WriteModel>,
    clock: Clock,
    policy: Policy,
    shared_log: bool,
    /// The model as of a point of the log (see [`EngineOptions::shared_log`]); taken out while
    /// a recovery folds it forward (under the model lock, so never by two at once).
    recovery_copy: parking_lot::Mutex<Option<WriteModel>>,
    recoveries: parking_lot::Mutex<Recoveries>,
    closing: AtomicBool,
    appends: Arc<Appends>,
    snapshots: Option<SnapshotOptions>,
    /// The position of the last snapshot written or loaded (0: none); locked while one is
    /// written, so there is one writer at a time.
    snapshot_position: tokio::sync::Mutex<Position>,
    dedup: Arc<DedupIndex>,
    /// A background flush of the dedup index is running.
    dedup_flushing: Arc<AtomicBool>,
}

impl Engine {
    /// Opens the engine over a store, folding the whole log into the write model (from a valid
    /// snapshot and the log's tail with [`EngineOptions::snapshots`]).
    pub async fn open(
        store: Arc<dyn EventStore>,
        policy: Policy,
        clock: Clock,
    ) -> Result<Self, Status> {
        Self::open_with(store, policy, clock, EngineOptions::default()).await
    }

    /// [`Engine::open`] with options.
    pub async fn open_with(
        store: Arc<dyn EventStore>,
        policy: Policy,
        clock: Clock,
        options: EngineOptions,
    ) -> Result<Self, Status> {
        let dedup = Arc::new(DedupIndex::open(options.dedup_dir.as_deref(), store.clone()).await?);
        let (model, snapshot_position) =
            snapshotting::open_model(&*store, options.snapshots.as_ref(), dedup.clone()).await?;
        let copy = options.shared_log.then(|| model.clone());
        Ok(Engine {
            store,
            model: tokio::sync::Mutex::new(model),
            clock,
            policy,
            shared_log: options.shared_log,
            recovery_copy: parking_lot::Mutex::new(copy),
            recoveries: parking_lot::Mutex::new(Recoveries::default()),
            closing: AtomicBool::new(false),
            appends: Arc::new(Appends::new()),
            snapshots: options.snapshots,
            snapshot_position: tokio::sync::Mutex::new(snapshot_position),
            dedup,
            dedup_flushing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The dedup index (for [`DedupIndex::covered_position`]: a write-model snapshot at log
    /// position S is usable only while the index covers ≥ S).
    pub fn dedup(&self) -> &DedupIndex {
        &self.dedup
    }

    /// How often the model was recovered after a failed or lost append, and how.
    pub fn recoveries(&self) -> Recoveries {
        *self.recoveries.lock()
    }

    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Current version of a stream, if it exists.
    pub async fn stream_version(&self, stream: &str) -> Option<u64> {
        self.model.lock().await.stream_versions.get(stream).copied()
    }

    /// Read access to the write model, for replies to a command already settled (its events,
    /// and so everything before them, are durable).
    pub async fn read<T>(&self, f: impl FnOnce(&Ledger) -> T) -> T {
        f(&self.model.lock().await.ledger)
    }

    /// Read access for a query (`GetInvoice`, `GetCurrentUsage`): the answer goes out only once
    /// everything the model held when it was read is durable, so a crash cannot undo what a
    /// caller was shown (bounded by [`DURABLE_WAIT_MS_MAX`]).
    pub async fn read_durable<T>(&self, f: impl FnOnce(&Ledger) -> T) -> Result<T, Status> {
        let model = self.lock_model().await?;
        let seen = self.seen(&model);
        let answer = f(&model.ledger);
        drop(model);
        self.wait_durable(seen).await?;
        Ok(answer)
    }

    /// Runs one command. `key` is the caller's idempotency key with the digest of its request.
    /// `guard` is an optional (stream, expected version) check: ABORTED when it does not hold.
    /// Without a guard, a lost race with another command node is decided again (at most
    /// [`CONFLICT_RETRIES_MAX`] times) on the caught-up model.
    pub async fn execute(
        &self,
        cmd: Command,
        key: Option<(String, [u8; 32])>,
        guard: Option<(String, u64)>,
    ) -> Result<Executed, Status> {
        if matches!(cmd, Command::RecordUsage(_)) {
            // Usage needs the dedup index, which only `record_usage` consults.
            return Err(Status::internal("usage is recorded through Engine::record_usage"));
        }
        let retries_max = if guard.is_some() { 0 } else { CONFLICT_RETRIES_MAX };
        decide_again_on_conflict(retries_max, || {
            self.execute_once(&cmd, key.clone(), guard.clone())
        })
        .await
    }

    async fn execute_once(
        &self,
        cmd: &Command,
        key: Option<(String, [u8; 32])>,
        guard: Option<(String, u64)>,
    ) -> Result<Executed, Failed> {
        let mut model = match self.lock_or_replay(&key).await? {
            Ok(model) => model,
            Err(original) => return Ok(original),
        };
        let seen = self.seen(&model);
        if let Some((stream, expected)) = guard {
            let actual = model.stream_versions.get(&stream).copied();
            if actual != Some(expected) {
                let wrong = event_store::StoreError::WrongExpectedVersion {
                    stream,
                    expected: ExpectedVersion::Exact(expected),
                    actual,
                };
                return Err(Failed::Other(from_store(wrong)));
            }
        }
        let ctx = Context { now: self.now(), policy: self.policy.clone() };
        if let Some(original) = model.ledger.replay_position(cmd, &ctx) {
            // A re-run of a catalog command with the content that exists (with or without a
            // key): answered as a replay of the event that created it.
            drop(model);
            self.wait_durable(seen).await?;
            return Ok(self.original(original, original).await?);
        }
        let first = model.next_position;
        let events = model.ledger.execute(cmd, &ctx, first).map_err(from_domain)?;
        if events.is_empty() {
            drop(model);
            self.wait_durable(seen).await?;
            let last_position = first.checked_sub(1);
            return Ok(Executed { events, last_position, duplicate: false });
        }
        let idempotency = key.map(|(key, digest)| Idempotency { key, digest });
        let ticket = self.submit(&mut model, &events, idempotency, ctx.now, Uuid::new_v4()).await;
        drop(model);
        let committed = self.settle(ticket, first).await?;
        if committed.duplicate {
            // Another command node appended this keyed request first, after this model was
            // read; the store recognised the key against the log: answer as a replay.
            return Ok(self.original(committed.first_position, committed.last_position).await?);
        }
        Ok(Executed { events, last_position: Some(committed.last_position), duplicate: false })
    }

    /// Runs billing at `as_of` over every subscription. Unlike other commands it may take several
    /// appends (each holding whole subscriptions' steps, enqueued in order under the model lock,
    /// so they are contiguous in the log), all with one correlation id; the idempotency key is
    /// stored on the first (the store would take a second use of it for a duplicate), and a
    /// replay of the key returns every piece. Billing is idempotent by itself: a second run
    /// issues nothing, and a run cut short by a crash is finished by running it again.
    pub async fn run_billing(
        &self,
        as_of: Timestamp,
        key: Option<(String, [u8; 32])>,
    ) -> Result<Executed, Status> {
        decide_again_on_conflict(CONFLICT_RETRIES_MAX, || self.run_billing_once(as_of, key.clone()))
            .await
    }

    /// One attempt of [`Engine::run_billing`]. A lost race (or the run's key found already
    /// used by another node when the first piece reached the log) is a conflict: the next
    /// attempt decides again, or replays the key, on the recovered model.
    async fn run_billing_once(
        &self,
        as_of: Timestamp,
        key: Option<(String, [u8; 32])>,
    ) -> Result<Executed, Failed> {
        let mut model = match self.lock_or_replay(&key).await? {
            Ok(model) => model,
            Err(original) => return Ok(original),
        };
        let ctx = Context { now: self.now(), policy: self.policy.clone() };
        domain::ledger::check_billing_time(as_of, &ctx).map_err(from_domain)?;
        let seen = self.seen(&model);
        let ids: Vec<String> = model.ledger.subscriptions.keys().cloned().collect();
        let (mut events, mut pending, mut tickets) = (Vec::new(), Vec::new(), Vec::new());
        let mut pending_bytes = 0;
        let run_key = key.as_ref().map(|(k, _)| k.clone());
        let mut key = key.map(|(key, digest)| Idempotency { key, digest });
        let correlation_id = Uuid::new_v4();
        // Wallet lots expiring by `as_of` first: no invoice of the run may take them.
        let next = model.next_position;
        let expired = model.ledger.expire_wallets(as_of, &ctx, next);
        pending_bytes +=
            expired.iter().map(|e| e.encode().len() + ENVELOPE_BYTES_ESTIMATE).sum::<usize>();
        pending.extend(expired);
        for (i, id) in ids.iter().enumerate() {
            let position = model.next_position + pending.len() as u64;
            let (more, stopped) =
                model.ledger.run_subscription_reporting(id, as_of, &ctx, position);
            if let Some(error) = stopped {
                tracing::error!(subscription = %id, %error, "billing stopped for this subscription");
            }
            pending_bytes +=
                more.iter().map(|e| e.encode().len() + ENVELOPE_BYTES_ESTIMATE).sum::<usize>();
            pending.extend(more);
            let last = i + 1 == ids.len();
            let full = pending.len() >= BILLING_APPEND_EVENTS_MAX
                || pending_bytes >= BILLING_APPEND_BYTES_MAX;
            if full || (last && !pending.is_empty()) {
                pending_bytes = 0;
                let first = model.next_position;
                let ticket =
                    self.submit(&mut model, &pending, key.take(), ctx.now, correlation_id).await;
                extend_keyed(&mut model, run_key.as_deref());
                tickets.push((ticket, first));
                events.append(&mut pending);
            }
        }
        if !pending.is_empty() {
            // Expiry events of a run with no subscription to bill.
            let first = model.next_position;
            let ticket =
                self.submit(&mut model, &pending, key.take(), ctx.now, correlation_id).await;
            extend_keyed(&mut model, run_key.as_deref());
            tickets.push((ticket, first));
            events.append(&mut pending);
        }
        drop(model);
        if tickets.is_empty() {
            self.wait_durable(seen).await?;
        }
        let mut last_position = None;
        for (ticket, first) in tickets {
            let committed = self.settle(ticket, first).await?;
            if committed.duplicate {
                let used = Status::aborted("the billing run's key was used by another node first");
                return Err(Failed::Conflict(used));
            }
            last_position = Some(committed.last_position);
        }
        Ok(Executed { events, last_position, duplicate: false })
    }

    /// Stops taking commands, waits for the decider, writes a snapshot (with
    /// [`EngineOptions::snapshots`]), flushes what the store holds, then persists the dedup
    /// index through it.
    pub async fn close(&self) -> Result<(), Status> {
        self.closing.store(true, Ordering::SeqCst);
        let model = self.model.lock().await;
        self.snapshot_at_close(&model).await;
        self.store.close().await.map_err(from_store)?;
        // Everything appended is durable now; persist the dedup index through it (an
        // optimisation: the next open notes less of the log), unless the model diverged.
        let diverged = *self.appends.diverged.borrow();
        if diverged == model.recovered_through && self.store.head() >= model.next_position {
            if let Err(e) = self.dedup.flush_through(model.next_position).await {
                tracing::warn!(error = %e, "dedup index not flushed at close");
            }
        }
        Ok(())
    }

    /// Locks the model, unless `key` names a command already done: then its original result
    /// (or ALREADY_EXISTS when the same key came with another request).
    async fn lock_or_replay(
        &self,
        key: &Option<(String, [u8; 32])>,
    ) -> Result<Result<tokio::sync::MutexGuard<'_, WriteModel>, Executed>, Status> {
        let model = self.lock_model().await?;
        if let Some((k, digest)) = key {
            if let Some(prev) = model.idempotency.get(k).cloned() {
                let seen = self.seen(&model);
                drop(model);
                return self.replay_keyed(k, digest, prev, seen).await.map(Err);
            }
        }
        Ok(Ok(model))
    }

    /// What a decision under `model`'s lock sees.
    fn seen(&self, model: &WriteModel) -> Seen {
        Seen {
            next_position: model.next_position,
            submitted: self.appends.next.load(Ordering::SeqCst),
            diverged: model.recovered_through,
        }
    }

    /// Waits until every append of this engine that `seen` included has its outcome and the
    /// store's durable head covers `seen` (bounded by [`DURABLE_WAIT_MS_MAX`]); UNAVAILABLE if
    /// any append diverged meanwhile (what the decision saw may never reach the log), whatever
    /// else filled those positions, or if the wait times out.
    async fn wait_durable(&self, seen: Seen) -> Result<(), Status> {
        wait_durable(&*self.store, &self.appends, seen).await
    }

    async fn lock_model(&self) -> Result<tokio::sync::MutexGuard<'_, WriteModel>, Status> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(unavailable("the server is shutting down"));
        }
        let mut model = self.model.lock().await;
        if self.shared_log {
            self.wait_resolved().await?;
        }
        let diverged = *self.appends.diverged.borrow();
        if diverged != model.recovered_through {
            self.recover(&mut model).await?;
            model.recovered_through = diverged;
        } else if self.store.head() > model.next_position {
            // Another writer (a second command node on a shared log) appended: fold its events
            // in before deciding. With a single writer the model is never behind the log.
            let behind = self.store.head() - model.next_position;
            tracing::debug!(events = behind, "write model catching up with the log");
            fold(&*self.store, &mut model).await?;
        }
        Ok(model)
    }

    /// Waits (bounded by [`DURABLE_WAIT_MS_MAX`]) until every append this engine submitted so
    /// far has its outcome. Called under the model lock; the tasks that resolve appends never
    /// take it.
    async fn wait_resolved(&self) -> Result<(), Status> {
        let submitted = self.appends.next.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(DURABLE_WAIT_MS_MAX);
        if self.appends_resolved(submitted, deadline).await {
            return Ok(());
        }
        Err(unavailable("earlier appends are still in flight; retry"))
    }

    /// Whether every append with a submission number below `submitted` has its outcome by
    /// `deadline`.
    async fn appends_resolved(&self, submitted: u64, deadline: tokio::time::Instant) -> bool {
        appends_resolved(&self.appends, submitted, deadline).await
    }

    /// Rebuilds a stale model (it holds events of an append that failed or landed elsewhere):
    /// from the recovery copy when there is one, else from the whole log.
    async fn recover(&self, model: &mut WriteModel) -> Result<(), Status> {
        // The dedup index's pending entries may claim events that never landed: it forgets
        // them and notes the log again from its covered position, before the model's fold.
        self.dedup.recover().await?;
        let copy = CopyOut::take(&self.recovery_copy);
        let Some(mut copy) = copy else {
            tracing::warn!("write model is stale after a failed append; rebuilding from the log");
            *model = WriteModel { dedup: Some(self.dedup.clone()), ..WriteModel::default() };
            rebuild(&*self.store, model).await?;
            self.recoveries.lock().full += 1;
            return Ok(());
        };
        let from = copy.model().next_position;
        // A fold that fails or is cancelled part-way leaves the copy an exact, shorter prefix of
        // the log (whole events only), which `CopyOut` puts back either way.
        fold(&*self.store, copy.model()).await?;
        *model = copy.model().clone();
        let events = model.next_position - from;
        tracing::debug!(from, events, "write model recovered from its copy after a failed append");
        self.recoveries.lock().from_copy += 1;
        Ok(())
    }

    /// Turns decided events into one append and enqueues it while the caller holds the model
    /// lock, so the order of enqueueing is the order of decision, which the positions in the
    /// model assume. The returned ticket resolves once the commit is durable.
    async fn submit(
        &self,
        model: &mut WriteModel,
        events: &[Event],
        idempotency: Option<Idempotency>,
        now: Timestamp,
        correlation_id: Uuid,
    ) -> event_store::AppendTicket {
        let mut writes: Vec<StreamWrite> = Vec::new();
        let mut seen_in_request: HashMap<String, ()> = HashMap::new();
        for event in events {
            let stream = event.stream();
            let new = new_event(event, now, correlation_id);
            if let Some(last) = writes.last_mut().filter(|w| w.stream == stream) {
                last.events.push(new);
                continue;
            }
            let expected = if seen_in_request.insert(stream.clone(), ()).is_some() {
                ExpectedVersion::Any
            } else {
                model
                    .stream_versions
                    .get(&stream)
                    .map_or(ExpectedVersion::NoStream, |v| ExpectedVersion::Exact(*v))
            };
            writes.push(StreamWrite { stream, expected, events: vec![new] });
        }
        for w in &writes {
            let v = model.stream_versions.entry(w.stream.clone()).or_insert(u64::MAX);
            *v = v.wrapping_add(w.events.len() as u64);
        }
        let first = model.next_position;
        model.next_position += events.len() as u64;
        for (position, event) in (first..).zip(events) {
            self.dedup.note(position, dedup_entry(event, position));
        }
        if let Some(i) = &idempotency {
            let keyed = KeyedCommand { digest: i.digest, first, last: model.next_position - 1 };
            model.idempotency.insert(i.key.clone(), keyed);
        }
        let expected_position = Some(first);
        let number = self.appends.next.fetch_add(1, Ordering::SeqCst);
        self.appends.unresolved.lock().insert(number);
        // If the call is cancelled while the store's queue is full, the append was never
        // enqueued: the guard resolves it as diverged (the model already holds its events).
        let guard = NotEnqueued { appends: &self.appends, number: Some(number) };
        let ticket =
            self.store.enqueue(AppendRequest { writes, idempotency, expected_position }).await;
        guard.disarm();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let appends = self.appends.clone();
        tokio::spawn(async move {
            let outcome = ticket.await;
            appends.resolve(number, &outcome);
            let _ = tx.send(outcome);
        });
        event_store::AppendTicket::waiting(rx)
    }

    async fn settle(
        &self,
        ticket: event_store::AppendTicket,
        first: Position,
    ) -> Result<Committed, Failed> {
        match ticket.await {
            Ok(c) => {
                // A duplicate (another writer appended this keyed request first) made the
                // model stale; anything else landed where it was decided (the store refuses an
                // append decided for another position).
                assert!(c.duplicate || c.first_position == first, "appended where decided");
                Ok(c)
            }
            Err(e) => {
                if matches!(
                    e,
                    event_store::StoreError::WrongExpectedVersion { .. }
                        | event_store::StoreError::WrongExpectedPosition { .. }
                ) {
                    // Another writer appended after this model was read (or an append enqueued
                    // before this one was refused): rebuilt before the next decision.
                    tracing::debug!(error = %e, "append refused: the log moved on");
                    return Err(Failed::Conflict(from_store(e)));
                }
                tracing::error!(error = %e, "append failed");
                Err(Failed::Other(from_store(e)))
            }
        }
    }

    async fn replay_keyed(
        &self,
        key: &str,
        digest: &[u8; 32],
        prev: KeyedCommand,
        seen: Seen,
    ) -> Result<Executed, Status> {
        if &prev.digest != digest {
            return Err(from_store(event_store::StoreError::IdempotencyConflict {
                key: key.to_string(),
            }));
        }
        self.wait_durable(seen).await?;
        self.original(prev.first, prev.last).await
    }

    /// The events a keyed command appended at `first..=last`, as a replay's answer.
    async fn original(&self, first: Position, last: Position) -> Result<Executed, Status> {
        let count = (last - first + 1) as usize;
        let recorded = self.store.read_all(first, count).await.map_err(from_store)?;
        let events = recorded.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(Executed { events, last_position: Some(last), duplicate: true })
    }
}

/// See [`Engine::wait_durable`] (also run by a background flush of the dedup index).
async fn wait_durable(store: &dyn EventStore, appends: &Appends, seen: Seen) -> Result<(), Status> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(DURABLE_WAIT_MS_MAX);
    let late = || unavailable("the original append is not durable yet; retry");
    if !appends_resolved(appends, seen.submitted, deadline).await {
        return Err(late());
    }
    if *appends.diverged.borrow() != seen.diverged {
        return Err(unavailable("an earlier append failed; retry the request"));
    }
    let mut head = store.watch_head();
    let covered = async { head.wait_for(|h| *h >= seen.next_position).await.is_ok() };
    match tokio::time::timeout_at(deadline, covered).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(unavailable("the event store stopped; retry the request")),
        Err(_) => Err(late()),
    }
}

/// Whether every append with a submission number below `submitted` has its outcome by
/// `deadline`.
async fn appends_resolved(
    appends: &Appends,
    submitted: u64,
    deadline: tokio::time::Instant,
) -> bool {
    let mut resolved = appends.resolved.subscribe();
    let all = async { resolved.wait_for(|_| appends.resolved_before(submitted)).await.is_ok() };
    tokio::time::timeout_at(deadline, all).await == Ok(true)
}

/// Resolves a submitted append as diverged unless disarmed once it is enqueued.
struct NotEnqueued<'a> {
    appends: &'a Appends,
    number: Option<u64>,
}

impl NotEnqueued<'_> {
    fn disarm(mut self) {
        self.number = None;
    }
}

impl Drop for NotEnqueued<'_> {
    fn drop(&mut self) {
        if let Some(number) = self.number.take() {
            self.appends.resolve_as(number, true);
        }
    }
}

/// The recovery copy, taken out of its slot while a recovery folds it; put back when dropped,
/// even if the recovery fails or its call is cancelled.
struct CopyOut<'a> {
    slot: &'a parking_lot::Mutex<Option<WriteModel>>,
    copy: Option<WriteModel>,
}

impl<'a> CopyOut<'a> {
    fn take(slot: &'a parking_lot::Mutex<Option<WriteModel>>) -> Option<CopyOut<'a>> {
        let copy = slot.lock().take()?;
        Some(CopyOut { slot, copy: Some(copy) })
    }

    fn model(&mut self) -> &mut WriteModel {
        self.copy.as_mut().expect("taken until dropped")
    }
}

impl Drop for CopyOut<'_> {
    fn drop(&mut self) {
        *self.slot.lock() = self.copy.take();
    }
}

/// Why an attempt failed: a lost race with another writer (worth deciding again) or anything
/// else (the caller's answer).
#[derive(Debug)]
enum Failed {
    Conflict(Status),
    Other(Status),
}

impl Failed {
    fn into_status(self) -> Status {
        match self {
            Failed::Conflict(s) | Failed::Other(s) => s,
        }
    }
}

impl From<Status> for Failed {
    fn from(status: Status) -> Self {
        Failed::Other(status)
    }
}

/// Runs `attempt` until it does not lose a race with another writer, at most `retries_max`
/// times more; every attempt decides on a model brought up to the log.
async fn decide_again_on_conflict<T, F>(
    retries_max: u32,
    mut attempt: impl FnMut() -> F,
) -> Result<T, Status>
where
    F: std::future::Future<Output = Result<T, Failed>>,
{
    let mut retries = 0;
    loop {
        match attempt().await {
            Err(Failed::Conflict(e)) if retries < retries_max => {
                retries += 1;
                tracing::debug!(error = %e, retries, "lost a race with another writer; deciding again");
            }
            outcome => return outcome.map_err(Failed::into_status),
        }
    }
}

/// Extends a keyed command's range to the model's last position (a billing run's later piece).
fn extend_keyed(model: &mut WriteModel, key: Option<&str>) {
    let last = model.next_position - 1;
    if let Some(keyed) = key.and_then(|k| model.idempotency.get_mut(k)) {
        debug_assert!(keyed.last <= last, "pieces follow the keyed one");
        keyed.last = last;
    }
}

/// Records the idempotency key of a folded event, or extends the last keyed command when the
/// event continues it (same correlation id, next position: a billing run's later piece).
fn fold_keyed(model: &mut WriteModel, r: &event_store::RecordedEvent) {
    if let (Some(key), Some(digest)) = (&r.idempotency_key, r.idempotency_digest) {
        let entry = model.idempotency.entry(key.clone()).or_insert(KeyedCommand {
            digest,
            first: r.position,
            last: r.position,
        });
        entry.last = r.position;
        model.last_keyed = r.correlation_id.map(|c| (c, key.clone()));
        return;
    }
    let continues = match (&model.last_keyed, r.correlation_id) {
        (Some((c, key)), Some(rc)) if *c == rc => model
            .idempotency
            .get_mut(key)
            .filter(|k| k.last + 1 == r.position)
            .map(|k| k.last = r.position)
            .is_some(),
        _ => false,
    };
    if !continues {
        model.last_keyed = None;
    }
}

fn new_event(event: &Event, now: Timestamp, correlation_id: Uuid) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event.type_name().to_string(),
        schema_version: domain::events::SCHEMA_VERSION,
        occurred_at_us: event.occurred_at().unwrap_or(now).as_microsecond(),
        causation_id: None,
        correlation_id: Some(correlation_id),
        payload: event.encode(),
    }
}

fn decode(r: &event_store::RecordedEvent) -> Result<Event, Status> {
    Event::decode(&r.event_type, r.schema_version, &r.payload)
        .map_err(|e| Status::data_loss(format!("event at position {}: {e}", r.position)))
}

/// Folds the whole log into `model`, in bounded chunks.
async fn rebuild(store: &dyn EventStore, model: &mut WriteModel) -> Result<(), Status> {
    let started = std::time::Instant::now();
    fold(store, model).await?;
    tracing::info!(
        events = model.next_position,
        ms = started.elapsed().as_millis() as u64,
        "write model rebuilt from the log"
    );
    Ok(())
}

/// Folds the events after `model.next_position` into `model`, in bounded chunks, up to the end
/// of the log.
async fn fold(store: &dyn EventStore, model: &mut WriteModel) -> Result<(), Status> {
    loop {
        let chunk =
            store.read_all(model.next_position, REBUILD_CHUNK_EVENTS).await.map_err(from_store)?;
        let Some(last) = chunk.last() else { break };
        let last_position = last.position;
        for r in &chunk {
            assert_eq!(r.position, model.next_position, "the log is contiguous");
            let event = decode(r)?;
            if let Some(index) = &model.dedup {
                index.note(r.position, dedup_entry(&event, r.position));
            }
            model.ledger.evolve(&event, r.position);
            model.stream_versions.insert(r.stream.clone(), r.stream_version);
            fold_keyed(model, r);
            model.next_position += 1;
        }
        debug_assert_eq!(model.next_position, last_position + 1);
    }
    Ok(())
}
