//! End to end: the real `accrual` binary on a free port with a temp data dir, driven by a
//! tonic client through the whole write side (SPEC §3–4), killed and restarted.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

use common::{append_probe, free_port, in_first_period, start_sub_1_backdated, Server};

type Client = CommandServiceClient<Channel>;

/// What grpcurl does first: list services through server reflection (no proto files).
async fn reflected_services(port: u16) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let url = format!("http://127.0.0.1:{port}");
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    match replies.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection reply {other:?}"),
    }
}

async fn query_client(port: u16) -> QueryServiceClient<Channel> {
    let url = format!("http://127.0.0.1:{port}");
    QueryServiceClient::new(Channel::from_shared(url).unwrap().connect().await.unwrap())
}

fn dec(s: &str) -> rust_decimal::Decimal {
    s.parse().unwrap_or_else(|_| panic!("{s:?} is a decimal"))
}

fn date_in(days: i64) -> String {
    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * days);
    at.to_zoned(jiff::tz::TimeZone::UTC).date().to_string()
}

/// MRR and the books after the run: one 20.00/month subscription; the 220.00 invoice
/// (20.00 base fee + 180.00 usage + 20.00 tax) written off as uncollectible.
async fn analytics(q: &mut QueryServiceClient<Channel>, seen: u64) {
    let mrr = pb::MrrRequest {
        currency: "USD".into(),
        date: date_in(1),
        min_position: Some(seen),
        ..Default::default()
    };
    assert_eq!(dec(&q.get_mrr(mrr).await.unwrap().into_inner().mrr), dec("20"));
    let moves = pb::MrrMovementsRequest {
        as_recorded_at: None,
        currency: "USD".into(),
        from: date_in(-40),
        to: date_in(1),
        granularity: "month".into(),
        min_position: Some(seen),
    };
    let moves = q.list_mrr_movements(moves).await.unwrap().into_inner();
    let mut mrr = dec(&moves.mrr_before);
    for bucket in &moves.buckets {
        mrr += dec(&bucket.net);
        assert_eq!(dec(&bucket.mrr), mrr, "each bucket's MRR is the running sum: {bucket:?}");
    }
    assert_eq!(mrr, dec(&moves.mrr_at_to), "the series is the sum of movements");
    assert_eq!(mrr, dec("20"));
    let as_of =
        pb::AsOfRequest { as_recorded_at: None, as_of: date_in(70), min_position: Some(seen) };
    let rows = q.get_trial_balance(as_of.clone()).await.unwrap().into_inner().rows;
    let debits: rust_decimal::Decimal = rows.iter().map(|r| dec(&r.debit)).sum();
    let credits: rust_decimal::Decimal = rows.iter().map(|r| dec(&r.credit)).sum();
    assert_eq!(debits, credits, "the trial balance balances: {rows:?}");
    let books = q.get_balances(as_of).await.unwrap().into_inner().balances;
    let usd = books.iter().find(|b| b.currency == "USD").expect("USD books");
    assert_eq!(dec(&usd.total_recognized_revenue), dec("200.00"));
    assert_eq!((dec(&usd.bad_debt), dec(&usd.accounts_receivable)), (dec("220.00"), dec("0")));
    assert_eq!((dec(&usd.tax_payable), dec(&usd.deferred_revenue)), (dec("20.00"), dec("0")));
}

fn day(s: &str) -> jiff::civil::Date {
    s.parse().unwrap_or_else(|_| panic!("{s:?} is a date"))
}

/// round(amount × d / n) to cents, half away from zero (SPEC §5 ratable recognition).
fn ratable(amount: &str, d: i64, n: i64) -> rust_decimal::Decimal {
    let exact = dec(amount) * rust_decimal::Decimal::from(d) / rust_decimal::Decimal::from(n);
    exact.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
}

fn bad_request_fields(status: tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_details_bad_request().expect("a BadRequest");
    details.field_violations.into_iter().map(|v| v.field).collect()
}

