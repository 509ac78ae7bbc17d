//! The log stream as the backend sees it: append chunks at an expected revision, read chunks
//! from a revision, follow new chunks. [`EsdbLog`] talks to EventStoreDB through the
//! `eventstore` client; [`super::memory_log::MemoryLog`] is the same contract in memory (unit
//! tests, fault injection).

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use uuid::Uuid;

use super::errors::{classify, Failure};
use super::mapping::{subscription_start, Expected, LogPosition, CHUNK_EVENT_TYPE};

/// A chunk to append: its event id and bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutChunk {
    pub event_id: Uuid,
    pub bytes: Vec<u8>,
}

/// A chunk as stored in the log stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredChunk {
    /// Its revision in the log stream (= its ordinal among Accrual's chunks).
    pub revision: u64,
    pub event_id: Uuid,
    pub bytes: Vec<u8>,
    /// Its place in `$all`, when the server reported it.
    pub log_position: Option<LogPosition>,
}

/// The size of an append of `chunks` as EventStoreDB counts it against its `MaxAppendSize`
/// (per event: data + custom metadata + 2 × event type length; chunks carry no metadata).
pub fn server_append_size(chunks: &[OutChunk]) -> usize {
    chunks.iter().map(|c| c.bytes.len() + 2 * CHUNK_EVENT_TYPE.len()).sum()
}

/// Largest page of one read call.
pub const READ_PAGE_CHUNKS_MAX: usize = 512;

/// One log stream.
#[async_trait]
pub trait ChunkLog: Send + Sync + 'static {
    /// Appends `chunks` atomically if the stream is at `expected`; returns the `$all` position
    /// of the write. Exactly one attempt (the caller retries).
    async fn append(
        &self,
        expected: Expected,
        chunks: &[OutChunk],
    ) -> Result<Option<LogPosition>, Failure>;
    /// Chunks with revision ≥ `from_revision`, at most `max_count` (≤ [`READ_PAGE_CHUNKS_MAX`]).
    async fn read(&self, from_revision: u64, max_count: usize)
        -> Result<Vec<StoredChunk>, Failure>;
    /// Chunks from `from_revision` on, live. Ends or fails when the connection does.
    fn follow(&self, from_revision: u64) -> BoxStream<'static, Result<StoredChunk, Failure>>;
}

/// The log stream on an EventStoreDB / KurrentDB server.
pub struct EsdbLog {
    client: eventstore::Client,
    stream: String,
}

impl EsdbLog {
    /// A client for `connection` (validated by [`super::EsdbConfig::parse`]); connects lazily.
    pub fn connect(connection: &str, stream: &str) -> Result<EsdbLog, Failure> {
        let settings: eventstore::ClientSettings =
            connection.parse().map_err(|e| Failure::Permanent(format!("{e}")))?;
        let client = eventstore::Client::new(settings)
            .map_err(|e| Failure::Permanent(format!("cannot create the client: {e}")))?;
        Ok(EsdbLog { client, stream: stream.to_owned() })
    }
}

fn to_event_data(chunk: &OutChunk) -> eventstore::EventData {
    eventstore::EventData::binary(CHUNK_EVENT_TYPE, bytes::Bytes::from(chunk.bytes.clone()))
        .id(chunk.event_id)
}

fn from_resolved(event: &eventstore::ResolvedEvent) -> Result<StoredChunk, Failure> {
    let e = event.get_original_event();
    if e.event_type != CHUNK_EVENT_TYPE {
        return Err(Failure::Permanent(format!(
            "log stream {} holds a foreign event type {:?} at revision {}",
            e.stream_id, e.event_type, e.revision
        )));
    }
    Ok(StoredChunk {
        revision: e.revision,
        event_id: e.id,
        bytes: e.data.to_vec(),
        log_position: Some(LogPosition { commit: e.position.commit, prepare: e.position.prepare }),
    })
}

#[async_trait]
impl ChunkLog for EsdbLog {
    async fn append(
        &self,
        expected: Expected,
        chunks: &[OutChunk],
    ) -> Result<Option<LogPosition>, Failure> {
        let options =
            eventstore::AppendToStreamOptions::default().expected_revision(expected.to_client());
        let events: Vec<eventstore::EventData> = chunks.iter().map(to_event_data).collect();
        let result = self
            .client
            .append_to_stream(self.stream.as_str(), &options, events)
            .await
            .map_err(|e| classify(&e))?;
        let p = result.position;
        Ok(Some(LogPosition { commit: p.commit, prepare: p.prepare }))
    }

    async fn read(
        &self,
        from_revision: u64,
        max_count: usize,
    ) -> Result<Vec<StoredChunk>, Failure> {
        let max_count = max_count.min(READ_PAGE_CHUNKS_MAX);
        let options = eventstore::ReadStreamOptions::default()
            .forwards()
            .position(eventstore::StreamPosition::Position(from_revision))
            .max_count(max_count);
        let mut stream = match self.client.read_stream(self.stream.as_str(), &options).await {
            Ok(s) => s,
            Err(eventstore::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(classify(&e)),
        };
        let mut out = Vec::new();
        while out.len() < max_count {
            match stream.next().await {
                Ok(Some(event)) => out.push(from_resolved(&event)?),
                Ok(None) => break,
                Err(eventstore::Error::ResourceNotFound) => break,
                Err(e) => return Err(classify(&e)),
            }
        }
        Ok(out)
    }

    fn follow(&self, from_revision: u64) -> BoxStream<'static, Result<StoredChunk, Failure>> {
        let client = self.client.clone();
        let stream = self.stream.clone();
        let options = eventstore::SubscribeToStreamOptions::default()
            .start_from(subscription_start(from_revision));
        let subscription = async move { client.subscribe_to_stream(stream, &options).await };
        futures::stream::once(subscription)
            .flat_map(|sub| {
                futures::stream::unfold(Some(sub), |sub| async move {
                    let mut sub = sub?;
                    match sub.next().await {
                        Ok(event) => Some((from_resolved(&event), Some(sub))),
                        Err(e) => Some((Err(classify(&e)), None)),
                    }
                })
            })
            .boxed()
    }
}
