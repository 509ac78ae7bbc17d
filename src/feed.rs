//! `accrual.v1.FeedService`: the log as a stream of public events (issue 14, part 1). Each
//! subscriber gets its own follower task that reads the log in bounded batches from its
//! position, decodes, filters by type and customer, and hands messages to a bounded channel;
//! while nothing matches it sends heartbeats with the log head. The follower never buffers
//! more than the channel holds: a consumer that reads nothing for `stall_ms_max` is cut off
//! with RESOURCE_EXHAUSTED naming the position to resume from, so a stalled consumer costs
//! bounded memory. Public schema: `feed/schema.rs`.
//!
//! The customer filter needs each event's customer; events that name only their subscription
//! or invoice are resolved from what the follower has read itself (the customer's
//! subscriptions and invoices it saw appear) and, for those from before its start, from the
//! invoices read model, which the follower waits for to include the start position.

// tonic's Status is the error of every gRPC call; boxing it here would only be unboxed again.
#![allow(clippy::result_large_err)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use command_service::status::{beyond_head, from_domain, unavailable};
use domain::error::Violations;
use domain::events::Event;
use event_store::{EventStore, Position, RecordedEvent};
use projections::invoices::InvoiceReader;
use projections::Progress;
use proto::v1 as pb;
use proto::v1::feed_service_server::FeedService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub mod schema;

/// Events read from the log per batch.
pub const READ_BATCH_EVENTS_MAX: usize = 512;
/// Heartbeat interval when the request gives 0.
pub const HEARTBEAT_MS_DEFAULT: u32 = 5_000;
pub const HEARTBEAT_MS_MIN: u32 = 100;
pub const HEARTBEAT_MS_MAX: u32 = 60_000;
/// Longest the follower waits for the invoices read model to include its start position.
const MODEL_WAIT_MS_MAX: u64 = 10_000;
/// Ids of other customers' subscriptions and invoices remembered as "not this customer's"
/// before the set is cleared (bounds the follower's memory).
const FOREIGN_IDS_MAX: usize = 100_000;

/// Bounds of every subscriber.
#[derive(Clone, Copy, Debug)]
pub struct FeedOptions {
    /// Messages buffered for one subscriber (`--feed-buffer-events`).
    pub buffer_events_max: usize,
    /// How long a full buffer may wait for the consumer before it is cut off
    /// (`--feed-stall-ms`).
    pub stall_ms_max: u64,
}

impl Default for FeedOptions {
    fn default() -> Self {
        FeedOptions { buffer_events_max: 1_024, stall_ms_max: 30_000 }
    }
}

/// The FeedService over one live log and the invoices read model.
pub struct FeedApi {
    store: Arc<dyn EventStore>,
    invoices: InvoiceReader,
    progress: Progress,
    /// The followers' own runtime (one thread): on a busy server they would otherwise be one
    /// task among the ingest tasks, and fall behind (BENCHMARKS.md, event feed).
    followers: Followers,
    options: FeedOptions,
}

impl FeedApi {
    pub fn new(
        store: Arc<dyn EventStore>,
        invoices: InvoiceReader,
        progress: Progress,
        options: FeedOptions,
    ) -> FeedApi {
        assert!(options.buffer_events_max >= 1, "a feed buffer holds at least one message");
        FeedApi { store, invoices, progress, options, followers: Followers::start() }
    }
}

/// A validated request.
struct Subscription {
    from: Position,
    types: Option<HashSet<&'static str>>,
    customer: Option<String>,
    heartbeat: Duration,
}

