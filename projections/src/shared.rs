//! One log reader for several projections (see docs/decisions/0027-shared-reader-and-journal-batches.md).
//!
//! A [`SharedLog`] reads the log once, decodes each event once (if any subscribed projection
//! wants its type) and keeps the last batches it read in a ring bounded by events
//! ([`SharedConfig::ring_events_max`]). Each projection still runs in its own task with its own
//! runner, checkpoint and commits ([`Runner::run_shared`]): it takes from the ring every
//! retained event from its checkpoint on, up to its `batch_events_max`, and applies them as one
//! batch committed with its checkpoint (exactly once, as before). So a projection that is slow
//! applies larger batches (the journal rates each subscription once per batch), and one that
//! is behind the ring (a version bump rebuilding it, or a warm-up after a restart) reads the
//! log itself until it is back within the ring: the reader never waits for any projection, so
//! no projection holds the others back.
//!
//! # Invariants
//!
//! * The ring holds contiguous batches: `batches[i].end() == batches[i + 1].start`, and at
//!   most `ring_events_max` events plus one batch of at most `read_events_max`.
//! * The reader's position only grows; it starts at the highest checkpoint of its subscribers.
//! * A runner applies events strictly in log order from its checkpoint (the runner checks
//!   positions and reports a gap as an error), whether from the ring or from its own reads.
//! * If the reader fails it closes the ring; runners then read the log themselves (as
//!   [`Runner::run`] does), so a read error stops each runner as it did before.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use domain::events::Event;
use event_store::{EventStore, Position, RecordedEvent};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::RunnerMetrics;
use crate::runner::{decode_event, wait_for_more, Projection, Runner, Segment};
use crate::{ProjectionError, Result};

/// Largest accepted `ring_events_max`.
pub const RING_EVENTS_MAX_LIMIT: usize = 1 << 20;

/// Settings of the shared reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedConfig {
    /// Most events read (and decoded) at once.
    pub read_events_max: usize,
    /// Events kept for the runners; older batches are dropped (a runner behind them reads the
    /// log itself). Bounds the reader's memory.
    pub ring_events_max: usize,
    /// Longest wait for a head change before the reader checks the log again.
    pub poll_interval_ms: u64,
}

impl Default for SharedConfig {
    fn default() -> Self {
        SharedConfig { read_events_max: 8_192, ring_events_max: 131_072, poll_interval_ms: 500 }
    }
}

impl SharedConfig {
    fn validate(&self) -> Result<()> {
        let read = self.read_events_max;
        if !(1..=crate::BATCH_EVENTS_MAX_LIMIT).contains(&read) {
            let msg = format!("read_events_max must be 1..={}", crate::BATCH_EVENTS_MAX_LIMIT);
            return Err(ProjectionError::InvalidArgument(msg));
        }
        if !(read..=RING_EVENTS_MAX_LIMIT).contains(&self.ring_events_max) {
            let msg = format!("ring_events_max must be read_events_max..={RING_EVENTS_MAX_LIMIT}");
            return Err(ProjectionError::InvalidArgument(msg));
        }
        if !(1..=crate::POLL_INTERVAL_MS_MAX).contains(&self.poll_interval_ms) {
            let msg = format!("poll_interval_ms must be 1..={}", crate::POLL_INTERVAL_MS_MAX);
            return Err(ProjectionError::InvalidArgument(msg));
        }
        Ok(())
    }
}

/// Events read once, decoded once.
#[derive(Debug)]
pub struct SharedBatch {
    events: Vec<RecordedEvent>,
    /// `decoded[i]` is `events[i]` decoded, if some subscriber wants its type.
    decoded: Vec<Option<Event>>,
}

impl SharedBatch {
    fn start(&self) -> Position {
        self.events.first().map_or(0, |e| e.position)
    }

    fn end(&self) -> Position {
        self.events.last().map_or(0, |e| e.position + 1)
    }
}

#[derive(Default)]
struct Ring {
    batches: VecDeque<Arc<SharedBatch>>,
    events: usize,
    /// The reader stopped (error or shutdown): runners read the log themselves.
    closed: bool,
}

/// What a runner got from the ring.
enum Taken {
    /// Batches covering `[from, ..)`, at most `events_max` events from `from` (the last one
    /// may reach further).
    Batches(Vec<Arc<SharedBatch>>),
    /// The ring starts after `from` (or is closed): read `[from, until)` from the log.
    Behind { until: Option<Position> },
    /// Nothing at or after `from` yet.
    Nothing,
}

