//! Issue 11, "accepted today, must not corrupt the books" (decision 0011): each input that let
//! a caller corrupt the books is refused through the real gRPC API of the real binary, and a
//! refused request appends nothing.

mod common;

use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use rust_decimal::Decimal;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

use common::{
    append_probe, bad_fields, free_port, in_first_period, month_ago_in_berlin,
    register_acme_and_api_calls, start_sub_1_backdated, tier, Server,
};

type Client = CommandServiceClient<Channel>;

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_else(|_| panic!("{s:?} is a decimal"))
}

fn now() -> prost_types::Timestamp {
    let t = jiff::Timestamp::now();
    prost_types::Timestamp { seconds: t.as_second(), nanos: 0 }
}

fn days_from_now(days: i64) -> prost_types::Timestamp {
    let t = now();
    prost_types::Timestamp { seconds: t.seconds + days * 86_400, nanos: 0 }
}

/// The PreconditionFailure (type, subject, description) of a FAILED_PRECONDITION.
fn precondition<T: std::fmt::Debug>(
    what: &str,
    reply: Result<T, tonic::Status>,
) -> (String, String, String) {
    let status = reply.expect_err(what);
    assert_eq!(status.code(), Code::FailedPrecondition, "{what}: {status:?}");
    let failure = status.get_details_precondition_failure().expect("a PreconditionFailure");
    let v = failure.violations.into_iter().next().expect("one violation");
    (v.r#type, v.subject, v.description)
}

fn metric(
    code: &str,
    aggregation: &str,
    property: &str,
    allow_negative: bool,
) -> pb::DefineMetricRequest {
    pb::DefineMetricRequest {
        code: code.into(),
        name: code.into(),
        aggregation: aggregation.into(),
        property: property.into(),
        allow_negative,
        ..Default::default()
    }
}

fn standard(metric_code: &str, unit_price: &str, pay_in_advance: bool) -> pb::Charge {
    pb::Charge {
        metric_code: metric_code.into(),
        pay_in_advance,
        model: Some(pb::charge::Model::Standard(pb::StandardModel {
            unit_price: unit_price.into(),
        })),
    }
}

fn plan(code: &str, charges: Vec<pb::Charge>) -> pb::PublishPlanRequest {
    pb::PublishPlanRequest {
        code: code.into(),
        name: code.into(),
        currency: "USD".into(),
        interval: "monthly".into(),
        base_fee: "0".into(),
        charges,
        ..Default::default()
    }
}

fn usage(tx: &str, metric_code: &str, property: &str, value: &str) -> pb::UsageEvent {
    pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx.into(),
        metric_code: metric_code.into(),
        occurred_at: Some(in_first_period()),
        properties: [(property.to_string(), value.to_string())].into(),
    }
}

async fn start_server() -> (tempfile::TempDir, Server, Client) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), free_port());
    let c = server.client().await;
    (dir, server, c)
}

/// A server where acme's `sub-1` is on `growth` (graduated api_calls), started a month ago.
async fn growth_books() -> (tempfile::TempDir, Server, Client) {
    let (dir, server, mut c) = start_server().await;
    register_acme_and_api_calls(&mut c).await;
    c.publish_plan(common::growth_plan("0.50")).await.unwrap();
    start_sub_1_backdated(&mut c, "growth").await;
    (dir, server, c)
}

