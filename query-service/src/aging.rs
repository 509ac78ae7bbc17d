//! Receivables aging (`GetReceivablesAging`, the dashboard's receivables page): the amount due
//! of every open or uncollectible invoice in one currency issued on or before a date, by days
//! past due and by dunning state. The SPEC sets no payment terms, so an invoice is due on its
//! issue date (the UTC date of `issued_at`, as the exports date it) unless the caller gives
//! `terms_days`. Amounts due and states are as of the read model's position (payments after
//! `as_of` count), as in the invoices export; `accrual replay` gives the books as they stood.

use domain::invoice::InvoiceStatus;
use domain::money::Currency;
use jiff::civil::Date;
use projections::invoices::{InvoiceFilter, InvoiceReader, PAGE_SIZE_MAX};
use projections::ProjectionError;
use rust_decimal::Decimal;

/// Age buckets by days past due: (name, first day, last day; `None` = no end).
pub const AGE_BUCKETS: [(&str, i64, Option<i64>); 5] = [
    ("current", i64::MIN, Some(0)),
    ("1-30", 1, Some(30)),
    ("31-60", 31, Some(60)),
    ("61-90", 61, Some(90)),
    ("over_90", 91, None),
];

/// Dunning states: open with no failed payment, open after failed payments (the subscription
/// is past due, SPEC §4), written off.
pub const DUNNING_STATES: [&str; 3] = ["awaiting_payment", "retrying", "uncollectible"];

/// Invoices one aging examines at most (open and uncollectible, every currency).
pub const INVOICES_EXAMINED_MAX: usize = 2_000_000;

/// Invoice count and amount due.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    pub invoices: u32,
    pub amount: Decimal,
}

impl Cell {
    fn add(&mut self, amount: Decimal) -> Option<()> {
        self.invoices = self.invoices.checked_add(1)?;
        self.amount = self.amount.checked_add(amount)?;
        Some(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Aging {
    /// In [`AGE_BUCKETS`] order.
    pub buckets: [Cell; 5],
    /// In [`DUNNING_STATES`] order.
    pub dunning: [Cell; 3],
    pub total: Cell,
}

/// The bucket of an invoice `days_past_due` days past its due date.
pub fn bucket_of(days_past_due: i64) -> usize {
    AGE_BUCKETS
        .iter()
        .position(|(_, first, last)| {
            days_past_due >= *first && last.is_none_or(|l| days_past_due <= l)
        })
        .expect("the buckets cover every day")
}

/// The aging of `currency`'s receivables at the end of `as_of`.
pub fn aging(
    reader: &InvoiceReader,
    currency: Currency,
    as_of: Date,
    terms_days: u32,
) -> Result<Aging, ProjectionError> {
    let mut aging = Aging::default();
    let mut examined = 0usize;
    let overflow =
        || ProjectionError::InvalidArgument("receivables sum past the decimal range".into());
    for status in [InvoiceStatus::Open, InvoiceStatus::Uncollectible] {
        let filter = InvoiceFilter { status: Some(status), ..InvoiceFilter::default() };
        let mut token: Option<String> = None;
        loop {
            let page = reader.list(&filter, token.as_deref(), PAGE_SIZE_MAX)?;
            examined += page.invoices.len();
            if examined > INVOICES_EXAMINED_MAX {
                return Err(ProjectionError::InvalidArgument(format!(
                    "more than {INVOICES_EXAMINED_MAX} open invoices: export them instead"
                )));
            }
            for r in &page.invoices {
                let i = &r.invoice;
                let issued = i.issued_at.to_zoned(jiff::tz::TimeZone::UTC).date();
                if i.currency != currency || issued > as_of || r.amount_due <= Decimal::ZERO {
                    continue;
                }
                let due = issued
                    .checked_add(jiff::Span::new().days(i64::from(terms_days)))
                    .unwrap_or(Date::MAX);
                let days = (as_of - due).get_days();
                aging.buckets[bucket_of(i64::from(days))].add(r.amount_due).ok_or_else(overflow)?;
                let state = match (status, r.failed_attempts) {
                    (InvoiceStatus::Uncollectible, _) => 2,
                    (_, 0) => 0,
                    _ => 1,
                };
                aging.dunning[state].add(r.amount_due).ok_or_else(overflow)?;
                aging.total.add(r.amount_due).ok_or_else(overflow)?;
            }
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
    }
    Ok(aging)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_past_due_fall_in_one_bucket_each() {
        for (days, bucket) in [
            (-30, "current"),
            (0, "current"),
            (1, "1-30"),
            (30, "1-30"),
            (31, "31-60"),
            (60, "31-60"),
            (61, "61-90"),
            (90, "61-90"),
            (91, "over_90"),
            (10_000, "over_90"),
        ] {
            assert_eq!(AGE_BUCKETS[bucket_of(days)].0, bucket, "{days} days");
        }
    }
}
