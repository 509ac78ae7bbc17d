use jiff::civil::date;
use proptest::prelude::*;
use rust_decimal_macros::dec;

use super::*;
use crate::calendar::Period;
use crate::invoice::{build_invoice, InvoiceHeader, IssueReason, LineDraft, LineKind};

const NOW: Timestamp = Timestamp::UNIX_EPOCH;

/// An invoice of `lines` (amounts) at `tax_rate` %, in USD.
fn account(lines: &[Decimal], tax_rate: Decimal) -> InvoiceAccount {
    let period = Period { start: date(2026, 1, 1), end: date(2026, 2, 1) };
    let header = InvoiceHeader {
        invoice_id: "inv-s-1".into(),
        customer_id: "c".into(),
        subscription_id: "s".into(),
        currency: Currency::parse("USD").unwrap(),
        period,
        issued_at: NOW,
        reason: IssueReason::PeriodClose,
        tax_rate,
    };
    let drafts = lines
        .iter()
        .enumerate()
        .map(|(i, a)| LineDraft {
            kind: if *a < Decimal::ZERO { LineKind::Credit } else { LineKind::BaseFee },
            description: format!("line {i}"),
            metric_code: None,
            charge_model: None,
            units: None,
            service_period: period,
            unrounded: *a,
        })
        .collect();
    InvoiceAccount::issued(build_invoice(header, drafts).unwrap())
}

fn request(lines: &[(u32, Option<Decimal>)], destination: CreditDestination) -> CreditNoteRequest {
    CreditNoteRequest {
        invoice_id: "inv-s-1".into(),
        lines: lines
            .iter()
            .map(|(i, a)| CreditLineRequest { line_index: *i, amount: *a })
            .collect(),
        reason: "service outage".into(),
        destination,
    }
}

/// Issues `req` on `acc` as the next note: its (subtotal, tax, total) or the error's reason.
fn issue(acc: &mut InvoiceAccount, req: &CreditNoteRequest) -> Result<[Decimal; 3], String> {
    let number = acc.credits.credit_note_ids.len() as u32 + 1;
    match decide(acc, number, req, NOW) {
        Ok(note) => {
            assert_eq!(note.credit_note_id, format!("cn-c-{number}"));
            assert_eq!(note.total, note.subtotal + note.tax);
            acc.credit(&note);
            Ok([note.subtotal, note.tax, note.total])
        }
        Err(e) => Err(match e {
            DomainError::Precondition { kind, .. } => kind.to_string(),
            DomainError::Invalid(v) => format!("INVALID {}", v[0].field),
            other => format!("{other:?}"),
        }),
    }
}

use CreditDestination::{Credit, Offset, Refund};