/// Item 1: `calls: -1000000` no longer nets against real usage; a metric of deltas opts in
/// with `allow_negative`, and even then its period never rates below zero units; a
/// `weighted_sum` level may go down but never below zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_usage_is_refused_unless_the_metric_allows_it() {
    let (_dir, server, mut c) = start_server().await;
    register_acme_and_api_calls(&mut c).await;
    c.define_metric(metric("seat_moves", "sum", "delta", true)).await.unwrap();
    c.define_metric(metric("seats", "weighted_sum", "delta", false)).await.unwrap();
    let counted = metric("logins", "count", "", true);
    assert_eq!(
        bad_fields("count allow_negative", c.define_metric(counted).await),
        ["allow_negative"]
    );
    let in_advance = plan("adv", vec![standard("seat_moves", "1", true)]);
    assert_eq!(
        bad_fields("in advance on deltas", c.publish_plan(in_advance).await),
        ["charges[0].pay_in_advance"]
    );
    let charges = vec![
        standard("api_calls", "1", false),
        standard("seat_moves", "1", false),
        standard("seats", "1", false),
    ];
    c.publish_plan(plan("safe", charges)).await.unwrap();
    start_sub_1_backdated(&mut c, "safe").await;
    c.record_usage(usage("real", "api_calls", "calls", "7")).await.unwrap();
    let before = append_probe(&mut c).await;
    let wipe = c.record_usage(usage("wipe", "api_calls", "calls", "-1000000")).await;
    assert_eq!(bad_fields("negative calls", wipe), ["properties[calls]"]);
    let items = vec![
        usage("wipe-2", "api_calls", "calls", "-5"),
        usage("seats-up", "seats", "delta", "5"),
        usage("seats-under", "seats", "delta", "-6"),
        usage("seats-down", "seats", "delta", "-5"),
    ];
    let reply = c.stream_usage(tokio_stream::iter(items)).await.unwrap().into_inner();
    let statuses: Vec<(&str, i32)> =
        reply.results.iter().map(|r| (r.status.as_str(), r.code)).collect();
    let invalid = Code::InvalidArgument as i32;
    assert_eq!(
        statuses,
        [("rejected", invalid), ("accepted", 0), ("rejected", invalid), ("accepted", 0)],
        "refused per item; a level goes down to zero, not below"
    );
    c.record_usage(usage("moves-in", "seat_moves", "delta", "10")).await.unwrap();
    c.record_usage(usage("moves-out", "seat_moves", "delta", "-30")).await.unwrap();
    assert_eq!(append_probe(&mut c).await, before + 4 + 1, "only the accepted events appended");

    let run = pb::RunBillingRequest { as_of: Some(now()), ..Default::default() };
    let run = c.run_billing(run).await.unwrap().into_inner();
    let invoice = &run.invoices[0];
    let line = |code: &str| invoice.lines.iter().find(|l| l.metric_code == code).unwrap();
    assert_eq!(
        (dec(&line("api_calls").units), dec(&line("api_calls").amount)),
        (dec("7"), dec("7"))
    );
    // 10 − 30 = −20 deltas: rated as zero units, never a credit.
    assert_eq!(
        (dec(&line("seat_moves").units), dec(&line("seat_moves").amount)),
        (dec("0"), dec("0"))
    );
    assert_eq!(dec(&invoice.subtotal), dec("7") + dec(&line("seats").amount));
    assert_eq!(server.terminate().await.code(), Some(0));
}

/// Items 2 and 3: a billing run or a payment later than the server's clock (+300 s) is refused,
/// as is a payment dated before its invoice; every Timestamp is a valid protobuf Timestamp. A
/// subscription started a month ago and billed at the real clock shows its invoice honestly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instants_past_the_clock_or_malformed_are_refused() {
    let (_dir, server, mut c) = growth_books().await;
    c.record_usage(usage("tx-1", "api_calls", "calls", "10")).await.unwrap();
    let before = append_probe(&mut c).await;
    let future = pb::RunBillingRequest { as_of: Some(days_from_now(40)), ..Default::default() };
    assert_eq!(bad_fields("as_of +40 days", c.run_billing(future).await), ["as_of"]);
    let soon = pb::RunBillingRequest { as_of: Some(days_from_now(1)), ..Default::default() };
    assert_eq!(bad_fields("as_of +1 day", c.run_billing(soon).await), ["as_of"]);
    for nanos in [-1, 1_000_000_000, 2_000_000_000] {
        let mut t = now();
        t.nanos = nanos;
        let run = pb::RunBillingRequest { as_of: Some(t), ..Default::default() };
        assert_eq!(bad_fields("as_of nanos", c.run_billing(run).await), ["as_of"], "{nanos}");
        let mut u = usage("tx-nanos", "api_calls", "calls", "1");
        u.occurred_at.as_mut().unwrap().nanos = nanos;
        assert_eq!(bad_fields("usage nanos", c.record_usage(u).await), ["occurred_at"], "{nanos}");
    }
    let mut ancient = usage("tx-ancient", "api_calls", "calls", "1");
    ancient.occurred_at = Some(prost_types::Timestamp { seconds: i64::MIN, nanos: 0 });
    assert_eq!(bad_fields("i64::MIN", c.record_usage(ancient).await), ["occurred_at"]);
    assert_eq!(append_probe(&mut c).await, before + 1, "refused commands appended nothing");

    // The honest path on a real clock: billed now, the first period's invoice.
    let run = pb::RunBillingRequest { as_of: Some(now()), ..Default::default() };
    let run = c.run_billing(run).await.unwrap().into_inner();
    assert_eq!(run.periods_closed, 1);
    let invoice = run.invoices[0].clone();
    assert_eq!(invoice.period_start, month_ago_in_berlin().to_string());
    let pay = |occurred_at: Option<prost_types::Timestamp>| pb::RecordPaymentRequest {
        invoice_id: invoice.invoice_id.clone(),
        succeeded: true,
        amount: "1.00".into(),
        occurred_at,
        ..Default::default()
    };
    let before = append_probe(&mut c).await;
    let year_3000 = prost_types::Timestamp { seconds: 32_503_680_000, nanos: 0 };
    assert_eq!(
        bad_fields("paid in 3000", c.record_payment(pay(Some(year_3000))).await),
        ["occurred_at"]
    );
    let tomorrow = days_from_now(1);
    assert_eq!(
        bad_fields("paid tomorrow", c.record_payment(pay(Some(tomorrow))).await),
        ["occurred_at"]
    );
    let mut odd = now();
    odd.nanos = -1;
    assert_eq!(
        bad_fields("payment nanos", c.record_payment(pay(Some(odd))).await),
        ["occurred_at"]
    );
    let issued = invoice.issued_at.unwrap();
    let early = prost_types::Timestamp { seconds: issued.seconds - 1, nanos: 0 };
    let (kind, subject, _) =
        precondition("paid before issue", c.record_payment(pay(Some(early))).await);
    assert_eq!(
        (kind.as_str(), subject),
        ("PAYMENT_BEFORE_ISSUE", format!("invoice-{}", invoice.invoice_id))
    );
    assert_eq!(append_probe(&mut c).await, before + 1, "refused payments appended nothing");
    let paid = c.record_payment(pay(None)).await.unwrap().into_inner().invoice.unwrap();
    assert_eq!(dec(&paid.amount_paid), dec("1"));
    assert_eq!(server.terminate().await.code(), Some(0));
}

