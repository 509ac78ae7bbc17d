//! What the journal stores besides its entries, and where: the key layout (`j/`, `b/`, `inv/`,
//! `sub/`, `cust/`, `acc/`, `draft/`, `w/`, `ud/`, see the module doc of [`super`]), the per-invoice
//! state ([`InvoiceState`] with its [`LineSchedule`]s), the waterfall cells and the decoding
//! of stored values. It only names and (de)serializes records: it never writes the read
//! model and never decides what an event posts.

use domain::calendar::Period;
use domain::invoice::{InvoiceStatus, LineKind};
use domain::money::Currency;
use domain::recognition::RevenueType;
use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{Account, NAME, RECORD_VERSION};
use crate::store::corrupt;
use crate::Result;

pub(super) const SEQ_KEY: &[u8] = b"seq";

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
pub(super) struct EntryRef {
    pub(super) date: Date,
    pub(super) seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct InvoiceState {
    pub(super) v: u16,
    pub(super) invoice_id: String,
    pub(super) subscription_id: String,
    pub(super) currency: Currency,
    pub(super) time_zone: String,
    pub(super) issue_date: Date,
    pub(super) total: Decimal,
    pub(super) paid: Decimal,
    pub(super) written_off: Decimal,
    /// Σ `offset` credit notes and the customer credit applied at issue: no longer receivable.
    #[serde(default)]
    pub(super) offset: Decimal,
    pub(super) status: InvoiceStatus,
    pub(super) voided_on: Option<Date>,
    pub(super) issue_entry: EntryRef,
    pub(super) scheduled: Vec<EntryRef>,
    pub(super) lines: Vec<LineSchedule>,
}

impl InvoiceState {
    pub(super) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("invoice states always serialize")
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self> {
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

/// Usage of one subscription's metric on one business date (the customer's local date), the
/// value of a `ud/<YYYY-MM-DD>/<subscription_id>/<metric_code>` key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageDay {
    pub customer_id: String,
    /// Σ of the value the metric reads from each event (its property for sum, max, min,
    /// latest and weighted_sum; 1 per event for count and unique_count): the day's raw
    /// quantity, not the period's billable units (a max or a distinct count is not additive).
    pub units: Decimal,
    /// Number of usage events.
    pub events: u64,
}

/// A [`UsageDay`] with its key: one row of [`super::JournalReader::usage_days`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageDayRow {
    pub date: Date,
    pub subscription_id: String,
    pub metric_code: String,
    pub usage: UsageDay,
}

pub(super) const USAGE_DAY_PREFIX: &str = "ud/";

pub(super) fn usage_day_key(d: Date, subscription_id: &str, metric_code: &str) -> Vec<u8> {
    format!("{USAGE_DAY_PREFIX}{}/{subscription_id}/{metric_code}", day_key(d)).into_bytes()
}

/// The (date, subscription, metric) of a `ud/` key without its prefix (ids hold no `/`).
pub(super) fn parse_usage_day_key(rest: &str) -> Option<(Date, &str, &str)> {
    let (day, rest) = rest.split_once('/')?;
    let (sub, metric) = rest.split_once('/')?;
    let date = day.parse::<Date>().ok().filter(|_| day.len() == 10)?;
    let ok = |s: &str| !s.is_empty() && !s.contains('/');
    (ok(sub) && ok(metric)).then_some((date, sub, metric))
}

pub(super) fn day_key(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
}

pub(super) fn month_key(d: Date) -> String {
    format!("{:04}-{:02}", d.year(), d.month())
}

pub(super) fn entry_key(r: EntryRef) -> Vec<u8> {
    format!("j/{}/{:016x}", day_key(r.date), r.seq).into_bytes()
}

pub(super) fn balance_key(currency: Currency, account: Account, d: Date) -> Vec<u8> {
    format!("b/{}/{}/{}", currency.code(), account.as_str(), day_key(d)).into_bytes()
}

pub(super) fn invoice_key(id: &str) -> Vec<u8> {
    format!("inv/{id}").into_bytes()
}

pub(super) fn sub_key(id: &str) -> Vec<u8> {
    format!("sub/{id}").into_bytes()
}

pub(super) fn customer_key(id: &str) -> Vec<u8> {
    format!("cust/{id}").into_bytes()
}

pub(super) fn accrual_key(subscription_id: &str, period_start: Date) -> Vec<u8> {
    format!("acc/{subscription_id}/{}", day_key(period_start)).into_bytes()
}

pub(super) fn draft_key(subscription_id: &str) -> Vec<u8> {
    format!("draft/{subscription_id}").into_bytes()
}

pub(super) fn waterfall_key(d: Date, line: &LineRef) -> Vec<u8> {
    format!("w/{}/{}/{:04}", month_key(d), line.invoice_id, line.line_index).into_bytes()
}

pub(super) fn parse_decimal(bytes: &[u8]) -> Result<Decimal> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(NAME, "balance is not a decimal"))
}

pub(super) fn json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(NAME, format!("{what}: {e}")))
}
