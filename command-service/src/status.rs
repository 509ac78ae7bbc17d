//! The error contract of SPEC §3: every domain and store error becomes one gRPC status with
//! google.rpc details (BadRequest, PreconditionFailure, ResourceInfo, ErrorInfo, RetryInfo).

use std::collections::HashMap;
use std::time::Duration;

use domain::DomainError;
use event_store::{ExpectedVersion, StoreError};
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

/// An expected version as clients of any language read it in `ErrorInfo` metadata: `any`,
/// `no_stream`, or the version number.
fn expected_name(expected: ExpectedVersion) -> String {
    match expected {
        ExpectedVersion::Any => "any".to_string(),
        ExpectedVersion::NoStream => "no_stream".to_string(),
        ExpectedVersion::Exact(version) => version.to_string(),
    }
}

/// A stream's last version, or `no_stream` when it has no events.
fn version_name(version: Option<u64>) -> String {
    version.map_or_else(|| "no_stream".to_string(), |v| v.to_string())
}

pub fn from_store(err: StoreError) -> Status {
    match err {
        StoreError::WrongExpectedVersion { stream, expected, actual } => {
            let (expected, actual) = (expected_name(expected), version_name(actual));
            let metadata = HashMap::from([
                ("stream".to_string(), stream.clone()),
                ("expected".to_string(), expected.clone()),
                ("actual".to_string(), actual.clone()),
            ]);
            let details =
                ErrorDetails::with_error_info("WRONG_EXPECTED_VERSION", "accrual", metadata);
            Status::with_error_details(
                Code::Aborted,
                format!("stream {stream}: expected version {expected}, actual {actual}"),
                details,
            )
        }
        StoreError::WrongExpectedPosition { expected, actual } => {
            let metadata = HashMap::from([
                ("expected_position".to_string(), expected.to_string()),
                ("actual_position".to_string(), actual.to_string()),
            ]);
            let details = ErrorDetails::with_error_info("LOG_MOVED_ON", "accrual", metadata);
            let message = format!(
                "the log moved on while the command was decided (another writer appended): \
                 decided for position {expected}, the log is at {actual}; retry"
            );
            Status::with_error_details(Code::Aborted, message, details)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Version conflicts carry plain values in `ErrorInfo`, readable from any language.
    #[test]
    fn version_conflicts_name_versions_plainly() {
        let table = [
            (ExpectedVersion::Exact(7), Some(1), "7", "1"),
            (ExpectedVersion::NoStream, Some(0), "no_stream", "0"),
            (ExpectedVersion::Exact(0), None, "0", "no_stream"),
        ];
        for (expected, actual, want_expected, want_actual) in table {
            let stream = "subscription-s1".to_string();
            let status = from_store(StoreError::WrongExpectedVersion { stream, expected, actual });
            assert_eq!(status.code(), Code::Aborted);
            let info = status.get_details_error_info().expect("ErrorInfo attached");
            assert_eq!(info.reason, "WRONG_EXPECTED_VERSION");
            assert_eq!(info.metadata["expected"], want_expected);
            assert_eq!(info.metadata["actual"], want_actual);
            assert_eq!(info.metadata["stream"], "subscription-s1");
            let message = format!("expected version {want_expected}, actual {want_actual}");
            assert!(status.message().ends_with(&message), "{}", status.message());
        }
    }

    /// An invoice amount past `Decimal`'s range (pre-bounds state) is a business-rule refusal:
    /// FAILED_PRECONDITION with a `PreconditionFailure` of type AMOUNT_OVERFLOW naming the
    /// subscription (the arguments are fine; the stored plan or customer cannot be invoiced).
    #[test]
    fn amount_overflow_is_a_failed_precondition() {
        let err = DomainError::overflow("subscription-s1", "invoice inv-s1-1 tax (10 % of 1)");
        let status = from_domain(err);
        assert_eq!(status.code(), Code::FailedPrecondition);
        let failure = status.get_details_precondition_failure().expect("PreconditionFailure");
        let v = &failure.violations[0];
        assert_eq!((v.r#type.as_str(), v.subject.as_str()), ("AMOUNT_OVERFLOW", "subscription-s1"));
        assert!(status.message().contains("tax (10 % of 1) overflows"), "{}", status.message());
    }
}
