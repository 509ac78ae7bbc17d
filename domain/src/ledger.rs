//! The whole write-side state and its two pure functions: [`Ledger::decide`] (command → events,
//! or an error, changing nothing) and [`Ledger::evolve`] (apply one event). [`Ledger::execute`]
//! runs multi-step commands (billing runs, immediate cancellation) as decide/evolve steps.
//!
//! This file holds the state, the dispatch and the small catalog, payment, void and credit-note
//! decisions; the rest is split by behaviour: `subscriptions` (start, plan change, cancel),
//! `usage` (recording usage), `billing` (billing runs, period-close invoices, drafts),
//! `add_ons` (add-ons, one-off invoices), `rules` (input rules) and `evolve` (applying events).

use std::collections::{BTreeMap, HashMap, HashSet};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use rust_decimal::Decimal;

use crate::calendar::Period;
use crate::catalog::{check_tax_rate, Charge, Customer, Metric, Plan, PlanRef};
use crate::commands::{Command, Context, PaymentOutcome};
use crate::credit_note;
use crate::error::{DomainError, Violations, PLAN_OUT_OF_BOUNDS};
use crate::events::Event;
use crate::invoice::{Invoice, InvoiceAccount, InvoiceStatus, IssueReason};
use crate::rating::{is_rating_overflow, Aggregation, ChargeModel};
use crate::subscription::Subscription;

mod add_ons;
mod alerts;
mod anomalies;
mod billing;
mod coupons;
mod effective_dates;
mod evolve;
mod imported_invoices;
pub use imported_invoices::BILLED_HERE;
mod progressive;
mod rules;
mod subscriptions;
mod usage;
mod wallets;
pub use billing::check_billing_time;
pub use effective_dates::{
    BACKDATE_DAYS_LIMIT, BILLED_ELSEWHERE, CORRECTED_PERIODS_MAX, PLAN_CHANGED_LATER,
    USAGE_AFTER_END,
};
pub use rules::{
    check_not_future, latest_accepted, rated_units, METRIC_NOT_ON_PLAN, PAYMENT_BEFORE_ISSUE,
};
pub use subscriptions::BACKDATE_DAYS_MAX;
pub use usage::{
    usage_digest, usage_value, AMOUNTS_NOT_KEPT, USAGE_PROPERTIES_MAX, USAGE_PROPERTY_LEN_MAX,
    USAGE_VALUE_ABS_MAX,
};

/// Latest date a subscription may start or a billing run may reach: keeps every period and
/// trial end far inside the calendar's range (year 9999).
pub const DATE_MAX: Date = jiff::civil::date(9000, 1, 1);

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CustomerState {
    pub customer: Customer,
    #[serde(with = "jiff::fmt::serde::tz::required")]
    pub time_zone: TimeZone,
    /// Credit notes issued to the customer (the last one's number).
    #[serde(default)]
    pub credit_notes_issued: u32,
    /// Credit from `credit` notes not yet consumed (SPEC §8.3).
    #[serde(default)]
    pub credit_balance: Decimal,
    /// One-off invoices issued to the customer (the last one's number).
    #[serde(default)]
    pub one_off_invoices: u32,
    /// The coupons the customer holds, in the order applied (SPEC §8.2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coupons: Vec<crate::coupon::HeldCoupon>,
    /// The customer's wallets, in the order opened: the order they pay invoices in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wallets: Vec<String>,
}

/// What a usage command came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsageOutcome {
    Accepted(Vec<Event>),
    /// Same transaction id and payload as the event at this position: nothing to append.
    Duplicate {
        position: u64,
    },
}

/// What the caller knows of an earlier usage event with the same (subscription, transaction
/// id): its payload digest ([`usage_digest`]) and log position. The write model keeps no
/// per-event state; the command service looks transactions up in its dedup index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriorUsage {
    pub digest: u64,
    pub position: u64,
}

/// What validating a usage event established, so applying it computes nothing twice.
struct UsageFacts {
    period_start: Date,
    value: Decimal,
}

enum UsageCheck {
    New { facts: UsageFacts, invoice: Option<Box<Invoice>> },
    Duplicate { position: u64 },
}

