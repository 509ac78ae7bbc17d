//! Subscription lifecycle commands: start (with its first in-advance invoice), plan change
//! (upgrade now with prorated lines, downgrade scheduled for the period end), and cancellation,
//! with the preconditions they share and the subscription a start or plan change produces.
//! Deciding here changes nothing; the state change is `evolve`'s (via `preview_subscription`
//! and `apply_plan_change`).

use std::collections::BTreeMap;

use jiff::civil::Date;
use rust_decimal::Decimal;

use super::usage::check_amounts_kept;
use super::{precondition, CustomerState, Ledger, DATE_MAX};
use crate::calendar::{local_date, Cycle, Period};
use crate::catalog::{check_id, FeeTiming, Plan, PlanRef};
use crate::commands::{Command, Context};
use crate::error::{DomainError, Violations};
use crate::events::Event;
use crate::invoice::IssueReason;
use crate::subscription::{segment_lines, Subscription};

/// How far before today a subscription may start, or a plan change or cancellation take
/// effect, unless the operator sets `Policy::backdate_days_max` (a backdated start, e.g. a
/// customer moved from another system: its ended periods are billed by the next billing run).
pub const BACKDATE_DAYS_MAX: u32 = 366;

impl Ledger {
    pub(super) fn decide_start(
        &self,
        cmd: &Command,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let Command::StartSubscription {
            subscription_id,
            customer_id,
            plan_code,
            plan_version,
            anchor,
            start_date,
            billed_until,
        } = cmd
        else {
            unreachable!("called with StartSubscription")
        };
        let mut v = Violations::default();
        check_id(&mut v, "subscription_id", subscription_id);
        v.into_result()?;
        let customer = self.customer(customer_id)?;
        let plan = self.find_plan(plan_code, *plan_version)?;
        if self.subscriptions.contains_key(subscription_id) {
            return Err(DomainError::Conflict(format!(
                "subscription {subscription_id} already exists, started otherwise (an identical \
                 request is a replay)"
            )));
        }
        check_currency(customer, plan)?;
        let today = local_date(ctx.now, &customer.time_zone);
        let start = start_date.unwrap_or(today);
        let horizon = ctx.policy.backdate_days_max;
        let earliest = today
            .checked_sub(jiff::Span::new().days(i64::from(horizon)))
            .unwrap_or(jiff::civil::Date::MIN);
        if start < earliest || start >= DATE_MAX {
            return Err(DomainError::invalid(
                "start_date",
                format!(
                    "must be from {earliest} ({horizon} days before today, the back-dating \
                     horizon) to before {DATE_MAX}"
                ),
            ));
        }
        let trial_end = (plan.trial_days > 0)
            .then(|| start.checked_add(jiff::Span::new().days(i64::from(plan.trial_days))))
            .transpose()
            .map_err(|_| DomainError::invalid("start_date", "trial end out of range"))?;
        let mut events = vec![Event::SubscriptionStarted {
            subscription_id: subscription_id.clone(),
            customer_id: customer_id.clone(),
            plan: plan.plan_ref(),
            anchor: *anchor,
            start_date: start,
            trial_end,
            occurred_at: ctx.now,
            billed_until: *billed_until,
        }];
        if let Some(cutover) = billed_until {
            let cycle = Cycle { interval: plan.interval, anchor: *anchor, start_date: start };
            check_cutover(&cycle, *cutover, today)?;
            return Ok(events);
        }
        if plan.fee_timing == FeeTiming::Advance && trial_end.is_none() {
            let sub = preview_subscription(self, &events[0]);
            let first = sub.cycle.first();
            let range = (first.start, first.end);
            let lines =
                segment_lines(&sub, &first, range, FeeTiming::Advance, |r| self.plan(r).clone())?;
            if !lines.is_empty() {
                events.push(Event::InvoiceIssued(self.invoice_for(
                    &sub,
                    first,
                    IssueReason::SubscriptionStart,
                    lines,
                    ctx.now,
                )?));
            }
        }
        Ok(events)
    }

