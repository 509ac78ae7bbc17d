//! `Event::decode(type, schema_version, payload)` on arbitrary bytes: never panics; whatever
//! decodes re-encodes to bytes that decode to the same event.
#![no_main]

use domain::events::{Event, SCHEMA_VERSION};
use libfuzzer_sys::fuzz_target;

const TYPES: [&str; 16] = [
    "CustomerRegistered",
    "CustomerUpdated",
    "BillableMetricDefined",
    "PlanPublished",
    "SubscriptionStarted",
    "PlanChanged",
    "SubscriptionCanceled",
    "TrialEnded",
    "UsageRecorded",
    "BillingPeriodClosed",
    "InvoiceIssued",
    "InvoiceVoided",
    "PaymentSucceeded",
    "PaymentFailed",
    "InvoiceMarkedUncollectible",
    "NoSuchEvent",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else { return };
    let event_type = TYPES[usize::from(selector) % TYPES.len()];
    let version = if selector >= 0xF0 { u16::from(selector) } else { SCHEMA_VERSION };
    if let Ok(event) = Event::decode(event_type, version, payload) {
        let again = Event::decode(event.type_name(), SCHEMA_VERSION, &event.encode())
            .expect("an encoded event decodes");
        assert_eq!(again, event, "decode(encode(e)) == e");
    }
});
