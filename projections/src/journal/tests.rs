use std::sync::Arc;

use domain::calendar::Period;
use domain::catalog::Customer;
use domain::events::Event;
use domain::invoice::{build_invoice, InvoiceHeader, IssueReason, LineDraft, LineKind};
use domain::recognition::RevenueType;
use event_store::MemoryStore;
use jiff::civil::{date, Date};
use jiff::Timestamp;
use tempfile::TempDir;

use super::accounts::Legs;
use super::posting::{merge, merge_nonzero};
use super::*;
use crate::{Runner, RunnerConfig};

type Store = Arc<MemoryStore>;

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

type Months = Vec<(String, Decimal)>;

fn jan() -> Period {
    Period { start: date(2025, 1, 1), end: date(2025, 2, 1) }
}

fn customer(id: &str, tz: &str) -> Event {
    Event::CustomerRegistered(Customer {
        customer_id: id.into(),
        name: id.into(),
        currency: Currency::parse("USD").unwrap(),
        time_zone: tz.into(),
        tax_rate: Decimal::ZERO,
    })
}

/// An invoice of customer `c1`, subscription `sub`, issued at `at`.
fn issued(id: &str, sub: &str, at: &str, tax: &str, lines: &[(LineKind, &str, Period)]) -> Event {
    let header = InvoiceHeader {
        invoice_id: id.into(),
        customer_id: "c1".into(),
        subscription_id: sub.into(),
        currency: Currency::parse("USD").unwrap(),
        period: jan(),
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

fn paid(id: &str, amount: &str, at: &str) -> Event {
    Event::PaymentSucceeded { invoice_id: id.into(), amount: dec(amount), occurred_at: ts(at) }
}

fn failed(id: &str, at: &str) -> Event {
    let reason = "card_declined".into();
    Event::PaymentFailed { invoice_id: id.into(), reason, attempt: 1, occurred_at: ts(at) }
}

fn voided(id: &str, at: &str) -> Event {
    Event::InvoiceVoided { invoice_id: id.into(), reason: "dup".into(), occurred_at: ts(at) }
}

fn uncollectible(id: &str, at: &str) -> Event {
    Event::InvoiceMarkedUncollectible { invoice_id: id.into(), occurred_at: ts(at) }
}

fn fee_30() -> Event {
    issued("inv-1", "s1", "2025-01-01T10:00:00Z", "10", &[(LineKind::BaseFee, "30", jan())])
}

fn upgrade() -> Event {
    let rest = Period { start: date(2025, 1, 16), end: date(2025, 2, 1) };
    issued(
        "inv-2",
        "s1",
        "2025-01-16T09:00:00Z",
        "10",
        &[(LineKind::Credit, "-15.483870967", rest), (LineKind::BaseFee, "32", rest)],
    )
}

async fn store_with(events: &[Event]) -> Store {
    let store = Arc::new(MemoryStore::new());
    for event in events {
        crate::testkit::append_event(&store, event).await;
    }
    store
}

fn runner(dir: &TempDir, store: &Store, batch: usize) -> Runner<Store, JournalProjection> {
    let db = crate::open_db(dir.path()).unwrap();
    let config = RunnerConfig { batch_events_max: batch, poll_interval_ms: 20 };
    Runner::open(&db, store.clone(), JournalProjection::default(), config).unwrap()
}

async fn reader(dir: &TempDir, events: &[Event]) -> JournalReader {
    let store = store_with(events).await;
    let mut runner = runner(dir, &store, 3);
    assert_eq!(runner.catch_up().await.unwrap(), events.len() as u64);
    JournalReader::new(runner.read_model())
}

fn usd(r: &JournalReader, as_of: Date) -> Balances {
    assert_balanced(r, as_of);
    let mut all = r.balances(as_of).unwrap();
    assert!(all.len() <= 1);
    all.pop().map(|(_, b)| b).unwrap_or_default()
}

fn revenue(b: &Balances, t: RevenueType) -> Decimal {
    b.recognized_revenue.get(&t).copied().unwrap_or_default()
}

/// (AR, unbilled, cash, bad debt, deferred, tax, total revenue)
fn summary(b: &Balances) -> [Decimal; 7] {
    [
        b.accounts_receivable,
        b.unbilled_receivable,
        b.cash,
        b.bad_debt,
        b.deferred_revenue,
        b.tax_payable,
        b.total_revenue(),
    ]
}

fn amounts(xs: [&str; 7]) -> [Decimal; 7] {
    xs.map(dec)
}

fn assert_balanced(r: &JournalReader, as_of: Date) {
    let rows = r.trial_balance(as_of).unwrap();
    let debit: Decimal = rows.iter().map(|x| x.debit).sum();
    let credit: Decimal = rows.iter().map(|x| x.credit).sum();
    assert_eq!(debit, credit, "trial balance as of {as_of}: {rows:?}");
}

fn all_entries(r: &JournalReader) -> Vec<JournalEntry> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = r.entries(token.as_deref(), 7).unwrap();
        out.extend(page.entries);
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return out,
        }
    }
}

