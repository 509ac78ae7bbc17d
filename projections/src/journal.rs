//! The double-entry `journal` read model with revenue recognition (SPEC §5, ASC 606).
//!
//! Every financial effect of the log is a balanced journal entry (Σ debits = Σ credits is
//! asserted before any entry is written), dated by its **business (effective) date**: the local
//! date, in the customer's time zone (`CustomerRegistered.time_zone`, UTC if unknown), of the
//! event's instant, or the day of a recognition schedule. Balances "as of D" are Σ of the
//! entries dated on or before D, whatever their log position: an invoice issued on Feb 1 for
//! January usage posts recognition dated Jan 31, and an in-advance invoice posts the whole
//! schedule of its service period (dated in the future relative to the log) when it is issued.
//!
//! # Accounts (per currency, never converted)
//!
//! Debit-normal: `accounts_receivable`, `unbilled_receivable`, `cash`, `bad_debt` (expense).
//! Credit-normal: `deferred_revenue`, `tax_payable`, `revenue:subscription`, `revenue:usage`,
//! `revenue:true_up`, `revenue:credit` (contra revenue, only for a credit line that matches no
//! credited base-fee line).
//!
//! # Entries
//!
//! * **Invoice issued** (issue date `I`): Dr accounts receivable `total`; Cr tax payable `tax`;
//!   for each line, each schedule entry dated before `I` (already earned: usage consumed, fees in
//!   arrears, true-ups) is Cr unbilled receivable, each one dated on or after `I` (in-advance
//!   fees, credits) is Cr deferred revenue. Negative amounts (credits) flip sides.
//! * **Recognition**, one entry per invoice and day of its schedules: Dr unbilled receivable
//!   (days before `I`) or deferred revenue (days from `I`) / Cr `revenue:<type>`.
//! * **Usage accrual**, one entry per subscription and day with usage: Dr unbilled receivable /
//!   Cr `revenue:usage` for the increase of the open period's rated usage that day (negative:
//!   a decrease, e.g. a cheaper plan now rates the period). When the period's invoice comes,
//!   its usage line credits unbilled receivable for what was accrued and recognizes only the
//!   rest (the final true-up, on the period's last day). A period that closes without a line
//!   for an accrued metric reverses that accrual on its last day.
//! * **Payment**: Dr cash / Cr accounts receivable; on an uncollectible invoice, Cr bad debt
//!   first (a recovery of what was written off), the rest Cr accounts receivable.
//!   A failed payment has no financial effect and posts nothing.
//! * **Uncollectible**: Dr bad debt / Cr accounts receivable for the amount due.
//! * **Void** (void date `V`): `void` reverses the issue entry (and a bad-debt write-off);
//!   `void_recognition` reverses, dated `V`, the revenue recognized before `V`; scheduled
//!   recognition entries dated on or after `V` are removed (never earned). A void after payments
//!   leaves accounts receivable negative by the amount paid (owed to the customer).
//!
//! # Recognition rules (`domain::recognition`)
//!
//! * Base fee: ratable by day over its service period (`ratable_schedule`).
//! * Usage in arrears: as consumed. The projection's [`UsageMeter`] (the domain ledger, folded
//!   from the log) re-rates a period when a run of its usage ends and the increase is accrued
//!   on the run's day (see [`crate::usage_meter`]); the invoice line's schedule is
//!   `usage_schedule(period, accrued cumulative, amount)`: the accruals, and on the last day
//!   whatever the invoiced amount differs by.
//! * Usage in advance: all on the invoice's issue date, clamped into the line's period.
//! * Minimum-commitment true-up: all on the last day of its period, `revenue:true_up`.
//! * Credit lines: matched against the most recently issued, not voided base-fee line of the
//!   same subscription (from an earlier invoice) whose service period contains the credit's
//!   first day; the credit's schedule is `recognition::credit_reversal` of that line's schedule
//!   (adjusted by earlier credits), so it reverses the unrecognized part first, and it is booked
//!   to the credited line's revenue account. A credit with no match is spread ratably
//!   (negatively) over its own period to `revenue:credit`.
//! * Tax is a liability, never revenue.
//!
//! # Keys (all values JSON, except the counter)
//!
//! * `seq` → next entry number (u64 BE).
//! * `cust/<customer_id>` → time zone name.
//! * `cur/<currency>` → `""` (currencies with postings).
//! * `j/<YYYY-MM-DD>/<seq:016x>` → [`JournalEntry`] (the journal, in date then posting order).
//! * `b/<currency>/<account>/<YYYY-MM-DD>` → net (debit − credit) of the account that day,
//!   as a decimal string; absent when zero.
//! * `inv/<invoice_id>` → the invoice's state: status, paid, written off, its entries and line
//!   schedules (see [`LineSchedule`]).
//! * `sub/<subscription_id>` → the last [`SUB_LINES_KEPT`] base-fee lines (credit matching).
//! * `w/<YYYY-MM>/<invoice_id>/<line:04>` → revenue of that line recognized in the month
//!   ([`WaterfallCell`]); absent when zero.
//! * `acc/<subscription_id>/<period start>` → what the open period has accrued, per day and
//!   metric, with each day's entry number (`ACCRUAL_SEQ_BASE | position of the day's first
//!   event`, so keys do not depend on batch boundaries); removed when the period closes.
//! * `draft/<subscription_id>` → the current-usage draft [`Invoice`]s of its open periods,
//!   oldest first
//!   (rewritten at the end of every batch that touches the subscription).
//!
//! # Limitations
//!
//! * Usage accruals enter the revenue waterfall when the period is invoiced (before that they
//!   belong to no invoice line); balances and the journal show them from the day of use.
//! * The usage meter holds the ledger in memory (without its dedup index) and is rebuilt by
//!   folding the log up to the checkpoint when the runner opens, from its snapshot (stored every
//!   [`METER_SNAPSHOT_INTERVAL_EVENTS_DEFAULT`] events and at a stop) and the log's tail after
//!   it when that snapshot is valid.
//! * Voiding the invoice of a credited line does not undo the credits against it (void those
//!   invoices too); voiding a credit gives its days back to the credited line.
//! * Balances as of a date sum the daily nets of each account from the first day: O(days ×
//!   accounts × currencies) per query.
//! * A payment on a void invoice posts Dr cash / Cr accounts receivable like any other.
//!
//! Values are a pure function of the event sequence (no batch state), so the digest does not
//! depend on batch boundaries. Dates before year 1 are refused (keys sort as text).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::ops::Bound;

use domain::calendar::{local_date, Period};
use domain::credit_note::{CreditDestination, CreditNote};
use domain::events::Event;
use domain::invoice::{Invoice, InvoiceLine, InvoiceStatus, LineKind};
use domain::money::{checked_sum, Currency};
use domain::recognition::{self, RevenueType};
use event_store::{Position, RecordedEvent};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::store::{corrupt, ReadModel, Snapshot, Writes};
use crate::usage_meter::{Accrual, UsageMeter};
use crate::{Projection, ProjectionError, Result};

/// The projection's name (tree `projection/journal`).
pub const NAME: &str = "journal";
/// Version of the stored records (their `v` field).
pub const RECORD_VERSION: u16 = 1;
/// Page size used when a caller asks for 0.
pub const PAGE_SIZE_DEFAULT: usize = 100;
/// Largest page; larger requests are served this many.
pub const PAGE_SIZE_MAX: usize = 1_000;
/// Base-fee lines remembered per subscription to match credits against.
pub const SUB_LINES_KEPT: usize = 16;
/// Longest waterfall range, in months.
pub const WATERFALL_MONTHS_MAX: i32 = 120;
/// Longest range of a paged waterfall ([`JournalReader::revenue_waterfall_page`]), in months.
pub const WATERFALL_PAGE_MONTHS_MAX: i32 = 1_200;
const SCAN_CHUNK: usize = 1_024;
/// Usage accrual entries are numbered `ACCRUAL_SEQ_BASE | position` (the position of the first
/// event of their day), apart from the posting counter, so their keys do not depend on batches.
pub const ACCRUAL_SEQ_BASE: u64 = 1 << 63;

/// An entry's identifier as replies and exports show it: the posting counter (`"17"`), or
/// `A<n>` for a usage accrual (`"A42"`, numbered apart: `n` is the log position of its day's
/// first event). A pure function of the log, as `seq` is: a rebuild gives the same ids.
pub fn entry_id(seq: u64) -> String {
    if seq & ACCRUAL_SEQ_BASE != 0 {
        format!("A{}", seq & !ACCRUAL_SEQ_BASE)
    } else {
        seq.to_string()
    }
}
const SEQ_KEY: &[u8] = b"seq";

/// A ledger account (per currency).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Account {
    AccountsReceivable,
    UnbilledReceivable,
    Cash,
    BadDebt,
    DeferredRevenue,
    TaxPayable,
    Revenue(RevenueType),
    /// What `credit` notes owe the customer until later invoices consume it (liability).
    CustomerCredit,
}

/// Every account, in report order.
pub const ACCOUNTS: [Account; 12] = [
    Account::AccountsReceivable,
    Account::UnbilledReceivable,
    Account::Cash,
    Account::BadDebt,
    Account::DeferredRevenue,
    Account::TaxPayable,
    Account::Revenue(RevenueType::Subscription),
    Account::Revenue(RevenueType::Usage),
    Account::Revenue(RevenueType::TrueUp),
    Account::Revenue(RevenueType::Credit),
    Account::Revenue(RevenueType::AddOn),
    Account::CustomerCredit,
];

impl Account {
    pub fn as_str(&self) -> &'static str {
        match self {
            Account::AccountsReceivable => "accounts_receivable",
            Account::UnbilledReceivable => "unbilled_receivable",
            Account::Cash => "cash",
            Account::BadDebt => "bad_debt",
            Account::DeferredRevenue => "deferred_revenue",
            Account::TaxPayable => "tax_payable",
            Account::Revenue(RevenueType::Subscription) => "revenue:subscription",
            Account::Revenue(RevenueType::Usage) => "revenue:usage",
            Account::Revenue(RevenueType::TrueUp) => "revenue:true_up",
            Account::Revenue(RevenueType::Credit) => "revenue:credit",
            Account::Revenue(RevenueType::AddOn) => "revenue:add_on",
            Account::CustomerCredit => "customer_credit",
        }
    }

    pub fn parse(name: &str) -> Option<Account> {
        ACCOUNTS.into_iter().find(|a| a.as_str() == name)
    }

    /// Assets and expenses (their balance is debit − credit); the others are credit-normal.
    pub fn is_debit_normal(&self) -> bool {
        matches!(
            self,
            Account::AccountsReceivable
                | Account::UnbilledReceivable
                | Account::Cash
                | Account::BadDebt
        )
    }
}

impl From<Account> for String {
    fn from(a: Account) -> String {
        a.as_str().to_string()
    }
}

impl TryFrom<String> for Account {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Account::parse(&s).ok_or_else(|| format!("unknown account {s:?}"))
    }
}

/// What produced an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    InvoiceIssued,
    Recognition,
    Payment,
    Uncollectible,
    Void,
    VoidRecognition,
    /// Usage revenue recognized as consumed (Dr unbilled receivable / Cr usage revenue), one
    /// entry per subscription and day; also its reversal when a period closes without
    /// invoicing a metric that had accrued.
    UsageAccrual,
    /// A credit note (SPEC §8.5): Dr deferred revenue (the unrecognized part of each credited
    /// line first), Dr revenue (the recognized part), Dr tax payable / Cr customer credit,
    /// accounts receivable or cash (its destination).
    CreditNote,
}

impl EntryKind {
    /// The name used on the wire and in exports (as serialized: snake case).
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::InvoiceIssued => "invoice_issued",
            EntryKind::Recognition => "recognition",
            EntryKind::Payment => "payment",
            EntryKind::Uncollectible => "uncollectible",
            EntryKind::Void => "void",
            EntryKind::VoidRecognition => "void_recognition",
            EntryKind::UsageAccrual => "usage_accrual",
            EntryKind::CreditNote => "credit_note",
        }
    }
}

/// One side of one account in an entry (exactly one of `debit`, `credit` is non-zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub account: Account,
    pub debit: Decimal,
    pub credit: Decimal,
}

/// A balanced journal entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub v: u16,
    /// Posting order (a counter over the whole journal).
    pub seq: u64,
    /// Business (effective) date.
    pub date: Date,
    pub kind: EntryKind,
    /// Empty for usage accruals (not invoiced yet).
    pub invoice_id: String,
    /// Set on usage accruals only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subscription_id: String,
    /// Set on credit-note entries only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credit_note_id: String,
    pub currency: Currency,
    /// Log position of the event that posted it.
    pub position: Position,
    pub postings: Vec<Posting>,
}

