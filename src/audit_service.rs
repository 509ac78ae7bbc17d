//! `accrual.v1.AuditService` (SPEC §6 over gRPC): replay to a cutoff, walk the hash chain, get
//! the chain head at a position, compare the live read models with a rebuild, stream an export.
//! A service of its own, apart from the QueryService, so that access to it can be restricted to
//! auditors.
//!
//! It runs in the process that has the log open (`accrual serve` with the query role, not
//! `--read-only`) and works on that live log, the `Arc<dyn EventStore>` the other roles share,
//! and on the live read models (the query service's handles, so a digest is consistent with
//! whole projection batches).
//!
//! Architecture invariant: never writes to the log or to the live read models. A replay
//! rebuilds into a fresh directory, `<data-dir>/replays/<name>`; rebuilds for VerifyReadModels
//! and for an Export with a cutoff go to scratch directories `<data-dir>/replays/.scratch-*`
//! (removed when done, and at start after a crash). At most one rebuild runs at a time (a
//! second is refused with RESOURCE_EXHAUSTED); it runs in a task of its own, so a caller that
//! goes away never leaves a half-written directory behind. Chain walks (VerifyChain, GetDigest)
//! read the log through the store in bounded chunks, hash off the async workers, and at most
//! [`WALKS_MAX`] run at once (more wait their turn).

// tonic::Status is this module's error type; boxing it everywhere would only add noise.
#![allow(clippy::result_large_err)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use command_service::status::{beyond_head, from_domain, from_store};
use domain::error::Violations;
use event_store::{
    BreakKind, ChainBreak, ChainVerifier, EventStore, Position, StoreError, GENESIS_HASH,
};
use jiff::civil::Date;
use projections::mrr::Granularity;
use projections::ReadModel;
use proto::v1 as pb;
use proto::v1::audit_service_server::AuditService;
use query_service::ReadModels;
use replay::{Cutoff, Kind, ReplayError};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::export::{self, ExportFormat, ExportKind, Spec};

/// Subdirectory of the data directory holding replays (and scratch rebuilds).
pub const REPLAYS_DIR: &str = "replays";
/// Prefix of scratch directories under [`REPLAYS_DIR`] (never a valid replay name).
const SCRATCH_PREFIX: &str = ".scratch-";
/// Longest replay name.
const NAME_CHARS_MAX: usize = 64;
/// Chain walks (VerifyChain, GetDigest) running at once; more wait.
pub const WALKS_MAX: usize = 2;
/// Events read from the store per chain-walk step.
const WALK_READ_EVENTS_MAX: usize = 4_096;
/// Largest `ExportChunk.data`.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Export chunks buffered between the writer and the client (backpressure beyond).
const CHUNKS_IN_FLIGHT: usize = 4;
/// Response header of Export: the log position the exported model reflects (see the proto).
pub const POSITION_HEADER: &str = "accrual-position";
/// Retry delay suggested to a caller refused because a rebuild is running.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// The AuditService over one live log and its read models.
pub struct AuditApi {
    store: Arc<dyn EventStore>,
    models: ReadModels,
    /// `<data-dir>/replays`, absolute (created on first use).
    replays: PathBuf,
    /// One rebuild at a time (Replay, VerifyReadModels, Export with a cutoff).
    rebuild_slot: Arc<Semaphore>,
    walks: Arc<Semaphore>,
}

impl AuditApi {
    /// The service over `store` (the live log) and `models` (the live read models) of
    /// `data_dir`. Removes scratch directories a crashed rebuild left behind.
    pub fn new(
        store: Arc<dyn EventStore>,
        models: ReadModels,
        data_dir: &Path,
    ) -> anyhow::Result<AuditApi> {
        let data_dir = std::fs::canonicalize(data_dir)?;
        let replays = data_dir.join(REPLAYS_DIR);
        remove_scratch(&replays);
        Ok(AuditApi {
            store,
            models,
            replays,
            rebuild_slot: Arc::new(Semaphore::new(1)),
            walks: Arc::new(Semaphore::new(WALKS_MAX)),
        })
    }

