//! Reading the journal: [`JournalReader`] answers from one consistent snapshot with pages of
//! entries, balances and the trial balance as of a date (Σ of the daily nets), the revenue
//! waterfall (whole or paged, one cursor per month), usage revenue buckets, line schedules and
//! the current-usage drafts, plus the page-token checks and scan helpers they share. It is
//! read-only: it never writes the read model.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::ops::Bound;

use domain::invoice::Invoice;
use domain::money::Currency;
use domain::recognition::RevenueType;
use event_store::Position;
use jiff::civil::Date;
use rust_decimal::Decimal;

use super::accounts::{Account, Balances, JournalEntry, TrialBalanceRow, ACCOUNTS};
use super::records::{
    customer_key, day_key, draft_key, invoice_key, json, month_key, parse_decimal,
    parse_usage_day_key, InvoiceState, LineRef, LineSchedule, UsageDay, UsageDayRow, WaterfallCell,
    USAGE_DAY_PREFIX,
};
use super::{
    sum_overflow, NAME, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, WATERFALL_MONTHS_MAX,
    WATERFALL_PAGE_MONTHS_MAX,
};
use crate::store::{corrupt, ReadModel, Snapshot};
use crate::{ProjectionError, Result};

const SCAN_CHUNK: usize = 1_024;

/// Net (debit − credit) per account.
type AccountNets = Vec<(Account, Decimal)>;

/// One page of the journal, in date then posting order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPage {
    pub entries: Vec<JournalEntry>,
    /// Present when more entries follow; pass it back to get the next page.
    pub next_page_token: Option<String>,
    /// The read model's checkpoint the page was read at.
    pub position: Position,
}

/// One page of usage per day, in date, subscription then metric order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageDayPage {
    pub rows: Vec<UsageDayRow>,
    /// Present when more rows may follow; pass it back to get the next page.
    pub next_page_token: Option<String>,
}

/// The recognized revenue of one line per month.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaterfallRow {
    pub line: LineRef,
    pub currency: Currency,
    pub revenue_type: RevenueType,
    /// `(YYYY-MM, amount)` for the months with a non-zero amount, in order.
    pub months: Vec<(String, Decimal)>,
}

/// The line schedules of one issued invoice (see [`JournalReader::invoice_schedules`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceSchedules {
    pub invoice_id: String,
    pub currency: Currency,
    /// In line order: `lines[i]` is the schedule of the invoice's line `i`.
    pub lines: Vec<LineSchedule>,
}

/// One page of the revenue waterfall ([`JournalReader::revenue_waterfall_page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaterfallPage {
    pub rows: Vec<WaterfallRow>,
    /// Present when more lines follow; pass it back to get the next page.
    pub next_page_token: Option<String>,
    /// The read model's checkpoint the page was read at.
    pub position: Position,
}

/// Usage revenue of one day or month ([`JournalReader::usage_revenue`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRevenueBucket {
    /// The day, or the first of the month.
    pub start: Date,
    /// Days with usage revenue in the bucket.
    pub days: u32,
    pub amount: Decimal,
}

/// Read-only access to the journal read model.
#[derive(Clone)]
pub struct JournalReader {
    model: ReadModel,
}

impl JournalReader {
    /// Wraps the read model of a [`JournalProjection`] runner.
    ///
    /// [`JournalProjection`]: super::JournalProjection
    pub fn new(model: ReadModel) -> Self {
        assert_eq!(model.name(), NAME, "not the journal read model");
        JournalReader { model }
    }

    pub fn model(&self) -> &ReadModel {
        &self.model
    }

    /// Net balance of every account with one as of the end of `as_of`, per currency (currency
    /// code, then [`ACCOUNTS`] order). Σ debit = Σ credit within each currency.
    pub fn trial_balance(&self, as_of: Date) -> Result<Vec<TrialBalanceRow>> {
        self.model.read(|snap| {
            let mut rows = Vec::new();
            for (currency, nets) in nets_as_of(snap, as_of)? {
                for (account, net) in nets {
                    let (debit, credit) = if net.is_sign_positive() {
                        (net, Decimal::ZERO)
                    } else {
                        (Decimal::ZERO, -net)
                    };
                    rows.push(TrialBalanceRow { currency, account, debit, credit });
                }
            }
            Ok(rows)
        })
    }

