//! Replies that must not mislead a client (issue 11, items 8 to 13), on the real `accrual serve`:
//! a 1 MB id gets its own status (not RESOURCE_EXHAUSTED for oversized trailers), undecodable
//! bytes are INVALID_ARGUMENT, a command's position is exactly what a query's min_position
//! accepts and one beyond the log's head is OUT_OF_RANGE at once, money has its currency's
//! minor-unit digits in every reply, an unknown customer is NOT_FOUND, and journal entries carry
//! the export's readable entry id.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{free_port, register_acme_and_api_calls, Server};
use prost::bytes::{Buf, BufMut};
use proto::v1 as pb;
use proto::v1::audit_service_client::AuditServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};
use tonic_types::StatusExt;

const QUERY: &str = "accrual.v1.QueryService";
const AUDIT: &str = "accrual.v1.AuditService";

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: 0 }
}

fn today() -> String {
    jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date().to_string()
}

/// The status of a refused call, checked to be `code`.
fn refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, what: &str) -> Status {
    let status = result.expect_err(what);
    assert_eq!(status.code(), code, "{what}: {:.300}", status.message());
    status
}

/// INVALID_ARGUMENT with a BadRequest naming `field`, and a short message.
fn invalid_field<T: std::fmt::Debug>(result: Result<T, Status>, field: &str, what: &str) {
    let status = refused(result, Code::InvalidArgument, what);
    assert_eq!(common::violation_fields(&status), [field], "{what}");
    assert!(status.message().len() <= 600, "{what}: a short message");
    assert!(!status.message().contains(&"x".repeat(65)), "{what}: no more than a prefix echoed");
}

// ------------------------------------------------------------------------------ item 8

/// Every id of every call, 1 MB long: the call's own INVALID_ARGUMENT naming the field (before
/// the fix the reply echoed the id and the client saw RESOURCE_EXHAUSTED, or NOT_FOUND).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_megabyte_id_gets_its_real_status_on_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), free_port());
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    let huge = "x".repeat(1 << 20);
    let id = || huge.clone();

    let get = pb::GetInvoiceRequest { invoice_id: id() };
    invalid_field(c.get_invoice(get).await, "invoice_id", "GetInvoice");
    let usage = pb::GetCurrentUsageRequest { subscription_id: id() };
    invalid_field(c.get_current_usage(usage).await, "subscription_id", "GetCurrentUsage");
    let pay = pb::RecordPaymentRequest {
        invoice_id: id(),
        succeeded: true,
        amount: "1".into(),
        ..Default::default()
    };
    invalid_field(c.record_payment(pay).await, "invoice_id", "RecordPayment");
    let void =
        pb::VoidInvoiceRequest { invoice_id: id(), reason: "x".into(), ..Default::default() };
    invalid_field(c.void_invoice(void).await, "invoice_id", "VoidInvoice");
    let cancel = pb::CancelSubscriptionRequest { subscription_id: id(), ..Default::default() };
    invalid_field(c.cancel_subscription(cancel).await, "subscription_id", "CancelSubscription");
    let change = pb::ChangePlanRequest {
        subscription_id: "sub-1".into(),
        plan_code: id(),
        ..Default::default()
    };
    invalid_field(c.change_plan(change).await, "plan_code", "ChangePlan");
    let update = pb::UpdateCustomerRequest { customer_id: id(), ..Default::default() };
    invalid_field(c.update_customer(update).await, "customer_id", "UpdateCustomer");
    let start = pb::StartSubscriptionRequest {
        subscription_id: "sub-1".into(),
        customer_id: "acme".into(),
        plan_code: id(),
        ..Default::default()
    };
    invalid_field(c.start_subscription(start).await, "plan_code", "StartSubscription");

    let mut q = QueryServiceClient::new(server.serving(QUERY).await);
    let get = pb::InvoiceQuery { as_recorded_at: None, invoice_id: id(), min_position: None };
    invalid_field(q.get_invoice(get).await, "invoice_id", "query GetInvoice");
    let usage = pb::CurrentUsageQuery { subscription_id: id(), min_position: None };
    invalid_field(q.get_current_usage(usage).await, "subscription_id", "query GetCurrentUsage");
    let list = pb::ListInvoicesRequest { customer_id: id(), ..Default::default() };
    invalid_field(q.list_invoices(list).await, "customer_id", "ListInvoices");
    let mrr = pb::MrrRequest {
        as_recorded_at: None,
        currency: "USD".into(),
        date: today(),
        customer_id: id(),
        min_position: None,
    };
    invalid_field(q.get_mrr(mrr).await, "customer_id", "GetMrr");
    let schedule = pb::RevenueScheduleRequest { invoice_id: id(), ..Default::default() };
    invalid_field(q.get_revenue_schedule(schedule).await, "invoice_id", "GetRevenueSchedule");
    // Not an id, but caller input all the same: only a prefix comes back.
    let as_of = pb::AsOfRequest { as_recorded_at: None, as_of: id(), min_position: None };
    invalid_field(q.get_balances(as_of).await, "as_of", "GetBalances");

    let mut a = AuditServiceClient::new(server.serving(AUDIT).await);
    let replay = pb::ReplayRequest {
        cutoff: Some(pb::replay_request::Cutoff::Position(0)),
        name: id(),
        ..Default::default()
    };
    invalid_field(a.replay(replay).await, "name", "Replay");

    // A well-formed id that names nothing is still NOT_FOUND, naming it.
    let ghost = pb::GetInvoiceRequest { invoice_id: "inv-ghost-1".into() };
    let status = refused(c.get_invoice(ghost).await, Code::NotFound, "an unknown invoice");
    let info = status.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(info.resource_name, "inv-ghost-1");
}

