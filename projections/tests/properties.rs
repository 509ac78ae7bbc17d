//! Properties of the read models over random valid command sequences (decided by the real
//! domain): the books always balance, billed revenue is all recognized once service has passed,
//! and the MRR series equals the sum of its movements.

use std::collections::BTreeMap;
use std::sync::Arc;

use domain::calendar::{Anchor, Interval};
use domain::catalog::{Charge, Customer, FeeTiming, Metric, Plan};
use domain::commands::{Command, Context, PaymentOutcome, Policy};
use domain::events::{Event, Usage};
use domain::invoice::LineKind;
use domain::ledger::Ledger;
use domain::money::Currency;
use domain::rating::{Aggregation, ChargeModel};
use event_store::MemoryStore;
use jiff::civil::{date, Date};
use jiff::{SignedDuration, Timestamp};
use projections::journal::{JournalProjection, JournalReader};
use projections::mrr::{Granularity, MrrProjection, MrrReader};
use projections::{Runner, RunnerConfig};
use proptest::prelude::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

#[derive(Clone, Debug)]
enum Op {
    Start { customer: u8, pro: bool },
    Usage { customer: u8, calls: u16 },
    Change { customer: u8, pro: bool },
    Cancel { customer: u8, immediately: bool },
    Pay { fail: bool },
    Days(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..4, any::<bool>()).prop_map(|(customer, pro)| Op::Start { customer, pro }),
        4 => (0u8..4, 0u16..500).prop_map(|(customer, calls)| Op::Usage { customer, calls }),
        1 => (0u8..4, any::<bool>()).prop_map(|(customer, pro)| Op::Change { customer, pro }),
        1 => (0u8..4, any::<bool>()).prop_map(|(customer, immediately)| Op::Cancel { customer, immediately }),
        2 => any::<bool>().prop_map(|fail| Op::Pay { fail }),
        3 => (1u8..25).prop_map(Op::Days),
    ]
}

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn plan(code: &str, fee: Decimal, timing: FeeTiming) -> Plan {
    let model = ChargeModel::Standard { unit_price: dec!(0.01) };
    Plan {
        code: code.into(),
        version: 0,
        name: code.into(),
        currency: usd(),
        interval: Interval::Monthly,
        base_fee: fee,
        fee_timing: timing,
        trial_days: 0,
        minimum_commitment: None,
        charges: vec![Charge { metric_code: "calls".into(), model, pay_in_advance: false }],
    }
}

/// Runs the ops through the domain; returns every event it decided.
fn simulate(ops: &[Op], arrears: bool) -> Vec<Event> {
    let mut ledger = Ledger::default();
    let mut events = Vec::new();
    let mut now: Timestamp = "2025-01-01T12:00:00Z".parse().unwrap();
    let timing = if arrears { FeeTiming::Arrears } else { FeeTiming::Advance };
    let mut setup = vec![
        Command::DefineMetric(Metric {
            code: "calls".into(),
            name: "Calls".into(),
            aggregation: Aggregation::Sum,
            property: Some("n".into()),
        }),
        Command::PublishPlan(plan("basic", dec!(30), timing)),
        Command::PublishPlan(plan("pro", dec!(62), FeeTiming::Advance)),
    ];
    for c in 0..4 {
        let tz = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo"][c];
        let customer = Customer {
            customer_id: format!("c{c}"),
            name: "C".into(),
            currency: usd(),
            time_zone: tz.into(),
            tax_rate: dec!(10),
        };
        setup.push(Command::RegisterCustomer(customer));
    }
    let run = |ledger: &mut Ledger, cmd: Command, now: Timestamp, events: &mut Vec<Event>| {
        let ctx = Context { now, policy: Policy::default() };
        if let Ok(new) = ledger.execute(&cmd, &ctx, events.len() as u64) {
            events.extend(new);
        }
    };
    for cmd in setup {
        run(&mut ledger, cmd, now, &mut events);
    }
    let mut generation: BTreeMap<u8, u32> = BTreeMap::new();
    for (n, o) in ops.iter().enumerate() {
        let sub =
            |c: &u8, g: &BTreeMap<u8, u32>| format!("s{c}-{}", g.get(c).copied().unwrap_or(0));
        let cmd = match o {
            Op::Start { customer, pro } => {
                *generation.entry(*customer).or_default() += 1;
                Command::StartSubscription {
                    subscription_id: sub(customer, &generation),
                    customer_id: format!("c{customer}"),
                    plan_code: if *pro { "pro" } else { "basic" }.into(),
                    plan_version: None,
                    anchor: if customer % 2 == 0 { Anchor::Anniversary } else { Anchor::Calendar },
                    start_date: None,
                }
            }
            Op::Usage { customer, calls } => Command::RecordUsage(Usage {
                subscription_id: sub(customer, &generation),
                transaction_id: format!("t{n}"),
                metric_code: "calls".into(),
                occurred_at: now,
                properties: BTreeMap::from([("n".to_string(), calls.to_string())]),
            }),
            Op::Change { customer, pro } => Command::ChangePlan {
                subscription_id: sub(customer, &generation),
                plan_code: if *pro { "pro" } else { "basic" }.into(),
                plan_version: None,
            },
            Op::Cancel { customer, immediately } => Command::CancelSubscription {
                subscription_id: sub(customer, &generation),
                immediately: *immediately,
            },
            Op::Pay { fail } => {
                let Some(inv) = ledger
                    .invoices
                    .values()
                    .filter(|i| !i.amount_due().is_zero())
                    .map(|i| i.invoice.invoice_id.clone())
                    .min()
                else {
                    continue;
                };
                let due = ledger.invoices[&inv].amount_due();
                let outcome = if *fail {
                    PaymentOutcome::Failed { reason: "declined".into() }
                } else {
                    PaymentOutcome::Succeeded { amount: due }
                };
                Command::RecordPayment { invoice_id: inv, outcome, occurred_at: now }
            }
            Op::Days(d) => {
                now = now.checked_add(SignedDuration::from_hours(24 * i64::from(*d))).unwrap();
                Command::RunBilling { as_of: now }
            }
        };
        run(&mut ledger, cmd, now, &mut events);
    }
    events
}

