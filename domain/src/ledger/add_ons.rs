//! Add-ons and one-off invoices (SPEC §8.4): the catalogue command and the invoice of add-on
//! lines a customer gets at once, outside any subscription.

use jiff::Timestamp;

use super::{CustomerState, Ledger};
use crate::add_on::{one_off_invoice_id, AddOn, OneOffRequest};
use crate::calendar::{local_date, Period};
use crate::commands::Context;
use crate::error::DomainError;
use crate::events::Event;
use crate::invoice::{build_invoice, Invoice, InvoiceHeader, IssueReason, LineDraft, LineKind};

impl Ledger {
    pub(super) fn decide_define_add_on(&self, a: &AddOn) -> Result<Vec<Event>, DomainError> {
        a.validate()?;
        if self.add_ons.contains_key(&a.code) {
            return Err(DomainError::Conflict(format!(
                "add-on {} is already defined otherwise (add-ons are immutable; an identical \
                 request is a replay)",
                a.code
            )));
        }
        Ok(vec![Event::AddOnDefined(a.clone())])
    }

    /// An invoice of add-on lines for the customer, issued now: taxed at the customer's rate,
    /// its credit balance applied after tax, numbered `inv-<customer>-o<n>`.
    pub(super) fn decide_one_off(
        &self,
        req: &OneOffRequest,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let customer = self.customer(&req.customer_id)?;
        let currency = customer.customer.currency;
        req.validate(currency)?;
        let issue_day = issue_day(customer, ctx.now)?;
        let mut drafts = Vec::with_capacity(req.lines.len());
        for line in &req.lines {
            let add_on = self
                .add_ons
                .get(&line.add_on_code)
                .ok_or_else(|| DomainError::not_found("add-on", &line.add_on_code))?;
            if add_on.currency != currency {
                return Err(DomainError::precondition(
                    "CURRENCY_MISMATCH",
                    format!("add-on-{}", add_on.code),
                    format!(
                        "add-on {} is priced in {}, customer {} is billed in {currency}",
                        add_on.code, add_on.currency, req.customer_id
                    ),
                ));
            }
            let unit = line.unit_amount.unwrap_or(add_on.amount);
            drafts.push(LineDraft {
                kind: LineKind::AddOn,
                description: line.description.clone().unwrap_or_else(|| add_on.name.clone()),
                metric_code: None,
                charge_model: None,
                units: Some(line.quantity),
                service_period: line.service_period.unwrap_or(issue_day),
                // ≤ 10^6 × 10^15: within Decimal.
                unrounded: line.quantity * unit,
            });
        }
        let invoice = self.one_off_invoice(customer, issue_day, drafts, ctx.now)?;
        Ok(vec![Event::InvoiceIssued(invoice)])
    }

    fn one_off_invoice(
        &self,
        customer: &CustomerState,
        issue_day: Period,
        drafts: Vec<LineDraft>,
        now: Timestamp,
    ) -> Result<Invoice, DomainError> {
        let tax_rate = customer.customer.tax_rate;
        let header = one_off_header(customer, issue_day, now, IssueReason::OneOff, tax_rate)?;
        let invoice = Self::discounted(customer, None, build_invoice(header, drafts)?)?;
        Ok(self.with_credits_applied(customer, invoice))
    }
}

/// The customer's local day at `now` as a one-day period: a one-off invoice's period.
pub(super) fn issue_day(customer: &CustomerState, now: Timestamp) -> Result<Period, DomainError> {
    let today = local_date(now, &customer.time_zone);
    let tomorrow = today.tomorrow().map_err(|_| {
        DomainError::invalid("now", format!("{today} is the last day the calendar has"))
    })?;
    Ok(Period { start: today, end: tomorrow })
}

/// The header of the customer's next invoice outside any subscription (add-ons, wallet
/// purchases), numbered `inv-<customer>-o<n>`.
pub(super) fn one_off_header(
    customer: &CustomerState,
    period: Period,
    now: Timestamp,
    reason: IssueReason,
    tax_rate: rust_decimal::Decimal,
) -> Result<InvoiceHeader, DomainError> {
    let c = &customer.customer;
    let number = customer.one_off_invoices.checked_add(1).ok_or_else(|| {
        DomainError::overflow(format!("customer-{}", c.customer_id), "one-off invoice numbers")
    })?;
    Ok(InvoiceHeader {
        invoice_id: one_off_invoice_id(&c.customer_id, number),
        customer_id: c.customer_id.clone(),
        subscription_id: String::new(),
        currency: c.currency,
        period,
        issued_at: now,
        reason,
        tax_rate,
    })
}
