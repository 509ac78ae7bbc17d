//! The `invoices` read model (SPEC §5): every issued invoice with its lines, tax, totals,
//! status (open, paid, void, uncollectible), amount paid, amount due and failed attempts, built
//! from `InvoiceIssued`, `PaymentSucceeded`, `PaymentFailed`, `InvoiceVoided`,
//! `InvoiceMarkedUncollectible` and `CreditNoteIssued` (which also keeps the credit note
//! itself and the customer's credit balance). Status rules are the write model's (`domain::ledger` evolve):
//! an invoice with total ≤ 0 is paid at issue; it becomes paid when the payments reach its total
//! (also from uncollectible); nothing is due on a void invoice.
//!
//! Keys (see the crate docs): `inv/<invoice_id>` → [`InvoiceRecord`] JSON, and index keys
//! `idx/all/<pos>`, `idx/c/<customer>/<pos>`, `idx/s/<status>/<pos>`,
//! `idx/cs/<customer>/<status>/<pos>`, and `idx/f/<pos>` for an invoice with anomaly flags
//! (`domain::anomaly`) → invoice id, `<pos>` = issue position in 16 hex digits.
//! The service-period filter of a listing has no index: it is checked on each invoice the
//! customer/status index yields, a bounded number per page ([`PERIOD_SCAN_MAX`]).

use domain::calendar::Period;
use domain::credit_note::{CreditDestination, CreditNote, InvoiceCredits};
use domain::events::Event;
use domain::invoice::{Invoice, InvoiceAccount, InvoiceStatus};
use event_store::{Position, RecordedEvent};
use jiff::civil::Date;
use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::store::{corrupt, ReadModel, Snapshot, Writes};
use crate::{Projection, ProjectionError, Result};

/// The projection's name (tree `projection/invoices`).
pub const NAME: &str = "invoices";
/// Version of [`InvoiceRecord`]'s encoding (its `v` field).
pub const RECORD_VERSION: u16 = 1;
/// Page size used when a caller asks for 0.
pub const PAGE_SIZE_DEFAULT: usize = 100;
/// Largest page; larger requests are served this many.
pub const PAGE_SIZE_MAX: usize = 1_000;
/// Invoices a page of a period-filtered listing examines at most.
pub const PERIOD_SCAN_MAX: usize = 5_000;

/// One invoice as the read model holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceRecord {
    /// Encoding version, [`RECORD_VERSION`].
    pub v: u16,
    /// The invoice as issued: lines, subtotal, tax, total.
    pub invoice: Invoice,
    pub status: InvoiceStatus,
    pub amount_paid: Decimal,
    pub amount_due: Decimal,
    pub failed_attempts: u32,
    pub last_failure_reason: Option<String>,
    pub paid_at: Option<Timestamp>,
    pub voided_at: Option<Timestamp>,
    pub void_reason: Option<String>,
    pub uncollectible_at: Option<Timestamp>,
    /// Position of `InvoiceIssued`.
    pub issued_position: Position,
    /// Position of the last event that changed the invoice.
    pub updated_position: Position,
    /// What its credit notes credited (SPEC §8.3).
    #[serde(default)]
    pub credits: InvoiceCredits,
}

/// A credit note as the read model holds it (`cn/<credit_note_id>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNoteRecord {
    /// Encoding version, [`RECORD_VERSION`].
    pub v: u16,
    pub note: CreditNote,
    /// Position of `CreditNoteIssued`.
    pub position: Position,
}

impl InvoiceRecord {
    fn issued(invoice: &Invoice, position: Position) -> Self {
        let account = InvoiceAccount::issued(invoice.clone());
        let paid = account.status == InvoiceStatus::Paid;
        InvoiceRecord {
            v: RECORD_VERSION,
            amount_due: account.amount_due(),
            status: account.status,
            amount_paid: account.amount_paid,
            failed_attempts: account.failed_attempts,
            paid_at: paid.then_some(invoice.issued_at),
            invoice: account.invoice,
            last_failure_reason: None,
            voided_at: None,
            void_reason: None,
            uncollectible_at: None,
            issued_position: position,
            updated_position: position,
            credits: InvoiceCredits::default(),
        }
    }

