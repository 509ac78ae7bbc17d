//! Crash safety (issue #5): the real `accrual serve` on one data dir, killed with SIGKILL at
//! seeded random moments (some while it starts and recovers) while concurrent clients ingest
//! usage (unary, client-streamed and bidi batches, over several subscriptions) and register
//! customers with idempotency keys, and restarted each time. Some requests are hedged: sent
//! twice at once, as a client that retries before its first attempt answered, so a duplicate
//! can meet its original still in flight. Every client records what was acknowledged and what
//! was in flight when the server died; after each restart it first retries the latter (same
//! transaction ids, same idempotency keys), then goes on. At the end, with the server stopped:
//! - the log (read raw with [`LogScan`]) holds every acknowledged usage event and customer
//!   exactly once, and nothing else (every retry was acknowledged too);
//! - the projections, caught up with the log, equal a fresh rebuild (`accrual replay verify`);
//! - the hash chain verifies (`accrual audit verify`).
//!
//! Seed: `ACCRUAL_CRASH_SEED` (default [`SEED_DEFAULT`]); the seed is printed, and a failure
//! reproduces with the same seed (up to scheduling).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_store::LogScan;
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use common::{free_port, register_acme_and_api_calls, tier, Server};

type Client = CommandServiceClient<Channel>;

const SEED_DEFAULT: u64 = 20_261_122;
/// SIGKILLs in one run; every `STARTUP_KILL_EVERY`-th one hits the server while it starts
/// (recovering its write model, projections catching up) instead of while clients ingest.
const KILLS: u32 = 24;
const STARTUP_KILL_EVERY: u32 = 6;
/// A kill lands this long after the clients start (or after the spawn, for a startup kill).
const KILL_AFTER_MS_MIN: u64 = 150;
const KILL_AFTER_MS_MAX: u64 = 1_500;
const STARTUP_KILL_AFTER_MS_MAX: u64 = 400;
const USAGE_CLIENTS: u8 = 4;
/// This usage client sends every event hedged ([`Mode::Hedged`]); the others pick a mode at
/// random for each step.
const HEDGING_CLIENT: u8 = 3;
const SUBSCRIPTIONS: u8 = 4;
/// Usage events one client sends per step (one RPC, or one unary call after another).
const STEP_EVENTS_MAX: usize = 24;
/// Events per `IngestUsage` batch.
const INGEST_BATCH_EVENTS_MAX: usize = 8;
const RPC_TIMEOUT_MS: u64 = 10_000;
const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// How long the clients may take to notice a kill and stop.
const CLIENTS_STOP_MS_MAX: u64 = 30_000;
/// How long the projections may take to catch up with the log at the end.
const CATCH_UP_SECS_MAX: u64 = 60;
/// How long `accrual replay verify` or `accrual audit verify` may take.
const VERIFY_SECS_MAX: u64 = 120;
/// The whole run, kills and checks (a debug build on two busy cores takes well under this).
const RUN_SECS_MAX: u64 = 300;

fn seed() -> u64 {
    match std::env::var("ACCRUAL_CRASH_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("ACCRUAL_CRASH_SEED={s:?}: a u64")),
        Err(_) => SEED_DEFAULT,
    }
}

/// What one client sent: keyed by item id (`<subscription>/<transaction>` or an idempotency
/// key).
struct Book<T> {
    /// Acknowledged (accepted, or a duplicate of an earlier durable send).
    acked: BTreeSet<String>,
    /// Sent (or about to be) when the server died: retried first after the restart.
    unacked: Vec<(String, T)>,
    /// Ids acknowledged by a retry.
    retried: BTreeSet<String>,
    /// Ids acknowledged as a duplicate (of a retried or hedged attempt that reached the disk
    /// first).
    duplicates: BTreeSet<String>,
    /// Sequence number of the client's next new item.
    next: u32,
}

