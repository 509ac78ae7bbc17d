//! Commands: what callers ask for, already parsed from the wire into domain types, plus the
//! [`Context`] (time and policy) the shell passes in, so decisions replay deterministically.

use jiff::civil::Date;
use jiff::Timestamp;
use rust_decimal::Decimal;

use crate::calendar::Anchor;
use crate::catalog::{Customer, Metric, Plan};
use crate::events::Usage;

/// Billing policy; set by configuration, passed in with every command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Failed payment attempts after which an invoice is uncollectible (SPEC default 3).
    pub max_payment_attempts: u32,
    /// A period is closed only once `as_of - grace_period_secs` has passed its end.
    pub grace_period_secs: i64,
    /// How far past `now` a usage event's `occurred_at` may lie (clock skew allowance).
    pub usage_future_tolerance_secs: i64,
    /// Bound on billing steps (trial ends, period closes) one subscription takes in one run.
    pub billing_steps_max: u32,
    /// How many days before today a subscription may start, or a plan change or cancellation
    /// take effect (a back-dated command; see docs/effective-dates.md).
    pub backdate_days_max: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_payment_attempts: 3,
            grace_period_secs: 0,
            usage_future_tolerance_secs: 300,
            billing_steps_max: 1_000,
            backdate_days_max: crate::ledger::BACKDATE_DAYS_MAX,
        }
    }
}

/// What the shell passes in with a command: the time and the policy. Never read inside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub now: Timestamp,
    pub policy: Policy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentOutcome {
    Succeeded { amount: Decimal },
    Failed { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    RegisterCustomer(Customer),
    UpdateCustomer {
        customer_id: String,
        name: Option<String>,
        tax_rate: Option<Decimal>,
    },
    DefineMetric(Metric),
    /// `plan.version` is ignored: the ledger assigns the next version of the code.
    PublishPlan(Plan),
    StartSubscription {
        subscription_id: String,
        customer_id: String,
        plan_code: String,
        /// `None` = latest version.
        plan_version: Option<u32>,
        anchor: Anchor,
        /// `None` = today in the customer's time zone.
        start_date: Option<Date>,
        /// An imported subscription's cutover: a period boundary after `start_date`, today or
        /// earlier. The previous biller invoiced every period before it (with an in-advance
        /// plan, also the fee of the period starting on it); Accrual bills from it on. Its
        /// invoices can be imported as facts (`Command::ImportInvoice`).
        billed_until: Option<Date>,
    },
    ChangePlan {
        subscription_id: String,
        plan_code: String,
        plan_version: Option<u32>,
        /// The first day on the new plan (customer-local). `None`: an upgrade today, a
        /// downgrade at the end of the current period. Past (within `backdate_days_max`, after
        /// the subscription's last plan change), today or future.
        effective_date: Option<Date>,
    },
    CancelSubscription {
        subscription_id: String,
        /// Service ends at the end of today (prorated).
        immediately: bool,
        /// The first day without service (customer-local), past or future; exclusive of
        /// `immediately`. `None` with `immediately` false: the end of the current period.
        effective_date: Option<Date>,
    },
    RecordUsage(Usage),
    RunBilling {
        as_of: Timestamp,
    },
    RecordPayment {
        invoice_id: String,
        outcome: PaymentOutcome,
        occurred_at: Timestamp,
    },
    VoidInvoice {
        invoice_id: String,
        reason: String,
    },
    IssueCreditNote(crate::credit_note::CreditNoteRequest),
    DefineAddOn(crate::add_on::AddOn),
    DefineCoupon(crate::coupon::Coupon),
    ApplyCoupon {
        customer_id: String,
        coupon_code: String,
    },
    RemoveCoupon {
        customer_id: String,
        coupon_code: String,
    },
    IssueOneOffInvoice(crate::add_on::OneOffRequest),
    OpenWallet(crate::wallet::OpenWallet),
    TopUpWallet(crate::wallet::TopUpRequest),
    CreateUsageAlert(crate::alert::UsageAlert),
    DeleteUsageAlert {
        subscription_id: String,
        alert_id: String,
    },
    /// An invoice another biller issued, recorded as a fact (its own number and amounts).
    ImportInvoice(crate::imported_invoice::ImportedInvoice),
}
