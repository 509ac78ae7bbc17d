//! Catalog entities: customers, billable metrics and plans, with their validation.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::calendar::Interval;
use crate::error::{DomainError, Violations};
use crate::money::{check_amount, check_bounded, Currency, AMOUNT_MAX};
use crate::progressive::ProgressiveBilling;
use crate::rating::{Aggregation, ChargeModel};

/// Longest id or code a caller may choose.
pub const ID_LEN_MAX: usize = 128;
/// Most charges one plan may carry.
pub const CHARGES_MAX: usize = 50;
/// Longest trial a plan may offer.
pub const TRIAL_DAYS_MAX: u32 = 3_650;
/// Largest tax rate in percent.
pub const TAX_RATE_MAX: Decimal = Decimal::ONE_HUNDRED;

/// Checks a caller-chosen id: 1..=128 chars of `[A-Za-z0-9._:-]`.
pub fn check_id(v: &mut Violations, field: &str, id: &str) {
    if !id_within(id, ID_LEN_MAX) {
        v.push(field, format!("must be 1 to {ID_LEN_MAX} characters of A-Z a-z 0-9 . _ : -"));
    }
}

/// Longest invoice id: `inv-<subscription id>-<n>` (the ledger names invoices so).
pub const INVOICE_ID_LEN_MAX: usize = "inv-".len() + ID_LEN_MAX + "-".len() + 20;

/// Checks an invoice id a caller names: 1..=[`INVOICE_ID_LEN_MAX`] chars of `[A-Za-z0-9._:-]`,
/// as every id the ledger gives an invoice (so any other names nothing).
pub fn check_invoice_id(v: &mut Violations, field: &str, id: &str) {
    if !id_within(id, INVOICE_ID_LEN_MAX) {
        let why = format!("must be 1 to {INVOICE_ID_LEN_MAX} characters of A-Z a-z 0-9 . _ : -");
        v.push(field, why);
    }
}

/// 1..=`len_max` chars of `[A-Za-z0-9._:-]`.
fn id_within(id: &str, len_max: usize) -> bool {
    let ok_chars = id.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
    !id.is_empty() && id.len() <= len_max && ok_chars
}

/// Longest free text (a name, a reason) in bytes.
pub const TEXT_LEN_MAX: usize = 256;

