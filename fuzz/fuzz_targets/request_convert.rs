//! Command requests as they arrive on the wire: protobuf bytes → `prost` decode → the
//! command service's conversion (`command_service::convert`) → the domain's validation and
//! decision on a small ledger (a customer, two metrics, a plan, a subscription with usage).
//! Never panics; every refusal of bad input is an `Invalid` naming each bad field.
#![no_main]

use std::sync::OnceLock;

use command_service::convert;
use domain::calendar::Anchor;
use domain::catalog::{Charge, Customer, FeeTiming, Metric, Plan};
use domain::commands::{Command, Context, Policy};
use domain::events::Usage;
use domain::ledger::Ledger;
use domain::money::Currency;
use domain::rating::{Aggregation, ChargeModel, Tier};
use domain::DomainError;
use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1 as pb;
use rust_decimal::Decimal;

const NOW: &str = "2025-01-20T12:00:00Z";

fn ctx() -> Context {
    Context { now: NOW.parse().expect("a timestamp"), policy: Policy::default() }
}

fn metric(code: &str, aggregation: Aggregation, property: Option<&str>) -> Command {
    Command::DefineMetric(Metric {
        code: code.into(),
        name: code.into(),
        aggregation,
        property: property.map(Into::into),
        allow_negative: false,
    })
}

fn plan() -> Command {
    let tiers = vec![
        Tier {
            up_to: Some(Decimal::ONE_HUNDRED),
            unit_price: Decimal::ONE,
            flat_fee: Decimal::TEN,
        },
        Tier { up_to: None, unit_price: Decimal::new(5, 1), flat_fee: Decimal::ZERO },
    ];
    let charge =
        |metric: &str, model| Charge { metric_code: metric.into(), model, pay_in_advance: false };
    Command::PublishPlan(Plan {
        code: "p1".into(),
        version: 0,
        name: "Plan".into(),
        currency: Currency::parse("USD").expect("USD"),
        interval: domain::calendar::Interval::Monthly,
        base_fee: Decimal::TEN,
        fee_timing: FeeTiming::Advance,
        trial_days: 0,
        minimum_commitment: Some(Decimal::ONE_HUNDRED),
        progressive_billing: None,
        charges: vec![
            charge("calls", ChargeModel::Graduated { tiers }),
            charge("seats", ChargeModel::Standard { unit_price: Decimal::ONE }),
        ],
    })
}

/// The ledger every input starts from (built once, cloned per input).
fn fixture() -> &'static Ledger {
    static LEDGER: OnceLock<Ledger> = OnceLock::new();
    LEDGER.get_or_init(|| {
        let mut ledger = Ledger::default();
        let ctx = Context { now: "2025-01-01T00:00:00Z".parse().expect("ts"), ..ctx() };
        let customer = Command::RegisterCustomer(Customer {
            customer_id: "c1".into(),
            name: "Acme".into(),
            currency: Currency::parse("USD").expect("USD"),
            time_zone: "Europe/Berlin".into(),
            tax_rate: Decimal::TEN,
        });
        let start = Command::StartSubscription {
            subscription_id: "s1".into(),
            customer_id: "c1".into(),
            plan_code: "p1".into(),
            plan_version: None,
            anchor: Anchor::Anniversary,
            start_date: None,
            billed_until: None,
        };
        let commands = [
            customer,
            metric("calls", Aggregation::Sum, Some("n")),
            metric("seats", Aggregation::WeightedSum, Some("n")),
            plan(),
            start,
        ];
        let mut position = 0;
        for cmd in &commands {
            position += ledger.execute(cmd, &ctx, position).expect("fixture").len() as u64;
        }
        ledger
    })
}

/// Fills the ids a fuzzer cannot guess (no memcmp hooks without a sanitizer) when left empty.
fn usage_defaults(mut u: Usage, selector: u8) -> Usage {
    if u.subscription_id.is_empty() {
        u.subscription_id = "s1".into();
    }
    if u.metric_code.is_empty() {
        u.metric_code = if selector & 0x10 == 0 { "calls" } else { "seats" }.into();
    }
    if u.transaction_id.is_empty() {
        u.transaction_id = "t1".into();
    }
    u
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

/// The wire request chosen by `selector`, converted to a command (or the conversion's error).
fn command(selector: u8, bytes: &[u8]) -> Option<Result<Command, DomainError>> {
    let now: Timestamp = NOW.parse().expect("ts");
    Some(match selector % 8 {
        0 => convert::register_customer(&decode(bytes)?),
        1 => convert::update_customer(&decode(bytes)?),
        2 => convert::define_metric(&decode(bytes)?),
        3 => convert::publish_plan(&decode(bytes)?),
        4 => convert::start_subscription(&decode(bytes)?),
        5 => convert::record_payment(&decode(bytes)?, now),
        6 => {
            let r: pb::RunBillingRequest = decode(bytes)?;
            convert::timestamp("as_of", r.as_of.as_ref()).and_then(|as_of| {
                domain::ledger::check_billing_time(as_of, &ctx())?;
                Ok(Command::RunBilling { as_of })
            })
        }
        _ => convert::usage(decode::<pb::UsageEvent>(bytes)?)
            .map(|u| Command::RecordUsage(usage_defaults(u, selector))),
    })
}

/// A refusal of input names every bad field, with a description.
fn check_refusal(err: &DomainError) {
    if let DomainError::Invalid(violations) = err {
        assert!(!violations.is_empty(), "Invalid without a violation");
        for v in violations {
            assert!(!v.field.is_empty() && !v.description.is_empty(), "{v:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let Some(converted) = command(selector, bytes) else { return };
    let cmd = match converted {
        Ok(cmd) => cmd,
        Err(err) => return check_refusal(&err),
    };
    let mut ledger = fixture().clone();
    let ctx = ctx();
    if let Command::RecordUsage(u) = &cmd {
        // The ingest hot path decides and applies in one step; it must agree with decide.
        let decided = ledger.decide_usage(u, &ctx, None).map(|_| ());
        let recorded = ledger.record_usage(u.clone(), &ctx, 1_000, None).map(|_| ());
        assert_eq!(decided.is_ok(), recorded.is_ok(), "decide_usage and record_usage agree");
    }
    if let Err(err) = ledger.execute(&cmd, &ctx, 2_000) {
        check_refusal(&err);
    }
    // Whatever was accepted must still bill without a panic, far into the future (billing
    // runs at the clock: the clock is moved there).
    let as_of: Timestamp = "2027-01-01T00:00:00Z".parse().expect("ts");
    let far = Command::RunBilling { as_of };
    let later = Context { now: as_of, ..ctx };
    if let Err(err) = ledger.execute(&far, &later, 3_000) {
        check_refusal(&err);
    }
});
