//! Charge models (SPEC §4): turn a period's aggregated usage into an unrounded amount.
//!
//! Conventions shared by every model:
//! - amounts are unrounded; the invoice rounds each line once (see [`crate::money`]);
//! - negative aggregated units (e.g. a `sum` of negative values) are billed as zero units, and a
//!   negative event amount (percentage models) counts as an event of amount zero: a charge never
//!   yields a credit, credits are explicit;
//! - every arithmetic step is checked: an overflow is `Invalid("amount", "amount overflows")`,
//!   never a panic, and [`ChargeModel::rate`] refuses a model that fails
//!   [`ChargeModel::validate`] rather than price with it.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::{DomainError, Violations};
use crate::money::{check_amount, check_bounded, AMOUNT_MAX, UNITS_MAX, UNIT_PRICE_MAX};

/// Most tiers a tiered model may have, so absurd plans are refused up front.
pub const TIERS_MAX: usize = 100;

/// Largest percent rate accepted. A rate above 100 % would charge more than the amount it is
/// a percentage of; that is refused as a plan typo (a fixed fee is the way to charge more).
pub const PERCENT_MAX: Decimal = Decimal::ONE_HUNDRED;

/// One tier of a `graduated` or `volume` model. `up_to` is the inclusive upper bound of the
/// tier (in units); the last tier has none (unbounded), every other tier has one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub up_to: Option<Decimal>,
    pub unit_price: Decimal,
    #[serde(default)]
    pub flat_fee: Decimal,
}

/// One tier of a `graduated_percentage` model: `rate` is in percent of the amount inside the
/// tier; `up_to` bounds the summed amount, as [`Tier::up_to`] bounds units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PercentTier {
    pub up_to: Option<Decimal>,
    pub rate: Decimal,
    #[serde(default)]
    pub flat_fee: Decimal,
}

/// How a charge prices its metric's usage over a period (SPEC §4).
///
/// Tiered models: tier `i` covers units in `(up_to[i-1], up_to[i]]` (the first tier starts at
/// 0 inclusive); a tier is *reached* when units > `up_to[i-1]`, and the first tier is always
/// reached, so its flat fee is charged even at zero usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum ChargeModel {
    /// units × unit_price.
    Standard { unit_price: Decimal },
    /// Σ over reached tiers of (units inside the tier × unit_price + flat_fee).
    Graduated { tiers: Vec<Tier> },
    /// The tier the total falls in prices every unit, plus that tier's flat fee.
    Volume { tiers: Vec<Tier> },
    /// ceil(max(units − free_units, 0) / package_size) × package_price.
    Package {
        package_size: Decimal,
        package_price: Decimal,
        #[serde(default)]
        free_units: Decimal,
    },
    /// Per event: rate % of the event's chargeable amount + fixed_amount, clamped to
    /// [min_per_event, max_per_event], for every paid event. See [`ChargeModel::rate`] for the
    /// free allowance.
    Percentage {
        rate: Decimal,
        #[serde(default)]
        fixed_amount: Decimal,
        #[serde(default)]
        free_events: Option<u64>,
        #[serde(default)]
        free_amount: Option<Decimal>,
        #[serde(default)]
        min_per_event: Option<Decimal>,
        #[serde(default)]
        max_per_event: Option<Decimal>,
    },
    /// Like `graduated`, with a percent rate per tier applied to the amount inside the tier
    /// (units = the period's summed amount), plus the flat fee of every reached tier.
    GraduatedPercentage { tiers: Vec<PercentTier> },
}

/// What the rating engine needs of a period's usage: the aggregated units and, for percentage
/// models, each event's amount in order (by occurred_at, then seq).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RatingInput<'a> {
    pub units: Decimal,
    pub event_amounts: &'a [Decimal],
}

