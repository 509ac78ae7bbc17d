//! Read-only access to the `mrr` model: MRR at a date, movement buckets and pages, usage
//! revenue, retention. It never writes.

use super::*;

/// Bucket size of a time series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Day,
    /// Calendar months, each bucket starting on the 1st.
    Month,
}

impl Granularity {
    /// The first day of the bucket holding `d`.
    pub fn bucket(self, d: Date) -> Date {
        match self {
            Granularity::Day => d,
            Granularity::Month => d.first_of_month(),
        }
    }
}

/// Movements of one day or month.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovementBucket {
    /// The day, or the first of the month.
    pub start: Date,
    /// By kind, in [`Movement::ALL`] order.
    pub totals: BTreeMap<Movement, MovementTotals>,
    /// Σ of all deltas: the change of MRR over the bucket.
    pub net: Decimal,
}

/// One customer's movement, for listings and exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerMovement {
    pub customer_id: String,
    pub record: MovementRecord,
}

/// One page of customer movements ([`MrrReader::customer_movements_page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerMovementPage {
    pub movements: Vec<CustomerMovement>,
    /// Present when more movements follow; pass it back to get the next page.
    pub next_page_token: Option<String>,
    /// The read model's checkpoint the page was read at.
    pub position: Position,
}

/// Usage revenue of one day or month.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageBucket {
    pub start: Date,
    pub lines: u64,
    pub amount: Decimal,
}

/// Retention of the cohort with MRR > 0 at `start`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    pub start: Date,
    pub end: Date,
    pub cohort_size: usize,
    /// Σ MRR at start of the cohort.
    pub mrr_start: Decimal,
    /// Σ MRR at end of the cohort.
    pub mrr_end: Decimal,
    /// Σ min(MRR end, MRR start) of the cohort.
    pub mrr_kept: Decimal,
    /// NRR and GRR as ratios (1.05 = 105 %); `None` for an empty cohort.
    pub nrr: Option<Decimal>,
    pub grr: Option<Decimal>,
}

/// Read-only access to the MRR read model.
#[derive(Clone)]
pub struct MrrReader {
    model: ReadModel,
}

fn check_range(from: Date, to: Date) -> Result<()> {
    if from > to {
        let msg = format!("from {from} is after to {to}");
        return Err(ProjectionError::InvalidArgument(msg));
    }
    Ok(())
}

/// `(date, value)` of every key `<prefix><date>` with from ≤ date ≤ to.
fn scan_dates<T: DeserializeOwned>(
    snap: &Snapshot<'_>,
    prefix: &str,
    from: Option<Date>,
    to: Date,
    what: &str,
) -> Result<Vec<(Date, T)>> {
    let after = from.and_then(|f| f.yesterday().ok()).map(|d| d.to_string());
    let mut out = Vec::new();
    for (key, value) in
        snap.scan(prefix.as_bytes(), after.as_deref().map(str::as_bytes), usize::MAX)?
    {
        let text = std::str::from_utf8(&key[prefix.len()..]).ok();
        let date: Date = text
            .and_then(|t| t.split('/').next())
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| corrupt(NAME, format!("key {key:?} has no date")))?;
        if from.is_some_and(|f| date < f) {
            continue;
        }
        if date > to {
            break;
        }
        out.push((date, decode(what, &value)?));
    }
    Ok(out)
}

/// A movement page token: `<YYYY-MM-DD>/<customer_id>`.
fn check_movement_token(token: &str) -> Result<()> {
    let valid = token.split_once('/').is_some_and(|(date, customer)| {
        date.len() == 10 && date.parse::<Date>().is_ok() && check_customer(customer).is_ok()
    });
    if valid {
        Ok(())
    } else {
        Err(ProjectionError::InvalidArgument(format!("invalid page token {token:?}")))
    }
}

fn check_customer(customer: &str) -> Result<()> {
    if customer.is_empty() || customer.contains('/') {
        let msg = format!("customer_id {customer:?} must be non-empty without '/'");
        return Err(ProjectionError::InvalidArgument(msg));
    }
    Ok(())
}

impl MrrReader {
    /// Wraps the read model of an [`MrrProjection`] runner.
    pub fn new(model: ReadModel) -> Self {
        assert_eq!(model.name(), NAME, "not the mrr read model");
        MrrReader { model }
    }

    pub fn model(&self) -> &ReadModel {
        &self.model
    }

    /// Total MRR in `currency` on local date `date` (changes effective on `date` included).
    pub fn mrr_at(&self, date: Date, currency: Currency) -> Result<Decimal> {
        let prefix = format!("day/{currency}/");
        self.model.read(|snap| {
            let days: Vec<(Date, DayTotals)> = scan_dates(snap, &prefix, None, date, "day totals")?;
            let amounts = days.iter().flat_map(|(_, d)| d.kinds.iter()).map(|k| k.amount);
            checked_sum(amounts).ok_or_else(|| sum_overflow(format_args!("MRR ({currency})")))
        })
    }

