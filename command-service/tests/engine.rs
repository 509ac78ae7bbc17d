//! Engine behaviour over the in-memory store (unit level; the real server is tested in the
//! root package's end-to-end test).

use std::sync::Arc;

use command_service::engine::{
    Clock, Engine, EngineOptions, Recoveries, UsageItem, BILLING_APPEND_BYTES_MAX,
    BILLING_APPEND_EVENTS_MAX, ENVELOPE_BYTES_ESTIMATE,
};
use domain::calendar::{Anchor, Interval};
use domain::catalog::{Charge, Customer, FeeTiming, Metric, Plan};
use domain::commands::{Command, Policy};
use domain::events::{Event, Usage};
use domain::money::Currency;
use domain::rating::{Aggregation, ChargeModel};
use event_store::{EventStore, MemoryStore};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use tonic::Code;
use tonic_types::StatusExt;

fn clock(at: &'static str) -> Clock {
    Arc::new(move || at.parse().unwrap())
}

fn acme(currency: Currency) -> Customer {
    Customer {
        customer_id: "c".into(),
        name: "C".into(),
        currency,
        time_zone: "UTC".into(),
        tax_rate: dec!(0),
    }
}

async fn engine(store: Arc<dyn EventStore>, at: &'static str) -> Engine {
    Engine::open(store, Policy::default(), clock(at)).await.unwrap()
}

#[tokio::test]
async fn a_large_billing_run_is_split_into_bounded_appends_and_rebuilds_identically() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let recording = Lagging::over(store.clone(), u64::MAX);
    let e = engine(recording.clone(), "2025-01-01T12:00:00Z").await;
    let usd = Currency::parse("USD").unwrap();
    let customer = acme(usd);
    e.execute(Command::RegisterCustomer(customer), None, None).await.unwrap();
    let plan = Plan {
        code: "p".into(),
        version: 0,
        name: "P".into(),
        currency: usd,
        interval: Interval::Monthly,
        base_fee: dec!(10),
        fee_timing: FeeTiming::Arrears,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        charges: vec![],
    };
    e.execute(Command::PublishPlan(plan), None, None).await.unwrap();
    let subscriptions = 2_500u64;
    for i in 0..subscriptions {
        let start = Command::StartSubscription {
            subscription_id: format!("s{i:05}"),
            customer_id: "c".into(),
            plan_code: "p".into(),
            plan_version: None,
            anchor: Anchor::Anniversary,
            // Backdated one month: the run at the clock's time closes the first period.
            start_date: Some("2024-12-01".parse().unwrap()),
            billed_until: None,
        };
        e.execute(start, None, None).await.unwrap();
    }
    let head_before = store.head();
    let key = Some(("run-feb".to_string(), [3u8; 32]));
    let run = e.run_billing("2025-01-01T12:00:00Z".parse().unwrap(), key.clone()).await.unwrap();
    assert!(run.events.len() > BILLING_APPEND_EVENTS_MAX, "the run needs more than one append");
    let pieces: Vec<(usize, usize)> =
        recording.requests.lock().split_off(subscriptions as usize + 2);
    assert!(pieces.len() > 1, "{pieces:?}");
    assert_eq!(pieces.iter().map(|p| p.0).sum::<usize>(), run.events.len());
    for (events, bytes) in &pieces {
        let estimate = bytes + events * ENVELOPE_BYTES_ESTIMATE;
        assert!(*events <= BILLING_APPEND_EVENTS_MAX, "{pieces:?}");
        assert!(
            estimate <= BILLING_APPEND_BYTES_MAX + 16 * 1024,
            "one subscription over: {pieces:?}"
        );
    }
    assert_eq!(
        run.events.len() as u64,
        2 * subscriptions,
        "an invoice and a close per subscription"
    );
    assert_eq!(store.head(), head_before + run.events.len() as u64);
    assert_eq!(run.last_position, Some(store.head() - 1));
    let again = e.run_billing("2025-01-01T12:00:00Z".parse().unwrap(), None).await.unwrap();
    assert!(again.events.is_empty(), "billing twice for the same as_of issues nothing");

    let replay = e.run_billing("2025-01-01T12:00:00Z".parse().unwrap(), key.clone()).await;
    let replay = replay.unwrap();
    assert!(replay.duplicate);
    assert_eq!(replay.events, run.events, "a replay of the key returns every piece of the run");
    let correlations: std::collections::BTreeSet<_> = store
        .read_all(head_before, run.events.len())
        .await
        .unwrap()
        .iter()
        .map(|r| r.correlation_id)
        .collect();
    assert_eq!(correlations.len(), 1, "one correlation id for the whole run");

    let rebuilt = engine(store.clone(), "2025-02-01T12:00:00Z").await;
    let replay = rebuilt.run_billing("2025-01-01T12:00:00Z".parse().unwrap(), key).await.unwrap();
    assert_eq!(replay.events, run.events, "and so does a replay after a restart");
    let (live, fresh) =
        (e.read(|l| l.invoices.len()).await, rebuilt.read(|l| l.invoices.len()).await);
    assert_eq!((live, fresh), (subscriptions as usize, subscriptions as usize));
    let total = rebuilt
        .read(|l| l.invoices.values().map(|i| i.invoice.total).sum::<rust_decimal::Decimal>())
        .await;
    assert_eq!(total, dec!(10) * rust_decimal::Decimal::from(subscriptions));
}

