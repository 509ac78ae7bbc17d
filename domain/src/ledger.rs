//! The whole write-side state and its two pure functions: [`Ledger::decide`] (command → events,
//! or an error, changing nothing) and [`Ledger::evolve`] (apply one event). [`Ledger::execute`]
//! runs multi-step commands (billing runs, immediate cancellation) as decide/evolve steps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use rust_decimal::Decimal;

use crate::calendar::{local_date, parse_time_zone, Cycle, Period};
use crate::catalog::{
    check_id, check_tax_rate, Charge, Customer, FeeTiming, Metric, Plan, PlanRef,
};
use crate::commands::{Command, Context, PaymentOutcome};
use crate::credit_note::{self, CreditDestination};
use crate::error::{DomainError, Violations, PLAN_OUT_OF_BOUNDS};
use crate::events::{Event, PlanChangeKind, Usage};
use crate::invoice::{
    build_invoice, Invoice, InvoiceAccount, InvoiceHeader, InvoiceStatus, IssueReason, LineDraft,
    LineKind,
};
use crate::money::checked_sum;
use crate::rating::{
    in_advance_fee, is_rating_overflow, Aggregation, ChargeModel, RatingInput, RunningAggregate,
    UsagePoint,
};
use crate::subscription::{add_usage, base_fee_line, credit_line, segment_lines, Subscription};

mod add_ons;
mod rules;
pub use rules::{
    check_not_future, latest_accepted, rated_units, METRIC_NOT_ON_PLAN, PAYMENT_BEFORE_ISSUE,
};

/// Largest absolute numeric usage value accepted (keeps rating far from Decimal overflow): 10^15.
/// (It was 999,998,482,350,080 by a wrong constant: the fuzz work made it exact.)
pub const USAGE_VALUE_ABS_MAX: Decimal = crate::money::UNITS_MAX;
/// Latest date a subscription may start or a billing run may reach: keeps every period and
/// trial end far inside the calendar's range (year 9999).
pub const DATE_MAX: Date = jiff::civil::date(9000, 1, 1);

/// Refuses billing times beyond [`DATE_MAX`], and later than the service clock plus the skew
/// allowed for usage: a run in the future would close periods that have not ended.
pub fn check_billing_time(as_of: Timestamp, ctx: &Context) -> Result<(), DomainError> {
    let limit = DATE_MAX.to_zoned(TimeZone::UTC).expect("in range").timestamp();
    if as_of >= limit {
        return Err(DomainError::invalid("as_of", format!("must be before {DATE_MAX}")));
    }
    check_not_future("as_of", as_of, ctx)
}

/// How far before today a subscription may start (a backdated start, e.g. a customer moved
/// from another system): its ended periods are billed by the next billing run.
pub const BACKDATE_DAYS_MAX: i64 = 366;

