//! Invoice anomaly flags (issue 15; docs/decisions/0039) on the real binary: a subscription
//! backdated seven months, steady usage, then a month without usage and a month with nine
//! times as much. One billing run at the real clock closes the six periods in order: the
//! stop and the spike are flagged with their reason and score, amounts unchanged. The flags
//! are on the RunBilling reply, GetInvoice, ListInvoices `flagged`, the feed's
//! `invoice.issued` and the current-usage drafts (query and command side); `replay verify`
//! agrees after a restart.

mod common;

use common::{register_acme_and_api_calls, replay_verify_at, Server};
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;

const MONTHS: i8 = 7;
/// Calls in each of the six closed months, oldest first: steady, none, then nine times as much.
const CALLS: [&str; 6] = ["100", "110", "95", "105", "0", "900"];

fn berlin() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get("Europe/Berlin").unwrap()
}

/// The first day of the month `back` months before this one, in Berlin.
fn month_start(back: i8) -> jiff::civil::Date {
    let today = jiff::Timestamp::now().to_zoned(berlin()).date();
    today.first_of_month() - jiff::Span::new().months(back)
}

/// Noon in Berlin on the 10th of the month `back` months ago (or today, for this month, when
/// today is before the 10th).
fn in_month(back: i8) -> prost_types::Timestamp {
    let day = (month_start(back) + jiff::Span::new().days(9))
        .min(jiff::Timestamp::now().to_zoned(berlin()).date());
    let at = day.at(12, 0, 0, 0).to_zoned(berlin()).unwrap().timestamp();
    let at = at.min(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60));
    prost_types::Timestamp { seconds: at.as_second(), nanos: 0 }
}

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: 0 }
}

async fn record(c: &mut CommandServiceClient<Channel>, tx: &str, calls: &str, back: i8) {
    let usage = pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx.into(),
        metric_code: "api_calls".into(),
        occurred_at: Some(in_month(back)),
        properties: [("calls".to_string(), calls.to_string())].into(),
    };
    let result = c.record_usage(usage).await.unwrap().into_inner();
    assert_eq!(result.status, "accepted", "{result:?}");
}

fn kinds(inv: &pb::Invoice) -> Vec<(&str, &str)> {
    inv.anomalies.iter().map(|f| (f.kind.as_str(), f.subject.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_and_a_spike_are_flagged_everywhere_and_change_no_amount() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::free_port());
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    // growth: 20.00 a month in arrears plus 1.00 per call (also past the first 100).
    c.publish_plan(common::growth_plan("1.00")).await.unwrap();
    let start = pb::StartSubscriptionRequest {
        subscription_id: "sub-1".into(),
        customer_id: "acme".into(),
        plan_code: "growth".into(),
        billing_anchor: "calendar".into(),
        start_date: month_start(MONTHS - 1).to_string(),
        ..Default::default()
    };
    c.start_subscription(start).await.unwrap();
    for (i, calls) in CALLS.iter().enumerate() {
        if *calls != "0" {
            record(&mut c, &format!("m{i}"), calls, MONTHS - 1 - i as i8).await;
        }
    }
    // This month so far: already fifty times the usual.
    record(&mut c, "now", "5000", 0).await;

    let mut feed = common::invoice_issued_feed(&server).await;

    let run = pb::RunBillingRequest { as_of: Some(now()), ..Default::default() };
    let run = c.run_billing(run).await.unwrap().into_inner();
    let head = run.ack.unwrap().position;
    let closing: Vec<&pb::Invoice> =
        run.invoices.iter().filter(|i| i.reason == "period_close").collect();
    assert_eq!(closing.len(), CALLS.len(), "{:?}", run.invoices);
    let flags: Vec<Vec<(&str, &str)>> = closing.iter().map(|i| kinds(i)).collect();
    assert_eq!(
        flags,
        [
            vec![],
            vec![],
            vec![],
            vec![],
            vec![("usage_stopped", "api_calls")],
            vec![("spike", "api_calls")]
        ],
        "three periods of history come first; then the stop and the spike"
    );
    let spike = closing[5];
    assert_eq!(spike.subtotal, "920.00", "a flag changes no amount");
    let flag = &spike.anomalies[0];
    // History: 100, 110, 95, 105, 0: median 100, MAD 5, spread max(7.41, 10.00, 5 % of 120).
    assert_eq!(
        (flag.amount.as_str(), flag.typical.as_str(), flag.score.as_str(), flag.baseline_size),
        ("900.00", "100.00", "80.00", 5)
    );
    assert!(flag.reason.contains("far above the median 100.00"), "{}", flag.reason);

    // The query API: the invoice, and the flagged listing (exactly these two).
    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let query = pb::InvoiceQuery {
        as_recorded_at: None,
        invoice_id: spike.invoice_id.clone(),
        min_position: Some(head),
    };
    let got = q.get_invoice(query).await.unwrap().into_inner().invoice.unwrap();
    assert_eq!(got.anomalies, spike.anomalies);
    let list =
        pb::ListInvoicesRequest { flagged: true, min_position: Some(head), ..Default::default() };
    let listed = q.list_invoices(list).await.unwrap().into_inner();
    let ids: Vec<&str> = listed.invoices.iter().map(|i| i.invoice_id.as_str()).collect();
    assert_eq!(ids, [closing[4].invoice_id.as_str(), spike.invoice_id.as_str()]);

    // The feed sends them as invoice.issued with the flags.
    let mut flagged_on_feed = Vec::new();
    for _ in 0..run.invoices.len() {
        let e = common::next_feed_event(&mut feed).await;
        let Some(pb::feed_event::Data::Invoice(inv)) = e.data else { panic!("{e:?}") };
        if !inv.anomalies.is_empty() {
            flagged_on_feed.push((e.invoice_id, inv.anomalies[0].kind.clone()));
        }
    }
    let want = [
        (closing[4].invoice_id.clone(), "usage_stopped".to_string()),
        (spike.invoice_id.clone(), "spike".to_string()),
    ];
    assert_eq!(flagged_on_feed, want);

    // This month's draft is flagged before any invoice exists, on both sides.
    let draft = pb::CurrentUsageQuery { subscription_id: "sub-1".into(), min_position: Some(head) };
    let draft = q.get_current_usage(draft).await.unwrap().into_inner().invoice.unwrap();
    assert_eq!(kinds(&draft), [("spike", "api_calls")], "{draft:?}");
    assert_eq!(draft.anomalies[0].amount, "5000.00");
    let draft = pb::GetCurrentUsageRequest { subscription_id: "sub-1".into() };
    let draft = c.get_current_usage(draft).await.unwrap().into_inner();
    assert_eq!(kinds(&draft), [("spike", "api_calls")]);

    drop(feed);
    server.terminate().await;
    replay_verify_at(dir.path(), head);
}
