//! The rows of each export, read page by page from the read models.

use std::io::Write;

use domain::money::Currency;
use jiff::civil::Date;
use projections::invoices::{
    CreditNotesOf, InvoiceFilter, InvoiceReader, InvoiceRecord, PAGE_SIZE_MAX as INVOICE_PAGE,
};
use projections::journal::{entry_id, JournalReader, PAGE_SIZE_MAX as JOURNAL_PAGE};
use projections::mrr::{Granularity, MrrReader, PAGE_SIZE_MAX as MRR_PAGE};
use rust_decimal::Decimal;

use super::format::{amount, col, date, named, opt, Cell, Column, ColumnType, Output, Sink};

use ColumnType::{Amount, Date as DateCol, Decimal as Dec, Int, Text, Timestamp as Instant};

/// The effective-date window of an export (both ends inclusive, either open).
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub from: Option<Date>,
    pub to: Option<Date>,
}

fn columns(columns: &[Column]) -> Vec<Column> {
    columns.to_vec()
}

/// Invoice header columns (lines are in the JSON export only).
pub const INVOICE_COLUMNS: [Column; 22] = [
    col("invoice_id", Text),
    col("customer_id", Text),
    col("subscription_id", Text),
    col("currency", Text),
    col("period_start", DateCol),
    col("period_end_exclusive", DateCol),
    col("issued_at", Instant),
    col("reason", Text),
    col("status", Text),
    col("subtotal", Amount),
    col("tax_rate_percent", Dec),
    col("tax", Amount),
    col("total", Amount),
    col("amount_paid", Amount),
    col("amount_due", Amount),
    col("failed_attempts", Int),
    col("line_count", Int),
    col("amount_credited", Amount),
    col("amount_offset", Amount),
    col("credit_applied", Amount),
    col("discount", Amount),
    col("wallet_applied", Amount),
];

/// An invoice line in the JSON export (fields in this order).
#[derive(serde::Serialize)]
struct LineJson<'a> {
    line_index: usize,
    kind: &'static str,
    description: &'a str,
    metric_code: Option<&'a str>,
    charge_model: Option<&'a str>,
    units: Option<String>,
    service_period_start: String,
    service_period_end_exclusive: String,
    /// Net of `discount`.
    amount: String,
    discount: String,
}

/// Credit note columns (lines are in the JSON export only).
pub const CREDIT_NOTE_COLUMNS: [Column; 12] = [
    col("credit_note_id", Text),
    col("number", Int),
    col("customer_id", Text),
    col("invoice_id", Text),
    col("currency", Text),
    col("issued_at", Instant),
    col("destination", Text),
    col("reason", Text),
    col("subtotal", Amount),
    col("tax", Amount),
    col("total", Amount),
    col("line_count", Int),
];

/// A credit note line in the JSON export (fields in this order).
#[derive(serde::Serialize)]
struct CreditLineJson<'a> {
    line_index: u32,
    description: &'a str,
    amount: String,
}

/// One row per credit note in issue order, issued (UTC date of `issued_at`) within `window`.
pub fn credit_notes<W: Write + Send>(
    reader: &InvoiceReader,
    window: Window,
    output: &Output,
    out: W,
) -> anyhow::Result<(W, u64)> {
    let mut sink = Sink::new(output, out, columns(&CREDIT_NOTE_COLUMNS))?;
    let (from, to) = (window.from, window.to);
    let mut after = None;
    loop {
        let page = reader.credit_notes_after(CreditNotesOf::All, after, INVOICE_PAGE)?;
        for r in &page {
            let n = &r.note;
            let day = n.issued_at.to_zoned(jiff::tz::TimeZone::UTC).date();
            if from.is_some_and(|f| day < f) || to.is_some_and(|t| day > t) {
                continue;
            }
            let cur = n.currency;
            let cells = [
                Cell::from(n.credit_note_id.as_str()),
                Cell::from(u64::from(n.number)),
                Cell::from(n.customer_id.as_str()),
                Cell::from(n.invoice_id.as_str()),
                Cell::from(cur.code()),
                Cell::from(n.issued_at.to_string()),
                Cell::from(n.destination.as_str()),
                Cell::from(n.reason.as_str()),
                Cell::from(amount(n.subtotal, cur)?),
                Cell::from(amount(n.tax, cur)?),
                Cell::from(amount(n.total, cur)?),
                Cell::from(n.lines.len() as u64),
            ];
            let mut lines = Vec::with_capacity(n.lines.len());
            for l in &n.lines {
                let amount = amount(l.amount, cur)?;
                lines.push(CreditLineJson {
                    line_index: l.line_index,
                    description: &l.description,
                    amount,
                });
            }
            sink.row(&cells, &[("lines", serde_json::to_string(&lines)?)])?;
        }
        match page.last() {
            Some(last) if page.len() == INVOICE_PAGE => after = Some(last.position),
            _ => return sink.finish(),
        }
    }
}