// ------------------------------------------------------------------------------ item 9

/// Raw bytes as a gRPC message, to send what no generated client would.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// Bytes that are no protobuf message: a tag varint that never ends.
const GARBAGE: [u8; 11] = [0xff; 11];

/// Undecodable request bytes, through a real HTTP/2 gRPC call to each service (unary and
/// client-streaming): INVALID_ARGUMENT naming the message, not INTERNAL, and nothing appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_request_bytes_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), free_port());
    let channel = server.serving(AUDIT).await;
    let mut a = AuditServiceClient::new(channel.clone());
    let head = || pb::GetDigestRequest::default();
    let before = a.get_digest(head()).await.unwrap().into_inner().position;
    let mut grpc = tonic::client::Grpc::new(channel);
    let unary = [
        ("/accrual.v1.CommandService/RecordUsage", "accrual.v1.UsageEvent"),
        ("/accrual.v1.CommandService/RegisterCustomer", "accrual.v1.RegisterCustomerRequest"),
        ("/accrual.v1.QueryService/GetInvoice", "accrual.v1.InvoiceQuery"),
        ("/accrual.v1.AuditService/GetDigest", "accrual.v1.GetDigestRequest"),
    ];
    for (path, message) in unary {
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(path);
        let reply = grpc.unary(tonic::Request::new(GARBAGE.to_vec()), path.clone(), RawCodec).await;
        let status = refused(reply, Code::InvalidArgument, path.as_str());
        assert!(status.message().contains(message), "{path}: {}", status.message());
    }
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/accrual.v1.CommandService/StreamUsage");
    let stream = tokio_stream::iter([GARBAGE.to_vec()]);
    let reply = grpc.client_streaming(tonic::Request::new(stream), path, RawCodec).await;
    refused(reply, Code::InvalidArgument, "StreamUsage");
    let after = a.get_digest(head()).await.unwrap().into_inner().position;
    assert_eq!(after, before, "nothing appended");
}

// ----------------------------------------------------------------------------- item 10

/// A query with `min_position` and a deadline of 3 s, answered in well under it.
async fn at_once<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let reply = call.await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2_000), "{what} took {took:?}");
    reply.map(tonic::Response::into_inner)
}

fn within_3s<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(3));
    request
}

