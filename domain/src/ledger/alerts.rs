//! Usage alerts in the write model (issue 14, part 3): creating and deleting them, and the
//! `UsageAlertTriggered` events a recorded usage event brings (`crate::alert::levels_crossed`
//! on the period's units or rated amount). Only subscriptions with alerts pay for the check.

use jiff::civil::Date;
use jiff::Timestamp;
use rust_decimal::Decimal;

use super::Ledger;
use crate::alert::{levels_crossed, AlertOn, UsageAlert, ALERTS_PER_SUBSCRIPTION_MAX};
use crate::calendar::local_midnight;
use crate::commands::Context;
use crate::error::DomainError;
use crate::events::Event;
use crate::subscription::AlertState;

impl Ledger {
    pub(super) fn decide_create_alert(
        &self,
        alert: &UsageAlert,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        alert.validate()?;
        let sub = self.subscription(&alert.subscription_id)?;
        let subject = format!("subscription-{}", alert.subscription_id);
        if let Some(metric) = &alert.metric_code {
            if !self.metrics.contains_key(metric) {
                return Err(DomainError::not_found("metric", metric));
            }
        }
        if sub.alerts.iter().any(|a| a.alert.alert_id == alert.alert_id) {
            return Err(DomainError::Conflict(format!(
                "alert {} of subscription {} exists (delete it first)",
                alert.alert_id, alert.subscription_id
            )));
        }
        if sub.alerts.len() >= ALERTS_PER_SUBSCRIPTION_MAX {
            return Err(DomainError::precondition(
                "ALERTS_MAX",
                subject,
                format!("a subscription carries at most {ALERTS_PER_SUBSCRIPTION_MAX} alerts"),
            ));
        }
        Ok(vec![Event::UsageAlertCreated { alert: alert.clone(), occurred_at: ctx.now }])
    }

    pub(super) fn decide_delete_alert(
        &self,
        subscription_id: &str,
        alert_id: &str,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let sub = self.subscription(subscription_id)?;
        if !sub.alerts.iter().any(|a| a.alert.alert_id == alert_id) {
            return Err(DomainError::not_found("alert", alert_id));
        }
        Ok(vec![Event::UsageAlertDeleted {
            alert_id: alert_id.to_string(),
            subscription_id: subscription_id.to_string(),
            occurred_at: ctx.now,
        }])
    }

    /// The alerts a usage event of `subscription_id` in the period starting `period_start`
    /// fires, already applied (the usage itself is applied before).
    pub(super) fn fire_alerts(
        &mut self,
        subscription_id: &str,
        period_start: Date,
        now: Timestamp,
        position: u64,
    ) -> Vec<Event> {
        let sub = &self.subscriptions[subscription_id];
        if sub.alerts.is_empty() {
            return Vec::new();
        }
        let mut events = Vec::new();
        for state in &sub.alerts {
            let Some(value) = self.alert_value(subscription_id, period_start, &state.alert) else {
                continue;
            };
            let fired = state.fired.get(&period_start).copied();
            for level in levels_crossed(&state.alert, value, fired) {
                events.push(Event::UsageAlertTriggered {
                    alert_id: state.alert.alert_id.clone(),
                    subscription_id: subscription_id.to_string(),
                    customer_id: sub.customer_id.clone(),
                    period_start,
                    level,
                    value,
                    occurred_at: now,
                });
            }
        }
        self.apply_all(&events, position);
        events
    }

    /// The period's units of the alert's metric, or its rated usage amount (`None` when it
    /// cannot be computed: a period no longer open, or an amount past the decimal range).
    fn alert_value(
        &self,
        subscription_id: &str,
        start: Date,
        alert: &UsageAlert,
    ) -> Option<Decimal> {
        match alert.on {
            AlertOn::Units => {
                let sub = &self.subscriptions[subscription_id];
                let period = sub.period_of(start)?;
                let metric = alert.metric_code.as_deref()?;
                let usage = sub.open.get(&start)?.usage.get(metric)?;
                let tz = &sub.time_zone;
                let (from, to) = (local_midnight(period.start, tz), local_midnight(period.end, tz));
                usage.aggregate.units(from, to).ok().map(super::rules::rated_units)
            }
            AlertOn::Amount => {
                let rated = self.rated_usage(subscription_id, start).ok()??;
                let amounts = rated
                    .amounts
                    .iter()
                    .filter(|(m, _)| alert.metric_code.as_ref().is_none_or(|wanted| wanted == m));
                crate::money::checked_sum(amounts.map(|(_, a)| *a))
            }
        }
    }

    pub(super) fn evolve_alert(&mut self, event: &Event) {
        match event {
            Event::UsageAlertCreated { alert, .. } => {
                let sub = self.sub_mut(&alert.subscription_id);
                sub.alerts.push(AlertState { alert: alert.clone(), fired: Default::default() });
            }
            Event::UsageAlertDeleted { subscription_id, alert_id, .. } => {
                self.sub_mut(subscription_id).alerts.retain(|a| a.alert.alert_id != *alert_id);
            }
            Event::UsageAlertTriggered {
                subscription_id, alert_id, period_start, level, ..
            } => {
                let sub = self.sub_mut(subscription_id);
                let open_from = sub.next_close.map(|p| p.start);
                let state = sub.alerts.iter_mut().find(|a| a.alert.alert_id == *alert_id);
                let state = state.expect("a triggered alert exists");
                state.fired.insert(*period_start, *level);
                // Bounded: only open periods' levels are kept.
                if let Some(open_from) = open_from {
                    state.fired.retain(|p, _| *p >= open_from);
                }
            }
            _ => unreachable!("not an alert event: {}", event.type_name()),
        }
    }
}
