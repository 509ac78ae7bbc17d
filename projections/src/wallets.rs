//! Prepaid wallets, kept in the `invoices` read model (SPEC §8.1): each wallet as the domain's
//! [`WalletAccount`] folds it (the same methods the write model uses, each checked first, so a
//! corrupt log is an error here, never a panic), its transactions, and each customer's
//! subscriptions (for the ongoing balance, which the query service nets against the journal's
//! current-usage drafts). It never decides what credits pay: the invoices record it.
//!
//! Keys: `wal/<wallet_id>` → [`WalletRecord`]; `walc/<customer>` → the customer's wallet ids
//! in the order opened (JSON, at most the domain's bound); `walt/<wallet_id>/<pos>/<i>` → [`WalletTransaction`] (`<pos>` 16 hex digits,
//! `<i>` 4 hex digits: one event may make several); `csub/<customer>/<subscription>` → "";
//! `subc/<subscription>` → its customer (the event feed's customer filter).

use domain::events::Event;
use domain::invoice::{Invoice, IssueReason};
use domain::wallet::{CreditKind, WalletAccount};
use event_store::Position;
use jiff::civil::Date;
use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::invoices::{inconsistent, InvoiceReader, NAME};
use crate::store::{corrupt, Snapshot, Writes};
use crate::{ProjectionError, Result};

/// Version of [`WalletRecord`]'s and [`WalletTransaction`]'s encodings.
pub const RECORD_VERSION: u16 = 1;
/// Most transactions a page holds.
pub const TRANSACTIONS_PAGE_MAX: usize = 1_000;
/// Transactions per page when the caller asks for 0.
pub const TRANSACTIONS_PAGE_DEFAULT: usize = 100;
/// Most subscriptions of one customer the ongoing balance reads drafts of.
pub const ONGOING_SUBSCRIPTIONS_MAX: usize = 1_000;

/// One wallet as the read model holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletRecord {
    pub v: u16,
    pub account: WalletAccount,
    /// Position of the last event that changed it.
    pub updated_position: Position,
}

/// What happened to a wallet, one row per lot and event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletTransaction {
    pub v: u16,
    /// `top_up`, `usable`, `consumed`, `expired`, `voided` or `balance_low`.
    pub kind: String,
    pub at: Option<Timestamp>,
    /// + for credits that became usable, − for credits used or expired, 0 otherwise.
    pub amount: Decimal,
    pub top_up: u32,
    pub credit_kind: Option<CreditKind>,
    pub invoice_id: String,
    /// The usable balance after it.
    pub balance_after: Decimal,
    /// Expiry date (`expired`) or the lot's expiry (`top_up`).
    pub date: Option<Date>,
    pub position: Position,
}

fn wallet_key(id: &str) -> Vec<u8> {
    format!("wal/{id}").into_bytes()
}

fn customer_key(customer_id: &str) -> Vec<u8> {
    format!("walc/{customer_id}").into_bytes()
}

fn wallet_ids(bytes: Option<sled::IVec>) -> Result<Vec<String>> {
    match bytes {
        Some(b) => {
            serde_json::from_slice(&b).map_err(|e| corrupt(NAME, format!("wallet ids: {e}")))
        }
        None => Ok(Vec::new()),
    }
}

fn token(position: Position) -> String {
    format!("{position:016x}")
}

fn load(w: &Writes<'_>, id: &str, position: Position) -> Result<WalletRecord> {
    let bytes = w.get(&wallet_key(id))?;
    let bytes = bytes.ok_or_else(|| inconsistent(position, format!("unknown wallet {id}")))?;
    decode(&bytes)
}

fn decode(bytes: &[u8]) -> Result<WalletRecord> {
    let r: WalletRecord =
        serde_json::from_slice(bytes).map_err(|e| corrupt(NAME, format!("wallet: {e}")))?;
    if r.v != RECORD_VERSION {
        return Err(corrupt(NAME, format!("unknown wallet record version {}", r.v)));
    }
    Ok(r)
}

fn store(w: &mut Writes<'_>, r: &WalletRecord) {
    let bytes = serde_json::to_vec(r).expect("wallets serialize");
    w.put(wallet_key(&r.account.wallet_id), bytes);
}

/// The rows one event adds to a wallet's transactions.
struct Rows<'a> {
    wallet_id: &'a str,
    position: Position,
    at: Option<Timestamp>,
    next: u16,
}

impl Rows<'_> {
    fn push(&mut self, w: &mut Writes<'_>, row: WalletTransaction) {
        let key = format!("walt/{}/{}/{:04x}", self.wallet_id, token(self.position), self.next);
        self.next += 1;
        w.put(key, serde_json::to_vec(&row).expect("transactions serialize"));
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        kind: &str,
        amount: Decimal,
        top_up: u32,
        credit_kind: Option<CreditKind>,
        invoice_id: &str,
        balance_after: Decimal,
        date: Option<Date>,
    ) -> WalletTransaction {
        WalletTransaction {
            v: RECORD_VERSION,
            kind: kind.to_string(),
            at: self.at,
            amount,
            top_up,
            credit_kind,
            invoice_id: invoice_id.to_string(),
            balance_after,
            date,
            position: self.position,
        }
    }
}