    /// The live read model `kind` (the same handle the query service reads).
    fn model(&self, kind: Kind) -> ReadModel {
        match kind {
            Kind::Invoices => self.models.invoices.reader.model().clone(),
            Kind::Mrr => self.models.mrr.reader.model().clone(),
            Kind::Journal => self.models.journal.reader.model().clone(),
        }
    }

    /// The rebuild slot, or RESOURCE_EXHAUSTED when a rebuild is running.
    fn rebuild_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.rebuild_slot.clone().try_acquire_owned().map_err(|_| {
            let details = ErrorDetails::with_retry_info(Some(BUSY_RETRY));
            Status::with_error_details(
                Code::ResourceExhausted,
                "a replay is already running on this server (one at a time: Replay, \
                 VerifyReadModels and Export with a cutoff share it); retry when it is done",
                details,
            )
        })
    }

    /// `<data-dir>/replays`, created if needed.
    fn replays_dir(&self) -> Result<&Path, Status> {
        std::fs::create_dir_all(&self.replays)
            .map_err(|e| Status::internal(format!("creating {}: {e}", self.replays.display())))?;
        Ok(&self.replays)
    }

    /// A fresh scratch directory under `<data-dir>/replays` (removed when dropped).
    fn scratch(&self) -> Result<tempfile::TempDir, Status> {
        let dir = self.replays_dir()?;
        tempfile::Builder::new()
            .prefix(SCRATCH_PREFIX)
            .tempdir_in(dir)
            .map_err(|e| Status::internal(format!("creating a scratch directory: {e}")))
    }
}

/// Removes what a crashed rebuild left in `<data-dir>/replays/.scratch-*`.
fn remove_scratch(replays: &Path) {
    let Ok(entries) = std::fs::read_dir(replays) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove scratch");
            }
        }
    }
}

// ---- request checks ----

/// The violations of one request (each reported at once as a BadRequest).
#[derive(Default)]
struct Check(Violations);

impl Check {
    fn bad(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(field, description);
    }

    fn done(self) -> Result<(), Status> {
        self.0.into_result().map_err(from_domain)
    }

    /// A protobuf Timestamp as an instant.
    fn timestamp(&mut self, field: &str, t: &prost_types::Timestamp) -> Option<jiff::Timestamp> {
        let in_range = (0..1_000_000_000).contains(&t.nanos);
        let parsed = in_range.then(|| jiff::Timestamp::new(t.seconds, t.nanos).ok()).flatten();
        if parsed.is_none() {
            self.bad(field, format!("{}s {}ns is not a valid timestamp", t.seconds, t.nanos));
        }
        parsed
    }

    /// A cutoff from a request's oneof; `None` with a violation when missing or bad.
    fn cutoff(&mut self, cutoff: Option<WireCutoff>, required: bool) -> Option<Option<Cutoff>> {
        match cutoff {
            None if required => {
                self.bad("cutoff", "give position or recorded_at");
                None
            }
            None => Some(None),
            Some(WireCutoff::Position(p)) => Some(Some(Cutoff::Position(p))),
            Some(WireCutoff::RecordedAt(t)) => {
                self.timestamp("recorded_at", &t).map(|t| Some(Cutoff::RecordedAt(t)))
            }
        }
    }

    /// Projection names (`field[i]`), deduplicated, in report order; empty: all.
    fn projections(&mut self, field: &str, names: &[String]) -> Vec<Kind> {
        let mut kinds = Vec::new();
        for (i, name) in names.iter().enumerate() {
            match Kind::parse(name) {
                Ok(kind) => kinds.push(kind),
                Err(_) => self.bad(
                    format!("{field}[{i}]"),
                    format!("{name:?} is not a projection (invoices, mrr or journal)"),
                ),
            }
        }
        if names.is_empty() {
            return Kind::ALL.to_vec();
        }
        Kind::ALL.into_iter().filter(|k| kinds.contains(k)).collect()
    }

    /// An optional date `YYYY-MM-DD` (empty: none).
    fn opt_date(&mut self, field: &str, s: &str) -> Option<Date> {
        if s.is_empty() {
            return None;
        }
        let parsed = (s.len() == 10).then(|| s.parse::<Date>().ok()).flatten();
        if parsed.is_none() {
            self.bad(field, format!("{s:?} is not a date YYYY-MM-DD"));
        }
        parsed
    }

