//! The journal of credit notes (SPEC §8.5): a note reverses the credited line's deferred
//! revenue first, then recognized revenue, reverses tax pro rata, and credits its destination
//! (accounts receivable, cash or customer credit). Hand-computed balances per case; the trial
//! balance balances at every log prefix and every date.

use std::sync::Arc;

use domain::calendar::Period;
use domain::catalog::Customer;
use domain::credit_note::{self, CreditDestination, CreditLineRequest, CreditNoteRequest};
use domain::events::Event;
use domain::invoice::{
    build_invoice, Invoice, InvoiceAccount, InvoiceHeader, IssueReason, LineDraft, LineKind,
};
use domain::money::Currency;
use event_store::MemoryStore;
use jiff::civil::{date, Date};
use jiff::Timestamp;
use projections::journal::{Balances, JournalProjection, JournalReader};
use projections::{Runner, RunnerConfig};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn at(day: Date) -> Timestamp {
    day.at(12, 0, 0, 0).to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp()
}

/// inv-1: a base fee of 30.00 for January, in advance (issued Jan 1), 10 % tax: 33.00.
fn invoice() -> Invoice {
    let jan = Period { start: date(2025, 1, 1), end: date(2025, 2, 1) };
    let header = InvoiceHeader {
        invoice_id: "inv-1".into(),
        customer_id: "c1".into(),
        subscription_id: "s1".into(),
        currency: usd(),
        period: jan,
        issued_at: at(date(2025, 1, 1)),
        reason: IssueReason::SubscriptionStart,
        tax_rate: dec!(10),
    };
    let fee = LineDraft {
        kind: LineKind::BaseFee,
        description: "Base fee".into(),
        metric_code: None,
        charge_model: None,
        units: None,
        service_period: jan,
        unrounded: dec!(30),
    };
    build_invoice(header, vec![fee]).unwrap()
}

/// (AR, cash, deferred, tax payable, customer credit, revenue)
fn summary(b: &Balances) -> [Decimal; 6] {
    [
        b.accounts_receivable,
        b.cash,
        b.deferred_revenue,
        b.tax_payable,
        b.customer_credit,
        b.total_revenue(),
    ]
}

struct Case {
    name: &'static str,
    paid_on: Option<Date>,
    /// The note's day, amount on the fee line, destination.
    note: (Date, Decimal, CreditDestination),
    /// (as of, summary) pairs.
    want: Vec<(Date, [Decimal; 6])>,
}

#[tokio::test]
async fn credit_notes_reverse_deferred_revenue_first_then_recognized_revenue() {
    use CreditDestination::{Credit, Offset, Refund};
    let cases = vec![
        Case {
            name: "mid-month offset: only deferred revenue is reversed",
            paid_on: None,
            note: (date(2025, 1, 11), dec!(10), Offset),
            want: vec![
                // 10 of 31 days recognized: round(30 × 10 / 31) = 9.68.
                (date(2025, 1, 10), [dec!(33), dec!(0), dec!(20.32), dec!(3), dec!(0), dec!(9.68)]),
                // The 10.32 left is spread over the 21 days left: 0.49 on the 11th.
                (date(2025, 1, 11), [dec!(22), dec!(0), dec!(9.83), dec!(2), dec!(0), dec!(10.17)]),
                (date(2025, 3, 1), [dec!(22), dec!(0), dec!(0), dec!(2), dec!(0), dec!(20)]),
            ],
        },
        Case {
            name: "refund on the last day: more than is deferred, recognized revenue reversed",
            paid_on: Some(date(2025, 1, 2)),
            note: (date(2025, 1, 31), dec!(25), Refund),
            want: vec![
                (date(2025, 1, 30), [dec!(0), dec!(33), dec!(0.97), dec!(3), dec!(0), dec!(29.03)]),
                (date(2025, 1, 31), [dec!(0), dec!(5.50), dec!(0), dec!(0.50), dec!(0), dec!(5)]),
            ],
        },
        Case {
            name: "the whole fee to the customer's credit balance",
            paid_on: Some(date(2025, 1, 2)),
            note: (date(2025, 1, 20), dec!(30), Credit),
            want: vec![
                (date(2025, 1, 20), [dec!(0), dec!(33), dec!(0), dec!(0), dec!(33), dec!(0)]),
                (date(2025, 3, 1), [dec!(0), dec!(33), dec!(0), dec!(0), dec!(33), dec!(0)]),
            ],
        },
    ];
    for case in cases {
        let invoice = invoice();
        let mut account = InvoiceAccount::issued(invoice.clone());
        let mut events = vec![
            Event::CustomerRegistered(Customer {
                customer_id: "c1".into(),
                name: "C1".into(),
                currency: usd(),
                time_zone: "UTC".into(),
                tax_rate: dec!(10),
            }),
            Event::InvoiceIssued(invoice),
        ];
        if let Some(day) = case.paid_on {
            account.pay(dec!(33));
            let invoice_id = "inv-1".into();
            events.push(Event::PaymentSucceeded {
                invoice_id,
                amount: dec!(33),
                occurred_at: at(day),
            });
        }
        let (day, amount, destination) = case.note;
        let request = CreditNoteRequest {
            invoice_id: "inv-1".into(),
            lines: vec![CreditLineRequest { line_index: 0, amount: Some(amount) }],
            reason: "outage".into(),
            destination,
        };
        let note = credit_note::decide(&account, 1, &request, at(day)).expect(case.name);
        events.push(Event::CreditNoteIssued(note));

        let store = Arc::new(MemoryStore::new());
        for event in &events {
            projections::testkit::append_event(&store, event).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let db = projections::open_db(dir.path()).unwrap();
        let config = RunnerConfig { batch_events_max: 1, poll_interval_ms: 20 };
        let mut runner =
            Runner::open(&db, store.clone(), JournalProjection::default(), config).unwrap();
        let reader = JournalReader::new(runner.read_model());
        while runner.step().await.unwrap() > 0 {
            for d in [date(2024, 12, 31), date(2025, 1, 15), date(2025, 1, 31), date(9999, 1, 1)] {
                let rows = reader.trial_balance(d).unwrap();
                let debit: Decimal = rows.iter().map(|r| r.debit).sum();
                let credit: Decimal = rows.iter().map(|r| r.credit).sum();
                assert_eq!(debit, credit, "{}: trial balance as of {d}", case.name);
            }
        }
        for (as_of, want) in &case.want {
            let balances = reader.balances(*as_of).unwrap();
            let got = balances.first().map(|(_, b)| summary(b)).unwrap_or_default();
            assert_eq!(&got, want, "{}: as of {as_of}", case.name);
        }
    }
}
