//! Progressive billing in the write model (issue 14, part 4; docs/decisions/0037): the invoice
//! a usage event brings when its period's rated usage reaches the plan's next threshold
//! (`crate::progressive`), and the closing invoice's usage lines net of what such invoices
//! billed. Only subscriptions whose plan has thresholds pay for the check. The state it reads
//! (`Subscription::progressive_billed`) changes only through `evolve`.

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::Timestamp;
use rust_decimal::Decimal;

use super::Ledger;
use crate::calendar::Period;
use crate::error::DomainError;
use crate::events::Event;
use crate::invoice::{Invoice, IssueReason, LineDraft, LineKind};
use crate::money::checked_sum;
use crate::subscription::Subscription;

impl Ledger {
    /// The progressive invoice a usage event of `subscription_id` in the period starting
    /// `period_start` brings, if any, already applied, followed by the wallet events it
    /// brings. A usage event is recorded before this runs, so an error here (an overflow the
    /// input bounds make unreachable) issues nothing: the closing invoice bills it all.
    pub(super) fn bill_progressively(
        &mut self,
        subscription_id: &str,
        period_start: Date,
        now: Timestamp,
        position: u64,
    ) -> Vec<Event> {
        // The ingest hot path: a subscription none of whose plans bills progressively pays
        // only these lookups.
        let sub = &self.subscriptions[subscription_id];
        if sub.plans.iter().all(|(_, r)| self.plan(r).progressive_billing.is_none()) {
            return Vec::new();
        }
        let Ok(Some(invoice)) = self.progressive_invoice(subscription_id, period_start, now) else {
            return Vec::new();
        };
        let mut events = vec![Event::InvoiceIssued(invoice)];
        self.apply_all(&events, position);
        let low = self.follow_wallets(&events, now, position + 1);
        events.extend(low);
        events
    }

    /// The invoice of the usage so far of the open period starting `period_start`, net of what
    /// earlier progressive invoices billed of it, when its rated in-arrears usage reached the
    /// plan's next threshold; `None` otherwise (no thresholds, none reached, no open period).
    pub fn progressive_invoice(
        &self,
        subscription_id: &str,
        period_start: Date,
        now: Timestamp,
    ) -> Result<Option<Invoice>, DomainError> {
        let sub = self.subscription(subscription_id)?;
        let Some((p, plan)) = self.open_period_rated(sub, period_start) else { return Ok(None) };
        let Some(rule) = &plan.progressive_billing else { return Ok(None) };
        let overflow = |what: &str| DomainError::overflow(sub.subject(), what);
        let billed = sub.progressive_billed.get(&p.start);
        let billed_total = checked_sum(billed.into_iter().flat_map(|b| b.values().copied()))
            .ok_or_else(|| overflow("usage billed progressively"))?;
        let Some(next) = rule.next_threshold_above(billed_total) else { return Ok(None) };
        let usage: Vec<LineDraft> = self
            .usage_lines(sub, plan, &p)?
            .into_iter()
            .filter(|l| l.kind == LineKind::Usage)
            .collect();
        let rated = checked_sum(usage.iter().map(|l| plan.currency.round(l.unrounded)))
            .ok_or_else(|| overflow("rated usage"))?;
        if rated < next {
            return Ok(None);
        }
        let mut lines = Vec::with_capacity(usage.len());
        for mut line in net_of_progressive(sub, &p, usage, plan.currency)? {
            // A metric whose rated amount fell since it was billed waits for the close: a
            // progressive line only bills usage, it never gives any back.
            if line.unrounded <= Decimal::ZERO {
                continue;
            }
            line.description = format!("{}, usage to date", line.description);
            lines.push(line);
        }
        Ok(Some(self.invoice_for(sub, p, IssueReason::Progressive, lines, now)?))
    }

    /// Keeps what a progressive invoice billed, before coupons, per period and metric (the
    /// closing invoice deducts it, the minimum commitment counts it). It is never voided.
    pub(super) fn evolve_progressive(&mut self, inv: &Invoice) {
        let sub = self.sub_mut(&inv.subscription_id);
        let billed = sub.progressive_billed.entry(inv.period.start).or_default();
        let mut gross_total = Decimal::ZERO;
        for line in inv.lines.iter().filter(|l| l.kind == LineKind::Usage) {
            let metric = line.metric_code.clone().unwrap_or_default();
            // Saturating, as `billed_by_period`: in range for every log the bounds allow.
            let gross = line.amount.saturating_add(line.discount);
            let amount = billed.entry(metric).or_default();
            *amount = amount.saturating_add(gross);
            gross_total = gross_total.saturating_add(gross);
        }
        let key = inv.period.start;
        let counted = sub.billed_by_period.entry(key).or_default();
        *counted = counted.saturating_add(gross_total);
    }
}

/// The period's usage lines less what progressive invoices billed of each metric (rounded
/// first, so each line is exact at the currency's scale); a metric billed progressively that
/// no line rates any more (its charge left the plan) gets a line of its own giving it back.
pub(super) fn net_of_progressive(
    sub: &Subscription,
    p: &Period,
    lines: Vec<LineDraft>,
    currency: crate::money::Currency,
) -> Result<Vec<LineDraft>, DomainError> {
    let Some(billed) = sub.progressive_billed.get(&p.start) else { return Ok(lines) };
    let mut left: BTreeMap<&str, Decimal> = billed.iter().map(|(m, a)| (m.as_str(), *a)).collect();
    let mut out = Vec::with_capacity(lines.len() + left.len());
    for mut line in lines {
        let metric = line.metric_code.as_deref().unwrap_or_default();
        if line.kind == LineKind::Usage {
            if let Some(b) = left.remove(metric) {
                line.unrounded =
                    currency.round(line.unrounded).checked_sub(b).ok_or_else(|| {
                        DomainError::overflow(
                            sub.subject(),
                            "usage less what was billed progressively",
                        )
                    })?;
                line.description = format!("{} less {b} billed progressively", line.description);
            }
        }
        out.push(line);
    }
    for (metric, b) in left {
        out.push(LineDraft {
            kind: LineKind::Usage,
            description: format!("{metric}: {b} billed progressively, no longer charged"),
            metric_code: Some(metric.to_string()),
            charge_model: None,
            units: None,
            service_period: *p,
            unrounded: -b,
        });
    }
    Ok(out)
}
