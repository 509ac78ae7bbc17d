//! Golden tests: the persisted formats (canonical bytes format 1, chunk encodings 1 and 2) and
//! the hash must never change silently. If one of these fails, you changed a persisted format:
//! add a new format version and keep decoding the old one instead.

use event_store::envelope::{decode_chunk, encode_chunk, encode_chunk_v2};
use event_store::{canonical_bytes, compute_hash, verify_chain, RecordedEvent, GENESIS_HASH};
use uuid::Uuid;

fn golden_event() -> RecordedEvent {
    let mut ev = RecordedEvent {
        event_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
        stream: "subscription-42".into(),
        stream_version: 3,
        position: 1_000,
        event_type: "UsageRecorded".into(),
        schema_version: 2,
        occurred_at_us: 1_704_067_200_000_000,
        recorded_at_us: 1_704_067_201_500_000,
        causation_id: Some(Uuid::from_u128(1)),
        correlation_id: None,
        idempotency_key: Some("req-7".into()),
        idempotency_digest: Some([0xab; 32]),
        payload: br#"{"units":"1.5"}"#.to_vec(),
        prev_hash: [0x11; 32],
        hash: [0; 32],
    };
    ev.hash = compute_hash(&ev);
    ev
}

fn second_event(first: &RecordedEvent) -> RecordedEvent {
    let mut ev = RecordedEvent {
        event_id: Uuid::from_u128(2),
        stream: "customer-1".into(),
        stream_version: 0,
        position: 1_001,
        event_type: "CustomerRegistered".into(),
        schema_version: 1,
        occurred_at_us: -1,
        recorded_at_us: first.recorded_at_us,
        causation_id: None,
        correlation_id: Some(Uuid::from_u128(3)),
        idempotency_key: None,
        idempotency_digest: None,
        payload: vec![],
        prev_hash: first.hash,
        hash: [0; 32],
    };
    ev.hash = compute_hash(&ev);
    ev
}

/// Canonical bytes (format 1) of `golden_event()`.
const GOLDEN_CANONICAL_HEX: &str = concat!(
    "010123456789abcdef00112233445566770000000f737562736372697074696f6e2d3432000000000000000300000000",
    "000003e80000000d55736167655265636f72646564000200060dd71021200000060dd710380360010000000000000000",
    "00000000000000010001000000057265712d3701abababababababababababababababababababababababababababab",
    "abababab0000000f7b22756e697473223a22312e35227d11111111111111111111111111111111111111111111111111",
    "11111111111111",
);
/// SHA-256(prev_hash || canonical bytes), checked independently with Python's hashlib.
const GOLDEN_HASH_HEX: &str = "0dfe2f38059cccca8cc72df4176d6343e2fdd0149181a2710dec70a915274859";
/// Chunk encoding (format 1) of `golden_event()` followed by `second_event()`.
const GOLDEN_CHUNK_HEX: &str = concat!(
    "0100000000000003e800000002000000c7010123456789abcdef00112233445566770000000f73756273637269707469",
    "6f6e2d3432000000000000000300000000000003e80000000d55736167655265636f72646564000200060dd710212000",
    "00060dd71038036001000000000000000000000000000000010001000000057265712d3701ababababababababababab",
    "ababababababababababababababababababababab0000000f7b22756e697473223a22312e35227d1111111111111111",
    "1111111111111111111111111111111111111111111111110dfe2f38059cccca8cc72df4176d6343e2fdd0149181a271",
    "0dec70a9152748590000008f01000000000000000000000000000000020000000a637573746f6d65722d310000000000",
    "00000000000000000003e900000012437573746f6d6572526567697374657265640001ffffffffffffffff00060dd710",
    "3803600001000000000000000000000000000000030000000000000dfe2f38059cccca8cc72df4176d6343e2fdd01491",
    "81a2710dec70a915274859dc46f656d6414e1d1aca83750a4b83d406b3afd72aec2bf1ae47fd51100d39ee",
);

#[test]
fn canonical_bytes_v1_are_stable() {
    let ev = golden_event();
    assert_eq!(hex::encode(canonical_bytes(&ev)), GOLDEN_CANONICAL_HEX);
    assert_eq!(hex::encode(ev.hash), GOLDEN_HASH_HEX);
}

#[test]
fn chunk_v1_is_stable_and_readable() {
    let first = golden_event();
    let events = vec![first.clone(), second_event(&first)];
    assert_eq!(hex::encode(encode_chunk(&events)), GOLDEN_CHUNK_HEX);
    let stored = hex::decode(GOLDEN_CHUNK_HEX).unwrap();
    assert_eq!(decode_chunk(1_000, &stored).unwrap(), events);
    assert_eq!(verify_chain(events.clone(), [0x11; 32]), Ok(events[1].hash));
    assert_ne!(first.prev_hash, GENESIS_HASH);
}

/// Chunk encoding format 2 (LZ4-compressed records) of `golden_event()` then `second_event()`,
/// as the sled backend stores it. Stored bytes must stay readable forever: if
/// `chunk_v2_stored_bytes_stay_readable` fails, you broke the format.
const GOLDEN_CHUNK_V2_HEX: &str = concat!(
    "0200000000000003e8000000020000019ef11b000000c7010123456789abcdef00112233445566770000000f73756273",
    "6372697074696f6e2d34320000020010030500f110000003e80000000d55736167655265636f72646564000200060dd7",
    "10212000080040380360012a0007020020010012008f057265712d3701ab01000c008300ff017b22756e697473223a22",
    "312e35227d1101000cf0150dfe2f38059cccca8cc72df4176d6343e2fdd0149181a2710dec70a9152748590000008f82",
    "00080200f800020000000a637573746f6d65722d311b0093000003e900000012431e00d3526567697374657265640001",
    "ff010004eb0001da000802000328010f93000df011dc46f656d6414e1d1aca83750a4b83d406b3afd72aec2bf1ae47fd",
    "51100d39ee",
);

#[test]
fn chunk_v2_stored_bytes_stay_readable() {
    let first = golden_event();
    let events = vec![first.clone(), second_event(&first)];
    let stored = hex::decode(GOLDEN_CHUNK_V2_HEX).unwrap();
    assert_eq!(stored[0], 2, "format byte");
    assert_eq!(decode_chunk(1_000, &stored).unwrap(), events);
    // Hashes cover the canonical bytes, which format 2 leaves unchanged.
    assert_eq!(events[0].hash, first.hash);
    assert_eq!(hex::encode(events[0].hash), GOLDEN_HASH_HEX);
}

/// The writer's output. If only this fails (after an upgrade of the compressor), stored bytes
/// are still readable (the test above): re-pin the constant only then.
#[test]
fn chunk_v2_encoding_is_stable() {
    let first = golden_event();
    let events = vec![first.clone(), second_event(&first)];
    assert_eq!(hex::encode(encode_chunk_v2(&events)), GOLDEN_CHUNK_V2_HEX);
}
