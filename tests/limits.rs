//! The server's limits on the real binary: each one, exceeded, is refused with
//! RESOURCE_EXHAUSTED, INVALID_ARGUMENT or DEADLINE_EXCEEDED and a message naming the limit,
//! appends nothing (the log's head, read through AuditService.GetDigest, does not move), and
//! a well-behaved client on another connection is served during and after.

mod common;

use std::time::{Duration, Instant};

use proto::v1 as pb;
use proto::v1::audit_service_client::AuditServiceClient;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use common::{free_port, Server};

type Client = CommandServiceClient<Channel>;

/// A server with `flags` and the books `sub-1` bills usage on (acme, api_calls, plan growth).
async fn books(dir: &std::path::Path, flags: &[&str]) -> (Server, Client) {
    let server = Server::start_with(dir, free_port(), flags);
    let mut c = server.client().await;
    common::register_acme_and_api_calls(&mut c).await;
    let model = pb::charge::Model::Standard(pb::StandardModel { unit_price: "0.01".into() });
    let charge =
        pb::Charge { metric_code: "api_calls".into(), pay_in_advance: false, model: Some(model) };
    let plan = pb::PublishPlanRequest {
        code: "growth".into(),
        name: "Growth".into(),
        currency: "USD".into(),
        interval: "monthly".into(),
        base_fee: "20".into(),
        charges: vec![charge],
        ..Default::default()
    };
    c.publish_plan(plan).await.unwrap();
    let start = pb::StartSubscriptionRequest {
        subscription_id: "sub-1".into(),
        customer_id: "acme".into(),
        plan_code: "growth".into(),
        ..Default::default()
    };
    c.start_subscription(start).await.unwrap();
    (server, c)
}

fn usage(tx: &str) -> pb::UsageEvent {
    pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx.into(),
        metric_code: "api_calls".into(),
        occurred_at: Some(command_service::convert::to_timestamp(jiff::Timestamp::now())),
        properties: [("calls".to_string(), "1".to_string())].into(),
    }
}

fn batch(prefix: &str, n: usize) -> pb::UsageBatch {
    pb::UsageBatch { events: (0..n).map(|i| usage(&format!("{prefix}-{i}"))).collect() }
}

/// The log's head: the number of events appended so far.
async fn head(server: &Server) -> u64 {
    let channel = server.serving("accrual.v1.AuditService").await;
    let mut audit = AuditServiceClient::new(channel);
    let digest = audit.get_digest(pb::GetDigestRequest::default()).await.unwrap();
    digest.into_inner().position
}

/// A well-behaved client on its own connection: one usage event, accepted.
async fn served(server: &Server, tx: &str) {
    let reply = server.client().await.record_usage(usage(tx)).await.unwrap().into_inner();
    assert_eq!(reply.status, "accepted", "{tx}");
}

/// Asserts `result` is refused with `code` and a message naming `named`.
fn refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, named: &str) -> Status {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(named), "{named} not in {:?}", status.message());
    status
}

/// An IngestUsage stream held open (it counts as a call in progress until dropped).
struct Held {
    _events: mpsc::Sender<pb::UsageBatch>,
    _replies: tonic::Streaming<pb::UsageBatchResult>,
}

impl Held {
    /// Ends the call as a client does when it is done: closes its side, reads to the end.
    async fn finish(self) {
        let Held { _events: events, _replies: mut replies } = self;
        drop(events);
        while replies.message().await.unwrap().is_some() {}
    }
}

async fn hold(c: &mut Client) -> Held {
    let (tx, rx) = mpsc::channel(1);
    let replies = c.ingest_usage(ReceiverStream::new(rx)).await.unwrap().into_inner();
    Held { _events: tx, _replies: replies }
}

/// Retries `tx` on `c` (whose calls were refused while others held places) until served.
async fn served_again(c: &mut Client, tx: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.record_usage(usage(tx)).await {
            Ok(reply) => return assert_eq!(reply.into_inner().status, "accepted"),
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("not served again: {s:?}"),
        }
    }
}