/// Most properties one usage event may carry.
pub const USAGE_PROPERTIES_MAX: usize = 32;
/// Longest property key or value.
pub const USAGE_PROPERTY_LEN_MAX: usize = 256;

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
            Command::ChangePlan { subscription_id, plan_code, plan_version } => {
                self.decide_change_plan(subscription_id, plan_code, *plan_version, ctx)
            }
            Command::CancelSubscription { subscription_id, immediately } => {
                self.decide_cancel(subscription_id, *immediately, ctx)
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
            Command::IssueOneOffInvoice(req) => self.decide_one_off(req, ctx),
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
        match cmd {
            Command::RunBilling { as_of } => {
                check_billing_time(*as_of, ctx)?;
                self.execute_billing(*as_of, ctx, next_position)
            }
            Command::CancelSubscription { subscription_id, immediately: true } => {
                let mut events = self.decide(cmd, ctx)?;
                self.apply_all(&events, next_position);
                let more = self.run_subscription(
                    subscription_id,
                    Timestamp::MAX,
                    ctx,
                    next_position + events.len() as u64,
                );
                events.extend(more);
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
        }
    }

    fn apply_all(&mut self, events: &[Event], first_position: u64) {
        for (i, e) in events.iter().enumerate() {
            self.evolve(e, first_position + i as u64);
        }
    }

    fn execute_billing(
        &mut self,
        as_of: Timestamp,
        ctx: &Context,
        next_position: u64,
    ) -> Result<Vec<Event>, DomainError> {
        let ids: Vec<String> = self.subscriptions.keys().cloned().collect();
        let mut events = Vec::new();
        for id in ids {
            let more = self.run_subscription(&id, as_of, ctx, next_position + events.len() as u64);
            events.extend(more);
        }
        Ok(events)
    }

    /// Applies billing steps of one subscription until none is due (at most
    /// `policy.billing_steps_max`). A step that fails (an amount overflow) stops this
    /// subscription's run; its earlier steps stand. The shell uses it to split a large billing
    /// run into bounded appends.
    pub fn run_subscription(
        &mut self,
        id: &str,
        as_of: Timestamp,
        ctx: &Context,
        position: u64,
    ) -> Vec<Event> {
        self.run_subscription_reporting(id, as_of, ctx, position).0
    }

    /// As [`Ledger::run_subscription`], also returning the error that stopped the run early, if
    /// one did, so the shell can report it (the input bounds make it unreachable for new data;
    /// a log written before them could still hold such a plan or usage).
    pub fn run_subscription_reporting(
        &mut self,
        id: &str,
        as_of: Timestamp,
        ctx: &Context,
        mut position: u64,
    ) -> (Vec<Event>, Option<DomainError>) {
        let mut events = Vec::new();
        for _ in 0..ctx.policy.billing_steps_max {
            let Some(sub) = self.subscriptions.get(id) else { break };
            match self.billing_step(sub, as_of, ctx) {
                Ok(Some(step)) => {
                    self.apply_all(&step, position);
                    position += step.len() as u64;
                    events.extend(step);
                }
                Ok(None) => break,
                Err(error) => return (events, Some(error)),
            }
        }
        (events, None)
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

    fn decide_start(&self, cmd: &Command, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        let Command::StartSubscription {
            subscription_id,
            customer_id,
            plan_code,
            plan_version,
            anchor,
            start_date,
        } = cmd
        else {
            unreachable!("called with StartSubscription")
        };
        let mut v = Violations::default();
        check_id(&mut v, "subscription_id", subscription_id);
        v.into_result()?;
        let customer = self.customer(customer_id)?;
        let plan = self.find_plan(plan_code, *plan_version)?;
        if self.subscriptions.contains_key(subscription_id) {
            return Err(DomainError::Conflict(format!(
                "subscription {subscription_id} already exists, started otherwise (an identical \
                 request is a replay)"
            )));
        }
        check_currency(customer, plan)?;
        let today = local_date(ctx.now, &customer.time_zone);
        let start = start_date.unwrap_or(today);
        let earliest = today
            .checked_sub(jiff::Span::new().days(BACKDATE_DAYS_MAX))
            .unwrap_or(jiff::civil::Date::MIN);
        if start < earliest || start >= DATE_MAX {
            return Err(DomainError::invalid(
                "start_date",
                format!("must be from {BACKDATE_DAYS_MAX} days ago to before {DATE_MAX}"),
            ));
        }
        let trial_end = (plan.trial_days > 0)
            .then(|| start.checked_add(jiff::Span::new().days(i64::from(plan.trial_days))))
            .transpose()
            .map_err(|_| DomainError::invalid("start_date", "trial end out of range"))?;
        let mut events = vec![Event::SubscriptionStarted {
            subscription_id: subscription_id.clone(),
            customer_id: customer_id.clone(),
            plan: plan.plan_ref(),
            anchor: *anchor,
            start_date: start,
            trial_end,
            occurred_at: ctx.now,
        }];
        if plan.fee_timing == FeeTiming::Advance && trial_end.is_none() {
            let sub = preview_subscription(self, &events[0]);
            let first = sub.cycle.first();
            let range = (first.start, first.end);
            let lines =
                segment_lines(&sub, &first, range, FeeTiming::Advance, |r| self.plan(r).clone())?;
            if !lines.is_empty() {
                events.push(Event::InvoiceIssued(self.invoice_for(
                    &sub,
                    first,
                    IssueReason::SubscriptionStart,
                    lines,
                    ctx.now,
                )?));
            }
        }
        Ok(events)
    }

    fn decide_change_plan(
        &self,
        id: &str,
        plan_code: &str,
        plan_version: Option<u32>,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let sub = self.subscription(id)?;
        let new_plan = self.find_plan(plan_code, plan_version)?;
        let customer = self.customer(&sub.customer_id)?;
        let today = local_date(ctx.now, &sub.time_zone);
        check_not_canceled(self, sub, today)?;
        check_no_pending_change(sub)?;
        check_currency(customer, new_plan)?;
        let old_plan = self.plan(sub.current_plan());
        if old_plan.plan_ref() == new_plan.plan_ref() {
            return Err(precondition(
                sub,
                "SAME_PLAN",
                "the subscription is already on this plan version",
            ));
        }
        if old_plan.interval != new_plan.interval {
            return Err(precondition(sub, "INTERVAL_CHANGE", "changing the billing interval is not supported; cancel and start a new subscription"));
        }
        self.check_percentage_rateable(sub, new_plan)?;
        let date = today.max(sub.start_date());
        if monthly_fee(sub, new_plan)? < monthly_fee(sub, old_plan)? {
            let period = sub.period_of(date).expect("in service");
            return Ok(vec![Event::PlanChangeScheduled {
                subscription_id: id.to_string(),
                plan: new_plan.plan_ref(),
                effective_date: period.end,
                occurred_at: ctx.now,
            }]);
        }
        let mut events = vec![Event::PlanChanged {
            subscription_id: id.to_string(),
            plan: new_plan.plan_ref(),
            kind: PlanChangeKind::Upgrade,
            effective_date: date,
        }];
        let period = sub.period_of(date).expect("in service");
        let mut lines = Vec::new();
        // Only if this period's in-advance billing has happened (at start, at the close of the
        // previous period, at trial end); otherwise that billing prices each plan's days itself.
        if advance_billing_done(sub, &period) {
            if old_plan.fee_timing == FeeTiming::Advance && sub.fee_billed_until >= period.end {
                lines.extend(credit_line(sub, old_plan, &period, date, period.end)?);
            }
            if new_plan.fee_timing == FeeTiming::Advance {
                lines.extend(base_fee_line(sub, new_plan, &period, date, period.end)?);
            }
        }
        if !lines.is_empty() {
            events.push(Event::InvoiceIssued(self.invoice_for(
                sub,
                period,
                IssueReason::PlanUpgrade,
                lines,
                ctx.now,
            )?));
        }
        Ok(events)
    }

    /// Refuses a move to `plan` when one of its percentage charges would rate an open period
    /// whose usage of that metric was recorded without per-event amounts (before any plan
    /// priced the metric by percentage): that period's invoice would be wrong.
    fn check_percentage_rateable(
        &self,
        sub: &Subscription,
        plan: &Plan,
    ) -> Result<(), DomainError> {
        for c in plan.charges.iter().filter(|c| c.model.needs_event_amounts()) {
            for (start, open) in &sub.open {
                if let Some(usage) = open.usage.get(&c.metric_code) {
                    let p = sub.period_of(*start).expect("open periods are in service");
                    check_amounts_kept(sub, &self.metrics[&c.metric_code], &p, usage)?;
                }
            }
        }
        Ok(())
    }

    fn decide_cancel(
        &self,
        id: &str,
        immediately: bool,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let sub = self.subscription(id)?;
        let today = local_date(ctx.now, &sub.time_zone);
        check_not_canceled(self, sub, today)?;
        let date = today.max(sub.start_date());
        // Immediately: service ends at the end of today (today is a used day); a subscription
        // that has not started yet ends before it starts.
        let effective_date = match (immediately, today < sub.start_date()) {
            (true, true) => sub.start_date(),
            (true, false) => {
                date.tomorrow().map_err(|_| DomainError::invalid("date", "out of range"))?
            }
            (false, _) => sub.period_of(date).expect("in service").end,
        };
        Ok(vec![Event::SubscriptionCanceled {
            subscription_id: id.to_string(),
            effective_date,
            immediately,
            occurred_at: ctx.now,
        }])
    }

    /// Validates one usage event against the subscription, metric and open periods. `prior` is
    /// the earlier event with the same (subscription, transaction id), if the caller knows one.
    pub fn decide_usage(
        &self,
        u: &Usage,
        ctx: &Context,
        prior: Option<PriorUsage>,
    ) -> Result<UsageOutcome, DomainError> {
        Ok(match self.check_usage(u, ctx, prior)? {
            UsageCheck::Duplicate { position } => UsageOutcome::Duplicate { position },
            UsageCheck::New { invoice, .. } => {
                let mut events = vec![Event::UsageRecorded(u.clone())];
                events.extend(invoice.map(|i| Event::InvoiceIssued(*i)));
                UsageOutcome::Accepted(events)
            }
        })
    }

    /// The order of checks: shape, subscription, then the transaction's history (a retry is a
    /// duplicate, or ALREADY_EXISTS, for the subscription's whole life: even once its period
    /// closed or its service ended), then everything that depends on the event being new.
    fn check_usage(
        &self,
        u: &Usage,
        ctx: &Context,
        prior: Option<PriorUsage>,
    ) -> Result<UsageCheck, DomainError> {
        check_usage_shape(u)?;
        let sub = self.subscription(&u.subscription_id)?;
        if let Some(prior) = prior {
            if prior.digest == usage_digest(u) {
                return Ok(UsageCheck::Duplicate { position: prior.position });
            }
            return Err(DomainError::Conflict(format!(
                "transaction {} of subscription {} was recorded with a different payload",
                u.transaction_id, u.subscription_id
            )));
        }
        let metric = self
            .metrics
            .get(&u.metric_code)
            .ok_or_else(|| DomainError::not_found("metric", &u.metric_code))?;
        let value = usage_value(metric, u)?;
        check_not_future("occurred_at", u.occurred_at, ctx)?;
        let date = local_date(u.occurred_at, &sub.time_zone);
        if !sub.is_in_service(date) {
            return Err(precondition(
                sub,
                "OUT_OF_SERVICE",
                format!("usage on {date} is outside the subscription's service"),
            ));
        }
        let period = sub.period_of(date).expect("in service");
        if sub.next_close.is_none_or(|n| period.start < n.start) {
            return Err(precondition(
                sub,
                "PERIOD_CLOSED",
                format!("the billing period {}..{} is already invoiced", period.start, period.end),
            ));
        }
        self.check_metric_on_plan(sub, u, date, &period)?;
        let distinct =
            metric.property.as_ref().and_then(|p| u.properties.get(p)).map(String::as_str);
        let point = UsagePoint { occurred_at: u.occurred_at, seq: u64::MAX, value, distinct };
        rules::check_usage_sign(sub, metric, &period, &point)?;
        check_period_usage(sub, metric, &period, value)?;
        let invoice = self.in_advance_invoice(sub, metric, &period, u, value, ctx)?.map(Box::new);
        Ok(UsageCheck::New { facts: UsageFacts { period_start: period.start, value }, invoice })
    }

    /// Records one usage event: decides it and, when accepted, applies it, computing each fact
    /// once (the ingest hot path).
    pub fn record_usage(
        &mut self,
        u: Usage,
        ctx: &Context,
        next_position: u64,
        prior: Option<PriorUsage>,
    ) -> Result<UsageOutcome, DomainError> {
        match self.check_usage(&u, ctx, prior)? {
            UsageCheck::Duplicate { position } => Ok(UsageOutcome::Duplicate { position }),
            UsageCheck::New { facts, invoice } => {
                self.apply_usage(&u, &facts, next_position);
                let mut events = vec![Event::UsageRecorded(u)];
                if let Some(invoice) = invoice {
                    let issued = Event::InvoiceIssued(*invoice);
                    self.evolve(&issued, next_position + 1);
                    events.push(issued);
                }
                Ok(UsageOutcome::Accepted(events))
            }
        }
    }

    fn in_advance_invoice(
        &self,
        sub: &Subscription,
        metric: &Metric,
        period: &Period,
        u: &Usage,
        value: Decimal,
        ctx: &Context,
    ) -> Result<Option<Invoice>, DomainError> {
        let plan = self.plan(sub.plan_at(local_date(u.occurred_at, &sub.time_zone)));
        let mut lines = Vec::new();
        for charge in
            plan.charges.iter().filter(|c| c.pay_in_advance && c.metric_code == metric.code)
        {
            let open = sub.open.get(&period.start);
            let mut before = open
                .and_then(|o| o.usage.get(&metric.code))
                .map_or_else(|| RunningAggregate::new(metric.aggregation), |m| m.aggregate.clone());
            let (start, end) =
                (period.start_instant(&sub.time_zone), period.end_instant(&sub.time_zone));
            let units_before = before.units(start, end)?;
            // The period's first event of the charge also pays what zero usage costs (a first
            // tier's flat fee, SPEC §4); a period without any event pays it at its close.
            let first_in_period = before.event_count() == 0;
            let usage = open.and_then(|o| o.usage.get(&metric.code));
            if let Some(u) = usage.filter(|_| charge.model.needs_event_amounts()) {
                check_amounts_kept(sub, metric, period, u)?;
            }
            let mut amounts = usage.map(|m| m.amounts.clone()).unwrap_or_default();
            let amounts_before: Vec<Decimal> = amounts.values().copied().collect();
            let distinct =
                metric.property.as_ref().and_then(|p| u.properties.get(p)).map(String::as_str);
            before.add(&UsagePoint {
                occurred_at: u.occurred_at,
                seq: u64::MAX,
                value,
                distinct,
            })?;
            // The new event sorts after every recorded one at the same instant (its position is larger).
            amounts.insert((u.occurred_at, u64::MAX), value);
            let amounts_after: Vec<Decimal> = amounts.values().copied().collect();
            let fee = in_advance_fee(
                &charge.model,
                &RatingInput { units: units_before, event_amounts: &amounts_before },
                &RatingInput { units: before.units(start, end)?, event_amounts: &amounts_after },
            )
            .and_then(|fee| match first_in_period {
                true => fee
                    .checked_add(charge.model.zero_usage_amount()?)
                    .ok_or_else(crate::rating::aggregation::overflow),
                false => Ok(fee),
            })
            .map_err(stored_plan_error(sub, plan, charge))?;
            if !fee.is_zero() {
                let note = "paid in advance";
                lines.push(rules::in_advance_line(metric, charge, note, value, period, fee));
            }
        }
        if lines.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.invoice_for(sub, *period, IssueReason::UsageInAdvance, lines, ctx.now)?))
    }

    /// The next billing step of a subscription due at `as_of`, if any: a trial end, or the
    /// close of its oldest open period (with the period's invoice).
    pub fn billing_step(
        &self,
        sub: &Subscription,
        as_of: Timestamp,
        ctx: &Context,
    ) -> Result<Option<Vec<Event>>, DomainError> {
        let Some(next) = sub.next_close else { return Ok(None) };
        let tz = &sub.time_zone;
        if let (Some(t), false) = (sub.trial_end, sub.trial_ended) {
            let ends_first = sub.ends_on.is_none_or(|e| t < e);
            if ends_first && t <= next.end && crate::calendar::local_midnight(t, tz) <= as_of {
                return self.trial_end_events(sub, t, ctx).map(Some);
            }
        }
        let grace = jiff::SignedDuration::from_secs(ctx.policy.grace_period_secs);
        let cutoff = if as_of == Timestamp::MAX {
            as_of
        } else {
            as_of.checked_sub(grace).unwrap_or(Timestamp::MIN)
        };
        if next.end_instant(tz) > cutoff {
            return Ok(None);
        }
        self.close_period(sub, next, ctx).map(Some)
    }

    fn trial_end_events(
        &self,
        sub: &Subscription,
        t: Date,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let mut events =
            vec![Event::TrialEnded { subscription_id: sub.subscription_id.clone(), date: t }];
        let period = sub.period_of(t).expect("trial ends in service");
        if t > period.start {
            let range = (t, period.end);
            let lines =
                segment_lines(sub, &period, range, FeeTiming::Advance, |r| self.plan(r).clone())?;
            if !lines.is_empty() {
                let reason = IssueReason::TrialEnd;
                events.push(Event::InvoiceIssued(
                    self.invoice_for(sub, period, reason, lines, ctx.now)?,
                ));
            }
        }
        Ok(events)
    }

    /// Closes period `p` (cut at the end of service): applies a due downgrade, rates usage,
    /// bills the base fee (arrears for `p`, or in advance for the next period), credits unused
    /// in-advance days on cancellation, and adds the minimum-commitment true-up.
    fn close_period(
        &self,
        sub: &Subscription,
        p: Period,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let mut events = Vec::new();
        let mut sub_after = None;
        if let Some((plan, date)) = &sub.pending_change {
            if *date == p.end && sub.ends_on.is_none_or(|e| e > p.end) {
                let change = Event::PlanChanged {
                    subscription_id: sub.subscription_id.clone(),
                    plan: plan.clone(),
                    kind: PlanChangeKind::Downgrade,
                    effective_date: *date,
                };
                sub_after = Some(preview_change(sub, plan.clone(), *date));
                events.push(change);
            }
        }
        let last_day = p.end.yesterday().unwrap_or(p.end).max(p.start);
        let rating_plan = self.plan(sub.plan_at(last_day));
        let plan_of = |r: &PlanRef| self.plan(r).clone();
        let mut lines = segment_lines(sub, &p, (p.start, p.end), FeeTiming::Arrears, plan_of)?;
        lines.extend(self.usage_lines(sub, rating_plan, &p)?);
        let cut_short = sub
            .ends_on
            .is_some_and(|e| e < sub.cycle.period_containing(p.start).expect("in service").end);
        if cut_short && sub.fee_billed_until > p.end {
            let full = sub.cycle.period_containing(p.start).expect("in service");
            // The plan that was charged for the unused days (an upgrade on the cut day counts).
            let plan = self.plan(sub.plan_at(p.end));
            if plan.fee_timing == FeeTiming::Advance {
                lines.extend(credit_line(sub, plan, &full, p.end, full.end)?);
            }
        }
        lines.extend(self.true_up_line(sub, rating_plan, &p, &lines)?);
        let continues = sub.ends_on.is_none_or(|e| e > p.end);
        if continues {
            let after = sub_after.as_ref().unwrap_or(sub);
            let next = sub.cycle.next(&sub.cycle.period_containing(p.start).expect("in service"));
            let next = after.truncate(next);
            let trial_over = sub.trial_end.is_none_or(|t| t <= next.start);
            if trial_over {
                let range = (next.start, next.end);
                lines.extend(segment_lines(after, &next, range, FeeTiming::Advance, plan_of)?);
            }
        }
        let reason = if cut_short { IssueReason::Cancellation } else { IssueReason::PeriodClose };
        events.push(Event::InvoiceIssued(self.invoice_for(sub, p, reason, lines, ctx.now)?));
        events.push(Event::BillingPeriodClosed {
            subscription_id: sub.subscription_id.clone(),
            period: p,
            closed_at: ctx.now,
        });
        Ok(events)
    }

    /// The current-usage draft of a subscription's open period containing `at`: what closing it
    /// now would invoice for it (arrears base fee, usage charges, commitment true-up), without
    /// the next period's in-advance fee. `None` when no open period contains `at`.
    pub fn draft_invoice(
        &self,
        subscription_id: &str,
        at: Timestamp,
    ) -> Result<Option<Invoice>, DomainError> {
        let sub = self.subscription(subscription_id)?;
        let date = local_date(at, &sub.time_zone).max(sub.start_date());
        let Some(p) =
            sub.period_of(date).filter(|p| sub.next_close.is_some_and(|n| p.start >= n.start))
        else {
            return Ok(None);
        };
        let last_day = p.end.yesterday().unwrap_or(p.end).max(p.start);
        let rating_plan = self.plan(sub.plan_at(last_day));
        let plan_of = |r: &PlanRef| self.plan(r).clone();
        let mut lines = segment_lines(sub, &p, (p.start, p.end), FeeTiming::Arrears, plan_of)?;
        lines.extend(self.usage_lines(sub, rating_plan, &p)?);
        lines.extend(self.true_up_line(sub, rating_plan, &p, &lines)?);
        let mut draft = self.invoice_for(sub, p, IssueReason::PeriodClose, lines, at)?;
        draft.invoice_id = format!("draft-{subscription_id}-{}", p.start);
        // A draft consumes nothing: the balance applies when the invoice is issued.
        draft.credit_applied = Decimal::ZERO;
        Ok(Some(draft))
    }

    /// What closing the open period starting `period_start` now would invoice for each
    /// in-arrears usage charge (rated with the plan of the period's last day, rounded per line
    /// like the invoice). `None` when no open period starts there. The read side recognizes
    /// usage revenue as it is consumed from the day-by-day increase of these (SPEC §5).
    pub fn rated_usage(
        &self,
        subscription_id: &str,
        period_start: Date,
    ) -> Result<Option<RatedUsage>, DomainError> {
        let sub = self.subscription(subscription_id)?;
        let open = sub.next_close.is_some_and(|n| n.start <= period_start);
        let Some(p) = sub.period_of(period_start).filter(|p| open && p.start == period_start)
        else {
            return Ok(None);
        };
        let last_day = p.end.yesterday().unwrap_or(p.end).max(p.start);
        let plan = self.plan(sub.plan_at(last_day));
        let amounts = self
            .usage_lines(sub, plan, &p)?
            .into_iter()
            .filter(|l| l.kind == LineKind::Usage)
            .map(|l| (l.metric_code.unwrap_or_default(), plan.currency_round(l.unrounded)))
            .collect();
        Ok(Some(RatedUsage { period: p, currency: plan.currency, amounts }))
    }

    fn usage_lines(
        &self,
        sub: &Subscription,
        plan: &Plan,
        p: &Period,
    ) -> Result<Vec<LineDraft>, DomainError> {
        let open = sub.open.get(&p.start);
        let (start, end) = (p.start_instant(&sub.time_zone), p.end_instant(&sub.time_zone));
        let mut lines = Vec::new();
        for charge in &plan.charges {
            let metric = &self.metrics[&charge.metric_code];
            let usage = open.and_then(|o| o.usage.get(&metric.code));
            if charge.pay_in_advance {
                lines.extend(self.unused_in_advance_line(sub, plan, charge, p, usage)?);
                continue;
            }
            let units = match usage {
                // A period cut to nothing (cancelled before it began) has no usage to rate.
                Some(u) if start < end => u.aggregate.units(start, end)?,
                _ => Decimal::ZERO,
            };
            // Only a percentage model reads each event's amount (O(events) to gather).
            let amounts: Vec<Decimal> = match usage {
                Some(u) if charge.model.needs_event_amounts() => {
                    check_amounts_kept(sub, metric, p, u)?;
                    u.amounts.values().copied().collect()
                }
                _ => Vec::new(),
            };
            let rating = RatingInput { units, event_amounts: &amounts };
            let amount =
                charge.model.rate(&rating).map_err(stored_plan_error(sub, plan, charge))?;
            lines.push(LineDraft {
                kind: LineKind::Usage,
                description: format!("{} ({})", metric.name, charge.model.name()),
                metric_code: Some(metric.code.clone()),
                charge_model: Some(charge.model.name().to_string()),
                units: Some(rules::rated_units(units)),
                service_period: *p,
                unrounded: amount,
            });
        }
        Ok(lines)
    }

    /// If the period's charges (this invoice's lines for `p` plus what was invoiced for `p`
    /// earlier) are below the plan's minimum commitment, prorated to the days of service, a
    /// true-up line adds the difference. Every step is checked (see [`DomainError::overflow`]).
    fn true_up_line(
        &self,
        sub: &Subscription,
        plan: &Plan,
        p: &Period,
        lines: &[LineDraft],
    ) -> Result<Option<LineDraft>, DomainError> {
        let Some(minimum) = plan.minimum_commitment else { return Ok(None) };
        let full = sub.full_days(p);
        let overflow = |what: &str| DomainError::overflow(sub.subject(), what);
        let Some(committed) = sub
            .cycle
            .period_containing(p.start)
            .map(|_| crate::calendar::prorate(minimum, p.days(), full))
        else {
            return Ok(None);
        };
        let committed = committed.ok_or_else(|| overflow("minimum commitment proration"))?;
        let earlier = sub.billed_by_period.get(&p.start).copied().unwrap_or_default();
        let spent = checked_sum(lines.iter().map(|l| plan.currency_round(l.unrounded)))
            .and_then(|s| s.checked_add(earlier))
            .ok_or_else(|| overflow("charges counted against the minimum commitment"))?;
        if spent >= committed {
            return Ok(None);
        }
        let unrounded =
            committed.checked_sub(spent).ok_or_else(|| overflow("minimum commitment true-up"))?;
        Ok(Some(LineDraft {
            kind: LineKind::MinimumCommitmentTrueUp,
            description: format!(
                "Minimum commitment true-up ({} committed)",
                plan.currency.round(committed)
            ),
            metric_code: None,
            charge_model: None,
            units: None,
            service_period: *p,
            unrounded,
        }))
    }

    /// The invoice of `lines` for `sub`, numbered after its earlier invoices, with the
    /// customer's currency and tax rate; an overflow is the subscription's error.
    fn invoice_for(
        &self,
        sub: &Subscription,
        period: Period,
        reason: IssueReason,
        lines: Vec<LineDraft>,
        now: Timestamp,
    ) -> Result<Invoice, DomainError> {
        let customer = &self.customers[&sub.customer_id].customer;
        let header = InvoiceHeader {
            invoice_id: format!("inv-{}-{}", sub.subscription_id, sub.invoice_ids.len() + 1),
            customer_id: sub.customer_id.clone(),
            subscription_id: sub.subscription_id.clone(),
            currency: customer.currency,
            period,
            issued_at: now,
            reason,
            tax_rate: customer.tax_rate,
        };
        let invoice = build_invoice(header, lines)?;
        Ok(with_credit_applied(&self.customers[&sub.customer_id], invoice))
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
                Ok(vec![Event::PaymentSucceeded {
                    invoice_id: id.to_string(),
                    amount: *amount,
                    occurred_at: at,
                }])
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

    // ---------------------------------------------------------------- evolve

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
                self.invoice_mut(invoice_id).status = InvoiceStatus::Void
            }
            Event::PaymentSucceeded { invoice_id, amount, .. } => {
                self.invoice_mut(invoice_id).pay(*amount)
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
        if !inv.credit_applied.is_zero() {
            let customer = self.customers.get_mut(&inv.customer_id).expect("customer exists");
            customer.credit_balance -= inv.credit_applied;
            assert!(customer.credit_balance >= Decimal::ZERO, "credit applied past the balance");
        }
        if inv.subscription_id.is_empty() {
            let customer = self.customers.get_mut(&inv.customer_id).expect("customer exists");
            customer.one_off_invoices += 1;
            let previous =
                self.invoices.insert(inv.invoice_id.clone(), InvoiceAccount::issued(inv.clone()));
            assert!(previous.is_none(), "invoice ids are unique");
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
                // Saturating: several in-range invoices for one period could still sum past
                // Decimal (a pre-bounds log); the true-up then errs on the safe side (no
                // true-up when saturated up, an overflow error when saturated down).
                let billed = sub.billed_by_period.entry(key).or_default();
                *billed = billed.saturating_add(line.amount);
            }
        }
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

    fn apply_usage(&mut self, u: &Usage, facts: &UsageFacts, position: u64) {
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
                sub.pending_change = None;
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
                let full = sub.cycle.period_containing(period.start).expect("in service");
                let ended = sub.ends_on.is_some_and(|e| e <= full.end);
                sub.next_close =
                    if ended { None } else { Some(sub.truncate(sub.cycle.next(&full))) };
            }
            other => unreachable!("not a subscription event: {}", other.type_name()),
        }
    }

    fn sub_mut(&mut self, id: &str) -> &mut Subscription {
        self.subscriptions.get_mut(id).expect("subscription exists")
    }
}

