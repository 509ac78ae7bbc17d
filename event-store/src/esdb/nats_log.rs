//! The log stream on a NATS JetStream stream: one more [`ChunkLog`] under the same backend
//! ([`super::EsdbStore::open_nats`]), decision 0045.
//!
//! - chunk revision `r` is stream sequence `r + 1`; the stream holds nothing else (one subject,
//!   `<stream>.chunks`), and it is created with `deny_delete` and `deny_purge`, so the
//!   JetStream API cannot remove a chunk from under the hash chain;
//! - an append is one **atomic batch** (nats-server 2.12+, `allow_atomic` on the stream): every
//!   chunk carries `Nats-Batch-Id` and `Nats-Batch-Sequence`, the first carries
//!   `Nats-Expected-Last-Sequence` (the compare-and-swap over the whole log), the last
//!   `Nats-Batch-Commit: 1`, and only that one is acknowledged: the server stores all of the
//!   batch's chunks or none. Each chunk also carries `Nats-Msg-Id` = its chunk id, so a
//!   retried publish inside the dedup window is recognised by the server;
//! - a read asks the stream leader for messages by sequence (`STREAM.MSG.GET`, a few in
//!   flight), never a follower that may lag behind what this node already knows;
//! - follow is an ordered pull consumer from a sequence.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use uuid::Uuid;

use super::errors::Failure;
use super::log::{ChunkLog, OutChunk, StoredChunk, READ_PAGE_CHUNKS_MAX};
use super::mapping::{Expected, LogPosition};
use super::nats_config::NatsConfig;

/// Message gets one read keeps in flight.
const READ_GETS_IN_FLIGHT_MAX: usize = 32;
/// JetStream's bound on the messages of one atomic batch (the server refuses larger ones); a
/// group commit is at most `GROUP_BYTES_MAX` / 96 KiB chunks, far below it.
const BATCH_CHUNKS_MAX: usize = 1_000;
/// How long a connect attempt waits for a server before it counts as failed. The first
/// connect fails at once (a clear startup error); once connected, the client reconnects to
/// any server of the cluster for as long as it runs.
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long a publish waits for its ack (and an API call for its reply) before it counts as
/// failed and is retried. A publish in flight to a server that dies is never answered; the
/// retry goes to the server the client reconnected to (and finds its chunks if they landed).
const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Least `max_payload` a server should allow: one event may be 1 MiB, and a chunk holds it
/// whole with its envelope and hash (the guide's `max_payload: 8MB` leaves room).
const PAYLOAD_BYTES_WANTED: usize = 2 << 20;
/// How long opening waits for JetStream to answer and for a new stream's leader (after that
/// a missing leader is left to the reads, which retry).
const OPEN_WAIT_MS: u64 = 30_000;
/// Pause between two tries while opening.
const OPEN_RETRY_MS: u64 = 200;
/// JetStream's API error code for "not found".
const NOT_FOUND_STATUS: usize = 404;
/// Pings to the server: two unanswered ones (a frozen or partitioned server) make the client
/// move to another server of the cluster, so a stuck server costs seconds, not minutes.
const PING_INTERVAL_MS: u64 = 2_000;

/// The log stream on a JetStream stream.
pub struct NatsLog {
    stream: jetstream::stream::Stream,
    context: jetstream::Context,
    subject: String,
}

impl NatsLog {
    /// Connects to `url` (`nats://host:port[,nats://host:port...]`) and opens (or creates) the
    /// stream `name` with `replicas` copies.
    pub async fn connect(url: &str, name: &str, replicas: usize) -> Result<NatsLog, Failure> {
        let config = NatsConfig {
            servers: url.split(',').map(|s| s.trim().to_owned()).collect(),
            stream: name.to_owned(),
            replicas,
            replicas_given: true,
            commit_events_max: crate::DEFAULT_COMMIT_EVENTS_MAX,
            create_stream: true,
        };
        NatsLog::open(&config).await
    }

