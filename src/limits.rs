//! The limits of `accrual serve`, each named with its unit and settable by flag, environment
//! variable or the `[limits]` table of the TOML file (flags > env > file > default), checked at
//! startup: a value out of its range, or limits that contradict each other, stop the server
//! with a message naming the limit.

use clap::Args;
use command_service::service::Limits;
use serde::Deserialize;

use crate::server::ServerLimits;

/// The limit flags; the same names are the keys of the TOML `[limits]` table.
#[derive(Args, Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitArgs {
    /// Largest request message (bytes) any call accepts; larger: RESOURCE_EXHAUSTED
    /// [default: 16777216]
    #[arg(long, env = "ACCRUAL_MESSAGE_BYTES_MAX")]
    pub message_bytes_max: Option<u32>,
    /// HTTP/2 streams one connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS); a client
    /// queues calls beyond it [default: 256]
    #[arg(long, env = "ACCRUAL_CONCURRENT_STREAMS_MAX")]
    pub concurrent_streams_max: Option<u32>,
    /// Calls one connection may have in progress; more: RESOURCE_EXHAUSTED at once [default: 128]
    #[arg(long, env = "ACCRUAL_CONCURRENCY_PER_CONNECTION_MAX")]
    pub concurrency_per_connection_max: Option<u32>,
    /// Calls in progress on the whole server (health and reflection not counted); more:
    /// RESOURCE_EXHAUSTED at once [default: 512]
    #[arg(long, env = "ACCRUAL_CALLS_IN_FLIGHT_MAX")]
    pub calls_in_flight_max: Option<u32>,
    /// Longest a unary call or client-streaming upload may take (a client's shorter grpc-timeout
    /// wins); longer: DEADLINE_EXCEEDED [default: 60000]
    #[arg(long, env = "ACCRUAL_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Most usage events in one IngestUsage batch (and per append of StreamUsage); more:
    /// RESOURCE_EXHAUSTED [default: 10000]
    #[arg(long, env = "ACCRUAL_BATCH_EVENTS_MAX")]
    pub batch_events_max: Option<u32>,
    /// Most usage events in one StreamUsage or IngestUsage call; more: RESOURCE_EXHAUSTED
    /// [default: 1000000]
    #[arg(long, env = "ACCRUAL_STREAM_EVENTS_MAX")]
    pub stream_events_max: Option<u32>,
    /// Longest an IngestUsage stream stays open; then it ends with RESOURCE_EXHAUSTED
    /// [default: 600000]
    #[arg(long, env = "ACCRUAL_STREAM_DURATION_MS_MAX")]
    pub stream_duration_ms_max: Option<u64>,
    /// Batch results IngestUsage buffers for a slow reader before it stops reading
    /// [default: 16]
    #[arg(long, env = "ACCRUAL_INGEST_REPLIES_MAX")]
    pub ingest_replies_max: Option<u32>,
}

/// The range each limit must be in (inclusive).
const MESSAGE_BYTES: (u64, u64) = (1_024, 256 * 1024 * 1024);
const STREAMS: (u64, u64) = (1, 10_000);
const CALLS_IN_FLIGHT: (u64, u64) = (1, 100_000);
const REQUEST_TIMEOUT_MS: (u64, u64) = (100, 3_600_000);
const BATCH_EVENTS: (u64, u64) = (1, 100_000);
const STREAM_EVENTS: (u64, u64) = (1, 100_000_000);
const STREAM_DURATION_MS: (u64, u64) = (1_000, 86_400_000);
const INGEST_REPLIES: (u64, u64) = (1, 1_024);

fn within(name: &str, value: u64, (low, high): (u64, u64)) -> anyhow::Result<()> {
    anyhow::ensure!(
        (low..=high).contains(&value),
        "limit {name} = {value} is out of range: it must be {low} to {high}"
    );
    Ok(())
}