/// What a command returns is what a query accepts: a command's position, a usage result's, and
/// a reply's own position are each answered at once with the write's effect; the log's head is
/// the last acknowledged position; a min_position beyond it (even 2^63) is OUT_OF_RANGE at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_position_is_exactly_what_a_query_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (server, started_at, used) = usd_books(dir.path(), "7").await;
    let mut a = AuditServiceClient::new(server.serving(AUDIT).await);
    let head = a.get_digest(pb::GetDigestRequest::default()).await.unwrap().into_inner().position;
    assert_eq!(head, used.position, "the last write's position is the log's length");

    let mut q = QueryServiceClient::new(server.serving(QUERY).await);
    let mine = pb::ListInvoicesRequest {
        customer_id: "acme".into(),
        min_position: Some(started_at),
        ..Default::default()
    };
    let listed = at_once("ListInvoices", q.list_invoices(within_3s(mine))).await.unwrap();
    assert_eq!(listed.invoices.len(), 1, "the in-advance invoice of the start");
    assert!(listed.position >= started_at);
    let draft = pb::CurrentUsageQuery { subscription_id: "sub-1".into(), min_position: Some(head) };
    let view = at_once("GetCurrentUsage", q.get_current_usage(within_3s(draft))).await.unwrap();
    assert_eq!(view.position, head, "nothing was written since");
    let units: Vec<&str> = view.invoice.as_ref().unwrap().lines.iter().map(|l| &*l.units).collect();
    assert!(units.contains(&"7"), "the draft includes the usage: {units:?}");
    // A reply's own position, passed back, is answered at once (monotonic reads).
    let again = pb::CurrentUsageQuery {
        subscription_id: "sub-1".into(),
        min_position: Some(view.position),
    };
    at_once("the reply's own position", q.get_current_usage(within_3s(again))).await.unwrap();

    for beyond in [head + 1, 1 << 63, u64::MAX] {
        let far = pb::InvoiceQuery {
            as_recorded_at: None,
            invoice_id: "inv-sub-1-1".into(),
            min_position: Some(beyond),
        };
        let reply = at_once("beyond the head", q.get_invoice(within_3s(far))).await;
        let status = refused(reply, Code::OutOfRange, "a min_position beyond the head");
        let request = status.get_details_bad_request().expect("a BadRequest");
        assert_eq!(request.field_violations[0].field, "min_position");
        assert!(status.message().contains(&format!("holds {head} events")), "{status:?}");
    }
}

// ----------------------------------------------------------------------------- item 11

/// `acme` subscribed (`sub-1`) to the USD [`money_plan`] billed in advance (an invoice at once),
/// then `n` api calls: the server, the start's position and the usage's result.
async fn usd_books(dir: &std::path::Path, n: &str) -> (Server, u64, pb::UsageResult) {
    let server = Server::start(dir, free_port());
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    let plan = pb::PublishPlanRequest { base_fee_in_advance: true, ..money_plan("USD") };
    c.publish_plan(plan).await.unwrap();
    let sub = c.start_subscription(subscribe("acme", "sub-1", "plan-usd")).await.unwrap();
    let started_at = sub.into_inner().ack.unwrap().position;
    let used = c.record_usage(calls("sub-1", "tx-1", n)).await.unwrap().into_inner();
    assert!(used.position > started_at, "{used:?}");
    (server, started_at, used)
}

/// A plan in `currency`: a base fee of 5 and `api_calls` at 0.0015 each.
fn money_plan(currency: &str) -> pb::PublishPlanRequest {
    pb::PublishPlanRequest {
        idempotency_key: format!("plan-{currency}"),
        code: format!("plan-{}", currency.to_lowercase()),
        name: currency.into(),
        currency: currency.into(),
        interval: "monthly".into(),
        base_fee: "5".into(),
        charges: vec![pb::Charge {
            metric_code: "api_calls".into(),
            pay_in_advance: false,
            model: Some(pb::charge::Model::Standard(pb::StandardModel {
                unit_price: "0.0015".into(),
            })),
        }],
        ..Default::default()
    }
}