impl ChargeModel {
    /// The wire name of the model (the serde tag).
    pub fn name(&self) -> &'static str {
        match self {
            ChargeModel::Standard { .. } => "standard",
            ChargeModel::Graduated { .. } => "graduated",
            ChargeModel::Volume { .. } => "volume",
            ChargeModel::Package { .. } => "package",
            ChargeModel::Percentage { .. } => "percentage",
            ChargeModel::GraduatedPercentage { .. } => "graduated_percentage",
        }
    }

    /// Whether [`ChargeModel::rate`] reads [`RatingInput::event_amounts`] (`percentage` only;
    /// `graduated_percentage` reads the summed amount as units).
    pub fn needs_event_amounts(&self) -> bool {
        matches!(self, ChargeModel::Percentage { .. })
    }

    /// Whether a charge with this model may be `pay_in_advance` (billed per event with
    /// [`in_advance_fee`]). Every model whose amount never decreases as usage grows allows it:
    /// standard, graduated, package, percentage, graduated_percentage. `volume` does not: moving
    /// into a cheaper tier lowers the whole amount, so an event's fee could be negative.
    pub fn allows_pay_in_advance(&self) -> bool {
        !matches!(self, ChargeModel::Volume { .. })
    }

    /// Checks the model's terms: one violation per bad field, named relative to the model
    /// (`unit_price`, `tiers[2].up_to`, `package_size`, `rate`, `min_per_event`...).
    pub fn validate(&self) -> Result<(), DomainError> {
        let mut v = Violations::default();
        match self {
            ChargeModel::Standard { unit_price } => {
                bounded(&mut v, "unit_price", *unit_price, UNIT_PRICE_MAX)
            }
            ChargeModel::Graduated { tiers } | ChargeModel::Volume { tiers } => {
                validate_tiers(&mut v, tiers)
            }
            ChargeModel::GraduatedPercentage { tiers } => validate_tiers(&mut v, tiers),
            ChargeModel::Package { package_size, package_price, free_units } => {
                positive(&mut v, "package_size", *package_size);
                bounded(&mut v, "package_price", *package_price, AMOUNT_MAX);
                bounded(&mut v, "free_units", *free_units, UNITS_MAX);
                check_package_unit_price(&mut v, *package_size, *package_price);
            }
            ChargeModel::Percentage { .. } => self.percentage_terms().validate(&mut v),
        }
        v.into_result()
    }

    /// The UNROUNDED amount of the period's usage. Refuses an invalid model (as
    /// [`ChargeModel::validate`]) and reports an overflow as `Invalid("amount", ...)`.
    ///
    /// `percentage` free allowance, events taken in order (n = events so far including this
    /// one, running = amounts so far including this one, before = running without it):
    /// - with neither `free_events` nor `free_amount` set, every event is paid in full;
    /// - an event is free while n ≤ free_events AND running ≤ free_amount (an unset limit does
    ///   not bind): so `free_events` alone frees the first N events whatever their amounts,
    ///   and `free_amount` alone frees events until the running amount exceeds it;
    /// - the event whose running amount crosses `free_amount` while n ≤ free_events pays the
    ///   rate on `running − free_amount` only, plus the fixed fee, and min/max apply to it;
    /// - an event past `free_events` pays in full, even if the amount allowance is not used up
    ///   (the allowance is the intersection of both limits; nothing carries over);
    /// - once an event is paid, all later ones are (counts and amounts only grow).
    pub fn rate(&self, input: &RatingInput) -> Result<Decimal, DomainError> {
        self.validate()?;
        let units = input.units.max(Decimal::ZERO);
        match self {
            ChargeModel::Standard { unit_price } => mul(units, *unit_price),
            ChargeModel::Graduated { tiers } => graduated(units, tiers),
            ChargeModel::Volume { tiers } => volume(units, tiers),
            ChargeModel::Package { package_size, package_price, free_units } => {
                let billable = sub(units, *free_units)?.max(Decimal::ZERO);
                mul(ceil_div(billable, *package_size)?, *package_price)
            }
            ChargeModel::Percentage { .. } => self.percentage_terms().rate(input.event_amounts),
            ChargeModel::GraduatedPercentage { tiers } => graduated(units, tiers),
        }
    }

    /// What zero usage costs (the first tier's flat fee of a tiered model, else 0). An
    /// in-advance charge bills it once per period: with the period's first event, or at the
    /// close of a period without one (see [`in_advance_fee`]).
    pub fn zero_usage_amount(&self) -> Result<Decimal, DomainError> {
        self.rate(&RatingInput { units: Decimal::ZERO, event_amounts: &[] })
    }

    /// The `percentage` terms as a struct (all zero/unset for other models; never read then).
    fn percentage_terms(&self) -> PercentageTerms {
        match *self {
            ChargeModel::Percentage {
                rate,
                fixed_amount,
                free_events,
                free_amount,
                min_per_event,
                max_per_event,
            } => PercentageTerms {
                rate,
                fixed_amount,
                free_events,
                free_amount,
                min_per_event,
                max_per_event,
            },
            _ => PercentageTerms::default(),
        }
    }
}

/// Fee of one pay-in-advance event: rate(after) − rate(before), where before/after are the
/// period's usage without/with the event. The fees of a period's events telescope to
/// rate(all usage) − rate(no usage): the zero-usage amount (a first tier's flat fee,
/// [`ChargeModel::zero_usage_amount`]) is never part of an event's fee; the ledger adds it to
/// the period's first event, or bills it at the close of a period without events. A decrease of usage (e.g. a negative `sum` value) yields a negative
/// fee, so that the fees still add up exactly. Refuses a model that does not allow
/// [`ChargeModel::allows_pay_in_advance`] (field `pay_in_advance`).
pub fn in_advance_fee(
    model: &ChargeModel,
    before: &RatingInput,
    after: &RatingInput,
) -> Result<Decimal, DomainError> {
    if !model.allows_pay_in_advance() {
        let why = format!("{} charges cannot be paid in advance", model.name());
        return Err(DomainError::invalid("pay_in_advance", why));
    }
    sub(model.rate(after)?, model.rate(before)?)
}

/// The terms of a `percentage` model, gathered for validation and rating.
#[derive(Clone, Copy, Debug, Default)]
struct PercentageTerms {
    rate: Decimal,
    fixed_amount: Decimal,
    free_events: Option<u64>,
    free_amount: Option<Decimal>,
    min_per_event: Option<Decimal>,
    max_per_event: Option<Decimal>,
}

impl PercentageTerms {
    /// Rates ≤ 100 %, amounts non-negative, min_per_event ≤ max_per_event.
    fn validate(&self, v: &mut Violations) {
        percent(v, "rate", self.rate);
        bounded(v, "fixed_amount", self.fixed_amount, UNIT_PRICE_MAX);
        let optional = [
            ("free_amount", self.free_amount, UNITS_MAX),
            ("min_per_event", self.min_per_event, UNIT_PRICE_MAX),
            ("max_per_event", self.max_per_event, UNIT_PRICE_MAX),
        ];
        for (field, value, max) in optional {
            if let Some(value) = value {
                bounded(v, field, value, max);
            }
        }
        if let (Some(min), Some(max)) = (self.min_per_event, self.max_per_event) {
            if min > max && is_amount(min) && is_amount(max) {
                v.push("min_per_event", "must not exceed max_per_event");
            }
        }
    }

    /// Σ over paid events of the clamped per-event fee (see [`ChargeModel::rate`]).
    fn rate(&self, event_amounts: &[Decimal]) -> Result<Decimal, DomainError> {
        let fraction = self.rate.checked_div(Decimal::ONE_HUNDRED).ok_or_else(overflow)?;
        let (mut total, mut running) = (Decimal::ZERO, Decimal::ZERO);
        for (n, event_amount) in (1u64..).zip(event_amounts) {
            let before = running;
            running = add(running, (*event_amount).max(Decimal::ZERO))?;
            if let Some(chargeable) = self.chargeable(n, before, running)? {
                total = add(total, self.event_fee(fraction, chargeable)?)?;
            }
        }
        Ok(total)
    }

    /// The paid part of the n-th event, or `None` if it is free.
    fn chargeable(
        &self,
        n: u64,
        before: Decimal,
        running: Decimal,
    ) -> Result<Option<Decimal>, DomainError> {
        let whole = sub(running, before)?;
        if self.free_events.is_none() && self.free_amount.is_none() {
            return Ok(Some(whole));
        }
        if self.free_events.is_some_and(|limit| n > limit) {
            return Ok(Some(whole));
        }
        match self.free_amount {
            None => Ok(None),
            Some(limit) if running <= limit => Ok(None),
            Some(limit) => Ok(Some(sub(running, before.max(limit))?)),
        }
    }

