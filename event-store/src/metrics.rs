//! What the store records through the `metrics` facade. The crate never installs a recorder
//! (the binary does, or nobody): without one every call below is a no-op handle, so the cost on
//! the append path is a few atomic loads and two clock reads per request, the rest per group
//! commit, never per event.

use std::time::{Duration, Instant};

/// Counter: events the writer committed (durable) since the process started.
pub const EVENTS_APPENDED_TOTAL: &str = "accrual_events_appended_total";
/// Gauge: events in the log (its head position), set at open and after every commit.
pub const LOG_EVENTS: &str = "accrual_log_events";
/// Histogram: seconds from an append request's enqueue to its outcome (queue wait, group
/// planning, write and fsync): what a caller of `append` waits for.
pub const APPEND_SECONDS: &str = "accrual_append_seconds";
/// Histogram: seconds of one `Db::flush` (the fsync of a group commit).
pub const FSYNC_SECONDS: &str = "accrual_fsync_seconds";
/// Histogram: events per group commit.
pub const COMMIT_BATCH_EVENTS: &str = "accrual_commit_batch_events";
/// Histogram: append requests per group commit (including those it rejected).
pub const COMMIT_BATCH_REQUESTS: &str = "accrual_commit_batch_requests";
/// Counter: group commits that failed to persist (the store refuses appends from then on).
pub const COMMIT_FAILURES_TOTAL: &str = "accrual_commit_failures_total";

/// Registers the help text of the store's metrics with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(EVENTS_APPENDED_TOTAL, Unit::Count, "Events durably appended to the log");
    describe_gauge!(LOG_EVENTS, Unit::Count, "Events in the log (its head position)");
    describe_histogram!(
        APPEND_SECONDS,
        Unit::Seconds,
        "Append request latency from enqueue to outcome (queue, group commit, fsync)"
    );
    describe_histogram!(FSYNC_SECONDS, Unit::Seconds, "Duration of the fsync of a group commit");
    describe_histogram!(COMMIT_BATCH_EVENTS, Unit::Count, "Events per group commit");
    describe_histogram!(COMMIT_BATCH_REQUESTS, Unit::Count, "Append requests per group commit");
    describe_counter!(COMMIT_FAILURES_TOTAL, Unit::Count, "Group commits that failed to persist");
}

/// One group commit's figures, recorded once per group.
pub(crate) fn record_commit(events: u64, requests: usize, head: u64) {
    metrics::counter!(EVENTS_APPENDED_TOTAL).increment(events);
    metrics::histogram!(COMMIT_BATCH_EVENTS).record(events as f64);
    metrics::histogram!(COMMIT_BATCH_REQUESTS).record(requests as f64);
    metrics::gauge!(LOG_EVENTS).set(head as f64);
}

pub(crate) fn record_fsync(elapsed: Duration) {
    metrics::histogram!(FSYNC_SECONDS).record(elapsed);
}

pub(crate) fn record_commit_failure() {
    metrics::counter!(COMMIT_FAILURES_TOTAL).increment(1);
}

pub(crate) fn record_head(head: u64) {
    metrics::gauge!(LOG_EVENTS).set(head as f64);
}

/// The append-latency histogram, fetched once per group and fed one request at a time.
pub(crate) struct AppendLatency(metrics::Histogram);

impl AppendLatency {
    pub(crate) fn new() -> Self {
        AppendLatency(metrics::histogram!(APPEND_SECONDS))
    }

    pub(crate) fn record(&self, enqueued_at: Instant) {
        self.0.record(enqueued_at.elapsed());
    }
}
