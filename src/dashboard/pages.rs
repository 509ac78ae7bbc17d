//! The dashboard's pages, each built from `QueryService` replies (the very calls gRPC clients
//! make, in-process): no read model is opened here and no billing figure is computed twice.
//! What a page adds is presentation: months laid side by side, differences of cumulative
//! balances into monthly amounts, percentages of ratios.

// tonic::Status is the query API's error type, passed through as it is (as query-service does).
#![allow(clippy::result_large_err)]

use jiff::civil::Date;
use proto::v1 as pb;
use proto::v1::query_service_server::QueryService;
use query_service::QueryApi;
use rust_decimal::Decimal;
use tonic::{Request, Status};

use super::chart::{self, Series};
use super::view::{urlencode, Cell, Page, Section, Table};

/// Everything a page may be asked for (unknown or empty fields are ignored; bad ones are the
/// query API's INVALID_ARGUMENT, shown with its reason).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Params {
    pub currency: Option<String>,
    /// First and last month shown, YYYY-MM.
    pub from: Option<String>,
    pub to: Option<String>,
    pub as_of: Option<String>,
    pub terms_days: Option<String>,
    pub customer_id: Option<String>,
    pub status: Option<String>,
    pub period_from: Option<String>,
    pub period_to: Option<String>,
    pub flagged: Option<String>,
    pub page_token: Option<String>,
    pub as_of_recorded: Option<String>,
    pub csv: Option<String>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Months shown on a page: at most this many.
pub const MONTHS_MAX: usize = 36;
/// Cohorts (start months) and months after each in the retention table.
pub const COHORTS_MAX: usize = 6;
/// Waterfall lines listed on the revenue page (the CSV export has them all).
pub const WATERFALL_ROWS_MAX: u32 = 200;

const COLORS: [(u8, u8, u8); 6] =
    [(44, 107, 201), (80, 170, 110), (240, 160, 40), (200, 70, 70), (140, 90, 190), (90, 90, 90)];

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_default()
}

/// An amount as the API writes money: exactly the currency's minor-unit digits.
fn money(cur: &str, d: Decimal) -> String {
    match domain::money::Currency::parse(cur) {
        Ok(c) => c.format(d).unwrap_or_else(|exact| exact),
        Err(_) => d.to_string(),
    }
}

fn month_label(d: Date) -> String {
    format!("{:04}-{:02}", d.year(), d.month())
}

fn parse_month(s: &str, field: &str) -> Result<Date, Status> {
    let d = (s.len() == 7).then(|| format!("{s}-01").parse::<Date>().ok()).flatten();
    d.ok_or_else(|| Status::invalid_argument(format!("{field}: {s:?} is not a month YYYY-MM")))
}