    /// rate × chargeable + fixed_amount, clamped to [min_per_event, max_per_event].
    fn event_fee(&self, fraction: Decimal, chargeable: Decimal) -> Result<Decimal, DomainError> {
        let mut fee = add(mul(chargeable, fraction)?, self.fixed_amount)?;
        if let Some(min) = self.min_per_event {
            fee = fee.max(min);
        }
        if let Some(max) = self.max_per_event {
            fee = fee.min(max);
        }
        Ok(fee)
    }
}

/// What the shared tier code needs of a tier: its bound, price per unit, flat fee.
trait Band {
    fn up_to(&self) -> Option<Decimal>;
    /// Price of one unit inside the tier (a percent rate is divided by 100).
    fn price(&self) -> Result<Decimal, DomainError>;
    fn flat_fee(&self) -> Decimal;
    /// Validates the price field, pushing violations under `tiers[i].`.
    fn validate_price(&self, v: &mut Violations, i: usize);
}

impl Band for Tier {
    fn up_to(&self) -> Option<Decimal> {
        self.up_to
    }
    fn price(&self) -> Result<Decimal, DomainError> {
        Ok(self.unit_price)
    }
    fn flat_fee(&self) -> Decimal {
        self.flat_fee
    }
    fn validate_price(&self, v: &mut Violations, i: usize) {
        bounded(v, &format!("tiers[{i}].unit_price"), self.unit_price, UNIT_PRICE_MAX);
    }
}

impl Band for PercentTier {
    fn up_to(&self) -> Option<Decimal> {
        self.up_to
    }
    fn price(&self) -> Result<Decimal, DomainError> {
        self.rate.checked_div(Decimal::ONE_HUNDRED).ok_or_else(overflow)
    }
    fn flat_fee(&self) -> Decimal {
        self.flat_fee
    }
    fn validate_price(&self, v: &mut Violations, i: usize) {
        percent(v, &format!("tiers[{i}].rate"), self.rate);
    }
}

/// Tiers: 1..=TIERS_MAX of them; `up_to` > 0, strictly ascending, set on all but the last.
fn validate_tiers<T: Band>(v: &mut Violations, tiers: &[T]) {
    if tiers.is_empty() {
        return v.push("tiers", "at least one tier is required");
    }
    if tiers.len() > TIERS_MAX {
        return v.push("tiers", format!("at most {TIERS_MAX} tiers"));
    }
    for (i, tier) in tiers.iter().enumerate() {
        let previous = i.checked_sub(1).and_then(|p| tiers[p].up_to());
        validate_up_to(v, i, i + 1 == tiers.len(), tier.up_to(), previous);
        tier.validate_price(v, i);
        bounded(v, &format!("tiers[{i}].flat_fee"), tier.flat_fee(), AMOUNT_MAX);
    }
}

/// One tier's bound: unbounded iff last; otherwise > 0 and > the previous tier's bound.
fn validate_up_to(
    v: &mut Violations,
    i: usize,
    last: bool,
    up_to: Option<Decimal>,
    previous: Option<Decimal>,
) {
    let field = || format!("tiers[{i}].up_to");
    match up_to {
        Some(_) if last => v.push(field(), "the last tier must be unbounded (no up_to)"),
        None if !last => v.push(field(), "required: only the last tier is unbounded"),
        None => {}
        Some(bound) => {
            if let Err(violation) = check_bounded(&field(), bound, UNITS_MAX) {
                v.0.push(violation);
            } else if bound.is_zero() {
                v.push(field(), "must be greater than zero");
            } else if previous.is_some_and(|p| bound <= p) {
                v.push(field(), "must be greater than the previous tier's up_to");
            }
        }
    }
}

/// Σ over reached tiers of (units inside × price + flat fee); `units` ≥ 0.
fn graduated<T: Band>(units: Decimal, tiers: &[T]) -> Result<Decimal, DomainError> {
    let (mut total, mut floor) = (Decimal::ZERO, Decimal::ZERO);
    for (i, tier) in tiers.iter().enumerate() {
        if i > 0 && units <= floor {
            break;
        }
        let top = tier.up_to().map_or(units, |bound| bound.min(units));
        let inside = sub(top, floor)?.max(Decimal::ZERO);
        total = add(total, add(mul(inside, tier.price()?)?, tier.flat_fee())?)?;
        match tier.up_to() {
            Some(bound) => floor = bound,
            None => break,
        }
    }
    Ok(total)
}

/// The first tier whose bound is ≥ units prices all units, plus its flat fee; `units` ≥ 0.
fn volume(units: Decimal, tiers: &[Tier]) -> Result<Decimal, DomainError> {
    let tier = tiers
        .iter()
        .find(|t| t.up_to.is_none_or(|bound| units <= bound))
        .ok_or_else(|| DomainError::invalid("tiers", "at least one tier is required"))?;
    add(mul(units, tier.unit_price)?, tier.flat_fee)
}

/// ceil(n / d) for n ≥ 0, d > 0, exactly: the remainder decides, not a rounded quotient.
fn ceil_div(n: Decimal, d: Decimal) -> Result<Decimal, DomainError> {
    let rem = n.checked_rem(d).ok_or_else(overflow)?;
    let whole = sub(n, rem)?.checked_div(d).ok_or_else(overflow)?.round();
    if rem.is_zero() {
        Ok(whole)
    } else {
        add(whole, Decimal::ONE)
    }
}

/// A non-negative decimal within the allowed precision and at most `max`.
fn bounded(v: &mut Violations, field: &str, value: Decimal, max: Decimal) {
    if let Err(violation) = check_bounded(field, value, max) {
        v.0.push(violation);
    }
}

