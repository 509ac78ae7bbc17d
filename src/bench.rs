//! `accrual bench ingest`: streams realistic usage over gRPC with every ack durable and prints
//! `ingest events=N secs=S events_per_s=X p50_ms=A p99_ms=B` as its last line.
//!
//! `accrual bench replay`: writes a usage-heavy log the same way, then times only the rebuild
//! of every read model from it and prints `replay events=N secs=S events_per_s=X` last.
//!
//! `accrual bench soak`: a bounded run of mixed commands and queries against the whole server
//! (see [`soak`]); prints throughput, p50/p99 per kind of call, errors and RSS over time.

mod anomalies;
mod cluster;
mod dashboard;
mod feed;
mod migration;
mod past_books;
mod scale;
mod soak;
mod webhooks;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Usage ingestion throughput and per-batch (or per-call) durable-ack latency.
    Ingest(IngestArgs),
    /// Rebuild throughput of all read models (invoices, MRR, journal) from a usage-heavy log.
    Replay(ReplayArgs),
    /// A bounded soak: mixed commands and queries by concurrent clients for --secs, with
    /// throughput, latency, errors and RSS printed over time.
    Soak(soak::SoakArgs),
    /// How memory, projection lag, disk and restart time grow with history: a full server
    /// (child process, every role) fed millions of usage events, measured at checkpoints.
    Scale(scale::ScaleArgs),
    /// The event feed at full ingest: feed events/s to one subscriber beside ingest events/s,
    /// and the server's RSS while a subscriber reads nothing (issue 14).
    Feed(feed::FeedArgs),
    /// Webhook deliveries per second to a fast local receiver (issue 14).
    Webhooks(webhooks::WebhooksArgs),
    /// Precision and recall of the invoice anomaly flags on a seeded company with injected
    /// spikes, months without usage and wrong plans (issue 15).
    Anomalies(anomalies::AnomaliesArgs),
    /// Dashboard page load times on the demo's data (issue 15: < 200 ms).
    Dashboard(dashboard::DashboardArgs),
    /// A generated company's history imported (`accrual import`) and sent call by call into
    /// two servers: throughput of each, and whether the books are equal (issue 16; unequal
    /// books exit 1).
    Migration(migration::MigrationArgs),
    /// Bitemporal queries (`as_recorded_at`) on a generated history: a new recorded time from
    /// the whole log prefix, from the kept books before it, a kept one, and the live books.
    PastBooks(past_books::PastBooksArgs),
    /// Accrual on a real 3-node NATS JetStream cluster: ingest against sled, projection lag,
    /// and a seeded schedule of node faults with the books checked after each (issue 17;
    /// a broken check exits 1).
    Cluster(cluster::ClusterArgs),
}

#[derive(Args, Clone)]
pub struct ReplayArgs {
    /// Usage events to write before the timed rebuild.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Subscriptions the events are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub subscriptions: u64,
}

#[derive(Args, Clone)]
pub struct IngestArgs {
    /// Usage events to send in all.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Events per IngestUsage batch.
    #[arg(long, default_value_t = 1_000)]
    pub batch: u64,
    /// Concurrent clients (each its own connection for streaming; shared connections for --unary).
    #[arg(long, default_value_t = 4)]
    pub clients: u64,
    /// Send one event per RecordUsage call instead of streaming batches.
    #[arg(long)]
    pub unary: bool,
    /// Subscriptions the events are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub subscriptions: u64,
    /// Use a running server at this URL (e.g. http://127.0.0.1:50051, or https://... with
    /// --tls-ca) instead of starting one.
    #[arg(long)]
    pub addr: Option<String>,
    /// Serve the in-process server over mutual TLS with throwaway certificates (not with --addr).
    #[arg(long, conflicts_with = "addr")]
    pub tls: bool,
    #[command(flatten)]
    pub tls_files: TlsFiles,
}

/// TLS to a running server (`--addr https://...`).
#[derive(Args, Clone, Default)]
pub struct TlsFiles {
    /// PEM CA bundle the server's certificate must chain to (needed for https).
    #[arg(long, requires = "addr")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate to present (mutual TLS; with --tls-key).
    #[arg(long, requires_all = ["addr", "tls_key"])]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires_all = ["addr", "tls_cert"])]
    pub tls_key: Option<std::path::PathBuf>,
    /// Name the server's certificate must carry [default: the host of --addr].
    #[arg(long, requires = "tls_ca")]
    pub tls_domain: Option<String>,
}

