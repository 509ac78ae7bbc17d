//! [`Ledger::evolve`]: applying one logged event to the write model. Events are valid by
//! construction, so this never validates and never fails: a violated expectation is a bug or
//! a corrupt log and panics. It must never decide anything (no clock, no policy).

use rust_decimal::Decimal;

use super::subscriptions::{apply_plan_change, preview_subscription};
use super::usage::usage_value;
use super::{CustomerState, Ledger, UsageFacts};
use crate::calendar::{local_date, parse_time_zone};
use crate::catalog::Plan;
use crate::credit_note::CreditDestination;
use crate::events::{Event, Usage};
use crate::invoice::{Invoice, InvoiceAccount, InvoiceStatus, IssueReason, LineKind};
use crate::rating::UsagePoint;
use crate::subscription::{add_usage, Subscription};

impl Ledger {
    /// Applies one event. Events come from the log, so they are valid by construction; a
    /// violated expectation here is a bug or a corrupt log, and panics.
    pub fn evolve(&mut self, event: &Event, position: u64) {
        match event {
            Event::CustomerRegistered(c) => {
                self.created_at.insert(event.stream(), position);
                let time_zone = parse_time_zone(&c.time_zone).expect("validated at decide");
                self.customers.insert(
                    c.customer_id.clone(),
                    CustomerState {
                        customer: c.clone(),
                        time_zone,
                        credit_notes_issued: 0,
                        credit_balance: Decimal::ZERO,
                        one_off_invoices: 0,
                        coupons: Vec::new(),
                        wallets: Vec::new(),
                    },
                );
            }
            Event::CustomerUpdated { customer_id, name, tax_rate, .. } => {
                let c = &mut self.customers.get_mut(customer_id).expect("customer exists").customer;
                if let Some(n) = name {
                    c.name = n.clone();
                }
                if let Some(r) = tax_rate {
                    c.tax_rate = *r;
                }
            }
            Event::BillableMetricDefined(m) => {
                self.created_at.insert(event.stream(), position);
                self.metrics.insert(m.code.clone(), m.clone());
            }
            Event::PlanPublished(p) => {
                self.created_at.insert(event.stream(), position);
                self.evolve_plan(p)
            }
            Event::SubscriptionStarted { .. } => {
                self.created_at.insert(event.stream(), position);
                let sub = preview_subscription(self, event);
                self.subscriptions.insert(sub.subscription_id.clone(), sub);
            }
            Event::InvoiceIssued(inv) => self.evolve_invoice(inv),
            Event::UsageRecorded(u) => self.evolve_usage(u, position),
            Event::InvoiceVoided { invoice_id, .. } => {
                let account = self.invoice_mut(invoice_id);
                account.status = InvoiceStatus::Void;
                let invoice = account.invoice.clone();
                // The credit balance it took returns to the customer (the journal's void
                // reverses its customer_credit leg too); a top-up's pending credits never come.
                if !invoice.credit_applied.is_zero() {
                    let customer =
                        self.customers.get_mut(&invoice.customer_id).expect("customer exists");
                    customer.credit_balance += invoice.credit_applied;
                }
                self.evolve_wallet_void(&invoice);
            }
            Event::WalletOpened(_)
            | Event::WalletToppedUp(_)
            | Event::WalletCreditsUsable { .. }
            | Event::WalletCreditsExpired { .. }
            | Event::WalletBalanceLow { .. } => self.evolve_wallet(event),
            Event::UsageAlertCreated { .. }
            | Event::UsageAlertDeleted { .. }
            | Event::UsageAlertTriggered { .. } => self.evolve_alert(event),
            Event::PaymentSucceeded { invoice_id, amount, .. } => {
                self.invoice_mut(invoice_id).pay(*amount)
            }
            Event::CouponDefined(c) => {
                self.created_at.insert(event.stream(), position);
                self.coupons.insert(c.code.clone(), c.clone());
            }
            Event::CouponApplied { customer_id, coupon_code, .. } => {
                self.evolve_coupon_applied(customer_id, coupon_code)
            }
            Event::CouponRemoved { customer_id, coupon_code, .. } => {
                self.evolve_coupon_removed(customer_id, coupon_code)
            }
            Event::AddOnDefined(a) => {
                self.created_at.insert(event.stream(), position);
                self.add_ons.insert(a.code.clone(), a.clone());
            }
            Event::CreditNoteIssued(note) => {
                self.invoice_mut(&note.invoice_id).credit(note);
                let customer = self.customers.get_mut(&note.customer_id).expect("customer exists");
                assert_eq!(
                    customer.credit_notes_issued + 1,
                    note.number,
                    "notes numbered in order"
                );
                customer.credit_notes_issued = note.number;
                if note.destination == CreditDestination::Credit {
                    customer.credit_balance += note.total;
                }
            }
            Event::PaymentFailed { invoice_id, attempt, .. } => {
                let inv = self.invoice_mut(invoice_id);
                inv.failed_attempts = *attempt;
            }
            Event::InvoiceMarkedUncollectible { invoice_id, .. } => {
                self.invoice_mut(invoice_id).status = InvoiceStatus::Uncollectible;
            }
            _ => self.evolve_subscription(event),
        }
    }

