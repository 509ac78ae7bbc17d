//! Invoice anomaly flags (docs/decisions/0039-anomaly-flags.md): before an invoice goes out,
//! compare each subscription's period charges with its own history, and a first invoice with
//! its plan's typical one. A flag never changes an amount: it is a note on the invoice (and on
//! the current-usage draft) with its reason and score, for a person to look at.
//!
//! The score is robust: how many spreads the amount lies from the baseline's median, where
//! the spread is 1.4826 × the median absolute deviation (a standard deviation for normal
//! data), floored so that steady usage (a deviation of zero) and tiny amounts do not turn
//! every cent into an outlier. Everything is `Decimal`: scores replay exactly.
//!
//! Rules (constants below):
//! * **spike**: a metric's usage charge is ≥ [`SCORE_FLAG_MIN`] spreads above the median of
//!   the subscription's last periods on the same plan (at least [`HISTORY_PERIODS_MIN`] of
//!   them) and at least [`RATIO_FLAG_MIN`] × that median;
//! * **drop**: ≥ [`SCORE_FLAG_MIN`] spreads below and at most the median / [`RATIO_FLAG_MIN`];
//! * **usage_stopped**: zero where each of the last [`HISTORY_PERIODS_MIN`] periods on the plan
//!   had some;
//! * **first_invoice_high**: the first closing invoice of a subscription on a plan, ≥
//!   [`SCORE_FLAG_MIN`] spreads and ≥ [`FIRST_INVOICE_RATIO_MIN`] × above the median of the
//!   plan's last closing invoices (at least [`PLAN_TOTALS_MIN`] of them, other subscriptions').
//!
//! A draft of a period still running is checked for spikes and a high first invoice only:
//! usage so far is below a whole period's by nature.

use std::collections::BTreeMap;

use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Periods of a subscription's history kept (the newest).
pub const HISTORY_PERIODS_MAX: usize = 6;
/// Periods on the same plan needed before a metric is compared with its history.
pub const HISTORY_PERIODS_MIN: usize = 3;
/// Closing totals kept per plan (the newest, of any subscription).
pub const PLAN_TOTALS_MAX: usize = 32;
/// Closing totals of a plan needed before a first invoice is compared with them.
pub const PLAN_TOTALS_MIN: usize = 5;
/// Spreads from the median at which an amount is flagged.
pub const SCORE_FLAG_MIN: Decimal = Decimal::from_parts(5, 0, 0, false, 0);
/// A spike is also at least this many times the median; a drop at most the median over it.
pub const RATIO_FLAG_MIN: Decimal = Decimal::from_parts(2, 0, 0, false, 0);
/// A first invoice is flagged only at this many times the plan's median or more.
pub const FIRST_INVOICE_RATIO_MIN: Decimal = Decimal::from_parts(3, 0, 0, false, 0);
/// The spread is at least this percentage of the median (steady usage varies this much).
pub const SPREAD_FLOOR_MEDIAN_PERCENT: Decimal = Decimal::from_parts(10, 0, 0, false, 0);
/// ... and at least this percentage of the median period total (small metrics of a large bill).
pub const SPREAD_FLOOR_TOTAL_PERCENT: Decimal = Decimal::from_parts(5, 0, 0, false, 0);
/// 1.4826: a median absolute deviation times this estimates a normal standard deviation.
const MAD_TO_SIGMA: Decimal = Decimal::from_parts(14_826, 0, 0, false, 4);
/// The subject of a flag on the whole invoice rather than one metric.
pub const SUBJECT_TOTAL: &str = "total";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    Spike,
    Drop,
    UsageStopped,
    FirstInvoiceHigh,
}

impl AnomalyKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            AnomalyKind::Spike => "spike",
            AnomalyKind::Drop => "drop",
            AnomalyKind::UsageStopped => "usage_stopped",
            AnomalyKind::FirstInvoiceHigh => "first_invoice_high",
        }
    }
}

/// One reason an invoice looks wrong. It never changes an amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnomalyFlag {
    pub kind: AnomalyKind,
    /// The metric code, or [`SUBJECT_TOTAL`].
    pub subject: String,
    /// This period's amount (usage charge of the metric, or the invoice's charges).
    pub amount: Decimal,
    /// The baseline's median.
    pub typical: Decimal,
    /// (amount − typical) / spread, rounded to 2 places.
    pub score: Decimal,
    /// How many amounts the baseline held.
    pub baseline_size: u32,
}

impl AnomalyFlag {
    /// A sentence for people: what, how far from what, over how much history.
    pub fn reason(&self) -> String {
        let of = match self.kind {
            AnomalyKind::FirstInvoiceHigh => {
                format!("the plan's last {} closing invoices", self.baseline_size)
            }
            _ => format!("the last {} periods on this plan", self.baseline_size),
        };
        let what = match self.kind {
            AnomalyKind::Spike => "far above",
            AnomalyKind::Drop => "far below",
            AnomalyKind::UsageStopped => "zero after steady usage, against",
            AnomalyKind::FirstInvoiceHigh => "a first invoice far above",
        };
        format!(
            "{}: {} is {what} the median {} of {of} (score {})",
            self.subject, self.amount, self.typical, self.score
        )
    }
}

/// One closed period of a subscription, as the rules compare it: the usage charge of each
/// metric and the period's total charges, before coupons and tax, progressive invoices
/// included.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodCharges {
    pub period_start: Date,
    pub plan_code: String,
    pub total: Decimal,
    pub usage: BTreeMap<String, Decimal>,
}

/// A baseline: its median and spread (> 0), and how many values it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Baseline {
    pub median: Decimal,
    pub spread: Decimal,
    pub size: u32,
}

