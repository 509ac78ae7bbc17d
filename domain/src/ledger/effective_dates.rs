//! Effective-dated plan changes and cancellations (issue 16; docs/effective-dates.md): a
//! command names the day it takes effect, in the past (within the back-dating horizon), today
//! or in the future.
//!
//! - A future date is a fact recorded now and applied then: a cancellation ends service on
//!   its date; a plan change is scheduled (`PlanChangeScheduled`) and applied by the first
//!   billing run on or after its date (`Ledger::scheduled_change_step`).
//! - A date inside the subscription's open periods acts as a change made on that day: the
//!   in-advance fee already invoiced for the oldest open period is credited from the date and
//!   the new plan charged, as an upgrade today is.
//! - A date inside a closed (invoiced) period never touches the invoices issued: the base fees
//!   of the closed days from the date on are corrected by a new invoice (reason `correction`)
//!   with a credit line per plan that was charged and, for a plan change, a charge line of the
//!   new plan. Usage a closed period invoiced stays rated as it was (the plan in force when it
//!   closed); see the decision record 0042.
//!
//! Everything here decides; the state change is `evolve`'s.

use jiff::civil::Date;

use super::subscriptions::{advance_billing_done, monthly_fee};
use super::{precondition, Ledger, DATE_MAX};
use crate::calendar::{local_date, Period};
use crate::catalog::{FeeTiming, Plan, PlanRef};
use crate::commands::Context;
use crate::error::DomainError;
use crate::events::{Event, PlanChangeKind};
use crate::invoice::{IssueReason, LineDraft, LineKind};
use crate::subscription::{base_fee_line, credit_line, segment_lines, Subscription};

/// Most closed periods one back-dated command corrects: a weekly plan over the longest
/// horizon an operator may set (`backdate_days_max` ≤ 3,660 days, ten years).
pub const CORRECTED_PERIODS_MAX: usize = 530;
/// The longest back-dating horizon an operator may configure.
pub const BACKDATE_DAYS_LIMIT: u32 = 3_660;
/// A usage event recorded in an open period after a back-dated end of service.
pub const USAGE_AFTER_END: &str = "USAGE_AFTER_END";
/// A cancellation dated before an imported subscription's cutover (`billed_until`).
pub const BILLED_ELSEWHERE: &str = "BILLED_ELSEWHERE";
/// A dated plan change on or before the subscription's latest plan change.
pub const PLAN_CHANGED_LATER: &str = "PLAN_CHANGED_LATER";

/// Refuses an effective date outside [today − horizon, DATE_MAX) or before the subscription
/// starts.
pub(super) fn check_effective_date(
    sub: &Subscription,
    field: &'static str,
    date: Date,
    ctx: &Context,
) -> Result<(), DomainError> {
    let today = local_date(ctx.now, &sub.time_zone);
    let horizon = ctx.policy.backdate_days_max;
    let earliest =
        today.checked_sub(jiff::Span::new().days(i64::from(horizon))).unwrap_or(Date::MIN);
    if date < earliest || date >= DATE_MAX {
        return Err(DomainError::invalid(
            field,
            format!(
                "must be from {earliest} ({horizon} days before today, the back-dating \
                 horizon) to before {DATE_MAX}"
            ),
        ));
    }
    if date < sub.start_date() {
        return Err(DomainError::invalid(
            field,
            format!("is before the subscription's start date {}", sub.start_date()),
        ));
    }
    Ok(())
}

impl Ledger {
    /// A plan change with an explicit effective date (checked against the subscription and the
    /// plan by the caller).
    pub(super) fn decide_dated_change(
        &self,
        sub: &Subscription,
        new_plan: &Plan,
        date: Date,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        check_effective_date(sub, "effective_date", date, ctx)?;
        let (last_change, _) = sub.plans.last().expect("a subscription always has a plan");
        if sub.plans.len() > 1 && date <= *last_change {
            return Err(precondition(
                sub,
                PLAN_CHANGED_LATER,
                format!(
                    "the plan last changed on {last_change}; a dated change must take effect \
                     after it"
                ),
            ));
        }
        if sub.billed_elsewhere_until.is_some_and(|cutover| date < cutover) {
            // History from before an imported subscription's cutover: the previous biller
            // invoiced it (its invoices are imported as they were), so only the plan changes.
            return Ok(vec![self.plan_changed(sub, new_plan, date)?]);
        }
        let today = local_date(ctx.now, &sub.time_zone);
        if date > today {
            return Ok(vec![Event::PlanChangeScheduled {
                subscription_id: sub.subscription_id.clone(),
                plan: new_plan.plan_ref(),
                effective_date: date,
                occurred_at: ctx.now,
            }]);
        }
        self.plan_change_events(sub, new_plan, date, ctx)
    }