/// Checks free text (names, reasons): 1..=256 bytes when `required` (not only blanks), and no
/// control characters (NUL, newlines, escapes...): they would corrupt every export and log line.
pub fn check_text(v: &mut Violations, field: &str, text: &str, required: bool) {
    if (required && text.trim().is_empty()) || text.len() > TEXT_LEN_MAX {
        v.push(field, format!("must be 1 to {TEXT_LEN_MAX} characters"));
    } else if text.chars().any(char::is_control) {
        v.push(field, "must not contain control characters (NUL, line breaks, escapes...)");
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub customer_id: String,
    pub name: String,
    pub currency: Currency,
    /// IANA time zone name; billing days are local midnights there.
    pub time_zone: String,
    /// Percent, e.g. 20 for 20 %.
    pub tax_rate: Decimal,
}

impl Customer {
    pub fn validate(&self) -> Result<(), DomainError> {
        let mut v = Violations::default();
        check_id(&mut v, "customer_id", &self.customer_id);
        check_text(&mut v, "name", &self.name, true);
        check_tax_rate(&mut v, self.tax_rate);
        if crate::calendar::parse_time_zone(&self.time_zone).is_err() {
            v.push("time_zone", format!("{:?} is not an IANA time zone", self.time_zone));
        }
        v.into_result()
    }
}

pub fn check_tax_rate(v: &mut Violations, rate: Decimal) {
    if let Err(f) = check_amount("tax_rate", rate, false) {
        v.0.push(f);
    } else if rate > TAX_RATE_MAX {
        v.push("tax_rate", "must be at most 100 (percent)");
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metric {
    pub code: String,
    pub name: String,
    pub aggregation: Aggregation,
    /// The usage property the aggregation reads; `None` for `count`.
    pub property: Option<String>,
    /// Whether a usage value may be negative (a metric of deltas). Off by default: a negative
    /// value is refused. Even on, a period never rates below zero units. For `weighted_sum`
    /// (each value is a change of a level) a negative change is normal; off, the level may go
    /// down but never below zero. Absent in events written before it existed: `false`.
    /// Not written when false, so the encoding of every other metric is the one version 1
    /// always wrote (pinned by the golden events).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_negative: bool,
}

impl Metric {
    pub fn validate(&self) -> Result<(), DomainError> {
        let mut v = Violations::default();
        check_id(&mut v, "code", &self.code);
        check_text(&mut v, "name", &self.name, true);
        match (&self.property, self.aggregation.needs_property()) {
            (None, true) => v.push("property", "required for this aggregation"),
            (Some(p), _) if p.is_empty() || p.len() > ID_LEN_MAX => {
                v.push("property", "must be 1 to 128 characters")
            }
            _ => {}
        }
        if self.allow_negative && !self.aggregation.is_numeric() {
            v.push(
                "allow_negative",
                "only a numeric aggregation reads a value that could be negative",
            );
        }
        v.into_result()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeeTiming {
    Advance,
    Arrears,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub metric_code: String,
    pub model: ChargeModel,
    pub pay_in_advance: bool,
}

/// A published plan version. Subscriptions pin (code, version); versions never change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub code: String,
    pub version: u32,
    pub name: String,
    pub currency: Currency,
    pub interval: Interval,
    pub base_fee: Decimal,
    pub fee_timing: FeeTiming,
    pub trial_days: u32,
    pub minimum_commitment: Option<Decimal>,
    pub charges: Vec<Charge>,
    /// Usage-amount thresholds that invoice a period's usage before it closes (issue 14).
    /// Absent in events written before it existed, and not written when absent, so every
    /// other plan encodes as version 1 always did (pinned by the golden events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progressive_billing: Option<ProgressiveBilling>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlanRef {
    pub code: String,
    pub version: u32,
}

impl Plan {
    pub fn plan_ref(&self) -> PlanRef {
        PlanRef { code: self.code.clone(), version: self.version }
    }

    /// The base fee normalized to a month (SPEC §5 MRR rule), unrounded; `None` if it
    /// overflows `Decimal` (a weekly fee far beyond the input bounds).
    pub fn monthly_fee(&self) -> Option<Decimal> {
        let (num, den) = self.interval.monthly_ratio();
        self.base_fee.checked_mul(num)?.checked_div(den)
    }

    /// Validates everything but the metric references (the ledger checks those).
    pub fn validate(&self) -> Result<(), DomainError> {
        let mut v = Violations::default();
        check_id(&mut v, "code", &self.code);
        check_text(&mut v, "name", &self.name, true);
        if let Err(f) = check_bounded("base_fee", self.base_fee, AMOUNT_MAX) {
            v.0.push(f);
        }
        if self.trial_days > TRIAL_DAYS_MAX {
            v.push("trial_days", format!("must be at most {TRIAL_DAYS_MAX}"));
        }
        if let Some(m) = self.minimum_commitment {
            if let Err(f) = check_bounded("minimum_commitment", m, AMOUNT_MAX) {
                v.0.push(f);
            }
        }
        if let Some(progressive) = &self.progressive_billing {
            progressive.check(&mut v);
        }
        if self.charges.len() > CHARGES_MAX {
            v.push("charges", format!("at most {CHARGES_MAX} charges"));
        }
        for (i, c) in self.charges.iter().enumerate() {
            check_charge(&mut v, i, c)?;
            if self.charges[..i].iter().any(|earlier| earlier.metric_code == c.metric_code) {
                v.push(
                    format!("charges[{i}].metric_code"),
                    format!("metric {} is already charged by an earlier charge", c.metric_code),
                );
            }
        }
        v.into_result()
    }
}

fn check_charge(v: &mut Violations, i: usize, c: &Charge) -> Result<(), DomainError> {
    let prefix = format!("charges[{i}].");
    check_id(v, &format!("{prefix}metric_code"), &c.metric_code);
    if let Err(e) = c.model.validate() {
        // Wire paths name the model's oneof field: charges[i].<model>.<field>.
        v.extend_prefixed(&format!("{prefix}{}.", c.model.name()), e)?;
    }
    if c.pay_in_advance && !c.model.allows_pay_in_advance() {
        v.push(
            format!("{prefix}pay_in_advance"),
            format!("the {} model cannot be paid in advance", c.model.name()),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every id the ledger can give an invoice passes; one longer than any of them, or with a
    /// character ids never have, does not.
    #[test]
    fn invoice_ids_are_bounded_like_the_ids_they_are_made_of() {
        let longest_sub = "s".repeat(ID_LEN_MAX);
        let longest = format!("inv-{longest_sub}-{}", u64::MAX);
        let cases = [
            ("inv-sub-1-1", true),
            (longest.as_str(), true),
            (&format!("{longest}0"), false),
            ("", false),
            ("inv/1", false),
            ("inv 1", false),
        ];
        for (id, ok) in cases {
            let mut v = Violations::default();
            check_invoice_id(&mut v, "invoice_id", id);
            assert_eq!(v.0.is_empty(), ok, "{id:.40}");
        }
        assert_eq!(longest.len(), INVOICE_ID_LEN_MAX);
    }
}
