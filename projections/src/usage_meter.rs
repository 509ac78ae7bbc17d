//! The usage meter of the read side: an in-memory copy of the domain [`Ledger`], folded from
//! the log, that says how much each open billing period's usage is worth so far, so the
//! journal can recognize usage revenue **as it is consumed** (SPEC §5) and the query service
//! can show the current-usage draft of every open period.
//!
//! # Runs
//!
//! Rating after every usage event would cost O(events) per event for some charge models, so
//! consecutive usage events of one subscription, period and local day form a **run**: the
//! meter re-rates the period when the run ends (another day or period of that subscription, any
//! other event of that subscription, or the end of the batch) and the journal posts the
//! increase since the last accrual, dated on the run's day. Runs telescope: cutting a run in two
//! at a batch boundary gives the same per-day totals, so the read model does not depend on
//! batch sizes. A plan change or a cancellation re-rates the open periods on its effective
//! date (a "run" of its own), so a rating-plan change moves the accrual the day it happens.
//!
//! # State
//!
//! The ledger is not in the read model's keys: it is a pure function of the log prefix the
//! runner has applied, rebuilt by [`UsageMeter::remember`] over `[0, checkpoint)` when the
//! runner opens or after a failed batch. The meter folds an event only when it refers to
//! aggregates it knows (in a log written by the command service that is every event; hand-built
//! test logs may skip the subscription). Memory: the ledger without its dedup index.
//!
//! # Snapshot
//!
//! At a batch end the runs are closed, so the meter is its ledger alone: [`UsageMeter::encode`]
//! writes it as [`METER_FORMAT_VERSION`] (u32 BE) followed by the ledger in JSON through the
//! domain's serde (never its field layout), compressed as one LZ4 block with its length
//! prepended (u32 LE; 9–20× smaller, chosen by figures), and [`UsageMeter::decode`] reads it
//! back. The
//! journal stores it with its checkpoint so a restart folds only the log's tail
//! (docs/decisions/0028-journal-meter-snapshot.md).

use std::collections::{BTreeMap, BTreeSet};

use domain::anomaly::Completeness;
use domain::calendar::{local_date, Period};
use domain::events::{Event, Usage};
use domain::invoice::Invoice;
use domain::ledger::{usage_value, Ledger, RatedUsage};
use event_store::Position;
use jiff::civil::Date;
use rust_decimal::Decimal;

/// Layout of [`UsageMeter::encode`]'s output. Bump it when the encoding or the ledger's serde
/// shape changes: a snapshot of another version is ignored and the meter folded from the log.
pub const METER_FORMAT_VERSION: u32 = 2;
/// LZ4 expands at most this much: a longer length prefix is refused before allocating.
const LZ4_RATIO_MAX: usize = 255;

/// A run of events of one subscription and period on one local day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    day: Date,
    /// Log position of the run's first event: names the accrual of that day.
    first: Position,
}

/// The period's rated usage at the end of a run, to be accrued on the run's day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accrual {
    pub subscription_id: String,
    pub day: Date,
    pub first: Position,
    pub rated: RatedUsage,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct UsageMeter {
    ledger: Ledger,
    /// Open runs by subscription, then period start.
    runs: BTreeMap<String, BTreeMap<Date, Run>>,
    /// Subscriptions touched in this batch (their drafts are rewritten at its end).
    touched: BTreeSet<String>,
    /// What [`UsageMeter::before`] learned of the event, for [`UsageMeter::after`]: whether the
    /// ledger knows it, and a usage event's (period start, day).
    seen: Option<(bool, Option<(Date, Date)>)>,
}

impl UsageMeter {
    /// Folds an event already applied to the read model (warm-up).
    pub fn remember(&mut self, event: &Event, position: Position) {
        if self.knows(event) {
            self.ledger.evolve(event, position);
        }
    }

    /// The meter's state at a batch end (no open run), encoded (see the module documentation);
    /// `None` in the middle of a batch, which is never snapshotted.
    pub fn encode(&self) -> Option<Vec<u8>> {
        if !self.runs.is_empty() || !self.touched.is_empty() || self.seen.is_some() {
            return None;
        }
        let json = serde_json::to_vec(&self.ledger).expect("the ledger serializes");
        let mut out = METER_FORMAT_VERSION.to_be_bytes().to_vec();
        out.extend_from_slice(&lz4_flex::block::compress_prepend_size(&json));
        Some(out)
    }