    fn invoice_mut(&mut self, id: &str) -> &mut InvoiceAccount {
        self.invoices.get_mut(id).expect("invoice exists")
    }

    fn evolve_plan(&mut self, p: &Plan) {
        let versions = self.plans.entry(p.code.clone()).or_default();
        assert_eq!(versions.len() as u32 + 1, p.version, "plan versions are contiguous");
        versions.push(p.clone());
        for c in p.charges.iter().filter(|c| c.model.needs_event_amounts()) {
            self.percentage_metrics.insert(c.metric_code.clone());
        }
    }

    fn evolve_invoice(&mut self, inv: &Invoice) {
        if inv.reason == IssueReason::Imported {
            // Another biller's fact: numbered with its subscription's invoices (so Accrual's
            // next one follows it), no billing state, nothing applied at issue.
            if let Some(sub) = self.subscriptions.get_mut(&inv.subscription_id) {
                sub.invoice_ids.push(inv.invoice_id.clone());
            }
            // Its period's charges join the anomaly baseline, as a closing invoice's do.
            self.evolve_billed_history(inv);
            self.record_issued(inv);
            return;
        }
        if !inv.coupons.is_empty() {
            self.evolve_coupon_uses(inv);
        }
        if !inv.wallet_applied.is_empty() {
            self.evolve_wallet_uses(&inv.wallet_applied);
        }
        if !inv.credit_applied.is_zero() {
            let customer = self.customers.get_mut(&inv.customer_id).expect("customer exists");
            customer.credit_balance -= inv.credit_applied;
            assert!(customer.credit_balance >= Decimal::ZERO, "credit applied past the balance");
        }
        if inv.subscription_id.is_empty() {
            let customer = self.customers.get_mut(&inv.customer_id).expect("customer exists");
            customer.one_off_invoices += 1;
            self.record_issued(inv);
            return;
        }
        let sub = self.subscriptions.get_mut(&inv.subscription_id).expect("subscription exists");
        sub.invoice_ids.push(inv.invoice_id.clone());
        for line in &inv.lines {
            let ahead = matches!(
                line.kind,
                LineKind::BaseFee | LineKind::Credit | LineKind::UsageInAdvance
            );
            if line.kind == LineKind::BaseFee {
                sub.fee_billed_until = sub.fee_billed_until.max(line.service_period.end);
            }
            if ahead && line.service_period.start >= inv.period.end
                || line.kind == LineKind::UsageInAdvance
                || inv.reason != IssueReason::PeriodClose && ahead
            {
                let key = sub
                    .cycle
                    .period_containing(line.service_period.start)
                    .map_or(line.service_period.start, |p| p.start);
                // A correction of a closed period (reason `correction`): nothing closes it again.
                if sub.next_close.is_some_and(|n| key < n.start) {
                    continue;
                }
                // Saturating: several in-range invoices for one period could still sum past
                // Decimal (a pre-bounds log); the true-up then errs on the safe side (no
                // true-up when saturated up, an overflow error when saturated down).
                let billed = sub.billed_by_period.entry(key).or_default();
                *billed = billed.saturating_add(line.amount);
            }
        }
        if inv.reason == IssueReason::Progressive {
            self.evolve_progressive(inv);
        }
        self.evolve_billed_history(inv);
        self.record_issued(inv);
    }

