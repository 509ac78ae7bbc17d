//! Where a replay stops, and the hash-chain head there.

use event_store::{ChainVerifier, EventStore, Position, GENESIS_HASH};
use jiff::Timestamp;

use crate::{ReplayError, Result};

/// Events read per chain-walk step.
const CHAIN_READ_EVENTS_MAX: usize = 4_096;

/// Where a replay stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cutoff {
    /// The events before this position.
    Position(Position),
    /// Every event recorded at or before this instant ("what the books said then").
    RecordedAt(Timestamp),
}

/// The position a replay to `cutoff` stops before (events `[0, end)` are replayed).
/// `recorded_at` never decreases along the log, so a recorded time is found by bisection.
pub async fn resolve(store: &impl EventStore, cutoff: Cutoff) -> Result<Position> {
    let head = store.head();
    match cutoff {
        Cutoff::Position(position) if position > head => {
            Err(ReplayError::BeyondHead { position, head })
        }
        Cutoff::Position(position) => Ok(position),
        Cutoff::RecordedAt(t) => {
            let limit_us = t.as_microsecond();
            let (mut lo, mut hi) = (0, head);
            // Invariant: events before `lo` are recorded at or before `t`, from `hi` after it.
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let event = store.read_all(mid, 1).await?;
                let recorded_us = event.first().map_or(i64::MAX, |e| e.recorded_at_us);
                if recorded_us <= limit_us {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            Ok(lo)
        }
    }
}

/// Walks the hash chain over `[0, end)`, recomputing every hash; returns the hash of the last
/// event (the genesis hash for an empty prefix), or the first broken link.
pub async fn chain_head(store: &impl EventStore, end: Position) -> Result<[u8; 32]> {
    let head = store.head();
    if end > head {
        return Err(ReplayError::BeyondHead { position: end, head });
    }
    let mut verifier = ChainVerifier::new(Some(0), GENESIS_HASH);
    let mut next: Position = 0;
    let rounds = end.div_ceil(CHAIN_READ_EVENTS_MAX as u64);
    for _ in 0..rounds {
        let want = usize::try_from(end - next).unwrap_or(usize::MAX).min(CHAIN_READ_EVENTS_MAX);
        let events = store.read_all(next, want).await?;
        for e in &events {
            verifier.push(e).map_err(ReplayError::Chain)?;
        }
        next += events.len() as u64;
        if events.is_empty() || next >= end {
            break;
        }
    }
    assert_eq!(next, end, "the chain walk covers the whole prefix");
    Ok(verifier.head_hash())
}