/// The base-fee line's recognition (20.00 in arrears over its service period of n days,
/// ratable: cumulative round(20 × d / n) after day d) and the usage line's (180.00, inside the
/// period), one line at a time and for the customer.
async fn revenue_schedules(q: &mut QueryServiceClient<Channel>, invoice: &pb::Invoice, seen: u64) {
    let base = &invoice.lines[0];
    let (start, end) = (day(&base.service_start), day(&base.service_end));
    let n = (end - start).get_days() as i64;
    let line = |i: u32| pb::RevenueScheduleRequest {
        invoice_id: invoice.invoice_id.clone(),
        line_index: Some(i),
        as_of: start.to_string(),
        min_position: Some(seen),
        ..Default::default()
    };
    let fee = q.get_revenue_schedule(line(0)).await.unwrap().into_inner();
    assert_eq!(fee.entries.len() as i64, n, "one entry a day");
    let first_day = match n {
        28 => "0.71",
        29 => "0.69",
        30 => "0.67",
        31 => "0.65",
        other => panic!("a monthly period of {other} days"),
    };
    assert_eq!(dec(&fee.entries[0].amount), dec(first_day));
    let mut cumulative = rust_decimal::Decimal::ZERO;
    for (d, e) in fee.entries.iter().enumerate() {
        cumulative += dec(&e.amount);
        assert_eq!(cumulative, ratable("20", d as i64 + 1, n), "after day {}", d + 1);
        assert_eq!(
            (e.date.clone(), e.revenue_type.as_str()),
            ((start + jiff::Span::new().days(d as i64)).to_string(), "subscription")
        );
    }
    let remaining = dec("20") - dec(first_day);
    assert_eq!(
        (dec(&fee.total), dec(&fee.recognized), dec(&fee.remaining)),
        (dec("20"), dec(first_day), remaining)
    );
    assert_eq!(fee.line.unwrap().kind, "base_fee");
    let usage = q.get_revenue_schedule(line(1)).await.unwrap().into_inner();
    assert_eq!(dec(&usage.total), dec("180"));
    for e in &usage.entries {
        assert_eq!(e.revenue_type, "usage");
        assert!(start <= day(&e.date) && day(&e.date) < end, "{e:?} inside the period");
    }
    let acme = pb::RevenueScheduleRequest {
        customer_id: "acme".into(),
        granularity: "month".into(),
        min_position: Some(seen),
        ..Default::default()
    };
    let acme = q.get_revenue_schedule(acme).await.unwrap().into_inner();
    let of = |t: &str| -> rust_decimal::Decimal {
        acme.entries.iter().filter(|e| e.revenue_type == t).map(|e| dec(&e.amount)).sum()
    };
    assert_eq!(
        (of("subscription"), of("usage"), dec(&acme.total)),
        (dec("20"), dec("180"), dec("200"))
    );
    let bad = pb::RevenueScheduleRequest { granularity: "week".into(), ..line(0) };
    assert_eq!(bad_request_fields(q.get_revenue_schedule(bad).await.unwrap_err()), ["granularity"]);
    let ghost = pb::RevenueScheduleRequest { invoice_id: "inv-ghost".into(), ..Default::default() };
    assert_code(q.get_revenue_schedule(ghost).await, Code::NotFound);
}

