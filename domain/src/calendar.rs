//! Billing calendars (SPEC §4): plan intervals, billing anchors, the periods of a
//! subscription as local dates, local midnights in a customer's time zone, and proration
//! by whole local days.
//!
//! Periods are half-open `[start, end)` ranges of *local dates*; their instants are the local
//! midnights of those dates in the customer's IANA time zone. Day counts never depend on the
//! time zone, so a DST change alters a period's length in hours but not in days.

use jiff::{
    civil::{Date, Time, Weekday},
    tz::TimeZone,
    Timestamp, ToSpan,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// Message of the panics raised when a boundary falls outside jiff's supported years
/// (-9999..=9999); callers validate start dates long before that can happen.
const OUT_OF_RANGE: &str = "billing date outside the supported calendar range";

/// How often a plan bills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    Weekly,
    Monthly,
    Quarterly,
    Semiannual,
    Yearly,
}

impl Interval {
    /// Every interval, shortest first.
    pub const ALL: [Interval; 5] = [
        Interval::Weekly,
        Interval::Monthly,
        Interval::Quarterly,
        Interval::Semiannual,
        Interval::Yearly,
    ];

    /// Parses the wire name (`weekly`, `monthly`, `quarterly`, `semiannual`, `yearly`).
    pub fn parse(s: &str) -> Result<Interval, DomainError> {
        Interval::ALL.into_iter().find(|i| i.as_str() == s).ok_or_else(|| {
            DomainError::invalid(
                "interval",
                format!("{s:?} is not one of weekly, monthly, quarterly, semiannual, yearly"),
            )
        })
    }

    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Interval::Weekly => "weekly",
            Interval::Monthly => "monthly",
            Interval::Quarterly => "quarterly",
            Interval::Semiannual => "semiannual",
            Interval::Yearly => "yearly",
        }
    }

    /// Factor that normalizes one period's fee to a month for MRR, as an exact ratio
    /// `(numerator, denominator)` so callers divide once: weekly 52/12, monthly 1/1,
    /// quarterly 1/3, semiannual 1/6, yearly 1/12.
    pub fn monthly_ratio(&self) -> (Decimal, Decimal) {
        let (n, d) = match self {
            Interval::Weekly => (52, 12),
            Interval::Monthly => (1, 1),
            Interval::Quarterly => (1, 3),
            Interval::Semiannual => (1, 6),
            Interval::Yearly => (1, 12),
        };
        (Decimal::from(n), Decimal::from(d))
    }

    /// Length in calendar months, or `None` for `Weekly` (7 days).
    pub fn months(&self) -> Option<i64> {
        match self {
            Interval::Weekly => None,
            Interval::Monthly => Some(1),
            Interval::Quarterly => Some(3),
            Interval::Semiannual => Some(6),
            Interval::Yearly => Some(12),
        }
    }
}

/// Where a subscription's periods start (SPEC §4 "Billing anchor").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    /// Periods start on the subscription's start day; a missing day clamps to the month's end.
    Anniversary,
    /// Periods start on calendar boundaries (1st of the month / quarter / half / year, or
    /// ISO Monday); the first period runs from the start date to the next boundary.
    Calendar,
}

impl Anchor {
    /// Parses the wire name (`anniversary`, `calendar`).
    pub fn parse(s: &str) -> Result<Anchor, DomainError> {
        match s {
            "anniversary" => Ok(Anchor::Anniversary),
            "calendar" => Ok(Anchor::Calendar),
            _ => Err(DomainError::invalid(
                "anchor",
                format!("{s:?} is not one of anniversary, calendar"),
            )),
        }
    }

    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Anchor::Anniversary => "anniversary",
            Anchor::Calendar => "calendar",
        }
    }
}

/// A billing period as local dates, half-open `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Period {
    pub start: Date,
    pub end: Date,
}

impl Period {
    /// The last day of the period (its start for an empty one): the day whose plan rates the
    /// period's usage.
    pub fn last_day(&self) -> Date {
        self.end.yesterday().unwrap_or(self.end).max(self.start)
    }

    /// Whole local days in the period (independent of DST).
    pub fn days(&self) -> i32 {
        days_between(self.start, self.end)
    }

    /// Whether `d` lies in `[start, end)`.
    pub fn contains(&self, d: Date) -> bool {
        self.start <= d && d < self.end
    }

    /// The first instant of the period: local midnight of `start` in `tz`.
    pub fn start_instant(&self, tz: &TimeZone) -> Timestamp {
        local_midnight(self.start, tz)
    }

    /// The instant the period ends (exclusive): local midnight of `end` in `tz`.
    pub fn end_instant(&self, tz: &TimeZone) -> Timestamp {
        local_midnight(self.end, tz)
    }
}

