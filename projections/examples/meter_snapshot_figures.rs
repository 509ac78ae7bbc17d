//! Figures for the journal's usage-meter snapshot (docs/decisions/0028-journal-meter-snapshot.md):
//! a meter shaped like `accrual bench`'s (one customer, a plan with a `sum`, a `max` and a
//! `unique_count` metric, `<subscriptions>` subscriptions in one open period, `<usage events>`
//! usage events spread over them), then its size and the time to fold it, encode it (JSON,
//! then LZ4 as the log's chunks), frame it (SHA-256) and decode it. One run; prints figures.
//!
//! `cargo run -p projections --example meter_snapshot_figures -- <subscriptions> <usage events>`

use std::collections::BTreeMap;
use std::time::Instant;

use domain::catalog::{Charge, Customer, FeeTiming, Metric, Plan};
use domain::commands::{Command, Context, Policy};
use domain::events::{Event, Usage};
use domain::ledger::Ledger;
use domain::money::Currency;
use domain::rating::{Aggregation, ChargeModel};
use projections::state_snapshot::{self, Covers};
use projections::usage_meter::UsageMeter;
use rust_decimal::Decimal;

const METRICS: [(&str, Aggregation, &str); 3] = [
    ("api_calls", Aggregation::Sum, "calls"),
    ("storage_gb", Aggregation::Max, "gb"),
    ("active_users", Aggregation::UniqueCount, "user"),
];

fn events(subscriptions: u64, usage_events: u64) -> Vec<Event> {
    let now: jiff::Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
    let ctx = Context { now, policy: Policy::default() };
    let usd = Currency::parse("USD").unwrap();
    let mut ledger = Ledger::default();
    let mut out = Vec::new();
    let run = |ledger: &mut Ledger, cmd: Command, out: &mut Vec<Event>| {
        out.extend(ledger.execute(&cmd, &ctx, out.len() as u64).expect("a valid command"));
    };
    let customer = Customer {
        customer_id: "bench".into(),
        name: "Bench Co".into(),
        currency: usd,
        time_zone: "UTC".into(),
        tax_rate: Decimal::ZERO,
    };
    run(&mut ledger, Command::RegisterCustomer(customer), &mut out);
    let mut charges = Vec::new();
    for (code, aggregation, property) in METRICS {
        let metric = Metric {
            code: code.into(),
            name: code.into(),
            aggregation,
            property: Some(property.into()),
            allow_negative: false,
        };
        run(&mut ledger, Command::DefineMetric(metric), &mut out);
        let model = ChargeModel::Standard { unit_price: Decimal::new(1, 3) };
        charges.push(Charge { metric_code: code.into(), model, pay_in_advance: false });
    }
    let plan = Plan {
        code: "bench".into(),
        version: 0,
        name: "Bench".into(),
        currency: usd,
        interval: domain::calendar::Interval::Monthly,
        base_fee: Decimal::from(49),
        fee_timing: FeeTiming::Arrears,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        charges,
    };
    run(&mut ledger, Command::PublishPlan(plan), &mut out);
    for s in 0..subscriptions {
        let start = Command::StartSubscription {
            subscription_id: format!("sub-{s:06}"),
            customer_id: "bench".into(),
            plan_code: "bench".into(),
            plan_version: None,
            anchor: domain::calendar::Anchor::Anniversary,
            start_date: None,
            billed_until: None,
        };
        run(&mut ledger, start, &mut out);
    }
    for n in 0..usage_events {
        let (code, _, property) = METRICS[(n % 3) as usize];
        let value = match n % 3 {
            0 => (n % 97 + 1).to_string(),
            1 => format!("{}.{}", n % 500, n % 10),
            _ => format!("user-{}", n % 5_000),
        };
        let usage = Usage {
            subscription_id: format!("sub-{:06}", n % subscriptions),
            transaction_id: format!("tx-{n:012}"),
            metric_code: code.into(),
            occurred_at: now,
            properties: BTreeMap::from([(property.to_string(), value)]),
        };
        run(&mut ledger, Command::RecordUsage(usage), &mut out);
    }
    out
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1_000.0
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("a count")).collect();
    let (subscriptions, usage_events) =
        (args.first().copied().unwrap_or(10_000), args.get(1).copied().unwrap_or(0));
    let events = events(subscriptions, usage_events);
    let started = Instant::now();
    let mut meter = UsageMeter::default();
    for (position, event) in events.iter().enumerate() {
        meter.remember(event, position as u64);
    }
    println!("events={} fold_ms={:.1}", events.len(), ms(started));

    let started = Instant::now();
    let encoded = meter.encode().expect("no open run");
    println!("encoded_bytes={} encode_ms={:.1} (JSON, then LZ4)", encoded.len(), ms(started));
    let started = Instant::now();
    let json = lz4_flex::block::decompress_size_prepended(&encoded[4..]).unwrap();
    println!("json_bytes={} lz4_decompress_ms={:.1}", json.len(), ms(started));
    let started = Instant::now();
    let lz4 = lz4_flex::block::compress_prepend_size(&json);
    println!("lz4_compress_ms={:.1} (the LZ4 share of encode_ms)", ms(started));
    assert_eq!(lz4, encoded[4..]);
    let covers = Covers { position: events.len() as u64, last_hash: [0; 32] };
    let started = Instant::now();
    let framed = state_snapshot::encode(covers, &encoded);
    println!("frame_sha256_ms={:.1}", ms(started));
    let started = Instant::now();
    let (_, payload) = state_snapshot::decode(&framed).unwrap();
    println!("unframe_sha256_ms={:.1}", ms(started));
    let started = Instant::now();
    let restored = UsageMeter::decode(payload).unwrap();
    println!("decode_ms={:.1} (LZ4, then JSON)", ms(started));
    assert_eq!(restored.drafts("sub-000000"), meter.drafts("sub-000000"));
}
