//! The error contract of SPEC §3: every domain and store error becomes one gRPC status with
//! google.rpc details (BadRequest, PreconditionFailure, ResourceInfo, ErrorInfo, RetryInfo).

use std::collections::HashMap;
use std::time::Duration;

use domain::DomainError;
use event_store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Delay suggested to callers on UNAVAILABLE.
pub const RETRY_DELAY_MS: u64 = 200;

pub fn from_domain(err: DomainError) -> Status {
    match err {
        DomainError::Invalid(violations) => {
            let mut details = ErrorDetails::new();
            for v in &violations {
                details.add_bad_request_violation(v.field.clone(), v.description.clone());
            }
            let message = DomainError::Invalid(violations).to_string();
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        DomainError::NotFound { kind, id } => {
            let details = ErrorDetails::with_resource_info(kind, id.clone(), "", "not found");
            Status::with_error_details(Code::NotFound, format!("{kind} {id} not found"), details)
        }
        DomainError::Precondition { kind, subject, description } => {
            let mut details = ErrorDetails::new();
            details.add_precondition_failure_violation(kind, subject, description.clone());
            Status::with_error_details(Code::FailedPrecondition, description, details)
        }
        DomainError::Conflict(message) => Status::already_exists(message),
    }
}

pub fn from_store(err: StoreError) -> Status {
    match err {
        StoreError::WrongExpectedVersion { stream, expected, actual } => {
            let metadata = HashMap::from([
                ("stream".to_string(), stream.clone()),
                ("expected".to_string(), format!("{expected:?}")),
                ("actual".to_string(), format!("{actual:?}")),
            ]);
            let details =
                ErrorDetails::with_error_info("WRONG_EXPECTED_VERSION", "accrual", metadata);
            Status::with_error_details(
                Code::Aborted,
                format!("stream {stream}: expected version {expected:?}, actual {actual:?}"),
                details,
            )
        }
        StoreError::IdempotencyConflict { key } => Status::already_exists(format!(
            "idempotency key {key:?} was used with a different request"
        )),
        StoreError::Invalid(m) => Status::invalid_argument(m),
        other => unavailable(other.to_string()),
    }
}

pub fn unavailable(message: impl Into<String>) -> Status {
    let details = ErrorDetails::with_retry_info(Some(Duration::from_millis(RETRY_DELAY_MS)));
    Status::with_error_details(Code::Unavailable, message, details)
}

/// One INVALID_ARGUMENT for a single bad wire field.
pub fn bad_field(field: &str, description: impl Into<String>) -> Status {
    from_domain(DomainError::invalid(field, description))
}
