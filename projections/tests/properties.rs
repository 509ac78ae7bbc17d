//! Properties of the read models over random valid command sequences (decided by the real
//! domain): the books always balance, billed revenue is all recognized once service has passed
//! (usage as it is consumed: unbilled receivable = usage of the open periods' drafts; expired
//! paid wallet credits as breakage), the prepaid-credits liability is what was bought less what
//! was used or expired, and the MRR series equals the sum of its movements. Progressive billing
//! (docs/decisions/0037) moves when usage is invoiced, never when or how much is recognized.

mod common;

use common::sim::{billing_op, mrr_op, op, simulate, simulate_billing, store_of, usd};
use domain::events::Event;
use domain::invoice::{IssueReason, LineKind};
use domain::wallet::CreditKind;
use jiff::civil::{date, Date};
use projections::journal::{JournalProjection, JournalReader};
use projections::mrr::{Granularity, MrrProjection, MrrReader};
use projections::{Runner, RunnerConfig};
use proptest::prelude::*;
use rust_decimal::Decimal;

fn subscriptions(events: &[Event]) -> Vec<String> {
    let started = events.iter().filter_map(|e| match e {
        Event::SubscriptionStarted { subscription_id, .. } => Some(subscription_id.clone()),
        _ => None,
    });
    started.collect()
}

fn month_ends() -> Vec<Date> {
    (1..=12).map(|m| date(2025, m, 1).last_of_month()).chain([date(2030, 1, 1)]).collect()
}

/// The journal and MRR projections of `events`, caught up, in batches of 64 events (their
/// database lives in the returned directory).
fn projected(events: &[Event]) -> (tempfile::TempDir, JournalReader, MrrReader) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = store_of(events).await;
        let dir = tempfile::tempdir().unwrap();
        let db = projections::open_db(dir.path()).unwrap();
        let config = RunnerConfig { batch_events_max: 64, ..RunnerConfig::default() };
        let mut journal =
            Runner::open(&db, store.clone(), JournalProjection::default(), config).unwrap();
        let mut mrr = Runner::open(&db, store.clone(), MrrProjection, config).unwrap();
        journal.catch_up().await.unwrap();
        mrr.catch_up().await.unwrap();
        (dir, JournalReader::new(journal.read_model()), MrrReader::new(mrr.read_model()))
    })
}

fn check(events: Vec<Event>) -> Result<(), TestCaseError> {
    let (_dir, books, series) = projected(&events);
    for d in month_ends() {
        let rows = books.trial_balance(d).unwrap();
        let debits: Decimal = rows.iter().map(|r| r.debit).sum();
        let credits: Decimal = rows.iter().map(|r| r.credit).sum();
        prop_assert_eq!(debits, credits, "trial balance on {}", d);
    }
    // Bought wallet credits are billed but are not revenue; paid credits that expire are.
    let billed: Decimal = events
        .iter()
        .filter_map(|e| match e {
            Event::InvoiceIssued(i) if i.reason != IssueReason::WalletTopUp => Some(i.subtotal),
            Event::CreditNoteIssued(n) => Some(-n.subtotal),
            _ => None,
        })
        .sum();
    let paid = |kind: CreditKind| kind == CreditKind::Paid;
    let mut breakage = Decimal::ZERO;
    let mut prepaid = Decimal::ZERO;
    // Purchase invoices: (total, paid, uncollectible). An unpaid written-off purchase
    // cancels its liability until it is paid.
    let mut purchases = std::collections::BTreeMap::new();
    for e in &events {
        match e {
            Event::InvoiceIssued(i) if i.reason == IssueReason::WalletTopUp => {
                prepaid += i.total;
                purchases.insert(i.invoice_id.clone(), (i.total, Decimal::ZERO, false));
            }
            Event::PaymentSucceeded { invoice_id, amount, .. } => {
                if let Some(p) = purchases.get_mut(invoice_id) {
                    p.1 += *amount;
                }
            }
            Event::InvoiceMarkedUncollectible { invoice_id, .. } => {
                if let Some(p) = purchases.get_mut(invoice_id) {
                    p.2 = true;
                }
            }
            Event::InvoiceIssued(i) => {
                prepaid -= i
                    .wallet_applied
                    .iter()
                    .filter(|u| paid(u.kind))
                    .map(|u| u.amount)
                    .sum::<Decimal>()
            }
            Event::WalletCreditsExpired { lots, .. } => {
                let expired: Decimal = lots.iter().filter(|t| paid(t.kind)).map(|t| t.amount).sum();
                breakage += expired;
                prepaid -= expired;
            }
            _ => {}
        }
    }
    for (total, paid, uncollectible) in purchases.values() {
        if *uncollectible {
            prepaid -= total - paid;
        }
    }
    let end = books.balances(date(2030, 1, 1)).unwrap();
    let (recognized, deferred, unbilled, liability) =
        end.first().map_or(Default::default(), |(_, b)| {
            (b.total_revenue(), b.deferred_revenue, b.unbilled_receivable, b.prepaid_credits)
        });
    prop_assert_eq!(liability, prepaid, "prepaid credits: bought − used − expired");
    prop_assert_eq!(deferred, Decimal::ZERO, "nothing stays deferred once service has passed");
    prop_assert_eq!(
        recognized,
        billed + unbilled + breakage,
        "everything billed (less credit notes) is recognized, usage as consumed, breakage"
    );
    let drafted: Decimal = subscriptions(&events)
        .iter()
        .filter_map(|s| books.current_usage(s).unwrap())
        .flat_map(|d| d.lines.into_iter().filter(|l| l.kind == LineKind::Usage))
        .map(|l| l.amount)
        .sum();
    prop_assert_eq!(unbilled, drafted, "unbilled receivable = usage of the open periods");
    let (from, to) = (date(2025, 1, 1), date(2026, 6, 30));
    let moves = series.movements(from, to, Granularity::Month, usd()).unwrap();
    let net: Decimal = moves.iter().map(|b| b.net).sum();
    let before = series.mrr_at(date(2024, 12, 31), usd()).unwrap();
    prop_assert_eq!(before + net, series.mrr_at(to, usd()).unwrap(), "MRR series = Σ movements");
    Ok(())
}