/// Where the benchmark's clients connect, and with which TLS.
struct Target {
    url: String,
    tls: Option<ClientTlsConfig>,
}

impl Target {
    /// A running server at `url`; TLS from `files` (https needs `--tls-ca`).
    fn remote(url: &str, files: &TlsFiles) -> anyhow::Result<Target> {
        let https = url.starts_with("https://");
        let Some(ca) = &files.tls_ca else {
            anyhow::ensure!(!https, "--addr {url} is https: give --tls-ca (the server's CA)");
            return Ok(Target { url: url.to_string(), tls: None });
        };
        anyhow::ensure!(https, "--tls-ca is given: --addr must be an https:// URL, not {url}");
        let read = |path: &std::path::Path, what: &str| crate::tls::Pem::read(path, what);
        let ca = read(ca, "--tls-ca")?;
        let identity = match (&files.tls_cert, &files.tls_key) {
            (Some(cert), Some(key)) => Some((read(cert, "--tls-cert")?, read(key, "--tls-key")?)),
            _ => None,
        };
        let uri: tonic::transport::Uri = url.parse().with_context(|| format!("--addr {url}"))?;
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_string();
        let domain = files.tls_domain.clone().unwrap_or(host);
        let identity = identity.as_ref().map(|(c, k)| (&c.bytes[..], &k.bytes[..]));
        let tls = crate::tls::client_config(&ca.bytes, identity, &domain);
        Ok(Target { url: url.to_string(), tls: Some(tls) })
    }

    async fn connect(&self) -> anyhow::Result<Channel> {
        let mut endpoint = Channel::from_shared(self.url.clone())?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        endpoint.connect().await.with_context(|| format!("connecting to {}", self.url))
    }
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Ingest(args) => ingest(args).await,
        BenchCommand::Replay(args) => replay(args).await,
        BenchCommand::Soak(args) => soak::run(args).await,
        BenchCommand::Scale(args) => scale::run(args).await,
        BenchCommand::Feed(args) => feed::run(args).await,
        BenchCommand::Webhooks(args) => webhooks::run(args).await,
        BenchCommand::Anomalies(args) => anomalies::run(args).await,
        BenchCommand::Dashboard(args) => dashboard::run(args).await,
        BenchCommand::Migration(args) => migration::run(args).await,
        BenchCommand::PastBooks(args) => past_books::run(args).await,
        BenchCommand::Cluster(args) => cluster::run(args).await,
    }
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.events > 0 && args.subscriptions > 0, "all counts must be positive");
    let dir = tempfile::tempdir()?;
    let (url, server, store) = start_server(dir.path(), None).await?;
    let ingest = IngestArgs {
        events: args.events,
        batch: 1_000,
        clients: 4,
        unary: false,
        subscriptions: args.subscriptions,
        addr: None,
        tls: false,
        tls_files: TlsFiles::default(),
    };
    let target = Target { url, tls: None };
    let (secs, _) = write_usage(&target, &ingest).await?;
    server.abort();
    let head = store.head();
    println!(
        "wrote {head} events ({} usage) in {secs:.1} s; rebuilding every read model",
        args.events
    );
    let out = dir.path().join("replay");
    let kinds = replay::Kind::ALL;
    let cutoff = replay::Cutoff::Position(head);
    let done = replay::rebuild(store.clone(), cutoff, &kinds, &out, &|_, _| {}).await?;
    for p in &done.manifest.projections {
        println!("{:<9} digest={}", p.projection.name(), p.sha256);
    }
    println!("peak_rss_mb={:.0} (log writer and rebuild in one process)", peak_rss_mb());
    println!(
        "replay events={} secs={:.2} events_per_s={:.0}",
        done.events,
        done.secs,
        done.events_per_s()
    );
    Ok(())
}

/// Events one IngestUsage call of the ingest benchmark carries (below the server's default
/// stream_events_max of 1,000,000).
const STREAM_EVENTS_PER_CALL: u64 = 500_000;

const METRICS: [(&str, &str, &str); 3] = [
    ("api_calls", "sum", "calls"),
    ("storage_gb", "max", "gb"),
    ("active_users", "unique_count", "user"),
];

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.events > 0 && args.batch > 0 && args.clients > 0 && args.subscriptions > 0,
        "all counts must be positive"
    );
    let (target, _server, _dir) = match &args.addr {
        Some(a) => (Target::remote(a, &args.tls_files)?, None, None),
        None => {
            let dir = tempfile::tempdir()?;
            let certs = args.tls.then(crate::tls::Throwaway::generate).transpose()?;
            let server_tls = certs.as_ref().map(|c| c.server_config()).transpose()?;
            let (url, handle, _) = start_server(dir.path(), server_tls).await?;
            let target = Target { url, tls: certs.map(|c| c.client_config()) };
            (target, Some(handle), Some(dir))
        }
    };
    let (secs, h) = write_usage(&target, &args).await?;
    println!("peak_rss_mb={:.0} (server and client in one process unless --addr)", peak_rss_mb());
    println!(
        "ingest events={} secs={secs:.2} events_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
        args.events,
        args.events as f64 / secs,
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
    );
    Ok(())
}

