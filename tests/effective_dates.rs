//! Effective-dated commands on the real binary (issue 16): with the back-dating horizon set to
//! ten years (`--backdate-days-max 3660`), SPEC §4's and §5's worked examples are driven with
//! their own 2025 dates through back-dated commands and billing runs at past `as_of`s, on a
//! live server with the real clock: the graduated charge (250 calls = 180.00), the upgrade
//! proration (Jan 16: −15.48 / +32.00), MRR movements dated by the effective dates, and a
//! cancellation dated back into an invoiced January corrected by a new invoice while every
//! issued invoice stays as it was. The journal balances and `replay verify` agrees.

mod common;

use common::{assert_balanced, replay_verify_at, tier, Server};
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;
use tonic::Code;

/// The service clock's now as a recorded-time cutoff (`as_recorded_at`).
fn recorded_now() -> Option<prost_types::Timestamp> {
    let t = jiff::Timestamp::now();
    Some(prost_types::Timestamp { seconds: t.as_second(), nanos: t.subsec_nanosecond() })
}

fn utc(s: &str) -> Option<prost_types::Timestamp> {
    let t: jiff::Timestamp = s.parse().unwrap();
    Some(prost_types::Timestamp { seconds: t.as_second(), nanos: 0 })
}

fn plan(code: &str, fee: &str, timing: &str, charges: Vec<pb::Charge>) -> pb::PublishPlanRequest {
    pb::PublishPlanRequest {
        code: code.into(),
        name: code.into(),
        currency: "USD".into(),
        interval: "monthly".into(),
        base_fee: fee.into(),
        base_fee_in_advance: timing == "advance",
        charges,
        ..Default::default()
    }
}

async fn start(c: &mut CommandServiceClient<Channel>, sub: &str, plan: &str, on: &str) {
    let start = pb::StartSubscriptionRequest {
        subscription_id: sub.into(),
        customer_id: "acme".into(),
        plan_code: plan.into(),
        start_date: on.into(),
        ..Default::default()
    };
    c.start_subscription(start).await.unwrap();
}

async fn bill(c: &mut CommandServiceClient<Channel>, as_of: &str) -> Vec<pb::Invoice> {
    let run = pb::RunBillingRequest { as_of: utc(as_of), ..Default::default() };
    c.run_billing(run).await.unwrap().into_inner().invoices
}

