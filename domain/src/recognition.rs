//! Revenue recognition (SPEC §5, ASC 606): when each invoice line becomes revenue, as a
//! schedule of `(local date, amount)` entries in minor units of the invoice currency. An entry
//! dated `d` is recognized at the end of day `d`. Every schedule sums exactly to its amount.
//!
//! Rules, per line kind:
//! - **Base fee** ([`ratable_schedule`]): ratably by day over the service period
//!   `[start, end)` of `n` days; cumulative recognized after day `d` (1-based) is
//!   `round(amount × d / n)` (currency rounding, half away from zero), so day `d` recognizes
//!   `cum(d) − cum(d − 1)` and the last day closes on `amount` exactly.
//! - **Usage in arrears** ([`usage_schedule`]): as consumed; each day recognizes the increase
//!   of the period's rated amount (rounded), and the last day of the period takes the true-up
//!   to the invoiced amount.
//! - **Minimum-commitment true-up**: all on the last day of its service period.
//! - **Usage in advance** (one-off purchases): all on the day of the event. The line does not
//!   carry that day, so [`schedule_for_line`] uses the service start; a caller that knows the
//!   event's (or the invoice's) local date uses [`in_advance_usage_schedule`].
//! - **Credit** (negative lines): reverses the unrecognized part of the credited schedule
//!   first ([`apply_credit`], [`credit_reversal`]).
//! - **Tax** is a liability (tax payable), never revenue: it is not a line kind, is never
//!   scheduled, and schedules of an invoice's lines sum to its subtotal, not its total.
//!
//! An empty service period (`end <= start`) recognizes everything on `start`.
//!
//! Arithmetic is on integer minor units (`i128`), exact and free of overflow for any amount
//! whose minor-unit count fits a `Decimal` (|amount| < 7.9e28 minor units).

use jiff::civil::Date;
use jiff::ToSpan;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::calendar::Period;
use crate::invoice::{InvoiceLine, LineKind};
use crate::money::Currency;

/// What kind of revenue a line recognizes (tax is not revenue and has no type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevenueType {
    Subscription,
    Usage,
    TrueUp,
    Credit,
    AddOn,
    /// Prepaid wallet credits: never revenue when bought (a liability); what expires unused
    /// becomes breakage revenue.
    Breakage,
}

impl RevenueType {
    /// The name used in reports and exports.
    pub fn as_str(&self) -> &'static str {
        match self {
            RevenueType::Subscription => "subscription",
            RevenueType::Usage => "usage",
            RevenueType::TrueUp => "true_up",
            RevenueType::Credit => "credit",
            RevenueType::AddOn => "add_on",
            RevenueType::Breakage => "breakage",
        }
    }
}

/// Base fee → subscription; usage (in arrears or in advance) → usage; minimum-commitment
/// true-up → true_up; credit → credit. Tax is not a line: it is a liability, never revenue.
pub fn revenue_type(kind: LineKind) -> RevenueType {
    match kind {
        LineKind::BaseFee => RevenueType::Subscription,
        LineKind::Usage | LineKind::UsageInAdvance => RevenueType::Usage,
        LineKind::MinimumCommitmentTrueUp => RevenueType::TrueUp,
        LineKind::Credit => RevenueType::Credit,
        LineKind::AddOn => RevenueType::AddOn,
        LineKind::PrepaidCredits => RevenueType::Breakage,
    }
}

/// A line's recognition schedule: entries in date order, in minor units, summing to the line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub revenue_type: RevenueType,
    pub entries: Vec<(Date, Decimal)>,
}

impl Schedule {
    /// Σ of all entries (the line amount).
    pub fn total(&self) -> Decimal {
        self.entries.iter().map(|(_, a)| *a).sum()
    }

    /// Recognized by the end of day `date`: Σ of entries dated on or before it.
    pub fn recognized_through(&self, date: Date) -> Decimal {
        self.entries.iter().filter(|(d, _)| *d <= date).map(|(_, a)| *a).sum()
    }
}

