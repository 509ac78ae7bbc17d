//! The fake's storage: streams of events in memory, one global `$all` order, ESDB's append
//! rules (expected revision, idempotent retry of the same event ids). No I/O, no durability.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

/// An event as the fake stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: Uuid,
    pub stream: String,
    pub revision: u64,
    /// Its place in `$all` (the fake reports it as both commit and prepare position).
    pub position: u64,
    pub event_type: String,
    pub content_type: String,
    /// 100 ns ticks since the Unix epoch, as the server's `created` metadata.
    pub created_ticks: u64,
    pub custom_metadata: Vec<u8>,
    pub data: Vec<u8>,
}

/// An event offered by an append.
#[derive(Clone, Debug)]
pub struct Proposed {
    pub id: Uuid,
    pub event_type: String,
    pub content_type: String,
    pub custom_metadata: Vec<u8>,
    pub data: Vec<u8>,
}

impl Proposed {
    /// Its weight against the maximum append size (data, metadata and type, roughly as the
    /// server counts an event's size on disk).
    pub fn size(&self) -> usize {
        self.data.len() + self.custom_metadata.len() + 2 * self.event_type.len()
    }
}

/// An append's expected revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Any,
    NoStream,
    StreamExists,
    /// The stream's last event has this revision.
    Exact(u64),
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written, or recognised as a retry of events already written (then nothing new is
    /// written and the original write's last revision and position are reported).
    Success { last_revision: Option<u64>, position: Option<u64> },
    /// The expectation failed and the events are not a retry of a completed write.
    WrongExpectedVersion { current: Option<u64> },
}

/// Every stream, and where `$all` goes on.
#[derive(Default)]
pub struct Db {
    streams: HashMap<String, Vec<Arc<StoredEvent>>>,
    next_position: u64,
}

impl Db {
    /// The last revision of `stream` (`None`: no such stream).
    pub fn current(&self, stream: &str) -> Option<u64> {
        self.len(stream).checked_sub(1)
    }

    pub fn len(&self, stream: &str) -> u64 {
        self.streams.get(stream).map_or(0, |s| s.len() as u64)
    }

    /// Up to `max` events of `stream` from revision `from` on (`None`: no such stream).
    pub fn page(&self, stream: &str, from: u64, max: usize) -> Option<Vec<Arc<StoredEvent>>> {
        let events = self.streams.get(stream)?;
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(events.len());
        let to = from.saturating_add(max).min(events.len());
        Some(events[from..to].to_vec())
    }

    /// Appends atomically if the expectation holds; recognises a retry of a completed write.
    pub fn append(&mut self, stream: &str, expect: Expect, events: Vec<Proposed>) -> Outcome {
        let current = self.current(stream);
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        let holds = match expect {
            Expect::Any => true,
            Expect::NoStream => current.is_none(),
            Expect::StreamExists => current.is_some(),
            Expect::Exact(r) => current == Some(r),
        };
        if let Some(done) = self.already_written(stream, expect, &ids) {
            return done;
        }
        if !holds {
            return Outcome::WrongExpectedVersion { current };
        }
        if events.is_empty() {
            return Outcome::Success { last_revision: current, position: None };
        }
        self.write(stream, events, created_ticks())
    }

    /// ESDB's idempotency: for an exact expectation (or no stream), the same ids stored right
    /// after the expected revision; for any / stream exists, the same ids stored in a row
    /// anywhere in the stream (the server uses a cache of recent ids for these).
    fn already_written(&self, stream: &str, expect: Expect, ids: &[Uuid]) -> Option<Outcome> {
        let stored = self.streams.get(stream)?;
        let first = *ids.first()?;
        let from = match expect {
            Expect::NoStream => 0,
            Expect::Exact(r) => usize::try_from(r).ok()?.checked_add(1)?,
            Expect::Any | Expect::StreamExists => stored.iter().position(|e| e.id == first)?,
        };
        let run = stored.get(from..from.checked_add(ids.len())?)?;
        if !run.iter().zip(ids).all(|(e, id)| e.id == *id) {
            return None;
        }
        let last = run.last()?;
        Some(Outcome::Success { last_revision: Some(last.revision), position: Some(last.position) })
    }

