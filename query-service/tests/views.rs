//! The query service over real read models (invoices, MRR, journal) built by their runners from
//! a hand-written log, each answer checked against numbers computed by hand.
//!
//! Customer c1 (s1, basic 20.00/month from Jan 1): inv-1 base fee 20.00 for January, tax 10 %,
//! paid 22.00 on Jan 5; inv-2 issued Feb 1: base fee 28.00 for February, usage 8.00 for
//! January. Customer c2 (s2 from Jan 10, canceled effective Jan 11): inv-3 base fee 31.00 for
//! January issued Jan 10, voided Jan 11.

use std::sync::Arc;

use domain::calendar::{Anchor, Interval, Period};
use domain::catalog::{Customer, FeeTiming, Plan, PlanRef};
use domain::events::Event;
use domain::invoice::{build_invoice, InvoiceHeader, IssueReason, LineDraft, LineKind};
use domain::money::Currency;
use event_store::MemoryStore;
use jiff::civil::{date, Date};
use jiff::Timestamp;
use projections::invoices::{InvoiceReader, InvoicesProjection};
use projections::journal::{JournalProjection, JournalReader};
use projections::mrr::{MrrProjection, MrrReader};
use projections::{Projection, Runner, RunnerConfig};
use proto::v1 as pb;
use proto::v1::query_service_server::QueryService;
use query_service::{QueryApi, ReadModels, View};
use rust_decimal::Decimal;
use rust_decimal::RoundingStrategy::MidpointAwayFromZero;
use tempfile::TempDir;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

type Store = Arc<MemoryStore>;

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn month(m: i8) -> Period {
    Period { start: date(2025, m, 1), end: date(2025, m + 1, 1) }
}

fn customer(id: &str) -> Event {
    Event::CustomerRegistered(Customer {
        customer_id: id.into(),
        name: id.into(),
        currency: usd(),
        time_zone: "UTC".into(),
        tax_rate: Decimal::ZERO,
    })
}

fn basic_plan() -> Event {
    Event::PlanPublished(Plan {
        code: "basic".into(),
        version: 1,
        name: "Basic".into(),
        currency: usd(),
        interval: Interval::Monthly,
        base_fee: dec("20"),
        fee_timing: FeeTiming::Advance,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        charges: vec![],
    })
}

fn start(sub: &str, cust: &str, on: Date) -> Event {
    Event::SubscriptionStarted {
        subscription_id: sub.into(),
        customer_id: cust.into(),
        plan: PlanRef { code: "basic".into(), version: 1 },
        anchor: Anchor::Anniversary,
        start_date: on,
        trial_end: None,
        occurred_at: ts("2025-01-01T00:00:00Z"),
        billed_until: None,
    }
}

fn issued(
    id: &str,
    cust: &str,
    sub: &str,
    at: &str,
    tax: &str,
    lines: &[(LineKind, &str, Period)],
) -> Event {
    let header = InvoiceHeader {
        invoice_id: id.into(),
        customer_id: cust.into(),
        subscription_id: sub.into(),
        currency: usd(),
        period: lines[0].2,
        issued_at: ts(at),
        reason: IssueReason::PeriodClose,
        tax_rate: dec(tax),
    };
    let drafts = lines
        .iter()
        .map(|(kind, amount, period)| LineDraft {
            kind: *kind,
            description: kind.as_str().into(),
            metric_code: None,
            charge_model: None,
            units: None,
            service_period: *period,
            unrounded: dec(amount),
        })
        .collect();
    Event::InvoiceIssued(build_invoice(header, drafts).expect("in range"))
}

