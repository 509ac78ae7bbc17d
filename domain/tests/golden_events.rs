//! Persisted event payloads are a compatibility boundary (SPEC §2): every event type, as
//! version 1 writes it, is pinned in `golden/events_v1.jsonl`. Released payloads must decode
//! forever; a change to the encoding must add a new schema version and an upcast instead.
//! To write the file anew after adding an event type: `ACCRUAL_BLESS=1 cargo test -p domain`.

use std::collections::BTreeMap;

use domain::calendar::{Anchor, Period};
use domain::catalog::{Charge, Customer, FeeTiming, Metric, Plan, PlanRef};
use domain::events::{Event, PlanChangeKind, Usage, SCHEMA_VERSION};
use domain::invoice::{build_invoice, InvoiceHeader, IssueReason, LineDraft, LineKind};
use domain::money::Currency;
use domain::rating::{Aggregation, ChargeModel, Tier};
use jiff::civil::date;
use jiff::Timestamp;
use rust_decimal_macros::dec;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/events_v1.jsonl");

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn one_of_each() -> Vec<Event> {
    let usd = Currency::parse("USD").unwrap();
    let period = Period { start: date(2025, 1, 1), end: date(2025, 2, 1) };
    let plan_ref = PlanRef { code: "growth".into(), version: 2 };
    let tiers = vec![
        Tier { up_to: Some(dec!(100)), unit_price: dec!(1.00), flat_fee: dec!(5) },
        Tier { up_to: None, unit_price: dec!(0.5), flat_fee: dec!(0) },
    ];
    let invoice = build_invoice(
        InvoiceHeader {
            invoice_id: "inv-sub-1-1".into(),
            customer_id: "acme".into(),
            subscription_id: "sub-1".into(),
            currency: usd,
            period,
            issued_at: at("2025-02-01T00:00:00Z"),
            reason: IssueReason::PeriodClose,
            tax_rate: dec!(10),
        },
        vec![LineDraft {
            kind: LineKind::Usage,
            description: "API calls (graduated)".into(),
            metric_code: Some("api_calls".into()),
            charge_model: Some("graduated".into()),
            units: Some(dec!(250)),
            service_period: period,
            unrounded: dec!(180.00),
        }],
    )
    .expect("in range");
    vec![
        Event::CustomerRegistered(Customer {
            customer_id: "acme".into(),
            name: "Acme".into(),
            currency: usd,
            time_zone: "Europe/Berlin".into(),
            tax_rate: dec!(10),
        }),
        Event::CustomerUpdated {
            customer_id: "acme".into(),
            name: None,
            tax_rate: Some(dec!(19)),
            occurred_at: at("2025-01-02T00:00:00Z"),
        },
        Event::BillableMetricDefined(Metric {
            code: "api_calls".into(),
            name: "API calls".into(),
            aggregation: Aggregation::Sum,
            property: Some("calls".into()),
            allow_negative: false,
        }),
        Event::PlanPublished(Plan {
            code: "growth".into(),
            version: 2,
            name: "Growth".into(),
            currency: usd,
            interval: domain::calendar::Interval::Monthly,
            base_fee: dec!(20.00),
            fee_timing: FeeTiming::Arrears,
            trial_days: 14,
            minimum_commitment: Some(dec!(100)),
            progressive_billing: None,
            charges: vec![Charge {
                metric_code: "api_calls".into(),
                model: ChargeModel::Graduated { tiers },
                pay_in_advance: false,
            }],
        }),
        Event::SubscriptionStarted {
            subscription_id: "sub-1".into(),
            customer_id: "acme".into(),
            plan: plan_ref.clone(),
            anchor: Anchor::Anniversary,
            start_date: date(2025, 1, 1),
            trial_end: Some(date(2025, 1, 15)),
            occurred_at: at("2025-01-01T09:00:00Z"),
            billed_until: None,
        },
        Event::TrialEnded { subscription_id: "sub-1".into(), date: date(2025, 1, 15) },
        Event::PlanChangeScheduled {
            subscription_id: "sub-1".into(),
            plan: plan_ref.clone(),
            effective_date: date(2025, 2, 1),
            occurred_at: at("2025-01-20T00:00:00Z"),
        },
        Event::PlanChanged {
            subscription_id: "sub-1".into(),
            plan: plan_ref,
            kind: PlanChangeKind::Downgrade,
            effective_date: date(2025, 2, 1),
        },
        Event::SubscriptionCanceled {
            subscription_id: "sub-1".into(),
            effective_date: date(2025, 3, 1),
            immediately: false,
            occurred_at: at("2025-02-10T00:00:00Z"),
        },
        Event::UsageRecorded(Usage {
            subscription_id: "sub-1".into(),
            transaction_id: "tx-1".into(),
            metric_code: "api_calls".into(),
            occurred_at: at("2025-01-05T12:00:00.123456Z"),
            properties: BTreeMap::from([("calls".to_string(), "250".to_string())]),
        }),
        Event::BillingPeriodClosed {
            subscription_id: "sub-1".into(),
            period,
            closed_at: at("2025-02-01T00:00:00Z"),
        },
        Event::InvoiceIssued(invoice),
        Event::InvoiceVoided {
            invoice_id: "inv-sub-1-1".into(),
            reason: "duplicate".into(),
            occurred_at: at("2025-02-02T00:00:00Z"),
        },
        Event::PaymentSucceeded {
            invoice_id: "inv-sub-1-1".into(),
            amount: dec!(100.00),
            occurred_at: at("2025-02-03T00:00:00Z"),
        },
        Event::PaymentFailed {
            invoice_id: "inv-sub-1-1".into(),
            reason: "card_declined".into(),
            attempt: 1,
            occurred_at: at("2025-02-04T00:00:00Z"),
        },
        Event::InvoiceMarkedUncollectible {
            invoice_id: "inv-sub-1-1".into(),
            occurred_at: at("2025-02-05T00:00:00Z"),
        },
        // Added with `allow_negative` (issue 11): the field is written only when true; a
        // metric written before it (line 3) reads as `false`.
        Event::BillableMetricDefined(Metric {
            code: "seats_delta".into(),
            name: "Seats (deltas)".into(),
            aggregation: Aggregation::Sum,
            property: Some("delta".into()),
            allow_negative: true,
        }),
    ]
}

#[test]
fn version_1_payloads_are_pinned_and_decode() {
    let encoded: Vec<String> =
        one_of_each().iter().map(|e| String::from_utf8(e.encode()).unwrap()).collect();
    if std::env::var_os("ACCRUAL_BLESS").is_some() {
        std::fs::write(GOLDEN, encoded.join("\n") + "\n").unwrap();
    }
    let golden = std::fs::read_to_string(GOLDEN).expect("golden file exists");
    let lines: Vec<&str> = golden.lines().collect();
    assert_eq!(lines, encoded, "the v1 encoding changed: add a schema version and an upcast");
    for (line, event) in lines.iter().zip(one_of_each()) {
        let decoded = Event::decode(event.type_name(), SCHEMA_VERSION, line.as_bytes()).unwrap();
        assert_eq!(decoded, event);
    }
}

#[test]
fn unknown_versions_and_mismatched_types_are_refused() {
    let line = String::from_utf8(one_of_each()[0].encode()).unwrap();
    assert!(Event::decode("CustomerRegistered", 99, line.as_bytes()).is_err());
    assert!(Event::decode("PlanPublished", SCHEMA_VERSION, line.as_bytes()).is_err());
    assert!(Event::decode("CustomerRegistered", SCHEMA_VERSION, b"{not json").is_err());
}
