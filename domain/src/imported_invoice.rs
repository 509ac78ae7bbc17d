//! An invoice another biller issued, imported as a fact (issue 16; `docs/import.md`): its own
//! number, lines and amounts, checked for consistency and never re-rated. What it may cover
//! (a customer's history, or an imported subscription's periods before its cutover) is the
//! ledger's decision (`ledger/imported_invoices.rs`); this file checks the invoice alone.

use jiff::Timestamp;
use rust_decimal::Decimal;

use crate::calendar::Period;
use crate::catalog::{check_id, check_tax_rate, check_text};
use crate::error::{DomainError, Violations};
use crate::invoice::{Invoice, InvoiceLine, IssueReason, LineKind};
use crate::money::{check_amount, checked_sum, Currency, AMOUNT_MAX, UNITS_MAX};

/// Most lines one imported invoice may carry.
pub const IMPORTED_LINES_MAX: usize = 1_000;
/// Invoice-id prefixes Accrual's own invoices and drafts use: an imported id must not take one,
/// or a later Accrual invoice could collide with it.
pub const RESERVED_ID_PREFIXES: [&str; 2] = ["inv-", "draft-"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedInvoice {
    /// The previous biller's number, kept as it was.
    pub invoice_id: String,
    pub customer_id: String,
    /// The imported subscription it billed, if any (an ended subscription's invoices belong to
    /// the customer alone).
    pub subscription_id: Option<String>,
    pub currency: Currency,
    /// The billing period it closed (or, for a one-off invoice, the span its lines serve).
    pub period: Period,
    pub issued_at: Timestamp,
    /// As they were billed: amounts net of any discount of that biller's (`discount` zero).
    pub lines: Vec<InvoiceLine>,
    /// Percent, as the previous biller applied it.
    pub tax_rate: Decimal,
    pub tax: Decimal,
    /// Must equal Σ line amounts + tax.
    pub total: Decimal,
}

impl ImportedInvoice {
    /// Checks the invoice on its own: the id, every line, the minor-unit scale of each amount
    /// and that the total is Σ lines + tax. A `prepaid_credits` line is refused: wallet credits
    /// are a liability that only a wallet top-up creates.
    pub fn validate(&self) -> Result<(), DomainError> {
        let mut v = Violations::default();
        let id = &self.invoice_id;
        check_id(&mut v, "invoice_id", id);
        if let Some(prefix) = RESERVED_ID_PREFIXES.iter().find(|p| id.starts_with(**p)) {
            v.push(
                "invoice_id",
                format!("must not start with {prefix:?}: Accrual numbers its own invoices so"),
            );
        }
        check_id(&mut v, "customer_id", &self.customer_id);
        if let Some(s) = &self.subscription_id {
            check_id(&mut v, "subscription_id", s);
        }
        if self.period.start >= self.period.end {
            v.push("period", "must start before it ends");
        }
        check_tax_rate(&mut v, self.tax_rate);
        self.check_money(&mut v, "tax", self.tax, false);
        self.check_money(&mut v, "total", self.total, true);
        if self.lines.is_empty() || self.lines.len() > IMPORTED_LINES_MAX {
            v.push("lines", format!("must hold 1 to {IMPORTED_LINES_MAX} lines"));
        }
        for (i, line) in self.lines.iter().enumerate().take(IMPORTED_LINES_MAX) {
            self.check_line(&mut v, i, line);
        }
        v.into_result()?;
        let subtotal = self.subtotal();
        if subtotal.checked_add(self.tax) != Some(self.total) {
            return Err(DomainError::invalid(
                "total",
                format!(
                    "is {} but the lines sum to {subtotal} and the tax is {}: an imported \
                     invoice must add up",
                    self.total, self.tax
                ),
            ));
        }
        Ok(())
    }

    /// A line: amount at the currency's minor unit, negative only for a `credit` line; the
    /// charge model, if any, is the previous biller's name for it (free text).
    fn check_line(&self, v: &mut Violations, i: usize, line: &InvoiceLine) {
        let field = |name: &str| format!("lines[{i}].{name}");
        if line.kind == LineKind::PrepaidCredits {
            v.push(
                field("kind"),
                "prepaid_credits is a wallet top-up's; import the wallet instead",
            );
        }
        check_text(v, &field("description"), &line.description, true);
        if let Some(code) = &line.metric_code {
            check_id(v, &field("metric_code"), code);
        }
        if let Some(model) = &line.charge_model {
            check_text(v, &field("charge_model"), model, true);
        }
        if let Some(units) = line.units {
            if let Err(e) = crate::money::check_bounded(&field("units"), units, UNITS_MAX) {
                v.0.push(e);
            }
        }
        if line.service_period.start >= line.service_period.end {
            v.push(field("service_period"), "must start before it ends");
        }
        self.check_money(v, &field("amount"), line.amount, line.kind == LineKind::Credit);
        if !line.discount.is_zero() {
            v.push(
                field("discount"),
                "must be zero: the previous biller's discounts are inside its amounts",
            );
        }
    }

    /// An amount at the currency's minor unit, |amount| ≤ 10 × [`AMOUNT_MAX`] (a bound no real
    /// invoice reaches and that keeps every sum in `Decimal`'s range), negative only if allowed.
    fn check_money(&self, v: &mut Violations, field: &str, amount: Decimal, negative_ok: bool) {
        if let Err(e) = check_amount(field, amount, negative_ok) {
            v.0.push(e);
        } else if self.currency.round(amount) != amount {
            let digits = self.currency.minor_units();
            v.push(field, format!("must have at most {digits} decimal places ({})", self.currency));
        } else if amount.abs() > AMOUNT_MAX * Decimal::TEN {
            v.push(field, format!("must be at most {} in magnitude", AMOUNT_MAX * Decimal::TEN));
        }
    }

    fn subtotal(&self) -> Decimal {
        checked_sum(self.lines.iter().map(|l| l.amount)).expect("bounded amounts sum in range")
    }

    /// The `InvoiceIssued` fact: reason `imported`, nothing applied at issue (the previous
    /// biller's coupons and credits are inside its amounts).
    pub fn to_invoice(&self) -> Invoice {
        Invoice {
            invoice_id: self.invoice_id.clone(),
            customer_id: self.customer_id.clone(),
            subscription_id: self.subscription_id.clone().unwrap_or_default(),
            currency: self.currency,
            period: self.period,
            issued_at: self.issued_at,
            reason: IssueReason::Imported,
            lines: self.lines.clone(),
            subtotal: self.subtotal(),
            tax_rate: self.tax_rate,
            tax: self.tax,
            total: self.total,
            credit_applied: Decimal::ZERO,
            coupons: Vec::new(),
            wallet_applied: Vec::new(),
            anomalies: Vec::new(),
        }
    }
}