    /// Balances per currency (currency code order) as of the end of `as_of`.
    pub fn balances(&self, as_of: Date) -> Result<Vec<(Currency, Balances)>> {
        self.model.read(|snap| {
            let mut out = Vec::new();
            for (currency, nets) in nets_as_of(snap, as_of)? {
                let mut b = Balances::default();
                for (account, net) in nets {
                    match account {
                        Account::AccountsReceivable => b.accounts_receivable = net,
                        Account::UnbilledReceivable => b.unbilled_receivable = net,
                        Account::Cash => b.cash = net,
                        Account::BadDebt => b.bad_debt = net,
                        Account::DeferredRevenue => b.deferred_revenue = -net,
                        Account::TaxPayable => b.tax_payable = -net,
                        Account::CustomerCredit => b.customer_credit = -net,
                        Account::PrepaidCredits => b.prepaid_credits = -net,
                        Account::Discounts => b.discounts = net,
                        Account::Revenue(t) => {
                            b.recognized_revenue.insert(t, -net);
                        }
                    }
                }
                out.push((currency, b));
            }
            Ok(out)
        })
    }

    /// Up to `page_size` entries (0 = [`PAGE_SIZE_DEFAULT`], at most [`PAGE_SIZE_MAX`]) after
    /// `page_token`, in date then posting order, read from one consistent view.
    pub fn entries(&self, page_token: Option<&str>, page_size: usize) -> Result<EntryPage> {
        if let Some(t) = page_token {
            parse_entry_token(t)?;
        }
        let size = if page_size == 0 { PAGE_SIZE_DEFAULT } else { page_size.min(PAGE_SIZE_MAX) };
        self.model.read(|snap| {
            let hits = snap.scan(b"j/", page_token.map(str::as_bytes), size + 1)?;
            let mut entries = Vec::with_capacity(size.min(hits.len()));
            for (_, value) in hits.iter().take(size) {
                entries.push(json::<JournalEntry>(value, "entry")?);
            }
            let next_page_token = match entries.last() {
                Some(last) if hits.len() > size => {
                    Some(format!("{}/{:016x}", day_key(last.date), last.seq))
                }
                _ => None,
            };
            Ok(EntryPage { entries, next_page_token, position: snap.checkpoint()? })
        })
    }

    /// Up to `page_size` rows (0 = [`PAGE_SIZE_DEFAULT`], at most [`PAGE_SIZE_MAX`]) of usage
    /// per (business date, subscription, metric) dated `from..=to`, in that order, after
    /// `page_token`, read from one consistent view.
    pub fn usage_days(
        &self,
        from: Date,
        to: Date,
        page_token: Option<&str>,
        page_size: usize,
    ) -> Result<UsageDayPage> {
        let invalid =
            |t: &str| ProjectionError::InvalidArgument(format!("invalid page token {t:?}"));
        if let Some(t) = page_token {
            parse_usage_day_key(t).ok_or_else(|| invalid(t))?;
        }
        let size = if page_size == 0 { PAGE_SIZE_DEFAULT } else { page_size.min(PAGE_SIZE_MAX) };
        // A bare date sorts before every key of that day: the scan starts at `from`'s first.
        let start = day_key(from);
        let after = match page_token {
            Some(t) if t > start.as_str() => t,
            _ => start.as_str(),
        };
        self.model.read(|snap| {
            let hits = snap.scan(USAGE_DAY_PREFIX.as_bytes(), Some(after.as_bytes()), size + 1)?;
            let mut rows = Vec::with_capacity(size.min(hits.len()));
            for (key, value) in hits.iter().take(size) {
                let rest = std::str::from_utf8(&key[USAGE_DAY_PREFIX.len()..]).ok();
                let parsed = rest.and_then(parse_usage_day_key);
                let (date, sub, metric) =
                    parsed.ok_or_else(|| corrupt(NAME, format!("usage day key {key:?}")))?;
                if date > to {
                    return Ok(UsageDayPage { rows, next_page_token: None });
                }
                rows.push(UsageDayRow {
                    date,
                    subscription_id: sub.to_string(),
                    metric_code: metric.to_string(),
                    usage: json::<UsageDay>(value, "usage day")?,
                });
            }
            let next_page_token = match hits.len() > size {
                true => hits.get(size - 1).map(|(k, _)| {
                    String::from_utf8_lossy(&k[USAGE_DAY_PREFIX.len()..]).into_owned()
                }),
                false => None,
            };
            Ok(UsageDayPage { rows, next_page_token })
        })
    }

