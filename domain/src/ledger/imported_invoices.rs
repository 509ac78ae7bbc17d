//! Another biller's invoices imported as facts (issue 16; `docs/import.md`). An imported
//! invoice belongs to a customer, and may name an imported subscription whose periods it
//! billed before the subscription's cutover (`billed_until`): Accrual bills those periods
//! never, so nothing is billed twice. It changes no billing state; the journal posts it as
//! any invoice, payments and credit notes apply to it as to any other.

use super::{check_not_future, precondition, Ledger};
use crate::commands::Context;
use crate::error::DomainError;
use crate::events::Event;
use crate::imported_invoice::ImportedInvoice;
use crate::invoice::LineKind;

/// An imported invoice names a subscription Accrual bills itself over its period.
pub const BILLED_HERE: &str = "BILLED_HERE";

impl Ledger {
    pub(super) fn decide_import_invoice(
        &self,
        inv: &ImportedInvoice,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        inv.validate()?;
        check_not_future("issued_at", inv.issued_at, ctx)?;
        if self.invoices.contains_key(&inv.invoice_id) {
            return Err(DomainError::Conflict(format!(
                "invoice {} already exists (an identical import record is a replay)",
                inv.invoice_id
            )));
        }
        let customer = self.customer(&inv.customer_id)?;
        if customer.customer.currency != inv.currency {
            return Err(DomainError::invalid(
                "currency",
                format!("customer {} bills in {}", inv.customer_id, customer.customer.currency),
            ));
        }
        for code in inv.lines.iter().filter_map(|l| l.metric_code.as_ref()) {
            if !self.metrics.contains_key(code) {
                return Err(DomainError::not_found("metric", code));
            }
        }
        if let Some(id) = &inv.subscription_id {
            let sub = self.subscription(id)?;
            if sub.customer_id != inv.customer_id {
                return Err(DomainError::invalid(
                    "subscription_id",
                    format!("subscription {id} belongs to customer {}", sub.customer_id),
                ));
            }
            let Some(cutover) = sub.billed_elsewhere_until else {
                return Err(precondition(
                    sub,
                    BILLED_HERE,
                    "Accrual bills this subscription from its start; only the periods before \
                     an imported subscription's cutover (billed_until) take imported invoices",
                ));
            };
            if inv.period.end > cutover {
                return Err(precondition(
                    sub,
                    BILLED_HERE,
                    format!(
                        "the invoice's period ends on {}, after the cutover {cutover}: Accrual \
                         bills the subscription from {cutover} on",
                        inv.period.end
                    ),
                ));
            }
            // Usage from the cutover on is Accrual's to rate; only the base fee of the period
            // starting at the cutover may have been billed ahead (an in-advance plan).
            let fee_horizon = sub.cycle.period_containing(cutover).expect("after the start").end;
            for (i, line) in inv.lines.iter().enumerate() {
                let fee = matches!(line.kind, LineKind::BaseFee | LineKind::Credit);
                let limit = if fee { fee_horizon } else { cutover };
                if line.service_period.end > limit {
                    return Err(precondition(
                        sub,
                        BILLED_HERE,
                        format!(
                            "line {i} ({}) serves days to {}, after {limit}: Accrual bills the \
                             subscription's usage from the cutover {cutover} and its fees from {limit}",
                            line.kind.as_str(),
                            line.service_period.end
                        ),
                    ));
                }
            }
        }
        Ok(vec![Event::InvoiceIssued(inv.to_invoice())])
    }
}
