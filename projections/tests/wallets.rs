//! The journal of prepaid wallets (SPEC §8.5), hand-computed: the purchase invoice of paid
//! credits (Dr accounts receivable / Cr prepaid credits), credits paying an invoice (Dr prepaid
//! credits for paid, Dr discounts for granted / Cr accounts receivable), and paid credits that
//! expire unused (Dr prepaid credits / Cr breakage revenue, on the expiry date). Events come
//! from the real domain; the trial balance balances on every date.

use domain::calendar::Anchor;
use domain::catalog::{Customer, FeeTiming, Plan};
use domain::commands::{Command, Context, Policy};
use domain::events::Event;
use domain::ledger::Ledger;
use domain::money::Currency;
use domain::wallet::{CreditKind, OpenWallet, TopUpRequest};
use event_store::MemoryStore;
use jiff::civil::date;
use jiff::Timestamp;
use projections::journal::{JournalProjection, JournalReader};
use projections::{Runner, RunnerConfig};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use std::sync::Arc;

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn events() -> Vec<Event> {
    let mut ledger = Ledger::default();
    let mut events = Vec::new();
    let mut run = |cmd: Command, now: &str| {
        let now: Timestamp = now.parse().unwrap();
        let ctx = Context { now, policy: Policy::default() };
        let new = ledger.execute(&cmd, &ctx, events.len() as u64).unwrap();
        events.extend(new);
    };
    let jan1 = "2025-01-01T00:00:00Z";
    let customer = Customer {
        customer_id: "c1".into(),
        name: "C".into(),
        currency: usd(),
        time_zone: "UTC".into(),
        tax_rate: dec!(10),
    };
    run(Command::RegisterCustomer(customer), jan1);
    let plan = Plan {
        code: "basic".into(),
        version: 0,
        name: "Basic".into(),
        currency: usd(),
        interval: domain::calendar::Interval::Monthly,
        base_fee: dec!(30),
        fee_timing: FeeTiming::Advance,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        charges: vec![],
    };
    run(Command::PublishPlan(plan), jan1);
    let open = OpenWallet {
        wallet_id: "w1".into(),
        customer_id: "c1".into(),
        name: String::new(),
        rate_amount: dec!(1),
        low_balance_threshold: None,
    };
    run(Command::OpenWallet(open), jan1);
    let top_up = |kind, credits| {
        Command::TopUpWallet(TopUpRequest {
            wallet_id: "w1".into(),
            kind,
            credits,
            expires_on: Some(date(2025, 2, 15)),
            usable_at_once: true,
        })
    };
    run(top_up(CreditKind::Paid, dec!(50)), jan1);
    run(top_up(CreditKind::Granted, dec!(20)), jan1);
    let start = Command::StartSubscription {
        subscription_id: "s1".into(),
        customer_id: "c1".into(),
        plan_code: "basic".into(),
        plan_version: None,
        anchor: Anchor::Anniversary,
        start_date: Some(date(2025, 1, 1)),
        billed_until: None,
    };
    run(start, "2025-01-01T10:00:00Z");
    let as_of = "2025-01-20T00:00:00Z";
    run(Command::RunBilling { as_of: as_of.parse().unwrap() }, as_of);
    let as_of = "2025-02-01T00:00:00Z";
    run(Command::RunBilling { as_of: as_of.parse().unwrap() }, as_of);
    let as_of = "2025-02-16T00:00:00Z";
    run(Command::RunBilling { as_of: as_of.parse().unwrap() }, as_of);
    events
}

#[tokio::test]
async fn prepaid_credits_are_a_liability_until_used_or_expired() {
    let events = events();
    let expired: Vec<_> =
        events.iter().filter(|e| matches!(e, Event::WalletCreditsExpired { .. })).collect();
    assert_eq!(expired.len(), 1, "{events:#?}");
    let store = Arc::new(MemoryStore::new());
    for e in &events {
        projections::testkit::append_event(&store, e).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = projections::open_db(dir.path()).unwrap();
    let config = RunnerConfig::default();
    let mut journal = Runner::open(&db, store, JournalProjection::default(), config).unwrap();
    journal.catch_up().await.unwrap();
    let reader = JournalReader::new(journal.read_model());
    // (as of, AR, prepaid credits, discounts, breakage revenue)
    let cases = [
        // Jan: the purchase (50.00) is receivable and a liability; the Jan invoice (33.00)
        // took the granted 20.00 first, then 13.00 of the paid credits.
        (date(2025, 1, 1), dec!(50), dec!(37), dec!(20), dec!(0)),
        // Feb 1: the Feb invoice (33.00) is paid from the 37.00 of paid credits left.
        (date(2025, 2, 1), dec!(50), dec!(4), dec!(20), dec!(0)),
        (date(2025, 2, 14), dec!(50), dec!(4), dec!(20), dec!(0)),
        // Feb 15: the 4.00 left expires: breakage revenue.
        (date(2025, 2, 15), dec!(50), dec!(0), dec!(20), dec!(4)),
    ];
    for (as_of, ar, prepaid, discounts, breakage) in cases {
        let b = &reader.balances(as_of).unwrap()[0].1;
        let got = (
            b.accounts_receivable,
            b.prepaid_credits,
            b.discounts,
            b.recognized_revenue.get(&domain::recognition::RevenueType::Breakage).copied(),
        );
        let breakage = (!breakage.is_zero()).then_some(breakage);
        assert_eq!(got, (ar, prepaid, discounts, breakage), "{as_of}");
        let rows = reader.trial_balance(as_of).unwrap();
        let debits: Decimal = rows.iter().map(|r| r.debit).sum();
        let credits: Decimal = rows.iter().map(|r| r.credit).sum();
        assert_eq!(debits, credits, "trial balance on {as_of}");
    }
}
