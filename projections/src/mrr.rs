//! The `mrr` read model (SPEC §5): monthly recurring revenue per currency (never converted), the
//! movements that change it (`new`, `expansion`, `contraction`, `churn`, `reactivation`) per
//! day and month, net / gross revenue retention of a cohort over a window, and usage revenue
//! beside MRR. The rules themselves are `domain::mrr`'s ([`subscription_mrr`], [`classify`],
//! [`retention`]); this module only dates and stores them.
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
//! * A customer's MRR (per currency; a customer's subscriptions share its currency) is the sum
//!   of its subscriptions' on each local date. Every date on which it differs from the day
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
//! * `plan/<code>/<version:010>` → [`PlanRecord`]: the plan's currency and MRR (outside trial).
//! * `sub/<subscription_id>` → [`SubPointer`]: its customer and currency.
//! * `acct/<cur>/<customer>` → [`Account`]: each subscription's MRR inputs ([`SubState`]) and
//!   the customer's derived movement list.
//! * `mv/<cur>/<date>/<customer>` → [`MovementEntry`]: the customer's movement on that date
//!   (at most one per customer and day: the net change of the day).
//! * `day/<cur>/<date>` → [`DayTotals`]: count and amount per movement kind on that date
//!   (deleted when no movement is left on it). Month views are summed from days at read time.
//! * `use/<cur>/<date>` → [`UsageDay`]: usage revenue dated that day.
//! * `uinv/<invoice_id>` → [`UsageInvoice`]: what an invoice added to `use/`, for its void.

use std::collections::{BTreeMap, BTreeSet};

use domain::catalog::{Plan, PlanRef};
use domain::events::Event;
use domain::invoice::{Invoice, LineKind};
use domain::money::{checked_sum, Currency};
use domain::mrr::{classify, retention, subscription_mrr, Movement};
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
    /// [`subscription_mrr`] outside a trial.
    pub mrr: Decimal,
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
    /// The subscription's MRR on local date `d`.
    pub fn mrr_at(&self, d: Date) -> Decimal {
        let out = d < self.start || self.ends_on.is_some_and(|e| d >= e);
        let in_trial = self.trial && self.trial_ended.is_none_or(|t| d < t);
        if out || in_trial {
            return Decimal::ZERO;
        }
        let i = self.plans.partition_point(|s| s.from <= d);
        self.plans.get(i.wrapping_sub(1)).map_or(Decimal::ZERO, |s| s.mrr)
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
    /// Ascending by date.
    pub movements: Vec<MovementRecord>,
}

impl Account {
    /// The customer's MRR on `d`; `None` if the sum over its subscriptions overflows.
    pub fn mrr_at(&self, d: Date) -> Option<Decimal> {
        checked_sum(self.subs.values().map(|s| s.mrr_at(d)))
    }

