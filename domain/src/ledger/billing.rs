//! Billing runs: the next billing step of a subscription (a trial end or the close of its
//! oldest open period), the period-close invoice (base fee, usage lines, credits for unused
//! in-advance days, minimum-commitment true-up), the current-usage draft and rated usage the
//! read side asks for, and how every subscription invoice is numbered and credited. It decides
//! only; events change the ledger through `evolve` (`run_subscription*` apply each step).

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use rust_decimal::Decimal;

use super::progressive::net_of_progressive;
use super::subscriptions::preview_change;
use super::usage::check_amounts_kept;
use super::{
    check_not_future, rules, stored_plan_error, CustomerState, Ledger, RatedUsage, DATE_MAX,
};
use crate::anomaly::Completeness;
use crate::calendar::{local_date, Period};
use crate::catalog::{FeeTiming, Plan, PlanRef};
use crate::commands::Context;
use crate::error::DomainError;
use crate::events::{Event, PlanChangeKind};
use crate::invoice::{build_invoice, Invoice, InvoiceHeader, IssueReason, LineDraft, LineKind};
use crate::money::checked_sum;
use crate::rating::RatingInput;
use crate::subscription::{credit_line, segment_lines, Subscription};

/// Refuses billing times beyond [`DATE_MAX`], and later than the service clock plus the skew
/// allowed for usage: a run in the future would close periods that have not ended.
pub fn check_billing_time(as_of: Timestamp, ctx: &Context) -> Result<(), DomainError> {
    let limit = DATE_MAX.to_zoned(TimeZone::UTC).expect("in range").timestamp();
    if as_of >= limit {
        return Err(DomainError::invalid("as_of", format!("must be before {DATE_MAX}")));
    }
    check_not_future("as_of", as_of, ctx)
}

impl Ledger {
    pub(super) fn execute_billing(
        &mut self,
        as_of: Timestamp,
        ctx: &Context,
        next_position: u64,
    ) -> Result<Vec<Event>, DomainError> {
        let ids: Vec<String> = self.subscriptions.keys().cloned().collect();
        let mut events = self.expire_wallets(as_of, ctx, next_position);
        for id in ids {
            let more = self.run_subscription(&id, as_of, ctx, next_position + events.len() as u64);
            events.extend(more);
        }
        Ok(events)
    }

    /// Applies billing steps of one subscription until none is due (at most
    /// `policy.billing_steps_max`). A step that fails (an amount overflow) stops this
    /// subscription's run; its earlier steps stand. The shell uses it to split a large billing
    /// run into bounded appends.
    pub fn run_subscription(
        &mut self,
        id: &str,
        as_of: Timestamp,
        ctx: &Context,
        position: u64,
    ) -> Vec<Event> {
        self.run_subscription_reporting(id, as_of, ctx, position).0
    }

    /// As [`Ledger::run_subscription`], also returning the error that stopped the run early, if
    /// one did, so the shell can report it (the input bounds make it unreachable for new data;
    /// a log written before them could still hold such a plan or usage).
    pub fn run_subscription_reporting(
        &mut self,
        id: &str,
        as_of: Timestamp,
        ctx: &Context,
        mut position: u64,
    ) -> (Vec<Event>, Option<DomainError>) {
        let mut events = Vec::new();
        for _ in 0..ctx.policy.billing_steps_max {
            let Some(sub) = self.subscriptions.get(id) else { break };
            match self.billing_step(sub, as_of, ctx) {
                Ok(Some(mut step)) => {
                    self.apply_all(&step, position);
                    position += step.len() as u64;
                    let low = self.follow_wallets(&step, ctx.now, position);
                    position += low.len() as u64;
                    step.extend(low);
                    events.extend(step);
                }
                Ok(None) => break,
                Err(error) => return (events, Some(error)),
            }
        }
        (events, None)
    }

