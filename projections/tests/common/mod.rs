//! Builders shared by the projection tests: domain events appended to a `MemoryStore`; `sim`
//! generates random valid logs decided by the real domain.
#![allow(dead_code)]

pub mod sim;

use std::sync::Arc;

use domain::calendar::Period;
use domain::catalog::Customer;
use domain::events::Event;
use domain::invoice::{build_invoice, Invoice, InvoiceHeader, IssueReason, LineDraft, LineKind};
use domain::money::Currency;
use event_store::{MemoryStore, Position};
use jiff::civil::date;
use jiff::Timestamp;
use projections::invoices::InvoicesProjection;
use projections::{Runner, RunnerConfig};
use rust_decimal::Decimal;
use tempfile::TempDir;

pub type Store = Arc<MemoryStore>;

pub fn at(n: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + n).unwrap()
}

pub fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

pub fn customer(id: &str) -> Event {
    Event::CustomerRegistered(Customer {
        customer_id: id.into(),
        name: format!("Customer {id}"),
        currency: Currency::parse("USD").unwrap(),
        time_zone: "UTC".into(),
        tax_rate: Decimal::ZERO,
    })
}

/// An invoice of `inv-<sub>-<n>` with one line per amount (the first a base fee), tax in %.
pub fn invoice(sub: &str, n: u32, customer: &str, amounts: &[&str], tax: &str) -> Invoice {
    let period = Period { start: date(2025, 1, 1), end: date(2025, 2, 1) };
    let header = InvoiceHeader {
        invoice_id: format!("inv-{sub}-{n}"),
        customer_id: customer.into(),
        subscription_id: sub.into(),
        currency: Currency::parse("USD").unwrap(),
        period,
        issued_at: at(i64::from(n)),
        reason: IssueReason::PeriodClose,
        tax_rate: dec(tax),
    };
    let line = |(i, a): (usize, &&str)| LineDraft {
        kind: if i == 0 { LineKind::BaseFee } else { LineKind::Usage },
        description: format!("line {i}"),
        metric_code: None,
        charge_model: None,
        units: None,
        service_period: period,
        unrounded: dec(a),
    };
    build_invoice(header, amounts.iter().enumerate().map(line).collect()).expect("in range")
}

pub fn issued(sub: &str, n: u32, customer: &str, amounts: &[&str], tax: &str) -> Event {
    Event::InvoiceIssued(invoice(sub, n, customer, amounts, tax))
}

pub fn paid(id: &str, amount: &str, t: i64) -> Event {
    Event::PaymentSucceeded { invoice_id: id.into(), amount: dec(amount), occurred_at: at(t) }
}

pub fn failed(id: &str, attempt: u32, t: i64) -> Event {
    let reason = format!("card_declined #{attempt}");
    Event::PaymentFailed { invoice_id: id.into(), reason, attempt, occurred_at: at(t) }
}

pub fn voided(id: &str, t: i64) -> Event {
    Event::InvoiceVoided { invoice_id: id.into(), reason: "duplicate".into(), occurred_at: at(t) }
}

pub fn uncollectible(id: &str, t: i64) -> Event {
    Event::InvoiceMarkedUncollectible { invoice_id: id.into(), occurred_at: at(t) }
}

/// The hand-computed scenario (see `tests/invoices.rs`), 15 events, interleaved.
pub fn scenario() -> Vec<Event> {
    let (a, b, c) = ("inv-s1-1", "inv-s2-1", "inv-s3-1");
    vec![
        customer("c1"),
        customer("c2"),
        issued("s1", 1, "c1", &["100", "23.456"], "20"),
        issued("s2", 1, "c1", &["50"], "0"),
        failed(a, 1, 10),
        issued("s3", 1, "c2", &["10.005"], "10"),
        voided(b, 11),
        failed(a, 2, 12),
        failed(c, 1, 13),
        failed(c, 2, 14),
        paid(a, "100.00", 15),
        failed(c, 3, 16),
        uncollectible(c, 16),
        paid(a, "48.15", 17),
        issued("s2", 2, "c1", &["-5"], "0"),
    ]
}

/// `subs` more subscriptions, each with an invoice and a fate by index: paid; failed then
/// partly paid; void; paid in two parts. Plus the scenario first.
pub fn bulk(subs: u32) -> Vec<Event> {
    let mut events = scenario();
    for i in 0..subs {
        let (sub, cust) = (format!("b{i}"), format!("c{}", i % 5));
        let id = format!("inv-{sub}-1");
        events.push(issued(&sub, 1, &cust, &["30", "1.234"], "10"));
        match i % 4 {
            0 => events.push(paid(&id, "34.35", 20)),
            1 => events.extend([failed(&id, 1, 20), paid(&id, "10", 21)]),
            2 => events.push(voided(&id, 20)),
            _ => events.extend([paid(&id, "30", 20), paid(&id, "4.35", 21)]),
        }
    }
    events
}

pub async fn append(store: &Store, event: &Event) -> Position {
    projections::testkit::append_event(store, event).await
}

pub async fn append_all(store: &Store, events: &[Event]) -> Position {
    let mut last = 0;
    for event in events {
        last = append(store, event).await;
    }
    last
}

pub async fn store_with(events: &[Event]) -> Store {
    let store = Arc::new(MemoryStore::new());
    append_all(&store, events).await;
    store
}

pub fn config(batch_events_max: usize) -> RunnerConfig {
    RunnerConfig { batch_events_max, poll_interval_ms: 20 }
}

pub fn runner(
    dir: &TempDir,
    store: &Store,
    batch: usize,
) -> (sled::Db, Runner<Store, InvoicesProjection>) {
    let db = projections::open_db(dir.path()).unwrap();
    let runner = Runner::open(&db, store.clone(), InvoicesProjection, config(batch)).unwrap();
    (db, runner)
}

/// The invoices projection under another tree name, failing at one position (a crash in the
/// middle of a batch).
pub struct FailingAt(pub Position, pub &'static str);

impl projections::Projection for FailingAt {
    fn name(&self) -> &'static str {
        self.1
    }

    fn version(&self) -> u32 {
        projections::Projection::version(&InvoicesProjection)
    }

    fn wants(&self, event_type: &str) -> bool {
        projections::Projection::wants(&InvoicesProjection, event_type)
    }

    fn apply(
        &mut self,
        w: &mut projections::Writes<'_>,
        e: &event_store::RecordedEvent,
        d: &Event,
    ) -> projections::Result<()> {
        if e.position == self.0 {
            let detail = "simulated crash".to_string();
            let (projection, position) = (self.1, e.position);
            return Err(projections::ProjectionError::Inconsistent {
                projection,
                position,
                detail,
            });
        }
        projections::Projection::apply(&mut InvoicesProjection, w, e, d)
    }
}
