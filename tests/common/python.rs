//! A Python virtualenv for a test that runs a Python program (tests/interop.rs: a grpcio
//! client; tests/export_parquet.rs: pyarrow and DuckDB reading exports): pinned requirements
//! installed from PyPI (wheels only) under CARGO_TARGET_TMPDIR, each step bounded in time,
//! reused while the requirements and the interpreter stay the same. Without python3 (or
//! without a virtualenv / PyPI) such a test says on stderr that it is skipped and why; with
//! ACCRUAL_REQUIRE_INTEROP=1 (set by .ci/run) it fails instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::process::run_bounded;

/// "1": a missing Python environment fails the test instead of skipping it.
pub const REQUIRE_ENV: &str = "ACCRUAL_REQUIRE_INTEROP";
/// The interpreter to use instead of `python3` (then `python`) from PATH.
pub const PYTHON_ENV: &str = "ACCRUAL_PYTHON";
const VENV_CREATE_TIMEOUT_MS: u64 = 120_000;
const PIP_INSTALL_TIMEOUT_MS: u64 = 600_000;
const PROBE_TIMEOUT_MS: u64 = 30_000;
/// Written into the virtualenv once every requirement is installed.
const READY_STAMP: &str = ".accrual-interop-ready";

/// The first interpreter that runs and is Python ≥ 3.9 (what grpcio, pyarrow and DuckDB
/// support): its path and `sys.version`.
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

/// A virtualenv `<name>-venv-<key>` with `requirements` (a pinned requirements file)
/// installed, keyed by the requirements and the interpreter's version; reused when its ready
/// stamp is there. Returns its interpreter.
pub fn python_env(name: &str, requirements: &Path) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).map_err(|e| format!("create {}: {e}", root.display()))?;
    let (python, version) = find_python(root)?;
    let pinned =
        std::fs::read(requirements).map_err(|e| format!("read {}: {e}", requirements.display()))?;
    let key = Sha256::new().chain_update(&pinned).chain_update(version.as_bytes()).finalize();
    let venv = root.join(format!("{name}-venv-{}", &hex::encode(key)[..16]));
    if !venv.join(READY_STAMP).exists() {
        let _ = std::fs::remove_dir_all(&venv);
        create_venv(&python, &venv, requirements, &root.join(name))?;
        std::fs::write(venv.join(READY_STAMP), version).map_err(|e| format!("stamp: {e}"))?;
    }
    Ok(venv_python(&venv))
}

/// `python -m venv`, then pip installs the pinned requirements (wheels only), each bounded;
/// logs go to `<logs>-venv.log` and `<logs>-pip.log`.
fn create_venv(python: &Path, venv: &Path, requirements: &Path, logs: &Path) -> Result<(), String> {
    let log = |what: &str| PathBuf::from(format!("{}-{what}.log", logs.display()));
    let mut create = Command::new(python);
    create.args(["-m", "venv"]).arg(venv);
    run_bounded(&mut create, &log("venv"), VENV_CREATE_TIMEOUT_MS)
        .map_err(|e| format!("python -m venv failed (Debian: apt install python3-venv): {e}"))?;
    let mut install = Command::new(venv_python(venv));
    install
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"])
        .args(["--only-binary=:all:", "--timeout", "60", "--retries", "2", "-r"])
        .arg(requirements);
    run_bounded(&mut install, &log("pip"), PIP_INSTALL_TIMEOUT_MS)
        .map_err(|e| format!("pip install of {} failed: {e}", requirements.display()))?;
    Ok(())
}

/// Says on the real stderr (not captured by the test harness, so never silent) that the test
/// `what` is skipped and why, or fails when ACCRUAL_REQUIRE_INTEROP=1.
pub fn skip_or_fail(what: &str, reason: &str) {
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{what} test required ({REQUIRE_ENV}=1) but its Python environment is missing: {reason}");
    }
    let line = format!(
        "{what} test skipped: {reason}\n  (install python3 ≥ 3.9 with venv and reach PyPI, or set \
         {REQUIRE_ENV}=1 to make this a failure)\n"
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}