/// Applies a wallet event (and `SubscriptionStarted`, for the customer's subscriptions).
pub(crate) fn apply(w: &mut Writes<'_>, event: &Event, position: Position) -> Result<()> {
    let bad = |detail: String| inconsistent(position, detail);
    match event {
        Event::SubscriptionStarted { subscription_id, customer_id, .. } => {
            w.put(format!("csub/{customer_id}/{subscription_id}"), "");
            w.put(format!("subc/{subscription_id}"), customer_id.as_bytes());
        }
        Event::WalletOpened(o) => {
            if w.get(&wallet_key(&o.wallet_id))?.is_some() {
                return Err(bad(format!("wallet {} opened twice", o.wallet_id)));
            }
            let record = WalletRecord {
                v: RECORD_VERSION,
                account: WalletAccount::opened(o),
                updated_position: position,
            };
            store(w, &record);
            let mut ids = wallet_ids(w.get(&customer_key(&o.customer_id))?)?;
            ids.push(o.wallet_id.clone());
            w.put(customer_key(&o.customer_id), serde_json::to_vec(&ids).expect("ids serialize"));
        }
        Event::WalletToppedUp(t) => {
            let mut r = load(w, &t.wallet_id, position)?;
            if r.account.top_ups + 1 != t.top_up || (!t.usable && t.invoice_id.is_none()) {
                return Err(bad(format!(
                    "top-up {} of wallet {} out of order",
                    t.top_up, t.wallet_id
                )));
            }
            r.account.top_up(t);
            let mut rows =
                Rows { wallet_id: &t.wallet_id, position, at: Some(t.occurred_at), next: 0 };
            let added = if t.usable { t.amount } else { Decimal::ZERO };
            let invoice = t.invoice_id.as_deref().unwrap_or_default();
            let balance = r.account.balance();
            let row =
                rows.row("top_up", added, t.top_up, Some(t.kind), invoice, balance, t.expires_on);
            rows.push(w, row);
            r.updated_position = position;
            store(w, &r);
        }
        Event::WalletCreditsUsable { wallet_id, top_up, occurred_at, .. } => {
            let mut r = load(w, wallet_id, position)?;
            let Some(pending) = r.account.pending.iter().find(|p| p.lot.top_up == *top_up).cloned()
            else {
                return Err(bad(format!("wallet {wallet_id} has no pending top-up {top_up}")));
            };
            r.account.make_usable(*top_up);
            let mut rows = Rows { wallet_id, position, at: Some(*occurred_at), next: 0 };
            let balance = r.account.balance();
            let lot = &pending.lot;
            let row = rows.row(
                "usable",
                lot.amount,
                *top_up,
                Some(lot.kind),
                &pending.invoice_id,
                balance,
                lot.expires_on,
            );
            rows.push(w, row);
            r.updated_position = position;
            store(w, &r);
        }
        Event::WalletCreditsExpired { wallet_id, expired_on, lots, .. } => {
            let mut r = load(w, wallet_id, position)?;
            r.account.check_expired(lots).map_err(bad)?;
            r.account.expire(lots);
            let mut rows = Rows { wallet_id, position, at: None, next: 0 };
            let balance = r.account.balance();
            for t in lots {
                let row = rows.row(
                    "expired",
                    -t.amount,
                    t.top_up,
                    Some(t.kind),
                    "",
                    balance,
                    Some(*expired_on),
                );
                rows.push(w, row);
            }
            r.updated_position = position;
            store(w, &r);
        }
        Event::WalletBalanceLow { wallet_id, occurred_at, .. } => {
            let mut r = load(w, wallet_id, position)?;
            r.account.mark_low();
            let mut rows = Rows { wallet_id, position, at: Some(*occurred_at), next: 0 };
            let row =
                rows.row("balance_low", Decimal::ZERO, 0, None, "", r.account.balance(), None);
            rows.push(w, row);
            r.updated_position = position;
            store(w, &r);
        }
        _ => {}
    }
    Ok(())
}

/// What an issued invoice's wallet credits paid comes off the lots.
pub(crate) fn used(w: &mut Writes<'_>, invoice: &Invoice, position: Position) -> Result<()> {
    let mut n: u16 = 0;
    for u in &invoice.wallet_applied {
        let mut r = load(w, &u.wallet_id, position)?;
        r.account.check_use(u).map_err(|detail| inconsistent(position, detail))?;
        r.account.take(u);
        let mut rows =
            Rows { wallet_id: &u.wallet_id, position, at: Some(invoice.issued_at), next: n };
        let balance = r.account.balance();
        let row = rows.row(
            "consumed",
            -u.amount,
            u.top_up,
            Some(u.kind),
            &invoice.invoice_id,
            balance,
            None,
        );
        rows.push(w, row);
        n = rows.next;
        r.updated_position = position;
        store(w, &r);
    }
    Ok(())
}

