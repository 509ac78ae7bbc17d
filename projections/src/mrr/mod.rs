//! The `mrr` read model (SPEC §5): monthly recurring revenue per currency (never converted), the
//! movements that change it (`new`, `expansion`, `contraction`, `churn`, `reactivation`) per
//! day and month, net / gross revenue retention of a cohort over a window, and usage revenue
//! beside MRR. The rules themselves are `domain::mrr`'s ([`subscription_mrr`],
//! [`discounted_mrr`], [`classify`], [`retention`]) and `domain::coupon`'s (`HeldCoupon`);
//! this module only dates and stores them.
//!
//! # Rules
//!
//! * A subscription's MRR is [`subscription_mrr`] of its plan version (computed once when the
//!   plan is published), from its `start_date`; 0 while it is in a trial (a subscription started
//!   with a `trial_end` is in trial until its `TrialEnded` event's date; before that event is in
//!   the log, its MRR stays 0 on every date); 0 from its cancellation's `effective_date` (the
//!   exclusive end of service: churn is dated at the end of service, even when the cancellation
//!   was recorded earlier, e.g. "at period end").
//! * `PlanChanged` (upgrade: today; downgrade: the end of the period, recorded at its close)
//!   switches the plan from its `effective_date`. `PlanChangeScheduled` changes nothing: a
//!   scheduled downgrade becomes a movement when its `PlanChanged` is recorded.
//! * Coupons (docs/decisions/0034-mrr-discounts.md): while a `recurring` or `forever` coupon
//!   applies to a customer, each of its subscriptions' MRR is [`discounted_mrr`] of it, the
//!   coupons that apply on that date combined in the order they were applied (eligibility,
//!   percentage and fixed amount as `domain::coupon` rules them; a fixed amount per interval,
//!   normalized to a month, on every eligible subscription; never below zero). `once` coupons,
//!   coupons limited to metrics, and one-off invoices are never MRR. A coupon applies from the
//!   customer-local date of its `CouponApplied` until (exclusive) the first of: the local date
//!   of its `CouponRemoved`; the local date it is applied again (the new application takes
//!   over); for a `recurring` coupon, the end of what the invoice that used its last period
//!   discounted (the latest service-period end of that invoice's discounted lines; what is
//!   left of its periods follows the invoices' `coupons` with `HeldCoupon::record_use`). Until
//!   that invoice is in the log the coupon applies on every later date, as a trial does until
//!   `TrialEnded`. A voided invoice does not give a period back (as in the write model).
//!   A discount starting is a contraction (churn if it takes the customer's MRR to 0), its end
//!   an expansion (or reactivation); on a customer's first day it is part of `new`.
//! * A customer's MRR (per currency; a customer's subscriptions share its currency) is the sum
//!   of its subscriptions' (net of coupons) on each local date. Every date on which it differs from the day
//!   before is one movement of that customer, classified by [`classify`] with "had MRR before"
//!   = MRR > 0 on some earlier date. Movements are dated by the business effective date, not by
//!   when they were recorded: an event may restate a customer's later movements (a subscription
//!   started after a cancellation was recorded turns that future churn into a contraction), so
//!   a change recomputes the customer's whole movement list and rewrites what differs.
//! * "MRR at D" = Σ of the movements dated ≤ D (changes effective on D count on D). Hence, for
//!   any dates a ≤ b: Σ movements over [a, b] = MRR(b) − MRR(a − 1 day).
//! * Retention over [start, end]: the cohort is the customers with MRR > 0 at `start`;
//!   [`retention`] of their (MRR at start, MRR at end). Default window: 12 months ending at
//!   `end` ([`MrrReader::retention_trailing_year`]).
//! * Usage revenue: the amounts of `usage` and `usage_in_advance` lines of issued invoices,
//!   dated by the **last day of the line's service period** (period end − 1 day). Service
//!   periods are local dates, so no time zone is needed, and a period's usage lands in the
//!   month it was consumed in (the issue date lags by the grace period and would move December
//!   usage into January). In-advance usage is dated the same way (its service period is the
//!   billing period). A voided invoice's usage is removed again. Not part of MRR.
//!
//! # Keys
//!
//! `<cur>` is the ISO 4217 code, `<date>` a local date `YYYY-MM-DD` (sorts by date), values are
//! JSON with a `"v": 1` field, built from structs, `Vec`s and `BTreeMap`s only, so a value is a
//! pure function of the log prefix and the digest does not depend on batch boundaries.
//!
//! * `plan/<code>/<version:010>` → [`PlanRecord`]: the plan's currency, interval and MRR
//!   (outside trial).
//! * `cust/<customer>` → [`CustomerRecord`]: its currency and time zone (to date coupons).
//! * `cpn/<code>` → [`CouponRecord`]: the coupon as defined.
//! * `sub/<subscription_id>` → [`SubPointer`]: its customer and currency.
//! * `acct/<cur>/<customer>` → [`Account`]: each subscription's MRR inputs ([`SubState`]), the
//!   customer's recurring and forever coupons ([`CouponSpan`]) and its derived movement list.
//! * `mv/<cur>/<date>/<customer>` → [`MovementEntry`]: the customer's movement on that date
//!   (at most one per customer and day: the net change of the day).
//! * `day/<cur>/<date>` → [`DayTotals`]: count and amount per movement kind on that date
//!   (deleted when no movement is left on it). Month views are summed from days at read time.
//! * `use/<cur>/<date>` → [`UsageDay`]: usage revenue dated that day.
//! * `uinv/<invoice_id>` → [`UsageInvoice`]: what an invoice added to `use/`, for its void.