    pub(super) fn decide_change_plan(
        &self,
        id: &str,
        plan_code: &str,
        plan_version: Option<u32>,
        effective_date: Option<Date>,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let sub = self.subscription(id)?;
        let new_plan = self.find_plan(plan_code, plan_version)?;
        let customer = self.customer(&sub.customer_id)?;
        let today = local_date(ctx.now, &sub.time_zone);
        check_not_canceled(self, sub, today)?;
        check_no_pending_change(sub)?;
        check_currency(customer, new_plan)?;
        let old_plan = self.plan(sub.current_plan());
        if old_plan.plan_ref() == new_plan.plan_ref() {
            return Err(precondition(
                sub,
                "SAME_PLAN",
                "the subscription is already on this plan version",
            ));
        }
        if old_plan.interval != new_plan.interval {
            return Err(precondition(sub, "INTERVAL_CHANGE", "changing the billing interval is not supported; cancel and start a new subscription"));
        }
        self.check_percentage_rateable(sub, new_plan)?;
        if let Some(date) = effective_date {
            return self.decide_dated_change(sub, new_plan, date, ctx);
        }
        let date = today.max(sub.start_date());
        if monthly_fee(sub, new_plan)? < monthly_fee(sub, old_plan)? {
            let period = sub.period_of(date).expect("in service");
            return Ok(vec![Event::PlanChangeScheduled {
                subscription_id: id.to_string(),
                plan: new_plan.plan_ref(),
                effective_date: period.end,
                occurred_at: ctx.now,
            }]);
        }
        self.plan_change_events(sub, new_plan, date, ctx)
    }