fn lines(inv: &pb::Invoice) -> Vec<(String, String)> {
    inv.lines.iter().map(|l| (l.kind.clone(), l.amount.clone())).collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

async fn mrr(q: &mut QueryServiceClient<Channel>, date: &str, at: u64) -> String {
    let req = pb::MrrRequest {
        currency: "USD".into(),
        date: date.into(),
        min_position: Some(at),
        ..Default::default()
    };
    q.get_mrr(req).await.unwrap().into_inner().mrr
}

/// A server whose back-dating horizon is ten years (so SPEC's 2025 dates are in reach), with
/// customer `acme` in UTC without tax.
async fn ten_year_horizon_with_acme(
    dir: &std::path::Path,
) -> (Server, CommandServiceClient<Channel>) {
    let server = Server::start_with(dir, common::free_port(), &["--backdate-days-max", "3660"]);
    let mut c = server.client().await;
    let customer = pb::RegisterCustomerRequest {
        time_zone: "UTC".into(),
        tax_rate: "0".into(),
        ..common::acme_request()
    };
    c.register_customer(customer).await.unwrap();
    (server, c)
}

#[tokio::test]
async fn spec_examples_run_through_back_dated_commands_on_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = ten_year_horizon_with_acme(dir.path()).await;
    c.define_metric(common::api_calls_metric()).await.unwrap();
    c.publish_plan(plan("basic", "30.00", "advance", vec![])).await.unwrap();
    c.publish_plan(plan("pro", "62.00", "advance", vec![])).await.unwrap();
    // SPEC §4's graduated example: up to 100 @ 1.00 + flat 5, up to 1000 @ 0.50, rest @ 0.10.
    let graduated = pb::Charge {
        metric_code: "api_calls".into(),
        pay_in_advance: false,
        model: Some(pb::charge::Model::Graduated(pb::TieredModel {
            tiers: vec![
                pb::Tier { flat_fee: "5".into(), ..tier("100", "1.00") },
                tier("1000", "0.50"),
                tier("", "0.10"),
            ],
        })),
    };
    c.publish_plan(plan("metered", "0", "arrears", vec![graduated])).await.unwrap();

    // Started on 2025-01-01, nearly two years before this test runs: the start invoice bills
    // January in advance.
    start(&mut c, "sub-1", "basic", "2025-01-01").await;
    start(&mut c, "sub-2", "metered", "2025-01-01").await;
    // SPEC §4's upgrade, dated Jan 16 and sent today: January is still open (no billing run
    // has closed it), so it bills as the upgrade made live on Jan 16 did.
    let upgrade = pb::ChangePlanRequest {
        subscription_id: "sub-1".into(),
        plan_code: "pro".into(),
        effective_date: "2025-01-16".into(),
        ..Default::default()
    };
    let upgraded = c.change_plan(upgrade).await.unwrap().into_inner();
    assert_eq!(upgraded.plan_code, "pro");
    assert_eq!(lines(&upgraded.invoices[0]), pairs(&[("credit", "-15.48"), ("base_fee", "32.00")]));
    assert_eq!(upgraded.invoices[0].reason, "plan_upgrade");
    // Usage dated in January, accepted while January is open.
    let usage = pb::UsageEvent {
        subscription_id: "sub-2".into(),
        transaction_id: "jan-calls".into(),
        metric_code: "api_calls".into(),
        occurred_at: utc("2025-01-10T12:00:00Z"),
        properties: [("calls".to_string(), "250".to_string())].into(),
    };
    c.record_usage(usage.clone()).await.unwrap();
    // The billing run as of Feb 1 2025 closes January.
    let feb = bill(&mut c, "2025-02-01T00:00:00Z").await;
    let by_sub = |subs: &[pb::Invoice], s: &str| {
        subs.iter().find(|i| i.subscription_id == s).cloned().expect("an invoice")
    };
    assert_eq!(lines(&by_sub(&feb, "sub-2")), pairs(&[("usage", "180.00")]), "SPEC graduated");
    assert_eq!(lines(&by_sub(&feb, "sub-1")), pairs(&[("base_fee", "62.00")]), "Feb on pro");
    // January is closed now: a January usage event is refused.
    let late = pb::UsageEvent { transaction_id: "late".into(), ..usage };
    assert_eq!(c.record_usage(late).await.unwrap_err().code(), Code::FailedPrecondition);

    // Cancel sub-1 dated Jan 21, into the invoiced January: a correction invoice credits
    // January's 11 days of pro (11/31 × 62.00), and February (invoiced in advance) is credited
    // by the final close; the January and February invoices stay as issued.
    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let before: Vec<pb::Invoice> = list(&mut q, 0).await;
    let cancel = pb::CancelSubscriptionRequest {
        subscription_id: "sub-1".into(),
        effective_date: "2025-01-21".into(),
        ..Default::default()
    };
    let canceled = c.cancel_subscription(cancel).await.unwrap().into_inner();
    assert_eq!(canceled.status, "canceled");
    let reasons: Vec<_> = canceled.invoices.iter().map(|i| i.reason.as_str()).collect();
    assert_eq!(reasons, ["correction", "cancellation"]);
    assert_eq!(lines(&canceled.invoices[0]), pairs(&[("credit", "-22.00")]));
    assert_eq!(lines(&canceled.invoices[1]), pairs(&[("credit", "-62.00")]));
    let at = common::append_probe(&mut c).await;
    let after = list(&mut q, at).await;
    for inv in &before {
        let now = after.iter().find(|i| i.invoice_id == inv.invoice_id).expect("still listed");
        assert_eq!(
            (&now.lines, &now.total),
            (&inv.lines, &inv.total),
            "{} unchanged",
            inv.invoice_id
        );
    }
    // sub-1 billed 30.00 + 16.52 + 62.00 − 22.00 − 62.00 = 24.52: twenty days of January.
    let billed: rust_decimal::Decimal = after
        .iter()
        .filter(|i| i.subscription_id == "sub-1")
        .map(|i| i.total.parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    assert_eq!(billed.to_string(), "24.52");

    // MRR by effective date (SPEC §5): 30 from Jan 1, 62 from Jan 16, churn on Jan 21.
    for (date, expected) in
        [("2025-01-15", "30.00"), ("2025-01-16", "62.00"), ("2025-01-21", "0.00")]
    {
        assert_eq!(mrr(&mut q, date, at).await, expected, "MRR on {date}");
    }
    let trial = pb::AsOfRequest {
        as_recorded_at: None,
        as_of: "2025-03-01".into(),
        min_position: Some(at),
    };
    assert_balanced(&q.get_trial_balance(trial).await.unwrap().into_inner());
    drop(c);
    drop(q);
    assert!(server.terminate().await.success());
    replay_verify_at(dir.path(), at);
}

#[tokio::test]
async fn dates_outside_the_horizon_are_refused_and_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::free_port());
    let mut c = server.client().await;
    common::register_acme_and_api_calls(&mut c).await;
    c.publish_plan(plan("basic", "30.00", "advance", vec![])).await.unwrap();
    // The default horizon is 366 days.
    let too_old = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 400))
        .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
        .date();
    let start = pb::StartSubscriptionRequest {
        subscription_id: "sub-1".into(),
        customer_id: "acme".into(),
        plan_code: "basic".into(),
        start_date: too_old.to_string(),
        ..Default::default()
    };
    let head = common::append_probe(&mut c).await;
    let refused = c.start_subscription(start.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("back-dating horizon"), "{}", refused.message());
    common::start_sub_1_backdated(&mut c, "basic").await;
    let bad = [
        ("not-a-date", Code::InvalidArgument),
        (too_old.to_string().as_str(), Code::InvalidArgument),
        ("2001-01-01", Code::InvalidArgument),
    ]
    .map(|(d, code)| (d.to_string(), code));
    let after_start = common::append_probe(&mut c).await;
    for (date, code) in &bad {
        let cancel = pb::CancelSubscriptionRequest {
            subscription_id: "sub-1".into(),
            effective_date: date.clone(),
            ..Default::default()
        };
        assert_eq!(c.cancel_subscription(cancel).await.unwrap_err().code(), *code, "{date}");
    }
    let both = pb::CancelSubscriptionRequest {
        subscription_id: "sub-1".into(),
        immediately: true,
        effective_date: common::month_ago_in_berlin().to_string(),
        ..Default::default()
    };
    assert_eq!(c.cancel_subscription(both).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(common::append_probe(&mut c).await, after_start + 1, "refusals append nothing");
    assert!(after_start > head);
}

