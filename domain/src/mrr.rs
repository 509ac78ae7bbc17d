//! MRR rules (SPEC §5): a subscription's monthly recurring revenue, the movement a change of
//! a customer's MRR is, and net/gross revenue retention of a cohort. Per currency, never
//! converted; usage and tax are never part of MRR.
//!
//! **Rounding.** A subscription's MRR is rounded once to the currency's minor unit (half away
//! from zero), so every value has at most the currency's scale: customer MRR (Σ of its
//! subscriptions), movement deltas and totals are then exact sums, and Σ of the movements
//! equals the change of the total. The price is a cent per subscription for fees that do not
//! divide evenly (10.00 weekly → 43.33, not 43.333…).
//!
//! **Coupons** ([`discounted_mrr`], docs/decisions/0034-mrr-discounts.md). A `recurring` or
//! `forever` coupon lowers the MRR of each subscription it would discount while it applies;
//! which lines a coupon discounts and by how much are `crate::coupon`'s rules, applied to one
//! line: the subscription's MRR as its base fee. A `once` coupon is never MRR.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::calendar::Interval;
use crate::catalog::Plan;
use crate::coupon::{discount, Coupon, CouponKind, Frequency, HeldCoupon, LineToDiscount};
use crate::money::Currency;

/// A subscription's MRR: its plan's base fee normalized to a month (weekly × 52/12, monthly,
/// quarterly / 3, semiannual / 6, yearly / 12), rounded to the minor unit; zero during a
/// trial. Usage charges, minimum commitments and tax are excluded.
pub fn subscription_mrr(plan: &Plan, in_trial: bool) -> Decimal {
    if in_trial {
        return Decimal::ZERO;
    }
    monthly(plan.base_fee, plan.interval, plan.currency)
}

/// `amount` per `interval` normalized to a month (× 52/12, × 1, / 3, / 6, / 12) and rounded to
/// the currency's minor unit, as [`subscription_mrr`] normalizes a base fee.
pub fn monthly(amount: Decimal, interval: Interval, currency: Currency) -> Decimal {
    let (num, den) = interval.monthly_ratio();
    currency.round(mul_div(amount, num, den))
}

/// Whether `coupon` can ever lower MRR: `recurring` and `forever` coupons (a `once` coupon is a
/// one-time discount, never recurring revenue). Whether it lowers a given subscription's MRR is
/// [`discounted_mrr`]'s question (plan limits; a coupon limited to metrics touches usage only).
pub fn coupon_affects_mrr(coupon: &Coupon) -> bool {
    !matches!(coupon.frequency, Frequency::Once)
}

/// A subscription's MRR before coupons, with what the coupon rules read of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseMrr<'a> {
    /// [`subscription_mrr`] (0 in a trial).
    pub mrr: Decimal,
    /// The plan it is on: a coupon limited to plans discounts only theirs.
    pub plan_code: &'a str,
    /// The plan's billing interval: a fixed amount is given per invoice, so per interval.
    pub interval: Interval,
}

