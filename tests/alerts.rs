//! Usage alerts (issue 14, part 3) on the real binary: an alert on units every 100 calls and
//! one on the rated amount fire once per level as usage arrives, are listed by the query
//! service, reach a subscriber of the event feed, and bad requests append nothing.

mod common;

use std::time::Duration;

use common::{
    append_probe, growth_plan, in_first_period, register_acme_and_api_calls, replay_verify_at,
    start_sub_1_backdated, Server,
};
use proto::v1 as pb;
use proto::v1::feed_service_client::FeedServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::Code;

fn usage(tx: &str, calls: u32) -> pb::UsageEvent {
    pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx.into(),
        metric_code: "api_calls".into(),
        occurred_at: Some(in_first_period()),
        properties: [("calls".to_string(), calls.to_string())].into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_once_per_level_and_reach_the_query_and_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::free_port());
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    c.publish_plan(growth_plan("0.50")).await.unwrap();
    start_sub_1_backdated(&mut c, "growth").await;
    let units = pb::CreateUsageAlertRequest {
        idempotency_key: "al-1".into(),
        alert_id: "calls-100".into(),
        subscription_id: "sub-1".into(),
        on: "units".into(),
        metric_code: "api_calls".into(),
        threshold: "100".into(),
        every: "100".into(),
    };
    c.create_usage_alert(units.clone()).await.unwrap();
    let spend = pb::CreateUsageAlertRequest {
        idempotency_key: "al-2".into(),
        alert_id: "spend-150".into(),
        on: "amount".into(),
        metric_code: String::new(),
        threshold: "150".into(),
        every: String::new(),
        ..units.clone()
    };
    c.create_usage_alert(spend).await.unwrap();

    // Bad requests append nothing.
    let before = append_probe(&mut c).await;
    let bad = pb::CreateUsageAlertRequest {
        idempotency_key: "al-3".into(),
        alert_id: "x".into(),
        on: "calls".into(),
        threshold: "0".into(),
        ..units.clone()
    };
    let status = c.create_usage_alert(bad).await.unwrap_err();
    assert_eq!(common::violation_fields(&status), ["on", "threshold"]);
    let twice = pb::CreateUsageAlertRequest { idempotency_key: "al-4".into(), ..units.clone() };
    assert_eq!(c.create_usage_alert(twice).await.unwrap_err().code(), Code::AlreadyExists);
    assert_eq!(append_probe(&mut c).await, before + 1, "refusals appended nothing");

    // A feed subscriber for acme's alerts, from now.
    let feed_channel = server.serving("accrual.v1.FeedService").await;
    let mut f = FeedServiceClient::new(feed_channel);
    let req = pb::SubscribeEventsRequest {
        from_now: true,
        types: vec!["usage_alert.triggered".into()],
        customer_id: "acme".into(),
        heartbeat_ms: 200,
        ..Default::default()
    };
    let mut feed = f.subscribe_events(req).await.unwrap().into_inner();

    // 90 calls: nothing; +130 = 220 calls → level 100 and 200; graduated amount 100 + 60 =
    // 160.00 → spend 150.
    for (tx, calls) in [("u-1", 90), ("u-2", 130)] {
        c.record_usage(usage(tx, calls)).await.unwrap();
    }
    let head = c.record_usage(usage("u-3", 5)).await.unwrap().into_inner().position;

    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let list = pb::UsageAlertsQuery { subscription_id: "sub-1".into(), min_position: Some(head) };
    let listed = q.list_usage_alerts(list).await.unwrap().into_inner();
    let ids: Vec<&str> = listed.alerts.iter().map(|a| a.alert_id.as_str()).collect();
    assert_eq!(ids, ["calls-100", "spend-150"]);
    let fired: Vec<(&str, &str, &str)> = listed
        .triggered
        .iter()
        .map(|t| (t.alert_id.as_str(), t.level.as_str(), t.value.as_str()))
        .collect();
    assert_eq!(
        fired,
        [("calls-100", "100", "220"), ("calls-100", "200", "220"), ("spend-150", "150", "160")]
    );

    let mut from_feed = Vec::new();
    while from_feed.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(10), feed.message()).await;
        let message = next.expect("alerts on the feed").unwrap().unwrap();
        if let Some(pb::feed_message::Kind::Event(e)) = message.kind {
            assert_eq!(
                (e.r#type.as_str(), e.customer_id.as_str()),
                ("usage_alert.triggered", "acme")
            );
            let Some(pb::feed_event::Data::UsageAlert(a)) = e.data else { panic!("{e:?}") };
            from_feed.push((a.alert_id, a.level));
        }
    }
    let want = [("calls-100", "100"), ("calls-100", "200"), ("spend-150", "150")];
    let want: Vec<(String, String)> =
        want.iter().map(|(a, l)| (a.to_string(), l.to_string())).collect();
    assert_eq!(from_feed, want);
    drop(feed);

    let delete = pb::DeleteUsageAlertRequest {
        idempotency_key: "al-del".into(),
        subscription_id: "sub-1".into(),
        alert_id: "nope".into(),
    };
    assert_eq!(c.delete_usage_alert(delete).await.unwrap_err().code(), Code::NotFound);

    assert!(server.terminate().await.success());
    replay_verify_at(dir.path(), head);
}
