//! `accrual bench scale`: how the whole server's costs grow with history (issue #12).
//!
//! It starts this binary's own `accrual serve` as a child process (every role, a real port, real
//! sled in a data dir), sets up one customer with `--subscriptions` subscriptions in one open
//! period, and streams usage through `IngestUsage` in stages ending at each `--checkpoints`
//! count. While a stage runs, a sampler asks each read model (invoices, MRR, journal) for the log
//! position it reflects and records how far behind the head it is, in events and in seconds
//! (how long ago the head was where the read model is now). After each stage it prints one line:
//!
//! `scale events=N ingest_events_per_s=X p99_ack_ms=… rss_mib=… rss_peak_mib=… lag_max_events=… lag_max_s=…
//! catch_up_s=… log_bytes_per_event=… disk_bytes_per_event=… restart_to_serving_ms=…`
//!
//! then waits for every read model to catch up, stops the server (SIGTERM) and times a restart
//! until health reports SERVING and a command is accepted. Nothing is asserted: it measures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;

use super::{latency, share, IngestArgs, Target, TlsFiles, Worker};

#[derive(Args, Clone)]
pub struct ScaleArgs {
    /// Event counts at which to stop, measure and restart; the last is the total.
    #[arg(long, value_delimiter = ',', default_values_t = [5_000_000u64, 10_000_000, 20_000_000])]
    pub checkpoints: Vec<u64>,
    /// Subscriptions the events are spread over (one customer, one open period each).
    #[arg(long, default_value_t = 10_000)]
    pub subscriptions: u64,
    /// Events per IngestUsage batch.
    #[arg(long, default_value_t = 1_000)]
    pub batch: u64,
    /// Concurrent streaming clients, each on its own connection.
    #[arg(long, default_value_t = 4)]
    pub clients: u64,
    /// Keep the server's data here (must not exist) instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How often the sampler reads the read models' positions.
    #[arg(long, default_value_t = 250)]
    pub sample_interval_ms: u64,
    /// Longest to wait for the read models to catch up after a stage.
    #[arg(long, default_value_t = 900)]
    pub catch_up_s_max: u64,
    /// Longest to wait for a (re)started server to serve.
    #[arg(long, default_value_t = 600)]
    pub start_s_max: u64,
}

/// Read models the sampler follows, in the order printed.
const READ_MODELS: [&str; 3] = ["invoices", "mrr", "journal"];
/// Bound of the head history kept for lag-in-seconds (one entry per sample).
const HEAD_HISTORY_MAX: usize = 1 << 20;

pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    check(&args)?;
    let tmp = tempfile::tempdir()?;
    let data_dir = match &args.data_dir {
        Some(d) => {
            anyhow::ensure!(!d.exists(), "--data-dir {} exists: give a new path", d.display());
            d.clone()
        }
        None => tmp.path().join("data"),
    };
    let log_path = tmp.path().join("server.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    println!(
        "scale setup subscriptions={} batch={} clients={} data_dir={} server_log={}",
        args.subscriptions,
        args.batch,
        args.clients,
        data_dir.display(),
        log_path.display()
    );
    let mut server = ServerProcess::start(&data_dir, port, &log_path, &[])?;
    let started = Instant::now();
    let channel = server.serving(&url, args.start_s_max).await?;
    println!("scale first_start_to_serving_ms={}", started.elapsed().as_millis());
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let setup_started = Instant::now();
    super::setup(CommandServiceClient::new(channel.clone()), &run_id, args.subscriptions).await?;
    println!("scale setup_s={:.1}", setup_started.elapsed().as_secs_f64());

    let head = Arc::new(AtomicU64::new(0));
    let mut done: u64 = 0;
    for (stage, &until) in args.checkpoints.iter().enumerate() {
        let stage_no = u32::try_from(stage).unwrap_or(u32::MAX);
        let channel = server.serving(&url, args.start_s_max).await?;
        let sampler = Sampler::start(channel.clone(), head.clone(), args.sample_interval_ms);
        let stage_started = Instant::now();
        let hist = ingest(&url, &args, &run_id, done..until, head.clone()).await?;
        let ingest_s = stage_started.elapsed().as_secs_f64();
        let ingest_lag = sampler.stop().await;
        let rss = server.rss_mib();
        let rss_peak = server.rss_peak_mib();
        let catch_up = catch_up(&channel, &head, args.catch_up_s_max).await?;
        let log_bytes = dir_bytes(&data_dir.join("log"));
        let disk_bytes = dir_bytes(&data_dir);
        server.stop()?;
        let restart_started = Instant::now();
        server = ServerProcess::start(&data_dir, port, &log_path, &[])?;
        let channel = server.serving(&url, args.start_s_max).await?;
        probe_command(channel, &run_id, stage_no).await?;
        let restart_ms = restart_started.elapsed().as_millis();
        let rss_after_restart = server.rss_mib();
        let events = until - done;
        println!(
            "scale events={until} stage_events={events} ingest_events_per_s={:.0} \
             p50_ack_ms={:.1} p99_ack_ms={:.1} rss_mib={rss:.0} rss_peak_mib={rss_peak:.0} \
             rss_after_restart_mib={rss_after_restart:.0} lag_max_events={} lag_max_s={} \
             catch_up_s={catch_up:.1} log_bytes_per_event={:.0} disk_bytes_per_event={:.0} \
             restart_to_serving_ms={restart_ms}",
            events as f64 / ingest_s,
            hist.value_at_quantile(0.50) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
            ingest_lag.events_text(),
            ingest_lag.secs_text(),
            log_bytes as f64 / until as f64,
            disk_bytes as f64 / until as f64,
        );
        done = until;
    }
    server.stop()?;
    Ok(())
}