    /// The next billing step of a subscription due at `as_of`, if any: a trial end, or the
    /// close of its oldest open period (with the period's invoice).
    pub fn billing_step(
        &self,
        sub: &Subscription,
        as_of: Timestamp,
        ctx: &Context,
    ) -> Result<Option<Vec<Event>>, DomainError> {
        let Some(next) = sub.next_close else { return Ok(None) };
        let tz = &sub.time_zone;
        if let (Some(t), false) = (sub.trial_end, sub.trial_ended) {
            let ends_first = sub.ends_on.is_none_or(|e| t < e);
            if ends_first && t <= next.end && crate::calendar::local_midnight(t, tz) <= as_of {
                return self.trial_end_events(sub, t, ctx).map(Some);
            }
        }
        let as_of_date = if as_of == Timestamp::MAX { DATE_MAX } else { local_date(as_of, tz) };
        if let Some(events) = self.scheduled_change_step(sub, &next, as_of_date, ctx)? {
            return Ok(Some(events));
        }
        let grace = jiff::SignedDuration::from_secs(ctx.policy.grace_period_secs);
        let cutoff = if as_of == Timestamp::MAX {
            as_of
        } else {
            as_of.checked_sub(grace).unwrap_or(Timestamp::MIN)
        };
        if next.end_instant(tz) > cutoff {
            return Ok(None);
        }
        self.close_period(sub, next, ctx).map(Some)
    }

    fn trial_end_events(
        &self,
        sub: &Subscription,
        t: Date,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let mut events =
            vec![Event::TrialEnded { subscription_id: sub.subscription_id.clone(), date: t }];
        let period = sub.period_of(t).expect("trial ends in service");
        if t > period.start {
            let range = (t, period.end);
            let lines =
                segment_lines(sub, &period, range, FeeTiming::Advance, |r| self.plan(r).clone())?;
            if !lines.is_empty() {
                let reason = IssueReason::TrialEnd;
                events.push(Event::InvoiceIssued(
                    self.invoice_for(sub, period, reason, lines, ctx.now)?,
                ));
            }
        }
        Ok(events)
    }

    /// Closes period `p` (cut at the end of service): applies a due downgrade, rates usage,
    /// bills the base fee (arrears for `p`, or in advance for the next period), credits unused
    /// in-advance days on cancellation, and adds the minimum-commitment true-up.
    fn close_period(
        &self,
        sub: &Subscription,
        p: Period,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let mut events = Vec::new();
        let mut sub_after = None;
        if let Some((plan, date)) = &sub.pending_change {
            if *date == p.end && sub.ends_on.is_none_or(|e| e > p.end) {
                let change = Event::PlanChanged {
                    subscription_id: sub.subscription_id.clone(),
                    plan: plan.clone(),
                    kind: PlanChangeKind::Downgrade,
                    effective_date: *date,
                };
                sub_after = Some(preview_change(sub, plan.clone(), *date));
                events.push(change);
            }
        }
        let last_day = p.last_day();
        let rating_plan = self.plan(sub.plan_at(last_day));
        let plan_of = |r: &PlanRef| self.plan(r).clone();
        let mut lines = segment_lines(sub, &p, (p.start, p.end), FeeTiming::Arrears, plan_of)?;
        lines.extend(self.closing_usage_lines(sub, rating_plan, &p)?);
        let cut_short = sub
            .ends_on
            .is_some_and(|e| e < sub.cycle.period_containing(p.start).expect("in service").end);
        if cut_short && sub.fee_billed_until > p.end {
            let full = sub.cycle.period_containing(p.start).expect("in service");
            // The plan that was charged for the unused days (an upgrade on the cut day counts).
            let plan = self.plan(sub.plan_at(p.end));
            if plan.fee_timing == FeeTiming::Advance {
                lines.extend(credit_line(sub, plan, &full, p.end, full.end)?);
            }
        }
        lines.extend(self.true_up_line(sub, rating_plan, &p, &lines)?);
        let continues = sub.ends_on.is_none_or(|e| e > p.end);
        if continues {
            let after = sub_after.as_ref().unwrap_or(sub);
            let next = sub.cycle.next(&sub.cycle.period_containing(p.start).expect("in service"));
            let next = after.truncate(next);
            let trial_over = sub.trial_end.is_none_or(|t| t <= next.start);
            if trial_over {
                let range = (next.start, next.end);
                lines.extend(segment_lines(after, &next, range, FeeTiming::Advance, plan_of)?);
            }
        }
        let reason = if cut_short { IssueReason::Cancellation } else { IssueReason::PeriodClose };
        let mut invoice = self.invoice_for(sub, p, reason, lines, ctx.now)?;
        invoice.anomalies = self.anomaly_flags(sub, &invoice, Completeness::WholePeriod);
        events.push(Event::InvoiceIssued(invoice));
        events.push(Event::BillingPeriodClosed {
            subscription_id: sub.subscription_id.clone(),
            period: p,
            closed_at: ctx.now,
        });
        Ok(events)
    }

