//! Usage accruals: usage revenue recognized as it is consumed, one entry per subscription and
//! day (Dr unbilled receivable / Cr `revenue:usage`, numbered `ACCRUAL_SEQ_BASE | position`),
//! the per-period [`AccrualState`] under `acc/`, the hand-over of accrued amounts to the
//! invoice line that bills them ([`Journal::take_accrued`]) and the reversal of what is left
//! when a period closes. It never posts invoice, payment or void entries (see `posting`).

use std::collections::{BTreeMap, BTreeSet};

use domain::calendar::Period;
use domain::invoice::InvoiceLine;
use domain::money::{checked_sum, Currency};
use domain::recognition::RevenueType;
use event_store::Position;
use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::accounts::{Account, EntryKind, JournalEntry, Legs};
use super::posting::{Entries, Journal};
use super::records::{accrual_key, entry_key, json, EntryRef};
use super::{check_recognizable, overflow, plus, ACCRUAL_SEQ_BASE, RECORD_VERSION};
use crate::usage_meter::Accrual;
use crate::Result;

/// What a subscription's open period has accrued of usage revenue, per day and metric.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AccrualState {
    v: u16,
    currency: Option<Currency>,
    days: BTreeMap<Date, DayAccrual>,
    /// Metrics whose accruals an invoice line has taken over.
    invoiced: BTreeSet<String>,
    /// Per metric and day, what of its accruals progressive invoice lines took over, before
    /// coupons (docs/decisions/0037); the closing line takes the rest, day by day.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    taken: BTreeMap<String, BTreeMap<Date, Decimal>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DayAccrual {
    /// The day's journal entry is `j/<day>/<seq>`.
    seq: u64,
    amounts: BTreeMap<String, Decimal>,
}

impl AccrualState {
    /// Σ accrued per metric not yet invoiced; `None` if a sum overflows.
    fn totals(&self) -> Option<BTreeMap<String, Decimal>> {
        let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
        for day in self.days.values() {
            for (metric, amount) in &day.amounts {
                if !self.invoiced.contains(metric) {
                    let total = totals.entry(metric.clone()).or_default();
                    *total = total.checked_add(*amount)?;
                }
            }
        }
        Some(totals)
    }

    /// Σ accrued per metric that no invoice line took over yet: [`AccrualState::totals`] less
    /// what progressive lines took; `None` if a sum overflows.
    fn untaken(&self) -> Option<BTreeMap<String, Decimal>> {
        let mut totals = self.totals()?;
        for (metric, days) in self.taken.iter().filter(|(m, _)| !self.invoiced.contains(*m)) {
            let total = totals.entry(metric.clone()).or_default();
            *total = total.checked_sub(checked_sum(days.values().copied())?)?;
        }
        Some(totals)
    }

    /// What of the metric's accruals no progressive line took, per day (a day can be
    /// negative: the rated amount fell below what was billed); `None` if a sum overflows.
    fn rest(&self, metric: &str) -> Option<Entries> {
        let taken = self.taken.get(metric);
        let mut entries = Vec::new();
        for (d, day) in &self.days {
            let accrued = day.amounts.get(metric).copied().unwrap_or_default();
            let took = taken.and_then(|t| t.get(d)).copied().unwrap_or_default();
            let share = accrued.checked_sub(took)?;
            if !share.is_zero() {
                entries.push((*d, share));
            }
        }
        Some(entries)
    }

    /// The metric's accruals per day that lie, cumulated in date order, between `from` and
    /// `to` (unbounded: `None`): each day's share of that band. A decrease of the rated amount
    /// (a negative day) gives back what the band held. `None` if a sum overflows.
    fn band(&self, metric: &str, from: Decimal, to: Option<Decimal>) -> Option<Entries> {
        let clamp = |c: Decimal| {
            let c = c.max(from);
            to.map_or(c, |to| c.min(to))
        };
        let mut cumulative = Decimal::ZERO;
        let mut entries = Vec::new();
        for (d, day) in &self.days {
            let Some(amount) = day.amounts.get(metric) else { continue };
            let after = cumulative.checked_add(*amount)?;
            let share = clamp(after).checked_sub(clamp(cumulative))?;
            if !share.is_zero() {
                entries.push((*d, share));
            }
            cumulative = after;
        }
        Some(entries)
    }
}

impl Journal<'_, '_> {
    fn load_accruals(&self, subscription_id: &str, period_start: Date) -> Result<AccrualState> {
        match self.w.get(&accrual_key(subscription_id, period_start))? {
            Some(b) => json(&b, "accruals"),
            None => Ok(AccrualState { v: RECORD_VERSION, ..AccrualState::default() }),
        }
    }