/// A package's price per unit (package_price / package_size) is a unit price: at most
/// [`UNIT_PRICE_MAX`], so a tiny package cannot multiply a usage total past the bounds.
fn check_package_unit_price(v: &mut Violations, size: Decimal, price: Decimal) {
    if !is_amount(size) || !is_amount(price) || size.is_zero() {
        return;
    }
    if size.checked_mul(UNIT_PRICE_MAX).is_some_and(|most| price > most) {
        v.push("package_price", "must be at most 10^9 per unit (package_price / package_size)");
    }
}

/// Whether `value` passes [`amount`] (so a later rule does not pile onto a bad field).
fn is_amount(value: Decimal) -> bool {
    check_amount("", value, false).is_ok()
}

/// A non-negative quantity (at most [`UNITS_MAX`]) that is also not zero.
fn positive(v: &mut Violations, field: &str, value: Decimal) {
    if let Err(violation) = check_bounded(field, value, UNITS_MAX) {
        v.0.push(violation);
    } else if value.is_zero() {
        v.push(field, "must be greater than zero");
    }
}

/// A percent rate: a non-negative amount ≤ [`PERCENT_MAX`].
fn percent(v: &mut Violations, field: &str, value: Decimal) {
    if let Err(violation) = check_amount(field, value, false) {
        v.0.push(violation);
    } else if value > PERCENT_MAX {
        v.push(field, "must not exceed 100 (percent)");
    }
}

fn add(a: Decimal, b: Decimal) -> Result<Decimal, DomainError> {
    a.checked_add(b).ok_or_else(overflow)
}

fn sub(a: Decimal, b: Decimal) -> Result<Decimal, DomainError> {
    a.checked_sub(b).ok_or_else(overflow)
}

fn mul(a: Decimal, b: Decimal) -> Result<Decimal, DomainError> {
    a.checked_mul(b).ok_or_else(overflow)
}

/// The one error of an arithmetic overflow while rating.
fn overflow() -> DomainError {
    DomainError::invalid("amount", "amount overflows")
}