/// Item 4: pay in advance, graduated_percentage with a first-tier flat fee: the flat fee is
/// billed once per period, with its first event (and, for a period without events, at its
/// close: the current draft shows it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_advance_first_tier_flat_fee_is_billed_once_per_period() {
    let (_dir, server, mut c) = start_server().await;
    register_acme_and_api_calls(&mut c).await;
    c.define_metric(metric("volume", "sum", "amount", false)).await.unwrap();
    let mut flat = tier("100", "10");
    flat.flat_fee = "2".into();
    let tiers = vec![flat, tier("", "1")];
    let charge = pb::Charge {
        metric_code: "volume".into(),
        pay_in_advance: true,
        model: Some(pb::charge::Model::GraduatedPercentage(pb::TieredModel { tiers })),
    };
    c.publish_plan(plan("payments", vec![charge])).await.unwrap();
    start_sub_1_backdated(&mut c, "payments").await;
    // 50 at 10 % = 5.00 + the first tier's flat 2.00; then 50 → 150: 50 × 10 % + 50 × 1 %.
    let mut fees = Vec::new();
    for (tx, amount) in [("v1", "50"), ("v2", "100")] {
        let reply =
            c.record_usage(usage(tx, "volume", "amount", amount)).await.unwrap().into_inner();
        let id = reply.invoice_id;
        let invoice = c.get_invoice(pb::GetInvoiceRequest { invoice_id: id }).await.unwrap();
        fees.push(dec(&invoice.into_inner().subtotal));
    }
    assert_eq!(fees, [dec("7.00"), dec("5.50")]);
    let run = pb::RunBillingRequest { as_of: Some(now()), ..Default::default() };
    let run = c.run_billing(run).await.unwrap().into_inner();
    assert_eq!(dec(&run.invoices[0].total), dec("0"), "the period with events owes nothing more");
    // The current period has no event yet: closing it would bill the flat fee once.
    let current = pb::GetCurrentUsageRequest { subscription_id: "sub-1".into() };
    let draft = c.get_current_usage(current).await.unwrap().into_inner();
    let amounts: Vec<(&str, &str, Decimal)> = draft
        .lines
        .iter()
        .map(|l| (l.kind.as_str(), l.metric_code.as_str(), dec(&l.amount)))
        .collect();
    assert_eq!(amounts, [("usage_in_advance", "volume", dec("2.00"))]);
    assert_eq!(server.terminate().await.code(), Some(0));
}