/// A voided purchase invoice's pending credits never arrive.
pub(crate) fn voided(w: &mut Writes<'_>, invoice: &Invoice, position: Position) -> Result<()> {
    if invoice.reason != IssueReason::WalletTopUp {
        return Ok(());
    }
    for id in wallet_ids(w.get(&customer_key(&invoice.customer_id))?)? {
        let mut r = load(w, &id, position)?;
        let Some(pending) = r.account.pending_of(&invoice.invoice_id).cloned() else { continue };
        r.account.cancel_pending(&invoice.invoice_id);
        let mut rows = Rows { wallet_id: &id, position, at: None, next: 0 };
        let (lot, balance) = (&pending.lot, r.account.balance());
        let row = rows.row(
            "voided",
            Decimal::ZERO,
            lot.top_up,
            Some(lot.kind),
            &invoice.invoice_id,
            balance,
            None,
        );
        rows.push(w, row);
        r.updated_position = position;
        store(w, &r);
    }
    Ok(())
}

fn check_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.contains('/') {
        let msg = format!("{field} {id:?} must be non-empty without '/'");
        return Err(ProjectionError::InvalidArgument(msg));
    }
    Ok(())
}

fn load_snap(snap: &Snapshot<'_>, id: &str) -> Result<Option<WalletRecord>> {
    snap.get(&wallet_key(id))?.map(|b| decode(&b)).transpose()
}

/// One page of a wallet's transactions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionPage {
    pub transactions: Vec<WalletTransaction>,
    pub next_page_token: Option<String>,
}

/// Reading wallets (on the invoices read model's reader).
impl InvoiceReader {
    /// The wallet, if it was opened.
    pub fn wallet(&self, wallet_id: &str) -> Result<Option<WalletRecord>> {
        check_id("wallet_id", wallet_id)?;
        self.model().read(|snap| load_snap(snap, wallet_id))
    }

    /// The customer's wallets in the order opened (at most the domain's bound per customer).
    pub fn wallets_of(&self, customer_id: &str) -> Result<Vec<WalletRecord>> {
        check_id("customer_id", customer_id)?;
        self.model().read(|snap| {
            let mut out = Vec::new();
            for id in wallet_ids(snap.get(&customer_key(customer_id))?)? {
                let missing = || corrupt(NAME, format!("index names missing wallet {id}"));
                out.push(load_snap(snap, &id)?.ok_or_else(missing)?);
            }
            Ok(out)
        })
    }

    /// The customer of a subscription, if it was started.
    pub fn customer_of_subscription(&self, subscription_id: &str) -> Result<Option<String>> {
        let key = format!("subc/{subscription_id}");
        let found = self.model().read(|snap| snap.get(key.as_bytes()))?;
        Ok(found.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// The customer's subscriptions (at most [`ONGOING_SUBSCRIPTIONS_MAX`], in id order).
    pub fn subscriptions_of(&self, customer_id: &str) -> Result<Vec<String>> {
        check_id("customer_id", customer_id)?;
        let prefix = format!("csub/{customer_id}/");
        self.model().read(|snap| {
            let hits = snap.scan(prefix.as_bytes(), None, ONGOING_SUBSCRIPTIONS_MAX)?;
            Ok(hits
                .iter()
                .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
                .collect())
        })
    }

    /// Up to `page_size` (0: [`TRANSACTIONS_PAGE_DEFAULT`], at most
    /// [`TRANSACTIONS_PAGE_MAX`]) transactions of the wallet, oldest first, after `page_token`.
    pub fn wallet_transactions(
        &self,
        wallet_id: &str,
        page_token: Option<&str>,
        page_size: usize,
    ) -> Result<TransactionPage> {
        check_id("wallet_id", wallet_id)?;
        let valid =
            |t: &str| t.len() == 21 && t.bytes().all(|b| b.is_ascii_hexdigit() || b == b'/');
        if let Some(t) = page_token.filter(|t| !valid(t)) {
            return Err(ProjectionError::InvalidArgument(format!("invalid page token {t:?}")));
        }
        let size = match page_size {
            0 => TRANSACTIONS_PAGE_DEFAULT,
            n => n.min(TRANSACTIONS_PAGE_MAX),
        };
        let prefix = format!("walt/{wallet_id}/");
        self.model().read(|snap| {
            let after = page_token.map(str::as_bytes);
            let hits = snap.scan(prefix.as_bytes(), after, size + 1)?;
            let more = hits.len() > size;
            let mut transactions = Vec::with_capacity(size);
            let mut last = None;
            for (k, v) in hits.into_iter().take(size) {
                let t: WalletTransaction = serde_json::from_slice(&v)
                    .map_err(|e| corrupt(NAME, format!("wallet transaction: {e}")))?;
                transactions.push(t);
                last = Some(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            }
            Ok(TransactionPage { transactions, next_page_token: if more { last } else { None } })
        })
    }
}
