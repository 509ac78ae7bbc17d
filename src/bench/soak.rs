//! `accrual bench soak`: the whole server (commands, projections, queries) in this process on a
//! real port and a temporary sled directory, driven for `--secs` by `--clients` concurrent
//! clients (one connection each) with a mix of commands and queries. Every `--sample-ms` it
//! prints one line per interval (ops/s, p50/p99 per kind of call, errors by code, RSS); the last
//! line is `soak secs=… ops=… ops_per_s=… p99_ms=… errors=… rss_max_mib=…`.
//!
//! Each call is bounded by [`CALL_TIMEOUT_MS`]; a call that fails counts as an error under its
//! gRPC code (and is not in the latency figures), and the run goes on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::watch;
use tonic::transport::Channel;

/// Longest one call of the soak may take before it counts as an error.
const CALL_TIMEOUT_MS: u64 = 10_000;
/// Usage events in one IngestUsage batch of the mix.
const BATCH_EVENTS: u32 = 100;
/// Customers the set-up subscriptions are spread over.
const SETUP_CUSTOMERS: u32 = 20;
/// Largest latency recorded (µs); slower calls are recorded as this.
const LATENCY_US_MAX: u64 = 60_000_000;

#[derive(Args, Clone, Debug)]
pub struct SoakArgs {
    /// Seconds to run the mix.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// Concurrent clients, each on its own connection, each one call at a time.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Milliseconds between progress lines.
    #[arg(long, default_value_t = 5_000)]
    pub sample_ms: u64,
    /// Subscriptions set up before the run (usage and queries go to them).
    #[arg(long, default_value_t = 200)]
    pub subscriptions: u32,
}

/// The kinds of call in the mix, with their share in thousandths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    UsageBatch,
    UsageUnary,
    Customer,
    Subscription,
    CurrentUsage,
    Invoices,
    Mrr,
    Billing,
}

const KINDS: [(Kind, u32); 8] = [
    (Kind::UsageBatch, 200),
    (Kind::UsageUnary, 350),
    (Kind::Customer, 30),
    (Kind::Subscription, 30),
    (Kind::CurrentUsage, 200),
    (Kind::Invoices, 90),
    (Kind::Mrr, 95),
    (Kind::Billing, 5),
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::UsageBatch => "usage_batch",
            Kind::UsageUnary => "usage_unary",
            Kind::Customer => "customer",
            Kind::Subscription => "subscription",
            Kind::CurrentUsage => "current_usage",
            Kind::Invoices => "invoices",
            Kind::Mrr => "mrr",
            Kind::Billing => "billing",
        }
    }

    fn index(self) -> usize {
        KINDS.iter().position(|(k, _)| *k == self).expect("listed")
    }

    /// A kind drawn with the mix's shares from `draw` in 0..1000.
    fn pick(draw: u32) -> Kind {
        let mut below = 0;
        for (kind, share) in KINDS {
            below += share;
            if draw < below {
                return kind;
            }
        }
        Kind::UsageUnary
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds")
}

/// Latencies per kind (since the last sample and overall) and errors by code.
struct Stats {
    interval: Mutex<Vec<Histogram<u64>>>,
    total: Mutex<Vec<Histogram<u64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn new() -> Self {
        let per_kind = || KINDS.iter().map(|_| histogram()).collect::<Vec<_>>();
        Stats {
            interval: Mutex::new(per_kind()),
            total: Mutex::new(per_kind()),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    fn record(&self, kind: Kind, took: Duration, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                let us = (took.as_micros() as u64).clamp(1, LATENCY_US_MAX);
                let i = kind.index();
                lock(&self.interval)[i].record(us).expect("clamped");
                lock(&self.total)[i].record(us).expect("clamped");
            }
            Err(code) => {
                *lock(&self.errors).entry(format!("{}:{code}", kind.name())).or_default() += 1
            }
        }
    }

    /// The interval's histograms, leaving empty ones.
    fn take_interval(&self) -> Vec<Histogram<u64>> {
        let mut interval = lock(&self.interval);
        let taken = interval.clone();
        interval.iter_mut().for_each(Histogram::reset);
        taken
    }

    fn error_count(&self) -> u64 {
        lock(&self.errors).values().sum()
    }

