//! The chart of accounts and the posting rules that need no stored state (SPEC §6, §8.5):
//! which accounts an issued invoice's settlement, a payment, a write-off, a credit note's
//! destination and an expiry of wallet credits touch, and the [`Legs`] an entry is gathered in
//! (balanced or refused before anyone writes it). The journal projection adds what needs its
//! records: dates, recognition schedules, accruals, storage. Pure: testable without sled.

use std::collections::BTreeMap;

use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::credit_note::{CreditDestination, CreditNote};
use crate::invoice::{Invoice, LineKind};
use crate::money::checked_sum;
use crate::recognition::RevenueType;
use crate::wallet::{CreditKind, Taken};

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

/// One side of one account in an entry (exactly one of `debit`, `credit` is non-zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub account: Account,
    pub debit: Decimal,
    pub credit: Decimal,
}

/// Debits and credits per account, gathered before an entry is written. A side that would
/// overflow `Decimal` is remembered, and [`Legs::postings`] then refuses the entry.
#[derive(Default)]
pub struct Legs {
    sides: BTreeMap<Account, (Decimal, Decimal)>,
    overflowed: Option<Account>,
}

impl Legs {
    /// Debits `account` (a negative amount credits it).
    pub fn dr(&mut self, account: Account, amount: Decimal) {
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
    pub fn cr(&mut self, account: Account, amount: Decimal) {
        self.dr(account, -amount);
    }

    /// The postings, or what overflowed; panics if they do not balance (a bug).
    pub fn postings(&self) -> Result<Vec<Posting>, String> {
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

/// Where revenue recognized on `day` comes from for a line issued on `issue_date`: unbilled
/// receivable for days before the issue (recognized as they passed), deferred revenue from the
/// issue date on.
pub fn recognition_source(day: Date, issue_date: Date) -> Account {
    if day < issue_date {
        Account::UnbilledReceivable
    } else {
        Account::DeferredRevenue
    }
}

/// The account a credit note's money goes to.
pub fn destination_account(destination: CreditDestination) -> Account {
    match destination {
        CreditDestination::Credit => Account::CustomerCredit,
        CreditDestination::Refund => Account::Cash,
        CreditDestination::Offset => Account::AccountsReceivable,
    }
}

/// The account wallet credits of `kind` are taken from when they pay an invoice: the contract
/// liability for paid credits, a discount (contra-revenue) for granted ones.
pub fn wallet_use_account(kind: CreditKind) -> Account {
    match kind {
        CreditKind::Paid => Account::PrepaidCredits,
        CreditKind::Granted => Account::Discounts,
    }
}

/// Where an uncollectible invoice's amount due goes: bad debt, except for a purchase of
/// wallet credits, whose credits were never delivered: the unpaid purchase cancels the
/// contract liability it created (Dr prepaid credits), and a later payment restores it.
pub fn write_off_account(invoice_buys_credits: bool) -> Account {
    if invoice_buys_credits {
        Account::PrepaidCredits
    } else {
        Account::BadDebt
    }
}

/// The settlement legs of an issued invoice, without its revenue: Dr accounts receivable the
/// total, Cr tax payable the tax; the customer's credit balance and then wallet credits pay part
/// of it (Dr customer credit, Dr [`wallet_use_account`] / Cr accounts receivable); a line
/// buying wallet credits is a contract liability (Cr prepaid credits), never revenue. The
/// journal adds each other line's recognition (deferred or unbilled, by its schedule).
pub fn invoice_settlement_legs(inv: &Invoice) -> Legs {
    let mut legs = Legs::default();
    legs.dr(Account::AccountsReceivable, inv.total);
    legs.cr(Account::TaxPayable, inv.tax);
    legs.dr(Account::CustomerCredit, inv.credit_applied);
    legs.cr(Account::AccountsReceivable, inv.credit_applied);
    for u in &inv.wallet_applied {
        legs.dr(wallet_use_account(u.kind), u.amount);
        legs.cr(Account::AccountsReceivable, u.amount);
    }
    for line in inv.lines.iter().filter(|l| l.kind == LineKind::PrepaidCredits) {
        legs.cr(Account::PrepaidCredits, line.amount);
    }
    legs
}

/// A payment of `amount`: Dr cash; Cr what it recovers of a write-off (`recovery`, to
/// `written_off_to`), the rest Cr accounts receivable.
pub fn payment_legs(amount: Decimal, recovery: Decimal, written_off_to: Account) -> Legs {
    let mut legs = Legs::default();
    legs.dr(Account::Cash, amount);
    legs.cr(written_off_to, recovery);
    legs.cr(Account::AccountsReceivable, amount - recovery);
    legs
}

/// Writing off `due`: Dr `to` ([`write_off_account`]) / Cr accounts receivable.
pub fn write_off_legs(due: Decimal, to: Account) -> Legs {
    let mut legs = Legs::default();
    legs.dr(to, due);
    legs.cr(Account::AccountsReceivable, due);
    legs
}

/// A credit note's tax and destination legs: Dr tax payable its tax, Cr its destination its
/// total. The journal adds, per credited line, the reversal of deferred then recognized revenue.
pub fn credit_note_legs(note: &CreditNote) -> Legs {
    let mut legs = Legs::default();
    legs.dr(Account::TaxPayable, note.tax);
    legs.cr(destination_account(note.destination), note.total);
    legs
}

/// Lots that expired: paid credits leave the liability as breakage revenue; granted ones had
/// no entry and leave none. `None` if their sum overflows.
pub fn wallet_expiry_legs(lots: &[Taken]) -> Option<Legs> {
    let paid = checked_sum(lots.iter().filter(|t| t.kind == CreditKind::Paid).map(|t| t.amount))?;
    let mut legs = Legs::default();
    legs.dr(Account::PrepaidCredits, paid);
    legs.cr(Account::Revenue(RevenueType::Breakage), paid);
    Some(legs)
}

#[cfg(test)]
mod tests;