/// The journal: issue (Dr AR 220.00, Cr tax 20.00), one recognition a day of the period, the
/// usage accrued on the day it was consumed, the write-off; paged; the waterfall by month; usage revenue on the period's last day; invoices
/// by service period.
async fn ledger_views(q: &mut QueryServiceClient<Channel>, invoice: &pb::Invoice, seen: u64) {
    let (start, end) = (day(&invoice.period_start), day(&invoice.period_end));
    let n = (end - start).get_days() as i64;
    let (mut token, mut entries) = (String::new(), Vec::new());
    loop {
        let page = pb::ListJournalEntriesRequest {
            page_size: 7,
            page_token: token.clone(),
            min_position: Some(seen),
            ..Default::default()
        };
        let page = q.list_journal_entries(page).await.unwrap().into_inner();
        entries.extend(page.entries);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let kinds = |k: &str| entries.iter().filter(|e| e.kind == k).count() as i64;
    assert_eq!((kinds("invoice_issued"), kinds("recognition"), kinds("uncollectible")), (1, n, 1));
    // The usage was all consumed on one day: one accrual (Dr unbilled / Cr usage revenue) of
    // the 180.00 the invoice later billed out of unbilled receivable.
    assert_eq!(kinds("usage_accrual"), 1);
    assert_eq!(entries.len() as i64, n + 3);
    let accrual = entries.iter().find(|e| e.kind == "usage_accrual").unwrap();
    let usage_leg = accrual.lines.iter().find(|l| l.account == "revenue:usage").unwrap();
    assert_eq!(dec(&usage_leg.credit), dec("180"));
    assert!(accrual.invoice_id.is_empty() && !accrual.subscription_id.is_empty());
    for e in &entries {
        let debit: rust_decimal::Decimal = e.lines.iter().map(|l| dec(&l.debit)).sum();
        let credit: rust_decimal::Decimal = e.lines.iter().map(|l| dec(&l.credit)).sum();
        assert_eq!(debit, credit, "{e:?}");
    }
    let issued = entries.iter().find(|e| e.kind == "invoice_issued").unwrap();
    let leg = |account: &str| issued.lines.iter().find(|l| l.account == account).unwrap();
    assert_eq!(
        (dec(&leg("accounts_receivable").debit), dec(&leg("tax_payable").credit)),
        (dec("220"), dec("20"))
    );
    let first = pb::ListJournalEntriesRequest {
        from: start.to_string(),
        to: start.to_string(),
        ..Default::default()
    };
    let first = q.list_journal_entries(first).await.unwrap().into_inner().entries;
    let recognition = first.iter().find(|e| e.kind == "recognition").expect("day 1 is recognized");
    let revenue = recognition.lines.iter().find(|l| l.account == "revenue:subscription").unwrap();
    assert_eq!(dec(&revenue.credit), ratable("20", 1, n));
    let too_big = pb::ListJournalEntriesRequest { page_size: 1_001, ..Default::default() };
    assert_eq!(
        bad_request_fields(q.list_journal_entries(too_big).await.unwrap_err()),
        ["page_size"]
    );
    waterfall(q, invoice, seen).await;
    let accrued_on = entries.iter().find(|e| e.kind == "usage_accrual").unwrap().date.clone();
    usage_revenue(q, &accrued_on, seen).await;
    invoices_by_period(q, start, end, seen).await;
}

/// The base fee's first month recognizes its days in that month: round(20 × k / n).
async fn waterfall(q: &mut QueryServiceClient<Channel>, invoice: &pb::Invoice, seen: u64) {
    let (start, end) = (day(&invoice.period_start), day(&invoice.period_end));
    let n = (end - start).get_days() as i64;
    let next_month = start.first_of_month() + jiff::Span::new().months(1);
    let k = (end.min(next_month) - start).get_days() as i64;
    let request = pb::RevenueWaterfallRequest {
        from_month: start.strftime("%Y-%m").to_string(),
        to_month: end.strftime("%Y-%m").to_string(),
        min_position: Some(seen),
        ..Default::default()
    };
    let w = q.get_revenue_waterfall(request).await.unwrap().into_inner();
    let rows: Vec<(u32, &str, &str)> =
        w.rows.iter().map(|r| (r.line_index, r.revenue_type.as_str(), r.total.as_str())).collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((dec(rows[0].2), dec(rows[1].2)), (dec("20"), dec("180")));
    assert_eq!((rows[0].1, rows[1].1), ("subscription", "usage"));
    assert_eq!(dec(&w.rows[0].months[0].amount), ratable("20", k, n));
    let total: rust_decimal::Decimal = w.totals.iter().map(|t| dec(&t.amount)).sum();
    assert_eq!(total, dec("200"));
    let bad = pb::RevenueWaterfallRequest { page_token: "nope".into(), ..Default::default() };
    let fields = bad_request_fields(q.get_revenue_waterfall(bad).await.unwrap_err());
    assert_eq!(fields, ["from_month", "to_month", "page_token"]);
}

/// Usage revenue is recognized on the day the usage was consumed (its journal accrual's date).
async fn usage_revenue(q: &mut QueryServiceClient<Channel>, accrued_on: &str, seen: u64) {
    let request = pb::UsageRevenueRequest {
        as_recorded_at: None,
        currency: "USD".into(),
        from: date_in(-40),
        to: date_in(70),
        granularity: "day".into(),
        min_position: Some(seen),
    };
    let usage = q.get_usage_revenue(request).await.unwrap().into_inner();
    let buckets: Vec<(String, u32, rust_decimal::Decimal)> =
        usage.buckets.iter().map(|b| (b.start.clone(), b.days, dec(&b.amount))).collect();
    assert_eq!(buckets, [(accrued_on.to_string(), 1, dec("180"))]);
    assert_eq!(dec(&usage.total), dec("180"));
}

/// How many invoices serve a day in [from, to] (to empty: unbounded).
async fn listed(q: &mut QueryServiceClient<Channel>, from: String, to: String, seen: u64) -> usize {
    let request = pb::ListInvoicesRequest {
        period_from: from,
        period_to: to,
        min_position: Some(seen),
        ..Default::default()
    };
    q.list_invoices(request).await.unwrap().into_inner().invoices.len()
}

/// Periods are [start, end): the invoice serves its last day, not its end date.
async fn invoices_by_period(
    q: &mut QueryServiceClient<Channel>,
    start: jiff::civil::Date,
    end: jiff::civil::Date,
    seen: u64,
) {
    let (last, before) = (end.yesterday().unwrap(), start.yesterday().unwrap());
    assert_eq!(listed(q, last.to_string(), last.to_string(), seen).await, 1);
    assert_eq!(listed(q, start.to_string(), start.to_string(), seen).await, 1);
    assert_eq!(listed(q, end.to_string(), String::new(), seen).await, 0);
    assert_eq!(listed(q, before.to_string(), before.to_string(), seen).await, 0);
    let reversed = pb::ListInvoicesRequest {
        period_from: end.to_string(),
        period_to: start.to_string(),
        ..Default::default()
    };
    assert_eq!(bad_request_fields(q.list_invoices(reversed).await.unwrap_err()), ["period_to"]);
}

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: 0 }
}