/// The schedule of a subscription's periods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cycle {
    pub interval: Interval,
    pub anchor: Anchor,
    pub start_date: Date,
}

impl Cycle {
    /// The period that starts at `start_date` (shorter than a full one for a calendar anchor
    /// whose start date is not a boundary).
    pub fn first(&self) -> Period {
        self.period_containing(self.start_date).expect("start_date is in the cycle")
    }

    /// The period starting at `p.end`. `p` is expected to be a period of this cycle; for any
    /// other `p` this is the cycle's period containing `p.end` (or the first period when
    /// `p.end` precedes the start date).
    pub fn next(&self, p: &Period) -> Period {
        self.period_containing(p.end).unwrap_or_else(|| self.first())
    }

    /// The period containing `d`, or `None` if `d` precedes `start_date`. Computed in O(1)
    /// from the period index, never by walking the periods.
    pub fn period_containing(&self, d: Date) -> Option<Period> {
        if d < self.start_date {
            return None;
        }
        Some(match self.anchor {
            Anchor::Anniversary => self.anniversary_period(d),
            Anchor::Calendar => self.calendar_period(d),
        })
    }

    /// Anniversary period containing `d >= start_date`: period `k` starts at
    /// `start_date + k × interval`, each computed from `start_date` (clamped, not chained).
    fn anniversary_period(&self, d: Date) -> Period {
        let start = self.start_date;
        let Some(n) = self.interval.months() else {
            let k = i64::from(days_between(start, d)) / 7;
            return Period { start: add_days(start, 7 * k), end: add_days(start, 7 * (k + 1)) };
        };
        let mut k = (month_index(d) - month_index(start)) / n;
        if add_months_clamped(start, k * n) > d {
            k -= 1;
        }
        Period {
            start: add_months_clamped(start, k * n),
            end: add_months_clamped(start, (k + 1) * n),
        }
    }

    /// Calendar period containing `d >= start_date`: the (possibly short) first period up to
    /// the first boundary, then whole periods between aligned boundaries.
    fn calendar_period(&self, d: Date) -> Period {
        let boundary = calendar_boundary_on_or_after(self.interval, self.start_date);
        if d < boundary {
            return Period { start: self.start_date, end: boundary };
        }
        let Some(n) = self.interval.months() else {
            let k = i64::from(days_between(boundary, d)) / 7;
            return Period {
                start: add_days(boundary, 7 * k),
                end: add_days(boundary, 7 * (k + 1)),
            };
        };
        let first = month_index(d).div_euclid(n) * n;
        Period { start: first_of_month(first), end: first_of_month(first + n) }
    }
}

/// The first calendar boundary of `interval` on or after `d` (`d` itself if it is one).
pub fn calendar_boundary_on_or_after(interval: Interval, d: Date) -> Date {
    let Some(n) = interval.months() else {
        let from_monday = i64::from(d.weekday().to_monday_zero_offset());
        return if from_monday == 0 { d } else { add_days(d, 7 - from_monday) };
    };
    let mi = month_index(d);
    if d.day() == 1 && mi.rem_euclid(n) == 0 {
        d
    } else {
        first_of_month((mi.div_euclid(n) + 1) * n)
    }
}

/// Whether `d` is a calendar boundary of `interval` (a Monday for weekly).
pub fn is_calendar_boundary(interval: Interval, d: Date) -> bool {
    match interval.months() {
        None => d.weekday() == Weekday::Monday,
        Some(_) => calendar_boundary_on_or_after(interval, d) == d,
    }
}

/// Months since year 0: `year × 12 + (month − 1)`.
fn month_index(d: Date) -> i64 {
    i64::from(d.year()) * 12 + i64::from(d.month()) - 1
}

/// The date in month `index` (see [`month_index`]) on `day`, clamped to the month's last day.
fn date_in_month(index: i64, day: i8) -> Date {
    let year = i16::try_from(index.div_euclid(12)).expect(OUT_OF_RANGE);
    let month = i8::try_from(index.rem_euclid(12) + 1).expect("month in 1..=12");
    let first = Date::new(year, month, 1).expect(OUT_OF_RANGE);
    let day = day.min(first.days_in_month());
    Date::new(year, month, day).expect("clamped day is valid")
}

/// The 1st of month `index` (see [`month_index`]).
fn first_of_month(index: i64) -> Date {
    date_in_month(index, 1)
}

/// `d + months`, clamping a missing day to the month's last day (Jan 31 + 1 → Feb 28/29).
fn add_months_clamped(d: Date, months: i64) -> Date {
    date_in_month(month_index(d) + months, d.day())
}

/// `d + days`.
fn add_days(d: Date, days: i64) -> Date {
    d.checked_add(days.days()).expect(OUT_OF_RANGE)
}