impl<T> Default for Book<T> {
    fn default() -> Self {
        Book {
            acked: BTreeSet::new(),
            unacked: Vec::new(),
            retried: BTreeSet::new(),
            duplicates: BTreeSet::new(),
            next: 0,
        }
    }
}

/// Whether an item was a retry after a restart, and whether it was sent twice at once.
#[derive(Clone, Copy)]
struct Attempt {
    retry: bool,
    hedged: bool,
}

impl<T> Book<T> {
    /// Books an acknowledgment: once per id; a duplicate only for a retried or hedged item.
    fn ack(&mut self, id: &str, duplicate: bool, attempt: Attempt) -> Outcome {
        if duplicate && !(attempt.retry || attempt.hedged) {
            return Err(format!("{id}: its first and only attempt came back a duplicate"));
        }
        if !self.acked.insert(id.to_string()) {
            return Err(format!("{id} acknowledged twice"));
        }
        if duplicate {
            self.duplicates.insert(id.to_string());
        }
        if attempt.retry {
            self.retried.insert(id.to_string());
        }
        Ok(())
    }
}

type Shared<T> = Arc<Mutex<Book<T>>>;

/// Why a client stopped: the server was killed (expected), or a real failure.
type Outcome = Result<(), String>;

/// An RPC error: expected once the server is killed, a failure before. Codes the server itself
/// gives for a bad or conflicting command are failures either way.
fn judge(status: &tonic::Status, killed: &AtomicBool, what: &str) -> Outcome {
    let business = matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::Aborted
            | Code::DataLoss
            | Code::ResourceExhausted
    );
    if killed.load(Ordering::SeqCst) && !business {
        return Ok(());
    }
    Err(format!("{what}: {status:?}"))
}

/// The instant every usage event carries, fixed once so a retry is byte-for-byte the original.
fn usage_time() -> prost_types::Timestamp {
    static AT: std::sync::OnceLock<prost_types::Timestamp> = std::sync::OnceLock::new();
    *AT.get_or_init(|| {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: 0 }
    })
}

fn subscription(i: u8) -> String {
    format!("sub-crash-{i}")
}

fn usage_event(client: u8, n: u32, rng: &mut StdRng) -> (String, pb::UsageEvent) {
    let sub = subscription(rng.gen_range(0..SUBSCRIPTIONS));
    let tx = format!("c{client}-tx-{n}");
    let calls = rng.gen_range(1_u32..=100).to_string();
    let event = pb::UsageEvent {
        subscription_id: sub.clone(),
        transaction_id: tx.clone(),
        metric_code: "api_calls".into(),
        occurred_at: Some(usage_time()),
        properties: [("calls".to_string(), calls)].into(),
    };
    (format!("{sub}/{tx}"), event)
}

/// How a usage client sends one step's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Unary,
    Stream,
    Ingest,
    /// Each event as two concurrent unary calls (a client that retries before the first
    /// attempt has answered): the first reply acknowledges it, whichever it is.
    Hedged,
}

/// The replies a step got (in order, one per acknowledged item), and the RPC error that ended
/// it early, if any: items past the replies are unacknowledged.
struct Sent {
    results: Vec<pb::UsageResult>,
    error: Option<tonic::Status>,
}

async fn send_unary(c: &mut Client, events: &[pb::UsageEvent]) -> Sent {
    let mut results = Vec::with_capacity(events.len());
    for e in events {
        match c.record_usage(e.clone()).await {
            Ok(r) => results.push(r.into_inner()),
            Err(status) => return Sent { results, error: Some(status) },
        }
    }
    Sent { results, error: None }
}

async fn send_stream(c: &mut Client, events: &[pb::UsageEvent]) -> Sent {
    match c.stream_usage(tokio_stream::iter(events.to_vec())).await {
        Ok(r) => Sent { results: r.into_inner().results, error: None },
        Err(status) => Sent { results: Vec::new(), error: Some(status) },
    }
}