    /// Connects to the servers of `config` and opens (or, if `config.create_stream`, creates)
    /// its stream. A cluster that has only just started answers JetStream requests after a
    /// moment, and a new stream has no leader at first: both are waited for, bounded.
    pub async fn open(config: &NatsConfig) -> Result<NatsLog, Failure> {
        let (servers, name) = (&config.servers, &config.stream);
        let shown = config.redacted();
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .ping_interval(Duration::from_millis(PING_INTERVAL_MS))
            .max_reconnects(None)
            .connect(servers.as_slice())
            .await
            .map_err(|e| Failure::Transient(format!("connecting to {shown}: {e}")))?;
        if !client.server_info().jetstream {
            return Err(Failure::Permanent(format!(
                "{shown}: JetStream is not enabled on this server (start it with -js)"
            )));
        }
        let max_payload = client.server_info().max_payload;
        if max_payload < PAYLOAD_BYTES_WANTED {
            tracing::warn!(
                max_payload,
                wanted = PAYLOAD_BYTES_WANTED,
                "the NATS server's max_payload is below what one Accrual request may need; \
                 such requests will be refused (set max_payload: 8MB)"
            );
        }
        let mut context = jetstream::new(client);
        context.set_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
        let subject = format!("{name}.chunks");
        let wanted = jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.clone()],
            num_replicas: config.replicas,
            allow_atomic_publish: true,
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_millis(OPEN_WAIT_MS);
        let mut stream = loop {
            let opened = match config.create_stream {
                true => context
                    .get_or_create_stream(wanted.clone())
                    .await
                    .map_err(|e| (false, e.to_string())),
                false => context.get_stream(name).await.map_err(|e| match e.kind() {
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.code() == NOT_FOUND_STATUS =>
                    {
                        (
                            true,
                            format!("there is no stream {name} (check stream= in the store URL)"),
                        )
                    }
                    _ => (false, e.to_string()),
                }),
            };
            match opened {
                Ok(stream) => break stream,
                // Not there (when not creating): final. Anything else (no JetStream leader yet,
                // a timeout, another node creating the same stream): again, until the deadline.
                Err((final_, e)) if final_ || Instant::now() >= deadline => {
                    return Err(Failure::Transient(format!(
                        "opening stream {name} on {shown}: {e}"
                    )))
                }
                Err((_, e)) => {
                    tracing::debug!(error = %e, "opening the JetStream stream; retrying");
                    tokio::time::sleep(Duration::from_millis(OPEN_RETRY_MS)).await;
                }
            }
        };
        loop {
            let info = stream
                .info()
                .await
                .map_err(|e| Failure::Transient(format!("stream {name} info: {e}")))?;
            check_existing(&info.config, &wanted, config.replicas_given)?;
            let led = info.cluster.as_ref().is_none_or(|c| c.leader.is_some());
            if led || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(OPEN_RETRY_MS)).await;
        }
        Ok(NatsLog { stream, context, subject })
    }
}

