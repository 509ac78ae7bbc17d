//! Usage on the command side: a batch of usage events decided against the write model, each
//! checked against the dedup index (earlier in the batch, pending, or in a run and confirmed by
//! the log), and the index flushed once what it holds is durable.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use domain::commands::Context;
use domain::events::{Event, Usage};
use domain::ledger::{usage_digest, PriorUsage, UsageOutcome};
use event_store::Position;
use tonic::Status;
use uuid::Uuid;

use super::{
    decide_again_on_conflict, wait_durable, Engine, Failed, Seen, UsageItem, CONFLICT_RETRIES_MAX,
};
use crate::dedup;
use crate::status::from_domain;

impl Engine {
    /// Persists the dedup index through everything this engine has decided so far, once it is
    /// durable in the log (as decided), and returns the covered position. UNAVAILABLE if an
    /// append diverged meanwhile (nothing is persisted then; the next call does it).
    pub async fn flush_dedup(&self) -> Result<Position, Status> {
        let model = self.lock_model().await?;
        let seen = self.seen(&model);
        drop(model);
        self.wait_durable(seen).await?;
        self.dedup.flush_through(seen.next_position).await?;
        Ok(self.dedup.covered_position())
    }

    /// Starts a background flush of the dedup index through `seen` (the model just after an
    /// append) when enough entries are pending and none is running.
    fn flush_dedup_later(&self, seen: Seen) {
        if self.dedup_flushing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (store, appends) = (self.store.clone(), self.appends.clone());
        let (index, flushing) = (self.dedup.clone(), self.dedup_flushing.clone());
        tokio::spawn(async move {
            let outcome = match wait_durable(&*store, &appends, seen).await {
                Ok(()) => index.flush_through(seen.next_position).await,
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "dedup index flush skipped; the next one retries");
            }
            flushing.store(false, Ordering::SeqCst);
            // Merging may take seconds; flushes go on meanwhile (at most one merge runs).
            if let Err(e) = index.merge_due().await {
                tracing::warn!(error = %e, "dedup runs not merged; the next flush retries");
            }
        });
    }

    /// Records a batch of usage events: each item accepted, duplicate or rejected on its own;
    /// all accepted ones share one append (one fsync). A lost race with another command node is
    /// decided again (at most [`CONFLICT_RETRIES_MAX`] times) on the caught-up model.
    pub async fn record_usage(
        &self,
        items: Vec<Result<Usage, Status>>,
    ) -> Result<Vec<UsageItem>, Status> {
        decide_again_on_conflict(CONFLICT_RETRIES_MAX, || self.record_usage_once(items.clone()))
            .await
    }

    async fn record_usage_once(
        &self,
        items: Vec<Result<Usage, Status>>,
    ) -> Result<Vec<UsageItem>, Failed> {
        let mut model = self.lock_model().await?;
        if self.dedup.pending_len() >= dedup::PENDING_EVENTS_MAX {
            // The background flush fell behind: bound the pending entries before deciding more.
            let seen = self.seen(&model);
            self.wait_durable(seen).await?;
            self.dedup.flush_through(seen.next_position).await?;
        }
        let seen = self.seen(&model);
        let ctx = Context { now: self.now(), policy: self.policy.clone() };
        let first = model.next_position;
        let mut events = Vec::with_capacity(items.len());
        let mut results = Vec::with_capacity(items.len());
        // Transactions accepted earlier in this batch (a repeat is a duplicate of the first).
        let mut in_batch: HashMap<Vec<u8>, PriorUsage> = HashMap::new();
        for item in items {
            let position = first + events.len() as u64;
            let decided = match item {
                Ok(u) => {
                    let key = dedup::key(&u.subscription_id, &u.transaction_id);
                    match self.prior_usage(&in_batch, &key).await {
                        Ok(prior) => model
                            .ledger
                            .record_usage(u, &ctx, position, prior)
                            .map_err(from_domain)
                            .map(|outcome| (key, outcome)),
                        Err(status) => Err(status),
                    }
                }
                Err(status) => Err(status),
            };
            let result = match decided {
                Ok((key, UsageOutcome::Accepted(mut evs))) => {
                    let invoice_id = evs.iter().find_map(|e| match e {
                        Event::InvoiceIssued(i) => Some(i.invoice_id.clone()),
                        _ => None,
                    });
                    if let Some(Event::UsageRecorded(u)) = evs.first() {
                        in_batch.insert(key, PriorUsage { digest: usage_digest(u), position });
                    }
                    events.append(&mut evs);
                    UsageItem::Accepted { position, invoice_id }
                }
                Ok((_, UsageOutcome::Duplicate { position })) => UsageItem::Duplicate { position },
                Err(status) => UsageItem::Rejected(status),
            };
            results.push(result);
        }
        if events.is_empty() {
            // Duplicates may point at appends still in flight.
            drop(model);
            self.wait_durable(seen).await?;
            return Ok(results);
        }
        let ticket = self.submit(&mut model, &events, None, ctx.now, Uuid::new_v4()).await;
        let flush = (self.dedup.pending_len() >= dedup::FLUSH_EVENTS).then(|| self.seen(&model));
        drop(model);
        if let Some(seen) = flush {
            self.flush_dedup_later(seen);
        }
        self.settle(ticket, first).await?;
        Ok(results)
    }

    /// What is known of an earlier usage event with this key: accepted earlier in this batch,
    /// pending in the dedup index (decided on this model), or on disk and confirmed by the log.
    async fn prior_usage(
        &self,
        in_batch: &HashMap<Vec<u8>, PriorUsage>,
        key: &[u8],
    ) -> Result<Option<PriorUsage>, Status> {
        if let Some(prior) = in_batch.get(key) {
            return Ok(Some(*prior));
        }
        let hit = self.dedup.find(key).await?;
        Ok(hit.map(|h| PriorUsage { digest: h.entry.digest, position: h.entry.position }))
    }
}

/// The dedup index's key and entry of a usage event.
pub(super) fn dedup_entry(event: &Event, position: Position) -> Option<(Vec<u8>, dedup::Entry)> {
    let Event::UsageRecorded(u) = event else { return None };
    let entry = dedup::Entry { digest: usage_digest(u), position };
    Some((dedup::key(&u.subscription_id, &u.transaction_id), entry))
}