fn parse(r: &pb::SubscribeEventsRequest, head: Position) -> Result<Subscription, Status> {
    let mut v = Violations::default();
    let mut types = HashSet::new();
    for (i, t) in r.types.iter().enumerate() {
        match schema::PUBLIC_TYPES.iter().find(|p| **p == t.as_str()) {
            Some(p) => {
                types.insert(*p);
            }
            None => v.push(format!("types[{i}]"), format!("{t:?} is not a public event type")),
        }
    }
    let customer = (!r.customer_id.is_empty()).then(|| r.customer_id.clone());
    if !r.customer_id.is_empty() {
        domain::catalog::check_id(&mut v, "customer_id", &r.customer_id);
    }
    let heartbeat_ms = match r.heartbeat_ms {
        0 => HEARTBEAT_MS_DEFAULT,
        ms if (HEARTBEAT_MS_MIN..=HEARTBEAT_MS_MAX).contains(&ms) => ms,
        ms => {
            let range = format!("{HEARTBEAT_MS_MIN}..={HEARTBEAT_MS_MAX}");
            v.push("heartbeat_ms", format!("{ms} is outside {range} (0: the default)"));
            HEARTBEAT_MS_DEFAULT
        }
    };
    v.into_result().map_err(from_domain)?;
    let from = if r.from_now { head } else { r.from_position };
    if from > head {
        return Err(beyond_head("from_position", from, head));
    }
    Ok(Subscription {
        from,
        types: (!types.is_empty()).then_some(types),
        customer,
        heartbeat: Duration::from_millis(u64::from(heartbeat_ms)),
    })
}

#[tonic::async_trait]
impl FeedService for FeedApi {
    type SubscribeEventsStream = ReceiverStream<Result<pb::FeedMessage, Status>>;

