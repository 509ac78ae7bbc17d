//! `Event::decode` on arbitrary stored bytes (issue #5, fuzzing item; the libFuzzer target is
//! fuzz/fuzz_targets/event_decode.rs): never a panic, and what decodes round-trips.

use domain::events::{Event, SCHEMA_VERSION};
use proptest::prelude::*;

const TYPES: [&str; 6] = [
    "UsageRecorded",
    "PlanPublished",
    "InvoiceIssued",
    "CustomerRegistered",
    "PaymentSucceeded",
    "NoSuchEvent",
];

/// JSON-ish bytes: fragments of real payloads glued at random, so the decoder gets deep.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("\"type\":\"UsageRecorded\",".to_string()),
        Just(
            "\"subscription_id\":\"s\",\"transaction_id\":\"t\",\"metric_code\":\"m\",".to_string()
        ),
        Just("\"occurred_at\":\"2025-01-01T00:00:00Z\",".to_string()),
        Just("\"occurred_at\":\"9999-12-31T23:59:59Z\",".to_string()),
        Just("\"properties\":{\"n\":\"1e30\"}".to_string()),
        Just("\"amount\":\"79228162514264337593543950336\",".to_string()),
        "[a-z_\":,{}0-9.-]{0,24}",
    ];
    prop::collection::vec(fragment, 0..12).prop_map(|parts| parts.concat().into_bytes())
}

proptest! {
    #[test]
    fn decode_of_any_bytes_never_panics(
        type_index in 0..TYPES.len(),
        version in prop_oneof![Just(SCHEMA_VERSION), any::<u16>()],
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..256), jsonish()],
    ) {
        if let Ok(event) = Event::decode(TYPES[type_index], version, &bytes) {
            let again = Event::decode(event.type_name(), SCHEMA_VERSION, &event.encode());
            prop_assert_eq!(again.ok(), Some(event));
        }
    }
}
