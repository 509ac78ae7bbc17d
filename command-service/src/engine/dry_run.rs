//! Deciding commands on a copy of the write model, appending nothing: the validation pass of
//! an import (`Import` with `validate_only`). Each command is answered as `Engine::execute` or
//! `Engine::record_usage` would answer it at that point of the run, the earlier ones of the
//! run applied to the copy: a replay of a known idempotency key or of existing catalog content,
//! and a usage event already recorded (the dedup index) are fine and change nothing.

use std::collections::HashMap;

use domain::commands::{Command, Context};
use domain::events::Event;
use domain::ledger::{usage_digest, Ledger, PriorUsage, UsageOutcome};
use tonic::Status;

use super::Engine;
use crate::dedup;
use crate::status::from_domain;

/// A copy of the books a validation pass decides on.
pub struct DryRun {
    ledger: Ledger,
    next_position: u64,
    /// Idempotency keys known when the copy was taken, with their request digests.
    keys: HashMap<String, [u8; 32]>,
    /// Usage accepted earlier in this run (a repeat is a duplicate of the first).
    usage_in_run: HashMap<Vec<u8>, PriorUsage>,
}

/// What a command did on the copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DryOutcome {
    /// It would append this many events.
    Appends(u64),
    /// It would change nothing (a replay or a duplicate).
    Unchanged,
}

impl Engine {
    /// A copy of the current write model to validate on.
    pub async fn dry_run(&self) -> Result<DryRun, Status> {
        let model = self.lock_model().await?;
        let keys = model.idempotency.iter().map(|(k, c)| (k.clone(), c.digest)).collect();
        Ok(DryRun {
            ledger: model.ledger.clone(),
            next_position: model.next_position,
            keys,
            usage_in_run: HashMap::new(),
        })
    }

    /// Decides `cmd` (with `key`, the idempotency key and request digest) on the copy and
    /// applies what it decides.
    pub async fn dry_execute(
        &self,
        run: &mut DryRun,
        cmd: Command,
        key: Option<(String, [u8; 32])>,
    ) -> Result<DryOutcome, Status> {
        let ctx = Context { now: self.now(), policy: self.policy.clone() };
        if let Command::RecordUsage(u) = cmd {
            let dedup_key = dedup::key(&u.subscription_id, &u.transaction_id);
            let prior = match run.usage_in_run.get(&dedup_key) {
                Some(prior) => Some(*prior),
                None => self
                    .dedup
                    .find(&dedup_key)
                    .await?
                    .map(|h| PriorUsage { digest: h.entry.digest, position: h.entry.position }),
            };
            let position = run.next_position;
            let outcome = run.ledger.record_usage(u, &ctx, position, prior).map_err(from_domain)?;
            return Ok(match outcome {
                UsageOutcome::Accepted(events) => {
                    if let Some(Event::UsageRecorded(u)) = events.first() {
                        let prior = PriorUsage { digest: usage_digest(u), position };
                        run.usage_in_run.insert(dedup_key, prior);
                    }
                    run.next_position += events.len() as u64;
                    DryOutcome::Appends(events.len() as u64)
                }
                UsageOutcome::Duplicate { .. } => DryOutcome::Unchanged,
            });
        }
        if let Some((k, digest)) = &key {
            match run.keys.get(k) {
                Some(known) if known == digest => return Ok(DryOutcome::Unchanged),
                Some(_) => {
                    return Err(Status::already_exists(format!(
                        "idempotency key {k:?} was used for a different request"
                    )))
                }
                None => {}
            }
        }
        if run.ledger.replay_position(&cmd, &ctx).is_some() {
            return Ok(DryOutcome::Unchanged);
        }
        let events = run.ledger.execute(&cmd, &ctx, run.next_position).map_err(from_domain)?;
        if let Some((k, digest)) = key {
            run.keys.insert(k, digest);
        }
        run.next_position += events.len() as u64;
        Ok(if events.is_empty() {
            DryOutcome::Unchanged
        } else {
            DryOutcome::Appends(events.len() as u64)
        })
    }
}
