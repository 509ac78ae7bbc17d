//! Anomaly flags in the write model (`crate::anomaly` holds the rules): what a period-close
//! invoice or a draft is compared as ([`period_charges`]), the flags it carries, and how an
//! issued period-close invoice joins its subscription's history and its plan's totals.
//! Only `period_close` invoices are flagged and recorded: a cancellation's last invoice, trial
//! ends, upgrades and progressive invoices are partial by design (a progressive invoice's
//! amounts count in its period's close).

use rust_decimal::Decimal;

use super::Ledger;
use crate::anomaly::{
    self, push_bounded, AnomalyFlag, Completeness, PeriodCharges, HISTORY_PERIODS_MAX,
    PLAN_TOTALS_MAX,
};
use crate::calendar::local_date;
use crate::invoice::{Invoice, IssueReason, LineKind};
use crate::subscription::Subscription;

/// What `invoice` (of `sub`'s period `invoice.period`, rated with plan `plan_code`) is
/// compared as: its lines before coupons, per usage metric of the period and in total, plus
/// what progressive invoices billed of the period. Saturating: an amount near `Decimal`'s
/// range (impossible within the input bounds) must not fail an invoice or `evolve`.
pub fn period_charges(sub: &Subscription, invoice: &Invoice, plan_code: &str) -> PeriodCharges {
    let p = invoice.period;
    let mut charges = PeriodCharges {
        period_start: p.start,
        plan_code: plan_code.to_string(),
        ..PeriodCharges::default()
    };
    for line in &invoice.lines {
        let gross = line.amount.saturating_add(line.discount);
        charges.total = charges.total.saturating_add(gross);
        if line.kind == LineKind::Usage && line.service_period.start == p.start {
            let metric = line.metric_code.clone().unwrap_or_default();
            let usage = charges.usage.entry(metric).or_default();
            *usage = usage.saturating_add(gross);
        }
    }
    for (metric, billed) in sub.progressive_billed.get(&p.start).into_iter().flatten() {
        charges.total = charges.total.saturating_add(*billed);
        let usage = charges.usage.entry(metric.clone()).or_default();
        *usage = usage.saturating_add(*billed);
    }
    charges
}

impl Ledger {
    /// The flags of a period-close invoice (or draft) `invoice` of `sub` (none for any other
    /// reason).
    pub(super) fn anomaly_flags(
        &self,
        sub: &Subscription,
        invoice: &Invoice,
        completeness: Completeness,
    ) -> Vec<AnomalyFlag> {
        if invoice.reason != IssueReason::PeriodClose {
            return Vec::new();
        }
        let plan_code = &sub.plan_at(invoice.period.last_day()).code;
        let candidate = period_charges(sub, invoice, plan_code);
        let totals = self.plan_totals.get(plan_code).map_or(&[][..], Vec::as_slice);
        let minor_unit = Decimal::new(1, invoice.currency.minor_units());
        let mut flags =
            anomaly::flags(&candidate, &sub.billed_history, totals, minor_unit, completeness);
        // A median of an even count can fall between two cents: shown as money, it is rounded
        // to the currency (the score used the exact median).
        for f in &mut flags {
            f.typical = invoice.currency.round(f.typical);
        }
        flags
    }

    /// Records an issued period-close invoice in its subscription's history and its plan's
    /// totals (before the subscription's `BillingPeriodClosed` drops the period's progressive
    /// amounts).
    pub(super) fn evolve_billed_history(&mut self, inv: &Invoice) {
        if inv.subscription_id.is_empty() {
            return;
        }
        let sub = self.sub_mut(&inv.subscription_id);
        // Another biller's invoice is a period's closing one when it was issued once the
        // period had ended (a start, upgrade or trial-end invoice is issued inside it).
        let closing = match inv.reason {
            IssueReason::PeriodClose => true,
            IssueReason::Imported => local_date(inv.issued_at, &sub.time_zone) >= inv.period.end,
            _ => false,
        };
        if !closing {
            return;
        }
        let plan_code = sub.plan_at(inv.period.last_day()).code.clone();
        let charges = period_charges(sub, inv, &plan_code);
        let total = charges.total;
        push_bounded(&mut sub.billed_history, charges, HISTORY_PERIODS_MAX);
        push_bounded(self.plan_totals.entry(plan_code).or_default(), total, PLAN_TOTALS_MAX);
    }
}
