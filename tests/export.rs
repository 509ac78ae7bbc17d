//! `accrual export`: real demo data exported as every kind in CSV and JSON, checked for shape
//! (header, field counts, JSON records = CSV rows) and for the books' own rules (the trial
//! balance balances, invoice total = subtotal + tax, journal entries balance, waterfall totals,
//! invoice lines sum to their invoice's subtotal, usage per day in key order); `--currency`
//! keeps one currency's rows; `--as-of-recorded` before the first event exports headers only; a
//! replay output is a source; bad arguments fail clearly. Parquet: tests/export_parquet.rs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use event_store::{EventStore, SledConfig, SledStore};
use rust_decimal::Decimal;

const KINDS: [&str; 8] = [
    "invoices",
    "invoice-lines",
    "credit-notes",
    "journal",
    "trial-balance",
    "revenue-waterfall",
    "mrr-movements",
    "usage-daily",
];

fn accrual(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(args)
        .env_remove("ACCRUAL_DATA_DIR")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run accrual")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `accrual demo --seed 1 --months 2` into `dir`.
fn demo(dir: &Path) {
    let out = accrual(&["demo", "--seed", "1", "--months", "2", "--data-dir", path(dir)]);
    assert!(out.status.success(), "demo failed: {}", stderr(&out));
    assert!(dir.join("log").is_dir() && dir.join("read-models").is_dir(), "demo keeps its dir");
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// `accrual export <kind> --format <format> --data-dir <dir> <extra>`; must succeed.
fn export(dir: &Path, kind: &str, format: &str, extra: &[&str]) -> String {
    let mut args = vec!["export", kind, "--format", format, "--data-dir", path(dir)];
    args.extend_from_slice(extra);
    let out = accrual(&args);
    assert!(out.status.success(), "export {args:?} failed: {}", stderr(&out));
    String::from_utf8(out.stdout).expect("utf-8 export")
}

/// The header and the rows of a CSV export, each row as column → value.
struct Csv {
    header: Vec<String>,
    rows: Vec<BTreeMap<String, String>>,
}

impl Csv {
    fn parse(text: &str) -> Csv {
        assert!(text.is_empty() || text.ends_with("\r\n"), "CRLF record ends");
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
        let header: Vec<String> =
            reader.headers().expect("a header row").iter().map(str::to_string).collect();
        assert!(!header.is_empty() && header.iter().all(|h| !h.is_empty()), "{header:?}");
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.expect("every row has the header's field count");
            assert_eq!(record.len(), header.len());
            rows.push(header.iter().cloned().zip(record.iter().map(str::to_string)).collect());
        }
        Csv { header, rows }
    }
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_else(|_| panic!("{s:?} is not a decimal"))
}

/// A USD amount as exported: a decimal string with exactly two digits after the point.
fn usd(s: &str) -> Decimal {
    let (_, cents) = s.split_once('.').unwrap_or_else(|| panic!("{s:?} has no cents"));
    assert_eq!(cents.len(), 2, "{s:?} has two decimals");
    dec(s)
}

fn columns(csv: &Csv, names: &[&str]) {
    let header: Vec<&str> = csv.header.iter().map(String::as_str).collect();
    assert_eq!(&header[..names.len()], names);
}

/// The demo's service credits: offset notes whose totals the credited invoices show.
fn check_credit_notes(csv: &Csv, invoices: &Csv) {
    columns(
        csv,
        &[
            "credit_note_id",
            "number",
            "customer_id",
            "invoice_id",
            "currency",
            "issued_at",
            "destination",
            "reason",
            "subtotal",
            "tax",
            "total",
            "line_count",
        ],
    );
    assert!(!csv.rows.is_empty(), "the demo issues a credit note");
    for r in &csv.rows {
        assert_eq!(usd(&r["total"]), usd(&r["subtotal"]) + usd(&r["tax"]), "{r:?}");
        assert_eq!(r["destination"], "offset");
        let invoice = invoices.rows.iter().find(|i| i["invoice_id"] == r["invoice_id"]);
        let invoice = invoice.expect("the credited invoice is exported");
        assert_eq!(usd(&invoice["amount_credited"]), usd(&r["total"]), "{r:?}");
        assert_eq!(usd(&invoice["amount_offset"]), usd(&r["total"]), "{r:?}");
    }
}

fn check_invoices(csv: &Csv) {
    columns(
        csv,
        &[
            "invoice_id",
            "customer_id",
            "subscription_id",
            "currency",
            "period_start",
            "period_end_exclusive",
            "issued_at",
            "reason",
            "status",
            "subtotal",
            "tax_rate_percent",
            "tax",
            "total",
            "amount_paid",
            "amount_due",
            "failed_attempts",
            "line_count",
            "amount_credited",
            "amount_offset",
            "credit_applied",
            "discount",
            "wallet_applied",
        ],
    );
    assert!(csv.rows.len() >= 5, "the demo issues invoices: {}", csv.rows.len());
    let discounted = csv.rows.iter().filter(|r| usd(&r["discount"]) > Decimal::ZERO).count();
    assert!(discounted > 0, "the demo's welcome coupons discount some invoices");
    let wallet_paid = csv.rows.iter().filter(|r| usd(&r["wallet_applied"]) > Decimal::ZERO).count();
    assert!(wallet_paid > 0, "the demo's wallets pay some invoices");
    for r in &csv.rows {
        assert_eq!(r["currency"], "USD");
        assert_eq!(usd(&r["total"]), usd(&r["subtotal"]) + usd(&r["tax"]), "{r:?}");
        if r["status"] != "void" {
            let settled = usd(&r["amount_paid"])
                + usd(&r["amount_offset"])
                + usd(&r["credit_applied"])
                + usd(&r["wallet_applied"]);
            let due = (usd(&r["total"]) - settled).max(Decimal::ZERO);
            assert_eq!(usd(&r["amount_due"]), due, "{r:?}");
        }
        assert!(r["period_start"] < r["period_end_exclusive"], "{r:?}");
        assert!(r["issued_at"].ends_with('Z'), "RFC 3339 UTC: {r:?}");
    }
}

fn check_journal(csv: &Csv) {
    columns(
        csv,
        &[
            "entry",
            "date",
            "kind",
            "invoice_id",
            "subscription_id",
            "currency",
            "account",
            "debit",
            "credit",
            "log_position",
            "credit_note_id",
            "wallet_id",
        ],
    );
    assert!(!csv.rows.is_empty());
    let mut entries: BTreeMap<&str, (Decimal, Decimal)> = BTreeMap::new();
    for r in &csv.rows {
        let (debit, credit) = (usd(&r["debit"]), usd(&r["credit"]));
        assert!(debit.is_zero() != credit.is_zero(), "one side per posting: {r:?}");
        let e = entries.entry(&r["entry"]).or_default();
        e.0 += debit;
        e.1 += credit;
    }
    for (entry, (debit, credit)) in entries {
        assert_eq!(debit, credit, "entry {entry} balances");
    }
    let dates: Vec<&String> = csv.rows.iter().map(|r| &r["date"]).collect();
    assert!(dates.windows(2).all(|w| w[0] <= w[1]), "date order");
}

/// One row per line of the exported invoices, in their order then line order; Σ amount of an
/// invoice's lines is its subtotal, Σ discount its discount.
fn check_invoice_lines(csv: &Csv, invoices: &Csv) {
    columns(
        csv,
        &[
            "invoice_id",
            "line_index",
            "customer_id",
            "subscription_id",
            "currency",
            "issued_at",
            "kind",
            "description",
            "metric_code",
            "charge_model",
            "units",
            "service_period_start",
            "service_period_end_exclusive",
            "amount",
            "discount",
        ],
    );
    let mut rows = csv.rows.iter().peekable();
    for invoice in &invoices.rows {
        let (mut amount, mut discount, mut count) = (Decimal::ZERO, Decimal::ZERO, 0u64);
        while let Some(line) = rows.next_if(|l| l["invoice_id"] == invoice["invoice_id"]) {
            assert_eq!(line["line_index"], count.to_string(), "lines in order: {line:?}");
            for column in ["customer_id", "subscription_id", "currency", "issued_at"] {
                assert_eq!(line[column], invoice[column], "{column}: {line:?}");
            }
            amount += usd(&line["amount"]);
            discount += usd(&line["discount"]);
            count += 1;
        }
        assert_eq!(count.to_string(), invoice["line_count"], "{invoice:?}");
        assert_eq!(amount, usd(&invoice["subtotal"]), "Σ line amounts = subtotal: {invoice:?}");
        assert_eq!(discount, usd(&invoice["discount"]), "Σ line discounts: {invoice:?}");
    }
    assert!(rows.next().is_none(), "every line belongs to an exported invoice, in issue order");
}

/// One row per (date, subscription, metric), in that order, with usage.
fn check_usage_daily(csv: &Csv) {
    columns(csv, &["date", "customer_id", "subscription_id", "metric_code", "units", "events"]);
    assert!(!csv.rows.is_empty(), "the demo records usage");
    let keys: Vec<(&str, &str, &str)> = csv
        .rows
        .iter()
        .map(|r| (r["date"].as_str(), r["subscription_id"].as_str(), r["metric_code"].as_str()))
        .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "date, subscription, metric order, no repeat");
    for r in &csv.rows {
        assert!(r["events"].parse::<u64>().unwrap() > 0, "{r:?}");
        dec(&r["units"]);
        assert!(!r["customer_id"].is_empty(), "{r:?}");
    }
}