/// The subscription a `SubscriptionStarted` event creates.
fn preview_subscription(ledger: &Ledger, started: &Event) -> Subscription {
    let Event::SubscriptionStarted {
        subscription_id,
        customer_id,
        plan,
        anchor,
        start_date,
        trial_end,
        ..
    } = started
    else {
        unreachable!("called with SubscriptionStarted")
    };
    let interval = ledger.plan(plan).interval;
    let cycle = Cycle { interval, anchor: *anchor, start_date: *start_date };
    Subscription {
        subscription_id: subscription_id.clone(),
        customer_id: customer_id.clone(),
        time_zone: ledger.customers[customer_id].time_zone.clone(),
        next_close: Some(cycle.first()),
        cycle,
        plans: vec![(*start_date, plan.clone())],
        trial_end: *trial_end,
        trial_ended: false,
        pending_change: None,
        ends_on: None,
        fee_billed_until: *start_date,
        billed_by_period: BTreeMap::new(),
        open: BTreeMap::new(),
        invoice_ids: Vec::new(),
    }
}

/// The subscription as it would be after a plan change (for deciding the close that applies a
/// downgrade). Usage is not copied: nothing that prices base fees reads it.
fn preview_change(sub: &Subscription, plan: PlanRef, date: Date) -> Subscription {
    let mut after = sub.clone_header();
    apply_plan_change(&mut after, plan, date);
    after
}

