//! `accrual import` against the real binary (issue 16): a generated company history (customers,
//! plans, subscriptions started in 2025, a back-dated plan change and cancellation, usage and
//! month-end billing runs) as JSON Lines, plus a usage CSV. A file with one bad record imports
//! nothing and names the line; the good file imports; a re-run appends nothing; and the books
//! equal those of a second server that was sent the same history call by call.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::Server;
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

const CUSTOMERS: u32 = 12;

/// The history, in effective-time order: what a migration from another biller gives.
fn history() -> Vec<Value> {
    let mut h = vec![
        json!({"type": "metric", "code": "api_calls", "name": "API calls", "aggregation": "sum", "property": "calls"}),
        json!({"type": "plan", "code": "basic", "name": "Basic", "currency": "USD", "interval": "monthly",
               "base_fee": "30.00", "fee_timing": "advance",
               "charges": [{"metric_code": "api_calls", "model": "standard", "unit_price": "0.01"}]}),
        json!({"type": "plan", "code": "pro", "name": "Pro", "currency": "USD", "interval": "monthly",
               "base_fee": "62.00", "fee_timing": "advance",
               "charges": [{"metric_code": "api_calls", "model": "graduated", "tiers": [
                   {"up_to": "100", "unit_price": "1.00", "flat_fee": "5"},
                   {"up_to": "1000", "unit_price": "0.50"}, {"unit_price": "0.10"}]}]}),
    ];
    for c in 0..CUSTOMERS {
        h.push(json!({"type": "customer", "customer_id": format!("c{c}"), "name": format!("Customer {c}"),
                      "currency": "USD", "time_zone": "UTC", "tax_rate": "10"}));
        h.push(json!({"type": "subscription", "subscription_id": format!("s{c}"), "customer_id": format!("c{c}"),
                      "plan_code": if c % 3 == 0 { "pro" } else { "basic" }, "start_date": "2025-01-01"}));
    }
    for month in 1..=3u32 {
        for c in 0..CUSTOMERS {
            for day in [3u32, 17] {
                let calls = (c * 37 + month * 11 + day) % 400;
                h.push(json!({"type": "usage", "subscription_id": format!("s{c}"),
                              "transaction_id": format!("t-{c}-{month}-{day}"), "metric_code": "api_calls",
                              "occurred_at": format!("2025-{month:02}-{day:02}T10:00:00Z"),
                              "properties": {"calls": calls}}));
            }
        }
        if month == 1 {
            // Dated inside January, while it is open: c1 upgraded on Jan 16.
            h.push(json!({"type": "plan_change", "subscription_id": "s1", "plan_code": "pro",
                          "effective_date": "2025-01-16"}));
        }
        h.push(
            json!({"type": "billing_run", "as_of": format!("2025-{:02}-01T00:00:00Z", month + 1)}),
        );
    }
    // Dated back into invoiced February: c2 left on Feb 20 (a correction invoice).
    h.push(
        json!({"type": "cancellation", "subscription_id": "s2", "effective_date": "2025-02-20"}),
    );
    h
}

