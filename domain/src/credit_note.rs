//! Credit notes (SPEC §8.3): a numbered, immutable document that credits part of an issued
//! invoice, whole lines or amounts per line, with a reason and a destination for the money.
//! The invoice itself never changes; its amount due and status follow from its credit notes
//! (see [`InvoiceCredits`]).
//!
//! Rules (decisions in docs/decisions/0030-credit-notes.md):
//! - Only an `open`, `paid` or `closed` invoice is creditable (never `void` or
//!   `uncollectible`), and only its lines with a positive amount. A line's creditable amount
//!   is its amount minus what earlier notes credited on it; the note's subtotal also never
//!   takes the invoice's credited subtotal past the invoice's subtotal (a credit line of the
//!   invoice, negative, already reduced it).
//! - Tax is credited pro rata to the credited subtotal, rounded once per note, cumulatively:
//!   after a note the invoice's credited tax is `round(tax × credited subtotal / subtotal)`,
//!   so notes that credit the whole invoice credit exactly its tax.
//! - `offset` reduces the amount due (up to it; an invoice whose amount due an offset takes to
//!   zero is `closed`). `refund` returns money and `credit` adds to the customer's credit
//!   balance: both only up to what was paid and not yet refunded or credited.

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::catalog::check_text;
use crate::error::{DomainError, Violations};
use crate::invoice::{InvoiceAccount, InvoiceStatus};
use crate::money::{checked_sum, Currency};

/// Most lines one credit note may name.
pub const CREDIT_NOTE_LINES_MAX: usize = 1_000;
/// The invoice is void or uncollectible, or has nothing left to credit.
pub const INVOICE_NOT_CREDITABLE: &str = "INVOICE_NOT_CREDITABLE";
/// A line amount is more than what is still creditable on that line (or on the invoice).
pub const CREDIT_EXCEEDS_CREDITABLE: &str = "CREDIT_EXCEEDS_CREDITABLE";
/// An `offset` for more than the amount due.
pub const CREDIT_EXCEEDS_DUE: &str = "CREDIT_EXCEEDS_DUE";
/// A `refund` or `credit` for more than was paid and not yet refunded or credited.
pub const CREDIT_EXCEEDS_PAID: &str = "CREDIT_EXCEEDS_PAID";

/// Where a credit note's money goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditDestination {
    /// The customer's credit balance, consumed by later invoices.
    Credit,
    /// Money returned to the customer.
    Refund,
    /// The invoice's amount due is reduced.
    Offset,
}

impl CreditDestination {
    pub fn as_str(&self) -> &'static str {
        match self {
            CreditDestination::Credit => "credit",
            CreditDestination::Refund => "refund",
            CreditDestination::Offset => "offset",
        }
    }

    pub fn parse(s: &str) -> Option<CreditDestination> {
        match s {
            "credit" => Some(CreditDestination::Credit),
            "refund" => Some(CreditDestination::Refund),
            "offset" => Some(CreditDestination::Offset),
            _ => None,
        }
    }
}

/// One line of a credit-note request: an invoice line, and the amount to credit on it
/// (`None`: all that is still creditable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditLineRequest {
    pub line_index: u32,
    pub amount: Option<Decimal>,
}

/// What a caller asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditNoteRequest {
    pub invoice_id: String,
    pub lines: Vec<CreditLineRequest>,
    pub reason: String,
    pub destination: CreditDestination,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNoteLine {
    /// Index of the credited line in the invoice's lines.
    pub line_index: u32,
    /// The credited line's description.
    pub description: String,
    /// Credited, at the currency's minor-unit scale; positive.
    pub amount: Decimal,
}

