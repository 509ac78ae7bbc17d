//! Accrual's read side, first piece: a projection [`Runner`] that follows the ordered log
//! (SPEC §1, §5), folds events into sled read models exactly once, reports its lag, lets a
//! caller wait until a position is applied, and computes a canonical [`Digest`] of each read
//! model. The first projection is [`invoices`]. In `accrual serve` the runners share one log
//! reader ([`SharedLog`], [`Runner::run_shared`]): the log is read and decoded once for all of
//! them, each keeps its own checkpoint and commits, and one that is behind reads the log itself.
//!
//! # Storage layout
//!
//! Read models live in their own sled database, separate from the event log ([`open_db`] opens it
//! with 8 MiB segments, as the event store does, so values stay inside sled's fsync'd log, and
//! a [`CACHE_CAPACITY_BYTES`] page cache). Each
//! projection owns one tree, `projection/<name>`:
//!
//! * **Meta keys** start with byte `0x00` and are not part of the model:
//!   `\0checkpoint` = the next log position to apply (u64 big-endian; absent = 0, nothing
//!   applied), `\0version` = the projection's [`Projection::version`] (u32 big-endian),
//!   `\0state` = a snapshot of the projection's in-memory state at the checkpoint committed
//!   with it ([`state_snapshot`]; the journal's usage meter), restored before the warm-up.
//! * **Model keys** (any other first byte) belong to the projection. The invoices projection:
//!   `inv/<invoice_id>` → the [`invoices::InvoiceRecord`] as JSON (`"v": 1`), and four index keys
//!   per invoice whose value is the invoice id, `<pos>` being the `InvoiceIssued` position as 16
//!   lowercase hex digits (so listings run in issue order): `idx/all/<pos>`,
//!   `idx/c/<customer>/<pos>`, `idx/s/<status>/<pos>`, `idx/cs/<customer>/<status>/<pos>`.
//!
//! # Exactly once
//!
//! The runner reads at most `batch_events_max` events from its checkpoint, decodes each
//! ([`domain::events::Event::decode`], where old schema versions are upcast) and lets the
//! projection apply it into a [`Writes`] buffer; reads through the buffer see the batch's own
//! writes over the committed tree. The buffer and the new checkpoint are then written as **one
//! `sled::Batch` on the projection's tree**, which sled applies atomically, also across a crash.
//! If anything fails mid-batch the buffer is dropped: the tree holds whole batches only, and the
//! runner resumes from the committed checkpoint, so every event takes effect exactly once.
//! Commits are not flushed one by one (sled flushes in the background); a crash may lose the
//! last batches, which are then re-applied from the log. Readers ([`ReadModel::read`]) and the
//! commit share a lock, so a reader never sees half a batch in memory either.
//!
//! # Invariant
//!
//! A read model is a pure function of the log prefix `[0, checkpoint)`. Projections keep no state
//! outside their keys except what is itself a pure function of that prefix and is rebuilt from
//! the log when the runner opens (the journal's [`usage_meter::UsageMeter`], see
//! [`Projection::remembers`]; from its `\0state` snapshot and the log's tail after it when that
//! snapshot is valid), and batch boundaries never change the result, so a read model can be
//! dropped and rebuilt from the log with the same digest at the same position (SPEC §1, §6). A
//! projection whose [`Projection::version`] changes is cleared and rebuilt from position 0 when
//! its runner opens.
//!
//! # Digest
//!
//! SHA-256 over the model keys in key order, each entry as `u64 BE len(key) ‖ key ‖ u64 BE
//! len(value) ‖ value`; meta keys are excluded and the checkpoint is reported beside the hash.

pub mod alerts;
pub mod customer_coupons;
pub mod invoices;
pub mod journal;
pub mod metrics;
pub mod mrr;
mod runner;
mod shared;
pub mod state_snapshot;
mod store;
pub mod testkit;
pub mod usage_meter;
pub mod wallets;

pub use runner::{
    decode_event, Progress, Projection, Runner, RunnerConfig, WaitError, BATCH_EVENTS_MAX_LIMIT,
    POLL_INTERVAL_MS_MAX,
};
pub use shared::{SharedConfig, SharedFeed, SharedLog, RING_EVENTS_MAX_LIMIT};
pub use store::{
    check_db, open_db, open_db_unchecked, Digest, ReadModel, Snapshot, Writes,
    CACHE_CAPACITY_BYTES, META_PREFIX, SEGMENT_SIZE_BYTES,
};

use event_store::{Position, StoreError};

/// Errors of the read side.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("read-model storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("event at position {position} does not decode: {source}")]
    Decode { position: Position, source: domain::events::DecodeError },
    #[error("log gap: expected position {expected}, read {actual}")]
    Gap { expected: Position, actual: Position },
    #[error("projection {projection} cannot apply the event at position {position}: {detail}")]
    Inconsistent { projection: &'static str, position: Position, detail: String },
    #[error("read model {projection} is corrupt: {detail}")]
    Corrupt { projection: &'static str, detail: String },
    /// The read-model database's files cannot be read (sled errs or panics on them).
    #[error(
        "read-model store {path} is damaged ({detail}). Read models are rebuilt from the log: \
         stop every accrual process using it, remove it (`rm -r {path}`) and run \
         `accrual serve --data-dir {data_dir}`, which rebuilds every read model from the log \
         (for the output of `accrual replay`, run the replay again into a new --out directory)"
    )]
    Damaged { path: String, data_dir: String, detail: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result of the read side.
pub type Result<T, E = ProjectionError> = std::result::Result<T, E>;
