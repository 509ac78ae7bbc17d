//! SPEC §3: an acknowledged command is durable. A reply that appends nothing (a duplicate usage
//! event, an idempotent replay of a keyed command) must not be sent while the original append
//! it points at is still waiting for its fsync: if the process dies then, the original is lost
//! and the duplicate's acknowledgment was a lie. Found by `tests/crash.rs` (a client that
//! retries before its first attempt has answered, killed with SIGKILL), reproduced here
//! deterministically with a store whose commits the test holds and then fails, as a crash does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use command_service::engine::{Clock, Engine, EngineOptions, UsageItem};
use domain::calendar::{Anchor, Interval};
use domain::catalog::{Charge, Customer, FeeTiming, Metric, Plan};
use domain::commands::{Command, Policy};
use domain::events::Usage;
use domain::money::Currency;
use domain::rating::aggregation::Aggregation;
use domain::rating::ChargeModel;
use event_store::{
    AppendRequest, AppendTicket, Committed, EventStore, MemoryStore, Position, RecordedEvent,
    StoreError,
};
use rust_decimal_macros::dec;
use tokio::sync::{mpsc, oneshot, watch};

/// How long a reply is given to (wrongly) come back before its original is durable.
const EARLY_REPLY_WAIT_MS: u64 = 300;
/// Bound of every other wait of these tests.
const WAIT_MS_MAX: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    /// Appends commit.
    Open,
    /// Appends wait (an fsync that has not finished).
    Held,
    /// Waiting and new appends fail (the process died before the fsync).
    Crash,
}

type Job = (AppendRequest, oneshot::Sender<Result<Committed, StoreError>>);

/// A [`MemoryStore`] whose commits go through a gate the test controls; commits keep their
/// enqueue order (one worker).
struct GatedStore {
    inner: Arc<MemoryStore>,
    jobs: mpsc::UnboundedSender<Job>,
    gate: watch::Sender<Gate>,
    /// Appends the worker has taken and is holding (or has finished).
    taken: watch::Receiver<u64>,
}

impl GatedStore {
    fn new() -> Arc<GatedStore> {
        let inner = Arc::new(MemoryStore::new());
        let (jobs, receiver) = mpsc::unbounded_channel();
        let (gate, gate_rx) = watch::channel(Gate::Open);
        let (taken_tx, taken) = watch::channel(0);
        tokio::spawn(worker(inner.clone(), receiver, gate_rx, taken_tx));
        Arc::new(GatedStore { inner, jobs, gate, taken })
    }

    fn set(&self, gate: Gate) {
        self.gate.send_replace(gate);
    }

    /// Waits until the worker holds `count` appends in total.
    async fn taken(&self, count: u64) {
        let mut taken = self.taken.clone();
        let wait = taken.wait_for(|n| *n >= count);
        tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), wait).await.unwrap().unwrap();
    }
}

async fn worker(
    inner: Arc<MemoryStore>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut gate: watch::Receiver<Gate>,
    taken: watch::Sender<u64>,
) {
    while let Some((req, reply)) = jobs.recv().await {
        taken.send_modify(|n| *n += 1);
        let Ok(state) = gate.wait_for(|g| *g != Gate::Held).await.map(|g| *g) else { return };
        let outcome = match state {
            Gate::Crash => Err(StoreError::Unavailable("crashed before the fsync".into())),
            _ => inner.append(req).await,
        };
        let _ = reply.send(outcome);
    }
}

#[async_trait]
impl EventStore for GatedStore {
    async fn append(&self, req: AppendRequest) -> Result<Committed, StoreError> {
        self.enqueue(req).await.await
    }

    async fn enqueue(&self, req: AppendRequest) -> AppendTicket {
        let (reply, outcome) = oneshot::channel();
        match self.jobs.send((req, reply)) {
            Ok(()) => AppendTicket::waiting(outcome),
            Err(_) => AppendTicket::ready(Err(StoreError::Unavailable("worker gone".into()))),
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, from_version, max_count).await
    }

