//! The projection runner: follows the ordered log from a checkpoint and commits each batch of
//! read-model writes together with the new checkpoint.

use std::time::Duration;

use domain::events::Event;
use event_store::{EventStore, Position, RecordedEvent};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::RunnerMetrics;
use crate::state_snapshot;
use crate::store::{prepare, ReadModel, Writes};
use crate::{ProjectionError, Result};

/// Largest accepted `batch_events_max`.
pub const BATCH_EVENTS_MAX_LIMIT: usize = 65_536;
/// Largest accepted `poll_interval_ms`.
pub const POLL_INTERVAL_MS_MAX: u64 = 60_000;

/// A read model built by folding the log.
///
/// `apply` must be deterministic and keep its state in the keys it reads and writes through
/// [`Writes`], a batch that fails is dropped whole and re-applied later, and a rebuild must
/// give the same keys whatever the batch boundaries. The one exception is state that is a pure
/// function of the applied log prefix (see [`Projection::remembers`]): the runner rebuilds it
/// from the log when it opens and after a failed batch.
pub trait Projection: Send + 'static {
    /// Stable name; also the tree name `projection/<name>`.
    fn name(&self) -> &'static str;
    /// Version of the model's layout and rules; a change rebuilds the model from position 0.
    fn version(&self) -> u32 {
        1
    }
    /// Whether the projection reads events of this type at all. Others are not decoded (usage
    /// makes up most of the log and most projections ignore it). Default: every type.
    fn wants(&self, _event_type: &str) -> bool {
        true
    }
    /// Applies one event. An error aborts the whole batch (nothing of it is committed).
    fn apply(
        &mut self,
        writes: &mut Writes<'_>,
        event: &RecordedEvent,
        decoded: &Event,
    ) -> Result<()>;
    /// Called after the last event of each batch, before the commit.
    fn finish_batch(&mut self, _writes: &mut Writes<'_>) -> Result<()> {
        Ok(())
    }
    /// Whether the projection keeps in-memory state folded from the log prefix it has applied.
    /// If so, before its first batch the runner passes every wanted event before the checkpoint
    /// to [`Projection::remember`], and after a failed batch it calls [`Projection::forget`]
    /// and does that again.
    fn remembers(&self) -> bool {
        false
    }
    /// Folds an event that is already in the read model into the in-memory state.
    fn remember(&mut self, _event: &RecordedEvent, _decoded: &Event) {}
    /// Drops the in-memory state.
    fn forget(&mut self) {}
    /// The in-memory state encoded, if the projection wants a snapshot of it stored now: at the
    /// end of a batch after which `[0, position)` is applied, or (`stopping`) when the runner
    /// stops. The runner commits it with that checkpoint, in the same sled batch
    /// ([`crate::state_snapshot`]). Default: never.
    fn save_state(&mut self, _position: Position, _stopping: bool) -> Option<Vec<u8>> {
        None
    }
    /// Replaces the in-memory state by the one [`Projection::save_state`] returned at
    /// `position`. On `Err(reason)` the runner logs it, calls [`Projection::forget`] and folds
    /// the log from 0: a snapshot is an optimisation, never a source of truth.
    fn restore_state(&mut self, _position: Position, _payload: &[u8]) -> Result<(), String> {
        Err("this projection does not restore snapshots".into())
    }
}

/// Events of one batch read by someone else: `decoded[i]`, when given and `Some`, is
/// `events[i]` already decoded (a `None` slot is decoded by the runner if it wants the event).
#[derive(Clone, Copy)]
pub(crate) struct Segment<'a> {
    pub(crate) events: &'a [RecordedEvent],
    pub(crate) decoded: Option<&'a [Option<Event>]>,
}

/// Runner settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Most events read, applied and committed as one batch.
    pub batch_events_max: usize,
    /// Longest wait for a head change before the runner checks the log again.
    pub poll_interval_ms: u64,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig { batch_events_max: 1_024, poll_interval_ms: 500 }
    }
}

impl RunnerConfig {
    fn validate(&self) -> Result<()> {
        if !(1..=BATCH_EVENTS_MAX_LIMIT).contains(&self.batch_events_max) {
            let msg = format!("batch_events_max must be 1..={BATCH_EVENTS_MAX_LIMIT}");
            return Err(ProjectionError::InvalidArgument(msg));
        }
        if !(1..=POLL_INTERVAL_MS_MAX).contains(&self.poll_interval_ms) {
            let msg = format!("poll_interval_ms must be 1..={POLL_INTERVAL_MS_MAX}");
            return Err(ProjectionError::InvalidArgument(msg));
        }
        Ok(())
    }
}

