//! Progressive billing (issue 14, part 4; docs/decisions/0037): a plan's usage-amount
//! thresholds. When an open period's rated in-arrears usage reaches the next threshold above
//! what progressive invoices already billed for it, the ledger invoices the usage so far at
//! once; the period's closing invoice bills only what is left. This file holds the plan's
//! setting and the pure rule "which threshold comes next"; `ledger::progressive` issues the
//! invoices. Nothing here reads a clock or changes state.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::Violations;
use crate::money::{check_bounded, AMOUNT_MAX};

/// Most thresholds one plan may list.
pub const PROGRESSIVE_THRESHOLDS_MAX: usize = 20;

/// A plan's progressive billing: ascending usage amounts in the plan's currency and,
/// optionally, a recurring step after the last of them (or from zero when none is listed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressiveBilling {
    /// Strictly ascending, each > 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<Decimal>,
    /// After the last threshold, another one every this much (> 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Decimal>,
}

impl ProgressiveBilling {
    /// Field paths are `progressive_thresholds[i]` and `progressive_every`, as on the wire.
    pub fn check(&self, v: &mut Violations) {
        if self.thresholds.is_empty() && self.every.is_none() {
            v.push("progressive_thresholds", "list at least one threshold or a recurring step");
        }
        if self.thresholds.len() > PROGRESSIVE_THRESHOLDS_MAX {
            let why = format!("at most {PROGRESSIVE_THRESHOLDS_MAX} thresholds");
            v.push("progressive_thresholds", why);
        }
        for (i, t) in self.thresholds.iter().enumerate() {
            let field = format!("progressive_thresholds[{i}]");
            if let Err(f) = check_bounded(&field, *t, AMOUNT_MAX) {
                v.0.push(f);
            } else if t.is_zero() {
                v.push(field, "must be greater than 0");
            } else if i > 0 && *t <= self.thresholds[i - 1] {
                v.push(field, "thresholds must be strictly ascending");
            }
        }
        if let Some(every) = self.every {
            if let Err(f) = check_bounded("progressive_every", every, AMOUNT_MAX) {
                v.0.push(f);
            } else if every.is_zero() {
                v.push("progressive_every", "must be greater than 0");
            }
        }
    }

    /// The smallest threshold strictly above `billed` (what progressive invoices billed of
    /// the period so far); `None` when no threshold lies above it (or it is past the decimal
    /// range). A period whose rated usage reaches it is invoiced at once.
    pub fn next_threshold_above(&self, billed: Decimal) -> Option<Decimal> {
        if let Some(t) = self.thresholds.iter().find(|t| **t > billed) {
            return Some(*t);
        }
        let every = self.every?;
        let last = self.thresholds.last().copied().unwrap_or(Decimal::ZERO);
        if billed < last {
            return last.checked_add(every);
        }
        // The k-th step after `last` with last + k × every > billed: k = ⌊(billed − last) / every⌋ + 1.
        let steps =
            billed.checked_sub(last)?.checked_div(every)?.floor().checked_add(Decimal::ONE)?;
        last.checked_add(steps.checked_mul(every)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn p(thresholds: &[Decimal], every: Option<Decimal>) -> ProgressiveBilling {
        ProgressiveBilling { thresholds: thresholds.to_vec(), every }
    }

    /// (thresholds, every, billed so far, next threshold).
    #[test]
    fn next_threshold_table() {
        let cases = [
            (vec![dec!(100), dec!(250)], None, dec!(0), Some(dec!(100))),
            (vec![dec!(100), dec!(250)], None, dec!(99.99), Some(dec!(100))),
            // What was billed at a threshold is at least that threshold.
            (vec![dec!(100), dec!(250)], None, dec!(100), Some(dec!(250))),
            // One event can cross several thresholds: one invoice, and the next is above it.
            (vec![dec!(100), dec!(250)], None, dec!(260), None),
            (vec![dec!(100)], Some(dec!(50)), dec!(100), Some(dec!(150))),
            (vec![dec!(100)], Some(dec!(50)), dec!(149.99), Some(dec!(150))),
            (vec![dec!(100)], Some(dec!(50)), dec!(150), Some(dec!(200))),
            (vec![dec!(100)], Some(dec!(50)), dec!(420), Some(dec!(450))),
            (vec![dec!(100)], Some(dec!(50)), dec!(40), Some(dec!(100))),
            (vec![], Some(dec!(75)), dec!(0), Some(dec!(75))),
            (vec![], Some(dec!(75)), dec!(75), Some(dec!(150))),
            (vec![], Some(dec!(75)), dec!(-10), Some(dec!(75))),
            (vec![], Some(dec!(0.01)), dec!(0.015), Some(dec!(0.02))),
        ];
        for (thresholds, every, billed, next) in cases {
            let rule = p(&thresholds, every);
            assert_eq!(rule.next_threshold_above(billed), next, "{rule:?} after {billed}");
            if let Some(n) = next {
                assert!(n > billed, "a next threshold lies above what was billed");
            }
        }
    }

    #[test]
    fn validation_table() {
        let cases = [
            (p(&[dec!(10), dec!(20)], Some(dec!(5))), None),
            (p(&[], Some(dec!(5))), None),
            (p(&[], None), Some("progressive_thresholds")),
            (p(&[dec!(0)], None), Some("progressive_thresholds[0]")),
            (p(&[dec!(-1)], None), Some("progressive_thresholds[0]")),
            (p(&[dec!(20), dec!(20)], None), Some("progressive_thresholds[1]")),
            (p(&[dec!(20), dec!(10)], None), Some("progressive_thresholds[1]")),
            (p(&[dec!(10)], Some(dec!(0))), Some("progressive_every")),
            (p(&[dec!(10)], Some(AMOUNT_MAX + Decimal::ONE)), Some("progressive_every")),
            (
                p(&vec![dec!(1); PROGRESSIVE_THRESHOLDS_MAX + 1], None),
                Some("progressive_thresholds"),
            ),
        ];
        for (rule, field) in cases {
            let mut v = Violations::default();
            rule.check(&mut v);
            let fields: Vec<&str> = v.0.iter().map(|f| f.field.as_str()).collect();
            match field {
                None => assert!(fields.is_empty(), "{rule:?}: {fields:?}"),
                Some(f) => assert!(fields.contains(&f), "{rule:?}: {fields:?} lacks {f}"),
            }
        }
    }
}
