//! Billable-metric aggregations (SPEC §4), folded event by event into a [`RunningAggregate`] so
//! that closing a period reads the aggregate instead of rescanning the period's usage.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// How a billable metric turns a period's usage events into billable units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Number of events.
    Count,
    /// Sum of the property's values.
    Sum,
    /// Greatest value.
    Max,
    /// Smallest value.
    Min,
    /// Number of distinct property strings.
    UniqueCount,
    /// Value of the last event by `occurred_at` (ties: the later log position).
    Latest,
    /// Each value is a change of a level; the result is ∫level dt / period length.
    WeightedSum,
}

impl Aggregation {
    /// Every aggregation, in declaration order.
    pub const ALL: [Aggregation; 7] = [
        Aggregation::Count,
        Aggregation::Sum,
        Aggregation::Max,
        Aggregation::Min,
        Aggregation::UniqueCount,
        Aggregation::Latest,
        Aggregation::WeightedSum,
    ];

    /// Parses the wire name (`count`, `sum`, ..., `weighted_sum`); field `aggregation`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Self::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|a| a.as_str()).collect();
            DomainError::invalid("aggregation", format!("{s:?} is not one of {}", names.join(", ")))
        })
    }

    /// The wire name, as accepted by [`Aggregation::parse`].
    pub fn as_str(&self) -> &'static str {
        match self {
            Aggregation::Count => "count",
            Aggregation::Sum => "sum",
            Aggregation::Max => "max",
            Aggregation::Min => "min",
            Aggregation::UniqueCount => "unique_count",
            Aggregation::Latest => "latest",
            Aggregation::WeightedSum => "weighted_sum",
        }
    }

    /// Whether the metric must name an event property (all but `count`).
    pub fn needs_property(&self) -> bool {
        !matches!(self, Aggregation::Count)
    }

    /// Whether the property must be a number (`unique_count` reads it as a string).
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            Aggregation::Sum
                | Aggregation::Max
                | Aggregation::Min
                | Aggregation::Latest
                | Aggregation::WeightedSum
        )
    }
}

impl std::fmt::Display for Aggregation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One usage event as the aggregator sees it. `value` is the parsed numeric property (ignored
/// by `count` and `unique_count`), `distinct` the raw property string (`unique_count`). `seq` is
/// the event's arrival order (log position), used to break ties of `occurred_at`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UsagePoint<'a> {
    pub occurred_at: Timestamp,
    pub seq: u64,
    pub value: Decimal,
    pub distinct: Option<&'a str>,
}

/// Running aggregate of one metric over one billing period, updated event by event (write-side
/// state, rebuilt from the log), so closing a period does not rescan usage.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunningAggregate {
    aggregation: Aggregation,
    events: u64,
    /// Σ|value| of the events folded in (saturating): what the ledger bounds per period.
    magnitude: Decimal,
    state: State,
}

/// Per-aggregation state; `count` needs nothing beyond the event counter.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum State {
    Count,
    Sum(Decimal),
    Max(Option<Decimal>),
    Min(Option<Decimal>),
    UniqueCount(BTreeSet<String>),
    Latest(Option<LatestValue>),
    WeightedSum(Levels),
}

/// The value of the latest event seen so far, with its ordering key.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct LatestValue {
    key: (Timestamp, u64),
    value: Decimal,
}

/// Level changes keyed by (occurred_at, seq), so out-of-order arrivals are integrated in time
/// order. `magnitude` = Σ|delta| bounds every partial sum, so a level can never overflow once
/// [`RunningAggregate::add`] has accepted the delta.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Levels {
    #[serde(with = "crate::serde_pairs")]
    deltas: BTreeMap<(Timestamp, u64), Decimal>,
    magnitude: Decimal,
    /// Σ delta: the level after the last change.
    last_level: Decimal,
}

impl RunningAggregate {
    /// An empty aggregate: zero units for any period.
    pub fn new(aggregation: Aggregation) -> Self {
        let state = match aggregation {
            Aggregation::Count => State::Count,
            Aggregation::Sum => State::Sum(Decimal::ZERO),
            Aggregation::Max => State::Max(None),
            Aggregation::Min => State::Min(None),
            Aggregation::UniqueCount => State::UniqueCount(BTreeSet::new()),
            Aggregation::Latest => State::Latest(None),
            Aggregation::WeightedSum => State::WeightedSum(Levels {
                deltas: BTreeMap::new(),
                magnitude: Decimal::ZERO,
                last_level: Decimal::ZERO,
            }),
        };
        RunningAggregate { aggregation, events: 0, magnitude: Decimal::ZERO, state }
    }