impl JournalEntry {
    pub fn total_debits(&self) -> Decimal {
        self.postings.iter().map(|p| p.debit).sum()
    }

    pub fn total_credits(&self) -> Decimal {
        self.postings.iter().map(|p| p.credit).sum()
    }
}

/// Debits and credits per account, gathered before an entry is written. A side that would
/// overflow `Decimal` is remembered, and [`Legs::postings`] then refuses the entry.
#[derive(Default)]
struct Legs {
    sides: BTreeMap<Account, (Decimal, Decimal)>,
    overflowed: Option<Account>,
}

impl Legs {
    /// Debits `account` (a negative amount credits it).
    fn dr(&mut self, account: Account, amount: Decimal) {
        if amount.is_zero() {
            return;
        }
        let sides = self.sides.entry(account).or_default();
        let (side, add) = if amount.is_sign_positive() {
            (&mut sides.0, amount)
        } else {
            (&mut sides.1, -amount)
        };
        match side.checked_add(add) {
            Some(sum) => *side = sum,
            None => self.overflowed = self.overflowed.or(Some(account)),
        }
    }

    /// Credits `account` (a negative amount debits it).
    fn cr(&mut self, account: Account, amount: Decimal) {
        self.dr(account, -amount);
    }

    /// The postings, or what overflowed; panics if they do not balance (a bug).
    fn postings(&self) -> Result<Vec<Posting>, String> {
        if let Some(account) = self.overflowed {
            return Err(format!("the {} side of the entry", account.as_str()));
        }
        let mut out = Vec::new();
        for (account, (debit, credit)) in &self.sides {
            if !debit.is_zero() {
                out.push(Posting { account: *account, debit: *debit, credit: Decimal::ZERO });
            }
            if !credit.is_zero() {
                out.push(Posting { account: *account, debit: Decimal::ZERO, credit: *credit });
            }
        }
        let debits = checked_sum(out.iter().map(|p| p.debit));
        let credits = checked_sum(out.iter().map(|p| p.credit));
        let (Some(debits), Some(credits)) = (debits, credits) else {
            return Err("the entry's total debits".to_string());
        };
        assert!(debits == credits, "unbalanced journal entry: debits {debits} credits {credits}");
        Ok(out)
    }
}

/// An invoice line, by invoice and index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LineRef {
    pub invoice_id: String,
    pub line_index: usize,
}

/// The recognition of one invoice line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineSchedule {
    pub kind: LineKind,
    /// The revenue account it is booked to (a matched credit takes the credited line's type).
    pub revenue_type: RevenueType,
    pub amount: Decimal,
    pub service_period: Period,
    /// For a credit line: the base-fee line it reverses.
    pub credited_line: Option<LineRef>,
    /// The line's own schedule as posted, in date order; after a void, the entries before the
    /// void date and the reversal on it.
    pub entries: Vec<(Date, Decimal)>,
    /// Σ of the credits of later credit lines against this line, per date (booked on those
    /// lines, listed here so later credits reverse what is still unrecognized).
    pub adjustments: Vec<(Date, Decimal)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct EntryRef {
    date: Date,
    seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct InvoiceState {
    v: u16,
    invoice_id: String,
    subscription_id: String,
    currency: Currency,
    time_zone: String,
    issue_date: Date,
    total: Decimal,
    paid: Decimal,
    written_off: Decimal,
    /// Σ `offset` credit notes and the customer credit applied at issue: no longer receivable.
    #[serde(default)]
    offset: Decimal,
    status: InvoiceStatus,
    voided_on: Option<Date>,
    issue_entry: EntryRef,
    scheduled: Vec<EntryRef>,
    lines: Vec<LineSchedule>,
}

impl InvoiceState {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("invoice states always serialize")
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let s: InvoiceState =
            serde_json::from_slice(bytes).map_err(|e| corrupt(NAME, format!("invoice: {e}")))?;
        if s.v != RECORD_VERSION {
            return Err(corrupt(NAME, format!("unknown invoice state version {}", s.v)));
        }
        Ok(s)
    }
}

/// Revenue of one line recognized in one month.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaterfallCell {
    pub invoice_id: String,
    pub line_index: usize,
    pub currency: Currency,
    pub revenue_type: RevenueType,
    pub amount: Decimal,
}

fn day_key(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
}

fn month_key(d: Date) -> String {
    format!("{:04}-{:02}", d.year(), d.month())
}

fn entry_key(r: EntryRef) -> Vec<u8> {
    format!("j/{}/{:016x}", day_key(r.date), r.seq).into_bytes()
}

fn balance_key(currency: Currency, account: Account, d: Date) -> Vec<u8> {
    format!("b/{}/{}/{}", currency.code(), account.as_str(), day_key(d)).into_bytes()
}

fn invoice_key(id: &str) -> Vec<u8> {
    format!("inv/{id}").into_bytes()
}

fn sub_key(id: &str) -> Vec<u8> {
    format!("sub/{id}").into_bytes()
}

fn customer_key(id: &str) -> Vec<u8> {
    format!("cust/{id}").into_bytes()
}

fn accrual_key(subscription_id: &str, period_start: Date) -> Vec<u8> {
    format!("acc/{subscription_id}/{}", day_key(period_start)).into_bytes()
}

fn draft_key(subscription_id: &str) -> Vec<u8> {
    format!("draft/{subscription_id}").into_bytes()
}

fn waterfall_key(d: Date, line: &LineRef) -> Vec<u8> {
    format!("w/{}/{}/{:04}", month_key(d), line.invoice_id, line.line_index).into_bytes()
}

fn parse_decimal(bytes: &[u8]) -> Result<Decimal> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(NAME, "balance is not a decimal"))
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(NAME, format!("{what}: {e}")))
}

fn inconsistent(position: Position, detail: impl Into<String>) -> ProjectionError {
    ProjectionError::Inconsistent { projection: NAME, position, detail: detail.into() }
}

/// An amount of the event at `position` past `Decimal`'s range (a log written before the input
/// bounds): the batch fails through the runner's error path and nothing of it is written.
fn overflow(position: Position, what: impl std::fmt::Display) -> ProjectionError {
    inconsistent(position, format!("{what} overflows the decimal range"))
}

/// A query's sum past `Decimal`'s range (INTERNAL at the service): nothing is made up.
fn sum_overflow(what: impl std::fmt::Display) -> ProjectionError {
    corrupt(NAME, format!("{what} overflows the decimal range when summed"))
}

/// `a + b`, or an [`overflow`] naming `what`.
fn plus(a: Decimal, b: Decimal, position: Position, what: impl Fn() -> String) -> Result<Decimal> {
    a.checked_add(b).ok_or_else(|| overflow(position, what()))
}

