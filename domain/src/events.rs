//! The event catalog (SPEC §2). Events are facts: never updated or deleted; corrections are
//! new events. The persisted encoding is JSON of this enum (tagged by `type`), versioned by
//! [`SCHEMA_VERSION`]; [`Event::decode`] is where older versions get upcast.

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::add_on::AddOn;
use crate::calendar::{Anchor, Period};
use crate::catalog::{Customer, Metric, Plan, PlanRef};
use crate::coupon::Coupon;
use crate::credit_note::CreditNote;
use crate::invoice::Invoice;
use crate::wallet::{Taken, TopUp, WalletOpened};

/// Current schema version of every event type.
pub const SCHEMA_VERSION: u16 = 1;

/// Every event type [`Event::type_name`] gives, for readers that pick types before decoding
/// (the projections' shared reader).
pub const EVENT_TYPES: [&str; 29] = [
    "CustomerRegistered",
    "CustomerUpdated",
    "BillableMetricDefined",
    "PlanPublished",
    "SubscriptionStarted",
    "TrialEnded",
    "PlanChangeScheduled",
    "PlanChanged",
    "SubscriptionCanceled",
    "UsageRecorded",
    "BillingPeriodClosed",
    "InvoiceIssued",
    "InvoiceVoided",
    "PaymentSucceeded",
    "PaymentFailed",
    "InvoiceMarkedUncollectible",
    "CreditNoteIssued",
    "AddOnDefined",
    "CouponDefined",
    "CouponApplied",
    "CouponRemoved",
    "WalletOpened",
    "WalletToppedUp",
    "WalletCreditsUsable",
    "WalletCreditsExpired",
    "WalletBalanceLow",
    "UsageAlertCreated",
    "UsageAlertDeleted",
    "UsageAlertTriggered",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanChangeKind {
    Upgrade,
    Downgrade,
}

/// One usage event as recorded: the caller's properties, kept whole for audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub subscription_id: String,
    pub transaction_id: String,
    pub metric_code: String,
    pub occurred_at: Timestamp,
    pub properties: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    CustomerRegistered(Customer),
    CustomerUpdated {
        customer_id: String,
        name: Option<String>,
        tax_rate: Option<Decimal>,
        occurred_at: Timestamp,
    },
    BillableMetricDefined(Metric),
    PlanPublished(Plan),
    SubscriptionStarted {
        subscription_id: String,
        customer_id: String,
        plan: PlanRef,
        anchor: Anchor,
        start_date: Date,
        trial_end: Option<Date>,
        occurred_at: Timestamp,
        /// An imported subscription's cutover (`docs/import.md`): the previous biller invoiced
        /// every period before this date, and Accrual bills from it on. Absent otherwise (and
        /// not written, so every other start encodes as it always did).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        billed_until: Option<Date>,
    },
    TrialEnded {
        subscription_id: String,
        date: Date,
    },
    PlanChangeScheduled {
        subscription_id: String,
        plan: PlanRef,
        effective_date: Date,
        occurred_at: Timestamp,
    },
    PlanChanged {
        subscription_id: String,
        plan: PlanRef,
        kind: PlanChangeKind,
        effective_date: Date,
    },
    SubscriptionCanceled {
        subscription_id: String,
        effective_date: Date,
        immediately: bool,
        occurred_at: Timestamp,
    },
    UsageRecorded(Usage),
    BillingPeriodClosed {
        subscription_id: String,
        period: Period,
        closed_at: Timestamp,
    },
    InvoiceIssued(Invoice),
    InvoiceVoided {
        invoice_id: String,
        reason: String,
        occurred_at: Timestamp,
    },
    PaymentSucceeded {
        invoice_id: String,
        amount: Decimal,
        occurred_at: Timestamp,
    },
    PaymentFailed {
        invoice_id: String,
        reason: String,
        attempt: u32,
        occurred_at: Timestamp,
    },
    InvoiceMarkedUncollectible {
        invoice_id: String,
        occurred_at: Timestamp,
    },
    /// A credit note against an issued invoice (SPEC §8.3).
    CreditNoteIssued(CreditNote),
    /// A catalogue add-on (SPEC §8.4).
    AddOnDefined(AddOn),
    /// A catalogue coupon (SPEC §8.2).
    CouponDefined(Coupon),
    /// The customer holds the coupon from now on; coupons apply in this order.
    CouponApplied {
        customer_id: String,
        coupon_code: String,
        occurred_at: Timestamp,
    },
    /// The customer no longer holds the coupon.
    CouponRemoved {
        customer_id: String,
        coupon_code: String,
        occurred_at: Timestamp,
    },
    /// A prepaid wallet (SPEC §8.1).
    WalletOpened(WalletOpened),
    /// Credits added to a wallet: granted, or paid (with the purchase invoice).
    WalletToppedUp(TopUp),
    /// A paid top-up's invoice was paid: its credits are usable from now on.
    WalletCreditsUsable {
        wallet_id: String,
        customer_id: String,
        top_up: u32,
        occurred_at: Timestamp,
    },
    /// The lots that expire on `expired_on` (paid ones become breakage revenue).
    WalletCreditsExpired {
        wallet_id: String,
        customer_id: String,
        currency: crate::money::Currency,
        expired_on: Date,
        lots: Vec<Taken>,
    },
    /// The wallet's balance fell below its threshold (once per crossing).
    WalletBalanceLow {
        wallet_id: String,
        customer_id: String,
        balance: Decimal,
        threshold: Decimal,
        occurred_at: Timestamp,
    },
    /// A usage alert on a subscription (issue 14).
    UsageAlertCreated {
        alert: crate::alert::UsageAlert,
        occurred_at: Timestamp,
    },
    UsageAlertDeleted {
        alert_id: String,
        subscription_id: String,
        occurred_at: Timestamp,
    },
    /// The period's usage reached `level` (once per level per period).
    UsageAlertTriggered {
        alert_id: String,
        subscription_id: String,
        customer_id: String,
        period_start: Date,
        level: Decimal,
        /// The units or amount when it fired.
        value: Decimal,
        occurred_at: Timestamp,
    },
}