fn postings(e: &JournalEntry) -> Vec<(&'static str, Decimal, Decimal)> {
    e.postings.iter().map(|p| (p.account.as_str(), p.debit, p.credit)).collect()
}

#[tokio::test]
async fn in_advance_fee_with_tax_is_deferred_then_recognized_daily() {
    let dir = TempDir::new().unwrap();
    let r = reader(&dir, &[customer("c1", "UTC"), fee_30()]).await;
    let entries = all_entries(&r);
    assert_eq!(entries.len(), 32, "issue + 31 days");
    let issue = entries.iter().find(|e| e.kind == EntryKind::InvoiceIssued).unwrap();
    assert_eq!(issue.date, date(2025, 1, 1));
    let z = Decimal::ZERO;
    assert_eq!(
        postings(issue),
        [
            ("accounts_receivable", dec("33"), z),
            ("deferred_revenue", z, dec("30")),
            ("tax_payable", z, dec("3"))
        ]
    );
    let day3 = entries.iter().find(|e| e.date == date(2025, 1, 3)).unwrap();
    assert_eq!(
        postings(day3),
        [("deferred_revenue", dec("0.96"), z), ("revenue:subscription", z, dec("0.96"))]
    );
    let s = r.line_schedule("inv-1", 0).unwrap().unwrap();
    assert_eq!(s.entries.len(), 31);
    let first: Vec<Decimal> = s.entries[..3].iter().map(|(_, a)| *a).collect();
    assert_eq!(first, [dec("0.97"), dec("0.97"), dec("0.96")]);
    assert_eq!(usd(&r, date(2024, 12, 31)), Balances::default());
    let jan1 = usd(&r, date(2025, 1, 1));
    assert_eq!(summary(&jan1), amounts(["33", "0", "0", "0", "29.03", "3", "0.97"]));
    let jan15 = usd(&r, date(2025, 1, 15));
    assert_eq!(summary(&jan15), amounts(["33", "0", "0", "0", "15.48", "3", "14.52"]));
    let feb1 = usd(&r, date(2025, 2, 1));
    assert_eq!(summary(&feb1), amounts(["33", "0", "0", "0", "0", "3", "30"]));
    assert_eq!(revenue(&feb1, RevenueType::Subscription), dec("30"));
    assert!(r.line_schedule("inv-1", 1).unwrap().is_none());
    assert!(r.line_schedule("nope", 0).unwrap().is_none());
}

