//! The journal's usage-meter snapshot through the real binary (issue 12,
//! docs/decisions/0028-journal-meter-snapshot.md): a graceful stop stores the meter with the
//! journal's checkpoint; a restart restores it and folds only the log's tail (none after a
//! graceful stop, the events since the snapshot after a kill -9); in every case the journal
//! reaches the head with the same books and `accrual replay verify` finds every read model
//! equal to its rebuild from the log. (Multi-threaded runtime: `Server::terminate` blocks.)

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    free_port, log_records, register_acme_and_api_calls, replay_verify_at, start_sub_1, Server,
};
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;

const SUBSCRIPTIONS: u64 = 20;
const EVENTS_PER_ROUND: u64 = 2_000;
const RESTORED: &str = "in-memory state restored from a snapshot; folding the log's tail";
const FOLDED: &str = "in-memory state folded from the log";
const ENCODED: &str = "state snapshot encoded";
const LOG_WAIT_MS_MAX: u64 = 30_000;
const SLED_FLUSH_WAIT_MS: u64 = 2_000;

/// Streams `EVENTS_PER_ROUND` usage events over sub-1 and `s-0..SUBSCRIPTIONS` (transaction ids
/// from `first`); returns the log's head after them.
async fn stream_usage(c: &mut CommandServiceClient<Channel>, first: u64) -> u64 {
    let now = jiff::Timestamp::now();
    let at = prost_types::Timestamp { seconds: now.as_second(), nanos: 0 };
    let usage = (first..first + EVENTS_PER_ROUND).map(move |n| pb::UsageEvent {
        subscription_id: match n % (SUBSCRIPTIONS + 1) {
            0 => "sub-1".to_string(),
            s => format!("s-{}", s - 1),
        },
        transaction_id: format!("tx-{n}"),
        metric_code: "api_calls".into(),
        occurred_at: Some(at),
        properties: [("calls".to_string(), (n % 9 + 1).to_string())].into(),
    });
    let reply = c.stream_usage(tokio_stream::iter(usage)).await.unwrap().into_inner();
    assert!(reply.results.iter().all(|r| r.status == "accepted"), "{:?}", reply.results.first());
    reply.results.iter().map(|r| r.position).max().unwrap()
}

/// The journal's trial balance once it includes `[0, head)` (its rows, balanced and not empty).
async fn books(server: &Server, head: u64) -> Vec<(String, String, String)> {
    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let tb = pb::AsOfRequest {
        as_recorded_at: None,
        as_of: "2100-01-01".into(),
        min_position: Some(head),
    };
    let tb = tokio::time::timeout(Duration::from_secs(60), q.get_trial_balance(tb)).await;
    let tb = tb.expect("in time").expect("the journal reaches the head").into_inner();
    assert!(tb.position >= head);
    let sum = |f: fn(&pb::TrialBalanceRow) -> &str| -> rust_decimal::Decimal {
        tb.rows.iter().map(|r| f(r).parse::<rust_decimal::Decimal>().unwrap()).sum()
    };
    let (debits, credits) = (sum(|r| &r.debit), sum(|r| &r.credit));
    assert_eq!(debits, credits, "the books balance");
    assert!(!debits.is_zero(), "usage is accrued");
    tb.rows.iter().map(|r| (r.account.clone(), r.debit.clone(), r.credit.clone())).collect()
}

/// The journal's record of `message` in `log`, waiting for it (the warm-up runs in the
/// background after the server is serving).
async fn journal_record(log: &Path, message: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_millis(LOG_WAIT_MS_MAX);
    loop {
        let found: Vec<_> = log_records(log, message)
            .into_iter()
            .filter(|f| f["projection"] == "journal")
            .collect();
        if let Some(record) = found.first() {
            assert_eq!(found.len(), 1, "one {message:?}");
            return record.clone();
        }
        let log_text = || common::process::log_tail(log);
        assert!(Instant::now() < deadline, "no journal {message:?} in\n{}", log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_the_journal_meter_and_folds_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = |name: &str| dir.path().join(name);

    // Ingest, then a graceful stop: the meter is stored with the journal's checkpoint.
    let server = Server::start_logged(&data, free_port(), &log("first.log"));
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    start_sub_1(&mut c, common::growth_plan("0.10")).await;
    for s in 0..SUBSCRIPTIONS {
        let start = pb::StartSubscriptionRequest {
            subscription_id: format!("s-{s}"),
            customer_id: "acme".into(),
            plan_code: "growth".into(),
            ..Default::default()
        };
        c.start_subscription(start).await.unwrap();
    }
    let first_head = stream_usage(&mut c, 0).await;
    books(&server, first_head).await;
    assert!(server.terminate().await.success());
    let stored = journal_record(&log("first.log"), ENCODED).await;
    assert_eq!(
        (stored["position"].as_u64(), stored["stopping"].as_bool()),
        (Some(first_head), Some(true))
    );
    replay_verify_at(&data, first_head);

    // Restart: the meter is restored at the head; nothing is folded.
    let server = Server::start_logged(&data, free_port(), &log("second.log"));
    let restored = journal_record(&log("second.log"), RESTORED).await;
    assert_eq!(restored["snapshot_position"].as_u64(), Some(first_head));
    assert_eq!(restored["tail_events"].as_u64(), Some(0));
    let folded = journal_record(&log("second.log"), FOLDED).await;
    assert_eq!((folded["from"].as_u64(), folded["events"].as_u64()), (Some(first_head), Some(0)));
    let mut c = server.client().await;
    let second_head = stream_usage(&mut c, EVENTS_PER_ROUND).await;
    let before_crash = books(&server, second_head).await;
    // sled flushes the read models every 500 ms: let it write the journal's new checkpoint, so
    // the restart has a tail to fold (a crash that loses it folds less and re-applies more).
    tokio::time::sleep(Duration::from_millis(SLED_FLUSH_WAIT_MS)).await;
    server.kill9();

    // After a kill -9 the journal's checkpoint moved past the snapshot: only the events since
    // it are folded, and the books are those before the crash.
    let server = Server::start_logged(&data, free_port(), &log("third.log"));
    let restored = journal_record(&log("third.log"), RESTORED).await;
    assert_eq!(restored["snapshot_position"].as_u64(), Some(first_head));
    let tail = restored["tail_events"].as_u64().unwrap();
    eprintln!(
        "after the kill -9: snapshot at {first_head}, {tail} events folded, head {second_head}"
    );
    assert!(0 < tail && tail <= second_head - first_head, "{tail} events folded");
    let folded = journal_record(&log("third.log"), FOLDED).await;
    assert_eq!(
        (folded["from"].as_u64(), folded["events"].as_u64()),
        (Some(first_head), Some(tail))
    );
    assert_eq!(books(&server, second_head).await, before_crash);
    assert!(server.terminate().await.success());
    replay_verify_at(&data, second_head);

    // The stop after the crash stored the meter at the new head: the next start folds nothing.
    let server = Server::start_logged(&data, free_port(), &log("fourth.log"));
    let restored = journal_record(&log("fourth.log"), RESTORED).await;
    assert_eq!(restored["snapshot_position"].as_u64(), Some(second_head));
    assert_eq!(restored["tail_events"].as_u64(), Some(0));
    assert_eq!(books(&server, second_head).await, before_crash);
    assert!(server.terminate().await.success());
}
