//! Coupons through the ledger: the order of application on an invoice (coupons, then tax, then
//! the credit-note balance), carry-over of a fixed coupon across invoices, recurring periods,
//! and the refusals of ApplyCoupon / RemoveCoupon.

use super::*;
use crate::coupon::{Coupon, CouponKind, Frequency};
use crate::credit_note::{CreditDestination, CreditLineRequest, CreditNoteRequest};

pub(super) fn coupon(code: &str, kind: CouponKind, frequency: Frequency) -> Coupon {
    Coupon {
        code: code.into(),
        kind,
        frequency,
        plan_codes: vec![],
        metric_codes: vec![],
        applies_to_add_ons: false,
        expires_on: None,
    }
}

fn usd_off(amount: Decimal) -> CouponKind {
    CouponKind::FixedAmount { amount, currency: Currency::parse("USD").unwrap() }
}

pub(super) fn apply(w: &mut World, code: &str, now: &str) -> Result<Vec<Event>, DomainError> {
    let cmd = Command::ApplyCoupon { customer_id: "acme".into(), coupon_code: code.into() };
    w.run(cmd, now)
}

fn kind(r: Result<Vec<Event>, DomainError>) -> &'static str {
    match r {
        Err(DomainError::Precondition { kind, .. }) => kind,
        other => panic!("not a precondition failure: {other:?}"),
    }
}

/// A 30.00 monthly fee in advance at 10 % tax, from Jan 1, with one coupon applied before the
/// start: (discount, total) of the Jan, Feb and Mar invoices.
#[test]
fn coupon_discounts_across_invoices_table() {
    let cases = [
        (
            "fixed 20 once",
            usd_off(dec!(20)),
            Frequency::Once,
            [(dec!(20), dec!(11)), (dec!(0), dec!(33)), (dec!(0), dec!(33))],
        ),
        // What one invoice cannot use carries over until used up.
        (
            "fixed 50 once carries over",
            usd_off(dec!(50)),
            Frequency::Once,
            [(dec!(30), dec!(0)), (dec!(20), dec!(11)), (dec!(0), dec!(33))],
        ),
        (
            "50 % for two periods",
            CouponKind::Percentage { percent: dec!(50) },
            Frequency::Recurring { periods: 2 },
            [(dec!(15), dec!(16.50)), (dec!(15), dec!(16.50)), (dec!(0), dec!(33))],
        ),
        (
            "5.00 forever",
            usd_off(dec!(5)),
            Frequency::Forever,
            [(dec!(5), dec!(27.50)), (dec!(5), dec!(27.50)), (dec!(5), dec!(27.50))],
        ),
    ];
    for (name, kind_of, frequency, want) in cases {
        let mut w = World::new(dec!(10));
        w.plan("basic", dec!(30.00), FeeTiming::Advance, 0, vec![], None);
        w.run(Command::DefineCoupon(coupon("c", kind_of, frequency)), "2025-01-01T00:00:00Z")
            .unwrap();
        apply(&mut w, "c", "2025-01-01T00:00:00Z").unwrap();
        let mut got = invoices(&w.start(
            "basic",
            Anchor::Anniversary,
            date(2025, 1, 1),
            "2025-01-01T10:00:00Z",
        ));
        got.extend(w.bill("2025-02-01T00:00:00Z"));
        got.extend(w.bill("2025-03-01T00:00:00Z"));
        let got: Vec<(Decimal, Decimal)> =
            got.iter().map(|i| (i.lines.iter().map(|l| l.discount).sum(), i.total)).collect();
        assert_eq!(got, want.to_vec(), "{name}");
    }
}

