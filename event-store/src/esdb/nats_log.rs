//! WORK IN PROGRESS (issue 17, decision 0045): the log stream on a NATS JetStream stream, as
//! one more [`ChunkLog`] under the same backend (`EsdbStore::open_on`).
//!
//! - chunk revision `r` is stream sequence `r + 1`; the stream holds nothing else (one
//!   subject, `<stream>.chunks`);
//! - an append publishes each chunk with `Nats-Expected-Last-Sequence` (the compare-and-swap)
//!   and `Nats-Msg-Id` = the chunk's event id (dedup of a retried publish);
//! - a read fetches messages by sequence; follow is an ordered pull consumer.
//!
//! NOT ATOMIC YET: an append of several chunks is several publishes, so a crash between them
//! leaves part of a group commit in the log. Decision 0045 lists the two ways out (atomic batch
//! publish on nats-server 2.12+, or one message per append). Until one is built this backend
//! must not hold real books.

use async_nats::jetstream;
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use uuid::Uuid;

use super::errors::Failure;
use super::log::{ChunkLog, OutChunk, StoredChunk, READ_PAGE_CHUNKS_MAX};
use super::mapping::{Expected, LogPosition};

/// The log stream on a JetStream stream.
pub struct NatsLog {
    stream: jetstream::stream::Stream,
    context: jetstream::Context,
    subject: String,
}

impl NatsLog {
    /// Connects to `url` (`nats://host:port[,...]`) and opens (or creates) the stream `name`
    /// with `replicas` copies.
    pub async fn connect(url: &str, name: &str, replicas: usize) -> Result<NatsLog, Failure> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| Failure::Transient(format!("connecting to {url}: {e}")))?;
        let context = jetstream::new(client);
        let subject = format!("{name}.chunks");
        let config = jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.clone()],
            num_replicas: replicas,
            allow_direct: true,
            ..Default::default()
        };
        let stream = context
            .get_or_create_stream(config)
            .await
            .map_err(|e| Failure::Transient(format!("opening stream {name}: {e}")))?;
        Ok(NatsLog { stream, context, subject })
    }
}

fn stored(sequence: u64, headers: Option<&async_nats::HeaderMap>, payload: &[u8]) -> StoredChunk {
    let event_id = headers
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .and_then(|v| Uuid::parse_str(v.as_str()).ok())
        .unwrap_or(Uuid::nil());
    StoredChunk {
        revision: sequence - 1,
        event_id,
        bytes: payload.to_vec(),
        log_position: Some(LogPosition { commit: sequence, prepare: sequence }),
    }
}

#[async_trait]
impl ChunkLog for NatsLog {
    async fn append(
        &self,
        expected: Expected,
        chunks: &[OutChunk],
    ) -> Result<Option<LogPosition>, Failure> {
        let mut last = None;
        for (i, chunk) in chunks.iter().enumerate() {
            // Sequence of the message before this chunk = this chunk's revision.
            let before = expected.next_revision() + i as u64;
            let message = jetstream::message::PublishMessage::build()
                .payload(chunk.bytes.clone().into())
                .message_id(chunk.event_id.to_string())
                .expected_last_sequence(before);
            let ack = self
                .context
                .send_publish(self.subject.clone(), message)
                .await
                .map_err(|e| Failure::Transient(format!("publishing: {e}")))?
                .await;
            match ack {
                Ok(ack) => last = Some(LogPosition { commit: ack.sequence, prepare: ack.sequence }),
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    return Err(Failure::Conflict { current: None })
                }
                Err(e) => return Err(Failure::Transient(format!("publish ack: {e}"))),
            }
        }
        Ok(last)
    }

    async fn read(
        &self,
        from_revision: u64,
        max_count: usize,
    ) -> Result<Vec<StoredChunk>, Failure> {
        let max_count = max_count.min(READ_PAGE_CHUNKS_MAX);
        let mut out = Vec::with_capacity(max_count);
        for sequence in (from_revision + 1..).take(max_count) {
            match self.stream.direct_get(sequence).await {
                Ok(m) => out.push(stored(m.sequence, Some(&m.headers), &m.payload)),
                Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(Failure::Transient(format!("reading {sequence}: {e}"))),
            }
        }
        Ok(out)
    }

    fn follow(&self, from_revision: u64) -> BoxStream<'static, Result<StoredChunk, Failure>> {
        let stream = self.stream.clone();
        let start = async move {
            let config = jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from_revision + 1,
                },
                ..Default::default()
            };
            let consumer = stream.create_consumer(config).await?;
            consumer.messages().await.map_err(async_nats::Error::from)
        };
        futures::stream::once(start)
            .flat_map(|messages| match messages {
                Err(e) => futures::stream::once(async move {
                    Err(Failure::Transient(format!("following: {e}")))
                })
                .boxed(),
                Ok(messages) => messages
                    .map(|m| {
                        let m = m.map_err(|e| Failure::Transient(format!("following: {e}")))?;
                        let info = m.info().map_err(|e| Failure::Transient(format!("{e}")))?;
                        Ok(stored(info.stream_sequence, m.headers.as_ref(), &m.payload))
                    })
                    .boxed(),
            })
            .boxed()
    }
}