    async fn read_all(
        &self,
        from: Position,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(from, max_count).await
    }

    fn head(&self) -> Position {
        self.inner.head()
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.inner.watch_head()
    }

    fn stream_version(&self, stream: &str) -> Option<u64> {
        self.inner.stream_version(stream)
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}

const NOW: &str = "2025-01-10T12:00:00Z";

fn clock() -> Clock {
    Arc::new(|| NOW.parse().unwrap())
}

fn customer(id: &str) -> Customer {
    Customer {
        customer_id: id.into(),
        name: "C".into(),
        currency: Currency::parse("USD").unwrap(),
        time_zone: "UTC".into(),
        tax_rate: dec!(0),
    }
}

/// An engine over a gated store with customer `c` subscribed to a plan, and metric `calls`.
async fn books() -> (Arc<GatedStore>, Arc<Engine>) {
    books_with(EngineOptions::default()).await
}

async fn books_with(options: EngineOptions) -> (Arc<GatedStore>, Arc<Engine>) {
    let store = GatedStore::new();
    let e = Engine::open_with(store.clone(), Policy::default(), clock(), options).await.unwrap();
    e.execute(Command::RegisterCustomer(customer("c")), None, None).await.unwrap();
    let metric = Metric {
        code: "calls".into(),
        name: "Calls".into(),
        aggregation: Aggregation::Count,
        property: None,
        allow_negative: false,
    };
    e.execute(Command::DefineMetric(metric), None, None).await.unwrap();
    let plan = Plan {
        code: "p".into(),
        version: 0,
        name: "P".into(),
        currency: Currency::parse("USD").unwrap(),
        interval: Interval::Monthly,
        base_fee: dec!(10),
        fee_timing: FeeTiming::Arrears,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        // Usage is accepted only for a metric the plan charges.
        charges: vec![Charge {
            metric_code: "calls".into(),
            model: ChargeModel::Standard { unit_price: dec!(1) },
            pay_in_advance: false,
        }],
    };
    e.execute(Command::PublishPlan(plan), None, None).await.unwrap();
    let start = Command::StartSubscription {
        subscription_id: "s".into(),
        customer_id: "c".into(),
        plan_code: "p".into(),
        plan_version: None,
        anchor: Anchor::Anniversary,
        start_date: None,
        billed_until: None,
    };
    e.execute(start, None, None).await.unwrap();
    (store, Arc::new(e))
}

fn usage(tx: &str) -> Usage {
    Usage {
        subscription_id: "s".into(),
        transaction_id: tx.into(),
        metric_code: "calls".into(),
        occurred_at: "2025-01-10T08:00:00Z".parse().unwrap(),
        properties: BTreeMap::new(),
    }
}

/// Records one usage event on a task of its own.
fn record(e: &Arc<Engine>, tx: &str) -> tokio::task::JoinHandle<Result<UsageItem, tonic::Status>> {
    let (e, u) = (e.clone(), usage(tx));
    tokio::spawn(async move { Ok(e.record_usage(vec![Ok(u)]).await?.pop().unwrap()) })
}

/// Holds the gate, starts `submit` and returns its task once the store holds its append (an
/// fsync that has not finished).
async fn hold<T>(
    store: &GatedStore,
    submit: impl FnOnce() -> tokio::task::JoinHandle<T>,
) -> tokio::task::JoinHandle<T> {
    let taken_before = *store.taken.borrow();
    store.set(Gate::Held);
    let task = submit();
    store.taken(taken_before + 1).await;
    task
}

/// Whether `task` gives no answer within [`EARLY_REPLY_WAIT_MS`].
async fn no_reply_yet<T>(task: &mut tokio::task::JoinHandle<T>) -> bool {
    tokio::time::timeout(Duration::from_millis(EARLY_REPLY_WAIT_MS), task).await.is_err()
}

async fn bounded<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), task).await.unwrap().unwrap()
}

