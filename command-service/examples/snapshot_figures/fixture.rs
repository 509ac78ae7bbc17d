//! Books for the snapshot figures and the snapshot unit tests (`src/snapshot/tests.rs`
//! includes this file): customer `c` (Europe/Berlin), the metrics `metrics` (code, aggregation,
//! property), plan `p` charging each, and `subscriptions` subscriptions `s0…` started under
//! the idempotency keys `start-<i>` (digest `[i as u8; 32]`).

// The includer has `Engine` in scope (`command_service::engine::Engine` or `crate::engine::Engine`).
use super::Engine;
use domain::calendar::{Anchor, Interval};
use domain::catalog::{Charge, Customer, FeeTiming, Metric, Plan};
use domain::commands::Command;
use domain::money::Currency;
use domain::rating::{Aggregation, ChargeModel};
use rust_decimal::Decimal;

pub async fn catalog(e: &Engine, subscriptions: u64, metrics: &[(&str, Aggregation, &str)]) {
    let usd = Currency::parse("USD").unwrap();
    let customer = Customer {
        customer_id: "c".into(),
        name: "C".into(),
        currency: usd,
        time_zone: "Europe/Berlin".into(),
        tax_rate: Decimal::from(19),
    };
    e.execute(Command::RegisterCustomer(customer), None, None).await.unwrap();
    let mut charges = Vec::new();
    for &(code, aggregation, property) in metrics {
        let property = Some(property.to_string());
        let metric = Metric {
            code: code.into(),
            name: code.into(),
            aggregation,
            property,
            allow_negative: false,
        };
        e.execute(Command::DefineMetric(metric), None, None).await.unwrap();
        let model = ChargeModel::Standard { unit_price: Decimal::new(1, 3) };
        charges.push(Charge { metric_code: code.into(), model, pay_in_advance: false });
    }
    let plan = Plan {
        code: "p".into(),
        version: 0,
        name: "P".into(),
        currency: usd,
        interval: Interval::Monthly,
        base_fee: Decimal::from(49),
        fee_timing: FeeTiming::Arrears,
        trial_days: 0,
        minimum_commitment: None,
        progressive_billing: None,
        charges,
    };
    e.execute(Command::PublishPlan(plan), None, None).await.unwrap();
    for i in 0..subscriptions {
        let start = Command::StartSubscription {
            subscription_id: format!("s{i}"),
            customer_id: "c".into(),
            plan_code: "p".into(),
            plan_version: None,
            anchor: Anchor::Anniversary,
            start_date: Some("2025-01-01".parse().unwrap()),
            billed_until: None,
        };
        let key = Some((format!("start-{i}"), [i as u8; 32]));
        e.execute(start, key, None).await.unwrap();
    }
}