/// Sets up a customer, plans and subscriptions and sends `args.events` usage events; returns
/// the seconds the usage took and the ack latency histogram (µs).
async fn write_usage(target: &Target, args: &IngestArgs) -> anyhow::Result<(f64, Histogram<u64>)> {
    let channel = target.connect().await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    setup(CommandServiceClient::new(channel), &run_id, args.subscriptions).await?;
    let latencies = Arc::new(latency::Hist::new());
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let range = share(args.events, args.clients, client);
        let channel = target.connect().await?;
        let ctx = Worker {
            run_id: run_id.clone(),
            args: args.clone(),
            latencies: latencies.clone(),
            accepted: accepted.clone(),
            head: Arc::new(AtomicU64::new(0)),
        };
        tasks.push(tokio::spawn(async move {
            if ctx.args.unary {
                ctx.unary(channel, range).await
            } else {
                ctx.stream(channel, range).await
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let accepted = accepted.load(Ordering::SeqCst);
    anyhow::ensure!(
        accepted == args.events,
        "only {accepted} of {} events were accepted",
        args.events
    );
    Ok((secs, latencies.snapshot()))
}

/// The client's share [start, end) of `total` events.
fn share(total: u64, clients: u64, i: u64) -> std::ops::Range<u64> {
    let per = total / clients;
    let start = i * per;
    let end = if i + 1 == clients { total } else { start + per };
    start..end
}

/// The command side only (no projections): this benchmark measures durable ingest. With `tls`,
/// served over TLS (the URL is https).
async fn start_server(
    dir: &std::path::Path,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>, Arc<dyn event_store::EventStore>)> {
    let (store, engine) =
        crate::serve::open_engine(dir, domain::commands::Policy::default()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr()?);
    let handle = tokio::spawn(async move {
        let limits = command_service::service::Limits::default();
        let server = crate::server::ServerLimits { tls, ..Default::default() };
        let never = std::future::pending();
        if let Err(e) =
            crate::server::serve(listener, Some(engine), None, None, None, limits, server, never)
                .await
        {
            eprintln!("bench server failed: {e}");
        }
    });
    Ok((url, handle, store))
}

async fn setup(
    mut c: CommandServiceClient<Channel>,
    run: &str,
    subscriptions: u64,
) -> anyhow::Result<()> {
    let customer_id = format!("bench-{run}");
    c.register_customer(pb::RegisterCustomerRequest {
        customer_id: customer_id.clone(),
        name: "Bench Co".into(),
        currency: "USD".into(),
        ..Default::default()
    })
    .await?;
    let mut charges = Vec::new();
    for (code, aggregation, property) in METRICS {
        let code = format!("{code}-{run}");
        c.define_metric(pb::DefineMetricRequest {
            code: code.clone(),
            name: code.clone(),
            aggregation: aggregation.into(),
            property: property.into(),
            ..Default::default()
        })
        .await?;
        let model = pb::charge::Model::Standard(pb::StandardModel { unit_price: "0.001".into() });
        charges.push(pb::Charge { metric_code: code, pay_in_advance: false, model: Some(model) });
    }
    let plan_code = format!("bench-plan-{run}");
    c.publish_plan(pb::PublishPlanRequest {
        code: plan_code.clone(),
        name: "Bench".into(),
        currency: "USD".into(),
        interval: "monthly".into(),
        base_fee: "49".into(),
        charges,
        ..Default::default()
    })
    .await?;
    for s in 0..subscriptions {
        c.start_subscription(pb::StartSubscriptionRequest {
            subscription_id: format!("sub-{run}-{s:06}"),
            customer_id: customer_id.clone(),
            plan_code: plan_code.clone(),
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}

struct Worker {
    run_id: String,
    args: IngestArgs,
    latencies: Arc<latency::Hist>,
    accepted: Arc<AtomicU64>,
    /// Longest log acknowledged so far: the greatest `UsageResult.position`, a log length
    /// (streaming only).
    head: Arc<AtomicU64>,
}

impl Worker {
    /// Event number `n`: ~150 bytes on the wire, spread over subscriptions and metrics.
    fn event(&self, n: u64, now: &prost_types::Timestamp) -> pb::UsageEvent {
        let (metric, _, property) = METRICS[(n % 3) as usize];
        let value = match n % 3 {
            0 => (n % 97 + 1).to_string(),
            1 => format!("{}.{}", n % 500, n % 10),
            _ => format!("user-{}", n % 5_000),
        };
        pb::UsageEvent {
            subscription_id: format!("sub-{}-{:06}", self.run_id, n % self.args.subscriptions),
            transaction_id: format!("tx-{}-{n:012}", self.run_id),
            metric_code: format!("{metric}-{}", self.run_id),
            occurred_at: Some(*now),
            properties: [
                (property.to_string(), value),
                ("region".to_string(), "eu-west-1".to_string()),
            ]
            .into(),
        }
    }

    /// Sends `range` over IngestUsage streams of at most [`STREAM_EVENTS_PER_CALL`] events
    /// (the server's stream_events_max bounds one call).
    async fn stream(self, channel: Channel, range: std::ops::Range<u64>) -> anyhow::Result<()> {
        let mut client = CommandServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let mut start = range.start;
        while start < range.end {
            let end = (start + STREAM_EVENTS_PER_CALL).min(range.end);
            self.stream_call(&mut client, start..end).await?;
            start = end;
        }
        Ok(())
    }

    async fn stream_call(
        &self,
        client: &mut CommandServiceClient<Channel>,
        range: std::ops::Range<u64>,
    ) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel::<pb::UsageBatch>(1);
        let mut replies = client.ingest_usage(ReceiverStream::new(rx)).await?.into_inner();
        let mut n = range.start;
        while n < range.end {
            let now = now_ts();
            let end = (n + self.args.batch).min(range.end);
            let batch = pb::UsageBatch { events: (n..end).map(|i| self.event(i, &now)).collect() };
            let sent = Instant::now();
            tx.send(batch).await.context("server closed the stream")?;
            let reply = replies.message().await?.context("stream ended early")?;
            self.latencies.record(sent.elapsed());
            anyhow::ensure!(
                reply.rejected == 0,
                "rejected items: {:?}",
                reply.results.iter().find(|r| r.status == "rejected")
            );
            self.accepted.fetch_add(u64::from(reply.accepted), Ordering::Relaxed);
            if let Some(p) = reply.results.iter().map(|r| r.position).max() {
                self.head.fetch_max(p, Ordering::SeqCst);
            }
            n = end;
        }
        // Half-close and read the call's final status, so the server ends the call as OK
        // (dropping the stream instead would count it as CANCELLED in the server's metrics).
        drop(tx);
        let extra = replies.message().await?;
        anyhow::ensure!(extra.is_none(), "a reply beyond the last batch: {extra:?}");
        Ok(())
    }

    async fn unary(self, channel: Channel, range: std::ops::Range<u64>) -> anyhow::Result<()> {
        let mut client = CommandServiceClient::new(channel);
        for n in range {
            let event = self.event(n, &now_ts());
            let sent = Instant::now();
            let reply = client.record_usage(event).await?.into_inner();
            self.latencies.record(sent.elapsed());
            anyhow::ensure!(reply.status == "accepted", "event {n}: {}", reply.status);
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn now_ts() -> prost_types::Timestamp {
    command_service::convert::to_timestamp(jiff::Timestamp::now())
}

/// Peak resident set size of this process (VmHWM), in MiB.
pub fn peak_rss_mb() -> f64 {
    proc_status_mib("self", "VmHWM:")
}

/// The kB value of `field` (e.g. "VmRSS:") in /proc/<process>/status, in MiB (0 where there is
/// none); `process` is a pid or "self".
fn proc_status_mib(process: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// A latency histogram shared by the workers (microseconds, 1 µs .. 60 s, 3 digits).
mod latency {
    use super::*;

    pub struct Hist(std::sync::Mutex<Histogram<u64>>);

    impl Hist {
        pub fn new() -> Self {
            Hist(std::sync::Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ))
        }

        pub fn record(&self, d: Duration) {
            let us = (d.as_micros() as u64).clamp(1, 60_000_000);
            self.0.lock().expect("not poisoned").record(us).expect("in bounds");
        }

        pub fn snapshot(&self) -> Histogram<u64> {
            self.0.lock().expect("not poisoned").clone()
        }
    }
}