/// The schedule of a base-fee, true-up, in-advance usage or credit line (see the module rules).
/// A usage-in-arrears line given here, without its daily consumption, is recognized as if
/// nothing had been consumed before the end: all on the last day (see [`usage_schedule`]).
/// A credit line given alone is spread negatively and ratably over its own service period
/// (the unused days it credits); [`credit_reversal`] is exact against the credited schedule.
pub fn schedule_for_line(line: &InvoiceLine, currency: Currency) -> Schedule {
    let p = line.service_period;
    let entries = match line.kind {
        // An add-on without a service period of its own has the issue day (point in time).
        LineKind::BaseFee | LineKind::Credit | LineKind::AddOn => {
            ratable_schedule(line.amount, currency, p)
        }
        LineKind::MinimumCommitmentTrueUp => point_schedule(line.amount, currency, last_day(p)),
        LineKind::UsageInAdvance => point_schedule(line.amount, currency, p.start),
        LineKind::Usage => usage_schedule(p, &[], line.amount, currency),
        // Bought credits are a liability: nothing is recognized when they are sold.
        LineKind::PrepaidCredits => Vec::new(),
    };
    Schedule { revenue_type: revenue_type(line.kind), entries }
}

/// An in-advance usage line recognized on `event_day` (the local day of the usage event, or
/// of the invoice it triggered), clamped into the line's service period.
pub fn in_advance_usage_schedule(
    line: &InvoiceLine,
    currency: Currency,
    event_day: Date,
) -> Schedule {
    let p = line.service_period;
    let day = event_day.min(last_day(p)).max(p.start);
    Schedule {
        revenue_type: revenue_type(line.kind),
        entries: point_schedule(line.amount, currency, day),
    }
}

/// The whole amount (rounded to the currency) on one day.
pub fn point_schedule(amount: Decimal, currency: Currency, day: Date) -> Vec<(Date, Decimal)> {
    vec![(day, currency.round(amount))]
}

/// Ratable by day over `service` (`n` days): one entry per day; cumulative after day `d` is
/// `round(amount × d / n)` half away from zero, so the entries sum exactly to `amount`
/// (rounded to the currency first: a no-op for an invoice line). Negative amounts mirror
/// positive ones. An empty period puts everything on `service.start`.
pub fn ratable_schedule(
    amount: Decimal,
    currency: Currency,
    service: Period,
) -> Vec<(Date, Decimal)> {
    let Ok(n) = usize::try_from(service.days()) else {
        return point_schedule(amount, currency, service.start);
    };
    if n == 0 {
        return point_schedule(amount, currency, service.start);
    }
    let total = to_minor(amount, currency);
    days(service.start, n)
        .zip(ratable_minor(total, n))
        .map(|(d, a)| (d, from_minor(a, currency)))
        .collect()
}

/// Daily minor-unit amounts of `total` over `n > 0` days by the cumulative rule.
fn ratable_minor(total: i128, n: usize) -> impl Iterator<Item = i128> {
    let n = n as i128;
    (1..=n).map(move |d| cumulative(total, d, n) - cumulative(total, d - 1, n))
}

/// `round(total × d / n)` half away from zero, for `0 <= d <= n`, without overflow: with
/// `|total| = q·n + r`, it is `q·d + round(r·d / n)` (`r·d < n²`).
fn cumulative(total: i128, d: i128, n: i128) -> i128 {
    let (q, r) = (total.abs() / n, total.abs() % n);
    let magnitude = q * d + (2 * r * d + n) / (2 * n);
    magnitude * total.signum()
}

/// Usage in arrears, recognized as consumed, one entry per day of `service`:
/// - `C(d)` = the rated amount of the last entry of `cumulative` dated on or before day `d`
///   (entries are taken in date order; for equal dates the later one in the slice wins;
///   0 before the first entry; entries dated after the period are ignored);
/// - `R(d)` = `round(C(d))` to the currency; day `d` recognizes `R(d) − R(d − 1)`, with
///   `R(start − 1) = 0`. A decrease of the rated amount (e.g. a volume tier or a `latest`
///   metric going down) is recognized as a negative amount: a reversal of usage revenue;
/// - the last day instead closes on the invoiced amount: it recognizes
///   `round(invoiced) − R(last − 1)`, which carries its own increase plus the final true-up
///   (rounding residue, rating with the plan of the last day, late changes).
///
/// The entries sum exactly to `round(invoiced)`. An empty period puts it all on `start`.
pub fn usage_schedule(
    service: Period,
    cumulative: &[(Date, Decimal)],
    invoiced: Decimal,
    currency: Currency,
) -> Vec<(Date, Decimal)> {
    let n = usize::try_from(service.days()).unwrap_or(0);
    if n == 0 {
        return point_schedule(invoiced, currency, service.start);
    }
    let mut sorted = cumulative.to_vec();
    sorted.sort_by_key(|(d, _)| *d);
    let rounded = days(service.start, n).map(|day| to_minor(rated_on(&sorted, day), currency));
    let mut targets: Vec<i128> = rounded.collect();
    targets[n - 1] = to_minor(invoiced, currency);
    let mut previous = 0;
    let amounts = targets.into_iter().map(|t| {
        let day_amount = t - previous;
        previous = t;
        from_minor(day_amount, currency)
    });
    days(service.start, n).zip(amounts).collect()
}