async fn send_ingest(c: &mut Client, events: &[pb::UsageEvent]) -> Sent {
    let batches: Vec<pb::UsageBatch> = events
        .chunks(INGEST_BATCH_EVENTS_MAX)
        .map(|chunk| pb::UsageBatch { events: chunk.to_vec() })
        .collect();
    let mut sent = Sent { results: Vec::new(), error: None };
    let mut replies = match c.ingest_usage(tokio_stream::iter(batches)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Sent { error: Some(status), ..sent },
    };
    loop {
        match replies.message().await {
            Ok(Some(reply)) => sent.results.extend(reply.results),
            Ok(None) => return sent,
            Err(status) => return Sent { error: Some(status), ..sent },
        }
    }
}

/// Both attempts of each event; an event is acknowledged when either attempt is. The other
/// attempt's error (a kill, or a real failure) ends the step after booking the event.
async fn send_hedged(c: &mut Client, events: &[pb::UsageEvent]) -> Sent {
    let mut results = Vec::with_capacity(events.len());
    for e in events {
        let mut twin = c.clone();
        let (a, b) = tokio::join!(c.record_usage(e.clone()), twin.record_usage(e.clone()));
        match (a, b) {
            (Ok(a), Ok(_)) => results.push(a.into_inner()),
            (Ok(ok), Err(status)) | (Err(status), Ok(ok)) => {
                results.push(ok.into_inner());
                return Sent { results, error: Some(status) };
            }
            (Err(status), Err(_)) => return Sent { results, error: Some(status) },
        }
    }
    Sent { results, error: None }
}

async fn send(c: &mut Client, mode: Mode, events: &[pb::UsageEvent]) -> Sent {
    match mode {
        Mode::Unary => send_unary(c, events).await,
        Mode::Stream => send_stream(c, events).await,
        Mode::Ingest => send_ingest(c, events).await,
        Mode::Hedged => send_hedged(c, events).await,
    }
}

/// Books one step's replies: a new item must be accepted, a retried or hedged one accepted or
/// a duplicate (of the attempt that reached the disk first). Items without a reply go back to
/// `unacked`.
fn settle_usage(
    book: &mut Book<pb::UsageEvent>,
    items: Vec<(String, pb::UsageEvent)>,
    sent: &Sent,
    attempt: Attempt,
) -> Outcome {
    if sent.results.len() > items.len() {
        return Err(format!("{} replies for {} items", sent.results.len(), items.len()));
    }
    let mut items = items.into_iter();
    for (result, (id, _)) in sent.results.iter().zip(items.by_ref()) {
        if result.status != "accepted" && result.status != "duplicate" {
            return Err(format!("{id}: {result:?}"));
        }
        book.ack(&id, result.status == "duplicate", attempt)?;
    }
    book.unacked.extend(items);
    Ok(())
}

/// The next step: every unacknowledged item (a retry), else new items.
fn next_usage_step(
    book: &mut Book<pb::UsageEvent>,
    client: u8,
    rng: &mut StdRng,
) -> (Vec<(String, pb::UsageEvent)>, bool) {
    if !book.unacked.is_empty() {
        return (std::mem::take(&mut book.unacked), true);
    }
    let count = rng.gen_range(1..=STEP_EVENTS_MAX);
    let items = (0..count)
        .map(|_| {
            book.next += 1;
            usage_event(client, book.next, rng)
        })
        .collect();
    (items, false)
}

/// One usage client for one server life: steps until an RPC fails (or, with `drain`, until
/// nothing is unacknowledged).
async fn usage_client(
    mut c: Client,
    client: u8,
    book: Shared<pb::UsageEvent>,
    mut rng: StdRng,
    killed: Arc<AtomicBool>,
    drain: bool,
) -> Outcome {
    loop {
        let (items, retry) = {
            let mut book = book.lock().unwrap();
            if drain && book.unacked.is_empty() {
                return Ok(());
            }
            next_usage_step(&mut book, client, &mut rng)
        };
        let modes = [Mode::Unary, Mode::Stream, Mode::Ingest, Mode::Hedged];
        let mode = if client == HEDGING_CLIENT { Mode::Hedged } else { modes[rng.gen_range(0..4)] };
        let events: Vec<pb::UsageEvent> = items.iter().map(|(_, e)| e.clone()).collect();
        let sent = send(&mut c, mode, &events).await;
        let attempt = Attempt { retry, hedged: mode == Mode::Hedged };
        settle_usage(&mut book.lock().unwrap(), items, &sent, attempt)?;
        if let Some(status) = sent.error {
            return judge(&status, &killed, &format!("usage client {client} {mode:?}"));
        }
    }
}

