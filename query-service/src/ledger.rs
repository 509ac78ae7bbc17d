//! `ListJournalEntries` and `GetRevenueWaterfall`: requests checked, journal read-model types
//! converted to the wire.

use std::collections::BTreeMap;

use command_service::convert::money;
use domain::money::Currency;
use jiff::civil::Date;
use projections::journal::{entry_id, EntryKind, JournalEntry, WaterfallRow, WATERFALL_MONTHS_MAX};
use proto::v1 as pb;
use rust_decimal::Decimal;
use tonic::Status;

use crate::check::{checked, Check};

/// A validated `ListJournalEntriesRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntriesArgs {
    pub from: Option<Date>,
    pub to: Option<Date>,
    pub page_size: usize,
    pub page_token: Option<String>,
}

pub fn parse_entries(r: &pb::ListJournalEntriesRequest) -> Result<EntriesArgs, Status> {
    let mut c = Check::default();
    let from = c.opt_date("from", &r.from);
    let to = c.opt_date("to", &r.to);
    c.order("to", from, to);
    let page_size = c.page_size("page_size", r.page_size);
    c.done()?;
    Ok(EntriesArgs {
        from: checked(from)?,
        to: checked(to)?,
        page_size,
        page_token: (!r.page_token.is_empty()).then(|| r.page_token.clone()),
    })
}

fn description(k: EntryKind, e: &JournalEntry) -> String {
    let (invoice_id, subscription_id) = (&e.invoice_id, &e.subscription_id);
    if !e.credit_note_id.is_empty() {
        let note = &e.credit_note_id;
        return match k {
            EntryKind::Recognition => format!("Revenue of {invoice_id} reversed by {note}"),
            _ => format!("Credit note {note} on {invoice_id}"),
        };
    }
    match k {
        EntryKind::UsageAccrual => {
            format!("Usage of subscription {subscription_id} recognized as consumed")
        }
        EntryKind::InvoiceIssued => format!("Invoice {invoice_id} issued"),
        EntryKind::Recognition => format!("Revenue recognized on {invoice_id}"),
        EntryKind::Payment => format!("Payment received on {invoice_id}"),
        EntryKind::Uncollectible => format!("Invoice {invoice_id} written off as uncollectible"),
        EntryKind::Void => format!("Invoice {invoice_id} voided"),
        EntryKind::VoidRecognition => {
            format!("Revenue recognized on {invoice_id} before its void reversed")
        }
        EntryKind::CreditNote => format!("Credit note on {invoice_id}"),
        EntryKind::WalletExpiry => {
            format!("Paid credits of wallet {} expired unused (breakage)", e.wallet_id)
        }
    }
}

pub fn entry(e: JournalEntry) -> pb::JournalEntry {
    let currency = e.currency.code();
    let lines = e
        .postings
        .iter()
        .map(|p| pb::JournalLine {
            account: p.account.as_str().into(),
            debit: money(e.currency, p.debit),
            credit: money(e.currency, p.credit),
            currency: currency.into(),
        })
        .collect();
    pb::JournalEntry {
        entry_id: entry_id(e.seq),
        date: e.date.to_string(),
        kind: e.kind.as_str().into(),
        description: description(e.kind, &e),
        invoice_id: e.invoice_id,
        subscription_id: e.subscription_id,
        credit_note_id: e.credit_note_id,
        wallet_id: e.wallet_id,
        currency: currency.into(),
        source_position: e.position,
        lines,
    }
}

/// Waterfall rows per page when the caller asks for 0.
pub const WATERFALL_PAGE_DEFAULT: usize = 100;

/// A validated `RevenueWaterfallRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaterfallArgs {
    /// First days of the first and last months.
    pub from: Date,
    pub to: Date,
    pub currency: Option<Currency>,
    pub page_size: usize,
    /// The last row of the previous page: (invoice id, line index).
    pub after: Option<(String, usize)>,
}