/// The usage instant of the test, inside the first period: fixed once, so a resent event is
/// byte-for-byte the same.
fn usage_time() -> prost_types::Timestamp {
    static AT: std::sync::OnceLock<prost_types::Timestamp> = std::sync::OnceLock::new();
    *AT.get_or_init(in_first_period)
}

fn usage(tx: &str, calls: &str) -> pb::UsageEvent {
    pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx.into(),
        metric_code: "api_calls".into(),
        occurred_at: Some(usage_time()),
        properties: [("calls".to_string(), calls.to_string())].into(),
    }
}

fn tier(up_to: &str, price: &str, flat: &str) -> pb::Tier {
    pb::Tier { up_to: up_to.into(), unit_price: price.into(), flat_fee: flat.into() }
}

fn plan_request(code: &str, currency: &str) -> pb::PublishPlanRequest {
    let graduated = pb::TieredModel {
        tiers: vec![tier("100", "1.00", "5"), tier("1000", "0.50", "0"), tier("", "0.10", "0")],
    };
    pb::PublishPlanRequest {
        code: code.into(),
        name: "Growth".into(),
        currency: currency.into(),
        interval: "monthly".into(),
        base_fee: "20.00".into(),
        base_fee_in_advance: false,
        charges: vec![pb::Charge {
            metric_code: "api_calls".into(),
            pay_in_advance: false,
            model: Some(pb::charge::Model::Graduated(graduated)),
        }],
        ..Default::default()
    }
}