/// Drives one projection over one event store.
pub struct Runner<S, P> {
    store: S,
    projection: P,
    model: ReadModel,
    checkpoint: Position,
    applied: watch::Sender<Position>,
    config: RunnerConfig,
    /// Whether the projection's in-memory state matches the checkpoint.
    warm: bool,
    /// The hash of event `checkpoint - 1`, once this runner applied a batch.
    last_hash: Option<[u8; 32]>,
    /// Where the last warm-up started folding: 0, or the position of the state snapshot it
    /// restored.
    warmed_from: Option<Position>,
}

impl<S: EventStore, P: Projection> Runner<S, P> {
    /// Opens the projection's tree in `db` (clearing it if its version changed) and resumes from
    /// its checkpoint (0 on first start).
    pub fn open(db: &sled::Db, store: S, projection: P, config: RunnerConfig) -> Result<Self> {
        config.validate()?;
        let name = projection.name();
        let tree = db.open_tree(format!("projection/{name}"))?;
        let checkpoint = prepare(name, &tree, projection.version())?;
        tracing::info!(projection = name, checkpoint, "projection opened");
        let model = ReadModel::new(name, tree);
        let applied = watch::channel(checkpoint).0;
        let warm = !projection.remembers();
        Ok(Runner {
            store,
            projection,
            model,
            checkpoint,
            applied,
            config,
            warm,
            last_hash: None,
            warmed_from: None,
        })
    }

    /// The runner's settings.
    pub fn config(&self) -> RunnerConfig {
        self.config
    }