    fn pay(&mut self, amount: Decimal, at: Timestamp) -> Result<(), String> {
        self.amount_paid = self.amount_paid.checked_add(amount).ok_or_else(|| {
            format!(
                "sum of the payments of invoice {} (customer {}) overflows the decimal range",
                self.invoice.invoice_id, self.invoice.customer_id
            )
        })?;
        let settled = self.amount_paid.saturating_add(self.credits.offset);
        if settled > self.invoice.due_at_issue() {
            return Err(format!("payments {} and offsets exceed the total", self.amount_paid));
        }
        if settled == self.invoice.due_at_issue() {
            self.status = InvoiceStatus::Paid;
            self.paid_at = Some(at);
        }
        Ok(())
    }

    /// Same rule as `InvoiceAccount::credit`: an offset that leaves nothing due closes an open
    /// invoice.
    fn credit(&mut self, note: &CreditNote) -> Result<(), String> {
        if matches!(self.status, InvoiceStatus::Void | InvoiceStatus::Uncollectible) {
            return Err(format!(
                "credit note {} on a {} invoice",
                note.credit_note_id,
                self.status.as_str()
            ));
        }
        self.credits.add(note);
        if self.credits.subtotal > self.invoice.subtotal {
            return Err(format!("credit notes exceed the subtotal of invoice {}", note.invoice_id));
        }
        self.refresh_amount_due();
        if self.status == InvoiceStatus::Open && self.amount_due.is_zero() {
            self.status = InvoiceStatus::Closed;
        }
        Ok(())
    }

    fn fail(&mut self, attempt: u32, reason: &str) -> Result<(), String> {
        self.failed_attempts = attempt;
        self.last_failure_reason = Some(reason.to_string());
        Ok(())
    }

    fn void(&mut self, reason: &str, at: Timestamp) -> Result<(), String> {
        self.status = InvoiceStatus::Void;
        self.voided_at = Some(at);
        self.void_reason = Some(reason.to_string());
        Ok(())
    }

    fn mark_uncollectible(&mut self, at: Timestamp) -> Result<(), String> {
        self.status = InvoiceStatus::Uncollectible;
        self.uncollectible_at = Some(at);
        Ok(())
    }

    /// Same rule as `InvoiceAccount::amount_due`.
    fn refresh_amount_due(&mut self) {
        self.amount_due = match self.status {
            InvoiceStatus::Void => Decimal::ZERO,
            // Saturating is exact here: a result below the range is clamped to 0 anyway.
            _ => {
                let settled = self.amount_paid.saturating_add(self.credits.offset);
                self.invoice.due_at_issue().saturating_sub(settled).max(Decimal::ZERO)
            }
        };
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("invoice records always serialize")
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let record: InvoiceRecord = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(NAME, format!("invoice record: {e}")))?;
        if record.v != RECORD_VERSION {
            return Err(corrupt(NAME, format!("unknown invoice record version {}", record.v)));
        }
        Ok(record)
    }
}

fn record_key(invoice_id: &str) -> Vec<u8> {
    format!("inv/{invoice_id}").into_bytes()
}

fn position_token(position: Position) -> String {
    format!("{position:016x}")
}

fn index_keys(r: &InvoiceRecord) -> Vec<Vec<u8>> {
    let pos = position_token(r.issued_position);
    let (customer, status) = (&r.invoice.customer_id, r.status.as_str());
    let mut keys = vec![
        format!("idx/all/{pos}"),
        format!("idx/c/{customer}/{pos}"),
        format!("idx/s/{status}/{pos}"),
        format!("idx/cs/{customer}/{status}/{pos}"),
    ];
    if !r.invoice.anomalies.is_empty() {
        keys.push(format!("idx/f/{pos}"));
    }
    keys.into_iter().map(String::into_bytes).collect()
}