fn log() -> Vec<Event> {
    use LineKind::{BaseFee, Usage};
    let at = ts("2025-01-11T12:00:00Z");
    vec![
        customer("c1"),
        customer("c2"),
        basic_plan(),
        start("s1", "c1", date(2025, 1, 1)),
        start("s2", "c2", date(2025, 1, 10)),
        issued("inv-1", "c1", "s1", "2025-01-01T10:00:00Z", "10", &[(BaseFee, "20", month(1))]),
        Event::PaymentSucceeded {
            invoice_id: "inv-1".into(),
            amount: dec("22"),
            occurred_at: ts("2025-01-05T08:00:00Z"),
        },
        issued("inv-3", "c2", "s2", "2025-01-10T00:00:00Z", "0", &[(BaseFee, "31", month(1))]),
        Event::SubscriptionCanceled {
            subscription_id: "s2".into(),
            effective_date: date(2025, 1, 11),
            immediately: true,
            occurred_at: at,
        },
        Event::InvoiceVoided { invoice_id: "inv-3".into(), reason: "dup".into(), occurred_at: at },
        issued(
            "inv-2",
            "c1",
            "s1",
            "2025-02-01T00:00:00Z",
            "0",
            &[(BaseFee, "28", month(2)), (Usage, "8", month(1))],
        ),
    ]
}

struct Fixture {
    _dir: TempDir,
    _db: sled::Db,
    /// Kept so that their progress stays live for `min_position` waits.
    _runners: (
        Runner<Store, InvoicesProjection>,
        Runner<Store, MrrProjection>,
        Runner<Store, JournalProjection>,
    ),
    api: QueryApi,
}

fn view<P: Projection, R>(
    db: &sled::Db,
    store: &Store,
    projection: P,
    reader: fn(projections::ReadModel) -> R,
) -> (Runner<Store, P>, View<R>) {
    let config = RunnerConfig { batch_events_max: 3, poll_interval_ms: 20 };
    let runner = Runner::open(db, store.clone(), projection, config).unwrap();
    let view = View { reader: reader(runner.read_model()), progress: runner.progress() };
    (runner, view)
}

async fn fixture() -> Fixture {
    fixture_with(log()).await
}

async fn fixture_with(events: Vec<Event>) -> Fixture {
    let store: Store = Arc::new(MemoryStore::new());
    for event in &events {
        projections::testkit::append_event(&store, event).await;
    }
    let dir = TempDir::new().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    let (mut a, invoices) = view(&db, &store, InvoicesProjection, InvoiceReader::new);
    let (mut b, mrr) = view(&db, &store, MrrProjection, MrrReader::new);
    let (mut c, journal) = view(&db, &store, JournalProjection::default(), JournalReader::new);
    let n = events.len() as u64;
    assert_eq!(a.catch_up().await.unwrap(), n);
    assert_eq!(b.catch_up().await.unwrap(), n);
    assert_eq!(c.catch_up().await.unwrap(), n);
    let api = QueryApi::new(ReadModels { invoices, mrr, journal });
    Fixture { _dir: dir, _db: db, _runners: (a, b, c), api }
}

/// The fields a refusal names (it must be INVALID_ARGUMENT with a BadRequest).
fn bad_fields(result: Result<impl std::fmt::Debug, Status>) -> Vec<String> {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let request = status.get_details_bad_request().expect("a BadRequest");
    request.field_violations.into_iter().map(|v| v.field).collect()
}

fn not_found(result: Result<impl std::fmt::Debug, Status>) -> String {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    status.get_details_resource_info().expect("a ResourceInfo").resource_name
}

impl Fixture {
    async fn schedule(
        &self,
        r: pb::RevenueScheduleRequest,
    ) -> Result<pb::RevenueScheduleResponse, Status> {
        self.api.get_revenue_schedule(Request::new(r)).await.map(|r| r.into_inner())
    }

    async fn journal(
        &self,
        r: pb::ListJournalEntriesRequest,
    ) -> Result<pb::ListJournalEntriesResponse, Status> {
        self.api.list_journal_entries(Request::new(r)).await.map(|r| r.into_inner())
    }

    async fn waterfall(
        &self,
        r: pb::RevenueWaterfallRequest,
    ) -> Result<pb::RevenueWaterfallResponse, Status> {
        self.api.get_revenue_waterfall(Request::new(r)).await.map(|r| r.into_inner())
    }

    async fn usage(&self, r: pb::UsageRevenueRequest) -> Result<pb::UsageRevenueResponse, Status> {
        self.api.get_usage_revenue(Request::new(r)).await.map(|r| r.into_inner())
    }