/// Largest line or accrual amount the recognition rules take: they count minor units in
/// `i128` and convert days and differences back to `Decimal`, which holds at most
/// `Decimal::MAX` minor units; a tenth of that leaves room for credit differences. The input
/// bounds keep every line below 10^25 (≥ 10^-1 of this for KWD's 3 places).
fn check_recognizable(
    amount: Decimal,
    currency: Currency,
    position: Position,
    what: impl Fn() -> String,
) -> Result<()> {
    let scale = Decimal::from(10u64.pow(currency.minor_units() + 1));
    match currency.round(amount).abs().checked_mul(scale) {
        Some(_) => Ok(()),
        None => Err(overflow(position, format_args!("{} in minor units", what()))),
    }
}

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
        3
    }

    fn apply(&mut self, w: &mut Writes<'_>, event: &RecordedEvent, decoded: &Event) -> Result<()> {
        let mut j = Journal { w, position: event.position };
        for accrual in self.meter.before(decoded) {
            j.accrue(&accrual)?;
        }
        match decoded {
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
            _ => {}
        }
        self.meter.after(decoded, event.position);
        Ok(())
    }

    fn finish_batch(&mut self, w: &mut Writes<'_>) -> Result<()> {
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

/// What a subscription's open period has accrued of usage revenue, per day and metric.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AccrualState {
    v: u16,
    currency: Option<Currency>,
    days: BTreeMap<Date, DayAccrual>,
    /// Metrics whose accruals an invoice line has taken over.
    invoiced: BTreeSet<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DayAccrual {
    /// The day's journal entry is `j/<day>/<seq>`.
    seq: u64,
    amounts: BTreeMap<String, Decimal>,
}

impl AccrualState {
    /// Σ accrued per metric not yet invoiced; `None` if a sum overflows.
    fn totals(&self) -> Option<BTreeMap<String, Decimal>> {
        let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
        for day in self.days.values() {
            for (metric, amount) in &day.amounts {
                if !self.invoiced.contains(metric) {
                    let total = totals.entry(metric.clone()).or_default();
                    *total = total.checked_add(*amount)?;
                }
            }
        }
        Some(totals)
    }
}

/// Applying one event.
struct Journal<'w, 'a> {
    w: &'w mut Writes<'a>,
    position: Position,
}

impl Journal<'_, '_> {
    fn check_date(&self, d: Date) -> Result<()> {
        if d.year() < 1 {
            return Err(inconsistent(self.position, format!("date {d} is before year 1")));
        }
        Ok(())
    }

    fn next_seq(&mut self) -> Result<u64> {
        let seq = match self.w.get(SEQ_KEY)? {
            None => 0,
            Some(b) => <[u8; 8]>::try_from(b.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(NAME, "seq is not 8 bytes"))?,
        };
        self.w.put(SEQ_KEY, &(seq + 1).to_be_bytes());
        Ok(seq)
    }

    /// Writes a balanced entry (none if it has no postings) and adds it to the daily balances.
    fn post(
        &mut self,
        date: Date,
        kind: EntryKind,
        invoice_id: &str,
        currency: Currency,
        legs: &Legs,
    ) -> Result<Option<EntryRef>> {
        self.post_for(date, kind, (invoice_id, ""), currency, legs)
    }

    /// [`Journal::post`] for a document: `(invoice_id, credit_note_id)`.
    fn post_for(
        &mut self,
        date: Date,
        kind: EntryKind,
        (invoice_id, credit_note_id): (&str, &str),
        currency: Currency,
        legs: &Legs,
    ) -> Result<Option<EntryRef>> {
        let postings = legs.postings().map_err(|what| {
            overflow(self.position, format_args!("{kind:?} of invoice {invoice_id}: {what}"))
        })?;
        if postings.is_empty() {
            return Ok(None);
        }
        self.check_date(date)?;
        let seq = self.next_seq()?;
        let entry = JournalEntry {
            v: RECORD_VERSION,
            seq,
            date,
            kind,
            invoice_id: invoice_id.to_string(),
            subscription_id: String::new(),
            credit_note_id: credit_note_id.to_string(),
            currency,
            position: self.position,
            postings,
        };
        self.write_entry(&entry)?;
        Ok(Some(EntryRef { date, seq }))
    }

    fn write_entry(&mut self, entry: &JournalEntry) -> Result<()> {
        let r = EntryRef { date: entry.date, seq: entry.seq };
        self.w.put(entry_key(r), serde_json::to_vec(entry).expect("entries serialize"));
        self.w.put(format!("cur/{}", entry.currency.code()), "");
        self.add_to_balances(entry, Decimal::ONE)
    }

    fn load_accruals(&self, subscription_id: &str, period_start: Date) -> Result<AccrualState> {
        match self.w.get(&accrual_key(subscription_id, period_start))? {
            Some(b) => json(&b, "accruals"),
            None => Ok(AccrualState { v: RECORD_VERSION, ..AccrualState::default() }),
        }
    }

    /// Accrues, on the accrual's day, the increase of each metric's rated amount over what
    /// its period has accrued so far, and rewrites that day's usage entry.
    fn accrue(&mut self, a: &Accrual) -> Result<()> {
        let (sub, period) = (a.subscription_id.as_str(), a.rated.period);
        let mut state = self.load_accruals(sub, period.start)?;
        state.currency = Some(a.rated.currency);
        let position = self.position;
        let what = |m: &str| format!("usage accrual of subscription {sub}, metric {m}");
        let all = || overflow(position, what("(all)"));
        let mut deltas = state.totals().ok_or_else(all)?;
        deltas.values_mut().for_each(|v| *v = -*v);
        for (metric, amount) in &a.rated.amounts {
            check_recognizable(*amount, a.rated.currency, position, || what(metric))?;
            if !state.invoiced.contains(metric) {
                let delta = deltas.entry(metric.clone()).or_default();
                *delta = plus(*delta, *amount, position, || what(metric))?;
            }
        }
        let seq = ACCRUAL_SEQ_BASE | a.first;
        let day = state.days.entry(a.day).or_insert(DayAccrual { seq, amounts: BTreeMap::new() });
        let day_total = |d: &DayAccrual| checked_sum(d.amounts.values().copied());
        let before = day_total(day).ok_or_else(all)?;
        for (metric, delta) in deltas.into_iter().filter(|(_, d)| !d.is_zero()) {
            let amount = day.amounts.entry(metric.clone()).or_default();
            *amount = plus(*amount, delta, position, || what(&metric))?;
            if amount.is_zero() {
                day.amounts.remove(&metric);
            }
        }
        let after = day_total(day).ok_or_else(all)?;
        let r = EntryRef { date: a.day, seq: day.seq };
        self.w.put(accrual_key(sub, period.start), serde_json::to_vec(&state).expect("serialize"));
        if before != after {
            self.repost_accrual(r, sub, a.rated.currency, after)?;
        }
        Ok(())
    }

    /// Replaces the usage entry `r` of a subscription's day with one for `amount`.
    fn repost_accrual(
        &mut self,
        r: EntryRef,
        sub: &str,
        currency: Currency,
        amount: Decimal,
    ) -> Result<()> {
        self.check_date(r.date)?;
        if self.w.get(&entry_key(r))?.is_some() {
            self.unpost(r)?;
        }
        if amount.is_zero() {
            return Ok(());
        }
        let position = r.seq & !ACCRUAL_SEQ_BASE;
        self.write_entry(&usage_entry(r, sub, currency, amount, position)?)
    }

    /// The accruals of a usage line's metric and period, per day; the line takes them over.
    fn take_accrued(&mut self, subscription_id: &str, line: &InvoiceLine) -> Result<Entries> {
        let Some(metric) = line.metric_code.as_deref() else { return Ok(Vec::new()) };
        let start = line.service_period.start;
        let mut state = self.load_accruals(subscription_id, start)?;
        if state.days.is_empty() || !state.invoiced.insert(metric.to_string()) {
            return Ok(Vec::new());
        }
        let days = state.days.iter().filter_map(|(d, day)| Some((*d, *day.amounts.get(metric)?)));
        let accrued: Entries = days.collect();
        let bytes = serde_json::to_vec(&state).expect("accruals serialize");
        self.w.put(accrual_key(subscription_id, start), bytes);
        Ok(accrued)
    }

    /// When a period closes: reverses, on its last day, what metrics no invoice line took
    /// over had accrued (a charge the closing plan no longer has), and drops the accruals.
    fn close_accruals(&mut self, subscription_id: &str, period: &Period) -> Result<()> {
        let Some(bytes) = self.w.get(&accrual_key(subscription_id, period.start))? else {
            return Ok(());
        };
        let state: AccrualState = json(&bytes, "accruals")?;
        self.w.delete(accrual_key(subscription_id, period.start));
        let what = || format!("usage accruals of subscription {subscription_id} left at close");
        let left = state.totals().and_then(|t| checked_sum(t.into_values()));
        let left = left.ok_or_else(|| overflow(self.position, what()))?;
        let Some(currency) = state.currency.filter(|_| !left.is_zero()) else { return Ok(()) };
        let last = period.end.yesterday().unwrap_or(period.end).max(period.start);
        self.check_date(last)?;
        let r = EntryRef { date: last, seq: self.next_seq()? };
        self.write_entry(&usage_entry(r, subscription_id, currency, -left, self.position)?)
    }

    /// Removes a scheduled entry that will never be earned (void).
    fn unpost(&mut self, r: EntryRef) -> Result<()> {
        let key = entry_key(r);
        let bytes = self.w.get(&key)?.ok_or_else(|| corrupt(NAME, "scheduled entry missing"))?;
        let entry: JournalEntry = json(&bytes, "entry")?;
        self.add_to_balances(&entry, Decimal::NEGATIVE_ONE)?;
        self.w.delete(key);
        Ok(())
    }

    /// Adds `sign` × the entry's postings to the daily balances; an overflow names the
    /// account, currency, day and what the entry is for.
    fn add_to_balances(&mut self, entry: &JournalEntry, sign: Decimal) -> Result<()> {
        for p in &entry.postings {
            let key = balance_key(entry.currency, p.account, entry.date);
            let old = self.w.get(&key)?.map(|b| parse_decimal(&b)).transpose()?;
            let what = || {
                let of = match entry.invoice_id.as_str() {
                    "" => format!("usage accrual of subscription {}", entry.subscription_id),
                    id => format!("invoice {id}"),
                };
                let (account, cur) = (p.account.as_str(), entry.currency);
                format!("balance of {account} ({cur}) on {} adding {of}", entry.date)
            };
            // One side of a posting is zero: the net and its negation are exact.
            let net = (p.debit - p.credit) * sign;
            let new = plus(old.unwrap_or_default(), net, self.position, what)?;
            if new.is_zero() {
                self.w.delete(key);
            } else {
                self.w.put(key, new.to_string().into_bytes());
            }
        }
        Ok(())
    }

    fn add_to_waterfall(
        &mut self,
        d: Date,
        line: &LineRef,
        currency: Currency,
        revenue_type: RevenueType,
        amount: Decimal,
    ) -> Result<()> {
        if amount.is_zero() {
            return Ok(());
        }
        self.check_date(d)?;
        let key = waterfall_key(d, line);
        let old: Option<WaterfallCell> =
            self.w.get(&key)?.map(|b| json(&b, "waterfall cell")).transpose()?;
        let what = || {
            format!(
                "waterfall of invoice {} line {} in {}",
                line.invoice_id,
                line.line_index,
                month_key(d)
            )
        };
        let total = plus(old.map_or(Decimal::ZERO, |c| c.amount), amount, self.position, what)?;
        if total.is_zero() {
            self.w.delete(key);
        } else {
            let cell = WaterfallCell {
                invoice_id: line.invoice_id.clone(),
                line_index: line.line_index,
                currency,
                revenue_type,
                amount: total,
            };
            self.w.put(key, serde_json::to_vec(&cell).expect("cells serialize"));
        }
        Ok(())
    }

    fn time_zone(&self, customer_id: &str) -> Result<(String, TimeZone)> {
        let name = match self.w.get(&customer_key(customer_id))? {
            Some(b) => String::from_utf8_lossy(&b).into_owned(),
            None => "UTC".to_string(),
        };
        let tz = domain::calendar::parse_time_zone(&name).unwrap_or(TimeZone::UTC);
        Ok((name, tz))
    }

    fn load(&self, invoice_id: &str) -> Result<InvoiceState> {
        match self.w.get(&invoice_key(invoice_id))? {
            Some(b) => InvoiceState::decode(&b),
            None => Err(inconsistent(self.position, format!("unknown invoice {invoice_id}"))),
        }
    }

    fn store(&mut self, s: &InvoiceState) {
        self.w.put(invoice_key(&s.invoice_id), s.encode());
    }

    fn local(&self, s: &InvoiceState, at: Timestamp) -> Date {
        let tz = domain::calendar::parse_time_zone(&s.time_zone).unwrap_or(TimeZone::UTC);
        local_date(at, &tz)
    }

    fn issue(&mut self, inv: &Invoice) -> Result<()> {
        let position = self.position;
        if self.w.get(&invoice_key(&inv.invoice_id))?.is_some() {
            return Err(inconsistent(position, format!("invoice {} issued twice", inv.invoice_id)));
        }
        let (tz_name, tz) = self.time_zone(&inv.customer_id)?;
        let issue_date = local_date(inv.issued_at, &tz);
        let cur = inv.currency;
        // A one-off invoice (no subscription) has no base-fee lines to match credits against.
        let one_off = inv.subscription_id.is_empty();
        let mut sub_lines: Vec<(LineRef, Period)> =
            match self.w.get(&sub_key(&inv.subscription_id))?.filter(|_| !one_off) {
                Some(b) => json(&b, "subscription lines")?,
                None => Vec::new(),
            };
        let mut issue = Legs::default();
        issue.dr(Account::AccountsReceivable, inv.total);
        issue.cr(Account::TaxPayable, inv.tax);
        // The customer's credit balance pays part of it at issue.
        issue.dr(Account::CustomerCredit, inv.credit_applied);
        issue.cr(Account::AccountsReceivable, inv.credit_applied);
        let mut days: BTreeMap<Date, Legs> = BTreeMap::new();
        let mut lines = Vec::with_capacity(inv.lines.len());
        for (i, line) in inv.lines.iter().enumerate() {
            let what = || format!("invoice {} line {i}", inv.invoice_id);
            check_recognizable(line.amount, cur, position, what)?;
            let this = LineRef { invoice_id: inv.invoice_id.clone(), line_index: i };
            let accrued = match line.kind {
                LineKind::Usage => self.take_accrued(&inv.subscription_id, line)?,
                _ => Vec::new(),
            };
            let (entries, revenue_type, credited_line) =
                self.schedule(line, cur, issue_date, &sub_lines, &accrued)?;
            let sum = checked_sum(entries.iter().map(|(_, a)| *a));
            let sum = sum.ok_or_else(|| overflow(position, format!("{} schedule", what())))?;
            if sum != line.amount {
                let detail = format!("line {i} schedule sums to {sum}, not {}", line.amount);
                return Err(inconsistent(position, detail));
            }
            // Accrued usage is already recognized: the invoice bills it out of unbilled
            // receivable; the rest of the schedule is posted now.
            let accrued_sum = checked_sum(accrued.iter().map(|(_, a)| *a));
            let accrued_sum =
                accrued_sum.ok_or_else(|| overflow(position, format!("{} accruals", what())))?;
            issue.cr(Account::UnbilledReceivable, accrued_sum);
            for (d, a) in &entries {
                self.add_to_waterfall(*d, &this, cur, revenue_type, *a)?;
            }
            let negated: Entries = accrued.iter().map(|(d, a)| (*d, -*a)).collect();
            let net = merge_nonzero(&entries, &negated).ok_or_else(|| {
                overflow(position, format!("{} schedule net of accruals", what()))
            })?;
            for (d, a) in net.iter() {
                let source = if *d < issue_date {
                    Account::UnbilledReceivable
                } else {
                    Account::DeferredRevenue
                };
                issue.cr(source, *a);
                let day = days.entry(*d).or_default();
                day.dr(source, *a);
                day.cr(Account::Revenue(revenue_type), *a);
            }
            lines.push(LineSchedule {
                kind: line.kind,
                revenue_type,
                amount: line.amount,
                service_period: line.service_period,
                credited_line,
                entries,
                adjustments: Vec::new(),
            });
        }
        let issue_entry = self
            .post(issue_date, EntryKind::InvoiceIssued, &inv.invoice_id, cur, &issue)?
            .unwrap_or(EntryRef { date: issue_date, seq: u64::MAX });
        let mut scheduled = Vec::new();
        for (d, legs) in &days {
            scheduled.extend(self.post(*d, EntryKind::Recognition, &inv.invoice_id, cur, legs)?);
        }
        for (i, line) in inv.lines.iter().enumerate() {
            if line.kind == LineKind::BaseFee {
                let r = LineRef { invoice_id: inv.invoice_id.clone(), line_index: i };
                sub_lines.push((r, line.service_period));
            }
        }
        let keep_from = sub_lines.len().saturating_sub(SUB_LINES_KEPT);
        sub_lines.drain(..keep_from);
        if !one_off {
            let sub_lines = serde_json::to_vec(&sub_lines).expect("line refs serialize");
            self.w.put(sub_key(&inv.subscription_id), sub_lines);
        }
        let status = if inv.due_at_issue() <= Decimal::ZERO {
            InvoiceStatus::Paid
        } else {
            InvoiceStatus::Open
        };
        self.store(&InvoiceState {
            v: RECORD_VERSION,
            invoice_id: inv.invoice_id.clone(),
            subscription_id: inv.subscription_id.clone(),
            currency: cur,
            time_zone: tz_name,
            issue_date,
            total: inv.total,
            paid: Decimal::ZERO,
            written_off: Decimal::ZERO,
            offset: inv.credit_applied,
            status,
            voided_on: None,
            issue_entry,
            scheduled,
            lines,
        });
        Ok(())
    }

    /// A line's schedule, revenue type and (for a matched credit) the credited line, whose
    /// adjustments it records.
    fn schedule(
        &mut self,
        line: &InvoiceLine,
        cur: Currency,
        issue_date: Date,
        sub_lines: &[(LineRef, Period)],
        accrued: &[(Date, Decimal)],
    ) -> Result<(Entries, RevenueType, Option<LineRef>)> {
        let p = line.service_period;
        Ok(match line.kind {
            LineKind::BaseFee | LineKind::MinimumCommitmentTrueUp | LineKind::AddOn => {
                let s = recognition::schedule_for_line(line, cur);
                (s.entries, s.revenue_type, None)
            }
            LineKind::Usage => {
                let mut total = Decimal::ZERO;
                let mut cumulative: Entries = Vec::with_capacity(accrued.len());
                for (d, a) in accrued {
                    let what = || format!("accrued usage of line {:?}", line.description);
                    total = plus(total, *a, self.position, what)?;
                    cumulative.push((*d, total));
                }
                let entries = recognition::usage_schedule(p, &cumulative, line.amount, cur);
                (entries, RevenueType::Usage, None)
            }
            LineKind::UsageInAdvance => {
                let s = recognition::in_advance_usage_schedule(line, cur, issue_date);
                (s.entries, s.revenue_type, None)
            }
            LineKind::Credit => match self.credited(p.start, sub_lines)? {
                Some((target, mut state)) => {
                    let original = &mut state.lines[target.line_index];
                    let what = || format!("credited schedule of invoice {}", target.invoice_id);
                    let effective = merge(&original.entries, &original.adjustments)
                        .ok_or_else(|| overflow(self.position, what()))?;
                    let reversal =
                        recognition::credit_reversal(&effective, line.amount, p.start, cur);
                    original.adjustments = merge_nonzero(&original.adjustments, &reversal)
                        .ok_or_else(|| overflow(self.position, what()))?;
                    let revenue_type = original.revenue_type;
                    self.store(&state);
                    (reversal, revenue_type, Some(target))
                }
                None => {
                    let s = recognition::schedule_for_line(line, cur);
                    (s.entries, s.revenue_type, None)
                }
            },
        })
    }

    /// The newest base-fee line (not voided) whose service period contains `day`.
    fn credited(
        &self,
        day: Date,
        sub_lines: &[(LineRef, Period)],
    ) -> Result<Option<(LineRef, InvoiceState)>> {
        for (r, period) in sub_lines.iter().rev() {
            if !period.contains(day) {
                continue;
            }
            let state = self.load(&r.invoice_id)?;
            if state.voided_on.is_none() && r.line_index < state.lines.len() {
                return Ok(Some((r.clone(), state)));
            }
        }
        Ok(None)
    }

    fn pay(&mut self, invoice_id: &str, amount: Decimal, at: Timestamp) -> Result<()> {
        let mut s = self.load(invoice_id)?;
        let date = self.local(&s, at);
        let mut legs = Legs::default();
        legs.dr(Account::Cash, amount);
        let recovery = if s.status == InvoiceStatus::Uncollectible {
            amount.min(s.written_off).max(Decimal::ZERO)
        } else {
            Decimal::ZERO
        };
        legs.cr(Account::BadDebt, recovery);
        // 0 <= recovery <= amount when amount >= 0; a negative amount recovers nothing.
        legs.cr(Account::AccountsReceivable, amount - recovery);
        self.post(date, EntryKind::Payment, invoice_id, s.currency, &legs)?;
        s.written_off -= recovery;
        s.paid =
            plus(s.paid, amount, self.position, || format!("payments of invoice {invoice_id}"))?;
        if s.status != InvoiceStatus::Void && s.paid.saturating_add(s.offset) >= s.total {
            s.status = InvoiceStatus::Paid;
        }
        self.store(&s);
        Ok(())
    }

    fn uncollectible(&mut self, invoice_id: &str, at: Timestamp) -> Result<()> {
        let mut s = self.load(invoice_id)?;
        if s.status == InvoiceStatus::Void {
            return Err(inconsistent(self.position, format!("invoice {invoice_id} is void")));
        }
        let date = self.local(&s, at);
        let due = s.total.checked_sub(s.paid).and_then(|x| x.checked_sub(s.written_off));
        let due = due.and_then(|x| x.checked_sub(s.offset));
        let what = || format!("amount due of invoice {invoice_id}");
        let due = due.ok_or_else(|| overflow(self.position, what()))?.max(Decimal::ZERO);
        let mut legs = Legs::default();
        legs.dr(Account::BadDebt, due);
        legs.cr(Account::AccountsReceivable, due);
        self.post(date, EntryKind::Uncollectible, invoice_id, s.currency, &legs)?;
        s.written_off = plus(s.written_off, due, self.position, what)?;
        s.status = InvoiceStatus::Uncollectible;
        self.store(&s);
        Ok(())
    }

    /// A credit note: each credited line's schedule loses the credited amount, its
    /// unrecognized part first (`recognition::credit_reversal` on the note's date, as a credit
    /// line reverses a base fee); the entry debits what that reverses (deferred revenue for
    /// days from the note's date, revenue for the excess recognized on it) and tax payable,
    /// and credits the destination.
    fn credit_note(&mut self, note: &CreditNote) -> Result<()> {
        let position = self.position;
        let mut s = self.load(&note.invoice_id)?;
        if s.voided_on.is_some() || s.currency != note.currency {
            let detail = format!("credit note {} on void or foreign invoice", note.credit_note_id);
            return Err(inconsistent(position, detail));
        }
        let date = self.local(&s, note.issued_at).max(s.issue_date);
        let cur = s.currency;
        let mut entry = Legs::default();
        entry.dr(Account::TaxPayable, note.tax);
        entry.cr(destination_account(note.destination), note.total);
        let mut days: BTreeMap<Date, Legs> = BTreeMap::new();
        for credited in &note.lines {
            let i = credited.line_index as usize;
            let what = || format!("credit note {} line {i}", note.credit_note_id);
            let Some(line) = s.lines.get_mut(i) else {
                return Err(inconsistent(position, format!("{}: no such line", what())));
            };
            let effective = merge(&line.entries, &line.adjustments)
                .ok_or_else(|| overflow(position, what()))?;
            let reversal = recognition::credit_reversal(&effective, -credited.amount, date, cur);
            line.adjustments = merge_nonzero(&line.adjustments, &reversal)
                .ok_or_else(|| overflow(position, what()))?;
            let revenue_type = line.revenue_type;
            let this = LineRef { invoice_id: note.invoice_id.clone(), line_index: i };
            for (d, a) in &reversal {
                self.add_to_waterfall(*d, &this, cur, revenue_type, *a)?;
                let source = if *d < s.issue_date {
                    Account::UnbilledReceivable
                } else {
                    Account::DeferredRevenue
                };
                entry.cr(source, *a);
                let day = days.entry(*d).or_default();
                day.dr(source, *a);
                day.cr(Account::Revenue(revenue_type), *a);
            }
        }
        let document = (note.invoice_id.as_str(), note.credit_note_id.as_str());
        self.post_for(date, EntryKind::CreditNote, document, cur, &entry)?;
        for (d, legs) in &days {
            let posted = self.post_for(*d, EntryKind::Recognition, document, cur, legs)?;
            s.scheduled.extend(posted);
        }
        if note.destination == CreditDestination::Offset {
            s.offset = plus(s.offset, note.total, position, || {
                format!("offsets of invoice {}", note.invoice_id)
            })?;
        }
        self.store(&s);
        Ok(())
    }

    fn void(&mut self, invoice_id: &str, at: Timestamp) -> Result<()> {
        let mut s = self.load(invoice_id)?;
        if s.voided_on.is_some() {
            return Err(inconsistent(self.position, format!("invoice {invoice_id} voided twice")));
        }
        let v = self.local(&s, at);
        let cur = s.currency;
        // Scheduled recognition on or after the void date is never earned.
        let (future, past): (Vec<EntryRef>, Vec<EntryRef>) =
            s.scheduled.iter().partition(|r| r.date >= v);
        for r in future {
            self.unpost(r)?;
        }
        s.scheduled = past;
        // Reverse the issue entry and any write-off.
        let mut reversal = Legs::default();
        if let Some(bytes) = self.w.get(&entry_key(s.issue_entry))? {
            let issued: JournalEntry = json(&bytes, "entry")?;
            for p in &issued.postings {
                reversal.cr(p.account, p.debit - p.credit);
            }
        }
        reversal.dr(Account::AccountsReceivable, s.written_off);
        reversal.cr(Account::BadDebt, s.written_off);
        self.post(v, EntryKind::Void, invoice_id, cur, &reversal)?;
        // A voided credit no longer reduces what later credits may reverse on its target.
        for line in &s.lines {
            let Some(target) = &line.credited_line else { continue };
            if target.invoice_id == s.invoice_id {
                continue;
            }
            let mut credited = self.load(&target.invoice_id)?;
            let negated: Entries = line.entries.iter().map(|(d, a)| (*d, -*a)).collect();
            let adjusted = &mut credited.lines[target.line_index].adjustments;
            let what = || format!("credited schedule of invoice {}", target.invoice_id);
            *adjusted =
                merge_nonzero(adjusted, &negated).ok_or_else(|| overflow(self.position, what()))?;
            self.store(&credited);
        }
        // Reverse, on the void date, what was recognized before it.
        let mut recognized = Legs::default();
        for (i, line) in s.lines.iter_mut().enumerate() {
            let this = LineRef { invoice_id: invoice_id.to_string(), line_index: i };
            let mut before = Decimal::ZERO;
            let mut kept = Vec::new();
            for (d, a) in &line.entries {
                if *d < v {
                    let source = if *d < s.issue_date {
                        Account::UnbilledReceivable
                    } else {
                        Account::DeferredRevenue
                    };
                    recognized.dr(Account::Revenue(line.revenue_type), *a);
                    recognized.cr(source, *a);
                    let what = || format!("recognized revenue of invoice {invoice_id} line {i}");
                    before = plus(before, *a, self.position, what)?;
                    kept.push((*d, *a));
                } else {
                    self.add_to_waterfall(*d, &this, cur, line.revenue_type, -*a)?;
                }
            }
            self.add_to_waterfall(v, &this, cur, line.revenue_type, -before)?;
            if !before.is_zero() {
                kept.push((v, -before));
            }
            line.entries = kept;
        }
        self.post(v, EntryKind::VoidRecognition, invoice_id, cur, &recognized)?;
        s.voided_on = Some(v);
        s.status = InvoiceStatus::Void;
        self.store(&s);
        Ok(())
    }
}

/// The account a credit note's money goes to.
fn destination_account(destination: CreditDestination) -> Account {
    match destination {
        CreditDestination::Credit => Account::CustomerCredit,
        CreditDestination::Refund => Account::Cash,
        CreditDestination::Offset => Account::AccountsReceivable,
    }
}

/// The usage entry `r` of a subscription: Dr unbilled receivable / Cr usage revenue for
/// `amount` (a negative amount reverses).
fn usage_entry(
    r: EntryRef,
    subscription_id: &str,
    currency: Currency,
    amount: Decimal,
    position: Position,
) -> Result<JournalEntry> {
    let mut legs = Legs::default();
    legs.dr(Account::UnbilledReceivable, amount);
    legs.cr(Account::Revenue(RevenueType::Usage), amount);
    let postings = legs.postings().map_err(|what| {
        overflow(position, format_args!("usage accrual of subscription {subscription_id}: {what}"))
    })?;
    Ok(JournalEntry {
        v: RECORD_VERSION,
        seq: r.seq,
        date: r.date,
        kind: EntryKind::UsageAccrual,
        invoice_id: String::new(),
        subscription_id: subscription_id.to_string(),
        credit_note_id: String::new(),
        currency,
        position,
        postings,
    })
}

/// Dated amounts in date order (a schedule).
type Entries = Vec<(Date, Decimal)>;
/// Net (debit − credit) per account.
type AccountNets = Vec<(Account, Decimal)>;

/// Σ of two date-ordered schedules, per date, in date order (a day of either is kept, so a
/// ratable schedule keeps one entry per day).
/// `None` if a day's sum overflows.
fn merge(a: &[(Date, Decimal)], b: &[(Date, Decimal)]) -> Option<Vec<(Date, Decimal)>> {
    let mut sum: BTreeMap<Date, Decimal> = BTreeMap::new();
    for (d, x) in a.iter().chain(b) {
        let day = sum.entry(*d).or_default();
        *day = day.checked_add(*x)?;
    }
    Some(sum.into_iter().collect())
}

/// `a + b` without its zero days (adjustments list the days that changed).
fn merge_nonzero(a: &[(Date, Decimal)], b: &[(Date, Decimal)]) -> Option<Vec<(Date, Decimal)>> {
    Some(merge(a, b)?.into_iter().filter(|(_, x)| !x.is_zero()).collect())
}

/// One row of a trial balance: the account's net balance in the debit or the credit column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrialBalanceRow {
    pub currency: Currency,
    pub account: Account,
    pub debit: Decimal,
    pub credit: Decimal,
}

