//! Wallets on the wire: a wallet record as `pb::Wallet`, its transactions, and the ongoing
//! balance (the usable balance less the journal's current-usage drafts of the customer's open
//! periods). Conversions only: the read models hold the facts.

use command_service::convert::{credit_kind, money, to_timestamp};
use projections::invoices::InvoiceReader;
use projections::journal::JournalReader;
use projections::wallets::{WalletRecord, WalletTransaction};
use proto::v1 as pb;
use rust_decimal::Decimal;

pub fn wallet(r: &WalletRecord) -> pb::Wallet {
    let a = &r.account;
    let cur = a.wallet.currency;
    let balance = a.balance();
    pb::Wallet {
        wallet_id: a.wallet_id.clone(),
        customer_id: a.customer_id.clone(),
        name: a.name.clone(),
        currency: cur.code().to_string(),
        rate_amount: a.wallet.rate_amount.normalize().to_string(),
        balance: money(cur, balance),
        credits: (balance / a.wallet.rate_amount).normalize().to_string(),
        pending: money(cur, a.pending_amount()),
        low_balance_threshold: a.low_balance_threshold.map(|t| money(cur, t)).unwrap_or_default(),
        low: a.low,
        lots: a
            .wallet
            .lots
            .iter()
            .map(|l| pb::WalletLot {
                top_up: l.top_up,
                kind: credit_kind(l.kind).to_string(),
                amount: money(cur, l.amount),
                expires_on: l.expires_on.map(|d| d.to_string()).unwrap_or_default(),
            })
            .collect(),
        top_ups: a.top_ups,
    }
}

pub fn transaction(
    t: &WalletTransaction,
    currency: domain::money::Currency,
) -> pb::WalletTransaction {
    pb::WalletTransaction {
        kind: t.kind.clone(),
        at: t.at.map(to_timestamp),
        amount: money(currency, t.amount),
        top_up: t.top_up,
        credit_kind: t.credit_kind.map(|k| credit_kind(k).to_string()).unwrap_or_default(),
        invoice_id: t.invoice_id.clone(),
        balance_after: money(currency, t.balance_after),
        date: t.date.map(|d| d.to_string()).unwrap_or_default(),
        position: t.position,
    }
}

/// Σ of the totals of the current-usage drafts of the customer's open periods.
pub fn ongoing_usage(
    invoices: &InvoiceReader,
    journal: &JournalReader,
    customer_id: &str,
) -> projections::Result<Decimal> {
    let mut sum = Decimal::ZERO;
    for sub in invoices.subscriptions_of(customer_id)? {
        if let Some(draft) = journal.current_usage(&sub)? {
            sum = sum.saturating_add(draft.total);
        }
    }
    Ok(sum)
}
