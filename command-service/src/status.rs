//! The error contract of SPEC §3: every domain and store error becomes one gRPC status with
//! google.rpc details (BadRequest, PreconditionFailure, ResourceInfo, ErrorInfo, RetryInfo).
//!
//! Bounded: a status travels in HTTP/2 trailers (`grpc-message` and the details, base64), which
//! clients cap (gRPC core: 8 KiB), so a status that echoed a 1 MB id would reach the caller as
//! RESOURCE_EXHAUSTED instead of its own code. Every text here is made [`shown`]: each piece
//! of caller input in it (a quoted value, or one long word such as an id) at most
//! [`ECHO_CHARS_MAX`] characters then `…`, the message at most [`MESSAGE_BYTES_MAX`] bytes, a
//! field violation's field and description at most [`FIELD_BYTES_MAX`] and
//! [`DESCRIPTION_BYTES_MAX`], and at most [`VIOLATIONS_MAX`] violations (then one saying how
//! many more there were).

use std::collections::HashMap;
use std::time::Duration;

use domain::DomainError;
use event_store::{ExpectedVersion, StoreError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Delay suggested to callers on UNAVAILABLE.
pub const RETRY_DELAY_MS: u64 = 200;

/// Most characters of one piece of caller input a status repeats; longer ones end in `…`.
pub const ECHO_CHARS_MAX: usize = 64;
/// Longest status message (bytes, cut at a character boundary).
pub const MESSAGE_BYTES_MAX: usize = 512;
/// Longest `field` of a field violation (bytes).
pub const FIELD_BYTES_MAX: usize = 96;
/// Longest `description` of a field violation (bytes).
pub const DESCRIPTION_BYTES_MAX: usize = 192;
/// Most field violations one status lists; the rest are counted in one more.
pub const VIOLATIONS_MAX: usize = 8;

pub fn from_domain(err: DomainError) -> Status {
    match err {
        DomainError::Invalid(violations) => {
            let mut details = ErrorDetails::new();
            for v in violations.iter().take(VIOLATIONS_MAX) {
                details.add_bad_request_violation(
                    shown(&v.field, FIELD_BYTES_MAX),
                    shown(&v.description, DESCRIPTION_BYTES_MAX),
                );
            }
            if let Some(more) = violations.len().checked_sub(VIOLATIONS_MAX).filter(|n| *n > 0) {
                let why = format!("{more} more bad fields not listed (at most {VIOLATIONS_MAX})");
                details.add_bad_request_violation("request", why);
            }
            let message = DomainError::Invalid(violations).to_string();
            Status::with_error_details(Code::InvalidArgument, message_of(&message), details)
        }
        DomainError::NotFound { kind, id } => {
            let id = echo(&id);
            let details = ErrorDetails::with_resource_info(kind, id.clone(), "", "not found");
            Status::with_error_details(Code::NotFound, format!("{kind} {id} not found"), details)
        }
        DomainError::Precondition { kind, subject, description } => {
            let mut details = ErrorDetails::new();
            let description = message_of(&description);
            details.add_precondition_failure_violation(kind, echo(&subject), description.clone());
            Status::with_error_details(Code::FailedPrecondition, description, details)
        }
        DomainError::Conflict(message) => Status::already_exists(message_of(&message)),
    }
}

/// `input` as a status may repeat it: at most [`ECHO_CHARS_MAX`] characters, then `…`.
pub fn echo(input: &str) -> String {
    match input.char_indices().nth(ECHO_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &input[..cut]),
        None => input.to_string(),
    }
}

/// A status message: [`shown`] within [`MESSAGE_BYTES_MAX`].
fn message_of(text: &str) -> String {
    shown(text, MESSAGE_BYTES_MAX)
}

/// `text` with each piece of caller input in it cut to [`ECHO_CHARS_MAX`] characters (a
/// `"quoted"` value, as `{:?}` writes one, or a word longer than that, such as an id), then cut
/// to `bytes_max` bytes at a character boundary; a cut is marked `…`.
pub fn shown(text: &str, bytes_max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(bytes_max + 8));
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let (piece, tail) = if c == '"' {
            rest.split_at(quoted_len(rest))
        } else if c.is_whitespace() {
            rest.split_at(c.len_utf8())
        } else {
            rest.split_at(rest.find(|c: char| c.is_whitespace() || c == '"').unwrap_or(rest.len()))
        };
        if c == '"' && piece.len() >= 2 && piece.ends_with('"') {
            out.push_str(&format!("\"{}\"", echo(&piece[1..piece.len() - 1])));
        } else {
            out.push_str(&echo(piece));
        }
        rest = tail;
        if out.len() > bytes_max {
            break;
        }
    }
    if out.len() > bytes_max {
        let cut = (0..=bytes_max.saturating_sub('…'.len_utf8()))
            .rev()
            .find(|i| out.is_char_boundary(*i))
            .unwrap_or(0);
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Bytes of the `"quoted"` value `s` starts with, up to its closing quote (a quote escaped
/// with `\` does not close it), or all of `s` when it has none.
fn quoted_len(s: &str) -> usize {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return i + 1,
            _ => escaped = false,
        }
    }
    s.len()
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
            let stream = echo(&stream);
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
            "idempotency key {:?} was used with a different request",
            echo(&key)
        )),
        StoreError::Invalid(m) => Status::invalid_argument(message_of(&m)),
        other => unavailable(other.to_string()),
    }
}