async fn list(q: &mut QueryServiceClient<Channel>, at: u64) -> Vec<pb::Invoice> {
    let req = pb::ListInvoicesRequest {
        customer_id: "acme".into(),
        min_position: Some(at),
        page_size: 100,
        ..Default::default()
    };
    let page = q.list_invoices(req).await.unwrap().into_inner();
    page.invoices
}

/// The recognized revenue of the books at `as_of`, as they stood at `recorded` (None: now).
async fn recognized(
    q: &mut QueryServiceClient<Channel>,
    as_of: &str,
    recorded: Option<prost_types::Timestamp>,
    at: u64,
) -> String {
    let req =
        pb::AsOfRequest { as_of: as_of.into(), min_position: Some(at), as_recorded_at: recorded };
    let balances = q.get_balances(req).await.unwrap().into_inner().balances;
    balances.into_iter().find(|b| b.currency == "USD").unwrap().total_recognized_revenue
}

#[tokio::test]
async fn bitemporal_queries_show_the_books_before_and_after_a_back_dated_correction() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = ten_year_horizon_with_acme(dir.path()).await;
    c.publish_plan(plan("basic", "30.00", "advance", vec![])).await.unwrap();
    c.publish_plan(plan("pro", "62.00", "advance", vec![])).await.unwrap();
    start(&mut c, "sub-1", "basic", "2025-01-01").await;
    bill(&mut c, "2025-02-01T00:00:00Z").await;
    // The books as they stood before the correction: recorded up to now.
    let before = common::append_probe(&mut c).await;
    let stood = recorded_now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // The correction, recorded later, dated back to Jan 16 (inside invoiced January).
    let upgrade = pb::ChangePlanRequest {
        subscription_id: "sub-1".into(),
        plan_code: "pro".into(),
        effective_date: "2025-01-16".into(),
        ..Default::default()
    };
    let corrected = c.change_plan(upgrade).await.unwrap().into_inner();
    assert_eq!(corrected.invoices[0].reason, "correction");
    let at = common::append_probe(&mut c).await;
    assert!(at > before);
    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);

    // January's revenue: 30.00 as the books stood; 15 days of basic + 16 of pro now
    // (14.52 + 32.00).
    assert_eq!(recognized(&mut q, "2025-01-31", stood, at).await, "30.00");
    assert_eq!(recognized(&mut q, "2025-01-31", None, at).await, "46.52");
    // MRR on Jan 20: basic then, pro now.
    let mrr_at = |recorded| pb::MrrRequest {
        currency: "USD".into(),
        date: "2025-01-20".into(),
        min_position: Some(at),
        as_recorded_at: recorded,
        ..Default::default()
    };
    assert_eq!(q.get_mrr(mrr_at(stood)).await.unwrap().into_inner().mrr, "30.00");
    assert_eq!(q.get_mrr(mrr_at(None)).await.unwrap().into_inner().mrr, "62.00");
    // The invoices: the correction is not in the books as they stood.
    let listing = |recorded| pb::ListInvoicesRequest {
        customer_id: "acme".into(),
        min_position: Some(at),
        as_recorded_at: recorded,
        ..Default::default()
    };
    let then = q.list_invoices(listing(stood)).await.unwrap().into_inner();
    let now = q.list_invoices(listing(None)).await.unwrap().into_inner();
    assert_eq!((then.invoices.len(), now.invoices.len()), (2, 3));
    assert_eq!(then.position, before, "the past books end where the log stood");
    let correction = pb::InvoiceQuery {
        invoice_id: corrected.invoices[0].invoice_id.clone(),
        as_recorded_at: stood,
        ..Default::default()
    };
    assert_eq!(q.get_invoice(correction).await.unwrap_err().code(), Code::NotFound);
    // The revenue waterfall for January agrees with the balances, both ways.
    let waterfall = |recorded| pb::RevenueWaterfallRequest {
        from_month: "2025-01".into(),
        to_month: "2025-01".into(),
        currency: "USD".into(),
        min_position: Some(at),
        as_recorded_at: recorded,
        ..Default::default()
    };
    let total = |r: pb::RevenueWaterfallResponse| {
        r.rows
            .iter()
            .map(|row| row.total.parse::<rust_decimal::Decimal>().unwrap())
            .sum::<rust_decimal::Decimal>()
    };
    let then = total(q.get_revenue_waterfall(waterfall(stood)).await.unwrap().into_inner());
    let now = total(q.get_revenue_waterfall(waterfall(None)).await.unwrap().into_inner());
    assert_eq!((then.to_string(), now.to_string()), ("30.00".into(), "46.52".into()));
    // The journal: the correction's entries are not in the books as they stood.
    let entries = |recorded| pb::ListJournalEntriesRequest {
        from: "2025-01-01".into(),
        to: "2025-12-31".into(),
        page_size: 1000,
        min_position: Some(at),
        as_recorded_at: recorded,
        ..Default::default()
    };
    let then = q.list_journal_entries(entries(stood)).await.unwrap().into_inner().entries.len();
    let now = q.list_journal_entries(entries(None)).await.unwrap().into_inner().entries.len();
    assert!(then > 0 && now > then, "{then} entries then, {now} now");
    // A recorded time after the correction: built from a copy of the kept books as they stood
    // (only the events between folded), they are the books as known now.
    let later = recorded_now();
    assert_eq!(recognized(&mut q, "2025-01-31", later, at).await, "46.52");
    assert_eq!(q.get_mrr(mrr_at(later)).await.unwrap().into_inner().mrr, "62.00");
    let later_list = q.list_invoices(listing(later)).await.unwrap().into_inner();
    assert_eq!(
        later_list.invoices,
        q.list_invoices(listing(None)).await.unwrap().into_inner().invoices
    );
    assert_eq!(recognized(&mut q, "2025-01-31", stood, at).await, "30.00", "kept as they stood");
    // A recorded time in the future is refused.
    let future = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let future = Some(prost_types::Timestamp { seconds: future.as_second(), nanos: 0 });
    let refused = q.get_mrr(mrr_at(future)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}

