//! `accrual.v1.CommandService`: the write side's gRPC shell around the pure `domain`.
//!
//! - [`convert`]: wire ⇄ domain (the proto boundary);
//! - [`engine`]: the write model, decide/evolve under one lock, group-committed appends;
//! - [`import`]: the `Import` stream (a history loaded record by record, or validated on a copy);
//! - [`service`]: the gRPC handlers and per-call limits;
//! - [`snapshot`]: write-model snapshots at a log position (restart folds only the tail);
//! - [`status`]: the SPEC §3 error contract.
//!
//! The transport (health, reflection, limits, shutdown) is assembled by the `accrual` binary.

// tonic::Status is this crate's error type; boxing it everywhere would only add noise.
#![allow(clippy::result_large_err)]

pub mod convert;
pub mod dedup;
pub mod engine;
pub mod import;
pub mod service;
pub mod snapshot;
pub mod status;
