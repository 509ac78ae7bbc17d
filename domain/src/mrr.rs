//! MRR rules (SPEC §5): a subscription's monthly recurring revenue, the movement a change of
//! a customer's MRR is, and net/gross revenue retention of a cohort. Per currency, never
//! converted; usage and tax are never part of MRR.
//!
//! **Rounding.** A subscription's MRR is rounded once to the currency's minor unit (half away
//! from zero), so every value has at most the currency's scale: customer MRR (Σ of its
//! subscriptions), movement deltas and totals are then exact sums, and Σ of the movements
//! equals the change of the total. The price is a cent per subscription for fees that do not
//! divide evenly (10.00 weekly → 43.33, not 43.333…).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::catalog::Plan;

/// A subscription's MRR: its plan's base fee normalized to a month (weekly × 52/12, monthly,
/// quarterly / 3, semiannual / 6, yearly / 12), rounded to the minor unit; zero during a
/// trial. Usage charges, minimum commitments and tax are excluded.
pub fn subscription_mrr(plan: &Plan, in_trial: bool) -> Decimal {
    if in_trial {
        return Decimal::ZERO;
    }
    let (num, den) = plan.interval.monthly_ratio();
    plan.currency.round(mul_div(plan.base_fee, num, den))
}

/// `value × num / den`, multiplying first (exact); if the product overflows, dividing first
/// (precise far below a minor unit at such magnitudes), saturating at `Decimal::MAX`.
fn mul_div(value: Decimal, num: Decimal, den: Decimal) -> Decimal {
    match value.checked_mul(num) {
        Some(product) => product / den,
        None => (value / den).saturating_mul(num),
    }
}

/// A change of a customer's MRR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Movement {
    New,
    Expansion,
    Contraction,
    Churn,
    Reactivation,
}

impl Movement {
    /// Every movement, in report order.
    pub const ALL: [Movement; 5] = [
        Movement::New,
        Movement::Expansion,
        Movement::Contraction,
        Movement::Churn,
        Movement::Reactivation,
    ];

    /// The name used in reports and exports.
    pub fn as_str(&self) -> &'static str {
        match self {
            Movement::New => "new",
            Movement::Expansion => "expansion",
            Movement::Contraction => "contraction",
            Movement::Churn => "churn",
            Movement::Reactivation => "reactivation",
        }
    }
}

/// Classifies a customer's MRR going from `before` to `after` (both ≥ 0); `had_mrr_before`
/// tells whether the customer ever had MRR > 0 before this change. Rules, in order:
/// equal → `None`; from 0 → `Reactivation` if it had MRR before, else `New`; to 0 → `Churn`;
/// up → `Expansion`; down → `Contraction`. The movement's delta is `after − before`.
pub fn classify(before: Decimal, after: Decimal, had_mrr_before: bool) -> Option<Movement> {
    if before == after {
        return None;
    }
    Some(if before.is_zero() {
        if had_mrr_before {
            Movement::Reactivation
        } else {
            Movement::New
        }
    } else if after.is_zero() {
        Movement::Churn
    } else if after > before {
        Movement::Expansion
    } else {
        Movement::Contraction
    })
}

/// Retention of a cohort given each customer's `(MRR at start, MRR at end)` of the window.
/// Only customers with start > 0 count (the cohort of SPEC §5). Returns `(NRR, GRR)` as
/// unrounded ratios (1.05 = 105 %): NRR = Σ end / Σ start; GRR = Σ min(end, start) / Σ start.
/// `None` when no customer has start > 0 (an empty cohort), or if a sum overflows `Decimal`.
pub fn retention(cohort: &[(Decimal, Decimal)]) -> Option<(Decimal, Decimal)> {
    let (start, end, kept) = cohort_sums(cohort)?;
    if start.is_zero() {
        return None;
    }
    Some((end.checked_div(start)?, kept.checked_div(start)?))
}