#[tokio::test]
async fn idempotent_replay_and_key_reuse() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let e = engine(store.clone(), "2025-01-01T12:00:00Z").await;
    let usd = Currency::parse("USD").unwrap();
    let customer = acme(usd);
    let key = Some(("k1".to_string(), [7u8; 32]));
    let first =
        e.execute(Command::RegisterCustomer(customer.clone()), key.clone(), None).await.unwrap();
    let replay = e.execute(Command::RegisterCustomer(customer.clone()), key, None).await.unwrap();
    assert!(replay.duplicate);
    assert_eq!(replay.last_position, first.last_position);
    assert_eq!(replay.events, first.events, "the original events come back");
    assert_eq!(store.head(), 1);
    let other = e
        .execute(Command::RegisterCustomer(customer), Some(("k1".to_string(), [8u8; 32])), None)
        .await;
    assert_eq!(other.unwrap_err().code(), tonic::Code::AlreadyExists);
    let reopened = engine(store.clone(), "2025-01-02T00:00:00Z").await;
    let again = reopened
        .execute(Command::RegisterCustomer(acme(usd)), Some(("k1".to_string(), [7u8; 32])), None)
        .await
        .unwrap();
    assert!(again.duplicate, "keys survive a restart");
    assert_eq!(store.head(), 1);
}

#[tokio::test]
async fn after_close_commands_get_unavailable_with_retry_info() {
    use tonic_types::StatusExt;
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let e = engine(store.clone(), "2025-01-01T12:00:00Z").await;
    e.close().await.unwrap();
    let usd = Currency::parse("USD").unwrap();
    let customer = acme(usd);
    let status = e.execute(Command::RegisterCustomer(customer), None, None).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.get_details_retry_info().is_some(), "callers are told when to retry");
    assert_eq!(store.head(), 0, "nothing was appended");
}