    async fn invoices(
        &self,
        r: pb::ListInvoicesRequest,
    ) -> Result<pb::ListInvoicesResponse, Status> {
        self.api.list_invoices(Request::new(r)).await.map(|r| r.into_inner())
    }

    async fn movements(
        &self,
        r: pb::MrrMovementsRequest,
    ) -> Result<pb::MrrMovementsResponse, Status> {
        self.api.list_mrr_movements(Request::new(r)).await.map(|r| r.into_inner())
    }
}

fn line(invoice_id: &str, index: u32) -> pb::RevenueScheduleRequest {
    pb::RevenueScheduleRequest {
        invoice_id: invoice_id.into(),
        line_index: Some(index),
        ..Default::default()
    }
}

/// (date, amount, revenue type)
fn entries(r: &pb::RevenueScheduleResponse) -> Vec<(String, Decimal, String)> {
    r.entries.iter().map(|e| (e.date.clone(), dec(&e.amount), e.revenue_type.clone())).collect()
}

fn row(d: &str, amount: &str, t: &str) -> (String, Decimal, String) {
    (d.into(), dec(amount), t.into())
}

#[tokio::test]
async fn a_base_fee_line_is_recognized_ratably_with_cumulative_rounding() {
    let f = fixture().await;
    let r =
        f.schedule(pb::RevenueScheduleRequest { as_of: "2025-01-15".into(), ..line("inv-1", 0) });
    let r = r.await.unwrap();
    assert_eq!((r.currency.as_str(), r.position), ("USD", 11));
    assert_eq!(r.entries.len(), 31);
    // 20.00 × d / 31, rounded, after day d: 0.65, 1.29, 1.94 ...
    let first: Vec<_> = entries(&r)[..3].to_vec();
    let want =
        [row("2025-01-01", "0.65", "subscription"), row("2025-01-02", "0.64", "subscription")];
    assert_eq!(first[..2], want);
    assert_eq!(first[2].1, dec("0.65"));
    let mut cumulative = Decimal::ZERO;
    for (d, e) in r.entries.iter().enumerate() {
        cumulative += dec(&e.amount);
        let exact = dec("20") * Decimal::from(d + 1) / Decimal::from(31);
        assert_eq!(
            cumulative,
            exact.round_dp_with_strategy(2, MidpointAwayFromZero),
            "after day {}",
            d + 1
        );
    }
    // 20 × 15 / 31 = 9.677… → 9.68 recognized by Jan 15.
    assert_eq!(
        (dec(&r.total), dec(&r.recognized), dec(&r.remaining)),
        (dec("20"), dec("9.68"), dec("10.32"))
    );
    let l = r.line.unwrap();
    assert_eq!(
        (l.kind.as_str(), l.service_start.as_str(), l.service_end.as_str(), l.amount.as_str()),
        ("base_fee", "2025-01-01", "2025-02-01", "20.00")
    );
    assert_eq!((l.credited_invoice_id.as_str(), l.credited_line_index), ("", None));
    let by_month =
        f.schedule(pb::RevenueScheduleRequest { granularity: "month".into(), ..line("inv-1", 0) });
    let by_month = by_month.await.unwrap();
    assert_eq!(entries(&by_month), [row("2025-01-01", "20", "subscription")]);
    assert_eq!((by_month.recognized.as_str(), by_month.remaining.as_str()), ("", ""), "no as_of");
    let window = pb::RevenueScheduleRequest {
        from: "2025-01-02".into(),
        to: "2025-01-03".into(),
        ..line("inv-1", 0)
    };
    let window = f.schedule(window).await.unwrap();
    let want =
        [row("2025-01-02", "0.64", "subscription"), row("2025-01-03", "0.65", "subscription")];
    assert_eq!(entries(&window), want);
    assert_eq!(dec(&window.total), dec("20"), "totals cover the whole schedule");
}

