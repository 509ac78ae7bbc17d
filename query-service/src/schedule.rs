//! `GetRevenueSchedule`: the recognition schedules the journal posted for invoice lines
//! (`projections::journal::LineSchedule`), for one line, one invoice or one customer, summed per
//! day or month and revenue type.

use std::collections::BTreeMap;

use command_service::convert::money;
use domain::money::Currency;
use domain::recognition::RevenueType;
use jiff::civil::Date;
use projections::journal::{InvoiceSchedules, LineSchedule};
use projections::mrr::Granularity;
use proto::v1 as pb;
use rust_decimal::Decimal;
use tonic::Status;

use crate::check::{checked, not_found, Check};

/// Whose schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Line { invoice_id: String, index: usize },
    Invoice { invoice_id: String },
    Customer { customer_id: String },
}

/// A validated `RevenueScheduleRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleArgs {
    pub scope: Scope,
    pub granularity: Granularity,
    pub from: Option<Date>,
    pub to: Option<Date>,
    pub as_of: Option<Date>,
}

pub fn parse(r: &pb::RevenueScheduleRequest) -> Result<ScheduleArgs, Status> {
    let mut c = Check::default();
    let scope = scope(&mut c, r);
    let granularity = c.granularity("granularity", &r.granularity, Granularity::Day);
    let from = c.opt_date("from", &r.from);
    let to = c.opt_date("to", &r.to);
    c.order("to", from, to);
    let as_of = c.opt_date("as_of", &r.as_of);
    c.done()?;
    Ok(ScheduleArgs {
        scope: checked(scope)?,
        granularity: checked(granularity)?,
        from: checked(from)?,
        to: checked(to)?,
        as_of: checked(as_of)?,
    })
}

fn scope(c: &mut Check, r: &pb::RevenueScheduleRequest) -> Option<Scope> {
    let (invoice_id, customer_id) = (r.invoice_id.clone(), r.customer_id.clone());
    if !invoice_id.is_empty() && !customer_id.is_empty() {
        c.bad("customer_id", "give invoice_id or customer_id, not both");
        return None;
    }
    if !invoice_id.is_empty() {
        c.invoice_id("invoice_id", &invoice_id);
        return Some(match r.line_index {
            Some(i) => Scope::Line { invoice_id, index: i as usize },
            None => Scope::Invoice { invoice_id },
        });
    }
    if customer_id.is_empty() {
        c.bad("invoice_id", "give invoice_id or customer_id");
        return None;
    }
    if r.line_index.is_some() {
        c.bad("line_index", "line_index needs invoice_id");
        return None;
    }
    c.id("customer_id", &customer_id);
    Some(Scope::Customer { customer_id })
}

/// The lines of `invoices` the scope names: NOT_FOUND for an invoice or line not issued.
pub fn select<'a>(
    scope: &Scope,
    invoices: &'a [InvoiceSchedules],
) -> Result<Vec<&'a LineSchedule>, Status> {
    let one = |id: &str| {
        let found = invoices.iter().find(|s| s.invoice_id == id);
        found.ok_or_else(|| not_found("invoice", id))
    };
    Ok(match scope {
        Scope::Line { invoice_id, index } => {
            let line = one(invoice_id)?.lines.get(*index);
            vec![line.ok_or_else(|| not_found("invoice line", format!("{invoice_id}/{index}")))?]
        }
        Scope::Invoice { invoice_id } => one(invoice_id)?.lines.iter().collect(),
        Scope::Customer { .. } => invoices.iter().flat_map(|s| &s.lines).collect(),
    })
}

/// The first day of the day or month `d` falls in.
pub fn bucket(granularity: Granularity, d: Date) -> Date {
    match granularity {
        Granularity::Day => d,
        Granularity::Month => d.first_of_month(),
    }
}

/// The response (its position left 0) from the schedules of the scope's invoices.
pub fn response(
    args: &ScheduleArgs,
    invoices: &[InvoiceSchedules],
) -> Result<pb::RevenueScheduleResponse, Status> {
    let lines = select(&args.scope, invoices)?;
    let in_range = |d: Date| args.from.is_none_or(|f| d >= f) && args.to.is_none_or(|t| d <= t);
    let mut sums: BTreeMap<(Date, RevenueType), Decimal> = BTreeMap::new();
    let (mut total, mut recognized) = (Decimal::ZERO, Decimal::ZERO);
    for line in &lines {
        for (d, amount) in &line.entries {
            total += amount;
            if args.as_of.is_some_and(|a| *d <= a) {
                recognized += amount;
            }
            if in_range(*d) {
                *sums.entry((bucket(args.granularity, *d), line.revenue_type)).or_default() +=
                    amount;
            }
        }
    }
    let currency = invoices.first().map(|s| s.currency);
    // Money at the currency's minor unit; with no line there is no currency (and no amount).
    let m = |x: Decimal| currency.map_or_else(|| x.to_string(), |c| money(c, x));
    let entries = sums
        .into_iter()
        .filter(|(_, a)| !a.is_zero())
        .map(|((d, t), a)| pb::RevenueScheduleEntry {
            date: d.to_string(),
            amount: m(a),
            revenue_type: t.as_str().into(),
        })
        .collect();
    let split = |x: Decimal| args.as_of.map(|_| m(x)).unwrap_or_default();
    Ok(pb::RevenueScheduleResponse {
        currency: currency.map(|c| c.code().to_string()).unwrap_or_default(),
        entries,
        total: m(total),
        recognized: split(recognized),
        remaining: split(total - recognized),
        line: matches!(args.scope, Scope::Line { .. }).then(|| line_view(lines[0], currency)),
        position: 0,
    })
}

fn line_view(line: &LineSchedule, currency: Option<Currency>) -> pb::RevenueScheduleLine {
    let credited = line.credited_line.as_ref();
    pb::RevenueScheduleLine {
        kind: line.kind.as_str().into(),
        service_start: line.service_period.start.to_string(),
        service_end: line.service_period.end.to_string(),
        amount: currency.map_or_else(|| line.amount.to_string(), |c| money(c, line.amount)),
        credited_invoice_id: credited.map(|r| r.invoice_id.clone()).unwrap_or_default(),
        credited_line_index: credited.map(|r| r.line_index as u32),
    }
}
