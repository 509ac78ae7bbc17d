//! The write model survives serialization (write-model snapshots, issue 12): a ledger folded
//! from random commands over every aggregation, serialized mid-way and restored, decides and
//! evolves exactly like the original for the rest of the commands, and re-serializes to the same
//! canonical bytes.

use std::collections::BTreeMap;

use jiff::civil::date;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use rust_decimal::Decimal;

use crate::calendar::{Anchor, Interval};
use crate::catalog::{Charge, Customer, FeeTiming, Metric, Plan};
use crate::commands::{Command, Context, PaymentOutcome, Policy};
use crate::events::{Event, Usage};
use crate::ledger::Ledger;
use crate::money::Currency;
use crate::rating::{Aggregation, ChargeModel, Tier};

/// (code, aggregation, property, allow_negative): every aggregation the ledger keeps state for.
const METRICS: [(&str, Aggregation, Option<&str>, bool); 6] = [
    ("calls", Aggregation::Sum, Some("n"), false),
    ("peak", Aggregation::Max, Some("n"), false),
    ("low", Aggregation::Min, Some("n"), false),
    ("users", Aggregation::UniqueCount, Some("u"), false),
    ("seats", Aggregation::Latest, Some("n"), false),
    ("level", Aggregation::WeightedSum, Some("n"), true),
];
const SUBSCRIPTIONS: u8 = 6;

