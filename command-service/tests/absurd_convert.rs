//! Absurd wire inputs at the conversion + domain level (issue #5, fuzzing item), data-driven:
//! each row is a request as it arrives, converted by `convert` and decided by the ledger, and
//! the BadRequest fields it must be refused with. The real server is checked by the root
//! package's tests/absurd_inputs.rs; the libFuzzer target is fuzz/fuzz_targets/request_convert.rs.

use command_service::convert;
use domain::commands::{Command, Context, Policy};
use domain::ledger::Ledger;
use domain::DomainError;
use proto::v1 as pb;

const NOW: &str = "2025-01-20T12:00:00Z";

fn ctx() -> Context {
    Context { now: NOW.parse().unwrap(), policy: Policy::default() }
}

/// A customer, the metric `calls` (sum of `n`), a plan on it and subscription `s1`.
fn ledger() -> Ledger {
    let mut ledger = Ledger::default();
    let customer = pb::RegisterCustomerRequest {
        customer_id: "c1".into(),
        name: "Acme".into(),
        currency: "USD".into(),
        ..Default::default()
    };
    let metric = pb::DefineMetricRequest {
        code: "calls".into(),
        name: "Calls".into(),
        aggregation: "sum".into(),
        property: "n".into(),
        ..Default::default()
    };
    let start = pb::StartSubscriptionRequest {
        subscription_id: "s1".into(),
        customer_id: "c1".into(),
        plan_code: "p1".into(),
        ..Default::default()
    };
    let commands = [
        convert::register_customer(&customer),
        convert::define_metric(&metric),
        convert::publish_plan(&plan(vec![standard("1")])),
        convert::start_subscription(&start),
    ];
    let mut position = 0;
    for cmd in commands {
        position += ledger.execute(&cmd.unwrap(), &ctx(), position).unwrap().len() as u64;
    }
    ledger
}

fn standard(unit_price: &str) -> pb::Charge {
    let model = pb::charge::Model::Standard(pb::StandardModel { unit_price: unit_price.into() });
    pb::Charge { metric_code: "calls".into(), pay_in_advance: false, model: Some(model) }
}

fn tiered(tiers: Vec<pb::Tier>) -> pb::Charge {
    let model = pb::charge::Model::Graduated(pb::TieredModel { tiers });
    pb::Charge { metric_code: "calls".into(), pay_in_advance: false, model: Some(model) }
}

fn tier(up_to: &str, unit_price: &str, flat_fee: &str) -> pb::Tier {
    pb::Tier { up_to: up_to.into(), unit_price: unit_price.into(), flat_fee: flat_fee.into() }
}

fn plan(charges: Vec<pb::Charge>) -> pb::PublishPlanRequest {
    pb::PublishPlanRequest {
        code: "p1".into(),
        name: "Plan".into(),
        currency: "USD".into(),
        interval: "monthly".into(),
        base_fee: "0".into(),
        charges,
        ..Default::default()
    }
}

fn with_plan(edit: impl FnOnce(&mut pb::PublishPlanRequest)) -> pb::PublishPlanRequest {
    let mut p = plan(vec![]);
    edit(&mut p);
    p
}

fn usage(n: &str, seconds: i64) -> pb::UsageEvent {
    usage_tx("t1", n, seconds)
}

fn usage_tx(tx: &str, n: &str, seconds: i64) -> pb::UsageEvent {
    pb::UsageEvent {
        subscription_id: "s1".into(),
        transaction_id: tx.into(),
        metric_code: "calls".into(),
        occurred_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        properties: [("n".to_string(), n.to_string())].into(),
    }
}

/// 2025-01-20T00:00:00Z, inside the subscription's first period.
const IN_PERIOD: i64 = 1_737_331_200;
/// 9999-12-31T23:59:59Z.
const YEAR_9999: i64 = 253_402_300_799;

fn ten_thousand_tiers() -> Vec<pb::Tier> {
    (1..=10_000u32)
        .map(|i| tier(&if i < 10_000 { i.to_string() } else { String::new() }, "1", ""))
        .collect()
}