#[tokio::test]
async fn a_customer_schedule_sums_its_invoices_per_month_and_type() {
    let f = fixture().await;
    let c1 = pb::RevenueScheduleRequest {
        customer_id: "c1".into(),
        granularity: "month".into(),
        as_of: "2025-01-31".into(),
        ..Default::default()
    };
    let r = f.schedule(c1).await.unwrap();
    let want = [
        row("2025-01-01", "20", "subscription"),
        row("2025-01-01", "8", "usage"),
        row("2025-02-01", "28", "subscription"),
    ];
    assert_eq!(entries(&r), want);
    assert_eq!(
        (dec(&r.total), dec(&r.recognized), dec(&r.remaining)),
        (dec("56"), dec("28"), dec("28"))
    );
    assert!(r.line.is_none());
    // c2's only invoice is void: Jan 1..10 recognized (1.00 a day), reversed on Jan 11.
    let c2 = pb::RevenueScheduleRequest { customer_id: "c2".into(), ..Default::default() };
    let r = f.schedule(c2).await.unwrap();
    assert_eq!(r.entries.len(), 11);
    assert_eq!(entries(&r)[10], row("2025-01-11", "-10", "subscription"));
    assert_eq!(dec(&r.total), Decimal::ZERO);
    let whole = pb::RevenueScheduleRequest {
        invoice_id: "inv-2".into(),
        granularity: "month".into(),
        ..Default::default()
    };
    let r = f.schedule(whole).await.unwrap();
    assert_eq!(
        entries(&r),
        [row("2025-01-01", "8", "usage"), row("2025-02-01", "28", "subscription")]
    );
}

#[tokio::test]
async fn a_credit_line_reverses_the_unrecognized_days_of_the_line_it_credits() {
    // c1 upgrades on Feb 15: inv-2's base fee (1.00 a day) loses its last 14 days.
    let rest = Period { start: date(2025, 2, 15), end: date(2025, 3, 1) };
    let mut events = log();
    events.push(issued(
        "inv-4",
        "c1",
        "s1",
        "2025-02-15T09:00:00Z",
        "0",
        &[(LineKind::Credit, "-14", rest), (LineKind::BaseFee, "30", rest)],
    ));
    let f = fixture_with(events).await;
    let credit = f.schedule(line("inv-4", 0)).await.unwrap();
    let l = credit.line.as_ref().unwrap();
    assert_eq!(
        (l.kind.as_str(), l.credited_invoice_id.as_str(), l.credited_line_index),
        ("credit", "inv-2", Some(0))
    );
    assert_eq!(credit.entries.len(), 14);
    assert_eq!(entries(&credit)[0], row("2025-02-15", "-1", "subscription"));
    assert!(credit.entries.iter().all(|e| dec(&e.amount) == dec("-1")));
    assert_eq!((dec(&credit.total), credit.position), (dec("-14"), 12));
    let c1 = pb::RevenueScheduleRequest {
        customer_id: "c1".into(),
        granularity: "month".into(),
        from: "2025-02-01".into(),
        ..Default::default()
    };
    // February: inv-2 28.00 − 14.00 + inv-4 30.00.
    let feb = f.schedule(c1).await.unwrap();
    assert_eq!(entries(&feb), [row("2025-02-01", "44", "subscription")]);
}

#[tokio::test]
async fn schedule_requests_are_checked() {
    let f = fixture().await;
    let none = pb::RevenueScheduleRequest::default();
    assert_eq!(bad_fields(f.schedule(none).await), ["invoice_id"]);
    let both = pb::RevenueScheduleRequest { customer_id: "c1".into(), ..line("inv-1", 0) };
    assert_eq!(bad_fields(f.schedule(both).await), ["customer_id"]);
    let stray = pb::RevenueScheduleRequest {
        invoice_id: String::new(),
        customer_id: "c1".into(),
        ..line("", 0)
    };
    assert_eq!(bad_fields(f.schedule(stray).await), ["line_index"]);
    let bad = pb::RevenueScheduleRequest {
        granularity: "week".into(),
        from: "2025-13-01".into(),
        as_of: "yesterday".into(),
        ..line("inv-1", 0)
    };
    assert_eq!(bad_fields(f.schedule(bad).await), ["granularity", "from", "as_of"]);
    let reversed = pb::RevenueScheduleRequest {
        from: "2025-02-01".into(),
        to: "2025-01-01".into(),
        ..line("inv-1", 0)
    };
    assert_eq!(bad_fields(f.schedule(reversed).await), ["to"]);
    assert_eq!(not_found(f.schedule(line("inv-9", 0)).await), "inv-9");
    assert_eq!(not_found(f.schedule(line("inv-1", 1)).await), "inv-1/1");
    let ghost = pb::RevenueScheduleRequest { customer_id: "ghost".into(), ..Default::default() };
    assert_eq!(not_found(f.schedule(ghost).await), "ghost");
}

