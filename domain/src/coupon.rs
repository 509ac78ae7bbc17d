//! Coupons (SPEC §8.2): what a coupon is, its validation, and how the coupons a customer holds
//! discount the lines of one invoice (docs/decisions/0032-coupons.md). The ledger applies them
//! when it builds an invoice and records on the invoice what each coupon gave.
//!
//! Rules of [`discount`]:
//! - Coupons apply in the order they were applied to the customer; each sees the lines as the
//!   coupons before it left them.
//! - A line is eligible when the coupon's limits allow it: plan codes (the line's subscription
//!   plan), metric codes (usage lines of those metrics only), add-on lines only if the coupon
//!   allows add-ons. No limit: every line except add-ons.
//! - `percentage`: each eligible line loses `round(remaining × percent / 100)` (per line, the
//!   currency's minor unit, half away from zero).
//! - `fixed_amount`: what the coupon can give (a `once` coupon: what earlier invoices left of
//!   it; a recurring one: its amount) up to the eligible lines' total, spread pro rata to their
//!   remaining amounts, rounded per line; the rounding remainder goes to the largest line.
//! - No line goes below zero; negative lines (credits) are never eligible.

use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::catalog::check_id;
use crate::error::{DomainError, Violations};
use crate::money::{check_bounded, Currency, AMOUNT_MAX};

/// Most plan or metric codes one coupon may be limited to.
pub const COUPON_LIMITS_MAX: usize = 50;
/// Most billing periods of a recurring coupon.
pub const COUPON_PERIODS_MAX: u32 = 1_200;
/// Most decimal places of a percentage.
pub const PERCENT_SCALE_MAX: u32 = 4;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CouponKind {
    FixedAmount { amount: Decimal, currency: Currency },
    Percentage { percent: Decimal },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frequency {
    /// One invoice (a fixed amount: until it is used up, across invoices).
    Once,
    /// This many billing periods (invoices it discounts).
    Recurring {
        periods: u32,
    },
    Forever,
}

/// A coupon of the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    pub code: String,
    pub kind: CouponKind,
    pub frequency: Frequency,
    /// Only lines of subscriptions on these plans (empty: any plan).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan_codes: Vec<String>,
    /// Only usage lines of these metrics (empty: any line).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metric_codes: Vec<String>,
    /// Whether add-on lines (one-off invoices) are eligible.
    #[serde(default)]
    pub applies_to_add_ons: bool,
    /// The offer ends: the coupon cannot be applied to a customer on or after this date (one
    /// already applied keeps working).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_on: Option<Date>,
}

impl Coupon {
    pub fn validate(&self) -> Result<(), DomainError> {
        let mut v = Violations::default();
        check_id(&mut v, "code", &self.code);
        match &self.kind {
            CouponKind::FixedAmount { amount, currency } => {
                if let Err(violation) = check_bounded("amount", *amount, AMOUNT_MAX) {
                    v.0.push(violation);
                } else if amount.is_zero() || amount.scale() > currency.minor_units() {
                    let places = currency.minor_units();
                    v.push(
                        "amount",
                        format!("must be positive with at most {places} decimal places"),
                    );
                }
            }
            CouponKind::Percentage { percent } => {
                let p = *percent;
                if p <= Decimal::ZERO || p > Decimal::ONE_HUNDRED || p.scale() > PERCENT_SCALE_MAX {
                    v.push(
                        "percent",
                        format!(
                            "must be above 0 and at most 100, {PERCENT_SCALE_MAX} decimal places"
                        ),
                    );
                }
            }
        }
        if let Frequency::Recurring { periods } = self.frequency {
            if !(1..=COUPON_PERIODS_MAX).contains(&periods) {
                v.push("periods", format!("must be 1 to {COUPON_PERIODS_MAX}"));
            }
        }
        for (field, codes) in
            [("plan_codes", &self.plan_codes), ("metric_codes", &self.metric_codes)]
        {
            if codes.len() > COUPON_LIMITS_MAX {
                v.push(field, format!("at most {COUPON_LIMITS_MAX} codes"));
            }
            for (i, code) in codes.iter().enumerate() {
                check_id(&mut v, &format!("{field}[{i}]"), code);
            }
        }
        v.into_result()
    }
}

