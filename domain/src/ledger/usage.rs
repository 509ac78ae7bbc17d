//! Usage events on the write side: the shape and value checks of one event, the dedup answer for
//! a retried transaction, the in-advance invoice a pay-in-advance charge issues at once, and the
//! ingest hot path [`Ledger::record_usage`]. Nothing here closes a period or bills a base fee;
//! nothing here may change the ledger except through `apply_usage`/`evolve`.

use std::hash::{Hash, Hasher};

use rust_decimal::Decimal;

use super::{
    check_not_future, precondition, rules, stored_plan_error, Ledger, PriorUsage, UsageCheck,
    UsageFacts, UsageOutcome,
};
use crate::calendar::{local_date, Period};
use crate::catalog::{check_id, Metric};
use crate::commands::Context;
use crate::error::{DomainError, Violations};
use crate::events::{Event, Usage};
use crate::invoice::{Invoice, IssueReason};
use crate::rating::{in_advance_fee, RatingInput, RunningAggregate, UsagePoint};
use crate::subscription::Subscription;

/// Largest absolute numeric usage value accepted (keeps rating far from Decimal overflow): 10^15.
/// (It was 999,998,482,350,080 by a wrong constant: the fuzz work made it exact.)
pub const USAGE_VALUE_ABS_MAX: Decimal = crate::money::UNITS_MAX;

/// Most properties one usage event may carry.
pub const USAGE_PROPERTIES_MAX: usize = 32;
/// Longest property key or value.
pub const USAGE_PROPERTY_LEN_MAX: usize = 256;

impl Ledger {
    /// Validates one usage event against the subscription, metric and open periods. `prior` is
    /// the earlier event with the same (subscription, transaction id), if the caller knows one.
    pub fn decide_usage(
        &self,
        u: &Usage,
        ctx: &Context,
        prior: Option<PriorUsage>,
    ) -> Result<UsageOutcome, DomainError> {
        Ok(match self.check_usage(u, ctx, prior)? {
            UsageCheck::Duplicate { position } => UsageOutcome::Duplicate { position },
            UsageCheck::New { invoice, .. } => {
                let mut events = vec![Event::UsageRecorded(u.clone())];
                events.extend(invoice.map(|i| Event::InvoiceIssued(*i)));
                UsageOutcome::Accepted(events)
            }
        })
    }

    /// The order of checks: shape, subscription, then the transaction's history (a retry is a
    /// duplicate, or ALREADY_EXISTS, for the subscription's whole life: even once its period
    /// closed or its service ended), then everything that depends on the event being new.
    fn check_usage(
        &self,
        u: &Usage,
        ctx: &Context,
        prior: Option<PriorUsage>,
    ) -> Result<UsageCheck, DomainError> {
        check_usage_shape(u)?;
        let sub = self.subscription(&u.subscription_id)?;
        if let Some(prior) = prior {
            if prior.digest == usage_digest(u) {
                return Ok(UsageCheck::Duplicate { position: prior.position });
            }
            return Err(DomainError::Conflict(format!(
                "transaction {} of subscription {} was recorded with a different payload",
                u.transaction_id, u.subscription_id
            )));
        }
        let metric = self
            .metrics
            .get(&u.metric_code)
            .ok_or_else(|| DomainError::not_found("metric", &u.metric_code))?;
        let value = usage_value(metric, u)?;
        check_not_future("occurred_at", u.occurred_at, ctx)?;
        let date = local_date(u.occurred_at, &sub.time_zone);
        if !sub.is_in_service(date) {
            return Err(precondition(
                sub,
                "OUT_OF_SERVICE",
                format!("usage on {date} is outside the subscription's service"),
            ));
        }
        let period = sub.period_of(date).expect("in service");
        if sub.next_close.is_none_or(|n| period.start < n.start) {
            return Err(precondition(
                sub,
                "PERIOD_CLOSED",
                format!("the billing period {}..{} is already invoiced", period.start, period.end),
            ));
        }
        self.check_metric_on_plan(sub, u, date, &period)?;
        let distinct =
            metric.property.as_ref().and_then(|p| u.properties.get(p)).map(String::as_str);
        let point = UsagePoint { occurred_at: u.occurred_at, seq: u64::MAX, value, distinct };
        rules::check_usage_sign(sub, metric, &period, &point)?;
        check_period_usage(sub, metric, &period, value)?;
        let invoice = self.in_advance_invoice(sub, metric, &period, u, value, ctx)?.map(Box::new);
        Ok(UsageCheck::New { facts: UsageFacts { period_start: period.start, value }, invoice })
    }