/// An issued credit note: a fact, carried whole by `CreditNoteIssued`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNote {
    /// `cn-<customer_id>-<number>`.
    pub credit_note_id: String,
    /// 1, 2, … per customer.
    pub number: u32,
    pub customer_id: String,
    pub invoice_id: String,
    pub currency: Currency,
    pub issued_at: Timestamp,
    pub reason: String,
    pub destination: CreditDestination,
    pub lines: Vec<CreditNoteLine>,
    /// Σ lines.
    pub subtotal: Decimal,
    pub tax: Decimal,
    /// subtotal + tax: what goes to the destination.
    pub total: Decimal,
}

/// What an invoice's credit notes did to it (the write model and the invoices read model keep
/// it with the invoice).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceCredits {
    /// Credited per invoice line (index → amount; lines never credited are absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<(u32, Decimal)>,
    /// Σ credited line amounts.
    pub subtotal: Decimal,
    pub tax: Decimal,
    /// Σ totals by destination.
    pub offset: Decimal,
    pub refunded: Decimal,
    pub to_balance: Decimal,
    /// The notes, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credit_note_ids: Vec<String>,
}

impl InvoiceCredits {
    /// Credited so far on invoice line `index`.
    pub fn on_line(&self, index: u32) -> Decimal {
        self.lines.iter().find(|(i, _)| *i == index).map_or(Decimal::ZERO, |(_, a)| *a)
    }

    /// Adds an issued note (amounts were checked when it was decided).
    pub fn add(&mut self, note: &CreditNote) {
        for line in &note.lines {
            match self.lines.iter_mut().find(|(i, _)| *i == line.line_index) {
                Some((_, a)) => *a += line.amount,
                None => self.lines.push((line.line_index, line.amount)),
            }
        }
        self.subtotal += note.subtotal;
        self.tax += note.tax;
        match note.destination {
            CreditDestination::Offset => self.offset += note.total,
            CreditDestination::Refund => self.refunded += note.total,
            CreditDestination::Credit => self.to_balance += note.total,
        }
        self.credit_note_ids.push(note.credit_note_id.clone());
    }

    /// Σ credited (subtotal + tax).
    pub fn total(&self) -> Decimal {
        self.subtotal + self.tax
    }
}

/// The id of a customer's `number`-th credit note.
pub fn credit_note_id(customer_id: &str, number: u32) -> String {
    format!("cn-{customer_id}-{number}")
}