    /// Refuses a move to `plan` when one of its percentage charges would rate an open period
    /// whose usage of that metric was recorded without per-event amounts (before any plan
    /// priced the metric by percentage): that period's invoice would be wrong.
    fn check_percentage_rateable(
        &self,
        sub: &Subscription,
        plan: &Plan,
    ) -> Result<(), DomainError> {
        for c in plan.charges.iter().filter(|c| c.model.needs_event_amounts()) {
            for (start, open) in &sub.open {
                if let Some(usage) = open.usage.get(&c.metric_code) {
                    let p = sub.period_of(*start).expect("open periods are in service");
                    check_amounts_kept(sub, &self.metrics[&c.metric_code], &p, usage)?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn decide_cancel(
        &self,
        id: &str,
        immediately: bool,
        effective_date: Option<Date>,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let sub = self.subscription(id)?;
        let today = local_date(ctx.now, &sub.time_zone);
        check_not_canceled(self, sub, today)?;
        if let Some(date) = effective_date {
            if immediately {
                return Err(DomainError::invalid(
                    "effective_date",
                    "give either immediately or an effective date, not both",
                ));
            }
            return self.decide_dated_cancel(sub, date, ctx);
        }
        let date = today.max(sub.start_date());
        // Immediately: service ends at the end of today (today is a used day); a subscription
        // that has not started yet ends before it starts.
        let effective_date = match (immediately, today < sub.start_date()) {
            (true, true) => sub.start_date(),
            (true, false) => {
                date.tomorrow().map_err(|_| DomainError::invalid("date", "out of range"))?
            }
            (false, _) => sub.period_of(date).expect("in service").end,
        };
        Ok(vec![Event::SubscriptionCanceled {
            subscription_id: id.to_string(),
            effective_date,
            immediately,
            occurred_at: ctx.now,
        }])
    }
}

/// Refuses an imported subscription's cutover unless it is a period boundary after the start,
/// today or earlier.
fn check_cutover(cycle: &Cycle, cutover: Date, today: Date) -> Result<(), DomainError> {
    if cutover <= cycle.start_date || cutover > today {
        return Err(DomainError::invalid(
            "billed_until",
            format!(
                "must be after the start date {} and at most today ({today})",
                cycle.start_date
            ),
        ));
    }
    let period = cycle.period_containing(cutover).expect("after the start");
    if period.start != cutover {
        return Err(DomainError::invalid(
            "billed_until",
            format!(
                "must be a billing period boundary: {cutover} is inside the period from {} to {}",
                period.start, period.end
            ),
        ));
    }
    Ok(())
}

/// The subscription a `SubscriptionStarted` event creates.
pub(super) fn preview_subscription(ledger: &Ledger, started: &Event) -> Subscription {
    let Event::SubscriptionStarted {
        subscription_id,
        customer_id,
        plan,
        anchor,
        start_date,
        trial_end,
        billed_until,
        ..
    } = started
    else {
        unreachable!("called with SubscriptionStarted")
    };
    let plan_in_force = ledger.plan(plan);
    let interval = plan_in_force.interval;
    let cycle = Cycle { interval, anchor: *anchor, start_date: *start_date };
    // An imported subscription starts billing at its cutover: the period starting there is the
    // oldest open one, the trial is over if it ended by then, and an in-advance fee of that
    // period was the previous biller's (unless still in trial).
    let (next_close, trial_ended, fee_billed_until) = match billed_until {
        None => (cycle.first(), false, *start_date),
        Some(cutover) => {
            let open = cycle.period_containing(*cutover).expect("validated at decide");
            debug_assert_eq!(open.start, *cutover, "a cutover is a period boundary");
            let trial_over = trial_end.is_none_or(|t| t <= *cutover);
            let fee_paid_ahead = plan_in_force.fee_timing == FeeTiming::Advance && trial_over;
            (
                open,
                trial_end.is_some_and(|t| t <= *cutover),
                if fee_paid_ahead { open.end } else { *cutover },
            )
        }
    };
    Subscription {
        subscription_id: subscription_id.clone(),
        customer_id: customer_id.clone(),
        time_zone: ledger.customers[customer_id].time_zone.clone(),
        next_close: Some(next_close),
        cycle,
        plans: vec![(*start_date, plan.clone())],
        trial_end: *trial_end,
        trial_ended,
        pending_change: None,
        ends_on: None,
        fee_billed_until,
        billed_elsewhere_until: *billed_until,
        billed_by_period: BTreeMap::new(),
        open: BTreeMap::new(),
        invoice_ids: Vec::new(),
        alerts: Vec::new(),
        progressive_billed: BTreeMap::new(),
        billed_history: Vec::new(),
    }
}

/// The subscription as it would be after a plan change (for deciding the close that applies a
/// downgrade). Usage is not copied: nothing that prices base fees reads it.
pub(super) fn preview_change(sub: &Subscription, plan: PlanRef, date: Date) -> Subscription {
    let mut after = sub.clone_header();
    apply_plan_change(&mut after, plan, date);
    after
}

pub(super) fn apply_plan_change(sub: &mut Subscription, plan: PlanRef, date: Date) {
    sub.plans.retain(|(d, _)| *d < date);
    sub.plans.push((date, plan));
    sub.pending_change = None;
}

impl Subscription {
    /// A copy without the open periods' usage.
    fn clone_header(&self) -> Subscription {
        Subscription {
            subscription_id: self.subscription_id.clone(),
            customer_id: self.customer_id.clone(),
            time_zone: self.time_zone.clone(),
            cycle: self.cycle.clone(),
            plans: self.plans.clone(),
            trial_end: self.trial_end,
            trial_ended: self.trial_ended,
            pending_change: self.pending_change.clone(),
            ends_on: self.ends_on,
            next_close: self.next_close,
            fee_billed_until: self.fee_billed_until,
            billed_elsewhere_until: self.billed_elsewhere_until,
            billed_by_period: self.billed_by_period.clone(),
            open: BTreeMap::new(),
            invoice_ids: self.invoice_ids.clone(),
            alerts: self.alerts.clone(),
            progressive_billed: self.progressive_billed.clone(),
            billed_history: self.billed_history.clone(),
        }
    }
}

/// `plan`'s monthly fee; an overflow is an error of `sub` naming the plan.
pub(super) fn monthly_fee(sub: &Subscription, plan: &Plan) -> Result<Decimal, DomainError> {
    plan.monthly_fee().ok_or_else(|| {
        let what = format!("monthly base fee of plan {} v{}", plan.code, plan.version);
        DomainError::overflow(sub.subject(), what)
    })
}

fn check_currency(customer: &CustomerState, plan: &Plan) -> Result<(), DomainError> {
    if customer.customer.currency != plan.currency {
        return Err(DomainError::precondition(
            "CURRENCY_MISMATCH",
            format!("plan-{}", plan.code),
            format!(
                "plan {} bills in {}, customer {} in {}",
                plan.code, plan.currency, customer.customer.customer_id, customer.customer.currency
            ),
        ));
    }
    Ok(())
}

fn check_not_canceled(ledger: &Ledger, sub: &Subscription, today: Date) -> Result<(), DomainError> {
    if sub.ends_on.is_some() || ledger.subscription_status(sub, today) == "canceled" {
        return Err(precondition(
            sub,
            "SUBSCRIPTION_CANCELED",
            format!("subscription {} is canceled", sub.subscription_id),
        ));
    }
    Ok(())
}

fn check_no_pending_change(sub: &Subscription) -> Result<(), DomainError> {
    if sub.pending_change.is_some() {
        return Err(precondition(
            sub,
            "CHANGE_PENDING",
            "a downgrade is already scheduled for the end of the period",
        ));
    }
    Ok(())
}

/// Whether period `p`'s in-advance base fee has been invoiced already (or never will be, being
/// all trial): `p` is the oldest open period and any trial has been processed.
pub(super) fn advance_billing_done(sub: &Subscription, p: &Period) -> bool {
    let oldest_open = sub.next_close.is_some_and(|n| p.start <= n.start);
    let trial_done = sub.trial_end.is_none_or(|t| sub.trial_ended || t >= p.end);
    oldest_open && trial_done
}