fn median(values: &mut [Decimal]) -> Option<Decimal> {
    values.sort_unstable();
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => values[n / 2 - 1].checked_add(values[n / 2]).map(|s| s / Decimal::TWO),
    }
}

fn percent(of: Decimal, p: Decimal) -> Option<Decimal> {
    of.abs().checked_mul(p).map(|v| v / Decimal::ONE_HUNDRED)
}

/// The baseline of `values`: the median, and a spread of 1.4826 × their median absolute
/// deviation, at least `floor` and [`SPREAD_FLOOR_MEDIAN_PERCENT`] of the median. `None` when
/// there are no values, `floor` is not positive, or an amount is too large to score.
pub fn baseline(values: &[Decimal], floor: Decimal) -> Option<Baseline> {
    if floor <= Decimal::ZERO {
        return None;
    }
    let mut sorted = values.to_vec();
    let m = median(&mut sorted)?;
    let mut deviations =
        sorted.iter().map(|v| v.checked_sub(m).map(|d| d.abs())).collect::<Option<Vec<_>>>()?;
    let mad = median(&mut deviations)?;
    let spread =
        mad.checked_mul(MAD_TO_SIGMA)?.max(percent(m, SPREAD_FLOOR_MEDIAN_PERCENT)?).max(floor);
    Some(Baseline { median: m, spread, size: u32::try_from(values.len()).ok()? })
}

impl Baseline {
    /// (x − median) / spread, rounded to 2 places; `None` on overflow.
    pub fn score(&self, x: Decimal) -> Option<Decimal> {
        Some(x.checked_sub(self.median)?.checked_div(self.spread)?.round_dp(2))
    }
}

/// What to check: an issued invoice or a draft of a period that ended checks everything; a
/// draft of a running period only what usage so far can already show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completeness {
    WholePeriod,
    PeriodSoFar,
}

/// The flags of `candidate` against the subscription's `history` (oldest first; only the
/// newest [`HISTORY_PERIODS_MAX`] on the candidate's plan count) and the plan's newest closing
/// totals `plan_totals`. `minor_unit` (the currency's smallest amount, > 0) floors spreads.
pub fn flags(
    candidate: &PeriodCharges,
    history: &[PeriodCharges],
    plan_totals: &[Decimal],
    minor_unit: Decimal,
    completeness: Completeness,
) -> Vec<AnomalyFlag> {
    let same: Vec<&PeriodCharges> = history
        .iter()
        .rev()
        .filter(|h| h.plan_code == candidate.plan_code)
        .take(HISTORY_PERIODS_MAX)
        .collect();
    let whole = completeness == Completeness::WholePeriod;
    let mut flags = Vec::new();
    if same.is_empty() {
        flags.extend(first_invoice_flag(candidate, plan_totals, minor_unit));
        return flags;
    }
    if same.len() < HISTORY_PERIODS_MIN {
        return flags;
    }
    let totals: Vec<Decimal> = same.iter().map(|h| h.total).collect();
    let Some(total_floor) = baseline(&totals, minor_unit)
        .and_then(|b| percent(b.median, SPREAD_FLOOR_TOTAL_PERCENT))
        .map(|f| f.max(minor_unit))
    else {
        return flags;
    };
    let mut metrics: Vec<&String> = candidate.usage.keys().collect();
    for h in &same {
        metrics.extend(h.usage.keys());
    }
    metrics.sort_unstable();
    metrics.dedup();
    for metric in metrics {
        let of = |c: &PeriodCharges| c.usage.get(metric).copied().unwrap_or_default();
        let values: Vec<Decimal> = same.iter().map(|h| of(h)).collect();
        let x = of(candidate);
        let Some(b) = baseline(&values, total_floor) else { continue };
        let Some(score) = b.score(x) else { continue };
        // `values` are newest first: the last periods before this one all had usage.
        let steady = values.iter().take(HISTORY_PERIODS_MIN).all(|v| *v > Decimal::ZERO);
        let kind = if whole && x.is_zero() && steady {
            Some(AnomalyKind::UsageStopped)
        } else if score >= SCORE_FLAG_MIN
            && b.median.checked_mul(RATIO_FLAG_MIN).is_some_and(|r| x >= r)
        {
            Some(AnomalyKind::Spike)
        } else if whole
            && score <= -SCORE_FLAG_MIN
            && x.checked_mul(RATIO_FLAG_MIN).is_some_and(|r| r <= b.median)
        {
            Some(AnomalyKind::Drop)
        } else {
            None
        };
        if let Some(kind) = kind {
            flags.push(AnomalyFlag {
                kind,
                subject: metric.clone(),
                amount: x,
                typical: b.median,
                score,
                baseline_size: b.size,
            });
        }
    }
    flags
}

fn first_invoice_flag(
    candidate: &PeriodCharges,
    plan_totals: &[Decimal],
    minor_unit: Decimal,
) -> Option<AnomalyFlag> {
    if plan_totals.len() < PLAN_TOTALS_MIN {
        return None;
    }
    let b = baseline(plan_totals, minor_unit)?;
    let score = b.score(candidate.total)?;
    let far = b.median.checked_mul(FIRST_INVOICE_RATIO_MIN)?;
    (score >= SCORE_FLAG_MIN && candidate.total >= far && candidate.total > Decimal::ZERO).then(
        || AnomalyFlag {
            kind: AnomalyKind::FirstInvoiceHigh,
            subject: SUBJECT_TOTAL.to_string(),
            amount: candidate.total,
            typical: b.median,
            score,
            baseline_size: b.size,
        },
    )
}

/// Appends `value` to a bounded history, dropping the oldest past `max`.
pub fn push_bounded<T>(history: &mut Vec<T>, value: T, max: usize) {
    history.push(value);
    if history.len() > max {
        let excess = history.len() - max;
        history.drain(..excess);
    }
}

#[cfg(test)]
mod tests;