#[derive(Clone, Debug)]
enum Op {
    Usage { sub: u8, metric: u8, value: i16, user: u8, back_hours: u16 },
    Count { sub: u8 },
    Change { sub: u8, to_pro: bool },
    Cancel { sub: u8, immediately: bool },
    Bill,
    Pay { fail: bool },
    Later(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let sub = 0..SUBSCRIPTIONS;
    prop_oneof![
        8 => (sub.clone(), 0u8..METRICS.len() as u8, -50i16..2_000, 0u8..5, 0u16..400)
            .prop_map(|(sub, metric, value, user, back_hours)| Op::Usage { sub, metric, value, user, back_hours }),
        1 => sub.clone().prop_map(|sub| Op::Count { sub }),
        1 => (sub.clone(), any::<bool>()).prop_map(|(sub, to_pro)| Op::Change { sub, to_pro }),
        1 => (sub, any::<bool>()).prop_map(|(sub, immediately)| Op::Cancel { sub, immediately }),
        2 => Just(Op::Bill),
        1 => any::<bool>().prop_map(|fail| Op::Pay { fail }),
        3 => (1u8..12).prop_map(Op::Later),
    ]
}

fn plan(code: &str, fee: Decimal, timing: FeeTiming) -> Plan {
    let mut charges: Vec<Charge> = METRICS
        .iter()
        .map(|(metric, ..)| Charge {
            metric_code: metric.to_string(),
            model: ChargeModel::Standard { unit_price: Decimal::new(125, 3) },
            pay_in_advance: false,
        })
        .collect();
    charges.push(Charge {
        metric_code: "events".into(),
        model: ChargeModel::Graduated {
            tiers: vec![
                Tier {
                    up_to: Some(Decimal::TEN),
                    unit_price: Decimal::ZERO,
                    flat_fee: Decimal::ONE,
                },
                Tier { up_to: None, unit_price: Decimal::new(5, 1), flat_fee: Decimal::ZERO },
            ],
        },
        pay_in_advance: false,
    });
    Plan {
        code: code.into(),
        version: 0,
        name: code.into(),
        currency: Currency::parse("USD").unwrap(),
        interval: Interval::Monthly,
        base_fee: fee,
        fee_timing: timing,
        trial_days: 0,
        minimum_commitment: Some(Decimal::from(40)),
        progressive_billing: None,
        charges,
    }
}

/// A catalog of two customers (two time zones), every metric, two plans and
/// [`SUBSCRIPTIONS`] subscriptions; returns the ledger and the next position.
fn world(start: Timestamp) -> (Ledger, u64) {
    let mut ledger = Ledger::default();
    let mut position = 0;
    let mut run = |ledger: &mut Ledger, cmd: Command| {
        let ctx = Context { now: start, policy: Policy::default() };
        position += ledger.execute(&cmd, &ctx, position).unwrap().len() as u64;
    };
    for (id, zone) in [("acme", "UTC"), ("globex", "America/New_York")] {
        let customer = Customer {
            customer_id: id.into(),
            name: id.into(),
            currency: Currency::parse("USD").unwrap(),
            time_zone: zone.into(),
            tax_rate: Decimal::new(825, 2),
        };
        run(&mut ledger, Command::RegisterCustomer(customer));
    }
    let count = ("events", Aggregation::Count, None, false);
    for (code, aggregation, property, allow_negative) in METRICS.into_iter().chain([count]) {
        let property = property.map(str::to_string);
        let metric =
            Metric { code: code.into(), name: code.into(), aggregation, property, allow_negative };
        run(&mut ledger, Command::DefineMetric(metric));
    }
    run(&mut ledger, Command::PublishPlan(plan("basic", Decimal::from(30), FeeTiming::Arrears)));
    run(&mut ledger, Command::PublishPlan(plan("pro", Decimal::from(62), FeeTiming::Advance)));
    for i in 0..SUBSCRIPTIONS {
        let cmd = Command::StartSubscription {
            subscription_id: format!("s{i}"),
            customer_id: if i % 2 == 0 { "acme" } else { "globex" }.into(),
            plan_code: "basic".into(),
            plan_version: None,
            anchor: if i % 3 == 0 { Anchor::Calendar } else { Anchor::Anniversary },
            start_date: Some(date(2025, 1, 1 + i8::try_from(i).unwrap())),
            billed_until: None,
        };
        run(&mut ledger, cmd);
    }
    (ledger, position)
}

fn usage(
    sub: u8,
    metric: &str,
    key: &str,
    value: String,
    occurred_at: Timestamp,
    n: usize,
) -> Command {
    Command::RecordUsage(Usage {
        subscription_id: format!("s{sub}"),
        transaction_id: format!("t{n}"),
        metric_code: metric.into(),
        occurred_at,
        properties: BTreeMap::from([(key.to_string(), value)]),
    })
}

/// The command `o` is at time `now` (None: no command, only time passes).
fn command(o: &Op, ledger: &Ledger, now: &mut Timestamp, n: usize) -> Option<Command> {
    Some(match *o {
        Op::Usage { sub, metric, value, user, back_hours } => {
            let (code, aggregation, ..) = METRICS[usize::from(metric)];
            let occurred =
                now.checked_sub(SignedDuration::from_hours(i64::from(back_hours))).unwrap();
            let (key, value) = match aggregation {
                Aggregation::UniqueCount => ("u", format!("user-{user}")),
                _ => ("n", value.to_string()),
            };
            usage(sub, code, key, value, occurred, n)
        }
        Op::Count { sub } => usage(sub, "events", "x", "1".into(), *now, n),
        Op::Change { sub, to_pro } => Command::ChangePlan {
            subscription_id: format!("s{sub}"),
            plan_code: if to_pro { "pro" } else { "basic" }.into(),
            plan_version: None,
            effective_date: None,
        },
        Op::Cancel { sub, immediately } => Command::CancelSubscription {
            subscription_id: format!("s{sub}"),
            immediately,
            effective_date: None,
        },
        Op::Bill => Command::RunBilling { as_of: *now },
        Op::Pay { fail } => {
            let id = ledger.invoices.keys().max()?.clone();
            let due = ledger.invoices[&id].amount_due();
            let outcome = if fail || due.is_zero() {
                PaymentOutcome::Failed { reason: "declined".into() }
            } else {
                PaymentOutcome::Succeeded { amount: due }
            };
            Command::RecordPayment { invoice_id: id, outcome, occurred_at: *now }
        }
        Op::Later(days) => {
            *now = now.checked_add(SignedDuration::from_hours(i64::from(days) * 24)).unwrap();
            return None;
        }
    })
}

/// Canonical bytes of a ledger: JSON through `serde_json::Value`, whose maps are ordered (the
/// ledger's hash maps iterate in any order).
fn canonical(ledger: &Ledger) -> String {
    serde_json::to_value(ledger).unwrap().to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn a_restored_ledger_decides_and_evolves_like_the_original(
        ops in proptest::collection::vec(op(), 1..120),
        split in 0usize..120,
    ) {
        let mut now: Timestamp = "2025-01-10T10:00:00Z".parse().unwrap();
        let (mut original, mut position) = world("2025-01-10T10:00:00Z".parse().unwrap());
        let mut restored: Option<Ledger> = None;
        for (n, o) in ops.iter().enumerate() {
            if n == split.min(ops.len() - 1) {
                let bytes = serde_json::to_vec(&original).unwrap();
                let back: Ledger = serde_json::from_slice(&bytes).unwrap();
                prop_assert_eq!(canonical(&back), canonical(&original));
                restored = Some(back);
            }
            let Some(cmd) = command(o, &original, &mut now, n) else { continue };
            let ctx = Context { now, policy: Policy::default() };
            let events = original.execute(&cmd, &ctx, position);
            if let Some(restored) = restored.as_mut() {
                // The restored copy decides the same command the same way...
                prop_assert_eq!(&restored.execute(&cmd, &ctx, position), &events);
            }
            position += events.map_or(0, |e: Vec<Event>| e.len() as u64);
        }
        let restored = restored.expect("split inside the ops");
        // ...and ends in the same state: the same bytes, the same invoices and current usage.
        prop_assert_eq!(canonical(&restored), canonical(&original));
        prop_assert_eq!(&restored.invoices, &original.invoices);
        for (id, sub) in &original.subscriptions {
            for start in sub.open.keys() {
                prop_assert_eq!(
                    format!("{:?}", restored.rated_usage(id, *start)),
                    format!("{:?}", original.rated_usage(id, *start))
                );
            }
        }
    }
}

#[test]
fn time_zones_go_by_their_iana_name() {
    let (ledger, _) = world("2025-01-10T10:00:00Z".parse().unwrap());
    let json = serde_json::to_value(&ledger).unwrap();
    assert_eq!(json["customers"]["globex"]["time_zone"], "America/New_York");
    assert_eq!(json["subscriptions"]["s1"]["time_zone"], "America/New_York");
    let back: Ledger = serde_json::from_value(json).unwrap();
    assert_eq!(back.subscriptions["s1"].time_zone.iana_name(), Some("America/New_York"));
}