fn entries_request(from: &str, to: &str, size: u32) -> pb::ListJournalEntriesRequest {
    pb::ListJournalEntriesRequest {
        from: from.into(),
        to: to.into(),
        page_size: size,
        ..Default::default()
    }
}

/// (account, debit, credit)
fn lines(e: &pb::JournalEntry) -> Vec<(&str, Decimal, Decimal)> {
    e.lines.iter().map(|l| (l.account.as_str(), dec(&l.debit), dec(&l.credit))).collect()
}

#[tokio::test]
async fn journal_entries_of_a_day_with_their_lines() {
    let f = fixture().await;
    let page = f.journal(entries_request("2025-01-05", "2025-01-05", 0)).await.unwrap();
    let what: Vec<(&str, &str)> =
        page.entries.iter().map(|e| (e.kind.as_str(), e.invoice_id.as_str())).collect();
    assert_eq!(what, [("recognition", "inv-1"), ("payment", "inv-1"), ("recognition", "inv-3")]);
    assert!(page.next_page_token.is_empty());
    let z = Decimal::ZERO;
    // Day 5 of inv-1: round(20 × 5/31) − round(20 × 4/31) = 3.23 − 2.58.
    assert_eq!(
        lines(&page.entries[0]),
        [("deferred_revenue", dec("0.65"), z), ("revenue:subscription", z, dec("0.65"))]
    );
    let payment = &page.entries[1];
    assert_eq!(lines(payment), [("accounts_receivable", z, dec("22")), ("cash", dec("22"), z)]);
    assert_eq!(
        (
            payment.date.as_str(),
            payment.description.as_str(),
            payment.currency.as_str(),
            payment.source_position
        ),
        ("2025-01-05", "Payment received on inv-1", "USD", 6)
    );
    assert!(payment.lines.iter().all(|l| l.currency == "USD"));
    assert_eq!(page.position, 11);
}