/// The `invoices` projection.
#[derive(Clone, Copy, Debug, Default)]
pub struct InvoicesProjection;

impl Projection for InvoicesProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    /// 2: wallets, their transactions and each customer's subscriptions (`wal/`, `walc/`,
    /// `walt/`, `csub/`, `subc/`; a model of version 1 lacks the subscriptions of old logs),
    /// and usage alerts (`ual/`, `ualt/`).
    fn version(&self) -> u32 {
        2
    }

    fn wants(&self, event_type: &str) -> bool {
        event_type.starts_with("Invoice")
            || event_type.starts_with("Payment")
            || event_type.starts_with("Coupon")
            || event_type == "CreditNoteIssued"
            || event_type.starts_with("Wallet")
            || event_type == "SubscriptionStarted"
            || event_type.starts_with("UsageAlert")
    }

    fn apply(&mut self, w: &mut Writes<'_>, event: &RecordedEvent, decoded: &Event) -> Result<()> {
        let at = event.position;
        match decoded {
            Event::InvoiceIssued(invoice) => issue(w, invoice, at),
            Event::PaymentSucceeded { invoice_id, amount, occurred_at } => {
                update(w, invoice_id, at, |r| r.pay(*amount, *occurred_at))
            }
            Event::PaymentFailed { invoice_id, reason, attempt, .. } => {
                update(w, invoice_id, at, |r| r.fail(*attempt, reason))
            }
            Event::InvoiceVoided { invoice_id, reason, occurred_at } => {
                update(w, invoice_id, at, |r| r.void(reason, *occurred_at))?;
                voided(w, invoice_id, at)
            }
            Event::InvoiceMarkedUncollectible { invoice_id, occurred_at } => {
                update(w, invoice_id, at, |r| r.mark_uncollectible(*occurred_at))
            }
            Event::CreditNoteIssued(note) => credit(w, note, at),
            Event::CouponDefined(_) | Event::CouponApplied { .. } | Event::CouponRemoved { .. } => {
                crate::customer_coupons::apply(w, decoded, at)
            }
            Event::SubscriptionStarted { .. }
            | Event::WalletOpened(_)
            | Event::WalletToppedUp(_)
            | Event::WalletCreditsUsable { .. }
            | Event::WalletCreditsExpired { .. }
            | Event::WalletBalanceLow { .. } => crate::wallets::apply(w, decoded, at),
            Event::UsageAlertCreated { .. }
            | Event::UsageAlertDeleted { .. }
            | Event::UsageAlertTriggered { .. } => crate::alerts::apply(w, decoded, at),
            _ => Ok(()),
        }
    }
}

fn credit_note_key(credit_note_id: &str) -> Vec<u8> {
    format!("cn/{credit_note_id}").into_bytes()
}

fn credit_balance_key(customer_id: &str) -> Vec<u8> {
    format!("cb/{customer_id}").into_bytes()
}

