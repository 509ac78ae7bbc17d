//! Interop: a real non-Rust client. tests/interop/client.py (Python grpcio, stubs generated from
//! proto/ by grpcio-tools) drives the real `accrual serve` on a free port: health, reflection,
//! commands, a client-streaming and a bidi usage batch, read-your-writes queries, and errors
//! whose google.rpc details it decodes with grpcio-status. This side then checks, with tonic,
//! what the Python client reports it wrote. The server runs with access control on (an admin
//! bearer token, which the client sends as gRPC call credentials).
//!
//! The Python packages (tests/interop/requirements.txt, pinned) go into a virtualenv under
//! CARGO_TARGET_TMPDIR (`common::python`), reused while the requirements and the interpreter
//! stay the same. Without python3 (or without a virtualenv / PyPI) the test says on stderr that
//! it is skipped and why; with ACCRUAL_REQUIRE_INTEROP=1 (set by .ci/run) it fails instead.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use proto::v1 as pb;
use proto::v1::query_service_client::QueryServiceClient;
use sha2::{Digest, Sha256};

use common::process::run_bounded;
use common::{free_port, Server};

const CLIENT_TIMEOUT_MS: u64 = 180_000;
/// The Python client's checks (tests/interop/client.py): fewer means one was dropped.
const CLIENT_CHECKS_MIN: u64 = 32;

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("interop")
}

/// The interop virtualenv (tests/interop/requirements.txt): its interpreter.
fn python_env() -> Result<PathBuf, String> {
    common::python::python_env("interop", &interop_dir().join("requirements.txt"))
}

fn skip_or_fail(reason: &str) {
    common::python::skip_or_fail("interop", reason)
}

/// What the Python client reports on its `RESULT {json}` line.
fn client_result(output: &str) -> serde_json::Value {
    let line = output.lines().rev().find_map(|l| l.strip_prefix("RESULT "));
    let line = line.unwrap_or_else(|| panic!("no RESULT line in the client's output:\n{output}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("RESULT {line:?} is not JSON: {e}"))
}

/// A fresh admin token and its `--auth-tokens` entry (`role:hex SHA-256 of the token`).
fn admin_token() -> (String, String) {
    let token = format!("acc_interop_{}", uuid::Uuid::new_v4().simple());
    let entry = format!("admin:{}", hex::encode(Sha256::digest(token.as_bytes())));
    (token, entry)
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let bearer = format!("Bearer {token}").parse().expect("an ASCII token");
    request.metadata_mut().insert("authorization", bearer);
    request
}

/// Runs tests/interop/client.py against `port` with `token`. Err: its exit status and output.
fn run_client(python: &Path, port: u16, token: &str) -> Result<String, String> {
    let mut client = Command::new(python);
    client
        .env("ACCRUAL_TOKEN", token)
        .arg(interop_dir().join("client.py"))
        .args(["--address", &format!("127.0.0.1:{port}"), "--proto-dir"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto"));
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("interop-client-{port}.log"));
    run_bounded(&mut client, &log, CLIENT_TIMEOUT_MS)
}

/// With tonic: the Python client's last write is the last event of the log (a probe lands
/// right after it), and its invoice reads back the same from the query side.
async fn verify_server_side(server: &Server, port: u16, token: &str, result: &serde_json::Value) {
    let last = result["last_position"].as_u64().expect("last_position");
    let mut c = server.client().await;
    let probe = pb::DefineMetricRequest {
        code: "rust_probe".into(),
        name: "Probe".into(),
        aggregation: "count".into(),
        ..Default::default()
    };
    let ack = c.define_metric(with_token(probe, token)).await.unwrap().into_inner();
    assert_eq!(ack.position, last + 1, "the Python client's last write is the log's last event");
    let url = format!("http://127.0.0.1:{port}");
    let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
    let request = pb::InvoiceQuery {
        as_recorded_at: None,
        invoice_id: result["invoice_id"].as_str().expect("invoice_id").into(),
        min_position: Some(last),
    };
    let mut q = QueryServiceClient::new(channel);
    let view = q.get_invoice(with_token(request, token)).await.unwrap().into_inner();
    let invoice = view.invoice.expect("the invoice the Python client billed");
    assert_eq!(
        (invoice.customer_id.as_str(), invoice.total.as_str(), invoice.status.as_str()),
        (
            result["customer_id"].as_str().unwrap(),
            result["invoice_total"].as_str().unwrap(),
            "open"
        )
    );
    assert_eq!(invoice.total, "220.00", "20.00 base fee + 180.00 usage + 10 % tax");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_drives_the_server() {
    let setup_started = Instant::now();
    let python = match python_env() {
        Ok(python) => python,
        Err(reason) => return skip_or_fail(&reason),
    };
    let setup_ms = setup_started.elapsed().as_millis();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (token, entry) = admin_token();
    let server = Server::start_with(dir.path(), port, &["--auth-tokens", &entry]);
    server.serving("accrual.v1.QueryService").await;
    let client_started = Instant::now();
    let client_token = token.clone();
    let output = tokio::task::spawn_blocking(move || run_client(&python, port, &client_token));
    let output = output.await.unwrap();
    let output = output.unwrap_or_else(|failure| panic!("the Python client failed: {failure}"));
    println!("{output}");
    let result = client_result(&output);
    let client_ms = client_started.elapsed().as_millis();
    let checks = result["checks"].as_u64().expect("checks");
    assert!(checks >= CLIENT_CHECKS_MIN, "the Python client ran {checks} checks: {result}");
    verify_server_side(&server, port, &token, &result).await;
    assert!(server.terminate().await.success(), "graceful shutdown");
    let summary = format!(
        "interop: Python grpcio client passed {checks} checks in {client_ms} ms \
         (virtualenv ready in {setup_ms} ms)\n"
    );
    let _ = std::io::stderr().write_all(summary.as_bytes());
}
