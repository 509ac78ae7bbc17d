//! Interop: a real non-Rust client. tests/interop/client.py (Python grpcio, stubs generated from
//! proto/ by grpcio-tools) drives the real `accrual serve` on a free port: health, reflection,
//! commands, a client-streaming and a bidi usage batch, read-your-writes queries, and errors
//! whose google.rpc details it decodes with grpcio-status. This side then checks, with tonic,
//! what the Python client reports it wrote. The server runs with access control on (an admin
//! bearer token, which the client sends as gRPC call credentials).
//!
//! The Python packages (tests/interop/requirements.txt, pinned) go into a virtualenv under
//! CARGO_TARGET_TMPDIR, reused while the requirements and the interpreter stay the same. Without
//! python3 (or without a virtualenv / PyPI) the test says on stderr that it is skipped and why;
//! with ACCRUAL_REQUIRE_INTEROP=1 (set by .ci/run) it fails instead.

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

/// "1": a missing Python environment fails the test instead of skipping it.
const REQUIRE_ENV: &str = "ACCRUAL_REQUIRE_INTEROP";
/// The interpreter to use instead of `python3` (then `python`) from PATH.
const PYTHON_ENV: &str = "ACCRUAL_PYTHON";
const VENV_CREATE_TIMEOUT_MS: u64 = 120_000;
const PIP_INSTALL_TIMEOUT_MS: u64 = 600_000;
const CLIENT_TIMEOUT_MS: u64 = 180_000;
const PROBE_TIMEOUT_MS: u64 = 30_000;
/// The Python client's checks (tests/interop/client.py): fewer means one was dropped.
const CLIENT_CHECKS_MIN: u64 = 32;
/// Written into the virtualenv once every requirement is installed.
const READY_STAMP: &str = ".accrual-interop-ready";

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("interop")
}

/// The first interpreter that runs and is Python ≥ 3.9 (what grpcio supports): its path and
/// `sys.version`.
fn find_python(logs: &Path) -> Result<(PathBuf, String), String> {
    let candidates: Vec<PathBuf> = match std::env::var_os(PYTHON_ENV) {
        Some(path) => vec![path.into()],
        None => vec!["python3".into(), "python".into()],
    };
    let probe = "import sys; print(sys.version); sys.exit(sys.version_info < (3, 9))";
    let mut reasons = Vec::new();
    for python in candidates {
        let mut cmd = Command::new(&python);
        cmd.args(["-c", probe]);
        match run_bounded(&mut cmd, &logs.join("python-version.log"), PROBE_TIMEOUT_MS) {
            Ok(version) => return Ok((python, version.trim().to_string())),
            Err(reason) => reasons.push(reason),
        }
    }
    Err(format!("no python3 ≥ 3.9 ({})", reasons.join("; ")))
}

/// The virtualenv's interpreter.
fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

/// A virtualenv with tests/interop/requirements.txt installed, keyed by the requirements and
/// the interpreter's version; reused when its ready stamp is there. Returns its interpreter.
fn python_env() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).map_err(|e| format!("create {}: {e}", root.display()))?;
    let (python, version) = find_python(root)?;
    let requirements = interop_dir().join("requirements.txt");
    let pinned = std::fs::read(&requirements).map_err(|e| format!("read requirements: {e}"))?;
    let key = Sha256::new().chain_update(&pinned).chain_update(version.as_bytes()).finalize();
    let venv = root.join(format!("interop-venv-{}", &hex::encode(key)[..16]));
    if !venv.join(READY_STAMP).exists() {
        let _ = std::fs::remove_dir_all(&venv);
        create_venv(&python, &venv, &requirements, root)?;
        std::fs::write(venv.join(READY_STAMP), version).map_err(|e| format!("stamp: {e}"))?;
    }
    Ok(venv_python(&venv))
}

/// `python -m venv`, then pip installs the pinned requirements (wheels only), each bounded.
fn create_venv(python: &Path, venv: &Path, requirements: &Path, logs: &Path) -> Result<(), String> {
    let mut create = Command::new(python);
    create.args(["-m", "venv"]).arg(venv);
    run_bounded(&mut create, &logs.join("interop-venv.log"), VENV_CREATE_TIMEOUT_MS)
        .map_err(|e| format!("python -m venv failed (Debian: apt install python3-venv): {e}"))?;
    let mut install = Command::new(venv_python(venv));
    install
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"])
        .args(["--only-binary=:all:", "--timeout", "60", "--retries", "2", "-r"])
        .arg(requirements);
    run_bounded(&mut install, &logs.join("interop-pip.log"), PIP_INSTALL_TIMEOUT_MS)
        .map_err(|e| format!("pip install of {} failed: {e}", requirements.display()))?;
    Ok(())
}

/// Says on the real stderr (not captured by the test harness, so never silent) that the test
/// is skipped and why, or fails when ACCRUAL_REQUIRE_INTEROP=1.
fn skip_or_fail(reason: &str) {
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("interop test required ({REQUIRE_ENV}=1) but its Python environment is missing: {reason}");
    }
    let line = format!(
        "interop test skipped: {reason}\n  (install python3 ≥ 3.9 with venv and reach PyPI, or set \
         {REQUIRE_ENV}=1 to make this a failure)\n"
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
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