#[tokio::test]
async fn spec_upgrade_credit_reverses_the_unrecognized_days_first() {
    let dir = TempDir::new().unwrap();
    let r = reader(&dir, &[customer("c1", "UTC"), fee_30(), upgrade()]).await;
    let credit = r.line_schedule("inv-2", 0).unwrap().unwrap();
    let target = LineRef { invoice_id: "inv-1".into(), line_index: 0 };
    assert_eq!(credit.credited_line, Some(target));
    assert_eq!(credit.revenue_type, RevenueType::Subscription);
    let original = r.line_schedule("inv-1", 0).unwrap().unwrap();
    let negated: Vec<(Date, Decimal)> =
        original.entries[15..].iter().map(|(d, a)| (*d, -*a)).collect();
    assert_eq!(credit.entries, negated, "exactly the unrecognized Jan 16..31");
    assert_eq!(credit.entries.iter().map(|(_, a)| *a).sum::<Decimal>(), dec("-15.48"));
    assert_eq!(original.adjustments, negated);
    // Before the upgrade: 15 days of basic.
    let jan15 = usd(&r, date(2025, 1, 15));
    assert_eq!(summary(&jan15), amounts(["33", "0", "0", "0", "15.48", "3", "14.52"]));
    // Jan 16: basic's unrecognized 15.48 reversed, pro 32.00 deferred, 2.00 of it earned;
    // AR 33 + 18.17, tax 3 + 1.65.
    let jan16 = usd(&r, date(2025, 1, 16));
    assert_eq!(summary(&jan16), amounts(["51.17", "0", "0", "0", "30", "4.65", "16.52"]));
    let jan31 = usd(&r, date(2025, 1, 31));
    assert_eq!(summary(&jan31), amounts(["51.17", "0", "0", "0", "0", "4.65", "46.52"]));
    assert_eq!(revenue(&jan31, RevenueType::Subscription), dec("46.52"));
    let rows = r.revenue_waterfall(date(2024, 12, 1), date(2025, 2, 28)).unwrap();
    let got: Vec<(String, usize, Months)> =
        rows.into_iter().map(|w| (w.line.invoice_id, w.line.line_index, w.months)).collect();
    let jan = |a: &str| vec![("2025-01".to_string(), dec(a))];
    assert_eq!(
        got,
        [
            ("inv-1".into(), 0, jan("30")),
            ("inv-2".into(), 0, jan("-15.48")),
            ("inv-2".into(), 1, jan("32"))
        ]
    );
}

#[tokio::test]
async fn usage_and_true_up_in_arrears_accrue_to_unbilled_receivable() {
    let dir = TempDir::new().unwrap();
    let lines = [(LineKind::Usage, "8", jan()), (LineKind::MinimumCommitmentTrueUp, "2", jan())];
    let events = [
        customer("c1", "UTC"),
        issued("inv-u", "s1", "2025-02-01T00:00:00Z", "0", &lines),
        paid("inv-u", "10", "2025-02-03T00:00:00Z"),
    ];
    let r = reader(&dir, &events).await;
    let jan30 = usd(&r, date(2025, 1, 30));
    assert_eq!(summary(&jan30), amounts(["0", "0", "0", "0", "0", "0", "0"]));
    let jan31 = usd(&r, date(2025, 1, 31));
    assert_eq!(summary(&jan31), amounts(["0", "10", "0", "0", "0", "0", "10"]));
    assert_eq!(revenue(&jan31, RevenueType::Usage), dec("8"));
    assert_eq!(revenue(&jan31, RevenueType::TrueUp), dec("2"));
    let feb1 = usd(&r, date(2025, 2, 1));
    assert_eq!(summary(&feb1), amounts(["10", "0", "0", "0", "0", "0", "10"]));
    let feb3 = usd(&r, date(2025, 2, 3));
    assert_eq!(summary(&feb3), amounts(["0", "0", "10", "0", "0", "0", "10"]));
    let usage = r.line_schedule("inv-u", 0).unwrap().unwrap();
    assert_eq!(usage.entries.len(), 31);
    assert_eq!(usage.entries[30], (date(2025, 1, 31), dec("8")));
    assert!(usage.entries[..30].iter().all(|(_, a)| a.is_zero()));
}