/// The persisted form of `UsageRecorded` (`{"type": "UsageRecorded", ...Usage}`), read
/// directly (see [`Event::decode`]).
/// Its fields are [`Usage`]'s (a golden test pins both encodings).
#[derive(Deserialize)]
struct UsageRecordedPayload<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    subscription_id: String,
    transaction_id: String,
    metric_code: String,
    occurred_at: Timestamp,
    properties: BTreeMap<String, String>,
}

/// Why stored bytes could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown schema version {version} of {event_type}")]
    UnknownVersion { event_type: String, version: u16 },
    #[error("payload of {event_type} does not decode: {detail}")]
    Malformed { event_type: String, detail: String },
}

impl Event {
    /// The aggregate stream the event belongs to.
    pub fn stream(&self) -> String {
        match self {
            Event::CustomerRegistered(c) => format!("customer-{}", c.customer_id),
            Event::CustomerUpdated { customer_id, .. } => format!("customer-{customer_id}"),
            Event::BillableMetricDefined(m) => format!("metric-{}", m.code),
            Event::PlanPublished(p) => format!("plan-{}", p.code),
            Event::SubscriptionStarted { subscription_id, .. }
            | Event::TrialEnded { subscription_id, .. }
            | Event::PlanChangeScheduled { subscription_id, .. }
            | Event::PlanChanged { subscription_id, .. }
            | Event::SubscriptionCanceled { subscription_id, .. }
            | Event::BillingPeriodClosed { subscription_id, .. } => {
                format!("subscription-{subscription_id}")
            }
            Event::UsageRecorded(u) => format!("usage-{}", u.subscription_id),
            Event::InvoiceIssued(i) => format!("invoice-{}", i.invoice_id),
            Event::InvoiceVoided { invoice_id, .. }
            | Event::PaymentSucceeded { invoice_id, .. }
            | Event::PaymentFailed { invoice_id, .. }
            | Event::InvoiceMarkedUncollectible { invoice_id, .. } => {
                format!("invoice-{invoice_id}")
            }
            Event::CreditNoteIssued(n) => format!("credit-note-{}", n.credit_note_id),
            Event::AddOnDefined(a) => format!("add-on-{}", a.code),
            Event::CouponDefined(c) => format!("coupon-{}", c.code),
            Event::CouponApplied { customer_id, .. } | Event::CouponRemoved { customer_id, .. } => {
                format!("customer-{customer_id}")
            }
            Event::WalletOpened(w) => format!("wallet-{}", w.wallet_id),
            Event::WalletToppedUp(t) => format!("wallet-{}", t.wallet_id),
            Event::WalletCreditsUsable { wallet_id, .. }
            | Event::WalletCreditsExpired { wallet_id, .. }
            | Event::WalletBalanceLow { wallet_id, .. } => format!("wallet-{wallet_id}"),
            Event::UsageAlertCreated { alert, .. } => {
                format!("subscription-{}", alert.subscription_id)
            }
            Event::UsageAlertDeleted { subscription_id, .. }
            | Event::UsageAlertTriggered { subscription_id, .. } => {
                format!("subscription-{subscription_id}")
            }
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Event::CustomerRegistered(_) => "CustomerRegistered",
            Event::CustomerUpdated { .. } => "CustomerUpdated",
            Event::BillableMetricDefined(_) => "BillableMetricDefined",
            Event::PlanPublished(_) => "PlanPublished",
            Event::SubscriptionStarted { .. } => "SubscriptionStarted",
            Event::TrialEnded { .. } => "TrialEnded",
            Event::PlanChangeScheduled { .. } => "PlanChangeScheduled",
            Event::PlanChanged { .. } => "PlanChanged",
            Event::SubscriptionCanceled { .. } => "SubscriptionCanceled",
            Event::UsageRecorded(_) => "UsageRecorded",
            Event::BillingPeriodClosed { .. } => "BillingPeriodClosed",
            Event::InvoiceIssued(_) => "InvoiceIssued",
            Event::InvoiceVoided { .. } => "InvoiceVoided",
            Event::PaymentSucceeded { .. } => "PaymentSucceeded",
            Event::PaymentFailed { .. } => "PaymentFailed",
            Event::InvoiceMarkedUncollectible { .. } => "InvoiceMarkedUncollectible",
            Event::CreditNoteIssued(_) => "CreditNoteIssued",
            Event::AddOnDefined(_) => "AddOnDefined",
            Event::CouponDefined(_) => "CouponDefined",
            Event::CouponApplied { .. } => "CouponApplied",
            Event::CouponRemoved { .. } => "CouponRemoved",
            Event::WalletOpened(_) => "WalletOpened",
            Event::WalletToppedUp(_) => "WalletToppedUp",
            Event::WalletCreditsUsable { .. } => "WalletCreditsUsable",
            Event::WalletCreditsExpired { .. } => "WalletCreditsExpired",
            Event::WalletBalanceLow { .. } => "WalletBalanceLow",
            Event::UsageAlertCreated { .. } => "UsageAlertCreated",
            Event::UsageAlertDeleted { .. } => "UsageAlertDeleted",
            Event::UsageAlertTriggered { .. } => "UsageAlertTriggered",
        }
    }