    /// 64 hex digits (empty: none).
    fn hash(&mut self, field: &str, s: &str) -> Option<[u8; 32]> {
        if s.is_empty() {
            return None;
        }
        let parsed = hex::decode(s).ok().and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok());
        if parsed.is_none() {
            self.bad(field, format!("{s:?} is not a SHA-256 hash (64 hex digits)"));
        }
        parsed
    }
}

/// Either request's `cutoff` oneof.
enum WireCutoff {
    Position(u64),
    RecordedAt(prost_types::Timestamp),
}

impl From<pb::replay_request::Cutoff> for WireCutoff {
    fn from(c: pb::replay_request::Cutoff) -> Self {
        match c {
            pb::replay_request::Cutoff::Position(p) => WireCutoff::Position(p),
            pb::replay_request::Cutoff::RecordedAt(t) => WireCutoff::RecordedAt(t),
        }
    }
}

impl From<pb::export_request::Cutoff> for WireCutoff {
    fn from(c: pb::export_request::Cutoff) -> Self {
        match c {
            pb::export_request::Cutoff::Position(p) => WireCutoff::Position(p),
            pb::export_request::Cutoff::RecordedAt(t) => WireCutoff::RecordedAt(t),
        }
    }
}

/// A replay name: 1 to 64 characters of `[a-z0-9-]`.
pub fn valid_name(name: &str) -> bool {
    (1..=NAME_CHARS_MAX).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A name for a replay the caller did not name: `replay-<UTC time>`, made unique in `dir`.
fn generated_name(dir: &Path) -> String {
    let now = jiff::Timestamp::now().strftime("%Y%m%dt%H%M%Sz").to_string();
    let base = format!("replay-{now}");
    (1..)
        .map(|n| if n == 1 { base.clone() } else { format!("{base}-{n}") })
        .find(|name| !dir.join(name).exists())
        .expect("some suffix is free")
}

/// The status of a failed rebuild.
fn rebuild_status(e: ReplayError) -> Status {
    match e {
        ReplayError::BeyondHead { position, head } => beyond_head("position", position, head),
        ReplayError::OutputExists(dir) => Status::already_exists(format!(
            "{dir} already exists: a replay never writes over a store (choose another name)"
        )),
        ReplayError::UnknownProjection(name) => {
            command_service::status::bad_field("projections", format!("unknown {name:?}"))
        }
        ReplayError::Store(e) => from_store(e),
        other => Status::internal(other.to_string()),
    }
}

fn join_status(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("audit task failed: {e}"))
}

// ---- the chain walk ----

/// The first broken link a walk found.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Broken {
    Chain(ChainBreak),
    /// The store returned no event at this position, below the end of the walk.
    Missing(Position),
}

/// What a walk of `[0, end)` found.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Walk {
    /// Events that verified, from 0.
    events: u64,
    /// Hash of the last verified event (the genesis hash when none).
    head: [u8; 32],
    broken: Option<Broken>,
}

/// Walks the hash chain of `store` over `[0, end)` with [`ChainVerifier`] (every hash
/// recomputed), reading [`WALK_READ_EVENTS_MAX`] events at a time (the next chunk is read
/// while the current one is hashed on a blocking thread). Errors are storage failures only; a
/// bad chain is a [`Walk::broken`].
async fn walk(store: &Arc<dyn EventStore>, end: Position) -> Result<Walk, StoreError> {
    let read = |from: Position| {
        let want = usize::try_from(end - from).unwrap_or(usize::MAX).min(WALK_READ_EVENTS_MAX);
        let store = store.clone();
        async move {
            match want {
                0 => Ok(Vec::new()),
                _ => store.read_all(from, want).await.map(|mut e| {
                    e.truncate(want);
                    e
                }),
            }
        }
    };
    let mut verifier = ChainVerifier::new(Some(0), GENESIS_HASH);
    let mut state = Walk { events: 0, head: GENESIS_HASH, broken: None };
    let mut next: Position = 0;
    let mut batch = read(0).await?;
    while next < end {
        if batch.is_empty() {
            state.broken = Some(Broken::Missing(next));
            break;
        }
        next += batch.len() as u64;
        let hashing = tokio::task::spawn_blocking(move || {
            for event in &batch {
                if let Err(b) = verifier.push(event) {
                    state.broken = Some(Broken::Chain(b));
                    break;
                }
                state.events += 1;
                state.head = verifier.head_hash();
            }
            (verifier, state)
        });
        let (hashed, read_ahead) = tokio::join!(hashing, read(next));
        (verifier, state) = hashed.expect("chain hashing does not panic");
        if state.broken.is_some() {
            break;
        }
        batch = read_ahead?;
    }
    Ok(state)
}

