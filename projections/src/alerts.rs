//! Usage alerts, kept in the `invoices` read model (issue 14): each subscription's alert
//! definitions and the levels they fired. It records what the log says; the domain decides
//! when an alert fires.
//!
//! Keys: `ual/<subscription>/<alert_id>` → [`UsageAlert`] JSON (removed on delete);
//! `ualt/<subscription>/<pos>` → [`TriggeredAlert`] (`<pos>` 16 hex digits).

use domain::alert::UsageAlert;
use domain::events::Event;
use event_store::Position;
use jiff::civil::Date;
use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::invoices::{InvoiceReader, NAME};
use crate::store::{corrupt, Writes};
use crate::{ProjectionError, Result};

/// Most fired levels a listing returns (the newest).
pub const TRIGGERED_LISTED_MAX: usize = 1_000;

/// One level an alert fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggeredAlert {
    pub alert_id: String,
    pub period_start: Date,
    pub level: Decimal,
    pub value: Decimal,
    pub at: Timestamp,
    pub position: Position,
}

/// Applies an alert event; others are ignored.
pub(crate) fn apply(w: &mut Writes<'_>, event: &Event, position: Position) -> Result<()> {
    match event {
        Event::UsageAlertCreated { alert, .. } => {
            let key = format!("ual/{}/{}", alert.subscription_id, alert.alert_id);
            w.put(key, serde_json::to_vec(alert).expect("alerts serialize"));
        }
        Event::UsageAlertDeleted { subscription_id, alert_id, .. } => {
            w.delete(format!("ual/{subscription_id}/{alert_id}"));
        }
        Event::UsageAlertTriggered {
            alert_id,
            subscription_id,
            period_start,
            level,
            value,
            occurred_at,
            ..
        } => {
            let fired = TriggeredAlert {
                alert_id: alert_id.clone(),
                period_start: *period_start,
                level: *level,
                value: *value,
                at: *occurred_at,
                position,
            };
            let key = format!("ualt/{subscription_id}/{position:016x}");
            w.put(key, serde_json::to_vec(&fired).expect("alerts serialize"));
        }
        _ => {}
    }
    Ok(())
}

impl InvoiceReader {
    /// The subscription's alerts (by id) and the newest fired levels, oldest first.
    pub fn usage_alerts(
        &self,
        subscription_id: &str,
    ) -> Result<(Vec<UsageAlert>, Vec<TriggeredAlert>)> {
        if subscription_id.is_empty() || subscription_id.contains('/') {
            let msg = format!("subscription_id {subscription_id:?} must be non-empty without '/'");
            return Err(ProjectionError::InvalidArgument(msg));
        }
        self.model().read(|snap| {
            let max = domain::alert::ALERTS_PER_SUBSCRIPTION_MAX;
            let prefix = format!("ual/{subscription_id}/");
            let mut alerts = Vec::new();
            for (_, v) in snap.scan(prefix.as_bytes(), None, max)? {
                let a =
                    serde_json::from_slice(&v).map_err(|e| corrupt(NAME, format!("alert: {e}")))?;
                alerts.push(a);
            }
            let prefix = format!("ualt/{subscription_id}/");
            let mut fired = Vec::new();
            for (_, v) in snap.scan_rev(prefix.as_bytes(), TRIGGERED_LISTED_MAX)? {
                let t = serde_json::from_slice(&v)
                    .map_err(|e| corrupt(NAME, format!("fired alert: {e}")))?;
                fired.push(t);
            }
            fired.reverse();
            Ok((alerts, fired))
        })
    }
}
