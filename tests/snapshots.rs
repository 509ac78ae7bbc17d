//! Write-model snapshots through the real binary (issue 12): a graceful stop writes
//! `<data-dir>/write-model.snapshot`; a restart loads it and folds only the log's tail (after a
//! crash, the events since the snapshot); a corrupt snapshot, or one of another data dir's log,
//! is ignored with the reason logged and the model rebuilt from the log. In every case the
//! restarted server answers exactly as before. (Multi-threaded runtime: `Server::terminate`
//! blocks, and the client connections must close meanwhile for the graceful stop to finish.)

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{
    acme_request, free_port, growth_plan, log_records, register_acme_and_api_calls, start_sub_1,
    Server,
};
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use tonic::transport::Channel;

type Client = CommandServiceClient<Channel>;

const SNAPSHOT: &str = "write-model.snapshot";

/// `accrual serve` on `data_dir` with its JSON log (info level) in `log`.
fn start_logged(data_dir: &Path, log: &Path) -> Server {
    start_logged_with(data_dir, log, &[])
}

/// [`start_logged`] with `extra` flags (e.g. `--store esdb://...`).
fn start_logged_with(data_dir: &Path, log: &Path, extra: &[&str]) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--scheduler-interval-secs", "0"])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .env("ACCRUAL_LOG_LEVEL", "info")
        .env("ACCRUAL_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start accrual serve");
    Server::adopt(child, port)
}

fn one(log: &Path, message: &str) -> serde_json::Value {
    let found = log_records(log, message);
    assert_eq!(found.len(), 1, "one {message:?} in\n{}", std::fs::read_to_string(log).unwrap());
    found[0].clone()
}

fn usage(tx: &str, calls: u32) -> pb::UsageEvent {
    // One instant for the whole run: a retry must carry the same payload to be a duplicate.
    static AT: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let at = *AT.get_or_init(|| jiff::Timestamp::now().as_second());
    pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx.into(),
        metric_code: "api_calls".into(),
        occurred_at: Some(prost_types::Timestamp { seconds: at, nanos: 0 }),
        properties: [("calls".to_string(), calls.to_string())].into(),
    }
}

async fn record(c: &mut Client, from: u32, count: u32) -> u64 {
    let items: Vec<_> = (from..from + count).map(|n| usage(&format!("tx-{n}"), n % 50)).collect();
    let reply = c.stream_usage(tokio_stream::iter(items)).await.unwrap().into_inner();
    assert!(reply.results.iter().all(|r| r.status == "accepted"), "{reply:?}");
    reply.results.last().unwrap().position
}

/// What the write model answers: the current usage draft, a duplicate's original position
/// and a keyed command's replay.
async fn answers(c: &mut Client) -> String {
    let draft = c
        .get_current_usage(pb::GetCurrentUsageRequest { subscription_id: "sub-1".into() })
        .await
        .unwrap()
        .into_inner();
    let duplicate = c.record_usage(usage("tx-3", 3)).await.unwrap().into_inner();
    assert_eq!(duplicate.status, "duplicate");
    let replay = c.register_customer(acme_request()).await.unwrap().into_inner();
    assert!(replay.duplicate);
    format!("{draft:?}\nduplicate at {}\nreplay at {}", duplicate.position, replay.position)
}

/// Books with usage on a data dir, stopped gracefully; returns the answers and the log's
/// length.
async fn books(dir: &Path) -> (String, u64) {
    let log = dir.join("first.log");
    let server = start_logged(&dir.join("data"), &log);
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    start_sub_1(&mut c, growth_plan("0.50")).await;
    let head = record(&mut c, 0, 40).await;
    let before = answers(&mut c).await;
    drop(c);
    assert!(server.terminate().await.success());
    let written = one(&log, "write-model snapshot written");
    assert_eq!(written["position"], head, "the snapshot at shutdown covers the whole log");
    assert!(dir.join("data").join(SNAPSHOT).exists());
    (before, head)
}