    /// Accrues, on the accrual's day, the increase of each metric's rated amount over what
    /// its period has accrued so far, and rewrites that day's usage entry.
    pub(super) fn accrue(&mut self, a: &Accrual) -> Result<()> {
        let (sub, period) = (a.subscription_id.as_str(), a.rated.period);
        let mut state = self.load_accruals(sub, period.start)?;
        state.currency = Some(a.rated.currency);
        let position = self.position;
        let what = |m: &str| format!("usage accrual of subscription {sub}, metric {m}");
        let all = || overflow(position, what("(all)"));
        let mut deltas = state.totals().ok_or_else(all)?;
        deltas.values_mut().for_each(|v| *v = -*v);
        for (metric, amount) in &a.rated.amounts {
            check_recognizable(*amount, a.rated.currency, position, || what(metric))?;
            if !state.invoiced.contains(metric) {
                let delta = deltas.entry(metric.clone()).or_default();
                *delta = plus(*delta, *amount, position, || what(metric))?;
            }
        }
        let seq = ACCRUAL_SEQ_BASE | a.first;
        let day = state.days.entry(a.day).or_insert(DayAccrual { seq, amounts: BTreeMap::new() });
        let day_total = |d: &DayAccrual| checked_sum(d.amounts.values().copied());
        let before = day_total(day).ok_or_else(all)?;
        for (metric, delta) in deltas.into_iter().filter(|(_, d)| !d.is_zero()) {
            let amount = day.amounts.entry(metric.clone()).or_default();
            *amount = plus(*amount, delta, position, || what(&metric))?;
            if amount.is_zero() {
                day.amounts.remove(&metric);
            }
        }
        let after = day_total(day).ok_or_else(all)?;
        let r = EntryRef { date: a.day, seq: day.seq };
        self.w.put(accrual_key(sub, period.start), serde_json::to_vec(&state).expect("serialize"));
        if before != after {
            self.repost_accrual(r, sub, a.rated.currency, after)?;
        }
        Ok(())
    }

    /// Replaces the usage entry `r` of a subscription's day with one for `amount`.
    fn repost_accrual(
        &mut self,
        r: EntryRef,
        sub: &str,
        currency: Currency,
        amount: Decimal,
    ) -> Result<()> {
        self.check_date(r.date)?;
        if self.w.get(&entry_key(r))?.is_some() {
            self.unpost(r)?;
        }
        if amount.is_zero() {
            return Ok(());
        }
        let position = r.seq & !ACCRUAL_SEQ_BASE;
        self.write_entry(&usage_entry(r, sub, currency, amount, position)?)
    }

    /// The accruals of a usage line's metric and period, per day; the line takes them over.
    /// A progressive line (`progressive`) takes the next band of them as large as the line
    /// before coupons, and the metric goes on accruing; a closing line takes all that is left,
    /// and the metric accrues no more.
    pub(super) fn take_accrued(
        &mut self,
        subscription_id: &str,
        line: &InvoiceLine,
        progressive: bool,
    ) -> Result<Entries> {
        let Some(metric) = line.metric_code.as_deref() else { return Ok(Vec::new()) };
        let start = line.service_period.start;
        let mut state = self.load_accruals(subscription_id, start)?;
        if state.days.is_empty() || state.invoiced.contains(metric) {
            return Ok(Vec::new());
        }
        let position = self.position;
        let what = || format!("usage accruals of subscription {subscription_id}, metric {metric}");
        let taken = match progressive {
            true => {
                let took = state.taken.get(metric).map(|t| checked_sum(t.values().copied()));
                let from = took.unwrap_or(Some(Decimal::ZERO));
                let gross = line.amount.checked_add(line.discount);
                let to = from.zip(gross).and_then(|(f, g)| f.checked_add(g));
                let band = from.zip(to).and_then(|(f, t)| state.band(metric, f, Some(t)));
                let band = band.ok_or_else(|| overflow(position, what()))?;
                let took = state.taken.entry(metric.to_string()).or_default();
                for (d, a) in &band {
                    let day = took.entry(*d).or_default();
                    *day = plus(*day, *a, position, what)?;
                }
                band
            }
            false => {
                state.invoiced.insert(metric.to_string());
                state.rest(metric).ok_or_else(|| overflow(position, what()))?
            }
        };
        let bytes = serde_json::to_vec(&state).expect("accruals serialize");
        self.w.put(accrual_key(subscription_id, start), bytes);
        Ok(taken)
    }

    /// When a period closes: reverses, on its last day, what metrics no invoice line took
    /// over had accrued (a charge the closing plan no longer has), and drops the accruals.
    pub(super) fn close_accruals(&mut self, subscription_id: &str, period: &Period) -> Result<()> {
        let Some(bytes) = self.w.get(&accrual_key(subscription_id, period.start))? else {
            return Ok(());
        };
        let state: AccrualState = json(&bytes, "accruals")?;
        self.w.delete(accrual_key(subscription_id, period.start));
        let what = || format!("usage accruals of subscription {subscription_id} left at close");
        let left = state.untaken().and_then(|t| checked_sum(t.into_values()));
        let left = left.ok_or_else(|| overflow(self.position, what()))?;
        let Some(currency) = state.currency.filter(|_| !left.is_zero()) else { return Ok(()) };
        let last = period.last_day();
        self.check_date(last)?;
        let r = EntryRef { date: last, seq: self.next_seq()? };
        self.write_entry(&usage_entry(r, subscription_id, currency, -left, self.position)?)
    }
}

/// The usage entry `r` of a subscription: Dr unbilled receivable / Cr usage revenue for
/// `amount` (a negative amount reverses).
fn usage_entry(
    r: EntryRef,
    subscription_id: &str,
    currency: Currency,
    amount: Decimal,
    position: Position,
) -> Result<JournalEntry> {
    let mut legs = Legs::default();
    legs.dr(Account::UnbilledReceivable, amount);
    legs.cr(Account::Revenue(RevenueType::Usage), amount);
    let postings = legs.postings().map_err(|what| {
        overflow(position, format_args!("usage accrual of subscription {subscription_id}: {what}"))
    })?;
    Ok(JournalEntry {
        v: RECORD_VERSION,
        seq: r.seq,
        date: r.date,
        kind: EntryKind::UsageAccrual,
        invoice_id: String::new(),
        subscription_id: subscription_id.to_string(),
        credit_note_id: String::new(),
        wallet_id: String::new(),
        currency,
        position,
        postings,
    })
}