    fn errors(&self) -> BTreeMap<String, u64> {
        lock(&self.errors).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// `kind=n/p50/p99` for each kind with calls in `hists`.
fn per_kind(hists: &[Histogram<u64>]) -> String {
    let mut out = Vec::new();
    for ((kind, _), h) in KINDS.iter().zip(hists) {
        if h.is_empty() {
            continue;
        }
        let (p50, p99) = (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)));
        out.push(format!("{}={}/{p50:.1}/{p99:.1}", kind.name(), h.len()));
    }
    out.join(" ")
}

fn check(args: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=86_400).contains(&args.secs), "--secs must be 1 to 86400");
    anyhow::ensure!((1..=100).contains(&args.clients), "--clients must be 1 to 100");
    anyhow::ensure!(
        (100..=args.secs * 1000).contains(&args.sample_ms),
        "--sample-ms must be 100 to --secs × 1000"
    );
    anyhow::ensure!((1..=100_000).contains(&args.subscriptions), "--subscriptions: 1 to 100000");
    Ok(())
}

pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    check(&args)?;
    let dir = tempfile::tempdir()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (url, server) = start_server(dir.path(), stop_rx).await?;
    let channel = Channel::from_shared(url.clone())?.connect().await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let setup_started = Instant::now();
    setup(CommandServiceClient::new(channel), &run_id, args.subscriptions).await?;
    println!(
        "soak: {} clients for {} s on {url}; set up {} subscriptions in {:.1} s",
        args.clients,
        args.secs,
        args.subscriptions,
        setup_started.elapsed().as_secs_f64()
    );
    let stats = Arc::new(Stats::new());
    let started = Instant::now();
    let end = started + Duration::from_secs(args.secs);
    let mut clients = Vec::new();
    for n in 0..args.clients {
        let channel = Channel::from_shared(url.clone())?.connect().await?;
        let client = SoakClient::new(channel, &run_id, n, args.subscriptions, stats.clone());
        clients.push(tokio::spawn(client.run(end)));
    }
    let rss_max_mib = sample(&stats, started, end, args.sample_ms).await;
    for c in clients {
        c.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    summary(&stats, secs, rss_max_mib.max(super::proc_status_mib("self", "VmHWM:")));
    let _ = stop_tx.send(true);
    server.await??;
    Ok(())
}

/// Prints one line per interval until `end`; returns the largest RSS seen (MiB).
async fn sample(stats: &Stats, started: Instant, end: Instant, sample_ms: u64) -> f64 {
    let mut tick = tokio::time::interval(Duration::from_millis(sample_ms));
    tick.tick().await;
    let (mut rss_max_mib, mut errors_before) = (0.0f64, BTreeMap::new());
    let mut last = Instant::now();
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(end.into()) => {}
        }
        let hists = stats.take_interval();
        let ops: u64 = hists.iter().map(Histogram::len).sum();
        let errors = stats.errors();
        let new_errors = error_diff(&errors, &errors_before);
        let rss_mib = super::proc_status_mib("self", "VmRSS:");
        rss_max_mib = rss_max_mib.max(rss_mib);
        let interval_secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        println!(
            "t={:.0}s ops_per_s={:.0} errors={new_errors} rss_mib={rss_mib:.0} {}",
            started.elapsed().as_secs_f64(),
            ops as f64 / interval_secs,
            per_kind(&hists)
        );
        errors_before = errors;
    }
    rss_max_mib
}