/// Records a credit note: the document and its indexes (`cnx/a/<pos>`, `cnx/i/<invoice>/<pos>`,
/// `cnx/c/<customer>/<pos>` → id), the credited invoice, and for a `credit` note the
/// customer's credit balance (`cb/<customer>`).
fn credit(w: &mut Writes<'_>, note: &CreditNote, position: Position) -> Result<()> {
    if w.get(&credit_note_key(&note.credit_note_id))?.is_some() {
        let detail = format!("credit note {} issued twice", note.credit_note_id);
        return Err(inconsistent(position, detail));
    }
    update(w, &note.invoice_id, position, |r| r.credit(note))?;
    let record = CreditNoteRecord { v: RECORD_VERSION, note: note.clone(), position };
    let encoded = serde_json::to_vec(&record).expect("credit notes serialize");
    w.put(credit_note_key(&note.credit_note_id), encoded);
    let pos = position_token(position);
    let id = note.credit_note_id.as_bytes();
    w.put(format!("cnx/a/{pos}"), id);
    w.put(format!("cnx/i/{}/{pos}", note.invoice_id), id);
    w.put(format!("cnx/c/{}/{pos}", note.customer_id), id);
    if note.destination == CreditDestination::Credit {
        let key = credit_balance_key(&note.customer_id);
        let mut credit = match w.get(&key)? {
            Some(b) => CreditBalance::decode(&b)?,
            None => CreditBalance { currency: note.currency, balance: Decimal::ZERO },
        };
        credit.balance = credit.balance.checked_add(note.total).ok_or_else(|| {
            inconsistent(position, format!("credit balance of {} overflows", note.customer_id))
        })?;
        w.put(key, serde_json::to_vec(&credit).expect("balances serialize"));
    }
    Ok(())
}

/// A customer's credit balance from `credit` notes (`cb/<customer>`), in its currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditBalance {
    pub currency: domain::money::Currency,
    pub balance: Decimal,
}

impl CreditBalance {
    fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| corrupt(NAME, format!("credit balance: {e}")))
    }
}

pub(crate) fn inconsistent(position: Position, detail: impl Into<String>) -> ProjectionError {
    ProjectionError::Inconsistent { projection: NAME, position, detail: detail.into() }
}

fn issue(w: &mut Writes<'_>, invoice: &Invoice, position: Position) -> Result<()> {
    if w.get(&record_key(&invoice.invoice_id))?.is_some() {
        return Err(inconsistent(position, format!("invoice {} issued twice", invoice.invoice_id)));
    }
    put(w, &InvoiceRecord::issued(invoice, position));
    crate::customer_coupons::used(w, invoice, position)?;
    crate::wallets::used(w, invoice, position)?;
    if !invoice.credit_applied.is_zero() {
        let key = credit_balance_key(&invoice.customer_id);
        let bytes = w.get(&key)?.ok_or_else(|| {
            inconsistent(
                position,
                format!("credit applied without a balance: {}", invoice.invoice_id),
            )
        })?;
        let mut credit = CreditBalance::decode(&bytes)?;
        credit.balance -= invoice.credit_applied;
        if credit.balance < Decimal::ZERO {
            let detail =
                format!("invoice {} applies more credit than the balance", invoice.invoice_id);
            return Err(inconsistent(position, detail));
        }
        w.put(key, serde_json::to_vec(&credit).expect("balances serialize"));
    }
    Ok(())
}

/// A void returns the credit balance the invoice took (as the write model does), and cancels a
/// purchase invoice's pending wallet credits.
fn voided(w: &mut Writes<'_>, invoice_id: &str, position: Position) -> Result<()> {
    let bytes = w.get(&record_key(invoice_id))?;
    let bytes =
        bytes.ok_or_else(|| inconsistent(position, format!("unknown invoice {invoice_id}")))?;
    let invoice = InvoiceRecord::decode(&bytes)?.invoice;
    if !invoice.credit_applied.is_zero() {
        let key = credit_balance_key(&invoice.customer_id);
        let bytes = w.get(&key)?.ok_or_else(|| {
            inconsistent(position, format!("credit applied without a balance: {invoice_id}"))
        })?;
        let mut credit = CreditBalance::decode(&bytes)?;
        credit.balance = credit.balance.checked_add(invoice.credit_applied).ok_or_else(|| {
            inconsistent(position, format!("credit balance of {} overflows", invoice.customer_id))
        })?;
        w.put(key, serde_json::to_vec(&credit).expect("balances serialize"));
    }
    crate::wallets::voided(w, &invoice, position)
}

