//! `accrual export --format parquet`, read by pyarrow and DuckDB (tests/export_parquet/read.py
//! in a pinned virtualenv, `common::python`): for every kind of two data directories (the demo's
//! USD books, and a real server seeded with USD, JPY and KWD customers), the Parquet file has
//! the CSV's columns in order and its row count; amount columns are decimal128(38, s) with s =
//! the largest minor unit of the currencies in the file (the currency's own with --currency),
//! other decimals the most fractional digits of their CSV values, dates date32, instants
//! timestamp(µs, UTC), counts int64; the empty CSV fields of nullable columns are nulls; and
//! Σ of every decimal column, by pyarrow and by DuckDB, equals Σ of the CSV column exactly
//! (decimal strings, never floats). `--currency` splits the rows of each currency and nothing
//! else. Without Python or PyPI the test is skipped as tests/interop.rs is (never in CI, which
//! sets ACCRUAL_REQUIRE_INTEROP=1).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use proto::v1 as pb;
use proto::v1::query_service_client::QueryServiceClient;
use rust_decimal::Decimal;

use common::process::run_bounded;
use common::python::{python_env, skip_or_fail};
use common::{free_port, Server};

const READER_TIMEOUT_MS: u64 = 180_000;
/// The kinds this test reads as Parquet.
const KINDS: [&str; 5] = ["invoices", "invoice-lines", "journal", "mrr-movements", "usage-daily"];
/// The seeded server's customers: (id, currency, time zone, base fee, price of the first 100
/// calls, price of the rest).
const CUSTOMERS: [(&str, &str, &str, &str, &str, &str); 3] = [
    ("acme", "USD", "Europe/Berlin", "20.00", "1.00", "0.50"),
    ("tokyo", "JPY", "Asia/Tokyo", "2000", "10", "5"),
    ("kuwait", "KWD", "Asia/Kuwait", "6.500", "0.300", "0.125"),
];
/// Calls each seeded subscription records: (days after its start, calls); the last is now.
const CALLS: [(i64, &str); 4] = [(1, "60"), (1, "70"), (2, "55.5"), (-1, "5")];

/// What a column holds, as this test expects it (independent of the exporter's declarations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Text,
    Amount,
    Decimal,
    Date,
    Timestamp,
    Int,
}

/// The type of `column` in an export of `kind`, and whether it may be null.
fn column_type(kind: &str, column: &str) -> (Ty, bool) {
    let ty = match (kind, column) {
        (_, "date" | "period_start" | "period_end_exclusive") => Ty::Date,
        (_, "service_period_start" | "service_period_end_exclusive") => Ty::Date,
        (_, "issued_at") => Ty::Timestamp,
        (_, "failed_attempts" | "line_count" | "line_index" | "log_position" | "events") => Ty::Int,
        (_, "tax_rate_percent" | "units") => Ty::Decimal,
        ("invoices", "subtotal" | "tax" | "total" | "amount_paid" | "amount_due") => Ty::Amount,
        ("invoices", "amount_credited" | "amount_offset" | "credit_applied") => Ty::Amount,
        ("invoices" | "invoice-lines", "discount") => Ty::Amount,
        ("invoices", "wallet_applied") | ("invoice-lines", "amount") => Ty::Amount,
        ("journal", "debit" | "credit") => Ty::Amount,
        ("mrr-movements", "amount" | "mrr_before" | "mrr_after") => Ty::Amount,
        _ => Ty::Text,
    };
    let nullable =
        kind == "invoice-lines" && matches!(column, "metric_code" | "charge_model" | "units");
    (ty, nullable)
}

fn minor_units(currency: &str) -> u32 {
    match currency {
        "USD" => 2,
        "JPY" => 0,
        "KWD" => 3,
        other => panic!("no minor unit known for {other}"),
    }
}