fn subscribe(customer: &str, sub: &str, plan: &str) -> pb::StartSubscriptionRequest {
    pb::StartSubscriptionRequest {
        subscription_id: sub.into(),
        customer_id: customer.into(),
        plan_code: plan.into(),
        ..Default::default()
    }
}

fn calls(sub: &str, tx: &str, n: &str) -> pb::UsageEvent {
    pb::UsageEvent {
        subscription_id: sub.into(),
        transaction_id: tx.into(),
        metric_code: "api_calls".into(),
        occurred_at: Some(now()),
        properties: [("calls".to_string(), n.to_string())].into(),
    }
}

/// `s` is an amount with exactly `digits` digits after the point (none for 0).
fn assert_money(s: &str, digits: usize, what: &str) {
    let scale = s.split_once('.').map_or(0, |(_, frac)| frac.len());
    let parsed: Result<rust_decimal::Decimal, _> = s.parse();
    assert!(parsed.is_ok() && scale == digits, "{what}: {s:?} must have {digits} decimals");
    if digits == 0 {
        assert!(!s.contains('.'), "{what}: {s:?}");
    }
}

fn assert_invoice_money(i: &pb::Invoice, digits: usize, what: &str) {
    for (name, v) in [
        ("subtotal", &i.subtotal),
        ("tax", &i.tax),
        ("total", &i.total),
        ("amount_paid", &i.amount_paid),
        ("amount_due", &i.amount_due),
    ] {
        assert_money(v, digits, &format!("{what} {name}"));
    }
    for l in &i.lines {
        assert_money(&l.amount, digits, &format!("{what} line {}", l.kind));
    }
}