/// Whether `e` is rating's overflow error (of a charge model or of an aggregation), as opposed
/// to a model that fails [`ChargeModel::validate`].
pub fn is_rating_overflow(e: &DomainError) -> bool {
    *e == overflow() || *e == super::aggregation::overflow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn tier(up_to: Option<Decimal>, unit_price: Decimal, flat_fee: Decimal) -> Tier {
        Tier { up_to, unit_price, flat_fee }
    }

    /// SPEC §4: up_to 100 @ 1.00 + flat 5, up_to 1000 @ 0.50, rest @ 0.10.
    fn spec_tiers() -> Vec<Tier> {
        vec![
            tier(Some(dec!(100)), dec!(1.00), dec!(5)),
            tier(Some(dec!(1000)), dec!(0.50), dec!(0)),
            tier(None, dec!(0.10), dec!(0)),
        ]
    }

    fn percentage(rate: Decimal, fixed_amount: Decimal) -> ChargeModel {
        ChargeModel::Percentage {
            rate,
            fixed_amount,
            free_events: None,
            free_amount: None,
            min_per_event: None,
            max_per_event: None,
        }
    }

    /// A 2 % + 0.30 percentage model with the given free allowance.
    fn free(events: Option<u64>, amount: Option<Decimal>) -> ChargeModel {
        let mut model = percentage(dec!(2), dec!(0.30));
        if let ChargeModel::Percentage { free_events, free_amount, .. } = &mut model {
            (*free_events, *free_amount) = (events, amount);
        }
        model
    }

    /// A 2 % percentage model without fixed fee, clamped per event.
    fn clamped(min: Option<Decimal>, max: Option<Decimal>, free: Option<Decimal>) -> ChargeModel {
        let mut model = percentage(dec!(2), dec!(0));
        if let ChargeModel::Percentage { min_per_event, max_per_event, free_amount, .. } =
            &mut model
        {
            (*min_per_event, *max_per_event, *free_amount) = (min, max, free);
        }
        model
    }

    fn package(size: Decimal, price: Decimal, free_units: Decimal) -> ChargeModel {
        ChargeModel::Package { package_size: size, package_price: price, free_units }
    }

    fn graduated_percentage() -> ChargeModel {
        let tiers = vec![
            PercentTier { up_to: Some(dec!(1000)), rate: dec!(2), flat_fee: dec!(1) },
            PercentTier { up_to: None, rate: dec!(1), flat_fee: dec!(10) },
        ];
        ChargeModel::GraduatedPercentage { tiers }
    }

    const OVERFLOW: Result<Decimal, &str> = Err("amount");

    /// (name, model, units, event amounts, expected amount or the field of the error).
    type RateCase =
        (&'static str, ChargeModel, Decimal, Vec<Decimal>, Result<Decimal, &'static str>);

    fn rate_cases() -> Vec<RateCase> {
        let std = |p| ChargeModel::Standard { unit_price: p };
        let grad = ChargeModel::Graduated { tiers: spec_tiers() };
        let vol = ChargeModel::Volume { tiers: spec_tiers() };
        let grad_flat2 = ChargeModel::Graduated {
            tiers: vec![tier(Some(dec!(10)), dec!(1), dec!(0)), tier(None, dec!(2), dec!(7))],
        };
        let p = percentage(dec!(2), dec!(0.30));
        let gp = graduated_percentage();
        let none = Vec::new;
        vec![
            ("standard zero", std(dec!(1.5)), dec!(0), none(), Ok(dec!(0))),
            ("standard", std(dec!(1.5)), dec!(4), none(), Ok(dec!(6))),
            (
                "standard tiny price",
                std(dec!(0.000000000001)),
                dec!(3.5),
                none(),
                Ok(dec!(0.0000000000035)),
            ),
            ("standard negative units", std(dec!(2)), dec!(-3), none(), Ok(dec!(0))),
            ("standard 1e20", std(dec!(1)), dec!(1e20), none(), Ok(dec!(1e20))),
            ("standard overflow", std(dec!(1e9)), dec!(1e20), none(), OVERFLOW),
            ("graduated zero: first flat fee", grad.clone(), dec!(0), none(), Ok(dec!(5))),
            ("graduated fractional", grad.clone(), dec!(0.5), none(), Ok(dec!(5.5))),
            ("graduated 100", grad.clone(), dec!(100), none(), Ok(dec!(105))),
            ("graduated 100.000001", grad.clone(), dec!(100.000001), none(), Ok(dec!(105.0000005))),
            ("graduated SPEC 250", grad.clone(), dec!(250), none(), Ok(dec!(180.00))),
            ("graduated 1000", grad.clone(), dec!(1000), none(), Ok(dec!(555))),
            ("graduated 1500", grad.clone(), dec!(1500), none(), Ok(dec!(605))),
            ("graduated 1e20", grad.clone(), dec!(1e20), none(), Ok(dec!(10000000000000000455))),
            (
                "graduated 1e28 overflows",
                ChargeModel::Graduated { tiers: vec![tier(None, dec!(10), dec!(0))] },
                dec!(1e28),
                none(),
                OVERFLOW,
            ),
            ("graduated negative units", grad.clone(), dec!(-5), none(), Ok(dec!(5))),
            (
                "graduated at bound: next flat not reached",
                grad_flat2.clone(),
                dec!(10),
                none(),
                Ok(dec!(10)),
            ),
            ("graduated past bound: next flat", grad_flat2, dec!(10.5), none(), Ok(dec!(18))),
            ("volume zero: first tier flat", vol.clone(), dec!(0), none(), Ok(dec!(5))),
            ("volume 100", vol.clone(), dec!(100), none(), Ok(dec!(105))),
            ("volume 100.000001", vol.clone(), dec!(100.000001), none(), Ok(dec!(50.0000005))),
            ("volume 250", vol.clone(), dec!(250), none(), Ok(dec!(125))),
            ("volume 1000", vol.clone(), dec!(1000), none(), Ok(dec!(500))),
            ("volume 1001", vol.clone(), dec!(1001), none(), Ok(dec!(100.1))),
            ("volume 1e20", vol, dec!(1e20), none(), Ok(dec!(1e19))),
            ("package zero", package(dec!(10), dec!(5), dec!(20)), dec!(0), none(), Ok(dec!(0))),
            (
                "package within free",
                package(dec!(10), dec!(5), dec!(20)),
                dec!(20),
                none(),
                Ok(dec!(0)),
            ),
            (
                "package started",
                package(dec!(10), dec!(5), dec!(20)),
                dec!(20.5),
                none(),
                Ok(dec!(5)),
            ),
            (
                "package exact multiple",
                package(dec!(10), dec!(5), dec!(20)),
                dec!(30),
                none(),
                Ok(dec!(5)),
            ),
            (
                "package just past multiple",
                package(dec!(10), dec!(5), dec!(20)),
                dec!(30.000001),
                none(),
                Ok(dec!(10)),
            ),
            ("package 100", package(dec!(10), dec!(5), dec!(20)), dec!(100), none(), Ok(dec!(40))),
            (
                "package fractional size",
                package(dec!(0.3), dec!(1), dec!(0)),
                dec!(0.9),
                none(),
                Ok(dec!(3)),
            ),
            (
                "package 1e20",
                package(dec!(1), dec!(1), dec!(0)),
                dec!(1e20),
                none(),
                Ok(dec!(1e20)),
            ),
            (
                "package tiny size overflows",
                package(dec!(0.000000000001), dec!(0.001), dec!(0)),
                dec!(1e20),
                none(),
                OVERFLOW,
            ),
            (
                "package above 10^9 per unit is refused",
                package(dec!(0.000000000001), dec!(1), dec!(0)),
                dec!(1),
                none(),
                Err("package_price"),
            ),
            ("percentage no events", p.clone(), dec!(0), none(), Ok(dec!(0))),
            ("percentage all paid", p.clone(), dec!(150), vec![dec!(100), dec!(50)], Ok(dec!(3.6))),
            (
                "percentage negative amount",
                p.clone(),
                dec!(50),
                vec![dec!(-50), dec!(100)],
                Ok(dec!(2.6)),
            ),
            ("percentage overflow", p, dec!(0), vec![dec!(7e28), dec!(7e28)], OVERFLOW),
            (
                "free_events alone",
                free(Some(1), None),
                dec!(0),
                vec![dec!(100), dec!(50)],
                Ok(dec!(1.3)),
            ),
            (
                "free_events covers all",
                free(Some(5), None),
                dec!(0),
                vec![dec!(1e6), dec!(50)],
                Ok(dec!(0)),
            ),
            ("free_events zero", free(Some(0), None), dec!(0), vec![dec!(100)], Ok(dec!(2.3))),
            (
                "free_amount crossing",
                free(None, Some(dec!(120))),
                dec!(0),
                vec![dec!(100), dec!(50)],
                Ok(dec!(0.9)),
            ),
            (
                "free_amount exactly used, then paid",
                free(None, Some(dec!(120))),
                dec!(0),
                vec![dec!(100), dec!(20), dec!(10)],
                Ok(dec!(0.5)),
            ),
            (
                "free_amount first event crosses",
                free(None, Some(dec!(10))),
                dec!(0),
                vec![dec!(100)],
                Ok(dec!(2.1)),
            ),
            (
                "past free_events pays in full",
                free(Some(1), Some(dec!(120))),
                dec!(0),
                vec![dec!(100), dec!(50)],
                Ok(dec!(1.3)),
            ),
            (
                "crossing within free_events",
                free(Some(2), Some(dec!(120))),
                dec!(0),
                vec![dec!(100), dec!(50), dec!(10)],
                Ok(dec!(1.4)),
            ),
            (
                "both limits not reached",
                free(Some(3), Some(dec!(1000))),
                dec!(0),
                vec![dec!(100), dec!(50)],
                Ok(dec!(0)),
            ),
            (
                "min and max clamp",
                clamped(Some(dec!(1)), Some(dec!(5)), None),
                dec!(0),
                vec![dec!(10), dec!(100), dec!(1000)],
                Ok(dec!(8)),
            ),
            (
                "min on crossing event",
                clamped(Some(dec!(1)), None, Some(dec!(100))),
                dec!(0),
                vec![dec!(100), dec!(10)],
                Ok(dec!(1)),
            ),
            (
                "min not on free events",
                clamped(Some(dec!(1)), None, Some(dec!(100))),
                dec!(0),
                vec![dec!(60), dec!(40)],
                Ok(dec!(0)),
            ),
            (
                "max alone",
                clamped(None, Some(dec!(3)), None),
                dec!(0),
                vec![dec!(1000), dec!(50)],
                Ok(dec!(4)),
            ),
            ("graduated_percentage zero", gp.clone(), dec!(0), none(), Ok(dec!(1))),
            ("graduated_percentage 500", gp.clone(), dec!(500), none(), Ok(dec!(11))),
            ("graduated_percentage 1000", gp.clone(), dec!(1000), none(), Ok(dec!(21))),
            ("graduated_percentage 1500", gp, dec!(1500), none(), Ok(dec!(36))),
            (
                "invalid model refused",
                package(dec!(0), dec!(1), dec!(0)),
                dec!(5),
                none(),
                Err("package_size"),
            ),
        ]
    }

    fn field_of(err: &DomainError) -> &str {
        match err {
            DomainError::Invalid(v) => &v[0].field,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rate_table() {
        for (name, model, units, amounts, want) in rate_cases() {
            let got = model.rate(&RatingInput { units, event_amounts: &amounts });
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(err), Err(field)) => assert_eq!(field_of(&err), field, "{name}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// (name, model, units before, amounts before, units after, amounts after, expected fee).
    type FeeCase<'a> =
        (&'static str, &'a ChargeModel, Decimal, &'a [Decimal], Decimal, &'a [Decimal], Decimal);

    #[test]
    fn in_advance_fee_table() {
        let std = ChargeModel::Standard { unit_price: dec!(2) };
        let grad = ChargeModel::Graduated { tiers: spec_tiers() };
        let grad_flat2 = ChargeModel::Graduated {
            tiers: vec![tier(Some(dec!(10)), dec!(1), dec!(0)), tier(None, dec!(2), dec!(7))],
        };
        let pack = package(dec!(10), dec!(5), dec!(0));
        let pct = free(None, Some(dec!(120)));
        let no: &[Decimal] = &[];
        let cases: [FeeCase; 9] = [
            ("standard", &std, dec!(3), no, dec!(5), no, dec!(4)),
            (
                "graduated first event skips zero-usage flat",
                &grad,
                dec!(0),
                no,
                dec!(1),
                no,
                dec!(1),
            ),
            ("graduated across bound", &grad, dec!(99), no, dec!(101), no, dec!(1.5)),
            ("graduated reaches flat tier", &grad_flat2, dec!(10), no, dec!(11), no, dec!(9)),
            ("package opens a package", &pack, dec!(10), no, dec!(11), no, dec!(5)),
            ("package inside a package", &pack, dec!(11), no, dec!(12), no, dec!(0)),
            ("usage decrease is negative", &std, dec!(5), no, dec!(3), no, dec!(-4)),
            (
                "percentage crossing",
                &pct,
                dec!(0),
                &[dec!(100)],
                dec!(0),
                &[dec!(100), dec!(50)],
                dec!(0.9),
            ),
            ("percentage free", &pct, dec!(0), no, dec!(0), &[dec!(100)], dec!(0)),
        ];
        for (name, model, bu, ba, au, aa, want) in cases {
            let before = RatingInput { units: bu, event_amounts: ba };
            let after = RatingInput { units: au, event_amounts: aa };
            assert_eq!(in_advance_fee(model, &before, &after), Ok(want), "{name}");
        }
        let vol = ChargeModel::Volume { tiers: spec_tiers() };
        let input = RatingInput { units: dec!(1), event_amounts: no };
        let err = in_advance_fee(&vol, &input, &input).unwrap_err();
        assert_eq!(field_of(&err), "pay_in_advance");
    }

    #[test]
    fn model_flags() {
        let table = [
            (ChargeModel::Standard { unit_price: dec!(1) }, "standard", true, false),
            (ChargeModel::Graduated { tiers: spec_tiers() }, "graduated", true, false),
            (ChargeModel::Volume { tiers: spec_tiers() }, "volume", false, false),
            (package(dec!(1), dec!(1), dec!(0)), "package", true, false),
            (percentage(dec!(1), dec!(0)), "percentage", true, true),
            (graduated_percentage(), "graduated_percentage", true, false),
        ];
        for (model, name, in_advance, amounts) in table {
            assert_eq!(model.name(), name);
            assert_eq!(model.allows_pay_in_advance(), in_advance, "{name}");
            assert_eq!(model.needs_event_amounts(), amounts, "{name}");
            assert_eq!(model.validate(), Ok(()), "{name}");
            let json = serde_json::to_value(&model).unwrap();
            assert_eq!(json["model"], name);
            assert_eq!(serde_json::from_value::<ChargeModel>(json).unwrap(), model);
        }
    }

    #[test]
    fn serde_shape() {
        let json = r#"{"model":"graduated","tiers":[
            {"up_to":"100","unit_price":"1.00","flat_fee":"5"},
            {"up_to":null,"unit_price":"0.1"}]}"#;
        let model: ChargeModel = serde_json::from_str(json).unwrap();
        let tiers =
            vec![tier(Some(dec!(100)), dec!(1.00), dec!(5)), tier(None, dec!(0.1), dec!(0))];
        assert_eq!(model, ChargeModel::Graduated { tiers });
        let json = r#"{"model":"percentage","rate":"2.5"}"#;
        assert_eq!(
            serde_json::from_str::<ChargeModel>(json).unwrap(),
            percentage(dec!(2.5), dec!(0))
        );
    }

    fn tiers_of(bounds: &[Option<Decimal>]) -> ChargeModel {
        let tiers = bounds.iter().map(|&b| tier(b, dec!(1), dec!(0))).collect();
        ChargeModel::Graduated { tiers }
    }

    #[test]
    fn validation_table() {
        let many: Vec<_> =
            (1..=TIERS_MAX as i64).map(|i| Some(Decimal::from(i))).chain([None]).collect();
        let mut bad_prices = spec_tiers();
        bad_prices[0].unit_price = dec!(-1);
        bad_prices[1].flat_fee = dec!(0.0000000000001);
        let mut bad_pct = percentage(dec!(100.01), dec!(-1));
        if let ChargeModel::Percentage { free_amount, .. } = &mut bad_pct {
            *free_amount = Some(dec!(-5));
        }
        let bad_tier_rate = ChargeModel::GraduatedPercentage {
            tiers: vec![PercentTier { up_to: None, rate: dec!(101), flat_fee: dec!(0) }],
        };
        let cases: Vec<(&str, ChargeModel, &[&str])> = vec![
            ("SPEC tiers valid", tiers_of(&[Some(dec!(100)), Some(dec!(1000)), None]), &[]),
            ("single unbounded tier", tiers_of(&[None]), &[]),
            ("fractional bounds", tiers_of(&[Some(dec!(0.5)), Some(dec!(0.75)), None]), &[]),
            ("no tiers", tiers_of(&[]), &["tiers"]),
            ("too many tiers", tiers_of(&many), &["tiers"]),
            (
                "bounds not ascending",
                tiers_of(&[Some(dec!(100)), Some(dec!(100)), None]),
                &["tiers[1].up_to"],
            ),
            (
                "bound descending",
                tiers_of(&[Some(dec!(100)), Some(dec!(50)), None]),
                &["tiers[1].up_to"],
            ),
            ("zero bound", tiers_of(&[Some(dec!(0)), None]), &["tiers[0].up_to"]),
            ("negative bound", tiers_of(&[Some(dec!(-1)), None]), &["tiers[0].up_to"]),
            (
                "bound too precise",
                tiers_of(&[Some(dec!(0.0000000000001)), None]),
                &["tiers[0].up_to"],
            ),
            ("last tier bounded", tiers_of(&[Some(dec!(10)), Some(dec!(20))]), &["tiers[1].up_to"]),
            ("middle tier unbounded", tiers_of(&[None, None]), &["tiers[0].up_to"]),
            (
                "bad price and fee",
                ChargeModel::Volume { tiers: bad_prices },
                &["tiers[0].unit_price", "tiers[1].flat_fee"],
            ),
            (
                "standard negative",
                ChargeModel::Standard { unit_price: dec!(-0.01) },
                &["unit_price"],
            ),
            (
                "standard too precise",
                ChargeModel::Standard { unit_price: dec!(0.0000000000001) },
                &["unit_price"],
            ),
            ("standard 12 places", ChargeModel::Standard { unit_price: dec!(0.000000000001) }, &[]),
            ("package size zero", package(dec!(0), dec!(1), dec!(0)), &["package_size"]),
            (
                "package all negative",
                package(dec!(-1), dec!(-1), dec!(-1)),
                &["package_size", "package_price", "free_units"],
            ),
            ("percentage 100 ok", percentage(dec!(100), dec!(0)), &[]),
            ("percentage bad", bad_pct, &["rate", "fixed_amount", "free_amount"]),
            ("min above max", clamped(Some(dec!(5)), Some(dec!(1)), None), &["min_per_event"]),
            ("min equals max", clamped(Some(dec!(5)), Some(dec!(5)), None), &[]),
            ("negative max", clamped(Some(dec!(5)), Some(dec!(-1)), None), &["max_per_event"]),
            ("tier rate above 100", bad_tier_rate, &["tiers[0].rate"]),
        ];
        for (name, model, want) in cases {
            let got: Vec<String> = match model.validate() {
                Ok(()) => vec![],
                Err(DomainError::Invalid(v)) => v.into_iter().map(|f| f.field).collect(),
                Err(other) => panic!("{name}: {other:?}"),
            };
            assert_eq!(got, want, "{name}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Non-negative decimals with 6 to 12 places, below 10^9 (a valid unit price).
        fn small() -> impl Strategy<Value = Decimal> {
            (0i64..1_000_000_000_000_000, 6u32..=12).prop_map(|(m, s)| Decimal::new(m, s))
        }

        /// Any decimal at all, including negative, huge and 28-place ones.
        fn any_decimal() -> impl Strategy<Value = Decimal> {
            (any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>(), 0u32..=28)
                .prop_map(|(lo, mid, hi, neg, scale)| Decimal::from_parts(lo, mid, hi, neg, scale))
        }

        /// Valid tiers: ascending bounds built from positive steps, last unbounded.
        fn tiers() -> impl Strategy<Value = Vec<Tier>> {
            prop::collection::vec((1i64..10_000, 0i64..10_000, 0i64..1_000), 1..6).prop_map(|raw| {
                let mut bound = Decimal::ZERO;
                let last = raw.len() - 1;
                let tier_of = |(i, (step, price, flat)): (usize, (i64, i64, i64))| {
                    bound += Decimal::new(step, 1);
                    let up_to = (i < last).then_some(bound);
                    tier(up_to, Decimal::new(price, 3), Decimal::new(flat, 2))
                };
                raw.into_iter().enumerate().map(tier_of).collect()
            })
        }

        fn any_model() -> impl Strategy<Value = ChargeModel> {
            let t = || (prop::option::of(any_decimal()), any_decimal(), any_decimal());
            let opt = || prop::option::of(any_decimal());
            prop_oneof![
                any_decimal().prop_map(|unit_price| ChargeModel::Standard { unit_price }),
                prop::collection::vec(t(), 0..4).prop_map(|v| ChargeModel::Graduated {
                    tiers: v.into_iter().map(|(u, p, f)| tier(u, p, f)).collect()
                }),
                prop::collection::vec(t(), 0..4).prop_map(|v| ChargeModel::Volume {
                    tiers: v.into_iter().map(|(u, p, f)| tier(u, p, f)).collect()
                }),
                (any_decimal(), any_decimal(), any_decimal())
                    .prop_map(|(s, p, f)| package(s, p, f)),
                (any_decimal(), any_decimal(), any::<Option<u64>>(), opt(), opt(), opt()).prop_map(
                    |(
                        rate,
                        fixed_amount,
                        free_events,
                        free_amount,
                        min_per_event,
                        max_per_event,
                    )| {
                        ChargeModel::Percentage {
                            rate,
                            fixed_amount,
                            free_events,
                            free_amount,
                            min_per_event,
                            max_per_event,
                        }
                    }
                ),
                prop::collection::vec(t(), 0..4).prop_map(|v| ChargeModel::GraduatedPercentage {
                    tiers: v
                        .into_iter()
                        .map(|(up_to, rate, flat_fee)| PercentTier { up_to, rate, flat_fee })
                        .collect()
                }),
            ]
        }

        /// Valid non-negative decimals (≤ 12 places) up to the unit price bound, 10^9.
        fn big() -> impl Strategy<Value = Decimal> {
            (0i64..=1_000_000_000, 0i64..1_000_000_000_000, 0u32..=12)
                .prop_map(|(whole, part, s)| {
                    Decimal::from(whole) + Decimal::new(part, 12).trunc_with_scale(s)
                })
                .prop_map(|d| d.min(UNIT_PRICE_MAX))
        }

        /// A valid percentage model; `min`/`max` are ordered so that min ≤ max.
        fn valid_percentage(d: BoxedStrategy<Decimal>) -> impl Strategy<Value = ChargeModel> {
            let pct = (0i64..=10_000).prop_map(|m| Decimal::new(m, 2));
            let opt = prop::option::of(d.clone());
            let clamp = prop::option::of((d.clone(), d.clone()));
            (pct, d, any::<Option<u8>>(), opt, clamp).prop_map(
                |(rate, fixed, events, amount, clamp)| {
                    let mut m = free(events.map(u64::from), amount);
                    if let ChargeModel::Percentage {
                        rate: r,
                        fixed_amount,
                        min_per_event,
                        max_per_event,
                        ..
                    } = &mut m
                    {
                        (*r, *fixed_amount) = (rate, fixed);
                        (*min_per_event, *max_per_event) = match clamp {
                            Some((a, b)) => (Some(a.min(b)), Some(a.max(b))),
                            None => (None, None),
                        };
                    }
                    m
                },
            )
        }

        /// Valid models whose decimals come from `d` (tier bounds from [`tiers`]).
        fn valid_model(d: BoxedStrategy<Decimal>) -> impl Strategy<Value = ChargeModel> {
            let to_percent = |tiers: Vec<Tier>| ChargeModel::GraduatedPercentage {
                tiers: tiers
                    .into_iter()
                    .map(|t| PercentTier {
                        up_to: t.up_to,
                        rate: t.unit_price.min(PERCENT_MAX),
                        flat_fee: t.flat_fee,
                    })
                    .collect(),
            };
            prop_oneof![
                d.clone().prop_map(|unit_price| ChargeModel::Standard { unit_price }),
                tiers().prop_map(|tiers| ChargeModel::Graduated { tiers }),
                tiers().prop_map(|tiers| ChargeModel::Volume { tiers }),
                tiers().prop_map(to_percent),
                (d.clone().prop_filter("size > 0", |s| !s.is_zero()), d.clone(), d.clone())
                    .prop_map(|(s, p, f)| package(s, p.min(s * UNIT_PRICE_MAX), f)),
                valid_percentage(d),
            ]
        }

        proptest! {
            #[test]
            fn graduated_is_monotonic(tiers in tiers(), a in small(), b in small()) {
                let model = ChargeModel::Graduated { tiers };
                let (lo, hi) = (a.min(b), a.max(b));
                let at = |units| model.rate(&RatingInput { units, event_amounts: &[] }).unwrap();
                prop_assert!(at(lo) <= at(hi), "{} at {lo} > {} at {hi}", at(lo), at(hi));
            }

            #[test]
            fn single_tier_volume_equals_graduated(
                price in small(),
                flat in small(),
                units in small(),
            ) {
                let tiers = vec![tier(None, price, flat)];
                let input = RatingInput { units, event_amounts: &[] };
                let graduated = ChargeModel::Graduated { tiers: tiers.clone() }.rate(&input);
                prop_assert_eq!(graduated, ChargeModel::Volume { tiers }.rate(&input));
            }

            #[test]
            fn rate_never_panics(
                model in prop_oneof![any_model(), valid_model(big().boxed())],
                units in any_decimal(),
                amounts in prop::collection::vec(any_decimal(), 0..5),
            ) {
                let _ = model.validate();
                let input = RatingInput { units, event_amounts: &amounts };
                let _ = model.rate(&input);
                let first = &amounts[..amounts.len().min(1)];
                let before = RatingInput { units: Decimal::ZERO, event_amounts: first };
                let _ = in_advance_fee(&model, &before, &input);
            }

            /// The bounds exclude overflow: any valid model (prices up to 10^9) rates any usage
            /// the ledger accepts into one period (units and Σ amounts ≤ 10^15) without error.
            #[test]
            fn valid_models_never_overflow_within_the_bounds(
                model in valid_model(big().boxed()),
                units in 0i64..=1_000_000_000_000_000,
                amounts in prop::collection::vec(0i64..=10_000_000_000_000, 0..100),
            ) {
                let amounts: Vec<Decimal> = amounts.into_iter().map(Decimal::from).collect();
                let input = RatingInput { units: Decimal::from(units), event_amounts: &amounts };
                let rated = model.rate(&input);
                prop_assert!(rated.as_ref().is_ok_and(|a| *a >= Decimal::ZERO), "{rated:?}");
            }

            #[test]
            fn valid_models_rate_and_in_advance_fees_are_not_negative(
                model in valid_model(small().boxed()),
                units in small(),
                more in small(),
                amounts in prop::collection::vec(small(), 0..6),
            ) {
                let all = RatingInput { units: units + more, event_amounts: &amounts };
                let but_last = &amounts[..amounts.len().saturating_sub(1)];
                let fewer = RatingInput { units, event_amounts: but_last };
                prop_assert!(model.rate(&all).unwrap() >= Decimal::ZERO);
                if model.allows_pay_in_advance() {
                    prop_assert!(in_advance_fee(&model, &fewer, &all).unwrap() >= Decimal::ZERO);
                }
            }
        }
    }
}
