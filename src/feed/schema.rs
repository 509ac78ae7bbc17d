//! The feed's public schema (proto `FeedEvent`, version 1): each stored event's public type
//! name, the ids it concerns, and its data. The one place the storage encoding becomes the
//! public one: stored fields may change without touching consumers, as long as this mapping
//! keeps giving the same public fields.

use command_service::convert::{credit_kind, credit_note_reply, invoice, money, to_timestamp};
use domain::events::Event;
use domain::invoice::InvoiceAccount;
use event_store::RecordedEvent;
use proto::v1 as pb;
use rust_decimal::Decimal;

/// The public schema's version (`FeedEvent.schema_version`).
pub const SCHEMA_VERSION: u32 = 1;

/// Every public type, in the order of the stored types (`domain::events::EVENT_TYPES`).
pub const PUBLIC_TYPES: [&str; 29] = [
    "customer.registered",
    "customer.updated",
    "metric.defined",
    "plan.published",
    "subscription.started",
    "subscription.trial_ended",
    "subscription.plan_change_scheduled",
    "subscription.plan_changed",
    "subscription.canceled",
    "usage.recorded",
    "billing_period.closed",
    "invoice.issued",
    "invoice.voided",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "invoice.uncollectible",
    "credit_note.issued",
    "add_on.defined",
    "coupon.defined",
    "coupon.applied",
    "coupon.removed",
    "wallet.opened",
    "wallet.topped_up",
    "wallet.credits_usable",
    "wallet.credits_expired",
    "wallet.balance_low",
    "usage_alert.created",
    "usage_alert.deleted",
    "usage_alert.triggered",
];

/// The public type of a stored event type, if it has one.
pub fn public_type(stored: &str) -> Option<&'static str> {
    let i = domain::events::EVENT_TYPES.iter().position(|t| *t == stored)?;
    Some(PUBLIC_TYPES[i])
}

/// The ids an event names directly: (customer, subscription, invoice). An event that names
/// only its subscription or invoice leaves the customer empty; the feed resolves it.
pub fn ids(e: &Event) -> (String, String, String) {
    let s = |x: &String| x.clone();
    let none = String::new;
    match e {
        Event::CustomerRegistered(c) => (s(&c.customer_id), none(), none()),
        Event::CustomerUpdated { customer_id, .. }
        | Event::CouponApplied { customer_id, .. }
        | Event::CouponRemoved { customer_id, .. }
        | Event::WalletCreditsUsable { customer_id, .. }
        | Event::WalletCreditsExpired { customer_id, .. }
        | Event::WalletBalanceLow { customer_id, .. } => (s(customer_id), none(), none()),
        Event::WalletOpened(w) => (s(&w.customer_id), none(), none()),
        Event::WalletToppedUp(t) => {
            (s(&t.customer_id), none(), t.invoice_id.clone().unwrap_or_default())
        }
        Event::SubscriptionStarted { subscription_id, customer_id, .. } => {
            (s(customer_id), s(subscription_id), none())
        }
        Event::TrialEnded { subscription_id, .. }
        | Event::PlanChangeScheduled { subscription_id, .. }
        | Event::PlanChanged { subscription_id, .. }
        | Event::SubscriptionCanceled { subscription_id, .. }
        | Event::BillingPeriodClosed { subscription_id, .. } => {
            (none(), s(subscription_id), none())
        }
        Event::UsageRecorded(u) => (none(), s(&u.subscription_id), none()),
        Event::UsageAlertCreated { alert, .. } => (none(), s(&alert.subscription_id), none()),
        Event::UsageAlertDeleted { subscription_id, .. } => (none(), s(subscription_id), none()),
        Event::UsageAlertTriggered { subscription_id, customer_id, .. } => {
            (s(customer_id), s(subscription_id), none())
        }
        Event::InvoiceIssued(i) => (s(&i.customer_id), s(&i.subscription_id), s(&i.invoice_id)),
        Event::InvoiceVoided { invoice_id, .. }
        | Event::PaymentSucceeded { invoice_id, .. }
        | Event::PaymentFailed { invoice_id, .. }
        | Event::InvoiceMarkedUncollectible { invoice_id, .. } => (none(), none(), s(invoice_id)),
        Event::CreditNoteIssued(n) => (s(&n.customer_id), none(), s(&n.invoice_id)),
        Event::BillableMetricDefined(_)
        | Event::PlanPublished(_)
        | Event::AddOnDefined(_)
        | Event::CouponDefined(_) => (none(), none(), none()),
    }
}

