//! Helpers shared by end-to-end test files: the real `accrual` binary on a free port.
//!
//! Each test binary uses a subset of these helpers.
#![allow(dead_code)]

pub mod process;
pub mod python;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use tonic::transport::{Channel, ClientTlsConfig};

/// `accrual serve` started on a data dir; killed (if still running) when dropped, so a failing
/// assertion never leaves a server behind.
pub struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts `accrual serve` on `127.0.0.1:port` without the billing scheduler.
    pub fn start(data_dir: &std::path::Path, port: u16) -> Server {
        Server::start_with(data_dir, port, &[])
    }

    /// Starts `accrual serve` with `extra` flags (e.g. `--role query --read-only`).
    pub fn start_with(data_dir: &std::path::Path, port: u16, extra: &[&str]) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_accrual"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--scheduler-interval-secs",
                "0",
            ])
            .args(extra)
            // The dashboard's default port is one for all: a test that wants it names a port.
            .args(
                (!extra.iter().any(|a| a.starts_with("--dashboard") || *a == "--no-dashboard"))
                    .then_some("--no-dashboard"),
            )
            .arg("--data-dir")
            .arg(data_dir)
            .env("ACCRUAL_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start accrual serve");
        Server { child, port }
    }

    /// Starts `accrual serve` with its log as JSON lines at info level in `log` (read them
    /// with [`log_records`]).
    pub fn start_logged(data_dir: &std::path::Path, port: u16, log: &std::path::Path) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_accrual"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--scheduler-interval-secs", "0", "--data-dir"])
            .arg(data_dir)
            .env("ACCRUAL_LOG_LEVEL", "info")
            .env("ACCRUAL_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("create the server's log"))
            .spawn()
            .expect("start accrual serve");
        Server { child, port }
    }

    /// An `accrual serve` the caller spawned itself (e.g. configured through the environment).
    pub fn adopt(child: Child, port: u16) -> Server {
        Server { child, port }
    }

    /// A channel to the server once its health service reports `service` SERVING.
    pub async fn serving(&self, service: &str) -> Channel {
        let url = format!("http://127.0.0.1:{}", self.port);
        wait_serving(Channel::from_shared(url).unwrap(), service, "server").await
    }

    /// Like `serving`, over TLS configured by `tls` (`https://127.0.0.1:port`).
    pub async fn serving_tls(&self, service: &str, tls: ClientTlsConfig) -> Channel {
        let url = format!("https://127.0.0.1:{}", self.port);
        let endpoint = Channel::from_shared(url).unwrap().tls_config(tls).unwrap();
        wait_serving(endpoint, service, "TLS server").await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A command-service client once it is SERVING.
    pub async fn client(&self) -> CommandServiceClient<Channel> {
        CommandServiceClient::new(self.serving("accrual.v1.CommandService").await)
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (a crash), then waits for the exit.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit (graceful shutdown: the store is flushed and closed).
    /// SIGTERM, then waits for the exit (at most [`TERMINATE_WAIT_MS_MAX`]; the test fails
    /// if the graceful shutdown takes longer).
    ///
    /// Async, so the test's runtime keeps driving its client connections: they answer the
    /// server's GOAWAY at once (a blocked runtime would hold the server's drain to its bound).
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(TERMINATE_WAIT_MS_MAX);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit within {TERMINATE_WAIT_MS_MAX} ms of SIGTERM"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to `endpoint` until its health service reports `service` SERVING (at most 30 s;
/// `what` names the server in the failure).
async fn wait_serving(endpoint: tonic::transport::Endpoint, service: &str, what: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = endpoint.connect().await {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
            if let Ok(r) = health.check(req).await {
                assert_eq!(r.into_inner().status, 1, "SERVING");
                return channel;
            }
        }
        assert!(Instant::now() < deadline, "{what} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `fields` of the JSON log records (see [`Server::start_logged`]) whose message is
/// `message`, in order.
pub fn log_records(log: &std::path::Path, message: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|r| r["fields"].clone())
        .filter(|f| f["message"] == message)
        .collect()
}

/// `accrual replay verify` on a stopped server's data dir: every read model (invoices, MRR,
/// journal) equals its rebuild from the log, at position `head`.
pub fn replay_verify_at(data_dir: &std::path::Path, head: u64) {
    let out = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["replay", "verify", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run accrual replay verify");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    for name in ["invoices", "mrr", "journal"] {
        let line = report.lines().find(|l| l.starts_with(name)).expect("a line per model");
        assert!(line.contains(&format!("position={head}")), "{name} at the head: {line}");
    }
}

/// Bound of a graceful shutdown in tests (calls in flight finish, the store flushes).
pub const TERMINATE_WAIT_MS_MAX: u64 = 60_000;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Registers customer `acme` (USD, Europe/Berlin, 10 % tax) and defines the metric `api_calls`
/// (the sum of the `calls` property): what the end-to-end books start with.
pub async fn register_acme_and_api_calls(c: &mut CommandServiceClient<Channel>) {
    c.register_customer(acme_request()).await.unwrap();
    c.define_metric(api_calls_metric()).await.unwrap();
}

/// The metric `api_calls`: the sum of the `calls` property.
pub fn api_calls_metric() -> pb::DefineMetricRequest {
    pb::DefineMetricRequest {
        code: "api_calls".into(),
        name: "API calls".into(),
        aggregation: "sum".into(),
        property: "calls".into(),
        ..Default::default()
    }
}

/// Customer `acme` (USD, Europe/Berlin, 10 % tax) under the idempotency key `cust-acme`.
pub fn acme_request() -> pb::RegisterCustomerRequest {
    pb::RegisterCustomerRequest {
        idempotency_key: "cust-acme".into(),
        customer_id: "acme".into(),
        name: "Acme".into(),
        currency: "USD".into(),
        time_zone: "Europe/Berlin".into(),
        tax_rate: "10".into(),
    }
}

/// Plan `growth`: 20.00 a month in arrears plus graduated `api_calls`, the first 100 at 1.00
/// and the rest at `over_100` each.
pub fn growth_plan(over_100: &str) -> pb::PublishPlanRequest {
    pb::PublishPlanRequest {
        code: "growth".into(),
        name: "Growth".into(),
        currency: "USD".into(),
        interval: "monthly".into(),
        base_fee: "20.00".into(),
        charges: vec![pb::Charge {
            metric_code: "api_calls".into(),
            pay_in_advance: false,
            model: Some(pb::charge::Model::Graduated(pb::TieredModel {
                tiers: vec![tier("100", "1.00"), tier("", over_100)],
            })),
        }],
        ..Default::default()
    }
}

/// Publishes `plan` and subscribes `acme` to it as `sub-1`, starting today.
pub async fn start_sub_1(c: &mut CommandServiceClient<Channel>, plan: pb::PublishPlanRequest) {
    let code = plan.code.clone();
    c.publish_plan(plan).await.unwrap();
    let start = pb::StartSubscriptionRequest {
        subscription_id: "sub-1".into(),
        customer_id: "acme".into(),
        plan_code: code,
        ..Default::default()
    };
    c.start_subscription(start).await.unwrap();
}

/// A graduated tier without a flat fee.
pub fn tier(up_to: &str, price: &str) -> pb::Tier {
    pb::Tier { up_to: up_to.into(), unit_price: price.into(), flat_fee: String::new() }
}

/// Appends one harmless event (a metric `probe-<n>`, new on every call: an identical
/// DefineMetric would be a replay appending nothing) and returns its log position: the position
/// after everything appended so far. Tests compare it with an earlier position to prove that
/// refused commands appended nothing.
pub async fn append_probe(c: &mut CommandServiceClient<Channel>) -> u64 {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = pb::DefineMetricRequest {
        code: format!("probe-{n}"),
        name: "Probe".into(),
        aggregation: "count".into(),
        ..Default::default()
    };
    c.define_metric(probe).await.unwrap().into_inner().position
}

/// One month before today in Berlin (acme's zone): the start date of a backdated
/// subscription whose first period has ended, so a billing run at the real clock closes it (a
/// run later than the server's clock is refused).
pub fn month_ago_in_berlin() -> jiff::civil::Date {
    let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    jiff::Timestamp::now().to_zoned(berlin).date() - jiff::Span::new().months(1)
}

/// Starts acme's `sub-1` on `plan_code` backdated to [`month_ago_in_berlin`]: its first period
/// has ended, and a billing run at the real clock closes it.
pub async fn start_sub_1_backdated(
    c: &mut CommandServiceClient<Channel>,
    plan_code: &str,
) -> pb::SubscriptionResponse {
    let start = pb::StartSubscriptionRequest {
        subscription_id: "sub-1".into(),
        customer_id: "acme".into(),
        plan_code: plan_code.into(),
        start_date: month_ago_in_berlin().to_string(),
        ..Default::default()
    };
    c.start_subscription(start).await.unwrap().into_inner()
}

/// Noon in Berlin the day after [`month_ago_in_berlin`]: an instant inside the first period of
/// a subscription started then (whatever the month's length).
pub fn in_first_period() -> prost_types::Timestamp {
    let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    let day = month_ago_in_berlin().tomorrow().unwrap();
    let at = day.at(12, 0, 0, 0).to_zoned(berlin).unwrap().timestamp();
    prost_types::Timestamp { seconds: at.as_second(), nanos: 0 }
}

/// The field names of a status's google.rpc.BadRequest, in order (panics when it has none).
pub fn violation_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    let request =
        status.get_details_bad_request().unwrap_or_else(|| panic!("no BadRequest: {status:?}"));
    request.field_violations.into_iter().map(|v| v.field).collect()
}

/// The BadRequest field names of a call refused with INVALID_ARGUMENT (`what` names the call).
pub fn bad_fields<T: std::fmt::Debug>(what: &str, reply: Result<T, tonic::Status>) -> Vec<String> {
    let status = reply.expect_err(what);
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status:?}");
    violation_fields(&status)
}

/// Asserts that a trial balance balances: Σ debits = Σ credits over its rows.
pub fn assert_balanced(trial: &pb::TrialBalanceResponse) {
    let total = |f: fn(&pb::TrialBalanceRow) -> &str| -> rust_decimal::Decimal {
        trial.rows.iter().map(|r| f(r).parse::<rust_decimal::Decimal>().unwrap()).sum()
    };
    assert_eq!(total(|r| &r.debit), total(|r| &r.credit), "the trial balance balances");
}

/// The feed's `invoice.issued` events from now on (heartbeats every 200 ms).
pub async fn invoice_issued_feed(server: &Server) -> tonic::Streaming<pb::FeedMessage> {
    let channel = server.serving("accrual.v1.FeedService").await;
    let mut f = proto::v1::feed_service_client::FeedServiceClient::new(channel);
    let req = pb::SubscribeEventsRequest {
        from_now: true,
        types: vec!["invoice.issued".into()],
        heartbeat_ms: 200,
        ..Default::default()
    };
    f.subscribe_events(req).await.unwrap().into_inner()
}

/// The next event of `feed` (heartbeats skipped), within 10 s.
pub async fn next_feed_event(feed: &mut tonic::Streaming<pb::FeedMessage>) -> pb::FeedEvent {
    let next = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = feed.message().await.unwrap().expect("the feed is open");
            if let Some(pb::feed_message::Kind::Event(e)) = m.kind {
                return e;
            }
        }
    });
    next.await.expect("a feed event within 10 s")
}
