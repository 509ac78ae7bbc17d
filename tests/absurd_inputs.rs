//! Absurd inputs on the real server (issue #5, fuzzing item): 10^30 units, a billing period
//! pushed past 10^15 units, 10,000 tiers, year-9999 dates, NaN-like and huge strings. Each is
//! INVALID_ARGUMENT with a BadRequest naming the field, and none appends anything (the log
//! position after them is the one before them, plus the probe). Billing the in-bound maximum
//! issues an exact invoice.

mod common;

use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use tonic::transport::Channel;

use common::{
    append_probe, bad_fields, free_port, in_first_period, register_acme_and_api_calls,
    start_sub_1_backdated, tier, Server,
};

type Client = CommandServiceClient<Channel>;

fn now_plus_days(days: i64) -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * days)
}

fn ts(t: jiff::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.as_second(), nanos: 0 }
}

fn usage(tx: &str, calls: &str) -> pb::UsageEvent {
    pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx.into(),
        metric_code: "api_calls".into(),
        // Inside the first period of the backdated subscription.
        occurred_at: Some(in_first_period()),
        properties: [("calls".to_string(), calls.to_string())].into(),
    }
}

fn standard_charge(unit_price: &str) -> pb::Charge {
    pb::Charge {
        metric_code: "api_calls".into(),
        pay_in_advance: false,
        model: Some(pb::charge::Model::Standard(pb::StandardModel {
            unit_price: unit_price.into(),
        })),
    }
}

fn plan(code: &str, base_fee: &str, charges: Vec<pb::Charge>) -> pb::PublishPlanRequest {
    pb::PublishPlanRequest {
        code: code.into(),
        name: code.into(),
        currency: "USD".into(),
        interval: "monthly".into(),
        base_fee: base_fee.into(),
        charges,
        ..Default::default()
    }
}

/// A plan at the money bounds, a subscription, and one usage event of 10^15 units; returns the
/// log position of that event.
async fn setup(c: &mut Client) -> u64 {
    register_acme_and_api_calls(c).await;
    let metered = plan("metered", "1000000000000", vec![standard_charge("0.01")]);
    c.publish_plan(metered).await.unwrap();
    // Backdated a month: its first period has ended, so a billing run now closes it.
    start_sub_1_backdated(c, "metered").await;
    let full = c.record_usage(usage("tx-max", "1000000000000000")).await.unwrap().into_inner();
    assert_eq!(full.status, "accepted");
    full.position
}

async fn absurd_usage(c: &mut Client) {
    let table = [
        ("10^30 units", "1000000000000000000000000000000"),
        ("10^28 units", "10000000000000000000000000000"),
        ("one more unit past the period's 10^15", "1"),
        ("a negative unit past the period's 10^15", "-0.5"),
        ("NaN", "NaN"),
        ("infinity", "-inf"),
        ("hex", "0x10"),
        ("13 decimal places", "0.0000000000001"),
    ];
    for (i, (what, calls)) in table.into_iter().enumerate() {
        let reply = c.record_usage(usage(&format!("tx-absurd-{i}"), calls)).await;
        assert_eq!(bad_fields(what, reply), ["properties[calls]"], "{what}");
    }
    let mut in_9999 = usage("tx-9999", "1");
    in_9999.occurred_at = Some(prost_types::Timestamp { seconds: 253_402_300_799, nanos: 0 });
    assert_eq!(bad_fields("year 9999", c.record_usage(in_9999).await), ["occurred_at"]);
    let mut beyond = usage("tx-beyond", "1");
    beyond.occurred_at = Some(prost_types::Timestamp { seconds: i64::MAX, nanos: 0 });
    assert_eq!(bad_fields("i64::MAX seconds", c.record_usage(beyond).await), ["occurred_at"]);
    let mut huge = usage(&"t".repeat(100_000), "1");
    huge.properties.insert("k".repeat(300), "v".into());
    let fields = bad_fields("huge strings", c.record_usage(huge).await);
    assert!(fields.contains(&"transaction_id".to_string()), "{fields:?}");
}

