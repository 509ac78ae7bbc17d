//! Snapshots of a projection's in-memory state (the journal's usage meter), stored under the
//! meta key `\0state` of the projection's own tree in the same sled batch as the checkpoint
//! they belong to (docs/decisions/0028-journal-meter-snapshot.md).
//!
//! A snapshot is an optimisation, never a source of truth. It records the position `P` it
//! covers (events `[0, P)`, the checkpoint committed with it) and the hash of event `P - 1`,
//! and is checked against the checkpoint and the log before it is used:
//!
//! ```text
//! magic "ACRLPSS1" (8 bytes) | format version u32 BE | P u64 BE | hash of event P-1 (32 bytes)
//!   | SHA-256 of the bytes before it and the payload (32 bytes) | payload
//! ```
//!
//! The payload is the projection's own ([`crate::Projection::save_state`]; it carries its own
//! format version). Nothing here panics on bad bytes: every defect is an `Err(reason)`.

use event_store::Position;
use sha2::{Digest as _, Sha256};

const MAGIC: &[u8; 8] = b"ACRLPSS1";
/// Layout of the frame above. Bump it when it changes: an unknown version is ignored.
pub const FRAME_FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 8 + 32 + 32;

/// What a snapshot says it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Covers {
    /// Events `[0, position)`.
    pub position: Position,
    /// Hash of the log's event `position - 1`.
    pub last_hash: [u8; 32],
}

/// Frames `payload` as a snapshot covering `covers`.
pub fn encode(covers: Covers, payload: &[u8]) -> Vec<u8> {
    assert!(covers.position > 0, "a snapshot covers at least one event");
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FRAME_FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&covers.position.to_be_bytes());
    out.extend_from_slice(&covers.last_hash);
    let sum = checksum(&out, payload);
    out.extend_from_slice(&sum);
    out.extend_from_slice(payload);
    out
}

/// Checks a snapshot's framing and checksum; returns what it covers and its payload.
pub fn decode(bytes: &[u8]) -> Result<(Covers, &[u8]), String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!(
            "truncated: {} bytes, the header alone is {HEADER_BYTES}",
            bytes.len()
        ));
    }
    let (head, payload) = bytes.split_at(HEADER_BYTES);
    if &head[..8] != MAGIC {
        return Err("corrupt: not a projection state snapshot (bad magic)".into());
    }
    let version = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
    if version != FRAME_FORMAT_VERSION {
        return Err(format!(
            "unknown frame format version {version} (this build reads {FRAME_FORMAT_VERSION})"
        ));
    }
    if checksum(&head[..52], payload) != head[52..84] {
        return Err("corrupt: the SHA-256 does not match the header and payload".into());
    }
    let position = u64::from_be_bytes(head[12..20].try_into().expect("8 bytes"));
    if position == 0 {
        return Err("corrupt: a snapshot at position 0".into());
    }
    let last_hash = head[20..52].try_into().expect("32 bytes");
    Ok((Covers { position, last_hash }, payload))
}

fn checksum(fields: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(fields);
    hasher.update(payload);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode(Covers { position: 42, last_hash: [7; 32] }, b"payload")
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let (covers, payload) = decode(&bytes).unwrap();
        assert_eq!(covers, Covers { position: 42, last_hash: [7; 32] });
        assert_eq!(payload, b"payload");
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_refused() {
        let bytes = sample();
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[at] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "byte {at} bit {bit}");
            }
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
    }

    #[test]
    fn reasons_name_the_defect() {
        let mut other = sample();
        other[8..12].copy_from_slice(&9u32.to_be_bytes());
        assert!(decode(&other).unwrap_err().contains("unknown frame format version 9"));
        assert!(decode(b"short").unwrap_err().starts_with("truncated"));
        let mut magic = sample();
        magic[0] = b'X';
        assert!(decode(&magic).unwrap_err().contains("bad magic"));
        let mut flipped = sample();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode(&flipped).unwrap_err().contains("SHA-256"));
    }
}