#[tokio::test]
async fn oversize_messages_are_resource_exhausted_on_every_service() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = books(dir.path(), &["--message-bytes-max", "2048"]).await;
    let before = head(&server).await;
    let mut big = usage("big-1");
    big.properties.extend((0..20).map(|i| (format!("k{i}"), "v".repeat(200))));
    let status = refused(c.record_usage(big).await, Code::ResourceExhausted, "message_bytes_max");
    assert!(status.message().contains("2048"), "{status:?}");
    // In a bidi stream the status comes in the trailers.
    let mut acks = c.ingest_usage(tokio_stream::iter([batch("big", 40)])).await.unwrap();
    let result = acks.get_mut().message().await;
    refused(result, Code::ResourceExhausted, "message_bytes_max");
    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let query = pb::CurrentUsageQuery { subscription_id: "x".repeat(4_000), min_position: None };
    refused(q.get_current_usage(query).await, Code::ResourceExhausted, "message_bytes_max");
    assert_eq!(head(&server).await, before, "nothing appended");
    served(&server, "small-1").await;
    c.record_usage(usage("small-2")).await.expect("the same connection is served after");
}

#[tokio::test]
async fn batch_and_per_call_event_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--batch-events-max", "5", "--stream-events-max", "8"];
    let (server, mut c) = books(dir.path(), &flags).await;
    let before = head(&server).await;
    let mut acks = c.ingest_usage(tokio_stream::iter([batch("a", 6)])).await.unwrap();
    refused(acks.get_mut().message().await, Code::ResourceExhausted, "batch_events_max");
    assert_eq!(head(&server).await, before, "an oversize batch appends nothing");
    // 5 + 4 events in one IngestUsage call: the first batch is acknowledged, the second,
    // over the per-call bound, is refused whole.
    let batches = [batch("b", 5), batch("c", 4)];
    let mut acks = c.ingest_usage(tokio_stream::iter(batches)).await.unwrap().into_inner();
    assert_eq!(acks.message().await.unwrap().unwrap().accepted, 5);
    refused(acks.message().await, Code::ResourceExhausted, "stream_events_max");
    assert_eq!(head(&server).await, before + 5, "only the acknowledged batch");
    // StreamUsage appends in chunks of batch_events_max: the chunk of 5 full before the 9th
    // event is kept (not acknowledged; a retry reports those as duplicates).
    let events: Vec<_> = (0..9).map(|i| usage(&format!("d-{i}"))).collect();
    let result = c.stream_usage(tokio_stream::iter(events.clone())).await;
    refused(result, Code::ResourceExhausted, "stream_events_max");
    assert_eq!(head(&server).await, before + 10);
    let retry = c.stream_usage(tokio_stream::iter(events[..5].to_vec())).await.unwrap();
    assert_eq!(retry.into_inner().duplicates, 5);
    served(&server, "after-1").await;
}

#[tokio::test]
async fn calls_over_the_per_connection_bound_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = books(dir.path(), &["--concurrency-per-connection-max", "2"]).await;
    let before = head(&server).await;
    let held = [hold(&mut c).await, hold(&mut c).await];
    let asked = Instant::now();
    let result = c.record_usage(usage("third")).await;
    let status = refused(result, Code::ResourceExhausted, "concurrency_per_connection_max");
    assert!(asked.elapsed() < Duration::from_secs(2), "refused at once, not queued");
    assert_eq!(status.get_details_error_info().unwrap().reason, "CONCURRENCY_PER_CONNECTION_MAX");
    assert!(status.get_details_retry_info().is_some(), "{status:?}");
    assert_eq!(head(&server).await, before, "nothing appended");
    served(&server, "other-connection").await;
    drop(held);
    served_again(&mut c, "third").await;
}

#[tokio::test]
async fn calls_over_the_server_wide_bound_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--calls-in-flight-max", "3", "--concurrency-per-connection-max", "2"];
    let (server, mut a) = books(dir.path(), &flags).await;
    let before = head(&server).await;
    let mut b = server.client().await;
    let held = [hold(&mut a).await, hold(&mut a).await, hold(&mut b).await];
    let mut c = server.client().await;
    let asked = Instant::now();
    let result = c.record_usage(usage("fourth")).await;
    let status = refused(result, Code::ResourceExhausted, "calls_in_flight_max");
    assert!(asked.elapsed() < Duration::from_secs(2), "refused at once, not queued");
    assert_eq!(status.get_details_error_info().unwrap().reason, "CALLS_IN_FLIGHT_MAX");
    let query = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await)
        .get_mrr(pb::MrrRequest::default())
        .await;
    refused(query, Code::ResourceExhausted, "calls_in_flight_max");
    // Health is not counted: `serving` checks it while every place is taken.
    server.serving("accrual.v1.CommandService").await;
    drop(held);
    served_again(&mut c, "fourth").await;
    assert_eq!(head(&server).await, before + 1, "only the call served after");
}

