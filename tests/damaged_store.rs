//! Damaged stores and the papercuts of issue 11, on the real binary.
//!
//! A read-model store (or the log) with bytes flipped in it once made `accrual replay verify`
//! panic inside sled (exit 101). Every command that opens a store (`replay verify`, `export`,
//! `serve`) must instead fail with an error that names the store and says what to do (rebuild
//! a read model from the log; restore a log from a backup), or work, never panic. The bytes are
//! flipped at fixed fractions of each file, so every run damages the same places.
//!
//! Also: the pretty log has no colour codes when stderr is a file, and the help of `serve` and
//! `token new --role` says what they are about.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

/// The exit code of a Rust panic in `main`.
const PANIC_EXIT_CODE: i32 = 101;
/// How long a `serve` on a damaged store may take to give up (it must not come up).
const SERVE_EXIT_WAIT_MS_MAX: u64 = 60_000;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_accrual"));
    c.env("RUST_BACKTRACE", "0").env("ACCRUAL_LOG_LEVEL", "warn");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run accrual")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Demo books, opened once by `replay verify` (so sled has written its snapshot file too, as
/// on any store a server has stopped and started on).
fn books(dir: &Path) -> PathBuf {
    let books = dir.join("books");
    let out = run(&["demo", "--seed", "3", "--months", "1", "--data-dir", path(&books)]);
    assert!(out.status.success(), "demo: {}", text(&out.stderr));
    let out = run(&["replay", "verify", "--data-dir", path(&books)]);
    assert!(out.status.success(), "undamaged books verify: {}", text(&out.stderr));
    books
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Flips every bit of the byte at `fraction` (in 1/1000) of the file's length, plus `extra`.
fn flip(file: &Path, fraction_per_mille: u64, extra: u64) {
    let mut bytes = fs::read(file).unwrap();
    assert!(!bytes.is_empty(), "{} is empty", file.display());
    let len = bytes.len() as u64;
    let at = ((len * fraction_per_mille / 1000 + extra) % len) as usize;
    bytes[at] ^= 0xFF;
    fs::write(file, bytes).unwrap();
}

/// The sled snapshot file of a store directory (`snap.<lsn>`).
fn snapshot_file(store: &Path) -> PathBuf {
    fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("snap."))
        .unwrap_or_else(|| panic!("no snapshot file in {}", store.display()))
}

/// What one command did on a damaged copy.
struct Outcome {
    what: String,
    code: Option<i32>,
    stderr: String,
}

impl Outcome {
    fn of(what: String, out: Output) -> Outcome {
        Outcome { what, code: out.status.code(), stderr: text(&out.stderr) }
    }

    /// Never a panic, whatever the damage.
    fn assert_no_panic(&self) {
        assert_ne!(self.code, Some(PANIC_EXIT_CODE), "{}: exit 101\n{}", self.what, self.stderr);
        assert!(self.code.is_some(), "{}: killed by a signal\n{}", self.what, self.stderr);
        assert!(!self.stderr.contains("panicked"), "{}: a panic\n{}", self.what, self.stderr);
    }

    fn failed(&self) -> bool {
        self.code != Some(0)
    }
}