/// Balances of one currency as of a date (each in its normal direction: assets debit − credit,
/// liabilities and revenue credit − debit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Balances {
    pub accounts_receivable: Decimal,
    pub unbilled_receivable: Decimal,
    pub cash: Decimal,
    pub bad_debt: Decimal,
    pub deferred_revenue: Decimal,
    pub tax_payable: Decimal,
    /// Owed to customers by `credit` notes (liability).
    pub customer_credit: Decimal,
    /// Recognized revenue by type (types with a non-zero balance).
    pub recognized_revenue: BTreeMap<RevenueType, Decimal>,
}

impl Balances {
    /// Σ recognized revenue over all types.
    pub fn total_revenue(&self) -> Decimal {
        self.recognized_revenue.values().copied().sum()
    }
}

/// One page of the journal, in date then posting order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPage {
    pub entries: Vec<JournalEntry>,
    /// Present when more entries follow; pass it back to get the next page.
    pub next_page_token: Option<String>,
    /// The read model's checkpoint the page was read at.
    pub position: Position,
}

/// The recognized revenue of one line per month.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaterfallRow {
    pub line: LineRef,
    pub currency: Currency,
    pub revenue_type: RevenueType,
    /// `(YYYY-MM, amount)` for the months with a non-zero amount, in order.
    pub months: Vec<(String, Decimal)>,
}