    fn write(&mut self, stream: &str, events: Vec<Proposed>, created_ticks: u64) -> Outcome {
        let mut position = self.next_position;
        let stored = self.streams.entry(stream.to_owned()).or_default();
        for p in events {
            position = self.next_position;
            // Byte-like positions: increasing, not dense (as in a real transaction log).
            self.next_position += 64 + p.size() as u64;
            let revision = stored.len() as u64;
            stored.push(Arc::new(StoredEvent {
                id: p.id,
                stream: stream.to_owned(),
                revision,
                position,
                event_type: p.event_type,
                content_type: p.content_type,
                created_ticks,
                custom_metadata: p.custom_metadata,
                data: p.data,
            }));
        }
        let last_revision = stored.len() as u64 - 1;
        Outcome::Success { last_revision: Some(last_revision), position: Some(position) }
    }
}

fn created_ticks() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| (d.as_nanos() / 100) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u128) -> Proposed {
        Proposed {
            id: Uuid::from_u128(n),
            event_type: "t".into(),
            content_type: "application/octet-stream".into(),
            custom_metadata: vec![],
            data: vec![n as u8],
        }
    }

    fn ok(last: u64) -> impl Fn(Outcome) -> bool {
        move |o| matches!(o, Outcome::Success { last_revision: Some(l), .. } if l == last)
    }

    #[test]
    fn expectations_are_checked() {
        let mut db = Db::default();
        let wrong = |c| Outcome::WrongExpectedVersion { current: c };
        assert_eq!(db.append("s", Expect::StreamExists, vec![ev(1)]), wrong(None));
        assert_eq!(db.append("s", Expect::Exact(0), vec![ev(1)]), wrong(None));
        assert!(ok(1)(db.append("s", Expect::NoStream, vec![ev(1), ev(2)])));
        assert_eq!(db.append("s", Expect::NoStream, vec![ev(3)]), wrong(Some(1)));
        assert_eq!(db.append("s", Expect::Exact(0), vec![ev(3)]), wrong(Some(1)));
        assert!(ok(2)(db.append("s", Expect::Exact(1), vec![ev(3)])));
        assert!(ok(3)(db.append("s", Expect::Any, vec![ev(4)])));
        assert!(ok(4)(db.append("s", Expect::StreamExists, vec![ev(5)])));
        let ids: Vec<u128> = db.page("s", 0, 10).unwrap().iter().map(|e| e.id.as_u128()).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        assert!(db.page("nope", 0, 10).is_none());
    }

    #[test]
    fn a_retry_of_a_completed_write_is_acknowledged_not_repeated() {
        let mut db = Db::default();
        let first = db.append("s", Expect::NoStream, vec![ev(1), ev(2)]);
        assert_eq!(db.append("s", Expect::NoStream, vec![ev(1), ev(2)]), first, "same reply");
        db.append("s", Expect::Exact(1), vec![ev(3)]);
        let again = db.append("s", Expect::Exact(1), vec![ev(3)]);
        assert!(ok(2)(again));
        assert!(ok(2)(db.append("s", Expect::Any, vec![ev(3)])));
        assert_eq!(db.len("s"), 3, "nothing written twice");
        // Only part of the ids match: a conflict, not a retry.
        let partial = db.append("s", Expect::Exact(1), vec![ev(3), ev(9)]);
        assert_eq!(partial, Outcome::WrongExpectedVersion { current: Some(2) });
    }

    #[test]
    fn positions_increase_across_streams() {
        let mut db = Db::default();
        db.append("a", Expect::Any, vec![ev(1)]);
        db.append("b", Expect::Any, vec![ev(2), ev(3)]);
        let a = db.page("a", 0, 9).unwrap()[0].position;
        let b: Vec<u64> = db.page("b", 0, 9).unwrap().iter().map(|e| e.position).collect();
        assert!(a < b[0] && b[0] < b[1]);
    }
}