#[tokio::test]
async fn issue_date_is_the_customers_local_date() {
    // 03:00 UTC on Feb 1 is Jan 31 in New York: the Jan 31 usage is then deferred revenue
    // recognized the day of issue, not unbilled receivable.
    let dir = TempDir::new().unwrap();
    let events = [
        customer("c1", "America/New_York"),
        issued("inv-u", "s1", "2025-02-01T03:00:00Z", "0", &[(LineKind::Usage, "8", jan())]),
    ];
    let r = reader(&dir, &events).await;
    let issue = all_entries(&r).into_iter().find(|e| e.kind == EntryKind::InvoiceIssued);
    let issue = issue.unwrap();
    assert_eq!(issue.date, date(2025, 1, 31));
    assert_eq!(postings(&issue)[1], ("deferred_revenue", Decimal::ZERO, dec("8")));
    let jan31 = usd(&r, date(2025, 1, 31));
    assert_eq!(summary(&jan31), amounts(["8", "0", "0", "0", "0", "0", "8"]));
}

#[tokio::test]
async fn voided_upgrade_gives_the_credited_days_back() {
    let dir = TempDir::new().unwrap();
    let events =
        [customer("c1", "UTC"), fee_30(), upgrade(), voided("inv-2", "2025-01-20T00:00:00Z")];
    let r = reader(&dir, &events).await;
    // Jan 19: basic 18.39 + credit reversal of Jan 16..19 (−3.87) + pro 4 × 2.00.
    let jan19 = usd(&r, date(2025, 1, 19));
    assert_eq!(summary(&jan19), amounts(["51.17", "0", "0", "0", "24", "4.65", "22.52"]));
    // From Jan 20 the upgrade never happened: basic's own schedule, inv-2 reversed.
    let jan20 = usd(&r, date(2025, 1, 20));
    assert_eq!(summary(&jan20), amounts(["33", "0", "0", "0", "10.65", "3", "19.35"]));
    let jan31 = usd(&r, date(2025, 1, 31));
    assert_eq!(summary(&jan31), amounts(["33", "0", "0", "0", "0", "3", "30"]));
    assert!(r.line_schedule("inv-1", 0).unwrap().unwrap().adjustments.is_empty());
    let credit = r.line_schedule("inv-2", 0).unwrap().unwrap();
    assert_eq!(credit.entries.len(), 5, "Jan 16..19 and the reversal on Jan 20");
    assert_eq!(credit.entries[4], (date(2025, 1, 20), dec("3.87")));
}

#[tokio::test]
async fn a_credit_matches_the_newest_base_fee_line_covering_its_first_day() {
    // Canceled on Jan 16 after the upgrade: pro's Jan 17..31 (15 × 2.00) credited; basic's
    // days were already credited by the upgrade. A credit of another subscription with no
    // base fee to match is contra revenue, spread over its own period.
    let dir = TempDir::new().unwrap();
    let unused = Period { start: date(2025, 1, 17), end: date(2025, 2, 1) };
    let events = [
        customer("c1", "UTC"),
        fee_30(),
        upgrade(),
        issued("inv-3", "s1", "2025-01-16T11:00:00Z", "0", &[(LineKind::Credit, "-30", unused)]),
        issued("inv-c", "s7", "2025-01-01T00:00:00Z", "0", &[(LineKind::Credit, "-31", jan())]),
    ];
    let r = reader(&dir, &events).await;
    let cancel = r.line_schedule("inv-3", 0).unwrap().unwrap();
    let pro = LineRef { invoice_id: "inv-2".into(), line_index: 1 };
    assert_eq!(cancel.credited_line, Some(pro));
    assert_eq!(cancel.entries.len(), 15);
    assert!(cancel.entries.iter().all(|(_, a)| *a == dec("-2")));
    let other = r.line_schedule("inv-c", 0).unwrap().unwrap();
    assert_eq!((other.credited_line, other.revenue_type), (None, RevenueType::Credit));
    let jan31 = usd(&r, date(2025, 1, 31));
    // basic 14.52 + pro Jan 16 2.00; AR 33 + 18.17 − 30 − 31.
    assert_eq!(revenue(&jan31, RevenueType::Subscription), dec("16.52"));
    assert_eq!(revenue(&jan31, RevenueType::Credit), dec("-31"));
    assert_eq!(summary(&jan31), amounts(["-9.83", "0", "0", "0", "0", "4.65", "-14.48"]));
}

