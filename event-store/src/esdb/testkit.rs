//! Test support shared by the backend's unit tests (over [`super::MemoryLog`]) and the wire
//! tests (over `esdb-fake`), like [`crate::conformance`]: for tests only.

use super::EsdbStore;
use crate::conformance::new_event;
use crate::{AppendRequest, EventStore, ExpectedVersion, StoreError, StreamWrite};

/// A request of one event (payload `tag`) to `stream`.
pub fn one(stream: &str, expected: ExpectedVersion, tag: &str) -> AppendRequest {
    let events = vec![new_event("T", tag.as_bytes())];
    AppendRequest {
        writes: vec![StreamWrite { stream: stream.into(), expected, events }],
        idempotency: None,
        expected_position: None,
    }
}

/// Appends one event to the contended stream `hot` at its current version, catching up with
/// the other nodes and retrying (at most 10,000 times) while another node got there first.
/// Panics on any other error.
pub async fn append_hot(store: &EsdbStore, tag: &str) {
    for _ in 0..10_000 {
        let expected =
            store.stream_version("hot").map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        match store.append(one("hot", expected, tag)).await {
            Ok(_) => return,
            Err(StoreError::WrongExpectedVersion { .. }) => {
                let _ = store.catch_up().await;
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("append {tag}: {e}"),
        }
    }
    panic!("append {tag} never went through");
}