    /// The movement list that follows from `subs`, or the date whose MRR overflows.
    fn derive_movements(&self) -> Result<Vec<MovementRecord>, Date> {
        let dates: BTreeSet<Date> = self.subs.values().flat_map(SubState::breakpoints).collect();
        let (mut before, mut had) = (Decimal::ZERO, false);
        let mut out = Vec::new();
        for date in dates {
            let after = self.mrr_at(date).ok_or(date)?;
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

// ---------------------------------------------------------------------------- projection

/// The `mrr` projection.
#[derive(Clone, Copy, Debug, Default)]
pub struct MrrProjection;

impl Projection for MrrProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn wants(&self, event_type: &str) -> bool {
        [
            "PlanPublished",
            "SubscriptionStarted",
            "TrialEnded",
            "PlanChanged",
            "SubscriptionCanceled",
            "InvoiceIssued",
            "InvoiceVoided",
        ]
        .contains(&event_type)
    }

    /// Writes the accounts this batch changed (kept decoded in [`Writes::memo`] until now).
    fn finish_batch(&mut self, w: &mut Writes<'_>) -> Result<()> {
        for (key, acct) in std::mem::take(w.memo::<Account>()) {
            w.put(key, encode(&acct));
        }
        Ok(())
    }

    fn apply(&mut self, w: &mut Writes<'_>, event: &RecordedEvent, decoded: &Event) -> Result<()> {
        let pos = event.position;
        match decoded {
            Event::PlanPublished(plan) => publish(w, plan),
            Event::SubscriptionStarted {
                subscription_id,
                customer_id,
                plan,
                start_date,
                trial_end,
                ..
            } => {
                let rec = load_plan(w, plan, pos)?;
                if w.get(sub_key(subscription_id).as_bytes())?.is_some() {
                    let detail = format!("subscription {subscription_id} started twice");
                    return Err(inconsistent(pos, detail));
                }
                let pointer = SubPointer {
                    v: RECORD_VERSION,
                    customer_id: customer_id.clone(),
                    currency: rec.currency,
                };
                w.put(sub_key(subscription_id), encode(&pointer));
                let state = SubState {
                    start: *start_date,
                    plans: vec![PlanSegment {
                        from: *start_date,
                        plan: plan.clone(),
                        mrr: rec.mrr,
                    }],
                    trial: trial_end.is_some(),
                    trial_ended: None,
                    ends_on: None,
                };
                change_account(w, rec.currency, customer_id, pos, |acct| {
                    acct.subs.insert(subscription_id.clone(), state);
                    Ok(())
                })
            }
            Event::TrialEnded { subscription_id, date } => {
                change_sub(w, subscription_id, pos, |_, s| {
                    s.trial_ended = Some(*date);
                    Ok(())
                })
            }
            Event::PlanChanged { subscription_id, plan, effective_date, .. } => {
                let rec = load_plan(w, plan, pos)?;
                change_sub(w, subscription_id, pos, |cur, s| {
                    if rec.currency != cur {
                        return Err(format!("plan {plan:?} is not in {cur}"));
                    }
                    s.plans.retain(|seg| seg.from < *effective_date);
                    let seg =
                        PlanSegment { from: *effective_date, plan: plan.clone(), mrr: rec.mrr };
                    s.plans.push(seg);
                    Ok(())
                })
            }
            Event::SubscriptionCanceled { subscription_id, effective_date, .. } => {
                change_sub(w, subscription_id, pos, |_, s| {
                    s.ends_on = Some(*effective_date);
                    Ok(())
                })
            }
            Event::InvoiceIssued(invoice) => add_usage(w, invoice, pos),
            Event::InvoiceVoided { invoice_id, .. } => void_usage(w, invoice_id, pos),
            _ => Ok(()),
        }
    }
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

fn publish(w: &mut Writes<'_>, plan: &Plan) -> Result<()> {
    let rec = PlanRecord {
        v: RECORD_VERSION,
        currency: plan.currency,
        mrr: subscription_mrr(plan, false),
    };
    w.put(plan_key(&plan.plan_ref()), encode(&rec));
    Ok(())
}

fn load_plan(w: &Writes<'_>, plan: &PlanRef, pos: Position) -> Result<PlanRecord> {
    match w.get(plan_key(plan).as_bytes())? {
        Some(bytes) => decode("plan record", &bytes),
        None => Err(inconsistent(pos, format!("unknown plan {} v{}", plan.code, plan.version))),
    }
}

/// Changes one subscription's state and restates its customer's movements.
fn change_sub(
    w: &mut Writes<'_>,
    id: &str,
    pos: Position,
    change: impl FnOnce(Currency, &mut SubState) -> Result<(), String>,
) -> Result<()> {
    let bytes = w.get(sub_key(id).as_bytes())?;
    let bytes = bytes.ok_or_else(|| inconsistent(pos, format!("unknown subscription {id}")))?;
    let pointer: SubPointer = decode("subscription pointer", &bytes)?;
    let cur = pointer.currency;
    change_account(w, cur, &pointer.customer_id, pos, |acct| {
        let missing = || corrupt(NAME, format!("subscription {id} missing from its account"));
        let state = acct.subs.get_mut(id).ok_or_else(missing)?;
        change(cur, state).map_err(|detail| inconsistent(pos, detail))
    })
}

/// Loads an account, changes it, re-derives its movements and writes what differs: the
/// movement keys and the day totals of the movements that appeared or disappeared. An MRR
/// past `Decimal`'s range fails the event (`pos`) and writes nothing.
fn change_account(
    w: &mut Writes<'_>,
    cur: Currency,
    customer: &str,
    pos: Position,
    change: impl FnOnce(&mut Account) -> Result<()>,
) -> Result<()> {
    let key = account_key(cur, customer).into_bytes();
    let mut acct = match w.memo::<Account>().remove(&key) {
        Some(acct) => acct,
        None => match w.get(&key)? {
            Some(bytes) => decode("account", &bytes)?,
            None => Account { v: RECORD_VERSION, ..Account::default() },
        },
    };
    change(&mut acct)?;
    let movements = acct.derive_movements().map_err(|date| {
        overflow(pos, format_args!("MRR of customer {customer} ({cur}) on {date}"))
    })?;
    for old in acct.movements.iter().filter(|m| !movements.contains(m)) {
        w.delete(movement_key(cur, old.date, customer));
        add_to_day(w, cur, old, -1, pos)?;
    }
    for new in movements.iter().filter(|m| !acct.movements.contains(m)) {
        let entry = MovementEntry { v: RECORD_VERSION, record: new.clone() };
        w.put(movement_key(cur, new.date, customer), encode(&entry));
        add_to_day(w, cur, new, 1, pos)?;
    }
    acct.movements = movements;
    // Encoded once per batch, in `finish_batch`: a customer with many subscriptions has a
    // large account, and a batch often changes it many times (its subscriptions starting).
    w.memo::<Account>().insert(key, acct);
    Ok(())
}

/// Adds (`sign` 1) or removes (`sign` −1) one movement from its day's totals.
fn add_to_day(
    w: &mut Writes<'_>,
    cur: Currency,
    m: &MovementRecord,
    sign: i64,
    pos: Position,
) -> Result<()> {
    let key = day_key(cur, m.date);
    let mut day = match w.get(key.as_bytes())? {
        Some(bytes) => decode("day totals", &bytes)?,
        None => DayTotals { v: RECORD_VERSION, ..DayTotals::default() },
    };
    let totals = &mut day.kinds[kind_index(m.movement)];
    totals.count = totals
        .count
        .checked_add_signed(sign)
        .ok_or_else(|| corrupt(NAME, format!("day totals of {} went negative", m.date)))?;
    let what = || format!("{} MRR movements ({cur}) on {}", m.movement.as_str(), m.date);
    let delta = m.after.checked_sub(m.before).map(|d| d * Decimal::from(sign));
    totals.amount =
        delta.and_then(|d| totals.amount.checked_add(d)).ok_or_else(|| overflow(pos, what()))?;
    if day.kinds.iter().all(|k| k.count == 0) {
        w.delete(key);
    } else {
        w.put(key, encode(&day));
    }
    Ok(())
}

/// The last day of a usage line's service period.
fn usage_date(line_period: &domain::calendar::Period) -> Date {
    line_period.end.yesterday().unwrap_or(line_period.end).max(line_period.start)
}

fn add_usage(w: &mut Writes<'_>, invoice: &Invoice, pos: Position) -> Result<()> {
    let mut days: BTreeMap<Date, (u64, Decimal)> = BTreeMap::new();
    for line in &invoice.lines {
        if matches!(line.kind, LineKind::Usage | LineKind::UsageInAdvance) {
            let date = usage_date(&line.service_period);
            let day = days.entry(date).or_default();
            day.0 += 1;
            day.1 = day.1.checked_add(line.amount).ok_or_else(|| {
                overflow(pos, format_args!("usage of invoice {} on {date}", invoice.invoice_id))
            })?;
        }
    }
    if days.is_empty() {
        return Ok(());
    }
    let key = usage_invoice_key(&invoice.invoice_id);
    if w.get(key.as_bytes())?.is_some() {
        return Err(inconsistent(pos, format!("invoice {} issued twice", invoice.invoice_id)));
    }
    let days: Vec<(Date, u64, Decimal)> = days.into_iter().map(|(d, (n, a))| (d, n, a)).collect();
    let cur = invoice.currency;
    for (date, lines, amount) in &days {
        change_usage_day(w, cur, *date, *lines as i64, *amount, pos)?;
    }
    w.put(key, encode(&UsageInvoice { v: RECORD_VERSION, currency: cur, days }));
    Ok(())
}

fn void_usage(w: &mut Writes<'_>, invoice_id: &str, pos: Position) -> Result<()> {
    let key = usage_invoice_key(invoice_id);
    let Some(bytes) = w.get(key.as_bytes())? else { return Ok(()) };
    let rec: UsageInvoice = decode("usage invoice", &bytes)?;
    for (date, lines, amount) in &rec.days {
        change_usage_day(w, rec.currency, *date, -(*lines as i64), -*amount, pos)?;
    }
    w.delete(key);
    Ok(())
}

fn change_usage_day(
    w: &mut Writes<'_>,
    cur: Currency,
    date: Date,
    lines: i64,
    amount: Decimal,
    pos: Position,
) -> Result<()> {
    let key = usage_key(cur, date);
    let mut day = match w.get(key.as_bytes())? {
        Some(bytes) => decode("usage day", &bytes)?,
        None => UsageDay { v: RECORD_VERSION, ..UsageDay::default() },
    };
    day.lines = day
        .lines
        .checked_add_signed(lines)
        .ok_or_else(|| corrupt(NAME, format!("usage lines of {date} went negative")))?;
    day.amount = day
        .amount
        .checked_add(amount)
        .ok_or_else(|| overflow(pos, format_args!("usage revenue ({cur}) on {date}")))?;
    if day.lines == 0 {
        w.delete(key);
    } else {
        w.put(key, encode(&day));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------- reads

/// Bucket size of a time series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Day,
    /// Calendar months, each bucket starting on the 1st.
    Month,
}

impl Granularity {
    /// The first day of the bucket holding `d`.
    pub fn bucket(self, d: Date) -> Date {
        match self {
            Granularity::Day => d,
            Granularity::Month => d.first_of_month(),
        }
    }
}

/// Movements of one day or month.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovementBucket {
    /// The day, or the first of the month.
    pub start: Date,
    /// By kind, in [`Movement::ALL`] order.
    pub totals: BTreeMap<Movement, MovementTotals>,
    /// Σ of all deltas: the change of MRR over the bucket.
    pub net: Decimal,
}

/// One customer's movement, for listings and exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerMovement {
    pub customer_id: String,
    pub record: MovementRecord,
}

/// One page of customer movements ([`MrrReader::customer_movements_page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerMovementPage {
    pub movements: Vec<CustomerMovement>,
    /// Present when more movements follow; pass it back to get the next page.
    pub next_page_token: Option<String>,
    /// The read model's checkpoint the page was read at.
    pub position: Position,
}

/// Usage revenue of one day or month.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageBucket {
    pub start: Date,
    pub lines: u64,
    pub amount: Decimal,
}

