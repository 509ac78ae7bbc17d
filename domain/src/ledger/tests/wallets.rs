//! Wallets through the ledger: the full order of application on one invoice (coupon → tax →
//! credit-note balance → wallet credits), paid credits usable once their invoice is paid,
//! expiry in billing runs, the low-balance event, and the refusals.

use super::*;
use crate::coupon::{Coupon, CouponKind, Frequency};
use crate::credit_note::{CreditDestination, CreditLineRequest, CreditNoteRequest};
use crate::invoice::IssueReason;
use crate::wallet::{CreditKind, OpenWallet, Taken, TopUpRequest, WalletUse};

fn open(w: &mut World, id: &str, threshold: Option<Decimal>) {
    let cmd = Command::OpenWallet(OpenWallet {
        wallet_id: id.into(),
        customer_id: "acme".into(),
        name: String::new(),
        rate_amount: dec!(1),
        low_balance_threshold: threshold,
    });
    w.run(cmd, "2025-01-01T00:00:00Z").unwrap();
}

fn top_up(
    w: &mut World,
    id: &str,
    kind: CreditKind,
    credits: Decimal,
    expires_on: Option<jiff::civil::Date>,
    usable_at_once: bool,
    now: &str,
) -> Result<Vec<Event>, DomainError> {
    let req = TopUpRequest { wallet_id: id.into(), kind, credits, expires_on, usable_at_once };
    w.run(Command::TopUpWallet(req), now)
}

fn pay(w: &mut World, invoice_id: &str, amount: Decimal, now: &str) -> Vec<Event> {
    let cmd = Command::RecordPayment {
        invoice_id: invoice_id.into(),
        outcome: PaymentOutcome::Succeeded { amount },
        occurred_at: at(now),
    };
    w.run(cmd, now).unwrap()
}

fn uses(inv: &Invoice) -> Vec<(u32, CreditKind, Decimal)> {
    inv.wallet_applied.iter().map(|u| (u.top_up, u.kind, u.amount)).collect()
}

fn precondition(r: Result<Vec<Event>, DomainError>) -> &'static str {
    match r {
        Err(DomainError::Precondition { kind, .. }) => kind,
        other => panic!("not a precondition failure: {other:?}"),
    }
}

/// A 30.00 monthly fee in advance at 10 % tax, from Jan 1 (the Jan invoice: 33.00).
fn world() -> World {
    let mut w = World::new(dec!(10));
    w.plan("basic", dec!(30.00), FeeTiming::Advance, 0, vec![], None);
    w
}

