//! The posting rules as tables: each rule's postings, (account, debit, credit), balanced.

use jiff::civil::date;
use rust_decimal_macros::dec;

use super::*;
use crate::calendar::Period;
use crate::credit_note::CreditNoteLine;
use crate::invoice::{build_invoice, InvoiceHeader, IssueReason, LineDraft};
use crate::money::Currency;
use crate::wallet::WalletUse;

type Row = (&'static str, Decimal, Decimal);

fn rows(legs: &Legs) -> Vec<Row> {
    let postings = legs.postings().expect("no overflow");
    let debits: Decimal = postings.iter().map(|p| p.debit).sum();
    let credits: Decimal = postings.iter().map(|p| p.credit).sum();
    assert_eq!(debits, credits, "balanced");
    postings.iter().map(|p| (p.account.as_str(), p.debit, p.credit)).collect()
}

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

/// One line of `kind` for `amount`, at `tax_rate` %.
fn invoice(kind: LineKind, amount: Decimal, tax_rate: Decimal) -> Invoice {
    let jan = Period { start: date(2025, 1, 1), end: date(2025, 2, 1) };
    let header = InvoiceHeader {
        invoice_id: "inv-1".into(),
        customer_id: "c".into(),
        subscription_id: String::new(),
        currency: usd(),
        period: jan,
        issued_at: jiff::Timestamp::UNIX_EPOCH,
        reason: IssueReason::OneOff,
        tax_rate,
    };
    let line = LineDraft {
        kind,
        description: "x".into(),
        metric_code: None,
        charge_model: None,
        units: None,
        service_period: jan,
        unrounded: amount,
    };
    build_invoice(header, vec![line]).unwrap()
}

#[test]
fn invoice_settlement_table() {
    let plain = invoice(LineKind::BaseFee, dec!(30), dec!(10));
    let mut credited = plain.clone();
    credited.credit_applied = dec!(5);
    let mut wallet = credited.clone();
    wallet.wallet_applied = vec![
        WalletUse { wallet_id: "w".into(), top_up: 2, kind: CreditKind::Granted, amount: dec!(8) },
        WalletUse { wallet_id: "w".into(), top_up: 1, kind: CreditKind::Paid, amount: dec!(20) },
    ];
    let purchase = invoice(LineKind::PrepaidCredits, dec!(100), dec!(0));
    assert_eq!(rows(&invoice_settlement_legs(&purchase)).len(), 2, "balanced on its own");
    let cases: [(&str, Invoice, Vec<Row>); 4] = [
        (
            "receivable and tax; the revenue legs are the journal's",
            plain,
            vec![("accounts_receivable", dec!(33), dec!(0)), ("tax_payable", dec!(0), dec!(3))],
        ),
        (
            "the credit balance pays part",
            credited,
            vec![
                ("accounts_receivable", dec!(33), dec!(0)),
                ("accounts_receivable", dec!(0), dec!(5)),
                ("tax_payable", dec!(0), dec!(3)),
                ("customer_credit", dec!(5), dec!(0)),
            ],
        ),
        (
            "then wallet credits: granted as a discount, paid from the liability",
            wallet,
            vec![
                ("accounts_receivable", dec!(33), dec!(0)),
                ("accounts_receivable", dec!(0), dec!(33)),
                ("tax_payable", dec!(0), dec!(3)),
                ("customer_credit", dec!(5), dec!(0)),
                ("prepaid_credits", dec!(20), dec!(0)),
                ("discounts", dec!(8), dec!(0)),
            ],
        ),
        (
            "a purchase of credits is a liability, complete without the journal",
            purchase,
            vec![
                ("accounts_receivable", dec!(100), dec!(0)),
                ("prepaid_credits", dec!(0), dec!(100)),
            ],
        ),
    ];
    for (name, inv, want) in cases {
        // A revenue line's legs are the journal's (by its schedule), so these balance only
        // for a purchase of credits.
        let got = rows_unbalanced(&invoice_settlement_legs(&inv));
        assert_eq!(sorted(got), sorted(want), "{name}");
    }
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort();
    rows
}

#[test]
fn payment_and_write_off_table() {
    // (amount, recovery, written off to, rows)
    let cases: [(Decimal, Decimal, Account, Vec<Row>); 3] = [
        (
            dec!(10),
            dec!(0),
            Account::BadDebt,
            vec![("cash", dec!(10), dec!(0)), ("accounts_receivable", dec!(0), dec!(10))],
        ),
        (
            dec!(10),
            dec!(4),
            Account::BadDebt,
            vec![
                ("cash", dec!(10), dec!(0)),
                ("bad_debt", dec!(0), dec!(4)),
                ("accounts_receivable", dec!(0), dec!(6)),
            ],
        ),
        (
            dec!(100),
            dec!(100),
            write_off_account(true),
            vec![("cash", dec!(100), dec!(0)), ("prepaid_credits", dec!(0), dec!(100))],
        ),
    ];
    for (amount, recovery, to, want) in cases {
        assert_eq!(
            sorted(rows(&payment_legs(amount, recovery, to))),
            sorted(want),
            "{amount} {recovery}"
        );
    }
    assert_eq!(write_off_account(false), Account::BadDebt);
    let off = write_off_legs(dec!(7), write_off_account(true));
    assert_eq!(
        sorted(rows(&off)),
        sorted(vec![
            ("prepaid_credits", dec!(7), dec!(0)),
            ("accounts_receivable", dec!(0), dec!(7))
        ])
    );
}

#[test]
fn credit_note_destination_table() {
    let cases = [
        (CreditDestination::Offset, "accounts_receivable"),
        (CreditDestination::Refund, "cash"),
        (CreditDestination::Credit, "customer_credit"),
    ];
    for (destination, account) in cases {
        let note = CreditNote {
            credit_note_id: "cn-c-1".into(),
            number: 1,
            customer_id: "c".into(),
            invoice_id: "inv-1".into(),
            currency: usd(),
            issued_at: jiff::Timestamp::UNIX_EPOCH,
            reason: "r".into(),
            destination,
            lines: vec![CreditNoteLine {
                line_index: 0,
                description: "x".into(),
                amount: dec!(10),
            }],
            subtotal: dec!(10),
            tax: dec!(1),
            total: dec!(11),
        };
        let got = rows_unbalanced(&credit_note_legs(&note));
        assert_eq!(
            sorted(got),
            sorted(vec![("tax_payable", dec!(1), dec!(0)), (account, dec!(0), dec!(11))])
        );
    }
}

/// The postings of legs that are only a part of an entry (the journal adds the rest).
fn rows_unbalanced(legs: &Legs) -> Vec<Row> {
    legs.sides
        .iter()
        .flat_map(|(a, (d, c))| {
            let mut out = Vec::new();
            if !d.is_zero() {
                out.push((a.as_str(), *d, Decimal::ZERO));
            }
            if !c.is_zero() {
                out.push((a.as_str(), Decimal::ZERO, *c));
            }
            out
        })
        .collect()
}

#[test]
fn wallet_expiry_table() {
    let lot = |top_up, kind, amount| Taken { top_up, kind, amount };
    let cases: [(Vec<Taken>, Vec<Row>); 3] = [
        (vec![lot(1, CreditKind::Granted, dec!(5))], vec![]),
        (
            vec![
                lot(1, CreditKind::Granted, dec!(5)),
                lot(2, CreditKind::Paid, dec!(12.5)),
                lot(3, CreditKind::Paid, dec!(1)),
            ],
            vec![
                ("prepaid_credits", dec!(13.5), dec!(0)),
                ("breakage_revenue", dec!(0), dec!(13.5)),
            ],
        ),
        (vec![], vec![]),
    ];
    for (lots, want) in cases {
        assert_eq!(sorted(rows(&wallet_expiry_legs(&lots).unwrap())), sorted(want), "{lots:?}");
    }
}

#[test]
fn recognition_source_and_accounts_round_trip() {
    assert_eq!(
        recognition_source(date(2025, 1, 9), date(2025, 1, 10)),
        Account::UnbilledReceivable
    );
    assert_eq!(recognition_source(date(2025, 1, 10), date(2025, 1, 10)), Account::DeferredRevenue);
    for a in ACCOUNTS {
        assert_eq!(Account::parse(a.as_str()), Some(a));
    }
    let debit_normal: Vec<&str> =
        ACCOUNTS.iter().filter(|a| a.is_debit_normal()).map(|a| a.as_str()).collect();
    assert_eq!(
        debit_normal,
        ["accounts_receivable", "unbilled_receivable", "cash", "bad_debt", "discounts"]
    );
}