fn accrual(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(args)
        .env_remove("ACCRUAL_DATA_DIR")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run accrual")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// `accrual export <kind> --format <format> --data-dir <dir> <extra>`; must succeed. Stdout.
fn export(dir: &Path, kind: &str, format: &str, extra: &[&str]) -> Vec<u8> {
    let mut args = vec!["export", kind, "--format", format, "--data-dir", path(dir)];
    args.extend_from_slice(extra);
    let out = accrual(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "export {args:?} failed: {stderr}");
    out.stdout
}

/// A CSV export: the header and the rows as column → value.
struct Csv {
    header: Vec<String>,
    rows: Vec<BTreeMap<String, String>>,
}

impl Csv {
    fn parse(bytes: &[u8]) -> Csv {
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(bytes);
        let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
        let rows = reader
            .records()
            .map(|r| header.iter().cloned().zip(r.unwrap().iter().map(str::to_string)).collect())
            .collect();
        Csv { header, rows }
    }

    fn sum(&self, column: &str) -> Decimal {
        self.rows.iter().filter(|r| !r[column].is_empty()).map(|r| dec(&r[column])).sum()
    }
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_else(|_| panic!("{s:?} is not a decimal"))
}

/// Fractional digits of a decimal as written.
fn fraction_digits(s: &str) -> u32 {
    s.split_once('.').map_or(0, |(_, f)| f.len() as u32)
}

/// One Parquet export to check: where it came from and the CSV of the same export.
struct Case {
    label: String,
    kind: &'static str,
    csv: Csv,
    parquet: PathBuf,
}

/// Exports `kind` of `dir` as CSV and as Parquet (to a file under `out`) with `extra` options.
fn case(dir: &Path, out: &Path, label: &str, kind: &'static str, extra: &[&str]) -> Case {
    let csv = Csv::parse(&export(dir, kind, "csv", extra));
    let label = format!("{label} {kind} {}", extra.join(" "));
    let file = out.join(format!("{}.parquet", label.replace([' ', '-'], "_")));
    let mut args = extra.to_vec();
    args.extend(["--out", path(&file)]);
    let stdout = export(dir, kind, "parquet", &args);
    assert!(stdout.is_empty(), "{label}: --out writes nothing to stdout");
    Case { label, kind, csv, parquet: file }
}

/// The expected Arrow and DuckDB type of a column of `case`.
fn expected_types(case: &Case, column: &str) -> (String, String) {
    let csv = &case.csv;
    let decimal = |scale: u32| (format!("decimal128(38, {scale})"), format!("DECIMAL(38,{scale})"));
    match column_type(case.kind, column).0 {
        Ty::Text => ("string".into(), "VARCHAR".into()),
        Ty::Date => ("date32[day]".into(), "DATE".into()),
        Ty::Timestamp => ("timestamp[us, tz=UTC]".into(), "TIMESTAMP WITH TIME ZONE".into()),
        Ty::Int => ("int64".into(), "BIGINT".into()),
        Ty::Amount => {
            decimal(csv.rows.iter().map(|r| minor_units(&r["currency"])).max().unwrap_or(0))
        }
        Ty::Decimal => {
            decimal(csv.rows.iter().map(|r| fraction_digits(&r[column])).max().unwrap_or(0))
        }
    }
}

/// What read.py reports of `case`'s Parquet file, checked against its CSV.
fn check(case: &Case, read: &serde_json::Value) {
    let label = &case.label;
    let csv = &case.csv;
    let rows = csv.rows.len() as u64;
    assert_eq!(read["rows"].as_u64(), Some(rows), "{label}: pyarrow's rows = the CSV's");
    assert_eq!(read["duckdb_rows"].as_u64(), Some(rows), "{label}: DuckDB's rows = the CSV's");
    assert_eq!(read["metadata"]["accrual.export_kind"], case.kind, "{label}");
    let position = read["metadata"]["accrual.log_position"].as_str().expect("a log position");
    assert!(position.parse::<u64>().unwrap() > 0, "{label}: log position {position}");
    let order: Vec<&str> =
        read["column_order"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(order, csv.header, "{label}: the CSV's columns in its order");
    for column in &csv.header {
        let info = &read["columns"][column];
        let (ty, nullable) = column_type(case.kind, column);
        let (arrow, duck) = expected_types(case, column);
        assert_eq!(info["arrow_type"], arrow.as_str(), "{label}.{column}");
        assert_eq!(info["duckdb_type"], duck.as_str(), "{label}.{column}");
        assert_eq!(info["nullable"], nullable, "{label}.{column}");
        let empty = csv.rows.iter().filter(|r| r[column].is_empty()).count() as u64;
        let nulls = if nullable { empty } else { 0 };
        assert_eq!(info["nulls"].as_u64(), Some(nulls), "{label}.{column}: nulls");
        if matches!(ty, Ty::Amount | Ty::Decimal) {
            let expected = csv.sum(column);
            for reader in ["arrow_sum", "duckdb_sum"] {
                let got = match &info[reader] {
                    serde_json::Value::Null => Decimal::ZERO,
                    serde_json::Value::String(s) => dec(s),
                    other => panic!("{label}.{column}: {reader} is {other}, not a decimal string"),
                };
                assert_eq!(got, expected, "{label}.{column}: {reader} = Σ of the CSV column");
            }
        }
    }
}

/// Runs read.py over the Parquet files of `cases`: one result per file, in order.
fn read_all(python: &Path, cases: &[Case], logs: &Path) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/export_parquet/read.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).args(cases.iter().map(|c| &c.parquet));
    let output = run_bounded(&mut cmd, &logs.join("export-parquet-read.log"), READER_TIMEOUT_MS)
        .unwrap_or_else(|failure| panic!("read.py failed: {failure}"));
    let log = std::fs::read_to_string(logs.join("export-parquet-read.log")).unwrap_or(output);
    let results: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| serde_json::from_str(l).expect("a RESULT line is JSON"))
        .collect();
    assert_eq!(results.len(), cases.len(), "one RESULT per file:\n{log}");
    results
}

