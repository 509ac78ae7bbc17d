//! Webhooks (issue 14, part 2) on the real binary with a real local HTTP receiver (axum):
//! every event POSTed in log order with a signature the receiver verifies (HMAC-SHA256 over
//! "<t>.<body>"), retries with backoff until the receiver recovers, dead letters and the
//! endpoint disabled after a streak of them, the delivery log, manual redelivery, the address
//! guard, and delivery resuming from the stored cursor after a restart.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::{register_acme_and_api_calls, Server};
use hmac::{Hmac, Mac};
use proto::v1 as pb;
use proto::v1::webhook_service_client::WebhookServiceClient;
use sha2::Sha256;
use tonic::transport::Channel;
use tonic::Code;

const WEBHOOKS: &str = "accrual.v1.WebhookService";

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    event_id: String,
    position: u64,
    attempt: u32,
    signature: String,
    body: Vec<u8>,
}

#[derive(Default)]
struct Receiver {
    /// Route → requests, in arrival order.
    got: Mutex<HashMap<String, Vec<Received>>>,
    /// Route → failures still to answer with 500.
    fail: Mutex<HashMap<String, u32>>,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    Path(route): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    let received = Received {
        event_id: header("accrual-event-id"),
        position: json["position"].as_u64().expect("a position"),
        attempt: header("accrual-delivery-attempt").parse().expect("an attempt"),
        signature: header("accrual-signature"),
        body: body.to_vec(),
    };
    assert_eq!(json["event_id"].as_str(), Some(received.event_id.as_str()));
    r.got.lock().unwrap().entry(route.clone()).or_default().push(received);
    if route == "dead" {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let mut fail = r.fail.lock().unwrap();
    let left = fail.entry(route).or_default();
    if *left > 0 {
        *left -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::OK
}

async fn start_receiver() -> (Arc<Receiver>, String) {
    let state = Arc::new(Receiver::default());
    state.fail.lock().unwrap().insert("flaky".into(), 2);
    let app = Router::new().route("/:route", post(receive)).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (state, base)
}

/// What a receiver does with the docs alone: HMAC-SHA256 over "<t>.<body>", hex, compared.
fn verifies(secret: &str, header: &str, body: &[u8]) -> bool {
    let fields: HashMap<&str, &str> = header.split(',').filter_map(|p| p.split_once('=')).collect();
    let (Some(t), Some(v1)) = (fields.get("t"), fields.get("v1")) else { return false };
    let age = jiff::Timestamp::now().as_second() - t.parse::<i64>().unwrap_or(0);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    age.abs() <= 300 && hex::decode(v1).is_ok_and(|tag| mac.verify_slice(&tag).is_ok())
}

fn got(r: &Receiver, route: &str) -> Vec<Received> {
    r.got.lock().unwrap().get(route).cloned().unwrap_or_default()
}

/// Waits (at most 20 s) until `done` holds for what `route` received.
async fn wait_for(r: &Receiver, route: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    for _ in 0..400 {
        let seen = got(r, route);
        if done(&seen) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{route} received {:?}", got(r, route));
}

async fn create(
    w: &mut WebhookServiceClient<Channel>,
    url: String,
    types: &[&str],
) -> pb::CreateWebhookEndpointResponse {
    let req = pb::CreateWebhookEndpointRequest {
        url,
        types: types.iter().map(|t| t.to_string()).collect(),
        from_position: Some(0),
    };
    w.create_webhook_endpoint(req).await.unwrap().into_inner()
}

const FLAGS: [&str; 7] = [
    "--webhooks-allow-loopback",
    "--webhook-attempts-max",
    "3",
    "--webhook-backoff-ms",
    "20",
    "--webhook-disable-after",
    "2",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_ordered_retried_dead_lettered_and_resumed() {
    let (receiver, base) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let server = Server::start_with(dir.path(), port, &FLAGS);
    let mut w = WebhookServiceClient::new(server.serving(WEBHOOKS).await);
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    let head = common::append_probe(&mut c).await;

    // The address guard.
    for bad in ["http://169.254.169.254/latest/meta-data", "ftp://127.0.0.1/x", "not a url"] {
        let req = pb::CreateWebhookEndpointRequest { url: bad.into(), ..Default::default() };
        let status = w.create_webhook_endpoint(req).await.unwrap_err();
        assert_eq!(common::violation_fields(&status), ["url"], "{bad}: {status:?}");
    }

    let ok = create(&mut w, format!("{base}/ok"), &[]).await;
    assert!(ok.secret.starts_with("whsec_") && ok.secret.len() > 40);
    let flaky = create(&mut w, format!("{base}/flaky"), &["customer.registered"]).await;
    let dead =
        create(&mut w, format!("{base}/dead"), &["customer.registered", "metric.defined"]).await;

    // Every event, in order, once, signed.
    let all = wait_for(&receiver, "ok", |s| s.len() as u64 >= head).await;
    let positions: Vec<u64> = all.iter().map(|r| r.position).collect();
    assert_eq!(positions, (0..head).collect::<Vec<_>>());
    assert!(all.iter().all(|r| verifies(&ok.secret, &r.signature, &r.body)), "signatures");
    assert!(!verifies(&flaky.secret, &all[0].signature, &all[0].body), "another secret fails");
    let first: serde_json::Value = serde_json::from_slice(&all[0].body).unwrap();
    assert_eq!(first["type"], "customer.registered");
    assert_eq!(first["customer_id"], "acme");
    assert_eq!(first["schema_version"], 1);

    // Retried until the receiver recovers: attempts 1, 2 failed, 3 delivered.
    let retried = wait_for(&receiver, "flaky", |s| s.len() >= 3).await;
    let attempts: Vec<(u64, u32)> = retried.iter().map(|r| (r.position, r.attempt)).collect();
    assert_eq!(attempts, [(0, 1), (0, 2), (0, 3)]);
    let id = flaky.endpoint.as_ref().unwrap().endpoint_id.clone();
    let log = pb::ListWebhookDeliveriesRequest { endpoint_id: id, ..Default::default() };
    let log = w.list_webhook_deliveries(log).await.unwrap().into_inner().deliveries;
    let outcomes: Vec<(u32, u32, &str)> =
        log.iter().map(|d| (d.attempt, d.status_code, d.outcome.as_str())).collect();
    assert_eq!(outcomes, [(1, 500, "failed"), (2, 500, "failed"), (3, 200, "delivered")]);

    // Dead letters: both of its events, then disabled after the streak of 2.
    let dead_id = dead.endpoint.as_ref().unwrap().endpoint_id.clone();
    let mut disabled = None;
    for _ in 0..200 {
        let list = w.list_webhook_endpoints(pb::ListWebhookEndpointsRequest {}).await.unwrap();
        let e = list.into_inner().endpoints.into_iter().find(|e| e.endpoint_id == dead_id);
        if let Some(e) = e.filter(|e| !e.enabled) {
            disabled = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let disabled = disabled.expect("the failing endpoint is disabled");
    assert_eq!((disabled.dead_letters, disabled.failure_streak), (2, 2));
    assert!(disabled.disabled_reason.contains("dead-lettered"), "{disabled:?}");
    assert_eq!(got(&receiver, "dead").len(), 6, "3 attempts of each of its 2 events");

    // A manual redelivery: the same event, the same id.
    let ok_id = ok.endpoint.as_ref().unwrap().endpoint_id.clone();
    let again = pb::RedeliverWebhookEventRequest { endpoint_id: ok_id.clone(), position: 0 };
    w.redeliver_webhook_event(again).await.unwrap();
    let with_redelivery = wait_for(&receiver, "ok", |s| s.len() as u64 > head).await;
    assert_eq!(with_redelivery.last().unwrap().event_id, all[0].event_id);
    let beyond = pb::RedeliverWebhookEventRequest { endpoint_id: ok_id, position: head + 5 };
    assert_eq!(w.redeliver_webhook_event(beyond).await.unwrap_err().code(), Code::OutOfRange);

    // Restart: delivery resumes from the stored cursor (no event of the first run again).
    assert!(server.terminate().await.success());
    let server = Server::start_with(dir.path(), port, &FLAGS);
    let mut c = server.client().await;
    let after = common::append_probe(&mut c).await;
    let seen = wait_for(&receiver, "ok", |s| s.iter().any(|r| r.position + 1 == after)).await;
    let firsts: Vec<u64> = seen.iter().map(|r| r.position).filter(|p| *p >= head).collect();
    assert_eq!(firsts, (head..after).collect::<Vec<_>>(), "the new events, once, in order");
    assert!(server.terminate().await.success());
}

/// kill -9 of the server in the middle of a delivery storm: after a restart every event is
/// delivered at least once, none is missing, and the receiver's dedup by event id gives each
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_in_a_delivery_storm_loses_no_event() {
    let (receiver, base) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let server = Server::start_with(dir.path(), port, &FLAGS);
    let mut w = WebhookServiceClient::new(server.serving(WEBHOOKS).await);
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    c.publish_plan(common::growth_plan("0.50")).await.unwrap();
    common::start_sub_1_backdated(&mut c, "growth").await;
    create(&mut w, format!("{base}/storm"), &[]).await;
    let mut head = 0;
    for b in 0..6 {
        let events = (0..500)
            .map(|i| pb::UsageEvent {
                subscription_id: "sub-1".into(),
                transaction_id: format!("s-{b}-{i}"),
                metric_code: "api_calls".into(),
                occurred_at: Some(common::in_first_period()),
                properties: [("calls".to_string(), "1".to_string())].into(),
            })
            .collect();
        let batch = pb::UsageBatch { events };
        let mut acks = c.ingest_usage(tokio_stream::iter(vec![batch])).await.unwrap().into_inner();
        let ack = acks.message().await.unwrap().unwrap();
        head = ack.results.iter().map(|r| r.position).max().unwrap();
    }
    // Some deliveries done, most not: kill -9 mid-storm.
    wait_for(&receiver, "storm", |s| s.len() >= 50).await;
    drop((w, c));
    server.kill9();
    let before_restart = got(&receiver, "storm").len() as u64;
    assert!(before_restart < head, "killed mid-storm: {before_restart} of {head}");
    let server = Server::start_with(dir.path(), port, &FLAGS);
    let all = wait_for(&receiver, "storm", |s| {
        let ids: std::collections::HashSet<&str> = s.iter().map(|r| r.event_id.as_str()).collect();
        ids.len() as u64 >= head
    })
    .await;
    let mut positions: Vec<u64> = all.iter().map(|r| r.position).collect();
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions, (0..head).collect::<Vec<_>>(), "none missing");
    let ids: std::collections::HashSet<&str> = all.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len() as u64, head, "dedup by event id: each exactly once");
    eprintln!(
        "storm: {head} events, {} deliveries ({} before the kill)",
        all.len(),
        before_restart
    );
    assert!(server.terminate().await.success());
}