/// Two command nodes on one shared log (the EventStoreDB backend over an in-memory log
/// stream): each engine folds in what the other appended before deciding, a stale expected
/// version is ABORTED and succeeds when retried, and both end with the same ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_command_nodes_on_a_shared_log_catch_up_with_each_other() {
    use event_store::esdb::{EsdbOptions, MemoryLog};
    use event_store::EsdbStore;
    let log = MemoryLog::new();
    let open = || async {
        let store = EsdbStore::open_on(Arc::new(log.clone()), EsdbOptions::new("engine-log"));
        Arc::new(store.await.unwrap()) as Arc<dyn EventStore>
    };
    let (store_a, store_b) = (open().await, open().await);
    let a = engine(store_a.clone(), "2025-01-01T12:00:00Z").await;
    let b = engine(store_b.clone(), "2025-01-01T12:00:00Z").await;
    let usd = Currency::parse("USD").unwrap();
    a.execute(Command::RegisterCustomer(acme(usd)), None, None).await.unwrap();
    wait_for(&*store_b, 1).await;
    // b never saw the registration through its own engine, yet knows the customer now.
    let again = b.execute(Command::RegisterCustomer(acme(usd)), None, None).await.unwrap();
    assert!(again.duplicate && again.last_position == Some(0), "an identical re-run is a replay");
    let other = Customer { name: "Other".into(), ..acme(usd) };
    let other = b.execute(Command::RegisterCustomer(other), None, None).await;
    assert_eq!(other.unwrap_err().code(), tonic::Code::AlreadyExists);
    let rename = |name: &str| Command::UpdateCustomer {
        customer_id: "c".into(),
        name: Some(name.into()),
        tax_rate: None,
    };
    b.execute(rename("C2"), None, None).await.unwrap();
    wait_for(&*store_a, 2).await;
    a.execute(rename("C3"), None, None).await.unwrap();
    let (na, nb) = (
        a.read(|l| l.customers["c"].customer.name.clone()).await,
        b.read(|l| l.customers["c"].customer.name.clone()).await,
    );
    assert_eq!(na, "C3");
    wait_for(&*store_b, 3).await;
    let nb_now = b.read(|l| l.customers["c"].customer.name.clone()).await;
    assert!(nb == "C2" && nb_now == "C2", "b's model folds a's event only on its next command");
    let guard = Some(("customer-c".to_string(), 1));
    let stale = b.execute(rename("C4"), None, guard).await;
    assert_eq!(stale.unwrap_err().code(), tonic::Code::Aborted, "version 2 by now");
    assert_eq!(b.read(|l| l.customers["c"].customer.name.clone()).await, "C3", "caught up");
}

async fn wait_for(store: &dyn EventStore, head: u64) {
    let mut rx = store.watch_head();
    let wait = rx.wait_for(|h| *h >= head);
    tokio::time::timeout(std::time::Duration::from_secs(10), wait).await.unwrap().unwrap();
}

/// A store whose `head()` can be held back: the engine over it does not notice another node's
/// appends before deciding, as when they land between its catch-up and its append.
struct Lagging {
    inner: Arc<dyn EventStore>,
    /// `u64::MAX`: not held back.
    held_head: std::sync::atomic::AtomicU64,
    /// (events, payload bytes) of every request enqueued.
    requests: parking_lot::Mutex<Vec<(usize, usize)>>,
}

impl Lagging {
    fn over(inner: Arc<dyn EventStore>, held_head: u64) -> Arc<Lagging> {
        let held_head = held_head.into();
        Arc::new(Lagging { inner, held_head, requests: parking_lot::Mutex::new(Vec::new()) })
    }
}

#[async_trait::async_trait]
impl EventStore for Lagging {
    async fn append(
        &self,
        req: event_store::AppendRequest,
    ) -> Result<event_store::Committed, event_store::StoreError> {
        self.inner.append(req).await
    }
    async fn enqueue(&self, req: event_store::AppendRequest) -> event_store::AppendTicket {
        let events = req.writes.iter().flat_map(|w| &w.events);
        let size = events.fold((0, 0), |(n, b), e| (n + 1, b + e.payload.len()));
        self.requests.lock().push(size);
        self.inner.enqueue(req).await
    }
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<event_store::RecordedEvent>, event_store::StoreError> {
        self.inner.read_stream(stream, from_version, max_count).await
    }
    async fn read_all(
        &self,
        from: u64,
        max_count: usize,
    ) -> Result<Vec<event_store::RecordedEvent>, event_store::StoreError> {
        self.inner.read_all(from, max_count).await
    }
    fn head(&self) -> u64 {
        self.inner.head().min(self.held_head.load(std::sync::atomic::Ordering::SeqCst))
    }
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }
    fn stream_version(&self, stream: &str) -> Option<u64> {
        self.inner.stream_version(stream)
    }
    async fn close(&self) -> Result<(), event_store::StoreError> {
        self.inner.close().await
    }
}

/// A command that loses a race with another command node (decided on a model that had not seen
/// the other node's append yet) is decided again on the caught-up model instead of reaching
/// the caller as ABORTED; with a caller's expected version it is not retried. The model
/// recovers from the whole log, or from its recovery copy when it keeps one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_lost_a_race_with_another_node_is_decided_again() {
    let recoveries = lose_races(EngineOptions::default()).await;
    assert_eq!(recoveries, Recoveries { full: 2, from_copy: 0 });
    let with_copy = EngineOptions { shared_log: true, ..EngineOptions::default() };
    let recoveries = lose_races(with_copy).await;
    assert_eq!(recoveries, Recoveries { full: 0, from_copy: 2 });
}