use std::collections::{BTreeMap, BTreeSet};

use domain::calendar::Interval;
use domain::catalog::{Plan, PlanRef};
use domain::coupon::{Coupon, HeldCoupon};
use domain::events::Event;
use domain::invoice::{Invoice, LineKind};
use domain::money::{checked_sum, Currency};
use domain::mrr::{classify, discounted_mrr, retention, subscription_mrr, BaseMrr, Movement};
use event_store::{Position, RecordedEvent};
use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::{corrupt, ReadModel, Snapshot, Writes};
use crate::{Projection, ProjectionError, Result};

/// The projection's name (tree `projection/mrr`).
pub const NAME: &str = "mrr";
/// Version of every record's encoding (their `v` field).
pub const RECORD_VERSION: u16 = 1;
/// Months of the default retention window.
pub const RETENTION_WINDOW_MONTHS: i64 = 12;
/// Page size of [`MrrReader::customer_movements_page`] when a caller asks for 0.
pub const PAGE_SIZE_DEFAULT: usize = 100;
/// Largest page; larger requests are served this many.
pub const PAGE_SIZE_MAX: usize = 1_000;

// ------------------------------------------------------------------------------- records

/// A published plan version, as MRR needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub v: u16,
    pub currency: Currency,
    pub interval: Interval,
    /// [`subscription_mrr`] outside a trial.
    pub mrr: Decimal,
}

/// A customer, as MRR needs it: the account's currency and the time zone that dates its
/// coupons.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRecord {
    pub v: u16,
    pub currency: Currency,
    pub time_zone: String,
}

/// A coupon of the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponRecord {
    pub v: u16,
    pub coupon: Coupon,
}

/// One application of a `recurring` or `forever` coupon to a customer: it discounts the
/// customer's subscriptions on the dates in [`from`, `until`).
///
/// [`from`]: CouponSpan::from
/// [`until`]: CouponSpan::until
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponSpan {
    /// The coupon as the customer holds it: what is left of a recurring one's periods, kept
    /// with the domain's `record_use` from what each issued invoice's coupons gave.
    pub held: HeldCoupon,
    /// The customer-local date it was applied.
    pub from: Date,
    /// Exclusive end, once known: the date it was removed or applied again, or the end of
    /// the service period of the invoice that used a recurring coupon's last period.
    pub until: Option<Date>,
}

impl CouponSpan {
    fn applies_on(&self, d: Date) -> bool {
        self.from <= d && self.until.is_none_or(|u| d < u)
    }

