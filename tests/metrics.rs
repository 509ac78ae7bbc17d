//! The Prometheus endpoint on the real binary: `--metrics-listen` serves `GET /metrics` on its
//! own port; after commands, a usage batch and a bad request, the counters equal what was done
//! (events appended = the log's head, one InvalidArgument, every projection caught up with lag
//! 0). Without the flag the process listens on its gRPC port only; a bad address stops the start
//! with an error naming it.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, growth_plan, register_acme_and_api_calls, start_sub_1, Server};
use proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const PROJECTIONS: [&str; 3] = ["invoices", "mrr", "journal"];
const COMMANDS: &str = "accrual.v1.CommandService";

/// One scrape: every sample as (name, labels, value).
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    /// `GET /metrics` over a plain TCP connection (HTTP/1.1, `Connection: close`).
    async fn get(port: u16) -> Result<Scrape, String> {
        let mut tcp =
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        tcp.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut response = String::new();
        let read = tcp.read_to_string(&mut response);
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .map_err(|_| "scrape timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("scrape answered {head}"));
        }
        Ok(Scrape(body.lines().filter_map(parse_sample).collect()))
    }

    /// Sum of the samples named `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matches = |l: &BTreeMap<String, String>| {
            labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        };
        self.0.iter().filter(|(n, l, _)| n == name && matches(l)).map(|(_, _, v)| v).sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _, _)| n == name)
    }
}

/// `name{k="v",...} value` (no commas or quotes inside our label values).
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, labels)) = series.split_once('{') else {
        return Some((series.to_string(), BTreeMap::new(), value));
    };
    let labels = labels.trim_end_matches('}').split(',').filter_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        Some((k.to_string(), v.trim_matches('"').to_string()))
    });
    Some((name.to_string(), labels.collect(), value))
}

fn usage(tx: &str, calls: &str) -> pb::UsageEvent {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx.into(),
        metric_code: "api_calls".into(),
        occurred_at: Some(prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: 0 }),
        properties: [("calls".to_string(), calls.to_string())].into(),
    }
}

/// Customer, metric, plan and subscription (4 commands, one a duplicate), then a usage batch
/// of 25 events and one bad request. Returns the log's head (the last position + 1).
async fn drive(
    c: &mut proto::v1::command_service_client::CommandServiceClient<tonic::transport::Channel>,
) -> u64 {
    register_acme_and_api_calls(c).await;
    start_sub_1(c, growth_plan("0.50")).await;
    let batch =
        pb::UsageBatch { events: (0..25).map(|i| usage(&format!("tx-{i}"), "3")).collect() };
    let mut acks = c.ingest_usage(tokio_stream::iter(vec![batch])).await.unwrap().into_inner();
    let ack = acks.message().await.unwrap().unwrap();
    assert_eq!((ack.accepted, ack.rejected), (25, 0));
    while acks.message().await.unwrap().is_some() {}
    let bad = pb::RegisterCustomerRequest {
        customer_id: "bad id!".into(),
        name: "Bad".into(),
        currency: "USD".into(),
        ..Default::default()
    };
    assert_eq!(c.register_customer(bad).await.unwrap_err().code(), Code::InvalidArgument);
    // The last event: its acknowledged position (a log length) is the head.
    let last = c.record_usage(usage("tx-last", "1")).await.unwrap().into_inner();
    last.position
}