async fn store_of(events: &[Event]) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    for e in events {
        projections::testkit::append_event(&store, e).await;
    }
    store
}

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

fn check(events: Vec<Event>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let store = store_of(&events).await;
        let dir = tempfile::tempdir().unwrap();
        let db = projections::open_db(dir.path()).unwrap();
        let config = RunnerConfig { batch_events_max: 64, ..RunnerConfig::default() };
        let mut journal =
            Runner::open(&db, store.clone(), JournalProjection::default(), config).unwrap();
        let mut mrr = Runner::open(&db, store.clone(), MrrProjection, config).unwrap();
        journal.catch_up().await.unwrap();
        mrr.catch_up().await.unwrap();
        let books = JournalReader::new(journal.read_model());
        for d in month_ends() {
            let rows = books.trial_balance(d).unwrap();
            let debits: Decimal = rows.iter().map(|r| r.debit).sum();
            let credits: Decimal = rows.iter().map(|r| r.credit).sum();
            prop_assert_eq!(debits, credits, "trial balance on {}", d);
        }
        let billed: Decimal = events
            .iter()
            .filter_map(|e| if let Event::InvoiceIssued(i) = e { Some(i.subtotal) } else { None })
            .sum();
        let end = books.balances(date(2030, 1, 1)).unwrap();
        let (recognized, deferred, unbilled) = end.first().map_or(Default::default(), |(_, b)| {
            (b.total_revenue(), b.deferred_revenue, b.unbilled_receivable)
        });
        prop_assert_eq!(deferred, Decimal::ZERO, "nothing stays deferred once service has passed");
        prop_assert_eq!(
            recognized,
            billed + unbilled,
            "everything billed is recognized, and usage as consumed"
        );
        let drafted: Decimal = subscriptions(&events)
            .iter()
            .filter_map(|s| books.current_usage(s).unwrap())
            .flat_map(|d| d.lines.into_iter().filter(|l| l.kind == LineKind::Usage))
            .map(|l| l.amount)
            .sum();
        prop_assert_eq!(unbilled, drafted, "unbilled receivable = usage of the open periods");
        let series = MrrReader::new(mrr.read_model());
        let (from, to) = (date(2025, 1, 1), date(2026, 6, 30));
        let moves = series.movements(from, to, Granularity::Month, usd()).unwrap();
        let net: Decimal = moves.iter().map(|b| b.net).sum();
        let before = series.mrr_at(date(2024, 12, 31), usd()).unwrap();
        prop_assert_eq!(
            before + net,
            series.mrr_at(to, usd()).unwrap(),
            "MRR series = Σ movements"
        );
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn books_balance_revenue_is_recognized_and_mrr_adds_up(ops in proptest::collection::vec(op(), 1..80), arrears in any::<bool>()) {
        check(simulate(&ops, arrears))?;
    }
}