    /// Ends it on `date` (never before it began; an earlier end stays).
    fn end(&mut self, date: Date) {
        let date = date.max(self.from);
        self.until = Some(self.until.map_or(date, |u| u.min(date)));
    }
}

/// Where a subscription's account lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubPointer {
    pub v: u16,
    pub customer_id: String,
    pub currency: Currency,
}

/// One plan of a subscription from a date on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSegment {
    pub from: Date,
    pub plan: PlanRef,
    pub interval: Interval,
    pub mrr: Decimal,
}

/// What a subscription's MRR on any date follows from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubState {
    pub start: Date,
    /// Ascending by `from`; the first starts at `start`.
    pub plans: Vec<PlanSegment>,
    /// Started with a trial.
    pub trial: bool,
    /// The `TrialEnded` date, once recorded.
    pub trial_ended: Option<Date>,
    /// End of service (exclusive), once canceled.
    pub ends_on: Option<Date>,
}

impl SubState {
    /// The plan it pays for on local date `d`: `None` before its start, from its end of
    /// service and during a trial.
    fn billed_plan_at(&self, d: Date) -> Option<&PlanSegment> {
        let out = d < self.start || self.ends_on.is_some_and(|e| d >= e);
        let in_trial = self.trial && self.trial_ended.is_none_or(|t| d < t);
        if out || in_trial {
            return None;
        }
        let i = self.plans.partition_point(|s| s.from <= d);
        self.plans.get(i.wrapping_sub(1))
    }

    /// The subscription's MRR on local date `d` before coupons.
    pub fn mrr_at(&self, d: Date) -> Decimal {
        self.billed_plan_at(d).map_or(Decimal::ZERO, |s| s.mrr)
    }

    /// The subscription's MRR on local date `d` while `coupons` (in the order applied) apply.
    pub fn discounted_mrr_at(&self, d: Date, coupons: &[&Coupon], cur: Currency) -> Decimal {
        match self.billed_plan_at(d) {
            None => Decimal::ZERO,
            Some(s) if coupons.is_empty() => s.mrr,
            Some(s) => {
                let base = BaseMrr { mrr: s.mrr, plan_code: &s.plan.code, interval: s.interval };
                discounted_mrr(&base, coupons, cur)
            }
        }
    }

    /// Every date on which the MRR may change.
    fn breakpoints(&self) -> impl Iterator<Item = Date> + '_ {
        let plans = self.plans.iter().map(|s| s.from);
        std::iter::once(self.start).chain(plans).chain(self.trial_ended).chain(self.ends_on)
    }
}

/// A customer's movement (the net change of its MRR on one date).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovementRecord {
    pub date: Date,
    pub movement: Movement,
    /// Customer MRR the day before.
    pub before: Decimal,
    /// Customer MRR on `date`.
    pub after: Decimal,
}

/// The value of a `mv/` key: a [`MovementRecord`] with the encoding version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovementEntry {
    pub v: u16,
    #[serde(flatten)]
    pub record: MovementRecord,
}

impl MovementRecord {
    pub fn delta(&self) -> Decimal {
        self.after - self.before
    }
}

/// A customer in one currency: its subscriptions and the movements they make.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub v: u16,
    pub subs: BTreeMap<String, SubState>,
    /// The customer's `recurring` and `forever` coupons, in the order applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coupons: Vec<CouponSpan>,
    /// Ascending by date.
    pub movements: Vec<MovementRecord>,
}

impl Account {
    /// The customer's MRR in `cur` (the account's currency) on `d`, net of the coupons that
    /// apply on `d`; `None` if the sum over its subscriptions overflows.
    pub fn mrr_at(&self, d: Date, cur: Currency) -> Option<Decimal> {
        let coupons: Vec<&Coupon> =
            self.coupons.iter().filter(|c| c.applies_on(d)).map(|c| &c.held.coupon).collect();
        checked_sum(self.subs.values().map(|s| s.discounted_mrr_at(d, &coupons, cur)))
    }