/// Scrapes until every projection has applied `head` events with lag 0 and the dropped
/// health watch is counted (30 s at most).
async fn scrape_caught_up(port: u16, head: u64) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(30);
    let watch = [("service", "grpc.health.v1.Health"), ("method", "Watch")];
    loop {
        let scrape = Scrape::get(port).await.expect("scrape");
        let caught_up = PROJECTIONS.iter().all(|p| {
            let projection = [("projection", *p)];
            scrape.sum("accrual_projection_events_applied_total", &projection) == head as f64
                && scrape.sum("accrual_projection_lag_events", &projection) == 0.0
                && scrape.has("accrual_projection_lag_events")
        });
        if caught_up && scrape.sum("accrual_grpc_requests_total", &watch) == 1.0 {
            return scrape;
        }
        assert!(Instant::now() < deadline, "projections did not catch up to {head}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A call to a method no service has (UNIMPLEMENTED), and a health watch stream the client
/// drops after its first message (the server sees it cancelled).
async fn unknown_method_and_dropped_stream(channel: tonic::transport::Channel) {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/accrual.v1.CommandService/NoSuchMethod");
    let codec = tonic::codec::ProstCodec::<pb::GetInvoiceRequest, pb::Invoice>::default();
    let request = tonic::Request::new(pb::GetInvoiceRequest::default());
    let unknown = grpc.unary(request, path, codec).await;
    assert_eq!(unknown.unwrap_err().code(), Code::Unimplemented);
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let watch = tonic_health::pb::HealthCheckRequest { service: COMMANDS.into() };
    let mut updates = health.watch(watch).await.unwrap().into_inner();
    assert_eq!(updates.message().await.unwrap().unwrap().status, 1, "SERVING");
    drop(updates);
}

fn assert_grpc(scrape: &Scrape, method: &str, code: &str, expected: f64) {
    let labels = [("service", COMMANDS), ("method", method), ("code", code)];
    let got = scrape.sum("accrual_grpc_requests_total", &labels);
    assert_eq!(got, expected, "{method} {code}");
}

// Multi-threaded: `terminate` blocks this thread while the client's connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_what_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let server = Server::start_with(dir.path(), free_port(), &["--metrics-listen", &listen]);
    let mut c = server.client().await;
    let head = drive(&mut c).await;
    assert_eq!(head, 2 + 1 + 1 + 25 + 1, "customer, metric, plan, subscription, usage");
    unknown_method_and_dropped_stream(server.serving(COMMANDS).await).await;
    let scrape = scrape_caught_up(metrics_port, head).await;

    assert_eq!(scrape.sum("accrual_events_appended_total", &[]), head as f64);
    assert_eq!(scrape.sum("accrual_log_events", &[]), head as f64);
    assert_eq!(scrape.sum("accrual_commit_batch_events_sum", &[]), head as f64);
    let commits = scrape.sum("accrual_commit_batch_events_count", &[]);
    assert!((1.0..=head as f64).contains(&commits), "{commits} group commits");
    for histogram in ["accrual_append_seconds", "accrual_fsync_seconds"] {
        let count = scrape.sum(&format!("{histogram}_count"), &[]);
        assert!(count >= commits, "{histogram}: {count} observations, {commits} commits");
        let le_inf = scrape.sum(&format!("{histogram}_bucket"), &[("le", "+Inf")]);
        assert_eq!(le_inf, count, "{histogram}: the +Inf bucket holds every observation");
    }
    assert_eq!(scrape.sum("accrual_grpc_requests_total", &[("code", "InvalidArgument")]), 1.0);
    assert_grpc(&scrape, "RegisterCustomer", "InvalidArgument", 1.0);
    assert_grpc(&scrape, "RegisterCustomer", "Ok", 1.0);
    assert_grpc(&scrape, "DefineMetric", "Ok", 1.0);
    assert_grpc(&scrape, "IngestUsage", "Ok", 1.0);
    assert_grpc(&scrape, "RecordUsage", "Ok", 1.0);
    let calls = scrape.sum("accrual_grpc_requests_total", &[("service", COMMANDS)]);
    assert_eq!(calls, 7.0, "every command call counted once");
    let seconds = [("service", COMMANDS), ("method", "IngestUsage")];
    assert_eq!(scrape.sum("accrual_grpc_request_seconds_count", &seconds), 1.0);
    let health = [("service", "grpc.health.v1.Health"), ("method", "Check"), ("code", "Ok")];
    assert!(scrape.sum("accrual_grpc_requests_total", &health) >= 1.0, "the readiness probe");
    let watch = [("service", "grpc.health.v1.Health"), ("method", "Watch"), ("code", "Cancelled")];
    assert_eq!(scrape.sum("accrual_grpc_requests_total", &watch), 1.0, "a dropped stream");
    let unknown = [("service", "unknown"), ("method", "unknown"), ("code", "Unimplemented")];
    assert_eq!(scrape.sum("accrual_grpc_requests_total", &unknown), 1.0, "an unknown method");
    for p in PROJECTIONS {
        let count = scrape.sum("accrual_projection_batch_seconds_count", &[("projection", p)]);
        assert!(count >= 1.0, "{p}: {count} batches");
    }
    assert!(server.terminate().await.success());
}

/// TCP ports the process `pid` listens on (Linux: its socket inodes in /proc/net/tcp{,6}).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.trim_end_matches(']').to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for row in text.lines().skip(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            let listening = cols.get(3) == Some(&"0A");
            if listening && cols.get(9).is_some_and(|inode| inodes.iter().any(|i| i == inode)) {
                let port = cols[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort_unstable();
    ports
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_and_on_its_own_port_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::start(dir.path(), port);
    server.client().await;
    assert_eq!(listening_ports(server.pid()), vec![port], "only the gRPC port listens");
    assert!(server.terminate().await.success());

    let metrics_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--scheduler-interval-secs", "0", "--log-level", "warn", "--no-dashboard"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("ACCRUAL_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start accrual serve");
    let server = Server::adopt(child, port);
    server.client().await;
    let mut expected = vec![port, metrics_port];
    expected.sort_unstable();
    assert_eq!(listening_ports(server.pid()), expected, "ACCRUAL_METRICS_LISTEN turns it on");
    let scrape = Scrape::get(metrics_port).await.unwrap();
    assert!(scrape.has("accrual_log_events"), "a scrape after a restart");
    assert!(server.terminate().await.success());
}

/// Runs `accrual serve` with `extra` and expects it to exit (30 s at most).
fn serve_until_exit(data_dir: &std::path::Path, extra: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start accrual serve");
    let pid = child.id();
    let (exited, exit) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let timed_out = exit.recv_timeout(Duration::from_secs(30)).is_err();
        if timed_out {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        timed_out
    });
    let out = child.wait_with_output().unwrap();
    let _ = exited.send(());
    assert!(!watchdog.join().unwrap(), "accrual serve did not exit within 30 s");
    out
}

#[test]
fn a_bad_metrics_address_stops_the_start_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = serve_until_exit(dir.path(), &["--metrics-listen", "localhost"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--metrics-listen") && err.contains("invalid socket address"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = serve_until_exit(dir.path(), &["--metrics-listen", &addr]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("--metrics-listen {addr}")), "{err}");
    assert!(err.contains("in use"), "the cause: {err}");
}