/// One row of the charge-model table (SPEC §4's rules; `domain/src/rating/charge_model.rs`
/// rates the same cases at the unit level): a plan with one charge, the January usage of a
/// subscription started on 2025-01-01, and the usage line the billing run as of Feb 1 issues.
struct ChargeCase {
    name: &'static str,
    metric: &'static str,
    charge: serde_json::Value,
    usage: &'static [&'static str],
    line: &'static str,
}

/// One row of the MRR normalization table (SPEC §5): a plan's base fee per interval and its
/// monthly recurring revenue.
struct MrrCase {
    interval: &'static str,
    fee: &'static str,
    mrr: &'static str,
}

#[tokio::test]
async fn the_charge_model_and_mrr_tables_hold_through_back_dated_commands() {
    use serde_json::json;
    let tiers = json!([{"up_to": "100", "unit_price": "1.00", "flat_fee": "5"},
                       {"up_to": "1000", "unit_price": "0.50"}, {"unit_price": "0.10"}]);
    let charges = [
        ChargeCase {
            name: "standard",
            metric: "calls",
            charge: json!({"model": "standard", "unit_price": "1.50"}),
            usage: &["4"],
            line: "6.00",
        },
        ChargeCase {
            name: "graduated (SPEC 250)",
            metric: "calls",
            charge: json!({"model": "graduated", "tiers": tiers}),
            usage: &["200", "50"],
            line: "180.00",
        },
        ChargeCase {
            name: "graduated at zero: first flat fee",
            metric: "calls",
            charge: json!({"model": "graduated", "tiers": tiers}),
            usage: &["0"],
            line: "5.00",
        },
        ChargeCase {
            name: "volume 250",
            metric: "calls",
            charge: json!({"model": "volume", "tiers": tiers}),
            usage: &["250"],
            line: "125.00",
        },
        ChargeCase {
            name: "volume 1001",
            metric: "calls",
            charge: json!({"model": "volume", "tiers": tiers}),
            usage: &["1001"],
            line: "100.10",
        },
        ChargeCase {
            name: "package past free",
            metric: "calls",
            charge: json!({"model": "package", "package_size": "10", "package_price": "5", "free_units": "20"}),
            usage: &["30"],
            line: "5.00",
        },
        ChargeCase {
            name: "package 100",
            metric: "calls",
            charge: json!({"model": "package", "package_size": "10", "package_price": "5", "free_units": "20"}),
            usage: &["60", "40"],
            line: "40.00",
        },
        ChargeCase {
            name: "percentage 2 % + 0.30",
            metric: "payments",
            charge: json!({"model": "percentage", "rate": "2", "fixed_amount": "0.30"}),
            usage: &["100", "50"],
            line: "3.60",
        },
        ChargeCase {
            name: "graduated percentage",
            metric: "payments",
            charge: json!({"model": "graduated_percentage", "tiers": [{"up_to": "1000", "unit_price": "2", "flat_fee": "1"}, {"unit_price": "1", "flat_fee": "10"}]}),
            usage: &["500", "800"],
            line: "34.00",
        },
    ];
    let intervals = [
        MrrCase { interval: "weekly", fee: "12.00", mrr: "52.00" },
        MrrCase { interval: "monthly", fee: "30.00", mrr: "30.00" },
        MrrCase { interval: "quarterly", fee: "90.00", mrr: "30.00" },
        MrrCase { interval: "semiannual", fee: "60.00", mrr: "10.00" },
        MrrCase { interval: "yearly", fee: "120.00", mrr: "10.00" },
    ];
    let mut lines = vec![
        json!({"type": "metric", "code": "calls", "name": "Calls", "aggregation": "sum", "property": "n"}),
        json!({"type": "metric", "code": "payments", "name": "Payments", "aggregation": "sum", "property": "amount"}),
    ];
    let record = |name: &str, plan: serde_json::Value| -> Vec<serde_json::Value> {
        vec![
            plan,
            json!({"type": "customer", "customer_id": name, "name": name, "currency": "USD", "time_zone": "UTC"}),
            json!({"type": "subscription", "subscription_id": name, "customer_id": name, "plan_code": name, "start_date": "2025-01-01"}),
        ]
    };
    for (i, case) in charges.iter().enumerate() {
        let mut charge = case.charge.clone();
        charge["metric_code"] = json!(case.metric);
        let plan = json!({"type": "plan", "code": format!("c{i}"), "name": case.name, "currency": "USD",
                          "interval": "monthly", "base_fee": "0", "charges": [charge]});
        lines.extend(record(&format!("c{i}"), plan));
        for (k, value) in case.usage.iter().enumerate() {
            let property = if case.metric == "calls" { "n" } else { "amount" };
            lines.push(json!({"type": "usage", "subscription_id": format!("c{i}"), "transaction_id": format!("t{k}"),
                              "metric_code": case.metric, "occurred_at": format!("2025-01-{:02}T12:00:00Z", 5 + k),
                              "properties": {property: value}}));
        }
    }
    for (i, case) in intervals.iter().enumerate() {
        let plan = json!({"type": "plan", "code": format!("m{i}"), "name": case.interval, "currency": "USD",
                          "interval": case.interval, "base_fee": case.fee, "fee_timing": "advance"});
        lines.extend(record(&format!("m{i}"), plan));
    }
    lines.push(json!({"type": "billing_run", "as_of": "2025-02-01T00:00:00Z"}));
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut q, at) = imported(dir.path(), &lines).await;
    for (i, case) in charges.iter().enumerate() {
        let req = pb::ListInvoicesRequest {
            customer_id: format!("c{i}"),
            min_position: Some(at),
            ..Default::default()
        };
        let invoices = q.list_invoices(req).await.unwrap().into_inner().invoices;
        let usage: Vec<&str> = invoices
            .iter()
            .flat_map(|inv| inv.lines.iter())
            .filter(|l| l.kind == "usage")
            .map(|l| l.amount.as_str())
            .collect();
        assert_eq!(usage, [case.line], "{}", case.name);
    }
    for (i, case) in intervals.iter().enumerate() {
        let req = pb::MrrRequest {
            currency: "USD".into(),
            date: "2025-01-15".into(),
            customer_id: format!("m{i}"),
            min_position: Some(at),
            ..Default::default()
        };
        assert_eq!(q.get_mrr(req).await.unwrap().into_inner().mrr, case.mrr, "{}", case.interval);
    }
}