/// The ring's side the runners see.
#[derive(Clone)]
pub struct SharedFeed {
    ring: Arc<Mutex<Ring>>,
    /// End of the newest batch in the ring.
    tail: watch::Receiver<Position>,
}

impl SharedFeed {
    fn take(&self, from: Position, events_max: usize) -> Taken {
        let ring = self.ring.lock();
        if ring.closed {
            return Taken::Behind { until: None };
        }
        let Some(first) = ring.batches.front() else {
            // Nothing read yet: the reader starts at the highest checkpoint of its subscribers,
            // so a runner below it (e.g. one that committed less before a kill -9) reads
            // `[from, tail)` itself, even if the log never grows again.
            let tail = *self.tail.borrow();
            return match from < tail {
                true => Taken::Behind { until: Some(tail) },
                false => Taken::Nothing,
            };
        };
        if first.start() > from {
            return Taken::Behind { until: Some(first.start()) };
        }
        let mut out = Vec::new();
        let mut events = 0usize;
        for batch in ring.batches.iter().filter(|b| b.end() > from) {
            if events >= events_max {
                break;
            }
            events += usize::try_from(batch.end() - batch.start().max(from)).unwrap_or(usize::MAX);
            out.push(batch.clone());
        }
        if out.is_empty() {
            Taken::Nothing
        } else {
            Taken::Batches(out)
        }
    }
}

/// Reads the log once for every subscribed runner (see the module documentation).
pub struct SharedLog<S> {
    store: S,
    config: SharedConfig,
    ring: Arc<Mutex<Ring>>,
    tail: watch::Sender<Position>,
    wanted: BTreeSet<&'static str>,
    next: Position,
}

impl<S: EventStore> SharedLog<S> {
    pub fn new(store: S, config: SharedConfig) -> Result<Self> {
        config.validate()?;
        Ok(SharedLog {
            store,
            config,
            ring: Arc::default(),
            tail: watch::channel(0).0,
            wanted: BTreeSet::new(),
            next: 0,
        })
    }

    /// Subscribes a runner: the reader decodes what it wants and starts at the highest
    /// checkpoint of its subscribers. Returns the feed to pass to [`Runner::run_shared`].
    pub fn subscribe<T: EventStore, P: Projection>(&mut self, runner: &Runner<T, P>) -> SharedFeed {
        self.wanted.extend(domain::events::EVENT_TYPES.iter().filter(|t| runner.wants(t)));
        self.next = self.next.max(runner.checkpoint());
        self.tail.send_replace(self.next);
        SharedFeed { ring: self.ring.clone(), tail: self.tail.subscribe() }
    }

    /// Follows the log until `shutdown` becomes true or its sender is dropped. On a read error
    /// it closes the ring (runners then read the log themselves) and returns the error.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let result = self.follow(&mut shutdown).await;
        self.ring.lock().closed = true;
        self.tail.send_modify(|_| {});
        result
    }

    async fn follow(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        let mut head = self.store.watch_head();
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let target = *head.borrow_and_update();
            if self.next < target {
                self.read_once().await?;
                continue;
            }
            if !wait_for_more(&mut head, shutdown, poll).await {
                return Ok(());
            }
        }
    }

    /// Reads, decodes and publishes the batch at `next`.
    async fn read_once(&mut self) -> Result<()> {
        let events = self.store.read_all(self.next, self.config.read_events_max).await?;
        if events.is_empty() {
            return Ok(());
        }
        let wanted = self.wanted.clone();
        let decode = tokio::task::spawn_blocking(move || -> Result<SharedBatch> {
            let mut decoded = Vec::with_capacity(events.len());
            for e in &events {
                let wants = wanted.contains(e.event_type.as_str());
                decoded.push(if wants { Some(decode_event(e)?) } else { None });
            }
            Ok(SharedBatch { events, decoded })
        });
        let batch = decode.await.expect("decoding does not panic")?;
        if batch.start() != self.next {
            return Err(ProjectionError::Gap { expected: self.next, actual: batch.start() });
        }
        self.next = batch.end();
        let mut ring = self.ring.lock();
        ring.events += batch.events.len();
        ring.batches.push_back(Arc::new(batch));
        while ring.events > self.config.ring_events_max && ring.batches.len() > 1 {
            let old = ring.batches.pop_front().expect("more than one batch");
            ring.events -= old.events.len();
        }
        drop(ring);
        self.tail.send_replace(self.next);
        Ok(())
    }
}