fn customer(n: u32) -> (String, pb::RegisterCustomerRequest) {
    let key = format!("crash-cust-{n}");
    let request = pb::RegisterCustomerRequest {
        idempotency_key: key.clone(),
        customer_id: format!("crash-c{n}"),
        name: format!("Crash customer {n}"),
        currency: "USD".into(),
        time_zone: "UTC".into(),
        tax_rate: "20".into(),
    };
    (key, request)
}

/// One RegisterCustomer, or two concurrent attempts of it (`hedged`, see [`Mode::Hedged`]):
/// the ack of an attempt that succeeded, and the error of one that failed.
async fn register(
    c: &mut Client,
    request: &pb::RegisterCustomerRequest,
    hedged: bool,
) -> (Option<pb::CommandAck>, Option<tonic::Status>) {
    if !hedged {
        return match c.register_customer(request.clone()).await {
            Ok(reply) => (Some(reply.into_inner()), None),
            Err(status) => (None, Some(status)),
        };
    }
    let mut twin = c.clone();
    let (a, b) =
        tokio::join!(c.register_customer(request.clone()), twin.register_customer(request.clone()));
    match (a, b) {
        (Ok(a), Ok(_)) => (Some(a.into_inner()), None),
        (Ok(ok), Err(status)) | (Err(status), Ok(ok)) => (Some(ok.into_inner()), Some(status)),
        (Err(status), Err(_)) => (None, Some(status)),
    }
}

/// The command client for one server life: registers customers one at a time, each with its
/// idempotency key (every other one hedged), retrying the unacknowledged one first.
async fn command_client(
    mut c: Client,
    book: Shared<pb::RegisterCustomerRequest>,
    mut rng: StdRng,
    killed: Arc<AtomicBool>,
    drain: bool,
) -> Outcome {
    loop {
        let ((key, request), retry) = {
            let mut book = book.lock().unwrap();
            match book.unacked.pop() {
                Some(item) => (item, true),
                None if drain => return Ok(()),
                None => {
                    book.next += 1;
                    (customer(book.next), false)
                }
            }
        };
        let hedged = rng.gen_bool(0.5);
        let (ack, error) = register(&mut c, &request, hedged).await;
        match ack {
            Some(ack) => {
                book.lock().unwrap().ack(&key, ack.duplicate, Attempt { retry, hedged })?
            }
            None => book.lock().unwrap().unacked.push((key, request)),
        }
        if let Some(status) = error {
            return judge(&status, &killed, "command client");
        }
    }
}

/// Every client's book, kept across server lives.
struct Clients {
    usage: Vec<Shared<pb::UsageEvent>>,
    commands: Shared<pb::RegisterCustomerRequest>,
}

/// A command client with bounded connect and RPC times.
async fn connect(port: u16) -> Client {
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .timeout(Duration::from_millis(RPC_TIMEOUT_MS));
    CommandServiceClient::new(endpoint.connect().await.expect("connect to a SERVING server"))
}

