//! Stored chunks (sled values of the log tree) on arbitrary bytes and key positions:
//! `decode_chunk` never panics; a chunk that decodes re-encodes to the same bytes, and its
//! events' hashes are what they claim only if the chain verifies (never a panic either way).
#![no_main]

use event_store::envelope::{decode_chunk, encode_chunk};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (key, bytes) = data.split_at(8);
    let mut key_position = u64::from_be_bytes(key.try_into().expect("8 bytes"));
    // Half the runs use the position the chunk header claims, to get past the header check.
    if key_position & 1 == 0 && bytes.len() >= 9 {
        key_position = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
    }
    if let Ok(events) = decode_chunk(key_position, bytes) {
        assert!(!events.is_empty(), "a decoded chunk holds events");
        assert_eq!(encode_chunk(&events), bytes, "encode(decode(chunk)) == chunk");
        let start_prev_hash = events[0].prev_hash;
        let _ = event_store::verify_chain(events, start_prev_hash);
    }
});