fn check(args: &ScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.subscriptions > 0 && args.batch > 0 && args.clients > 0,
        "--subscriptions, --batch and --clients must be positive"
    );
    anyhow::ensure!(!args.checkpoints.is_empty(), "give at least one --checkpoints count");
    anyhow::ensure!(
        args.checkpoints.windows(2).all(|w| w[0] < w[1]) && args.checkpoints[0] > 0,
        "--checkpoints must be positive and increasing"
    );
    Ok(())
}

/// Streams events `range` from `--clients` connections; returns the batch-ack latencies (µs).
pub(super) async fn ingest(
    url: &str,
    args: &ScaleArgs,
    run_id: &str,
    range: std::ops::Range<u64>,
    head: Arc<AtomicU64>,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let target = Target { url: url.to_string(), tls: None };
    let latencies = Arc::new(latency::Hist::new());
    let accepted = Arc::new(AtomicU64::new(0));
    let ingest_args = IngestArgs {
        events: range.end - range.start,
        batch: args.batch,
        clients: args.clients,
        unary: false,
        subscriptions: args.subscriptions,
        addr: Some(url.to_string()),
        tls: false,
        tls_files: TlsFiles::default(),
    };
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let share = share(range.end - range.start, args.clients, client);
        let part = (range.start + share.start)..(range.start + share.end);
        let worker = Worker {
            run_id: run_id.to_string(),
            args: ingest_args.clone(),
            latencies: latencies.clone(),
            accepted: accepted.clone(),
            head: head.clone(),
        };
        let channel = target.connect().await?;
        tasks.push(tokio::spawn(async move { worker.stream(channel, part).await }));
    }
    for t in tasks {
        t.await??;
    }
    let accepted = accepted.load(Ordering::SeqCst);
    anyhow::ensure!(
        accepted == range.end - range.start,
        "only {accepted} of {} events were accepted",
        range.end - range.start
    );
    Ok(latencies.snapshot())
}

/// The log length acknowledged so far (a position is a log length: events [0, position)).
fn head_next(head: &AtomicU64) -> u64 {
    head.load(Ordering::SeqCst)
}

/// The log position each read model reflects (a reply's `position`: every event below it).
pub(super) async fn positions(channel: &Channel) -> anyhow::Result<[u64; 3]> {
    let mut q = QueryServiceClient::new(channel.clone());
    let invoices = q
        .list_invoices(pb::ListInvoicesRequest { page_size: 1, ..Default::default() })
        .await?
        .into_inner()
        .position;
    let mrr = q
        .get_mrr(pb::MrrRequest { currency: "USD".into(), date: today(), ..Default::default() })
        .await?
        .into_inner()
        .position;
    let journal = q
        .get_trial_balance(pb::AsOfRequest {
            as_recorded_at: None,
            as_of: today(),
            min_position: None,
        })
        .await?
        .into_inner()
        .position;
    Ok([invoices, mrr, journal])
}

fn today() -> String {
    jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date().to_string()
}

/// The greatest lag seen per read model while a stage ran.
#[derive(Default, Clone, Copy)]
struct Lag {
    events: [u64; 3],
    secs: [f64; 3],
}

impl Lag {
    fn events_text(&self) -> String {
        let parts: Vec<String> =
            READ_MODELS.iter().zip(self.events).map(|(n, e)| format!("{n}:{e}")).collect();
        parts.join(",")
    }

    fn secs_text(&self) -> String {
        let parts: Vec<String> =
            READ_MODELS.iter().zip(self.secs).map(|(n, s)| format!("{n}:{s:.1}")).collect();
        parts.join(",")
    }
}

/// Reads the read models' positions every interval while a stage runs.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Lag>,
}