/// The rated amount of the last entry of `sorted` dated on or before `day` (0 if none).
fn rated_on(sorted: &[(Date, Decimal)], day: Date) -> Decimal {
    let k = sorted.partition_point(|(d, _)| *d <= day);
    k.checked_sub(1).map_or(Decimal::ZERO, |i| sorted[i].1)
}

/// A credit (≤ 0) on `credit_date` against the `original` schedule of the credited line
/// (e.g. the in-advance base fee whose unused days it credits), given in date order with one
/// entry per day, as [`ratable_schedule`] makes it. Rule:
/// - the unrecognized part `U` is Σ of the original entries dated on or after `credit_date`
///   (the credit date is the first credited day, so its own entry is not yet recognized);
/// - the credit reverses `U` first: `rest = U + credit`. If `rest >= 0`, `rest` is spread
///   over those same days by the ratable cumulative rule (`round(rest × i / k)` after the
///   `i`-th of the `k` days); revenue already recognized is untouched;
/// - if the credit exceeds `U` (`rest < 0`), those days become zero and the excess `rest`
///   is recognized on `credit_date` as a negative amount, reversing recognized revenue.
///
/// Returns the adjusted remaining schedule: one entry per original day on or after
/// `credit_date`, plus the credit date if it is not one of them and carries an excess (or if
/// no day remains), in date order. It sums to `U + credit`.
pub fn apply_credit(
    original: &[(Date, Decimal)],
    credit: Decimal,
    credit_date: Date,
    currency: Currency,
) -> Vec<(Date, Decimal)> {
    let remaining: Vec<Date> =
        original.iter().map(|(d, _)| *d).filter(|d| *d >= credit_date).collect();
    let unrecognized: i128 = unrecognized_minor(original, credit_date, currency);
    let rest = unrecognized + to_minor(credit, currency);
    if remaining.is_empty() {
        return vec![(credit_date, from_minor(rest, currency))];
    }
    let spread = rest.max(0);
    let mut adjusted: Vec<(Date, i128)> =
        remaining.iter().copied().zip(ratable_minor(spread, remaining.len())).collect();
    add_on(&mut adjusted, credit_date, rest.min(0));
    adjusted.into_iter().map(|(d, a)| (d, from_minor(a, currency))).collect()
}

/// The credit's own schedule against `original`: the adjusted remaining schedule of
/// [`apply_credit`] minus the original entries on those days, per date (negative amounts
/// reverse revenue; days with no change are omitted). It sums exactly to `credit`; adding it
/// to `original` gives the adjusted schedule.
pub fn credit_reversal(
    original: &[(Date, Decimal)],
    credit: Decimal,
    credit_date: Date,
    currency: Currency,
) -> Vec<(Date, Decimal)> {
    let mut delta: Vec<(Date, i128)> = Vec::new();
    for (d, a) in apply_credit(original, credit, credit_date, currency) {
        add_on(&mut delta, d, to_minor(a, currency));
    }
    for (d, a) in original.iter().filter(|(d, _)| *d >= credit_date) {
        add_on(&mut delta, *d, -to_minor(*a, currency));
    }
    delta.into_iter().filter(|(_, a)| *a != 0).map(|(d, a)| (d, from_minor(a, currency))).collect()
}

/// Σ of the `original` entries dated on or after `credit_date`, in minor units.
fn unrecognized_minor(original: &[(Date, Decimal)], credit_date: Date, currency: Currency) -> i128 {
    original.iter().filter(|(d, _)| *d >= credit_date).map(|(_, a)| to_minor(*a, currency)).sum()
}

/// Adds `amount` to the entry dated `day`, inserting it in date order if absent (a zero
/// amount is only added to an existing entry).
fn add_on(entries: &mut Vec<(Date, i128)>, day: Date, amount: i128) {
    match entries.binary_search_by_key(&day, |(d, _)| *d) {
        Ok(i) => entries[i].1 += amount,
        Err(_) if amount == 0 => {}
        Err(i) => entries.insert(i, (day, amount)),
    }
}