/// The write model: every aggregate, folded from the log.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    pub customers: HashMap<String, CustomerState>,
    pub metrics: HashMap<String, Metric>,
    /// Plan versions by code; `plans[code][v - 1]` is version v.
    pub plans: HashMap<String, Vec<Plan>>,
    /// Ordered, so billing runs emit events in a deterministic order.
    pub subscriptions: BTreeMap<String, Subscription>,
    pub invoices: HashMap<String, InvoiceAccount>,
    /// Metrics that some published plan prices with a model that reads each event's amount
    /// (`percentage`): only their open periods keep per-event amounts. Derived from the plans.
    pub percentage_metrics: HashSet<String>,
    /// Log position of the event that created each catalog stream (`customer-<id>`,
    /// `metric-<code>`, `subscription-<id>`; `plan-<code>`: its latest version), so an
    /// identical re-run is answered as a replay (see [`Ledger::replay_position`]).
    pub created_at: HashMap<String, u64>,
    /// The add-on catalogue (SPEC §8.4).
    #[serde(default)]
    pub add_ons: HashMap<String, crate::add_on::AddOn>,
    /// The coupon catalogue (SPEC §8.2).
    #[serde(default)]
    pub coupons: HashMap<String, crate::coupon::Coupon>,
    /// Prepaid wallets by id (SPEC §8.1); ordered, so expiry events come in a fixed order.
    #[serde(default)]
    pub wallets: BTreeMap<String, crate::wallet::WalletAccount>,
    /// The newest closing totals per plan code (at most `anomaly::PLAN_TOTALS_MAX`, oldest
    /// first): what a subscription's first invoice on the plan is compared with.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub plan_totals: HashMap<String, Vec<Decimal>>,
}

/// The rated amounts of a subscription's open period so far (see [`Ledger::rated_usage`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatedUsage {
    pub period: Period,
    pub currency: crate::money::Currency,
    /// (metric code, amount rounded to the currency) per in-arrears usage charge.
    pub amounts: Vec<(String, Decimal)>,
}

impl Ledger {
    pub fn plan(&self, r: &PlanRef) -> &Plan {
        &self.plans[&r.code][r.version as usize - 1]
    }

    fn find_plan(&self, code: &str, version: Option<u32>) -> Result<&Plan, DomainError> {
        let versions = self.plans.get(code).ok_or_else(|| DomainError::not_found("plan", code))?;
        match version {
            None => Ok(versions.last().expect("published plans have a version")),
            Some(v) => versions
                .get((v as usize).wrapping_sub(1))
                .ok_or_else(|| DomainError::not_found("plan", format!("{code} version {v}"))),
        }
    }

    fn subscription(&self, id: &str) -> Result<&Subscription, DomainError> {
        self.subscriptions.get(id).ok_or_else(|| DomainError::not_found("subscription", id))
    }

    fn customer(&self, id: &str) -> Result<&CustomerState, DomainError> {
        self.customers.get(id).ok_or_else(|| DomainError::not_found("customer", id))
    }

    fn invoice(&self, id: &str) -> Result<&InvoiceAccount, DomainError> {
        self.invoices.get(id).ok_or_else(|| DomainError::not_found("invoice", id))
    }

