//! An append to the JetStream log is all or nothing, on a real nats-server (decision 0045):
//! a multi-chunk append lands whole, a stale one lands not at all, and a batch whose publisher
//! dies before the commit leaves nothing behind. Needs a nats-server 2.12+ (`ACCRUAL_NATS_SERVER`
//! or on PATH); skipped without one unless `ACCRUAL_REQUIRE_NATS=1`.
#![cfg(feature = "nats")]

use std::time::Duration;

use event_store::esdb::nats_cluster::NatsCluster;
use event_store::esdb::nats_log::NatsLog;
use event_store::esdb::{ChunkLog, Expected, Failure, OutChunk};

const SKIPPED: &str =
    "skipped: no nats-server (set ACCRUAL_NATS_SERVER or put nats-server on PATH)";

fn server() -> Option<std::path::PathBuf> {
    let found = NatsCluster::find_server();
    if found.is_none() {
        assert!(std::env::var("ACCRUAL_REQUIRE_NATS").as_deref() != Ok("1"), "{SKIPPED}");
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{SKIPPED}");
    }
    found
}

fn chunk(tag: u8, len: usize) -> OutChunk {
    OutChunk { event_id: uuid::Uuid::new_v4(), bytes: vec![tag; len] }
}

async fn revisions(log: &NatsLog) -> Vec<(u64, u8)> {
    let chunks = log.read(0, 100).await.expect("read");
    chunks.iter().map(|c| (c.revision, c.bytes[0])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_all_or_nothing() {
    let Some(binary) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&binary, 1, dir.path()).await.expect("start nats-server");
    let log = NatsLog::connect(&cluster.url(), "atomic", 1).await.expect("connect");

    // Three chunks of 96 KiB in one append: one batch, stored whole.
    let first = [chunk(1, 96 << 10), chunk(2, 96 << 10), chunk(3, 96 << 10)];
    let at = log.append(Expected::NoStream, &first).await.expect("append");
    assert_eq!(at.map(|p| p.commit), Some(3), "the commit is the third message");
    assert_eq!(revisions(&log).await, vec![(0, 1), (1, 2), (2, 3)]);
    let read = log.read(0, 3).await.unwrap();
    let ids: Vec<_> = read.iter().map(|c| c.event_id).collect();
    assert_eq!(ids, first.iter().map(|c| c.event_id).collect::<Vec<_>>(), "chunk ids kept");

    // A stale append (another node got there first): refused, nothing of it stored.
    let stale = [chunk(4, 10), chunk(5, 10)];
    let refused = log.append(Expected::Exact(1), &stale).await;
    assert!(matches!(refused, Err(Failure::Conflict { .. })), "{refused:?}");
    assert_eq!(revisions(&log).await.len(), 3, "no part of the stale batch landed");

    // A publisher that dies after staging two chunks of a batch, before its commit.
    let raw = async_nats::connect(cluster.url()).await.unwrap();
    for i in 1..=2u32 {
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_BATCH_ID, "dies-before-commit");
        h.insert(async_nats::header::NATS_BATCH_SEQUENCE, i.to_string().as_str());
        if i == 1 {
            h.insert(async_nats::header::NATS_EXPECTED_LAST_SEQUENCE, "3");
        }
        raw.publish_with_headers("atomic.chunks", h, vec![9u8; 10].into()).await.unwrap();
    }
    raw.flush().await.unwrap();
    drop(raw);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(revisions(&log).await.len(), 3, "a batch without its commit is not stored");

    // The log goes on at the next revision, with nothing of the abandoned batch in between.
    let next = [chunk(6, 10), chunk(7, 10)];
    let at = log.append(Expected::Exact(2), &next).await.expect("append after the abandoned batch");
    assert_eq!(at.map(|p| p.commit), Some(5));
    assert_eq!(revisions(&log).await, vec![(0, 1), (1, 2), (2, 3), (3, 6), (4, 7)]);

    // A retried single-chunk publish whose first attempt landed: the server knows its id.
    let once = [chunk(8, 10)];
    log.append(Expected::Exact(4), &once).await.expect("append");
    let again = log.append(Expected::Exact(4), &once).await;
    assert!(matches!(again, Err(Failure::Conflict { .. })), "{again:?}");
    assert_eq!(revisions(&log).await.len(), 6, "stored once");
}