/// Converts and decides a request on a fresh ledger; the refusal's fields, or none.
fn refused_fields(cmd: Result<Command, DomainError>) -> Vec<String> {
    let mut ledger = ledger();
    let result = cmd.and_then(|cmd| ledger.execute(&cmd, &ctx(), 100));
    match result {
        Ok(_) => Vec::new(),
        Err(DomainError::Invalid(v)) => v.into_iter().map(|f| f.field).collect(),
        Err(other) => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

fn usage_cmd(u: pb::UsageEvent) -> Result<Command, DomainError> {
    convert::usage(u).map(Command::RecordUsage)
}

#[test]
fn absurd_inputs_are_refused_naming_the_field() {
    let huge = "x".repeat(1 << 20);
    let cases: Vec<(&str, Result<Command, DomainError>, Vec<&str>)> = vec![
        (
            "10^30 units",
            usage_cmd(usage("1000000000000000000000000000000", IN_PERIOD)),
            vec!["properties[n]"],
        ),
        (
            "10^28 units",
            usage_cmd(usage("10000000000000000000000000000", IN_PERIOD)),
            vec!["properties[n]"],
        ),
        ("10^15 + 1 units", usage_cmd(usage("1000000000000001", IN_PERIOD)), vec!["properties[n]"]),
        ("NaN units", usage_cmd(usage("NaN", IN_PERIOD)), vec!["properties[n]"]),
        ("inf units", usage_cmd(usage("inf", IN_PERIOD)), vec!["properties[n]"]),
        ("empty units", usage_cmd(usage("", IN_PERIOD)), vec!["properties[n]"]),
        ("1 MiB units", usage_cmd(usage(&huge, IN_PERIOD)), vec!["properties[n]"]),
        ("usage in year 9999", usage_cmd(usage("1", YEAR_9999)), vec!["occurred_at"]),
        ("usage past year 9999", usage_cmd(usage("1", i64::MAX)), vec!["occurred_at"]),
        ("usage before year -9999", usage_cmd(usage("1", i64::MIN)), vec!["occurred_at"]),
        (
            "10,000 tiers",
            convert::publish_plan(&plan(vec![tiered(ten_thousand_tiers())])),
            vec!["charges[0].graduated.tiers"],
        ),
        (
            "tier bound 10^20, flat fee 10^13",
            convert::publish_plan(&plan(vec![tiered(vec![
                tier("100000000000000000000", "1", "10000000000000"),
                tier("", "1", ""),
            ])])),
            vec!["charges[0].graduated.tiers[0].up_to", "charges[0].graduated.tiers[0].flat_fee"],
        ),
        (
            "unit price 10^9 + 1",
            convert::publish_plan(&plan(vec![standard("1000000001")])),
            vec!["charges[0].standard.unit_price"],
        ),
        // A negative zero is a typo or a sign bug (issue 11): refused in every decimal field.
        (
            "unit price -0",
            convert::publish_plan(&plan(vec![standard("-0")])),
            vec!["charges[0].standard.unit_price"],
        ),
        (
            "unit price -0.01",
            convert::publish_plan(&plan(vec![standard("-0.01")])),
            vec!["charges[0].standard.unit_price"],
        ),
        (
            "unit price NaN",
            convert::publish_plan(&plan(vec![standard("NaN")])),
            vec!["charges[0].standard.unit_price"],
        ),
        (
            "unit price 1e5 (scientific notation is read)",
            convert::publish_plan(&plan(vec![standard("1e5")])),
            vec![],
        ),
        (
            "unit price 1e10",
            convert::publish_plan(&plan(vec![standard("1e10")])),
            vec!["charges[0].standard.unit_price"],
        ),
        (
            "base fee 10^12 + 0.01",
            convert::publish_plan(&with_plan(|p| p.base_fee = "1000000000000.01".into())),
            vec!["base_fee"],
        ),
        (
            "base fee 10^28",
            convert::publish_plan(&with_plan(|p| p.base_fee = "1".to_string() + &"0".repeat(28))),
            vec!["base_fee"],
        ),
        (
            "minimum commitment 10^13",
            convert::publish_plan(&with_plan(|p| p.minimum_commitment = "10000000000000".into())),
            vec!["minimum_commitment"],
        ),
        (
            "trial of 10^9 days",
            convert::publish_plan(&with_plan(|p| p.trial_days = 1_000_000_000)),
            vec!["trial_days"],
        ),
        (
            "1 MiB plan name",
            convert::publish_plan(&with_plan(|p| p.name = huge.clone())),
            vec!["name"],
        ),
        (
            "1 MiB plan code",
            convert::publish_plan(&with_plan(|p| p.code = huge.clone())),
            vec!["code"],
        ),
        (
            "subscription starting 9999-12-31",
            convert::start_subscription(&pb::StartSubscriptionRequest {
                subscription_id: "s2".into(),
                customer_id: "c1".into(),
                plan_code: "p1".into(),
                start_date: "9999-12-31".into(),
                ..Default::default()
            }),
            vec!["start_date"],
        ),
        (
            "subscription starting 99999-01-01",
            convert::start_subscription(&pb::StartSubscriptionRequest {
                start_date: "99999-01-01".into(),
                ..Default::default()
            }),
            vec!["start_date"],
        ),
        (
            "billing as of year 9999",
            convert::timestamp(
                "as_of",
                Some(&prost_types::Timestamp { seconds: YEAR_9999, nanos: 0 }),
            )
            .map(|as_of| Command::RunBilling { as_of }),
            vec!["as_of"],
        ),
        (
            "tax rate 1e30",
            convert::register_customer(&pb::RegisterCustomerRequest {
                customer_id: "c2".into(),
                name: "Other".into(),
                currency: "USD".into(),
                tax_rate: "1".to_string() + &"0".repeat(30),
                ..Default::default()
            }),
            vec!["tax_rate"],
        ),
        (
            "1 MiB customer id, NaN-like currency",
            convert::register_customer(&pb::RegisterCustomerRequest {
                customer_id: huge.clone(),
                name: "Other".into(),
                currency: "NaN".into(),
                ..Default::default()
            }),
            vec!["currency", "customer_id"],
        ),
    ];
    for (name, cmd, want) in cases {
        assert_eq!(refused_fields(cmd), want, "{name}");
    }
}

/// Many in-bound events can still overflow a period at billing time; the one that would take
/// the period past 10^15 is refused at record time, and the period still bills exactly.
#[test]
fn the_event_that_would_overflow_the_period_is_refused_at_record_time() {
    let mut ledger = ledger();
    let mut position = 100;
    for i in 0..10 {
        let u = convert::usage(usage_tx(&format!("t{i}"), "100000000000000", IN_PERIOD + i));
        let u = u.unwrap();
        position +=
            ledger.execute(&Command::RecordUsage(u), &ctx(), position).unwrap().len() as u64;
    }
    let one_more = convert::usage(usage_tx("t-more", "0.000000000001", IN_PERIOD + 20)).unwrap();
    match ledger.execute(&Command::RecordUsage(one_more), &ctx(), position) {
        Err(DomainError::Invalid(v)) => assert_eq!(v[0].field, "properties[n]"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let as_of = "2025-03-01T00:00:00Z".parse().unwrap();
    let bill = Command::RunBilling { as_of };
    // Billing runs at its time (a run later than the clock is refused).
    let at_close = Context { now: as_of, policy: Policy::default() };
    let events = ledger.execute(&bill, &at_close, position).unwrap();
    let issued = events.iter().find_map(|e| match e {
        domain::events::Event::InvoiceIssued(i) => Some(i.clone()),
        _ => None,
    });
    let total = issued.unwrap().total;
    assert_eq!(total, rust_decimal::Decimal::from(1_000_000_000_000_000i64), "10^15 units × 1.00");
}
