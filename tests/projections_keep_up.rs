//! The live projections through the real binary, fed by one shared log reader
//! (docs/decisions/0027-shared-reader-and-journal-batches.md): after a burst of streamed usage
//! over many subscriptions, a billing run and a payment, every read model (invoices, MRR,
//! journal) reaches the head, `accrual replay verify` finds each equal to its rebuild, and
//! after a restart (the journal folds its usage meter again) they follow new appends and still
//! verify.

mod common;

use std::time::Duration;

use common::{
    free_port, register_acme_and_api_calls, replay_verify_at, start_sub_1_backdated, Server,
};
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;

const SUBSCRIPTIONS: u64 = 40;
const BATCHES: u64 = 6;
const BATCH_EVENTS: u64 = 500;

fn plan() -> pb::PublishPlanRequest {
    let unit = pb::charge::Model::Standard(pb::StandardModel { unit_price: "0.01".into() });
    pb::PublishPlanRequest {
        code: "metered".into(),
        name: "Metered".into(),
        currency: "USD".into(),
        interval: "monthly".into(),
        base_fee: "10.00".into(),
        charges: vec![pb::Charge {
            metric_code: "api_calls".into(),
            pay_in_advance: false,
            model: Some(unit),
        }],
        ..Default::default()
    }
}

/// Streams `BATCHES` × `BATCH_EVENTS` usage events over the subscriptions (ids from `first`);
/// returns the greatest acknowledged position.
async fn stream_usage(c: &mut CommandServiceClient<Channel>, first: u64) -> u64 {
    let now = jiff::Timestamp::now();
    let at = prost_types::Timestamp { seconds: now.as_second(), nanos: 0 };
    let batches: Vec<pb::UsageBatch> = (0..BATCHES)
        .map(|b| pb::UsageBatch {
            events: (0..BATCH_EVENTS)
                .map(|i| {
                    let n = first + b * BATCH_EVENTS + i;
                    pb::UsageEvent {
                        subscription_id: format!("s-{}", n % SUBSCRIPTIONS),
                        transaction_id: format!("tx-{n}"),
                        metric_code: "api_calls".into(),
                        occurred_at: Some(at),
                        properties: [("calls".to_string(), (n % 7 + 1).to_string())].into(),
                    }
                })
                .collect(),
        })
        .collect();
    let mut replies = c.ingest_usage(tokio_stream::iter(batches)).await.unwrap().into_inner();
    let mut head = 0;
    while let Some(reply) = replies.message().await.unwrap() {
        assert_eq!(reply.rejected, 0, "{:?}", reply.results.first());
        head = head.max(reply.results.iter().map(|r| r.position).max().unwrap_or(0));
    }
    head
}

/// Each read model's position once it includes `[0, head)` (waits through `min_position`).
async fn positions(q: &mut QueryServiceClient<Channel>, head: u64) -> [u64; 3] {
    let min_position = Some(head);
    let invoices = pb::ListInvoicesRequest { min_position, ..Default::default() };
    let invoices = q.list_invoices(invoices).await.expect("invoices reach the head");
    let mrr = pb::MrrRequest {
        currency: "USD".into(),
        date: jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date().to_string(),
        min_position,
        ..Default::default()
    };
    let mrr = q.get_mrr(mrr).await.expect("MRR reaches the head");
    let tb = pb::AsOfRequest { as_recorded_at: None, as_of: "2100-01-01".into(), min_position };
    let tb = q.get_trial_balance(tb).await.expect("journal reaches the head").into_inner();
    let debits: rust_decimal::Decimal =
        tb.rows.iter().map(|r| r.debit.parse::<rust_decimal::Decimal>().unwrap()).sum();
    let credits: rust_decimal::Decimal =
        tb.rows.iter().map(|r| r.credit.parse::<rust_decimal::Decimal>().unwrap()).sum();
    assert_eq!(debits, credits, "the books balance");
    assert!(!debits.is_zero(), "the journal has postings");
    [invoices.into_inner().position, mrr.into_inner().position, tb.position]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_model_reaches_the_head_and_equals_its_rebuild_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, free_port());
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    c.publish_plan(plan()).await.unwrap();
    start_sub_1_backdated(&mut c, "metered").await;
    for s in 0..SUBSCRIPTIONS {
        let start = pb::StartSubscriptionRequest {
            subscription_id: format!("s-{s}"),
            customer_id: "acme".into(),
            plan_code: "metered".into(),
            ..Default::default()
        };
        c.start_subscription(start).await.unwrap();
    }
    stream_usage(&mut c, 0).await;
    let as_of = prost_types::Timestamp { seconds: jiff::Timestamp::now().as_second(), nanos: 0 };
    let run = pb::RunBillingRequest { as_of: Some(as_of), ..Default::default() };
    let billed = c.run_billing(run).await.unwrap().into_inner();
    let invoice = billed.invoices.first().expect("sub-1's first period is invoiced");
    let pay = pb::RecordPaymentRequest {
        invoice_id: invoice.invoice_id.clone(),
        succeeded: true,
        amount: invoice.total.clone(),
        ..Default::default()
    };
    c.record_payment(pay).await.unwrap();
    let head = stream_usage(&mut c, BATCHES * BATCH_EVENTS).await;
    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let reached = positions(&mut q, head).await;
    assert!(reached.iter().all(|p| *p >= head), "{reached:?} vs head {head}");
    assert!(server.terminate().await.success());
    replay_verify_at(&data, head);

    // Restart: the journal folds its meter again, then all follow new appends.
    let server = Server::start(&data, free_port());
    let mut c = server.client().await;
    let head = stream_usage(&mut c, 2 * BATCHES * BATCH_EVENTS).await;
    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let reached = tokio::time::timeout(Duration::from_secs(60), positions(&mut q, head)).await;
    let reached = reached.expect("the read models catch up after a restart");
    assert!(reached.iter().all(|p| *p >= head), "{reached:?} vs head {head}");
    assert!(server.terminate().await.success());
    replay_verify_at(&data, head);
}