/// The line schedules of one issued invoice (see [`JournalReader::invoice_schedules`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceSchedules {
    pub invoice_id: String,
    pub currency: Currency,
    /// In line order: `lines[i]` is the schedule of the invoice's line `i`.
    pub lines: Vec<LineSchedule>,
}

/// One page of the revenue waterfall ([`JournalReader::revenue_waterfall_page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaterfallPage {
    pub rows: Vec<WaterfallRow>,
    /// Present when more lines follow; pass it back to get the next page.
    pub next_page_token: Option<String>,
    /// The read model's checkpoint the page was read at.
    pub position: Position,
}

/// Usage revenue of one day or month ([`JournalReader::usage_revenue`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRevenueBucket {
    /// The day, or the first of the month.
    pub start: Date,
    /// Days with usage revenue in the bucket.
    pub days: u32,
    pub amount: Decimal,
}

/// Read-only access to the journal read model.
#[derive(Clone)]
pub struct JournalReader {
    model: ReadModel,
}

impl JournalReader {
    /// Wraps the read model of a [`JournalProjection`] runner.
    pub fn new(model: ReadModel) -> Self {
        assert_eq!(model.name(), NAME, "not the journal read model");
        JournalReader { model }
    }

    pub fn model(&self) -> &ReadModel {
        &self.model
    }

    /// Net balance of every account with one as of the end of `as_of`, per currency (currency
    /// code, then [`ACCOUNTS`] order). Σ debit = Σ credit within each currency.
    pub fn trial_balance(&self, as_of: Date) -> Result<Vec<TrialBalanceRow>> {
        self.model.read(|snap| {
            let mut rows = Vec::new();
            for (currency, nets) in nets_as_of(snap, as_of)? {
                for (account, net) in nets {
                    let (debit, credit) = if net.is_sign_positive() {
                        (net, Decimal::ZERO)
                    } else {
                        (Decimal::ZERO, -net)
                    };
                    rows.push(TrialBalanceRow { currency, account, debit, credit });
                }
            }
            Ok(rows)
        })
    }

    /// Balances per currency (currency code order) as of the end of `as_of`.
    pub fn balances(&self, as_of: Date) -> Result<Vec<(Currency, Balances)>> {
        self.model.read(|snap| {
            let mut out = Vec::new();
            for (currency, nets) in nets_as_of(snap, as_of)? {
                let mut b = Balances::default();
                for (account, net) in nets {
                    match account {
                        Account::AccountsReceivable => b.accounts_receivable = net,
                        Account::UnbilledReceivable => b.unbilled_receivable = net,
                        Account::Cash => b.cash = net,
                        Account::BadDebt => b.bad_debt = net,
                        Account::DeferredRevenue => b.deferred_revenue = -net,
                        Account::TaxPayable => b.tax_payable = -net,
                        Account::CustomerCredit => b.customer_credit = -net,
                        Account::Revenue(t) => {
                            b.recognized_revenue.insert(t, -net);
                        }
                    }
                }
                out.push((currency, b));
            }
            Ok(out)
        })
    }

    /// Up to `page_size` entries (0 = [`PAGE_SIZE_DEFAULT`], at most [`PAGE_SIZE_MAX`]) after
    /// `page_token`, in date then posting order, read from one consistent view.
    pub fn entries(&self, page_token: Option<&str>, page_size: usize) -> Result<EntryPage> {
        if let Some(t) = page_token {
            parse_entry_token(t)?;
        }
        let size = if page_size == 0 { PAGE_SIZE_DEFAULT } else { page_size.min(PAGE_SIZE_MAX) };
        self.model.read(|snap| {
            let hits = snap.scan(b"j/", page_token.map(str::as_bytes), size + 1)?;
            let mut entries = Vec::with_capacity(size.min(hits.len()));
            for (_, value) in hits.iter().take(size) {
                entries.push(json::<JournalEntry>(value, "entry")?);
            }
            let next_page_token = match entries.last() {
                Some(last) if hits.len() > size => {
                    Some(format!("{}/{:016x}", day_key(last.date), last.seq))
                }
                _ => None,
            };
            Ok(EntryPage { entries, next_page_token, position: snap.checkpoint()? })
        })
    }

    /// Revenue recognized per line per month, for the months `from_month..=to_month` (any
    /// day of each), lines in invoice id then index order.
    pub fn revenue_waterfall(&self, from_month: Date, to_month: Date) -> Result<Vec<WaterfallRow>> {
        let months = (i32::from(to_month.year()) - i32::from(from_month.year())) * 12
            + i32::from(to_month.month())
            - i32::from(from_month.month());
        if !(0..WATERFALL_MONTHS_MAX).contains(&months) {
            let msg = format!("from_month..=to_month must span 1..={WATERFALL_MONTHS_MAX} months");
            return Err(ProjectionError::InvalidArgument(msg));
        }
        let first = from_month.first_of_month();
        self.model.read(|snap| {
            let mut rows: BTreeMap<LineRef, WaterfallRow> = BTreeMap::new();
            for m in 0..=months {
                let month = first
                    .checked_add(jiff::Span::new().months(m))
                    .map_err(|e| ProjectionError::InvalidArgument(e.to_string()))?;
                let label = month_key(month);
                let prefix = format!("w/{label}/");
                scan_all(snap, prefix.as_bytes(), |_, value| {
                    let cell: WaterfallCell = json(value, "waterfall cell")?;
                    let line = LineRef {
                        invoice_id: cell.invoice_id.clone(),
                        line_index: cell.line_index,
                    };
                    let row = rows.entry(line.clone()).or_insert_with(|| WaterfallRow {
                        line,
                        currency: cell.currency,
                        revenue_type: cell.revenue_type,
                        months: Vec::new(),
                    });
                    row.months.push((label.clone(), cell.amount));
                    Ok(true)
                })?;
            }
            Ok(rows.into_values().collect())
        })
    }

    /// Usage revenue recognized per day or month in [from, to] in `currency` (the daily net of
    /// `revenue:usage`: accrued as consumed, less reversals), buckets with a non-zero amount
    /// only, in date order. `days` counts the days with usage revenue in each bucket.
    pub fn usage_revenue(
        &self,
        from: Date,
        to: Date,
        granularity: crate::mrr::Granularity,
        currency: Currency,
    ) -> Result<Vec<UsageRevenueBucket>> {
        let account = Account::Revenue(RevenueType::Usage);
        let prefix = format!("b/{}/{}/", currency.code(), account.as_str());
        let mut buckets: Vec<UsageRevenueBucket> = Vec::new();
        self.model.read(|snap| {
            scan_all(snap, prefix.as_bytes(), |key, value| {
                let date: Date = std::str::from_utf8(key)
                    .ok()
                    .and_then(|k| k.parse().ok())
                    .ok_or_else(|| corrupt(NAME, "balance key is not a date"))?;
                if date > to {
                    return Ok(false);
                }
                if date >= from {
                    let start = granularity.bucket(date);
                    if buckets.last().is_none_or(|b| b.start != start) {
                        buckets.push(UsageRevenueBucket { start, days: 0, amount: Decimal::ZERO });
                    }
                    let bucket = buckets.last_mut().expect("pushed above");
                    bucket.days += 1;
                    bucket.amount =
                        bucket.amount.checked_sub(parse_decimal(value)?).ok_or_else(|| {
                            sum_overflow(format_args!("usage revenue ({currency}) of {start}"))
                        })?;
                }
                Ok(true)
            })
        })?;
        buckets.retain(|b| !b.amount.is_zero());
        Ok(buckets)
    }

    /// The current-usage drafts of the subscription's open periods, oldest first (what
    /// closing each would invoice so far), kept by the journal's usage meter; empty for an
    /// unknown subscription or once everything is invoiced.
    pub fn open_drafts(&self, subscription_id: &str) -> Result<Vec<Invoice>> {
        self.model.read(|snap| match snap.get(&draft_key(subscription_id))? {
            Some(b) => json(&b, "drafts"),
            None => Ok(Vec::new()),
        })
    }

    /// The draft of the oldest open period (see [`JournalReader::open_drafts`]).
    pub fn current_usage(&self, subscription_id: &str) -> Result<Option<Invoice>> {
        Ok(self.open_drafts(subscription_id)?.into_iter().next())
    }

    /// The recognition schedule of one line, if the invoice has been issued.
    pub fn line_schedule(
        &self,
        invoice_id: &str,
        line_index: usize,
    ) -> Result<Option<LineSchedule>> {
        self.model.read(|snap| {
            let Some(bytes) = snap.get(&invoice_key(invoice_id))? else {
                return Ok(None);
            };
            let state = InvoiceState::decode(&bytes)?;
            Ok(state.lines.into_iter().nth(line_index))
        })
    }

    /// The line schedules of each of `invoice_ids` issued so far (the others are left out), in
    /// the order given, read from one consistent view.
    pub fn invoice_schedules(&self, invoice_ids: &[String]) -> Result<Vec<InvoiceSchedules>> {
        self.model.read(|snap| {
            let mut out = Vec::with_capacity(invoice_ids.len());
            for id in invoice_ids {
                let Some(bytes) = snap.get(&invoice_key(id))? else { continue };
                let s = InvoiceState::decode(&bytes)?;
                let (invoice_id, currency, lines) = (s.invoice_id, s.currency, s.lines);
                out.push(InvoiceSchedules { invoice_id, currency, lines });
            }
            Ok(out)
        })
    }

    /// Whether the customer's `CustomerRegistered` has been applied.
    pub fn has_customer(&self, customer_id: &str) -> Result<bool> {
        self.model.read(|snap| Ok(snap.get(&customer_key(customer_id))?.is_some()))
    }

