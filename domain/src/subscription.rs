//! The subscription aggregate: its plan history, trial, cancellation, open billing periods with
//! their running usage aggregates (write-side state, rebuilt from the log), and the base-fee
//! billing rules (in advance or in arrears, prorated by whole local days).

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use rust_decimal::Decimal;

use crate::calendar::{days_between, prorate, Anchor, Cycle, Interval, Period};
use crate::catalog::{FeeTiming, Plan, PlanRef};
use crate::error::DomainError;
use crate::invoice::{LineDraft, LineKind};
use crate::rating::{RunningAggregate, UsagePoint};

/// Usage of one metric in one open period.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MetricUsage {
    pub aggregate: RunningAggregate,
    /// Each event's amount by (occurred_at, position), kept only for metrics that some
    /// published plan prices with a percentage model (which prices every event in order; see
    /// [`crate::ledger::Ledger::percentage_metrics`]). Other metrics need only the aggregate.
    #[serde(with = "crate::serde_pairs")]
    pub amounts: BTreeMap<(Timestamp, u64), Decimal>,
    /// Whether `amounts` holds every event of the period (false once one was added while no
    /// plan priced the metric by percentage): a percentage charge can rate only a complete set.
    pub amounts_complete: bool,
}

/// A billing period that is not closed yet. It holds running aggregates only: duplicate
/// detection lives outside the write model (the command service's dedup index), so nothing
/// here grows with the number of events but the amounts of percentage-priced metrics.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct OpenPeriod {
    pub usage: BTreeMap<String, MetricUsage>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Subscription {
    pub subscription_id: String,
    pub customer_id: String,
    #[serde(with = "jiff::fmt::serde::tz::required")]
    pub time_zone: TimeZone,
    pub cycle: Cycle,
    /// Plan history: (effective local date, plan), ascending.
    pub plans: Vec<(Date, PlanRef)>,
    pub trial_end: Option<Date>,
    pub trial_ended: bool,
    /// A downgrade waiting for the end of the current period.
    pub pending_change: Option<(PlanRef, Date)>,
    /// Service ends at this local date (exclusive), once canceled.
    pub ends_on: Option<Date>,
    /// The oldest period not yet closed; `None` once service has ended and all is closed.
    pub next_close: Option<Period>,
    /// Base fee is invoiced for every day before this date.
    pub fee_billed_until: Date,
    /// An imported subscription's cutover: the previous biller invoiced every period before
    /// this date. Plan changes dated before it are history only (no invoice); its imported
    /// invoices end on or before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed_elsewhere_until: Option<Date>,
    /// Amounts invoiced ahead of close per period start (base fee in advance, credits, in-advance
    /// usage fees), counted against the minimum commitment.
    pub billed_by_period: BTreeMap<Date, Decimal>,
    pub open: BTreeMap<Date, OpenPeriod>,
    pub invoice_ids: Vec<String>,
    /// Usage alerts (issue 14), in the order created, with the highest level each fired per
    /// open period (entries of closed periods are dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertState>,
    /// What progressive invoices billed per open period (start) and metric, before coupons;
    /// the closing invoice deducts it. Entries of closed periods are dropped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub progressive_billed: BTreeMap<Date, BTreeMap<String, Decimal>>,
    /// The newest closed periods' charges (at most `anomaly::HISTORY_PERIODS_MAX`, oldest
    /// first): the baseline its next invoices are checked against for anomalies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub billed_history: Vec<crate::anomaly::PeriodCharges>,
}

/// A usage alert and what it fired.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlertState {
    pub alert: crate::alert::UsageAlert,
    /// Period start → the highest level fired in that period.
    pub fired: BTreeMap<Date, Decimal>,
}

impl Subscription {
    pub fn start_date(&self) -> Date {
        self.cycle.start_date
    }

    pub fn plan_at(&self, date: Date) -> &PlanRef {
        let i = self.plans.partition_point(|(d, _)| *d <= date);
        &self.plans[i.saturating_sub(1)].1
    }

    pub fn current_plan(&self) -> &PlanRef {
        &self.plans.last().expect("a subscription always has a plan").1
    }

    /// The billing period containing `date`, cut at the end of service.
    pub fn period_of(&self, date: Date) -> Option<Period> {
        let p = self.cycle.period_containing(date)?;
        Some(self.truncate(p))
    }

    pub fn truncate(&self, p: Period) -> Period {
        match self.ends_on {
            Some(end) if end < p.end => Period { start: p.start, end: end.max(p.start) },
            _ => p,
        }
    }

    pub fn is_in_service(&self, date: Date) -> bool {
        date >= self.start_date() && self.ends_on.is_none_or(|e| date < e)
    }