/// Invoice lines add up to their invoices: Σ amount = subtotal, Σ discount = discount, and
/// each invoice's lines are numbered 0.. in order.
fn check_lines_add_up(label: &str, invoices: &Csv, lines: &Csv) {
    let mut by_invoice: BTreeMap<&str, (Decimal, Decimal, u64)> = BTreeMap::new();
    for l in &lines.rows {
        let e = by_invoice.entry(&l["invoice_id"]).or_default();
        assert_eq!(l["line_index"], e.2.to_string(), "{label}: lines in order");
        e.0 += dec(&l["amount"]);
        e.1 += dec(&l["discount"]);
        e.2 += 1;
    }
    assert!(!invoices.rows.is_empty(), "{label}: invoices to check");
    for i in &invoices.rows {
        let (amount, discount, count) =
            by_invoice.remove(i["invoice_id"].as_str()).unwrap_or_default();
        assert_eq!(amount, dec(&i["subtotal"]), "{label}: Σ line amounts = subtotal: {i:?}");
        assert_eq!(discount, dec(&i["discount"]), "{label}: Σ line discounts: {i:?}");
        assert_eq!(count.to_string(), i["line_count"], "{label}: {i:?}");
    }
    assert!(by_invoice.is_empty(), "{label}: lines of no exported invoice: {by_invoice:?}");
}

fn timestamp(t: jiff::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.as_second(), nanos: 0 }
}

