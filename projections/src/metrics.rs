//! What the projection runners record through the `metrics` facade (labelled by projection).
//! Only [`crate::Runner::run`], the live follower, records: a replay or a rebuild that applies
//! batches itself does not move the live figures. No recorder installed: no-op handles.

use std::time::Duration;

/// Gauge: events in the log not applied yet by the projection (head − checkpoint).
pub const PROJECTION_LAG_EVENTS: &str = "accrual_projection_lag_events";
/// Counter: events the projection's runner committed (applied or skipped as not wanted).
pub const PROJECTION_EVENTS_APPLIED_TOTAL: &str = "accrual_projection_events_applied_total";
/// Histogram: seconds to read, apply and commit one batch.
pub const PROJECTION_BATCH_SECONDS: &str = "accrual_projection_batch_seconds";

/// Registers the help text of the runners' metrics with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        PROJECTION_LAG_EVENTS,
        Unit::Count,
        "Log events not yet applied to the read model (head - checkpoint)"
    );
    describe_counter!(
        PROJECTION_EVENTS_APPLIED_TOTAL,
        Unit::Count,
        "Events committed to the read model by its runner"
    );
    describe_histogram!(
        PROJECTION_BATCH_SECONDS,
        Unit::Seconds,
        "Duration of one projection batch (read, apply, commit)"
    );
}

/// One runner's handles, registered once when it starts following the log.
pub(crate) struct RunnerMetrics {
    lag: metrics::Gauge,
    applied: metrics::Counter,
    batch_seconds: metrics::Histogram,
}

impl RunnerMetrics {
    pub(crate) fn new(projection: &'static str) -> Self {
        RunnerMetrics {
            lag: metrics::gauge!(PROJECTION_LAG_EVENTS, "projection" => projection),
            applied: metrics::counter!(PROJECTION_EVENTS_APPLIED_TOTAL, "projection" => projection),
            batch_seconds: metrics::histogram!(PROJECTION_BATCH_SECONDS, "projection" => projection),
        }
    }

    /// After a step: `events` committed in `elapsed` (none: nothing timed), `lag` left.
    pub(crate) fn record_step(&self, events: usize, elapsed: Duration, lag: u64) {
        if events > 0 {
            self.applied.increment(events as u64);
            self.batch_seconds.record(elapsed);
        }
        self.lag.set(lag as f64);
    }
}
