//! proptest strategies shared by the unit tests of several modules.

use proptest::prelude::*;
use rust_decimal::Decimal;

/// Everyday amounts (mantissa below `everyday_max`, 0–12 decimal places), amounts within 1,000
/// of ±`Decimal::MAX`, and arbitrary bit patterns: what checked money arithmetic must survive.
pub(crate) fn extreme_decimal(everyday_max: i64) -> impl Strategy<Value = Decimal> {
    prop_oneof![
        (-everyday_max..everyday_max, 0u32..=12).prop_map(|(m, s)| Decimal::new(m, s)),
        (0u32..1_000, any::<bool>()).prop_map(|(k, neg)| {
            let d = Decimal::MAX - Decimal::from(k);
            if neg {
                -d
            } else {
                d
            }
        }),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>(), 0u32..=28)
            .prop_map(|(lo, mid, hi, neg, s)| Decimal::from_parts(lo, mid, hi, neg, s)),
    ]
}