impl LimitArgs {
    /// These values where set, else `file`'s.
    fn or(self, file: LimitArgs) -> LimitArgs {
        LimitArgs {
            message_bytes_max: self.message_bytes_max.or(file.message_bytes_max),
            concurrent_streams_max: self.concurrent_streams_max.or(file.concurrent_streams_max),
            concurrency_per_connection_max: self
                .concurrency_per_connection_max
                .or(file.concurrency_per_connection_max),
            calls_in_flight_max: self.calls_in_flight_max.or(file.calls_in_flight_max),
            request_timeout_ms: self.request_timeout_ms.or(file.request_timeout_ms),
            batch_events_max: self.batch_events_max.or(file.batch_events_max),
            stream_events_max: self.stream_events_max.or(file.stream_events_max),
            stream_duration_ms_max: self.stream_duration_ms_max.or(file.stream_duration_ms_max),
            ingest_replies_max: self.ingest_replies_max.or(file.ingest_replies_max),
        }
    }
}

/// Flags and env (`args`) over the file's `[limits]` over the defaults, checked.
pub fn resolve(args: LimitArgs, file: Option<LimitArgs>) -> anyhow::Result<(Limits, ServerLimits)> {
    let given = args.or(file.unwrap_or_default());
    let (l, s) = (Limits::default(), ServerLimits::default());
    let streams_max = given.concurrent_streams_max.unwrap_or(s.concurrent_streams_max);
    let in_flight_max = given.calls_in_flight_max.unwrap_or(s.calls_in_flight_max);
    // Unset, the per-connection bound stays within the two it must not exceed.
    let per_connection_default =
        (s.concurrency_per_connection_max as u32).min(streams_max).min(in_flight_max);
    let server = ServerLimits {
        message_bytes_max: given.message_bytes_max.map_or(s.message_bytes_max, |v| v as usize),
        concurrent_streams_max: streams_max,
        concurrency_per_connection_max: given
            .concurrency_per_connection_max
            .unwrap_or(per_connection_default) as usize,
        calls_in_flight_max: in_flight_max,
        request_timeout_ms: given.request_timeout_ms.unwrap_or(s.request_timeout_ms),
        tls: None,
    };
    let command = Limits {
        batch_events_max: given.batch_events_max.map_or(l.batch_events_max, |v| v as usize),
        stream_events_max: given.stream_events_max.map_or(l.stream_events_max, |v| v as usize),
        stream_duration_ms_max: given.stream_duration_ms_max.unwrap_or(l.stream_duration_ms_max),
        ingest_replies_max: given.ingest_replies_max.map_or(l.ingest_replies_max, |v| v as usize),
    };
    check(&command, &server)?;
    Ok((command, server))
}