    /// The current-usage draft of a subscription's open period containing `at`: what closing it
    /// now would invoice for it (arrears base fee, usage charges, commitment true-up), without
    /// the next period's in-advance fee, with its anomaly flags checked as `completeness` says
    /// (a period known to have ended is whole; a running one has only its usage so far). `None`
    /// when no open period contains `at`.
    pub fn draft_invoice(
        &self,
        subscription_id: &str,
        at: Timestamp,
        completeness: Completeness,
    ) -> Result<Option<Invoice>, DomainError> {
        let sub = self.subscription(subscription_id)?;
        let date = local_date(at, &sub.time_zone).max(sub.start_date());
        let Some(p) =
            sub.period_of(date).filter(|p| sub.next_close.is_some_and(|n| p.start >= n.start))
        else {
            return Ok(None);
        };
        let last_day = p.last_day();
        let rating_plan = self.plan(sub.plan_at(last_day));
        let plan_of = |r: &PlanRef| self.plan(r).clone();
        let mut lines = segment_lines(sub, &p, (p.start, p.end), FeeTiming::Arrears, plan_of)?;
        lines.extend(self.closing_usage_lines(sub, rating_plan, &p)?);
        lines.extend(self.true_up_line(sub, rating_plan, &p, &lines)?);
        // A draft consumes nothing and shows usage at its rating, as the journal accrues it:
        // coupons and the credit balance apply when the invoice is issued.
        let mut draft = self.undiscounted_invoice(sub, p, IssueReason::PeriodClose, lines, at)?;
        draft.invoice_id = format!("draft-{subscription_id}-{}", p.start);
        draft.anomalies = self.anomaly_flags(sub, &draft, completeness);
        Ok(Some(draft))
    }

    /// What closing the open period starting `period_start` now would invoice for each
    /// in-arrears usage charge (rated with the plan of the period's last day, rounded per line
    /// like the invoice). `None` when no open period starts there. The read side recognizes
    /// usage revenue as it is consumed from the day-by-day increase of these (SPEC §5).
    pub fn rated_usage(
        &self,
        subscription_id: &str,
        period_start: Date,
    ) -> Result<Option<RatedUsage>, DomainError> {
        let sub = self.subscription(subscription_id)?;
        let Some((p, plan)) = self.open_period_rated(sub, period_start) else { return Ok(None) };
        let amounts = self
            .usage_lines(sub, plan, &p)?
            .into_iter()
            .filter(|l| l.kind == LineKind::Usage)
            .map(|l| (l.metric_code.unwrap_or_default(), plan.currency_round(l.unrounded)))
            .collect();
        Ok(Some(RatedUsage { period: p, currency: plan.currency, amounts }))
    }

    /// What a close of `p` bills for usage: its usage lines less what progressive invoices
    /// already billed of each metric.
    fn closing_usage_lines(
        &self,
        sub: &Subscription,
        plan: &Plan,
        p: &Period,
    ) -> Result<Vec<LineDraft>, DomainError> {
        net_of_progressive(sub, p, self.usage_lines(sub, plan, p)?, plan.currency)
    }

    /// The open period of `sub` starting `period_start`, with the plan that rates its usage
    /// (the plan of its last day); `None` when no open period starts there.
    pub(super) fn open_period_rated(
        &self,
        sub: &Subscription,
        period_start: Date,
    ) -> Option<(Period, &Plan)> {
        let open = sub.next_close.is_some_and(|n| n.start <= period_start);
        let p = sub.period_of(period_start).filter(|p| open && p.start == period_start)?;
        let last_day = p.last_day();
        Some((p, self.plan(sub.plan_at(last_day))))
    }

    pub(super) fn usage_lines(
        &self,
        sub: &Subscription,
        plan: &Plan,
        p: &Period,
    ) -> Result<Vec<LineDraft>, DomainError> {
        let open = sub.open.get(&p.start);
        let (start, end) = (p.start_instant(&sub.time_zone), p.end_instant(&sub.time_zone));
        let mut lines = Vec::new();
        for charge in &plan.charges {
            let metric = &self.metrics[&charge.metric_code];
            let usage = open.and_then(|o| o.usage.get(&metric.code));
            if charge.pay_in_advance {
                lines.extend(self.unused_in_advance_line(sub, plan, charge, p, usage)?);
                continue;
            }
            let units = match usage {
                // A period cut to nothing (cancelled before it began) has no usage to rate.
                Some(u) if start < end => u.aggregate.units(start, end)?,
                _ => Decimal::ZERO,
            };
            // Only a percentage model reads each event's amount (O(events) to gather).
            let amounts: Vec<Decimal> = match usage {
                Some(u) if charge.model.needs_event_amounts() => {
                    check_amounts_kept(sub, metric, p, u)?;
                    u.amounts.values().copied().collect()
                }
                _ => Vec::new(),
            };
            let rating = RatingInput { units, event_amounts: &amounts };
            let amount =
                charge.model.rate(&rating).map_err(stored_plan_error(sub, plan, charge))?;
            lines.push(LineDraft {
                kind: LineKind::Usage,
                description: format!("{} ({})", metric.name, charge.model.name()),
                metric_code: Some(metric.code.clone()),
                charge_model: Some(charge.model.name().to_string()),
                units: Some(rules::rated_units(units)),
                service_period: *p,
                unrounded: amount,
            });
        }
        Ok(lines)
    }

