//! Money: ISO 4217 currencies and the one rounding rule of SPEC §4 (half away from zero,
//! to the currency's minor unit, once per invoice line).

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// Most decimal places a price, rate or amount given by a caller may carry (SPEC §4).
pub const PRICE_SCALE_MAX: u32 = 12;

/// Largest fee or allowance a caller may give, in currency units: base fee, tier flat fee,
/// package price, minimum commitment (10^12).
pub const AMOUNT_MAX: Decimal = Decimal::from_parts(0xD4A5_1000, 0xE8, 0, false, 0);
/// Largest price of one unit or one event: unit prices, a percentage model's fixed amount and
/// per-event clamps, and a package's price per unit (10^9).
pub const UNIT_PRICE_MAX: Decimal = Decimal::from_parts(0x3B9A_CA00, 0, 0, false, 0);
/// Largest quantity: one usage value, a tier bound, a package size, free units or a free amount,
/// and the Σ|value| (and the event count) of one metric's usage in one billing period (10^15).
///
/// With these bounds no billing arithmetic can overflow `Decimal` (≈ 7.9·10^28): a usage line
/// is at most 10^15 × 10^9 + 100 tiers × 10^12 ≈ 10^24, an invoice of 50 charges plus fees
/// and 100 % tax stays below 10^27, and a `weighted_sum` integral (level × µs of a ≤ 366-day
/// period) below 3.2·10^28. ARCHITECTURE/README document the arithmetic.
pub const UNITS_MAX: Decimal = Decimal::from_parts(0xA4C6_8000, 0x0003_8D7E, 0, false, 0);

/// An ISO 4217 currency that has a minor unit (so XAU, XDR... are refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, DomainError> {
        let currency = iso_currency::Currency::from_code(code)
            .filter(|c| c.exponent().is_some())
            .ok_or_else(|| {
            DomainError::invalid(
                "currency",
                format!("{code:?} is not an ISO 4217 currency code with a minor unit"),
            )
        })?;
        Ok(Currency(currency))
    }

    pub fn code(&self) -> &'static str {
        self.0.code()
    }

    /// Digits after the decimal point of the minor unit (USD 2, JPY 0, KWD 3).
    pub fn minor_units(&self) -> u32 {
        u32::from(self.0.exponent().expect("checked at parse"))
    }

    /// `amount` written with exactly the minor unit's digits (USD 12.5 → "12.50", JPY 1250 →
    /// "1250", KWD 1.25 → "1.250"), zero unsigned: how every reply and export shows money.
    /// Never rounds: an amount with more digits than the minor unit (the ledger holds none,
    /// each amount being rounded once to it) is `Err`, carrying the amount written whole.
    pub fn format(&self, amount: Decimal) -> Result<String, String> {
        let digits = self.minor_units();
        let mut d = amount.normalize();
        if d.scale() > digits {
            return Err(d.to_string());
        }
        d.rescale(digits);
        if d.scale() != digits {
            return Err(amount.to_string());
        }
        if d.is_zero() {
            d.set_sign_positive(true);
        }
        Ok(d.to_string())
    }

    /// Rounds once to the minor unit, half away from zero (0.175 → 0.18, −0.175 → −0.18).
    pub fn round(&self, amount: Decimal) -> Decimal {
        amount.round_dp_with_strategy(self.minor_units(), RoundingStrategy::MidpointAwayFromZero)
    }
}