/// Per day of 2025 and after: recognized revenue by type, deferred revenue, and what is
/// receivable billed or not net of tax (tax is rounded per invoice, so more invoices may round
/// it otherwise).
type Day = (Date, Vec<(domain::recognition::RevenueType, Decimal)>, Decimal, Decimal);

fn books_per_day(events: Vec<Event>) -> Vec<Day> {
    let (_dir, books, _) = projected(&events);
    let days = (0..80).map(|w| date(2025, 1, 1) + jiff::Span::new().days(5 * w));
    days.chain([date(2030, 1, 1)])
        .map(|d| {
            let b = books.balances(d).unwrap().into_iter().next().map(|(_, b)| b);
            let b = b.unwrap_or_default();
            let revenue = b.recognized_revenue.into_iter().collect();
            let receivable = b.accounts_receivable + b.unbilled_receivable - b.tax_payable;
            (d, revenue, b.deferred_revenue, receivable)
        })
        .collect()
}

/// MRR at each month end of 2025 and 2026, and the movements over them.
fn mrr_series(events: Vec<Event>) -> (Vec<Decimal>, Decimal) {
    let (_dir, _, series) = projected(&events);
    let ends = (0..24i16).map(|m| date(2025 + m / 12, (m % 12 + 1) as i8, 1).last_of_month());
    let mrr = ends.map(|d| series.mrr_at(d, usd()).unwrap()).collect();
    let (from, to) = (date(2025, 1, 1), date(2026, 12, 31));
    let moves = series.movements(from, to, Granularity::Month, usd()).unwrap();
    (mrr, moves.iter().map(|b| b.net).sum())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn books_balance_revenue_is_recognized_and_mrr_adds_up(ops in proptest::collection::vec(op(), 1..80), arrears in any::<bool>()) {
        check(simulate(&ops, arrears))?;
    }

    /// The books' properties hold when plans bill progressively, and a period billed
    /// progressively recognizes the same revenue, on the same days, as one billed at close.
    #[test]
    fn progressive_billing_recognizes_what_billing_at_close_does(ops in proptest::collection::vec(billing_op(), 1..80), arrears in any::<bool>()) {
        let progressive = simulate_billing(&ops, arrears, true);
        let at_close = simulate_billing(&ops, arrears, false);
        let count = |events: &[Event]| events.iter().filter(|e| matches!(e, Event::InvoiceIssued(i) if i.reason == IssueReason::Progressive)).count();
        prop_assert_eq!(count(&at_close), 0);
        prop_assume!(count(&progressive) > 0);
        check(progressive.clone())?;
        prop_assert_eq!(books_per_day(progressive), books_per_day(at_close));
    }

    /// Progressive invoices use up no coupon period, so MRR (coupons included) is the same
    /// billed progressively or at close.
    #[test]
    fn progressive_billing_leaves_mrr_as_it_is(ops in proptest::collection::vec(mrr_op(), 1..80), arrears in any::<bool>()) {
        let progressive = simulate_billing(&ops, arrears, true);
        let at_close = simulate_billing(&ops, arrears, false);
        prop_assert_eq!(mrr_series(progressive), mrr_series(at_close));
    }
}