/// Retention of the cohort with MRR > 0 at `start`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    pub start: Date,
    pub end: Date,
    pub cohort_size: usize,
    /// Σ MRR at start of the cohort.
    pub mrr_start: Decimal,
    /// Σ MRR at end of the cohort.
    pub mrr_end: Decimal,
    /// Σ min(MRR end, MRR start) of the cohort.
    pub mrr_kept: Decimal,
    /// NRR and GRR as ratios (1.05 = 105 %); `None` for an empty cohort.
    pub nrr: Option<Decimal>,
    pub grr: Option<Decimal>,
}

/// Read-only access to the MRR read model.
#[derive(Clone)]
pub struct MrrReader {
    model: ReadModel,
}

fn check_range(from: Date, to: Date) -> Result<()> {
    if from > to {
        let msg = format!("from {from} is after to {to}");
        return Err(ProjectionError::InvalidArgument(msg));
    }
    Ok(())
}

/// `(date, value)` of every key `<prefix><date>` with from ≤ date ≤ to.
fn scan_dates<T: DeserializeOwned>(
    snap: &Snapshot<'_>,
    prefix: &str,
    from: Option<Date>,
    to: Date,
    what: &str,
) -> Result<Vec<(Date, T)>> {
    let after = from.and_then(|f| f.yesterday().ok()).map(|d| d.to_string());
    let mut out = Vec::new();
    for (key, value) in
        snap.scan(prefix.as_bytes(), after.as_deref().map(str::as_bytes), usize::MAX)?
    {
        let text = std::str::from_utf8(&key[prefix.len()..]).ok();
        let date: Date = text
            .and_then(|t| t.split('/').next())
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| corrupt(NAME, format!("key {key:?} has no date")))?;
        if from.is_some_and(|f| date < f) {
            continue;
        }
        if date > to {
            break;
        }
        out.push((date, decode(what, &value)?));
    }
    Ok(out)
}

/// A movement page token: `<YYYY-MM-DD>/<customer_id>`.
fn check_movement_token(token: &str) -> Result<()> {
    let valid = token.split_once('/').is_some_and(|(date, customer)| {
        date.len() == 10 && date.parse::<Date>().is_ok() && check_customer(customer).is_ok()
    });
    if valid {
        Ok(())
    } else {
        Err(ProjectionError::InvalidArgument(format!("invalid page token {token:?}")))
    }
}

fn check_customer(customer: &str) -> Result<()> {
    if customer.is_empty() || customer.contains('/') {
        let msg = format!("customer_id {customer:?} must be non-empty without '/'");
        return Err(ProjectionError::InvalidArgument(msg));
    }
    Ok(())
}

impl MrrReader {
    /// Wraps the read model of an [`MrrProjection`] runner.
    pub fn new(model: ReadModel) -> Self {
        assert_eq!(model.name(), NAME, "not the mrr read model");
        MrrReader { model }
    }

    pub fn model(&self) -> &ReadModel {
        &self.model
    }

    /// Total MRR in `currency` on local date `date` (changes effective on `date` included).
    pub fn mrr_at(&self, date: Date, currency: Currency) -> Result<Decimal> {
        let prefix = format!("day/{currency}/");
        self.model.read(|snap| {
            let days: Vec<(Date, DayTotals)> = scan_dates(snap, &prefix, None, date, "day totals")?;
            let amounts = days.iter().flat_map(|(_, d)| d.kinds.iter()).map(|k| k.amount);
            checked_sum(amounts).ok_or_else(|| sum_overflow(format_args!("MRR ({currency})")))
        })
    }

    /// A customer's MRR in `currency` on `date` (0 for an unknown customer).
    pub fn customer_mrr_at(
        &self,
        customer_id: &str,
        date: Date,
        currency: Currency,
    ) -> Result<Decimal> {
        check_customer(customer_id)?;
        let key = account_key(currency, customer_id);
        self.model.read(|snap| match snap.get(key.as_bytes())? {
            Some(bytes) => decode::<Account>("account", &bytes)?
                .mrr_at(date)
                .ok_or_else(|| sum_overflow(format_args!("MRR of customer {customer_id}"))),
            None => Ok(Decimal::ZERO),
        })
    }

    /// Movements in `currency` dated in [from, to], aggregated per day or month (only buckets
    /// with movements are listed).
    pub fn movements(
        &self,
        from: Date,
        to: Date,
        granularity: Granularity,
        currency: Currency,
    ) -> Result<Vec<MovementBucket>> {
        check_range(from, to)?;
        let prefix = format!("day/{currency}/");
        let days: Vec<(Date, DayTotals)> =
            self.model.read(|snap| scan_dates(snap, &prefix, Some(from), to, "day totals"))?;
        let mut buckets: Vec<MovementBucket> = Vec::new();
        for (date, day) in days {
            let start = granularity.bucket(date);
            if buckets.last().is_none_or(|b| b.start != start) {
                let totals =
                    Movement::ALL.iter().map(|m| (*m, MovementTotals::default())).collect();
                buckets.push(MovementBucket { start, totals, net: Decimal::ZERO });
            }
            let bucket = buckets.last_mut().expect("pushed above");
            for (m, t) in Movement::ALL.iter().zip(day.kinds) {
                let total = bucket.totals.get_mut(m).expect("every kind is listed");
                let what = || sum_overflow(format_args!("MRR movements ({currency}) of {start}"));
                total.count += t.count;
                total.amount = total.amount.checked_add(t.amount).ok_or_else(what)?;
                bucket.net = bucket.net.checked_add(t.amount).ok_or_else(what)?;
            }
        }
        Ok(buckets)
    }

    /// Every customer's movement in `currency` dated in [from, to], by date then customer.
    pub fn customer_movements(
        &self,
        from: Date,
        to: Date,
        currency: Currency,
    ) -> Result<Vec<CustomerMovement>> {
        check_range(from, to)?;
        let prefix = format!("mv/{currency}/");
        self.model.read(|snap| {
            let after = from.yesterday().ok().map(|d| format!("{d}/\u{10FFFF}"));
            let hits =
                snap.scan(prefix.as_bytes(), after.as_deref().map(str::as_bytes), usize::MAX)?;
            let mut out = Vec::new();
            for (key, value) in hits {
                let rest = std::str::from_utf8(&key[prefix.len()..])
                    .map_err(|_| corrupt(NAME, format!("key {key:?} is not UTF-8")))?;
                let (_, customer) = rest
                    .split_once('/')
                    .ok_or_else(|| corrupt(NAME, format!("key {key:?} has no customer")))?;
                let record = decode::<MovementEntry>("movement", &value)?.record;
                if record.date > to {
                    break;
                }
                if record.date >= from {
                    out.push(CustomerMovement { customer_id: customer.to_string(), record });
                }
            }
            Ok(out)
        })
    }