    /// If the period's charges (this invoice's lines for `p` plus what was invoiced for `p`
    /// earlier) are below the plan's minimum commitment, prorated to the days of service, a
    /// true-up line adds the difference. Every step is checked (see [`DomainError::overflow`]).
    fn true_up_line(
        &self,
        sub: &Subscription,
        plan: &Plan,
        p: &Period,
        lines: &[LineDraft],
    ) -> Result<Option<LineDraft>, DomainError> {
        let Some(minimum) = plan.minimum_commitment else { return Ok(None) };
        let full = sub.full_days(p);
        let overflow = |what: &str| DomainError::overflow(sub.subject(), what);
        let Some(committed) = sub
            .cycle
            .period_containing(p.start)
            .map(|_| crate::calendar::prorate(minimum, p.days(), full))
        else {
            return Ok(None);
        };
        let committed = committed.ok_or_else(|| overflow("minimum commitment proration"))?;
        let earlier = sub.billed_by_period.get(&p.start).copied().unwrap_or_default();
        let spent = checked_sum(lines.iter().map(|l| plan.currency_round(l.unrounded)))
            .and_then(|s| s.checked_add(earlier))
            .ok_or_else(|| overflow("charges counted against the minimum commitment"))?;
        if spent >= committed {
            return Ok(None);
        }
        let unrounded =
            committed.checked_sub(spent).ok_or_else(|| overflow("minimum commitment true-up"))?;
        Ok(Some(LineDraft {
            kind: LineKind::MinimumCommitmentTrueUp,
            description: format!(
                "Minimum commitment true-up ({} committed)",
                plan.currency.round(committed)
            ),
            metric_code: None,
            charge_model: None,
            units: None,
            service_period: *p,
            unrounded,
        }))
    }

    /// The invoice of `lines` for `sub`, numbered after its earlier invoices, with the
    /// customer's currency and tax rate, discounted by the customer's coupons before tax and
    /// its credit balance applied after (SPEC §8 order); an overflow is the subscription's error.
    pub(super) fn invoice_for(
        &self,
        sub: &Subscription,
        period: Period,
        reason: IssueReason,
        lines: Vec<LineDraft>,
        now: Timestamp,
    ) -> Result<Invoice, DomainError> {
        let invoice = self.undiscounted_invoice(sub, period, reason, lines, now)?;
        let customer = &self.customers[&sub.customer_id];
        let plan = &sub.current_plan().code;
        Ok(self.with_credits_applied(customer, Self::discounted(customer, Some(plan), invoice)?))
    }

    /// [`Ledger::invoice_for`] without coupons and credit.
    fn undiscounted_invoice(
        &self,
        sub: &Subscription,
        period: Period,
        reason: IssueReason,
        lines: Vec<LineDraft>,
        now: Timestamp,
    ) -> Result<Invoice, DomainError> {
        let customer = &self.customers[&sub.customer_id].customer;
        let header = InvoiceHeader {
            invoice_id: format!("inv-{}-{}", sub.subscription_id, sub.invoice_ids.len() + 1),
            customer_id: sub.customer_id.clone(),
            subscription_id: sub.subscription_id.clone(),
            currency: customer.currency,
            period,
            issued_at: now,
            reason,
            tax_rate: customer.tax_rate,
        };
        build_invoice(header, lines)
    }
}

impl Plan {
    fn currency_round(&self, amount: Decimal) -> Decimal {
        self.currency.round(amount)
    }
}

/// `invoice` with the customer's credit balance applied: after tax (SPEC §8 order), as much
/// as the balance and the total allow.
pub(super) fn with_credit_applied(customer: &CustomerState, mut invoice: Invoice) -> Invoice {
    invoice.credit_applied = customer.credit_balance.min(invoice.total).max(Decimal::ZERO);
    invoice
}