fn update(
    w: &mut Writes<'_>,
    invoice_id: &str,
    position: Position,
    change: impl FnOnce(&mut InvoiceRecord) -> Result<(), String>,
) -> Result<()> {
    let bytes = w.get(&record_key(invoice_id))?;
    let bytes =
        bytes.ok_or_else(|| inconsistent(position, format!("unknown invoice {invoice_id}")))?;
    let mut record = InvoiceRecord::decode(&bytes)?;
    for key in index_keys(&record) {
        w.delete(key);
    }
    change(&mut record).map_err(|detail| inconsistent(position, detail))?;
    record.refresh_amount_due();
    record.updated_position = position;
    put(w, &record);
    Ok(())
}

fn put(w: &mut Writes<'_>, record: &InvoiceRecord) {
    let id = record.invoice.invoice_id.as_bytes();
    w.put(record_key(&record.invoice.invoice_id), record.encode());
    for key in index_keys(record) {
        w.put(key, id);
    }
}

/// Which invoices to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InvoiceFilter {
    pub customer_id: Option<String>,
    pub status: Option<InvoiceStatus>,
    /// Service-period bounds (inclusive local dates; `None` = unbounded): an invoice matches
    /// when its own period or any line's service period shares a day with them.
    pub period_from: Option<Date>,
    pub period_to: Option<Date>,
    /// Only invoices with anomaly flags: their own index when no customer or status is
    /// given, else checked on each invoice of that index like the period bounds.
    pub flagged: bool,
}

impl InvoiceFilter {
    fn prefix(&self) -> Result<String> {
        if let Some(c) = &self.customer_id {
            if c.is_empty() || c.contains('/') {
                let msg = format!("customer_id {c:?} must be non-empty without '/'");
                return Err(ProjectionError::InvalidArgument(msg));
            }
        }
        if let (Some(from), Some(to)) = (self.period_from, self.period_to) {
            if from > to {
                let msg = format!("period_from {from} is after period_to {to}");
                return Err(ProjectionError::InvalidArgument(msg));
            }
        }
        let status = self.status.map(|s| s.as_str());
        Ok(match (&self.customer_id, status) {
            (None, None) if self.flagged => "idx/f/".to_string(),
            (None, None) => "idx/all/".to_string(),
            (Some(c), None) => format!("idx/c/{c}/"),
            (None, Some(s)) => format!("idx/s/{s}/"),
            (Some(c), Some(s)) => format!("idx/cs/{c}/{s}/"),
        })
    }

    /// Whether a page checks invoices one by one (the index does not select them all).
    fn checks_each(&self) -> bool {
        let flagged_unindexed =
            self.flagged && (self.customer_id.is_some() || self.status.is_some());
        self.period_from.is_some() || self.period_to.is_some() || flagged_unindexed
    }

    /// Whether the invoice matches the period bounds and the flagged filter (the index prefix
    /// did the rest).
    fn matches(&self, invoice: &Invoice) -> bool {
        let lines = invoice.lines.iter().map(|l| &l.service_period);
        let in_period = std::iter::once(&invoice.period).chain(lines).any(|p| self.overlaps(p));
        in_period && (!self.flagged || !invoice.anomalies.is_empty())
    }

    /// Whether `[p.start, p.end)` (an empty period: its start day) shares a day with the bounds.
    fn overlaps(&self, p: &Period) -> bool {
        let last = p.end.yesterday().map_or(p.start, |d| d.max(p.start));
        self.period_to.is_none_or(|to| p.start <= to)
            && self.period_from.is_none_or(|from| last >= from)
    }
}

/// One page of a listing, in issue order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoicePage {
    pub invoices: Vec<InvoiceRecord>,
    /// Present when more invoices may follow; pass it back to get the next page.
    pub next_page_token: Option<String>,
    /// The read model's checkpoint the page was read at.
    pub position: Position,
}

/// Read-only access to the invoices read model.
#[derive(Clone)]
pub struct InvoiceReader {
    model: ReadModel,
}