fn check_trial_balance(csv: &Csv) {
    columns(csv, &["as_of", "currency", "account", "debit", "credit"]);
    let mut sums: BTreeMap<&str, (Decimal, Decimal)> = BTreeMap::new();
    let mut totals: BTreeMap<&str, (Decimal, Decimal)> = BTreeMap::new();
    for r in &csv.rows {
        let amounts = (usd(&r["debit"]), usd(&r["credit"]));
        if r["account"] == "TOTAL" {
            assert!(totals.insert(&r["currency"], amounts).is_none(), "one total per currency");
        } else {
            let s = sums.entry(&r["currency"]).or_default();
            s.0 += amounts.0;
            s.1 += amounts.1;
        }
    }
    assert!(!sums.is_empty());
    for (currency, (debit, credit)) in &sums {
        assert_eq!(debit, credit, "{currency}: Σ debit = Σ credit");
        assert_eq!(totals[currency], (*debit, *credit), "{currency}: the TOTAL row");
    }
    assert_eq!(sums.len(), totals.len());
}

fn check_waterfall(csv: &Csv) {
    columns(csv, &["invoice_id", "line_index", "currency", "revenue_type"]);
    let months = &csv.header[4..csv.header.len() - 1];
    assert_eq!(csv.header.last().unwrap(), "total");
    assert!(!months.is_empty());
    for m in months {
        assert!(m.len() == 7 && m.as_bytes()[4] == b'-', "a YYYY-MM column: {m}");
    }
    assert!(months.windows(2).all(|w| w[0] < w[1]));
    for r in &csv.rows {
        let sum: Decimal = months.iter().map(|m| usd(&r[m])).sum();
        assert_eq!(sum, usd(&r["total"]), "{r:?}");
    }
}