/// One row of the recognition table (SPEC §5): line `line` of invoice `invoice`, recognized
/// through `as_of`.
struct RecognitionCase {
    why: &'static str,
    invoice: &'static str,
    line: u32,
    as_of: &'static str,
    recognized: &'static str,
}

#[tokio::test]
async fn the_recognition_table_holds_through_back_dated_commands() {
    use serde_json::json;
    let plans = [
        json!({"code": "r0", "base_fee": "31.00", "fee_timing": "advance"}),
        json!({"code": "r1", "base_fee": "30.00", "fee_timing": "advance"}),
        json!({"code": "r2", "base_fee": "10.00", "fee_timing": "advance"}),
        json!({"code": "r3", "base_fee": "0", "minimum_commitment": "50.00"}),
        json!({"code": "r4", "base_fee": "0", "charges": [{"metric_code": "calls", "model": "standard", "unit_price": "1.00"}]}),
    ];
    let mut lines = vec![
        json!({"type": "metric", "code": "calls", "name": "Calls", "aggregation": "sum", "property": "n"}),
    ];
    for p in plans {
        let code = p["code"].as_str().unwrap().to_string();
        let mut plan =
            json!({"type": "plan", "name": code, "currency": "USD", "interval": "monthly"});
        plan.as_object_mut().unwrap().extend(p.as_object().unwrap().clone());
        lines.push(plan);
        lines.push(json!({"type": "customer", "customer_id": code, "name": code, "currency": "USD", "time_zone": "UTC"}));
        lines.push(json!({"type": "subscription", "subscription_id": code, "customer_id": code, "plan_code": code, "start_date": "2025-01-01"}));
    }
    for (tx, day, n) in [("u1", 5, 100), ("u2", 20, 50)] {
        lines.push(json!({"type": "usage", "subscription_id": "r4", "transaction_id": tx, "metric_code": "calls",
                          "occurred_at": format!("2025-01-{day:02}T12:00:00Z"), "properties": {"n": n}}));
    }
    lines.push(json!({"type": "billing_run", "as_of": "2025-02-01T00:00:00Z"}));
    let cases = [
        RecognitionCase {
            why: "ratable: 31.00 over January, 10 days",
            invoice: "inv-r0-1",
            line: 0,
            as_of: "2025-01-10",
            recognized: "10.00",
        },
        RecognitionCase {
            why: "ratable: the whole period",
            invoice: "inv-r0-1",
            line: 0,
            as_of: "2025-01-31",
            recognized: "31.00",
        },
        RecognitionCase {
            why: "ratable: nothing before the period",
            invoice: "inv-r0-1",
            line: 0,
            as_of: "2024-12-31",
            recognized: "0.00",
        },
        RecognitionCase {
            why: "ratable: 30.00 over February's 28 days, 14 days",
            invoice: "inv-r1-2",
            line: 0,
            as_of: "2025-02-14",
            recognized: "15.00",
        },
        RecognitionCase {
            why: "ratable: one day of 28, rounded",
            invoice: "inv-r1-2",
            line: 0,
            as_of: "2025-02-01",
            recognized: "1.07",
        },
        RecognitionCase {
            why: "ratable: one day of 31, rounded",
            invoice: "inv-r2-1",
            line: 0,
            as_of: "2025-01-01",
            recognized: "0.32",
        },
        RecognitionCase {
            why: "ratable: round(10.00 × 16 / 31)",
            invoice: "inv-r2-1",
            line: 0,
            as_of: "2025-01-16",
            recognized: "5.16",
        },
        RecognitionCase {
            why: "true-up: nothing before the last day",
            invoice: "inv-r3-1",
            line: 0,
            as_of: "2025-01-30",
            recognized: "0.00",
        },
        RecognitionCase {
            why: "true-up: all on the last day",
            invoice: "inv-r3-1",
            line: 0,
            as_of: "2025-01-31",
            recognized: "50.00",
        },
        RecognitionCase {
            why: "usage: as consumed, the 5th's 100 calls",
            invoice: "inv-r4-1",
            line: 0,
            as_of: "2025-01-10",
            recognized: "100.00",
        },
        RecognitionCase {
            why: "usage: as consumed, all by the 20th",
            invoice: "inv-r4-1",
            line: 0,
            as_of: "2025-01-20",
            recognized: "150.00",
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut q, at) = imported(dir.path(), &lines).await;
    for case in cases {
        let req = pb::RevenueScheduleRequest {
            invoice_id: case.invoice.into(),
            line_index: Some(case.line),
            as_of: case.as_of.into(),
            min_position: Some(at),
            ..Default::default()
        };
        let schedule = q.get_revenue_schedule(req).await.unwrap().into_inner();
        assert_eq!(schedule.recognized, case.recognized, "{}", case.why);
    }
}

/// What a proration row does after its back-dated start, dated into its open period (no
/// billing run has closed anything yet).
enum Dated {
    Nothing,
    /// To a plan with this base fee (same interval and timing), first day on it.
    Upgrade(&'static str, &'static str),
    /// First day without service.
    Cancel(&'static str),
}

/// One row of the proration table (SPEC §4; `domain/src/calendar.rs` and
/// `domain/src/ledger/tests.rs` prorate the same cases): a plan (interval, base fee, fee
/// timing, trial days), a subscription started back-dated on `start` with `anchor`, a dated
/// command, then billing runs as of Feb 1 and Mar 1 2025: the (kind, amount) lines of every
/// invoice of the subscription, in the order issued.
struct ProrationCase {
    name: &'static str,
    plan: (&'static str, &'static str, &'static str, u32),
    anchor: &'static str,
    start: &'static str,
    then: Dated,
    invoices: &'static [&'static [(&'static str, &'static str)]],
}

#[tokio::test]
async fn the_proration_table_holds_through_back_dated_commands() {
    use Dated::*;
    const FEE: &str = "base_fee";
    let cases = [
        ProrationCase {
            name: "calendar, mid-January, in advance",
            plan: ("monthly", "31.00", "advance", 0),
            anchor: "calendar",
            start: "2025-01-10",
            then: Nothing,
            // Jan 10..Feb 1: 31.00 × 22/31 = 22.00; then February and March in full.
            invoices: &[&[(FEE, "22.00")], &[(FEE, "31.00")], &[(FEE, "31.00")]],
        },
        ProrationCase {
            name: "calendar, mid-January, in arrears (calendar_anchor_prorates_the_first_period)",
            plan: ("monthly", "31.00", "arrears", 0),
            anchor: "calendar",
            start: "2025-01-16",
            then: Nothing,
            // Jan 16..Feb 1: 31.00 × 16/31 = 16.00 at January's close; February in full.
            invoices: &[&[(FEE, "16.00")], &[(FEE, "31.00")]],
        },
        ProrationCase {
            name: "anniversary, mid-January: not prorated",
            plan: ("monthly", "31.00", "advance", 0),
            anchor: "anniversary",
            start: "2025-01-10",
            then: Nothing,
            // Jan 10..Feb 10 in full; Feb 10..Mar 10 in full when the first closes.
            invoices: &[&[(FEE, "31.00")], &[(FEE, "31.00")]],
        },
        ProrationCase {
            name: "calendar, February (28 days): a half cent rounds away from zero",
            plan: ("monthly", "10.50", "advance", 0),
            anchor: "calendar",
            start: "2025-02-14",
            then: Nothing,
            // Feb 14..Mar 1: 10.50 × 15/28 = 5.625 → 5.63; March in full.
            invoices: &[&[(FEE, "5.63")], &[(FEE, "10.50")]],
        },
        ProrationCase {
            name: "calendar, on the 1st of February: not prorated",
            plan: ("monthly", "31.00", "advance", 0),
            anchor: "calendar",
            start: "2025-02-01",
            then: Nothing,
            // A whole period, 28 days at the full fee (not 31.00 × 28/31); March in full.
            invoices: &[&[(FEE, "31.00")], &[(FEE, "31.00")]],
        },
        ProrationCase {
            name: "14-day trial, in advance (trial_then_in_advance_fee_for_the_rest_of_the_period)",
            plan: ("monthly", "31.00", "advance", 14),
            anchor: "anniversary",
            start: "2025-01-01",
            then: Nothing,
            // No start invoice; trial ends Jan 15: 31.00 × 17/31 = 17.00 (Jan 15..Feb 1);
            // February and March in full.
            invoices: &[&[(FEE, "17.00")], &[(FEE, "31.00")], &[(FEE, "31.00")]],
        },
        ProrationCase {
            name: "cancellation dated Jan 12, in advance (immediate_cancel_credits_unused_days…)",
            plan: ("monthly", "31.00", "advance", 0),
            anchor: "anniversary",
            start: "2025-01-01",
            then: Cancel("2025-01-12"),
            // January in advance; unused Jan 12..Feb 1: −31.00 × 20/31 = −20.00; nothing more.
            invoices: &[&[(FEE, "31.00")], &[("credit", "-20.00")]],
        },
        ProrationCase {
            name: "cancellation dated Jan 10, in arrears",
            plan: ("monthly", "30.00", "arrears", 0),
            anchor: "anniversary",
            start: "2025-01-01",
            then: Cancel("2025-01-10"),
            // Jan 1..Jan 10: 30.00 × 9/31 = 8.709… → 8.71 on the final invoice.
            invoices: &[&[(FEE, "8.71")]],
        },
        ProrationCase {
            name: "upgrade dated Feb 15, in advance",
            plan: ("monthly", "30.00", "advance", 0),
            anchor: "anniversary",
            start: "2025-02-01",
            then: Upgrade("62.00", "2025-02-15"),
            // February on 30.00; Feb 15..Mar 1 is 14 of 28 days: −30.00 × 14/28 = −15.00,
            // +62.00 × 14/28 = 31.00; March in full on 62.00.
            invoices: &[
                &[(FEE, "30.00")],
                &[("credit", "-15.00"), (FEE, "31.00")],
                &[(FEE, "62.00")],
            ],
        },
        ProrationCase {
            name: "upgrade dated Feb 11, in arrears",
            plan: ("monthly", "30.00", "arrears", 0),
            anchor: "anniversary",
            start: "2025-02-01",
            then: Upgrade("62.00", "2025-02-11"),
            // At February's close, by plan days: 30.00 × 10/28 = 10.714… → 10.71 (Feb 1..11),
            // 62.00 × 18/28 = 39.857… → 39.86 (Feb 11..Mar 1).
            invoices: &[&[(FEE, "10.71"), (FEE, "39.86")]],
        },
        ProrationCase {
            name: "weekly, calendar, on a Wednesday",
            plan: ("weekly", "10.00", "advance", 0),
            anchor: "calendar",
            start: "2025-02-26",
            then: Nothing,
            // Weeks start on Mondays: Wed Feb 26..Mon Mar 3: 10.00 × 5/7 = 7.142… → 7.14.
            invoices: &[&[(FEE, "7.14")]],
        },
        ProrationCase {
            name: "yearly, calendar, on July 1",
            plan: ("yearly", "120.00", "advance", 0),
            anchor: "calendar",
            start: "2025-07-01",
            then: Nothing,
            // Jul 1..Jan 1 2026, 184 of 2025's 365 days: 120.00 × 184/365 = 60.493… → 60.49.
            invoices: &[&[(FEE, "60.49")]],
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = ten_year_horizon_with_acme(dir.path()).await;
    for (i, case) in cases.iter().enumerate() {
        let (interval, fee, timing, trial_days) = case.plan;
        let id = format!("p{i}");
        let customer = pb::RegisterCustomerRequest {
            customer_id: id.clone(),
            name: case.name.into(),
            currency: "USD".into(),
            time_zone: "UTC".into(),
            tax_rate: "0".into(),
            ..Default::default()
        };
        c.register_customer(customer).await.unwrap();
        let publish = |code: &str, fee: &str| pb::PublishPlanRequest {
            interval: interval.into(),
            trial_days,
            ..plan(code, fee, timing, vec![])
        };
        c.publish_plan(publish(&id, fee)).await.unwrap();
        let start = pb::StartSubscriptionRequest {
            subscription_id: id.clone(),
            customer_id: id.clone(),
            plan_code: id.clone(),
            billing_anchor: case.anchor.into(),
            start_date: case.start.into(),
            ..Default::default()
        };
        c.start_subscription(start).await.unwrap();
        match case.then {
            Nothing => {}
            Upgrade(fee, on) => {
                c.publish_plan(publish(&format!("{id}-up"), fee)).await.unwrap();
                let change = pb::ChangePlanRequest {
                    subscription_id: id.clone(),
                    plan_code: format!("{id}-up"),
                    effective_date: on.into(),
                    ..Default::default()
                };
                c.change_plan(change).await.unwrap();
            }
            Cancel(on) => {
                let cancel = pb::CancelSubscriptionRequest {
                    subscription_id: id.clone(),
                    effective_date: on.into(),
                    ..Default::default()
                };
                c.cancel_subscription(cancel).await.unwrap();
            }
        }
    }
    // The billing runs close, for every row at once, the periods that ended by their as_of.
    bill(&mut c, "2025-02-01T00:00:00Z").await;
    bill(&mut c, "2025-03-01T00:00:00Z").await;
    let at = common::append_probe(&mut c).await;
    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let mut wrong = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let req = pb::ListInvoicesRequest {
            customer_id: format!("p{i}"),
            min_position: Some(at),
            ..Default::default()
        };
        let issued = q.list_invoices(req).await.unwrap().into_inner().invoices;
        let got: Vec<_> = issued.iter().map(lines).collect();
        let want: Vec<_> = case.invoices.iter().map(|inv| pairs(inv)).collect();
        if got != want {
            wrong.push(format!("{}:\n  got  {got:?}\n  want {want:?}", case.name));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A server with a ten-year back-dating horizon into which `lines` (JSON Lines records) were
/// imported with `accrual import`: the server, a query client and the log position after them.
async fn imported(
    dir: &std::path::Path,
    lines: &[serde_json::Value],
) -> (Server, QueryServiceClient<Channel>, u64) {
    let file = dir.join("history.jsonl");
    std::fs::write(&file, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let port = common::free_port();
    let server = Server::start_with(&dir.join("data"), port, &["--backdate-days-max", "3660"]);
    let mut c = server.client().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["import", "--quiet", "--addr", &format!("http://127.0.0.1:{port}")])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let at = common::append_probe(&mut c).await;
    let q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    (server, q, at)
}
