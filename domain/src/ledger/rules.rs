//! Input rules that keep a caller from corrupting the books (issue 11, decision 0011): instants
//! past the service clock, negative usage, usage no charge bills, and re-runs of catalog
//! commands answered as replays of what they created.

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};
use rust_decimal::Decimal;

use super::{precondition, stored_plan_error, Ledger};
use crate::calendar::Period;
use crate::catalog::{Charge, Metric, Plan};
use crate::commands::{Command, Context};
use crate::error::DomainError;
use crate::events::Usage;
use crate::invoice::{InvoiceAccount, LineDraft, LineKind};
use crate::rating::{Aggregation, UsagePoint};
use crate::subscription::MetricUsage;
use crate::subscription::Subscription;

/// `PreconditionFailure` kind of usage for a metric that no charge of the subscription's plan
/// bills.
pub const METRIC_NOT_ON_PLAN: &str = "METRIC_NOT_ON_PLAN";
/// `PreconditionFailure` kind of a payment dated before its invoice was issued.
pub const PAYMENT_BEFORE_ISSUE: &str = "PAYMENT_BEFORE_ISSUE";

/// The latest instant a caller may give (usage `occurred_at`, billing `as_of`, payment
/// `occurred_at`): the service clock plus the skew allowed for usage.
pub fn latest_accepted(ctx: &Context) -> Timestamp {
    let skew = SignedDuration::from_secs(ctx.policy.usage_future_tolerance_secs);
    ctx.now.checked_add(skew).unwrap_or(Timestamp::MAX)
}

/// Refuses an instant later than [`latest_accepted`] (INVALID_ARGUMENT on `field`).
pub fn check_not_future(field: &str, at: Timestamp, ctx: &Context) -> Result<(), DomainError> {
    if at > latest_accepted(ctx) {
        let skew = ctx.policy.usage_future_tolerance_secs;
        return Err(DomainError::invalid(
            field,
            format!("lies in the future: later than the service clock ({}) plus {skew} s", ctx.now),
        ));
    }
    Ok(())
}

/// The units a period's aggregate rates: never below zero, even for a metric that allows
/// negative values (a charge never turns into a credit; credits are explicit).
pub fn rated_units(aggregate: Decimal) -> Decimal {
    aggregate.max(Decimal::ZERO)
}

/// Refuses a negative usage value unless the metric allows negative values. For `weighted_sum`
/// a value is a change of a level, so a negative change is normal: it is refused only when it
/// would take the period's level below zero at some instant.
pub(super) fn check_usage_sign(
    sub: &Subscription,
    metric: &Metric,
    period: &Period,
    point: &UsagePoint,
) -> Result<(), DomainError> {
    if metric.allow_negative || !point.value.is_sign_negative() {
        return Ok(());
    }
    let property = metric.property.as_deref().unwrap_or_default();
    let field = format!("properties[{property}]");
    if metric.aggregation != Aggregation::WeightedSum {
        return Err(DomainError::invalid(
            field,
            format!(
                "must not be negative: metric {} does not allow negative values \
                 (define it with allow_negative for a metric of deltas)",
                metric.code
            ),
        ));
    }
    let usage = sub.open.get(&period.start).and_then(|o| o.usage.get(&metric.code));
    let lowest = match usage {
        Some(u) => u.aggregate.lowest_level_with(point).unwrap_or(point.value),
        None => point.value,
    };
    if lowest < Decimal::ZERO {
        return Err(DomainError::invalid(
            field,
            format!(
                "would take the level of metric {} below zero ({lowest}) in the billing period \
                 {}..{}: a level may go down, never below zero",
                metric.code, period.start, period.end
            ),
        ));
    }
    Ok(())
}

/// Refuses a payment dated later than the clock (+ skew, INVALID_ARGUMENT) or before its
/// invoice was issued (FAILED_PRECONDITION [`PAYMENT_BEFORE_ISSUE`]: the instant is fine, the
/// invoice's state makes it impossible, like usage in a closed period).
pub(super) fn check_payment_time(
    inv: &InvoiceAccount,
    at: Timestamp,
    ctx: &Context,
) -> Result<(), DomainError> {
    check_not_future("occurred_at", at, ctx)?;
    let (id, issued_at) = (&inv.invoice.invoice_id, inv.invoice.issued_at);
    if at < issued_at {
        return Err(DomainError::precondition(
            PAYMENT_BEFORE_ISSUE,
            format!("invoice-{id}"),
            format!("a payment at {at} predates invoice {id}, issued at {issued_at}"),
        ));
    }
    Ok(())
}