impl<S: EventStore, P: Projection> Runner<S, P> {
    /// [`Runner::run`] fed by a [`SharedLog`]: applies, as one batch each time, every event
    /// the ring holds from the checkpoint on (at most `batch_events_max`), and reads the log
    /// itself while it is behind the ring (or the reader has stopped). Same failure semantics
    /// as [`Runner::run`]: an error stops this runner only; what was committed stays.
    pub async fn run_shared(
        self,
        mut feed: SharedFeed,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<()> {
        let poll = Duration::from_millis(self.config().poll_interval_ms);
        let metrics = RunnerMetrics::new(self.projection_name());
        let mut runner = self;
        // Ends on shutdown, on an error, or when the reader is gone (then as `run`).
        loop {
            if *shutdown.borrow() {
                stop_off_the_workers(runner).await;
                return Ok(());
            }
            let started = Instant::now();
            let from = runner.checkpoint();
            let taken = feed.take(from, runner.config().batch_events_max);
            let (back, applied) = off_the_workers(runner, taken).await;
            runner = back;
            let applied = applied?;
            metrics.record_step(applied, started.elapsed(), runner.lag());
            if applied > 0 {
                continue;
            }
            let more = tokio::select! {
                changed = feed.tail.wait_for(|t| *t > from) => changed.is_ok(),
                stop = shutdown.changed() => stop.is_ok() && !*shutdown.borrow(),
                _ = tokio::time::sleep(poll) => true,
            };
            if !more && *shutdown.borrow() {
                stop_off_the_workers(runner).await;
                return Ok(());
            }
            if !more {
                // The reader is gone: follow the log alone.
                return runner.run(shutdown).await;
            }
        }
    }

    /// Applies the ring's batches from the checkpoint on, at most `batch_events_max` events.
    fn apply_shared(&mut self, batches: &[Arc<SharedBatch>]) -> Result<usize> {
        let from = self.checkpoint();
        let mut left = self.config().batch_events_max;
        let mut segments = Vec::with_capacity(batches.len());
        for batch in batches {
            let skip = usize::try_from(from.saturating_sub(batch.start())).unwrap_or(usize::MAX);
            let skip = skip.min(batch.events.len());
            let take = (batch.events.len() - skip).min(left);
            if take == 0 {
                continue;
            }
            let range = skip..skip + take;
            segments.push(Segment {
                events: &batch.events[range.clone()],
                decoded: Some(&batch.decoded[range]),
            });
            left -= take;
        }
        if segments.is_empty() {
            return Ok(0);
        }
        let next = self.commit_segments(&segments)?;
        Ok(usize::try_from(next - from).expect("a batch fits in memory"))
    }
}

/// Warms the runner up if needed, then applies what `taken` says, on the blocking pool: a
/// batch (or a warm-up folding the whole log prefix) is seconds of CPU that must not hold a
/// runtime worker that serves gRPC. Returns the runner and the events applied.
async fn off_the_workers<S: EventStore, P: Projection>(
    mut runner: Runner<S, P>,
    taken: Taken,
) -> (Runner<S, P>, Result<usize>) {
    let handle = tokio::runtime::Handle::current();
    let work = tokio::task::spawn_blocking(move || {
        let applied = handle.block_on(async {
            runner.warm_up().await?;
            match taken {
                Taken::Batches(batches) => runner.apply_shared(&batches),
                Taken::Behind { until } => runner.step_until(until).await,
                Taken::Nothing => Ok(0),
            }
        });
        (runner, applied)
    });
    work.await.expect("projection batches do not panic")
}

/// [`Runner::save_state_at_stop`] on the blocking pool (encoding a state snapshot is CPU work).
async fn stop_off_the_workers<S: EventStore, P: Projection>(mut runner: Runner<S, P>) {
    let handle = tokio::runtime::Handle::current();
    let work = tokio::task::spawn_blocking(move || handle.block_on(runner.save_state_at_stop()));
    work.await.expect("saving a state snapshot does not panic")
}