/// SPEC §8 order on one invoice: the coupon first, tax on the discounted line, then the
/// customer's credit-note balance.
#[test]
fn order_of_application_coupon_then_tax_then_credit_balance() {
    let mut w = World::new(dec!(10));
    w.plan("basic", dec!(30.00), FeeTiming::Advance, 0, vec![], None);
    w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let pay = Command::RecordPayment {
        invoice_id: "inv-s1-1".into(),
        outcome: PaymentOutcome::Succeeded { amount: dec!(33) },
        occurred_at: at("2025-01-02T00:00:00Z"),
    };
    w.run(pay, "2025-01-02T00:00:00Z").unwrap();
    let note = Command::IssueCreditNote(CreditNoteRequest {
        invoice_id: "inv-s1-1".into(),
        lines: vec![CreditLineRequest { line_index: 0, amount: Some(dec!(5)) }],
        reason: "outage".into(),
        destination: CreditDestination::Credit,
    });
    w.run(note, "2025-01-03T00:00:00Z").unwrap();
    w.run(
        Command::DefineCoupon(coupon("ten", usd_off(dec!(10)), Frequency::Once)),
        "2025-01-03T00:00:00Z",
    )
    .unwrap();
    apply(&mut w, "ten", "2025-01-03T00:00:00Z").unwrap();
    let feb = w.bill("2025-02-01T00:00:00Z").remove(0);
    // 30.00 - 10.00 coupon = 20.00; tax 10 % = 2.00; total 22.00; credit balance 5.50 applied.
    assert_eq!((feb.lines[0].amount, feb.lines[0].discount), (dec!(20), dec!(10)));
    assert_eq!((feb.subtotal, feb.tax, feb.total), (dec!(20), dec!(2), dec!(22)));
    assert_eq!((feb.credit_applied, feb.due_at_issue()), (dec!(5.50), dec!(16.50)));
    assert_eq!(feb.coupons.len(), 1);
}

#[test]
fn apply_and_remove_refusals() {
    let mut w = World::new(dec!(10));
    w.plan("basic", dec!(30.00), FeeTiming::Advance, 0, vec![], None);
    let eur =
        CouponKind::FixedAmount { amount: dec!(5), currency: Currency::parse("EUR").unwrap() };
    let ended = Coupon {
        expires_on: Some(date(2025, 1, 2)),
        ..coupon("ended", usd_off(dec!(5)), Frequency::Once)
    };
    for c in [
        coupon("eur", eur, Frequency::Once),
        ended,
        coupon("five", usd_off(dec!(5)), Frequency::Forever),
    ] {
        w.run(Command::DefineCoupon(c), "2025-01-01T00:00:00Z").unwrap();
    }
    assert_eq!(kind(apply(&mut w, "eur", "2025-01-01T00:00:00Z")), "CURRENCY_MISMATCH");
    assert_eq!(kind(apply(&mut w, "ended", "2025-01-02T00:00:00Z")), "COUPON_EXPIRED");
    apply(&mut w, "ended", "2025-01-01T23:00:00Z").unwrap();
    apply(&mut w, "five", "2025-01-01T23:00:00Z").unwrap();
    assert_eq!(kind(apply(&mut w, "five", "2025-01-01T23:00:00Z")), "COUPON_ALREADY_APPLIED");
    let remove =
        |code: &str| Command::RemoveCoupon { customer_id: "acme".into(), coupon_code: code.into() };
    w.run(remove("five"), "2025-01-01T23:00:00Z").unwrap();
    assert_eq!(kind(w.run(remove("five"), "2025-01-01T23:00:00Z")), "COUPON_NOT_APPLIED");
    let unknown = apply(&mut w, "nope", "2025-01-01T23:00:00Z");
    assert!(matches!(unknown, Err(DomainError::NotFound { .. })), "{unknown:?}");
    // Only the ended-but-applied coupon is left: 5.00 off January, then nothing.
    let jan =
        invoices(&w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T23:00:00Z"));
    assert_eq!(jan[0].total, dec!(27.50));
    let bad = Coupon {
        kind: CouponKind::Percentage { percent: dec!(101) },
        ..coupon("bad", usd_off(dec!(1)), Frequency::Once)
    };
    assert!(matches!(
        w.run(Command::DefineCoupon(bad), "2025-01-02T00:00:00Z"),
        Err(DomainError::Invalid(_))
    ));
}