#[tokio::test]
async fn failed_then_paid_moves_receivable_to_cash() {
    let dir = TempDir::new().unwrap();
    let events = [
        customer("c1", "UTC"),
        fee_30(),
        failed("inv-1", "2025-01-03T00:00:00Z"),
        paid("inv-1", "33", "2025-01-05T08:00:00Z"),
    ];
    let r = reader(&dir, &events).await;
    let kinds: Vec<EntryKind> =
        all_entries(&r).iter().map(|e| e.kind).filter(|k| *k != EntryKind::Recognition).collect();
    assert_eq!(kinds, [EntryKind::InvoiceIssued, EntryKind::Payment], "a failure posts nothing");
    let jan4 = usd(&r, date(2025, 1, 4));
    assert_eq!((jan4.accounts_receivable, jan4.cash), (dec("33"), dec("0")));
    let jan5 = usd(&r, date(2025, 1, 5));
    assert_eq!((jan5.accounts_receivable, jan5.cash), (dec("0"), dec("33")));
}

#[tokio::test]
async fn uncollectible_writes_off_the_amount_due_and_a_late_payment_recovers_it() {
    let dir = TempDir::new().unwrap();
    let events = [
        customer("c1", "UTC"),
        fee_30(),
        paid("inv-1", "5", "2025-01-10T00:00:00Z"),
        uncollectible("inv-1", "2025-01-20T00:00:00Z"),
        paid("inv-1", "28", "2025-02-03T00:00:00Z"),
    ];
    let r = reader(&dir, &events).await;
    let jan19 = usd(&r, date(2025, 1, 19));
    assert_eq!(
        (jan19.accounts_receivable, jan19.cash, jan19.bad_debt),
        (dec("28"), dec("5"), dec("0"))
    );
    let jan20 = usd(&r, date(2025, 1, 20));
    assert_eq!(
        (jan20.accounts_receivable, jan20.cash, jan20.bad_debt),
        (dec("0"), dec("5"), dec("28"))
    );
    let feb3 = usd(&r, date(2025, 2, 3));
    assert_eq!(summary(&feb3), amounts(["0", "0", "33", "0", "0", "3", "30"]));
}

#[tokio::test]
async fn void_reverses_the_invoice_and_the_revenue_recognized_before_it() {
    let dir = TempDir::new().unwrap();
    let events = [
        customer("c1", "UTC"),
        issued("inv-v", "s1", "2025-01-01T00:00:00Z", "0", &[(LineKind::BaseFee, "31", jan())]),
        voided("inv-v", "2025-01-11T12:00:00Z"),
    ];
    let r = reader(&dir, &events).await;
    let jan10 = usd(&r, date(2025, 1, 10));
    assert_eq!(summary(&jan10), amounts(["31", "0", "0", "0", "21", "0", "10"]));
    for d in [date(2025, 1, 11), date(2025, 1, 20), date(2025, 3, 1)] {
        assert_eq!(usd(&r, d), Balances::default(), "{d}");
    }
    let entries = all_entries(&r);
    assert!(entries.iter().all(|e| e.date <= date(2025, 1, 11)), "no recognition after V");
    let void = entries.iter().find(|e| e.kind == EntryKind::VoidRecognition).unwrap();
    let z = Decimal::ZERO;
    assert_eq!(
        postings(void),
        [("deferred_revenue", z, dec("10")), ("revenue:subscription", dec("10"), z)]
    );
    let s = r.line_schedule("inv-v", 0).unwrap().unwrap();
    assert_eq!(s.entries.len(), 11);
    assert_eq!(s.entries[10], (date(2025, 1, 11), dec("-10")));
    assert!(r.revenue_waterfall(date(2025, 1, 1), date(2025, 1, 1)).unwrap().is_empty());
}