/// Seeds `dir` through a real server: per [`CUSTOMERS`] entry a customer, a monthly plan in its
/// currency and a subscription started a month ago (in its time zone) with [`CALLS`] of usage,
/// then one billing run that closes the three first periods. Waits until every read model has
/// applied everything, then stops the server.
async fn seed_three_currencies(dir: &Path) {
    let port = free_port();
    let server = Server::start(dir, port);
    let channel = server.serving("accrual.v1.QueryService").await;
    let mut c = server.client().await;
    let metric = pb::DefineMetricRequest {
        code: "api_calls".into(),
        name: "API calls".into(),
        aggregation: "sum".into(),
        property: "calls".into(),
        ..Default::default()
    };
    c.define_metric(metric).await.unwrap();
    let now = jiff::Timestamp::now();
    for (n, (customer, currency, zone, fee, first, rest)) in CUSTOMERS.into_iter().enumerate() {
        let customer_request = pb::RegisterCustomerRequest {
            idempotency_key: format!("cust-{customer}"),
            customer_id: customer.into(),
            name: customer.into(),
            currency: currency.into(),
            time_zone: zone.into(),
            tax_rate: "10".into(),
        };
        c.register_customer(customer_request).await.unwrap();
        let plan = format!("growth-{}", currency.to_lowercase());
        let tier = |up_to: &str, price: &str| pb::Tier {
            up_to: up_to.into(),
            unit_price: price.into(),
            flat_fee: String::new(),
        };
        let plan_request = pb::PublishPlanRequest {
            code: plan.clone(),
            name: plan.clone(),
            currency: currency.into(),
            interval: "monthly".into(),
            base_fee: fee.into(),
            charges: vec![pb::Charge {
                metric_code: "api_calls".into(),
                pay_in_advance: false,
                model: Some(pb::charge::Model::Graduated(pb::TieredModel {
                    tiers: vec![tier("100", first), tier("", rest)],
                })),
            }],
            ..Default::default()
        };
        c.publish_plan(plan_request).await.unwrap();
        let tz = jiff::tz::TimeZone::get(zone).unwrap();
        let start = now.to_zoned(tz.clone()).date() - jiff::Span::new().months(1);
        let subscription = format!("sub-{customer}");
        let start_request = pb::StartSubscriptionRequest {
            subscription_id: subscription.clone(),
            customer_id: customer.into(),
            plan_code: plan,
            start_date: start.to_string(),
            ..Default::default()
        };
        c.start_subscription(start_request).await.unwrap();
        for (i, (days, calls)) in CALLS.into_iter().enumerate() {
            let at = if days < 0 {
                now - jiff::SignedDuration::from_secs(60)
            } else {
                let day = start + jiff::Span::new().days(days);
                day.at(12, 0, 0, 0).to_zoned(tz.clone()).unwrap().timestamp()
            };
            let usage = pb::UsageEvent {
                subscription_id: subscription.clone(),
                transaction_id: format!("tx-{n}-{i}"),
                metric_code: "api_calls".into(),
                occurred_at: Some(timestamp(at)),
                properties: [("calls".to_string(), calls.to_string())].into(),
            };
            c.record_usage(usage).await.unwrap();
        }
    }
    let as_of = timestamp(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1));
    let run = c
        .run_billing(pb::RunBillingRequest { as_of: Some(as_of), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.invoices.len(), CUSTOMERS.len(), "one invoice per customer's first period");
    let head = run.ack.expect("an ack").position;
    // Read-your-writes on each read model the exports read, so the stopped directory holds
    // them at the log's head.
    let mut q = QueryServiceClient::new(channel);
    let invoice_id = run.invoices[0].invoice_id.clone();
    q.get_invoice(pb::InvoiceQuery { as_recorded_at: None, invoice_id, min_position: Some(head) })
        .await
        .unwrap();
    let as_of = now.to_zoned(jiff::tz::TimeZone::UTC).date().to_string();
    let tb =
        pb::AsOfRequest { as_recorded_at: None, as_of: as_of.clone(), min_position: Some(head) };
    q.get_trial_balance(tb).await.unwrap();
    let mrr = pb::MrrRequest {
        currency: "USD".into(),
        date: as_of,
        min_position: Some(head),
        ..Default::default()
    };
    q.get_mrr(mrr).await.unwrap();
    assert!(server.terminate().await.success(), "graceful shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_exports_read_by_pyarrow_and_duckdb_match_the_csv() {
    let requirements =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/export_parquet/requirements.txt");
    let python = match python_env("export-parquet", &requirements) {
        Ok(python) => python,
        Err(reason) => return skip_or_fail("export_parquet", &reason),
    };
    let temp = tempfile::tempdir().unwrap();
    let out = temp.path().join("out");
    std::fs::create_dir(&out).unwrap();

    let demo = temp.path().join("demo");
    let run = accrual(&["demo", "--seed", "1", "--months", "2", "--data-dir", path(&demo)]);
    assert!(run.status.success(), "demo: {}", String::from_utf8_lossy(&run.stderr));
    let three = temp.path().join("three");
    seed_three_currencies(&three).await;

    let mut cases = Vec::new();
    for (label, dir) in [("demo", &demo), ("three", &three)] {
        for kind in KINDS {
            cases.push(case(dir, &out, label, kind, &[]));
        }
    }
    for (_, currency, ..) in CUSTOMERS {
        for kind in KINDS.into_iter().filter(|k| *k != "usage-daily") {
            cases.push(case(&three, &out, "three", kind, &["--currency", currency]));
        }
    }
    let results = read_all(&python, &cases, temp.path());
    for (case, read) in cases.iter().zip(&results) {
        check(case, read);
    }

    // The data these checks ran on: every kind has rows, the demo is USD only, the seeded
    // books hold three currencies and their Parquet amounts the largest scale, KWD's 3.
    let find = |label: &str| cases.iter().position(|c| c.label == label).unwrap();
    for case in &cases {
        assert!(!case.csv.rows.is_empty(), "{}: rows to compare", case.label);
    }
    let all = &results[find("three invoices ")];
    assert_eq!(all["columns"]["total"]["arrow_type"], "decimal128(38, 3)");
    let jpy = &results[find("three invoices --currency JPY")];
    assert_eq!(jpy["columns"]["total"]["arrow_type"], "decimal128(38, 0)");
    assert_eq!(jpy["columns"]["issued_at"]["arrow_type"], "timestamp[us, tz=UTC]");
    assert_eq!(jpy["columns"]["period_start"]["arrow_type"], "date32[day]");
    let demo_invoices = &results[find("demo invoices ")];
    assert_eq!(demo_invoices["columns"]["total"]["arrow_type"], "decimal128(38, 2)");

    // --currency splits the rows: each currency's, and nothing else.
    for kind in KINDS.into_iter().filter(|k| *k != "usage-daily") {
        let whole = &cases[find(&format!("three {kind} "))].csv;
        let mut split = 0;
        for (_, currency, ..) in CUSTOMERS {
            let part = &cases[find(&format!("three {kind} --currency {currency}"))].csv;
            assert!(part.rows.iter().all(|r| r["currency"] == currency), "{kind} {currency}");
            let expected = whole.rows.iter().filter(|r| r["currency"] == currency).count();
            assert_eq!(part.rows.len(), expected, "{kind} {currency}");
            assert!(expected > 0, "{kind}: {currency} rows");
            split += expected;
        }
        assert_eq!(split, whole.rows.len(), "{kind}: every row has one of the three currencies");
    }

    // Invoice lines add up to their invoices, in both data sets and per currency.
    for label in ["demo", "three"] {
        let invoices = &cases[find(&format!("{label} invoices "))].csv;
        let lines = &cases[find(&format!("{label} invoice-lines "))].csv;
        check_lines_add_up(label, invoices, lines);
    }
    // Usage per day: the seeded calls, on the customers' business dates.
    let usage = &cases[find("three usage-daily ")].csv;
    let events: u64 = usage.rows.iter().map(|r| r["events"].parse::<u64>().unwrap()).sum();
    assert_eq!(events as usize, CALLS.len() * CUSTOMERS.len());
    let calls: Decimal = CALLS.iter().map(|(_, c)| dec(c)).sum();
    assert_eq!(usage.sum("units"), calls * Decimal::from(CUSTOMERS.len() as u64));
    assert_eq!(usage.rows.len(), 3 * CUSTOMERS.len(), "two days in the first period and today");

    // Parquet on stdout is the same file as with --out.
    let stdout = export(&three, "journal", "parquet", &[]);
    assert_eq!(stdout, std::fs::read(&cases[find("three journal ")].parquet).unwrap());
    assert_eq!(&stdout[..4], b"PAR1");
    let summary = format!(
        "export_parquet: {} Parquet files read by pyarrow and DuckDB with the CSV's rows, types \
         and decimal totals\n",
        cases.len()
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), summary.as_bytes());
}