/// Calls `f` with every invoice in issue order issued (UTC date of `issued_at`) within
/// `window`, page by page.
fn each_invoice(
    reader: &InvoiceReader,
    window: Window,
    mut f: impl FnMut(&InvoiceRecord) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let from = window.from.map(|d| d.to_zoned(jiff::tz::TimeZone::UTC)).transpose()?;
    let to = window.to.map(|d| d.tomorrow()).transpose()?;
    let to = to.map(|d| d.to_zoned(jiff::tz::TimeZone::UTC)).transpose()?;
    let (from, to) = (from.map(|z| z.timestamp()), to.map(|z| z.timestamp()));
    let filter = InvoiceFilter::default();
    let mut token: Option<String> = None;
    loop {
        let page = reader.list(&filter, token.as_deref(), INVOICE_PAGE)?;
        for r in &page.invoices {
            let i = &r.invoice;
            if from.is_some_and(|f| i.issued_at < f) || to.is_some_and(|t| i.issued_at >= t) {
                continue;
            }
            f(r)?;
        }
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return Ok(()),
        }
    }
}

/// One row per invoice in issue order, issued (UTC date of `issued_at`) within `window`.
pub fn invoices<W: Write + Send>(
    reader: &InvoiceReader,
    window: Window,
    output: &Output,
    out: W,
) -> anyhow::Result<(W, u64)> {
    let mut sink = Sink::new(output, out, columns(&INVOICE_COLUMNS))?;
    each_invoice(reader, window, |r| {
        let i = &r.invoice;
        let cur = i.currency;
        let cells = [
            Cell::from(i.invoice_id.as_str()),
            Cell::from(i.customer_id.as_str()),
            Cell::from(i.subscription_id.as_str()),
            Cell::from(cur.code()),
            Cell::from(date(i.period.start)),
            Cell::from(date(i.period.end)),
            Cell::from(i.issued_at.to_string()),
            Cell::from(i.reason.as_str()),
            Cell::from(r.status.as_str()),
            Cell::from(amount(i.subtotal, cur)?),
            Cell::from(i.tax_rate.normalize().to_string()),
            Cell::from(amount(i.tax, cur)?),
            Cell::from(amount(i.total, cur)?),
            Cell::from(amount(r.amount_paid, cur)?),
            Cell::from(amount(r.amount_due, cur)?),
            Cell::from(u64::from(r.failed_attempts)),
            Cell::from(i.lines.len() as u64),
            Cell::from(amount(r.credits.total(), cur)?),
            Cell::from(amount(r.credits.offset, cur)?),
            Cell::from(amount(i.credit_applied, cur)?),
            Cell::from(amount(i.lines.iter().map(|l| l.discount).sum(), cur)?),
            Cell::from(amount(i.wallet_total(), cur)?),
        ];
        let mut lines = Vec::with_capacity(i.lines.len());
        for (index, l) in i.lines.iter().enumerate() {
            lines.push(LineJson {
                line_index: index,
                kind: l.kind.as_str(),
                description: &l.description,
                metric_code: l.metric_code.as_deref(),
                charge_model: l.charge_model.as_deref(),
                units: l.units.map(|u| u.normalize().to_string()),
                service_period_start: date(l.service_period.start),
                service_period_end_exclusive: date(l.service_period.end),
                amount: amount(l.amount, cur)?,
                discount: amount(l.discount, cur)?,
            });
        }
        sink.row(&cells, &[("lines", serde_json::to_string(&lines)?)])
    })?;
    sink.finish()
}

/// Invoice line columns: the line's invoice and its place, then the line's fields (as the
/// invoices JSON export's `lines`).
pub const INVOICE_LINE_COLUMNS: [Column; 15] = [
    col("invoice_id", Text),
    col("line_index", Int),
    col("customer_id", Text),
    col("subscription_id", Text),
    col("currency", Text),
    col("issued_at", Instant),
    col("kind", Text),
    col("description", Text),
    opt("metric_code", Text),
    opt("charge_model", Text),
    opt("units", Dec),
    col("service_period_start", DateCol),
    col("service_period_end_exclusive", DateCol),
    col("amount", Amount),
    col("discount", Amount),
];

