//! The event feed (issue 14, part 1) on the real binary: every event once, in log order, with
//! its position and a stable id; filters by public type and customer (a customer's usage
//! resolved through its subscriptions, started before or after the call); heartbeats while
//! idle; resuming from a position; bad requests; and a consumer that reads nothing cut off with
//! RESOURCE_EXHAUSTED naming where to resume, then resuming without a gap.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{growth_plan, in_first_period, register_acme_and_api_calls, Server};
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::feed_service_client::FeedServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const FEED: &str = "accrual.v1.FeedService";

async fn start_sub(c: &mut CommandServiceClient<Channel>, sub: &str, customer: &str) {
    let start = pb::StartSubscriptionRequest {
        subscription_id: sub.into(),
        customer_id: customer.into(),
        plan_code: "growth".into(),
        start_date: common::month_ago_in_berlin().to_string(),
        ..Default::default()
    };
    c.start_subscription(start).await.unwrap();
}

async fn register(c: &mut CommandServiceClient<Channel>, customer: &str) {
    let req = pb::RegisterCustomerRequest {
        idempotency_key: format!("cust-{customer}"),
        customer_id: customer.into(),
        ..common::acme_request()
    };
    c.register_customer(req).await.unwrap();
}

/// Records `n` usage events on `sub` in one batch; returns the position after them.
async fn usage(c: &mut CommandServiceClient<Channel>, sub: &str, tag: &str, n: u32) -> u64 {
    let events = (0..n)
        .map(|i| pb::UsageEvent {
            subscription_id: sub.into(),
            transaction_id: format!("{tag}-{i}"),
            metric_code: "api_calls".into(),
            occurred_at: Some(in_first_period()),
            properties: [("calls".to_string(), "1".to_string())].into(),
        })
        .collect();
    let batch = pb::UsageBatch { events };
    let mut acks = c.ingest_usage(tokio_stream::iter(vec![batch])).await.unwrap().into_inner();
    let ack = acks.message().await.unwrap().unwrap();
    assert_eq!(ack.accepted, n);
    ack.results.iter().map(|r| r.position).max().expect("a result per event")
}

async fn subscribe(
    f: &mut FeedServiceClient<Channel>,
    req: pb::SubscribeEventsRequest,
) -> Streaming<pb::FeedMessage> {
    f.subscribe_events(req).await.unwrap().into_inner()
}