/// Starts every client on the server at `port`; returns their tasks.
async fn start_clients(
    clients: &Clients,
    port: u16,
    rng: &mut StdRng,
    killed: &Arc<AtomicBool>,
    drain: bool,
) -> Vec<tokio::task::JoinHandle<Outcome>> {
    let mut tasks = Vec::new();
    for (i, book) in clients.usage.iter().enumerate() {
        let client_rng = StdRng::seed_from_u64(rng.gen());
        let task = usage_client(
            connect(port).await,
            i as u8,
            book.clone(),
            client_rng,
            killed.clone(),
            drain,
        );
        tasks.push(tokio::spawn(task));
    }
    let commands_rng = StdRng::seed_from_u64(rng.gen());
    let commands = command_client(
        connect(port).await,
        clients.commands.clone(),
        commands_rng,
        killed.clone(),
        drain,
    );
    tasks.push(tokio::spawn(commands));
    tasks
}

/// Waits (bounded) for every client task and fails on the first real failure.
async fn join_clients(tasks: Vec<tokio::task::JoinHandle<Outcome>>) {
    let deadline = Duration::from_millis(CLIENTS_STOP_MS_MAX);
    for task in tasks {
        let joined = tokio::time::timeout(deadline, task).await.expect("a client stops in time");
        if let Err(failure) = joined.expect("a client task does not panic") {
            panic!("client failure: {failure}");
        }
    }
}

/// Restarts the server and kills it with SIGKILL, either while it starts or while the clients
/// (first retrying what they had in flight) ingest.
async fn crash_once(data: &Path, clients: &Clients, rng: &mut StdRng, kill: u32) {
    let port = free_port();
    let server = Server::start(data, port);
    if kill % STARTUP_KILL_EVERY == STARTUP_KILL_EVERY - 1 {
        let after_ms = rng.gen_range(0..=STARTUP_KILL_AFTER_MS_MAX);
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        return server.kill9();
    }
    server.serving("accrual.v1.CommandService").await;
    let killed = Arc::new(AtomicBool::new(false));
    let tasks = start_clients(clients, port, rng, &killed, false).await;
    let after_ms = rng.gen_range(KILL_AFTER_MS_MIN..=KILL_AFTER_MS_MAX);
    tokio::time::sleep(Duration::from_millis(after_ms)).await;
    killed.store(true, Ordering::SeqCst);
    server.kill9();
    join_clients(tasks).await;
}

/// The first life: the books every client writes to (customer, metric, plan, subscriptions).
async fn setup(data: &Path) {
    let port = free_port();
    let server = Server::start(data, port);
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    let graduated = pb::TieredModel { tiers: vec![tier("1000", "0.01"), tier("", "0.005")] };
    let plan = pb::PublishPlanRequest {
        idempotency_key: "plan-crash".into(),
        code: "crash".into(),
        name: "Crash".into(),
        currency: "USD".into(),
        interval: "monthly".into(),
        base_fee: "9.99".into(),
        base_fee_in_advance: true,
        charges: vec![pb::Charge {
            metric_code: "api_calls".into(),
            pay_in_advance: false,
            model: Some(pb::charge::Model::Graduated(graduated)),
        }],
        ..Default::default()
    };
    c.publish_plan(plan).await.unwrap();
    for i in 0..SUBSCRIPTIONS {
        let start = pb::StartSubscriptionRequest {
            idempotency_key: format!("start-{}", subscription(i)),
            subscription_id: subscription(i),
            customer_id: "acme".into(),
            plan_code: "crash".into(),
            ..Default::default()
        };
        c.start_subscription(start).await.unwrap();
    }
    server.kill9();
}

/// The last life: the clients retry what is still unacknowledged, then one more command marks
/// the head; every read model catches up to it; a graceful stop.
async fn drain(data: &Path, clients: &Clients, rng: &mut StdRng) {
    let port = free_port();
    let server = Server::start(data, port);
    server.serving("accrual.v1.CommandService").await;
    let killed = Arc::new(AtomicBool::new(false));
    join_clients(start_clients(clients, port, rng, &killed, true).await).await;
    let mut c = connect(port).await;
    let (key, last) = customer(u32::MAX);
    let ack = c.register_customer(last).await.expect("the last command").into_inner();
    let attempt = Attempt { retry: false, hedged: false };
    clients.commands.lock().unwrap().ack(&key, ack.duplicate, attempt).unwrap();
    caught_up(&server, ack.position).await;
    assert!(server.terminate().await.success(), "a graceful stop");
}

