//! `accrual audit verify` and `accrual audit digest` on a real log: written by `accrual serve`
//! over gRPC, then audited as is, and tampered with directly in sled (each tampering on a fresh
//! copy of the data dir), where the audit must name the first broken position and exit non-zero.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{free_port, growth_plan, register_acme_and_api_calls, start_sub_1, Server};
use event_store::envelope::{decode_chunk, encode_chunk};
use event_store::{
    compute_hash, verify_chain, EventStore, Position, RecordedEvent, SledConfig, SledStore,
    GENESIS_HASH, LOG_TREE, SLED_SEGMENT_BYTES,
};
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: 0 }
}

fn usage(tx: String, calls: u32) -> pb::UsageEvent {
    pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx,
        metric_code: "api_calls".into(),
        occurred_at: Some(now()),
        properties: [("calls".to_string(), calls.to_string())].into(),
    }
}

/// Writes a small real log through `accrual serve`: a customer, a metric, a plan, a
/// subscription, then usage one event at a time and in batches (one commit, so one chunk of
/// several events, per batch). Stops the server with SIGTERM.
async fn write_log(data_dir: &Path) {
    let server = Server::start(data_dir, free_port());
    let mut c = CommandServiceClient::new(server.serving("accrual.v1.CommandService").await);
    register_acme_and_api_calls(&mut c).await;
    start_sub_1(&mut c, growth_plan("0.10")).await;
    for i in 0..3 {
        let one = c.record_usage(usage(format!("one-{i}"), i + 1)).await.unwrap().into_inner();
        assert_eq!(one.status, "accepted");
    }
    for b in 0..4 {
        let events = (0..5).map(|i| usage(format!("batch-{b}-{i}"), 10 + i)).collect();
        let batch = pb::UsageBatch { events };
        let mut acks = c.ingest_usage(tokio_stream::iter(vec![batch])).await.unwrap().into_inner();
        let ack = acks.message().await.unwrap().unwrap();
        assert_eq!((ack.accepted, ack.rejected), (5, 0));
    }
    assert!(server.terminate().await.success(), "SIGTERM: graceful exit 0");
}

/// Runs `accrual audit <args> --data-dir <dir>`: (success, stdout, stderr).
fn audit(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run accrual audit");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Runs `audit verify` and asserts it fails naming `position` first; returns its stdout.
fn assert_broken_at(data_dir: &Path, position: Position) -> String {
    let (ok, stdout, stderr) = audit(data_dir, &["verify"]);
    eprintln!("{stdout}{stderr}");
    assert!(!ok, "a tampered log must fail the audit: {stdout}");
    let first = stdout.lines().next().unwrap_or_default();
    let expected = format!("chain broken at position {position}: ");
    assert!(first.starts_with(&expected), "expected {expected:?}, got: {stdout}");
    assert!(stderr.contains(&format!("broken at position {position}")), "{stderr}");
    stdout
}

/// The log as the store serves it (the store is opened and dropped: the server is stopped).
async fn stored_events(data_dir: &Path) -> Vec<RecordedEvent> {
    let store = SledStore::open(SledConfig::new(data_dir.join("log"))).unwrap();
    let events = store.read_all(0, usize::MAX).await.unwrap();
    store.close().await.unwrap();
    events
}

/// Opens the log's sled tree directly (as an attacker with disk access would).
fn raw_log(data_dir: &Path) -> (sled::Db, sled::Tree) {
    let db = sled::Config::new()
        .path(data_dir.join("log"))
        .segment_size(SLED_SEGMENT_BYTES)
        .open()
        .expect("open the log's sled database");
    let tree = db.open_tree(LOG_TREE).unwrap();
    (db, tree)
}

/// Every chunk: its key and its decoded events.
fn chunks(tree: &sled::Tree) -> Vec<(Position, Vec<RecordedEvent>)> {
    let decode = |(k, v): (sled::IVec, sled::IVec)| {
        let first = Position::from_be_bytes(k.as_ref().try_into().unwrap());
        (first, decode_chunk(first, &v).unwrap())
    };
    tree.iter().map(|item| decode(item.unwrap())).collect()
}

/// A fresh copy of `from` (the log and the read models) in a new temp dir.
fn copy_of(from: &Path) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target: PathBuf = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(from, dir.path());
    dir
}

/// Tampers with a copy of the log: `f` gets the chunks and writes through the tree.
fn tampered(
    original: &Path,
    f: impl FnOnce(&sled::Tree, Vec<(Position, Vec<RecordedEvent>)>),
) -> tempfile::TempDir {
    let copy = copy_of(original);
    let (db, tree) = raw_log(copy.path());
    f(&tree, chunks(&tree));
    db.flush().unwrap();
    drop((tree, db));
    copy
}

fn key(position: Position) -> [u8; 8] {
    position.to_be_bytes()
}