fn months_between(from: Date, to: Date) -> Result<Vec<Date>, Status> {
    let mut out = Vec::new();
    let mut m = from.first_of_month();
    let last = to.first_of_month();
    while m <= last && out.len() < MONTHS_MAX {
        out.push(m);
        if m == last {
            break;
        }
        m = m.checked_add(jiff::Span::new().months(1)).map_err(internal)?;
    }
    if out.is_empty() {
        return Err(Status::invalid_argument(format!("to {to} is before from {from}")));
    }
    Ok(out)
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn today() -> Date {
    jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date()
}

/// The currency asked for, else the first the journal has balances in, else USD.
async fn currency(api: &QueryApi, p: &Params) -> Result<String, Status> {
    if let Some(c) = given(&p.currency) {
        return Ok(c.to_uppercase());
    }
    let req =
        pb::AsOfRequest { as_recorded_at: None, as_of: "9000-01-01".into(), min_position: None };
    let balances = api.get_balances(Request::new(req)).await?.into_inner();
    Ok(balances.balances.first().map_or("USD".to_string(), |b| b.currency.clone()))
}

/// The months a page shows: `from`..`to` when given, else the twelve months up to the last
/// month in which MRR moved (or this month).
async fn window(api: &QueryApi, p: &Params, cur: &str) -> Result<Vec<Date>, Status> {
    let to = match given(&p.to) {
        Some(s) => parse_month(s, "to")?,
        None => {
            let req = pb::MrrMovementsRequest {
                as_recorded_at: None,
                currency: cur.into(),
                from: "2000-01-01".into(),
                to: "9000-01-01".into(),
                granularity: "month".into(),
                min_position: None,
            };
            let moves = api.list_mrr_movements(Request::new(req)).await?.into_inner();
            let last = moves.buckets.last().map(|b| dec_date(&b.start)).transpose()?;
            last.unwrap_or_else(today).first_of_month()
        }
    };
    let from = match given(&p.from) {
        Some(s) => parse_month(s, "from")?,
        None => to.checked_sub(jiff::Span::new().months(11)).map_err(internal)?,
    };
    months_between(from, to)
}

fn dec_date(s: &str) -> Result<Date, Status> {
    s.parse::<Date>().map_err(internal)
}

fn month_end(m: Date) -> Date {
    m.last_of_month()
}

fn form_months(
    p: &Params,
    cur: &str,
    months: &[Date],
) -> Vec<(&'static str, &'static str, String, &'static str)> {
    vec![
        ("currency", "Currency", cur.to_string(), "USD"),
        (
            "from",
            "From month",
            given(&p.from).map_or_else(|| month_label(months[0]), String::from),
            "YYYY-MM",
        ),
        (
            "to",
            "To month",
            given(&p.to)
                .map_or_else(|| month_label(*months.last().expect("a month")), String::from),
            "YYYY-MM",
        ),
    ]
}

const KINDS: [&str; 5] = ["new", "expansion", "reactivation", "contraction", "churn"];

/// MRR over time with its movements per month.
pub async fn mrr(api: &QueryApi, p: &Params) -> Result<Page, Status> {
    let cur = currency(api, p).await?;
    let months = window(api, p, &cur).await?;
    let last = *months.last().expect("a month");
    let req = pb::MrrMovementsRequest {
        as_recorded_at: None,
        currency: cur.clone(),
        from: months[0].to_string(),
        to: month_end(last).to_string(),
        granularity: "month".into(),
        min_position: None,
    };
    let moves = api.list_mrr_movements(Request::new(req)).await?.into_inner();
    let mut mrr = dec(&moves.mrr_before);
    let mut rows = Vec::new();
    let mut by_kind: Vec<Vec<Decimal>> = vec![Vec::new(); KINDS.len()];
    let mut mrr_series = Vec::new();
    for m in &months {
        let bucket = moves.buckets.iter().find(|b| b.start == m.to_string());
        let start = mrr;
        let amount = |kind: &str| -> Decimal {
            let t = bucket.and_then(|b| b.totals.iter().find(|t| t.kind == kind));
            t.map_or(Decimal::ZERO, |t| dec(&t.amount))
        };
        let mut row: Vec<Cell> = vec![month_label(*m).into(), money(&cur, start).into()];
        for (i, kind) in KINDS.iter().enumerate() {
            by_kind[i].push(amount(kind));
            row.push(money(&cur, amount(kind)).into());
        }
        if let Some(b) = bucket {
            mrr = dec(&b.mrr);
        }
        let net = bucket.map_or(Decimal::ZERO, |b| dec(&b.net));
        row.push(money(&cur, net).into());
        row.push(bucket.map_or_else(|| money(&cur, mrr), |b| b.mrr.clone()).into());
        mrr_series.push(mrr);
        rows.push(row);
    }
    let kinds: Vec<Series> = KINDS
        .iter()
        .enumerate()
        .map(|(i, k)| Series { name: k.to_string(), color: COLORS[i], values: by_kind[i].clone() })
        .collect();
    let labels: Vec<String> = months.iter().map(|m| month_label(*m)).collect();
    let mut columns = vec!["month".to_string(), "mrr_start".to_string()];
    columns.extend(KINDS.iter().map(|k| k.to_string()));
    columns.extend(["net".to_string(), "mrr_end".to_string()]);
    Ok(Page {
        title: format!("MRR ({cur})"),
        nav: "/mrr",
        form: form_months(p, &cur, &months),
        sections: vec![
            Section::Figures(vec![
                ("mrr-start".into(), format!("MRR before {}", months[0]), moves.mrr_before.clone()),
                ("mrr-end".into(), format!("MRR at {}", month_end(last)), moves.mrr_at_to.clone()),
            ]),
            Section::Chart(chart::lines(
                "MRR at month end",
                &labels,
                &[Series { name: "MRR".into(), color: COLORS[0], values: mrr_series }],
            )),
            Section::Chart(chart::stacked_bars("MRR movements per month", &labels, &kinds)),
            Section::Table(Table {
                id: "mrr",
                title: "MRR bridge per month".into(),
                columns,
                rows,
            }),
            Section::Note(
                "Usage revenue is reported beside MRR, never inside it (SPEC §5): see Revenue."
                    .into(),
            ),
        ],
    })
}

fn percent(ratio: &str) -> String {
    match ratio.parse::<Decimal>() {
        Ok(r) => format!("{:.1} %", (r * Decimal::ONE_HUNDRED).round_dp(1)),
        Err(_) => "–".to_string(),
    }
}

/// NRR and GRR for a window, and a cohort table of NRR by start month and months after.
pub async fn retention(api: &QueryApi, p: &Params) -> Result<Page, Status> {
    let cur = currency(api, p).await?;
    let months = window(api, p, &cur).await?;
    let (first, last) = (months[0], *months.last().expect("a month"));
    let end = month_end(last);
    let ask = |start: Date, end: Date| pb::RetentionRequest {
        as_recorded_at: None,
        currency: cur.clone(),
        start: start.to_string(),
        end: end.to_string(),
        min_position: None,
    };
    let whole = api.get_retention(Request::new(ask(first, end))).await?.into_inner();
    let cohorts: Vec<Date> = months.iter().rev().skip(1).take(COHORTS_MAX).rev().copied().collect();
    let mut rows = Vec::new();
    for start in &cohorts {
        let mut row: Vec<Cell> = vec![month_label(*start).into()];
        let first_reply = api.get_retention(Request::new(ask(*start, *start))).await?.into_inner();
        row.push(first_reply.cohort_size.to_string().into());
        row.push(first_reply.mrr_start.clone().into());
        for k in 1..=COHORTS_MAX as i32 {
            let at = start.checked_add(jiff::Span::new().months(k)).map_err(internal)?;
            if at > end {
                row.push("".into());
                continue;
            }
            let r = api.get_retention(Request::new(ask(*start, at))).await?.into_inner();
            row.push(percent(&r.nrr).into());
        }
        rows.push(row);
    }
    let mut columns = vec!["cohort".to_string(), "customers".to_string(), "mrr_start".to_string()];
    columns.extend((1..=COHORTS_MAX).map(|k| format!("nrr_month_{k}")));
    Ok(Page {
        title: format!("Retention ({cur})"),
        nav: "/retention",
        form: form_months(p, &cur, &months),
        sections: vec![
            Section::Figures(vec![
                ("nrr".into(), format!("NRR {first} → {end}"), percent(&whole.nrr)),
                ("grr".into(), format!("GRR {first} → {end}"), percent(&whole.grr)),
                (
                    "cohort-size".into(),
                    "Customers with MRR at the start".into(),
                    whole.cohort_size.to_string(),
                ),
                (
                    "cohort-mrr-start".into(),
                    "Their MRR at the start".into(),
                    whole.mrr_start.clone(),
                ),
                ("cohort-mrr-end".into(), "Their MRR at the end".into(), whole.mrr_end.clone()),
            ]),
            Section::Table(Table {
                id: "cohorts",
                title: "NRR by cohort (customers with MRR on the cohort's first day), months after"
                    .into(),
                columns,
                rows,
            }),
        ],
    })
}

/// Recognized revenue per month by type, the balances at each month end, and the waterfall.
pub async fn revenue(api: &QueryApi, p: &Params) -> Result<Page, Status> {
    let cur = currency(api, p).await?;
    let months = window(api, p, &cur).await?;
    let before = months[0].yesterday().map_err(internal)?;
    let balances_at = |d: Date| {
        let req =
            pb::AsOfRequest { as_recorded_at: None, as_of: d.to_string(), min_position: None };
        api.get_balances(Request::new(req))
    };
    let pick = |r: pb::BalancesResponse| r.balances.into_iter().find(|b| b.currency == cur);
    let mut previous = pick(balances_at(before).await?.into_inner()).unwrap_or_default();
    let types = ["subscription", "usage", "true_up", "add_on", "credit", "breakage"];
    let mut rows = Vec::new();
    let mut by_type: Vec<Vec<Decimal>> = vec![Vec::new(); types.len()];
    let (mut deferred, mut unbilled, mut receivable) = (Vec::new(), Vec::new(), Vec::new());
    for m in &months {
        let b = pick(balances_at(month_end(*m)).await?.into_inner()).unwrap_or_default();
        let recognized = |x: &pb::CurrencyBalances, t: &str| {
            x.recognized_revenue.get(t).map_or(Decimal::ZERO, |v| dec(v))
        };
        let mut row: Vec<Cell> = vec![month_label(*m).into()];
        let mut month_total = Decimal::ZERO;
        for (i, t) in types.iter().enumerate() {
            let v = recognized(&b, t) - recognized(&previous, t);
            month_total += v;
            by_type[i].push(v);
            row.push(money(&cur, v).into());
        }
        row.push(money(&cur, month_total).into());
        for (series, value) in [
            (&mut deferred, &b.deferred_revenue),
            (&mut unbilled, &b.unbilled_receivable),
            (&mut receivable, &b.accounts_receivable),
        ] {
            series.push(dec(value));
            row.push(Cell::from(if value.is_empty() { "0.00" } else { value.as_str() }));
        }
        rows.push(row);
        previous = b;
    }
    let labels: Vec<String> = months.iter().map(|m| month_label(*m)).collect();
    let recognized_series: Vec<Series> = types
        .iter()
        .enumerate()
        .filter(|(i, _)| by_type[*i].iter().any(|v| !v.is_zero()))
        .map(|(i, t)| Series { name: t.to_string(), color: COLORS[i], values: by_type[i].clone() })
        .collect();
    let mut columns = vec!["month".to_string()];
    columns.extend(types.iter().map(|t| format!("recognized_{t}")));
    columns.extend(
        ["recognized_total", "deferred_revenue", "unbilled_receivable", "accounts_receivable"]
            .map(String::from),
    );
    let waterfall = pb::RevenueWaterfallRequest {
        as_recorded_at: None,
        from_month: month_label(months[0]),
        to_month: month_label(*months.last().expect("a month")),
        currency: cur.clone(),
        page_size: WATERFALL_ROWS_MAX,
        page_token: String::new(),
        min_position: None,
    };
    let waterfall = api.get_revenue_waterfall(Request::new(waterfall)).await?.into_inner();
    let mut w_columns =
        vec!["invoice_id".to_string(), "line".to_string(), "revenue_type".to_string()];
    w_columns.extend(labels.iter().cloned());
    w_columns.push("total".into());
    let w_rows: Vec<Vec<Cell>> = waterfall
        .rows
        .iter()
        .map(|r| {
            let mut row = vec![
                Cell::link(r.invoice_id.clone(), format!("/invoices/{}", urlencode(&r.invoice_id))),
                r.line_index.to_string().into(),
                r.revenue_type.clone().into(),
            ];
            for l in &labels {
                let v =
                    r.months.iter().find(|m| &m.month == l).map_or("0.00", |m| m.amount.as_str());
                row.push(v.into());
            }
            row.push(r.total.clone().into());
            row
        })
        .collect();
    let mut sections = vec![
        Section::Chart(chart::stacked_bars(
            "Revenue recognized per month",
            &labels,
            &recognized_series,
        )),
        Section::Chart(chart::lines(
            "Balances at month end",
            &labels,
            &[
                Series { name: "deferred revenue".into(), color: COLORS[0], values: deferred },
                Series { name: "unbilled receivable".into(), color: COLORS[2], values: unbilled },
                Series { name: "accounts receivable".into(), color: COLORS[3], values: receivable },
            ],
        )),
        Section::Table(Table { id: "revenue", title: "Revenue per month".into(), columns, rows }),
        Section::Table(Table {
            id: "waterfall",
            title: format!("Revenue waterfall (first {WATERFALL_ROWS_MAX} lines)"),
            columns: w_columns,
            rows: w_rows,
        }),
    ];
    if !waterfall.next_page_token.is_empty() {
        sections.push(Section::Note(
            "More lines: `accrual export revenue-waterfall` has them all.".into(),
        ));
    }
    Ok(Page {
        title: format!("Revenue ({cur})"),
        nav: "/revenue",
        form: form_months(p, &cur, &months),
        sections,
    })
}

/// Receivables by days past due and by dunning state.
pub async fn receivables(api: &QueryApi, p: &Params) -> Result<Page, Status> {
    let cur = currency(api, p).await?;
    let as_of = given(&p.as_of).map_or_else(|| today().to_string(), String::from);
    let terms = given(&p.terms_days).unwrap_or("0");
    let terms_days: u32 = terms
        .parse()
        .map_err(|_| Status::invalid_argument(format!("terms_days: {terms:?} is not a number")))?;
    let req = pb::ReceivablesAgingRequest {
        as_recorded_at: None,
        currency: cur.clone(),
        as_of: as_of.clone(),
        terms_days,
        min_position: None,
    };
    let aging = api.get_receivables_aging(Request::new(req)).await?.into_inner();
    let table = |id: &'static str, title: &str, cells: &[pb::ReceivablesCell]| Table {
        id,
        title: title.into(),
        columns: ["name", "invoices", "amount_due"].map(String::from).to_vec(),
        rows: cells
            .iter()
            .map(|c| {
                vec![c.name.clone().into(), c.invoices.to_string().into(), c.amount.clone().into()]
            })
            .collect(),
    };
    let labels: Vec<String> = aging.buckets.iter().map(|b| b.name.clone()).collect();
    let total = aging.total.unwrap_or_default();
    Ok(Page {
        title: format!("Receivables ({cur})"),
        nav: "/receivables",
        form: vec![
            ("currency", "Currency", cur.clone(), "USD"),
            ("as_of", "As of", as_of.clone(), "YYYY-MM-DD"),
            ("terms_days", "Due days after issue", terms.to_string(), "0"),
        ],
        sections: vec![
            Section::Figures(vec![
                ("receivable-total".into(), format!("Due at {as_of}"), total.amount.clone()),
                ("receivable-invoices".into(), "Invoices".into(), total.invoices.to_string()),
            ]),
            Section::Chart(chart::stacked_bars(
                "Amount due by days past due",
                &labels,
                &[Series {
                    name: "amount due".into(),
                    color: COLORS[3],
                    values: aging.buckets.iter().map(|b| dec(&b.amount)).collect(),
                }],
            )),
            Section::Table(table("aging", "Aging (days past due)", &aging.buckets)),
            Section::Table(table("dunning", "Dunning state", &aging.dunning)),
            Section::Note(
                "An invoice is due on its issue date unless terms are given; amounts due are as \
                 of now (payments after the date count)."
                    .into(),
            ),
        ],
    })
}