    /// The aggregation this aggregate folds.
    pub fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    /// Folds one event in. On error (overflow, or `unique_count` without a property value) the
    /// aggregate is left unchanged.
    pub fn add(&mut self, p: &UsagePoint) -> Result<(), DomainError> {
        let events = self.events.checked_add(1).ok_or_else(overflow)?;
        self.state.add(p)?;
        self.events = events;
        self.magnitude = self.magnitude.saturating_add(p.value.abs());
        Ok(())
    }

    /// The aggregated units for the period [start, end). Only `weighted_sum` reads the bounds;
    /// it refuses `end <= start` unless no event was added. No events: 0 for every aggregation.
    pub fn units(
        &self,
        period_start: Timestamp,
        period_end: Timestamp,
    ) -> Result<Decimal, DomainError> {
        Ok(match &self.state {
            State::Count => Decimal::from(self.events),
            State::Sum(sum) => *sum,
            State::Max(v) | State::Min(v) => v.unwrap_or(Decimal::ZERO),
            State::UniqueCount(seen) => Decimal::from(seen.len()),
            State::Latest(latest) => latest.map_or(Decimal::ZERO, |l| l.value),
            State::WeightedSum(levels) => levels.average(period_start, period_end)?,
        })
    }

    /// For `weighted_sum`: the lowest level the period would reach from `p`'s instant on if
    /// `p` were added (`None` for other aggregations). The ledger refuses a change that takes
    /// the level below zero unless the metric allows negative values.
    pub fn lowest_level_with(&self, p: &UsagePoint) -> Option<Decimal> {
        match &self.state {
            State::WeightedSum(levels) => Some(levels.lowest_with(p)),
            _ => None,
        }
    }

    /// Number of events folded in.
    pub fn event_count(&self) -> u64 {
        self.events
    }

    /// Σ|value| of the events folded in (saturating at `Decimal::MAX`). It bounds every
    /// aggregation's units: |sum|, |max|, |min|, |latest| and the `weighted_sum` level.
    pub fn magnitude(&self) -> Decimal {
        self.magnitude
    }
}

impl State {
    /// Folds one event; assigns only once every checked step has succeeded.
    fn add(&mut self, p: &UsagePoint) -> Result<(), DomainError> {
        match self {
            State::Count => {}
            State::Sum(sum) => *sum = sum.checked_add(p.value).ok_or_else(overflow)?,
            State::Max(v) => *v = Some(v.map_or(p.value, |m| m.max(p.value))),
            State::Min(v) => *v = Some(v.map_or(p.value, |m| m.min(p.value))),
            State::UniqueCount(seen) => add_distinct(seen, p.distinct)?,
            State::Latest(latest) => add_latest(latest, p),
            State::WeightedSum(levels) => levels.add(p)?,
        }
        Ok(())
    }
}

/// Records one distinct property string; a missing one is refused (field `properties`).
fn add_distinct(seen: &mut BTreeSet<String>, distinct: Option<&str>) -> Result<(), DomainError> {
    let value = distinct.ok_or_else(|| {
        DomainError::invalid("properties", "unique_count needs the metric's property")
    })?;
    if !seen.contains(value) {
        seen.insert(value.to_owned());
    }
    Ok(())
}

/// Keeps the value of the event with the greatest (occurred_at, seq).
fn add_latest(latest: &mut Option<LatestValue>, p: &UsagePoint) {
    let key = (p.occurred_at, p.seq);
    if latest.is_none_or(|l| key >= l.key) {
        *latest = Some(LatestValue { key, value: p.value });
    }
}

impl Levels {
    /// Records one level change (two changes with the same key add up).
    fn add(&mut self, p: &UsagePoint) -> Result<(), DomainError> {
        let magnitude = self.magnitude.checked_add(p.value.abs()).ok_or_else(overflow)?;
        let key = (p.occurred_at, p.seq);
        let current = self.deltas.get(&key).copied().unwrap_or(Decimal::ZERO);
        let delta = current.checked_add(p.value).ok_or_else(overflow)?;
        let last_level = self.last_level.checked_add(p.value).ok_or_else(overflow)?;
        self.deltas.insert(key, delta);
        self.magnitude = magnitude;
        self.last_level = last_level;
        Ok(())
    }