    /// The projection's name.
    pub fn projection_name(&self) -> &'static str {
        self.projection.name()
    }

    /// Where the last warm-up of the in-memory state started folding the log: 0 (the whole
    /// prefix), or the position of the state snapshot it restored; `None` before any warm-up.
    pub fn warmed_from(&self) -> Option<Position> {
        self.warmed_from
    }

    /// Next position to apply (= number of events applied).
    pub fn checkpoint(&self) -> Position {
        self.checkpoint
    }

    /// Events in the log not applied yet: head − checkpoint.
    pub fn lag(&self) -> u64 {
        self.store.head().saturating_sub(self.checkpoint)
    }

    /// A handle to watch progress from other tasks.
    pub fn progress(&self) -> Progress {
        Progress { applied: self.applied.subscribe(), head: self.store.watch_head() }
    }

    /// A read handle on the projection's model.
    pub fn read_model(&self) -> ReadModel {
        self.model.clone()
    }

    /// Applies and commits one batch (at most `batch_events_max` events). Returns how many
    /// events it applied (0 when caught up).
    pub async fn step(&mut self) -> Result<usize> {
        self.step_until(None).await
    }

    /// [`Runner::step`], reading no event at or after `until`.
    pub(crate) async fn step_until(&mut self, until: Option<Position>) -> Result<usize> {
        if !self.warm {
            self.warm_up().await?;
        }
        let left = until.map_or(u64::MAX, |u| u.saturating_sub(self.checkpoint));
        let max = self.config.batch_events_max.min(usize::try_from(left).unwrap_or(usize::MAX));
        if max == 0 {
            return Ok(0);
        }
        let events = self.store.read_all(self.checkpoint, max).await?;
        if events.is_empty() {
            return Ok(0);
        }
        self.commit_batch(&events, None)?;
        Ok(events.len())
    }

    /// Applies `events`, which must start at the checkpoint and be contiguous, as one batch
    /// (at most `batch_events_max`), for a caller that reads the log itself (a replay feeding
    /// several projections from one read). Returns the new checkpoint.
    /// Call [`Runner::warm_up`] first.
    pub fn apply_events(&mut self, events: &[RecordedEvent]) -> Result<Position> {
        self.check_external_batch(events.len())?;
        self.commit_batch(events, None)
    }

    /// [`Runner::apply_events`] with the events already decoded by the caller (`decoded[i]` is
    /// `events[i]`, or `None` where the caller skipped it: the runner then decodes it if its
    /// projection wants it), so one decode can feed several projections.
    pub fn apply_decoded(
        &mut self,
        events: &[RecordedEvent],
        decoded: &[Option<Event>],
    ) -> Result<Position> {
        assert_eq!(events.len(), decoded.len(), "one decoded slot per event");
        self.check_external_batch(events.len())?;
        self.commit_batch(events, Some(decoded))
    }

    /// Whether this runner's projection reads events of this type.
    pub fn wants(&self, event_type: &str) -> bool {
        self.projection.wants(event_type)
    }

    fn check_external_batch(&self, len: usize) -> Result<()> {
        if len > self.config.batch_events_max {
            let msg = format!("{len} events exceed batch_events_max");
            return Err(ProjectionError::InvalidArgument(msg));
        }
        if !self.warm {
            let msg = "the projection's in-memory state is not warmed up".to_string();
            return Err(ProjectionError::InvalidArgument(msg));
        }
        Ok(())
    }

    /// Applies and commits a batch, or forgets the in-memory state on failure.
    fn commit_batch(
        &mut self,
        events: &[RecordedEvent],
        decoded: Option<&[Option<Event>]>,
    ) -> Result<Position> {
        self.commit_segments(&[Segment { events, decoded }])
    }

    /// Applies and commits contiguous segments (starting at the checkpoint) as one batch, or
    /// forgets the in-memory state on failure.
    pub(crate) fn commit_segments(&mut self, segments: &[Segment<'_>]) -> Result<Position> {
        let next = match self.apply_batch(segments) {
            Ok(next) => next,
            Err(e) => {
                self.projection.forget();
                self.warm = !self.projection.remembers();
                return Err(e);
            }
        };
        self.checkpoint = next;
        self.applied.send_replace(next);
        Ok(next)
    }

    /// Folds `[0, checkpoint)` into the projection's in-memory state, in bounded reads (for a
    /// projection that [`Projection::remembers`]; otherwise, or when already warm, nothing).
    /// A valid state snapshot at `P` (see [`Projection::restore_state`]) leaves only
    /// `[P, checkpoint)`.
    pub async fn warm_up(&mut self) -> Result<()> {
        if self.warm {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let from = self.restore().await;
        let mut next: Position = from;
        let rounds = (self.checkpoint - from).div_ceil(self.config.batch_events_max as u64);
        for _ in 0..rounds {
            let left = usize::try_from(self.checkpoint - next).unwrap_or(usize::MAX);
            let events = self.store.read_all(next, self.config.batch_events_max.min(left)).await?;
            for event in &events {
                if event.position != next {
                    return Err(ProjectionError::Gap { expected: next, actual: event.position });
                }
                next += 1;
                if let Some(decoded) = self.decode(event)? {
                    self.projection.remember(event, &decoded);
                }
            }
            if next >= self.checkpoint || events.is_empty() {
                break;
            }
        }
        assert_eq!(next, self.checkpoint, "warm-up folds exactly the applied prefix");
        let (projection, ms) = (self.projection.name(), started.elapsed().as_millis());
        let events = next - from;
        tracing::info!(projection, from, events, ms, "in-memory state folded from the log");
        self.warm = true;
        self.warmed_from = Some(from);
        Ok(())
    }

    /// Restores the projection's in-memory state from its stored snapshot, if there is one
    /// and it is valid: framing and checksum intact, covering `P` ≤ the checkpoint, the log's
    /// event `P - 1` carrying the recorded hash, and the projection accepting the payload.
    /// Returns `P` (the warm-up folds `[P, checkpoint)`), or 0 after logging why the snapshot
    /// was not used (the state is then folded from the whole log). Never fails.
    async fn restore(&mut self) -> Position {
        if self.checkpoint == 0 {
            return 0;
        }
        let projection = self.projection.name();
        let stored = match self.model.state() {
            Ok(Some(stored)) => stored,
            Ok(None) => {
                tracing::info!(projection, "no state snapshot; folding the log from 0");
                return 0;
            }
            Err(e) => {
                let reason = format!("unreadable: {e}");
                tracing::warn!(
                    projection,
                    reason,
                    "state snapshot ignored; folding the log from 0"
                );
                return 0;
            }
        };
        let started = std::time::Instant::now();
        match self.restore_from(&stored).await {
            Ok(position) => {
                let ms = started.elapsed().as_millis();
                let (bytes, tail_events) = (stored.len(), self.checkpoint - position);
                tracing::info!(
                    projection,
                    snapshot_position = position,
                    bytes,
                    tail_events,
                    ms,
                    "in-memory state restored from a snapshot; folding the log's tail"
                );
                position
            }
            Err(reason) => {
                self.projection.forget();
                tracing::warn!(
                    projection,
                    reason,
                    "state snapshot ignored; folding the log from 0"
                );
                0
            }
        }
    }

    async fn restore_from(&mut self, stored: &[u8]) -> Result<Position, String> {
        let (covers, payload) = state_snapshot::decode(stored)?;
        let p = covers.position;
        if p > self.checkpoint {
            let checkpoint = self.checkpoint;
            return Err(format!("stale: it covers {p} events, the checkpoint is {checkpoint}"));
        }
        if hash_at(&self.store, p).await? != covers.last_hash {
            let at = p - 1;
            return Err(format!("stale: the log's event {at} has another hash (another log)"));
        }
        self.projection.restore_state(p, payload)?;
        Ok(p)
    }

    /// Stores a snapshot of the projection's in-memory state at the checkpoint, if it wants
    /// one at a stop ([`Projection::save_state`] with `stopping`), and flushes the tree. A
    /// failure is logged, never an error: the snapshot is only an optimisation.
    pub async fn save_state_at_stop(&mut self) {
        if !self.warm || self.checkpoint == 0 {
            return;
        }
        let (projection, position) = (self.projection.name(), self.checkpoint);
        let last_hash = match self.last_hash {
            Some(hash) => Ok(hash),
            None => hash_at(&self.store, position).await,
        };
        let saved = last_hash.map_err(ProjectionError::InvalidArgument).and_then(|last_hash| {
            let Some(framed) = framed_state(&mut self.projection, position, last_hash, true) else {
                return Ok(());
            };
            let mut alone = Writes::new(self.model.tree());
            alone.put_state(framed);
            self.model.commit(alone, position)?;
            Ok(self.model.tree().flush().map(|_| ())?)
        });
        if let Err(e) = saved {
            tracing::warn!(projection, error = %e, "no state snapshot written at the stop");
        }
    }

    /// The decoded event, if the projection wants its type.
    fn decode(&self, event: &RecordedEvent) -> Result<Option<Event>> {
        if !self.projection.wants(&event.event_type) {
            return Ok(None);
        }
        decode_event(event).map(Some)
    }

    /// Applies the segments, in order, as one batch and commits it with the new checkpoint.
    fn apply_batch(&mut self, segments: &[Segment<'_>]) -> Result<Position> {
        let mut writes = Writes::new(self.model.tree());
        let mut next = self.checkpoint;
        let mut last_hash = self.last_hash;
        for segment in segments {
            if let Some(decoded) = segment.decoded {
                assert_eq!(segment.events.len(), decoded.len(), "one decoded slot per event");
            }
            for (i, event) in segment.events.iter().enumerate() {
                if event.position != next {
                    return Err(ProjectionError::Gap { expected: next, actual: event.position });
                }
                next += 1;
                last_hash = Some(event.hash);
                if !self.projection.wants(&event.event_type) {
                    continue;
                }
                let owned;
                let e = match segment.decoded.and_then(|d| d[i].as_ref()) {
                    Some(e) => e,
                    None => {
                        owned = decode_event(event)?;
                        &owned
                    }
                };
                self.projection.apply(&mut writes, event, e)?;
            }
        }
        self.projection.finish_batch(&mut writes)?;
        if let Some(hash) = last_hash.filter(|_| next > self.checkpoint) {
            if let Some(framed) = framed_state(&mut self.projection, next, hash, false) {
                writes.put_state(framed);
            }
        }
        self.model.commit(writes, next)?;
        self.last_hash = last_hash;
        Ok(next)
    }

    /// Applies everything up to the head as it is now. Returns the checkpoint.
    pub async fn catch_up(&mut self) -> Result<Position> {
        let head = self.store.head();
        let batch = self.config.batch_events_max as u64;
        let rounds = head.saturating_sub(self.checkpoint).div_ceil(batch) + 1;
        for _ in 0..rounds {
            if self.checkpoint >= head || self.step().await? == 0 {
                break;
            }
        }
        Ok(self.checkpoint)
    }

    /// Catches up, then follows live appends (waking on the store's head, at the latest every
    /// `poll_interval_ms`) until `shutdown` becomes true or its sender is dropped. An error stops
    /// the runner; what was committed stays, and a new runner resumes from there. Records the
    /// projection's lag, events applied and batch durations (see [`crate::metrics`]).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let mut head = self.store.watch_head();
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        let metrics = RunnerMetrics::new(self.projection.name());
        loop {
            if *shutdown.borrow() {
                self.save_state_at_stop().await;
                return Ok(());
            }
            let target = *head.borrow_and_update();
            let started = Instant::now();
            let applied = if self.checkpoint < target { self.step().await? } else { 0 };
            metrics.record_step(applied, started.elapsed(), self.lag());
            if applied > 0 {
                continue;
            }
            if !wait_for_more(&mut head, &mut shutdown, poll).await {
                self.save_state_at_stop().await;
                return Ok(());
            }
        }
    }
}

/// The hash of the log's event `position - 1` (`position` > 0). A free function: the runner
/// is not `Sync`, so no reference to it is held across an await.
async fn hash_at<S: EventStore>(store: &S, position: Position) -> Result<[u8; 32], String> {
    assert!(position > 0, "a snapshot covers at least one event");
    let at = position - 1;
    let hash = event_store::hash_at(store, at).await.map_err(|e| format!("reading {at}: {e}"))?;
    hash.ok_or_else(|| format!("stale: the log has no event {at}"))
}

/// The projection's state snapshot at `position` ([`Projection::save_state`]), framed
/// ([`state_snapshot`]), if it wants one stored now. Logs its size and encoding time.
fn framed_state<P: Projection>(
    projection: &mut P,
    position: Position,
    last_hash: [u8; 32],
    stopping: bool,
) -> Option<Vec<u8>> {
    let started = std::time::Instant::now();
    let payload = projection.save_state(position, stopping)?;
    let framed = state_snapshot::encode(state_snapshot::Covers { position, last_hash }, &payload);
    let (name, bytes, ms) = (projection.name(), framed.len(), started.elapsed().as_millis());
    tracing::info!(projection = name, position, bytes, ms, stopping, "state snapshot encoded");
    Some(framed)
}

/// Decodes a recorded event's payload (older schema versions are upcast).
pub fn decode_event(event: &RecordedEvent) -> Result<Event> {
    Event::decode(&event.event_type, event.schema_version, &event.payload)
        .map_err(|source| ProjectionError::Decode { position: event.position, source })
}

/// Waits for a head change, shutdown or `poll`; false means shut down.
pub(crate) async fn wait_for_more(
    head: &mut watch::Receiver<Position>,
    shutdown: &mut watch::Receiver<bool>,
    poll: Duration,
) -> bool {
    tokio::select! {
        changed = head.changed() => {
            if changed.is_err() {
                tokio::time::sleep(poll).await;
            }
            true
        }
        stop = shutdown.changed() => stop.is_ok() && !*shutdown.borrow(),
        _ = tokio::time::sleep(poll) => true,
    }
}

/// Watches a runner's progress from anywhere (for lag metrics and read-your-writes).
#[derive(Clone, Debug)]
pub struct Progress {
    applied: watch::Receiver<Position>,
    head: watch::Receiver<Position>,
}

/// Why [`Progress::wait_for`] gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("position {position} was not applied before the deadline (checkpoint {checkpoint})")]
    Timeout { position: Position, checkpoint: Position },
    #[error("the projection runner stopped at checkpoint {checkpoint}")]
    Stopped { checkpoint: Position },
}