/// `n` or `n{kind:code=k,…}`: the errors in `now` that were not in `before`.
fn error_diff(now: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> String {
    let new: Vec<String> = now
        .iter()
        .filter_map(|(key, n)| {
            let k = n - before.get(key).copied().unwrap_or(0);
            (k > 0).then(|| format!("{key}={k}"))
        })
        .collect();
    let total: u64 = now.values().sum::<u64>() - before.values().sum::<u64>();
    match new.is_empty() {
        true => total.to_string(),
        false => format!("{total}{{{}}}", new.join(",")),
    }
}

fn summary(stats: &Stats, secs: f64, rss_max_mib: f64) {
    let total = lock(&stats.total).clone();
    let mut all = histogram();
    for h in &total {
        all.add(h).expect("same bounds");
    }
    println!("per kind (calls/p50 ms/p99 ms): {}", per_kind(&total));
    let errors = lock(&stats.errors).clone();
    if !errors.is_empty() {
        println!("errors by kind:code: {errors:?}");
    }
    println!(
        "soak secs={secs:.1} ops={} ops_per_s={:.0} p99_ms={:.2} errors={} rss_max_mib={:.0}",
        all.len(),
        all.len() as f64 / secs,
        ms(all.value_at_quantile(0.99)),
        stats.error_count(),
        rss_max_mib
    );
}

/// The whole server (command, projector and query roles) with the default limits, until `stop`.
async fn start_server(
    dir: &std::path::Path,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let policy = domain::commands::Policy::default();
    let (store, engine) = crate::serve::open_engine(dir, policy).await?;
    let (models, projectors) = crate::serve::start_projections(dir, store, stop.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let handle = tokio::spawn(async move {
        let mut stop = stop;
        let shutdown = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        let query = Some(query_service::QueryApi::new(models));
        let limits = command_service::service::Limits::default();
        let server = crate::server::ServerLimits::default();
        crate::server::serve(listener, Some(engine), query, None, None, limits, server, shutdown)
            .await?;
        for p in projectors {
            p.await?;
        }
        Ok(())
    });
    Ok((url, handle))
}

/// Customers, the metric, a plan and `subscriptions` subscriptions.
async fn setup(
    mut c: CommandServiceClient<Channel>,
    run: &str,
    subscriptions: u32,
) -> anyhow::Result<()> {
    for n in 0..SETUP_CUSTOMERS {
        c.register_customer(customer(run, &format!("{n}"))).await.context("set-up customer")?;
    }
    let metric = pb::DefineMetricRequest {
        code: format!("calls-{run}"),
        name: "API calls".into(),
        aggregation: "sum".into(),
        property: "calls".into(),
        ..Default::default()
    };
    c.define_metric(metric).await?;
    let model = pb::charge::Model::Standard(pb::StandardModel { unit_price: "0.002".into() });
    let charge = pb::Charge {
        metric_code: format!("calls-{run}"),
        pay_in_advance: false,
        model: Some(model),
    };
    c.publish_plan(pb::PublishPlanRequest {
        code: format!("plan-{run}"),
        name: "Soak".into(),
        currency: "USD".into(),
        interval: "monthly".into(),
        base_fee: "49".into(),
        charges: vec![charge],
        ..Default::default()
    })
    .await?;
    for s in 0..subscriptions {
        c.start_subscription(subscription(run, &format!("{s}"), s % SETUP_CUSTOMERS)).await?;
    }
    Ok(())
}

fn customer(run: &str, suffix: &str) -> pb::RegisterCustomerRequest {
    pb::RegisterCustomerRequest {
        customer_id: format!("cust-{run}-{suffix}"),
        name: "Soak Co".into(),
        currency: "USD".into(),
        tax_rate: "10".into(),
        ..Default::default()
    }
}

fn subscription(run: &str, suffix: &str, customer: u32) -> pb::StartSubscriptionRequest {
    pb::StartSubscriptionRequest {
        subscription_id: format!("sub-{run}-{suffix}"),
        customer_id: format!("cust-{run}-{customer}"),
        plan_code: format!("plan-{run}"),
        ..Default::default()
    }
}

/// One client of the mix: its own connection, one call at a time.
struct SoakClient {
    commands: CommandServiceClient<Channel>,
    queries: QueryServiceClient<Channel>,
    run: String,
    id: u32,
    subscriptions: u32,
    sent: u64,
    rng: rand::rngs::StdRng,
    stats: Arc<Stats>,
}

impl SoakClient {
    fn new(channel: Channel, run: &str, id: u32, subscriptions: u32, stats: Arc<Stats>) -> Self {
        SoakClient {
            commands: CommandServiceClient::new(channel.clone()),
            queries: QueryServiceClient::new(channel),
            run: run.to_string(),
            id,
            subscriptions,
            sent: 0,
            rng: rand::rngs::StdRng::seed_from_u64(u64::from(id)),
            stats,
        }
    }

    async fn run(mut self, end: Instant) {
        while Instant::now() < end {
            let kind = Kind::pick(self.rng.gen_range(0..1000));
            let started = Instant::now();
            let timeout = Duration::from_millis(CALL_TIMEOUT_MS);
            let outcome = match tokio::time::timeout(timeout, self.call(kind)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(status)) => Err(format!("{:?}", status.code())),
                Err(_) => Err("ClientTimeout".to_string()),
            };
            self.stats.record(kind, started.elapsed(), outcome);
        }
    }

    fn next_id(&mut self) -> String {
        self.sent += 1;
        format!("{}-{}-{}", self.run, self.id, self.sent)
    }

    fn some_subscription(&mut self) -> String {
        format!("sub-{}-{}", self.run, self.rng.gen_range(0..self.subscriptions))
    }

    fn usage(&mut self) -> pb::UsageEvent {
        let calls = self.rng.gen_range(1..500u32).to_string();
        pb::UsageEvent {
            subscription_id: self.some_subscription(),
            transaction_id: format!("tx-{}", self.next_id()),
            metric_code: format!("calls-{}", self.run),
            occurred_at: Some(command_service::convert::to_timestamp(jiff::Timestamp::now())),
            properties: [("calls".to_string(), calls)].into(),
        }
    }

    async fn call(&mut self, kind: Kind) -> Result<(), tonic::Status> {
        match kind {
            Kind::UsageBatch => self.usage_batch().await,
            Kind::UsageUnary => {
                let event = self.usage();
                self.commands.record_usage(event).await.map(drop)
            }
            Kind::Customer => {
                let id = self.next_id();
                self.commands.register_customer(customer(&self.run, &id)).await.map(drop)
            }
            Kind::Subscription => {
                let (id, owner) = (self.next_id(), self.rng.gen_range(0..SETUP_CUSTOMERS));
                let request = subscription(&self.run, &id, owner);
                self.commands.start_subscription(request).await.map(drop)
            }
            Kind::CurrentUsage => {
                let subscription_id = self.some_subscription();
                let query = pb::CurrentUsageQuery { subscription_id, min_position: None };
                self.queries.get_current_usage(query).await.map(drop)
            }
            Kind::Invoices => self.invoices().await,
            Kind::Mrr => self.mrr().await,
            Kind::Billing => {
                let as_of = Some(command_service::convert::to_timestamp(jiff::Timestamp::now()));
                let request = pb::RunBillingRequest { as_of, ..Default::default() };
                self.commands.run_billing(request).await.map(drop)
            }
        }
    }

    async fn usage_batch(&mut self) -> Result<(), tonic::Status> {
        let events = (0..BATCH_EVENTS).map(|_| self.usage()).collect();
        let batches = tokio_stream::iter([pb::UsageBatch { events }]);
        let mut acks = self.commands.ingest_usage(batches).await?.into_inner();
        let ack = acks.message().await?;
        let accepted = ack.map(|a| a.accepted).unwrap_or_default();
        if accepted != BATCH_EVENTS {
            return Err(tonic::Status::internal(format!("{accepted} of {BATCH_EVENTS} accepted")));
        }
        while acks.message().await?.is_some() {}
        Ok(())
    }

    async fn invoices(&mut self) -> Result<(), tonic::Status> {
        let owner = self.rng.gen_range(0..SETUP_CUSTOMERS);
        let request = pb::ListInvoicesRequest {
            customer_id: format!("cust-{}-{owner}", self.run),
            page_size: 20,
            ..Default::default()
        };
        self.queries.list_invoices(request).await.map(drop)
    }

    async fn mrr(&mut self) -> Result<(), tonic::Status> {
        let date = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date().to_string();
        let request = pb::MrrRequest { currency: "USD".into(), date, ..Default::default() };
        self.queries.get_mrr(request).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_covers_every_kind_and_sums_to_a_thousand() {
        assert_eq!(KINDS.iter().map(|(_, share)| share).sum::<u32>(), 1000);
        let mut seen = std::collections::BTreeSet::new();
        for draw in 0..1000 {
            seen.insert(Kind::pick(draw).name());
        }
        assert_eq!(seen.len(), KINDS.len());
        assert_eq!(Kind::pick(0), Kind::UsageBatch);
        assert_eq!(Kind::pick(999), Kind::Billing);
    }

    #[test]
    fn interval_errors_are_the_new_ones_by_code() {
        let before = BTreeMap::from([("mrr:Unavailable".to_string(), 2)]);
        let now = BTreeMap::from([
            ("mrr:Unavailable".to_string(), 3),
            ("billing:Internal".to_string(), 1),
        ]);
        assert_eq!(error_diff(&now, &before), "2{billing:Internal=1,mrr:Unavailable=1}");
        assert_eq!(error_diff(&now, &now), "0");
    }

    #[test]
    fn bad_arguments_are_refused() {
        let ok = SoakArgs { secs: 2, clients: 2, sample_ms: 500, subscriptions: 5 };
        assert!(check(&ok).is_ok());
        assert!(check(&SoakArgs { secs: 0, ..ok.clone() }).is_err());
        assert!(check(&SoakArgs { clients: 0, ..ok.clone() }).is_err());
        assert!(check(&SoakArgs { sample_ms: 5_000, ..ok.clone() }).is_err());
        assert!(check(&SoakArgs { subscriptions: 0, ..ok }).is_err());
    }
}
