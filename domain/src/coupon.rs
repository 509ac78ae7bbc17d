//! Coupons (SPEC §8.2), the pure part: what a coupon is, and how the coupons a customer holds
//! discount the lines of one invoice. Not wired into the ledger yet (no command or event uses
//! it): see docs/decisions/0032-coupons.md for what is decided and what is left.
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

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::Currency;

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
}

/// A coupon a customer holds, with what is left of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCoupon {
    pub coupon: Coupon,
    /// A fixed `once` coupon: the amount not used yet.
    pub amount_left: Decimal,
    /// A recurring coupon: the invoices it may still discount.
    pub periods_left: u32,
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
        HeldCoupon { coupon, amount_left, periods_left }
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
        if let (CouponKind::FixedAmount { .. }, Frequency::Once) =
            (&h.coupon.kind, h.coupon.frequency)
        {
            h.amount_left -= total;
        } else if h.coupon.frequency != Frequency::Forever && !total.is_zero() {
            h.periods_left -= 1;
        }
        debug_assert!(h.amount_left >= Decimal::ZERO);
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