    /// A meter from [`UsageMeter::encode`]'s output, or why it cannot be read.
    pub fn decode(bytes: &[u8]) -> Result<UsageMeter, String> {
        let Some((version, compressed)) = bytes.split_first_chunk::<4>() else {
            return Err(format!("truncated: {} bytes, no format version", bytes.len()));
        };
        let version = u32::from_be_bytes(*version);
        if version != METER_FORMAT_VERSION {
            return Err(format!(
                "unknown meter format version {version} (this build reads {METER_FORMAT_VERSION})"
            ));
        }
        let Some((length, _)) = compressed.split_first_chunk::<4>() else {
            return Err(format!("truncated: {} bytes, no length", bytes.len()));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if length > compressed.len().saturating_mul(LZ4_RATIO_MAX) {
            return Err(format!("corrupt: {length} bytes cannot come from {}", compressed.len()));
        }
        let json = lz4_flex::block::decompress_size_prepended(compressed)
            .map_err(|e| format!("corrupt: the LZ4 block does not decompress: {e}"))?;
        let ledger: Ledger = serde_json::from_slice(&json)
            .map_err(|e| format!("the ledger does not decode: {e}"))?;
        Ok(UsageMeter { ledger, ..UsageMeter::default() })
    }

    /// Forgets everything (after a failed batch; the runner then replays the log prefix).
    pub fn forget(&mut self) {
        *self = UsageMeter::default();
    }

    /// Before `event` is applied: the accruals of the runs it ends. A usage event ends its
    /// subscription's run of the same period on another day; any other event of the
    /// subscription ends all of its runs.
    pub fn before(&mut self, event: &Event) -> Vec<Accrual> {
        let known = self.knows(event);
        let usage = if known { self.usage_run(event) } else { None };
        self.seen = Some((known, usage));
        let Some(sub) = subscription_of(event).filter(|_| known) else {
            return Vec::new();
        };
        let Some(sub_runs) = self.runs.get_mut(sub) else { return Vec::new() };
        let ends =
            |p: Date, run: &Run| usage.is_none_or(|(period, day)| p == period && run.day != day);
        let ending: Vec<(Date, Run)> =
            sub_runs.iter().filter(|(p, r)| ends(**p, r)).map(|(p, r)| (*p, *r)).collect();
        for (period, _) in &ending {
            sub_runs.remove(period);
        }
        if sub_runs.is_empty() {
            self.runs.remove(sub);
        }
        ending.into_iter().filter_map(|(period, run)| self.accrual(sub, period, run)).collect()
    }

    /// Folds `event` (after the journal applied it) and opens the runs it starts.
    pub fn after(&mut self, event: &Event, position: Position) {
        let (known, run) = match self.seen.take() {
            Some(seen) => seen,
            None => (self.knows(event), self.usage_run(event)),
        };
        if !known {
            return;
        }
        self.ledger.evolve(event, position);
        let Some(sub) = subscription_of(event) else { return };
        if !self.touched.contains(sub) {
            self.touched.insert(sub.to_string());
        }
        let first = position;
        if let Some((period, day)) = run {
            self.sub_runs(sub).entry(period).or_insert(Run { day, first });
            return;
        }
        let Some(effective) = effective_date(event) else { return };
        for period in self.open_periods(sub) {
            let day = effective.clamp(period.start, period.last_day());
            self.sub_runs(sub).insert(period.start, Run { day, first });
        }
    }

    /// For a usage event the ledger knows, between [`UsageMeter::before`] and
    /// [`UsageMeter::after`]: its local (business) day, its customer, and its quantity (the
    /// value its metric reads; 1 for count and unique_count, whose values are not additive).
    pub fn usage_quantity(&self, u: &Usage) -> Option<(Date, &str, Decimal)> {
        let (_, day) = self.seen.and_then(|(known, run)| run.filter(|_| known))?;
        let sub = self.ledger.subscriptions.get(&u.subscription_id)?;
        let metric = self.ledger.metrics.get(&u.metric_code)?;
        let quantity = if metric.aggregation.is_numeric() {
            usage_value(metric, u).ok()?
        } else {
            Decimal::ONE
        };
        Some((day, sub.customer_id.as_str(), quantity))
    }

    fn sub_runs(&mut self, sub: &str) -> &mut BTreeMap<Date, Run> {
        if !self.runs.contains_key(sub) {
            self.runs.insert(sub.to_string(), BTreeMap::new());
        }
        self.runs.get_mut(sub).expect("inserted above")
    }

    /// At the end of a batch: the accruals of every open run, and the subscriptions touched
    /// (whose drafts are to be rewritten).
    pub fn finish(&mut self) -> (Vec<Accrual>, BTreeSet<String>) {
        let runs = std::mem::take(&mut self.runs);
        let runs =
            runs.into_iter().flat_map(|(s, m)| m.into_iter().map(move |(p, r)| (s.clone(), p, r)));
        let accruals = runs.filter_map(|(s, p, run)| self.accrual(&s, p, run)).collect();
        (accruals, std::mem::take(&mut self.touched))
    }

    /// The current-usage drafts of the subscription's open periods, oldest first (none once
    /// service has ended and everything is invoiced; more than one while usage of a new period
    /// arrives before the previous one is billed). Each is dated at its period's start, so they
    /// depend on the subscription's state only (so do the anomaly flags they keep: see below).
    pub fn drafts(&self, subscription_id: &str) -> Vec<Invoice> {
        let Some(sub) = self.ledger.subscriptions.get(subscription_id) else { return Vec::new() };
        let Some(oldest) = sub.next_close else { return Vec::new() };
        let mut starts: BTreeSet<Date> =
            sub.open.keys().copied().filter(|s| *s > oldest.start).collect();
        starts.insert(oldest.start);
        let at = |p: Period| p.start_instant(&sub.time_zone);
        let newest = starts.last().copied();
        let periods = starts.into_iter().filter_map(|s| sub.period_of(s));
        // A period older than one with usage has ended (it waits for its close, in the grace
        // time): its draft is checked whole. The newest may still run: usage so far.
        let completeness = |p: Period| match Some(p.start) == newest {
            true => Completeness::PeriodSoFar,
            false => Completeness::WholePeriod,
        };
        let drafts = periods.filter_map(|p| {
            self.ledger.draft_invoice(subscription_id, at(p), completeness(p)).ok()
        });
        // A stored draft is rewritten only when its subscription is touched, so it keeps only
        // flags of the subscription's own history: `first_invoice_high` reads the plan's
        // totals, which other subscriptions' closes change (the command side's GetCurrentUsage
        // and the issued invoice carry it).
        let mut drafts: Vec<Invoice> = drafts.flatten().collect();
        for d in &mut drafts {
            d.anomalies.retain(|f| f.kind != domain::anomaly::AnomalyKind::FirstInvoiceHigh);
        }
        drafts
    }

    fn accrual(&self, sub: &str, period_start: Date, run: Run) -> Option<Accrual> {
        let rated = self.ledger.rated_usage(sub, period_start).ok().flatten()?;
        Some(Accrual { subscription_id: sub.to_string(), day: run.day, first: run.first, rated })
    }

    /// For a usage event: its (period start, local day).
    fn usage_run(&self, event: &Event) -> Option<(Date, Date)> {
        let Event::UsageRecorded(u) = event else { return None };
        let sub = self.ledger.subscriptions.get(&u.subscription_id)?;
        let day = local_date(u.occurred_at, &sub.time_zone);
        Some((sub.period_of(day)?.start, day))
    }

    fn open_periods(&self, sub: &str) -> Vec<Period> {
        let Some(s) = self.ledger.subscriptions.get(sub) else { return Vec::new() };
        s.open.keys().filter_map(|start| s.period_of(*start)).collect()
    }

    /// Whether the ledger has what `event` refers to (see the module documentation).
    fn knows(&self, event: &Event) -> bool {
        let l = &self.ledger;
        match event {
            Event::UsageRecorded(u) => {
                l.subscriptions.contains_key(&u.subscription_id)
                    && l.metrics.contains_key(&u.metric_code)
            }
            Event::SubscriptionStarted { customer_id, plan, .. } => {
                l.customers.contains_key(customer_id)
                    && l.plans.get(&plan.code).is_some_and(|v| v.len() >= plan.version as usize)
            }
            Event::InvoiceVoided { invoice_id, .. }
            | Event::PaymentSucceeded { invoice_id, .. }
            | Event::PaymentFailed { invoice_id, .. }
            | Event::InvoiceMarkedUncollectible { invoice_id, .. } => {
                l.invoices.contains_key(invoice_id)
            }
            Event::CustomerUpdated { customer_id, .. } => l.customers.contains_key(customer_id),
            Event::InvoiceIssued(inv) if inv.subscription_id.is_empty() => {
                l.customers.contains_key(&inv.customer_id)
            }
            Event::CouponApplied { customer_id, coupon_code, .. } => {
                l.customers.contains_key(customer_id) && l.coupons.contains_key(coupon_code)
            }
            Event::CouponRemoved { customer_id, .. } => l.customers.contains_key(customer_id),
            Event::CreditNoteIssued(n) => {
                l.invoices.contains_key(&n.invoice_id) && l.customers.contains_key(&n.customer_id)
            }
            other => subscription_of(other).is_none_or(|s| l.subscriptions.contains_key(s)),
        }
    }
}

/// The subscription an event belongs to (none for customers, catalog and payments).
fn subscription_of(event: &Event) -> Option<&str> {
    match event {
        Event::SubscriptionStarted { subscription_id, .. }
        | Event::TrialEnded { subscription_id, .. }
        | Event::PlanChangeScheduled { subscription_id, .. }
        | Event::PlanChanged { subscription_id, .. }
        | Event::SubscriptionCanceled { subscription_id, .. }
        | Event::BillingPeriodClosed { subscription_id, .. } => Some(subscription_id),
        Event::UsageRecorded(u) => Some(&u.subscription_id),
        // A one-off invoice belongs to no subscription.
        Event::InvoiceIssued(inv) => Some(inv.subscription_id.as_str()).filter(|s| !s.is_empty()),
        _ => None,
    }
}

/// The date from which an event can change what the open periods' usage is worth.
fn effective_date(event: &Event) -> Option<Date> {
    match event {
        Event::PlanChanged { effective_date, .. }
        | Event::SubscriptionCanceled { effective_date, .. } => Some(*effective_date),
        _ => None,
    }
}