    /// The lowest level from `p`'s instant on if `p` were added (the level is 0 at the period
    /// start). In time order (the usual case) only the last level moves: O(1); a change
    /// arriving late shifts every later level, which are scanned.
    fn lowest_with(&self, p: &UsagePoint) -> Decimal {
        let key = (p.occurred_at, p.seq);
        if self.deltas.last_key_value().is_none_or(|(last, _)| *last < key) {
            return self.last_level.saturating_add(p.value);
        }
        self.lowest_from(key, p.value)
    }

    /// The lowest level at or after `key` once `delta` is added at `key`.
    fn lowest_from(&self, key: (Timestamp, u64), delta: Decimal) -> Decimal {
        let before: Decimal = self.deltas.range(..key).map(|(_, d)| *d).sum();
        let mut level = before.saturating_add(delta);
        let mut lowest = level;
        for (_, d) in self.deltas.range(key..) {
            level = level.saturating_add(*d);
            lowest = lowest.min(level);
        }
        lowest
    }

    /// ∫level dt / (end − start), time in microseconds; the level is 0 at `start`.
    fn average(&self, start: Timestamp, end: Timestamp) -> Result<Decimal, DomainError> {
        if self.deltas.is_empty() {
            return Ok(Decimal::ZERO);
        }
        let length = micros_between(start, end)?;
        if length <= 0 {
            return Err(DomainError::invalid("period_end", "must be after period_start"));
        }
        self.area(start, end)?.checked_div(Decimal::from(length)).ok_or_else(overflow)
    }

    /// ∫level dt over [start, end) in level·microseconds. A change before `start` applies from
    /// `start`; a change at or after `end` no longer matters.
    fn area(&self, start: Timestamp, end: Timestamp) -> Result<Decimal, DomainError> {
        let (mut level, mut area, mut at) = (Decimal::ZERO, Decimal::ZERO, start);
        for (&(t, _), delta) in &self.deltas {
            let t = t.clamp(start, end);
            area = area.checked_add(segment(level, at, t)?).ok_or_else(overflow)?;
            level = level.checked_add(*delta).ok_or_else(overflow)?;
            at = t;
        }
        area.checked_add(segment(level, at, end)?).ok_or_else(overflow)
    }
}

/// level × (to − from) in level·microseconds.
fn segment(level: Decimal, from: Timestamp, to: Timestamp) -> Result<Decimal, DomainError> {
    level.checked_mul(Decimal::from(micros_between(from, to)?)).ok_or_else(overflow)
}

/// Exact microseconds from `from` to `to` (negative if `to` is earlier).
fn micros_between(from: Timestamp, to: Timestamp) -> Result<i64, DomainError> {
    to.as_microsecond().checked_sub(from.as_microsecond()).ok_or_else(overflow)
}