/// The log's usage transaction ids.
async fn logged_transactions(store: &GatedStore) -> Vec<String> {
    let events = store.read_all(0, 1_000).await.unwrap();
    let decode = |r: &RecordedEvent| {
        domain::events::Event::decode(&r.event_type, r.schema_version, &r.payload).unwrap()
    };
    events
        .iter()
        .filter_map(|r| match decode(r) {
            domain::events::Event::UsageRecorded(u) => Some(u.transaction_id),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_duplicate_usage_event_is_not_acknowledged_before_its_original_is_durable() {
    let (store, e) = books().await;
    let original = hold(&store, || record(&e, "tx-1")).await;
    let mut duplicate = record(&e, "tx-1");
    assert!(no_reply_yet(&mut duplicate).await, "no reply while the original waits for its fsync");

    store.set(Gate::Crash);
    let lost = bounded(original).await.unwrap_err();
    assert_eq!(lost.code(), tonic::Code::Unavailable);
    let retry_later = bounded(duplicate).await.expect_err("not acknowledged: it was lost");
    assert_eq!(retry_later.code(), tonic::Code::Unavailable);
    assert!(logged_transactions(&store).await.is_empty(), "nothing reached the log");

    store.set(Gate::Open);
    let again = bounded(record(&e, "tx-1")).await.unwrap();
    assert!(matches!(again, UsageItem::Accepted { .. }), "the retry records it: {again:?}");
    assert_eq!(logged_transactions(&store).await, ["tx-1"]);
}

#[tokio::test]
async fn a_duplicate_usage_event_is_acknowledged_once_its_original_is_durable() {
    let (store, e) = books().await;
    let original = hold(&store, || record(&e, "tx-1")).await;
    let duplicate = record(&e, "tx-1");
    tokio::time::sleep(Duration::from_millis(EARLY_REPLY_WAIT_MS)).await;
    store.set(Gate::Open);
    let first = bounded(original).await.unwrap();
    let UsageItem::Accepted { position, .. } = first else { panic!("{first:?}") };
    let second = bounded(duplicate).await.unwrap();
    assert!(matches!(second, UsageItem::Duplicate { position: p } if p == position), "{second:?}");
    assert_eq!(logged_transactions(&store).await, ["tx-1"]);
}

/// Runs a keyed RegisterCustomer on a task of its own.
fn register(
    e: &Arc<Engine>,
) -> tokio::task::JoinHandle<Result<command_service::engine::Executed, tonic::Status>> {
    let e = e.clone();
    let key = Some(("k-new".to_string(), [9_u8; 32]));
    tokio::spawn(
        async move { e.execute(Command::RegisterCustomer(customer("new")), key, None).await },
    )
}

#[tokio::test]
async fn an_idempotent_replay_is_not_acknowledged_before_its_original_is_durable() {
    let (store, e) = books().await;
    let head = store.head();
    let original = hold(&store, || register(&e)).await;
    let mut replay = register(&e);
    assert!(no_reply_yet(&mut replay).await, "no reply while the original waits for its fsync");

    store.set(Gate::Crash);
    assert_eq!(bounded(original).await.unwrap_err().code(), tonic::Code::Unavailable);
    assert_eq!(bounded(replay).await.unwrap_err().code(), tonic::Code::Unavailable);
    assert_eq!(store.head(), head, "nothing reached the log");

    store.set(Gate::Open);
    let again = bounded(register(&e)).await.unwrap();
    assert!(!again.duplicate, "the retry registers the customer");
    assert_eq!(store.head(), head + 1);
}

/// Whether customer `new` exists, read as the command service's queries read (`GetInvoice`,
/// `GetCurrentUsage`).
fn knows_new_customer(e: &Arc<Engine>) -> tokio::task::JoinHandle<Result<bool, tonic::Status>> {
    let e = e.clone();
    tokio::spawn(async move { e.read_durable(|l| l.customers.contains_key("new")).await })
}

#[tokio::test]
async fn a_query_does_not_answer_from_events_before_they_are_durable() {
    let (store, e) = books().await;
    let original = hold(&store, || register(&e)).await;
    let mut query = knows_new_customer(&e);
    assert!(no_reply_yet(&mut query).await, "no answer while what it shows waits for its fsync");

    store.set(Gate::Crash);
    assert_eq!(bounded(original).await.unwrap_err().code(), tonic::Code::Unavailable);
    let error = bounded(query).await.expect_err("what it saw was lost");
    assert_eq!(error.code(), tonic::Code::Unavailable);

    store.set(Gate::Open);
    let known = bounded(knows_new_customer(&e)).await.unwrap();
    assert!(!known, "the lost registration is gone once the model is rebuilt from the log");
}

/// Another writer (a second command node on a shared log) fills the position the original was
/// decided for while it waits; the original is then refused. The duplicate must not count the
/// other writer's event as its original's: it waits for the original's own outcome and is
/// UNAVAILABLE, and the original, decided again, is recorded once.
#[tokio::test]
async fn a_duplicate_is_not_acknowledged_on_another_writers_event() {
    let (store, e) = books().await;
    let original = hold(&store, || record(&e, "tx-1")).await;
    let mut duplicate = record(&e, "tx-1");
    let other = domain::events::Event::CustomerRegistered(customer("other-node"));
    projections::testkit::append_event(&store.inner, &other).await;
    assert!(
        no_reply_yet(&mut duplicate).await,
        "no reply on the strength of another writer's event"
    );

    store.set(Gate::Open);
    let recorded = bounded(original).await.unwrap();
    assert!(matches!(recorded, UsageItem::Accepted { .. }), "decided again: {recorded:?}");
    let retry_later = bounded(duplicate).await.expect_err("its view included a refused append");
    assert_eq!(retry_later.code(), tonic::Code::Unavailable);
    assert_eq!(logged_transactions(&store).await, ["tx-1"]);
}

/// On a shared log a decision waits for this engine's appends in flight: while one is, the
/// model cannot tell its own events from another writer's. Here another writer appends as many
/// events as the start of `s9` in flight, so the log head looks as if the start had landed; a
/// usage event for `s9` decided then would land before (or without) the start.
#[tokio::test]
async fn on_a_shared_log_a_decision_waits_for_the_appends_in_flight() {
    let (store, e) =
        books_with(EngineOptions { shared_log: true, ..EngineOptions::default() }).await;
    let start = Command::StartSubscription {
        subscription_id: "s9".into(),
        customer_id: "c".into(),
        plan_code: "p".into(),
        plan_version: None,
        anchor: Anchor::Anniversary,
        start_date: None,
        billed_until: None,
    };
    let e2 = e.clone();
    let started =
        hold(&store, || tokio::spawn(async move { e2.execute(start, None, None).await })).await;
    let other = domain::events::Event::CustomerRegistered(customer("other-node"));
    projections::testkit::append_event(&store.inner, &other).await;
    let e3 = e.clone();
    let mut usage_s9 = tokio::spawn(async move {
        let u = Usage { subscription_id: "s9".into(), ..usage("tx-9") };
        e3.record_usage(vec![Ok(u)]).await
    });
    assert!(no_reply_yet(&mut usage_s9).await, "not decided while the start is in flight");

    store.set(Gate::Open);
    bounded(started).await.expect("the start, decided again after the other writer's event");
    let _ = bounded(usage_s9).await;
    let log = store.read_all(0, 1_000).await.unwrap();
    let types: Vec<(String, String)> =
        log.iter().map(|r| (r.stream.clone(), r.event_type.clone())).collect();
    let start_at = types.iter().position(|(s, _)| s == "subscription-s9");
    let usage_at = types.iter().position(|(s, _)| s == "usage-s9");
    assert!(start_at.is_some(), "{types:?}");
    assert!(usage_at.is_none_or(|u| Some(u) > start_at), "usage never before its start: {types:?}");
}