/// Two lost races (one retried, one with the caller's guard) on node b; b's recoveries.
async fn lose_races(options: EngineOptions) -> Recoveries {
    use event_store::esdb::{EsdbOptions, MemoryLog};
    use event_store::EsdbStore;
    let log = MemoryLog::new();
    let open = || async {
        let store = EsdbStore::open_on(Arc::new(log.clone()), EsdbOptions::new("race-log"));
        Arc::new(store.await.unwrap()) as Arc<dyn EventStore>
    };
    let (store_a, store_b) = (open().await, open().await);
    let lagging = Lagging::over(store_b.clone(), u64::MAX);
    let a = engine(store_a.clone(), "2025-01-01T12:00:00Z").await;
    let b = Engine::open_with(
        lagging.clone(),
        Policy::default(),
        clock("2025-01-01T12:00:00Z"),
        options,
    );
    let b = b.await.unwrap();
    let rename = |name: &str| Command::UpdateCustomer {
        customer_id: "c".into(),
        name: Some(name.into()),
        tax_rate: None,
    };
    let usd = Currency::parse("USD").unwrap();
    a.execute(Command::RegisterCustomer(acme(usd)), None, None).await.unwrap();
    wait_for(&*store_b, 1).await;
    b.execute(rename("B1"), None, None).await.unwrap();
    wait_for(&*store_a, 2).await;
    // b stops noticing new events; a renames meanwhile (customer-c is at version 2 now).
    lagging.held_head.store(2, std::sync::atomic::Ordering::SeqCst);
    a.execute(rename("A2"), None, None).await.unwrap();
    wait_for(&*store_b, 3).await;
    let done = b.execute(rename("B3"), None, None).await.expect("decided again after catching up");
    assert_eq!(done.last_position, Some(3));
    assert_eq!(b.read(|l| l.customers["c"].customer.name.clone()).await, "B3");
    wait_for(&*store_a, 4).await;
    let types: Vec<String> =
        store_a.read_all(0, 10).await.unwrap().iter().map(|r| r.event_type.clone()).collect();
    assert_eq!(types.len(), 4, "the lost attempt appended nothing: {types:?}");
    // The same race with the caller's expected version (3, what b's model holds): final.
    lagging.held_head.store(4, std::sync::atomic::Ordering::SeqCst);
    a.execute(rename("A4"), None, None).await.unwrap();
    wait_for(&*store_b, 5).await;
    let guarded = b.execute(rename("B5"), None, Some(("customer-c".into(), 3))).await;
    assert_eq!(guarded.unwrap_err().code(), tonic::Code::Aborted, "the caller's guard is final");
    assert_eq!(store_b.head(), 5, "and appended nothing");
    lagging.held_head.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    b.execute(rename("B5"), None, None).await.unwrap();
    assert_eq!(b.read(|l| l.customers["c"].customer.name.clone()).await, "B5");
    assert_eq!(b.stream_version("customer-c").await, Some(5), "the recovered model is exact");
    b.recoveries()
}

/// Appends `event` as the write side frames it, without deciding it: a log written before the
/// input bounds.
async fn append_undecided(store: &Arc<dyn EventStore>, event: Event) {
    projections::testkit::append_event(store, &event).await;
}

fn plan(code: &str, version: u32, base_fee: Decimal, charges: Vec<Charge>) -> Plan {
    Plan {
        code: code.into(),
        version,
        name: code.into(),
        currency: Currency::parse("USD").unwrap(),
        interval: Interval::Monthly,
        base_fee,
        fee_timing: FeeTiming::Arrears,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        charges,
    }
}

