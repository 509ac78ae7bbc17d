//! `accrual replay` on a log written by the demo through the real gRPC APIs: `replay verify`
//! finds the live read models equal to a rebuild (and names one that was tampered with), a
//! replay to a position is served read-only by `accrual serve --role query --read-only` and
//! states that position, and bad arguments are refused.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{free_port, Server};

use proto::v1 as pb;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;

fn accrual(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run accrual")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn demo_data(dir: &Path) {
    let out = accrual(&["demo", "--seed", "3", "--months", "2", "--data-dir", path(dir)]);
    assert!(out.status.success(), "demo: {}", String::from_utf8_lossy(&out.stderr));
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// The position every projection reached, from `replay verify`'s report.
fn verified_position(report: &str) -> u64 {
    let line = report.lines().find(|l| l.starts_with("journal")).expect("a journal line");
    let field = line.split_whitespace().find_map(|w| w.strip_prefix("position="));
    field.expect("position=").parse().expect("a number")
}

/// `accrual serve --role query --read-only` over `data_dir`.
async fn read_only(data_dir: &Path) -> (Server, QueryServiceClient<Channel>) {
    let server = Server::start_with(data_dir, free_port(), &["--role", "query", "--read-only"]);
    let channel = server.serving("accrual.v1.QueryService").await;
    (server, QueryServiceClient::new(channel))
}

/// The trial balance as of a late date: its position, and whether debits equal credits.
async fn trial_balance(q: &mut QueryServiceClient<Channel>) -> (u64, bool, usize) {
    let req =
        pb::AsOfRequest { as_recorded_at: None, as_of: "2030-01-01".into(), min_position: None };
    let tb = q.get_trial_balance(req).await.expect("trial balance").into_inner();
    let sum = |f: fn(&pb::TrialBalanceRow) -> &str| -> rust_decimal::Decimal {
        tb.rows.iter().map(|r| f(r).parse::<rust_decimal::Decimal>().unwrap()).sum()
    };
    (tb.position, sum(|r| &r.debit) == sum(|r| &r.credit), tb.rows.len())
}

#[tokio::test]
async fn replay_verify_and_a_read_only_replay_of_demo_books() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    demo_data(&data);

    let verified = accrual(&["replay", "verify", "--data-dir", path(&data)]);
    let report = stdout(&verified);
    assert!(verified.status.success(), "{report}");
    assert_eq!(report.matches(" equal ").count(), 3, "{report}");
    let head = verified_position(&report);
    assert!(head > 100, "the demo wrote a log: {head}");

    let half = head / 2;
    let out = dir.path().join("replay");
    let replayed = accrual(&[
        "replay",
        "--data-dir",
        path(&data),
        "--position",
        &half.to_string(),
        "--out",
        path(&out),
    ]);
    let report = stdout(&replayed);
    assert!(replayed.status.success(), "{report}");
    let last = report.lines().last().unwrap();
    assert!(last.starts_with(&format!("replay events={half} secs=")), "{last}");
    assert!(last.contains(" events_per_s="), "{last}");

    let (past, mut q) = read_only(&out).await;
    let (position, balanced, rows) = trial_balance(&mut q).await;
    assert_eq!(position, half, "the replay states the position it reflects");
    assert!(balanced && rows > 0, "the books as of the cutoff balance");
    drop(past);
    let (live, mut q) = read_only(&data).await;
    assert_eq!(trial_balance(&mut q).await.0, head);
    drop(live);

    let again =
        accrual(&["replay", "--data-dir", path(&data), "--position", "1", "--out", path(&out)]);
    assert!(!again.status.success(), "never writes into an existing directory");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // Someone edits the live invoices read model behind the projections' back.
    {
        let db = projections::open_db(data.join("read-models")).unwrap();
        db.open_tree("projection/invoices").unwrap().insert("inv/forged", "{}").unwrap();
        db.flush().unwrap();
    }
    let tampered = accrual(&["replay", "verify", "--data-dir", path(&data)]);
    assert!(!tampered.status.success(), "{}", stdout(&tampered));
    let err = String::from_utf8_lossy(&tampered.stderr);
    assert!(err.contains("\"invoices\""), "names the projection: {err}");
}

#[test]
fn bad_replay_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing =
        accrual(&["replay", "--data-dir", path(dir.path()), "--position", "1", "--out", "x"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no event log"));
    let both = accrual(&[
        "replay",
        "--position",
        "1",
        "--as-of-recorded",
        "2025-01-01T00:00:00Z",
        "--out",
        "x",
    ]);
    assert!(!both.status.success(), "a cutoff is a position or a recorded time, not both");
    let unknown = accrual(&["replay", "verify", "--data-dir", path(dir.path())]);
    assert!(!unknown.status.success());
    let read_only = accrual(&["serve", "--read-only", "--data-dir", path(dir.path())]);
    assert!(!read_only.status.success());
    assert!(String::from_utf8_lossy(&read_only.stderr).contains("--role query"));
}