/// Item 5: usage for a metric that the subscription's plan does not charge is
/// FAILED_PRECONDITION (METRIC_NOT_ON_PLAN), per item in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_for_a_metric_off_the_plan_is_refused_per_item() {
    let (_dir, server, mut c) = start_server().await;
    register_acme_and_api_calls(&mut c).await;
    c.define_metric(metric("storage_gb", "max", "gb", false)).await.unwrap();
    c.publish_plan(common::growth_plan("0.50")).await.unwrap();
    start_sub_1_backdated(&mut c, "growth").await;
    let before = append_probe(&mut c).await;
    let off = c.record_usage(usage("s1", "storage_gb", "gb", "3")).await;
    let (kind, subject, description) = precondition("off the plan", off);
    assert_eq!((kind.as_str(), subject.as_str()), ("METRIC_NOT_ON_PLAN", "subscription-sub-1"));
    assert!(description.contains("storage_gb") && description.contains("growth"), "{description}");
    assert_eq!(append_probe(&mut c).await, before + 1, "refused usage appended nothing");
    let items = || {
        vec![
            usage("a1", "api_calls", "calls", "1"),
            usage("s2", "storage_gb", "gb", "3"),
            usage("a2", "api_calls", "calls", "2"),
        ]
    };
    let reply = c.stream_usage(tokio_stream::iter(items())).await.unwrap().into_inner();
    let statuses: Vec<&str> = reply.results.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["accepted", "rejected", "accepted"]);
    assert_eq!(reply.results[1].code, Code::FailedPrecondition as i32);
    let batch = pb::UsageBatch {
        events: items()
            .into_iter()
            .map(|mut u| {
                u.transaction_id.push_str("-batch");
                u
            })
            .collect(),
    };
    let mut acks = c.ingest_usage(tokio_stream::iter(vec![batch])).await.unwrap().into_inner();
    let ack = acks.message().await.unwrap().unwrap();
    assert_eq!((ack.accepted, ack.duplicates, ack.rejected), (2, 0, 1));
    assert_eq!(server.terminate().await.code(), Some(0));
}

/// Item 6 (code side): re-running catalog commands without a key: identical content is a
/// replay (duplicate, the original position, nothing appended); the same id with other
/// content is ALREADY_EXISTS; a plan with other content is its next version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_reruns_without_a_key_are_replays_or_already_exists() {
    let (_dir, server, mut c) = start_server().await;
    let customer = pb::RegisterCustomerRequest {
        customer_id: "acme".into(),
        name: "Acme".into(),
        currency: "USD".into(),
        time_zone: "Europe/Berlin".into(),
        ..Default::default()
    };
    let metric = metric("api_calls", "sum", "calls", false);
    let growth = common::growth_plan("0.50");
    let first = [
        c.register_customer(customer.clone()).await.unwrap().into_inner(),
        c.define_metric(metric.clone()).await.unwrap().into_inner(),
        c.publish_plan(growth.clone()).await.unwrap().into_inner().ack.unwrap(),
    ];
    let sub = start_sub_1_backdated(&mut c, "growth").await.ack.unwrap();
    let head = append_probe(&mut c).await;
    let again = [
        c.register_customer(customer.clone()).await.unwrap().into_inner(),
        c.define_metric(metric.clone()).await.unwrap().into_inner(),
        c.publish_plan(growth.clone()).await.unwrap().into_inner().ack.unwrap(),
    ];
    for (a, f) in again.iter().zip(&first) {
        assert!(a.duplicate && a.events_appended == 0 && a.position == f.position, "{a:?} {f:?}");
    }
    let replayed_plan = c.publish_plan(growth.clone()).await.unwrap().into_inner();
    assert_eq!(replayed_plan.version, 1, "the replay names the version it repeats");
    let sub_again = start_sub_1_backdated(&mut c, "growth").await.ack.unwrap();
    assert!(sub_again.duplicate && sub_again.position == sub.position, "{sub_again:?}");
    assert_eq!(append_probe(&mut c).await, head + 1, "replays appended nothing");

    let renamed = pb::RegisterCustomerRequest { name: "Acme Corp".into(), ..customer };
    assert_eq!(c.register_customer(renamed).await.unwrap_err().code(), Code::AlreadyExists);
    let redefined = pb::DefineMetricRequest { aggregation: "max".into(), ..metric };
    assert_eq!(c.define_metric(redefined).await.unwrap_err().code(), Code::AlreadyExists);
    let other_start = pb::StartSubscriptionRequest {
        subscription_id: "sub-1".into(),
        customer_id: "acme".into(),
        plan_code: "growth".into(),
        ..Default::default()
    };
    assert_eq!(c.start_subscription(other_start).await.unwrap_err().code(), Code::AlreadyExists);
    let repriced = c.publish_plan(common::growth_plan("0.40")).await.unwrap().into_inner();
    assert_eq!((repriced.version, repriced.ack.unwrap().duplicate), (2, false));
    assert_eq!(server.terminate().await.code(), Some(0));
}