    /// The currencies with at least one movement, in code order (one seek per currency).
    pub fn movement_currencies(&self) -> Result<Vec<Currency>> {
        self.model.read(|snap| {
            let mut out = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let hit = snap.scan(b"mv/", after.as_deref(), 1)?;
                let Some((key, _)) = hit.first() else {
                    return Ok(out);
                };
                let bad = || corrupt(NAME, format!("movement key {key:?} has no currency"));
                let code = std::str::from_utf8(&key[3..])
                    .ok()
                    .and_then(|rest| rest.split_once('/'))
                    .map(|(code, _)| code)
                    .ok_or_else(bad)?;
                out.push(Currency::parse(code).map_err(|_| bad())?);
                // Past every key of this currency: `/` then any byte below 0xff.
                after = Some([code.as_bytes(), b"/\xff"].concat());
            }
        })
    }

    /// Up to `page_size` (0 = [`PAGE_SIZE_DEFAULT`], at most [`PAGE_SIZE_MAX`]) customers'
    /// movements in `currency` dated in [from, to], after `page_token`, by date then customer
    /// ([`Self::customer_movements`] in pages), read from one consistent view.
    pub fn customer_movements_page(
        &self,
        from: Date,
        to: Date,
        currency: Currency,
        page_token: Option<&str>,
        page_size: usize,
    ) -> Result<CustomerMovementPage> {
        check_range(from, to)?;
        if let Some(t) = page_token {
            check_movement_token(t)?;
        }
        let size = if page_size == 0 { PAGE_SIZE_DEFAULT } else { page_size.min(PAGE_SIZE_MAX) };
        let prefix = format!("mv/{currency}/");
        let before_from = from.yesterday().ok().map(|d| format!("{d}/\u{10FFFF}"));
        let after = match (page_token, before_from) {
            (Some(t), Some(b)) => Some(if t > b.as_str() { t.to_string() } else { b }),
            (Some(t), None) => Some(t.to_string()),
            (None, b) => b,
        };
        self.model.read(|snap| {
            let hits =
                snap.scan(prefix.as_bytes(), after.as_deref().map(str::as_bytes), size + 1)?;
            let mut movements = Vec::with_capacity(size.min(hits.len()));
            let mut more = false;
            for (key, value) in hits {
                let rest = std::str::from_utf8(&key[prefix.len()..])
                    .map_err(|_| corrupt(NAME, format!("key {key:?} is not UTF-8")))?;
                let (_, customer) = rest
                    .split_once('/')
                    .ok_or_else(|| corrupt(NAME, format!("key {key:?} has no customer")))?;
                let record = decode::<MovementEntry>("movement", &value)?.record;
                if record.date > to {
                    break;
                }
                if movements.len() == size {
                    more = true;
                    break;
                }
                movements.push(CustomerMovement { customer_id: customer.to_string(), record });
            }
            let next_page_token = match movements.last() {
                Some(last) if more => Some(format!("{}/{}", last.record.date, last.customer_id)),
                _ => None,
            };
            Ok(CustomerMovementPage { movements, next_page_token, position: snap.checkpoint()? })
        })
    }

    /// NRR and GRR over [start, end] for the customers with MRR > 0 in `currency` at `start`.
    pub fn retention(&self, start: Date, end: Date, currency: Currency) -> Result<Retention> {
        check_range(start, end)?;
        let prefix = format!("acct/{currency}/");
        let cohort: Vec<(Decimal, Decimal)> = self.model.read(|snap| {
            let mut cohort = Vec::new();
            for (_, bytes) in snap.scan(prefix.as_bytes(), None, usize::MAX)? {
                let acct: Account = decode("account", &bytes)?;
                let mrr = |d: Date| acct.mrr_at(d).ok_or_else(|| sum_overflow("a customer's MRR"));
                let at_start = mrr(start)?;
                if at_start > Decimal::ZERO {
                    cohort.push((at_start, mrr(end)?));
                }
            }
            Ok(cohort)
        })?;
        let ratios = retention(&cohort);
        let sum = |values: Vec<Decimal>| {
            checked_sum(values).ok_or_else(|| sum_overflow(format_args!("cohort MRR ({currency})")))
        };
        Ok(Retention {
            start,
            end,
            cohort_size: cohort.len(),
            mrr_start: sum(cohort.iter().map(|c| c.0).collect())?,
            mrr_end: sum(cohort.iter().map(|c| c.1).collect())?,
            mrr_kept: sum(cohort.iter().map(|c| c.0.min(c.1)).collect())?,
            nrr: ratios.map(|r| r.0),
            grr: ratios.map(|r| r.1),
        })
    }

    /// Retention over the default window: the [`RETENTION_WINDOW_MONTHS`] months ending at
    /// `end`.
    pub fn retention_trailing_year(&self, end: Date, currency: Currency) -> Result<Retention> {
        let span = jiff::Span::new().months(RETENTION_WINDOW_MONTHS);
        let start = end.checked_sub(span).map_err(|e| {
            ProjectionError::InvalidArgument(format!("no 12-month window ends at {end}: {e}"))
        })?;
        self.retention(start, end, currency)
    }

    /// Usage revenue in `currency` dated in [from, to] (see the module docs for the dating),
    /// per day or month (only buckets with usage are listed).
    pub fn usage_revenue(
        &self,
        from: Date,
        to: Date,
        granularity: Granularity,
        currency: Currency,
    ) -> Result<Vec<UsageBucket>> {
        check_range(from, to)?;
        let prefix = format!("use/{currency}/");
        let days: Vec<(Date, UsageDay)> =
            self.model.read(|snap| scan_dates(snap, &prefix, Some(from), to, "usage day"))?;
        let mut buckets: Vec<UsageBucket> = Vec::new();
        for (date, day) in days {
            let start = granularity.bucket(date);
            if buckets.last().is_none_or(|b| b.start != start) {
                buckets.push(UsageBucket { start, lines: 0, amount: Decimal::ZERO });
            }
            let bucket = buckets.last_mut().expect("pushed above");
            bucket.lines += day.lines;
            bucket.amount = bucket.amount.checked_add(day.amount).ok_or_else(|| {
                sum_overflow(format_args!("usage revenue ({currency}) of {start}"))
            })?;
        }
        Ok(buckets)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use domain::calendar::{Anchor, Interval, Period};
    use domain::catalog::{Customer, FeeTiming};
    use domain::events::PlanChangeKind;
    use domain::invoice::{build_invoice, InvoiceHeader, IssueReason, LineDraft};
    use event_store::MemoryStore;
    use jiff::civil::date;
    use jiff::Timestamp;
    use tempfile::TempDir;

    use super::*;
    use crate::{Runner, RunnerConfig};
    use Movement::{Churn, Contraction, Expansion, New, Reactivation};

    type Store = Arc<MemoryStore>;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn at(n: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + n).unwrap()
    }

    fn customer(id: &str) -> Event {
        Event::CustomerRegistered(Customer {
            customer_id: id.into(),
            name: format!("Customer {id}"),
            currency: usd(),
            time_zone: "UTC".into(),
            tax_rate: Decimal::ZERO,
        })
    }

    fn plan(code: &str, interval: Interval, fee: &str, trial_days: u32) -> Event {
        Event::PlanPublished(Plan {
            code: code.into(),
            version: 1,
            name: code.into(),
            currency: usd(),
            interval,
            base_fee: d(fee),
            fee_timing: FeeTiming::Advance,
            trial_days,
            minimum_commitment: None,
            charges: vec![],
        })
    }

    fn pref(code: &str) -> PlanRef {
        PlanRef { code: code.into(), version: 1 }
    }

    fn start(sub: &str, cust: &str, plan: &str, on: Date, trial_end: Option<Date>) -> Event {
        Event::SubscriptionStarted {
            subscription_id: sub.into(),
            customer_id: cust.into(),
            plan: pref(plan),
            anchor: Anchor::Anniversary,
            start_date: on,
            trial_end,
            occurred_at: at(0),
        }
    }

    fn change(sub: &str, plan: &str, kind: PlanChangeKind, on: Date) -> Event {
        Event::PlanChanged {
            subscription_id: sub.into(),
            plan: pref(plan),
            kind,
            effective_date: on,
        }
    }

    fn cancel(sub: &str, on: Date) -> Event {
        Event::SubscriptionCanceled {
            subscription_id: sub.into(),
            effective_date: on,
            immediately: false,
            occurred_at: at(0),
        }
    }

    fn usage_invoice(id: &str, period: Period, base: &str, usage: &[&str]) -> Event {
        let header = InvoiceHeader {
            invoice_id: id.into(),
            customer_id: "c1".into(),
            subscription_id: "s1".into(),
            currency: usd(),
            period,
            issued_at: at(1),
            reason: IssueReason::PeriodClose,
            tax_rate: d("20"),
        };
        let line = |kind, amount: &str| LineDraft {
            kind,
            description: "line".into(),
            metric_code: None,
            charge_model: None,
            units: None,
            service_period: period,
            unrounded: d(amount),
        };
        let mut lines = vec![line(LineKind::BaseFee, base)];
        lines.extend(usage.iter().map(|a| line(LineKind::Usage, a)));
        Event::InvoiceIssued(build_invoice(header, lines).expect("in range"))
    }

    async fn append_all(store: &Store, events: &[Event]) {
        for event in events {
            crate::testkit::append_event(store, event).await;
        }
    }

    struct Fixture {
        _dir: TempDir,
        store: Store,
        runner: Runner<Store, MrrProjection>,
        reader: MrrReader,
    }

    impl Fixture {
        async fn new(events: &[Event], batch: usize) -> Fixture {
            let dir = TempDir::new().unwrap();
            let store: Store = Arc::new(MemoryStore::new());
            append_all(&store, events).await;
            let db = crate::open_db(dir.path()).unwrap();
            let config = RunnerConfig { batch_events_max: batch, poll_interval_ms: 20 };
            let mut runner = Runner::open(&db, store.clone(), MrrProjection, config).unwrap();
            runner.catch_up().await.unwrap();
            let reader = MrrReader::new(runner.read_model());
            Fixture { _dir: dir, store, runner, reader }
        }

        async fn push(&mut self, events: &[Event]) {
            append_all(&self.store, events).await;
            self.runner.catch_up().await.unwrap();
        }

        fn mrr(&self, on: Date) -> Decimal {
            self.reader.mrr_at(on, usd()).unwrap()
        }

        fn cust(&self, c: &str, on: Date) -> Decimal {
            self.reader.customer_mrr_at(c, on, usd()).unwrap()
        }

        /// (date, customer, movement, delta) in [from, to].
        fn moves(&self, from: Date, to: Date) -> Vec<(Date, String, Movement, Decimal)> {
            let list = self.reader.customer_movements(from, to, usd()).unwrap();
            list.into_iter()
                .map(|m| (m.record.date, m.customer_id, m.record.movement, m.record.delta()))
                .collect()
        }

        /// Per bucket: (start, [(movement, count, amount) with count > 0], net).
        fn buckets(&self, from: Date, to: Date, g: Granularity) -> Vec<BucketView> {
            let list = self.reader.movements(from, to, g, usd()).unwrap();
            list.into_iter()
                .map(|b| {
                    let kinds = b
                        .totals
                        .iter()
                        .filter(|(_, t)| t.count > 0)
                        .map(|(m, t)| (*m, t.count, t.amount))
                        .collect();
                    (b.start, kinds, b.net)
                })
                .collect()
        }
    }

    type BucketView = (Date, Vec<(Movement, u64, Decimal)>, Decimal);

    fn mv(on: Date, c: &str, m: Movement, delta: &str) -> (Date, String, Movement, Decimal) {
        (on, c.to_string(), m, d(delta))
    }

    #[tokio::test]
    async fn new_subscriptions_normalize_to_a_month() {
        let events = [
            customer("c1"),
            customer("c2"),
            customer("c3"),
            plan("monthly", Interval::Monthly, "30", 0),
            plan("yearly", Interval::Yearly, "120", 0),
            plan("weekly", Interval::Weekly, "12", 0),
            start("s1", "c1", "monthly", date(2025, 1, 1), None),
            start("s2", "c2", "yearly", date(2025, 1, 10), None),
            start("s3", "c3", "weekly", date(2025, 1, 20), None),
        ];
        let f = Fixture::new(&events, 4).await;
        assert_eq!(f.mrr(date(2024, 12, 31)), d("0"));
        assert_eq!(f.mrr(date(2025, 1, 1)), d("30"));
        assert_eq!(f.mrr(date(2025, 1, 10)), d("40"));
        assert_eq!(f.mrr(date(2025, 1, 19)), d("40"));
        // 12 × 52 / 12 = 52.
        assert_eq!(f.mrr(date(2025, 1, 20)), d("92"));
        assert_eq!(f.mrr(date(2030, 1, 1)), d("92"));
        assert_eq!(f.cust("c1", date(2025, 6, 1)), d("30"));
        assert_eq!(f.cust("c2", date(2025, 6, 1)), d("10"));
        assert_eq!(f.cust("c3", date(2025, 6, 1)), d("52"));
        assert_eq!(f.cust("c3", date(2025, 1, 19)), d("0"));
        assert_eq!(f.cust("nobody", date(2025, 6, 1)), d("0"));
        let (jan1, jan31) = (date(2025, 1, 1), date(2025, 1, 31));
        assert_eq!(
            f.moves(jan1, jan31),
            [
                mv(date(2025, 1, 1), "c1", New, "30"),
                mv(date(2025, 1, 10), "c2", New, "10"),
                mv(date(2025, 1, 20), "c3", New, "52"),
            ]
        );
        assert_eq!(
            f.buckets(jan1, jan31, Granularity::Day),
            [
                (date(2025, 1, 1), vec![(New, 1, d("30"))], d("30")),
                (date(2025, 1, 10), vec![(New, 1, d("10"))], d("10")),
                (date(2025, 1, 20), vec![(New, 1, d("52"))], d("52")),
            ]
        );
        assert_eq!(
            f.buckets(date(2024, 1, 1), date(2025, 12, 31), Granularity::Month),
            [(jan1, vec![(New, 3, d("92"))], d("92"))]
        );
        // Inclusive bounds; nothing on Jan 2–9.
        assert_eq!(f.buckets(date(2025, 1, 2), date(2025, 1, 9), Granularity::Day), []);
        assert_eq!(f.buckets(date(2025, 1, 10), date(2025, 1, 10), Granularity::Day).len(), 1);
        let bad = f.reader.movements(jan31, jan1, Granularity::Day, usd());
        assert!(matches!(bad, Err(ProjectionError::InvalidArgument(_))));
    }

    #[tokio::test]
    async fn upgrade_downgrade_and_cancellation_are_dated_by_effect() {
        let (jan1, jan16, feb1, mar1) =
            (date(2025, 1, 1), date(2025, 1, 16), date(2025, 2, 1), date(2025, 3, 1));
        let mut f = Fixture::new(
            &[
                customer("c1"),
                plan("basic", Interval::Monthly, "30", 0),
                plan("pro", Interval::Monthly, "62", 0),
                start("s1", "c1", "basic", jan1, None),
                // Mid-month upgrade: effective the day it is made.
                change("s1", "pro", PlanChangeKind::Upgrade, jan16),
                // A downgrade is scheduled for the period end: no movement yet.
                Event::PlanChangeScheduled {
                    subscription_id: "s1".into(),
                    plan: pref("basic"),
                    effective_date: feb1,
                    occurred_at: at(5),
                },
            ],
            1,
        )
        .await;
        assert_eq!(f.mrr(date(2025, 1, 15)), d("30"));
        assert_eq!(f.mrr(jan16), d("62"));
        assert_eq!(f.mrr(feb1), d("62"));
        // The close of January applies it, dated at the period end.
        f.push(&[change("s1", "basic", PlanChangeKind::Downgrade, feb1)]).await;
        assert_eq!(f.mrr(date(2025, 1, 31)), d("62"));
        assert_eq!(f.mrr(feb1), d("30"));
        // Canceled at period end on Feb 10: churn at the end of service, Mar 1.
        f.push(&[cancel("s1", mar1)]).await;
        assert_eq!(f.mrr(date(2025, 2, 28)), d("30"));
        assert_eq!(f.mrr(mar1), d("0"));
        assert_eq!(
            f.moves(jan1, date(2025, 12, 31)),
            [
                mv(jan1, "c1", New, "30"),
                mv(jan16, "c1", Expansion, "32"),
                mv(feb1, "c1", Contraction, "-32"),
                mv(mar1, "c1", Churn, "-30"),
            ]
        );
        assert_eq!(
            f.buckets(jan1, date(2025, 12, 31), Granularity::Month),
            [
                (jan1, vec![(New, 1, d("30")), (Expansion, 1, d("32"))], d("62")),
                (feb1, vec![(Contraction, 1, d("-32"))], d("-32")),
                (mar1, vec![(Churn, 1, d("-30"))], d("-30")),
            ]
        );
    }

    #[tokio::test]
    async fn reactivation_and_several_subscriptions() {
        let mut f = Fixture::new(
            &[
                customer("c1"),
                customer("c2"),
                plan("basic", Interval::Monthly, "30", 0),
                plan("weekly", Interval::Weekly, "12", 0),
                start("s1", "c1", "basic", date(2025, 1, 1), None),
                start("s3", "c2", "basic", date(2025, 1, 1), None),
                start("s4", "c2", "weekly", date(2025, 1, 5), None),
                cancel("s1", date(2025, 1, 11)),
                cancel("s3", date(2025, 2, 1)),
            ],
            3,
        )
        .await;
        f.push(&[start("s2", "c1", "basic", date(2025, 3, 1), None)]).await;
        assert_eq!(
            f.moves(date(2025, 1, 1), date(2025, 12, 31)),
            [
                mv(date(2025, 1, 1), "c1", New, "30"),
                mv(date(2025, 1, 1), "c2", New, "30"),
                mv(date(2025, 1, 5), "c2", Expansion, "52"),
                mv(date(2025, 1, 11), "c1", Churn, "-30"),
                mv(date(2025, 2, 1), "c2", Contraction, "-30"),
                mv(date(2025, 3, 1), "c1", Reactivation, "30"),
            ]
        );
        assert_eq!(f.mrr(date(2025, 1, 10)), d("112"));
        assert_eq!(f.mrr(date(2025, 2, 1)), d("52"));
        assert_eq!(f.mrr(date(2025, 3, 1)), d("82"));
        assert_eq!(
            f.buckets(date(2025, 1, 1), date(2025, 1, 1), Granularity::Day),
            [(date(2025, 1, 1), vec![(New, 2, d("60"))], d("60"))]
        );
    }

    #[tokio::test]
    async fn a_later_event_restates_future_movements() {
        // The cancellation at period end is recorded first (churn on Feb 1); a subscription
        // started afterwards on Jan 20 turns that churn into a contraction.
        let mut f = Fixture::new(
            &[
                customer("c1"),
                plan("basic", Interval::Monthly, "30", 0),
                plan("weekly", Interval::Weekly, "12", 0),
                start("s1", "c1", "basic", date(2025, 1, 1), None),
                cancel("s1", date(2025, 2, 1)),
            ],
            2,
        )
        .await;
        let all = (date(2025, 1, 1), date(2025, 12, 31));
        assert_eq!(
            f.moves(all.0, all.1),
            [mv(date(2025, 1, 1), "c1", New, "30"), mv(date(2025, 2, 1), "c1", Churn, "-30")]
        );
        f.push(&[start("s2", "c1", "weekly", date(2025, 1, 20), None)]).await;
        assert_eq!(
            f.moves(all.0, all.1),
            [
                mv(date(2025, 1, 1), "c1", New, "30"),
                mv(date(2025, 1, 20), "c1", Expansion, "52"),
                mv(date(2025, 2, 1), "c1", Contraction, "-30"),
            ]
        );
        assert_eq!(
            f.buckets(all.0, all.1, Granularity::Day)[2],
            (date(2025, 2, 1), vec![(Contraction, 1, d("-30"))], d("-30"))
        );
        assert_eq!(f.mrr(date(2025, 2, 1)), d("52"));
    }

    #[tokio::test]
    async fn trial_counts_from_trial_end() {
        let (jan1, jan15) = (date(2025, 1, 1), date(2025, 1, 15));
        let mut f = Fixture::new(
            &[
                customer("c1"),
                plan("trial", Interval::Monthly, "30", 14),
                start("s1", "c1", "trial", jan1, Some(jan15)),
            ],
            5,
        )
        .await;
        // Until TrialEnded is recorded, the subscription has no MRR on any date.
        assert_eq!(f.mrr(date(2025, 6, 1)), d("0"));
        assert_eq!(f.moves(jan1, date(2025, 12, 31)), []);
        f.push(&[Event::TrialEnded { subscription_id: "s1".into(), date: jan15 }]).await;
        assert_eq!(f.mrr(date(2025, 1, 14)), d("0"));
        assert_eq!(f.mrr(jan15), d("30"));
        assert_eq!(f.moves(jan1, date(2025, 12, 31)), [mv(jan15, "c1", New, "30")]);
        assert_eq!(f.cust("c1", date(2025, 1, 14)), d("0"));
        assert_eq!(f.cust("c1", jan15), d("30"));
    }

    #[tokio::test]
    async fn retention_of_three_customers() {
        let (feb1, jun1) = (date(2025, 2, 1), date(2025, 6, 1));
        let f = Fixture::new(
            &[
                plan("p100", Interval::Monthly, "100", 0),
                plan("p150", Interval::Monthly, "150", 0),
                plan("p50", Interval::Monthly, "50", 0),
                plan("p40", Interval::Monthly, "40", 0),
                plan("p20", Interval::Monthly, "20", 0),
                plan("p999", Interval::Monthly, "999", 0),
                // A: 100 → upgraded to 150 on Mar 10.
                start("a", "A", "p100", date(2025, 1, 1), None),
                change("a", "p150", PlanChangeKind::Upgrade, date(2025, 3, 10)),
                // B: 50 → churned on Apr 1.
                start("b", "B", "p50", date(2025, 1, 1), None),
                cancel("b", date(2025, 4, 1)),
                // C: 40 → downgraded to 20 on May 1.
                start("c", "C", "p40", date(2025, 1, 15), None),
                change("c", "p20", PlanChangeKind::Downgrade, date(2025, 5, 1)),
                // D: starts after the window start: not in the cohort.
                start("d", "D", "p999", date(2025, 3, 1), None),
            ],
            1000,
        )
        .await;
        // Σ start = 100 + 50 + 40 = 190; Σ end = 150 + 0 + 20 = 170;
        // Σ min = 100 + 0 + 20 = 120. NRR = 170/190 ≈ 0.8947, GRR = 120/190 ≈ 0.6316.
        let r = f.reader.retention(feb1, jun1, usd()).unwrap();
        assert_eq!(r.cohort_size, 3);
        assert_eq!((r.mrr_start, r.mrr_end, r.mrr_kept), (d("190"), d("170"), d("120")));
        assert_eq!(r.nrr, Some(d("170") / d("190")));
        assert_eq!(r.grr, Some(d("120") / d("190")));
        assert_eq!(r.nrr.unwrap().round_dp(4), d("0.8947"));
        assert_eq!(r.grr.unwrap().round_dp(4), d("0.6316"));
        // The default window: 12 months ending Feb 1, 2026 starts on Feb 1, 2025.
        let year = f.reader.retention_trailing_year(date(2026, 2, 1), usd()).unwrap();
        assert_eq!((year.start, year.cohort_size), (feb1, 3));
        assert_eq!((year.nrr, year.grr), (r.nrr, r.grr));
        // Before anyone had MRR: an empty cohort.
        let empty = f.reader.retention(date(2024, 1, 1), jun1, usd()).unwrap();
        assert_eq!((empty.cohort_size, empty.nrr, empty.grr), (0, None, None));
        // Another currency has no customers.
        let eur = Currency::parse("EUR").unwrap();
        assert_eq!(f.reader.retention(feb1, jun1, eur).unwrap().cohort_size, 0);
        assert_eq!(f.reader.mrr_at(jun1, eur).unwrap(), d("0"));
    }

    #[tokio::test]
    async fn usage_revenue_beside_mrr() {
        let jan = Period { start: date(2025, 1, 1), end: date(2025, 2, 1) };
        let feb = Period { start: date(2025, 2, 1), end: date(2025, 3, 1) };
        let mut f = Fixture::new(
            &[
                customer("c1"),
                plan("basic", Interval::Monthly, "30", 0),
                start("s1", "c1", "basic", date(2025, 1, 1), None),
                usage_invoice("i1", jan, "30", &["12.345", "0.004"]),
                usage_invoice("i2", feb, "30", &["7"]),
                usage_invoice("i3", jan, "30", &[]),
            ],
            2,
        )
        .await;
        let year = (date(2025, 1, 1), date(2025, 12, 31));
        let days = f.reader.usage_revenue(year.0, year.1, Granularity::Day, usd()).unwrap();
        // 12.345 → 12.35 and 0.004 → 0.00 dated Jan 31; 7 dated Feb 28; base fees excluded.
        assert_eq!(
            days,
            [
                UsageBucket { start: date(2025, 1, 31), lines: 2, amount: d("12.35") },
                UsageBucket { start: date(2025, 2, 28), lines: 1, amount: d("7") },
            ]
        );
        let months = f.reader.usage_revenue(year.0, year.1, Granularity::Month, usd()).unwrap();
        assert_eq!(
            months[0],
            UsageBucket { start: date(2025, 1, 1), lines: 2, amount: d("12.35") }
        );
        // Usage is not MRR.
        assert_eq!(f.mrr(date(2025, 3, 1)), d("30"));
        f.push(&[Event::InvoiceVoided {
            invoice_id: "i2".into(),
            reason: "duplicate".into(),
            occurred_at: at(9),
        }])
        .await;
        let months = f.reader.usage_revenue(year.0, year.1, Granularity::Month, usd()).unwrap();
        assert_eq!(months, [UsageBucket { start: date(2025, 1, 1), lines: 2, amount: d("12.35") }]);
    }

    /// A deterministic pseudo-random generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn plus(on: Date, days: u64) -> Date {
        on.checked_add(jiff::Span::new().days(days as i64)).unwrap()
    }

    /// Plans, customers and subscriptions with random starts, trials, plan changes and
    /// cancellations; each subscription's events in order, subscriptions interleaved.
    fn random_log(seed: u64) -> Vec<Event> {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let fees = ["10", "30", "62", "12", "120", "0"];
        let intervals = [Interval::Monthly, Interval::Weekly, Interval::Yearly];
        let mut events: Vec<Event> = Vec::new();
        let mut plans = Vec::new();
        for (i, fee) in fees.iter().enumerate() {
            for (j, interval) in intervals.iter().enumerate() {
                let code = format!("p{i}{j}");
                events.push(plan(&code, *interval, fee, 0));
                plans.push(code);
            }
        }
        let base = date(2025, 1, 1);
        let mut per_sub: Vec<Vec<Event>> = Vec::new();
        for c in 0..6 {
            let cust = format!("c{c}");
            events.push(customer(&cust));
            for s in 0..=rng.below(3) {
                let sub = format!("s{c}-{s}");
                let mut evs = Vec::new();
                let on = plus(base, rng.below(200));
                let pick = |rng: &mut Rng| plans[rng.below(plans.len() as u64) as usize].clone();
                let trial = rng.below(3) == 0;
                let trial_end = plus(on, 14);
                evs.push(start(&sub, &cust, &pick(&mut rng), on, trial.then_some(trial_end)));
                let mut last = on;
                if trial && rng.below(4) != 0 {
                    evs.push(Event::TrialEnded { subscription_id: sub.clone(), date: trial_end });
                    last = trial_end;
                }
                for _ in 0..rng.below(3) {
                    last = plus(last, rng.below(60));
                    evs.push(change(&sub, &pick(&mut rng), PlanChangeKind::Upgrade, last));
                }
                if rng.below(2) == 0 {
                    evs.push(cancel(&sub, plus(last, rng.below(90))));
                }
                evs.reverse();
                per_sub.push(evs);
            }
        }
        while !per_sub.is_empty() {
            let i = rng.below(per_sub.len() as u64) as usize;
            events.push(per_sub[i].pop().unwrap());
            if per_sub[i].is_empty() {
                per_sub.remove(i);
            }
        }
        events
    }

    /// A customer's MRR on `on`, by replaying the log naively, event by event.
    fn oracle(log: &[Event], customer: &str, on: Date) -> Decimal {
        let mut plan_fee: BTreeMap<String, Plan> = BTreeMap::new();
        // subscription → (started by `on`, plan on `on`, in trial on `on`, ended by `on`)
        let mut subs: BTreeMap<String, (bool, Option<Plan>, bool, bool)> = BTreeMap::new();
        for event in log {
            match event {
                Event::PlanPublished(p) => {
                    plan_fee.insert(p.code.clone(), p.clone());
                }
                Event::SubscriptionStarted {
                    subscription_id,
                    customer_id,
                    plan,
                    start_date,
                    trial_end,
                    ..
                } if customer_id == customer => {
                    let p = plan_fee[&plan.code].clone();
                    subs.insert(
                        subscription_id.clone(),
                        (*start_date <= on, Some(p), trial_end.is_some(), false),
                    );
                }
                Event::TrialEnded { subscription_id, date } if *date <= on => {
                    if let Some(s) = subs.get_mut(subscription_id) {
                        s.2 = false;
                    }
                }
                Event::PlanChanged { subscription_id, plan, effective_date, .. }
                    if *effective_date <= on =>
                {
                    if let Some(s) = subs.get_mut(subscription_id) {
                        s.1 = Some(plan_fee[&plan.code].clone());
                    }
                }
                Event::SubscriptionCanceled { subscription_id, effective_date, .. }
                    if *effective_date <= on =>
                {
                    if let Some(s) = subs.get_mut(subscription_id) {
                        s.3 = true;
                    }
                }
                _ => {}
            }
        }
        subs.values()
            .filter(|(started, _, in_trial, ended)| *started && !*in_trial && !*ended)
            .map(|(_, plan, _, _)| subscription_mrr(plan.as_ref().unwrap(), false))
            .sum()
    }

    #[tokio::test]
    async fn movements_sum_to_the_change_of_mrr_over_random_logs() {
        let (mut total, mut kinds) = (0, BTreeSet::new());
        for seed in 1..=12 {
            let log = random_log(seed);
            let f = Fixture::new(&log, 7).await;
            let customers: Vec<String> = (0..6).map(|c| format!("c{c}")).collect();
            let mut rng = Rng(seed + 1000);
            let day0 = date(2024, 12, 1);
            for _ in 0..20 {
                let a = plus(day0, rng.below(500));
                let b = plus(a, rng.below(300));
                let moved: Decimal = f
                    .reader
                    .movements(a, b, Granularity::Day, usd())
                    .unwrap()
                    .iter()
                    .map(|bucket| bucket.net)
                    .sum();
                let before = f.mrr(a.yesterday().unwrap());
                assert_eq!(moved, f.mrr(b) - before, "seed {seed}: [{a}, {b}]");
                let monthly: Decimal = f
                    .reader
                    .movements(a, b, Granularity::Month, usd())
                    .unwrap()
                    .iter()
                    .map(|bucket| bucket.net)
                    .sum();
                assert_eq!(monthly, moved, "seed {seed}");
                // Total MRR = Σ of the customers' = what a naive replay of the log gives.
                let sum: Decimal = customers.iter().map(|c| f.cust(c, b)).sum();
                assert_eq!(f.mrr(b), sum, "seed {seed} at {b}");
                for c in &customers {
                    assert_eq!(f.cust(c, b), oracle(&log, c, b), "seed {seed}: {c} at {b}");
                }
            }
            // Every movement's sign fits its kind, and each customer's list is a valid walk.
            let all = f.reader.customer_movements(day0, date(2027, 1, 1), usd()).unwrap();
            kinds.extend(all.iter().map(|m| m.record.movement));
            total += all.len();
            for m in &all {
                let up = matches!(m.record.movement, New | Expansion | Reactivation);
                assert_eq!(m.record.delta() > Decimal::ZERO, up, "seed {seed}: {m:?}");
                let day_before = m.record.date.yesterday().unwrap();
                assert_eq!(f.cust(&m.customer_id, day_before), m.record.before);
                assert_eq!(f.cust(&m.customer_id, m.record.date), m.record.after);
            }
        }
        // The logs are not vacuous: many movements, of every kind.
        assert!(total >= 100, "{total} movements");
        assert_eq!(kinds.len(), Movement::ALL.len(), "{kinds:?}");
    }

    #[tokio::test]
    async fn movement_pages_and_currencies_agree_with_the_whole_listing() {
        let empty = Fixture::new(&[customer("c1")], 7).await;
        assert!(empty.reader.movement_currencies().unwrap().is_empty());
        for seed in [2, 5] {
            let f = Fixture::new(&random_log(seed), 7).await;
            assert_eq!(f.reader.movement_currencies().unwrap(), [usd()], "seed {seed}");
            let mut rng = Rng(seed + 2000);
            let day0 = date(2024, 12, 1);
            for _ in 0..10 {
                let a = plus(day0, rng.below(500));
                let b = plus(a, rng.below(300));
                let whole = f.reader.customer_movements(a, b, usd()).unwrap();
                for size in [1, 3, 0] {
                    let (mut paged, mut token) = (Vec::new(), None);
                    loop {
                        let page = f
                            .reader
                            .customer_movements_page(a, b, usd(), token.as_deref(), size)
                            .unwrap();
                        let max = if size == 0 { PAGE_SIZE_DEFAULT } else { size };
                        assert!(page.movements.len() <= max);
                        paged.extend(page.movements);
                        match page.next_page_token {
                            Some(t) => token = Some(t),
                            None => break,
                        }
                    }
                    assert_eq!(paged, whole, "seed {seed}: [{a}, {b}] by {size}");
                }
            }
        }
        let f = Fixture::new(&[customer("c1")], 7).await;
        for token in ["", "x", "2025-01-01", "2025-13-01/c1", "2025-01-01/"] {
            let bad = f.reader.customer_movements_page(
                date(2025, 1, 1),
                date(2025, 2, 1),
                usd(),
                Some(token),
                1,
            );
            assert!(matches!(bad, Err(ProjectionError::InvalidArgument(_))), "{token:?}");
        }
    }

    #[tokio::test]
    async fn digest_is_the_same_for_every_batch_size() {
        for seed in [3, 8] {
            let mut log = random_log(seed);
            let jan = Period { start: date(2025, 1, 1), end: date(2025, 2, 1) };
            log.push(customer("c1"));
            log.push(plan("basic", Interval::Monthly, "30", 0));
            log.push(start("s1", "c1", "basic", date(2025, 1, 1), None));
            log.push(usage_invoice("i1", jan, "30", &["12.345"]));
            log.push(usage_invoice("i2", jan, "30", &["1"]));
            log.push(Event::InvoiceVoided {
                invoice_id: "i2".into(),
                reason: "x".into(),
                occurred_at: at(3),
            });
            let mut digests = Vec::new();
            for batch in [1, 5, 1000] {
                let f = Fixture::new(&log, batch).await;
                assert_eq!(f.runner.checkpoint(), log.len() as u64);
                digests.push(f.reader.model().digest().unwrap());
            }
            assert_eq!(digests[0], digests[1], "seed {seed}");
            assert_eq!(digests[0], digests[2], "seed {seed}");
        }
    }

    #[tokio::test]
    async fn unknown_references_abort_the_batch() {
        let f = Fixture::new(&[customer("c1")], 10).await;
        let mut f = f;
        append_all(&f.store, &[start("s1", "c1", "missing", date(2025, 1, 1), None)]).await;
        let err = f.runner.catch_up().await.unwrap_err();
        assert!(matches!(err, ProjectionError::Inconsistent { .. }), "{err}");
        assert_eq!(f.runner.checkpoint(), 1);
        let bad = f.reader.customer_mrr_at("a/b", date(2025, 1, 1), usd());
        assert!(matches!(bad, Err(ProjectionError::InvalidArgument(_))));
    }
}