/// An existing stream must be the one this backend would have created.
/// Its replicas are compared only when the URL named them (`replicas_given`).
fn check_existing(
    found: &jetstream::stream::Config,
    wanted: &jetstream::stream::Config,
    replicas_given: bool,
) -> Result<(), Failure> {
    let name = &wanted.name;
    if found.subjects != wanted.subjects {
        return Err(Failure::Permanent(format!(
            "stream {name} takes subjects {:?}, not just {:?}: it is not an Accrual log",
            found.subjects, wanted.subjects
        )));
    }
    if replicas_given && found.num_replicas != wanted.num_replicas {
        return Err(Failure::Permanent(format!(
            "stream {name} has {} replicas but the store URL says replicas={}; change one of them",
            found.num_replicas, wanted.num_replicas
        )));
    }
    if !found.allow_atomic_publish {
        return Err(Failure::Permanent(format!(
            "stream {name} does not allow atomic batch publish (allow_atomic); Accrual needs it \
             so that an append is all or nothing (nats-server 2.12 or newer)"
        )));
    }
    Ok(())
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

fn publish_failure(e: jetstream::context::PublishError) -> Failure {
    match e.kind() {
        PublishErrorKind::WrongLastSequence => Failure::Conflict { current: None },
        PublishErrorKind::MaxPayloadExceeded => Failure::TooLarge(format!(
            "{e}; raise the servers' max_payload (8MB holds any Accrual request)"
        )),
        _ => Failure::Transient(format!("publishing: {e}")),
    }
}

#[async_trait]
impl ChunkLog for NatsLog {
    async fn append(
        &self,
        expected: Expected,
        chunks: &[OutChunk],
    ) -> Result<Option<LogPosition>, Failure> {
        assert!(!chunks.is_empty() && chunks.len() <= BATCH_CHUNKS_MAX, "batch of 1..=1000");
        let batch_id = Uuid::new_v4().simple().to_string();
        let last = chunks.len() - 1;
        let client = self.context.client();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            headers
                .insert(async_nats::header::NATS_MESSAGE_ID, chunk.event_id.to_string().as_str());
            if i == 0 {
                // The sequence of the message before the first chunk = that chunk's revision.
                let before = expected.next_revision().to_string();
                headers.insert(async_nats::header::NATS_EXPECTED_LAST_SEQUENCE, before.as_str());
            }
            if chunks.len() > 1 {
                headers.insert(async_nats::header::NATS_BATCH_ID, batch_id.as_str());
                headers
                    .insert(async_nats::header::NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
            }
            if i < last {
                // Staged by the server, not acknowledged: only the commit is.
                client
                    .publish_with_headers(self.subject.clone(), headers, chunk.bytes.clone().into())
                    .await
                    .map_err(|e| Failure::Transient(format!("publishing a batch: {e}")))?;
                continue;
            }
            if chunks.len() > 1 {
                headers.insert(
                    async_nats::header::NATS_BATCH_COMMIT,
                    async_nats::header::NATS_BATCH_COMMIT_FINAL,
                );
            }
            let message = jetstream::message::PublishMessage::build()
                .payload(chunk.bytes.clone().into())
                .headers(headers);
            let ack = self
                .context
                .send_publish(self.subject.clone(), message)
                .await
                .map_err(publish_failure)?
                .await
                .map_err(publish_failure)?;
            if ack.duplicate {
                // Stored by an earlier attempt whose reply was lost: the writer reads the log
                // and finds its chunks at the revision it aimed for (a conflict is not retried).
                return Err(Failure::Conflict { current: None });
            }
            let first_sequence = expected.next_revision() + 1;
            if ack.sequence != first_sequence + last as u64 {
                return Err(Failure::Permanent(format!(
                    "JetStream stored an append of {} chunks after sequence {} at sequence {}",
                    chunks.len(),
                    first_sequence - 1,
                    ack.sequence
                )));
            }
            return Ok(Some(LogPosition { commit: ack.sequence, prepare: ack.sequence }));
        }
        unreachable!("the loop returns at the last chunk")
    }

    async fn read(
        &self,
        from_revision: u64,
        max_count: usize,
    ) -> Result<Vec<StoredChunk>, Failure> {
        let max_count = max_count.min(READ_PAGE_CHUNKS_MAX);
        let gets = (from_revision + 1..).take(max_count).map(|sequence| {
            let stream = &self.stream;
            async move { (sequence, stream.get_raw_message(sequence).await) }
        });
        let mut replies = futures::stream::iter(gets).buffered(READ_GETS_IN_FLIGHT_MAX);
        let mut out = Vec::with_capacity(max_count);
        while let Some((sequence, reply)) = replies.next().await {
            match reply {
                Ok(m) => out.push(stored(m.sequence, Some(&m.headers), &m.payload)),
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    break
                }
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