fn apply_plan_change(sub: &mut Subscription, plan: PlanRef, date: Date) {
    sub.plans.retain(|(d, _)| *d < date);
    sub.plans.push((date, plan));
    sub.pending_change = None;
}

impl Subscription {
    /// A copy without the open periods' usage.
    fn clone_header(&self) -> Subscription {
        Subscription {
            subscription_id: self.subscription_id.clone(),
            customer_id: self.customer_id.clone(),
            time_zone: self.time_zone.clone(),
            cycle: self.cycle.clone(),
            plans: self.plans.clone(),
            trial_end: self.trial_end,
            trial_ended: self.trial_ended,
            pending_change: self.pending_change.clone(),
            ends_on: self.ends_on,
            next_close: self.next_close,
            fee_billed_until: self.fee_billed_until,
            billed_by_period: self.billed_by_period.clone(),
            open: BTreeMap::new(),
            invoice_ids: self.invoice_ids.clone(),
        }
    }
}

impl Plan {
    fn currency_round(&self, amount: Decimal) -> Decimal {
        self.currency.round(amount)
    }
}

/// `plan`'s monthly fee; an overflow is an error of `sub` naming the plan.
fn monthly_fee(sub: &Subscription, plan: &Plan) -> Result<Decimal, DomainError> {
    plan.monthly_fee().ok_or_else(|| {
        let what = format!("monthly base fee of plan {} v{}", plan.code, plan.version);
        DomainError::overflow(sub.subject(), what)
    })
}