impl Progress {
    /// The progress of a read model nobody applies to in this process (served as it is on
    /// disk): the checkpoint never moves, so a wait for a later position ends at once with
    /// [`WaitError::Stopped`]. `head` is the log's head if the log is known, else the checkpoint.
    pub fn still(checkpoint: Position, head: watch::Receiver<Position>) -> Progress {
        Progress { applied: watch::channel(checkpoint).1, head }
    }

    /// Next position to apply.
    pub fn checkpoint(&self) -> Position {
        *self.applied.borrow()
    }

    /// The log's head (next position to be assigned).
    pub fn head(&self) -> Position {
        *self.head.borrow()
    }

    /// Waits until the log's head is at least `position` (the log holds that many events) or
    /// `deadline` passes; returns the head then (below `position` if it never got there).
    pub async fn wait_for_head(&self, position: Position, deadline: Instant) -> Position {
        let mut head = self.head.clone();
        let reached = head.wait_for(|h| *h >= position);
        let waited = tokio::time::timeout_at(deadline, reached).await.ok().and_then(Result::ok);
        let reached_head = waited.map(|h| *h);
        reached_head.unwrap_or_else(|| self.head())
    }

    /// head − checkpoint.
    pub fn lag(&self) -> u64 {
        self.head().saturating_sub(self.checkpoint())
    }

    /// Waits until the log prefix `[0, position)` is applied (checkpoint ≥ position: `position`
    /// is a log length, as a command's acknowledged position) or `deadline` passes. Returns
    /// the checkpoint.
    pub async fn wait_for(
        &self,
        position: Position,
        deadline: Instant,
    ) -> Result<Position, WaitError> {
        let mut applied = self.applied.clone();
        let reached = applied.wait_for(|cp| *cp >= position);
        let waited = tokio::time::timeout_at(deadline, reached).await;
        match waited {
            Ok(Ok(checkpoint)) => Ok(*checkpoint),
            Ok(Err(_)) => Err(WaitError::Stopped { checkpoint: self.checkpoint() }),
            Err(_) => Err(WaitError::Timeout { position, checkpoint: self.checkpoint() }),
        }
    }
}
