//! The shape of a journal entry as the journal stores it: [`EntryKind`], [`JournalEntry`], and
//! the [`Balances`] and [`TrialBalanceRow`] the reader reports per account. The chart of
//! accounts, [`Posting`] and the [`Legs`] an entry is gathered in are `domain::accounting`'s
//! (re-exported here). Plain types: nothing here reads or writes the read model.

use std::collections::BTreeMap;

use domain::money::Currency;
use domain::recognition::RevenueType;
use event_store::Position;
use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use domain::accounting::{Account, Legs, Posting, ACCOUNTS};

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
    /// Paid wallet credits that expired unused: Dr prepaid credits / Cr breakage revenue.
    WalletExpiry,
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
            EntryKind::WalletExpiry => "wallet_expiry",
        }
    }
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
    /// Set on wallet entries (expiry) only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wallet_id: String,
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
    /// Paid wallet credits not used or expired yet (liability).
    pub prepaid_credits: Decimal,
    /// Granted wallet credits used (contra-revenue: recognized revenue is gross of it).
    pub discounts: Decimal,
    /// Recognized revenue by type (types with a non-zero balance).
    pub recognized_revenue: BTreeMap<RevenueType, Decimal>,
}

impl Balances {
    /// Σ recognized revenue over all types.
    pub fn total_revenue(&self) -> Decimal {
        self.recognized_revenue.values().copied().sum()
    }
}
