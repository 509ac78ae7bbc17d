//! The [`Projection`] impl: [`JournalProjection`] routes each event to the posting
//! ([`Journal`]) and accrual code, keeps the [`UsageMeter`] that rates open periods (and the
//! current-usage drafts it writes at the end of a batch), and snapshots that meter with the
//! checkpoint. It holds no accounting rule of its own and must never post an entry directly.

use domain::events::Event;
use event_store::{Position, RecordedEvent};

use super::posting::Journal;
use super::records::{customer_key, draft_key, json, usage_day_key, UsageDay};
use super::{overflow, NAME};
use crate::store::Writes;
use crate::usage_meter::UsageMeter;
use crate::{Projection, Result};

/// Default of [`JournalProjection::with_meter_snapshot_interval_events`]: a restart after a
/// crash folds at most about this many events into the usage meter (docs/decisions/0028).
pub const METER_SNAPSHOT_INTERVAL_EVENTS_DEFAULT: u64 = 1_000_000;

/// The `journal` projection. It keeps a [`UsageMeter`] (the read side's copy of the ledger)
/// to recognize usage as it is consumed and to keep the current-usage drafts, and snapshots
/// it with its checkpoint so a restart folds only the log's tail.
#[derive(Debug)]
pub struct JournalProjection {
    meter: UsageMeter,
    /// A meter snapshot is stored with the first checkpoint at least this many events after
    /// the last one (0: only when the runner stops).
    meter_snapshot_interval_events: u64,
    /// Position of the last meter snapshot stored or restored (0: none).
    meter_snapshot_position: Position,
}

impl Default for JournalProjection {
    fn default() -> Self {
        JournalProjection::with_meter_snapshot_interval_events(
            METER_SNAPSHOT_INTERVAL_EVENTS_DEFAULT,
        )
    }
}

impl JournalProjection {
    /// A journal storing a usage-meter snapshot every `interval_events` events (0: only at a
    /// stop).
    pub fn with_meter_snapshot_interval_events(interval_events: u64) -> Self {
        JournalProjection {
            meter: UsageMeter::default(),
            meter_snapshot_interval_events: interval_events,
            meter_snapshot_position: 0,
        }
    }
}

impl Projection for JournalProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        // 4: usage per day (`ud/` keys).
        4
    }

    fn apply(&mut self, w: &mut Writes<'_>, event: &RecordedEvent, decoded: &Event) -> Result<()> {
        let mut j = Journal { w, position: event.position };
        for accrual in self.meter.before(decoded) {
            j.accrue(&accrual)?;
        }
        match decoded {
            Event::UsageRecorded(u) => {
                if let Some((day, customer_id, quantity)) = self.meter.usage_quantity(u) {
                    let key = usage_day_key(day, &u.subscription_id, &u.metric_code);
                    let day = j.w.memo::<UsageDay>().entry(key).or_insert_with(|| UsageDay {
                        customer_id: customer_id.to_string(),
                        units: rust_decimal::Decimal::ZERO,
                        events: 0,
                    });
                    day.units = day
                        .units
                        .checked_add(quantity)
                        .ok_or_else(|| overflow(event.position, "usage of the day"))?;
                    day.events += 1;
                }
            }
            Event::CustomerRegistered(c) => {
                j.w.put(customer_key(&c.customer_id), c.time_zone.as_bytes());
            }
            Event::InvoiceIssued(invoice) => j.issue(invoice)?,
            Event::PaymentSucceeded { invoice_id, amount, occurred_at } => {
                j.pay(invoice_id, *amount, *occurred_at)?
            }
            Event::InvoiceVoided { invoice_id, occurred_at, .. } => {
                j.void(invoice_id, *occurred_at)?
            }
            Event::InvoiceMarkedUncollectible { invoice_id, occurred_at } => {
                j.uncollectible(invoice_id, *occurred_at)?
            }
            Event::BillingPeriodClosed { subscription_id, period, .. } => {
                j.close_accruals(subscription_id, period)?
            }
            Event::CreditNoteIssued(note) => j.credit_note(note)?,
            Event::WalletCreditsExpired { wallet_id, currency, expired_on, lots, .. } => {
                j.wallet_expiry(wallet_id, *currency, *expired_on, lots)?
            }
            _ => {}
        }
        self.meter.after(decoded, event.position);
        Ok(())
    }

    fn finish_batch(&mut self, w: &mut Writes<'_>) -> Result<()> {
        // Usage per day: the batch's sums, added to what is stored, one write per key.
        let days = std::mem::take(w.memo::<UsageDay>());
        for (key, batch) in days {
            let day = match w.get(&key)? {
                None => batch,
                Some(stored) => {
                    let stored: UsageDay = json(&stored, "usage day")?;
                    let units = stored.units.checked_add(batch.units);
                    let units = units.ok_or_else(|| overflow(0, "usage of the day"))?;
                    UsageDay {
                        customer_id: stored.customer_id,
                        units,
                        events: stored.events + batch.events,
                    }
                }
            };
            w.put(key, serde_json::to_vec(&day).expect("usage days serialize"));
        }
        let (accruals, touched) = self.meter.finish();
        let mut j = Journal { w, position: 0 };
        for accrual in &accruals {
            j.accrue(accrual)?;
        }
        for sub in touched {
            let drafts = self.meter.drafts(&sub);
            if drafts.is_empty() {
                j.w.delete(draft_key(&sub));
            } else {
                j.w.put(draft_key(&sub), serde_json::to_vec(&drafts).expect("drafts serialize"));
            }
        }
        Ok(())
    }

    fn remembers(&self) -> bool {
        true
    }

    fn remember(&mut self, event: &RecordedEvent, decoded: &Event) {
        self.meter.remember(decoded, event.position);
    }

    fn forget(&mut self) {
        self.meter.forget();
        self.meter_snapshot_position = 0;
    }

    fn save_state(&mut self, position: Position, stopping: bool) -> Option<Vec<u8>> {
        let since = position.checked_sub(self.meter_snapshot_position)?;
        let interval = self.meter_snapshot_interval_events;
        let due = if stopping { since > 0 } else { interval > 0 && since >= interval };
        if !due {
            return None;
        }
        let encoded = self.meter.encode()?;
        self.meter_snapshot_position = position;
        Some(encoded)
    }

    fn restore_state(&mut self, position: Position, payload: &[u8]) -> Result<(), String> {
        self.meter = UsageMeter::decode(payload)?;
        self.meter_snapshot_position = position;
        Ok(())
    }
}