    /// Revenue recognized per line per month, for the months `from_month..=to_month` (any
    /// day of each), lines in invoice id then index order.
    pub fn revenue_waterfall(&self, from_month: Date, to_month: Date) -> Result<Vec<WaterfallRow>> {
        let months = (i32::from(to_month.year()) - i32::from(from_month.year())) * 12
            + i32::from(to_month.month())
            - i32::from(from_month.month());
        if !(0..WATERFALL_MONTHS_MAX).contains(&months) {
            let msg = format!("from_month..=to_month must span 1..={WATERFALL_MONTHS_MAX} months");
            return Err(ProjectionError::InvalidArgument(msg));
        }
        let first = from_month.first_of_month();
        self.model.read(|snap| {
            let mut rows: BTreeMap<LineRef, WaterfallRow> = BTreeMap::new();
            for m in 0..=months {
                let month = first
                    .checked_add(jiff::Span::new().months(m))
                    .map_err(|e| ProjectionError::InvalidArgument(e.to_string()))?;
                let label = month_key(month);
                let prefix = format!("w/{label}/");
                scan_all(snap, prefix.as_bytes(), |_, value| {
                    let cell: WaterfallCell = json(value, "waterfall cell")?;
                    let line = LineRef {
                        invoice_id: cell.invoice_id.clone(),
                        line_index: cell.line_index,
                    };
                    let row = rows.entry(line.clone()).or_insert_with(|| WaterfallRow {
                        line,
                        currency: cell.currency,
                        revenue_type: cell.revenue_type,
                        months: Vec::new(),
                    });
                    row.months.push((label.clone(), cell.amount));
                    Ok(true)
                })?;
            }
            Ok(rows.into_values().collect())
        })
    }

    /// Usage revenue recognized per day or month in [from, to] in `currency` (the daily net of
    /// `revenue:usage`: accrued as consumed, less reversals), buckets with a non-zero amount
    /// only, in date order. `days` counts the days with usage revenue in each bucket.
    pub fn usage_revenue(
        &self,
        from: Date,
        to: Date,
        granularity: crate::mrr::Granularity,
        currency: Currency,
    ) -> Result<Vec<UsageRevenueBucket>> {
        let account = Account::Revenue(RevenueType::Usage);
        let prefix = format!("b/{}/{}/", currency.code(), account.as_str());
        let mut buckets: Vec<UsageRevenueBucket> = Vec::new();
        self.model.read(|snap| {
            scan_all(snap, prefix.as_bytes(), |key, value| {
                let date: Date = std::str::from_utf8(key)
                    .ok()
                    .and_then(|k| k.parse().ok())
                    .ok_or_else(|| corrupt(NAME, "balance key is not a date"))?;
                if date > to {
                    return Ok(false);
                }
                if date >= from {
                    let start = granularity.bucket(date);
                    if buckets.last().is_none_or(|b| b.start != start) {
                        buckets.push(UsageRevenueBucket { start, days: 0, amount: Decimal::ZERO });
                    }
                    let bucket = buckets.last_mut().expect("pushed above");
                    bucket.days += 1;
                    bucket.amount =
                        bucket.amount.checked_sub(parse_decimal(value)?).ok_or_else(|| {
                            sum_overflow(format_args!("usage revenue ({currency}) of {start}"))
                        })?;
                }
                Ok(true)
            })
        })?;
        buckets.retain(|b| !b.amount.is_zero());
        Ok(buckets)
    }

    /// The current-usage drafts of the subscription's open periods, oldest first (what
    /// closing each would invoice so far), kept by the journal's usage meter; empty for an
    /// unknown subscription or once everything is invoiced.
    pub fn open_drafts(&self, subscription_id: &str) -> Result<Vec<Invoice>> {
        self.model.read(|snap| match snap.get(&draft_key(subscription_id))? {
            Some(b) => json(&b, "drafts"),
            None => Ok(Vec::new()),
        })
    }

    /// The draft of the oldest open period (see [`JournalReader::open_drafts`]).
    pub fn current_usage(&self, subscription_id: &str) -> Result<Option<Invoice>> {
        Ok(self.open_drafts(subscription_id)?.into_iter().next())
    }

