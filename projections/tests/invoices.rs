//! The invoices read model: hand-computed states and the read API.

mod common;

use common::{at, dec, runner, scenario, store_with};
use domain::invoice::InvoiceStatus::{self, Open, Paid, Uncollectible, Void};
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
    InvoiceFilter { customer_id: customer.map(String::from), status }
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