/// Whether the invoices, MRR and journal read models include the event at `position` (each
/// query waits up to the query service's own 10 s): `Err` on DEADLINE_EXCEEDED.
async fn read_models_include(
    q: &mut QueryServiceClient<Channel>,
    position: u64,
) -> Result<(), tonic::Status> {
    let seen = Some(position);
    let invoices = pb::ListInvoicesRequest { min_position: seen, ..Default::default() };
    q.list_invoices(invoices).await?;
    let mrr = pb::MrrRequest {
        currency: "USD".into(),
        date: "2099-01-01".into(),
        min_position: seen,
        ..Default::default()
    };
    q.get_mrr(mrr).await?;
    let journal =
        pb::AsOfRequest { as_recorded_at: None, as_of: "2100-01-01".into(), min_position: seen };
    q.get_trial_balance(journal).await?;
    Ok(())
}

/// Waits (bounded by [`CATCH_UP_SECS_MAX`]) until every read model includes `position`.
async fn caught_up(server: &Server, position: u64) {
    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let deadline = Instant::now() + Duration::from_secs(CATCH_UP_SECS_MAX);
    loop {
        match read_models_include(&mut q, position).await {
            Ok(()) => return,
            Err(s) if s.code() == Code::DeadlineExceeded && Instant::now() < deadline => {}
            Err(s) => panic!("the read models did not catch up with {position}: {s:?}"),
        }
    }
}

/// How often each usage id (`<subscription>/<transaction>`) and each idempotency key of a
/// `CustomerRegistered` occurs in the log, and how many events it holds (positions checked
/// contiguous from 0).
struct LogCounts {
    usage: BTreeMap<String, u32>,
    customer_keys: BTreeMap<String, u32>,
    events: u64,
}

fn count_log(data: &Path) -> LogCounts {
    let scan = LogScan::open(data.join("log")).expect("open the stopped server's log");
    let mut counts =
        LogCounts { usage: BTreeMap::new(), customer_keys: BTreeMap::new(), events: 0 };
    for event in scan.events() {
        let event = event.expect("every chunk decodes");
        assert_eq!(event.position, counts.events, "positions are contiguous");
        counts.events += 1;
        let decoded =
            domain::events::Event::decode(&event.event_type, event.schema_version, &event.payload)
                .expect("every payload decodes");
        match decoded {
            domain::events::Event::UsageRecorded(u) => {
                let id = format!("{}/{}", u.subscription_id, u.transaction_id);
                *counts.usage.entry(id).or_default() += 1;
            }
            domain::events::Event::CustomerRegistered(_) => {
                let key = event.idempotency_key.clone().unwrap_or_default();
                *counts.customer_keys.entry(key).or_default() += 1;
            }
            _ => {}
        }
    }
    counts
}

