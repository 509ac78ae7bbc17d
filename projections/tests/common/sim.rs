//! A generator of random valid event logs: random operations (start, usage, plan change,
//! cancel, payment, credit note, days passing with a billing run) over four customers in four time zones,
//! decided by the real domain ledger, so every log is one the write side could have produced.

use std::collections::BTreeMap;
use std::sync::Arc;

use domain::alert::{AlertOn, UsageAlert};
use domain::calendar::{Anchor, Interval};
use domain::catalog::{Charge, Customer, FeeTiming, Metric, Plan};
use domain::commands::{Command, Context, PaymentOutcome, Policy};
use domain::coupon::{Coupon, CouponKind, Frequency};
use domain::credit_note::{CreditDestination, CreditLineRequest, CreditNoteRequest};
use domain::events::{Event, Usage};
use domain::invoice::{InvoiceAccount, InvoiceStatus};
use domain::ledger::Ledger;
use domain::money::Currency;
use domain::rating::{Aggregation, ChargeModel, Tier};
use domain::wallet::{CreditKind, OpenWallet, TopUpRequest};
use event_store::MemoryStore;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

#[derive(Clone, Debug)]
pub enum Op {
    Start {
        customer: u8,
        pro: bool,
    },
    Usage {
        customer: u8,
        calls: u16,
    },
    Change {
        customer: u8,
        pro: bool,
    },
    Cancel {
        customer: u8,
        immediately: bool,
    },
    Pay {
        fail: bool,
    },
    /// A credit note on the oldest invoice with something creditable: `percent` of its largest
    /// line's creditable amount, to destination `destination % 3` (offset, refund, credit).
    Credit {
        percent: u8,
        destination: u8,
    },
    /// Applies coupon `which % 3` (10.00 once, 20 % for two periods, 5 % forever) to a customer.
    Coupon {
        customer: u8,
        which: u8,
    },
    /// Tops up customer `customer`'s wallet (opened on first use, low-balance threshold
    /// 20.00): `credits` credits, paid or granted, expiring in 10 days or never, paid ones
    /// usable at once or when their invoice is paid (an `Op::Pay` pays it).
    Wallet {
        customer: u8,
        paid: bool,
        credits: u8,
        expires: bool,
        at_once: bool,
    },
    /// A usage alert on the customer's current subscription: on units of calls every
    /// `every` from `every`, or (odd `every`) on the rated amount.
    Alert {
        customer: u8,
        every: u8,
    },
    Days(u8),
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..4, any::<bool>()).prop_map(|(customer, pro)| Op::Start { customer, pro }),
        4 => (0u8..4, 0u16..500).prop_map(|(customer, calls)| Op::Usage { customer, calls }),
        1 => (0u8..4, any::<bool>()).prop_map(|(customer, pro)| Op::Change { customer, pro }),
        1 => (0u8..4, any::<bool>()).prop_map(|(customer, immediately)| Op::Cancel { customer, immediately }),
        2 => any::<bool>().prop_map(|fail| Op::Pay { fail }),
        1 => (1u8..=100, 0u8..3).prop_map(|(percent, destination)| Op::Credit { percent, destination }),
        1 => (0u8..4, 0u8..3).prop_map(|(customer, which)| Op::Coupon { customer, which }),
        1 => (0u8..4, any::<bool>(), 1u8..=120, any::<bool>(), any::<bool>()).prop_map(
            |(customer, paid, credits, expires, at_once)| Op::Wallet { customer, paid, credits, expires, at_once }
        ),
        1 => (0u8..4, 1u8..=200).prop_map(|(customer, every)| Op::Alert { customer, every }),
        3 => (1u8..25).prop_map(Op::Days),
    ]
}

pub fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

/// Whether `o` only starts, uses, changes, cancels or bills (no payments, credit notes,
/// coupons, wallets or alerts).
fn bills_only(o: &Op) -> bool {
    matches!(
        o,
        Op::Start { .. } | Op::Usage { .. } | Op::Change { .. } | Op::Cancel { .. } | Op::Days(_)
    )
}

/// Ops that only bill ([`bills_only`]): the same ops billed progressively or only at close
/// bill the same.
pub fn billing_op() -> impl Strategy<Value = Op> {
    op().prop_filter("billing only", bills_only)
}

/// [`billing_op`] and the `once` and `forever` coupons: what MRR reads. Not the recurring one:
/// its periods are counted per invoice across all of a customer's subscriptions, so when a
/// progressive invoice takes a discount earlier than the close would have (another
/// subscription's close then finds fewer periods left), or bills usage before the coupon is
/// applied, the period counts legitimately differ (docs/decisions/0037).
pub fn mrr_op() -> impl Strategy<Value = Op> {
    op().prop_filter("billing and coupons", |o| {
        bills_only(o) || matches!(o, Op::Coupon { which, .. } if which % 3 != 1)
    })
}

fn plan(code: &str, fee: Decimal, timing: FeeTiming, progressive: bool) -> Plan {
    // Pro prices calls by volume: past 600 calls all of them cost less, so its rated amount
    // falls (a reversal of accrued usage revenue; with progressive billing, after it was billed).
    let model = match code {
        "pro" => ChargeModel::Volume {
            tiers: vec![
                Tier { up_to: Some(dec!(600)), unit_price: dec!(0.01), flat_fee: dec!(0) },
                Tier { up_to: None, unit_price: dec!(0.004), flat_fee: dec!(0) },
            ],
        },
        _ => ChargeModel::Standard { unit_price: dec!(0.01) },
    };
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
        // At 0.01 a call (≤ 5.00 an event): several progressive invoices in most periods.
        progressive_billing: progressive.then(|| domain::progressive::ProgressiveBilling {
            thresholds: vec![dec!(1.00), dec!(3.00)],
            every: Some(dec!(2.50)),
        }),
        charges: vec![Charge { metric_code: "calls".into(), model, pay_in_advance: false }],
    }
}