    /// Subscription status at `today` (local date): pending, trialing, active, past_due, canceled.
    pub fn subscription_status(&self, sub: &Subscription, today: Date) -> &'static str {
        if sub.ends_on.is_some_and(|e| today >= e) || sub.next_close.is_none() {
            return "canceled";
        }
        if today < sub.start_date() {
            return "pending";
        }
        let past_due = sub.invoice_ids.iter().any(|id| {
            let inv = &self.invoices[id];
            let unpaid = matches!(inv.status, InvoiceStatus::Open | InvoiceStatus::Uncollectible);
            unpaid && inv.failed_attempts > 0
        });
        match (past_due, sub.in_trial(today)) {
            (true, _) => "past_due",
            (false, true) => "trialing",
            (false, false) => "active",
        }
    }

    // ---------------------------------------------------------------- decide

    /// Decides a single-step command. Multi-step commands go through [`Ledger::execute`].
    pub fn decide(&self, cmd: &Command, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        match cmd {
            Command::RegisterCustomer(c) => self.decide_register_customer(c),
            Command::UpdateCustomer { customer_id, name, tax_rate } => {
                self.decide_update_customer(customer_id, name, *tax_rate, ctx)
            }
            Command::DefineMetric(m) => self.decide_define_metric(m),
            Command::PublishPlan(p) => self.decide_publish_plan(p),
            Command::StartSubscription { .. } => self.decide_start(cmd, ctx),
            Command::ChangePlan { subscription_id, plan_code, plan_version, effective_date } => {
                self.decide_change_plan(
                    subscription_id,
                    plan_code,
                    *plan_version,
                    *effective_date,
                    ctx,
                )
            }
            Command::CancelSubscription { subscription_id, immediately, effective_date } => {
                self.decide_cancel(subscription_id, *immediately, *effective_date, ctx)
            }
            Command::RecordUsage(u) => match self.decide_usage(u, ctx, None)? {
                UsageOutcome::Accepted(events) => Ok(events),
                UsageOutcome::Duplicate { .. } => Ok(Vec::new()),
            },
            Command::RunBilling { as_of } => {
                check_billing_time(*as_of, ctx)?;
                let mut events = Vec::new();
                for sub in self.subscriptions.values() {
                    if let Some(step) = self.billing_step(sub, *as_of, ctx)? {
                        events.extend(step);
                    }
                }
                Ok(events)
            }
            Command::RecordPayment { invoice_id, outcome, occurred_at } => {
                self.decide_payment(invoice_id, outcome, *occurred_at, ctx)
            }
            Command::VoidInvoice { invoice_id, reason } => {
                self.decide_void(invoice_id, reason, ctx)
            }
            Command::DefineAddOn(a) => self.decide_define_add_on(a),
            Command::DefineCoupon(c) => self.decide_define_coupon(c),
            Command::ApplyCoupon { customer_id, coupon_code } => {
                self.decide_apply_coupon(customer_id, coupon_code, ctx)
            }
            Command::RemoveCoupon { customer_id, coupon_code } => {
                self.decide_remove_coupon(customer_id, coupon_code, ctx)
            }
            Command::IssueOneOffInvoice(req) => self.decide_one_off(req, ctx),
            Command::OpenWallet(w) => self.decide_open_wallet(w, ctx),
            Command::TopUpWallet(req) => self.decide_top_up(req, ctx),
            Command::CreateUsageAlert(alert) => self.decide_create_alert(alert, ctx),
            Command::ImportInvoice(inv) => self.decide_import_invoice(inv, ctx),
            Command::DeleteUsageAlert { subscription_id, alert_id } => {
                self.decide_delete_alert(subscription_id, alert_id, ctx)
            }
            Command::IssueCreditNote(req) => {
                let account = self.invoice(&req.invoice_id)?;
                let customer = self.customer(&account.invoice.customer_id)?;
                let number = customer.credit_notes_issued.checked_add(1).ok_or_else(|| {
                    DomainError::overflow(event_stream_of(account), "credit note numbers")
                })?;
                let note = credit_note::decide(account, number, req, ctx.now)?;
                Ok(vec![Event::CreditNoteIssued(note)])
            }
        }
    }

    /// Decides and applies a command, running billing steps until none is due (bounded by
    /// `policy.billing_steps_max` per subscription). `next_position` is the log position the
    /// first event will take. On error nothing has been applied.
    pub fn execute(
        &mut self,
        cmd: &Command,
        ctx: &Context,
        next_position: u64,
    ) -> Result<Vec<Event>, DomainError> {
        let mut events = match cmd {
            Command::RunBilling { as_of } => {
                check_billing_time(*as_of, ctx)?;
                self.execute_billing(*as_of, ctx, next_position)
            }
            Command::CancelSubscription { subscription_id, .. } => {
                let mut events = self.decide(cmd, ctx)?;
                self.apply_all(&events, next_position);
                // Service that has ended (or ends tonight) is billed at once: the periods up to
                // the end of service close now.
                let sub = &self.subscriptions[subscription_id];
                let tomorrow = crate::calendar::local_date(ctx.now, &sub.time_zone).tomorrow();
                if sub.ends_on.zip(tomorrow.ok()).is_some_and(|(end, t)| end <= t) {
                    let more = self.run_subscription(
                        subscription_id,
                        Timestamp::MAX,
                        ctx,
                        next_position + events.len() as u64,
                    );
                    events.extend(more);
                }
                Ok(events)
            }
            Command::RecordUsage(u) => {
                match self.record_usage(u.clone(), ctx, next_position, None)? {
                    UsageOutcome::Accepted(events) => Ok(events),
                    UsageOutcome::Duplicate { .. } => Ok(Vec::new()),
                }
            }
            _ => {
                let events = self.decide(cmd, ctx)?;
                self.apply_all(&events, next_position);
                Ok(events)
            }
        }?;
        let low = self.follow_wallets(&events, ctx.now, next_position + events.len() as u64);
        events.extend(low);
        Ok(events)
    }

    fn apply_all(&mut self, events: &[Event], first_position: u64) {
        for (i, e) in events.iter().enumerate() {
            self.evolve(e, first_position + i as u64);
        }
    }
    fn decide_register_customer(&self, c: &Customer) -> Result<Vec<Event>, DomainError> {
        c.validate()?;
        if self.customers.contains_key(&c.customer_id) {
            return Err(DomainError::Conflict(format!(
                "customer {} is already registered with other fields (an identical request is a \
                 replay; change a customer with UpdateCustomer)",
                c.customer_id
            )));
        }
        Ok(vec![Event::CustomerRegistered(c.clone())])
    }

    fn decide_update_customer(
        &self,
        id: &str,
        name: &Option<String>,
        tax_rate: Option<Decimal>,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let mut v = Violations::default();
        if let Some(n) = name {
            crate::catalog::check_text(&mut v, "name", n, true);
        }
        if let Some(r) = tax_rate {
            check_tax_rate(&mut v, r);
        }
        if name.is_none() && tax_rate.is_none() {
            v.push("name", "nothing to update: give name and/or tax_rate");
        }
        v.into_result()?;
        self.customer(id)?;
        Ok(vec![Event::CustomerUpdated {
            customer_id: id.to_string(),
            name: name.clone(),
            tax_rate,
            occurred_at: ctx.now,
        }])
    }

    fn decide_define_metric(&self, m: &Metric) -> Result<Vec<Event>, DomainError> {
        m.validate()?;
        if self.metrics.contains_key(&m.code) {
            return Err(DomainError::Conflict(format!(
                "metric {} is already defined otherwise (metrics are immutable; an identical \
                 request is a replay)",
                m.code
            )));
        }
        Ok(vec![Event::BillableMetricDefined(m.clone())])
    }

    fn decide_publish_plan(&self, p: &Plan) -> Result<Vec<Event>, DomainError> {
        p.validate()?;
        let mut v = Violations::default();
        for (i, c) in p.charges.iter().enumerate() {
            let metric = self
                .metrics
                .get(&c.metric_code)
                .ok_or_else(|| DomainError::not_found("metric", &c.metric_code))?;
            let percent = matches!(
                c.model,
                ChargeModel::Percentage { .. } | ChargeModel::GraduatedPercentage { .. }
            );
            if percent && metric.aggregation != Aggregation::Sum {
                v.push(
                    format!("charges[{i}].metric_code"),
                    "a percentage model rates amounts: it needs a sum metric",
                );
            }
            if c.pay_in_advance && metric.allow_negative {
                v.push(
                    format!("charges[{i}].pay_in_advance"),
                    format!(
                        "metric {} allows negative values: a negative event paid in advance \
                         would be a credit; bill it in arrears",
                        metric.code
                    ),
                );
            }
        }
        v.into_result()?;
        let version = self.plans.get(&p.code).map_or(0, |v| v.len() as u32) + 1;
        let mut plan = p.clone();
        plan.version = version;
        Ok(vec![Event::PlanPublished(plan)])
    }
    fn decide_payment(
        &self,
        id: &str,
        outcome: &PaymentOutcome,
        at: Timestamp,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let inv = self.invoice(id)?;
        let subject = format!("invoice-{id}");
        rules::check_payment_time(inv, at, ctx)?;
        match outcome {
            PaymentOutcome::Succeeded { amount } => {
                let currency = inv.invoice.currency;
                if *amount <= Decimal::ZERO || amount.scale() > currency.minor_units() {
                    return Err(DomainError::invalid(
                        "amount",
                        format!(
                            "must be positive with at most {} decimal places",
                            currency.minor_units()
                        ),
                    ));
                }
                if matches!(
                    inv.status,
                    InvoiceStatus::Paid | InvoiceStatus::Void | InvoiceStatus::Closed
                ) {
                    return Err(DomainError::precondition(
                        "INVOICE_NOT_PAYABLE",
                        subject,
                        format!("invoice {id} is {}", inv.status.as_str()),
                    ));
                }
                if *amount > inv.amount_due() {
                    return Err(DomainError::precondition(
                        "OVERPAYMENT",
                        subject,
                        format!("amount {amount} exceeds the amount due {}", inv.amount_due()),
                    ));
                }
                let mut events = vec![Event::PaymentSucceeded {
                    invoice_id: id.to_string(),
                    amount: *amount,
                    occurred_at: at,
                }];
                let due = inv.amount_due();
                events.extend(self.credits_usable_on_payment(&inv.invoice, *amount, due, at));
                Ok(events)
            }
            PaymentOutcome::Failed { reason } => {
                if inv.status != InvoiceStatus::Open {
                    return Err(DomainError::precondition(
                        "INVOICE_NOT_OPEN",
                        subject,
                        format!("invoice {id} is {}", inv.status.as_str()),
                    ));
                }
                let attempt = inv.failed_attempts + 1;
                let mut events = vec![Event::PaymentFailed {
                    invoice_id: id.to_string(),
                    reason: reason.clone(),
                    attempt,
                    occurred_at: at,
                }];
                if attempt >= ctx.policy.max_payment_attempts {
                    events.push(Event::InvoiceMarkedUncollectible {
                        invoice_id: id.to_string(),
                        occurred_at: at,
                    });
                }
                Ok(events)
            }
        }
    }

    fn decide_void(
        &self,
        id: &str,
        reason: &str,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let mut v = Violations::default();
        crate::catalog::check_text(&mut v, "reason", reason, false);
        v.into_result()?;
        let inv = self.invoice(id)?;
        if !inv.credits.credit_note_ids.is_empty() {
            return Err(DomainError::precondition(
                "INVOICE_NOT_VOIDABLE",
                format!("invoice-{id}"),
                format!(
                    "invoice {id} has credit notes ({}): correct it with another credit note",
                    inv.credits.credit_note_ids.join(", ")
                ),
            ));
        }
        if inv.invoice.reason == IssueReason::Progressive {
            return Err(DomainError::precondition(
                "INVOICE_NOT_VOIDABLE",
                format!("invoice-{id}"),
                format!(
                    "invoice {id} billed usage progressively; its usage is already recognized \
                     and deducted from the period's close: correct it with a credit note"
                ),
            ));
        }
        if let Some(why) = self.wallet_void_refusal(&inv.invoice) {
            return Err(DomainError::precondition(
                "INVOICE_NOT_VOIDABLE",
                format!("invoice-{id}"),
                why,
            ));
        }
        if inv.status != InvoiceStatus::Open || !inv.amount_paid.is_zero() {
            return Err(DomainError::precondition(
                "INVOICE_NOT_VOIDABLE",
                format!("invoice-{id}"),
                format!(
                    "only an open invoice with no payment can be voided; invoice {id} is {}",
                    inv.status.as_str()
                ),
            ));
        }
        Ok(vec![Event::InvoiceVoided {
            invoice_id: id.to_string(),
            reason: reason.to_string(),
            occurred_at: ctx.now,
        }])
    }
}