impl InvoiceReader {
    /// Wraps the read model of an [`InvoicesProjection`] runner.
    pub fn new(model: ReadModel) -> Self {
        assert_eq!(model.name(), NAME, "not the invoices read model");
        InvoiceReader { model }
    }

    pub fn model(&self) -> &ReadModel {
        &self.model
    }

    /// The invoice, if it has been issued (as of the read model's checkpoint).
    pub fn get(&self, invoice_id: &str) -> Result<Option<InvoiceRecord>> {
        self.model.read(|snap| load(snap, invoice_id.as_bytes()))
    }

    /// Up to `page_size` invoices matching `filter` (0 = [`PAGE_SIZE_DEFAULT`], at most
    /// [`PAGE_SIZE_MAX`]), after `page_token`, read from one consistent view.
    ///
    /// Customer and status select an index; the period bounds are checked on each invoice of
    /// it, at most [`PERIOD_SCAN_MAX`] per page, so a page of a period filter may be short (even
    /// empty) and still carry a token. Without a period filter a token means more invoices.
    pub fn list(
        &self,
        filter: &InvoiceFilter,
        page_token: Option<&str>,
        page_size: usize,
    ) -> Result<InvoicePage> {
        let prefix = filter.prefix()?;
        let after = page_token.map(parse_page_token).transpose()?;
        let size = if page_size == 0 { PAGE_SIZE_DEFAULT } else { page_size.min(PAGE_SIZE_MAX) };
        let budget = if filter.checks_each() { PERIOD_SCAN_MAX } else { size };
        self.model
            .read(|snap| Listing { snap, filter, prefix: &prefix, size, budget }.collect(after))
    }

    /// The credit note, if it has been issued.
    pub fn credit_note(&self, credit_note_id: &str) -> Result<Option<CreditNoteRecord>> {
        self.model.read(|snap| load_credit_note(snap, credit_note_id.as_bytes()))
    }

    /// The credit notes of an invoice, or of a customer, in issue order (at most
    /// [`PAGE_SIZE_MAX`]; an id must be non-empty without '/').
    pub fn credit_notes(&self, of: CreditNotesOf<'_>) -> Result<Vec<CreditNoteRecord>> {
        self.credit_notes_after(of, None, PAGE_SIZE_MAX)
    }

    /// Up to `size` (at most [`PAGE_SIZE_MAX`]) credit notes of `of` issued after log position
    /// `after`, in issue order.
    pub fn credit_notes_after(
        &self,
        of: CreditNotesOf<'_>,
        after: Option<Position>,
        size: usize,
    ) -> Result<Vec<CreditNoteRecord>> {
        let (prefix, id) = match of {
            CreditNotesOf::All => ("cnx/a", None),
            CreditNotesOf::Invoice(id) => ("cnx/i/", Some(id)),
            CreditNotesOf::Customer(id) => ("cnx/c/", Some(id)),
        };
        if let Some(id) = id.filter(|id| id.is_empty() || id.contains('/')) {
            let msg = format!("id {id:?} must be non-empty without '/'");
            return Err(ProjectionError::InvalidArgument(msg));
        }
        let prefix = format!("{prefix}{}/", id.unwrap_or_default());
        let after = after.map(position_token);
        self.model.read(|snap| {
            let after = after.as_deref().map(str::as_bytes);
            let hits = snap.scan(prefix.as_bytes(), after, size.min(PAGE_SIZE_MAX))?;
            let missing = |id: &[u8]| corrupt(NAME, format!("index names missing note {id:?}"));
            hits.iter()
                .map(|(_, id)| load_credit_note(snap, id)?.ok_or_else(|| missing(id)))
                .collect()
        })
    }

    /// The customer's credit balance from `credit` notes (`None`: never had one).
    pub fn credit_balance(&self, customer_id: &str) -> Result<Option<CreditBalance>> {
        self.model.read(|snap| {
            snap.get(&credit_balance_key(customer_id))?
                .map(|b| CreditBalance::decode(&b))
                .transpose()
        })
    }

