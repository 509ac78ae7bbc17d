//! Credit notes through the ledger: numbering per customer, the customer credit balance that
//! `credit` notes fill and later invoices consume after tax (SPEC §8), and a rebuilt ledger
//! that agrees.

use super::*;
use crate::credit_note::{CreditDestination, CreditLineRequest, CreditNoteRequest};

fn note(invoice_id: &str, amount: Option<Decimal>, destination: CreditDestination) -> Command {
    Command::IssueCreditNote(CreditNoteRequest {
        invoice_id: invoice_id.into(),
        lines: vec![CreditLineRequest { line_index: 0, amount }],
        reason: "outage".into(),
        destination,
    })
}

fn pay(invoice_id: &str, amount: Decimal, now: &str) -> Command {
    Command::RecordPayment {
        invoice_id: invoice_id.into(),
        outcome: PaymentOutcome::Succeeded { amount },
        occurred_at: at(now),
    }
}

fn kind(r: Result<Vec<Event>, DomainError>) -> &'static str {
    match r {
        Err(DomainError::Precondition { kind, .. }) => kind,
        other => panic!("not a precondition failure: {other:?}"),
    }
}

#[test]
fn credit_notes_fill_the_customer_balance_and_later_invoices_consume_it_after_tax() {
    use CreditDestination::{Credit, Refund};
    let mut w = World::new(dec!(10));
    w.plan("basic", dec!(30.00), FeeTiming::Advance, 0, vec![], None);
    let first = w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z");
    let first = invoices(&first).remove(0);
    assert_eq!((first.total, first.credit_applied), (dec!(33.00), dec!(0)));
    assert_eq!(
        kind(w.run(note("inv-s1-1", None, Credit), "2025-01-02T00:00:00Z")),
        "CREDIT_EXCEEDS_PAID"
    );
    w.run(pay("inv-s1-1", dec!(33), "2025-01-02T00:00:00Z"), "2025-01-02T00:00:00Z").unwrap();
    let issued = w.run(note("inv-s1-1", None, Credit), "2025-01-03T00:00:00Z").unwrap();
    let Event::CreditNoteIssued(n) = &issued[0] else { panic!("{issued:?}") };
    assert_eq!((n.credit_note_id.as_str(), n.total), ("cn-acme-1", dec!(33.00)));
    assert_eq!(w.ledger.customers["acme"].credit_balance, dec!(33.00));

    // February's fee is paid by the balance at issue.
    let feb = w.bill("2025-02-01T00:00:00Z").remove(0);
    assert_eq!((feb.total, feb.credit_applied, feb.due_at_issue()), (dec!(33), dec!(33), dec!(0)));
    let account = &w.ledger.invoices[&feb.invoice_id];
    assert_eq!((account.status, account.amount_due()), (InvoiceStatus::Paid, dec!(0)));
    assert_eq!(w.ledger.customers["acme"].credit_balance, dec!(0));
    // Credit that paid it may go back to the balance, but is not money to refund.
    let refund = w.run(note(&feb.invoice_id, Some(dec!(10)), Refund), "2025-02-02T00:00:00Z");
    assert_eq!(kind(refund), "CREDIT_EXCEEDS_PAID");
    let back = w.run(note(&feb.invoice_id, Some(dec!(10)), Credit), "2025-02-02T00:00:00Z");
    let Event::CreditNoteIssued(n) = &back.unwrap()[0] else { panic!() };
    assert_eq!((n.credit_note_id.as_str(), n.total), ("cn-acme-2", dec!(11.00)));

    // March: 11.00 of the 33.00 comes from the balance; the rest is due.
    let mar = w.bill("2025-03-01T00:00:00Z").remove(0);
    assert_eq!((mar.credit_applied, mar.due_at_issue()), (dec!(11), dec!(22)));
    let over =
        w.run(pay(&mar.invoice_id, dec!(22.01), "2025-03-02T00:00:00Z"), "2025-03-02T00:00:00Z");
    assert_eq!(kind(over), "OVERPAYMENT");
    w.run(pay(&mar.invoice_id, dec!(22), "2025-03-02T00:00:00Z"), "2025-03-02T00:00:00Z").unwrap();
    assert_eq!(w.ledger.invoices[&mar.invoice_id].status, InvoiceStatus::Paid);
    assert_eq!(w.ledger.customers["acme"].credit_balance, dec!(0));
}

/// Folding the events again gives the same customers and invoices (evolve agrees with decide).
#[test]
fn a_ledger_rebuilt_from_the_events_agrees() {
    let mut w = World::new(dec!(10));
    w.plan("basic", dec!(30.00), FeeTiming::Advance, 0, vec![], None);
    let mut events = Vec::new();
    events.extend(w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T10:00:00Z"));
    events.extend(
        w.run(pay("inv-s1-1", dec!(33), "2025-01-02T00:00:00Z"), "2025-01-02T00:00:00Z").unwrap(),
    );
    let credit = note("inv-s1-1", Some(dec!(20)), CreditDestination::Credit);
    events.extend(w.run(credit, "2025-01-03T00:00:00Z").unwrap());
    events.extend(
        w.run(Command::RunBilling { as_of: at("2025-02-01T00:00:00Z") }, "2025-02-01T00:00:00Z")
            .unwrap(),
    );
    let offset = note("inv-s1-2", Some(dec!(5)), CreditDestination::Offset);
    events.extend(w.run(offset, "2025-02-02T00:00:00Z").unwrap());
    let mut fresh = World::new(dec!(10));
    fresh.plan("basic", dec!(30.00), FeeTiming::Advance, 0, vec![], None);
    for (i, e) in events.iter().enumerate() {
        fresh.ledger.evolve(e, fresh.position + i as u64);
    }
    let balance = |w: &World| w.ledger.customers["acme"].credit_balance;
    // 20.00 + 2.00 tax credited, 22.00 of February's 33.00 paid by it.
    assert_eq!((balance(&w), balance(&fresh)), (dec!(0), dec!(0)));
    for id in ["inv-s1-1", "inv-s1-2"] {
        assert_eq!(w.ledger.invoices[id], fresh.ledger.invoices[id], "{id}");
    }
    let feb = &w.ledger.invoices["inv-s1-2"];
    assert_eq!((feb.invoice.credit_applied, feb.amount_due()), (dec!(22), dec!(5.50)));
}