#[tokio::test]
async fn the_server_deadline_and_a_shorter_client_deadline_are_deadline_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = books(dir.path(), &["--request-timeout-ms", "1500"]).await;
    let before = head(&server).await;
    // A StreamUsage upload that never ends: one event sent, the stream held open.
    let (tx, rx) = mpsc::channel(1);
    tx.send(usage("slow-1")).await.unwrap();
    let started = Instant::now();
    let (result, ()) = tokio::join!(c.stream_usage(ReceiverStream::new(rx)), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        served(&server, "during-1").await;
    });
    refused(result, Code::DeadlineExceeded, "request_timeout_ms");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1_400) && took < Duration::from_secs(5), "{took:?}");
    drop(tx);
    // The client's grpc-timeout, shorter, is answered by the server before it expires.
    let (tx, rx) = mpsc::channel(1);
    tx.send(usage("slow-2")).await.unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.set_timeout(Duration::from_millis(800));
    let started = Instant::now();
    refused(c.stream_usage(request).await, Code::DeadlineExceeded, "grpc-timeout");
    assert!(started.elapsed() < Duration::from_millis(1_400), "{:?}", started.elapsed());
    drop(tx);
    assert_eq!(head(&server).await, before + 1, "only the well-behaved call appended");
    served(&server, "after-1").await;
}

#[tokio::test]
async fn an_ingest_stream_open_too_long_ends_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = books(dir.path(), &["--stream-duration-ms-max", "1000"]).await;
    let before = head(&server).await;
    let (tx, rx) = mpsc::channel(1);
    let mut acks = c.ingest_usage(ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(batch("open", 3)).await.unwrap();
    assert_eq!(acks.message().await.unwrap().unwrap().accepted, 3);
    let started = Instant::now();
    refused(acks.message().await, Code::ResourceExhausted, "stream_duration_ms_max");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(tx.send(batch("late", 1)).await.is_err() || acks.message().await.is_err());
    assert_eq!(head(&server).await, before + 3, "only the batch acknowledged");
    served(&server, "after-1").await;
}

#[tokio::test]
async fn overlong_strings_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = books(dir.path(), &[]).await;
    let before = head(&server).await;
    let long_tx = usage(&"t".repeat(129));
    let status = refused(c.record_usage(long_tx).await, Code::InvalidArgument, "128");
    assert_eq!(status.get_details_bad_request().unwrap().field_violations.len(), 1);
    let mut long_value = usage("v-1");
    long_value.properties.insert("calls".into(), "9".repeat(257));
    refused(c.record_usage(long_value).await, Code::InvalidArgument, "256");
    let customer = pb::RegisterCustomerRequest {
        idempotency_key: "k".repeat(129),
        customer_id: "beta".into(),
        name: "Beta".into(),
        currency: "USD".into(),
        ..Default::default()
    };
    refused(c.register_customer(customer.clone()).await, Code::InvalidArgument, "128");
    let named = pb::RegisterCustomerRequest {
        name: "n".repeat(257),
        idempotency_key: "k".into(),
        ..customer
    };
    refused(c.register_customer(named).await, Code::InvalidArgument, "256");
    assert_eq!(head(&server).await, before, "nothing appended");
    served(&server, "after-1").await;
}

/// HTTP/2's stream bound queues (it is the client's HTTP/2 stack that waits): a call beyond
/// it is sent once a stream ends.
#[tokio::test]
async fn calls_beyond_the_http2_stream_bound_wait_for_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--concurrent-streams-max", "2", "--concurrency-per-connection-max", "2"];
    let (server, mut c) = books(dir.path(), &flags).await;
    let [first, second] = [hold(&mut c).await, hold(&mut c).await];
    let mut third = c.clone();
    let waiting = tokio::spawn(async move { third.record_usage(usage("third")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "queued by the client while both streams are open");
    served(&server, "other-connection").await;
    first.finish().await;
    let reply = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    assert_eq!(reply.unwrap().into_inner().status, "accepted");
    second.finish().await;
}

/// A limit out of range stops the server at startup, naming the limit.
#[test]
fn a_bad_limit_stops_the_server_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--calls-in-flight-max", "0"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("calls_in_flight_max") && stderr.contains("out of range"), "{stderr}");
}
