//! The JSON form of the public event (`FeedEvent`, the body of a webhook delivery): serde on
//! the generated types (see build.rs), timestamps as RFC 3339 strings in UTC with nanoseconds
//! only when present, `null` when absent.

use serde::Serializer;

/// Serializes an optional protobuf `Timestamp` as an RFC 3339 string (`null` when unset).
pub fn timestamp<S: Serializer>(
    t: &Option<prost_types::Timestamp>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        None => s.serialize_none(),
        Some(t) => s.serialize_str(&t.to_string()),
    }
}