fn check_movements(csv: &Csv) {
    columns(csv, &["date", "customer_id", "currency", "kind", "amount", "mrr_before", "mrr_after"]);
    assert!(!csv.rows.is_empty());
    for r in &csv.rows {
        let (before, after) = (usd(&r["mrr_before"]), usd(&r["mrr_after"]));
        assert_eq!(usd(&r["amount"]), after - before, "{r:?}");
        let kinds = ["new", "expansion", "contraction", "churn", "reactivation"];
        assert!(kinds.contains(&r["kind"].as_str()), "{r:?}");
    }
}

/// Every kind in both formats: CSV checks, and the JSON has the CSV's records and fields.
fn check_all(dir: &Path) {
    for kind in KINDS {
        let csv = Csv::parse(&export(dir, kind, "csv", &[]));
        match kind {
            "invoices" => check_invoices(&csv),
            "invoice-lines" => {
                check_invoice_lines(&csv, &Csv::parse(&export(dir, "invoices", "csv", &[])))
            }
            "usage-daily" => check_usage_daily(&csv),
            "credit-notes" => {
                check_credit_notes(&csv, &Csv::parse(&export(dir, "invoices", "csv", &[])))
            }
            "journal" => check_journal(&csv),
            "trial-balance" => check_trial_balance(&csv),
            "revenue-waterfall" => check_waterfall(&csv),
            "mrr-movements" => check_movements(&csv),
            other => panic!("no check for {other}"),
        }
        let json: serde_json::Value =
            serde_json::from_str(&export(dir, kind, "json", &[])).expect("the JSON parses");
        let records = json.as_array().expect("a JSON array");
        assert_eq!(records.len(), csv.rows.len(), "{kind}: JSON records = CSV rows");
        for (record, row) in records.iter().zip(&csv.rows) {
            for (column, value) in row {
                let field = &record[column];
                let text = match field {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Null => String::new(),
                    other => panic!("{kind}.{column} is {other}"),
                };
                assert_eq!(&text, value, "{kind}.{column}");
            }
            if kind == "invoices" {
                let lines = record["lines"].as_array().expect("invoice lines in JSON");
                assert_eq!(lines.len().to_string(), row["line_count"]);
                let sum: Decimal = lines.iter().map(|l| usd(l["amount"].as_str().unwrap())).sum();
                assert_eq!(sum, usd(&row["subtotal"]), "lines sum to the subtotal");
            }
        }
    }
}

