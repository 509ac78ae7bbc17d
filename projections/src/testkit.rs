//! Test support shared by this crate's unit tests, its integration tests and other crates'
//! tests: appending domain events to a log exactly as the write side frames them.

use domain::events::{Event, SCHEMA_VERSION};
use event_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent, Position, StreamWrite};

/// Appends one event to its stream (any version) and returns its position. Panics on a store
/// error: for tests only.
pub async fn append_event(store: &impl EventStore, event: &Event) -> Position {
    let new = NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: event.type_name().into(),
        schema_version: SCHEMA_VERSION,
        occurred_at_us: event.occurred_at().map_or(0, |t| t.as_microsecond()),
        causation_id: None,
        correlation_id: None,
        payload: event.encode(),
    };
    let write =
        StreamWrite { stream: event.stream(), expected: ExpectedVersion::Any, events: vec![new] };
    let req = AppendRequest { writes: vec![write], idempotency: None, expected_position: None };
    store.append(req).await.expect("test append").last_position
}