impl TryFrom<String> for Currency {
    type Error = DomainError;
    fn try_from(code: String) -> Result<Self, Self::Error> {
        Currency::parse(&code)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_string()
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// Σ `values` exactly as `Iterator::sum` adds them, or `None` when a partial sum overflows
/// `Decimal` (where `sum` would panic).
pub fn checked_sum(values: impl IntoIterator<Item = Decimal>) -> Option<Decimal> {
    values.into_iter().try_fold(Decimal::ZERO, Decimal::checked_add)
}

/// Checks that a caller-given decimal is within the allowed precision and sign.
pub fn check_amount(
    field: &str,
    value: Decimal,
    allow_negative: bool,
) -> Result<(), crate::error::FieldViolation> {
    if value.scale() > PRICE_SCALE_MAX {
        return Err(crate::error::FieldViolation::new(
            field,
            format!("at most {PRICE_SCALE_MAX} decimal places"),
        ));
    }
    if !allow_negative && value.is_sign_negative() && !value.is_zero() {
        return Err(crate::error::FieldViolation::new(field, "must not be negative"));
    }
    Ok(())
}

/// [`check_amount`] (non-negative) and at most `max` (one of [`AMOUNT_MAX`],
/// [`UNIT_PRICE_MAX`], [`UNITS_MAX`]): absurd magnitudes are refused before they reach billing.
pub fn check_bounded(
    field: &str,
    value: Decimal,
    max: Decimal,
) -> Result<(), crate::error::FieldViolation> {
    check_amount(field, value, false)?;
    if value > max {
        let why = format!("must be at most {max} (10^{})", max.to_string().len() - 1);
        return Err(crate::error::FieldViolation::new(field, why));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn rounding_table() {
        let cases = [
            ("USD", dec!(0.175), dec!(0.18)),
            ("USD", dec!(0.174), dec!(0.17)),
            ("USD", dec!(-0.175), dec!(-0.18)),
            ("USD", dec!(15.483870967741935483870967742), dec!(15.48)),
            ("JPY", dec!(100.5), dec!(101)),
            ("JPY", dec!(100.49), dec!(100)),
            ("KWD", dec!(1.0005), dec!(1.001)),
            ("KWD", dec!(1.0004), dec!(1.000)),
            ("EUR", dec!(0), dec!(0)),
        ];
        for (code, amount, want) in cases {
            let c = Currency::parse(code).unwrap();
            assert_eq!(c.round(amount), want, "{code} {amount}");
        }
    }

    #[test]
    fn money_is_written_with_exactly_the_minor_units_digits() {
        let cases = [
            ("USD", dec!(5), Ok("5.00")),
            ("USD", dec!(200.0), Ok("200.00")),
            ("USD", dec!(12.50000), Ok("12.50")),
            ("USD", dec!(-0.00), Ok("0.00")),
            ("USD", dec!(-3.1), Ok("-3.10")),
            ("JPY", dec!(5), Ok("5")),
            ("JPY", dec!(1250.000), Ok("1250")),
            ("KWD", dec!(5), Ok("5.000")),
            ("KWD", dec!(1.25), Ok("1.250")),
            ("USD", dec!(0.125), Err("0.125")),
            ("JPY", dec!(0.5), Err("0.5")),
        ];
        for (code, amount, want) in cases {
            let got = Currency::parse(code).unwrap().format(amount);
            let got = got.as_ref().map(String::as_str).map_err(String::as_str);
            assert_eq!(got, want, "{code} {amount}");
        }
    }

    #[test]
    fn bounds_are_exact_powers_of_ten() {
        assert_eq!(AMOUNT_MAX, dec!(1_000_000_000_000));
        assert_eq!(UNIT_PRICE_MAX, dec!(1_000_000_000));
        assert_eq!(UNITS_MAX, dec!(1_000_000_000_000_000));
    }

    #[test]
    fn check_bounded_table() {
        let cases = [
            (dec!(0), AMOUNT_MAX, None),
            (AMOUNT_MAX, AMOUNT_MAX, None),
            (AMOUNT_MAX + dec!(0.01), AMOUNT_MAX, Some("must be at most 1000000000000 (10^12)")),
            (dec!(1e28), UNITS_MAX, Some("must be at most 1000000000000000 (10^15)")),
            (dec!(-1), UNITS_MAX, Some("must not be negative")),
            (dec!(0.0000000000001), UNIT_PRICE_MAX, Some("at most 12 decimal places")),
        ];
        for (value, max, want) in cases {
            let got = check_bounded("f", value, max).err().map(|f| f.description);
            assert_eq!(got.as_deref(), want, "{value} ≤ {max}");
        }
    }

    #[test]
    fn minor_units_and_bad_codes() {
        assert_eq!(Currency::parse("USD").unwrap().minor_units(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().minor_units(), 0);
        assert_eq!(Currency::parse("KWD").unwrap().minor_units(), 3);
        for bad in ["", "usd", "XXX1", "ZZZ", "XAU"] {
            assert!(matches!(Currency::parse(bad), Err(DomainError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn serde_round_trip_as_code() {
        let c = Currency::parse("EUR").unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, "\"EUR\"");
        assert_eq!(serde_json::from_str::<Currency>(&json).unwrap(), c);
        assert!(serde_json::from_str::<Currency>("\"NOPE\"").is_err());
    }
}