fn write_jsonl(path: &std::path::Path, records: &[Value]) {
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn import(port: u16, file: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["import", "--quiet", "--addr", &format!("http://127.0.0.1:{port}")])
        .args(extra)
        .arg(file)
        .output()
        .expect("run accrual import");
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn server(dir: &std::path::Path, port: u16) -> Server {
    Server::start_with(dir, port, &["--backdate-days-max", "3660"])
}

#[tokio::test]
async fn a_history_imports_once_validated_first_and_equals_the_same_history_sent_live() {
    let work = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let imported = server(&work.path().join("imported"), port);
    let mut c = imported.client().await;

    // One bad record (a plan that does not exist) on line 9: nothing is imported.
    let mut bad = history();
    bad.insert(
        8,
        json!({"type": "subscription", "subscription_id": "s-x", "customer_id": "c0",
                         "plan_code": "no-such-plan", "start_date": "2025-01-01"}),
    );
    bad.insert(3, json!({"type": "usage", "subscription_id": "s0"}));
    let bad_file = work.path().join("bad.jsonl");
    write_jsonl(&bad_file, &bad);
    let head = common::append_probe(&mut c).await;
    let (ok, stdout, stderr) = import(port, &bad_file, &[]);
    assert!(!ok, "{stdout}{stderr}");
    assert!(stderr.contains("line 4: InvalidArgument: not a record"), "{stderr}");
    assert!(stderr.contains("line 10: NotFound"), "{stderr}");
    assert!(stderr.contains("nothing imported"), "{stderr}");
    assert_eq!(common::append_probe(&mut c).await, head + 1, "a bad file appends nothing");

    // The good file: validated, then imported.
    let file = work.path().join("history.jsonl");
    write_jsonl(&file, &history());
    let (ok, stdout, stderr) = import(port, &file, &[]);
    assert!(ok, "{stdout}{stderr}");
    let imported_line = stdout.lines().find(|l| l.starts_with("imported:")).unwrap().to_string();
    assert!(imported_line.ends_with("0 bad"), "{imported_line}");
    // A re-run appends nothing new.
    let before = common::append_probe(&mut c).await;
    let (ok, stdout, stderr) = import(port, &file, &[]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("imported: ") && stdout.contains(" 0 events appended"), "{stdout}");
    assert_eq!(common::append_probe(&mut c).await, before + 1, "a re-run appends nothing");

    // The same history, call by call, on a second server.
    let live_port = common::free_port();
    let live = server(&work.path().join("live"), live_port);
    let mut l = live.client().await;
    for record in history() {
        send_live(&mut l, &record).await;
    }
    let at_live = common::append_probe(&mut l).await;
    let at_imported = common::append_probe(&mut c).await;
    let mut qi = QueryServiceClient::new(imported.serving("accrual.v1.QueryService").await);
    let mut ql = QueryServiceClient::new(live.serving("accrual.v1.QueryService").await);
    let books_imported = books(&mut qi, at_imported).await;
    let books_live = books(&mut ql, at_live).await;
    assert!(
        books_imported.0.len() >= CUSTOMERS as usize * 4,
        "{} invoices",
        books_imported.0.len()
    );
    assert!(books_imported.0.iter().any(|i| i.contains("correction")), "the dated cancellation");
    assert_eq!(books_imported, books_live);
}

#[tokio::test]
async fn a_usage_csv_imports_and_reports_bad_rows_with_skip_invalid() {
    let work = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let srv = Server::start(work.path(), port);
    let mut c = srv.client().await;
    common::register_acme_and_api_calls(&mut c).await;
    c.publish_plan(common::growth_plan("0.50")).await.unwrap();
    common::start_sub_1_backdated(&mut c, "growth").await;
    let at = jiff::Timestamp::from_second(common::in_first_period().seconds).unwrap();
    let csv = format!(
        "subscription_id,transaction_id,metric_code,occurred_at,calls\n\
         sub-1,u1,api_calls,{at},10\n\
         sub-1,u2,api_calls,{at},15\n\
         sub-1,u3,api_calls,not-a-time,1\n\
         sub-1,u4,no_metric,{at},1\n\
         sub-1,u5,api_calls,{at},5\n"
    );
    let file = work.path().join("usage.csv");
    std::fs::write(&file, csv).unwrap();
    let (ok, stdout, stderr) = import(port, &file, &[]);
    assert!(!ok && stderr.contains("line 4:") && stderr.contains("line 5:"), "{stdout}{stderr}");
    let (ok, stdout, stderr) = import(port, &file, &["--skip-invalid"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("imported: 3 records"), "{stdout}");
    let mut q = QueryServiceClient::new(srv.serving("accrual.v1.QueryService").await);
    let head = common::append_probe(&mut c).await;
    let usage = pb::CurrentUsageQuery { subscription_id: "sub-1".into(), min_position: Some(head) };
    let draft = q.get_current_usage(usage).await.unwrap().into_inner().invoice.unwrap();
    let units: Vec<&str> =
        draft.lines.iter().filter(|l| l.kind == "usage").map(|l| l.units.as_str()).collect();
    assert_eq!(units, ["30"], "10 + 15 + 5 calls");
}

/// The record sent through its own gRPC call.
async fn send_live(c: &mut CommandServiceClient<Channel>, r: &Value) {
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    match r["type"].as_str().unwrap() {
        "metric" => {
            c.define_metric(common::api_calls_metric()).await.unwrap();
        }
        "plan" => {
            let charge = &r["charges"][0];
            let model = match charge["model"].as_str().unwrap() {
                "standard" => pb::charge::Model::Standard(pb::StandardModel {
                    unit_price: charge["unit_price"].as_str().unwrap().into(),
                }),
                _ => pb::charge::Model::Graduated(pb::TieredModel {
                    tiers: charge["tiers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| pb::Tier {
                            up_to: t["up_to"].as_str().unwrap_or_default().into(),
                            unit_price: t["unit_price"].as_str().unwrap().into(),
                            flat_fee: t["flat_fee"].as_str().unwrap_or_default().into(),
                        })
                        .collect(),
                }),
            };
            let plan = pb::PublishPlanRequest {
                code: s("code"),
                name: s("name"),
                currency: s("currency"),
                interval: s("interval"),
                base_fee: s("base_fee"),
                base_fee_in_advance: true,
                charges: vec![pb::Charge {
                    metric_code: "api_calls".into(),
                    pay_in_advance: false,
                    model: Some(model),
                }],
                ..Default::default()
            };
            c.publish_plan(plan).await.unwrap();
        }
        "customer" => {
            let req = pb::RegisterCustomerRequest {
                customer_id: s("customer_id"),
                name: s("name"),
                currency: s("currency"),
                time_zone: s("time_zone"),
                tax_rate: s("tax_rate"),
                ..Default::default()
            };
            c.register_customer(req).await.unwrap();
        }
        "subscription" => {
            let req = pb::StartSubscriptionRequest {
                subscription_id: s("subscription_id"),
                customer_id: s("customer_id"),
                plan_code: s("plan_code"),
                start_date: s("start_date"),
                ..Default::default()
            };
            c.start_subscription(req).await.unwrap();
        }
        "usage" => {
            let t: jiff::Timestamp = s("occurred_at").parse().unwrap();
            let calls = r["properties"]["calls"].to_string();
            let req = pb::UsageEvent {
                subscription_id: s("subscription_id"),
                transaction_id: s("transaction_id"),
                metric_code: s("metric_code"),
                occurred_at: Some(prost_types::Timestamp { seconds: t.as_second(), nanos: 0 }),
                properties: BTreeMap::from([("calls".to_string(), calls)]).into_iter().collect(),
            };
            c.record_usage(req).await.unwrap();
        }
        "plan_change" => {
            let req = pb::ChangePlanRequest {
                subscription_id: s("subscription_id"),
                plan_code: s("plan_code"),
                effective_date: s("effective_date"),
                ..Default::default()
            };
            c.change_plan(req).await.unwrap();
        }
        "cancellation" => {
            let req = pb::CancelSubscriptionRequest {
                subscription_id: s("subscription_id"),
                effective_date: s("effective_date"),
                ..Default::default()
            };
            c.cancel_subscription(req).await.unwrap();
        }
        "billing_run" => {
            let t: jiff::Timestamp = s("as_of").parse().unwrap();
            let req = pb::RunBillingRequest {
                as_of: Some(prost_types::Timestamp { seconds: t.as_second(), nanos: 0 }),
                ..Default::default()
            };
            c.run_billing(req).await.unwrap();
        }
        other => panic!("no live call for {other}"),
    }
}

/// An invoice as text: id, reason, period start, lines (kind, units, amount), tax and total.
fn invoice_text(i: &pb::Invoice) -> String {
    let lines: Vec<_> =
        i.lines.iter().map(|l| format!("{}:{}:{}", l.kind, l.units, l.amount)).collect();
    format!("{} {} {} {:?} {} {}", i.invoice_id, i.reason, i.period_start, lines, i.tax, i.total)
}

/// Every invoice (id, reason, lines and totals) and the balances at 2025-04-30, as text.
async fn books(q: &mut QueryServiceClient<Channel>, at: u64) -> (Vec<String>, String) {
    let req =
        pb::ListInvoicesRequest { page_size: 1000, min_position: Some(at), ..Default::default() };
    let invoices = q.list_invoices(req).await.unwrap().into_inner().invoices;
    let invoices = invoices.iter().map(invoice_text).collect();
    let balances = pb::AsOfRequest {
        as_recorded_at: None,
        as_of: "2025-04-30".into(),
        min_position: Some(at),
    };
    let balances = q.get_balances(balances).await.unwrap().into_inner();
    (invoices, format!("{:?}", balances.balances))
}

#[tokio::test]
async fn a_lago_export_converts_imports_and_bills() {
    let work = tempfile::tempdir().unwrap();
    let converted = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lago-to-accrual.py"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/import/lago"))
        .output()
        .expect("python3 runs scripts/lago-to-accrual.py");
    assert!(converted.status.success(), "{}", String::from_utf8_lossy(&converted.stderr));
    let skipped = String::from_utf8_lossy(&converted.stderr);
    assert!(
        skipped.contains("skipped metric seats")
            && skipped.contains("skipped subscription sub_old")
    );
    let file = work.path().join("lago.jsonl");
    std::fs::write(&file, &converted.stdout).unwrap();
    let port = common::free_port();
    let srv = server(&work.path().join("data"), port);
    let mut c = srv.client().await;
    let (ok, stdout, stderr) = import(port, &file, &[]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("imported: 9 records"), "{stdout}");
    let t: jiff::Timestamp = "2025-02-10T00:00:00Z".parse().unwrap();
    let run = pb::RunBillingRequest {
        as_of: Some(prost_types::Timestamp { seconds: t.as_second(), nanos: 0 }),
        ..Default::default()
    };
    let invoices = c.run_billing(run).await.unwrap().into_inner().invoices;
    let lines = |sub: &str| -> Vec<(String, String)> {
        let inv = invoices.iter().find(|i| i.subscription_id == sub).expect("an invoice");
        inv.lines.iter().map(|l| (l.kind.clone(), l.amount.clone())).collect()
    };
    // Lago's graduated ranges: 100 calls at 0.10, the other 50 at 0.05; February in advance.
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    };
    assert_eq!(lines("sub_acme"), pairs(&[("usage", "12.50"), ("base_fee", "49.00")]));
    // 5000 amount_cents in JPY (no minor unit) is ¥5000, in arrears.
    assert_eq!(lines("sub_kk"), pairs(&[("base_fee", "5000")]));
}