pub fn unavailable(message: impl Into<String>) -> Status {
    let details = ErrorDetails::with_retry_info(Some(Duration::from_millis(RETRY_DELAY_MS)));
    Status::with_error_details(Code::Unavailable, message_of(&message.into()), details)
}

/// OUT_OF_RANGE for a log position beyond the log's head, with a BadRequest naming `field`:
/// the same call may succeed once the log has grown that far.
pub fn beyond_head(field: &str, position: u64, head: u64) -> Status {
    let message = format!(
        "{field} {position} is beyond the log head: the log holds {head} events (positions are \
         log lengths: a CommandAck.position or a reply's position)"
    );
    let details = ErrorDetails::with_bad_request_violation(field, message.clone());
    Status::with_error_details(Code::OutOfRange, message, details)
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

    /// Caller input in a status is cut to a short prefix, whatever its size, so the status
    /// fits in any client's trailers; our own words around it are kept.
    #[test]
    fn statuses_echo_only_a_prefix_of_caller_input() {
        let huge = "x".repeat(1_000_000);
        let quoted = format!("{:?} is not a date YYYY-MM-DD", format!("{huge} \"y\" z"));
        let cases = [
            (DomainError::invalid("from", quoted), "is not a date YYYY-MM-DD"),
            (DomainError::invalid(format!("properties[{huge}]"), "too long"), "too long"),
            (DomainError::not_found("invoice", &huge), " not found"),
            (
                DomainError::precondition("X", format!("s-{huge}"), format!("s-{huge} is closed")),
                "is closed",
            ),
            (DomainError::Conflict(format!("id {huge} taken")), "taken"),
        ];
        for (err, kept) in cases {
            let status = from_domain(err);
            let mut trailers = tonic::codegen::http::HeaderMap::new();
            status.add_header(&mut trailers).expect("a status encodes");
            let bytes: usize = trailers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
            assert!(bytes < 4_096, "{bytes} bytes of trailers: {:?}", status.code());
            assert!(status.message().contains(kept), "{}", status.message());
            assert!(status.message().contains("x…"), "{}", status.message());
            assert!(!status.message().contains(&"x".repeat(ECHO_CHARS_MAX + 1)));
        }
    }

    #[test]
    fn shown_cuts_quoted_values_and_long_words_only() {
        let long = "a".repeat(ECHO_CHARS_MAX + 1);
        let cut = format!("{}…", "a".repeat(ECHO_CHARS_MAX));
        let table = [
            ("plain words stay".to_string(), "plain words stay".to_string()),
            (format!("{:?} is bad", format!("{long} b")), format!("\"{cut}\" is bad")),
            (format!("id {long} not found"), format!("id {cut} not found")),
            (format!("{:?} ok", "q\"uote"), "\"q\\\"uote\" ok".to_string()),
            ("\"unterminated".to_string(), "\"unterminated".to_string()),
            (format!("é{}", "é".repeat(300)), format!("é{}…", "é".repeat(ECHO_CHARS_MAX - 1))),
        ];
        for (text, want) in table {
            assert_eq!(shown(&text, MESSAGE_BYTES_MAX), want, "{text:.80}");
        }
        let many = "word ".repeat(1_000);
        let bounded = shown(&many, MESSAGE_BYTES_MAX);
        assert!(bounded.len() <= MESSAGE_BYTES_MAX && bounded.ends_with('…'), "{bounded}");
    }

    /// Thousands of bad fields: the first few are listed, the rest counted.
    #[test]
    fn violations_are_bounded_in_number() {
        let list = (0..5_000).map(|i| domain::error::FieldViolation::new(format!("t[{i}]"), "bad"));
        let status = from_domain(DomainError::Invalid(list.collect()));
        let fields = status.get_details_bad_request().expect("BadRequest").field_violations;
        assert_eq!(fields.len(), VIOLATIONS_MAX + 1);
        assert_eq!(fields[VIOLATIONS_MAX].field, "request");
        assert!(fields[VIOLATIONS_MAX].description.starts_with("4992 more"), "{fields:?}");
        assert!(status.message().len() <= MESSAGE_BYTES_MAX + 3);
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
