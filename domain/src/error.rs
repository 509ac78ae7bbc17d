//! The domain's error contract. The service edge maps each variant to one gRPC code
//! (SPEC §3): `Invalid` → INVALID_ARGUMENT (BadRequest), `NotFound` → NOT_FOUND,
//! `Precondition` → FAILED_PRECONDITION (PreconditionFailure), `Conflict` → ALREADY_EXISTS.
//!
//! An amount that overflows `Decimal` while invoicing (a plan or usage in a log written before
//! the input bounds) is a `Precondition` of kind [`AMOUNT_OVERFLOW`] ([`DomainError::overflow`]):
//! the command's arguments are fine, the stored state cannot be invoiced. Likewise a stored
//! plan whose charges are outside today's input bounds cannot be rated: a `Precondition` of
//! kind [`PLAN_OUT_OF_BOUNDS`] on that plan.

use std::fmt;

/// One bad field of a command, named by its wire path (e.g. `charges[1].tiers[0].up_to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// `Precondition` kind of an amount that overflows `Decimal` while invoicing.
pub const AMOUNT_OVERFLOW: &str = "AMOUNT_OVERFLOW";
/// `Precondition` kind of a stored plan whose charges are outside today's input bounds.
pub const PLAN_OUT_OF_BOUNDS: &str = "PLAN_OUT_OF_BOUNDS";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Malformed or out-of-range input: one violation per bad field.
    #[error("invalid argument: {}", fmt_violations(.0))]
    Invalid(Vec<FieldViolation>),
    /// An id that names nothing.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// A business rule refuses the command. `kind` is a short machine-readable type
    /// (e.g. `PERIOD_CLOSED`, `SUBSCRIPTION_CANCELED`, `CURRENCY_MISMATCH`).
    #[error("{description}")]
    Precondition { kind: &'static str, subject: String, description: String },
    /// Same idempotency key / transaction id with a different payload.
    #[error("{0}")]
    Conflict(String),
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        DomainError::Invalid(vec![FieldViolation::new(field, description)])
    }

    pub fn not_found(kind: &'static str, id: impl fmt::Display) -> Self {
        DomainError::NotFound { kind, id: id.to_string() }
    }

    pub fn precondition(
        kind: &'static str,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        DomainError::Precondition { kind, subject: subject.into(), description: description.into() }
    }

    /// An amount of `subject` (e.g. `subscription-s1`) that overflows `Decimal`; `what` names
    /// it (the invoice and line, the proration, the tax...). Kind [`AMOUNT_OVERFLOW`].
    pub fn overflow(subject: impl Into<String>, what: impl fmt::Display) -> Self {
        let subject = subject.into();
        let description = format!("{subject}: {what} overflows the decimal range");
        DomainError::Precondition { kind: AMOUNT_OVERFLOW, subject, description }
    }

    /// Whether this is an [`DomainError::overflow`].
    pub fn is_overflow(&self) -> bool {
        matches!(self, DomainError::Precondition { kind, .. } if *kind == AMOUNT_OVERFLOW)
    }
}

fn fmt_violations(v: &[FieldViolation]) -> String {
    v.iter().map(|f| format!("{}: {}", f.field, f.description)).collect::<Vec<_>>().join("; ")
}

/// Collects field violations while validating a command, so every bad field is reported at once.
#[derive(Debug, Default)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Prefixes the fields of a nested validation (e.g. `charges[2].`) and keeps them.
    pub fn extend_prefixed(&mut self, prefix: &str, err: DomainError) -> Result<(), DomainError> {
        match err {
            DomainError::Invalid(list) => {
                for f in list {
                    self.push(format!("{prefix}{}", f.field), f.description);
                }
                Ok(())
            }
            other => Err(other),
        }
    }

    pub fn into_result(self) -> Result<(), DomainError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Invalid(self.0))
        }
    }
}