    /// The movement list that follows from `subs` and `coupons`, or the date whose MRR
    /// overflows.
    fn derive_movements(&self, cur: Currency) -> Result<Vec<MovementRecord>, Date> {
        let coupon_dates = self.coupons.iter().flat_map(|c| std::iter::once(c.from).chain(c.until));
        let dates: BTreeSet<Date> =
            self.subs.values().flat_map(SubState::breakpoints).chain(coupon_dates).collect();
        let (mut before, mut had) = (Decimal::ZERO, false);
        let mut out = Vec::new();
        for date in dates {
            let after = self.mrr_at(date, cur).ok_or(date)?;
            if let Some(movement) = classify(before, after, had) {
                out.push(MovementRecord { date, movement, before, after });
            }
            had |= after > Decimal::ZERO;
            before = after;
        }
        Ok(out)
    }
}

/// Count and amount of one movement kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovementTotals {
    pub count: u64,
    /// Σ of the deltas (negative for contraction and churn).
    pub amount: Decimal,
}

/// Movements of all customers on one date, by kind in [`Movement::ALL`] order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayTotals {
    pub v: u16,
    pub kinds: [MovementTotals; 5],
}

/// Usage revenue dated one day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageDay {
    pub v: u16,
    /// Usage lines counted.
    pub lines: u64,
    pub amount: Decimal,
}

/// What an invoice added to usage revenue: (date, lines, amount) per date.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageInvoice {
    pub v: u16,
    pub currency: Currency,
    pub days: Vec<(Date, u64, Decimal)>,
}

fn kind_index(m: Movement) -> usize {
    Movement::ALL.iter().position(|k| *k == m).expect("ALL lists every movement")
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("mrr records always serialize")
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    #[derive(Deserialize)]
    struct Version {
        v: u16,
    }
    let version: Version =
        serde_json::from_slice(bytes).map_err(|e| corrupt(NAME, format!("{what}: {e}")))?;
    if version.v != RECORD_VERSION {
        return Err(corrupt(NAME, format!("unknown {what} version {}", version.v)));
    }
    serde_json::from_slice(bytes).map_err(|e| corrupt(NAME, format!("{what}: {e}")))
}

// ---------------------------------------------------------------------------------- keys

fn plan_key(plan: &PlanRef) -> String {
    format!("plan/{}/{:010}", plan.code, plan.version)
}

fn customer_key(id: &str) -> String {
    format!("cust/{id}")
}

fn coupon_key(code: &str) -> String {
    format!("cpn/{code}")
}

fn sub_key(id: &str) -> String {
    format!("sub/{id}")
}

fn account_key(cur: Currency, customer: &str) -> String {
    format!("acct/{cur}/{customer}")
}

fn movement_key(cur: Currency, date: Date, customer: &str) -> String {
    format!("mv/{cur}/{date}/{customer}")
}

fn day_key(cur: Currency, date: Date) -> String {
    format!("day/{cur}/{date}")
}

fn usage_key(cur: Currency, date: Date) -> String {
    format!("use/{cur}/{date}")
}

fn usage_invoice_key(id: &str) -> String {
    format!("uinv/{id}")
}

fn inconsistent(position: Position, detail: impl Into<String>) -> ProjectionError {
    ProjectionError::Inconsistent { projection: NAME, position, detail: detail.into() }
}

/// A query's sum past `Decimal`'s range (INTERNAL at the service): nothing is made up.
fn sum_overflow(what: impl std::fmt::Display) -> ProjectionError {
    corrupt(NAME, format!("{what} overflows the decimal range when summed"))
}

/// An amount of the event at `position` past `Decimal`'s range (a log written before the input
/// bounds): the batch fails through the runner's error path and nothing of it is written.
fn overflow(position: Position, what: impl std::fmt::Display) -> ProjectionError {
    inconsistent(position, format!("{what} overflows the decimal range"))
}

mod projection;
mod reader;
#[cfg(test)]
mod tests;

pub use projection::MrrProjection;
pub use reader::{
    CustomerMovement, CustomerMovementPage, Granularity, MovementBucket, MrrReader, Retention,
    UsageBucket,
};