async fn setup(c: &mut Client) -> u64 {
    let customer = pb::RegisterCustomerRequest {
        idempotency_key: "cust-acme".into(),
        customer_id: "acme".into(),
        name: "Acme".into(),
        currency: "USD".into(),
        time_zone: "Europe/Berlin".into(),
        tax_rate: "10".into(),
    };
    let first = c.register_customer(customer.clone()).await.unwrap().into_inner();
    let replay = c.register_customer(customer.clone()).await.unwrap().into_inner();
    assert!(
        replay.duplicate && replay.position == first.position,
        "idempotent replay returns the original"
    );
    let metric = pb::DefineMetricRequest {
        code: "api_calls".into(),
        name: "API calls".into(),
        aggregation: "sum".into(),
        property: "calls".into(),
        ..Default::default()
    };
    c.define_metric(metric).await.unwrap();
    let plan = c.publish_plan(plan_request("growth", "USD")).await.unwrap().into_inner();
    assert_eq!(plan.version, 1);
    let sub = start_sub_1_backdated(c, "growth").await;
    assert_eq!((sub.status.as_str(), sub.stream_version), ("active", 0));
    sub.ack.unwrap().position
}

/// Unary, client-streaming and bidi usage with duplicates and bad items: 200 + 50 calls accepted.
async fn record_usage(c: &mut Client) {
    let one = c.record_usage(usage("tx-1", "200")).await.unwrap().into_inner();
    assert_eq!(one.status, "accepted");
    let items =
        vec![usage("tx-1", "200"), usage("tx-2", "30"), usage("tx-3", "lots"), usage("tx-2", "31")];
    let reply = c.stream_usage(tokio_stream::iter(items)).await.unwrap().into_inner();
    let statuses: Vec<_> = reply.results.iter().map(|r| (r.status.as_str(), r.code)).collect();
    assert_eq!(
        statuses,
        vec![
            ("duplicate", 0),
            ("accepted", 0),
            ("rejected", Code::InvalidArgument as i32),
            ("rejected", Code::AlreadyExists as i32)
        ]
    );
    assert_eq!(
        reply.results[0].position, one.position,
        "a duplicate reports the original position"
    );
    let batch = pb::UsageBatch { events: vec![usage("tx-4", "20"), usage("tx-2", "30")] };
    let mut acks = c.ingest_usage(tokio_stream::iter(vec![batch])).await.unwrap().into_inner();
    let ack = acks.message().await.unwrap().unwrap();
    assert_eq!((ack.accepted, ack.duplicates, ack.rejected), (1, 1, 0));
    // A batch over the limit (10,000 events) is refused whole and appends nothing.
    let too_big =
        pb::UsageBatch { events: (0..10_001).map(|i| usage(&format!("big-{i}"), "1")).collect() };
    let mut acks = c.ingest_usage(tokio_stream::iter(vec![too_big])).await.unwrap().into_inner();
    assert_eq!(acks.message().await.unwrap_err().code(), Code::ResourceExhausted);
}