/// Customers in USD, JPY and KWD on a base fee of 5 in advance, usage, a payment: every money
/// string of every reply has the currency's digits ("5.00", "5", "5.000"); units and unit
/// prices keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_has_the_currencys_minor_unit_digits_in_every_reply() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), free_port());
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    let table = [("USD", 2, "5.00", "0.00"), ("JPY", 0, "5", "0"), ("KWD", 3, "5.000", "0.000")];
    let mut last = 0;
    for (currency, digits, five, zero) in table {
        let customer = format!("c-{}", currency.to_lowercase());
        let register = pb::RegisterCustomerRequest {
            customer_id: customer.clone(),
            name: currency.into(),
            currency: currency.into(),
            ..Default::default()
        };
        c.register_customer(register).await.unwrap();
        let plan = pb::PublishPlanRequest { base_fee_in_advance: true, ..money_plan(currency) };
        c.publish_plan(plan.clone()).await.unwrap();
        let sub = format!("sub-{}", currency.to_lowercase());
        let started = c.start_subscription(subscribe(&customer, &sub, &plan.code)).await.unwrap();
        let invoice = started.into_inner().invoices.pop().expect("the in-advance invoice");
        let lines: Vec<&str> = invoice.lines.iter().map(|l| l.amount.as_str()).collect();
        assert_eq!(lines, [five], "{currency} base fee line");
        let totals = [&*invoice.subtotal, &*invoice.tax, &*invoice.total, &*invoice.amount_paid];
        assert_eq!(totals, [five, zero, five, zero], "{currency} invoice totals");
        assert_eq!(invoice.amount_due, five, "{currency}");
        c.record_usage(calls(&sub, "tx-1", "1000")).await.unwrap();
        let draft = pb::GetCurrentUsageRequest { subscription_id: sub.clone() };
        let draft = c.get_current_usage(draft).await.unwrap().into_inner();
        assert_invoice_money(&draft, digits, &format!("{currency} draft"));
        let usage_line = draft.lines.iter().find(|l| l.kind == "usage").expect("a usage line");
        assert_eq!(usage_line.units, "1000", "units keep their own precision");
        let pay = pb::RecordPaymentRequest {
            invoice_id: invoice.invoice_id.clone(),
            succeeded: true,
            amount: "2".into(),
            ..Default::default()
        };
        let paid = c.record_payment(pay).await.unwrap().into_inner();
        last = paid.ack.unwrap().position;
        let paid = paid.invoice.unwrap();
        assert_invoice_money(&paid, digits, &format!("{currency} paid"));
        let two = format!("2{}", &zero[1..]);
        assert_eq!(paid.amount_paid, two, "{currency} amount_paid");
        let get = pb::GetInvoiceRequest { invoice_id: invoice.invoice_id.clone() };
        let got = c.get_invoice(get).await.unwrap().into_inner();
        assert_invoice_money(&got, digits, &format!("{currency} GetInvoice"));
    }

    let mut q = QueryServiceClient::new(server.serving(QUERY).await);
    let digits_of = |code: &str| table.iter().find(|t| t.0 == code).expect("a currency").1;
    let listed = pb::ListInvoicesRequest { min_position: Some(last), ..Default::default() };
    let listed = q.list_invoices(listed).await.unwrap().into_inner();
    assert_eq!(listed.invoices.len(), 3);
    for i in &listed.invoices {
        assert_invoice_money(i, digits_of(&i.currency), &format!("ListInvoices {}", i.currency));
    }
    for (currency, digits, five, _) in table {
        let mrr = pb::MrrRequest {
            as_recorded_at: None,
            currency: currency.into(),
            date: today(),
            customer_id: String::new(),
            min_position: Some(last),
        };
        assert_eq!(q.get_mrr(mrr).await.unwrap().into_inner().mrr, five, "{currency} MRR");
        let movements = pb::MrrMovementsRequest {
            as_recorded_at: None,
            currency: currency.into(),
            from: today(),
            to: today(),
            granularity: "day".into(),
            min_position: Some(last),
        };
        let m = q.list_mrr_movements(movements).await.unwrap().into_inner();
        assert_money(&m.mrr_before, digits, "mrr_before");
        assert_eq!(m.mrr_at_to, five, "{currency} mrr_at_to");
        for b in &m.buckets {
            assert_money(&b.net, digits, "net");
            assert_money(&b.mrr, digits, "bucket mrr");
            b.totals.iter().for_each(|t| assert_money(&t.amount, digits, "movement"));
        }
        let usage = pb::UsageRevenueRequest {
            as_recorded_at: None,
            currency: currency.into(),
            from: today(),
            to: today(),
            granularity: "day".into(),
            min_position: Some(last),
        };
        let u = q.get_usage_revenue(usage).await.unwrap().into_inner();
        assert_money(&u.total, digits, &format!("{currency} usage revenue"));
        u.buckets.iter().for_each(|b| assert_money(&b.amount, digits, "usage bucket"));
    }
    let as_of = pb::AsOfRequest {
        as_recorded_at: None,
        as_of: "2999-12-31".into(),
        min_position: Some(last),
    };
    let balances = q.get_balances(as_of.clone()).await.unwrap().into_inner();
    assert_eq!(balances.balances.len(), 3);
    for b in &balances.balances {
        let d = digits_of(&b.currency);
        for v in [&b.accounts_receivable, &b.cash, &b.deferred_revenue, &b.tax_payable] {
            assert_money(v, d, &format!("{} balance", b.currency));
        }
        assert_money(&b.total_recognized_revenue, d, "total_recognized_revenue");
        b.recognized_revenue.values().for_each(|v| assert_money(v, d, "recognized_revenue"));
    }
    let trial = q.get_trial_balance(as_of).await.unwrap().into_inner();
    for r in &trial.rows {
        assert_money(&r.debit, digits_of(&r.currency), "trial debit");
        assert_money(&r.credit, digits_of(&r.currency), "trial credit");
    }
    let journal = pb::ListJournalEntriesRequest { min_position: Some(last), ..Default::default() };
    let journal = q.list_journal_entries(journal).await.unwrap().into_inner();
    for e in &journal.entries {
        for l in &e.lines {
            assert_money(&l.debit, digits_of(&l.currency), "journal debit");
            assert_money(&l.credit, digits_of(&l.currency), "journal credit");
        }
    }
    let schedule = pb::RevenueScheduleRequest {
        customer_id: "c-kwd".into(),
        as_of: today(),
        min_position: Some(last),
        ..Default::default()
    };
    let s = q.get_revenue_schedule(schedule).await.unwrap().into_inner();
    assert_eq!(s.total, "5.000", "KWD schedule total");
    for v in [&s.recognized, &s.remaining] {
        assert_money(v, 3, "KWD schedule split");
    }
    s.entries.iter().for_each(|e| assert_money(&e.amount, 3, "KWD schedule entry"));
}