/// One row per invoice line, invoices in issue order (issued within `window`, as
/// [`invoices`]) then lines in order. `amount` is net of `discount`: Σ amount of an invoice's
/// lines is its subtotal.
pub fn invoice_lines<W: Write + Send>(
    reader: &InvoiceReader,
    window: Window,
    output: &Output,
    out: W,
) -> anyhow::Result<(W, u64)> {
    let mut sink = Sink::new(output, out, columns(&INVOICE_LINE_COLUMNS))?;
    each_invoice(reader, window, |r| {
        let i = &r.invoice;
        let cur = i.currency;
        let issued_at = i.issued_at.to_string();
        for (index, l) in i.lines.iter().enumerate() {
            let cells = [
                Cell::from(i.invoice_id.as_str()),
                Cell::from(index as u64),
                Cell::from(i.customer_id.as_str()),
                Cell::from(i.subscription_id.as_str()),
                Cell::from(cur.code()),
                Cell::from(issued_at.as_str()),
                Cell::from(l.kind.as_str()),
                Cell::from(l.description.as_str()),
                Cell::from(l.metric_code.clone()),
                Cell::from(l.charge_model.clone()),
                Cell::from(l.units.map(|u| u.normalize().to_string())),
                Cell::from(date(l.service_period.start)),
                Cell::from(date(l.service_period.end)),
                Cell::from(amount(l.amount, cur)?),
                Cell::from(amount(l.discount, cur)?),
            ];
            sink.row(&cells, &[])?;
        }
        Ok(())
    })?;
    sink.finish()
}

pub const JOURNAL_COLUMNS: [Column; 12] = [
    col("entry", Text),
    col("date", DateCol),
    col("kind", Text),
    col("invoice_id", Text),
    col("subscription_id", Text),
    col("currency", Text),
    col("account", Text),
    col("debit", Amount),
    col("credit", Amount),
    col("log_position", Int),
    col("credit_note_id", Text),
    col("wallet_id", Text),
];

/// One row per posting, entries in date then posting order, dated within `window`.
pub fn journal<W: Write + Send>(
    reader: &JournalReader,
    window: Window,
    output: &Output,
    out: W,
) -> anyhow::Result<(W, u64)> {
    let mut sink = Sink::new(output, out, columns(&JOURNAL_COLUMNS))?;
    // Start right after the last possible entry of the day before `from`.
    let mut token = match window.from.map(|d| d.yesterday()) {
        Some(Ok(day_before)) => Some(format!("{}/{:016x}", date(day_before), u64::MAX)),
        _ => None,
    };
    loop {
        let page = reader.entries(token.as_deref(), JOURNAL_PAGE)?;
        for e in &page.entries {
            if window.to.is_some_and(|to| e.date > to) {
                return sink.finish();
            }
            if window.from.is_some_and(|from| e.date < from) {
                continue;
            }
            for p in &e.postings {
                let cells = [
                    Cell::from(entry_id(e.seq)),
                    Cell::from(date(e.date)),
                    Cell::from(e.kind.as_str()),
                    Cell::from(e.invoice_id.as_str()),
                    Cell::from(e.subscription_id.as_str()),
                    Cell::from(e.currency.code()),
                    Cell::from(p.account.as_str()),
                    Cell::from(amount(p.debit, e.currency)?),
                    Cell::from(amount(p.credit, e.currency)?),
                    Cell::from(e.position),
                    Cell::from(e.credit_note_id.as_str()),
                    Cell::from(e.wallet_id.as_str()),
                ];
                sink.row(&cells, &[])?;
            }
        }
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return sink.finish(),
        }
    }
}

pub const TRIAL_BALANCE_COLUMNS: [Column; 5] = [
    col("as_of", DateCol),
    col("currency", Text),
    col("account", Text),
    col("debit", Amount),
    col("credit", Amount),
];
/// The `account` of the totals row closing each currency.
pub const TOTAL_ACCOUNT: &str = "TOTAL";

