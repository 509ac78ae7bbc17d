//! The invoices read model: hand-computed states and the read API.

mod common;

use common::{at, bulk, customer, dec, invoice, runner, scenario, store_with};
use domain::calendar::Period;
use domain::events::Event;
use domain::invoice::InvoiceStatus::{self, Open, Paid, Uncollectible, Void};
use jiff::civil::{date, Date};
use projections::invoices::{InvoiceFilter, InvoiceReader, InvoiceRecord};
use projections::ProjectionError;
use rust_decimal::Decimal;
use tempfile::TempDir;

async fn scenario_reader(dir: &TempDir) -> InvoiceReader {
    let store = store_with(&scenario()).await;
    let (_db, mut runner) = runner(dir, &store, 4);
    assert_eq!(runner.catch_up().await.unwrap(), 15);
    InvoiceReader::new(runner.read_model())
}

fn get(reader: &InvoiceReader, id: &str) -> InvoiceRecord {
    reader.get(id).unwrap().unwrap_or_else(|| panic!("{id} missing"))
}

/// (status, amount paid, amount due, failed attempts)
fn state(r: &InvoiceRecord) -> (InvoiceStatus, Decimal, Decimal, u32) {
    (r.status, r.amount_paid, r.amount_due, r.failed_attempts)
}

#[tokio::test]
async fn issued_failed_twice_then_paid_in_two_parts() {
    let dir = TempDir::new().unwrap();
    let a = get(&scenario_reader(&dir).await, "inv-s1-1");
    // 100.00 + 23.456 → 23.46; subtotal 123.46; tax 20 % = 24.692 → 24.69; total 148.15.
    let amounts: Vec<Decimal> = a.invoice.lines.iter().map(|l| l.amount).collect();
    assert_eq!(amounts, [dec("100"), dec("23.46")]);
    assert_eq!(
        (a.invoice.subtotal, a.invoice.tax, a.invoice.total),
        (dec("123.46"), dec("24.69"), dec("148.15"))
    );
    assert_eq!(state(&a), (Paid, dec("148.15"), dec("0"), 2));
    assert_eq!(a.last_failure_reason.as_deref(), Some("card_declined #2"));
    assert_eq!((a.paid_at, a.issued_position, a.updated_position), (Some(at(17)), 2, 13));
}

#[tokio::test]
async fn issued_then_void() {
    let dir = TempDir::new().unwrap();
    let b = get(&scenario_reader(&dir).await, "inv-s2-1");
    assert_eq!(b.invoice.total, dec("50"));
    assert_eq!(state(&b), (Void, dec("0"), dec("0"), 0));
    assert_eq!((b.voided_at, b.void_reason.as_deref()), (Some(at(11)), Some("duplicate")));
}

#[tokio::test]
async fn three_failures_then_uncollectible() {
    let dir = TempDir::new().unwrap();
    let c = get(&scenario_reader(&dir).await, "inv-s3-1");
    // 10.005 → 10.01; tax 10 % = 1.001 → 1.00; total 11.01.
    assert_eq!(
        (c.invoice.subtotal, c.invoice.tax, c.invoice.total),
        (dec("10.01"), dec("1.00"), dec("11.01"))
    );
    assert_eq!(state(&c), (Uncollectible, dec("0"), dec("11.01"), 3));
    assert_eq!(c.uncollectible_at, Some(at(16)));
}

#[tokio::test]
async fn credit_invoice_is_paid_at_issue() {
    let dir = TempDir::new().unwrap();
    let d = get(&scenario_reader(&dir).await, "inv-s2-2");
    assert_eq!(d.invoice.total, dec("-5"));
    assert_eq!(state(&d), (Paid, dec("0"), dec("0"), 0));
    assert_eq!(d.paid_at, Some(at(2)));
}

#[tokio::test]
async fn intermediate_state_is_open_with_amount_due() {
    let dir = TempDir::new().unwrap();
    let store = store_with(&scenario()[..11]).await;
    let (_db, mut runner) = runner(&dir, &store, 3);
    runner.catch_up().await.unwrap();
    let a = get(&InvoiceReader::new(runner.read_model()), "inv-s1-1");
    assert_eq!(state(&a), (Open, dec("100.00"), dec("48.15"), 2));
    assert_eq!(a.paid_at, None);
}

fn ids(reader: &InvoiceReader, filter: &InvoiceFilter) -> Vec<String> {
    let page = reader.list(filter, None, 0).unwrap();
    assert_eq!((page.next_page_token, page.position), (None, 15));
    page.invoices.into_iter().map(|r| r.invoice.invoice_id).collect()
}

fn filter(customer: Option<&str>, status: Option<InvoiceStatus>) -> InvoiceFilter {
    InvoiceFilter { customer_id: customer.map(String::from), status, ..Default::default() }
}

#[tokio::test]
async fn list_by_customer_and_status_in_issue_order() {
    let dir = TempDir::new().unwrap();
    let reader = scenario_reader(&dir).await;
    let all = ["inv-s1-1", "inv-s2-1", "inv-s3-1", "inv-s2-2"];
    assert_eq!(ids(&reader, &filter(None, None)), all);
    assert_eq!(ids(&reader, &filter(Some("c1"), None)), ["inv-s1-1", "inv-s2-1", "inv-s2-2"]);
    assert_eq!(ids(&reader, &filter(None, Some(Paid))), ["inv-s1-1", "inv-s2-2"]);
    assert_eq!(ids(&reader, &filter(Some("c1"), Some(Void))), ["inv-s2-1"]);
    assert_eq!(ids(&reader, &filter(Some("c2"), Some(Uncollectible))), ["inv-s3-1"]);
    assert!(ids(&reader, &filter(None, Some(Open))).is_empty());
    assert!(ids(&reader, &filter(Some("c"), None)).is_empty(), "a prefix of c1 matches nothing");
    assert!(reader.get("inv-nope").unwrap().is_none());
}