    /// Records one usage event: decides it and, when accepted, applies it, computing each fact
    /// once (the ingest hot path).
    pub fn record_usage(
        &mut self,
        u: Usage,
        ctx: &Context,
        next_position: u64,
        prior: Option<PriorUsage>,
    ) -> Result<UsageOutcome, DomainError> {
        match self.check_usage(&u, ctx, prior)? {
            UsageCheck::Duplicate { position } => Ok(UsageOutcome::Duplicate { position }),
            UsageCheck::New { facts, invoice } => {
                self.apply_usage(&u, &facts, next_position);
                let (sub_id, period_start) = (u.subscription_id.clone(), facts.period_start);
                let mut events = vec![Event::UsageRecorded(u)];
                if let Some(invoice) = invoice {
                    let issued = Event::InvoiceIssued(*invoice);
                    self.evolve(&issued, next_position + 1);
                    events.push(issued);
                    let low = self.follow_wallets(&events[1..], ctx.now, next_position + 2);
                    events.extend(low);
                }
                let position = next_position + events.len() as u64;
                let fired = self.fire_alerts(&sub_id, period_start, ctx.now, position);
                events.extend(fired);
                let position = next_position + events.len() as u64;
                events.extend(self.bill_progressively(&sub_id, period_start, ctx.now, position));
                Ok(UsageOutcome::Accepted(events))
            }
        }
    }

    fn in_advance_invoice(
        &self,
        sub: &Subscription,
        metric: &Metric,
        period: &Period,
        u: &Usage,
        value: Decimal,
        ctx: &Context,
    ) -> Result<Option<Invoice>, DomainError> {
        let plan = self.plan(sub.plan_at(local_date(u.occurred_at, &sub.time_zone)));
        let mut lines = Vec::new();
        for charge in
            plan.charges.iter().filter(|c| c.pay_in_advance && c.metric_code == metric.code)
        {
            let open = sub.open.get(&period.start);
            let mut before = open
                .and_then(|o| o.usage.get(&metric.code))
                .map_or_else(|| RunningAggregate::new(metric.aggregation), |m| m.aggregate.clone());
            let (start, end) =
                (period.start_instant(&sub.time_zone), period.end_instant(&sub.time_zone));
            let units_before = before.units(start, end)?;
            // The period's first event of the charge also pays what zero usage costs (a first
            // tier's flat fee, SPEC §4); a period without any event pays it at its close.
            let first_in_period = before.event_count() == 0;
            let usage = open.and_then(|o| o.usage.get(&metric.code));
            if let Some(u) = usage.filter(|_| charge.model.needs_event_amounts()) {
                check_amounts_kept(sub, metric, period, u)?;
            }
            let mut amounts = usage.map(|m| m.amounts.clone()).unwrap_or_default();
            let amounts_before: Vec<Decimal> = amounts.values().copied().collect();
            let distinct =
                metric.property.as_ref().and_then(|p| u.properties.get(p)).map(String::as_str);
            before.add(&UsagePoint {
                occurred_at: u.occurred_at,
                seq: u64::MAX,
                value,
                distinct,
            })?;
            // The new event sorts after every recorded one at the same instant (its position is larger).
            amounts.insert((u.occurred_at, u64::MAX), value);
            let amounts_after: Vec<Decimal> = amounts.values().copied().collect();
            let fee = in_advance_fee(
                &charge.model,
                &RatingInput { units: units_before, event_amounts: &amounts_before },
                &RatingInput { units: before.units(start, end)?, event_amounts: &amounts_after },
            )
            .and_then(|fee| match first_in_period {
                true => fee
                    .checked_add(charge.model.zero_usage_amount()?)
                    .ok_or_else(crate::rating::aggregation::overflow),
                false => Ok(fee),
            })
            .map_err(stored_plan_error(sub, plan, charge))?;
            if !fee.is_zero() {
                let note = "paid in advance";
                lines.push(rules::in_advance_line(metric, charge, note, value, period, fee));
            }
        }
        if lines.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.invoice_for(sub, *period, IssueReason::UsageInAdvance, lines, ctx.now)?))
    }
}