/// Runs the ops through the domain; returns every event it decided.
pub fn simulate(ops: &[Op], arrears: bool) -> Vec<Event> {
    simulate_billing(ops, arrears, false)
}

/// [`simulate`], with plans that bill progressively when `progressive`.
pub fn simulate_billing(ops: &[Op], arrears: bool, progressive: bool) -> Vec<Event> {
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
            allow_negative: false,
        }),
        Command::PublishPlan(plan("basic", dec!(30), timing, progressive)),
        Command::PublishPlan(plan("pro", dec!(62), FeeTiming::Advance, progressive)),
    ];
    let coupon = |code: &str, kind: CouponKind, frequency: Frequency| {
        Command::DefineCoupon(Coupon {
            code: code.into(),
            kind,
            frequency,
            plan_codes: vec![],
            metric_codes: vec![],
            applies_to_add_ons: false,
            expires_on: None,
        })
    };
    setup.push(coupon(
        "ten-once",
        CouponKind::FixedAmount { amount: dec!(10), currency: usd() },
        Frequency::Once,
    ));
    setup.push(coupon(
        "twenty-twice",
        CouponKind::Percentage { percent: dec!(20) },
        Frequency::Recurring { periods: 2 },
    ));
    setup.push(coupon(
        "five-forever",
        CouponKind::Percentage { percent: dec!(5) },
        Frequency::Forever,
    ));
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
                    billed_until: None,
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
                effective_date: None,
            },
            Op::Cancel { customer, immediately } => Command::CancelSubscription {
                subscription_id: sub(customer, &generation),
                immediately: *immediately,
                effective_date: None,
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
            Op::Coupon { customer, which } => Command::ApplyCoupon {
                customer_id: format!("c{customer}"),
                coupon_code: ["ten-once", "twenty-twice", "five-forever"][usize::from(which % 3)]
                    .into(),
            },
            Op::Credit { percent, destination } => {
                let Some(cmd) = credit_note(&ledger, *percent, *destination) else { continue };
                cmd
            }
            Op::Wallet { customer, paid, credits, expires, at_once } => {
                let wallet_id = format!("w{customer}");
                if !ledger.wallets.contains_key(&wallet_id) {
                    let open = Command::OpenWallet(OpenWallet {
                        wallet_id: wallet_id.clone(),
                        customer_id: format!("c{customer}"),
                        name: String::new(),
                        rate_amount: dec!(1),
                        low_balance_threshold: Some(dec!(20)),
                    });
                    run(&mut ledger, open, now, &mut events);
                }
                let in_10_days = now.checked_add(SignedDuration::from_hours(240)).unwrap();
                Command::TopUpWallet(TopUpRequest {
                    wallet_id,
                    kind: if *paid { CreditKind::Paid } else { CreditKind::Granted },
                    credits: Decimal::from(*credits),
                    expires_on: expires
                        .then(|| in_10_days.to_zoned(jiff::tz::TimeZone::UTC).date()),
                    usable_at_once: *at_once,
                })
            }
            Op::Alert { customer, every } => {
                let on = if every % 2 == 0 { AlertOn::Units } else { AlertOn::Amount };
                Command::CreateUsageAlert(UsageAlert {
                    alert_id: format!("a{n}"),
                    subscription_id: sub(customer, &generation),
                    metric_code: Some("calls".into()),
                    on,
                    threshold: Decimal::from(*every),
                    every: Some(Decimal::from(*every)),
                })
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

/// A credit note per [`Op::Credit`], or `None` when no invoice has anything creditable.
fn credit_note(ledger: &Ledger, percent: u8, destination: u8) -> Option<Command> {
    let creditable = |a: &InvoiceAccount| {
        let lines = a.invoice.lines.iter().enumerate();
        let left = lines.map(|(i, l)| (i, l.amount - a.credits.on_line(i as u32)));
        left.filter(|(_, x)| *x > Decimal::ZERO).max_by_key(|(_, x)| *x)
    };
    let mut open: Vec<&InvoiceAccount> = ledger
        .invoices
        .values()
        .filter(|a| matches!(a.status, InvoiceStatus::Open | InvoiceStatus::Paid))
        .filter(|a| creditable(a).is_some())
        .collect();
    open.sort_by(|a, b| a.invoice.invoice_id.cmp(&b.invoice.invoice_id));
    let account = open.first()?;
    let (line, left) = creditable(account)?;
    let amount = usd().round(left * Decimal::from(percent) / dec!(100)).max(dec!(0.01));
    let destination =
        [CreditDestination::Offset, CreditDestination::Refund, CreditDestination::Credit]
            [usize::from(destination % 3)];
    Some(Command::IssueCreditNote(CreditNoteRequest {
        invoice_id: account.invoice.invoice_id.clone(),
        lines: vec![CreditLineRequest { line_index: line as u32, amount: Some(amount) }],
        reason: "sim".into(),
        destination,
    }))
}

pub async fn store_of(events: &[Event]) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    for e in events {
        projections::testkit::append_event(&store, e).await;
    }
    store
}