/// Every acknowledged id is in the log exactly once, and the log holds no other id (of the
/// clients' kind).
fn assert_exactly_once<T>(what: &str, book: &Book<T>, counts: &BTreeMap<String, u32>) {
    assert!(book.unacked.is_empty(), "{what}: every retry was acknowledged");
    let lost: Vec<&String> = book.acked.iter().filter(|id| !counts.contains_key(*id)).collect();
    let lost_duplicates = lost.iter().filter(|id| book.duplicates.contains(**id)).count();
    assert!(
        lost.is_empty(),
        "{what}: {} acknowledged ids are not in the log ({lost_duplicates} of them were \
         acknowledged as duplicates), e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let twice: Vec<(&String, &u32)> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "{what}: ids in the log more than once: {twice:?}");
    let unknown: Vec<&String> = counts.keys().filter(|id| !book.acked.contains(*id)).collect();
    assert!(unknown.is_empty(), "{what}: ids in the log never acknowledged: {unknown:?}");
    assert!(book.retried.is_subset(&book.acked));
}

/// Runs `accrual ARGS` to its end, killed if it outlasts [`VERIFY_SECS_MAX`]. Its output is a
/// few lines, so the pipes are read after it exits.
fn accrual(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run accrual");
    let deadline = Instant::now() + Duration::from_secs(VERIFY_SECS_MAX);
    while child.try_wait().expect("poll accrual").is_none() {
        if Instant::now() > deadline {
            child.kill().expect("kill accrual");
            panic!("accrual {args:?} took more than {VERIFY_SECS_MAX} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("accrual's output")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `accrual replay verify` passes, with every read model at the log's head.
fn assert_projections_rebuild_equal(data: &str, head: u64) {
    let out = accrual(&["replay", "verify", "--data-dir", data]);
    let report = stdout(&out);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    let equal: Vec<&str> = report.lines().filter(|l| l.contains(" equal ")).collect();
    assert_eq!(equal.len(), 3, "invoices, mrr and journal: {report}");
    for line in equal {
        assert!(line.contains(&format!(" position={head} ")), "caught up to {head}: {line}");
    }
}

fn assert_chain_verifies(data: &str, head: u64) {
    let out = accrual(&["audit", "verify", "--data-dir", data]);
    let report = stdout(&out);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains(&format!("chain ok events={head} ")), "{report}");
}

/// Every client's acknowledged ids are in the log exactly once, and nothing else is; returns
/// how many ids were acknowledged, how many by a retry, and how many of those retries found
/// their original already durable (a kill between the fsync and the reply).
fn assert_books_in_log(clients: &Clients, counts: &LogCounts) -> (usize, usize, usize) {
    let mut usage = Book::<()>::default();
    for book in &clients.usage {
        let book = book.lock().unwrap();
        assert!(book.unacked.is_empty(), "every usage retry was acknowledged");
        usage.acked.extend(book.acked.iter().cloned());
        usage.retried.extend(book.retried.iter().cloned());
        usage.duplicates.extend(book.duplicates.iter().cloned());
    }
    assert_exactly_once("usage", &usage, &counts.usage);
    let commands = clients.commands.lock().unwrap();
    let mut keyed = counts.customer_keys.clone();
    assert_eq!(keyed.remove("cust-acme"), Some(1), "the setup's customer");
    assert_exactly_once("customer", &commands, &keyed);
    (
        usage.acked.len() + commands.acked.len(),
        usage.retried.len() + commands.retried.len(),
        retried_durable(&usage) + retried_durable(&commands),
    )
}

/// Retries that came back duplicates: their first attempt had reached the disk.
fn retried_durable<T>(book: &Book<T>) -> usize {
    book.retried.intersection(&book.duplicates).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_exactly_once() {
    let seed = seed();
    println!("crash seed={seed} (set ACCRUAL_CRASH_SEED to change it)");
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    setup(&data).await;
    let clients = Clients {
        usage: (0..USAGE_CLIENTS).map(|_| Shared::default()).collect(),
        commands: Shared::default(),
    };
    for kill in 0..KILLS {
        crash_once(&data, &clients, &mut rng, kill).await;
        assert!(started.elapsed().as_secs() < RUN_SECS_MAX, "kill {kill}: out of time");
    }
    drain(&data, &clients, &mut rng).await;

    let counts = count_log(&data);
    let (acked, retried, retried_durable) = assert_books_in_log(&clients, &counts);
    let data_arg = data.to_str().expect("utf-8 temp path");
    assert_projections_rebuild_equal(data_arg, counts.events);
    assert_chain_verifies(data_arg, counts.events);
    println!(
        "crash seed={seed} kills={KILLS} acknowledged={acked} retried={retried} \
         retried_already_durable={retried_durable} events={} secs={:.1}",
        counts.events,
        started.elapsed().as_secs_f64()
    );
    assert!(retried > 0, "some kills caught writes in flight");
    assert!(started.elapsed().as_secs() < RUN_SECS_MAX, "bounded run");
}
