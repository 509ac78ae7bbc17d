//! The gRPC services: `Streams.Append`, `Streams.Read` (stream reads and catch-up
//! subscriptions) and `ServerFeatures.GetSupportedMethods`. Everything else is UNIMPLEMENTED.

// tonic::Status is large, and the generated service traits return it everywhere.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::db::{Expect, Outcome, Proposed, StoredEvent};
use crate::pb::event_store::client as shared;
use crate::pb::event_store::client::server_features as features;
use crate::pb::event_store::client::streams as pb;
use crate::state::{Fault, State};

/// Messages buffered per read or subscription before the sender waits for the client.
pub const RESPONSE_BUFFER: usize = 64;
/// Events taken from the store under its lock at a time.
const PAGE_EVENTS: usize = 128;
/// The version the fake reports (the client only parses it; nothing depends on it).
pub const REPORTED_VERSION: &str = "24.10.0-accrual-esdb-fake";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct Streams {
    pub(crate) state: Arc<State>,
}

#[tonic::async_trait]
impl pb::streams_server::Streams for Streams {
    type ReadStream = ReceiverStream<Result<pb::ReadResp, Status>>;
    type BatchAppendStream = BoxStream<pb::BatchAppendResp>;

    async fn read(
        &self,
        request: Request<pb::ReadReq>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let read = ReadPlan::parse(request.into_inner())?;
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(read.run(self.state.clone(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn append(
        &self,
        request: Request<Streaming<pb::AppendReq>>,
    ) -> Result<Response<pb::AppendResp>, Status> {
        let (stream, expect, events) = receive_append(request.into_inner(), &self.state).await?;
        let fault = self.state.take_fault();
        if let Some(status) = fault.and_then(|f| self.state.refusal(f)) {
            return Err(status);
        }
        let outcome = self.state.append(&stream, expect, events);
        if fault == Some(Fault::LoseReply) {
            return Err(Status::unavailable(
                "esdb-fake: connection lost after the write (injected)",
            ));
        }
        Ok(Response::new(append_resp(outcome, expect)))
    }

    async fn delete(&self, _: Request<pb::DeleteReq>) -> Result<Response<pb::DeleteResp>, Status> {
        Err(Status::unimplemented("esdb-fake: Streams.Delete is not implemented"))
    }

    async fn tombstone(
        &self,
        _: Request<pb::TombstoneReq>,
    ) -> Result<Response<pb::TombstoneResp>, Status> {
        Err(Status::unimplemented("esdb-fake: Streams.Tombstone is not implemented"))
    }

    async fn batch_append(
        &self,
        _: Request<Streaming<pb::BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        Err(Status::unimplemented("esdb-fake: Streams.BatchAppend is not implemented"))
    }
}

// ---------------------------------------------------------------- append

async fn receive_append(
    mut input: Streaming<pb::AppendReq>,
    state: &State,
) -> Result<(String, Expect, Vec<Proposed>), Status> {
    use pb::append_req::Content;
    let options = match input.message().await?.and_then(|m| m.content) {
        Some(Content::Options(o)) => o,
        _ => return Err(Status::invalid_argument("the first append message must be options")),
    };
    let stream = stream_name(options.stream_identifier)?;
    let expect = expectation(options.expected_stream_revision)?;
    let (mut events, mut size) = (Vec::new(), 0usize);
    while let Some(message) = input.message().await? {
        let Some(Content::ProposedMessage(m)) = message.content else {
            return Err(Status::invalid_argument("options sent twice in one append"));
        };
        let event = proposed(m)?;
        size = size.saturating_add(event.size());
        events.push(event);
        if size > state.max_append_size {
            state.record_attempt(&stream, events.iter().map(|e| e.id).collect(), size);
            return Err(max_append_size_exceeded(state.max_append_size));
        }
    }
    state.record_attempt(&stream, events.iter().map(|e| e.id).collect(), size);
    Ok((stream, expect, events))
}

fn expectation(
    e: Option<pb::append_req::options::ExpectedStreamRevision>,
) -> Result<Expect, Status> {
    use pb::append_req::options::ExpectedStreamRevision as E;
    match e {
        Some(E::Revision(r)) => Ok(Expect::Exact(r)),
        Some(E::NoStream(_)) => Ok(Expect::NoStream),
        Some(E::Any(_)) => Ok(Expect::Any),
        Some(E::StreamExists(_)) => Ok(Expect::StreamExists),
        None => Err(Status::invalid_argument("append options without an expected revision")),
    }
}

fn proposed(m: pb::append_req::ProposedMessage) -> Result<Proposed, Status> {
    let id = m.id.map(uuid_from).transpose()?.ok_or_else(|| bad("proposed message without id"))?;
    let required = |key: &str| {
        m.metadata
            .get(key)
            .cloned()
            .ok_or_else(|| bad(&format!("required metadata {key:?} missing")))
    };
    Ok(Proposed {
        id,
        event_type: required("type")?,
        content_type: required("content-type")?,
        custom_metadata: m.custom_metadata,
        data: m.data,
    })
}

fn append_resp(outcome: Outcome, expect: Expect) -> pb::AppendResp {
    use pb::append_resp::{success, wrong_expected_version as wev, Result as R};
    let result = match outcome {
        Outcome::Success { last_revision, position } => R::Success(pb::append_resp::Success {
            current_revision_option: Some(match last_revision {
                Some(r) => success::CurrentRevisionOption::CurrentRevision(r),
                None => success::CurrentRevisionOption::NoStream(shared::Empty {}),
            }),
            position_option: Some(match position {
                Some(p) => success::PositionOption::Position(pb::append_resp::Position {
                    commit_position: p,
                    prepare_position: p,
                }),
                None => success::PositionOption::NoPosition(shared::Empty {}),
            }),
        }),
        Outcome::WrongExpectedVersion { current } => {
            R::WrongExpectedVersion(pb::append_resp::WrongExpectedVersion {
                current_revision_option: Some(match current {
                    Some(r) => wev::CurrentRevisionOption::CurrentRevision(r),
                    None => wev::CurrentRevisionOption::CurrentNoStream(shared::Empty {}),
                }),
                expected_revision_option: Some(match expect {
                    Expect::Exact(r) => wev::ExpectedRevisionOption::ExpectedRevision(r),
                    Expect::Any => wev::ExpectedRevisionOption::ExpectedAny(shared::Empty {}),
                    Expect::StreamExists => {
                        wev::ExpectedRevisionOption::ExpectedStreamExists(shared::Empty {})
                    }
                    Expect::NoStream => {
                        wev::ExpectedRevisionOption::ExpectedNoStream(shared::Empty {})
                    }
                }),
                ..Default::default()
            })
        }
    };
    pb::AppendResp { result: Some(result) }
}

fn max_append_size_exceeded(max: usize) -> Status {
    let mut status = Status::invalid_argument(format!("Maximum Append Size of {max} Exceeded."));
    let md = status.metadata_mut();
    md.insert("exception", MetadataValue::from_static("maximum-append-size-exceeded"));
    if let Ok(v) = MetadataValue::try_from(max.to_string()) {
        md.insert("maximum-append-size", v);
    }
    status
}

// ---------------------------------------------------------------- read

/// A parsed `Streams.Read` of one stream: a page, or a catch-up subscription.
struct ReadPlan {
    stream: String,
    from: Origin,
    count: Option<u64>,
    structured_ids: bool,
}

enum Origin {
    Start,
    /// Revision, inclusive for reads, exclusive for subscriptions (as the server treats it).
    Revision(u64),
    End,
}

impl ReadPlan {
    fn parse(req: pb::ReadReq) -> Result<ReadPlan, Status> {
        use pb::read_req::options::{
            stream_options::RevisionOption as Rev, uuid_option::Content as Ids, CountOption,
            StreamOption,
        };
        let o = req.options.ok_or_else(|| bad("read without options"))?;
        let s = match o.stream_option {
            Some(StreamOption::Stream(s)) => s,
            Some(StreamOption::All(_)) => return Err(unimplemented("reading $all")),
            None => return Err(bad("read without a stream")),
        };
        if o.read_direction != pb::read_req::options::ReadDirection::Forwards as i32 {
            return Err(unimplemented("backward reads"));
        }
        let from = match s.revision_option {
            Some(Rev::Start(_)) | None => Origin::Start,
            Some(Rev::Revision(r)) => Origin::Revision(r),
            Some(Rev::End(_)) => Origin::End,
        };
        let count = match o.count_option {
            Some(CountOption::Count(n)) => Some(n),
            Some(CountOption::Subscription(_)) => None,
            None => return Err(bad("read without a count or subscription option")),
        };
        let structured_ids =
            matches!(o.uuid_option.and_then(|u| u.content), Some(Ids::Structured(_)));
        let stream = stream_name(s.stream_identifier)?;
        Ok(ReadPlan { stream, from, count, structured_ids })
    }

    async fn run(self, state: Arc<State>, tx: mpsc::Sender<Result<pb::ReadResp, Status>>) {
        match self.count {
            Some(count) => self.read(&state, count, &tx).await,
            None => self.subscribe(&state, &tx).await,
        }
    }

    /// A page: the events in revision order, or `stream_not_found`.
    async fn read(
        &self,
        state: &State,
        count: u64,
        tx: &mpsc::Sender<Result<pb::ReadResp, Status>>,
    ) {
        let mut next = match self.from {
            Origin::Start => 0,
            Origin::Revision(r) => r,
            Origin::End => state.db.lock().len(&self.stream),
        };
        let mut left = count;
        while left > 0 {
            let max = usize::try_from(left).unwrap_or(usize::MAX).min(PAGE_EVENTS);
            let Some(page) = state.db.lock().page(&self.stream, next, max) else {
                let _ = tx.send(Ok(stream_not_found(&self.stream))).await;
                return;
            };
            if page.is_empty() {
                return;
            }
            next += page.len() as u64;
            left -= page.len() as u64;
            for e in page {
                if tx.send(Ok(read_event(&e, self.structured_ids))).await.is_err() {
                    return;
                }
            }
        }
    }

    /// A catch-up subscription: confirmation, the stored events after the start, `caught_up`,
    /// then live events as they are written. Ends only when the client goes away.
    async fn subscribe(&self, state: &State, tx: &mpsc::Sender<Result<pb::ReadResp, Status>>) {
        let mut changes = state.changes.subscribe();
        let mut next = match self.from {
            Origin::Start => 0,
            Origin::Revision(r) => r.saturating_add(1),
            Origin::End => state.db.lock().len(&self.stream),
        };
        if tx.send(Ok(confirmation())).await.is_err() {
            return;
        }
        let mut live = false;
        loop {
            changes.borrow_and_update();
            let page = state.db.lock().page(&self.stream, next, PAGE_EVENTS).unwrap_or_default();
            if page.is_empty() {
                if !live && tx.send(Ok(caught_up())).await.is_err() {
                    return;
                }
                live = true;
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
                continue;
            }
            next += page.len() as u64;
            for e in page {
                if tx.send(Ok(read_event(&e, self.structured_ids))).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn read_event(e: &StoredEvent, structured_ids: bool) -> pb::ReadResp {
    use pb::read_resp::read_event::{Position, RecordedEvent};
    let metadata = HashMap::from([
        ("type".to_owned(), e.event_type.clone()),
        ("content-type".to_owned(), e.content_type.clone()),
        ("created".to_owned(), e.created_ticks.to_string()),
    ]);
    let event = RecordedEvent {
        id: Some(uuid_to(e.id, structured_ids)),
        stream_identifier: Some(shared::StreamIdentifier {
            stream_name: e.stream.as_bytes().to_vec(),
        }),
        stream_revision: e.revision,
        prepare_position: e.position,
        commit_position: e.position,
        metadata,
        custom_metadata: e.custom_metadata.clone(),
        data: e.data.clone(),
    };
    let read = pb::read_resp::ReadEvent {
        event: Some(event),
        link: None,
        position: Some(Position::CommitPosition(e.position)),
    };
    pb::ReadResp { content: Some(pb::read_resp::Content::Event(read)) }
}

fn stream_not_found(stream: &str) -> pb::ReadResp {
    let id = shared::StreamIdentifier { stream_name: stream.as_bytes().to_vec() };
    let nf = pb::read_resp::StreamNotFound { stream_identifier: Some(id) };
    pb::ReadResp { content: Some(pb::read_resp::Content::StreamNotFound(nf)) }
}

fn confirmation() -> pb::ReadResp {
    let c = pb::read_resp::SubscriptionConfirmation { subscription_id: Uuid::new_v4().to_string() };
    pb::ReadResp { content: Some(pb::read_resp::Content::Confirmation(c)) }
}

fn caught_up() -> pb::ReadResp {
    pb::ReadResp { content: Some(pb::read_resp::Content::CaughtUp(pb::read_resp::CaughtUp {})) }
}

// ---------------------------------------------------------------- features

pub struct Features;

#[tonic::async_trait]
impl features::server_features_server::ServerFeatures for Features {
    async fn get_supported_methods(
        &self,
        _: Request<shared::Empty>,
    ) -> Result<Response<features::SupportedMethods>, Status> {
        let method = |name: &str, service: &str| features::SupportedMethod {
            method_name: name.into(),
            service_name: service.into(),
            features: vec![],
        };
        // Only what is implemented: no batchappend, so the client never uses BatchAppend.
        let methods = vec![
            method("read", "event_store.client.streams.streams"),
            method("append", "event_store.client.streams.streams"),
            method("getsupportedmethods", "event_store.client.server_features.serverfeatures"),
        ];
        let version = REPORTED_VERSION.to_owned();
        Ok(Response::new(features::SupportedMethods {
            methods,
            event_store_server_version: version,
        }))
    }
}

// ---------------------------------------------------------------- helpers

fn stream_name(id: Option<shared::StreamIdentifier>) -> Result<String, Status> {
    let id = id.ok_or_else(|| bad("no stream identifier"))?;
    let name = String::from_utf8(id.stream_name).map_err(|_| bad("stream name is not UTF-8"))?;
    if name.is_empty() {
        return Err(bad("empty stream name"));
    }
    Ok(name)
}

fn uuid_from(u: shared::Uuid) -> Result<Uuid, Status> {
    match u.value {
        Some(shared::uuid::Value::Structured(s)) => {
            let hi = u128::from(s.most_significant_bits as u64) << 64;
            Ok(Uuid::from_u128(hi | u128::from(s.least_significant_bits as u64)))
        }
        Some(shared::uuid::Value::String(s)) => s.parse().map_err(|_| bad("bad uuid")),
        None => Err(bad("empty uuid")),
    }
}

fn uuid_to(id: Uuid, structured: bool) -> shared::Uuid {
    let value = if structured {
        let n = id.as_u128();
        shared::uuid::Value::Structured(shared::uuid::Structured {
            most_significant_bits: (n >> 64) as u64 as i64,
            least_significant_bits: n as u64 as i64,
        })
    } else {
        shared::uuid::Value::String(id.to_string())
    };
    shared::Uuid { value: Some(value) }
}

fn bad(m: &str) -> Status {
    Status::invalid_argument(format!("esdb-fake: {m}"))
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("esdb-fake: {what} is not implemented"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_round_trip_in_both_wire_forms() {
        let id = Uuid::from_u128(0xfedc_ba98_7654_3210_0123_4567_89ab_cdef);
        assert_eq!(uuid_from(uuid_to(id, true)).unwrap(), id);
        assert_eq!(uuid_from(uuid_to(id, false)).unwrap(), id);
    }
}
