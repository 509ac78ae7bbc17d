//! Hash-chain verification (used by `audit verify`).
//!
//! For every event, in order: its position must be the next one (a gap means events were
//! removed, a position out of order means events were reordered), its `prev_hash` must be the
//! previous event's hash, its `hash` must equal `SHA-256(prev_hash || canonical_bytes)`, and its
//! `recorded_at` must not be earlier than the previous event's. The first failing check is
//! reported as a [`ChainBreak`].

use crate::envelope::compute_hash;
use crate::{Position, RecordedEvent};

/// Which check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakKind {
    /// The event at this point of the sequence carries another position: events were removed,
    /// duplicated or reordered.
    Position { expected: Position, found: Position },
    /// `prev_hash` is not the previous event's hash.
    PrevHash { expected: [u8; 32], found: [u8; 32] },
    /// The stored hash is not the hash of the envelope: the event was altered.
    Hash { expected: [u8; 32], found: [u8; 32] },
    /// `recorded_at` went back in time.
    RecordedAt { previous: i64, found: i64 },
}

/// The first broken link of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("hash chain broken at position {position}: {}", describe(.kind))]
pub struct ChainBreak {
    /// The position where the sequence should continue correctly (for [`BreakKind::Position`],
    /// the expected position; otherwise the event's position).
    pub position: Position,
    pub kind: BreakKind,
}

fn describe(kind: &BreakKind) -> String {
    match kind {
        BreakKind::Position { expected, found } if found > expected => {
            format!("expected position {expected}, found {found} (events missing or reordered)")
        }
        BreakKind::Position { expected, found } => {
            format!("expected position {expected}, found {found} (events duplicated or reordered)")
        }
        BreakKind::PrevHash { expected, found } => format!(
            "prev_hash {} does not match the previous hash {}",
            hex::encode(found),
            hex::encode(expected)
        ),
        BreakKind::Hash { expected, found } => format!(
            "stored hash {} but the envelope hashes to {} (event altered)",
            hex::encode(found),
            hex::encode(expected)
        ),
        BreakKind::RecordedAt { previous, found } => {
            format!("recorded_at {found} is earlier than the previous {previous}")
        }
    }
}

/// Incremental verifier, for logs read in batches.
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    next_position: Option<Position>,
    prev_hash: [u8; 32],
    last_recorded_at: i64,
}

impl ChainVerifier {
    /// Starts after the event whose hash is `prev_hash` ([`crate::GENESIS_HASH`] for the whole
    /// log). With `start_position = None` the first event's position is taken as the start.
    pub fn new(start_position: Option<Position>, prev_hash: [u8; 32]) -> Self {
        ChainVerifier { next_position: start_position, prev_hash, last_recorded_at: i64::MIN }
    }

    /// Checks the next event.
    pub fn push(&mut self, ev: &RecordedEvent) -> Result<(), ChainBreak> {
        let expected = self.next_position.unwrap_or(ev.position);
        if ev.position != expected {
            let kind = BreakKind::Position { expected, found: ev.position };
            return Err(ChainBreak { position: expected, kind });
        }
        let fail = |kind| Err(ChainBreak { position: ev.position, kind });
        if ev.prev_hash != self.prev_hash {
            return fail(BreakKind::PrevHash { expected: self.prev_hash, found: ev.prev_hash });
        }
        let computed = compute_hash(ev);
        if computed != ev.hash {
            return fail(BreakKind::Hash { expected: computed, found: ev.hash });
        }
        if ev.recorded_at_us < self.last_recorded_at {
            let previous = self.last_recorded_at;
            return fail(BreakKind::RecordedAt { previous, found: ev.recorded_at_us });
        }
        self.next_position = Some(expected + 1);
        self.prev_hash = ev.hash;
        self.last_recorded_at = ev.recorded_at_us;
        Ok(())
    }

    /// Hash of the last verified event (the start hash if none).
    pub fn head_hash(&self) -> [u8; 32] {
        self.prev_hash
    }

    /// Position expected next (`None` if nothing was verified and no start was given).
    pub fn next_position(&self) -> Option<Position> {
        self.next_position
    }
}

/// Verifies a contiguous run of events starting after the event whose hash is
/// `start_prev_hash`; returns the head hash (the last event's hash, or `start_prev_hash` when
/// empty). Positions must be contiguous from the first event's position; when `start_prev_hash`
/// is [`crate::GENESIS_HASH`] the first position must be 0.
pub fn verify_chain<I: IntoIterator<Item = RecordedEvent>>(
    events: I,
    start_prev_hash: [u8; 32],
) -> Result<[u8; 32], ChainBreak> {
    let start = (start_prev_hash == crate::GENESIS_HASH).then_some(0);
    let mut verifier = ChainVerifier::new(start, start_prev_hash);
    for ev in events {
        verifier.push(&ev)?;
    }
    Ok(verifier.head_hash())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_chain_returns_the_start_hash() {
        assert_eq!(verify_chain(Vec::new(), [7; 32]), Ok([7; 32]));
    }

    #[test]
    fn genesis_chain_must_start_at_zero() {
        let mut ev = RecordedEvent {
            event_id: uuid::Uuid::nil(),
            stream: "s".into(),
            stream_version: 0,
            position: 1,
            event_type: "T".into(),
            schema_version: 1,
            occurred_at_us: 0,
            recorded_at_us: 0,
            causation_id: None,
            correlation_id: None,
            idempotency_key: None,
            idempotency_digest: None,
            payload: vec![],
            prev_hash: crate::GENESIS_HASH,
            hash: [0; 32],
        };
        ev.hash = compute_hash(&ev);
        let err = verify_chain(vec![ev], crate::GENESIS_HASH).unwrap_err();
        assert_eq!(err.kind, BreakKind::Position { expected: 0, found: 1 });
        assert!(err.to_string().contains("missing or reordered"), "{err}");
    }
}