/// Restarts on `dir`'s data, checks the answers, and returns the restart's log.
async fn restart(dir: &Path, name: &str, expected: &str) -> PathBuf {
    let log = dir.join(name);
    let server = start_logged(&dir.join("data"), &log);
    let mut c = server.client().await;
    assert_eq!(answers(&mut c).await, expected, "the same answers after the restart");
    drop(c);
    assert!(server.terminate().await.success());
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_the_snapshot_and_folds_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (before, head) = books(dir.path()).await;
    let log = restart(dir.path(), "second.log", &before).await;
    let loaded = one(&log, "write model loaded from a snapshot; folded the log's tail");
    assert_eq!(
        (loaded["snapshot_position"].clone(), loaded["tail_events"].clone()),
        (head.into(), 0.into())
    );
    assert!(log_records(&log, "write model rebuilt from the log").is_empty());

    // A crash after more usage: the next start loads the last snapshot and folds the rest.
    let log = dir.path().join("third.log");
    let server = start_logged(&dir.path().join("data"), &log);
    let mut c = server.client().await;
    let snapshot_at = one(&log, "write model loaded from a snapshot; folded the log's tail")
        ["snapshot_position"]
        .as_u64()
        .unwrap();
    let later = record(&mut c, 100, 25).await;
    let after = answers(&mut c).await;
    server.kill9();
    let log = restart(dir.path(), "fourth.log", &after).await;
    let loaded = one(&log, "write model loaded from a snapshot; folded the log's tail");
    assert_eq!(loaded["snapshot_position"], snapshot_at);
    assert_eq!(loaded["tail_events"], later - snapshot_at, "only the events after the snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_ignored_and_the_model_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (before, head) = books(dir.path()).await;
    let path = dir.path().join("data").join(SNAPSHOT);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    let log = restart(dir.path(), "second.log", &before).await;
    let ignored =
        one(&log, "write-model snapshot ignored; rebuilding the write model from the log");
    assert!(ignored["reason"].as_str().unwrap().contains("SHA-256"), "{ignored}");
    let rebuilt = one(&log, "write model rebuilt from the log");
    assert_eq!(rebuilt["events"], head);
    // The graceful stop wrote a good snapshot again.
    let log = restart(dir.path(), "third.log", &before).await;
    one(&log, "write model loaded from a snapshot; folded the log's tail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_another_data_dir_is_ignored() {
    let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ((before, head), (_, their_head)) = tokio::join!(books(ours.path()), books(theirs.path()));
    assert_eq!(head, their_head, "the same commands: the same length, other events");
    let snapshot = |d: &tempfile::TempDir| d.path().join("data").join(SNAPSHOT);
    std::fs::copy(snapshot(&theirs), snapshot(&ours)).unwrap();
    let log = restart(ours.path(), "second.log", &before).await;
    let ignored =
        one(&log, "write-model snapshot ignored; rebuilding the write model from the log");
    assert!(ignored["reason"].as_str().unwrap().contains("another hash"), "{ignored}");
    one(&log, "write model rebuilt from the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_node_on_eventstoredb_keeps_its_snapshot_in_its_data_dir() {
    let fake = esdb_fake::FakeServer::start().await.expect("start esdb-fake");
    let url = fake.url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = format!("{url}{sep}stream=accrual-snapshots");
    let flags = ["--store", store.as_str(), "--role", "command"];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("first.log");
    let server = start_logged_with(&data, &log, &flags);
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    start_sub_1(&mut c, growth_plan("0.50")).await;
    let head = record(&mut c, 0, 30).await;
    let before = answers(&mut c).await;
    drop(c);
    assert!(server.terminate().await.success());
    assert_eq!(one(&log, "write-model snapshot written")["position"], head);
    let log = dir.path().join("second.log");
    let server = start_logged_with(&data, &log, &flags);
    let mut c = server.client().await;
    assert_eq!(answers(&mut c).await, before);
    let loaded = one(&log, "write model loaded from a snapshot; folded the log's tail");
    assert_eq!(loaded["snapshot_position"], head);
    drop(c);
    assert!(server.terminate().await.success());
}
