//! Issue 12, exactly-once for a subscription's whole life (decision 0024): through the real
//! binary on a real port with real sled, a retried usage transaction is answered as a
//! duplicate with its original position after its period closed, after a restart (clean and
//! kill -9), and after the dedup index's directory was deleted (rebuilt from the log); the
//! same id with another payload is ALREADY_EXISTS; a repeat inside one stream is a duplicate
//! of the first. None of these appends anything.

mod common;

use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use tonic::transport::Channel;
use tonic::Code;

use common::{
    append_probe, free_port, growth_plan, in_first_period, register_acme_and_api_calls,
    start_sub_1_backdated, Server,
};

type Client = CommandServiceClient<Channel>;

/// A usage event of `sub-1` inside its first (backdated, ended) period; the instant is fixed
/// once, so a resent event is byte-for-byte the same.
fn usage(tx: &str, calls: &str) -> pb::UsageEvent {
    static AT: std::sync::OnceLock<prost_types::Timestamp> = std::sync::OnceLock::new();
    pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx.into(),
        metric_code: "api_calls".into(),
        occurred_at: Some(*AT.get_or_init(in_first_period)),
        properties: [("calls".to_string(), calls.to_string())].into(),
    }
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: jiff::Timestamp::now().as_second(), nanos: 0 }
}

/// The retries every check repeats: `tx-1` and `tx-2` are duplicates at their original
/// positions, `tx-1` with another payload is ALREADY_EXISTS, and nothing is appended.
async fn retries_are_duplicates(c: &mut Client, originals: (u64, u64), when: &str) {
    let before = append_probe(c).await;
    let again = c.record_usage(usage("tx-1", "10")).await.unwrap().into_inner();
    assert_eq!((again.status.as_str(), again.position), ("duplicate", originals.0), "{when}");
    let batch = vec![usage("tx-2", "5"), usage("tx-1", "10")];
    let reply = c.stream_usage(tokio_stream::iter(batch)).await.unwrap().into_inner();
    let answers: Vec<_> = reply.results.iter().map(|r| (r.status.as_str(), r.position)).collect();
    assert_eq!(answers, [("duplicate", originals.1), ("duplicate", originals.0)], "{when}");
    let changed = c.record_usage(usage("tx-1", "11")).await.expect_err(when);
    assert_eq!(changed.code(), Code::AlreadyExists, "{when}: {changed:?}");
    assert_eq!(append_probe(c).await, before + 1, "{when}: a retry appends nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_transaction_is_a_duplicate_for_the_subscriptions_whole_life() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    c.publish_plan(growth_plan("0.50")).await.unwrap();
    start_sub_1_backdated(&mut c, "growth").await;

    let first = c.record_usage(usage("tx-1", "10")).await.unwrap().into_inner();
    assert_eq!(first.status, "accepted");
    // An id repeated inside one stream: the second is a duplicate of the first.
    let batch = vec![usage("tx-2", "5"), usage("tx-2", "5"), usage("tx-2", "6")];
    let reply = c.stream_usage(tokio_stream::iter(batch)).await.unwrap().into_inner();
    let answers: Vec<_> = reply.results.iter().map(|r| (r.status.as_str(), r.code)).collect();
    assert_eq!(
        answers,
        [("accepted", 0), ("duplicate", 0), ("rejected", Code::AlreadyExists as i32)]
    );
    assert_eq!(reply.results[1].position, reply.results[0].position);
    let originals = (first.position, reply.results[0].position);
    retries_are_duplicates(&mut c, originals, "in the open period").await;

    // The billing run closes the first period: a new event in it is PERIOD_CLOSED, a retry of
    // a recorded one is still its duplicate (it was billed, not lost).
    let run = pb::RunBillingRequest { as_of: Some(now()), ..Default::default() };
    let run = c.run_billing(run).await.unwrap().into_inner();
    assert!(!run.invoices.is_empty(), "the first period closed: {run:?}");
    let late = c.record_usage(usage("tx-3", "1")).await.expect_err("the period is closed");
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    retries_are_duplicates(&mut c, originals, "after the period closed").await;

    // (b) After a clean restart on the same data dir (the index flushed at close) ...
    drop(c); // an open connection would hold the graceful shutdown
    assert!(server.terminate().await.success());
    assert!(dir.path().join("dedup").is_dir(), "the index lives in <data-dir>/dedup");
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    retries_are_duplicates(&mut c, originals, "after a restart").await;
    // ... and after a kill -9 (what was not flushed is noted again from the log).
    server.kill9();
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    retries_are_duplicates(&mut c, originals, "after a kill -9").await;

    // (c) The index is derived data: deleted, it is rebuilt from the log.
    drop(c); // an open connection would hold the graceful shutdown
    assert!(server.terminate().await.success());
    std::fs::remove_dir_all(dir.path().join("dedup")).unwrap();
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    retries_are_duplicates(&mut c, originals, "after the index was deleted").await;

    // Damaged files are rebuilt too (never a panic).
    drop(c); // an open connection would hold the graceful shutdown
    assert!(server.terminate().await.success());
    for entry in std::fs::read_dir(dir.path().join("dedup")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::write(&path, vec![0xA5u8; 512]).unwrap();
        }
    }
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    retries_are_duplicates(&mut c, originals, "after the index was damaged").await;
    drop(server);
}