    /// Whole days of the full period a (possibly shortened) period belongs to: the divisor of
    /// every proration in it. A calendar-anchored first period is short: its full period runs
    /// from the previous boundary.
    pub fn full_days(&self, p: &Period) -> i32 {
        let full = self.cycle.period_containing(p.start).expect("p starts in service");
        match self.cycle.anchor {
            Anchor::Calendar => {
                days_between(interval_before(full.end, self.cycle.interval), full.end)
            }
            Anchor::Anniversary => full.days(),
        }
    }

    /// Days of [from, to) that are billable (not in the trial).
    pub fn billable_days(&self, from: Date, to: Date) -> i32 {
        let from = self.trial_end.map_or(from, |t| from.max(t));
        days_between(from, to).max(0)
    }

    pub fn in_trial(&self, date: Date) -> bool {
        self.trial_end.is_some_and(|t| date < t)
    }

    /// The subject of this subscription's errors: `subscription-<id>`.
    pub fn subject(&self) -> String {
        format!("subscription-{}", self.subscription_id)
    }
}

fn interval_before(date: Date, interval: Interval) -> Date {
    let span = match interval {
        Interval::Weekly => jiff::Span::new().weeks(1),
        Interval::Monthly => jiff::Span::new().months(1),
        Interval::Quarterly => jiff::Span::new().months(3),
        Interval::Semiannual => jiff::Span::new().months(6),
        Interval::Yearly => jiff::Span::new().years(1),
    };
    date.checked_sub(span).expect("dates in range")
}

/// A base-fee line for days [from, to) of period `p` on `plan`, prorated by the full period.
/// An overflow of the proration (a base fee far beyond the input bounds) is an
/// [`DomainError::overflow`] of the subscription naming the plan.
pub fn base_fee_line(
    sub: &Subscription,
    plan: &Plan,
    p: &Period,
    from: Date,
    to: Date,
) -> Result<Option<LineDraft>, DomainError> {
    let days = sub.billable_days(from, to);
    if days == 0 || plan.base_fee.is_zero() {
        return Ok(None);
    }
    let full = sub.full_days(p);
    let unrounded = prorate(plan.base_fee, days, full).ok_or_else(|| {
        let what =
            format!("base fee of plan {} v{} ({days} of {full} days)", plan.code, plan.version);
        DomainError::overflow(sub.subject(), what)
    })?;
    Ok(Some(LineDraft {
        kind: LineKind::BaseFee,
        description: format!("{} base fee ({days} of {full} days)", plan.name),
        metric_code: None,
        charge_model: None,
        units: None,
        service_period: Period { start: from.max(sub.trial_end.unwrap_or(from)), end: to },
        unrounded,
    }))
}

/// Credit for the unused days [from, to) of an in-advance fee already invoiced for period `p`.
pub fn credit_line(
    sub: &Subscription,
    plan: &Plan,
    p: &Period,
    from: Date,
    to: Date,
) -> Result<Option<LineDraft>, DomainError> {
    let Some(mut line) = base_fee_line(sub, plan, p, from, to)? else { return Ok(None) };
    line.kind = LineKind::Credit;
    line.description = format!("Credit for unused days of {}", plan.name);
    // Negation is exact: Decimal's range is symmetric.
    line.unrounded = -line.unrounded;
    Ok(Some(line))
}

/// Base-fee lines for days [from, to) of period `p` (possibly cut), one per plan segment in
/// that range whose plan bills with `timing`: in arrears at close, in advance ahead of the days.
pub fn segment_lines(
    sub: &Subscription,
    p: &Period,
    (from, to): (Date, Date),
    timing: FeeTiming,
    plan_of: impl Fn(&PlanRef) -> Plan,
) -> Result<Vec<LineDraft>, DomainError> {
    let mut lines = Vec::new();
    for (i, (seg_from, plan_ref)) in sub.plans.iter().enumerate() {
        let seg_to = sub.plans.get(i + 1).map_or(to, |(d, _)| *d);
        let (a, b) = ((*seg_from).max(from), seg_to.min(to));
        if a >= b {
            continue;
        }
        let plan = plan_of(plan_ref);
        if plan.fee_timing == timing {
            lines.extend(base_fee_line(sub, &plan, p, a, b)?);
        }
    }
    Ok(lines)
}

/// Adds one usage point to the open period's aggregate of `metric`.
pub fn add_usage(
    open: &mut OpenPeriod,
    metric: &crate::catalog::Metric,
    keep_amounts: bool,
    point: &UsagePoint,
) -> Result<(), DomainError> {
    let usage = open.usage.entry(metric.code.clone()).or_insert_with(|| MetricUsage {
        aggregate: RunningAggregate::new(metric.aggregation),
        amounts: BTreeMap::new(),
        amounts_complete: true,
    });
    usage.aggregate.add(point)?;
    if keep_amounts {
        usage.amounts.insert((point.occurred_at, point.seq), point.value);
    } else {
        usage.amounts_complete = false;
    }
    Ok(())
}