    /// The scheduled plan change of `sub` due in its oldest open period `next` by `as_of`'s
    /// local date, as the billing step that applies it (a change on a period's end is applied
    /// by that period's close instead).
    pub(super) fn scheduled_change_step(
        &self,
        sub: &Subscription,
        next: &Period,
        as_of_date: Date,
        ctx: &Context,
    ) -> Result<Option<Vec<Event>>, DomainError> {
        let Some((plan, date)) = &sub.pending_change else { return Ok(None) };
        if *date < next.start || *date >= next.end || *date > as_of_date {
            return Ok(None);
        }
        let plan = self.plan(plan).clone();
        self.plan_change_events(sub, &plan, *date, ctx).map(Some)
    }

    /// `PlanChanged` on `date` (today or earlier) and the invoice that settles the base fees
    /// already invoiced from `date` on: closed periods (either fee timing) and the oldest open
    /// period's in-advance fee.
    pub(super) fn plan_change_events(
        &self,
        sub: &Subscription,
        new_plan: &Plan,
        date: Date,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let old_plan = self.plan(sub.current_plan());
        let changed = self.plan_changed(sub, new_plan, date)?;
        let Event::PlanChanged { kind, .. } = changed else { unreachable!("a PlanChanged") };
        let mut events = vec![changed];
        let first_open = sub.next_close.expect("a subscription in service has an open period");
        let (mut lines, corrected) =
            self.closed_period_lines(sub, date, first_open.start, |p, a| {
                let mut lines = Vec::new();
                lines.extend(credit_line(sub, old_plan, p, a, p.end)?);
                lines.extend(base_fee_line(sub, new_plan, p, a, p.end)?);
                Ok(lines)
            })?;
        let open_date = date.max(first_open.start);
        let period = sub.period_of(open_date).expect("in service");
        // Only if this period's in-advance billing has happened (at start, at the close of the
        // previous period, at trial end); otherwise that billing prices each plan's days itself.
        if open_date < period.end && advance_billing_done(sub, &period) {
            if old_plan.fee_timing == FeeTiming::Advance && sub.fee_billed_until >= period.end {
                lines.extend(credit_line(sub, old_plan, &period, open_date, period.end)?);
            }
            if new_plan.fee_timing == FeeTiming::Advance {
                lines.extend(base_fee_line(sub, new_plan, &period, open_date, period.end)?);
            }
        }
        if !lines.is_empty() {
            let (reason, span) = match corrected {
                Some(span) => {
                    (IssueReason::Correction, Period { start: span.start, end: period.end })
                }
                None if kind == PlanChangeKind::Upgrade => (IssueReason::PlanUpgrade, period),
                None => (IssueReason::PlanDowngrade, period),
            };
            events.push(Event::InvoiceIssued(self.invoice_for(sub, span, reason, lines, ctx.now)?));
        }
        Ok(events)
    }

    /// `PlanChanged` to `new_plan` on `date`: an upgrade unless the new plan's monthly fee is
    /// lower.
    fn plan_changed(
        &self,
        sub: &Subscription,
        new_plan: &Plan,
        date: Date,
    ) -> Result<Event, DomainError> {
        let old_plan = self.plan(sub.current_plan());
        let kind = if monthly_fee(sub, new_plan)? < monthly_fee(sub, old_plan)? {
            PlanChangeKind::Downgrade
        } else {
            PlanChangeKind::Upgrade
        };
        Ok(Event::PlanChanged {
            subscription_id: sub.subscription_id.clone(),
            plan: new_plan.plan_ref(),
            kind,
            effective_date: date,
        })
    }

