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
//! * `ud/<YYYY-MM-DD>/<subscription_id>/<metric_code>` → [`UsageDay`]: that business date's
//!   usage of the metric (customer, Σ quantity, event count), summed per batch in memory
//!   ([`crate::store::Writes::memo`]) and written once per key and batch.
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
//!
//! # Files
//!
//! `accounts` (the chart of accounts, entries and the legs they are built from), `records` (the
//! key layout and the stored invoice states), `posting` (what an invoice, payment, write-off,
//! credit note or void posts), `accruals` (usage recognized as consumed), `projection` (the
//! `Projection` impl routing each event), `reader` (the queries), `tests`.
//!
//! [`UsageMeter`]: crate::usage_meter::UsageMeter
//! [`Invoice`]: domain::invoice::Invoice

mod accounts;
mod accruals;
mod posting;
mod projection;
mod reader;
mod records;

use domain::money::Currency;
use event_store::Position;
use rust_decimal::Decimal;

use crate::store::corrupt;
use crate::{ProjectionError, Result};

pub use accounts::{
    Account, Balances, EntryKind, JournalEntry, Posting, TrialBalanceRow, ACCOUNTS,
};
pub use projection::{JournalProjection, METER_SNAPSHOT_INTERVAL_EVENTS_DEFAULT};
pub use reader::{
    EntryPage, InvoiceSchedules, JournalReader, UsageDayPage, UsageRevenueBucket, WaterfallPage,
    WaterfallRow,
};
pub use records::{LineRef, LineSchedule, UsageDay, UsageDayRow, WaterfallCell};

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

#[cfg(test)]
mod tests;