/// `invoice` with the customer's credit balance applied: after tax (SPEC §8 order), as much
/// as the balance and the total allow.
fn with_credit_applied(customer: &CustomerState, mut invoice: Invoice) -> Invoice {
    invoice.credit_applied = customer.credit_balance.min(invoice.total).max(Decimal::ZERO);
    invoice
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

fn check_currency(customer: &CustomerState, plan: &Plan) -> Result<(), DomainError> {
    if customer.customer.currency != plan.currency {
        return Err(DomainError::precondition(
            "CURRENCY_MISMATCH",
            format!("plan-{}", plan.code),
            format!(
                "plan {} bills in {}, customer {} in {}",
                plan.code, plan.currency, customer.customer.customer_id, customer.customer.currency
            ),
        ));
    }
    Ok(())
}

fn check_not_canceled(ledger: &Ledger, sub: &Subscription, today: Date) -> Result<(), DomainError> {
    if sub.ends_on.is_some() || ledger.subscription_status(sub, today) == "canceled" {
        return Err(precondition(
            sub,
            "SUBSCRIPTION_CANCELED",
            format!("subscription {} is canceled", sub.subscription_id),
        ));
    }
    Ok(())
}

fn check_no_pending_change(sub: &Subscription) -> Result<(), DomainError> {
    if sub.pending_change.is_some() {
        return Err(precondition(
            sub,
            "CHANGE_PENDING",
            "a downgrade is already scheduled for the end of the period",
        ));
    }
    Ok(())
}

/// Whether period `p`'s in-advance base fee has been invoiced already (or never will be, being
/// all trial): `p` is the oldest open period and any trial has been processed.
fn advance_billing_done(sub: &Subscription, p: &Period) -> bool {
    let oldest_open = sub.next_close.is_some_and(|n| p.start <= n.start);
    let trial_done = sub.trial_end.is_none_or(|t| sub.trial_ended || t >= p.end);
    oldest_open && trial_done
}

fn check_usage_shape(u: &Usage) -> Result<(), DomainError> {
    let mut v = Violations::default();
    check_id(&mut v, "subscription_id", &u.subscription_id);
    check_id(&mut v, "transaction_id", &u.transaction_id);
    check_id(&mut v, "metric_code", &u.metric_code);
    if u.properties.len() > USAGE_PROPERTIES_MAX {
        v.push("properties", format!("at most {USAGE_PROPERTIES_MAX} properties"));
    }
    for (k, val) in &u.properties {
        if k.is_empty() || k.len() > USAGE_PROPERTY_LEN_MAX || val.len() > USAGE_PROPERTY_LEN_MAX {
            v.push(format!("properties[{k}]"), format!("keys 1 to {USAGE_PROPERTY_LEN_MAX} characters, values at most {USAGE_PROPERTY_LEN_MAX}"));
        }
    }
    v.into_result()
}

/// The numeric value a metric reads from a usage event (1 for count; 0 for unique_count).
pub fn usage_value(metric: &Metric, u: &Usage) -> Result<Decimal, DomainError> {
    let Some(property) = &metric.property else { return Ok(Decimal::ONE) };
    let field = format!("properties[{property}]");
    let raw = u.properties.get(property).ok_or_else(|| {
        DomainError::invalid(&field, format!("metric {} needs this property", metric.code))
    })?;
    if !metric.aggregation.is_numeric() {
        return Ok(Decimal::ZERO);
    }
    let value: Decimal = raw
        .parse()
        .map_err(|_| DomainError::invalid(&field, format!("{raw:?} is not a decimal number")))?;
    if value.abs() > USAGE_VALUE_ABS_MAX || value.scale() > crate::money::PRICE_SCALE_MAX {
        return Err(DomainError::invalid(
            &field,
            "must be at most 10^15 in magnitude with at most 12 decimal places",
        ));
    }
    Ok(value)
}

/// Refuses usage that would take its metric's usage in one billing period past
/// [`crate::money::UNITS_MAX`] (Σ|value|, or the event count): with that bound, rating and
/// invoicing the period can never overflow (see `money::UNITS_MAX`), so a billing run never
/// stalls on an overflow and never issues a wrong invoice. Refused at record time, changing
/// nothing; the usage already recorded stays billable.
fn check_period_usage(
    sub: &Subscription,
    metric: &Metric,
    period: &Period,
    value: Decimal,
) -> Result<(), DomainError> {
    let limit = crate::money::UNITS_MAX;
    let usage = sub.open.get(&period.start).and_then(|o| o.usage.get(&metric.code));
    let (magnitude, events) =
        usage.map_or((Decimal::ZERO, 0), |m| (m.aggregate.magnitude(), m.aggregate.event_count()));
    if magnitude.saturating_add(value.abs()) <= limit && Decimal::from(events) < limit {
        return Ok(());
    }
    let field = metric
        .property
        .as_ref()
        .map_or_else(|| "metric_code".to_string(), |p| format!("properties[{p}]"));
    Err(DomainError::invalid(
        field,
        format!(
            "would take the usage of metric {} in the billing period {}..{} past 10^15 \
             (Σ|value| so far {magnitude}, {events} events)",
            metric.code, period.start, period.end
        ),
    ))
}

/// The digest of a usage event's payload (everything but its ids) that tells a retry from a
/// different event under the same transaction id. Stable within one build (SipHash with fixed
/// keys); a dedup index that persists it confirms a hit against the event in the log.
pub fn usage_digest(u: &Usage) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (&u.metric_code, u.occurred_at.as_microsecond(), &u.properties).hash(&mut h);
    h.finish()
}

/// Kind of the FAILED_PRECONDITION when a percentage charge would rate usage recorded while no
/// published plan priced its metric by percentage (its per-event amounts were not kept).
pub const AMOUNTS_NOT_KEPT: &str = "AMOUNTS_NOT_KEPT";

/// A percentage charge rates every event's amount: refused (never a wrong invoice) when the
/// period holds events whose amounts were not kept.
fn check_amounts_kept(
    sub: &Subscription,
    metric: &Metric,
    p: &Period,
    usage: &crate::subscription::MetricUsage,
) -> Result<(), DomainError> {
    if usage.amounts_complete {
        return Ok(());
    }
    Err(precondition(
        sub,
        AMOUNTS_NOT_KEPT,
        format!(
            "usage of metric {} in the billing period {}..{} was recorded before any published \
             plan priced it by percentage, so its per-event amounts were not kept; a \
             percentage charge can rate it only from the next period",
            metric.code, p.start, p.end
        ),
    ))
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