/// What one coupon gave on one invoice (recorded on the invoice).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponUse {
    pub coupon_code: String,
    pub amount: Decimal,
}

/// A coupon a customer holds, with what is left of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCoupon {
    pub coupon: Coupon,
    /// A fixed `once` coupon: the amount not used yet.
    pub amount_left: Decimal,
    /// A recurring coupon: the invoices it may still discount.
    pub periods_left: u32,
    /// Subscriptions whose progressive invoice it discounted (docs/decisions/0037), which
    /// counts no period: that subscription's next invoice that uses coupons up counts the
    /// period, even if it gives nothing.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub pending_periods: std::collections::BTreeSet<String>,
}

impl HeldCoupon {
    /// A coupon as applied to a customer, nothing used yet.
    pub fn new(coupon: Coupon) -> HeldCoupon {
        let amount_left = match &coupon.kind {
            CouponKind::FixedAmount { amount, .. } => *amount,
            CouponKind::Percentage { .. } => Decimal::ZERO,
        };
        let periods_left = match coupon.frequency {
            Frequency::Once => 1,
            Frequency::Recurring { periods } => periods,
            Frequency::Forever => u32::MAX,
        };
        HeldCoupon { coupon, amount_left, periods_left, pending_periods: Default::default() }
    }

    /// Records that it gave `amount` on an invoice of `subscription_id` issued for `reason`: a
    /// fixed `once` coupon has that much less left; a recurring one, one period less when it
    /// gave anything, or when a progressive invoice of that subscription it discounted left the
    /// period pending. A progressive invoice ([`uses_up_coupons`]) uses nothing up; what it was
    /// given leaves its subscription's period pending.
    pub fn record_use(
        &mut self,
        amount: Decimal,
        reason: crate::invoice::IssueReason,
        subscription_id: &str,
    ) {
        if !uses_up_coupons(reason) {
            let counted = !matches!(self.coupon.frequency, Frequency::Forever);
            if counted && !amount.is_zero() {
                self.pending_periods.insert(subscription_id.to_string());
            }
            return;
        }
        // The pending period is dropped in any case; it counts when periods are left.
        let fixed = matches!(self.coupon.kind, CouponKind::FixedAmount { .. });
        if self.pending_periods.remove(subscription_id) && self.periods_left > 0 && !fixed {
            self.periods_left -= 1;
            return;
        }
        self.count_use(amount);
    }

    /// [`HeldCoupon::record_use`] of an invoice that uses coupons up, without a pending period.
    fn count_use(&mut self, amount: Decimal) {
        match (&self.coupon.kind, self.coupon.frequency) {
            (CouponKind::FixedAmount { .. }, Frequency::Once) => {
                self.amount_left -= amount;
                assert!(self.amount_left >= Decimal::ZERO, "coupon {} overused", self.coupon.code);
            }
            (_, Frequency::Forever) => {}
            _ if amount.is_zero() => {}
            _ => self.periods_left = self.periods_left.saturating_sub(1),
        }
    }

    /// Whether it can still discount anything.
    pub fn is_used_up(&self) -> bool {
        match (&self.coupon.kind, self.coupon.frequency) {
            (CouponKind::FixedAmount { .. }, Frequency::Once) => self.amount_left.is_zero(),
            (_, Frequency::Forever) => false,
            _ => self.periods_left == 0,
        }
    }
}

/// Whether an invoice issued for `reason` uses up what its coupons gave (a `once` fixed
/// coupon's amount, a recurring coupon's period). A progressive invoice (docs/decisions/0037)
/// takes only percentage coupons and uses none up: the period's closing invoice counts the
/// period, as when nothing is billed before the close.
pub fn uses_up_coupons(reason: crate::invoice::IssueReason) -> bool {
    reason != crate::invoice::IssueReason::Progressive
}

/// Whether `held` may discount an invoice issued for `reason` (see [`uses_up_coupons`]).
pub fn applies_to_reason(held: &HeldCoupon, reason: crate::invoice::IssueReason) -> bool {
    uses_up_coupons(reason) || matches!(held.coupon.kind, CouponKind::Percentage { .. })
}