/// A line of an in-advance charge's fee (`note` says how it was paid).
pub(super) fn in_advance_line(
    metric: &Metric,
    charge: &Charge,
    note: &str,
    units: Decimal,
    period: &Period,
    amount: Decimal,
) -> LineDraft {
    LineDraft {
        kind: LineKind::UsageInAdvance,
        description: format!("{} ({}, {note})", metric.name, charge.model.name()),
        metric_code: Some(metric.code.clone()),
        charge_model: Some(charge.model.name().to_string()),
        units: Some(units),
        service_period: *period,
        unrounded: amount,
    }
}

impl Ledger {
    /// An in-advance charge whose period had no event: what zero usage costs (a first tier's
    /// flat fee, SPEC §4), billed at the close, since no event's fee carried it. `None` when
    /// the period had an event (its first one paid it), costs nothing, or has no day.
    pub(super) fn unused_in_advance_line(
        &self,
        sub: &Subscription,
        plan: &Plan,
        charge: &Charge,
        p: &Period,
        usage: Option<&MetricUsage>,
    ) -> Result<Option<LineDraft>, DomainError> {
        if usage.is_some_and(|u| u.aggregate.event_count() > 0) || p.start >= p.end {
            return Ok(None);
        }
        let amount =
            charge.model.zero_usage_amount().map_err(stored_plan_error(sub, plan, charge))?;
        if amount.is_zero() {
            return Ok(None);
        }
        // An in-advance charge's fee, though billed at the close: the read side recognizes it
        // as such (not as usage accrued day by day).
        let metric = &self.metrics[&charge.metric_code];
        let note = "paid in advance: no usage this period";
        Ok(Some(in_advance_line(metric, charge, note, Decimal::ZERO, p, amount)))
    }

    /// Refuses usage for a metric that no charge of the subscription's plan bills: neither the
    /// plan in effect on the event's day (in-advance charges) nor the plan that rates the
    /// event's period (the one in effect on its last day, as known now). `day`: the event's
    /// local date. Silently unbilled usage would be a money bug.
    pub(super) fn check_metric_on_plan(
        &self,
        sub: &Subscription,
        u: &Usage,
        day: Date,
        period: &Period,
    ) -> Result<(), DomainError> {
        let last_day = period.last_day();
        let plans = [self.plan(sub.plan_at(day)), self.plan(sub.plan_at(last_day))];
        if plans.iter().any(|p| p.charges.iter().any(|c| c.metric_code == u.metric_code)) {
            return Ok(());
        }
        let plan = plans[0];
        Err(precondition(
            sub,
            METRIC_NOT_ON_PLAN,
            format!(
                "metric {} is not charged by plan {} v{} of subscription {}: the usage would \
                 never be billed",
                u.metric_code, plan.code, plan.version, sub.subscription_id
            ),
        ))
    }

    /// The log position of the event an identical earlier command appended, when `cmd` is a
    /// re-run of a catalog command whose content equals what exists: a customer registered
    /// with the same fields, a metric defined the same way, a plan equal to its latest version
    /// (all but the version number), a subscription started the same way. Such a command is
    /// answered as a replay (nothing appended), with or without an idempotency key. A command
    /// with the same id and different content is refused by `decide` (ALREADY_EXISTS), except a
    /// plan, whose different content is its next version.
    pub fn replay_position(&self, cmd: &Command, ctx: &Context) -> Option<u64> {
        let stream = match cmd {
            Command::RegisterCustomer(c) => {
                let existing = &self.customers.get(&c.customer_id)?.customer;
                (existing == c).then(|| format!("customer-{}", c.customer_id))?
            }
            Command::DefineMetric(m) => {
                (self.metrics.get(&m.code)? == m).then(|| format!("metric-{}", m.code))?
            }
            Command::DefineCoupon(c) => {
                (self.coupons.get(&c.code)? == c).then(|| format!("coupon-{}", c.code))?
            }
            Command::DefineAddOn(a) => {
                (self.add_ons.get(&a.code)? == a).then(|| format!("add-on-{}", a.code))?
            }
            Command::PublishPlan(p) => {
                let latest = self.plans.get(&p.code)?.last()?;
                let same = Plan { version: latest.version, ..p.clone() } == *latest;
                same.then(|| format!("plan-{}", p.code))?
            }
            Command::StartSubscription {
                subscription_id,
                customer_id,
                plan_code,
                plan_version,
                anchor,
                start_date,
                billed_until,
            } => {
                let sub = self.subscriptions.get(subscription_id)?;
                let (first_day, first_plan) = sub.plans.first()?;
                let today = crate::calendar::local_date(ctx.now, &sub.time_zone);
                let same = sub.customer_id == *customer_id
                    && first_plan.code == *plan_code
                    && plan_version.is_none_or(|v| v == first_plan.version)
                    && sub.cycle.anchor == *anchor
                    && start_date.unwrap_or(today) == *first_day
                    && sub.billed_elsewhere_until == *billed_until;
                same.then(|| format!("subscription-{subscription_id}"))?
            }
            _ => return None,
        };
        self.created_at.get(&stream).copied()
    }
}