/// The invoice listing with its filters.
pub async fn invoices(api: &QueryApi, p: &Params) -> Result<Page, Status> {
    let flagged = given(&p.flagged).is_some_and(|f| f == "true" || f == "on" || f == "1");
    let req = pb::ListInvoicesRequest {
        as_recorded_at: None,
        customer_id: given(&p.customer_id).unwrap_or_default().to_string(),
        status: given(&p.status).unwrap_or_default().to_string(),
        page_size: 100,
        page_token: given(&p.page_token).unwrap_or_default().to_string(),
        min_position: None,
        period_from: given(&p.period_from).unwrap_or_default().to_string(),
        period_to: given(&p.period_to).unwrap_or_default().to_string(),
        flagged,
    };
    let reply = api.list_invoices(Request::new(req.clone())).await?.into_inner();
    let columns = [
        "invoice_id",
        "customer_id",
        "period_start",
        "reason",
        "status",
        "currency",
        "subtotal",
        "tax",
        "total",
        "amount_due",
        "anomalies",
    ]
    .map(String::from)
    .to_vec();
    let rows = reply
        .invoices
        .iter()
        .map(|i| {
            let flags: Vec<&str> = i.anomalies.iter().map(|f| f.kind.as_str()).collect();
            vec![
                Cell::link(i.invoice_id.clone(), format!("/invoices/{}", urlencode(&i.invoice_id))),
                i.customer_id.clone().into(),
                i.period_start.clone().into(),
                i.reason.clone().into(),
                i.status.clone().into(),
                i.currency.clone().into(),
                i.subtotal.clone().into(),
                i.tax.clone().into(),
                i.total.clone().into(),
                i.amount_due.clone().into(),
                flags.join(" ").into(),
            ]
        })
        .collect();
    let mut sections = vec![Section::Table(Table {
        id: "invoices",
        title: "Invoices in issue order".into(),
        columns,
        rows,
    })];
    if !reply.next_page_token.is_empty() {
        let mut q = vec![format!("page_token={}", urlencode(&reply.next_page_token))];
        for (k, v) in [
            ("customer_id", &req.customer_id),
            ("status", &req.status),
            ("period_from", &req.period_from),
            ("period_to", &req.period_to),
        ] {
            if !v.is_empty() {
                q.push(format!("{k}={}", urlencode(v)));
            }
        }
        if flagged {
            q.push("flagged=true".into());
        }
        if let Some(t) = given(&p.as_of_recorded) {
            q.push(format!("as_of_recorded={}", urlencode(t)));
        }
        sections.push(Section::More(format!("/invoices?{}", q.join("&"))));
    }
    Ok(Page {
        title: "Invoices".into(),
        nav: "/invoices",
        form: vec![
            ("customer_id", "Customer", req.customer_id.clone(), "acme"),
            ("status", "Status", req.status.clone(), "open, paid, void…"),
            ("period_from", "Period from", req.period_from.clone(), "YYYY-MM-DD"),
            ("period_to", "Period to", req.period_to.clone(), "YYYY-MM-DD"),
            (
                "flagged",
                "Flagged only",
                if flagged { "true".into() } else { String::new() },
                "true",
            ),
        ],
        sections,
    })
}