/// (Σ start, Σ end, Σ min(end, start)) over the customers with start > 0; `None` on overflow.
fn cohort_sums(cohort: &[(Decimal, Decimal)]) -> Option<(Decimal, Decimal, Decimal)> {
    let zero = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
    cohort.iter().filter(|(start, _)| *start > Decimal::ZERO).try_fold(
        zero,
        |(s, e, k), (start, end)| {
            Some((s.checked_add(*start)?, e.checked_add(*end)?, k.checked_add((*end).min(*start))?))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Interval;
    use crate::catalog::{Charge, FeeTiming};
    use crate::money::Currency;
    use crate::rating::ChargeModel;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn plan(currency: &str, interval: Interval, base_fee: Decimal) -> Plan {
        Plan {
            code: "p".into(),
            version: 1,
            name: "P".into(),
            currency: Currency::parse(currency).unwrap(),
            interval,
            base_fee,
            fee_timing: FeeTiming::Advance,
            trial_days: 0,
            minimum_commitment: None,
            charges: vec![],
        }
    }

    #[test]
    fn normalization_table() {
        use Interval::*;
        // (currency, interval, base fee, MRR)
        let table = [
            // Weekly × 52/12 = × 13/3: exact when the fee is a multiple of 3 minor units.
            ("USD", Weekly, dec!(12.00), dec!(52.00)),
            ("USD", Weekly, dec!(3.00), dec!(13.00)),
            ("USD", Weekly, dec!(0.03), dec!(0.13)),
            ("USD", Weekly, dec!(10.00), dec!(43.33)),
            ("USD", Weekly, dec!(20.00), dec!(86.67)),
            ("JPY", Weekly, dec!(100), dec!(433)),
            ("KWD", Weekly, dec!(1.200), dec!(5.200)),
            ("KWD", Weekly, dec!(1.000), dec!(4.333)),
            ("USD", Monthly, dec!(29.99), dec!(29.99)),
            ("USD", Monthly, dec!(0), dec!(0)),
            ("USD", Quarterly, dec!(90.00), dec!(30.00)),
            ("USD", Quarterly, dec!(100.00), dec!(33.33)),
            ("USD", Semiannual, dec!(60.00), dec!(10.00)),
            ("USD", Semiannual, dec!(100.00), dec!(16.67)),
            ("USD", Yearly, dec!(1200.00), dec!(100.00)),
            ("USD", Yearly, dec!(100.00), dec!(8.33)),
            // Half away from zero: 0.06 / 12 = 0.005 → 0.01.
            ("USD", Yearly, dec!(0.06), dec!(0.01)),
            // Unit prices may carry 12 decimals; MRR is still in minor units.
            ("USD", Monthly, dec!(0.004999999999), dec!(0.00)),
            ("EUR", Yearly, dec!(0.000000000001), dec!(0)),
        ];
        for (code, interval, fee, want) in table {
            assert_eq!(
                subscription_mrr(&plan(code, interval, fee), false),
                want,
                "{code} {interval:?} {fee}"
            );
            assert_eq!(subscription_mrr(&plan(code, interval, fee), true), Decimal::ZERO);
        }
    }

    #[test]
    fn usage_commitment_and_huge_fees() {
        let mut p = plan("USD", Interval::Monthly, dec!(10.00));
        p.minimum_commitment = Some(dec!(500));
        p.charges.push(Charge {
            metric_code: "api".into(),
            model: ChargeModel::Standard { unit_price: dec!(1) },
            pay_in_advance: false,
        });
        assert_eq!(subscription_mrr(&p, false), dec!(10.00));
        // 52 × fee overflows: divided first, then multiplied; no panic.
        let huge = plan("USD", Interval::Weekly, Decimal::MAX / dec!(10));
        assert!(subscription_mrr(&huge, false) > Decimal::MAX / dec!(10));
        let max = plan("USD", Interval::Weekly, Decimal::MAX);
        assert_eq!(subscription_mrr(&max, false), Decimal::MAX);
    }

    #[test]
    fn classify_table() {
        use Movement::*;
        // (before, after, had MRR before, movement)
        let table = [
            (dec!(0), dec!(10), false, Some(New)),
            (dec!(0), dec!(10), true, Some(Reactivation)),
            (dec!(10), dec!(0), true, Some(Churn)),
            (dec!(10), dec!(15), true, Some(Expansion)),
            (dec!(15), dec!(10), true, Some(Contraction)),
            (dec!(10), dec!(10.00), true, None),
            (dec!(0), dec!(0), false, None),
            (dec!(0), dec!(0), true, None),
            (dec!(0.01), dec!(0.02), true, Some(Expansion)),
            (dec!(43.33), dec!(0.00), true, Some(Churn)),
        ];
        for (before, after, had, want) in table {
            assert_eq!(classify(before, after, had), want, "{before} → {after} ({had})");
        }
        let names: Vec<&str> = Movement::ALL.iter().map(Movement::as_str).collect();
        assert_eq!(names, ["new", "expansion", "contraction", "churn", "reactivation"]);
    }

    #[test]
    fn retention_table() {
        // (cohort, (NRR, GRR))
        type Row = (Vec<(Decimal, Decimal)>, Option<(Decimal, Decimal)>);
        let table: Vec<Row> = vec![
            (vec![], None),
            // Customers without MRR at the start are not in the cohort.
            (vec![(dec!(0), dec!(50))], None),
            (vec![(dec!(100), dec!(100))], Some((dec!(1), dec!(1)))),
            // Expansion counts in NRR only; churn and contraction in both.
            (vec![(dec!(100), dec!(150)), (dec!(100), dec!(0))], Some((dec!(0.75), dec!(0.5)))),
            (
                vec![(dec!(100), dec!(120)), (dec!(50), dec!(40)), (dec!(0), dec!(999))],
                Some((dec!(1.0666666666666666666666666667), dec!(0.9333333333333333333333333333))),
            ),
            (vec![(dec!(30), dec!(60))], Some((dec!(2), dec!(1)))),
        ];
        for (cohort, want) in table {
            assert_eq!(retention(&cohort), want, "{cohort:?}");
        }
        assert_eq!(retention(&[(Decimal::MAX, dec!(1)), (Decimal::MAX, dec!(1))]), None);
    }

    proptest! {
        #[test]
        fn movements_sum_to_the_change_of_mrr(
            steps in prop::collection::vec(prop_oneof![Just(0i64), 0i64..1_000_000], 1..40),
            interval in prop::sample::select(Interval::ALL.to_vec()),
        ) {
            // Each step is a customer's MRR from a plan fee (or 0: canceled / in trial).
            let values: Vec<Decimal> = steps
                .iter()
                .map(|fee| subscription_mrr(&plan("USD", interval, Decimal::new(*fee, 2)), false))
                .collect();
            let mut before = Decimal::ZERO;
            let mut had = false;
            let mut per_movement = std::collections::BTreeMap::<Movement, Decimal>::new();
            for after in values.iter().copied() {
                match classify(before, after, had) {
                    None => prop_assert_eq!(before, after),
                    Some(m) => *per_movement.entry(m).or_default() += after - before,
                }
                had |= after > Decimal::ZERO;
                before = after;
            }
            let total: Decimal = per_movement.values().copied().sum();
            prop_assert_eq!(total, *values.last().unwrap());
            for (m, delta) in per_movement {
                let up = matches!(m, Movement::New | Movement::Expansion | Movement::Reactivation);
                prop_assert_eq!(delta > Decimal::ZERO, up, "{:?} {}", m, delta);
            }
        }
    }
}
