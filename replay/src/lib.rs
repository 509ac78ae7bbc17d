//! Accrual's audit side (SPEC §6): rebuild read models from the log up to a cutoff into a
//! **fresh** store, compare their digests with the live ones, and walk the hash chain.
//!
//! * [`Cutoff`]: a log position, or a recorded time ("everything recorded at or before it"),
//!   resolved to the position the rebuild stops before ([`resolve`]).
//! * [`CappedStore`]: a read-only view of a log that ends at a position, so projection runners
//!   built for the live log stop exactly at the cutoff.
//! * [`rebuild`]: reads the log once and feeds every chosen projection from each read (in
//!   parallel, one thread per projection), into `<out>/read-models`, which must not exist yet;
//!   writes `<out>/replay.json` ([`Manifest`]) with the cutoff, the chain head at it and each
//!   projection's digest.
//! * [`verify`]: rebuilds every projection up to the live model's checkpoint and compares digests.
//! * [`chain_head`]: walks the hash chain up to a position and returns the head hash.
//!
//! # Architecture invariant
//!
//! This crate never writes to the live log or the live read models: it opens the log through
//! [`CappedStore`] (appends are refused) and rebuilds into a directory it creates.

mod capped;
mod cutoff;
mod rebuild;
mod verify;

pub use capped::CappedStore;
pub use cutoff::{chain_head, resolve, Cutoff};
pub use rebuild::{
    advance, rebuild, Kind, Manifest, ProjectionDigest, Rebuild, MANIFEST_FILE, READ_MODELS_DIR,
};
pub use verify::{verify, Verdict};

use event_store::{ChainBreak, Position, StoreError};

/// Errors of replay and audit.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("projection: {0}")]
    Projection(#[from] projections::ProjectionError),
    #[error("read-model storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the output directory {0} already exists: a rebuild never writes over a store")]
    OutputExists(String),
    #[error("position {position} is beyond the log head {head}")]
    BeyondHead { position: Position, head: Position },
    #[error("hash chain broken: {0}")]
    Chain(ChainBreak),
    #[error("unknown projection {0:?} (known: invoices, mrr, journal)")]
    UnknownProjection(String),
}

/// Result of replay and audit.
pub type Result<T, E = ReplayError> = std::result::Result<T, E>;