fn everything() -> Vec<Event> {
    let lines = [(LineKind::Usage, "8", jan()), (LineKind::MinimumCommitmentTrueUp, "2", jan())];
    vec![
        customer("c1", "UTC"),
        fee_30(),
        failed("inv-1", "2025-01-03T00:00:00Z"),
        issued("inv-v", "s9", "2025-01-01T00:00:00Z", "0", &[(LineKind::BaseFee, "31", jan())]),
        upgrade(),
        voided("inv-v", "2025-01-11T12:00:00Z"),
        paid("inv-1", "5", "2025-01-10T00:00:00Z"),
        uncollectible("inv-1", "2025-01-20T00:00:00Z"),
        issued("inv-u", "s1", "2025-02-01T00:00:00Z", "10", &lines),
        paid("inv-2", "18.17", "2025-01-17T00:00:00Z"),
        paid("inv-1", "28", "2025-02-03T00:00:00Z"),
        paid("inv-u", "11", "2025-02-04T00:00:00Z"),
    ]
}

#[tokio::test]
async fn every_prefix_of_the_log_balances() {
    let dir = TempDir::new().unwrap();
    let events = everything();
    let store = store_with(&events).await;
    let mut runner = runner(&dir, &store, 1);
    let r = JournalReader::new(runner.read_model());
    let dates = [
        date(2024, 12, 31),
        date(2025, 1, 1),
        date(2025, 1, 11),
        date(2025, 1, 16),
        date(2025, 1, 31),
        date(2025, 2, 3),
        date(9999, 12, 31),
    ];
    while runner.step().await.unwrap() > 0 {
        let entries = all_entries(&r);
        let debits: Decimal = entries.iter().map(JournalEntry::total_debits).sum();
        let credits: Decimal = entries.iter().map(JournalEntry::total_credits).sum();
        assert_eq!(debits, credits, "at checkpoint {}", runner.checkpoint());
        assert!(entries.iter().all(|e| e.total_debits() == e.total_credits()));
        for d in dates {
            assert_balanced(&r, d);
        }
    }
    assert_eq!(runner.checkpoint(), events.len() as u64);
    // The end state, by hand: all paid (inv-1 partly recovered from bad debt), inv-v void.
    let end = usd(&r, date(2025, 3, 1));
    // cash 5 + 18.17 + 28 + 11; tax 3 + 1.65 + 1; revenue 46.52 + 10.
    assert_eq!(summary(&end), amounts(["0", "0", "62.17", "0", "0", "5.65", "56.52"]));
}

#[tokio::test]
async fn digest_is_independent_of_batch_size() {
    let events = everything();
    let store = store_with(&events).await;
    let mut digests = Vec::new();
    for batch in [1, 5, 1000] {
        let dir = TempDir::new().unwrap();
        let mut runner = runner(&dir, &store, batch);
        runner.catch_up().await.unwrap();
        digests.push(runner.read_model().digest().unwrap());
    }
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[1], digests[2]);
    assert_eq!(digests[0].position, events.len() as u64);
}

fn waterfall_pages(r: &JournalReader, from: Date, to: Date, size: usize) -> Vec<WaterfallRow> {
    let (mut rows, mut token) = (Vec::new(), None);
    loop {
        let page = r.revenue_waterfall_page(from, to, token.as_deref(), size).unwrap();
        assert!(page.rows.len() <= if size == 0 { PAGE_SIZE_DEFAULT } else { size });
        rows.extend(page.rows);
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return rows,
        }
    }
}

