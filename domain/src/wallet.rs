//! Prepaid wallets (SPEC §8.1), the pure part: a wallet's credit lots, how an invoice consumes
//! them, expiry, the low-balance threshold, and [`WalletAccount`], the state the write model
//! and the read model both fold from the wallet events. Decisions in
//! docs/decisions/0033-wallets.md.
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
use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::catalog::{check_id, check_text};
use crate::error::{DomainError, Violations};
use crate::money::{check_bounded, Currency, AMOUNT_MAX};

/// Most wallets one customer may open.
pub const WALLETS_PER_CUSTOMER_MAX: usize = 20;
/// Most top-ups one wallet takes (bounds its lots).
pub const TOP_UPS_MAX: u32 = 10_000;
/// Largest top-up, in credits (10^12, as [`AMOUNT_MAX`]).
pub const CREDITS_MAX: Decimal = AMOUNT_MAX;
/// Most decimal places of a number of credits or of `rate_amount`.
pub const CREDITS_SCALE_MAX: u32 = 6;

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// `OpenWallet`: a wallet for a customer, in the customer's currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenWallet {
    pub wallet_id: String,
    pub customer_id: String,
    pub name: String,
    /// Money per credit (> 0).
    pub rate_amount: Decimal,
    /// Money: `WalletBalanceLow` is recorded each time the balance falls below it.
    pub low_balance_threshold: Option<Decimal>,
}

impl OpenWallet {
    /// The checks that need no ledger.
    pub fn validate(&self, currency: Currency) -> Result<(), DomainError> {
        let mut v = Violations::default();
        check_id(&mut v, "wallet_id", &self.wallet_id);
        check_id(&mut v, "customer_id", &self.customer_id);
        check_text(&mut v, "name", &self.name, false);
        let rate = self.rate_amount;
        if rate <= Decimal::ZERO || rate > AMOUNT_MAX || rate.scale() > CREDITS_SCALE_MAX {
            v.push(
                "rate_amount",
                format!(
                    "must be positive, at most {AMOUNT_MAX}, with at most {CREDITS_SCALE_MAX} \
                     decimal places"
                ),
            );
        }
        if let Some(t) = self.low_balance_threshold {
            if let Err(violation) = check_bounded("low_balance_threshold", t, AMOUNT_MAX) {
                v.0.push(violation);
            } else if t.scale() > currency.minor_units() {
                v.push(
                    "low_balance_threshold",
                    format!("at most {} decimal places in {currency}", currency.minor_units()),
                );
            }
        }
        v.into_result()
    }
}

/// The payload of `WalletOpened`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletOpened {
    pub wallet_id: String,
    pub customer_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub currency: Currency,
    pub rate_amount: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_balance_threshold: Option<Decimal>,
    pub occurred_at: Timestamp,
}

/// `TopUpWallet`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopUpRequest {
    pub wallet_id: String,
    pub kind: CreditKind,
    /// Credits (> 0); money = credits × the wallet's rate, rounded to the minor unit.
    pub credits: Decimal,
    /// The credits cannot be used on or after this (customer-local) date; after today.
    pub expires_on: Option<Date>,
    /// Paid credits only: usable now rather than once their invoice is paid (granted credits
    /// are always usable at once).
    pub usable_at_once: bool,
}

impl TopUpRequest {
    /// The checks that need no ledger.
    pub fn validate(&self) -> Result<(), DomainError> {
        let mut v = Violations::default();
        check_id(&mut v, "wallet_id", &self.wallet_id);
        let c = self.credits;
        if c <= Decimal::ZERO || c > CREDITS_MAX || c.scale() > CREDITS_SCALE_MAX {
            v.push(
                "credits",
                format!(
                    "must be positive, at most {CREDITS_MAX}, with at most {CREDITS_SCALE_MAX} \
                     decimal places"
                ),
            );
        }
        v.into_result()
    }
}

/// The payload of `WalletToppedUp`: one lot, usable now or once its invoice is paid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUp {
    pub wallet_id: String,
    pub customer_id: String,
    /// 1, 2, ... per wallet.
    pub top_up: u32,
    pub kind: CreditKind,
    pub credits: Decimal,
    /// Money: credits × rate, rounded to the minor unit (> 0).
    pub amount: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_on: Option<Date>,
    /// The purchase invoice of paid credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<String>,
    /// Usable now; otherwise once its invoice is paid (`WalletCreditsUsable`).
    pub usable: bool,
    pub occurred_at: Timestamp,
}

impl TopUp {
    fn lot(&self) -> Lot {
        Lot {
            top_up: self.top_up,
            kind: self.kind,
            amount: self.amount,
            expires_on: self.expires_on,
        }
    }
}

/// What one lot of one wallet paid of an invoice (recorded on the invoice).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletUse {
    pub wallet_id: String,
    pub top_up: u32,
    pub kind: CreditKind,
    pub amount: Decimal,
}

/// A paid top-up waiting for its invoice to be paid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTopUp {
    pub invoice_id: String,
    pub lot: Lot,
}

/// A wallet as the wallet events leave it. The write model and the read model fold the same
/// events through these methods; a violated expectation is a corrupt log and panics (the read
/// model checks first, see [`WalletAccount::check_use`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletAccount {
    pub wallet_id: String,
    pub customer_id: String,
    pub name: String,
    pub low_balance_threshold: Option<Decimal>,
    pub wallet: Wallet,
    /// Top-ups so far (the last one's number).
    pub top_ups: u32,
    pub pending: Vec<PendingTopUp>,
    /// The balance is below the threshold (set by `WalletBalanceLow` or at opening; cleared
    /// when credits take it back to the threshold or above), so a crossing fires once.
    pub low: bool,
}