/// Steps on one invoice (100 + 50 at 20 % tax = 180): an optional payment, then notes; each
/// note's (subtotal, tax, total) or its error, then the invoice's amount due and status.
#[test]
fn credit_notes_table() {
    type Note =
        (Vec<(u32, Option<Decimal>)>, CreditDestination, Result<[Decimal; 3], &'static str>);
    let cases: Vec<(&str, Decimal, Vec<Note>, Decimal, InvoiceStatus)> = vec![
        (
            "whole invoice offset closes it",
            dec!(0),
            vec![(vec![(0, None), (1, None)], Offset, Ok([dec!(150), dec!(30), dec!(180)]))],
            dec!(0),
            InvoiceStatus::Closed,
        ),
        (
            "partial offset: tax pro rata, rounded",
            dec!(0),
            vec![(
                vec![(0, Some(dec!(33.33)))],
                Offset,
                Ok([dec!(33.33), dec!(6.67), dec!(40.00)]),
            )],
            dec!(140),
            InvoiceStatus::Open,
        ),
        (
            "cumulative tax: three thirds credit exactly the tax",
            dec!(0),
            vec![
                (vec![(0, Some(dec!(33.33)))], Offset, Ok([dec!(33.33), dec!(6.67), dec!(40.00)])),
                (vec![(0, Some(dec!(33.33)))], Offset, Ok([dec!(33.33), dec!(6.66), dec!(39.99)])),
                (vec![(0, None), (1, None)], Offset, Ok([dec!(83.34), dec!(16.67), dec!(100.01)])),
            ],
            dec!(0),
            InvoiceStatus::Closed,
        ),
        (
            "a line is never credited past its amount",
            dec!(0),
            vec![
                (vec![(1, Some(dec!(50)))], Offset, Ok([dec!(50), dec!(10), dec!(60)])),
                (vec![(1, Some(dec!(0.01)))], Offset, Err(CREDIT_EXCEEDS_CREDITABLE)),
                (vec![(0, Some(dec!(100.01)))], Offset, Err(CREDIT_EXCEEDS_CREDITABLE)),
            ],
            dec!(120),
            InvoiceStatus::Open,
        ),
        (
            "refund and credit only what was paid",
            dec!(0),
            vec![
                (vec![(0, Some(dec!(10)))], Refund, Err(CREDIT_EXCEEDS_PAID)),
                (vec![(0, Some(dec!(10)))], Credit, Err(CREDIT_EXCEEDS_PAID)),
            ],
            dec!(180),
            InvoiceStatus::Open,
        ),
        (
            "paid invoice: refund, then credit to balance, up to the payment",
            dec!(180),
            vec![
                (vec![(0, None)], Refund, Ok([dec!(100), dec!(20), dec!(120)])),
                (vec![(1, Some(dec!(40)))], Credit, Ok([dec!(40), dec!(8), dec!(48)])),
                (vec![(1, None)], Offset, Err(CREDIT_EXCEEDS_DUE)),
                (vec![(1, None)], Credit, Ok([dec!(10), dec!(2), dec!(12)])),
            ],
            dec!(0),
            InvoiceStatus::Paid,
        ),
        (
            "partly paid: offset at most what is due",
            dec!(150),
            vec![
                (vec![(0, Some(dec!(30)))], Offset, Err(CREDIT_EXCEEDS_DUE)),
                (vec![(0, Some(dec!(25)))], Offset, Ok([dec!(25), dec!(5), dec!(30)])),
            ],
            dec!(0),
            InvoiceStatus::Closed,
        ),
        (
            "bad requests change nothing",
            dec!(0),
            vec![
                (vec![], Offset, Err("INVALID lines")),
                (vec![(2, None)], Offset, Err("INVALID lines[0].line_index")),
                (vec![(0, None), (0, None)], Offset, Err("INVALID lines[1].line_index")),
                (vec![(0, Some(dec!(-1)))], Offset, Err("INVALID lines[0].amount")),
                (vec![(0, Some(dec!(0)))], Offset, Err("INVALID lines[0].amount")),
                (vec![(0, Some(dec!(1.001)))], Offset, Err("INVALID lines[0].amount")),
            ],
            dec!(180),
            InvoiceStatus::Open,
        ),
    ];
    for (name, paid, notes, due, status) in cases {
        let mut acc = account(&[dec!(100), dec!(50)], dec!(20));
        if !paid.is_zero() {
            acc.pay(paid);
        }
        for (i, (lines, destination, want)) in notes.into_iter().enumerate() {
            let got = issue(&mut acc, &request(&lines, destination));
            assert_eq!(got, want.map_err(str::to_string), "{name}: note {i}");
        }
        assert_eq!((acc.amount_due(), acc.status), (due, status), "{name}");
    }
}

#[test]
fn void_uncollectible_and_negative_lines_are_not_creditable() {
    let mut void = account(&[dec!(100)], dec!(0));
    void.status = InvoiceStatus::Void;
    let req = request(&[(0, None)], Offset);
    assert_eq!(issue(&mut void, &req), Err(INVOICE_NOT_CREDITABLE.to_string()));
    let mut bad = account(&[dec!(100)], dec!(0));
    bad.status = InvoiceStatus::Uncollectible;
    assert_eq!(issue(&mut bad, &req), Err(INVOICE_NOT_CREDITABLE.to_string()));
    // 100 base fee less a 30 proration credit: 70 is all that can be credited.
    let mut net = account(&[dec!(100), dec!(-30)], dec!(10));
    let whole = request(&[(0, None)], Offset);
    assert_eq!(issue(&mut net, &whole), Err(CREDIT_EXCEEDS_CREDITABLE.to_string()));
    let credit_line = request(&[(1, None)], Offset);
    assert_eq!(issue(&mut net, &credit_line), Err(CREDIT_EXCEEDS_CREDITABLE.to_string()));
    let most = request(&[(0, Some(dec!(70)))], Offset);
    assert_eq!(issue(&mut net, &most), Ok([dec!(70), dec!(7), dec!(77)]));
    assert_eq!((net.amount_due(), net.status), (dec!(0), InvoiceStatus::Closed));
}

proptest! {
    /// Any sequence of notes keeps the invariants: credited subtotal ≤ subtotal, credited tax
    /// = round(tax × credited / subtotal) (exactly the tax once all is credited), each line
    /// within its amount, offsets within the total less payments, returns within payments.
    #[test]
    fn notes_never_credit_past_the_invoice(
        lines in prop::collection::vec(1i64..=100_000, 1..4),
        rate in 0i64..=2_500,
        paid_percent in 0i64..=100,
        notes in prop::collection::vec((0u32..4, prop::option::of(1i64..=60_000), 0u8..3), 1..12),
    ) {
        let amounts: Vec<Decimal> = lines.iter().map(|m| Decimal::new(*m, 2)).collect();
        let mut acc = account(&amounts, Decimal::new(rate, 2));
        let paid = Currency::parse("USD").unwrap().round(acc.invoice.total * Decimal::new(paid_percent, 2));
        if paid > Decimal::ZERO {
            acc.pay(paid);
        }
        for (line, amount, dest) in notes {
            let destination = [Offset, Refund, Credit][dest as usize];
            let req = request(&[(line, amount.map(|m| Decimal::new(m, 2)))], destination);
            let before = acc.clone();
            if issue(&mut acc, &req).is_err() {
                prop_assert_eq!(&acc, &before, "a refused note changed the invoice");
            }
            let inv = &acc.invoice;
            let c = &acc.credits;
            prop_assert!(c.subtotal <= inv.subtotal);
            let want_tax = if c.subtotal == inv.subtotal { inv.tax } else {
                Currency::parse("USD").unwrap().round(inv.tax * c.subtotal / inv.subtotal)
            };
            prop_assert_eq!(c.tax, want_tax);
            for (i, l) in inv.lines.iter().enumerate() {
                prop_assert!(c.on_line(i as u32) <= l.amount);
            }
            prop_assert!(acc.amount_paid + c.offset <= inv.total);
            prop_assert!(c.refunded + c.to_balance <= acc.amount_paid);
        }
    }
}