/// Starts `accrual serve` on `data_dir` and a free port; returns it and its address.
fn spawn_serve(data_dir: &Path) -> (std::process::Child, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = bin()
        .args(["serve", "--listen", &addr, "--scheduler-interval-secs"])
        .args(["0", "--data-dir", path(data_dir)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start accrual serve");
    (child, addr)
}

/// `accrual serve` on `data_dir`: it must stop by itself (the store cannot be opened) or come
/// up; either way it is stopped and its outcome returned.
fn serve(data_dir: &Path) -> Outcome {
    let (mut child, addr) = spawn_serve(data_dir);
    let deadline = Instant::now() + Duration::from_millis(SERVE_EXIT_WAIT_MS_MAX);
    let mut came_up = false;
    while child.try_wait().unwrap().is_none() {
        if std::net::TcpStream::connect(&addr).is_ok() {
            // It came up (the damage was in a place sled never reads): stop it.
            came_up = true;
            child.kill().unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "serve neither came up nor stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let mut outcome = Outcome::of(format!("serve on {}", data_dir.display()), out);
    if came_up {
        outcome.code = Some(0);
    }
    outcome
}

/// `accrual serve` on `data_dir`, left running until it stops by itself or `wait_ms` pass
/// (then it is killed and counts as serving: `code` 0).
fn serve_for(data_dir: &Path, wait_ms: u64) -> Outcome {
    let (mut child, _) = spawn_serve(data_dir);
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let mut still_serving = false;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            still_serving = true;
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let mut outcome = Outcome::of(format!("serve for {wait_ms} ms on {}", data_dir.display()), out);
    if still_serving {
        outcome.code = Some(0);
    }
    outcome
}

/// The damaged-read-model error: names the store and the command that rebuilds it.
fn assert_names_read_model_fix(o: &Outcome, data_dir: &Path) {
    let store = data_dir.join("read-models");
    for needle in [
        format!("read-model store {} is damaged", store.display()),
        format!("rm -r {}", store.display()),
        format!("accrual serve --data-dir {}", data_dir.display()),
    ] {
        assert!(o.stderr.contains(&needle), "{}: no {needle:?} in\n{}", o.what, o.stderr);
    }
}

#[test]
fn a_damaged_read_model_is_an_error_naming_the_store_and_the_rebuild_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let books = books(dir.path());
    // (file, where): the sled config, the snapshot, and the data file at eight places.
    let mut cases: Vec<(&str, u64, u64)> = vec![("conf", 0, 5), ("snap", 0, 0), ("snap", 500, 0)];
    cases.extend((0..8).map(|i| ("db", i * 125, 4_099)));
    let (mut damaged_reported, mut served_damaged_stopped) = (0_u32, 0_u32);
    for (i, (file, per_mille, extra)) in cases.into_iter().enumerate() {
        let copy = dir.path().join(format!("case-{i}-{file}-{per_mille}"));
        copy_dir(&books, &copy);
        let store = copy.join("read-models");
        let target = if file == "snap" { snapshot_file(&store) } else { store.join(file) };
        flip(&target, per_mille, extra);
        let outcomes = [
            Outcome::of(
                format!("replay verify, {file} flipped at {per_mille}‰+{extra}"),
                run(&["replay", "verify", "--data-dir", path(&copy)]),
            ),
            Outcome::of(
                format!("export invoices, {file} flipped at {per_mille}‰+{extra}"),
                run(&["export", "invoices", "--data-dir", path(&copy)]),
            ),
        ];
        for o in &outcomes {
            o.assert_no_panic();
            // A flip sled does not notice (an old, superseded page) may leave a model that
            // verifies or one that differs from its rebuild; anything else must be the
            // damaged-store error.
            if o.failed() && !o.stderr.contains("does not equal its rebuild") {
                assert_names_read_model_fix(o, &copy);
                damaged_reported += 1;
            }
        }
        if file == "db" && outcomes[0].failed() && outcomes[0].stderr.contains("is damaged") {
            // serve opens the read models without reading them whole (its restart must not
            // grow with them) and reads them while serving: the same damage stops it, with the
            // same error, a moment after it came up.
            let served = serve_for(&copy, SERVE_EXIT_WAIT_MS_MAX);
            served.assert_no_panic();
            assert!(served.failed(), "{}: kept serving a damaged store", served.what);
            assert_names_read_model_fix(&served, &copy);
            served_damaged_stopped += 1;
        }
        if file != "db" {
            // sled refuses a damaged config or snapshot on every open.
            assert!(outcomes[0].failed(), "{}: accepted", outcomes[0].what);
            assert_names_read_model_fix(&outcomes[0], &copy);
            let served = serve(&copy);
            served.assert_no_panic();
            assert!(served.failed(), "{}: came up on a damaged store", served.what);
            assert_names_read_model_fix(&served, &copy);
        }
    }
    assert!(damaged_reported >= 3, "damaged-store errors seen: {damaged_reported}");
    assert!(served_damaged_stopped >= 1, "no damaged data file stopped serve");
}

#[test]
fn a_damaged_log_is_an_error_naming_it_and_the_restore_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let books = books(dir.path());
    let mut reported = 0_u32;
    for per_mille in [0_u64, 1, 2, 5, 10, 50, 125, 250] {
        let copy = dir.path().join(format!("log-{per_mille}"));
        copy_dir(&books, &copy);
        let log = copy.join("log");
        flip(&log.join("db"), per_mille, 101);
        for o in [
            Outcome::of(
                format!("replay verify, log flipped at {per_mille}‰"),
                run(&["replay", "verify", "--data-dir", path(&copy)]),
            ),
            serve(&copy),
        ] {
            o.assert_no_panic();
            if o.failed() && o.stderr.contains("damaged") {
                let needle = format!("the event log {} is damaged", log.display());
                assert!(o.stderr.contains(&needle), "{}: no {needle:?} in\n{}", o.what, o.stderr);
                assert!(o.stderr.contains("restore"), "{}: no fix in\n{}", o.what, o.stderr);
                assert!(
                    !o.stderr.contains("still running"),
                    "{}: wrong hint\n{}",
                    o.what,
                    o.stderr
                );
                reported += 1;
            }
        }
    }
    assert!(reported >= 2, "damaged-log errors seen: {reported}");
}

#[tokio::test]
async fn the_pretty_log_written_to_a_file_has_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let port = free_port();
    let child = bin()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--log-format", "pretty"])
        .args(["--scheduler-interval-secs", "0", "--data-dir", path(&dir.path().join("data"))])
        .env("ACCRUAL_LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start accrual serve");
    let server = common::Server::adopt(child, port);
    server.serving("accrual.v1.CommandService").await;
    assert!(server.terminate().await.success());
    let log = fs::read(&log_path).unwrap();
    assert!(text(&log).contains("INFO"), "the log holds info lines: {}", text(&log));
    assert!(!log.contains(&0x1B), "ESC (an ANSI colour code) in a log file:\n{}", text(&log));
}

#[test]
fn serve_and_token_help_say_what_they_serve_and_which_roles_exist() {
    let serve = text(&run(&["serve", "--help"]).stdout);
    for needle in ["CommandService", "QueryService", "AuditService", "health", "reflection"] {
        assert!(serve.contains(needle), "serve --help lacks {needle:?}:\n{serve}");
    }
    assert!(serve.contains("metrics"), "serve --help lacks metrics:\n{serve}");
    let token = text(&run(&["token", "new", "--help"]).stdout);
    for needle in [
        "writer (CommandService)",
        "analyst (QueryService)",
        "auditor (QueryService and AuditService)",
        "admin (everything)",
    ] {
        assert!(token.contains(needle), "token new --help lacks {needle:?}:\n{token}");
    }
}
