//! Progressive billing (issue 14, part 4; docs/decisions/0037) on the real binary: a plan with
//! usage-amount thresholds, refusals of bad thresholds that append nothing, invoices issued as
//! usage crosses them (returned by RecordUsage, listed with reason `progressive`, sent on the
//! feed as `invoice.issued`), the closing invoice net of them, the books (usage revenue as
//! consumed, nothing left unbilled) and `replay verify` after a restart.

mod common;

use common::{
    append_probe, growth_plan, in_first_period, register_acme_and_api_calls, replay_verify_at,
    start_sub_1_backdated, Server,
};
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;
use tonic::Code;

/// Growth (20.00 a month in arrears, the first 100 calls at 1.00, then 0.50) billing
/// progressively at 50.00 and 120.00, then every 100.00.
fn progressive_plan() -> pb::PublishPlanRequest {
    pb::PublishPlanRequest {
        progressive_thresholds: vec!["50".into(), "120".into()],
        progressive_every: "100".into(),
        ..growth_plan("0.50")
    }
}

async fn record(c: &mut CommandServiceClient<Channel>, tx: &str, calls: &str) -> pb::UsageResult {
    let usage = pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx.into(),
        metric_code: "api_calls".into(),
        occurred_at: Some(in_first_period()),
        properties: [("calls".to_string(), calls.to_string())].into(),
    };
    let result = c.record_usage(usage).await.unwrap().into_inner();
    assert_eq!(result.status, "accepted", "{result:?}");
    result
}

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_invoiced_at_thresholds_and_the_close_bills_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::free_port());
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;

    // Bad thresholds are refused, naming the field, and append nothing.
    let before = append_probe(&mut c).await;
    let bad = |thresholds: &[&str], every: &str| pb::PublishPlanRequest {
        progressive_thresholds: thresholds.iter().map(|t| t.to_string()).collect(),
        progressive_every: every.into(),
        ..growth_plan("0.50")
    };
    for (plan, field) in [
        (bad(&["0"], ""), "progressive_thresholds[0]"),
        (bad(&["50", "50"], ""), "progressive_thresholds[1]"),
        (bad(&["fifty"], ""), "progressive_thresholds[0]"),
        (bad(&["50"], "-5"), "progressive_every"),
    ] {
        let refused = c.publish_plan(plan).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(common::violation_fields(&refused), [field]);
    }
    assert_eq!(append_probe(&mut c).await, before + 1, "refusals appended nothing");

    c.publish_plan(progressive_plan()).await.unwrap();
    start_sub_1_backdated(&mut c, "growth").await;
    let mut feed = common::invoice_issued_feed(&server).await;

    // (calls, the progressive invoice's subtotal): 40 → 40.00; +20 → 60.00 reaches 50;
    // +70 → 115.00 (130 calls); +20 → 125.00 reaches 120: the 65.00 not billed yet.
    let mut issued = Vec::new();
    for (i, (calls, want)) in
        [("40", None), ("20", Some("60.00")), ("70", None), ("20", Some("65.00"))]
            .into_iter()
            .enumerate()
    {
        let result = record(&mut c, &format!("u-{i}"), calls).await;
        assert_eq!(result.invoice_id.is_empty(), want.is_none(), "{calls}: {result:?}");
        if let Some(subtotal) = want {
            issued.push((result.invoice_id, result.position, subtotal));
        }
    }
    let head = issued.last().unwrap().1;
    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    for (id, _, subtotal) in &issued {
        let query = pb::InvoiceQuery {
            as_recorded_at: None,
            invoice_id: id.clone(),
            min_position: Some(head),
        };
        let inv = q.get_invoice(query).await.unwrap().into_inner().invoice.unwrap();
        assert_eq!((inv.reason.as_str(), inv.subtotal.as_str()), ("progressive", *subtotal));
        assert_eq!(inv.lines.len(), 1);
        assert!(inv.lines[0].description.ends_with("usage to date"), "{:?}", inv.lines[0]);
    }
    for (id, _, _) in &issued {
        let e = common::next_feed_event(&mut feed).await;
        assert_eq!((e.r#type.as_str(), &e.invoice_id), ("invoice.issued", id));
        let Some(pb::feed_event::Data::Invoice(inv)) = e.data else { panic!("{e:?}") };
        assert_eq!(inv.reason, "progressive");
    }

    // The current-usage draft and the closing invoice bill what is left: usage 125.00 less
    // the 125.00 billed, and the 20.00 base fee.
    let draft = pb::CurrentUsageQuery { subscription_id: "sub-1".into(), min_position: Some(head) };
    let draft = q.get_current_usage(draft).await.unwrap().into_inner().invoice.unwrap();
    assert_eq!(draft.subtotal, "20.00", "{draft:?}");
    let run = pb::RunBillingRequest { as_of: Some(now()), ..Default::default() };
    let run = c.run_billing(run).await.unwrap().into_inner();
    let close = run.invoices.iter().find(|i| i.subscription_id == "sub-1").unwrap();
    assert_eq!((close.reason.as_str(), close.subtotal.as_str()), ("period_close", "20.00"));
    let usage = close.lines.iter().find(|l| l.kind == "usage").unwrap();
    assert_eq!(usage.amount, "0.00");
    assert!(usage.description.contains("less 125.00 billed progressively"), "{usage:?}");

    // The books: all 125.00 of usage is recognized, nothing is left unbilled, and the
    // receivable is the three invoices with tax (66.00 + 71.50 + 22.00).
    let head = run.ack.unwrap().position;
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
        .date()
        .to_string();
    let as_of = pb::AsOfRequest { as_recorded_at: None, as_of: today, min_position: Some(head) };
    let usd = q.get_balances(as_of.clone()).await.unwrap().into_inner().balances.remove(0);
    assert_eq!(usd.recognized_revenue.get("usage").map(String::as_str), Some("125.00"), "{usd:?}");
    assert_eq!(usd.unbilled_receivable, "0.00", "{usd:?}");
    assert_eq!(usd.accounts_receivable, "159.50", "{usd:?}");
    let trial = q.get_trial_balance(as_of).await.unwrap().into_inner();
    common::assert_balanced(&trial);

    assert!(server.terminate().await.success());
    replay_verify_at(dir.path(), head);
}