    /// The recognition schedule of one line, if the invoice has been issued.
    pub fn line_schedule(
        &self,
        invoice_id: &str,
        line_index: usize,
    ) -> Result<Option<LineSchedule>> {
        self.model.read(|snap| {
            let Some(bytes) = snap.get(&invoice_key(invoice_id))? else {
                return Ok(None);
            };
            let state = InvoiceState::decode(&bytes)?;
            Ok(state.lines.into_iter().nth(line_index))
        })
    }

    /// The line schedules of each of `invoice_ids` issued so far (the others are left out), in
    /// the order given, read from one consistent view.
    pub fn invoice_schedules(&self, invoice_ids: &[String]) -> Result<Vec<InvoiceSchedules>> {
        self.model.read(|snap| {
            let mut out = Vec::with_capacity(invoice_ids.len());
            for id in invoice_ids {
                let Some(bytes) = snap.get(&invoice_key(id))? else { continue };
                let s = InvoiceState::decode(&bytes)?;
                let (invoice_id, currency, lines) = (s.invoice_id, s.currency, s.lines);
                out.push(InvoiceSchedules { invoice_id, currency, lines });
            }
            Ok(out)
        })
    }

    /// Whether the customer's `CustomerRegistered` has been applied.
    pub fn has_customer(&self, customer_id: &str) -> Result<bool> {
        self.model.read(|snap| Ok(snap.get(&customer_key(customer_id))?.is_some()))
    }

