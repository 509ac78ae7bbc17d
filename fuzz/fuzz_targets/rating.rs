//! The rating engine on arbitrary charge models and usage: `validate`, `rate` and
//! `in_advance_fee` never panic, and every error is an `Invalid` naming a field. For a model
//! that validates and usage within the bounds (units and Σ|amounts| ≤ 10^15, at most 10^4
//! events here), rating succeeds and is never negative: the bounds exclude overflow.
#![no_main]

use accrual_fuzz::Bytes;
use domain::money::{AMOUNT_MAX, UNITS_MAX, UNIT_PRICE_MAX};
use domain::rating::{in_advance_fee, ChargeModel, PercentTier, RatingInput, Tier};
use domain::DomainError;
use libfuzzer_sys::fuzz_target;
use rust_decimal::Decimal;

/// A decimal that is either anything or within `max` (so valid models are common).
fn decimal(b: &mut Bytes, max: Decimal) -> Decimal {
    if b.u8() < 32 {
        b.any_decimal()
    } else {
        b.bounded_decimal(max)
    }
}

fn tiers(b: &mut Bytes) -> Vec<Tier> {
    let count = usize::from(b.u8()) % 8;
    let mut bound = Decimal::ZERO;
    (0..count)
        .map(|i| {
            let up_to = if i + 1 == count && b.u8() < 250 {
                None
            } else {
                bound = bound.saturating_add(decimal(b, UNITS_MAX / Decimal::from(8)));
                Some(bound)
            };
            Tier { up_to, unit_price: decimal(b, UNIT_PRICE_MAX), flat_fee: decimal(b, AMOUNT_MAX) }
        })
        .collect()
}

fn optional(b: &mut Bytes, max: Decimal) -> Option<Decimal> {
    b.bool().then(|| decimal(b, max))
}

fn model(b: &mut Bytes) -> ChargeModel {
    match b.u8() % 6 {
        0 => ChargeModel::Standard { unit_price: decimal(b, UNIT_PRICE_MAX) },
        1 => ChargeModel::Graduated { tiers: tiers(b) },
        2 => ChargeModel::Volume { tiers: tiers(b) },
        3 => ChargeModel::Package {
            package_size: decimal(b, UNITS_MAX),
            package_price: decimal(b, AMOUNT_MAX),
            free_units: decimal(b, UNITS_MAX),
        },
        4 => ChargeModel::Percentage {
            rate: decimal(b, Decimal::ONE_HUNDRED),
            fixed_amount: decimal(b, UNIT_PRICE_MAX),
            free_events: b.bool().then(|| b.u64() % 16),
            free_amount: optional(b, UNITS_MAX),
            min_per_event: optional(b, UNIT_PRICE_MAX),
            max_per_event: optional(b, UNIT_PRICE_MAX),
        },
        _ => ChargeModel::GraduatedPercentage {
            tiers: tiers(b)
                .into_iter()
                .map(|t| PercentTier {
                    up_to: t.up_to,
                    rate: t.unit_price.min(Decimal::ONE_HUNDRED),
                    flat_fee: t.flat_fee,
                })
                .collect(),
        },
    }
}

fn check_error(err: &DomainError) {
    match err {
        DomainError::Invalid(v) => assert!(!v.is_empty() && v.iter().all(|f| !f.field.is_empty())),
        other => panic!("rating returned a non-input error: {other:?}"),
    }
}

/// Whether the usage is within what the ledger accepts into one period.
fn in_bounds(units: Decimal, amounts: &[Decimal]) -> bool {
    let total = amounts.iter().try_fold(Decimal::ZERO, |s, a| s.checked_add(a.abs()));
    units.abs() <= UNITS_MAX && total.is_some_and(|t| t <= UNITS_MAX)
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let model = model(&mut b);
    let units = decimal(&mut b, UNITS_MAX);
    let more = decimal(&mut b, UNITS_MAX);
    let count = usize::from(b.u8()) % 64;
    let amounts: Vec<Decimal> =
        (0..count).map(|_| decimal(&mut b, UNITS_MAX / Decimal::from(64))).collect();
    let valid = model.validate().map_err(|e| check_error(&e)).is_ok();
    let before = RatingInput { units, event_amounts: &amounts[..count / 2] };
    let after_units = units.saturating_add(more.abs());
    let after = RatingInput { units: after_units, event_amounts: &amounts };
    let rated = model.rate(&after);
    let fee = in_advance_fee(&model, &before, &after);
    for result in [&rated, &fee] {
        if let Err(err) = result {
            check_error(err);
        }
    }
    if valid && in_bounds(after_units, &amounts) && in_bounds(units, &amounts) {
        let amount = rated.expect("a valid model rates in-bound usage");
        assert!(amount >= Decimal::ZERO, "a charge is never a credit: {amount}");
        if model.allows_pay_in_advance() && units >= Decimal::ZERO {
            let fee = fee.expect("in-bound in-advance fee");
            assert!(fee >= Decimal::ZERO, "usage only grew: fee {fee}");
        }
    }
});