fn assert_code(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code) -> tonic::Status {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

/// Every kind of bad input of SPEC §3 gets its code and details, and appends nothing.
async fn bad_inputs(c: &mut Client, position_before: u64) {
    let bad = pb::RegisterCustomerRequest {
        customer_id: "bad id!".into(),
        name: "x".into(),
        currency: "XYZ".into(),
        ..Default::default()
    };
    let status = assert_code(c.register_customer(bad).await, Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, vec!["currency", "customer_id"]);
    let mut plan = plan_request("broken", "USD");
    plan.charges[0].model = Some(pb::charge::Model::Graduated(pb::TieredModel {
        tiers: vec![tier("10", "1", ""), tier("5", "1", ""), tier("", "x", "")],
    }));
    let status = assert_code(c.publish_plan(plan).await, Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert!(fields.iter().any(|f| f == "charges[0].graduated.tiers[2].unit_price"), "{fields:?}");
    let status = assert_code(
        c.start_subscription(pb::StartSubscriptionRequest {
            subscription_id: "sub-2".into(),
            customer_id: "acme".into(),
            plan_code: "nope".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    assert_eq!(status.get_details_resource_info().unwrap().resource_name, "nope");
    assert_code(
        c.record_usage(pb::UsageEvent { subscription_id: "ghost".into(), ..usage("tx-9", "1") })
            .await,
        Code::NotFound,
    );
    let mut eur = plan_request("growth-eur", "EUR");
    eur.charges.clear();
    c.publish_plan(eur).await.unwrap();
    let status = assert_code(
        c.change_plan(pb::ChangePlanRequest {
            subscription_id: "sub-1".into(),
            plan_code: "growth-eur".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        status.get_details_precondition_failure().unwrap().violations[0].r#type,
        "CURRENCY_MISMATCH"
    );
    let stale = pb::ChangePlanRequest {
        subscription_id: "sub-1".into(),
        plan_code: "growth".into(),
        expected_version: Some(7),
        ..Default::default()
    };
    assert_code(c.change_plan(stale).await, Code::Aborted);
    let reused = pb::RegisterCustomerRequest {
        idempotency_key: "cust-acme".into(),
        customer_id: "other".into(),
        name: "Other".into(),
        currency: "USD".into(),
        ..Default::default()
    };
    assert_code(c.register_customer(reused).await, Code::AlreadyExists);
    assert_code(c.run_billing(pb::RunBillingRequest::default()).await, Code::InvalidArgument);
    assert_code(
        c.record_payment(pb::RecordPaymentRequest {
            invoice_id: "nope".into(),
            succeeded: true,
            amount: "1".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    // Only the EUR plan above was appended (one event) since position_before.
    assert_eq!(append_probe(c).await, position_before + 2, "refused commands appended nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_side_end_to_end_with_kill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    let services = reflected_services(port).await;
    assert!(services.iter().any(|s| s == "accrual.v1.CommandService"), "{services:?}");
    setup(&mut c).await;
    record_usage(&mut c).await;
    let last = c.record_usage(usage("tx-5", "0")).await.unwrap().into_inner().position;
    bad_inputs(&mut c, last).await;

    server.kill9();
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    let again = c.record_usage(usage("tx-1", "200")).await.unwrap().into_inner();
    assert_eq!(again.status, "duplicate", "dedup survives a kill -9");
    let draft = c
        .get_current_usage(pb::GetCurrentUsageRequest { subscription_id: "sub-1".into() })
        .await
        .unwrap()
        .into_inner();
    // The current period (the first one ended today): no usage yet, so the base fee 20.00
    // plus the first tier's flat fee 5.00 (charged even at zero usage), plus 10 % tax.
    assert_eq!(
        (draft.status.as_str(), draft.total.as_str()),
        ("draft", "27.50"),
        "the current period's draft"
    );
    let mut q = query_client(port).await;
    let seen = pb::CurrentUsageQuery { subscription_id: "sub-1".into(), min_position: Some(last) };
    let read = q.get_current_usage(seen).await.unwrap().into_inner();
    let read_draft = read.invoice.unwrap();
    assert!(read.position >= last, "the query side's draft reflects the last usage");
    // While an ended period awaits its close the two sides answer different periods: the
    // command side the one holding today, the query side the oldest open one (the first
    // period, with the usage: 20.00 + 180.00 + 10 % tax). Reported on issue 11.
    assert_eq!(
        (read_draft.status.as_str(), read_draft.total.as_str(), read_draft.lines.len()),
        ("draft", "220.00", draft.lines.len()),
        "the query side's draft is the oldest open period's"
    );
    let ghost = pb::CurrentUsageQuery { subscription_id: "sub-ghost".into(), min_position: None };
    assert_code(q.get_current_usage(ghost).await, Code::NotFound);

    let as_of = now();
    let run = c
        .run_billing(pb::RunBillingRequest { as_of: Some(as_of), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((run.periods_closed, run.invoices.len()), (1, 1));
    let invoice = &run.invoices[0];
    // 250 calls graduated: 100 × 1.00 + 5 + 150 × 0.50 = 180.00; base fee 20.00 in arrears;
    // tax 10 % of 200.00 = 20.00; total 220.00.
    let lines: Vec<(&str, &str)> =
        invoice.lines.iter().map(|l| (l.kind.as_str(), l.amount.as_str())).collect();
    assert_eq!(lines, vec![("base_fee", "20.00"), ("usage", "180.00")]);
    assert_eq!(invoice.lines[1].units, "250");
    assert_eq!(
        (invoice.subtotal.as_str(), invoice.tax.as_str(), invoice.total.as_str()),
        ("200.00", "20.00", "220.00")
    );
    // The read side: the invoice is in the query service once it reached the run's position.
    let mut q = query_client(port).await;
    let billed_at = run.ack.as_ref().unwrap().position;
    let mine = pb::ListInvoicesRequest {
        customer_id: "acme".into(),
        min_position: Some(billed_at),
        ..Default::default()
    };
    let listed = q.list_invoices(mine).await.unwrap().into_inner();
    assert!(listed.position >= billed_at, "the reply reflects the caller's write");
    let read: Vec<(&str, &str)> =
        listed.invoices.iter().map(|i| (i.status.as_str(), i.total.as_str())).collect();
    assert_eq!(read, vec![("open", "220.00")]);
    let bad = pb::ListInvoicesRequest { status: "late".into(), ..Default::default() };
    assert_code(q.list_invoices(bad).await, Code::InvalidArgument);
    let rerun = c
        .run_billing(pb::RunBillingRequest { as_of: Some(as_of), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(rerun.invoices.is_empty(), "billing twice for the same as_of issues nothing");
    assert_code(c.record_usage(usage("tx-6", "1")).await, Code::FailedPrecondition);

    let mut last_payment = 0;
    for attempt in 1..=3u32 {
        let failed = pb::RecordPaymentRequest {
            invoice_id: invoice.invoice_id.clone(),
            succeeded: false,
            reason: "card_declined".into(),
            ..Default::default()
        };
        let reply = c.record_payment(failed).await.unwrap().into_inner();
        last_payment = reply.ack.unwrap().position;
        let inv = reply.invoice.unwrap();
        assert_eq!(inv.failed_attempts, attempt);
        assert_eq!(inv.status, if attempt < 3 { "open" } else { "uncollectible" });
    }

    server.kill9();
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    let inv = c
        .get_invoice(pb::GetInvoiceRequest { invoice_id: invoice.invoice_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (inv.status.as_str(), inv.total.as_str(), inv.failed_attempts),
        ("uncollectible", "220.00", 3)
    );
    let mut q = query_client(port).await;
    let id = invoice.invoice_id.clone();
    let after_payments = pb::InvoiceQuery {
        as_recorded_at: None,
        invoice_id: id.clone(),
        min_position: Some(last_payment),
    };
    let read = q.get_invoice(after_payments).await.unwrap().into_inner().invoice.unwrap();
    assert_eq!(
        (read.status.as_str(), read.amount_due.as_str(), read.failed_attempts),
        ("uncollectible", "220.00", 3)
    );
    analytics(&mut q, last_payment).await;
    revenue_schedules(&mut q, invoice, last_payment).await;
    ledger_views(&mut q, invoice, last_payment).await;
    // Beyond the log's head: it cannot be reached, OUT_OF_RANGE at once (tests/wire_replies.rs).
    let never =
        pb::InvoiceQuery { as_recorded_at: None, invoice_id: id, min_position: Some(1_000_000) };
    let mut request = tonic::Request::new(never);
    request.set_timeout(Duration::from_millis(3_000));
    assert_code(q.get_invoice(request).await, Code::OutOfRange);
    let status = server.terminate().await;
    assert!(status.success(), "SIGTERM shuts down gracefully with exit 0: {status:?}");
}

/// The health status of `service` (NOT_FOUND for a service this process does not run).
async fn health_of(channel: Channel, service: &str) -> Result<i32, tonic::Status> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
    health.check(req).await.map(|r| r.into_inner().status)
}

fn mrr_today(min_position: u64) -> pb::MrrRequest {
    pb::MrrRequest {
        currency: "USD".into(),
        date: date_in(1),
        min_position: Some(min_position),
        ..Default::default()
    }
}

/// `--role` runs a subset on one data dir, one process at a time (sled): the command side
/// alone, then the projector with the query service, then the query service alone over the
/// read models as they are on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_run_a_subset_of_the_services() {
    const COMMAND: &str = "accrual.v1.CommandService";
    const QUERY: &str = "accrual.v1.QueryService";
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();

    let server = Server::start_with(dir.path(), port, &["--role", "command"]);
    let mut c = server.client().await;
    let subscribed = setup(&mut c).await;
    let channel = server.serving(COMMAND).await;
    assert_code(health_of(channel.clone(), QUERY).await, Code::NotFound);
    let services = reflected_services(port).await;
    assert!(!services.iter().any(|s| s == QUERY), "{services:?}");
    let mut q = QueryServiceClient::new(channel);
    assert_code(q.get_mrr(mrr_today(0)).await, Code::Unimplemented);
    assert!(server.terminate().await.success(), "exit 0 after SIGTERM");

    let server = Server::start_with(dir.path(), port, &["--role", "projector,query"]);
    let channel = server.serving(QUERY).await;
    assert_code(health_of(channel.clone(), COMMAND).await, Code::NotFound);
    let draft = pb::GetCurrentUsageRequest { subscription_id: "sub-1".into() };
    let mut c = CommandServiceClient::new(channel.clone());
    assert_code(c.get_current_usage(draft).await, Code::Unimplemented);
    let mut q = QueryServiceClient::new(channel);
    let mrr = q.get_mrr(mrr_today(subscribed)).await.unwrap().into_inner();
    assert_eq!(dec(&mrr.mrr), dec("20"), "the projector built the MRR of the command side's log");
    assert!(server.terminate().await.success());

    let env_role = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env("ACCRUAL_ROLE", "query")
        .env("ACCRUAL_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start accrual serve");
    let server = Server::adopt(env_role, port);
    let mut q = QueryServiceClient::new(server.serving(QUERY).await);
    let mrr = q.get_mrr(mrr_today(subscribed)).await.unwrap().into_inner();
    assert_eq!(dec(&mrr.mrr), dec("20"), "read models served as they are on disk");
    let unreached = q.get_mrr(mrr_today(mrr.position + 10)).await;
    assert_code(unreached, Code::OutOfRange);
    assert!(server.terminate().await.success());
}

/// An empty or unknown role stops `accrual serve` before it opens anything, naming the value.
#[test]
fn a_bad_role_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let run = |role_flag: Option<&str>, role_env: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_accrual"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path().join("d"));
        if let Some(role) = role_flag {
            cmd.args(["--role", role]);
        }
        if let Some(role) = role_env {
            cmd.env("ACCRUAL_ROLE", role);
        }
        let out = cmd.env("RUST_BACKTRACE", "0").output().expect("run accrual serve");
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for (flag, env, named) in [
        (Some("command,qurey"), None, "\"qurey\""),
        (None, Some("projector,,query"), "\"\""),
        (Some(""), None, "is empty"),
        (None, Some("writer"), "\"writer\""),
    ] {
        let (status, stderr) = run(flag, env);
        assert!(!status.success(), "{flag:?}/{env:?} must fail: {stderr}");
        assert!(stderr.contains(named) && stderr.contains("--role"), "{flag:?}/{env:?}: {stderr}");
    }
    assert!(!dir.path().join("d").exists(), "nothing opened or created");
}