// ----------------------------------------------------------------------------- item 12

/// ListInvoices (and GetMrr) for a customer that is not registered: NOT_FOUND naming it; for a
/// registered customer without invoices: an empty list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_customer_is_not_found_and_a_known_one_without_invoices_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), free_port());
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    let seen = common::append_probe(&mut c).await;
    let mut q = QueryServiceClient::new(server.serving(QUERY).await);
    let of = |customer: &str| pb::ListInvoicesRequest {
        customer_id: customer.into(),
        min_position: Some(seen),
        ..Default::default()
    };
    let empty = q.list_invoices(of("acme")).await.unwrap().into_inner();
    assert!(empty.invoices.is_empty() && empty.next_page_token.is_empty());
    let status = refused(q.list_invoices(of("ghost")).await, Code::NotFound, "ListInvoices");
    let info = status.get_details_resource_info().expect("ResourceInfo");
    assert_eq!((info.resource_type.as_str(), info.resource_name.as_str()), ("customer", "ghost"));
    assert!(status.message().contains("ghost"), "{status:?}");
    let mrr = |customer: &str| pb::MrrRequest {
        as_recorded_at: None,
        currency: "USD".into(),
        date: today(),
        customer_id: customer.into(),
        min_position: Some(seen),
    };
    assert_eq!(q.get_mrr(mrr("acme")).await.unwrap().into_inner().mrr, "0.00");
    refused(q.get_mrr(mrr("ghost")).await, Code::NotFound, "GetMrr");
}

// ----------------------------------------------------------------------------- item 13

/// Journal entries carry one readable id, the same as the export's `entry` column: digits for
/// postings, `A<n>` for usage accruals (never 2^63 + n).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_entries_carry_the_exports_readable_entry_id() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, used) = usd_books(dir.path(), "1000").await;
    let mut q = QueryServiceClient::new(server.serving(QUERY).await);
    let page =
        pb::ListJournalEntriesRequest { min_position: Some(used.position), ..Default::default() };
    let entries = q.list_journal_entries(page).await.unwrap().into_inner().entries;
    let ids: BTreeSet<String> = entries.iter().map(|e| e.entry_id.clone()).collect();
    assert_eq!(ids.len(), entries.len(), "ids are unique: {ids:?}");
    for e in &entries {
        let (accrual, digits) = match e.entry_id.strip_prefix('A') {
            Some(n) => (true, n),
            None => (false, e.entry_id.as_str()),
        };
        assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "{e:?}");
        assert!(digits.len() < 19, "a readable number, not 2^63 + n: {e:?}");
        assert_eq!(accrual, e.kind == "usage_accrual", "{e:?}");
    }
    assert!(entries.iter().any(|e| e.kind == "usage_accrual"), "the usage accrued");

    let mut a = AuditServiceClient::new(server.serving(AUDIT).await);
    let export = pb::ExportRequest { kind: "journal".into(), ..Default::default() };
    let mut chunks = a.export(export).await.unwrap().into_inner();
    let mut csv = Vec::new();
    while let Some(chunk) = chunks.message().await.unwrap() {
        csv.extend(chunk.data);
    }
    let mut reader = csv::Reader::from_reader(csv.as_slice());
    let column = reader.headers().unwrap().iter().position(|h| h == "entry").expect("entry");
    let exported: BTreeSet<String> =
        reader.records().map(|r| r.unwrap()[column].to_string()).collect();
    assert_eq!(exported, ids, "the export names the entries as the wire does");
}