/// Every account with a balance at the end of `as_of`, per currency, each currency closed by a
/// `TOTAL` row. No rows when `as_of` is `None` (an empty journal).
pub fn trial_balance<W: Write + Send>(
    reader: &JournalReader,
    as_of: Option<Date>,
    output: &Output,
    out: W,
) -> anyhow::Result<(W, u64)> {
    let mut sink = Sink::new(output, out, columns(&TRIAL_BALANCE_COLUMNS))?;
    let Some(as_of) = as_of else {
        return sink.finish();
    };
    let rows = reader.trial_balance(as_of)?;
    let mut total: Option<(Currency, Decimal, Decimal)> = None;
    let close = |sink: &mut Sink<W>, t: (Currency, Decimal, Decimal)| -> anyhow::Result<()> {
        let (cur, debit, credit) = t;
        let cells = [
            date(as_of),
            cur.code().into(),
            TOTAL_ACCOUNT.into(),
            amount(debit, cur)?,
            amount(credit, cur)?,
        ];
        sink.row(&cells.map(Cell::from), &[])
    };
    for r in rows {
        match &mut total {
            Some((cur, debit, credit)) if *cur == r.currency => {
                *debit += r.debit;
                *credit += r.credit;
            }
            _ => {
                if let Some(t) = total.take() {
                    close(&mut sink, t)?;
                }
                total = Some((r.currency, r.debit, r.credit));
            }
        }
        let cells = [
            date(as_of),
            r.currency.code().to_string(),
            r.account.as_str().to_string(),
            amount(r.debit, r.currency)?,
            amount(r.credit, r.currency)?,
        ];
        sink.row(&cells.map(Cell::from), &[])?;
    }
    if let Some(t) = total.take() {
        close(&mut sink, t)?;
    }
    sink.finish()
}

/// The fixed leading columns of the waterfall; one `YYYY-MM` column per month and `total`
/// follow.
pub const WATERFALL_COLUMNS: [Column; 4] = [
    col("invoice_id", Text),
    col("line_index", Int),
    col("currency", Text),
    col("revenue_type", Text),
];

/// One row per invoice line with revenue in the months of `window` (default: the first to the
/// last month with recognized revenue), one column per month.
pub fn revenue_waterfall<W: Write + Send>(
    reader: &JournalReader,
    window: Window,
    output: &Output,
    out: W,
) -> anyhow::Result<(W, u64)> {
    let (from, to) = match (window.from, window.to) {
        (Some(from), Some(to)) => (Some(from), Some(to)),
        (from, to) => {
            let months = reader.waterfall_months()?;
            (from.or(months.first().copied()), to.or(months.last().copied()))
        }
    };
    let mut labels = Vec::new();
    if let (Some(from), Some(to)) = (from, to) {
        let (from, to) = (from.first_of_month(), to.first_of_month());
        anyhow::ensure!(from <= to, "no month from {} to {}", month(from), month(to));
        let mut m = from;
        while m <= to {
            labels.push(month(m));
            m = m.checked_add(jiff::Span::new().months(1))?;
        }
    }
    let mut names = columns(&WATERFALL_COLUMNS);
    names.extend(labels.iter().map(|m| named(m.clone(), Amount)));
    names.push(col("total", Amount));
    let mut sink = Sink::new(output, out, names)?;
    let (Some(from), Some(to)) = (from, to) else {
        return sink.finish();
    };
    let mut token: Option<String> = None;
    loop {
        let page = reader.revenue_waterfall_page(from, to, token.as_deref(), JOURNAL_PAGE)?;
        for row in &page.rows {
            let cur = row.currency;
            let mut cells = vec![
                Cell::from(row.line.invoice_id.as_str()),
                Cell::from(row.line.line_index as u64),
                Cell::from(cur.code()),
                Cell::from(row.revenue_type.as_str()),
            ];
            let mut amounts = row.months.iter().peekable();
            let mut total = Decimal::ZERO;
            for label in &labels {
                let value = match amounts.peek() {
                    Some((m, a)) if m == label => {
                        amounts.next();
                        *a
                    }
                    _ => Decimal::ZERO,
                };
                total += value;
                cells.push(Cell::from(amount(value, cur)?));
            }
            anyhow::ensure!(amounts.next().is_none(), "waterfall month outside the range");
            cells.push(Cell::from(amount(total, cur)?));
            sink.row(&cells, &[])?;
        }
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return sink.finish(),
        }
    }
}

fn month(d: Date) -> String {
    format!("{:04}-{:02}", d.year(), d.month())
}

pub const USAGE_DAILY_COLUMNS: [Column; 6] = [
    col("date", DateCol),
    col("customer_id", Text),
    col("subscription_id", Text),
    col("metric_code", Text),
    col("units", Dec),
    col("events", Int),
];