    /// Keeps an issued invoice's account (its payments, credits and status follow).
    fn record_issued(&mut self, inv: &Invoice) {
        let previous =
            self.invoices.insert(inv.invoice_id.clone(), InvoiceAccount::issued(inv.clone()));
        assert!(previous.is_none(), "invoice ids are unique");
    }

    fn evolve_usage(&mut self, u: &Usage, position: u64) {
        let metric = &self.metrics[&u.metric_code];
        let sub = &self.subscriptions[&u.subscription_id];
        let date = local_date(u.occurred_at, &sub.time_zone);
        let period_start = sub.period_of(date).expect("usage in service").start;
        let value = usage_value(metric, u).expect("validated at decide");
        self.apply_usage(u, &UsageFacts { period_start, value }, position);
    }

    pub(super) fn apply_usage(&mut self, u: &Usage, facts: &UsageFacts, position: u64) {
        let metric = &self.metrics[&u.metric_code];
        let keep = self.percentage_metrics.contains(&u.metric_code);
        let sub = self.subscriptions.get_mut(&u.subscription_id).expect("subscription exists");
        let distinct =
            metric.property.as_ref().and_then(|p| u.properties.get(p)).map(String::as_str);
        let open = sub.open.entry(facts.period_start).or_default();
        let point =
            UsagePoint { occurred_at: u.occurred_at, seq: position, value: facts.value, distinct };
        add_usage(open, metric, keep, &point).expect("validated at decide");
    }

    fn evolve_subscription(&mut self, event: &Event) {
        match event {
            Event::TrialEnded { subscription_id, .. } => {
                self.sub_mut(subscription_id).trial_ended = true
            }
            Event::PlanChangeScheduled { subscription_id, plan, effective_date, .. } => {
                self.sub_mut(subscription_id).pending_change =
                    Some((plan.clone(), *effective_date));
            }
            Event::PlanChanged { subscription_id, plan, effective_date, .. } => {
                apply_plan_change(self.sub_mut(subscription_id), plan.clone(), *effective_date);
            }
            Event::SubscriptionCanceled { subscription_id, effective_date, .. } => {
                let sub = self.sub_mut(subscription_id);
                sub.ends_on = Some(*effective_date);
                // A scheduled change from before the end of service still happens (a dated
                // change; an undated downgrade is due at the period end, never before an end).
                if sub.pending_change.as_ref().is_some_and(|(_, on)| on >= effective_date) {
                    sub.pending_change = None;
                }
                sub.next_close = sub.next_close.map(|p| sub.truncate(p));
            }
            Event::BillingPeriodClosed { subscription_id, period, .. } => {
                let sub = self.sub_mut(subscription_id);
                assert_eq!(
                    sub.next_close.map(|p| p.start),
                    Some(period.start),
                    "periods close in order"
                );
                sub.open.remove(&period.start);
                sub.billed_by_period.remove(&period.start);
                sub.progressive_billed.remove(&period.start);
                let full = sub.cycle.period_containing(period.start).expect("in service");
                let ended = sub.ends_on.is_some_and(|e| e <= full.end);
                sub.next_close =
                    if ended { None } else { Some(sub.truncate(sub.cycle.next(&full))) };
            }
            other => unreachable!("not a subscription event: {}", other.type_name()),
        }
    }

    pub(super) fn sub_mut(&mut self, id: &str) -> &mut Subscription {
        self.subscriptions.get_mut(id).expect("subscription exists")
    }
}