    /// As [`JournalReader::entries`], restricted to the entries dated in [from, to] (a `None`
    /// bound is open). A token from a page of the same bounds continues it.
    pub fn entries_between(
        &self,
        from: Option<Date>,
        to: Option<Date>,
        page_token: Option<&str>,
        page_size: usize,
    ) -> Result<EntryPage> {
        if let Some(t) = page_token {
            parse_entry_token(t)?;
        }
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                return Err(ProjectionError::InvalidArgument(format!("from {f} is after to {t}")));
            }
        }
        let size = if page_size == 0 { PAGE_SIZE_DEFAULT } else { page_size.min(PAGE_SIZE_MAX) };
        // Keys are `j/<date>/<seq>`: `<from>/` sorts before the first entry of `from`.
        let start = from.map(|d| format!("{}/", day_key(d)));
        let after = page_token.map(String::from).into_iter().chain(start).max();
        self.model.read(|snap| {
            let hits = snap.scan(b"j/", after.as_deref().map(str::as_bytes), size + 1)?;
            let mut entries = Vec::with_capacity(size.min(hits.len()));
            let mut more = false;
            for (_, value) in &hits {
                let entry = json::<JournalEntry>(value, "entry")?;
                if to.is_some_and(|t| entry.date > t) {
                    break;
                }
                if entries.len() == size {
                    more = true;
                    break;
                }
                entries.push(entry);
            }
            let next_page_token = match entries.last() {
                Some(last) if more => Some(format!("{}/{:016x}", day_key(last.date), last.seq)),
                _ => None,
            };
            Ok(EntryPage { entries, next_page_token, position: snap.checkpoint()? })
        })
    }

    /// The date of the last journal entry (recognition schedules are posted ahead, so it may
    /// lie after the last event's date), or `None` for an empty journal.
    pub fn last_entry_date(&self) -> Result<Option<Date>> {
        self.model.read(|_| {
            let Some(item) = self.model.tree().scan_prefix(b"j/").next_back() else {
                return Ok(None);
            };
            let (key, _) = item?;
            let date = std::str::from_utf8(&key[2..])
                .ok()
                .and_then(|rest| rest.split('/').next())
                .and_then(|d| d.parse::<Date>().ok())
                .ok_or_else(|| corrupt(NAME, format!("entry key {key:?} has no date")))?;
            Ok(Some(date))
        })
    }

    /// The months (their first day) in which some invoice line has recognized revenue in the
    /// waterfall, ascending. One seek per month.
    pub fn waterfall_months(&self) -> Result<Vec<Date>> {
        self.model.read(|snap| {
            let mut months = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let hit = snap.scan(b"w/", after.as_deref(), 1)?;
                let Some((key, _)) = hit.first() else {
                    return Ok(months);
                };
                let label = key
                    .get(2..9)
                    .filter(|_| key.get(9) == Some(&b'/'))
                    .and_then(|l| std::str::from_utf8(l).ok())
                    .ok_or_else(|| corrupt(NAME, format!("waterfall key {key:?} has no month")))?;
                let month: Date = format!("{label}-01")
                    .parse()
                    .map_err(|_| corrupt(NAME, format!("waterfall key {key:?} has no month")))?;
                months.push(month);
                // Past every key of this month: `/` then any byte below 0xff.
                after = Some([label.as_bytes(), b"/\xff"].concat());
            }
        })
    }

    /// Up to `page_size` lines (0 = [`PAGE_SIZE_DEFAULT`], at most [`PAGE_SIZE_MAX`]) of the
    /// revenue waterfall over the months `from_month..=to_month` (any day of each, at most
    /// [`WATERFALL_PAGE_MONTHS_MAX`] months), after `page_token`, read from one consistent view.
    /// Each row lists the line's months with a non-zero amount, in order. Lines come in key
    /// order: the text `<invoice_id>/<line index, 4 digits>` compared bytewise (this can differ
    /// from [`LineRef`]'s order, which [`Self::revenue_waterfall`] uses). Unlike that method,
    /// memory is bounded by the page: one cursor per month is merged.
    pub fn revenue_waterfall_page(
        &self,
        from_month: Date,
        to_month: Date,
        page_token: Option<&str>,
        page_size: usize,
    ) -> Result<WaterfallPage> {
        let labels = month_labels(from_month, to_month, WATERFALL_PAGE_MONTHS_MAX)?;
        if let Some(t) = page_token {
            parse_line_token(t)?;
        }
        let size = if page_size == 0 { PAGE_SIZE_DEFAULT } else { page_size.min(PAGE_SIZE_MAX) };
        self.model.read(|snap| {
            let tree = self.model.tree();
            let mut cursors = Vec::with_capacity(labels.len());
            let mut values: Vec<Option<sled::IVec>> = vec![None; labels.len()];
            // Min-heap of (line key after the month prefix, month index).
            let mut heap: BinaryHeap<Reverse<(Vec<u8>, usize)>> = BinaryHeap::new();
            for (i, label) in labels.iter().enumerate() {
                let prefix = format!("w/{label}/").into_bytes();
                let start = match page_token {
                    Some(t) => Bound::Excluded([prefix.as_slice(), t.as_bytes()].concat()),
                    None => Bound::Included(prefix.clone()),
                };
                cursors.push((prefix, tree.range((start, Bound::Unbounded))));
                advance_cursor(&mut cursors[i], i, &mut values, &mut heap)?;
            }
            let mut rows: Vec<WaterfallRow> = Vec::with_capacity(size.min(64));
            let mut last_key: Vec<u8> = Vec::new();
            while rows.len() < size {
                let Some(Reverse((line_key, _))) = heap.peek() else {
                    break;
                };
                let line_key = line_key.clone();
                let mut row: Option<WaterfallRow> = None;
                while let Some(Reverse((k, i))) = heap.peek() {
                    if *k != line_key {
                        break;
                    }
                    let i = *i;
                    heap.pop();
                    let value = values[i].take().expect("a heap entry has its value");
                    let cell: WaterfallCell = json(&value, "waterfall cell")?;
                    let row = row.get_or_insert_with(|| WaterfallRow {
                        line: LineRef {
                            invoice_id: cell.invoice_id.clone(),
                            line_index: cell.line_index,
                        },
                        currency: cell.currency,
                        revenue_type: cell.revenue_type,
                        months: Vec::new(),
                    });
                    row.months.push((labels[i].clone(), cell.amount));
                    advance_cursor(&mut cursors[i], i, &mut values, &mut heap)?;
                }
                rows.push(row.expect("the peeked key yields a row"));
                last_key = line_key;
            }
            let next_page_token = match heap.is_empty() {
                false if !rows.is_empty() => Some(
                    String::from_utf8(last_key)
                        .map_err(|_| corrupt(NAME, "waterfall key is not UTF-8"))?,
                ),
                _ => None,
            };
            Ok(WaterfallPage { rows, next_page_token, position: snap.checkpoint()? })
        })
    }
}

/// One month's cursor of [`JournalReader::revenue_waterfall_page`]: its key prefix and range.
type MonthCursor = (Vec<u8>, sled::Iter);