impl Sampler {
    fn start(channel: Channel, head: Arc<AtomicU64>, interval_ms: u64) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let history: Mutex<Vec<(Instant, u64)>> = Mutex::new(Vec::new());
            let mut worst = Lag::default();
            while !flag.load(Ordering::SeqCst) {
                let now = Instant::now();
                let head_now = head_next(&head);
                {
                    let mut h = history.lock().expect("not poisoned");
                    if h.len() < HEAD_HISTORY_MAX {
                        h.push((now, head_now));
                    }
                }
                if let Ok(at) = positions(&channel).await {
                    let h = history.lock().expect("not poisoned");
                    for (i, &p) in at.iter().enumerate() {
                        let behind = head_now.saturating_sub(p);
                        worst.events[i] = worst.events[i].max(behind);
                        // Seconds since the head was last at or below where the model is now.
                        let since = if behind == 0 {
                            0.0
                        } else {
                            h.iter()
                                .rev()
                                .find(|(_, head_then)| *head_then <= p)
                                .map(|(t, _)| now.duration_since(*t).as_secs_f64())
                                .unwrap_or_else(|| now.duration_since(h[0].0).as_secs_f64())
                        };
                        worst.secs[i] = worst.secs[i].max(since);
                    }
                }
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            }
            worst
        });
        Sampler { stop, task }
    }

    async fn stop(self) -> Lag {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or_default()
    }
}

/// Seconds until every read model reflects the whole log after ingest stopped.
async fn catch_up(channel: &Channel, head: &AtomicU64, limit_s: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let target = head_next(head);
    loop {
        let at = positions(channel).await?;
        if at.iter().all(|&p| p >= target) {
            return Ok(started.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(limit_s),
            "read models at {at:?} did not reach {target} within {limit_s} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One command after a restart: the server is serving only when it accepts one.
async fn probe_command(channel: Channel, run_id: &str, stage: u32) -> anyhow::Result<()> {
    let mut c = CommandServiceClient::new(channel);
    c.register_customer(pb::RegisterCustomerRequest {
        idempotency_key: format!("probe-{run_id}-{stage}"),
        customer_id: format!("probe-{run_id}-{stage}"),
        name: "Restart probe".into(),
        currency: "USD".into(),
        ..Default::default()
    })
    .await
    .context("the restarted server refused a command")?;
    Ok(())
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut total = 0u64;
    for e in entries.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

/// `accrual serve` (this executable) as a child process with every role.
pub(super) struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// `extra`: more `accrual serve` flags.
    pub(super) fn start(
        data_dir: &Path,
        port: u16,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<ServerProcess> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--log-level")
            .arg("warn")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting accrual serve")?;
        Ok(ServerProcess { child })
    }

    /// A channel once health reports the command and query services SERVING.
    pub(super) async fn serving(&mut self, url: &str, limit_s: u64) -> anyhow::Result<Channel> {
        let services = ["accrual.v1.CommandService", "accrual.v1.QueryService"];
        self.serving_services(url, &services, limit_s).await
    }

    /// A channel once health reports every one of `services` SERVING.
    pub(super) async fn serving_services(
        &mut self,
        url: &str,
        services: &[&str],
        limit_s: u64,
    ) -> anyhow::Result<Channel> {
        let deadline = Instant::now() + Duration::from_secs(limit_s);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the server exited while starting: {status}");
            }
            if let Ok(channel) = Channel::from_shared(url.to_string())?.connect().await {
                let mut all = true;
                for service in services {
                    all = all && serving(&channel, service).await;
                }
                if all {
                    return Ok(channel);
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "the server did not serve in {limit_s} s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// kill -9 (no graceful stop) and wait for the exit.
    pub(super) fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("kill -9")?;
        self.child.wait()?;
        Ok(())
    }

    pub(super) fn rss_mib(&self) -> f64 {
        super::proc_status_mib(&self.child.id().to_string(), "VmRSS:")
    }

    /// The highest RSS of this server process so far (since its start).
    fn rss_peak_mib(&self) -> f64 {
        super::proc_status_mib(&self.child.id().to_string(), "VmHWM:")
    }

    /// SIGTERM (a graceful stop: calls finish, the store flushes) and wait for the exit.
    pub(super) fn stop(&mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().context("kill -TERM")?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "the server stopped with {status}");
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn serving(channel: &Channel, service: &str) -> bool {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
    matches!(health.check(req).await, Ok(r) if r.get_ref().status == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(checkpoints: Vec<u64>) -> ScaleArgs {
        ScaleArgs {
            checkpoints,
            subscriptions: 1,
            batch: 1,
            clients: 1,
            data_dir: None,
            sample_interval_ms: 1,
            catch_up_s_max: 1,
            start_s_max: 1,
        }
    }

    #[test]
    fn checkpoints_must_be_positive_and_increasing() {
        assert!(check(&args(vec![5, 10, 20])).is_ok());
        assert!(check(&args(vec![])).is_err());
        assert!(check(&args(vec![0, 10])).is_err());
        assert!(check(&args(vec![10, 10])).is_err());
        assert!(check(&args(vec![20, 10])).is_err());
    }

    #[test]
    fn dir_bytes_adds_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 32]).unwrap();
        assert_eq!(dir_bytes(dir.path()), 42);
        assert_eq!(dir_bytes(&dir.path().join("missing")), 0);
    }
}