/// The local date of instant `ts` in `tz`.
pub fn local_date(ts: Timestamp, tz: &TimeZone) -> Date {
    tz.to_datetime(ts).date()
}

/// The first instant of local day `d` in `tz`. Midnight normally; when a DST gap swallows
/// midnight, the first valid instant after it (jiff's start-of-day semantics, i.e. the
/// "compatible" disambiguation of `d`T00:00).
pub fn local_midnight(d: Date, tz: &TimeZone) -> Timestamp {
    tz.to_ambiguous_timestamp(d.to_datetime(Time::midnight())).compatible().expect(OUT_OF_RANGE)
}

/// Resolves an IANA time zone name (e.g. `Europe/Berlin`, `UTC`) from the bundled tzdb.
pub fn parse_time_zone(name: &str) -> Result<TimeZone, DomainError> {
    TimeZone::get(name).map_err(|_| {
        DomainError::invalid("time_zone", format!("{name:?} is not an IANA time zone name"))
    })
}

/// `b − a` in whole days (negative when `b` precedes `a`).
pub fn days_between(a: Date, b: Date) -> i32 {
    (b - a).get_days()
}

/// Unrounded proration: `amount × days / days_in_period` (SPEC §4: amount × days used / days in
/// the period), or `None` when `amount × days` overflows `Decimal` (only for amounts far beyond
/// the input bounds). Panics unless `days_in_period > 0` and `0 <= days <= days_in_period`
/// (day counts come from the calendar: a violation is a bug).
pub fn prorate(amount: Decimal, days: i32, days_in_period: i32) -> Option<Decimal> {
    assert!(days_in_period > 0, "days_in_period must be positive, got {days_in_period}");
    assert!(
        (0..=days_in_period).contains(&days),
        "days ({days}) must be within 0..={days_in_period}"
    );
    if days == days_in_period {
        return Some(amount);
    }
    amount.checked_mul(Decimal::from(days))?.checked_div(Decimal::from(days_in_period))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use proptest::prelude::*;
    use rust_decimal::RoundingStrategy;
    use rust_decimal_macros::dec;

    fn d(s: &str) -> Date {
        s.parse().unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn tz(name: &str) -> TimeZone {
        parse_time_zone(name).unwrap()
    }

    fn cycle(interval: Interval, anchor: Anchor, start: &str) -> Cycle {
        Cycle { interval, anchor, start_date: d(start) }
    }

    fn p(start: &str, end: &str) -> Period {
        Period { start: d(start), end: d(end) }
    }

    /// The first `n` periods, chained with `next`.
    fn periods(c: &Cycle, n: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut cur = c.first();
        for _ in 0..n {
            out.push((cur.start.to_string(), cur.end.to_string()));
            cur = c.next(&cur);
        }
        out
    }

    fn assert_periods(c: &Cycle, expected: &[&str]) {
        let got = periods(c, expected.len() - 1);
        let want: Vec<_> =
            expected.windows(2).map(|w| (w[0].to_string(), w[1].to_string())).collect();
        assert_eq!(got, want, "{c:?}");
    }

    #[test]
    fn interval_and_anchor_names_round_trip() {
        for i in Interval::ALL {
            assert_eq!(Interval::parse(i.as_str()).unwrap(), i);
            let json = serde_json::to_string(&i).unwrap();
            assert_eq!(json, format!("\"{}\"", i.as_str()));
        }
        for a in [Anchor::Anniversary, Anchor::Calendar] {
            assert_eq!(Anchor::parse(a.as_str()).unwrap(), a);
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{}\"", a.as_str()));
        }
        for (bad, field) in [("Monthly", "interval"), ("daily", "interval"), ("", "interval")] {
            let DomainError::Invalid(v) = Interval::parse(bad).unwrap_err() else { panic!() };
            assert_eq!(v[0].field, field);
        }
        let DomainError::Invalid(v) = Anchor::parse("fixed").unwrap_err() else { panic!() };
        assert_eq!(v[0].field, "anchor");
    }

    #[test]
    fn monthly_ratios() {
        let table = [
            (Interval::Weekly, dec!(52), dec!(12)),
            (Interval::Monthly, dec!(1), dec!(1)),
            (Interval::Quarterly, dec!(1), dec!(3)),
            (Interval::Semiannual, dec!(1), dec!(6)),
            (Interval::Yearly, dec!(1), dec!(12)),
        ];
        for (i, n, dd) in table {
            assert_eq!(i.monthly_ratio(), (n, dd), "{i:?}");
        }
        let (n, dd) = Interval::Weekly.monthly_ratio();
        assert_eq!((dec!(12.00) * n / dd).round_dp(2), dec!(52.00));
    }

    #[test]
    fn anniversary_periods_every_interval() {
        use Interval::*;
        let table: &[(Interval, &str, &[&str])] = &[
            (Weekly, "2024-02-26", &["2024-02-26", "2024-03-04", "2024-03-11", "2024-03-18"]),
            (Weekly, "2024-12-31", &["2024-12-31", "2025-01-07", "2025-01-14"]),
            (Monthly, "2024-01-15", &["2024-01-15", "2024-02-15", "2024-03-15", "2024-04-15"]),
            (Quarterly, "2024-02-10", &["2024-02-10", "2024-05-10", "2024-08-10", "2024-11-10"]),
            (Quarterly, "2023-11-30", &["2023-11-30", "2024-02-29", "2024-05-30", "2024-08-30"]),
            (Semiannual, "2024-03-31", &["2024-03-31", "2024-09-30", "2025-03-31", "2025-09-30"]),
            (Semiannual, "2024-08-31", &["2024-08-31", "2025-02-28", "2025-08-31", "2026-02-28"]),
            (Yearly, "2024-06-01", &["2024-06-01", "2025-06-01", "2026-06-01"]),
        ];
        for (interval, start, expected) in table {
            assert_periods(&cycle(*interval, Anchor::Anniversary, start), expected);
        }
    }

    #[test]
    fn anniversary_month_end_clamping() {
        use Interval::*;
        let table: &[(Interval, &str, &[&str])] = &[
            // Jan 31: clamps each month, computed from the start day (not chained).
            (
                Monthly,
                "2023-01-31",
                &["2023-01-31", "2023-02-28", "2023-03-31", "2023-04-30", "2023-05-31"],
            ),
            (Monthly, "2024-01-31", &["2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30"]),
            (Monthly, "2024-01-30", &["2024-01-30", "2024-02-29", "2024-03-30", "2024-04-30"]),
            (Monthly, "2024-01-29", &["2024-01-29", "2024-02-29", "2024-03-29"]),
            (Monthly, "2023-01-29", &["2023-01-29", "2023-02-28", "2023-03-29"]),
            (Monthly, "2099-12-31", &["2099-12-31", "2100-01-31", "2100-02-28", "2100-03-31"]),
            (Monthly, "2000-01-31", &["2000-01-31", "2000-02-29", "2000-03-31"]),
            // Feb 29 yearly: Feb 28 in non-leap years, Feb 29 again in leap years.
            (
                Yearly,
                "2024-02-29",
                &["2024-02-29", "2025-02-28", "2026-02-28", "2027-02-28", "2028-02-29"],
            ),
            (
                Yearly,
                "2096-02-29",
                &[
                    "2096-02-29",
                    "2097-02-28",
                    "2098-02-28",
                    "2099-02-28",
                    "2100-02-28",
                    "2101-02-28",
                ],
            ),
        ];
        for (interval, start, expected) in table {
            assert_periods(&cycle(*interval, Anchor::Anniversary, start), expected);
        }
    }

    #[test]
    fn calendar_periods_every_interval() {
        use Interval::*;
        let table: &[(Interval, &str, &[&str])] = &[
            // Wed → next Monday, then ISO weeks.
            (Weekly, "2024-01-03", &["2024-01-03", "2024-01-08", "2024-01-15", "2024-01-22"]),
            (Weekly, "2024-01-07", &["2024-01-07", "2024-01-08", "2024-01-15"]),
            (Weekly, "2024-01-01", &["2024-01-01", "2024-01-08", "2024-01-15"]),
            (Monthly, "2024-01-16", &["2024-01-16", "2024-02-01", "2024-03-01", "2024-04-01"]),
            (Monthly, "2024-01-31", &["2024-01-31", "2024-02-01", "2024-03-01"]),
            (Monthly, "2024-02-01", &["2024-02-01", "2024-03-01", "2024-04-01"]),
            (Monthly, "2024-12-15", &["2024-12-15", "2025-01-01", "2025-02-01"]),
            (
                Quarterly,
                "2024-02-10",
                &["2024-02-10", "2024-04-01", "2024-07-01", "2024-10-01", "2025-01-01"],
            ),
            (Quarterly, "2024-04-01", &["2024-04-01", "2024-07-01", "2024-10-01"]),
            (Quarterly, "2024-03-01", &["2024-03-01", "2024-04-01", "2024-07-01"]),
            (Quarterly, "2024-11-01", &["2024-11-01", "2025-01-01", "2025-04-01"]),
            (Semiannual, "2024-02-10", &["2024-02-10", "2024-07-01", "2025-01-01", "2025-07-01"]),
            (Semiannual, "2024-07-01", &["2024-07-01", "2025-01-01", "2025-07-01"]),
            (Semiannual, "2024-12-31", &["2024-12-31", "2025-01-01", "2025-07-01"]),
            (Yearly, "2024-02-29", &["2024-02-29", "2025-01-01", "2026-01-01", "2027-01-01"]),
            (Yearly, "2024-01-01", &["2024-01-01", "2025-01-01", "2026-01-01"]),
        ];
        for (interval, start, expected) in table {
            assert_periods(&cycle(*interval, Anchor::Calendar, start), expected);
        }
    }

    #[test]
    fn first_calendar_period_is_prorated_unless_on_a_boundary() {
        use Interval::*;
        let table = [
            (Monthly, "2024-01-16", 16, false),
            (Monthly, "2024-01-01", 31, true),
            (Monthly, "2023-02-01", 28, true),
            (Quarterly, "2024-05-15", 47, false),
            (Semiannual, "2024-01-02", 181, false),
            (Yearly, "2023-07-01", 184, false),
            (Yearly, "2024-01-01", 366, true),
            (Weekly, "2024-01-05", 3, false),
            (Weekly, "2024-01-08", 7, true),
        ];
        for (interval, start, days, boundary) in table {
            let c = cycle(interval, Anchor::Calendar, start);
            let first = c.first();
            assert_eq!(first.start, d(start));
            assert_eq!(first.days(), days, "{c:?}");
            assert_eq!(is_calendar_boundary(interval, d(start)), boundary, "{c:?}");
            assert!(is_calendar_boundary(interval, first.end), "{c:?}");
        }
    }

    #[test]
    fn period_containing_boundaries_and_far_future() {
        use Anchor::*;
        use Interval::*;
        /// (interval, anchor, start date, day asked, expected period)
        type Row =
            (Interval, Anchor, &'static str, &'static str, Option<(&'static str, &'static str)>);
        let table: &[Row] = &[
            (Monthly, Anniversary, "2024-01-31", "2024-01-30", None),
            (Monthly, Anniversary, "2024-01-31", "2024-01-31", Some(("2024-01-31", "2024-02-29"))),
            (Monthly, Anniversary, "2024-01-31", "2024-02-28", Some(("2024-01-31", "2024-02-29"))),
            (Monthly, Anniversary, "2024-01-31", "2024-02-29", Some(("2024-02-29", "2024-03-31"))),
            (Monthly, Anniversary, "2024-01-31", "2024-03-30", Some(("2024-02-29", "2024-03-31"))),
            (Monthly, Anniversary, "2024-01-31", "2024-03-31", Some(("2024-03-31", "2024-04-30"))),
            (Monthly, Anniversary, "2024-01-31", "2100-02-28", Some(("2100-02-28", "2100-03-31"))),
            (Monthly, Anniversary, "2024-01-31", "2100-02-27", Some(("2100-01-31", "2100-02-28"))),
            (Monthly, Anniversary, "2024-01-31", "2400-02-29", Some(("2400-02-29", "2400-03-31"))),
            (Yearly, Anniversary, "2024-02-29", "2100-02-28", Some(("2100-02-28", "2101-02-28"))),
            (Yearly, Anniversary, "2024-02-29", "2100-02-27", Some(("2099-02-28", "2100-02-28"))),
            (Yearly, Anniversary, "2024-02-29", "2104-02-28", Some(("2103-02-28", "2104-02-29"))),
            (
                Quarterly,
                Anniversary,
                "2024-01-15",
                "2150-07-14",
                Some(("2150-04-15", "2150-07-15")),
            ),
            (
                Semiannual,
                Anniversary,
                "2024-01-15",
                "2150-07-15",
                Some(("2150-07-15", "2151-01-15")),
            ),
            (Weekly, Anniversary, "2024-01-03", "2024-01-10", Some(("2024-01-10", "2024-01-17"))),
            (Weekly, Anniversary, "2024-01-03", "2024-01-09", Some(("2024-01-03", "2024-01-10"))),
            (Weekly, Anniversary, "2024-01-03", "2100-01-01", Some(("2099-12-30", "2100-01-06"))),
            (Monthly, Calendar, "2024-01-16", "2024-01-15", None),
            (Monthly, Calendar, "2024-01-16", "2024-01-16", Some(("2024-01-16", "2024-02-01"))),
            (Monthly, Calendar, "2024-01-16", "2024-01-31", Some(("2024-01-16", "2024-02-01"))),
            (Monthly, Calendar, "2024-01-16", "2024-02-01", Some(("2024-02-01", "2024-03-01"))),
            (Monthly, Calendar, "2024-01-16", "2100-02-28", Some(("2100-02-01", "2100-03-01"))),
            (Quarterly, Calendar, "2024-01-16", "2024-03-31", Some(("2024-01-16", "2024-04-01"))),
            (Quarterly, Calendar, "2024-01-16", "2124-10-01", Some(("2124-10-01", "2125-01-01"))),
            (Semiannual, Calendar, "2024-01-16", "2200-06-30", Some(("2200-01-01", "2200-07-01"))),
            (Yearly, Calendar, "2024-01-16", "2100-12-31", Some(("2100-01-01", "2101-01-01"))),
            (Weekly, Calendar, "2024-01-03", "2024-01-07", Some(("2024-01-03", "2024-01-08"))),
            (Weekly, Calendar, "2024-01-03", "2024-01-08", Some(("2024-01-08", "2024-01-15"))),
            // 2100-01-04 is a Monday.
            (Weekly, Calendar, "2024-01-03", "2100-01-04", Some(("2100-01-04", "2100-01-11"))),
            (Weekly, Calendar, "2024-01-03", "2100-01-03", Some(("2099-12-28", "2100-01-04"))),
        ];
        for &(interval, anchor, start, day, want) in table {
            let c = cycle(interval, anchor, start);
            let got = c.period_containing(d(day));
            assert_eq!(got, want.map(|(s, e)| p(s, e)), "{c:?} at {day}");
        }
    }

    #[test]
    fn period_containing_is_fast_far_in_the_future() {
        let c = cycle(Interval::Weekly, Anchor::Anniversary, "1900-01-01");
        let far = d("9990-06-15");
        for day in 0..1000 {
            let x = add_days(far, day);
            assert!(c.period_containing(x).unwrap().contains(x));
        }
    }

    #[test]
    fn period_days_contains_and_instants() {
        let utc = TimeZone::UTC;
        let table = [
            ("2023-02-01", "2023-03-01", 28),
            ("2024-02-01", "2024-03-01", 29),
            ("2100-02-01", "2100-03-01", 28),
            ("2024-04-01", "2024-05-01", 30),
            ("2024-01-01", "2024-02-01", 31),
            ("2024-01-01", "2025-01-01", 366),
            ("2025-01-01", "2026-01-01", 365),
        ];
        for (s, e, days) in table {
            let period = p(s, e);
            assert_eq!(period.days(), days);
            assert!(period.contains(d(s)));
            assert!(!period.contains(d(e)));
            assert!(!period.contains(add_days(d(s), -1)));
            assert!(period.contains(add_days(d(e), -1)));
            let hours = period.start_instant(&utc).until(period.end_instant(&utc)).unwrap();
            assert_eq!(hours.total(jiff::Unit::Hour).unwrap(), f64::from(days * 24));
        }
        assert_eq!(days_between(d("2024-03-01"), d("2024-01-01")), -60);
    }

    #[test]
    fn proration_spec_example_and_month_lengths() {
        let round =
            |x: Decimal| x.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        // SPEC §4: Jan 1–31 at 30.00, upgraded Jan 16 to 62.00: 16 of 31 days remain.
        let jan = cycle(Interval::Monthly, Anchor::Anniversary, "2024-01-01").first();
        assert_eq!(jan.days(), 31);
        let remaining = days_between(d("2024-01-16"), jan.end);
        assert_eq!(remaining, 16);
        assert_eq!(round(prorate(dec!(30.00), remaining, jan.days()).unwrap()), dec!(15.48));
        assert_eq!(round(prorate(dec!(62.00), remaining, jan.days()).unwrap()), dec!(32.00));

        let table = [
            (dec!(28.00), 14, 28, dec!(14.00)),
            (dec!(29.00), 1, 29, dec!(1.00)),
            (dec!(10.00), 10, 29, dec!(3.45)),
            (dec!(30.00), 7, 30, dec!(7.00)),
            (dec!(100.00), 1, 30, dec!(3.33)),
            (dec!(31.00), 16, 31, dec!(16.00)),
            (dec!(99.99), 0, 31, dec!(0.00)),
            (dec!(99.99), 31, 31, dec!(99.99)),
            (dec!(-30.00), 16, 31, dec!(-15.48)),
        ];
        for (amount, days, of, want) in table {
            assert_eq!(round(prorate(amount, days, of).unwrap()), want, "{amount} × {days}/{of}");
        }
        // Unrounded: the exact value is kept to full precision.
        let exact = prorate(dec!(30), 16, 31).unwrap();
        assert!((exact - dec!(15.4838709677)).abs() < dec!(0.0000000001));
    }

    /// Amounts far beyond the input bounds: the exact proration, or `None` when
    /// `amount × days` overflows (never a panic).
    #[test]
    fn prorate_extremes_table() {
        const MAX: Decimal = Decimal::MAX;
        let cases = [
            (MAX, 31, 31, Some(MAX)),
            (-MAX, 31, 31, Some(-MAX)),
            (MAX, 0, 31, Some(dec!(0))),
            (MAX, 1, 31, Some(MAX / dec!(31))),
            (MAX, 2, 31, None),
            (-MAX, 16, 31, None),
            (MAX / dec!(30), 30, 31, Some(MAX / dec!(30) * dec!(30) / dec!(31))),
            (MAX / dec!(30), 30, 366, Some(MAX / dec!(30) * dec!(30) / dec!(366))),
            (dec!(1e27), 365, 366, None),
            (Decimal::new(1, 28), 1, 3, Some(dec!(0))),
        ];
        for (amount, days, of, want) in cases {
            assert_eq!(prorate(amount, days, of), want, "{amount} × {days}/{of}");
        }
    }

    #[test]
    #[should_panic(expected = "days (32) must be within 0..=31")]
    fn prorate_rejects_too_many_days() {
        prorate(dec!(1), 32, 31);
    }

    #[test]
    #[should_panic(expected = "days_in_period must be positive")]
    fn prorate_rejects_empty_period() {
        prorate(dec!(1), 0, 0);
    }

    #[test]
    fn dst_changes_keep_day_counts() {
        // (zone, day, its local midnight in UTC, hours until the next local midnight)
        let table = [
            ("America/New_York", "2024-03-09", "2024-03-09T05:00:00Z", 24),
            ("America/New_York", "2024-03-10", "2024-03-10T05:00:00Z", 23),
            ("America/New_York", "2024-03-11", "2024-03-11T04:00:00Z", 24),
            ("America/New_York", "2024-11-03", "2024-11-03T04:00:00Z", 25),
            ("America/New_York", "2024-11-04", "2024-11-04T05:00:00Z", 24),
            ("Europe/Berlin", "2024-03-31", "2024-03-30T23:00:00Z", 23),
            ("Europe/Berlin", "2024-04-01", "2024-03-31T22:00:00Z", 24),
            ("Europe/Berlin", "2024-10-27", "2024-10-26T22:00:00Z", 25),
            ("Europe/Berlin", "2024-10-28", "2024-10-27T23:00:00Z", 24),
        ];
        for (zone, day, midnight, hours) in table {
            let z = tz(zone);
            let start = local_midnight(d(day), &z);
            assert_eq!(start, ts(midnight), "{zone} {day}");
            let next = local_midnight(add_days(d(day), 1), &z);
            assert_eq!(next.duration_since(start).as_hours(), hours, "{zone} {day}");
            assert_eq!(local_date(start, &z), d(day));
            assert_eq!(local_date(next - jiff::SignedDuration::from_nanos(1), &z), d(day));
        }

        // Monthly periods spanning the changes: calendar day counts, 1h shorter/longer.
        let table = [
            ("America/New_York", "2024-03-01", 31, -1),
            ("America/New_York", "2024-11-01", 30, 1),
            ("Europe/Berlin", "2024-03-01", 31, -1),
            ("Europe/Berlin", "2024-10-01", 31, 1),
            ("Europe/Berlin", "2024-06-01", 30, 0),
        ];
        for (zone, start, days, delta_hours) in table {
            let z = tz(zone);
            let period = cycle(Interval::Monthly, Anchor::Calendar, start).first();
            assert_eq!(period.days(), days);
            let span = period.end_instant(&z).duration_since(period.start_instant(&z));
            assert_eq!(span.as_hours(), i64::from(days) * 24 + delta_hours, "{zone} {start}");
        }
    }

    #[test]
    fn midnight_skipped_by_dst_uses_first_valid_instant() {
        // (zone, day whose 00:00 does not exist, first instant of that day)
        let table = [
            // Chile springs forward at 24:00: 2024-09-08 starts at 01:00 -03.
            ("America/Santiago", "2024-09-08", "2024-09-08T01:00:00-03:00"),
            // Lebanon: 2024-03-31 00:00 → 01:00.
            ("Asia/Beirut", "2024-03-31", "2024-03-31T01:00:00+03:00"),
            // Cuba: 2024-03-10 00:00 → 01:00.
            ("America/Havana", "2024-03-10", "2024-03-10T01:00:00-04:00"),
        ];
        for (zone, day, first) in table {
            let z = tz(zone);
            let start = local_midnight(d(day), &z);
            assert_eq!(start, ts(first), "{zone} {day}");
            assert_eq!(local_date(start, &z), d(day));
            assert_eq!(
                local_date(start - jiff::SignedDuration::from_nanos(1), &z),
                add_days(d(day), -1)
            );
            // Still one whole local day, though only 23 hours long.
            let next = local_midnight(add_days(d(day), 1), &z);
            assert_eq!(next.duration_since(start).as_hours(), 23);
            assert_eq!(p(day, &add_days(d(day), 1).to_string()).days(), 1);
        }
        // Samoa skipped 2011-12-30 entirely: that day starts (and ends) at the Dec 31 midnight,
        // yet December still has 31 billing days.
        let apia = tz("Pacific/Apia");
        assert_eq!(
            local_midnight(date(2011, 12, 30), &apia),
            local_midnight(date(2011, 12, 31), &apia)
        );
        assert_eq!(cycle(Interval::Monthly, Anchor::Calendar, "2011-12-01").first().days(), 31);
    }

    #[test]
    fn parse_time_zone_names() {
        for name in ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"] {
            assert!(parse_time_zone(name).is_ok(), "{name}");
        }
        for bad in ["", "Mars/Olympus_Mons", "Europe/Berlin ", "not a zone"] {
            let DomainError::Invalid(v) = parse_time_zone(bad).unwrap_err() else { panic!() };
            assert_eq!(v[0].field, "time_zone", "{bad:?}");
        }
    }

    #[test]
    fn local_date_of_instants() {
        let ny = tz("America/New_York");
        assert_eq!(local_date(ts("2024-01-01T04:59:59Z"), &ny), d("2023-12-31"));
        assert_eq!(local_date(ts("2024-01-01T05:00:00Z"), &ny), d("2024-01-01"));
        assert_eq!(local_date(ts("2024-01-01T00:00:00Z"), &TimeZone::UTC), d("2024-01-01"));
        let kolkata = tz("Asia/Kolkata");
        assert_eq!(local_date(ts("2023-12-31T18:30:00Z"), &kolkata), d("2024-01-01"));
    }

    #[test]
    fn serde_shapes() {
        let period = p("2024-01-31", "2024-02-29");
        let json = serde_json::to_string(&period).unwrap();
        assert_eq!(json, r#"{"start":"2024-01-31","end":"2024-02-29"}"#);
        assert_eq!(serde_json::from_str::<Period>(&json).unwrap(), period);
        let c = cycle(Interval::Semiannual, Anchor::Calendar, "2024-02-10");
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"interval":"semiannual","anchor":"calendar","start_date":"2024-02-10"}"#
        );
        assert_eq!(serde_json::from_str::<Cycle>(&json).unwrap(), c);
    }

    fn any_interval() -> impl Strategy<Value = Interval> {
        prop::sample::select(Interval::ALL.to_vec())
    }

    fn any_anchor() -> impl Strategy<Value = Anchor> {
        prop::sample::select(vec![Anchor::Anniversary, Anchor::Calendar])
    }

    fn any_date() -> impl Strategy<Value = Date> {
        // 1970-01-01 .. ~2300.
        (0i64..120_000).prop_map(|n| add_days(date(1970, 1, 1), n))
    }

    /// Everyday amounts, amounts near ±`Decimal::MAX`, and arbitrary bit patterns.
    fn any_amount() -> impl Strategy<Value = Decimal> {
        crate::test_strategies::extreme_decimal(1_000_000_000_000)
    }

    proptest! {
        /// `prorate` never panics on an amount: `Some` is exactly plain `× /` (so normal
        /// prorations are unchanged) and never larger than the amount; `None` only where
        /// `amount × days` overflows.
        #[test]
        fn prorate_is_exact_or_none(
            amount in any_amount(),
            (days, of) in (1i32..=366).prop_flat_map(|of| (0..=of, Just(of))),
        ) {
            match prorate(amount, days, of) {
                Some(x) => {
                    if days < of {
                        prop_assert_eq!(x, amount * Decimal::from(days) / Decimal::from(of));
                    }
                    prop_assert!(x.abs() <= amount.abs(), "{} of {}", x, amount);
                }
                None => prop_assert!(amount.checked_mul(Decimal::from(days)).is_none()),
            }
        }

        #[test]
        fn periods_are_contiguous_and_contain_their_days(
            interval in any_interval(),
            anchor in any_anchor(),
            start in any_date(),
            offset in 0i64..40_000,
        ) {
            let c = Cycle { interval, anchor, start_date: start };
            let mut cur = c.first();
            prop_assert_eq!(cur.start, start);
            for _ in 0..30 {
                prop_assert!(cur.days() > 0);
                prop_assert_eq!(c.period_containing(cur.start), Some(cur));
                prop_assert_eq!(c.period_containing(add_days(cur.end, -1)), Some(cur));
                let next = c.next(&cur);
                prop_assert_eq!(next.start, cur.end);
                if anchor == Anchor::Calendar {
                    prop_assert!(is_calendar_boundary(interval, cur.end));
                }
                cur = next;
            }
            let day = add_days(start, offset);
            let found = c.period_containing(day).unwrap();
            prop_assert!(found.contains(day));
            prop_assert!(found.days() > 0);
            prop_assert_eq!(c.next(&found).start, found.end);
            prop_assert_eq!(c.period_containing(add_days(start, -1)), None);
        }
    }
}