    /// Business (effective) time of the event, for the envelope's `occurred_at`; `None` for
    /// events whose effect has no business time of its own (the caller uses the command's time).
    pub fn occurred_at(&self) -> Option<Timestamp> {
        match self {
            Event::CustomerUpdated { occurred_at, .. }
            | Event::SubscriptionStarted { occurred_at, .. }
            | Event::PlanChangeScheduled { occurred_at, .. }
            | Event::SubscriptionCanceled { occurred_at, .. }
            | Event::InvoiceVoided { occurred_at, .. }
            | Event::PaymentSucceeded { occurred_at, .. }
            | Event::PaymentFailed { occurred_at, .. }
            | Event::InvoiceMarkedUncollectible { occurred_at, .. } => Some(*occurred_at),
            Event::UsageRecorded(u) => Some(u.occurred_at),
            Event::BillingPeriodClosed { closed_at, .. } => Some(*closed_at),
            Event::InvoiceIssued(i) => Some(i.issued_at),
            Event::CreditNoteIssued(n) => Some(n.issued_at),
            Event::CouponApplied { occurred_at, .. } | Event::CouponRemoved { occurred_at, .. } => {
                Some(*occurred_at)
            }
            Event::WalletOpened(w) => Some(w.occurred_at),
            Event::WalletToppedUp(t) => Some(t.occurred_at),
            Event::WalletCreditsUsable { occurred_at, .. }
            | Event::WalletBalanceLow { occurred_at, .. }
            | Event::UsageAlertCreated { occurred_at, .. }
            | Event::UsageAlertDeleted { occurred_at, .. }
            | Event::UsageAlertTriggered { occurred_at, .. } => Some(*occurred_at),
            Event::WalletCreditsExpired { .. }
            | Event::TrialEnded { .. }
            | Event::PlanChanged { .. }
            | Event::CustomerRegistered(_)
            | Event::BillableMetricDefined(_)
            | Event::PlanPublished(_)
            | Event::AddOnDefined(_)
            | Event::CouponDefined(_) => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events always serialize")
    }

    /// Reads a stored payload, upcasting older schema versions (none exist yet).
    pub fn decode(
        event_type: &str,
        schema_version: u16,
        bytes: &[u8],
    ) -> Result<Event, DecodeError> {
        if schema_version != SCHEMA_VERSION {
            return Err(DecodeError::UnknownVersion {
                event_type: event_type.to_string(),
                version: schema_version,
            });
        }
        let malformed =
            |detail: String| DecodeError::Malformed { event_type: event_type.to_string(), detail };
        let event: Event = if event_type == "UsageRecorded" {
            // Most of the log: decoded straight into `Usage`, without the tagged enum's buffering.
            let p: UsageRecordedPayload =
                serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
            if p.kind != "UsageRecorded" {
                return Err(malformed(format!("payload is a {}", p.kind)));
            }
            Event::UsageRecorded(Usage {
                subscription_id: p.subscription_id,
                transaction_id: p.transaction_id,
                metric_code: p.metric_code,
                occurred_at: p.occurred_at,
                properties: p.properties,
            })
        } else {
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?
        };
        if event.type_name() != event_type {
            return Err(DecodeError::Malformed {
                event_type: event_type.to_string(),
                detail: format!("payload is a {}", event.type_name()),
            });
        }
        Ok(event)
    }
}
