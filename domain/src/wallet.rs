//! Prepaid wallets (SPEC §8.1), the pure part: a wallet's credit lots, how an invoice consumes
//! them, expiry, and the low-balance threshold. Not wired into the ledger yet (no command or
//! event uses it): see docs/decisions/0033-wallets.md.
//!
//! A wallet holds **lots**: credits of one top-up, `granted` (free) or `paid` (bought), with an
//! optional expiry date. Money = credits × `rate_amount`. Rules:
//! - [`Wallet::consume`] pays at most the amount due, never below zero: granted lots before paid
//!   ones, and within each, the earliest-expiring first (no expiry last), then the oldest. A lot
//!   is not usable on or after its expiry date. No lot gives more than it holds.
//! - [`Wallet::expire`] empties every lot whose expiry date is on or before a date and says what
//!   expired (paid credits become breakage revenue; granted ones simply vanish).
//! - The low-balance threshold fires once each time the balance crosses it downwards
//!   ([`crossed_below`]).

use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::Currency;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    Granted,
    Paid,
}

/// The credits of one top-up that are left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    /// The top-up it came from (its order among the wallet's top-ups breaks ties).
    pub top_up: u32,
    pub kind: CreditKind,
    /// Money left in the lot (credits × rate), at the currency's minor unit.
    pub amount: Decimal,
    /// The lot cannot be used on or after this date.
    pub expires_on: Option<Date>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wallet {
    pub currency: Currency,
    /// Money per credit (SPEC default 1).
    pub rate_amount: Decimal,
    pub lots: Vec<Lot>,
}

/// What one lot gave or lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    pub top_up: u32,
    pub kind: CreditKind,
    pub amount: Decimal,
}

impl Wallet {
    /// Money usable on `day`: Σ lots not expired by then.
    pub fn balance_on(&self, day: Date) -> Decimal {
        self.lots.iter().filter(|l| usable(l, day)).map(|l| l.amount).sum()
    }

    /// Pays at most `due` (≥ 0) from the lots usable on `day`, in the order of the module rules;
    /// returns what each lot gave, in that order. The wallet's lots shrink accordingly.
    pub fn consume(&mut self, due: Decimal, day: Date) -> Vec<Taken> {
        let mut order: Vec<usize> =
            (0..self.lots.len()).filter(|i| usable(&self.lots[*i], day)).collect();
        order.sort_by_key(|i| {
            let l = &self.lots[*i];
            (l.kind == CreditKind::Paid, l.expires_on.is_none(), l.expires_on, l.top_up)
        });
        let mut left = due.max(Decimal::ZERO);
        let mut taken = Vec::new();
        for i in order {
            if left.is_zero() {
                break;
            }
            let lot = &mut self.lots[i];
            let amount = lot.amount.min(left);
            if amount.is_zero() {
                continue;
            }
            lot.amount -= amount;
            left -= amount;
            taken.push(Taken { top_up: lot.top_up, kind: lot.kind, amount });
        }
        self.lots.retain(|l| !l.amount.is_zero());
        debug_assert!(self.lots.iter().all(|l| l.amount > Decimal::ZERO));
        taken
    }

    /// Empties the lots that expire on or before `day`; returns what expired.
    pub fn expire(&mut self, day: Date) -> Vec<Taken> {
        let (gone, kept): (Vec<Lot>, Vec<Lot>) =
            self.lots.drain(..).partition(|l| l.expires_on.is_some_and(|e| e <= day));
        self.lots = kept;
        gone.into_iter()
            .map(|l| Taken { top_up: l.top_up, kind: l.kind, amount: l.amount })
            .collect()
    }
}

fn usable(lot: &Lot, day: Date) -> bool {
    lot.expires_on.is_none_or(|e| day < e)
}

/// Whether going from `before` to `after` crosses `threshold` downwards (it fires once per
/// crossing: at or above before, below after).
pub fn crossed_below(before: Decimal, after: Decimal, threshold: Decimal) -> bool {
    before >= threshold && after < threshold
}

#[cfg(test)]
mod tests;