    /// As [`JournalReader::entries`], restricted to the entries dated in [from, to] (a `None`
    /// bound is open). A token from a page of the same bounds continues it.
    pub fn entries_between(
        &self,
        from: Option<Date>,
        to: Option<Date>,
        page_token: Option<&str>,
        page_size: usize,
    ) -> Result<EntryPage> {
        if let Some(t) = page_token {
            parse_entry_token(t)?;
        }
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                return Err(ProjectionError::InvalidArgument(format!("from {f} is after to {t}")));
            }
        }
        let size = if page_size == 0 { PAGE_SIZE_DEFAULT } else { page_size.min(PAGE_SIZE_MAX) };
        // Keys are `j/<date>/<seq>`: `<from>/` sorts before the first entry of `from`.
        let start = from.map(|d| format!("{}/", day_key(d)));
        let after = page_token.map(String::from).into_iter().chain(start).max();
        self.model.read(|snap| {
            let hits = snap.scan(b"j/", after.as_deref().map(str::as_bytes), size + 1)?;
            let mut entries = Vec::with_capacity(size.min(hits.len()));
            let mut more = false;
            for (_, value) in &hits {
                let entry = json::<JournalEntry>(value, "entry")?;
                if to.is_some_and(|t| entry.date > t) {
                    break;
                }
                if entries.len() == size {
                    more = true;
                    break;
                }
                entries.push(entry);
            }
            let next_page_token = match entries.last() {
                Some(last) if more => Some(format!("{}/{:016x}", day_key(last.date), last.seq)),
                _ => None,
            };
            Ok(EntryPage { entries, next_page_token, position: snap.checkpoint()? })
        })
    }

    /// The date of the last journal entry (recognition schedules are posted ahead, so it may
    /// lie after the last event's date), or `None` for an empty journal.
    pub fn last_entry_date(&self) -> Result<Option<Date>> {
        self.model.read(|_| {
            let Some(item) = self.model.tree().scan_prefix(b"j/").next_back() else {
                return Ok(None);
            };
            let (key, _) = item?;
            let date = std::str::from_utf8(&key[2..])
                .ok()
                .and_then(|rest| rest.split('/').next())
                .and_then(|d| d.parse::<Date>().ok())
                .ok_or_else(|| corrupt(NAME, format!("entry key {key:?} has no date")))?;
            Ok(Some(date))
        })
    }

    /// The months (their first day) in which some invoice line has recognized revenue in the
    /// waterfall, ascending. One seek per month.
    pub fn waterfall_months(&self) -> Result<Vec<Date>> {
        self.model.read(|snap| {
            let mut months = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let hit = snap.scan(b"w/", after.as_deref(), 1)?;
                let Some((key, _)) = hit.first() else {
                    return Ok(months);
                };
                let label = key
                    .get(2..9)
                    .filter(|_| key.get(9) == Some(&b'/'))
                    .and_then(|l| std::str::from_utf8(l).ok())
                    .ok_or_else(|| corrupt(NAME, format!("waterfall key {key:?} has no month")))?;
                let month: Date = format!("{label}-01")
                    .parse()
                    .map_err(|_| corrupt(NAME, format!("waterfall key {key:?} has no month")))?;
                months.push(month);
                // Past every key of this month: `/` then any byte below 0xff.
                after = Some([label.as_bytes(), b"/\xff"].concat());
            }
        })
    }

    /// Up to `page_size` lines (0 = [`PAGE_SIZE_DEFAULT`], at most [`PAGE_SIZE_MAX`]) of the
    /// revenue waterfall over the months `from_month..=to_month` (any day of each, at most
    /// [`WATERFALL_PAGE_MONTHS_MAX`] months), after `page_token`, read from one consistent view.
    /// Each row lists the line's months with a non-zero amount, in order. Lines come in key
    /// order: the text `<invoice_id>/<line index, 4 digits>` compared bytewise (this can differ
    /// from [`LineRef`]'s order, which [`Self::revenue_waterfall`] uses). Unlike that method,
    /// memory is bounded by the page: one cursor per month is merged.
    pub fn revenue_waterfall_page(
        &self,
        from_month: Date,
        to_month: Date,
        page_token: Option<&str>,
        page_size: usize,
    ) -> Result<WaterfallPage> {
        let labels = month_labels(from_month, to_month, WATERFALL_PAGE_MONTHS_MAX)?;
        if let Some(t) = page_token {
            parse_line_token(t)?;
        }
        let size = if page_size == 0 { PAGE_SIZE_DEFAULT } else { page_size.min(PAGE_SIZE_MAX) };
        self.model.read(|snap| {
            let tree = self.model.tree();
            let mut cursors = Vec::with_capacity(labels.len());
            let mut values: Vec<Option<sled::IVec>> = vec![None; labels.len()];
            // Min-heap of (line key after the month prefix, month index).
            let mut heap: BinaryHeap<Reverse<(Vec<u8>, usize)>> = BinaryHeap::new();
            for (i, label) in labels.iter().enumerate() {
                let prefix = format!("w/{label}/").into_bytes();
                let start = match page_token {
                    Some(t) => Bound::Excluded([prefix.as_slice(), t.as_bytes()].concat()),
                    None => Bound::Included(prefix.clone()),
                };
                cursors.push((prefix, tree.range((start, Bound::Unbounded))));
                advance_cursor(&mut cursors[i], i, &mut values, &mut heap)?;
            }
            let mut rows: Vec<WaterfallRow> = Vec::with_capacity(size.min(64));
            let mut last_key: Vec<u8> = Vec::new();
            while rows.len() < size {
                let Some(Reverse((line_key, _))) = heap.peek() else {
                    break;
                };
                let line_key = line_key.clone();
                let mut row: Option<WaterfallRow> = None;
                while let Some(Reverse((k, i))) = heap.peek() {
                    if *k != line_key {
                        break;
                    }
                    let i = *i;
                    heap.pop();
                    let value = values[i].take().expect("a heap entry has its value");
                    let cell: WaterfallCell = json(&value, "waterfall cell")?;
                    let row = row.get_or_insert_with(|| WaterfallRow {
                        line: LineRef {
                            invoice_id: cell.invoice_id.clone(),
                            line_index: cell.line_index,
                        },
                        currency: cell.currency,
                        revenue_type: cell.revenue_type,
                        months: Vec::new(),
                    });
                    row.months.push((labels[i].clone(), cell.amount));
                    advance_cursor(&mut cursors[i], i, &mut values, &mut heap)?;
                }
                rows.push(row.expect("the peeked key yields a row"));
                last_key = line_key;
            }
            let next_page_token = match heap.is_empty() {
                false if !rows.is_empty() => Some(
                    String::from_utf8(last_key)
                        .map_err(|_| corrupt(NAME, "waterfall key is not UTF-8"))?,
                ),
                _ => None,
            };
            Ok(WaterfallPage { rows, next_page_token, position: snap.checkpoint()? })
        })
    }
}

/// One month's cursor of [`JournalReader::revenue_waterfall_page`]: its key prefix and range.
type MonthCursor = (Vec<u8>, sled::Iter);

/// Moves month `i`'s cursor to its next key under its prefix, if any, onto the heap.
fn advance_cursor(
    cursor: &mut MonthCursor,
    i: usize,
    values: &mut [Option<sled::IVec>],
    heap: &mut BinaryHeap<Reverse<(Vec<u8>, usize)>>,
) -> Result<()> {
    let (prefix, iter) = cursor;
    if let Some(item) = iter.next() {
        let (key, value) = item?;
        if key.starts_with(prefix) {
            heap.push(Reverse((key[prefix.len()..].to_vec(), i)));
            values[i] = Some(value);
        }
    }
    Ok(())
}

/// The labels `YYYY-MM` of `from..=to` (any day of each month), at most `max` months.
fn month_labels(from: Date, to: Date, max: i32) -> Result<Vec<String>> {
    let months = (i32::from(to.year()) - i32::from(from.year())) * 12 + i32::from(to.month())
        - i32::from(from.month());
    if !(0..max).contains(&months) {
        let msg = format!("from_month..=to_month must span 1..={max} months");
        return Err(ProjectionError::InvalidArgument(msg));
    }
    let first = from.first_of_month();
    (0..=months)
        .map(|m| {
            first
                .checked_add(jiff::Span::new().months(m))
                .map(month_key)
                .map_err(|e| ProjectionError::InvalidArgument(e.to_string()))
        })
        .collect()
}

/// A waterfall page token: `<invoice_id>/<line index, at least 4 digits>`.
fn parse_line_token(token: &str) -> Result<()> {
    let valid = token.rsplit_once('/').is_some_and(|(invoice, line)| {
        !invoice.is_empty() && line.len() >= 4 && line.bytes().all(|b| b.is_ascii_digit())
    });
    if valid {
        Ok(())
    } else {
        Err(ProjectionError::InvalidArgument(format!("invalid page token {token:?}")))
    }
}

fn parse_entry_token(token: &str) -> Result<()> {
    let invalid = || ProjectionError::InvalidArgument(format!("invalid page token {token:?}"));
    let (date, seq) = token.split_once('/').ok_or_else(invalid)?;
    let date_ok = date.len() == 10 && date.parse::<Date>().is_ok();
    let seq_ok = seq.len() == 16 && seq.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if date_ok && seq_ok {
        Ok(())
    } else {
        Err(invalid())
    }
}

/// Calls `f(key after prefix, value)` for every key under `prefix`, in order, until it
/// returns false.
fn scan_all(
    snap: &Snapshot<'_>,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
) -> Result<()> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = snap.scan(prefix, after.as_deref(), SCAN_CHUNK)?;
        for (key, value) in &page {
            if !f(&key[prefix.len()..], value)? {
                return Ok(());
            }
        }
        match page.last() {
            Some((key, _)) if page.len() == SCAN_CHUNK => {
                after = Some(key[prefix.len()..].to_vec())
            }
            _ => return Ok(()),
        }
    }
}

