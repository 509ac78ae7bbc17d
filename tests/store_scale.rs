//! The event store opens from its index checkpoint (issue 12) under the real `accrual serve`:
//! a graceful stop leaves a checkpoint covering the whole log (the next open scans nothing); a
//! kill -9 leaves the previous one, and the next open scans only the log written after it,
//! with every acknowledged event there.

mod common;

use std::path::Path;

use common::{free_port, growth_plan, register_acme_and_api_calls, start_sub_1, Server};
use event_store::{EventStore, OpenReport, SledConfig, SledStore};
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;

fn usage(tx: String) -> pb::UsageEvent {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx,
        metric_code: "api_calls".into(),
        occurred_at: Some(prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: 0 }),
        properties: [("calls".to_string(), "1".to_string())].into(),
    }
}

/// Sends `batches` batches of 10 usage events, each acknowledged in full.
async fn ingest(c: &mut CommandServiceClient<tonic::transport::Channel>, tag: &str, batches: u32) {
    for b in 0..batches {
        let events = (0..10).map(|i| usage(format!("{tag}-{b}-{i}"))).collect();
        let batch = pb::UsageBatch { events };
        let mut acks = c.ingest_usage(tokio_stream::iter(vec![batch])).await.unwrap().into_inner();
        let ack = acks.message().await.unwrap().unwrap();
        assert_eq!((ack.accepted, ack.rejected), (10, 0));
    }
}

/// Opens the stopped server's log: (head, how the open built its index).
async fn open(data_dir: &Path) -> (u64, OpenReport) {
    let store = SledStore::open(SledConfig::new(data_dir.join("log"))).unwrap();
    let (head, report) = (store.head(), store.open_report().clone());
    store.close().await.unwrap();
    (head, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_opens_from_its_checkpoint_after_a_stop_and_scans_only_the_tail_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), free_port());
    let mut c = CommandServiceClient::new(server.serving("accrual.v1.CommandService").await);
    register_acme_and_api_calls(&mut c).await;
    start_sub_1(&mut c, growth_plan("0.10")).await;
    ingest(&mut c, "first", 5).await;
    assert!(server.terminate().await.success(), "SIGTERM: graceful exit 0");
    let (stopped_head, report) = open(dir.path()).await;
    assert!(report.from_checkpoint && report.events_scanned == 0, "{report:?}");
    assert!(stopped_head >= 50, "{stopped_head}");

    let server = Server::start(dir.path(), free_port());
    let mut c = CommandServiceClient::new(server.serving("accrual.v1.CommandService").await);
    ingest(&mut c, "second", 3).await;
    server.kill9();
    let (head, report) = open(dir.path()).await;
    assert!(head >= stopped_head + 30, "every acknowledged event is there: {head}");
    assert!(report.from_checkpoint, "{report:?}");
    assert_eq!(report.events_scanned, head - stopped_head, "only the tail: {report:?}");
}