/// Moves month `i`'s cursor to its next key under its prefix, if any, onto the heap.
fn advance_cursor(
    cursor: &mut MonthCursor,
    i: usize,
    values: &mut [Option<sled::IVec>],
    heap: &mut BinaryHeap<Reverse<(Vec<u8>, usize)>>,
) -> Result<()> {
    let (prefix, iter) = cursor;
    if let Some(item) = iter.next() {
        let (key, value) = item?;
        if key.starts_with(prefix) {
            heap.push(Reverse((key[prefix.len()..].to_vec(), i)));
            values[i] = Some(value);
        }
    }
    Ok(())
}

/// The labels `YYYY-MM` of `from..=to` (any day of each month), at most `max` months.
fn month_labels(from: Date, to: Date, max: i32) -> Result<Vec<String>> {
    let months = (i32::from(to.year()) - i32::from(from.year())) * 12 + i32::from(to.month())
        - i32::from(from.month());
    if !(0..max).contains(&months) {
        let msg = format!("from_month..=to_month must span 1..={max} months");
        return Err(ProjectionError::InvalidArgument(msg));
    }
    let first = from.first_of_month();
    (0..=months)
        .map(|m| {
            first
                .checked_add(jiff::Span::new().months(m))
                .map(month_key)
                .map_err(|e| ProjectionError::InvalidArgument(e.to_string()))
        })
        .collect()
}

/// A waterfall page token: `<invoice_id>/<line index, at least 4 digits>`.
fn parse_line_token(token: &str) -> Result<()> {
    let valid = token.rsplit_once('/').is_some_and(|(invoice, line)| {
        !invoice.is_empty() && line.len() >= 4 && line.bytes().all(|b| b.is_ascii_digit())
    });
    if valid {
        Ok(())
    } else {
        Err(ProjectionError::InvalidArgument(format!("invalid page token {token:?}")))
    }
}

fn parse_entry_token(token: &str) -> Result<()> {
    let invalid = || ProjectionError::InvalidArgument(format!("invalid page token {token:?}"));
    let (date, seq) = token.split_once('/').ok_or_else(invalid)?;
    let date_ok = date.len() == 10 && date.parse::<Date>().is_ok();
    let seq_ok = seq.len() == 16 && seq.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if date_ok && seq_ok {
        Ok(())
    } else {
        Err(invalid())
    }
}

/// Calls `f(key after prefix, value)` for every key under `prefix`, in order, until it
/// returns false.
fn scan_all(
    snap: &Snapshot<'_>,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
) -> Result<()> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = snap.scan(prefix, after.as_deref(), SCAN_CHUNK)?;
        for (key, value) in &page {
            if !f(&key[prefix.len()..], value)? {
                return Ok(());
            }
        }
        match page.last() {
            Some((key, _)) if page.len() == SCAN_CHUNK => {
                after = Some(key[prefix.len()..].to_vec())
            }
            _ => return Ok(()),
        }
    }
}

/// Net (debit − credit) of every account with a non-zero balance as of `as_of`, per currency.
fn nets_as_of(snap: &Snapshot<'_>, as_of: Date) -> Result<Vec<(Currency, AccountNets)>> {
    let limit = day_key(as_of);
    let mut currencies = Vec::new();
    scan_all(snap, b"cur/", |code, _| {
        let code = std::str::from_utf8(code).map_err(|_| corrupt(NAME, "currency key"))?;
        currencies.push(Currency::parse(code).map_err(|_| corrupt(NAME, "currency key"))?);
        Ok(true)
    })?;
    let mut out = Vec::new();
    for currency in currencies {
        let mut nets = Vec::new();
        for account in ACCOUNTS {
            let prefix = format!("b/{}/{}/", currency.code(), account.as_str());
            let mut net = Decimal::ZERO;
            scan_all(snap, prefix.as_bytes(), |day, value| {
                if day > limit.as_bytes() {
                    return Ok(false);
                }
                net = net.checked_add(parse_decimal(value)?).ok_or_else(|| {
                    let (account, cur) = (account.as_str(), currency.code());
                    sum_overflow(format_args!("balance of {account} ({cur}) as of {as_of}"))
                })?;
                Ok(true)
            })?;
            if !net.is_zero() {
                nets.push((account, net));
            }
        }
        out.push((currency, nets));
    }
    Ok(out)
}