/// A subscription's MRR while `coupons` apply to its customer, in the order they were applied.
/// It is what `coupon::discount` leaves of one base-fee line of `base.mrr` (no metric, not an
/// add-on), with each coupon as its customer holds it when first applied:
/// - eligibility is the coupon rule's: plan limits; a coupon limited to metrics never touches
///   a base fee; add-on lines are not base fees. `once` coupons are skipped
///   ([`coupon_affects_mrr`]).
/// - percentage: `round(remaining × percent / 100)` comes off (the discount is rounded, half
///   away from zero, as on an invoice line);
/// - fixed amount: its amount normalized to a month for the subscription's interval
///   ([`monthly`]), at most what is left, so MRR never goes below zero. Every subscription
///   gets the whole amount: each is invoiced on its own, and a recurring or forever fixed
///   coupon gives its amount on each of its invoices.
pub fn discounted_mrr(base: &BaseMrr<'_>, coupons: &[&Coupon], currency: Currency) -> Decimal {
    if base.mrr <= Decimal::ZERO {
        return base.mrr.max(Decimal::ZERO);
    }
    let held: Vec<HeldCoupon> = coupons
        .iter()
        .filter(|c| coupon_affects_mrr(c))
        .map(|c| {
            let mut c = (*c).clone();
            if let CouponKind::FixedAmount { amount, .. } = &mut c.kind {
                *amount = monthly(*amount, base.interval, currency);
            }
            HeldCoupon::new(c)
        })
        .collect();
    if held.is_empty() {
        return base.mrr;
    }
    let line = LineToDiscount {
        amount: base.mrr,
        plan_code: Some(base.plan_code.to_string()),
        metric_code: None,
        add_on: false,
    };
    let cut = discount(&held, &[line], currency).per_line[0];
    base.mrr - cut
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
    use crate::catalog::{Charge, FeeTiming};
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
            progressive_billing: None,
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

    fn coupon(code: &str, kind: CouponKind, frequency: Frequency) -> Coupon {
        Coupon {
            code: code.into(),
            kind,
            frequency,
            plan_codes: vec![],
            metric_codes: vec![],
            applies_to_add_ons: false,
            expires_on: None,
        }
    }

    #[test]
    fn discounted_mrr_table() {
        use Interval::*;
        let usd = Currency::parse("USD").unwrap();
        let pct = |p: Decimal| CouponKind::Percentage { percent: p };
        let fixed = |a: Decimal| CouponKind::FixedAmount { amount: a, currency: usd };
        let forever = Frequency::Forever;
        let three = Frequency::Recurring { periods: 3 };
        let p20 = coupon("p20", pct(dec!(20)), forever);
        let p50 = coupon("p50", pct(dec!(50)), three);
        let p100 = coupon("p100", pct(dec!(100)), forever);
        let p_third = coupon("p33", pct(dec!(33.3333)), forever);
        let f10 = coupon("f10", fixed(dec!(10.00)), three);
        let f500 = coupon("f500", fixed(dec!(500.00)), forever);
        let once = coupon("once", pct(dec!(50)), Frequency::Once);
        let once_fixed = coupon("once10", fixed(dec!(10.00)), Frequency::Once);
        let mut pro_only = coupon("pro", pct(dec!(50)), forever);
        pro_only.plan_codes = vec!["pro".into()];
        let mut api_only = coupon("api", pct(dec!(50)), forever);
        api_only.metric_codes = vec!["api".into()];
        let mut add_ons = coupon("addons", pct(dec!(50)), forever);
        add_ons.applies_to_add_ons = true;
        let mut add_ons_of_metric = add_ons.clone();
        add_ons_of_metric.metric_codes = vec!["api".into()];
        // (plan code, interval, MRR before coupons, coupons in the order applied, MRR)
        let table: Vec<(&str, Interval, Decimal, Vec<&Coupon>, Decimal)> = vec![
            ("basic", Monthly, dec!(100.00), vec![], dec!(100.00)),
            ("basic", Monthly, dec!(100.00), vec![&p20], dec!(80.00)),
            // The discount is rounded (half away from zero), as on an invoice line.
            ("basic", Monthly, dec!(29.99), vec![&p20], dec!(23.99)),
            ("basic", Monthly, dec!(0.05), vec![&p50], dec!(0.02)),
            ("basic", Monthly, dec!(10.00), vec![&p_third], dec!(6.67)),
            ("basic", Monthly, dec!(100.00), vec![&p100], dec!(0.00)),
            // Fixed: per invoice, so per interval, normalized as the fee is.
            ("basic", Monthly, dec!(100.00), vec![&f10], dec!(90.00)),
            ("basic", Weekly, dec!(43.33), vec![&f10], dec!(0.00)),
            ("basic", Weekly, dec!(86.67), vec![&f10], dec!(43.34)),
            ("basic", Quarterly, dec!(30.00), vec![&f10], dec!(26.67)),
            ("basic", Yearly, dec!(100.00), vec![&f10], dec!(99.17)),
            // Never below zero.
            ("basic", Monthly, dec!(100.00), vec![&f500], dec!(0.00)),
            // 500.00 a year is 41.67 a month; then 20 % of the 58.33 left (11.67).
            ("basic", Yearly, dec!(100.00), vec![&f500, &p20], dec!(46.66)),
            // In the order applied: 50 % then 10.00 is 40.00; 10.00 then 50 % is 45.00.
            ("basic", Monthly, dec!(100.00), vec![&p50, &f10], dec!(40.00)),
            ("basic", Monthly, dec!(100.00), vec![&f10, &p50], dec!(45.00)),
            ("basic", Monthly, dec!(100.00), vec![&p20, &p50], dec!(40.00)),
            // `once` coupons are never MRR.
            ("basic", Monthly, dec!(100.00), vec![&once, &once_fixed], dec!(100.00)),
            ("basic", Monthly, dec!(100.00), vec![&once, &p20], dec!(80.00)),
            // Plan limits; metric-limited coupons touch usage only.
            ("basic", Monthly, dec!(100.00), vec![&pro_only], dec!(100.00)),
            ("pro", Monthly, dec!(100.00), vec![&pro_only], dec!(50.00)),
            ("pro", Monthly, dec!(100.00), vec![&api_only], dec!(100.00)),
            // A coupon that may also take add-ons still discounts the base fee; one limited to
            // a metric (usage and add-on lines only) never does.
            ("basic", Monthly, dec!(100.00), vec![&add_ons], dec!(50.00)),
            ("basic", Monthly, dec!(100.00), vec![&add_ons_of_metric], dec!(100.00)),
            // No MRR (a trial): nothing to discount.
            ("basic", Monthly, dec!(0), vec![&p20, &f10], dec!(0)),
        ];
        for (plan_code, interval, mrr, coupons, want) in table {
            let base = BaseMrr { mrr, plan_code, interval };
            let codes: Vec<&str> = coupons.iter().map(|c| c.code.as_str()).collect();
            assert_eq!(discounted_mrr(&base, &coupons, usd), want, "{plan_code} {mrr} {codes:?}");
        }
        assert!(coupon_affects_mrr(&p20) && coupon_affects_mrr(&f10));
        assert!(!coupon_affects_mrr(&once) && !coupon_affects_mrr(&once_fixed));
        assert_eq!(monthly(dec!(10.00), Weekly, usd), dec!(43.33));
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(monthly(dec!(100), Weekly, jpy), dec!(433));
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
        fn a_discount_keeps_mrr_between_zero_and_undiscounted(
            fee in 0i64..10_000_000,
            interval in prop::sample::select(Interval::ALL.to_vec()),
            cuts in prop::collection::vec((any::<bool>(), 1i64..1_000_000), 0..5),
        ) {
            let usd = Currency::parse("USD").unwrap();
            let mrr = subscription_mrr(&plan("USD", interval, Decimal::new(fee, 2)), false);
            let coupons: Vec<Coupon> = cuts
                .iter()
                .enumerate()
                .map(|(i, (percent, n))| {
                    let kind = if *percent {
                        CouponKind::Percentage { percent: Decimal::new(n % 10_000 + 1, 2) }
                    } else {
                        CouponKind::FixedAmount { amount: Decimal::new(*n, 2), currency: usd }
                    };
                    coupon(&format!("c{i}"), kind, Frequency::Forever)
                })
                .collect();
            let refs: Vec<&Coupon> = coupons.iter().collect();
            let base = BaseMrr { mrr, plan_code: "p", interval };
            let after = discounted_mrr(&base, &refs, usd);
            prop_assert!(after >= Decimal::ZERO && after <= mrr, "{} → {}", mrr, after);
            prop_assert!(after.scale() <= 2, "{}", after);
            if refs.is_empty() {
                prop_assert_eq!(after, mrr);
            }
        }

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