/// A pre-bounds log: a plan whose base fee is `Decimal::MAX` and a customer with a 10^20 %
/// tax rate (10^9 × 10^20 overflows). A billing run returns OK, invoices the normal subscription and issues nothing
/// for the overflowing one (the engine logs its error); usage that would issue an overflowing in-advance invoice is
/// refused with FAILED_PRECONDITION / AMOUNT_OVERFLOW and appends nothing.
#[tokio::test]
async fn an_overflowing_subscription_does_not_stop_billing_or_append_anything() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let usd = Currency::parse("USD").unwrap();
    let taxed = Customer { tax_rate: dec!(10), ..acme(usd) };
    let absurd = Customer { customer_id: "x".into(), tax_rate: dec!(1e20), ..acme(usd) };
    for customer in [taxed, absurd] {
        append_undecided(&store, Event::CustomerRegistered(customer)).await;
    }
    let metric = Metric {
        code: "calls".into(),
        name: "Calls".into(),
        aggregation: Aggregation::Count,
        property: None,
        allow_negative: false,
    };
    append_undecided(&store, Event::BillableMetricDefined(metric)).await;
    let in_advance = Charge {
        metric_code: "calls".into(),
        model: ChargeModel::Standard { unit_price: dec!(1e9) },
        pay_in_advance: true,
    };
    for p in [
        plan("legacy", 1, Decimal::MAX, vec![]),
        plan("p", 1, dec!(10), vec![]),
        plan("adv", 1, dec!(0), vec![in_advance]),
    ] {
        append_undecided(&store, Event::PlanPublished(p)).await;
    }
    let e = engine(store.clone(), "2025-01-05T00:00:00Z").await;
    for (sub, customer, plan) in [("s1", "c", "legacy"), ("s2", "c", "p"), ("s3", "x", "adv")] {
        let start = Command::StartSubscription {
            subscription_id: sub.into(),
            customer_id: customer.into(),
            plan_code: plan.into(),
            plan_version: None,
            anchor: Anchor::Anniversary,
            // Backdated one month: the run at the clock's time closes the first period.
            start_date: Some("2024-12-05".parse().unwrap()),
            billed_until: None,
        };
        e.execute(start, None, None).await.unwrap();
    }
    let head = store.head();
    let usage = Usage {
        subscription_id: "s3".into(),
        transaction_id: "t1".into(),
        metric_code: "calls".into(),
        occurred_at: e.now(),
        properties: Default::default(),
    };
    let items = e.record_usage(vec![Ok(usage)]).await.unwrap();
    let [UsageItem::Rejected(status)] = items.as_slice() else { panic!("{items:?}") };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let failure = status.get_details_precondition_failure().expect("PreconditionFailure");
    assert_eq!(failure.violations[0].r#type, "AMOUNT_OVERFLOW");
    assert_eq!(failure.violations[0].subject, "subscription-s3");
    assert_eq!(store.head(), head, "a refused usage appends nothing");

    let run = e.run_billing("2025-01-05T00:00:00Z".parse().unwrap(), None).await.unwrap();
    let invoiced: Vec<(&str, Decimal)> = run
        .events
        .iter()
        .filter_map(|ev| match ev {
            Event::InvoiceIssued(i) => Some((i.subscription_id.as_str(), i.total)),
            _ => None,
        })
        .collect();
    let want = vec![("s2", dec!(11.00)), ("s3", dec!(0))];
    assert_eq!(invoiced, want, "s1 overflows; s3 closes with nothing due (its usage was refused)");
    let s1_invoices = e.read(|l| l.subscriptions["s1"].invoice_ids.len()).await;
    assert_eq!(s1_invoices, 0);
}

/// A keyed command sent to a node whose model has not seen the same command appended by
/// another node: the store recognises the key against the log, and the answer is a replay
/// (the original events and position, `duplicate`), not the events this node decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_another_node_used_first_is_answered_as_a_replay() {
    use event_store::esdb::{EsdbOptions, MemoryLog};
    use event_store::EsdbStore;
    let log = MemoryLog::new();
    let open = || async {
        let store = EsdbStore::open_on(Arc::new(log.clone()), EsdbOptions::new("key-log"));
        Arc::new(store.await.unwrap()) as Arc<dyn EventStore>
    };
    let (store_a, store_b) = (open().await, open().await);
    let lagging = Lagging::over(store_b.clone(), 0);
    let a = engine(store_a.clone(), "2025-01-01T12:00:00Z").await;
    let b = engine(lagging.clone(), "2025-01-01T12:00:00Z").await;
    let usd = Currency::parse("USD").unwrap();
    let key = || Some(("register-c".to_string(), [5u8; 32]));
    let first = a.execute(Command::RegisterCustomer(acme(usd)), key(), None).await.unwrap();
    wait_for(&*store_b, 1).await;
    let again = b.execute(Command::RegisterCustomer(acme(usd)), key(), None).await.unwrap();
    assert!(again.duplicate, "answered as a replay");
    assert_eq!((again.last_position, &again.events), (first.last_position, &first.events));
    assert_eq!(store_b.head(), 1, "nothing appended twice");
}