#[test]
fn exports_of_demo_data() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    demo(&dir);
    check_all(&dir);

    // --out writes the same bytes as stdout.
    let file = temp.path().join("journal.csv");
    let out = accrual(&["export", "journal", "--data-dir", path(&dir), "--out", path(&file)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), export(&dir, "journal", "csv", &[]));

    // Effective dates narrow the rows.
    let jan = Csv::parse(&export(&dir, "journal", "csv", &["--effective", "2025-01-31"]));
    let all = Csv::parse(&export(&dir, "journal", "csv", &[]));
    assert!(!jan.rows.is_empty() && jan.rows.len() < all.rows.len());
    assert!(jan.rows.iter().all(|r| r["date"].as_str() <= "2025-01-31"));
    let feb = Csv::parse(&export(&dir, "journal", "csv", &["--from", "2025-02-01"]));
    assert_eq!(jan.rows.len() + feb.rows.len(), all.rows.len());
    let tb = Csv::parse(&export(&dir, "trial-balance", "csv", &["--effective", "2025-01-31"]));
    check_trial_balance(&tb);
    assert!(tb.rows.iter().all(|r| r["as_of"] == "2025-01-31"));
    let wf = Csv::parse(&export(
        &dir,
        "revenue-waterfall",
        "csv",
        &["--from", "2025-01-15", "--effective", "2025-02-01"],
    ));
    assert_eq!(&wf.header[4..], ["2025-01", "2025-02", "total"]);
    check_waterfall(&wf);
    let bridge = Csv::parse(&export(&dir, "mrr-movements", "csv", &["--granularity", "month"]));
    let movements = Csv::parse(&export(&dir, "mrr-movements", "csv", &[]));
    let net: Decimal = bridge.rows.iter().map(|r| usd(&r["net"])).sum();
    let moved: Decimal = movements.rows.iter().map(|r| usd(&r["amount"])).sum();
    assert_eq!(net, moved, "the bridge nets the movements");
    let counted: u64 = bridge.rows.iter().map(|r| r["movements"].parse::<u64>().unwrap()).sum();
    assert_eq!(counted as usize, movements.rows.len());
    for r in &bridge.rows {
        assert_eq!(usd(&r["mrr_end"]), usd(&r["mrr_start"]) + usd(&r["net"]));
    }

    // --currency keeps one currency's rows: all of the demo's in USD, none in EUR (headers).
    for kind in KINDS.into_iter().filter(|k| *k != "usage-daily") {
        let all = export(&dir, kind, "csv", &[]);
        assert_eq!(export(&dir, kind, "csv", &["--currency", "USD"]), all, "{kind}");
        let none = Csv::parse(&export(&dir, kind, "csv", &["--currency", "EUR"]));
        assert!(none.rows.is_empty(), "{kind}: no EUR rows");
        assert_eq!(none.header, Csv::parse(&all).header, "{kind}");
    }
    // usage-daily by date narrows as the journal does.
    let usage = Csv::parse(&export(&dir, "usage-daily", "csv", &[]));
    let jan = Csv::parse(&export(&dir, "usage-daily", "csv", &["--effective", "2025-01-31"]));
    let feb = Csv::parse(&export(&dir, "usage-daily", "csv", &["--from", "2025-02-01"]));
    assert!(!jan.rows.is_empty() && !feb.rows.is_empty());
    assert_eq!(jan.rows.len() + feb.rows.len(), usage.rows.len());
    assert!(jan.rows.iter().all(|r| r["date"].as_str() <= "2025-01-31"));

    // Before the first event was recorded (the demo's clock starts 2025-01-01T12:00Z): headers
    // only, and `[]`.
    for kind in KINDS {
        let early = ["--as-of-recorded", "2025-01-01T00:00:00Z"];
        let csv = Csv::parse(&export(&dir, kind, "csv", &early));
        assert!(csv.rows.is_empty(), "{kind}: no rows before the first event");
        assert_eq!(export(&dir, kind, "json", &early), "[]\n", "{kind}");
    }
    // After the last event: the same books as the read models on disk.
    let late = ["--as-of-recorded", "2030-01-01T00:00:00Z"];
    for kind in KINDS {
        assert_eq!(export(&dir, kind, "csv", &late), export(&dir, kind, "csv", &[]), "{kind}");
    }
    // Midway: fewer invoices, and the books still balance.
    let mid = ["--as-of-recorded", "2025-01-20T00:00:00Z"];
    let invoices = Csv::parse(&export(&dir, "invoices", "csv", &mid));
    let all_invoices = Csv::parse(&export(&dir, "invoices", "csv", &[]));
    assert!(invoices.rows.len() < all_invoices.rows.len());
    check_trial_balance(&Csv::parse(&export(&dir, "trial-balance", "csv", &mid)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_output_is_a_source_and_bad_arguments_fail_clearly() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    demo(&dir);

    // The output of a rebuild (what `accrual replay` writes: read-models and replay.json, no
    // log) exports the same rows as the data dir.
    let store = SledStore::open(SledConfig::new(dir.join("log"))).unwrap();
    let store: Arc<dyn EventStore> = Arc::new(store);
    let replayed = temp.path().join("replayed");
    let cutoff = replay::Cutoff::Position(store.head());
    replay::rebuild(store.clone(), cutoff, &[replay::Kind::Invoices], &replayed, &|_, _| {})
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    assert!(replayed.join("replay.json").is_file() && !replayed.join("log").exists());
    let from_replay = export(&replayed, "invoices", "csv", &[]);
    assert_eq!(from_replay, export(&dir, "invoices", "csv", &[]));

    let fails = |args: &[&str], expect: &str| {
        let out = accrual(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = stderr(&out);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} writes nothing to stdout");
    };
    let d = path(&dir);
    let r = path(&replayed);
    // A model the rebuild did not write: missing, with what to do.
    fails(&["export", "journal", "--data-dir", r], "journal read model");
    fails(&["export", "journal", "--data-dir", r], "accrual replay");
    // A replay output has no log to rebuild from.
    let at = "2025-01-20T00:00:00Z";
    fails(&["export", "invoices", "--data-dir", r, "--as-of-recorded", at], "has none");
    fails(&["export", "ledger", "--data-dir", d], "invalid value 'ledger'");
    fails(&["export", "journal", "--data-dir", d, "--format", "xlsx"], "invalid value 'xlsx'");
    fails(&["export", "journal", "--data-dir", d, "--effective", "2025-02-30"], "--effective");
    fails(&["export", "journal", "--data-dir", d, "--effective", "31/01/2025"], "YYYY-MM-DD");
    fails(&["export", "journal", "--data-dir", d, "--as-of-recorded", "2025-01-20"], "RFC 3339");
    fails(&["export", "trial-balance", "--data-dir", d, "--from", "2025-01-01"], "--effective");
    fails(&["export", "journal", "--data-dir", d, "--granularity", "day"], "mrr-movements only");
    fails(&["export", "usage-daily", "--data-dir", d, "--currency", "USD"], "no currency column");
    fails(&["export", "journal", "--data-dir", d, "--currency", "XYZ"], "ISO 4217");
    fails(&["export", "journal", "--data-dir", d, "--currency", "usd"], "ISO 4217");
    let reversed = ["--from", "2025-02-01", "--effective", "2025-01-01"];
    fails(&[&["export", "journal", "--data-dir", d][..], &reversed[..]].concat(), "after");
    let nowhere = temp.path().join("nowhere");
    fails(&["export", "journal", "--data-dir", path(&nowhere)], "does not exist");
    assert!(!nowhere.exists(), "a failed export creates nothing");
    let empty = temp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails(&["export", "journal", "--data-dir", path(&empty)], "no read models");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "a failed export creates nothing");
}
