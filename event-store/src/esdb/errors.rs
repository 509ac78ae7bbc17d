//! What an ESDB client error means for Accrual: a lost race for the log stream (re-plan), a
//! transient failure (retry, bounded, with backoff), or a permanent one (UNAVAILABLE now).

use std::time::Duration;

use crate::StoreError;

/// A failed call to the log stream, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// `WrongExpectedVersion` on the log stream: another node appended first. `current` is the
    /// stream's last revision as the server reported it (`None`: no stream).
    Conflict { current: Option<u64> },
    /// Connection lost, leader changed (`NotLeader`), deadline exceeded, server busy: worth
    /// retrying. The write may or may not have happened.
    Transient(String),
    /// Access denied, stream deleted, unsupported server, bad data: retrying will not help.
    Permanent(String),
    /// The server's `MaxAppendSize` refused the append (EventStoreDB's default is 1 MiB, counted
    /// as data + 2 × event type length per event): the same append never fits.
    TooLarge(String),
}

impl Failure {
    /// The caller-facing error (mapped to gRPC UNAVAILABLE by the command service).
    pub fn into_store_error(self) -> StoreError {
        match self {
            Failure::Conflict { current } => StoreError::Unavailable(format!(
                "the shared log moved on concurrently (now at {current:?}) too often"
            )),
            Failure::Transient(m) => {
                StoreError::Unavailable(format!("log server unreachable after retries: {m}"))
            }
            Failure::Permanent(m) => StoreError::Unavailable(format!("log server: {m}")),
            Failure::TooLarge(m) => StoreError::Invalid(format!(
                "the request's events do not fit one append to the log server ({m}); the server's \
                 limit (EventStoreDB MaxAppendSize, NATS max_payload) must be raised to accept it"
            )),
        }
    }
}

/// Classifies a client error.
pub fn classify(err: &eventstore::Error) -> Failure {
    use eventstore::Error as E;
    match err {
        E::WrongExpectedVersion { current, .. } => Failure::Conflict {
            current: match current {
                eventstore::CurrentRevision::Current(r) => Some(*r),
                eventstore::CurrentRevision::NoStream => None,
            },
        },
        E::NotLeaderException(leader) => Failure::Transient(format!(
            "not the leader (leader is {}:{})",
            leader.host, leader.port
        )),
        E::ConnectionClosed
        | E::GrpcConnectionError(_)
        | E::DeadlineExceeded
        | E::ServerError(_) => Failure::Transient(err.to_string()),
        E::Grpc { code: tonic::Code::InvalidArgument, message }
            if message.starts_with("Maximum Append Size") =>
        {
            Failure::TooLarge(message.clone())
        }
        E::Grpc { code, .. } if transient_code(*code) => Failure::Transient(err.to_string()),
        other => Failure::Permanent(other.to_string()),
    }
}

fn transient_code(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
            | tonic::Code::ResourceExhausted
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled
    )
}

/// Bounded retries with exponential backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts of one call on transient failures (≥ 1).
    pub attempts_max: u32,
    pub backoff_first_ms: u64,
    pub backoff_max_ms: u64,
    /// Re-plans of one group commit after losing the log stream to another node.
    pub conflicts_max: u32,
}

impl Default for RetryPolicy {
    /// 6 attempts over ≈ 3.1 s (100, 200, 400, 800, 1,600 ms): enough for an ESDB leader
    /// election (typically ≈ 1-2 s), short enough that a caller sees UNAVAILABLE promptly.
    fn default() -> Self {
        RetryPolicy {
            attempts_max: 6,
            backoff_first_ms: 100,
            backoff_max_ms: 2_000,
            conflicts_max: 64,
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt `attempt` (0-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64.checked_shl(attempt.min(32)).unwrap_or(u64::MAX);
        Duration::from_millis(self.backoff_first_ms.saturating_mul(factor).min(self.backoff_max_ms))
    }

    /// The sum of all pauses a call can take before giving up.
    pub fn total_backoff(&self) -> Duration {
        (0..self.attempts_max.saturating_sub(1)).map(|a| self.backoff(a)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_expected_version_is_a_conflict_with_the_current_revision() {
        let e = eventstore::Error::WrongExpectedVersion {
            expected: eventstore::ExpectedRevision::Exact(3),
            current: eventstore::CurrentRevision::Current(7),
        };
        assert_eq!(classify(&e), Failure::Conflict { current: Some(7) });
        let none = eventstore::Error::WrongExpectedVersion {
            expected: eventstore::ExpectedRevision::Exact(3),
            current: eventstore::CurrentRevision::NoStream,
        };
        assert_eq!(classify(&none), Failure::Conflict { current: None });
    }

    #[test]
    fn leader_changes_and_lost_connections_are_transient() {
        let leader = eventstore::Endpoint { host: "n2".into(), port: 2113 };
        let f = classify(&eventstore::Error::NotLeaderException(leader));
        assert!(matches!(&f, Failure::Transient(m) if m.contains("n2:2113")), "{f:?}");
        for e in [
            eventstore::Error::ConnectionClosed,
            eventstore::Error::DeadlineExceeded,
            eventstore::Error::ServerError("timeout".into()),
            eventstore::Error::Grpc { code: tonic::Code::Unavailable, message: "down".into() },
        ] {
            assert!(matches!(classify(&e), Failure::Transient(_)), "{e:?}");
        }
    }

    #[test]
    fn permission_and_deleted_streams_are_permanent() {
        for e in [
            eventstore::Error::AccessDenied,
            eventstore::Error::ResourceDeleted,
            eventstore::Error::UnsupportedFeature,
            eventstore::Error::Grpc { code: tonic::Code::PermissionDenied, message: "no".into() },
        ] {
            assert!(matches!(classify(&e), Failure::Permanent(_)), "{e:?}");
        }
    }

    #[test]
    fn the_servers_max_append_size_is_too_large_and_reaches_callers_as_invalid() {
        let e = eventstore::Error::Grpc {
            code: tonic::Code::InvalidArgument,
            message: "Maximum Append Size of 1048576 Exceeded.".into(),
        };
        let f = classify(&e);
        assert_eq!(f, Failure::TooLarge("Maximum Append Size of 1048576 Exceeded.".into()));
        let err = f.into_store_error();
        assert!(matches!(&err, StoreError::Invalid(m) if m.contains("MaxAppendSize")), "{err}");
        let other = eventstore::Error::Grpc {
            code: tonic::Code::InvalidArgument,
            message: "something else".into(),
        };
        assert!(matches!(classify(&other), Failure::Permanent(_)));
    }

    #[test]
    fn every_other_failure_reaches_callers_as_unavailable() {
        for f in [
            Failure::Conflict { current: Some(1) },
            Failure::Transient("x".into()),
            Failure::Permanent("y".into()),
        ] {
            assert!(matches!(f.into_store_error(), StoreError::Unavailable(_)));
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_is_bounded_in_total() {
        let p = RetryPolicy::default();
        let ms: Vec<u128> = (0..7).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1_600, 2_000, 2_000]);
        assert_eq!(p.total_backoff(), Duration::from_millis(3_100));
        assert_eq!(p.backoff(u32::MAX), Duration::from_millis(2_000), "no overflow");
    }
}
