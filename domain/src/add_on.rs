//! Add-ons and one-off invoices (SPEC §8.4): a catalogue item (code, name, amount, currency,
//! optional description), and an invoice for a customer with add-on lines, outside any
//! subscription, issued at once and taxed like any invoice. Decisions in
//! docs/decisions/0031-add-ons.md.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::calendar::Period;
use crate::catalog::{check_id, check_text};
use crate::error::{DomainError, Violations};
use crate::money::{check_bounded, Currency, AMOUNT_MAX};

/// Most lines one one-off invoice may carry.
pub const ONE_OFF_LINES_MAX: usize = 100;
/// Largest quantity of one line.
pub const QUANTITY_MAX: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
/// Most decimal places of a quantity.
pub const QUANTITY_SCALE_MAX: u32 = 6;

/// A catalogue item billed once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddOn {
    pub code: String,
    pub name: String,
    pub currency: Currency,
    /// Price of one unit, at most the currency's minor-unit digits; zero allowed (a free item
    /// that still shows on the invoice).
    pub amount: Decimal,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl AddOn {
    pub fn validate(&self) -> Result<(), DomainError> {
        let mut v = Violations::default();
        check_id(&mut v, "code", &self.code);
        check_text(&mut v, "name", &self.name, true);
        check_text(&mut v, "description", &self.description, false);
        check_money(&mut v, "amount", self.amount, self.currency);
        v.into_result()
    }
}

/// One line of a one-off invoice as asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneOffLine {
    pub add_on_code: String,
    /// Units of the add-on (1 when the caller gives none).
    pub quantity: Decimal,
    /// Overrides the add-on's unit amount.
    pub unit_amount: Option<Decimal>,
    /// Overrides the line's description (default: the add-on's name).
    pub description: Option<String>,
    /// Recognized ratably over this period (`[start, end)`, local days); none: at issue.
    pub service_period: Option<Period>,
}

/// `IssueOneOffInvoice`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneOffRequest {
    pub customer_id: String,
    pub lines: Vec<OneOffLine>,
}

impl OneOffRequest {
    /// The checks that need no ledger: bounds of every line.
    pub fn validate(&self, currency: Currency) -> Result<(), DomainError> {
        let mut v = Violations::default();
        if self.lines.is_empty() || self.lines.len() > ONE_OFF_LINES_MAX {
            v.push("lines", format!("must hold 1 to {ONE_OFF_LINES_MAX} lines"));
        }
        for (i, line) in self.lines.iter().enumerate() {
            let field = |f: &str| format!("lines[{i}].{f}");
            check_id(&mut v, &field("add_on_code"), &line.add_on_code);
            let q = line.quantity;
            if q <= Decimal::ZERO || q > QUANTITY_MAX || q.scale() > QUANTITY_SCALE_MAX {
                v.push(
                    field("quantity"),
                    format!(
                        "must be positive, at most {QUANTITY_MAX}, with at most \
                         {QUANTITY_SCALE_MAX} decimal places"
                    ),
                );
            }
            if let Some(a) = line.unit_amount {
                check_money(&mut v, &field("unit_amount"), a, currency);
            }
            if let Some(d) = &line.description {
                check_text(&mut v, &field("description"), d, true);
            }
            if let Some(p) = line.service_period {
                if p.end <= p.start {
                    v.push(field("service_period"), "must end after it starts");
                } else if (p.end - p.start).get_days() > SERVICE_DAYS_MAX {
                    v.push(field("service_period"), format!("at most {SERVICE_DAYS_MAX} days"));
                }
            }
        }
        v.into_result()
    }
}

/// A non-negative amount within [`AMOUNT_MAX`] with at most the currency's minor-unit digits.
fn check_money(v: &mut Violations, field: &str, amount: Decimal, currency: Currency) {
    if let Err(violation) = check_bounded(field, amount, AMOUNT_MAX) {
        v.0.push(violation);
    } else if amount.scale() > currency.minor_units() {
        let places = currency.minor_units();
        v.push(field, format!("at most {places} decimal places in {currency}"));
    }
}

/// Longest service period of an add-on line (ten years): recognition posts one entry per day.
pub const SERVICE_DAYS_MAX: i32 = 3_660;

/// The id of a customer's `number`-th one-off invoice. Subscription invoices end in `-<n>`,
/// these in `-o<n>`, so the two never collide.
pub fn one_off_invoice_id(customer_id: &str, number: u32) -> String {
    format!("inv-{customer_id}-o{number}")
}