/// The last day of `p` (`start` for an empty period).
fn last_day(p: Period) -> Date {
    if p.end <= p.start {
        return p.start;
    }
    p.end.yesterday().expect("the day before a period end is in range")
}

/// `n` consecutive days from `start`.
fn days(start: Date, n: usize) -> impl Iterator<Item = Date> {
    start.series(1.day()).take(n)
}

/// `amount` rounded to the currency, as a count of minor units.
fn to_minor(amount: Decimal, currency: Currency) -> i128 {
    let units = currency.minor_units();
    let rounded = currency.round(amount);
    rounded.mantissa() * 10i128.pow(units - rounded.scale().min(units))
}

/// A count of minor units as a `Decimal` with the currency's scale.
fn from_minor(minor: i128, currency: Currency) -> Decimal {
    Decimal::try_from_i128_with_scale(minor, currency.minor_units())
        .expect("minor-unit amounts stay within Decimal range")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoice::{build_invoice, InvoiceHeader, IssueReason, LineDraft};
    use jiff::civil::date;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn cur(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    fn d(s: &str) -> Date {
        s.parse().unwrap()
    }

    fn p(start: &str, end: &str) -> Period {
        Period { start: d(start), end: d(end) }
    }

    fn amounts(entries: &[(Date, Decimal)]) -> Vec<Decimal> {
        entries.iter().map(|(_, a)| *a).collect()
    }

    fn sum(entries: &[(Date, Decimal)]) -> Decimal {
        entries.iter().map(|(_, a)| *a).sum()
    }

    /// Checks one entry per day from `period.start`, the exact sum and the cumulative rule
    /// against a plain `Decimal` computation of round(amount × d / n).
    fn assert_ratable(amount: Decimal, c: Currency, period: Period, got: &[(Date, Decimal)]) {
        let n = period.days();
        assert_eq!(got.len(), n as usize, "{amount} {c} {period:?}");
        let mut cum = Decimal::ZERO;
        for (i, (day, a)) in got.iter().enumerate() {
            let days_done = i as i64 + 1;
            assert_eq!(*day, period.start.checked_add((i as i64).days()).unwrap());
            cum += *a;
            let want = c.round(amount * Decimal::from(days_done) / Decimal::from(n));
            assert_eq!(cum, want, "{amount} {c} cumulative after day {days_done}");
        }
        assert_eq!(cum, amount);
    }

    #[test]
    fn ratable_table() {
        // (currency, amount, period, first daily amounts)
        let table = [
            (
                "USD",
                dec!(30.00),
                p("2024-01-01", "2024-02-01"),
                vec![dec!(0.97), dec!(0.97), dec!(0.96)],
            ),
            (
                "USD",
                dec!(100.00),
                p("2024-01-01", "2024-01-04"),
                vec![dec!(33.33), dec!(33.34), dec!(33.33)],
            ),
            (
                "USD",
                dec!(-100.00),
                p("2024-01-01", "2024-01-04"),
                vec![dec!(-33.33), dec!(-33.34), dec!(-33.33)],
            ),
            (
                "JPY",
                dec!(1000),
                p("2024-01-01", "2024-01-04"),
                vec![dec!(333), dec!(334), dec!(333)],
            ),
            ("JPY", dec!(31), p("2024-01-01", "2024-02-01"), vec![dec!(1); 31]),
            (
                "KWD",
                dec!(10.000),
                p("2024-01-01", "2024-01-04"),
                vec![dec!(3.333), dec!(3.334), dec!(3.333)],
            ),
            ("KWD", dec!(0.001), p("2024-03-01", "2024-04-01"), vec![dec!(0); 15]),
            // Leap-year February: 29 days.
            ("USD", dec!(29.00), p("2024-02-01", "2024-03-01"), vec![dec!(1.00); 29]),
            (
                "USD",
                dec!(10.00),
                p("2024-02-01", "2024-03-01"),
                vec![dec!(0.34), dec!(0.35), dec!(0.34)],
            ),
            ("EUR", dec!(12.34), p("2024-02-29", "2024-03-01"), vec![dec!(12.34)]),
            ("USD", dec!(0), p("2024-01-01", "2024-02-01"), vec![dec!(0); 31]),
            // Midpoint: round(0.5 cent) = 1 cent on day 1, half away from zero.
            ("USD", dec!(0.01), p("2024-01-01", "2024-01-03"), vec![dec!(0.01), dec!(0.00)]),
            ("USD", dec!(-0.01), p("2024-01-01", "2024-01-03"), vec![dec!(-0.01), dec!(0.00)]),
        ];
        for (code, amount, period, prefix) in table {
            let got = ratable_schedule(amount, cur(code), period);
            assert_ratable(amount, cur(code), period, &got);
            assert_eq!(amounts(&got)[..prefix.len()], prefix[..], "{code} {amount} {period:?}");
        }
    }

    #[test]
    fn ratable_30_over_31_days_in_full() {
        let got = ratable_schedule(dec!(30.00), cur("USD"), p("2024-01-01", "2024-02-01"));
        let cents: Vec<i64> =
            amounts(&got).iter().map(|a| (a * dec!(100)).try_into().unwrap()).collect();
        // 3000 cents = 31 × 96 + 24: 24 days of 97 cents and 7 of 96, in the cumulative
        // pattern round(3000·d/31) (computed independently).
        let cumulative = |d: i64| (2 * 3000 * d + 31) / 62;
        let want: Vec<i64> = (1..=31).map(|d| cumulative(d) - cumulative(d - 1)).collect();
        assert_eq!(cents, want);
        assert_eq!(cents.iter().filter(|c| **c == 97).count(), 24);
        assert_eq!(cents.iter().filter(|c| **c == 96).count(), 7);
        assert_eq!(cents.iter().sum::<i64>(), 3000);
        assert_eq!(sum(&got[..15]), dec!(14.52));
    }

    #[test]
    fn empty_period_recognizes_everything_on_its_start() {
        for period in [p("2024-01-05", "2024-01-05"), p("2024-01-05", "2024-01-01")] {
            let got = ratable_schedule(dec!(9.999), cur("USD"), period);
            assert_eq!(got, vec![(d("2024-01-05"), dec!(10.00))]);
            assert_eq!(
                usage_schedule(period, &[], dec!(3), cur("USD")),
                vec![(d("2024-01-05"), dec!(3))]
            );
        }
    }

    #[test]
    fn usage_table() {
        let period = p("2024-01-01", "2024-01-05");
        // (currency, cumulative rated amounts, invoiced, expected daily amounts Jan 1..4)
        type Row = (&'static str, Vec<(&'static str, Decimal)>, Decimal, [Decimal; 4]);
        let table: Vec<Row> = vec![
            // Rounded increases; the last day carries its increase and the true-up.
            (
                "USD",
                vec![
                    ("2024-01-01", dec!(1.004)),
                    ("2024-01-02", dec!(2.505)),
                    ("2024-01-03", dec!(2.505)),
                ],
                dec!(3.00),
                [dec!(1.00), dec!(1.51), dec!(0.00), dec!(0.49)],
            ),
            // A decrease (volume tier, `latest`) is a negative day.
            (
                "USD",
                vec![("2024-01-01", dec!(5)), ("2024-01-02", dec!(3))],
                dec!(3.00),
                [dec!(5.00), dec!(-2.00), dec!(0.00), dec!(0.00)],
            ),
            // Sparse, unsorted, duplicate dates (the later entry wins).
            (
                "USD",
                vec![("2024-01-03", dec!(2)), ("2024-01-01", dec!(1)), ("2024-01-03", dec!(2.5))],
                dec!(2.50),
                [dec!(1.00), dec!(0.00), dec!(1.50), dec!(0.00)],
            ),
            // Nothing consumed before the end: all on the last day.
            ("USD", vec![], dec!(7.00), [dec!(0), dec!(0), dec!(0), dec!(7.00)]),
            // Before the period counts from day one; after the period is ignored.
            (
                "USD",
                vec![("2023-12-31", dec!(1)), ("2024-01-10", dec!(99))],
                dec!(1.00),
                [dec!(1.00), dec!(0), dec!(0), dec!(0)],
            ),
            // The invoice may differ from the running rating (plan of the last day).
            (
                "USD",
                vec![("2024-01-01", dec!(4)), ("2024-01-04", dec!(8))],
                dec!(6.00),
                [dec!(4.00), dec!(0), dec!(0), dec!(2.00)],
            ),
            (
                "JPY",
                vec![("2024-01-01", dec!(0.5)), ("2024-01-02", dec!(1.49))],
                dec!(2),
                [dec!(1), dec!(0), dec!(0), dec!(1)],
            ),
            (
                "KWD",
                vec![("2024-01-02", dec!(0.0005)), ("2024-01-03", dec!(0.0014))],
                dec!(0.002),
                [dec!(0), dec!(0.001), dec!(0.000), dec!(0.001)],
            ),
        ];
        for (code, points, invoiced, want) in table {
            let points: Vec<(Date, Decimal)> = points.into_iter().map(|(s, a)| (d(s), a)).collect();
            let got = usage_schedule(period, &points, invoiced, cur(code));
            assert_eq!(amounts(&got), want.to_vec(), "{code} {points:?}");
            assert_eq!(got.first().unwrap().0, period.start);
            assert_eq!(got.last().unwrap().0, d("2024-01-04"));
            assert_eq!(sum(&got), invoiced);
        }
        let one_day = usage_schedule(
            p("2024-01-01", "2024-01-02"),
            &[(d("2024-01-01"), dec!(4.2))],
            dec!(4.20),
            cur("USD"),
        );
        assert_eq!(one_day, vec![(d("2024-01-01"), dec!(4.20))]);
    }

    fn line(kind: LineKind, amount: Decimal, period: Period) -> InvoiceLine {
        InvoiceLine {
            kind,
            description: "x".into(),
            metric_code: None,
            charge_model: None,
            units: None,
            service_period: period,
            amount,
            discount: Decimal::ZERO,
        }
    }

    #[test]
    fn schedule_for_line_table() {
        let jan = p("2024-01-01", "2024-02-01");
        let usd = cur("USD");
        // (kind, amount, revenue type, entry count, first entry, last entry)
        type Row = (
            LineKind,
            Decimal,
            RevenueType,
            usize,
            (&'static str, Decimal),
            (&'static str, Decimal),
        );
        let table: [Row; 5] = [
            (
                LineKind::BaseFee,
                dec!(30.00),
                RevenueType::Subscription,
                31,
                ("2024-01-01", dec!(0.97)),
                ("2024-01-31", dec!(0.97)),
            ),
            (
                LineKind::MinimumCommitmentTrueUp,
                dec!(12.50),
                RevenueType::TrueUp,
                1,
                ("2024-01-31", dec!(12.50)),
                ("2024-01-31", dec!(12.50)),
            ),
            (
                LineKind::UsageInAdvance,
                dec!(5.00),
                RevenueType::Usage,
                1,
                ("2024-01-01", dec!(5.00)),
                ("2024-01-01", dec!(5.00)),
            ),
            (
                LineKind::Usage,
                dec!(8.00),
                RevenueType::Usage,
                31,
                ("2024-01-01", dec!(0)),
                ("2024-01-31", dec!(8.00)),
            ),
            (
                LineKind::Credit,
                dec!(-15.48),
                RevenueType::Credit,
                31,
                ("2024-01-01", dec!(-0.50)),
                ("2024-01-31", dec!(-0.50)),
            ),
        ];
        for (kind, amount, revenue, count, first, last) in table {
            let s = schedule_for_line(&line(kind, amount, jan), usd);
            assert_eq!(s.revenue_type, revenue, "{kind:?}");
            assert_eq!(s.entries.len(), count, "{kind:?}");
            assert_eq!(s.entries[0], (d(first.0), first.1), "{kind:?}");
            assert_eq!(*s.entries.last().unwrap(), (d(last.0), last.1), "{kind:?}");
            assert_eq!(s.total(), amount, "{kind:?}");
        }
        let base = schedule_for_line(&line(LineKind::BaseFee, dec!(30.00), jan), usd);
        assert_eq!(base.recognized_through(d("2023-12-31")), dec!(0));
        assert_eq!(base.recognized_through(d("2024-01-15")), dec!(14.52));
        assert_eq!(base.recognized_through(d("2024-03-01")), dec!(30.00));
    }

    #[test]
    fn in_advance_usage_on_the_event_day_clamped_into_service() {
        let l = line(LineKind::UsageInAdvance, dec!(2.50), p("2024-01-01", "2024-02-01"));
        for (event, want) in [
            ("2024-01-20", "2024-01-20"),
            ("2023-12-31", "2024-01-01"),
            ("2024-02-03", "2024-01-31"),
        ] {
            let s = in_advance_usage_schedule(&l, cur("USD"), d(event));
            assert_eq!(s.entries, vec![(d(want), dec!(2.50))], "{event}");
            assert_eq!(s.revenue_type, RevenueType::Usage);
        }
    }

    #[test]
    fn revenue_types_and_tax_is_never_revenue() {
        let cases = [
            (LineKind::BaseFee, "subscription"),
            (LineKind::Usage, "usage"),
            (LineKind::UsageInAdvance, "usage"),
            (LineKind::MinimumCommitmentTrueUp, "true_up"),
            (LineKind::Credit, "credit"),
        ];
        for (kind, name) in cases {
            assert_eq!(revenue_type(kind).as_str(), name);
        }
        // A 10 % tax: the schedules of the lines sum to the subtotal, never the total.
        let jan = p("2024-01-01", "2024-02-01");
        let draft = |kind, unrounded| LineDraft {
            kind,
            description: "x".into(),
            metric_code: None,
            charge_model: None,
            units: None,
            service_period: jan,
            unrounded,
        };
        let header = InvoiceHeader {
            invoice_id: "inv-1".into(),
            customer_id: "c".into(),
            subscription_id: "s".into(),
            currency: cur("USD"),
            period: jan,
            issued_at: jiff::Timestamp::UNIX_EPOCH,
            reason: IssueReason::PeriodClose,
            tax_rate: dec!(10),
        };
        let inv = build_invoice(
            header,
            vec![draft(LineKind::BaseFee, dec!(30)), draft(LineKind::Usage, dec!(12.345))],
        )
        .unwrap();
        let recognized: Decimal =
            inv.lines.iter().map(|l| schedule_for_line(l, inv.currency).total()).sum();
        assert_eq!(recognized, inv.subtotal);
        assert_eq!((inv.subtotal, inv.tax, inv.total), (dec!(42.35), dec!(4.24), dec!(46.59)));
    }

    fn jan_30() -> Vec<(Date, Decimal)> {
        ratable_schedule(dec!(30.00), cur("USD"), p("2024-01-01", "2024-02-01"))
    }

    #[test]
    fn spec_upgrade_credit_reverses_exactly_the_unrecognized_days() {
        // SPEC §4: Jan 1–31 at 30.00, upgraded Jan 16: credit 16/31 × 30.00 = −15.48.
        let usd = cur("USD");
        let original = jan_30();
        assert_eq!(sum(&original[15..]), dec!(15.48));
        let adjusted = apply_credit(&original, dec!(-15.48), d("2024-01-16"), usd);
        assert_eq!(adjusted.len(), 16);
        assert_eq!(adjusted[0].0, d("2024-01-16"));
        assert!(adjusted.iter().all(|(_, a)| a.is_zero()));
        let reversal = credit_reversal(&original, dec!(-15.48), d("2024-01-16"), usd);
        let negated: Vec<(Date, Decimal)> = original[15..].iter().map(|(d, a)| (*d, -*a)).collect();
        assert_eq!(reversal, negated);
        assert_eq!(sum(&reversal), dec!(-15.48));
        // Recognized through Jan 15 is untouched: 14.52 of the old plan in the books.
        assert_eq!(sum(&original[..15]) + sum(&adjusted), dec!(14.52));
    }

    #[test]
    fn credit_table() {
        let usd = cur("USD");
        // (credit, credit date, adjusted remaining: (date, amount) of the non-zero entries,
        //  number of entries)
        type Row = (Decimal, &'static str, Vec<(&'static str, Decimal)>, usize);
        let table: Vec<Row> = vec![
            // Larger than the unrecognized 15.48: the excess 4.52 reverses recognized revenue
            // on the credit date.
            (dec!(-20.00), "2024-01-16", vec![("2024-01-16", dec!(-4.52))], 16),
            // Smaller: the remaining 5.48 is re-spread over Jan 16–31 by the cumulative rule
            // (round(548·i/16) cents: 34, 69, 103, 137...).
            (
                dec!(-10.00),
                "2024-01-16",
                vec![
                    ("2024-01-16", dec!(0.34)),
                    ("2024-01-17", dec!(0.35)),
                    ("2024-01-18", dec!(0.34)),
                ],
                16,
            ),
            // After the schedule: everything was recognized, all is a reversal that day.
            (dec!(-5.00), "2024-02-05", vec![("2024-02-05", dec!(-5.00))], 1),
            // Before the schedule: all 30.00 unrecognized, excess 10.00 on the credit date.
            (dec!(-40.00), "2023-12-20", vec![("2023-12-20", dec!(-10.00))], 32),
            // On the last day: 0.97 unrecognized.
            (dec!(-1.00), "2024-01-31", vec![("2024-01-31", dec!(-0.03))], 1),
            (dec!(0), "2024-01-31", vec![("2024-01-31", dec!(0.97))], 1),
        ];
        let original = jan_30();
        for (credit, date, nonzero, count) in table {
            let adjusted = apply_credit(&original, credit, d(date), usd);
            assert_eq!(adjusted.len(), count, "{credit} {date}");
            let got: Vec<(Date, Decimal)> =
                adjusted.iter().copied().filter(|(_, a)| !a.is_zero()).collect();
            let want: Vec<(Date, Decimal)> = nonzero.iter().map(|(s, a)| (d(s), *a)).collect();
            assert_eq!(got[..want.len()], want[..], "{credit} {date}");
            assert!(adjusted.windows(2).all(|w| w[0].0 < w[1].0));
            let unrecognized: Decimal =
                original.iter().filter(|(x, _)| *x >= d(date)).map(|(_, a)| *a).sum();
            assert_eq!(sum(&adjusted), unrecognized + credit, "{credit} {date}");
            assert_eq!(sum(&credit_reversal(&original, credit, d(date), usd)), credit);
        }
    }

    #[test]
    fn credit_above_unrecognized_by_a_rounding_cent() {
        // 0.01 over 2 days is [0.01, 0.00]; the credit for day 2 is round(0.005) = 0.01,
        // one cent more than the unrecognized 0.00: it reverses recognized revenue.
        let usd = cur("USD");
        let original = ratable_schedule(dec!(0.01), usd, p("2024-01-01", "2024-01-03"));
        let adjusted = apply_credit(&original, dec!(-0.01), d("2024-01-02"), usd);
        assert_eq!(adjusted, vec![(d("2024-01-02"), dec!(-0.01))]);
    }

    fn any_currency() -> impl Strategy<Value = Currency> {
        prop::sample::select(vec!["USD", "JPY", "KWD", "EUR"]).prop_map(cur)
    }

    fn any_amount(c: Currency) -> impl Strategy<Value = Decimal> {
        (-1_000_000_000_000i64..1_000_000_000_000)
            .prop_map(move |m| Decimal::new(m, c.minor_units()))
    }

    fn any_period() -> impl Strategy<Value = Period> {
        (0i64..50_000, 1i64..=400).prop_map(|(s, n)| {
            let start = date(2000, 1, 1).checked_add(s.days()).unwrap();
            Period { start, end: start.checked_add(n.days()).unwrap() }
        })
    }

    proptest! {
        #[test]
        fn ratable_sums_exactly_and_follows_the_cumulative_rule(
            (c, amount) in any_currency().prop_flat_map(|c| (Just(c), any_amount(c))),
            period in any_period(),
        ) {
            let got = ratable_schedule(amount, c, period);
            assert_ratable(amount, c, period, &got);
        }

        #[test]
        fn credit_reversal_sums_to_the_credit(
            amount in 0i64..10_000_000,
            credit in -20_000_000i64..=0,
            period in any_period(),
            offset in -5i64..410,
        ) {
            let usd = cur("USD");
            let original = ratable_schedule(Decimal::new(amount, 2), usd, period);
            let when = period.start.checked_add(offset.days()).unwrap();
            let credit = Decimal::new(credit, 2);
            let adjusted = apply_credit(&original, credit, when, usd);
            let reversal = credit_reversal(&original, credit, when, usd);
            prop_assert_eq!(sum(&reversal), credit);
            let before: Decimal = original.iter().filter(|(x, _)| *x < when).map(|(_, a)| *a).sum();
            prop_assert_eq!(before + sum(&adjusted), Decimal::new(amount, 2) + credit);
            // Only the credit date may go negative; days after it never do.
            prop_assert!(adjusted.iter().all(|(x, a)| *x == when || !a.is_sign_negative() || a.is_zero()));
        }

        #[test]
        fn usage_sums_to_the_invoice(
            points in prop::collection::vec((0i64..40, -100_000i64..100_000), 0..20),
            invoiced in -100_000i64..100_000,
        ) {
            let period = p("2024-01-01", "2024-02-01");
            let points: Vec<(Date, Decimal)> = points
                .into_iter()
                .map(|(o, a)| (period.start.checked_add(o.days()).unwrap(), Decimal::new(a, 3)))
                .collect();
            let got = usage_schedule(period, &points, Decimal::new(invoiced, 2), cur("USD"));
            prop_assert_eq!(got.len(), 31);
            prop_assert_eq!(sum(&got), Decimal::new(invoiced, 2));
        }
    }
}