    /// A customer's MRR in `currency` on `date` (0 for an unknown customer).
    pub fn customer_mrr_at(
        &self,
        customer_id: &str,
        date: Date,
        currency: Currency,
    ) -> Result<Decimal> {
        check_customer(customer_id)?;
        let key = account_key(currency, customer_id);
        self.model.read(|snap| match snap.get(key.as_bytes())? {
            Some(bytes) => decode::<Account>("account", &bytes)?
                .mrr_at(date, currency)
                .ok_or_else(|| sum_overflow(format_args!("MRR of customer {customer_id}"))),
            None => Ok(Decimal::ZERO),
        })
    }

    /// Movements in `currency` dated in [from, to], aggregated per day or month (only buckets
    /// with movements are listed).
    pub fn movements(
        &self,
        from: Date,
        to: Date,
        granularity: Granularity,
        currency: Currency,
    ) -> Result<Vec<MovementBucket>> {
        check_range(from, to)?;
        let prefix = format!("day/{currency}/");
        let days: Vec<(Date, DayTotals)> =
            self.model.read(|snap| scan_dates(snap, &prefix, Some(from), to, "day totals"))?;
        let mut buckets: Vec<MovementBucket> = Vec::new();
        for (date, day) in days {
            let start = granularity.bucket(date);
            if buckets.last().is_none_or(|b| b.start != start) {
                let totals =
                    Movement::ALL.iter().map(|m| (*m, MovementTotals::default())).collect();
                buckets.push(MovementBucket { start, totals, net: Decimal::ZERO });
            }
            let bucket = buckets.last_mut().expect("pushed above");
            for (m, t) in Movement::ALL.iter().zip(day.kinds) {
                let total = bucket.totals.get_mut(m).expect("every kind is listed");
                let what = || sum_overflow(format_args!("MRR movements ({currency}) of {start}"));
                total.count += t.count;
                total.amount = total.amount.checked_add(t.amount).ok_or_else(what)?;
                bucket.net = bucket.net.checked_add(t.amount).ok_or_else(what)?;
            }
        }
        Ok(buckets)
    }

    /// Every customer's movement in `currency` dated in [from, to], by date then customer.
    pub fn customer_movements(
        &self,
        from: Date,
        to: Date,
        currency: Currency,
    ) -> Result<Vec<CustomerMovement>> {
        check_range(from, to)?;
        let prefix = format!("mv/{currency}/");
        self.model.read(|snap| {
            let after = from.yesterday().ok().map(|d| format!("{d}/\u{10FFFF}"));
            let hits =
                snap.scan(prefix.as_bytes(), after.as_deref().map(str::as_bytes), usize::MAX)?;
            let mut out = Vec::new();
            for (key, value) in hits {
                let rest = std::str::from_utf8(&key[prefix.len()..])
                    .map_err(|_| corrupt(NAME, format!("key {key:?} is not UTF-8")))?;
                let (_, customer) = rest
                    .split_once('/')
                    .ok_or_else(|| corrupt(NAME, format!("key {key:?} has no customer")))?;
                let record = decode::<MovementEntry>("movement", &value)?.record;
                if record.date > to {
                    break;
                }
                if record.date >= from {
                    out.push(CustomerMovement { customer_id: customer.to_string(), record });
                }
            }
            Ok(out)
        })
    }