fn instant(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us).map_or_else(|_| format!("{us} µs"), |t| t.to_string())
}

impl From<&Broken> for pb::ChainBreak {
    fn from(broken: &Broken) -> pb::ChainBreak {
        let (position, kind, description, expected, actual) = match broken {
            Broken::Missing(p) => (
                *p,
                "missing",
                format!("the store has no event at position {p}, below its head"),
                "an event".to_string(),
                "none".to_string(),
            ),
            Broken::Chain(b) => {
                let (kind, expected, actual) = match b.kind {
                    BreakKind::Hash { expected, found } => {
                        ("hash", hex::encode(expected), hex::encode(found))
                    }
                    BreakKind::PrevHash { expected, found } => {
                        ("prev_hash", hex::encode(expected), hex::encode(found))
                    }
                    BreakKind::Position { expected, found } => {
                        ("position", expected.to_string(), found.to_string())
                    }
                    BreakKind::RecordedAt { previous, found } => {
                        ("recorded_at", instant(previous), instant(found))
                    }
                };
                (b.position, kind, b.to_string(), expected, actual)
            }
        };
        pb::ChainBreak { position, kind: kind.into(), description, expected, actual }
    }
}

// ---- export ----

/// An `std::io::Write` that sends what is written as [`pb::ExportChunk`]s of at most
/// [`CHUNK_BYTES_MAX`] bytes through a bounded channel (blocking while it is full: call it from
/// a blocking thread). Once the receiver is gone (the client went away), writes fail with
/// `BrokenPipe`, which ends the export.
struct ChunkWriter {
    tx: mpsc::Sender<Result<pb::ExportChunk, Status>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn new(tx: mpsc::Sender<Result<pb::ExportChunk, Status>>) -> Self {
        ChunkWriter { tx, buf: Vec::with_capacity(CHUNK_BYTES_MAX) }
    }