impl WalletAccount {
    pub fn opened(e: &WalletOpened) -> Self {
        WalletAccount {
            wallet_id: e.wallet_id.clone(),
            customer_id: e.customer_id.clone(),
            name: e.name.clone(),
            low_balance_threshold: e.low_balance_threshold,
            wallet: Wallet { currency: e.currency, rate_amount: e.rate_amount, lots: Vec::new() },
            top_ups: 0,
            pending: Vec::new(),
            low: e.low_balance_threshold.is_some_and(|t| t > Decimal::ZERO),
        }
    }

    /// Money in usable lots (expired lots leave by `WalletCreditsExpired`).
    pub fn balance(&self) -> Decimal {
        self.wallet.lots.iter().map(|l| l.amount).sum()
    }

    /// Money of paid top-ups waiting for their invoice.
    pub fn pending_amount(&self) -> Decimal {
        self.pending.iter().map(|p| p.lot.amount).sum()
    }

    /// Whether the balance has just fallen below the threshold (a `WalletBalanceLow` is due).
    pub fn crossed_low(&self) -> bool {
        self.low_balance_threshold.is_some_and(|t| !self.low && self.balance() < t)
    }

    pub fn top_up(&mut self, t: &TopUp) {
        assert_eq!(self.top_ups + 1, t.top_up, "top-ups numbered in order");
        self.top_ups = t.top_up;
        if t.usable {
            self.wallet.lots.push(t.lot());
            self.rearm();
        } else {
            let invoice_id = t.invoice_id.clone().expect("a pending top-up has an invoice");
            self.pending.push(PendingTopUp { invoice_id, lot: t.lot() });
        }
    }

    /// The pending top-up of `invoice_id`, if there is one.
    pub fn pending_of(&self, invoice_id: &str) -> Option<&PendingTopUp> {
        self.pending.iter().find(|p| p.invoice_id == invoice_id)
    }

    /// A pending top-up's invoice was paid: its lot becomes usable.
    pub fn make_usable(&mut self, top_up: u32) {
        let i = self.pending.iter().position(|p| p.lot.top_up == top_up).expect("pending top-up");
        let pending = self.pending.remove(i);
        self.wallet.lots.push(pending.lot);
        self.rearm();
    }

    /// A pending top-up's invoice was voided: its credits never arrive.
    pub fn cancel_pending(&mut self, invoice_id: &str) {
        self.pending.retain(|p| p.invoice_id != invoice_id);
    }

    /// Why `u` cannot be taken from this wallet, if it cannot.
    pub fn check_use(&self, u: &WalletUse) -> Result<(), String> {
        match self.wallet.lots.iter().find(|l| l.top_up == u.top_up) {
            Some(l) if l.kind == u.kind && u.amount > Decimal::ZERO && u.amount <= l.amount => {
                Ok(())
            }
            _ => Err(format!(
                "wallet {} cannot give {} from top-up {}",
                self.wallet_id, u.amount, u.top_up
            )),
        }
    }

    /// An invoice took `u` (checked when it was decided).
    pub fn take(&mut self, u: &WalletUse) {
        self.check_use(u).expect("a valid wallet use");
        let lot = self.wallet.lots.iter_mut().find(|l| l.top_up == u.top_up).expect("checked");
        lot.amount -= u.amount;
        self.wallet.lots.retain(|l| !l.amount.is_zero());
    }

    /// Why `expired` (of a `WalletCreditsExpired`) does not match the lots, if it does not.
    pub fn check_expired(&self, expired: &[Taken]) -> Result<(), String> {
        for t in expired {
            let found = self
                .wallet
                .lots
                .iter()
                .any(|l| l.top_up == t.top_up && l.kind == t.kind && l.amount == t.amount);
            if !found {
                return Err(format!(
                    "wallet {} has no lot of top-up {} holding {}",
                    self.wallet_id, t.top_up, t.amount
                ));
            }
        }
        Ok(())
    }

    /// The lots `expired` are gone (checked when it was decided).
    pub fn expire(&mut self, expired: &[Taken]) {
        self.check_expired(expired).expect("the expired lots exist");
        self.wallet.lots.retain(|l| !expired.iter().any(|t| t.top_up == l.top_up));
    }

    /// Lots expiring on or before `day`, grouped by expiry date (earliest first): what a
    /// billing run records as `WalletCreditsExpired`, one per date.
    pub fn expiring_by(&self, day: Date) -> Vec<(Date, Vec<Taken>)> {
        let mut out: Vec<(Date, Vec<Taken>)> = Vec::new();
        let mut lots: Vec<&Lot> =
            self.wallet.lots.iter().filter(|l| l.expires_on.is_some_and(|e| e <= day)).collect();
        lots.sort_by_key(|l| (l.expires_on, l.top_up));
        for l in lots {
            let date = l.expires_on.expect("filtered");
            let taken = Taken { top_up: l.top_up, kind: l.kind, amount: l.amount };
            match out.last_mut() {
                Some((d, group)) if *d == date => group.push(taken),
                _ => out.push((date, vec![taken])),
            }
        }
        out
    }

    /// The balance fell below the threshold and `WalletBalanceLow` recorded it.
    pub fn mark_low(&mut self) {
        self.low = true;
    }

    fn rearm(&mut self) {
        if self.low_balance_threshold.is_some_and(|t| self.balance() >= t) {
            self.low = false;
        }
    }
}

#[cfg(test)]
mod tests;
