//! Pure mappings between Accrual's log and the ESDB log stream: the stream revision of a chunk,
//! expected revisions, where a subscription starts, and deterministic event ids.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Position;

/// ESDB event type of a stored chunk (the chunk encoding of [`crate::envelope::encode_chunk`]).
pub const CHUNK_EVENT_TYPE: &str = "accrual.chunk.v1";

/// UUIDv5 namespace of chunk event ids (a fixed random UUID; never change it: retried appends
/// are recognised by their ids).
pub const CHUNK_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_3f0e_8a52_4c1d_9d0e_57a1_c0de_0001);

/// A position in ESDB's `$all` (both halves, as the server reports them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition {
    pub commit: u64,
    pub prepare: u64,
}

/// What the log stream must look like for an append to go through: the stream revision of the
/// chunk the append will start with is `next_revision` (= chunks already in the stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// The log stream does not exist yet (`next_revision == 0`).
    NoStream,
    /// The last chunk of the log stream has this revision.
    Exact(u64),
}

impl Expected {
    /// The expectation for an append whose first chunk gets revision `next_revision`.
    pub fn for_next_revision(next_revision: u64) -> Expected {
        match next_revision.checked_sub(1) {
            None => Expected::NoStream,
            Some(last) => Expected::Exact(last),
        }
    }

    /// The revision the first appended chunk gets.
    pub fn next_revision(self) -> u64 {
        match self {
            Expected::NoStream => 0,
            Expected::Exact(last) => last + 1,
        }
    }

    /// The client's `ExpectedRevision`.
    pub fn to_client(self) -> eventstore::ExpectedRevision {
        match self {
            Expected::NoStream => eventstore::ExpectedRevision::NoStream,
            Expected::Exact(last) => eventstore::ExpectedRevision::Exact(last),
        }
    }
}

/// Where a catch-up subscription to the log stream starts so that the first event it delivers
/// is revision `next_revision` (the client's start position is exclusive).
pub fn subscription_start(next_revision: u64) -> eventstore::StreamPosition<u64> {
    match next_revision.checked_sub(1) {
        None => eventstore::StreamPosition::Start,
        Some(last_seen) => eventstore::StreamPosition::Position(last_seen),
    }
}

/// The ESDB event id of a chunk: UUIDv5 of (log stream, first position, SHA-256 of the bytes).
/// The same chunk retried after a lost reply gets the same id, so ESDB's idempotent-write check
/// (same ids at the same expected revision) acknowledges the retry instead of writing it twice,
/// and a writer that reads the stream back can tell its own chunk from another node's.
pub fn chunk_event_id(log_stream: &str, first_position: Position, bytes: &[u8]) -> Uuid {
    let digest = Sha256::digest(bytes);
    let mut name = Vec::with_capacity(log_stream.len() + 1 + 8 + digest.len());
    name.extend_from_slice(log_stream.as_bytes());
    name.push(0);
    name.extend_from_slice(&first_position.to_be_bytes());
    name.extend_from_slice(&digest);
    Uuid::new_v5(&CHUNK_ID_NAMESPACE, &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_revision_follows_the_chunk_count() {
        assert_eq!(Expected::for_next_revision(0), Expected::NoStream);
        assert_eq!(Expected::for_next_revision(1), Expected::Exact(0));
        assert_eq!(Expected::for_next_revision(42), Expected::Exact(41));
        for n in [0, 1, 7, u64::MAX] {
            assert_eq!(Expected::for_next_revision(n).next_revision(), n);
        }
        assert_eq!(Expected::NoStream.to_client(), eventstore::ExpectedRevision::NoStream);
        assert_eq!(Expected::Exact(9).to_client(), eventstore::ExpectedRevision::Exact(9));
    }

    #[test]
    fn subscriptions_start_before_the_next_revision() {
        assert_eq!(subscription_start(0), eventstore::StreamPosition::Start);
        assert_eq!(subscription_start(10), eventstore::StreamPosition::Position(9));
    }

    #[test]
    fn chunk_ids_are_deterministic_and_distinguish_every_input() {
        let id = chunk_event_id("accrual-log", 5, b"chunk");
        assert_eq!(id, chunk_event_id("accrual-log", 5, b"chunk"), "a retry gets the same id");
        assert_eq!(id.get_version_num(), 5);
        assert_ne!(id, chunk_event_id("accrual-log", 6, b"chunk"));
        assert_ne!(id, chunk_event_id("accrual-log", 5, b"chunK"));
        assert_ne!(id, chunk_event_id("accrual-log2", 5, b"chunk"));
        // The separator keeps ("ab", ..) and ("a", "b"..) apart.
        assert_ne!(chunk_event_id("a", 0, b""), chunk_event_id("", 0, b""));
    }

    #[test]
    fn chunk_ids_are_pinned() {
        // A persisted boundary: changing the derivation breaks retry recognition across
        // versions. Values computed independently (Python: SHA-1 of namespace ‖ name, RFC 4122).
        let pinned = [
            (0, &b""[..], "6763c819-c0c0-54c6-9ca1-fbf1814130c6"),
            (5, &b"chunk"[..], "986b002c-3fd7-5283-a46f-2a08ff113510"),
        ];
        for (first, bytes, id) in pinned {
            assert_eq!(chunk_event_id("accrual-log", first, bytes).to_string(), id);
        }
    }
}