    fn send(&mut self) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES_MAX));
        self.tx.blocking_send(Ok(pb::ExportChunk { data })).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the export's client went away")
        })
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK_BYTES_MAX - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_BYTES_MAX {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

/// A model rebuilt to a cutoff for an export; its database closes before its directory goes.
struct Rebuilt {
    _db: sled::Db,
    _scratch: tempfile::TempDir,
}

/// Writes `spec` of `model` through `tx`; a failure ends the stream with an error status.
fn stream_export(spec: Spec, model: ReadModel, tx: &mpsc::Sender<Result<pb::ExportChunk, Status>>) {
    let mut out = ChunkWriter::new(tx.clone());
    match export::write(&spec, model, &mut out) {
        Ok(written) => {
            tracing::info!(kind = spec.kind.name(), rows = written.rows, "export streamed")
        }
        Err(e) if export::is_broken_pipe(&e) => {
            tracing::info!(kind = spec.kind.name(), "export abandoned by its client")
        }
        Err(e) => {
            tracing::error!(kind = spec.kind.name(), error = %e, "export failed");
            let _ = tx.blocking_send(Err(Status::internal(format!("export failed: {e:#}"))));
        }
    }
}

// ---- the service ----

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn replay(
        &self,
        request: Request<pb::ReplayRequest>,
    ) -> Result<Response<pb::ReplayResponse>, Status> {
        let r = request.into_inner();
        let mut check = Check::default();
        let cutoff = check.cutoff(r.cutoff.map(WireCutoff::from), true);
        let kinds = check.projections("projections", &r.projections);
        if !r.name.is_empty() && !valid_name(&r.name) {
            check.bad(
                "name",
                format!("{:?} is not 1 to {NAME_CHARS_MAX} characters of [a-z0-9-]", r.name),
            );
        }
        check.done()?;
        let cutoff = cutoff.flatten().ok_or_else(|| Status::internal("no cutoff"))?;
        let permit = self.rebuild_permit()?;
        let replays = self.replays_dir()?;
        let name = if r.name.is_empty() { generated_name(replays) } else { r.name };
        let dir = replays.join(&name);
        if dir.exists() {
            return Err(Status::already_exists(format!(
                "the replay {name:?} already exists ({}): a replay never writes over a store; \
                 choose another name",
                dir.display()
            )));
        }
        let store = self.store.clone();
        let out = dir.clone();
        // A task of its own: a replay that has started completes even if the caller goes away.
        let task = tokio::spawn(async move {
            let _permit = permit;
            let done = replay::rebuild(store, cutoff, &kinds, &out, &|_, _| {}).await;
            if let Err(e) = &done {
                if !matches!(e, ReplayError::OutputExists(_)) && out.exists() {
                    if let Err(e) = std::fs::remove_dir_all(&out) {
                        tracing::warn!(dir = %out.display(), error = %e, "cannot remove a failed replay");
                    }
                }
            }
            done
        });
        let done = task.await.map_err(join_status)?.map_err(rebuild_status)?;
        let m = &done.manifest;
        tracing::info!(
            name,
            end_position = m.end_position,
            secs = done.secs,
            events_per_s = done.events_per_s(),
            "replay written"
        );
        Ok(Response::new(pb::ReplayResponse {
            name,
            directory: dir.display().to_string(),
            end_position: m.end_position,
            log_head_hash: m.log_head_hash.clone(),
            projections: m
                .projections
                .iter()
                .map(|p| pb::ProjectionDigest {
                    projection: p.projection.name().into(),
                    version: p.version,
                    position: p.position,
                    sha256: p.sha256.clone(),
                })
                .collect(),
            events: done.events,
            secs: done.secs,
            events_per_s: done.events_per_s(),
        }))
    }

    async fn verify_chain(
        &self,
        request: Request<pb::VerifyChainRequest>,
    ) -> Result<Response<pb::VerifyChainResponse>, Status> {
        let r = request.into_inner();
        let mut check = Check::default();
        let expected = check.hash("expected_digest", &r.expected_digest);
        if expected.is_some() && r.position.is_none() {
            check.bad("position", "required with expected_digest (the position it was kept at)");
        }
        check.done()?;
        let head = self.store.head();
        let end = r.position.unwrap_or(head);
        if end > head {
            return Err(beyond_head("position", end, head));
        }
        let _walking = self.walks.acquire().await.map_err(|_| Status::unavailable("closing"))?;
        let walked = walk(&self.store, end).await.map_err(from_store)?;
        let mut first_break = walked.broken.as_ref().map(pb::ChainBreak::from);
        if let (None, Some(expected)) = (&first_break, expected) {
            if walked.head != expected {
                let (expected, actual) = (hex::encode(expected), hex::encode(walked.head));
                first_break = Some(pb::ChainBreak {
                    position: end,
                    kind: "digest".into(),
                    description: format!(
                        "the chain's head at position {end} is {actual}, not the digest kept, \
                         {expected}: the log was truncated or rewritten since"
                    ),
                    expected,
                    actual,
                });
            }
        }
        if let Some(b) = &first_break {
            tracing::warn!(position = b.position, kind = b.kind, "hash chain verification failed");
        }
        Ok(Response::new(pb::VerifyChainResponse {
            ok: first_break.is_none(),
            first_break,
            position: end,
            events_verified: walked.events,
            head_hash: hex::encode(walked.head),
        }))
    }

    async fn get_digest(
        &self,
        request: Request<pb::GetDigestRequest>,
    ) -> Result<Response<pb::GetDigestResponse>, Status> {
        let r = request.into_inner();
        let head = self.store.head();
        let end = r.position.unwrap_or(head);
        if end > head {
            return Err(beyond_head("position", end, head));
        }
        let _walking = self.walks.acquire().await.map_err(|_| Status::unavailable("closing"))?;
        let walked = walk(&self.store, end).await.map_err(from_store)?;
        if let Some(broken) = &walked.broken {
            let b = pb::ChainBreak::from(broken);
            let mut details = ErrorDetails::new();
            details.add_precondition_failure_violation("CHAIN_BROKEN", "log", b.description);
            return Err(Status::with_error_details(
                Code::FailedPrecondition,
                format!(
                    "the hash chain breaks at position {} ({}): no digest (VerifyChain reports \
                     the break)",
                    b.position, b.kind
                ),
                details,
            ));
        }
        Ok(Response::new(pb::GetDigestResponse {
            position: end,
            head_hash: hex::encode(walked.head),
        }))
    }

    async fn verify_read_models(
        &self,
        request: Request<pb::VerifyReadModelsRequest>,
    ) -> Result<Response<pb::VerifyReadModelsResponse>, Status> {
        let r = request.into_inner();
        let mut check = Check::default();
        let kinds = check.projections("projections", &r.projections);
        check.done()?;
        let permit = self.rebuild_permit()?;
        let scratch = self.scratch()?;
        let store = self.store.clone();
        let live: Vec<(Kind, ReadModel)> = kinds.iter().map(|k| (*k, self.model(*k))).collect();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let mut verdicts = Vec::with_capacity(live.len());
            for (i, (kind, model)) in live.into_iter().enumerate() {
                // Consistent with whole batches: the digest holds off the runner's commits.
                let digest = tokio::task::spawn_blocking(move || model.digest())
                    .await
                    .map_err(join_status)?
                    .map_err(|e| Status::internal(format!("live {} digest: {e}", kind.name())))?;
                let out = scratch.path().join(format!("{i}-{}", kind.name()));
                let cutoff = Cutoff::Position(digest.position);
                let rebuilt = replay::rebuild(store.clone(), cutoff, &[kind], &out, &|_, _| {})
                    .await
                    .map_err(rebuild_status)?;
                let live = hex::encode(digest.sha256);
                let rebuilt = rebuilt.manifest.projections[0].sha256.clone();
                verdicts.push(pb::ReadModelVerdict {
                    projection: kind.name().into(),
                    position: digest.position,
                    equal: live == rebuilt,
                    live_sha256: live,
                    rebuilt_sha256: rebuilt,
                });
            }
            Ok::<_, Status>(verdicts)
        });
        let verdicts = task.await.map_err(join_status)??;
        for v in verdicts.iter().filter(|v| !v.equal) {
            tracing::warn!(
                projection = v.projection,
                position = v.position,
                "read model differs from its rebuild"
            );
        }
        Ok(Response::new(pb::VerifyReadModelsResponse {
            ok: verdicts.iter().all(|v| v.equal),
            verdicts,
        }))
    }

    type ExportStream = ReceiverStream<Result<pb::ExportChunk, Status>>;

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let r = request.into_inner();
        let mut check = Check::default();
        let kind = ExportKind::parse(&r.kind);
        if kind.is_none() {
            check.bad(
                "kind",
                format!(
                    "{:?} is not invoices, invoice-lines, credit-notes, journal, trial-balance, \
                     revenue-waterfall, mrr-movements or usage-daily",
                    r.kind
                ),
            );
        }
        let format = match r.format.as_str() {
            "" => Some(ExportFormat::Csv),
            f => ExportFormat::parse(f),
        };
        if format.is_none() {
            check.bad("format", format!("{:?} is not csv, json or parquet", r.format));
        }
        let from = check.opt_date("from", &r.from);
        let effective = check.opt_date("effective", &r.effective);
        let granularity = match r.granularity.as_str() {
            "" => None,
            "day" => Some(Granularity::Day),
            "month" => Some(Granularity::Month),
            other => {
                check.bad("granularity", format!("{other:?} is not day or month"));
                None
            }
        };
        let currency = match r.currency.as_str() {
            "" => None,
            code => match domain::money::Currency::parse(code) {
                Ok(c) => Some(c),
                Err(_) => {
                    check.bad("currency", format!("{code:?} is not an ISO 4217 currency code"));
                    None
                }
            },
        };
        let cutoff = check.cutoff(r.cutoff.map(WireCutoff::from), false);
        let spec = match (kind, format) {
            (Some(kind), Some(format)) => {
                let spec = Spec { kind, format, from, effective, granularity, currency };
                for p in spec.problems(str::to_string) {
                    check.bad(p.field, p.message);
                }
                Some(spec)
            }
            _ => None,
        };
        check.done()?;
        let spec = spec.ok_or_else(|| Status::internal("no export spec"))?;
        let source = spec.kind.source();
        let (model, rebuilt) = match cutoff.flatten() {
            None => (self.model(source), None),
            Some(cutoff) => {
                let permit = self.rebuild_permit()?;
                let scratch = self.scratch()?;
                let store = self.store.clone();
                // A task of its own, owning its scratch directory until the rebuild is done.
                let task = tokio::spawn(async move {
                    let _permit = permit;
                    let out = scratch.path().join("replay");
                    let db = replay::rebuild(store, cutoff, &[source], &out, &|_, _| {})
                        .await
                        .map_err(rebuild_status)?
                        .read_models;
                    let model = ReadModel::open_existing(&db, source.name(), source.version())
                        .map_err(|e| Status::internal(e.to_string()))?
                        .ok_or_else(|| Status::internal("the rebuild wrote no model"))?;
                    Ok::<_, Status>((model, Rebuilt { _db: db, _scratch: scratch }))
                });
                let (model, rebuilt) = task.await.map_err(join_status)??;
                (model, Some(rebuilt))
            }
        };
        let position = model.checkpoint().map_err(|e| Status::internal(e.to_string()))?;
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        tokio::task::spawn_blocking(move || {
            stream_export(spec, model, &tx);
            drop(rebuilt); // a rebuild's database, then its scratch directory
            drop(tx); // the stream ends once that is gone
        });
        let mut response = Response::new(ReceiverStream::new(rx));
        response.metadata_mut().insert(POSITION_HEADER, position.into());
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_names_are_short_lowercase_words() {
        for good in ["a", "q1-close", "2025-03-31", &"x".repeat(64)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "Q1", "a_b", "a/b", "..", ".scratch-x", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let first = generated_name(dir.path());
        assert!(valid_name(&first), "{first}");
        std::fs::create_dir(dir.path().join(&first)).unwrap();
        let second = generated_name(dir.path());
        assert!(valid_name(&second) && second != first, "{second}");
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut c = Check::default();
        assert_eq!(c.hash("expected_digest", "abc"), None);
        assert_eq!(c.hash("expected_digest", &"0".repeat(64)), Some([0; 32]));
        assert_eq!(c.opt_date("from", "2025-02-30"), None);
        assert_eq!(c.opt_date("from", ""), None);
        let bad_ts = prost_types::Timestamp { seconds: 0, nanos: -1 };
        assert_eq!(c.cutoff(Some(WireCutoff::RecordedAt(bad_ts)), true), None);
        assert_eq!(c.cutoff(None, true), None);
        assert_eq!(c.cutoff(None, false), Some(None));
        let kinds = c.projections("projections", &["journal".into(), "ledger".into()]);
        assert_eq!(kinds, [Kind::Journal]);
        let status = c.done().unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<String> = status
            .get_details_bad_request()
            .expect("a BadRequest")
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["expected_digest", "from", "recorded_at", "cutoff", "projections[1]"]);
        let mut c = Check::default();
        assert_eq!(
            c.projections("p", &["mrr".into(), "invoices".into(), "mrr".into()]),
            [Kind::Invoices, Kind::Mrr]
        );
        assert_eq!(c.projections("p", &[]), Kind::ALL);
        assert!(c.done().is_ok());
    }

    #[test]
    fn exports_are_sent_in_chunks_of_at_most_64_kib() {
        let (tx, mut rx) = mpsc::channel(1024);
        let mut w = ChunkWriter::new(tx);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(7_000) {
            w.write_all(piece).unwrap();
        }
        w.flush().unwrap();
        w.flush().unwrap();
        drop(w);
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            let chunk = chunk.unwrap();
            sizes.push(chunk.data.len());
            got.extend(chunk.data);
        }
        assert_eq!(got, data);
        assert_eq!(
            sizes,
            [CHUNK_BYTES_MAX, CHUNK_BYTES_MAX, CHUNK_BYTES_MAX, 200_000 - 3 * 65_536]
        );
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut w = ChunkWriter::new(tx);
        let err = w.write_all(&data).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "the client went away");
    }

    /// In process over an empty log: a second rebuild is refused while one holds the slot, and
    /// writes nothing; then it runs; a name already taken is refused.
    #[tokio::test]
    async fn one_rebuild_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> = Arc::new(event_store::MemoryStore::new());
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let (models, _runners) =
            crate::serve::start_projections(dir.path(), store.clone(), stop).unwrap();
        let api = AuditApi::new(store, models, dir.path()).unwrap();
        let request = || {
            Request::new(pb::ReplayRequest {
                cutoff: Some(pb::replay_request::Cutoff::Position(0)),
                name: "empty".into(),
                ..Default::default()
            })
        };
        let held = api.rebuild_permit().unwrap();
        let busy = api.replay(request()).await.unwrap_err();
        assert_eq!(busy.code(), Code::ResourceExhausted, "{busy:?}");
        assert!(busy.get_details_retry_info().is_some());
        let export = pb::ExportRequest {
            kind: "journal".into(),
            cutoff: Some(pb::export_request::Cutoff::Position(0)),
            ..Default::default()
        };
        let busy = api.export(Request::new(export.clone())).await.unwrap_err();
        assert_eq!(busy.code(), Code::ResourceExhausted);
        assert!(!dir.path().join(REPLAYS_DIR).join("empty").exists(), "nothing written");
        drop(held);

        let done = api.replay(request()).await.unwrap().into_inner();
        assert_eq!((done.end_position, done.events, done.projections.len()), (0, 0, 3));
        assert_eq!(done.log_head_hash, hex::encode(GENESIS_HASH));
        assert!(Path::new(&done.directory).join(replay::MANIFEST_FILE).is_file());
        let again = api.replay(request()).await.unwrap_err();
        assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
        let beyond = pb::ReplayRequest {
            cutoff: Some(pb::replay_request::Cutoff::Position(1)),
            name: "beyond".into(),
            ..Default::default()
        };
        let beyond = api.replay(Request::new(beyond)).await.unwrap_err();
        assert_eq!(beyond.code(), Code::OutOfRange, "{beyond:?}");
        assert!(
            !dir.path().join(REPLAYS_DIR).join("beyond").exists(),
            "a failed replay leaves nothing"
        );

        let mut stream = api.export(Request::new(export)).await.unwrap().into_inner();
        let mut csv = Vec::new();
        while let Some(chunk) = tokio_stream::StreamExt::next(&mut stream).await {
            csv.extend(chunk.unwrap().data);
        }
        assert!(String::from_utf8(csv).unwrap().starts_with("entry,date,kind"));
        let scratch: Vec<_> = std::fs::read_dir(dir.path().join(REPLAYS_DIR))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX))
            .collect();
        assert!(scratch.is_empty(), "scratch directories are removed: {scratch:?}");

        let chain = api.verify_chain(Request::new(Default::default())).await.unwrap();
        let chain = chain.into_inner();
        assert!(chain.ok && chain.first_break.is_none(), "{chain:?}");
        assert_eq!(chain.head_hash, hex::encode(GENESIS_HASH));
        let beyond = pb::GetDigestRequest { position: Some(1) };
        let beyond = api.get_digest(Request::new(beyond)).await.unwrap_err();
        assert_eq!(beyond.code(), Code::OutOfRange);
        assert_eq!(beyond.get_details_bad_request().unwrap().field_violations[0].field, "position");
        let verdicts = api.verify_read_models(Request::new(Default::default())).await.unwrap();
        let verdicts = verdicts.into_inner();
        assert!(verdicts.ok && verdicts.verdicts.len() == 3, "{verdicts:?}");
    }

    #[test]
    fn breaks_name_what_was_expected_and_found() {
        let b = Broken::Chain(ChainBreak {
            position: 7,
            kind: BreakKind::Hash { expected: [1; 32], found: [2; 32] },
        });
        let wire = pb::ChainBreak::from(&b);
        assert_eq!((wire.position, wire.kind.as_str()), (7, "hash"));
        assert_eq!((wire.expected, wire.actual), (hex::encode([1; 32]), hex::encode([2; 32])));
        let wire = pb::ChainBreak::from(&Broken::Missing(3));
        assert_eq!((wire.position, wire.kind.as_str()), (3, "missing"));
    }
}