#[tokio::test]
async fn list_pages_through_every_invoice_once() {
    let dir = TempDir::new().unwrap();
    let reader = scenario_reader(&dir).await;
    let (mut token, mut seen) = (None::<String>, Vec::new());
    for _ in 0..10 {
        let page = reader.list(&InvoiceFilter::default(), token.as_deref(), 3).unwrap();
        seen.extend(page.invoices.into_iter().map(|r| r.invoice.invoice_id));
        token = page.next_page_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, ["inv-s1-1", "inv-s2-1", "inv-s3-1", "inv-s2-2"]);
}

#[tokio::test]
async fn bad_arguments_are_refused() {
    let dir = TempDir::new().unwrap();
    let reader = scenario_reader(&dir).await;
    for token in ["", "zz", "00000000000000000", "000000000000000g"] {
        let err = reader.list(&InvoiceFilter::default(), Some(token), 1).unwrap_err();
        assert!(matches!(err, ProjectionError::InvalidArgument(_)), "{token:?}: {err}");
    }
    let err = reader.list(&filter(Some("c1/x"), None), None, 1).unwrap_err();
    assert!(matches!(err, ProjectionError::InvalidArgument(_)));
}

/// inv-a-1: January; inv-b-1: February with a second line over Jan 20 .. Feb 1; inv-c-1: March.
fn periods() -> Vec<Event> {
    let month = |m: i8| Period { start: date(2025, m, 1), end: date(2025, m + 1, 1) };
    let with = |sub: &str, p: Period, line_periods: &[Period]| {
        let mut inv = invoice(sub, 1, "c1", &["10", "5"], "0");
        inv.period = p;
        for (line, lp) in inv.lines.iter_mut().zip(line_periods) {
            line.service_period = *lp;
        }
        Event::InvoiceIssued(inv)
    };
    let late_jan = Period { start: date(2025, 1, 20), end: date(2025, 2, 1) };
    vec![
        customer("c1"),
        with("a", month(1), &[month(1), month(1)]),
        with("b", month(2), &[month(2), late_jan]),
        with("c", month(3), &[month(3), month(3)]),
    ]
}

fn period(from: Option<Date>, to: Option<Date>) -> InvoiceFilter {
    InvoiceFilter { period_from: from, period_to: to, ..Default::default() }
}

fn listed(reader: &InvoiceReader, filter: &InvoiceFilter, size: usize) -> Vec<Vec<String>> {
    let (mut token, mut pages) = (None::<String>, Vec::new());
    loop {
        let page = reader.list(filter, token.as_deref(), size).unwrap();
        pages.push(page.invoices.into_iter().map(|r| r.invoice.invoice_id).collect());
        token = page.next_page_token;
        if token.is_none() {
            return pages;
        }
    }
}

#[tokio::test]
async fn list_by_service_period_overlap() {
    let dir = TempDir::new().unwrap();
    let store = store_with(&periods()).await;
    let (_db, mut runner) = runner(&dir, &store, 2);
    runner.catch_up().await.unwrap();
    let reader = InvoiceReader::new(runner.read_model());
    let d = |m, day| Some(date(2025, m, day));
    let cases = [
        (d(1, 31), None, vec!["inv-a-1", "inv-b-1", "inv-c-1"]),
        (d(2, 1), None, vec!["inv-b-1", "inv-c-1"]),
        (None, d(1, 19), vec!["inv-a-1"]),
        (None, d(1, 20), vec!["inv-a-1", "inv-b-1"]),
        (d(2, 15), d(2, 20), vec!["inv-b-1"]),
        (d(3, 31), d(3, 31), vec!["inv-c-1"]),
        (d(4, 1), None, vec![]),
        (None, None, vec!["inv-a-1", "inv-b-1", "inv-c-1"]),
    ];
    for (from, to, want) in cases {
        assert_eq!(listed(&reader, &period(from, to), 100), [want], "{from:?}..{to:?}");
    }
    let pages = listed(&reader, &period(d(1, 25), None), 1);
    assert_eq!(pages, [["inv-a-1"], ["inv-b-1"], ["inv-c-1"]], "one per page");
    let by_customer = InvoiceFilter { customer_id: Some("c1".into()), ..period(d(3, 1), None) };
    assert_eq!(listed(&reader, &by_customer, 10), [["inv-c-1"]]);
    let err = reader.list(&period(d(2, 2), d(2, 1)), None, 1).unwrap_err();
    assert!(matches!(err, ProjectionError::InvalidArgument(_)), "from after to: {err}");
}

#[tokio::test]
async fn a_period_filtered_page_examines_a_bounded_number_of_invoices() {
    // 5,104 January invoices, none in March: the first page gives up after 5,000 with a token.
    let dir = TempDir::new().unwrap();
    let store = store_with(&bulk(5_100)).await;
    let (_db, mut runner) = runner(&dir, &store, 1_000);
    runner.catch_up().await.unwrap();
    let reader = InvoiceReader::new(runner.read_model());
    let march = period(Some(date(2025, 3, 1)), None);
    let first = reader.list(&march, None, 10).unwrap();
    assert!(first.invoices.is_empty());
    let token = first.next_page_token.expect("more to examine");
    let second = reader.list(&march, Some(&token), 10).unwrap();
    assert_eq!((second.invoices.len(), second.next_page_token), (0, None));
    let january = period(Some(date(2025, 1, 1)), Some(date(2025, 1, 1)));
    assert_eq!(reader.list(&january, Some(&token), 1_000).unwrap().invoices.len(), 104);
    assert_eq!(reader.customer_invoice_ids("c4").unwrap().len(), 1_020);
}