    /// The currencies with at least one movement, in code order (one seek per currency).
    pub fn movement_currencies(&self) -> Result<Vec<Currency>> {
        self.model.read(|snap| {
            let mut out = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let hit = snap.scan(b"mv/", after.as_deref(), 1)?;
                let Some((key, _)) = hit.first() else {
                    return Ok(out);
                };
                let bad = || corrupt(NAME, format!("movement key {key:?} has no currency"));
                let code = std::str::from_utf8(&key[3..])
                    .ok()
                    .and_then(|rest| rest.split_once('/'))
                    .map(|(code, _)| code)
                    .ok_or_else(bad)?;
                out.push(Currency::parse(code).map_err(|_| bad())?);
                // Past every key of this currency: `/` then any byte below 0xff.
                after = Some([code.as_bytes(), b"/\xff"].concat());
            }
        })
    }

    /// Up to `page_size` (0 = [`PAGE_SIZE_DEFAULT`], at most [`PAGE_SIZE_MAX`]) customers'
    /// movements in `currency` dated in [from, to], after `page_token`, by date then customer
    /// ([`Self::customer_movements`] in pages), read from one consistent view.
    pub fn customer_movements_page(
        &self,
        from: Date,
        to: Date,
        currency: Currency,
        page_token: Option<&str>,
        page_size: usize,
    ) -> Result<CustomerMovementPage> {
        check_range(from, to)?;
        if let Some(t) = page_token {
            check_movement_token(t)?;
        }
        let size = if page_size == 0 { PAGE_SIZE_DEFAULT } else { page_size.min(PAGE_SIZE_MAX) };
        let prefix = format!("mv/{currency}/");
        let before_from = from.yesterday().ok().map(|d| format!("{d}/\u{10FFFF}"));
        let after = match (page_token, before_from) {
            (Some(t), Some(b)) => Some(if t > b.as_str() { t.to_string() } else { b }),
            (Some(t), None) => Some(t.to_string()),
            (None, b) => b,
        };
        self.model.read(|snap| {
            let hits =
                snap.scan(prefix.as_bytes(), after.as_deref().map(str::as_bytes), size + 1)?;
            let mut movements = Vec::with_capacity(size.min(hits.len()));
            let mut more = false;
            for (key, value) in hits {
                let rest = std::str::from_utf8(&key[prefix.len()..])
                    .map_err(|_| corrupt(NAME, format!("key {key:?} is not UTF-8")))?;
                let (_, customer) = rest
                    .split_once('/')
                    .ok_or_else(|| corrupt(NAME, format!("key {key:?} has no customer")))?;
                let record = decode::<MovementEntry>("movement", &value)?.record;
                if record.date > to {
                    break;
                }
                if movements.len() == size {
                    more = true;
                    break;
                }
                movements.push(CustomerMovement { customer_id: customer.to_string(), record });
            }
            let next_page_token = match movements.last() {
                Some(last) if more => Some(format!("{}/{}", last.record.date, last.customer_id)),
                _ => None,
            };
            Ok(CustomerMovementPage { movements, next_page_token, position: snap.checkpoint()? })
        })
    }

    /// NRR and GRR over [start, end] for the customers with MRR > 0 in `currency` at `start`.
    pub fn retention(&self, start: Date, end: Date, currency: Currency) -> Result<Retention> {
        check_range(start, end)?;
        let prefix = format!("acct/{currency}/");
        let cohort: Vec<(Decimal, Decimal)> = self.model.read(|snap| {
            let mut cohort = Vec::new();
            for (_, bytes) in snap.scan(prefix.as_bytes(), None, usize::MAX)? {
                let acct: Account = decode("account", &bytes)?;
                let mrr = |d: Date| {
                    acct.mrr_at(d, currency).ok_or_else(|| sum_overflow("a customer's MRR"))
                };
                let at_start = mrr(start)?;
                if at_start > Decimal::ZERO {
                    cohort.push((at_start, mrr(end)?));
                }
            }
            Ok(cohort)
        })?;
        let ratios = retention(&cohort);
        let sum = |values: Vec<Decimal>| {
            checked_sum(values).ok_or_else(|| sum_overflow(format_args!("cohort MRR ({currency})")))
        };
        Ok(Retention {
            start,
            end,
            cohort_size: cohort.len(),
            mrr_start: sum(cohort.iter().map(|c| c.0).collect())?,
            mrr_end: sum(cohort.iter().map(|c| c.1).collect())?,
            mrr_kept: sum(cohort.iter().map(|c| c.0.min(c.1)).collect())?,
            nrr: ratios.map(|r| r.0),
            grr: ratios.map(|r| r.1),
        })
    }

    /// Retention over the default window: the [`RETENTION_WINDOW_MONTHS`] months ending at
    /// `end`.
    pub fn retention_trailing_year(&self, end: Date, currency: Currency) -> Result<Retention> {
        let span = jiff::Span::new().months(RETENTION_WINDOW_MONTHS);
        let start = end.checked_sub(span).map_err(|e| {
            ProjectionError::InvalidArgument(format!("no 12-month window ends at {end}: {e}"))
        })?;
        self.retention(start, end, currency)
    }

    /// Usage revenue in `currency` dated in [from, to] (see the module docs for the dating),
    /// per day or month (only buckets with usage are listed).
    pub fn usage_revenue(
        &self,
        from: Date,
        to: Date,
        granularity: Granularity,
        currency: Currency,
    ) -> Result<Vec<UsageBucket>> {
        check_range(from, to)?;
        let prefix = format!("use/{currency}/");
        let days: Vec<(Date, UsageDay)> =
            self.model.read(|snap| scan_dates(snap, &prefix, Some(from), to, "usage day"))?;
        let mut buckets: Vec<UsageBucket> = Vec::new();
        for (date, day) in days {
            let start = granularity.bucket(date);
            if buckets.last().is_none_or(|b| b.start != start) {
                buckets.push(UsageBucket { start, lines: 0, amount: Decimal::ZERO });
            }
            let bucket = buckets.last_mut().expect("pushed above");
            bucket.lines += day.lines;
            bucket.amount = bucket.amount.checked_add(day.amount).ok_or_else(|| {
                sum_overflow(format_args!("usage revenue ({currency}) of {start}"))
            })?;
        }
        Ok(buckets)
    }
}