/// What the discount needs to know of a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineToDiscount {
    /// Rounded line amount before any coupon.
    pub amount: Decimal,
    pub plan_code: Option<String>,
    pub metric_code: Option<String>,
    pub add_on: bool,
}

/// The discounts of one invoice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discounts {
    /// Per line, in line order: Σ of every coupon's discount on it (≥ 0, ≤ the line).
    pub per_line: Vec<Decimal>,
    /// The held coupons after this invoice (amounts and periods left).
    pub held: Vec<HeldCoupon>,
    /// Per held coupon, in order: what it gave on this invoice.
    pub given: Vec<Decimal>,
}

fn eligible(coupon: &Coupon, line: &LineToDiscount) -> bool {
    if line.amount <= Decimal::ZERO || (line.add_on && !coupon.applies_to_add_ons) {
        return false;
    }
    let plan_ok = coupon.plan_codes.is_empty()
        || line.plan_code.as_ref().is_some_and(|p| coupon.plan_codes.contains(p));
    let metric_ok = coupon.metric_codes.is_empty()
        || line.metric_code.as_ref().is_some_and(|m| coupon.metric_codes.contains(m));
    plan_ok && metric_ok
}

/// Applies `held` (in the order the customer got them) to `lines`; see the module rules.
pub fn discount(held: &[HeldCoupon], lines: &[LineToDiscount], currency: Currency) -> Discounts {
    let mut remaining: Vec<Decimal> = lines.iter().map(|l| l.amount.max(Decimal::ZERO)).collect();
    let mut per_line = vec![Decimal::ZERO; lines.len()];
    let mut after = Vec::with_capacity(held.len());
    let mut given = Vec::with_capacity(held.len());
    for h in held {
        let mut h = h.clone();
        let targets: Vec<usize> = (0..lines.len())
            .filter(|i| eligible(&h.coupon, &lines[*i]) && remaining[*i] > Decimal::ZERO)
            .collect();
        if h.is_used_up() || targets.is_empty() {
            given.push(Decimal::ZERO);
            after.push(h);
            continue;
        }
        let cuts = match &h.coupon.kind {
            CouponKind::Percentage { percent } => targets
                .iter()
                .map(|i| {
                    let cut = currency.round(remaining[*i] * *percent / Decimal::ONE_HUNDRED);
                    cut.min(remaining[*i])
                })
                .collect(),
            CouponKind::FixedAmount { amount, .. } => {
                let available = match h.coupon.frequency {
                    Frequency::Once => h.amount_left,
                    _ => *amount,
                };
                spread(
                    available,
                    &targets.iter().map(|i| remaining[*i]).collect::<Vec<_>>(),
                    currency,
                )
            }
        };
        let mut total = Decimal::ZERO;
        for (i, cut) in targets.iter().zip(&cuts) {
            remaining[*i] -= *cut;
            per_line[*i] += *cut;
            total += *cut;
        }
        h.count_use(total);
        given.push(total);
        after.push(h);
    }
    for (i, line) in lines.iter().enumerate() {
        assert!(per_line[i] <= line.amount.max(Decimal::ZERO), "a discount past its line");
    }
    Discounts { per_line, held: after, given }
}

/// `available` (capped at Σ `amounts`) spread over `amounts` pro rata, rounded per line; the
/// rounding remainder on the largest amount (the first of equals); no share past its amount.
fn spread(available: Decimal, amounts: &[Decimal], currency: Currency) -> Vec<Decimal> {
    let total: Decimal = amounts.iter().copied().sum();
    let using = available.min(total).max(Decimal::ZERO);
    if using.is_zero() || total.is_zero() {
        return vec![Decimal::ZERO; amounts.len()];
    }
    let largest =
        (0..amounts.len()).fold(0, |best, i| if amounts[i] > amounts[best] { i } else { best });
    let mut shares: Vec<Decimal> =
        amounts.iter().map(|a| currency.round(using * *a / total).min(*a)).collect();
    let others: Decimal =
        shares.iter().enumerate().filter(|(i, _)| *i != largest).map(|(_, s)| *s).sum();
    shares[largest] = (using - others).min(amounts[largest]).max(Decimal::ZERO);
    shares
}

#[cfg(test)]
mod tests;
