//! `Event::decode(type, schema_version, payload)` on arbitrary bytes: never panics; whatever
//! decodes re-encodes to bytes that decode to the same event.
#![no_main]

use domain::events::{Event, EVENT_TYPES, SCHEMA_VERSION};
use libfuzzer_sys::fuzz_target;

/// A type no event has (the selector's last choice after every one of `EVENT_TYPES`).
const UNKNOWN_TYPE: &str = "NoSuchEvent";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else { return };
    let choice = usize::from(selector) % (EVENT_TYPES.len() + 1);
    let event_type = EVENT_TYPES.get(choice).copied().unwrap_or(UNKNOWN_TYPE);
    let version = if selector >= 0xF0 { u16::from(selector) } else { SCHEMA_VERSION };
    if let Ok(event) = Event::decode(event_type, version, payload) {
        let again = Event::decode(event.type_name(), SCHEMA_VERSION, &event.encode())
            .expect("an encoded event decodes");
        assert_eq!(again, event, "decode(encode(e)) == e");
    }
});