/// Net (debit − credit) of every account with a non-zero balance as of `as_of`, per currency.
fn nets_as_of(snap: &Snapshot<'_>, as_of: Date) -> Result<Vec<(Currency, AccountNets)>> {
    let limit = day_key(as_of);
    let mut currencies = Vec::new();
    scan_all(snap, b"cur/", |code, _| {
        let code = std::str::from_utf8(code).map_err(|_| corrupt(NAME, "currency key"))?;
        currencies.push(Currency::parse(code).map_err(|_| corrupt(NAME, "currency key"))?);
        Ok(true)
    })?;
    let mut out = Vec::new();
    for currency in currencies {
        let mut nets = Vec::new();
        for account in ACCOUNTS {
            let prefix = format!("b/{}/{}/", currency.code(), account.as_str());
            let mut net = Decimal::ZERO;
            scan_all(snap, prefix.as_bytes(), |day, value| {
                if day > limit.as_bytes() {
                    return Ok(false);
                }
                net = net.checked_add(parse_decimal(value)?).ok_or_else(|| {
                    let (account, cur) = (account.as_str(), currency.code());
                    sum_overflow(format_args!("balance of {account} ({cur}) as of {as_of}"))
                })?;
                Ok(true)
            })?;
            if !net.is_zero() {
                nets.push((account, net));
            }
        }
        out.push((currency, nets));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use domain::catalog::Customer;
    use domain::invoice::{build_invoice, InvoiceHeader, IssueReason, LineDraft};
    use event_store::MemoryStore;
    use jiff::civil::date;
    use tempfile::TempDir;

    use super::*;
    use crate::{Runner, RunnerConfig};

    type Store = Arc<MemoryStore>;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    type Months = Vec<(String, Decimal)>;

    fn jan() -> Period {
        Period { start: date(2025, 1, 1), end: date(2025, 2, 1) }
    }

    fn customer(id: &str, tz: &str) -> Event {
        Event::CustomerRegistered(Customer {
            customer_id: id.into(),
            name: id.into(),
            currency: Currency::parse("USD").unwrap(),
            time_zone: tz.into(),
            tax_rate: Decimal::ZERO,
        })
    }

    /// An invoice of customer `c1`, subscription `sub`, issued at `at`.
    fn issued(
        id: &str,
        sub: &str,
        at: &str,
        tax: &str,
        lines: &[(LineKind, &str, Period)],
    ) -> Event {
        let header = InvoiceHeader {
            invoice_id: id.into(),
            customer_id: "c1".into(),
            subscription_id: sub.into(),
            currency: Currency::parse("USD").unwrap(),
            period: jan(),
            issued_at: ts(at),
            reason: IssueReason::PeriodClose,
            tax_rate: dec(tax),
        };
        let drafts = lines
            .iter()
            .map(|(kind, amount, period)| LineDraft {
                kind: *kind,
                description: kind.as_str().into(),
                metric_code: None,
                charge_model: None,
                units: None,
                service_period: *period,
                unrounded: dec(amount),
            })
            .collect();
        Event::InvoiceIssued(build_invoice(header, drafts).expect("in range"))
    }

    fn paid(id: &str, amount: &str, at: &str) -> Event {
        Event::PaymentSucceeded { invoice_id: id.into(), amount: dec(amount), occurred_at: ts(at) }
    }

    fn failed(id: &str, at: &str) -> Event {
        let reason = "card_declined".into();
        Event::PaymentFailed { invoice_id: id.into(), reason, attempt: 1, occurred_at: ts(at) }
    }

    fn voided(id: &str, at: &str) -> Event {
        Event::InvoiceVoided { invoice_id: id.into(), reason: "dup".into(), occurred_at: ts(at) }
    }

    fn uncollectible(id: &str, at: &str) -> Event {
        Event::InvoiceMarkedUncollectible { invoice_id: id.into(), occurred_at: ts(at) }
    }

    fn fee_30() -> Event {
        issued("inv-1", "s1", "2025-01-01T10:00:00Z", "10", &[(LineKind::BaseFee, "30", jan())])
    }

    fn upgrade() -> Event {
        let rest = Period { start: date(2025, 1, 16), end: date(2025, 2, 1) };
        issued(
            "inv-2",
            "s1",
            "2025-01-16T09:00:00Z",
            "10",
            &[(LineKind::Credit, "-15.483870967", rest), (LineKind::BaseFee, "32", rest)],
        )
    }

    async fn store_with(events: &[Event]) -> Store {
        let store = Arc::new(MemoryStore::new());
        for event in events {
            crate::testkit::append_event(&store, event).await;
        }
        store
    }

    fn runner(dir: &TempDir, store: &Store, batch: usize) -> Runner<Store, JournalProjection> {
        let db = crate::open_db(dir.path()).unwrap();
        let config = RunnerConfig { batch_events_max: batch, poll_interval_ms: 20 };
        Runner::open(&db, store.clone(), JournalProjection::default(), config).unwrap()
    }

    async fn reader(dir: &TempDir, events: &[Event]) -> JournalReader {
        let store = store_with(events).await;
        let mut runner = runner(dir, &store, 3);
        assert_eq!(runner.catch_up().await.unwrap(), events.len() as u64);
        JournalReader::new(runner.read_model())
    }

    fn usd(r: &JournalReader, as_of: Date) -> Balances {
        assert_balanced(r, as_of);
        let mut all = r.balances(as_of).unwrap();
        assert!(all.len() <= 1);
        all.pop().map(|(_, b)| b).unwrap_or_default()
    }

    fn revenue(b: &Balances, t: RevenueType) -> Decimal {
        b.recognized_revenue.get(&t).copied().unwrap_or_default()
    }

    /// (AR, unbilled, cash, bad debt, deferred, tax, total revenue)
    fn summary(b: &Balances) -> [Decimal; 7] {
        [
            b.accounts_receivable,
            b.unbilled_receivable,
            b.cash,
            b.bad_debt,
            b.deferred_revenue,
            b.tax_payable,
            b.total_revenue(),
        ]
    }

    fn amounts(xs: [&str; 7]) -> [Decimal; 7] {
        xs.map(dec)
    }

    fn assert_balanced(r: &JournalReader, as_of: Date) {
        let rows = r.trial_balance(as_of).unwrap();
        let debit: Decimal = rows.iter().map(|x| x.debit).sum();
        let credit: Decimal = rows.iter().map(|x| x.credit).sum();
        assert_eq!(debit, credit, "trial balance as of {as_of}: {rows:?}");
    }

    fn all_entries(r: &JournalReader) -> Vec<JournalEntry> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = r.entries(token.as_deref(), 7).unwrap();
            out.extend(page.entries);
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => return out,
            }
        }
    }

    fn postings(e: &JournalEntry) -> Vec<(&'static str, Decimal, Decimal)> {
        e.postings.iter().map(|p| (p.account.as_str(), p.debit, p.credit)).collect()
    }

    #[tokio::test]
    async fn in_advance_fee_with_tax_is_deferred_then_recognized_daily() {
        let dir = TempDir::new().unwrap();
        let r = reader(&dir, &[customer("c1", "UTC"), fee_30()]).await;
        let entries = all_entries(&r);
        assert_eq!(entries.len(), 32, "issue + 31 days");
        let issue = entries.iter().find(|e| e.kind == EntryKind::InvoiceIssued).unwrap();
        assert_eq!(issue.date, date(2025, 1, 1));
        let z = Decimal::ZERO;
        assert_eq!(
            postings(issue),
            [
                ("accounts_receivable", dec("33"), z),
                ("deferred_revenue", z, dec("30")),
                ("tax_payable", z, dec("3"))
            ]
        );
        let day3 = entries.iter().find(|e| e.date == date(2025, 1, 3)).unwrap();
        assert_eq!(
            postings(day3),
            [("deferred_revenue", dec("0.96"), z), ("revenue:subscription", z, dec("0.96"))]
        );
        let s = r.line_schedule("inv-1", 0).unwrap().unwrap();
        assert_eq!(s.entries.len(), 31);
        let first: Vec<Decimal> = s.entries[..3].iter().map(|(_, a)| *a).collect();
        assert_eq!(first, [dec("0.97"), dec("0.97"), dec("0.96")]);
        assert_eq!(usd(&r, date(2024, 12, 31)), Balances::default());
        let jan1 = usd(&r, date(2025, 1, 1));
        assert_eq!(summary(&jan1), amounts(["33", "0", "0", "0", "29.03", "3", "0.97"]));
        let jan15 = usd(&r, date(2025, 1, 15));
        assert_eq!(summary(&jan15), amounts(["33", "0", "0", "0", "15.48", "3", "14.52"]));
        let feb1 = usd(&r, date(2025, 2, 1));
        assert_eq!(summary(&feb1), amounts(["33", "0", "0", "0", "0", "3", "30"]));
        assert_eq!(revenue(&feb1, RevenueType::Subscription), dec("30"));
        assert!(r.line_schedule("inv-1", 1).unwrap().is_none());
        assert!(r.line_schedule("nope", 0).unwrap().is_none());
    }

    #[tokio::test]
    async fn spec_upgrade_credit_reverses_the_unrecognized_days_first() {
        let dir = TempDir::new().unwrap();
        let r = reader(&dir, &[customer("c1", "UTC"), fee_30(), upgrade()]).await;
        let credit = r.line_schedule("inv-2", 0).unwrap().unwrap();
        let target = LineRef { invoice_id: "inv-1".into(), line_index: 0 };
        assert_eq!(credit.credited_line, Some(target));
        assert_eq!(credit.revenue_type, RevenueType::Subscription);
        let original = r.line_schedule("inv-1", 0).unwrap().unwrap();
        let negated: Vec<(Date, Decimal)> =
            original.entries[15..].iter().map(|(d, a)| (*d, -*a)).collect();
        assert_eq!(credit.entries, negated, "exactly the unrecognized Jan 16..31");
        assert_eq!(credit.entries.iter().map(|(_, a)| *a).sum::<Decimal>(), dec("-15.48"));
        assert_eq!(original.adjustments, negated);
        // Before the upgrade: 15 days of basic.
        let jan15 = usd(&r, date(2025, 1, 15));
        assert_eq!(summary(&jan15), amounts(["33", "0", "0", "0", "15.48", "3", "14.52"]));
        // Jan 16: basic's unrecognized 15.48 reversed, pro 32.00 deferred, 2.00 of it earned;
        // AR 33 + 18.17, tax 3 + 1.65.
        let jan16 = usd(&r, date(2025, 1, 16));
        assert_eq!(summary(&jan16), amounts(["51.17", "0", "0", "0", "30", "4.65", "16.52"]));
        let jan31 = usd(&r, date(2025, 1, 31));
        assert_eq!(summary(&jan31), amounts(["51.17", "0", "0", "0", "0", "4.65", "46.52"]));
        assert_eq!(revenue(&jan31, RevenueType::Subscription), dec("46.52"));
        let rows = r.revenue_waterfall(date(2024, 12, 1), date(2025, 2, 28)).unwrap();
        let got: Vec<(String, usize, Months)> =
            rows.into_iter().map(|w| (w.line.invoice_id, w.line.line_index, w.months)).collect();
        let jan = |a: &str| vec![("2025-01".to_string(), dec(a))];
        assert_eq!(
            got,
            [
                ("inv-1".into(), 0, jan("30")),
                ("inv-2".into(), 0, jan("-15.48")),
                ("inv-2".into(), 1, jan("32"))
            ]
        );
    }

    #[tokio::test]
    async fn usage_and_true_up_in_arrears_accrue_to_unbilled_receivable() {
        let dir = TempDir::new().unwrap();
        let lines =
            [(LineKind::Usage, "8", jan()), (LineKind::MinimumCommitmentTrueUp, "2", jan())];
        let events = [
            customer("c1", "UTC"),
            issued("inv-u", "s1", "2025-02-01T00:00:00Z", "0", &lines),
            paid("inv-u", "10", "2025-02-03T00:00:00Z"),
        ];
        let r = reader(&dir, &events).await;
        let jan30 = usd(&r, date(2025, 1, 30));
        assert_eq!(summary(&jan30), amounts(["0", "0", "0", "0", "0", "0", "0"]));
        let jan31 = usd(&r, date(2025, 1, 31));
        assert_eq!(summary(&jan31), amounts(["0", "10", "0", "0", "0", "0", "10"]));
        assert_eq!(revenue(&jan31, RevenueType::Usage), dec("8"));
        assert_eq!(revenue(&jan31, RevenueType::TrueUp), dec("2"));
        let feb1 = usd(&r, date(2025, 2, 1));
        assert_eq!(summary(&feb1), amounts(["10", "0", "0", "0", "0", "0", "10"]));
        let feb3 = usd(&r, date(2025, 2, 3));
        assert_eq!(summary(&feb3), amounts(["0", "0", "10", "0", "0", "0", "10"]));
        let usage = r.line_schedule("inv-u", 0).unwrap().unwrap();
        assert_eq!(usage.entries.len(), 31);
        assert_eq!(usage.entries[30], (date(2025, 1, 31), dec("8")));
        assert!(usage.entries[..30].iter().all(|(_, a)| a.is_zero()));
    }

    #[tokio::test]
    async fn issue_date_is_the_customers_local_date() {
        // 03:00 UTC on Feb 1 is Jan 31 in New York: the Jan 31 usage is then deferred revenue
        // recognized the day of issue, not unbilled receivable.
        let dir = TempDir::new().unwrap();
        let events = [
            customer("c1", "America/New_York"),
            issued("inv-u", "s1", "2025-02-01T03:00:00Z", "0", &[(LineKind::Usage, "8", jan())]),
        ];
        let r = reader(&dir, &events).await;
        let issue = all_entries(&r).into_iter().find(|e| e.kind == EntryKind::InvoiceIssued);
        let issue = issue.unwrap();
        assert_eq!(issue.date, date(2025, 1, 31));
        assert_eq!(postings(&issue)[1], ("deferred_revenue", Decimal::ZERO, dec("8")));
        let jan31 = usd(&r, date(2025, 1, 31));
        assert_eq!(summary(&jan31), amounts(["8", "0", "0", "0", "0", "0", "8"]));
    }

    #[tokio::test]
    async fn voided_upgrade_gives_the_credited_days_back() {
        let dir = TempDir::new().unwrap();
        let events =
            [customer("c1", "UTC"), fee_30(), upgrade(), voided("inv-2", "2025-01-20T00:00:00Z")];
        let r = reader(&dir, &events).await;
        // Jan 19: basic 18.39 + credit reversal of Jan 16..19 (−3.87) + pro 4 × 2.00.
        let jan19 = usd(&r, date(2025, 1, 19));
        assert_eq!(summary(&jan19), amounts(["51.17", "0", "0", "0", "24", "4.65", "22.52"]));
        // From Jan 20 the upgrade never happened: basic's own schedule, inv-2 reversed.
        let jan20 = usd(&r, date(2025, 1, 20));
        assert_eq!(summary(&jan20), amounts(["33", "0", "0", "0", "10.65", "3", "19.35"]));
        let jan31 = usd(&r, date(2025, 1, 31));
        assert_eq!(summary(&jan31), amounts(["33", "0", "0", "0", "0", "3", "30"]));
        assert!(r.line_schedule("inv-1", 0).unwrap().unwrap().adjustments.is_empty());
        let credit = r.line_schedule("inv-2", 0).unwrap().unwrap();
        assert_eq!(credit.entries.len(), 5, "Jan 16..19 and the reversal on Jan 20");
        assert_eq!(credit.entries[4], (date(2025, 1, 20), dec("3.87")));
    }

    #[tokio::test]
    async fn a_credit_matches_the_newest_base_fee_line_covering_its_first_day() {
        // Canceled on Jan 16 after the upgrade: pro's Jan 17..31 (15 × 2.00) credited; basic's
        // days were already credited by the upgrade. A credit of another subscription with no
        // base fee to match is contra revenue, spread over its own period.
        let dir = TempDir::new().unwrap();
        let unused = Period { start: date(2025, 1, 17), end: date(2025, 2, 1) };
        let events = [
            customer("c1", "UTC"),
            fee_30(),
            upgrade(),
            issued(
                "inv-3",
                "s1",
                "2025-01-16T11:00:00Z",
                "0",
                &[(LineKind::Credit, "-30", unused)],
            ),
            issued("inv-c", "s7", "2025-01-01T00:00:00Z", "0", &[(LineKind::Credit, "-31", jan())]),
        ];
        let r = reader(&dir, &events).await;
        let cancel = r.line_schedule("inv-3", 0).unwrap().unwrap();
        let pro = LineRef { invoice_id: "inv-2".into(), line_index: 1 };
        assert_eq!(cancel.credited_line, Some(pro));
        assert_eq!(cancel.entries.len(), 15);
        assert!(cancel.entries.iter().all(|(_, a)| *a == dec("-2")));
        let other = r.line_schedule("inv-c", 0).unwrap().unwrap();
        assert_eq!((other.credited_line, other.revenue_type), (None, RevenueType::Credit));
        let jan31 = usd(&r, date(2025, 1, 31));
        // basic 14.52 + pro Jan 16 2.00; AR 33 + 18.17 − 30 − 31.
        assert_eq!(revenue(&jan31, RevenueType::Subscription), dec("16.52"));
        assert_eq!(revenue(&jan31, RevenueType::Credit), dec("-31"));
        assert_eq!(summary(&jan31), amounts(["-9.83", "0", "0", "0", "0", "4.65", "-14.48"]));
    }

    #[tokio::test]
    async fn failed_then_paid_moves_receivable_to_cash() {
        let dir = TempDir::new().unwrap();
        let events = [
            customer("c1", "UTC"),
            fee_30(),
            failed("inv-1", "2025-01-03T00:00:00Z"),
            paid("inv-1", "33", "2025-01-05T08:00:00Z"),
        ];
        let r = reader(&dir, &events).await;
        let kinds: Vec<EntryKind> = all_entries(&r)
            .iter()
            .map(|e| e.kind)
            .filter(|k| *k != EntryKind::Recognition)
            .collect();
        assert_eq!(
            kinds,
            [EntryKind::InvoiceIssued, EntryKind::Payment],
            "a failure posts nothing"
        );
        let jan4 = usd(&r, date(2025, 1, 4));
        assert_eq!((jan4.accounts_receivable, jan4.cash), (dec("33"), dec("0")));
        let jan5 = usd(&r, date(2025, 1, 5));
        assert_eq!((jan5.accounts_receivable, jan5.cash), (dec("0"), dec("33")));
    }

    #[tokio::test]
    async fn uncollectible_writes_off_the_amount_due_and_a_late_payment_recovers_it() {
        let dir = TempDir::new().unwrap();
        let events = [
            customer("c1", "UTC"),
            fee_30(),
            paid("inv-1", "5", "2025-01-10T00:00:00Z"),
            uncollectible("inv-1", "2025-01-20T00:00:00Z"),
            paid("inv-1", "28", "2025-02-03T00:00:00Z"),
        ];
        let r = reader(&dir, &events).await;
        let jan19 = usd(&r, date(2025, 1, 19));
        assert_eq!(
            (jan19.accounts_receivable, jan19.cash, jan19.bad_debt),
            (dec("28"), dec("5"), dec("0"))
        );
        let jan20 = usd(&r, date(2025, 1, 20));
        assert_eq!(
            (jan20.accounts_receivable, jan20.cash, jan20.bad_debt),
            (dec("0"), dec("5"), dec("28"))
        );
        let feb3 = usd(&r, date(2025, 2, 3));
        assert_eq!(summary(&feb3), amounts(["0", "0", "33", "0", "0", "3", "30"]));
    }

    #[tokio::test]
    async fn void_reverses_the_invoice_and_the_revenue_recognized_before_it() {
        let dir = TempDir::new().unwrap();
        let events = [
            customer("c1", "UTC"),
            issued("inv-v", "s1", "2025-01-01T00:00:00Z", "0", &[(LineKind::BaseFee, "31", jan())]),
            voided("inv-v", "2025-01-11T12:00:00Z"),
        ];
        let r = reader(&dir, &events).await;
        let jan10 = usd(&r, date(2025, 1, 10));
        assert_eq!(summary(&jan10), amounts(["31", "0", "0", "0", "21", "0", "10"]));
        for d in [date(2025, 1, 11), date(2025, 1, 20), date(2025, 3, 1)] {
            assert_eq!(usd(&r, d), Balances::default(), "{d}");
        }
        let entries = all_entries(&r);
        assert!(entries.iter().all(|e| e.date <= date(2025, 1, 11)), "no recognition after V");
        let void = entries.iter().find(|e| e.kind == EntryKind::VoidRecognition).unwrap();
        let z = Decimal::ZERO;
        assert_eq!(
            postings(void),
            [("deferred_revenue", z, dec("10")), ("revenue:subscription", dec("10"), z)]
        );
        let s = r.line_schedule("inv-v", 0).unwrap().unwrap();
        assert_eq!(s.entries.len(), 11);
        assert_eq!(s.entries[10], (date(2025, 1, 11), dec("-10")));
        assert!(r.revenue_waterfall(date(2025, 1, 1), date(2025, 1, 1)).unwrap().is_empty());
    }

    fn everything() -> Vec<Event> {
        let lines =
            [(LineKind::Usage, "8", jan()), (LineKind::MinimumCommitmentTrueUp, "2", jan())];
        vec![
            customer("c1", "UTC"),
            fee_30(),
            failed("inv-1", "2025-01-03T00:00:00Z"),
            issued("inv-v", "s9", "2025-01-01T00:00:00Z", "0", &[(LineKind::BaseFee, "31", jan())]),
            upgrade(),
            voided("inv-v", "2025-01-11T12:00:00Z"),
            paid("inv-1", "5", "2025-01-10T00:00:00Z"),
            uncollectible("inv-1", "2025-01-20T00:00:00Z"),
            issued("inv-u", "s1", "2025-02-01T00:00:00Z", "10", &lines),
            paid("inv-2", "18.17", "2025-01-17T00:00:00Z"),
            paid("inv-1", "28", "2025-02-03T00:00:00Z"),
            paid("inv-u", "11", "2025-02-04T00:00:00Z"),
        ]
    }

    #[tokio::test]
    async fn every_prefix_of_the_log_balances() {
        let dir = TempDir::new().unwrap();
        let events = everything();
        let store = store_with(&events).await;
        let mut runner = runner(&dir, &store, 1);
        let r = JournalReader::new(runner.read_model());
        let dates = [
            date(2024, 12, 31),
            date(2025, 1, 1),
            date(2025, 1, 11),
            date(2025, 1, 16),
            date(2025, 1, 31),
            date(2025, 2, 3),
            date(9999, 12, 31),
        ];
        while runner.step().await.unwrap() > 0 {
            let entries = all_entries(&r);
            let debits: Decimal = entries.iter().map(JournalEntry::total_debits).sum();
            let credits: Decimal = entries.iter().map(JournalEntry::total_credits).sum();
            assert_eq!(debits, credits, "at checkpoint {}", runner.checkpoint());
            assert!(entries.iter().all(|e| e.total_debits() == e.total_credits()));
            for d in dates {
                assert_balanced(&r, d);
            }
        }
        assert_eq!(runner.checkpoint(), events.len() as u64);
        // The end state, by hand: all paid (inv-1 partly recovered from bad debt), inv-v void.
        let end = usd(&r, date(2025, 3, 1));
        // cash 5 + 18.17 + 28 + 11; tax 3 + 1.65 + 1; revenue 46.52 + 10.
        assert_eq!(summary(&end), amounts(["0", "0", "62.17", "0", "0", "5.65", "56.52"]));
    }

    #[tokio::test]
    async fn digest_is_independent_of_batch_size() {
        let events = everything();
        let store = store_with(&events).await;
        let mut digests = Vec::new();
        for batch in [1, 5, 1000] {
            let dir = TempDir::new().unwrap();
            let mut runner = runner(&dir, &store, batch);
            runner.catch_up().await.unwrap();
            digests.push(runner.read_model().digest().unwrap());
        }
        assert_eq!(digests[0], digests[1]);
        assert_eq!(digests[1], digests[2]);
        assert_eq!(digests[0].position, events.len() as u64);
    }

    fn waterfall_pages(r: &JournalReader, from: Date, to: Date, size: usize) -> Vec<WaterfallRow> {
        let (mut rows, mut token) = (Vec::new(), None);
        loop {
            let page = r.revenue_waterfall_page(from, to, token.as_deref(), size).unwrap();
            assert!(page.rows.len() <= if size == 0 { PAGE_SIZE_DEFAULT } else { size });
            rows.extend(page.rows);
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => return rows,
            }
        }
    }

    #[tokio::test]
    async fn waterfall_pages_months_and_last_date_agree_with_the_whole_waterfall() {
        let dir = TempDir::new().unwrap();
        let empty = reader(&dir, &[customer("c1", "UTC")]).await;
        assert_eq!(empty.last_entry_date().unwrap(), None);
        assert!(empty.waterfall_months().unwrap().is_empty());
        assert!(waterfall_pages(&empty, date(2025, 1, 1), date(2025, 3, 1), 2).is_empty());

        let dir = TempDir::new().unwrap();
        let span = Period { start: date(2025, 1, 15), end: date(2025, 3, 15) };
        let two_months =
            issued("inv-3", "s2", "2025-01-15T10:00:00Z", "0", &[(LineKind::BaseFee, "59", span)]);
        let r = reader(&dir, &[customer("c1", "UTC"), fee_30(), upgrade(), two_months]).await;
        let months = [date(2025, 1, 1), date(2025, 2, 1), date(2025, 3, 1)];
        assert_eq!(r.waterfall_months().unwrap(), months);
        assert_eq!(r.last_entry_date().unwrap(), Some(date(2025, 3, 14)));
        for (from, to) in [
            (date(2024, 12, 1), date(2025, 4, 30)),
            (date(2025, 2, 10), date(2025, 2, 10)),
            (date(2025, 3, 1), date(2025, 3, 31)),
        ] {
            let whole = r.revenue_waterfall(from, to).unwrap();
            for size in [1, 2, 0] {
                assert_eq!(waterfall_pages(&r, from, to, size), whole, "{from}..={to} by {size}");
            }
        }
        let first = r.revenue_waterfall_page(date(2025, 1, 1), date(2025, 3, 1), None, 1).unwrap();
        assert_eq!(first.next_page_token.as_deref(), Some("inv-1/0000"));
        assert_eq!(first.position, 4);
        let bad = r.revenue_waterfall_page(date(2025, 2, 1), date(2025, 1, 1), None, 0);
        assert!(matches!(bad, Err(ProjectionError::InvalidArgument(_))));
        for token in ["", "x", "inv-1/", "/0000", "inv-1/00a0"] {
            let bad = r.revenue_waterfall_page(date(2025, 1, 1), date(2025, 1, 1), Some(token), 0);
            assert!(matches!(bad, Err(ProjectionError::InvalidArgument(_))), "{token:?}");
        }
    }

    #[tokio::test]
    async fn bad_page_tokens_and_waterfall_ranges_are_refused() {
        let dir = TempDir::new().unwrap();
        let r = reader(&dir, &[customer("c1", "UTC"), fee_30()]).await;
        for token in ["", "x", "2025-01-01/zz", "2025-13-01/0000000000000000"] {
            assert!(matches!(r.entries(Some(token), 1), Err(ProjectionError::InvalidArgument(_))));
        }
        let bad = r.revenue_waterfall(date(2025, 2, 1), date(2025, 1, 1));
        assert!(matches!(bad, Err(ProjectionError::InvalidArgument(_))));
        let page = r.entries(None, 0).unwrap();
        assert_eq!((page.entries.len(), page.next_page_token, page.position), (32, None, 2));
    }

    /// An entry side past `Decimal`'s range is an error naming the account, never a panic
    /// (and a day's merge of schedules likewise).
    #[test]
    fn legs_and_merges_that_overflow_are_errors() {
        let mut legs = Legs::default();
        legs.dr(Account::Cash, Decimal::MAX);
        legs.cr(Account::Revenue(RevenueType::Usage), Decimal::MAX);
        assert_eq!(legs.postings().map(|p| p.len()), Ok(2));
        legs.dr(Account::Cash, Decimal::ONE);
        assert_eq!(legs.postings(), Err("the cash side of the entry".to_string()));
        let day = date(2025, 1, 1);
        assert_eq!(merge(&[(day, Decimal::MAX)], &[(day, Decimal::ONE)]), None);
        assert_eq!(merge_nonzero(&[(day, Decimal::MAX)], &[(day, -Decimal::MAX)]), Some(vec![]));
    }
}