/// The migration check of issue 16 (`accrual bench migration`, whose full size is 1,000
/// customers, 12 months and 5M usage events; BENCHMARKS.md) at a size for CI: a generated
/// company of 60 customers over 12 months with 30,000 usage events, dated plan changes and
/// cancellations and month-end billing runs, imported into one server and sent call by call
/// into another: every invoice, the balances and MRR at each month start are equal.
#[test]
fn a_generated_twelve_month_company_imports_to_the_same_books_as_sent_live() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["bench", "migration", "--customers", "60", "--months", "12", "--events", "30000"])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run accrual bench migration");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("books equal: yes"), "{stdout}");
    let compared = stdout.lines().find(|l| l.starts_with("compared")).expect("a comparison line");
    let invoices: usize = compared
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the number of invoices compared");
    // 60 start invoices and 12 closes each, less the cancelled months.
    assert!(invoices >= 60 * 12, "{compared}");
    assert!(compared.contains("MRR on 13 month starts"), "{compared}");
}

/// April's usage and the May 1 billing run, after the cutover.
fn after_cutover() -> Vec<Value> {
    let mut h = Vec::new();
    for c in 0..CUSTOMERS {
        for day in [6u32, 21] {
            h.push(json!({"type": "usage", "subscription_id": format!("s{c}"),
                          "transaction_id": format!("t-{c}-4-{day}"), "metric_code": "api_calls",
                          "occurred_at": format!("2025-04-{day:02}T10:00:00Z"),
                          "properties": {"calls": (c * 53 + day) % 500}}));
        }
    }
    h.push(json!({"type": "billing_run", "as_of": "2025-05-01T00:00:00Z"}));
    h
}