/// One row per (business date, subscription, metric) with usage dated within `window`, in
/// that order: Σ of the quantities the metric reads and the number of events.
pub fn usage_daily<W: Write + Send>(
    reader: &JournalReader,
    window: Window,
    output: &Output,
    out: W,
) -> anyhow::Result<(W, u64)> {
    let mut sink = Sink::new(output, out, columns(&USAGE_DAILY_COLUMNS))?;
    let (from, to) = (window.from.unwrap_or(Date::MIN), window.to.unwrap_or(Date::MAX));
    let mut token: Option<String> = None;
    loop {
        let page = reader.usage_days(from, to, token.as_deref(), JOURNAL_PAGE)?;
        for r in &page.rows {
            let cells = [
                Cell::from(date(r.date)),
                Cell::from(r.usage.customer_id.as_str()),
                Cell::from(r.subscription_id.as_str()),
                Cell::from(r.metric_code.as_str()),
                Cell::from(r.usage.units.normalize().to_string()),
                Cell::from(r.usage.events),
            ];
            sink.row(&cells, &[])?;
        }
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return sink.finish(),
        }
    }
}

pub const MOVEMENT_COLUMNS: [Column; 7] = [
    col("date", DateCol),
    col("customer_id", Text),
    col("currency", Text),
    col("kind", Text),
    col("amount", Amount),
    col("mrr_before", Amount),
    col("mrr_after", Amount),
];

/// One row per customer movement, per currency (code order) then date then customer.
pub fn mrr_movements<W: Write + Send>(
    reader: &MrrReader,
    window: Window,
    output: &Output,
    out: W,
) -> anyhow::Result<(W, u64)> {
    let mut sink = Sink::new(output, out, columns(&MOVEMENT_COLUMNS))?;
    let (from, to) = (window.from.unwrap_or(Date::MIN), window.to.unwrap_or(Date::MAX));
    for cur in reader.movement_currencies()? {
        let mut token: Option<String> = None;
        loop {
            let page = reader.customer_movements_page(from, to, cur, token.as_deref(), MRR_PAGE)?;
            for m in &page.movements {
                let r = &m.record;
                let cells = [
                    date(r.date),
                    m.customer_id.clone(),
                    cur.code().to_string(),
                    r.movement.as_str().to_string(),
                    amount(r.delta(), cur)?,
                    amount(r.before, cur)?,
                    amount(r.after, cur)?,
                ];
                sink.row(&cells.map(Cell::from), &[])?;
            }
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
    }
    sink.finish()
}

pub const BRIDGE_COLUMNS: [Column; 11] = [
    col("period_start", DateCol),
    col("currency", Text),
    col("mrr_start", Amount),
    col("new", Amount),
    col("expansion", Amount),
    col("contraction", Amount),
    col("churn", Amount),
    col("reactivation", Amount),
    col("net", Amount),
    col("mrr_end", Amount),
    col("movements", Int),
];

/// An MRR bridge: per currency, one row per day or month with movements: MRR before the
/// period, the amount of each movement kind, the net change, MRR at its end, and how many
/// customer movements it holds.
pub fn mrr_bridge<W: Write + Send>(
    reader: &MrrReader,
    window: Window,
    granularity: Granularity,
    output: &Output,
    out: W,
) -> anyhow::Result<(W, u64)> {
    let mut sink = Sink::new(output, out, columns(&BRIDGE_COLUMNS))?;
    let (from, to) = (window.from.unwrap_or(Date::MIN), window.to.unwrap_or(Date::MAX));
    for cur in reader.movement_currencies()? {
        let buckets = reader.movements(from, to, granularity, cur)?;
        let Some(first) = buckets.first() else {
            continue;
        };
        // MRR the day before the first day counted (the bucket may start before `from`).
        let mut mrr = match first.start.max(from).yesterday() {
            Ok(day_before) => reader.mrr_at(day_before, cur)?,
            Err(_) => Decimal::ZERO,
        };
        for b in &buckets {
            let mut cells = vec![date(b.start), cur.code().to_string(), amount(mrr, cur)?];
            let mut count = 0;
            for kind in domain::mrr::Movement::ALL {
                let t = b.totals.get(&kind).copied().unwrap_or_default();
                count += t.count;
                cells.push(amount(t.amount, cur)?);
            }
            mrr += b.net;
            cells.push(amount(b.net, cur)?);
            cells.push(amount(mrr, cur)?);
            let mut cells: Vec<Cell> = cells.into_iter().map(Cell::from).collect();
            cells.push(Cell::Int(count));
            sink.row(&cells, &[])?;
        }
    }
    sink.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use projections::journal::ACCRUAL_SEQ_BASE;

    #[test]
    fn accrual_entries_are_numbered_apart() {
        assert_eq!(entry_id(17), "17");
        assert_eq!(entry_id(ACCRUAL_SEQ_BASE | 42), "A42");
    }
}