async fn absurd_plans(c: &mut Client) {
    let ten_thousand: Vec<pb::Tier> = (1..=10_000u32)
        .map(|i| tier(&if i < 10_000 { i.to_string() } else { String::new() }, "1"))
        .collect();
    let tiered = pb::Charge {
        metric_code: "api_calls".into(),
        pay_in_advance: false,
        model: Some(pb::charge::Model::Graduated(pb::TieredModel { tiers: ten_thousand })),
    };
    let table = [
        ("10,000 tiers", plan("p", "0", vec![tiered]), "charges[0].graduated.tiers"),
        (
            "unit price 10^20",
            plan("p", "0", vec![standard_charge("1e20")]),
            "charges[0].standard.unit_price",
        ),
        (
            "unit price 10^10",
            plan("p", "0", vec![standard_charge("10000000000")]),
            "charges[0].standard.unit_price",
        ),
        ("base fee 10^28", plan("p", "10000000000000000000000000000", vec![]), "base_fee"),
        ("base fee NaN", plan("p", "NaN", vec![]), "base_fee"),
        ("negative base fee", plan("p", "-1", vec![]), "base_fee"),
    ];
    for (what, request, field) in table {
        assert_eq!(bad_fields(what, c.publish_plan(request).await), [field], "{what}");
    }
    let mut commitment = plan("p", "0", vec![]);
    commitment.minimum_commitment = "1000000000000.01".into();
    assert_eq!(bad_fields("commitment", c.publish_plan(commitment).await), ["minimum_commitment"]);
    let mut huge = plan("p", "0", vec![]);
    huge.name = "n".repeat(200_000);
    assert_eq!(bad_fields("a 200 kB name", c.publish_plan(huge).await), ["name"]);
}

async fn absurd_dates_and_customers(c: &mut Client) {
    let start = pb::StartSubscriptionRequest {
        subscription_id: "sub-9999".into(),
        customer_id: "acme".into(),
        plan_code: "metered".into(),
        start_date: "9999-12-31".into(),
        ..Default::default()
    };
    assert_eq!(bad_fields("start 9999-12-31", c.start_subscription(start).await), ["start_date"]);
    let bill = pb::RunBillingRequest {
        as_of: Some(prost_types::Timestamp { seconds: 253_402_300_799, nanos: 0 }),
        ..Default::default()
    };
    assert_eq!(bad_fields("billing in 9999", c.run_billing(bill).await), ["as_of"]);
    for tax_rate in ["NaN", "-1", "100.01", "1e30"] {
        let customer = pb::RegisterCustomerRequest {
            customer_id: "other".into(),
            name: "Other".into(),
            currency: "USD".into(),
            tax_rate: tax_rate.into(),
            ..Default::default()
        };
        assert_eq!(bad_fields(tax_rate, c.register_customer(customer).await), ["tax_rate"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_inputs_are_invalid_argument_and_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), free_port());
    let mut c = server.client().await;
    let position_before = setup(&mut c).await;
    absurd_usage(&mut c).await;
    absurd_plans(&mut c).await;
    absurd_dates_and_customers(&mut c).await;
    assert_eq!(
        append_probe(&mut c).await,
        position_before + 1,
        "refused commands appended nothing"
    );

    // The period holding 10^15 units bills exactly: 10^15 × 0.01 + the 10^12 base fee + 10 % tax.
    let bill = pb::RunBillingRequest { as_of: Some(ts(now_plus_days(0))), ..Default::default() };
    let issued = c.run_billing(bill).await.unwrap().into_inner();
    let first = issued.invoices.iter().find(|i| i.lines.iter().any(|l| l.kind == "usage")).unwrap();
    let usage_line = first.lines.iter().find(|l| l.kind == "usage").unwrap();
    assert_eq!(usage_line.amount, "10000000000000.00");
    assert_eq!(usage_line.units, "1000000000000000");
    assert_eq!(first.subtotal, "11000000000000.00");
    assert_eq!(
        (first.tax.as_str(), first.total.as_str()),
        ("1100000000000.00", "12100000000000.00")
    );
    assert_eq!(server.terminate().await.code(), Some(0));
}