    #[tracing::instrument(skip_all)]
    async fn subscribe_events(
        &self,
        request: Request<pb::SubscribeEventsRequest>,
    ) -> Result<Response<Self::SubscribeEventsStream>, Status> {
        let sub = parse(request.get_ref(), self.store.head())?;
        // One slot more than the buffer: the cut-off status always fits (see `Follower::send`).
        let (tx, rx) = mpsc::channel(self.options.buffer_events_max + 1);
        let follower = Follower {
            store: self.store.clone(),
            invoices: self.invoices.clone(),
            progress: self.progress.clone(),
            stall: Duration::from_millis(self.options.stall_ms_max),
            buffer: self.options.buffer_events_max,
            tx,
            own: HashSet::new(),
            foreign: HashSet::new(),
        };
        self.followers.handle().spawn(follower.run(sub));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Follower {
    store: Arc<dyn EventStore>,
    invoices: InvoiceReader,
    progress: Progress,
    stall: Duration,
    buffer: usize,
    tx: mpsc::Sender<Result<pb::FeedMessage, Status>>,
    /// Subscription and invoice ids of the filtered customer (learned from the log).
    own: HashSet<String>,
    /// Ids known to be another customer's (bounded by [`FOREIGN_IDS_MAX`]).
    foreign: HashSet<String>,
}

/// Why a follower stops.
enum Stop {
    /// The consumer went away (or was cut off).
    Gone,
}

impl Follower {
    async fn run(mut self, sub: Subscription) {
        if sub.customer.is_some() {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(MODEL_WAIT_MS_MAX);
            if let Err(e) = self.progress.wait_for(sub.from, deadline).await {
                let why = format!("the invoices read model is behind the log ({e}); retry");
                let _ = self.tx.send(Err(unavailable(why))).await;
                return;
            }
        }
        let mut next = sub.from;
        let mut head_rx = self.store.watch_head();
        loop {
            if self.tx.is_closed() {
                return;
            }
            if next < self.store.head() {
                let batch = match self.store.read_all(next, READ_BATCH_EVENTS_MAX).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        let status = Status::internal(format!("reading the log at {next}: {e}"));
                        let _ = self.tx.send(Err(status)).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    // The head moved before the events are readable (a follower node).
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                for recorded in batch {
                    assert_eq!(recorded.position, next, "the log is read in position order");
                    next += 1;
                    match self.event(&sub, &recorded) {
                        Ok(Some(message)) => {
                            if let Err(Stop::Gone) = self.send(message, recorded.position).await {
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(status) => {
                            let _ = self.tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                changed = head_rx.changed() => {
                    if changed.is_err() {
                        let _ = self.tx.send(Err(unavailable("the log closed"))).await;
                        return;
                    }
                }
                () = tokio::time::sleep(sub.heartbeat) => {
                    let beat = pb::FeedMessage {
                        kind: Some(pb::feed_message::Kind::Heartbeat(pb::Heartbeat {
                            position: next,
                            at: Some(command_service::convert::to_timestamp(jiff::Timestamp::now())),
                        })),
                    };
                    if let Err(Stop::Gone) = self.send(beat, next).await {
                        return;
                    }
                }
            }
        }
    }

    /// The message for `recorded`, if the subscription wants it.
    fn event(
        &mut self,
        sub: &Subscription,
        recorded: &RecordedEvent,
    ) -> Result<Option<pb::FeedMessage>, Status> {
        let Some(public) = schema::public_type(&recorded.event_type) else {
            return Ok(None);
        };
        let type_wanted = sub.types.as_ref().is_none_or(|t| t.contains(public));
        if !type_wanted && sub.customer.is_none() {
            return Ok(None);
        }
        let decoded =
            Event::decode(&recorded.event_type, recorded.schema_version, &recorded.payload)
                .map_err(|e| {
                    Status::data_loss(format!(
                        "event at {} does not decode: {e}",
                        recorded.position
                    ))
                })?;
        let customer = self.customer_of(&decoded, sub.customer.as_deref())?;
        if let Some(wanted) = &sub.customer {
            if customer.as_deref() != Some(wanted.as_str()) || !type_wanted {
                return Ok(None);
            }
        }
        let event = schema::feed_event(recorded, &decoded, customer.unwrap_or_default());
        Ok(Some(pb::FeedMessage { kind: Some(pb::feed_message::Kind::Event(event)) }))
    }

    /// The event's customer: named by the event, or resolved from its subscription or invoice
    /// (only when a customer filter needs it).
    fn customer_of(&mut self, e: &Event, filter: Option<&str>) -> Result<Option<String>, Status> {
        let (customer, subscription, invoice) = schema::ids(e);
        if !customer.is_empty() {
            if filter == Some(customer.as_str()) {
                // Learn the customer's subscriptions and invoices as they appear.
                for id in [subscription, invoice] {
                    if !id.is_empty() {
                        self.own.insert(id);
                    }
                }
            }
            return Ok(Some(customer));
        }
        let Some(filter) = filter else { return Ok(None) };
        let read = |e: projections::ProjectionError| Status::internal(e.to_string());
        for (id, is_subscription) in [(subscription, true), (invoice, false)] {
            if id.is_empty() {
                continue;
            }
            if self.own.contains(&id) {
                return Ok(Some(filter.to_string()));
            }
            if self.foreign.contains(&id) {
                return Ok(None);
            }
            let owner = if is_subscription {
                self.invoices.customer_of_subscription(&id).map_err(read)?
            } else {
                self.invoices.get(&id).map_err(read)?.map(|r| r.invoice.customer_id)
            };
            if owner.as_deref() == Some(filter) {
                self.own.insert(id);
                return Ok(Some(filter.to_string()));
            }
            if self.foreign.len() >= FOREIGN_IDS_MAX {
                self.foreign.clear();
            }
            self.foreign.insert(id);
            return Ok(owner);
        }
        Ok(None)
    }

    /// Sends `message` once the consumer has room, keeping one slot free for the cut-off
    /// status; a consumer that makes no room within the stall bound is cut off, told to resume
    /// at `resume` (the first position it has not been sent).
    async fn send(&self, message: pb::FeedMessage, resume: Position) -> Result<(), Stop> {
        match tokio::time::timeout(self.stall, self.tx.reserve_many(2)).await {
            Ok(Ok(mut permits)) => {
                permits.next().expect("two permits").send(Ok(message));
                Ok(())
            }
            Ok(Err(_)) => Err(Stop::Gone),
            Err(_) => {
                let why = format!(
                    "the consumer read nothing for {} ms with {} messages buffered: cut off; \
                     resume with from_position = {resume}",
                    self.stall.as_millis(),
                    self.buffer
                );
                tracing::warn!(resume, "feed consumer too slow: cut off");
                let _ = self.tx.try_send(Err(Status::resource_exhausted(why)));
                Err(Stop::Gone)
            }
        }
    }
}

/// A runtime of its own for the followers; shut down in the background when dropped (a runtime
/// may not be dropped inside another's async context).
struct Followers(Option<tokio::runtime::Runtime>);

impl Followers {
    fn start() -> Followers {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("feed-follower")
            .enable_all()
            .build()
            .expect("a runtime for the feed's followers");
        Followers(Some(runtime))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running").handle()
    }
}

impl Drop for Followers {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