/// One invoice: totals, lines, coupons and wallet credits, payments, credit notes, flags.
pub async fn invoice(api: &QueryApi, id: &str) -> Result<Page, Status> {
    let req =
        pb::InvoiceQuery { as_recorded_at: None, invoice_id: id.to_string(), min_position: None };
    let view = api.get_invoice(Request::new(req)).await?.into_inner();
    let i = view.invoice.ok_or_else(|| Status::internal("an invoice view without its invoice"))?;
    let lines = i
        .lines
        .iter()
        .map(|l| {
            vec![
                l.kind.clone().into(),
                l.description.clone().into(),
                l.units.clone().into(),
                format!("{} – {}", l.service_start, l.service_end).into(),
                l.discount.clone().into(),
                l.amount.clone().into(),
            ]
        })
        .collect();
    let flags = i
        .anomalies
        .iter()
        .map(|f| {
            vec![
                f.kind.clone().into(),
                f.subject.clone().into(),
                f.amount.clone().into(),
                f.typical.clone().into(),
                f.score.clone().into(),
                f.reason.clone().into(),
            ]
        })
        .collect();
    let credit_notes = i.credit_note_ids.iter().map(|n| vec![Cell::from(n.as_str())]).collect();
    let mut figures = vec![
        ("invoice-status".to_string(), "Status".to_string(), i.status.clone()),
        ("invoice-subtotal".into(), "Subtotal".into(), i.subtotal.clone()),
        ("invoice-tax".into(), format!("Tax ({} %)", i.tax_rate), i.tax.clone()),
        ("invoice-total".into(), "Total".into(), i.total.clone()),
        ("invoice-paid".into(), "Paid".into(), i.amount_paid.clone()),
        ("invoice-due".into(), "Amount due".into(), i.amount_due.clone()),
    ];
    if i.failed_attempts > 0 {
        figures.push((
            "invoice-failed".into(),
            "Failed payments".into(),
            i.failed_attempts.to_string(),
        ));
    }
    let mut sections = vec![
        Section::Note(format!(
            "{} · customer {} · subscription {} · period {} – {} · reason {} · {}",
            i.currency,
            i.customer_id,
            if i.subscription_id.is_empty() { "–" } else { &i.subscription_id },
            i.period_start,
            i.period_end,
            i.reason,
            i.issued_at
                .and_then(|t| jiff::Timestamp::from_second(t.seconds).ok())
                .map(|t| format!("issued {t}"))
                .unwrap_or_default(),
        )),
        Section::Figures(figures),
        Section::Table(Table {
            id: "lines",
            title: "Lines".into(),
            columns: ["kind", "description", "units", "service_period", "discount", "amount"]
                .map(String::from)
                .to_vec(),
            rows: lines,
        }),
    ];
    if !i.anomalies.is_empty() {
        sections.push(Section::Table(Table {
            id: "anomalies",
            title: "Anomaly flags (they change no amount)".into(),
            columns: ["kind", "subject", "amount", "typical", "score", "reason"]
                .map(String::from)
                .to_vec(),
            rows: flags,
        }));
    }
    let applied: Vec<Vec<Cell>> = i
        .coupons
        .iter()
        .map(|c| vec![Cell::from(format!("coupon {}", c.coupon_code)), c.amount.clone().into()])
        .chain(std::iter::once(vec!["credit balance".into(), i.credit_applied.clone().into()]))
        .chain(i.wallet_applied.iter().map(|w| {
            vec![
                Cell::from(format!("wallet {} ({})", w.wallet_id, w.kind)),
                w.amount.clone().into(),
            ]
        }))
        .collect();
    sections.push(Section::Table(Table {
        id: "applied",
        title: "Coupons (before tax), credit and wallet credits (after tax)".into(),
        columns: ["what", "amount"].map(String::from).to_vec(),
        rows: applied,
    }));
    if !i.credit_note_ids.is_empty() {
        sections.push(Section::Table(Table {
            id: "credit-notes",
            title: format!("Credit notes ({} credited)", i.amount_credited),
            columns: vec!["credit_note_id".into()],
            rows: credit_notes,
        }));
    }
    Ok(Page {
        title: format!("Invoice {}", i.invoice_id),
        nav: "/invoices",
        form: Vec::new(),
        sections,
    })
}

/// The export downloads, `suffix` (`?as_of_recorded=…` or empty) kept on each link.
pub fn exports(suffix: &str) -> Page {
    // Every kind `accrual export` has, named as on its command line.
    let kinds = <crate::export::ExportKind as clap::ValueEnum>::value_variants();
    let rows = kinds
        .iter()
        .map(|k| {
            let k = k.name();
            let mut row = vec![Cell::from(k)];
            for f in ["csv", "json", "parquet"] {
                row.push(Cell::link(format!("{k}.{f}"), format!("/exports/{k}.{f}{suffix}")));
            }
            row
        })
        .collect();
    Page {
        title: "Exports".into(),
        nav: "/exports",
        form: Vec::new(),
        sections: vec![
            Section::Note(
                "The read models as `accrual export` writes them, for BI tools: Parquet with \
                 typed columns (decimals at the currency's scale, dates as dates), CSV and JSON. \
                 Columns and effective-date options: `accrual export --help`."
                    .into(),
            ),
            Section::Table(Table {
                id: "exports",
                title: "Downloads".into(),
                columns: ["export", "csv", "json", "parquet"].map(String::from).to_vec(),
                rows,
            }),
        ],
    }
}