/// An issued invoice as the `invoice` record a converter writes for the previous biller's.
fn invoice_record(i: &pb::Invoice) -> Value {
    let t = i.issued_at.as_ref().unwrap();
    let issued_at = jiff::Timestamp::new(t.seconds, t.nanos).unwrap();
    let lines: Vec<Value> = i
        .lines
        .iter()
        .map(|l| {
            json!({"kind": l.kind, "description": l.description, "metric_code": l.metric_code,
                   "charge_model": l.charge_model, "units": l.units,
                   "service_start": l.service_start, "service_end": l.service_end,
                   "amount": l.amount})
        })
        .collect();
    json!({"type": "invoice", "invoice_id": format!("prev-{}", i.invoice_id),
           "customer_id": i.customer_id, "subscription_id": i.subscription_id,
           "currency": i.currency, "period_start": i.period_start, "period_end": i.period_end,
           "issued_at": issued_at.to_string(), "lines": lines, "tax_rate": i.tax_rate,
           "tax": i.tax, "total": i.total})
}

/// Issue 16's "already-issued invoices imported as facts": a company billed live for three
/// months, then the same company imported with a cutover on April 1, its plan history, the
/// previous biller's invoices (own numbers, not re-rated) and a payment. From the cutover on
/// the two servers bill the same invoices, and the books agree: balances at May 31 and MRR on
/// every month start.
#[tokio::test]
async fn issued_invoices_import_as_facts_and_billing_continues_from_the_cutover() {
    let work = tempfile::tempdir().unwrap();
    // The history without the back-dated cancellation: a subscription that ended before its
    // cutover is not imported as one (decision 0044).
    let before: Vec<Value> =
        history().into_iter().filter(|r| r["type"] != "cancellation").collect();
    let live_port = common::free_port();
    let live = server(&work.path().join("live"), live_port);
    let mut l = live.client().await;
    for record in &before {
        send_live(&mut l, record).await;
    }
    let first = pb::GetInvoiceRequest { invoice_id: "inv-s0-1".into() };
    let total = l.get_invoice(first).await.unwrap().into_inner().total;
    let paid = pb::RecordPaymentRequest {
        invoice_id: "inv-s0-1".into(),
        succeeded: true,
        amount: total.clone(),
        ..Default::default()
    };
    let reply = l.record_payment(paid).await.unwrap().into_inner();
    assert_eq!(reply.invoice.unwrap().status, "paid");
    let at = common::append_probe(&mut l).await;
    let mut ql = QueryServiceClient::new(live.serving("accrual.v1.QueryService").await);
    let req =
        pb::ListInvoicesRequest { page_size: 1000, min_position: Some(at), ..Default::default() };
    let issued = ql.list_invoices(req).await.unwrap().into_inner().invoices;
    assert!(issued.len() >= CUSTOMERS as usize * 4, "{} invoices before the cutover", issued.len());

    // The import file a converter writes: catalog, customers, subscriptions with their cutover,
    // the plan history, the invoices as facts, the payment, then the open period as usual.
    let mut file: Vec<Value> = Vec::new();
    for r in &before {
        match r["type"].as_str().unwrap() {
            "metric" | "plan" | "customer" | "plan_change" => file.push(r.clone()),
            "subscription" => {
                let mut r = r.clone();
                r["billed_until"] = json!("2025-04-01");
                file.push(r);
            }
            _ => {}
        }
    }
    file.extend(issued.iter().map(invoice_record));
    file.push(json!({"type": "payment", "invoice_id": "prev-inv-s0-1", "amount": total}));
    file.extend(after_cutover());
    let path = work.path().join("with-invoices.jsonl");
    write_jsonl(&path, &file);
    let port = common::free_port();
    let imported = server(&work.path().join("imported"), port);
    let mut c = imported.client().await;
    let (ok, stdout, stderr) = import(port, &path, &[]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("imported:") && l.ends_with("0 bad")), "{stdout}");
    let (ok, stdout, stderr) = import(port, &path, &[]);
    assert!(
        ok && stdout.contains(" 0 events appended"),
        "a re-run appends nothing: {stdout}{stderr}"
    );

    for record in after_cutover() {
        send_live(&mut l, &record).await;
    }
    let at_live = common::append_probe(&mut l).await;
    let at_imported = common::append_probe(&mut c).await;
    let mut qi = QueryServiceClient::new(imported.serving("accrual.v1.QueryService").await);
    let req = |at| pb::ListInvoicesRequest {
        page_size: 1000,
        min_position: Some(at),
        ..Default::default()
    };
    let all_imported = qi.list_invoices(req(at_imported)).await.unwrap().into_inner().invoices;
    let all_live = ql.list_invoices(req(at_live)).await.unwrap().into_inner().invoices;

    // The previous biller's invoices, as they were.
    let facts: Vec<&pb::Invoice> = all_imported.iter().filter(|i| i.reason == "imported").collect();
    assert_eq!(facts.len(), issued.len());
    for (fact, was) in facts.iter().zip(&issued) {
        assert_eq!(fact.invoice_id, format!("prev-{}", was.invoice_id));
        assert_eq!((&fact.lines, &fact.tax, &fact.total), (&was.lines, &was.tax, &was.total));
    }
    let first = facts.iter().find(|i| i.invoice_id == "prev-inv-s0-1").unwrap();
    assert_eq!((first.status.as_str(), first.amount_due.as_str()), ("paid", "0.00"));

    // From the cutover on: the same invoices, numbered after the imported ones.
    let from_cutover = |all: &[pb::Invoice]| -> Vec<String> {
        let mut v: Vec<String> = all
            .iter()
            .filter(|i| i.period_start.as_str() >= "2025-04-01" && i.reason != "imported")
            .map(invoice_text)
            .collect();
        v.sort();
        v
    };
    let (got, want) = (from_cutover(&all_imported), from_cutover(&all_live));
    assert_eq!(got.len(), CUSTOMERS as usize, "{got:?}");
    assert_eq!(got, want);

    // The books: balances at May 31 and MRR on every month start.
    let today = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date().to_string();
    for date in ["2025-02-28", "2025-05-31", today.as_str()] {
        let balances = |at| pb::AsOfRequest {
            as_recorded_at: None,
            as_of: date.into(),
            min_position: Some(at),
        };
        let bi = qi.get_balances(balances(at_imported)).await.unwrap().into_inner().balances;
        let bl = ql.get_balances(balances(at_live)).await.unwrap().into_inner().balances;
        assert!(!bl.is_empty());
        assert_eq!(format!("{bi:?}"), format!("{bl:?}"), "balances at {date}");
    }
    for month in ["2025-01-15", "2025-02-01", "2025-03-01", "2025-04-01", "2025-05-01"] {
        let mrr = |at| pb::MrrRequest {
            currency: "USD".into(),
            date: month.into(),
            min_position: Some(at),
            ..Default::default()
        };
        let mi = qi.get_mrr(mrr(at_imported)).await.unwrap().into_inner().mrr;
        let ml = ql.get_mrr(mrr(at_live)).await.unwrap().into_inner().mrr;
        assert_eq!(mi, ml, "MRR on {month}");
    }
}