/// Each limit in its range, and no limit that another makes unreachable.
pub fn check(command: &Limits, server: &ServerLimits) -> anyhow::Result<()> {
    within("message_bytes_max", server.message_bytes_max as u64, MESSAGE_BYTES)?;
    within("concurrent_streams_max", u64::from(server.concurrent_streams_max), STREAMS)?;
    within("calls_in_flight_max", u64::from(server.calls_in_flight_max), CALLS_IN_FLIGHT)?;
    let per_connection = server.concurrency_per_connection_max as u64;
    within("concurrency_per_connection_max", per_connection, STREAMS)?;
    within("request_timeout_ms", server.request_timeout_ms, REQUEST_TIMEOUT_MS)?;
    within("batch_events_max", command.batch_events_max as u64, BATCH_EVENTS)?;
    within("stream_events_max", command.stream_events_max as u64, STREAM_EVENTS)?;
    within("stream_duration_ms_max", command.stream_duration_ms_max, STREAM_DURATION_MS)?;
    within("ingest_replies_max", command.ingest_replies_max as u64, INGEST_REPLIES)?;
    anyhow::ensure!(
        per_connection <= u64::from(server.concurrent_streams_max),
        "limit concurrency_per_connection_max ({per_connection}) must not exceed \
         concurrent_streams_max ({}): a connection cannot carry more calls than streams",
        server.concurrent_streams_max
    );
    anyhow::ensure!(
        per_connection <= u64::from(server.calls_in_flight_max),
        "limit concurrency_per_connection_max ({per_connection}) must not exceed \
         calls_in_flight_max ({})",
        server.calls_in_flight_max
    );
    anyhow::ensure!(
        command.batch_events_max <= command.stream_events_max,
        "limit batch_events_max ({}) must not exceed stream_events_max ({}): a full batch \
         would be refused",
        command.batch_events_max,
        command.stream_events_max
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_named_values_override_them() {
        let (command, server) = resolve(LimitArgs::default(), None).unwrap();
        assert_eq!(command.batch_events_max, 10_000);
        assert_eq!(server.message_bytes_max, 16 * 1024 * 1024);
        let args = LimitArgs { calls_in_flight_max: Some(7), ..Default::default() };
        let (_, server) = resolve(args, None).unwrap();
        assert_eq!(server.calls_in_flight_max, 7);
        assert_eq!(server.concurrency_per_connection_max, 7, "unset, it stays within in-flight");
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file: LimitArgs =
            toml::from_str("request_timeout_ms = 5000\nbatch_events_max = 50\n").unwrap();
        let args = LimitArgs { request_timeout_ms: Some(2_000), ..Default::default() };
        let (command, server) = resolve(args, Some(file)).unwrap();
        assert_eq!(server.request_timeout_ms, 2_000);
        assert_eq!(command.batch_events_max, 50);
        assert_eq!(command.stream_events_max, 1_000_000);
    }

    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let cases = [
            (LimitArgs { message_bytes_max: Some(10), ..Default::default() }, "message_bytes_max"),
            (LimitArgs { calls_in_flight_max: Some(0), ..Default::default() }, "calls_in_flight"),
            (LimitArgs { request_timeout_ms: Some(0), ..Default::default() }, "request_timeout"),
            (LimitArgs { batch_events_max: Some(0), ..Default::default() }, "batch_events_max"),
            (LimitArgs { stream_duration_ms_max: Some(5), ..Default::default() }, "duration"),
            (LimitArgs { ingest_replies_max: Some(5_000), ..Default::default() }, "replies"),
            (LimitArgs { concurrent_streams_max: Some(0), ..Default::default() }, "streams"),
        ];
        for (args, named) in cases {
            let error = resolve(args.clone(), None).unwrap_err().to_string();
            assert!(error.contains(named) && error.contains("out of range"), "{args:?}: {error}");
        }
    }

    #[test]
    fn contradicting_limits_are_refused() {
        let cases = [
            LimitArgs {
                concurrent_streams_max: Some(8),
                concurrency_per_connection_max: Some(9),
                ..Default::default()
            },
            LimitArgs {
                calls_in_flight_max: Some(4),
                concurrency_per_connection_max: Some(5),
                ..Default::default()
            },
            LimitArgs {
                batch_events_max: Some(100),
                stream_events_max: Some(99),
                ..Default::default()
            },
        ];
        for args in cases {
            let error = resolve(args.clone(), None).unwrap_err().to_string();
            assert!(error.contains("must not exceed"), "{args:?}: {error}");
        }
    }

    #[test]
    fn the_config_files_limits_table_is_read_and_checked() {
        use crate::config::{ServeArgs, Settings};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accrual.toml");
        let text = "[limits]\ncalls_in_flight_max = 9\nrequest_timeout_ms = 5000\n";
        std::fs::write(&path, text).unwrap();
        let limits = LimitArgs { request_timeout_ms: Some(700), ..Default::default() };
        let args = ServeArgs { config: Some(path.clone()), limits, ..Default::default() };
        let s = Settings::resolve(args).unwrap();
        assert_eq!(s.server_limits.calls_in_flight_max, 9);
        assert_eq!(s.server_limits.request_timeout_ms, 700, "the flag wins");
        std::fs::write(&path, "[limits]\nbatch_events_max = 0\n").unwrap();
        let args = ServeArgs { config: Some(path), ..Default::default() };
        let error = Settings::resolve(args).unwrap_err().to_string();
        assert!(error.contains("batch_events_max"), "{error}");
    }

    #[test]
    fn unknown_keys_in_the_limits_table_are_refused() {
        assert!(toml::from_str::<LimitArgs>("calls_in_flight = 3\n").is_err());
    }
}