/// The one error of an arithmetic overflow while aggregating.
pub(crate) fn overflow() -> DomainError {
    DomainError::invalid("units", "amount overflows")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    const DAY: i64 = 86_400;
    /// 2024-01-01T00:00:00Z.
    const START: i64 = 1_704_067_200;

    /// One event of a case: seconds after the period start, log position, value, distinct.
    type Ev = (i64, u64, Decimal, Option<&'static str>);

    struct Case {
        name: &'static str,
        aggregation: Aggregation,
        events: Vec<Ev>,
        want: Decimal,
    }

    fn ts(offset: i64) -> Timestamp {
        Timestamp::from_second(START + offset).unwrap()
    }

    fn fold(aggregation: Aggregation, events: &[Ev]) -> RunningAggregate {
        let mut agg = RunningAggregate::new(aggregation);
        for &(at, seq, value, distinct) in events {
            agg.add(&UsagePoint { occurred_at: ts(at), seq, value, distinct }).unwrap();
        }
        agg
    }

    fn ev(days: i64, seq: u64, value: Decimal) -> Ev {
        (days * DAY, seq, value, None)
    }

    fn simple_cases() -> Vec<Case> {
        use Aggregation::*;
        let v = |seq, value| ev(seq as i64, seq, value);
        let d = |seq, s| (seq as i64 * DAY, seq, Decimal::ONE, Some(s));
        vec![
            Case {
                name: "count 3",
                aggregation: Count,
                events: vec![v(0, dec!(9)), v(1, dec!(-2)), v(2, dec!(0))],
                want: dec!(3),
            },
            Case {
                name: "sum mixed signs",
                aggregation: Sum,
                events: vec![v(0, dec!(1.5)), v(1, dec!(2.25)), v(2, dec!(-0.75))],
                want: dec!(3),
            },
            Case {
                name: "sum fractional",
                aggregation: Sum,
                events: vec![v(0, dec!(0.000000000001)), v(1, dec!(0.1))],
                want: dec!(0.100000000001),
            },
            Case {
                name: "max",
                aggregation: Max,
                events: vec![v(0, dec!(3)), v(1, dec!(7.5)), v(2, dec!(-1))],
                want: dec!(7.5),
            },
            Case {
                name: "max all negative",
                aggregation: Max,
                events: vec![v(0, dec!(-3)), v(1, dec!(-1))],
                want: dec!(-1),
            },
            Case {
                name: "min",
                aggregation: Min,
                events: vec![v(0, dec!(3)), v(1, dec!(7.5)), v(2, dec!(-1))],
                want: dec!(-1),
            },
            Case {
                name: "min single",
                aggregation: Min,
                events: vec![v(0, dec!(4))],
                want: dec!(4),
            },
            Case {
                name: "unique_count",
                aggregation: UniqueCount,
                events: vec![d(0, "a"), d(1, "b"), d(2, "a"), d(3, "c")],
                want: dec!(3),
            },
            Case {
                name: "unique_count case-sensitive",
                aggregation: UniqueCount,
                events: vec![d(0, "a"), d(1, "A")],
                want: dec!(2),
            },
            Case {
                name: "latest out of order",
                aggregation: Latest,
                events: vec![ev(5, 1, dec!(10)), ev(2, 2, dec!(20))],
                want: dec!(10),
            },
            Case {
                name: "latest in order",
                aggregation: Latest,
                events: vec![ev(2, 1, dec!(20)), ev(5, 2, dec!(10))],
                want: dec!(10),
            },
            Case {
                name: "latest tie by seq",
                aggregation: Latest,
                events: vec![ev(3, 5, dec!(1)), ev(3, 9, dec!(2)), ev(3, 7, dec!(3))],
                want: dec!(2),
            },
        ]
    }

    #[test]
    fn aggregation_table() {
        for case in simple_cases() {
            let agg = fold(case.aggregation, &case.events);
            let got = agg.units(ts(0), ts(30 * DAY)).unwrap();
            assert_eq!(got, case.want, "{}", case.name);
            assert_eq!(agg.event_count(), case.events.len() as u64, "{}", case.name);
        }
    }

    #[test]
    fn empty_period_is_zero_for_every_aggregation() {
        for aggregation in Aggregation::ALL {
            let agg = RunningAggregate::new(aggregation);
            assert_eq!(agg.units(ts(0), ts(30 * DAY)), Ok(Decimal::ZERO), "{aggregation}");
            assert_eq!(agg.units(ts(0), ts(0)), Ok(Decimal::ZERO), "{aggregation} zero-length");
            assert_eq!(agg.event_count(), 0);
        }
    }

    #[test]
    fn weighted_sum_table() {
        let spec = vec![ev(0, 1, dec!(10)), ev(3, 2, dec!(30)), ev(10, 3, dec!(-40))];
        let shuffled = vec![ev(10, 1, dec!(-40)), ev(0, 2, dec!(10)), ev(3, 3, dec!(30))];
        let half_hour = vec![(0, 1, dec!(48), None), (1800, 2, dec!(-48), None)];
        let cases: [(&str, Vec<Ev>, i64, Decimal); 8] = [
            ("SPEC example", spec, 30, dec!(310) / dec!(30)),
            ("SPEC example, out of order", shuffled, 30, dec!(310) / dec!(30)),
            ("level held to period end", vec![ev(15, 1, dec!(5))], 30, dec!(2.5)),
            ("whole period", vec![ev(0, 1, dec!(7.25))], 30, dec!(7.25)),
            ("change before start applies from start", vec![ev(-1, 1, dec!(6))], 30, dec!(6)),
            ("change at period end ignored", vec![ev(30, 1, dec!(100))], 30, dec!(0)),
            ("half an hour in a 1-day period", half_hour, 1, dec!(1)),
            ("negative level", vec![ev(0, 1, dec!(-3)), ev(10, 2, dec!(3))], 20, dec!(-1.5)),
        ];
        for (name, events, days, want) in cases {
            let agg = fold(Aggregation::WeightedSum, &events);
            assert_eq!(agg.units(ts(0), ts(days * DAY)), Ok(want), "{name}");
        }
    }

    #[test]
    fn weighted_sum_refuses_empty_or_reversed_period_with_events() {
        let agg = fold(Aggregation::WeightedSum, &[ev(0, 1, dec!(1))]);
        for end in [ts(0), ts(-DAY)] {
            let err = agg.units(ts(0), end).unwrap_err();
            assert_eq!(err, DomainError::invalid("period_end", "must be after period_start"));
        }
    }

    #[test]
    fn overflow_is_an_error_and_leaves_state_unchanged() {
        for aggregation in [Aggregation::Sum, Aggregation::WeightedSum] {
            let mut agg = fold(aggregation, &[ev(0, 1, Decimal::MAX)]);
            let before = agg.clone();
            let p =
                UsagePoint { occurred_at: ts(DAY), seq: 2, value: Decimal::MAX, distinct: None };
            assert_eq!(agg.add(&p), Err(DomainError::invalid("units", "amount overflows")));
            assert_eq!(agg, before, "{aggregation}");
            assert_eq!(agg.event_count(), 1);
        }
    }

    #[test]
    fn weighted_sum_integral_overflow_is_an_error() {
        let agg = fold(Aggregation::WeightedSum, &[ev(0, 1, dec!(1e27))]);
        let err = agg.units(ts(0), ts(30 * DAY)).unwrap_err();
        assert_eq!(err, DomainError::invalid("units", "amount overflows"));
    }

    #[test]
    fn unique_count_without_property_is_refused() {
        let mut agg = RunningAggregate::new(Aggregation::UniqueCount);
        let p = UsagePoint { occurred_at: ts(0), seq: 1, value: Decimal::ONE, distinct: None };
        let err = agg.add(&p).unwrap_err();
        assert!(matches!(&err, DomainError::Invalid(v) if v[0].field == "properties"), "{err}");
        assert_eq!(agg.event_count(), 0);
    }

    #[test]
    fn parse_names_and_flags() {
        let table = [
            ("count", Aggregation::Count, false, false),
            ("sum", Aggregation::Sum, true, true),
            ("max", Aggregation::Max, true, true),
            ("min", Aggregation::Min, true, true),
            ("unique_count", Aggregation::UniqueCount, true, false),
            ("latest", Aggregation::Latest, true, true),
            ("weighted_sum", Aggregation::WeightedSum, true, true),
        ];
        for (name, aggregation, needs_property, numeric) in table {
            assert_eq!(Aggregation::parse(name), Ok(aggregation));
            assert_eq!(aggregation.as_str(), name);
            assert_eq!(aggregation.needs_property(), needs_property, "{name}");
            assert_eq!(aggregation.is_numeric(), numeric, "{name}");
            let json = serde_json::to_string(&aggregation).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Aggregation>(&json).unwrap(), aggregation);
        }
        for bad in ["", "COUNT", "avg", "weighted-sum"] {
            let err = Aggregation::parse(bad).unwrap_err();
            assert!(
                matches!(&err, DomainError::Invalid(v) if v[0].field == "aggregation"),
                "{bad}"
            );
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Events within a 30-day period: (offset seconds, value, distinct key); seq = index.
        fn events() -> impl Strategy<Value = Vec<(i64, Decimal, String)>> {
            let value = (-1_000_000i64..1_000_000, 0u32..=6).prop_map(|(m, s)| Decimal::new(m, s));
            let event = (0..30 * DAY, value, "[a-d]");
            prop::collection::vec(event, 0..20)
        }

        fn fold_order(
            aggregation: Aggregation,
            events: &[(i64, Decimal, String)],
            rev: bool,
        ) -> RunningAggregate {
            let mut agg = RunningAggregate::new(aggregation);
            let mut indexed: Vec<_> = events.iter().enumerate().collect();
            if rev {
                indexed.reverse();
            }
            for (seq, (at, value, key)) in indexed {
                let p = UsagePoint {
                    occurred_at: ts(*at),
                    seq: seq as u64,
                    value: *value,
                    distinct: Some(key),
                };
                agg.add(&p).unwrap();
            }
            agg
        }

        proptest! {
            #[test]
            fn arrival_order_does_not_change_units(events in events()) {
                for aggregation in Aggregation::ALL {
                    let forward = fold_order(aggregation, &events, false);
                    let backward = fold_order(aggregation, &events, true);
                    let (start, end) = (ts(0), ts(30 * DAY));
                    prop_assert_eq!(forward.units(start, end), backward.units(start, end));
                    prop_assert_eq!(forward.event_count(), events.len() as u64);
                }
            }
        }
    }
}
