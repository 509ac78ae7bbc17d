//! The rating engine (SPEC §4): billable-metric aggregations, folded event by event into a
//! [`RunningAggregate`], and the charge models that turn a period's usage into an unrounded
//! amount ([`ChargeModel::rate`]). Pure decimal arithmetic: no floats, no clock, no I/O, and
//! every step is checked, so an overflow is an error and never a panic.

pub mod aggregation;
pub mod charge_model;

pub use aggregation::*;
pub use charge_model::*;