    /// A cancellation whose first day without service is `date` (past, today or future).
    /// Before the oldest open period, the closed days' base fees are credited on a correction
    /// invoice, and the open periods close at once (the caller runs billing).
    pub(super) fn decide_dated_cancel(
        &self,
        sub: &Subscription,
        date: Date,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        check_effective_date(sub, "effective_date", date, ctx)?;
        if let Some(cutover) = sub.billed_elsewhere_until.filter(|c| date < *c) {
            return Err(precondition(
                sub,
                BILLED_ELSEWHERE,
                format!(
                    "the previous biller invoiced this subscription before {cutover} (its \
                     cutover); a service that ended before it is history: import its invoices \
                     and a subscription that ends on or after {cutover}"
                ),
            ));
        }
        let first_open = sub.next_close.expect("a subscription in service has an open period");
        check_no_usage_after(sub, first_open.start, date)?;
        let mut events = Vec::new();
        if date < first_open.start {
            let plan_of = |r: &PlanRef| self.plan(r).clone();
            let (lines, corrected) =
                self.closed_period_lines(sub, date, first_open.start, |p, a| {
                    let mut lines = segment_lines(sub, p, (a, p.end), FeeTiming::Advance, plan_of)?;
                    lines.extend(segment_lines(sub, p, (a, p.end), FeeTiming::Arrears, plan_of)?);
                    Ok(lines.into_iter().map(as_credit).collect())
                })?;
            if let (false, Some(span)) = (lines.is_empty(), corrected) {
                let reason = IssueReason::Correction;
                events.push(Event::InvoiceIssued(
                    self.invoice_for(sub, span, reason, lines, ctx.now)?,
                ));
            }
        }
        events.push(Event::SubscriptionCanceled {
            subscription_id: sub.subscription_id.clone(),
            effective_date: date,
            immediately: false,
            occurred_at: ctx.now,
        });
        Ok(events)
    }

    /// The lines `per_period` gives for each closed period of `sub` from the one containing
    /// `date` up to `first_open` (each called with the period and the first corrected day in
    /// it), and the span of those periods (`None` when `date` is not in a closed period).
    fn closed_period_lines(
        &self,
        sub: &Subscription,
        date: Date,
        first_open: Date,
        mut per_period: impl FnMut(&Period, Date) -> Result<Vec<LineDraft>, DomainError>,
    ) -> Result<(Vec<LineDraft>, Option<Period>), DomainError> {
        let mut lines = Vec::new();
        let mut span: Option<Period> = None;
        let mut p = sub.cycle.period_containing(date).expect("dates in service have a period");
        let mut periods: usize = 0;
        while p.end <= first_open {
            periods += 1;
            assert!(periods <= CORRECTED_PERIODS_MAX, "the horizon bounds the corrected periods");
            lines.extend(per_period(&p, date.max(p.start))?);
            span = Some(Period { start: span.map_or(p.start, |s| s.start), end: p.end });
            p = sub.cycle.next(&p);
        }
        Ok((lines, span))
    }
}

/// An invoiced base-fee line turned into its credit.
fn as_credit(mut line: LineDraft) -> LineDraft {
    line.kind = LineKind::Credit;
    line.description = format!("Credit: {}", line.description);
    // Negation is exact: Decimal's range is symmetric.
    line.unrounded = -line.unrounded;
    line
}

/// Refuses an end of service on `date` when an open period that would then never close (one
/// after the oldest, starting on or after `date`) has usage: it would stay unbilled.
fn check_no_usage_after(
    sub: &Subscription,
    first_open: Date,
    date: Date,
) -> Result<(), DomainError> {
    let mut later = sub.open.iter().filter(|(start, _)| **start > first_open && **start >= date);
    if let Some((start, _)) = later.find(|(_, open)| !open.usage.is_empty()) {
        return Err(precondition(
            sub,
            USAGE_AFTER_END,
            format!(
                "usage is recorded in the period from {start}, after the end of service on \
                 {date}: a cancellation effective after {start} bills it"
            ),
        ));
    }
    Ok(())
}