/// Two command nodes, one rule that spans streams: node a cancels `s1` (stream
/// `subscription-s1`) while node b, whose model has not seen that yet, records usage for `s1`
/// (stream `usage-s1`). Stream versions alone would let b's usage land after the cancellation;
/// the append's expected position refuses it, and b decides again on the caught-up model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_on_a_model_another_node_changed_never_lands() {
    use event_store::esdb::{EsdbOptions, MemoryLog};
    use event_store::EsdbStore;
    use tonic_types::StatusExt;
    let log = MemoryLog::new();
    let open = || async {
        let store = EsdbStore::open_on(Arc::new(log.clone()), EsdbOptions::new("span-log"));
        Arc::new(store.await.unwrap()) as Arc<dyn EventStore>
    };
    let (store_a, store_b) = (open().await, open().await);
    let a = engine(store_a.clone(), "2025-01-01T00:00:00Z").await;
    let usd = Currency::parse("USD").unwrap();
    a.execute(Command::RegisterCustomer(acme(usd)), None, None).await.unwrap();
    let metric = Metric {
        code: "calls".into(),
        name: "Calls".into(),
        aggregation: Aggregation::Count,
        property: None,
        allow_negative: false,
    };
    a.execute(Command::DefineMetric(metric), None, None).await.unwrap();
    let per_call = Charge {
        metric_code: "calls".into(),
        model: ChargeModel::Standard { unit_price: dec!(1) },
        pay_in_advance: false,
    };
    a.execute(Command::PublishPlan(plan("p", 0, dec!(10), vec![per_call])), None, None)
        .await
        .unwrap();
    let start = Command::StartSubscription {
        subscription_id: "s1".into(),
        customer_id: "c".into(),
        plan_code: "p".into(),
        plan_version: None,
        anchor: Anchor::Anniversary,
        start_date: None,
        billed_until: None,
    };
    a.execute(start, None, None).await.unwrap();
    wait_for(&*store_b, 4).await;
    let lagging = Lagging::over(store_b.clone(), u64::MAX);
    let b = engine(lagging.clone(), "2025-01-15T00:00:00Z").await;
    let usage = |tx: &str| Usage {
        subscription_id: "s1".into(),
        transaction_id: tx.into(),
        metric_code: "calls".into(),
        occurred_at: "2025-01-14T00:00:00Z".parse().unwrap(),
        properties: Default::default(),
    };
    let first = b.record_usage(vec![Ok(usage("u0"))]).await.unwrap();
    assert!(matches!(first[0], UsageItem::Accepted { .. }), "{first:?}");
    let head = store_b.head();
    lagging.held_head.store(head, std::sync::atomic::Ordering::SeqCst);
    wait_for(&*store_a, head).await;
    let a_later = engine(store_a.clone(), "2025-01-12T00:00:00Z").await;
    let cancel = Command::CancelSubscription {
        subscription_id: "s1".into(),
        immediately: true,
        effective_date: None,
    };
    a_later.execute(cancel, None, None).await.unwrap();
    wait_for(&*store_b, head + 1).await;
    let late = b.record_usage(vec![Ok(usage("u1"))]).await.unwrap();
    let [UsageItem::Rejected(status)] = late.as_slice() else { panic!("{late:?}") };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.get_details_precondition_failure().is_some());
    let types: Vec<String> =
        store_b.read_all(0, 100).await.unwrap().iter().map(|r| r.event_type.clone()).collect();
    let usages = types.iter().filter(|t| t.as_str() == "UsageRecorded").count();
    assert_eq!(usages, 1, "only the usage before the cancellation: {types:?}");
    assert_eq!(b.recoveries().full, 1, "b lost one race and decided again");
}
