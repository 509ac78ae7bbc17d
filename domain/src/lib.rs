//! Accrual's billing core: pure and deterministic. Money, calendars, the rating engine,
//! catalog entities, events, commands and the write model ([`ledger::Ledger`]) with its
//! `decide` / `evolve` functions.
//!
//! Architecture invariant: no I/O, no clock reads, no tokio, no gRPC types. Time and ids come
//! in as arguments ([`commands::Context`]), so every decision replays the same way.

pub mod accounting;
pub mod add_on;
pub mod alert;
pub mod anomaly;
pub mod calendar;
pub mod catalog;
pub mod commands;
pub mod coupon;
pub mod credit_note;
pub mod error;
pub mod events;
pub mod imported_invoice;
pub mod invoice;
pub mod ledger;
pub mod money;
pub mod mrr;
pub mod progressive;
pub mod rating;
pub mod recognition;
pub mod serde_pairs;
#[cfg(test)]
mod snapshot_tests;
pub mod subscription;
#[cfg(test)]
mod test_strategies;
pub mod wallet;

pub use error::{DomainError, FieldViolation};