#[tokio::test]
async fn journal_pages_through_a_range_once_in_order() {
    let f = fixture().await;
    let whole = f.journal(entries_request("2025-01-03", "2025-01-12", 1_000)).await.unwrap();
    let (mut token, mut paged) = (String::new(), Vec::new());
    loop {
        let r = pb::ListJournalEntriesRequest {
            page_token: token.clone(),
            ..entries_request("2025-01-03", "2025-01-12", 4)
        };
        let page = f.journal(r).await.unwrap();
        assert!(page.entries.len() <= 4);
        paged.extend(page.entries);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(paged, whole.entries);
    let dates: Vec<&str> = paged.iter().map(|e| e.date.as_str()).collect();
    assert!(dates.windows(2).all(|w| w[0] <= w[1]), "date order");
    assert_eq!((dates[0], dates[dates.len() - 1]), ("2025-01-03", "2025-01-12"));
    // inv-1: a recognition a day (10); inv-3: issue Jan 10, recognition Jan 3..10 (8), void and
    // its reversal on Jan 11; the payment on Jan 5.
    assert_eq!(paged.len(), 10 + 1 + 8 + 2 + 1);
    for e in &paged {
        let debit: Decimal = e.lines.iter().map(|l| dec(&l.debit)).sum();
        let credit: Decimal = e.lines.iter().map(|l| dec(&l.credit)).sum();
        assert_eq!(debit, credit, "{e:?}");
    }
    let open = f.journal(entries_request("", "", 0)).await.unwrap();
    assert_eq!(open.entries[0].kind, "invoice_issued");
    assert_eq!(
        bad_fields(f.journal(entries_request("2025-01-02", "2025-01-01", 1_001)).await),
        ["to", "page_size"]
    );
    let bad_token = pb::ListJournalEntriesRequest { page_token: "x".into(), ..Default::default() };
    assert_eq!(bad_fields(f.journal(bad_token).await), ["page_token"]);
}

fn waterfall_request(from: &str, to: &str, size: u32, token: &str) -> pb::RevenueWaterfallRequest {
    pb::RevenueWaterfallRequest {
        from_month: from.into(),
        to_month: to.into(),
        page_size: size,
        page_token: token.into(),
        ..Default::default()
    }
}

/// (invoice id, line index, revenue type, months)
type Row = (String, u32, String, Vec<(String, Decimal)>);

fn rows(r: &pb::RevenueWaterfallResponse) -> Vec<Row> {
    let months =
        |w: &pb::WaterfallRow| w.months.iter().map(|m| (m.month.clone(), dec(&m.amount))).collect();
    r.rows
        .iter()
        .map(|w| (w.invoice_id.clone(), w.line_index, w.revenue_type.clone(), months(w)))
        .collect()
}

#[tokio::test]
async fn waterfall_per_line_and_month_with_totals() {
    let f = fixture().await;
    let first = f.waterfall(waterfall_request("2025-01", "2025-02", 2, "")).await.unwrap();
    let m = |month: &str, a: &str| vec![(month.to_string(), dec(a))];
    assert_eq!(
        rows(&first),
        [
            ("inv-1".to_string(), 0, "subscription".to_string(), m("2025-01", "20")),
            ("inv-2".to_string(), 0, "subscription".to_string(), m("2025-02", "28")),
        ]
    );
    assert_eq!(first.next_page_token, "inv-2#0");
    // The void inv-3 nets to zero in January and has no row.
    let second = f.waterfall(waterfall_request("2025-01", "2025-02", 2, "inv-2#0")).await.unwrap();
    assert_eq!(rows(&second), [("inv-2".to_string(), 1, "usage".to_string(), m("2025-01", "8"))]);
    assert_eq!((second.next_page_token.as_str(), second.position), ("", 11));
    let totals: Vec<(&str, &str, Decimal)> = second
        .totals
        .iter()
        .map(|t| (t.currency.as_str(), t.month.as_str(), dec(&t.amount)))
        .collect();
    assert_eq!(totals, [("USD", "2025-01", dec("28")), ("USD", "2025-02", dec("28"))]);
    assert_eq!(first.totals, second.totals);
    let eur = pb::RevenueWaterfallRequest {
        currency: "EUR".into(),
        ..waterfall_request("2025-01", "2025-02", 0, "")
    };
    let eur = f.waterfall(eur).await.unwrap();
    assert!(eur.rows.is_empty() && eur.totals.is_empty());
    assert_eq!(
        bad_fields(f.waterfall(waterfall_request("2025-1", "2025-02", 0, "")).await),
        ["from_month"]
    );
    assert_eq!(
        bad_fields(f.waterfall(waterfall_request("2025-03", "2025-02", 0, "")).await),
        ["to_month"]
    );
    assert_eq!(
        bad_fields(f.waterfall(waterfall_request("2015-01", "2025-01", 0, "")).await),
        ["to_month"]
    );
    assert_eq!(
        bad_fields(f.waterfall(waterfall_request("2025-01", "2025-02", 5_000, "x")).await),
        ["page_size", "page_token"]
    );
}

#[tokio::test]
async fn usage_revenue_beside_mrr_and_the_mrr_of_each_bucket() {
    let f = fixture().await;
    let usage = |g: &str| pb::UsageRevenueRequest {
        as_recorded_at: None,
        currency: "USD".into(),
        from: "2025-01-01".into(),
        to: "2025-02-28".into(),
        granularity: g.into(),
        min_position: Some(10),
    };
    let by_month = f.usage(usage("")).await.unwrap();
    let buckets: Vec<(&str, u32, Decimal)> =
        by_month.buckets.iter().map(|b| (b.start.as_str(), b.days, dec(&b.amount))).collect();
    assert_eq!(buckets, [("2025-01-01", 1, dec("8"))]);
    assert_eq!((dec(&by_month.total), by_month.position), (dec("8"), 11));
    let by_day = f.usage(usage("day")).await.unwrap();
    // The hand-written log has no subscription for the usage meter to rate, so nothing accrued
    // as consumed: the invoice line's whole amount is recognized on its period's last day.
    assert_eq!(by_day.buckets[0].start, "2025-01-31", "the last day of the usage's period");
    let bad = pb::UsageRevenueRequest {
        currency: "XYZ".into(),
        to: "2024-12-31".into(),
        ..usage("hour")
    };
    assert_eq!(bad_fields(f.usage(bad).await), ["currency", "to", "granularity"]);

    // MRR: s1 new +20 on Jan 1, s2 new +20 on Jan 10, s2 churn −20 on Jan 11.
    let moves = |from: &str, g: &str| pb::MrrMovementsRequest {
        as_recorded_at: None,
        currency: "USD".into(),
        from: from.into(),
        to: "2025-01-31".into(),
        granularity: g.into(),
        min_position: None,
    };
    let days = f.movements(moves("2025-01-05", "day")).await.unwrap();
    let series: Vec<(&str, Decimal, Decimal)> =
        days.buckets.iter().map(|b| (b.start.as_str(), dec(&b.net), dec(&b.mrr))).collect();
    assert_eq!(
        series,
        [("2025-01-10", dec("20"), dec("40")), ("2025-01-11", dec("-20"), dec("20"))]
    );
    assert_eq!((dec(&days.mrr_before), dec(&days.mrr_at_to)), (dec("20"), dec("20")));
    let months = f.movements(moves("2025-01-01", "")).await.unwrap();
    assert_eq!((months.buckets.len(), dec(&months.buckets[0].mrr)), (1, dec("20")));
}

fn ids(r: &pb::ListInvoicesResponse) -> Vec<&str> {
    r.invoices.iter().map(|i| i.invoice_id.as_str()).collect()
}

#[tokio::test]
async fn invoices_by_service_period_and_refusals() {
    let f = fixture().await;
    let period = |from: &str, to: &str| pb::ListInvoicesRequest {
        period_from: from.into(),
        period_to: to.into(),
        ..Default::default()
    };
    assert_eq!(ids(&f.invoices(period("2025-02-01", "")).await.unwrap()), ["inv-2"]);
    // inv-2 is February's, but its usage line serves January.
    assert_eq!(
        ids(&f.invoices(period("", "2025-01-31")).await.unwrap()),
        ["inv-1", "inv-3", "inv-2"]
    );
    assert!(ids(&f.invoices(period("2025-03-01", "2025-03-31")).await.unwrap()).is_empty());
    let c1 =
        pb::ListInvoicesRequest { customer_id: "c1".into(), ..period("2025-01-15", "2025-01-15") };
    assert_eq!(ids(&f.invoices(c1).await.unwrap()), ["inv-1", "inv-2"]);
    let bad = pb::ListInvoicesRequest {
        status: "late".into(),
        page_size: 1_001,
        ..period("2025-02-02", "2025-02-01")
    };
    assert_eq!(bad_fields(f.invoices(bad).await), ["status", "period_to", "page_size"]);
    let token = pb::ListInvoicesRequest { page_token: "zz".into(), ..Default::default() };
    assert_eq!(bad_fields(f.invoices(token).await), ["page_token"]);
    let unknown =
        pb::InvoiceQuery { as_recorded_at: None, invoice_id: "inv-9".into(), min_position: None };
    assert_eq!(not_found(f.api.get_invoice(Request::new(unknown)).await), "inv-9");
    let mrr =
        pb::MrrRequest { currency: "US".into(), date: "2025-01-32".into(), ..Default::default() };
    assert_eq!(bad_fields(f.api.get_mrr(Request::new(mrr)).await), ["currency", "date"]);
}
