//! The chart of accounts and the shape of a journal entry: [`Account`] (and [`ACCOUNTS`], in
//! report order), [`EntryKind`], [`Posting`], [`JournalEntry`], the [`Legs`] an entry is
//! gathered in (balanced or refused before it is written), and the [`Balances`] and
//! [`TrialBalanceRow`] the reader reports per account. Plain types: nothing here reads or
//! writes the read model, and an entry's legs must never be written unbalanced.

use std::collections::BTreeMap;

use domain::money::{checked_sum, Currency};
use domain::recognition::RevenueType;
use event_store::Position;
use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

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
    /// Paid wallet credits not used or expired yet (a contract liability, SPEC §8.5).
    PrepaidCredits,
    /// Granted wallet credits used on invoices (contra-revenue, debit-normal).
    Discounts,
}

/// Every account, in report order.
pub const ACCOUNTS: [Account; 15] = [
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
    Account::Revenue(RevenueType::Breakage),
    Account::CustomerCredit,
    Account::PrepaidCredits,
    Account::Discounts,
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
            // SPEC §8.5's name: paid wallet credits that expired unused.
            Account::Revenue(RevenueType::Breakage) => "breakage_revenue",
            Account::CustomerCredit => "customer_credit",
            Account::PrepaidCredits => "prepaid_credits",
            Account::Discounts => "discounts",
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
                | Account::Discounts
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

/// Debits and credits per account, gathered before an entry is written. A side that would
/// overflow `Decimal` is remembered, and [`Legs::postings`] then refuses the entry.
#[derive(Default)]
pub(super) struct Legs {
    sides: BTreeMap<Account, (Decimal, Decimal)>,
    overflowed: Option<Account>,
}

impl Legs {
    /// Debits `account` (a negative amount credits it).
    pub(super) fn dr(&mut self, account: Account, amount: Decimal) {
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
    pub(super) fn cr(&mut self, account: Account, amount: Decimal) {
        self.dr(account, -amount);
    }

    /// The postings, or what overflowed; panics if they do not balance (a bug).
    pub(super) fn postings(&self) -> Result<Vec<Posting>, String> {
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