/// Events until one at `last` (inclusive) arrives; heartbeats are skipped.
async fn events_through(s: &mut Streaming<pb::FeedMessage>, last: u64) -> Vec<pb::FeedEvent> {
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), s.message()).await;
        let message = next.expect("a message within 10 s").unwrap().expect("the stream is open");
        if let Some(pb::feed_message::Kind::Event(e)) = message.kind {
            let position = e.position;
            out.push(e);
            if position >= last {
                return out;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_sends_every_event_once_in_order_filtered_and_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::free_port());
    let channel = server.serving(FEED).await;
    let mut c = server.client().await;
    let mut f = FeedServiceClient::new(channel);
    register_acme_and_api_calls(&mut c).await;
    register(&mut c, "beta").await;
    c.publish_plan(growth_plan("0.50")).await.unwrap();
    start_sub(&mut c, "sub-1", "acme").await;
    start_sub(&mut c, "sub-b", "beta").await;
    let before = usage(&mut c, "sub-1", "a", 3).await;

    // A customer filter started now: acme's subscription from before is resolved through the
    // read model, one started later through the log.
    let acme_usage = pb::SubscribeEventsRequest {
        from_now: true,
        types: vec!["usage.recorded".into()],
        customer_id: "acme".into(),
        heartbeat_ms: 200,
        ..Default::default()
    };
    let mut filtered = subscribe(&mut f, acme_usage).await;
    usage(&mut c, "sub-b", "b", 2).await;
    usage(&mut c, "sub-1", "a2", 2).await;
    start_sub(&mut c, "sub-2", "acme").await;
    usage(&mut c, "sub-b", "b2", 1).await;
    let head = usage(&mut c, "sub-2", "c", 2).await;
    let got = events_through(&mut filtered, head - 1).await;
    let subs: Vec<&str> = got.iter().map(|e| e.subscription_id.as_str()).collect();
    assert_eq!(subs, ["sub-1", "sub-1", "sub-2", "sub-2"], "acme's usage only, in order");
    assert!(got.iter().all(|e| e.r#type == "usage.recorded" && e.customer_id == "acme"));
    assert!(got.iter().all(|e| matches!(e.data, Some(pb::feed_event::Data::Usage(_)))));
    assert!(got.iter().all(|e| e.position >= before));
    // Idle: heartbeats carry the head, so a filtered consumer can move its position on.
    let beat = tokio::time::timeout(Duration::from_secs(5), filtered.message()).await;
    match beat.unwrap().unwrap().unwrap().kind {
        Some(pb::feed_message::Kind::Heartbeat(h)) => assert_eq!(h.position, head),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    drop(filtered);

    // The whole log from 0: every position once, in order, unique ids, public types.
    let all = pb::SubscribeEventsRequest { heartbeat_ms: 200, ..Default::default() };
    let mut everything = subscribe(&mut f, all).await;
    let got = events_through(&mut everything, head - 1).await;
    let positions: Vec<u64> = got.iter().map(|e| e.position).collect();
    assert_eq!(positions, (0..head).collect::<Vec<_>>());
    let ids: HashSet<&str> = got.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "event ids are unique");
    assert_eq!(got[0].r#type, "customer.registered");
    assert!(got.iter().all(|e| e.schema_version == 1 && e.recorded_at.is_some()));
    let started = got.iter().find(|e| e.r#type == "subscription.started").unwrap();
    assert_eq!((started.customer_id.as_str(), started.subscription_id.as_str()), ("acme", "sub-1"));
    drop(everything);

    // Resuming from a position sends it first; the same event keeps its id.
    let from = before + 1;
    let resume = pb::SubscribeEventsRequest { from_position: from, ..Default::default() };
    let mut resumed = subscribe(&mut f, resume).await;
    let again = events_through(&mut resumed, from).await;
    assert_eq!(again[0].position, from);
    assert_eq!(again[0].event_id, got[from as usize].event_id, "a stable id for dedup");
    drop(resumed);

    // Bad requests.
    let bad = pb::SubscribeEventsRequest {
        types: vec!["invoice.issued".into(), "invoice.sent".into()],
        heartbeat_ms: 5,
        ..Default::default()
    };
    let status = f.subscribe_events(bad).await.unwrap_err();
    assert_eq!(common::violation_fields(&status), ["types[1]", "heartbeat_ms"]);
    let beyond = pb::SubscribeEventsRequest { from_position: head + 10, ..Default::default() };
    assert_eq!(f.subscribe_events(beyond).await.unwrap_err().code(), Code::OutOfRange);

    assert!(server.terminate().await.success());
}

/// A consumer that reads nothing is cut off once its buffer stays full past the stall bound;
/// it resumes where the status says and gets every event exactly once overall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_is_cut_off_and_resumes_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--feed-buffer-events", "8", "--feed-stall-ms", "300"];
    let server = Server::start_with(dir.path(), common::free_port(), &flags);
    let channel = server.serving(FEED).await;
    let mut c = server.client().await;
    let mut f = FeedServiceClient::new(channel);
    register_acme_and_api_calls(&mut c).await;
    c.publish_plan(growth_plan("0.50")).await.unwrap();
    start_sub(&mut c, "sub-1", "acme").await;
    // More than the transport's flow-control window holds, so the server's buffer fills.
    let mut head = 0;
    for b in 0..10 {
        head = usage(&mut c, "sub-1", &format!("b{b}"), 1_000).await;
    }
    // A consumer with small HTTP/2 windows, so the transport holds little of what it does not
    // read (hyper's defaults hold megabytes).
    let small =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", server.port()))
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
    let mut slow = FeedServiceClient::new(small);
    let mut stalled = subscribe(&mut slow, pb::SubscribeEventsRequest::default()).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut received = Vec::new();
    let status = loop {
        let next = tokio::time::timeout(Duration::from_secs(10), stalled.message()).await;
        match next.expect("the cut-off status within 10 s of the last message") {
            Ok(Some(m)) => {
                if let Some(pb::feed_message::Kind::Event(e)) = m.kind {
                    received.push(e.position);
                }
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let resume: u64 = status
        .message()
        .rsplit("from_position = ")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no resume position in {status:?}"));
    assert!(resume < head, "cut off before the end: {resume} of {head}");
    assert_eq!(received, (0..resume).collect::<Vec<_>>(), "nothing skipped before the cut");
    let rest = pb::SubscribeEventsRequest { from_position: resume, ..Default::default() };
    let mut resumed = subscribe(&mut f, rest).await;
    let tail = events_through(&mut resumed, head - 1).await;
    let tail: Vec<u64> = tail.iter().map(|e| e.position).collect();
    assert_eq!(tail, (resume..head).collect::<Vec<_>>(), "the rest, once");
    drop(resumed);
    assert!(server.terminate().await.success());
}