/// The stream a credit note's failure names: its customer's.
fn event_stream_of(account: &InvoiceAccount) -> String {
    format!("customer-{}", account.invoice.customer_id)
}

fn precondition(
    sub: &Subscription,
    kind: &'static str,
    description: impl Into<String>,
) -> DomainError {
    DomainError::precondition(kind, format!("subscription-{}", sub.subscription_id), description)
}

/// Rating a *stored* plan fails only on stored data (a log written before the input bounds):
/// a charge outside today's bounds is [`PLAN_OUT_OF_BOUNDS`] on the plan, an overflow is
/// [`DomainError::overflow`] of the subscription. Both are FAILED_PRECONDITION: the request is
/// fine, the plan cannot be rated (publish a new version within the bounds).
fn stored_plan_error<'a>(
    sub: &'a Subscription,
    plan: &'a Plan,
    charge: &'a Charge,
) -> impl Fn(DomainError) -> DomainError + 'a {
    move |e| {
        let what = format!("the {} charge on {}", charge.model.name(), charge.metric_code);
        match e {
            e if is_rating_overflow(&e) => DomainError::overflow(sub.subject(), what),
            DomainError::Invalid(violations) => {
                let detail = violations.iter().map(|v| format!("{}: {}", v.field, v.description));
                let detail = detail.collect::<Vec<_>>().join("; ");
                let description = format!(
                    "plan {} v{}: {what} is outside the input bounds ({detail}); publish a new \
                     version within them",
                    plan.code, plan.version
                );
                DomainError::precondition(
                    PLAN_OUT_OF_BOUNDS,
                    format!("plan-{}", plan.code),
                    description,
                )
            }
            e => e,
        }
    }
}

#[cfg(test)]
mod tests;