#[tokio::test]
async fn waterfall_pages_months_and_last_date_agree_with_the_whole_waterfall() {
    let dir = TempDir::new().unwrap();
    let empty = reader(&dir, &[customer("c1", "UTC")]).await;
    assert_eq!(empty.last_entry_date().unwrap(), None);
    assert!(empty.waterfall_months().unwrap().is_empty());
    assert!(waterfall_pages(&empty, date(2025, 1, 1), date(2025, 3, 1), 2).is_empty());

    let dir = TempDir::new().unwrap();
    let span = Period { start: date(2025, 1, 15), end: date(2025, 3, 15) };
    let two_months =
        issued("inv-3", "s2", "2025-01-15T10:00:00Z", "0", &[(LineKind::BaseFee, "59", span)]);
    let r = reader(&dir, &[customer("c1", "UTC"), fee_30(), upgrade(), two_months]).await;
    let months = [date(2025, 1, 1), date(2025, 2, 1), date(2025, 3, 1)];
    assert_eq!(r.waterfall_months().unwrap(), months);
    assert_eq!(r.last_entry_date().unwrap(), Some(date(2025, 3, 14)));
    for (from, to) in [
        (date(2024, 12, 1), date(2025, 4, 30)),
        (date(2025, 2, 10), date(2025, 2, 10)),
        (date(2025, 3, 1), date(2025, 3, 31)),
    ] {
        let whole = r.revenue_waterfall(from, to).unwrap();
        for size in [1, 2, 0] {
            assert_eq!(waterfall_pages(&r, from, to, size), whole, "{from}..={to} by {size}");
        }
    }
    let first = r.revenue_waterfall_page(date(2025, 1, 1), date(2025, 3, 1), None, 1).unwrap();
    assert_eq!(first.next_page_token.as_deref(), Some("inv-1/0000"));
    assert_eq!(first.position, 4);
    let bad = r.revenue_waterfall_page(date(2025, 2, 1), date(2025, 1, 1), None, 0);
    assert!(matches!(bad, Err(ProjectionError::InvalidArgument(_))));
    for token in ["", "x", "inv-1/", "/0000", "inv-1/00a0"] {
        let bad = r.revenue_waterfall_page(date(2025, 1, 1), date(2025, 1, 1), Some(token), 0);
        assert!(matches!(bad, Err(ProjectionError::InvalidArgument(_))), "{token:?}");
    }
}

#[tokio::test]
async fn bad_page_tokens_and_waterfall_ranges_are_refused() {
    let dir = TempDir::new().unwrap();
    let r = reader(&dir, &[customer("c1", "UTC"), fee_30()]).await;
    for token in ["", "x", "2025-01-01/zz", "2025-13-01/0000000000000000"] {
        assert!(matches!(r.entries(Some(token), 1), Err(ProjectionError::InvalidArgument(_))));
    }
    let bad = r.revenue_waterfall(date(2025, 2, 1), date(2025, 1, 1));
    assert!(matches!(bad, Err(ProjectionError::InvalidArgument(_))));
    let page = r.entries(None, 0).unwrap();
    assert_eq!((page.entries.len(), page.next_page_token, page.position), (32, None, 2));
}

/// An entry side past `Decimal`'s range is an error naming the account, never a panic
/// (and a day's merge of schedules likewise).
#[test]
fn legs_and_merges_that_overflow_are_errors() {
    let mut legs = Legs::default();
    legs.dr(Account::Cash, Decimal::MAX);
    legs.cr(Account::Revenue(RevenueType::Usage), Decimal::MAX);
    assert_eq!(legs.postings().map(|p| p.len()), Ok(2));
    legs.dr(Account::Cash, Decimal::ONE);
    assert_eq!(legs.postings(), Err("the cash side of the entry".to_string()));
    let day = date(2025, 1, 1);
    assert_eq!(merge(&[(day, Decimal::MAX)], &[(day, Decimal::ONE)]), None);
    assert_eq!(merge_nonzero(&[(day, Decimal::MAX)], &[(day, -Decimal::MAX)]), Some(vec![]));
}