/// SPEC §8 order on one invoice: coupon, tax on the discounted line, the credit-note balance,
/// then wallet credits (granted before paid), never past what is due.
#[test]
fn order_of_application_coupon_tax_credit_balance_wallet() {
    let mut w = world();
    w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    pay(&mut w, "inv-s1-1", dec!(33), "2025-01-02T00:00:00Z");
    let note = Command::IssueCreditNote(CreditNoteRequest {
        invoice_id: "inv-s1-1".into(),
        lines: vec![CreditLineRequest { line_index: 0, amount: Some(dec!(5)) }],
        reason: "outage".into(),
        destination: CreditDestination::Credit,
    });
    w.run(note, "2025-01-03T00:00:00Z").unwrap();
    let ten = Coupon {
        code: "ten".into(),
        kind: CouponKind::FixedAmount {
            amount: dec!(10),
            currency: Currency::parse("USD").unwrap(),
        },
        frequency: Frequency::Once,
        plan_codes: vec![],
        metric_codes: vec![],
        applies_to_add_ons: false,
        expires_on: None,
    };
    w.run(Command::DefineCoupon(ten), "2025-01-03T00:00:00Z").unwrap();
    let apply = Command::ApplyCoupon { customer_id: "acme".into(), coupon_code: "ten".into() };
    w.run(apply, "2025-01-03T00:00:00Z").unwrap();
    open(&mut w, "main", None);
    let paid =
        top_up(&mut w, "main", CreditKind::Paid, dec!(100), None, true, "2025-01-04T00:00:00Z");
    assert_eq!(invoices(&paid.unwrap())[0].invoice_id, "inv-acme-o1", "the purchase invoice");
    top_up(&mut w, "main", CreditKind::Granted, dec!(3), None, false, "2025-01-04T00:00:00Z")
        .unwrap();
    let feb = w.bill("2025-02-01T00:00:00Z").remove(0);
    // 30.00 − 10.00 coupon = 20.00; tax 2.00; total 22.00; credit balance 5.50; wallet: the
    // granted 3.00 first, then 13.50 of the paid lot; nothing due, so paid at issue.
    assert_eq!((feb.lines[0].amount, feb.tax, feb.total), (dec!(20), dec!(2), dec!(22)));
    assert_eq!(feb.credit_applied, dec!(5.50));
    let want = vec![(2, CreditKind::Granted, dec!(3)), (1, CreditKind::Paid, dec!(13.50))];
    assert_eq!((uses(&feb), feb.due_at_issue()), (want, dec!(0)));
    assert_eq!(w.ledger.invoices["inv-s1-2"].status, InvoiceStatus::Paid);
    assert_eq!(w.ledger.wallets["main"].balance(), dec!(86.50));
    // March: no coupon, no credit balance; the wallet pays the whole 33.00.
    let mar = w.bill("2025-03-01T00:00:00Z").remove(0);
    assert_eq!((mar.credit_applied, uses(&mar)), (dec!(0), vec![(1, CreditKind::Paid, dec!(33))]));
    assert_eq!(w.ledger.wallets["main"].balance(), dec!(53.50));
}

/// Paid credits wait for their invoice unless the command says otherwise; a partial payment
/// does not release them, the payment that settles the invoice does.
#[test]
fn paid_credits_become_usable_when_their_invoice_is_paid() {
    let mut w = world();
    open(&mut w, "main", None);
    let events =
        top_up(&mut w, "main", CreditKind::Paid, dec!(40), None, false, "2025-01-01T00:00:00Z")
            .unwrap();
    let purchase = invoices(&events).remove(0);
    assert_eq!(
        (purchase.reason, purchase.tax, purchase.total),
        (IssueReason::WalletTopUp, dec!(0), dec!(40))
    );
    assert_eq!(purchase.lines[0].kind, LineKind::PrepaidCredits);
    w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    assert!(w.ledger.invoices["inv-s1-1"].invoice.wallet_applied.is_empty(), "not usable yet");
    let part = pay(&mut w, "inv-acme-o1", dec!(15), "2025-01-02T00:00:00Z");
    assert_eq!(part.len(), 1, "a partial payment releases nothing: {part:?}");
    let rest = pay(&mut w, "inv-acme-o1", dec!(25), "2025-01-03T00:00:00Z");
    assert!(matches!(&rest[1], Event::WalletCreditsUsable { top_up: 1, .. }), "{rest:?}");
    assert_eq!(w.ledger.wallets["main"].balance(), dec!(40));
    let feb = w.bill("2025-02-01T00:00:00Z").remove(0);
    assert_eq!((uses(&feb), feb.due_at_issue()), (vec![(1, CreditKind::Paid, dec!(33))], dec!(0)));
}