/// Item 7: "" and "-0" money, one metric in two charges, control characters in free text:
/// each a field violation, appending nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_negative_zero_money_duplicate_charges_and_control_characters_are_refused() {
    let (_dir, server, mut c) = growth_books().await;
    let run = pb::RunBillingRequest { as_of: Some(now()), ..Default::default() };
    let invoice_id = c.run_billing(run).await.unwrap().into_inner().invoices[0].invoice_id.clone();
    let before = append_probe(&mut c).await;

    let with = |edit: fn(&mut pb::PublishPlanRequest)| {
        let mut p = plan("p", vec![standard("api_calls", "1", false)]);
        edit(&mut p);
        p
    };
    let plans: [(&str, pb::PublishPlanRequest, &str); 7] = [
        ("empty base fee", with(|p| p.base_fee = String::new()), "base_fee"),
        ("-0 base fee", with(|p| p.base_fee = "-0".into()), "base_fee"),
        ("-0.00 base fee", with(|p| p.base_fee = "-0.00".into()), "base_fee"),
        (
            "empty unit price",
            with(|p| p.charges[0] = standard("api_calls", "", false)),
            "charges[0].standard.unit_price",
        ),
        (
            "-0 unit price",
            with(|p| p.charges[0] = standard("api_calls", "-0", false)),
            "charges[0].standard.unit_price",
        ),
        (
            "one metric twice",
            with(|p| p.charges.push(standard("api_calls", "2", false))),
            "charges[1].metric_code",
        ),
        ("a NUL in the name", with(|p| p.name = "Pro\0".into()), "name"),
    ];
    for (what, request, field) in plans {
        assert_eq!(bad_fields(what, c.publish_plan(request).await), [field], "{what}");
    }
    for name in ["Ac\0me", "Acme\nInc", "\u{1b}[31mAcme", "Acme\u{7f}"] {
        let customer = pb::RegisterCustomerRequest {
            customer_id: "other".into(),
            name: name.into(),
            currency: "USD".into(),
            ..Default::default()
        };
        assert_eq!(bad_fields(name, c.register_customer(customer).await), ["name"], "{name:?}");
    }
    let minus_zero_tax = pb::RegisterCustomerRequest {
        customer_id: "other".into(),
        name: "Other".into(),
        currency: "USD".into(),
        tax_rate: "-0".into(),
        ..Default::default()
    };
    assert_eq!(bad_fields("-0 tax", c.register_customer(minus_zero_tax).await), ["tax_rate"]);
    let rename = pb::UpdateCustomerRequest {
        customer_id: "acme".into(),
        name: Some("Acme\u{0}".into()),
        ..Default::default()
    };
    assert_eq!(bad_fields("update name", c.update_customer(rename).await), ["name"]);
    let bad_metric =
        pb::DefineMetricRequest { name: "calls\r".into(), ..metric("m2", "count", "", false) };
    assert_eq!(bad_fields("metric name", c.define_metric(bad_metric).await), ["name"]);
    let failed = pb::RecordPaymentRequest {
        invoice_id: invoice_id.clone(),
        succeeded: false,
        reason: "declined\0".into(),
        ..Default::default()
    };
    assert_eq!(bad_fields("payment reason", c.record_payment(failed).await), ["reason"]);
    let zero = pb::RecordPaymentRequest {
        invoice_id: invoice_id.clone(),
        succeeded: true,
        amount: "-0".into(),
        ..Default::default()
    };
    assert_eq!(bad_fields("-0 payment", c.record_payment(zero).await), ["amount"]);
    let void =
        pb::VoidInvoiceRequest { invoice_id, reason: "typo\u{1b}".into(), ..Default::default() };
    assert_eq!(bad_fields("void reason", c.void_invoice(void).await), ["reason"]);
    assert_eq!(append_probe(&mut c).await, before + 1, "refused commands appended nothing");
    assert_eq!(server.terminate().await.code(), Some(0));
}