pub fn parse_waterfall(r: &pb::RevenueWaterfallRequest) -> Result<WaterfallArgs, Status> {
    let mut c = Check::default();
    let from = c.month("from_month", &r.from_month);
    let to = c.month("to_month", &r.to_month);
    if let (Some(f), Some(t)) = (from, to) {
        let months = (t.year() - f.year()) as i32 * 12 + (t.month() - f.month()) as i32 + 1;
        if !(1..=WATERFALL_MONTHS_MAX).contains(&months) {
            let msg = format!("from_month..to_month must span 1 to {WATERFALL_MONTHS_MAX} months");
            c.bad("to_month", msg);
        }
    }
    let currency = match r.currency.as_str() {
        "" => Some(None),
        code => c.currency("currency", code).map(Some),
    };
    let page_size = c.page_size("page_size", r.page_size);
    let after = match r.page_token.as_str() {
        "" => Some(None),
        token => waterfall_token(&mut c, token).map(Some),
    };
    c.done()?;
    Ok(WaterfallArgs {
        from: checked(from)?,
        to: checked(to)?,
        currency: checked(currency)?,
        page_size: if page_size == 0 { WATERFALL_PAGE_DEFAULT } else { page_size },
        after: checked(after)?,
    })
}

/// `<invoice_id>#<line_index>`, as [`waterfall`] makes it.
fn waterfall_token(c: &mut Check, token: &str) -> Option<(String, usize)> {
    let parsed = token.rsplit_once('#').and_then(|(id, i)| {
        let index = (!i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())).then(|| i.parse());
        Some((id.to_string(), index?.ok()?))
    });
    if parsed.is_none() {
        c.bad("page_token", format!("invalid page token {token:?}"));
    }
    parsed
}

/// One page of rows (of the wanted currency, after the token) with the totals of all of them.
pub fn waterfall(args: &WaterfallArgs, rows: Vec<WaterfallRow>) -> pb::RevenueWaterfallResponse {
    let rows: Vec<WaterfallRow> =
        rows.into_iter().filter(|r| args.currency.is_none_or(|c| r.currency == c)).collect();
    let mut totals: BTreeMap<(&str, &str), (Currency, Decimal)> = BTreeMap::new();
    for row in &rows {
        for (month, amount) in &row.months {
            let key = (row.currency.code(), month.as_str());
            totals.entry(key).or_insert((row.currency, Decimal::ZERO)).1 += amount;
        }
    }
    let totals = totals
        .into_iter()
        .filter(|(_, (_, a))| !a.is_zero())
        .map(|((code, month), (currency, a))| pb::WaterfallTotal {
            currency: code.into(),
            month: month.into(),
            amount: money(currency, a),
        })
        .collect();
    let after = |r: &&WaterfallRow| {
        let key = (r.line.invoice_id.as_str(), r.line.line_index);
        args.after.as_ref().is_none_or(|(id, i)| key > (id.as_str(), *i))
    };
    let page: Vec<&WaterfallRow> = rows.iter().filter(after).take(args.page_size + 1).collect();
    let more = page.len() > args.page_size;
    let page = &page[..page.len().min(args.page_size)];
    let next_page_token = match page.last() {
        Some(last) if more => format!("{}#{}", last.line.invoice_id, last.line.line_index),
        _ => String::new(),
    };
    pb::RevenueWaterfallResponse {
        rows: page.iter().map(|r| waterfall_row(r)).collect(),
        totals,
        next_page_token,
        position: 0,
    }
}

fn waterfall_row(r: &WaterfallRow) -> pb::WaterfallRow {
    let total: Decimal = r.months.iter().map(|(_, a)| *a).sum();
    pb::WaterfallRow {
        invoice_id: r.line.invoice_id.clone(),
        line_index: r.line.line_index as u32,
        currency: r.currency.code().into(),
        revenue_type: r.revenue_type.as_str().into(),
        months: r
            .months
            .iter()
            .map(|(m, a)| pb::MonthAmount { month: m.clone(), amount: money(r.currency, *a) })
            .collect(),
        total: money(r.currency, total),
    }
}