    /// The ids of every invoice issued to `customer_id`, in issue order (index keys only).
    pub fn customer_invoice_ids(&self, customer_id: &str) -> Result<Vec<String>> {
        let filter = InvoiceFilter { customer_id: Some(customer_id.into()), ..Default::default() };
        let prefix = filter.prefix()?;
        self.model.read(|snap| {
            let hits = snap.scan(prefix.as_bytes(), None, usize::MAX)?;
            let id = |v: &[u8]| String::from_utf8(v.to_vec()).map_err(|_| corrupt(NAME, "id"));
            hits.iter().map(|(_, v)| id(v)).collect()
        })
    }
}

/// One page being read: index entries under `prefix`, filtered by the period bounds.
struct Listing<'s, 'a> {
    snap: &'s Snapshot<'a>,
    filter: &'s InvoiceFilter,
    prefix: &'s str,
    size: usize,
    /// Index entries examined at most.
    budget: usize,
}

impl Listing<'_, '_> {
    /// Reads from the index entry after `after`; stops when the page is full or the budget is
    /// spent (with a token if entries are left), or at the end of the index.
    fn collect(&self, mut after: Option<String>) -> Result<InvoicePage> {
        let mut invoices = Vec::new();
        let mut examined = 0;
        loop {
            let chunk = self.snap.scan(
                self.prefix.as_bytes(),
                after.as_deref().map(str::as_bytes),
                self.size + 1,
            )?;
            for (key, id) in &chunk {
                if invoices.len() == self.size || examined == self.budget {
                    return self.page(invoices, after);
                }
                examined += 1;
                after = Some(String::from_utf8_lossy(&key[self.prefix.len()..]).into_owned());
                let missing =
                    || corrupt(NAME, format!("index key {key:?} names a missing invoice"));
                let record = load(self.snap, id)?.ok_or_else(missing)?;
                if self.filter.matches(&record.invoice) {
                    invoices.push(record);
                }
            }
            if chunk.len() <= self.size {
                return self.page(invoices, None);
            }
        }
    }

    fn page(&self, invoices: Vec<InvoiceRecord>, next: Option<String>) -> Result<InvoicePage> {
        Ok(InvoicePage { invoices, next_page_token: next, position: self.snap.checkpoint()? })
    }
}

fn load(snap: &Snapshot<'_>, invoice_id: &[u8]) -> Result<Option<InvoiceRecord>> {
    let key = [b"inv/".as_slice(), invoice_id].concat();
    snap.get(&key)?.map(|bytes| InvoiceRecord::decode(&bytes)).transpose()
}

fn load_credit_note(snap: &Snapshot<'_>, id: &[u8]) -> Result<Option<CreditNoteRecord>> {
    let key = [b"cn/".as_slice(), id].concat();
    let decode = |bytes: &[u8]| -> Result<CreditNoteRecord> {
        let record: CreditNoteRecord = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(NAME, format!("credit note record: {e}")))?;
        if record.v != RECORD_VERSION {
            return Err(corrupt(NAME, format!("unknown credit note version {}", record.v)));
        }
        Ok(record)
    };
    snap.get(&key)?.map(|bytes| decode(&bytes)).transpose()
}

/// Whose credit notes to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditNotesOf<'a> {
    All,
    Invoice(&'a str),
    Customer(&'a str),
}

fn parse_page_token(token: &str) -> Result<String> {
    let valid = token.len() == 16 && token.bytes().all(|b| b.is_ascii_hexdigit());
    match valid.then(|| Position::from_str_radix(token, 16)).and_then(Result::ok) {
        Some(position) => Ok(position_token(position)),
        None => Err(ProjectionError::InvalidArgument(format!("invalid page token {token:?}"))),
    }
}