fn timestamp_us(us: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1_000) as i32,
    })
}

/// The public form of `recorded` (decoded as `e`), with `customer_id` as the feed resolved it.
pub fn feed_event(recorded: &RecordedEvent, e: &Event, customer_id: String) -> pb::FeedEvent {
    use pb::feed_event::Data;
    let (_, subscription_id, invoice_id) = ids(e);
    let change = |amount: String, reason: &str, attempt: u32| {
        Data::InvoiceChange(pb::InvoiceChange { amount, reason: reason.to_string(), attempt })
    };
    let catalog = |code: &str, version: u32| {
        Data::Catalog(pb::CatalogChange { code: code.to_string(), version })
    };
    let sub = |plan: Option<&domain::catalog::PlanRef>, date: String| pb::SubscriptionChange {
        plan_code: plan.map(|p| p.code.clone()).unwrap_or_default(),
        plan_version: plan.map_or(0, |p| p.version),
        date,
        ..Default::default()
    };
    let data = match e {
        Event::CustomerRegistered(c) => catalog(&c.customer_id, 0),
        Event::CustomerUpdated { customer_id, .. } => catalog(customer_id, 0),
        Event::BillableMetricDefined(m) => catalog(&m.code, 0),
        Event::PlanPublished(p) => catalog(&p.code, p.version),
        Event::AddOnDefined(a) => catalog(&a.code, 0),
        Event::CouponDefined(c) => catalog(&c.code, 0),
        Event::CouponApplied { coupon_code, .. } | Event::CouponRemoved { coupon_code, .. } => {
            catalog(coupon_code, 0)
        }
        Event::SubscriptionStarted { plan, start_date, .. } => {
            Data::Subscription(sub(Some(plan), start_date.to_string()))
        }
        Event::TrialEnded { date, .. } => Data::Subscription(sub(None, date.to_string())),
        Event::PlanChangeScheduled { plan, effective_date, .. } => {
            Data::Subscription(sub(Some(plan), effective_date.to_string()))
        }
        Event::PlanChanged { plan, kind, effective_date, .. } => {
            let change = match kind {
                domain::events::PlanChangeKind::Upgrade => "upgrade",
                domain::events::PlanChangeKind::Downgrade => "downgrade",
            };
            let mut s = sub(Some(plan), effective_date.to_string());
            s.change = change.to_string();
            Data::Subscription(s)
        }
        Event::SubscriptionCanceled { effective_date, immediately, .. } => {
            let mut s = sub(None, effective_date.to_string());
            s.immediately = *immediately;
            Data::Subscription(s)
        }
        Event::BillingPeriodClosed { period, .. } => {
            let mut s = sub(None, period.start.to_string());
            s.period_end = period.end.to_string();
            Data::Subscription(s)
        }
        Event::UsageRecorded(u) => Data::Usage(pb::UsageEvent {
            subscription_id: u.subscription_id.clone(),
            transaction_id: u.transaction_id.clone(),
            metric_code: u.metric_code.clone(),
            occurred_at: Some(to_timestamp(u.occurred_at)),
            properties: u.properties.clone(),
        }),
        Event::InvoiceIssued(i) => Data::Invoice(invoice(&InvoiceAccount::issued(i.clone()))),
        // The payment's currency is the invoice's, which this event does not carry: the amount
        // is written in full (its scale is the minor unit's already: payments are checked).
        Event::PaymentSucceeded { amount, .. } => change(amount.to_string(), "", 0),
        Event::PaymentFailed { reason, attempt, .. } => change(String::new(), reason, *attempt),
        Event::InvoiceVoided { reason, .. } => change(String::new(), reason, 0),
        Event::InvoiceMarkedUncollectible { .. } => change(String::new(), "", 0),
        Event::CreditNoteIssued(n) => Data::CreditNote(credit_note_reply(n)),
        Event::WalletOpened(w) => Data::Wallet(pb::WalletChange {
            wallet_id: w.wallet_id.clone(),
            currency: w.currency.code().to_string(),
            amount: String::new(),
            threshold: w.low_balance_threshold.map(|t| money(w.currency, t)).unwrap_or_default(),
            ..Default::default()
        }),
        Event::WalletToppedUp(t) => Data::Wallet(pb::WalletChange {
            wallet_id: t.wallet_id.clone(),
            top_ups: vec![t.top_up],
            kind: credit_kind(t.kind).to_string(),
            amount: t.amount.to_string(),
            date: t.expires_on.map(|d| d.to_string()).unwrap_or_default(),
            usable: t.usable,
            ..Default::default()
        }),
        Event::WalletCreditsUsable { wallet_id, top_up, .. } => Data::Wallet(pb::WalletChange {
            wallet_id: wallet_id.clone(),
            top_ups: vec![*top_up],
            usable: true,
            ..Default::default()
        }),
        Event::WalletCreditsExpired { wallet_id, currency, expired_on, lots, .. } => {
            let amount: Decimal = lots.iter().map(|l| l.amount).sum();
            Data::Wallet(pb::WalletChange {
                wallet_id: wallet_id.clone(),
                currency: currency.code().to_string(),
                top_ups: lots.iter().map(|l| l.top_up).collect(),
                amount: money(*currency, amount),
                date: expired_on.to_string(),
                ..Default::default()
            })
        }
        Event::UsageAlertCreated { alert, .. } => Data::UsageAlert(pb::UsageAlertChange {
            alert_id: alert.alert_id.clone(),
            on: alert.on.as_str().to_string(),
            metric_code: alert.metric_code.clone().unwrap_or_default(),
            threshold: alert.threshold.normalize().to_string(),
            every: alert.every.map(|e| e.normalize().to_string()).unwrap_or_default(),
            ..Default::default()
        }),
        Event::UsageAlertDeleted { alert_id, .. } => Data::UsageAlert(pb::UsageAlertChange {
            alert_id: alert_id.clone(),
            ..Default::default()
        }),
        Event::UsageAlertTriggered { alert_id, period_start, level, value, .. } => {
            Data::UsageAlert(pb::UsageAlertChange {
                alert_id: alert_id.clone(),
                period_start: period_start.to_string(),
                level: level.normalize().to_string(),
                value: value.normalize().to_string(),
                ..Default::default()
            })
        }
        Event::WalletBalanceLow { wallet_id, balance, threshold, .. } => {
            Data::Wallet(pb::WalletChange {
                wallet_id: wallet_id.clone(),
                amount: balance.to_string(),
                threshold: threshold.to_string(),
                ..Default::default()
            })
        }
    };
    pb::FeedEvent {
        position: recorded.position,
        event_id: recorded.event_id.to_string(),
        r#type: public_type(&recorded.event_type).unwrap_or_default().to_string(),
        schema_version: SCHEMA_VERSION,
        occurred_at: timestamp_us(recorded.occurred_at_us),
        recorded_at: timestamp_us(recorded.recorded_at_us),
        customer_id,
        subscription_id,
        invoice_id,
        data: Some(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stored_type_has_one_public_type() {
        for (stored, public) in domain::events::EVENT_TYPES.iter().zip(PUBLIC_TYPES) {
            assert_eq!(public_type(stored), Some(public));
        }
        let mut unique = PUBLIC_TYPES.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), PUBLIC_TYPES.len());
        assert_eq!(public_type("Nope"), None);
    }
}