/// The first chunk (after the first) holding at least 3 events that is not the last chunk.
fn middle_chunk(chunks: &[(Position, Vec<RecordedEvent>)]) -> (Position, Vec<RecordedEvent>) {
    let last = chunks.len() - 1;
    let found = chunks[1..last].iter().find(|(_, events)| events.len() >= 3);
    found.expect("a usage batch is stored as one chunk of several events").clone()
}

fn line_value<'a>(stdout: &'a str, prefix: &str, field: &str) -> &'a str {
    let line = stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| {
        panic!("no line starting with {prefix:?} in {stdout:?}");
    });
    let at = line.find(&format!("{field}=")).unwrap_or_else(|| panic!("no {field} in {line:?}"));
    line[at + field.len() + 1..].split(' ').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verifies_a_real_log_and_finds_every_tampering() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path()).await;
    let events = stored_events(dir.path()).await;
    let n = events.len() as u64;
    let head = verify_chain(events.clone(), GENESIS_HASH).unwrap();
    assert_eq!(n, 4 + 3 + 4 * 5, "the commands above appended one event each, usage included");

    // (a) The intact log.
    let (ok, stdout, stderr) = audit(dir.path(), &["verify"]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(stdout.trim(), format!("chain ok events={n} head={}", hex::encode(head)));
    eprintln!("audit verify on {n} events: {}", stderr.trim());
    let (ok, stdout, stderr) = audit(dir.path(), &["digest"]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(stdout.trim(), format!("position={n} head={}", hex::encode(head)));
    let (kept_position, kept) =
        (line_value(&stdout, "position=", "position"), line_value(&stdout, "position=", "head"));
    let with_kept = ["verify", "--digest", kept, "--position", kept_position];
    let (ok, stdout, stderr) = audit(dir.path(), &with_kept);
    assert!(ok && stdout.contains(&format!("digest ok position={n}")), "{stdout}{stderr}");
    // A digest in the middle is the hash of the event before the position; 0 is genesis.
    let (ok, stdout, _) = audit(dir.path(), &["digest", "--position", "5"]);
    assert!(ok);
    assert_eq!(stdout.trim(), format!("position=5 head={}", hex::encode(events[4].hash)));
    let mid = hex::encode(events[4].hash);
    assert!(audit(dir.path(), &["verify", "--digest", &mid, "--position", "5"]).0);
    let (ok, stdout, _) = audit(dir.path(), &["digest", "--position", "0"]);
    assert!(ok && stdout.trim() == format!("position=0 head={}", "0".repeat(64)), "{stdout}");
    // A wrong digest, and positions beyond the head.
    let wrong = hex::encode(events[3].hash);
    let (ok, stdout, stderr) =
        audit(dir.path(), &["verify", "--digest", &wrong, "--position", "5"]);
    assert!(!ok, "a digest that is not the chain's must fail: {stdout}");
    assert!(stdout.contains(&wrong) && stdout.contains(&mid), "names both: {stdout}");
    assert!(stderr.contains("digest mismatch at position 5"), "{stderr}");
    let beyond = (n + 1).to_string();
    let (ok, _, stderr) = audit(dir.path(), &["digest", "--position", &beyond]);
    assert!(!ok && stderr.contains("beyond the head"), "{stderr}");
    let (ok, _, stderr) = audit(dir.path(), &["verify", "--digest", kept, "--position", &beyond]);
    assert!(!ok && stderr.contains("beyond the head"), "{stderr}");
    let (ok, _, stderr) = audit(dir.path(), &["verify", "--digest", "abc", "--position", "1"]);
    assert!(!ok && stderr.contains("--digest"), "a malformed digest is refused: {stderr}");

    // (b1) One byte of one event's payload changed, the chunk re-encoded with the stored hashes:
    // only the hash check can see it (the store opens such a log without complaint).
    let mut altered_at = 0;
    let mut altered_hash = [0; 32];
    let copy = tampered(dir.path(), |tree, chunks| {
        let (first, mut evs) = middle_chunk(&chunks);
        let i = evs.len() / 2;
        evs[i].payload[0] ^= 0x20;
        (altered_at, altered_hash) = (evs[i].position, compute_hash(&evs[i]));
        tree.insert(key(first), encode_chunk(&evs)).unwrap();
    });
    drop(SledStore::open(SledConfig::new(copy.path().join("log"))).expect("opens: links intact"));
    let stdout = assert_broken_at(copy.path(), altered_at);
    assert!(stdout.contains("altered event"), "{stdout}");
    let stored = hex::encode(events[altered_at as usize].hash);
    let expected_line = format!("expected: {}", hex::encode(altered_hash));
    assert!(stdout.contains(&expected_line), "recomputed hash: {stdout}");
    assert!(stdout.contains(&format!("actual:   {stored}")), "stored hash: {stdout}");

    // (b2) One event removed from the middle of a chunk; the rest re-encoded as two valid
    // chunks. The store refuses to open this log; the audit still names the gap.
    let mut removed_at = 0;
    let copy = tampered(dir.path(), |tree, chunks| {
        let (first, evs) = middle_chunk(&chunks);
        let i = evs.len() / 2;
        removed_at = evs[i].position;
        tree.insert(key(first), encode_chunk(&evs[..i])).unwrap();
        tree.insert(key(removed_at + 1), encode_chunk(&evs[i + 1..])).unwrap();
    });
    assert!(SledStore::open(SledConfig::new(copy.path().join("log"))).is_err());
    let stdout = assert_broken_at(copy.path(), removed_at);
    let found = format!("position {}", removed_at + 1);
    assert!(stdout.contains(&format!("actual:   {found}")), "{stdout}");

    // (b3) Two adjacent events swapped, each taking the other's position (so the chunk stays
    // valid): the first of the two slots no longer links to its predecessor.
    let mut swapped_at = 0;
    let copy = tampered(dir.path(), |tree, chunks| {
        let (first, mut evs) = middle_chunk(&chunks);
        let i = evs.len() / 2;
        swapped_at = evs[i].position;
        evs.swap(i, i + 1);
        (evs[i].position, evs[i + 1].position) = (swapped_at, swapped_at + 1);
        tree.insert(key(first), encode_chunk(&evs)).unwrap();
    });
    let stdout = assert_broken_at(copy.path(), swapped_at);
    assert!(stdout.contains("broken link"), "{stdout}");
    let before = hex::encode(events[swapped_at as usize - 1].hash);
    let carried = hex::encode(events[swapped_at as usize].hash);
    assert!(stdout.contains(&format!("expected: {before}")), "{stdout}");
    assert!(stdout.contains(&format!("actual:   {carried}")), "{stdout}");

    // (b4) Bytes that no longer decode (a record's length prefix overwritten): reported at
    // that record.
    let mut garbled_at = 0;
    let copy = tampered(dir.path(), |tree, chunks| {
        let (first, evs) = middle_chunk(&chunks);
        garbled_at = first;
        let mut value = encode_chunk(&evs);
        value[13..17].copy_from_slice(&u32::MAX.to_be_bytes());
        tree.insert(key(first), value).unwrap();
    });
    let stdout = assert_broken_at(copy.path(), garbled_at);
    assert!(stdout.contains("undecodable"), "{stdout}");

    // (c) What the chain alone cannot see, and the kept digest does: the last commit dropped,
    // or the whole chain rewritten with recomputed hashes after an edit.
    let copy = tampered(dir.path(), |tree, chunks| {
        let (last, _) = chunks.last().unwrap();
        tree.remove(key(*last)).unwrap();
    });
    assert!(audit(copy.path(), &["verify"]).0, "a shorter chain is still a valid chain");
    let (ok, _, stderr) = audit(copy.path(), &with_kept);
    assert!(!ok && stderr.contains("beyond the head"), "{stderr}");
    let copy = tampered(dir.path(), |tree, chunks| {
        let mut prev = GENESIS_HASH;
        for (first, mut evs) in chunks {
            for ev in &mut evs {
                if ev.position == 6 {
                    ev.payload[0] ^= 0x20;
                }
                ev.prev_hash = prev;
                ev.hash = compute_hash(ev);
                prev = ev.hash;
            }
            tree.insert(key(first), encode_chunk(&evs)).unwrap();
        }
    });
    let (ok, stdout, _) = audit(copy.path(), &["verify"]);
    assert!(ok, "a rewritten chain is internally consistent: {stdout}");
    let (ok, stdout, stderr) = audit(copy.path(), &with_kept);
    assert!(!ok && stderr.contains(&format!("digest mismatch at position {n}")), "{stderr}");
    assert!(stdout.contains(kept), "names the kept digest: {stdout}");
    let (ok, _, _) = audit(copy.path(), &["verify", "--digest", &mid, "--position", "5"]);
    assert!(ok, "the prefix before the edit still matches its digest");
}

/// The audit needs the log to itself, and says so, while the server runs; and it never creates
/// a data dir that is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_refuses_a_running_server_and_a_missing_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), free_port());
    server.serving("accrual.v1.CommandService").await;
    let (ok, _, stderr) = audit(dir.path(), &["verify"]);
    assert!(!ok && stderr.contains("stop `accrual serve` first"), "{stderr}");
    assert!(server.terminate().await.success());
    let (ok, stdout, stderr) = audit(dir.path(), &["verify"]);
    assert!(
        ok && stdout.trim() == format!("chain ok events=0 head={}", "0".repeat(64)),
        "{stderr}"
    );

    let missing = dir.path().join("nope");
    let (ok, _, stderr) = audit(&missing, &["digest"]);
    assert!(!ok && stderr.contains("no sled event log"), "{stderr}");
    assert!(!missing.exists(), "nothing created");
}