/// Expiry: (billing run's as-of, the expiry events it records as (date, lots)). Lots: granted
/// 10 expiring Feb 15, paid 20 expiring Feb 15, granted 5 expiring Mar 10, paid 7 never.
#[test]
fn expiry_in_billing_runs_table() {
    type Expired = Vec<(jiff::civil::Date, Vec<(u32, CreditKind, Decimal)>)>;
    let cases: [(&str, Expired); 3] = [
        ("2025-02-14T23:00:00Z", vec![]),
        (
            "2025-02-15T00:00:00Z",
            vec![(
                date(2025, 2, 15),
                vec![(1, CreditKind::Granted, dec!(10)), (2, CreditKind::Paid, dec!(20))],
            )],
        ),
        (
            "2025-03-20T00:00:00Z",
            vec![
                (
                    date(2025, 2, 15),
                    vec![(1, CreditKind::Granted, dec!(10)), (2, CreditKind::Paid, dec!(20))],
                ),
                (date(2025, 3, 10), vec![(3, CreditKind::Granted, dec!(5))]),
            ],
        ),
    ];
    for (as_of, want) in cases {
        let mut w = world();
        open(&mut w, "main", None);
        let now = "2025-01-01T00:00:00Z";
        let (feb15, mar10) = (Some(date(2025, 2, 15)), Some(date(2025, 3, 10)));
        top_up(&mut w, "main", CreditKind::Granted, dec!(10), feb15, false, now).unwrap();
        top_up(&mut w, "main", CreditKind::Paid, dec!(20), feb15, true, now).unwrap();
        top_up(&mut w, "main", CreditKind::Granted, dec!(5), mar10, false, now).unwrap();
        top_up(&mut w, "main", CreditKind::Paid, dec!(7), None, true, now).unwrap();
        let events = w.run(Command::RunBilling { as_of: at(as_of) }, as_of).unwrap();
        let got: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::WalletCreditsExpired { expired_on, lots, .. } => Some((
                    *expired_on,
                    lots.iter().map(|t: &Taken| (t.top_up, t.kind, t.amount)).collect::<Vec<_>>(),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(got, want, "{as_of}");
        let left: Decimal =
            dec!(42) - want.iter().flat_map(|(_, l)| l).map(|t| t.2).sum::<Decimal>();
        assert_eq!(w.ledger.wallets["main"].balance(), left, "{as_of}");
        // A second run records nothing again.
        let again = w.run(Command::RunBilling { as_of: at(as_of) }, as_of).unwrap();
        assert!(!again.iter().any(|e| matches!(e, Event::WalletCreditsExpired { .. })), "{as_of}");
    }
}

/// An expired lot pays nothing, even on an invoice issued by the run that expires it.
#[test]
fn an_invoice_never_takes_expired_credits() {
    let mut w = world();
    open(&mut w, "main", None);
    let now = "2025-01-01T00:00:00Z";
    top_up(&mut w, "main", CreditKind::Granted, dec!(50), Some(date(2025, 2, 1)), false, now)
        .unwrap();
    w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    assert_eq!(
        uses(&w.ledger.invoices["inv-s1-1"].invoice),
        vec![(1, CreditKind::Granted, dec!(33))]
    );
    let events = w
        .run(Command::RunBilling { as_of: at("2025-02-01T00:00:00Z") }, "2025-02-01T00:00:00Z")
        .unwrap();
    assert!(matches!(events[0], Event::WalletCreditsExpired { .. }), "expiry first: {events:?}");
    let feb = invoices(&events).remove(0);
    assert!(feb.wallet_applied.is_empty() && feb.due_at_issue() == dec!(33), "{feb:?}");
}

/// The low-balance event fires once per downward crossing, and again after a top-up.
#[test]
fn low_balance_fires_once_per_crossing() {
    let mut w = world();
    open(&mut w, "main", Some(dec!(40)));
    let now = "2025-01-01T00:00:00Z";
    top_up(&mut w, "main", CreditKind::Granted, dec!(70), None, false, now).unwrap();
    let lows = |events: &[Event]| {
        events.iter().filter(|e| matches!(e, Event::WalletBalanceLow { .. })).count()
    };
    // 70 − 33 = 37 < 40: fires with the invoice.
    let start = w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    assert_eq!(lows(&start), 1);
    let Some(Event::WalletBalanceLow { balance, threshold, .. }) = start.last() else {
        panic!("{start:?}")
    };
    assert_eq!((*balance, *threshold), (dec!(37), dec!(40)));
    // 37 − 33 = 4: still below, no second event.
    let feb = w
        .run(Command::RunBilling { as_of: at("2025-02-01T00:00:00Z") }, "2025-02-01T00:00:00Z")
        .unwrap();
    assert_eq!(lows(&feb), 0);
    // A top-up to 54 re-arms it; March takes it to 21: fires again.
    top_up(&mut w, "main", CreditKind::Granted, dec!(50), None, false, "2025-02-10T00:00:00Z")
        .unwrap();
    let mar = w
        .run(Command::RunBilling { as_of: at("2025-03-01T00:00:00Z") }, "2025-03-01T00:00:00Z")
        .unwrap();
    assert_eq!(lows(&mar), 1);
}

#[test]
fn wallet_refusals_and_voids() {
    let mut w = world();
    open(&mut w, "main", None);
    let now = "2025-01-01T00:00:00Z";
    // Unknown wallet, a past expiry, an opened wallet id taken.
    let r = top_up(&mut w, "nope", CreditKind::Granted, dec!(1), None, false, now);
    assert!(matches!(r, Err(DomainError::NotFound { .. })), "{r:?}");
    let r =
        top_up(&mut w, "main", CreditKind::Granted, dec!(1), Some(date(2025, 1, 1)), false, now);
    assert!(matches!(r, Err(DomainError::Invalid(_))), "{r:?}");
    let again = Command::OpenWallet(OpenWallet {
        wallet_id: "main".into(),
        customer_id: "acme".into(),
        name: "other".into(),
        rate_amount: dec!(1),
        low_balance_threshold: None,
    });
    assert!(matches!(w.run(again, now), Err(DomainError::Conflict(_))));
    // A pending purchase can be voided (its credits never come); a usable one cannot; neither
    // takes a credit note.
    top_up(&mut w, "main", CreditKind::Paid, dec!(20), None, false, now).unwrap();
    top_up(&mut w, "main", CreditKind::Paid, dec!(30), None, true, now).unwrap();
    let void = |id: &str| Command::VoidInvoice { invoice_id: id.into(), reason: "test".into() };
    let credit = |id: &str| {
        Command::IssueCreditNote(CreditNoteRequest {
            invoice_id: id.into(),
            lines: vec![CreditLineRequest { line_index: 0, amount: None }],
            reason: "test".into(),
            destination: CreditDestination::Offset,
        })
    };
    assert_eq!(precondition(w.run(credit("inv-acme-o1"), now)), "INVOICE_NOT_CREDITABLE");
    assert_eq!(precondition(w.run(void("inv-acme-o2"), now)), "INVOICE_NOT_VOIDABLE");
    w.run(void("inv-acme-o1"), now).unwrap();
    assert!(w.ledger.wallets["main"].pending.is_empty());
    assert_eq!(w.ledger.wallets["main"].balance(), dec!(30));
    // An invoice the wallet paid part of is corrected by a credit note, not a void.
    w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let jan = &w.ledger.invoices["inv-s1-1"];
    assert_eq!(
        jan.invoice.wallet_applied[0],
        WalletUse { wallet_id: "main".into(), top_up: 2, kind: CreditKind::Paid, amount: dec!(30) }
    );
    assert_eq!(jan.amount_due(), dec!(3));
    assert_eq!(precondition(w.run(void("inv-s1-1"), now)), "INVOICE_NOT_VOIDABLE");
}

/// Voiding an invoice the credit-note balance paid part of gives the balance back.
#[test]
fn a_void_returns_the_credit_balance_it_took() {
    let mut w = world();
    w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    pay(&mut w, "inv-s1-1", dec!(33), "2025-01-02T00:00:00Z");
    let note = Command::IssueCreditNote(CreditNoteRequest {
        invoice_id: "inv-s1-1".into(),
        lines: vec![CreditLineRequest { line_index: 0, amount: Some(dec!(10)) }],
        reason: "outage".into(),
        destination: CreditDestination::Credit,
    });
    w.run(note, "2025-01-03T00:00:00Z").unwrap();
    let feb = w.bill("2025-02-01T00:00:00Z").remove(0);
    assert_eq!(feb.credit_applied, dec!(11));
    assert_eq!(w.ledger.customers["acme"].credit_balance, dec!(0));
    let void = Command::VoidInvoice { invoice_id: feb.invoice_id.clone(), reason: "x".into() };
    w.run(void, "2025-02-02T00:00:00Z").unwrap();
    assert_eq!(w.ledger.customers["acme"].credit_balance, dec!(11));
}