fn check_usage_shape(u: &Usage) -> Result<(), DomainError> {
    let mut v = Violations::default();
    check_id(&mut v, "subscription_id", &u.subscription_id);
    check_id(&mut v, "transaction_id", &u.transaction_id);
    check_id(&mut v, "metric_code", &u.metric_code);
    if u.properties.len() > USAGE_PROPERTIES_MAX {
        v.push("properties", format!("at most {USAGE_PROPERTIES_MAX} properties"));
    }
    for (k, val) in &u.properties {
        if k.is_empty() || k.len() > USAGE_PROPERTY_LEN_MAX || val.len() > USAGE_PROPERTY_LEN_MAX {
            v.push(format!("properties[{k}]"), format!("keys 1 to {USAGE_PROPERTY_LEN_MAX} characters, values at most {USAGE_PROPERTY_LEN_MAX}"));
        }
    }
    v.into_result()
}

/// The numeric value a metric reads from a usage event (1 for count; 0 for unique_count).
pub fn usage_value(metric: &Metric, u: &Usage) -> Result<Decimal, DomainError> {
    let Some(property) = &metric.property else { return Ok(Decimal::ONE) };
    let field = format!("properties[{property}]");
    let raw = u.properties.get(property).ok_or_else(|| {
        DomainError::invalid(&field, format!("metric {} needs this property", metric.code))
    })?;
    if !metric.aggregation.is_numeric() {
        return Ok(Decimal::ZERO);
    }
    let value: Decimal = raw
        .parse()
        .map_err(|_| DomainError::invalid(&field, format!("{raw:?} is not a decimal number")))?;
    if value.abs() > USAGE_VALUE_ABS_MAX || value.scale() > crate::money::PRICE_SCALE_MAX {
        return Err(DomainError::invalid(
            &field,
            "must be at most 10^15 in magnitude with at most 12 decimal places",
        ));
    }
    Ok(value)
}

/// Refuses usage that would take its metric's usage in one billing period past
/// [`crate::money::UNITS_MAX`] (Σ|value|, or the event count): with that bound, rating and
/// invoicing the period can never overflow (see `money::UNITS_MAX`), so a billing run never
/// stalls on an overflow and never issues a wrong invoice. Refused at record time, changing
/// nothing; the usage already recorded stays billable.
fn check_period_usage(
    sub: &Subscription,
    metric: &Metric,
    period: &Period,
    value: Decimal,
) -> Result<(), DomainError> {
    let limit = crate::money::UNITS_MAX;
    let usage = sub.open.get(&period.start).and_then(|o| o.usage.get(&metric.code));
    let (magnitude, events) =
        usage.map_or((Decimal::ZERO, 0), |m| (m.aggregate.magnitude(), m.aggregate.event_count()));
    if magnitude.saturating_add(value.abs()) <= limit && Decimal::from(events) < limit {
        return Ok(());
    }
    let field = metric
        .property
        .as_ref()
        .map_or_else(|| "metric_code".to_string(), |p| format!("properties[{p}]"));
    Err(DomainError::invalid(
        field,
        format!(
            "would take the usage of metric {} in the billing period {}..{} past 10^15 \
             (Σ|value| so far {magnitude}, {events} events)",
            metric.code, period.start, period.end
        ),
    ))
}

/// The digest of a usage event's payload (everything but its ids) that tells a retry from a
/// different event under the same transaction id. Stable within one build (SipHash with fixed
/// keys); a dedup index that persists it confirms a hit against the event in the log.
pub fn usage_digest(u: &Usage) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (&u.metric_code, u.occurred_at.as_microsecond(), &u.properties).hash(&mut h);
    h.finish()
}

/// Kind of the FAILED_PRECONDITION when a percentage charge would rate usage recorded while no
/// published plan priced its metric by percentage (its per-event amounts were not kept).
pub const AMOUNTS_NOT_KEPT: &str = "AMOUNTS_NOT_KEPT";

/// A percentage charge rates every event's amount: refused (never a wrong invoice) when the
/// period holds events whose amounts were not kept.
pub(super) fn check_amounts_kept(
    sub: &Subscription,
    metric: &Metric,
    p: &Period,
    usage: &crate::subscription::MetricUsage,
) -> Result<(), DomainError> {
    if usage.amounts_complete {
        return Ok(());
    }
    Err(precondition(
        sub,
        AMOUNTS_NOT_KEPT,
        format!(
            "usage of metric {} in the billing period {}..{} was recorded before any published \
             plan priced it by percentage, so its per-event amounts were not kept; a \
             percentage charge can rate it only from the next period",
            metric.code, p.start, p.end
        ),
    ))
}