/// Decides the credit note `req` against `account` (its invoice with what happened to it),
/// as the customer's `number`-th note, issued at `now`. Pure: nothing is applied.
pub fn decide(
    account: &InvoiceAccount,
    number: u32,
    req: &CreditNoteRequest,
    now: Timestamp,
) -> Result<CreditNote, DomainError> {
    let inv = &account.invoice;
    let currency = inv.currency;
    let subject = format!("invoice-{}", inv.invoice_id);
    let mut v = Violations::default();
    check_text(&mut v, "reason", &req.reason, true);
    if req.lines.is_empty() || req.lines.len() > CREDIT_NOTE_LINES_MAX {
        v.push("lines", format!("must name 1 to {CREDIT_NOTE_LINES_MAX} invoice lines"));
    }
    for (i, line) in req.lines.iter().enumerate() {
        let field = format!("lines[{i}]");
        if line.line_index as usize >= inv.lines.len() {
            let n = inv.lines.len();
            v.push(format!("{field}.line_index"), format!("the invoice has {n} lines"));
        } else if req.lines[..i].iter().any(|l| l.line_index == line.line_index) {
            v.push(format!("{field}.line_index"), "names a line already named");
        }
        if let Some(a) = line.amount {
            if a <= Decimal::ZERO || a.scale() > currency.minor_units() {
                let places = currency.minor_units();
                v.push(
                    format!("{field}.amount"),
                    format!("must be positive with at most {places} decimal places"),
                );
            }
        }
    }
    v.into_result()?;
    if matches!(account.status, InvoiceStatus::Void | InvoiceStatus::Uncollectible) {
        return Err(DomainError::precondition(
            INVOICE_NOT_CREDITABLE,
            subject,
            format!("invoice {} is {}", inv.invoice_id, account.status.as_str()),
        ));
    }
    if inv.reason == crate::invoice::IssueReason::WalletTopUp {
        return Err(DomainError::precondition(
            INVOICE_NOT_CREDITABLE,
            subject,
            format!(
                "invoice {} buys wallet credits: it is not revenue to credit (void it while \
                 its credits are pending)",
                inv.invoice_id
            ),
        ));
    }
    let credits = &account.credits;
    let mut lines = Vec::with_capacity(req.lines.len());
    for line in &req.lines {
        let invoiced = &inv.lines[line.line_index as usize];
        let creditable = (invoiced.amount - credits.on_line(line.line_index)).max(Decimal::ZERO);
        let amount = line.amount.unwrap_or(creditable);
        if creditable.is_zero() || amount > creditable {
            return Err(DomainError::precondition(
                CREDIT_EXCEEDS_CREDITABLE,
                subject,
                format!(
                    "line {} of invoice {}: {amount} asked, {creditable} still creditable",
                    line.line_index, inv.invoice_id
                ),
            ));
        }
        let description = invoiced.description.clone();
        lines.push(CreditNoteLine { line_index: line.line_index, description, amount });
    }
    let overflow = || DomainError::overflow(subject.clone(), "credit note amounts");
    let subtotal = checked_sum(lines.iter().map(|l| l.amount)).ok_or_else(overflow)?;
    let credited = credits.subtotal.checked_add(subtotal).ok_or_else(overflow)?;
    if credited > inv.subtotal {
        let left = (inv.subtotal - credits.subtotal).max(Decimal::ZERO);
        return Err(DomainError::precondition(
            CREDIT_EXCEEDS_CREDITABLE,
            subject,
            format!("invoice {}: {subtotal} asked, {left} still creditable", inv.invoice_id),
        ));
    }
    let tax =
        credited_tax(inv.tax, inv.subtotal, credited, currency).ok_or_else(overflow)? - credits.tax;
    let total = subtotal.checked_add(tax).ok_or_else(overflow)?;
    check_destination(account, req.destination, total, &subject)?;
    Ok(CreditNote {
        credit_note_id: credit_note_id(&inv.customer_id, number),
        number,
        customer_id: inv.customer_id.clone(),
        invoice_id: inv.invoice_id.clone(),
        currency,
        issued_at: now,
        reason: req.reason.clone(),
        destination: req.destination,
        lines,
        subtotal,
        tax,
        total,
    })
}

/// The invoice's tax credited once `credited` of its `subtotal` (> 0) is credited:
/// `round(tax × credited / subtotal)`, never past `tax`.
fn credited_tax(
    tax: Decimal,
    subtotal: Decimal,
    credited: Decimal,
    currency: Currency,
) -> Option<Decimal> {
    if credited >= subtotal {
        return Some(tax);
    }
    Some(currency.round(tax.checked_mul(credited)?.checked_div(subtotal)?))
}

fn check_destination(
    account: &InvoiceAccount,
    destination: CreditDestination,
    total: Decimal,
    subject: &str,
) -> Result<(), DomainError> {
    let id = &account.invoice.invoice_id;
    match destination {
        CreditDestination::Offset if total > account.amount_due() => {
            Err(DomainError::precondition(
                CREDIT_EXCEEDS_DUE,
                subject,
                format!(
                    "an offset of {total} exceeds the amount due {} of invoice {id}",
                    account.amount_due()
                ),
            ))
        }
        CreditDestination::Refund | CreditDestination::Credit => {
            let limit = match destination {
                CreditDestination::Refund => account.refundable(),
                _ => account.returnable(),
            };
            if total <= limit {
                return Ok(());
            }
            Err(DomainError::precondition(
                CREDIT_EXCEEDS_PAID,
                subject,
                format!(
                    "a {} of {total} exceeds what invoice {id} was paid and has not had returned ({limit})",
                    destination.as_str(),
                ),
            ))
        }
        CreditDestination::Offset => Ok(()),
    }
}

#[cfg(test)]
mod tests;
