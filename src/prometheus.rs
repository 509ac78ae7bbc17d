//! The Prometheus exporter (`--metrics-listen`, off by default): the only place that knows
//! about it. The crates that measure (`event-store`, `projections`, [`crate::grpc_metrics`])
//! only use the `metrics` facade; until [`install`] sets the process's recorder their calls are
//! no-ops.
//!
//! The endpoint has no authentication. The figures are counts, latencies and lags (no customer,
//! amount or id), but they show the business's volume: a non-loopback address is allowed,
//! since Prometheus usually scrapes from another host, with a warning at start.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Buckets of every `*_seconds` histogram: 100 µs to 10 s.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets of the group-commit size histograms: powers of two up to the commit bound (16,384).
const BATCH_BUCKETS: [f64; 15] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    16384.0,
];

/// Whether a recorder is installed (so measuring is worth its clock reads).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Binds `addr` (an error names it), serves the Prometheus text format over HTTP on it from
/// now on (`GET /metrics`; any path answers the same), and installs the process's recorder.
/// Call once, inside the tokio runtime, before the store and the server start.
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics endpoint on a non-loopback address: it has no authentication, so restrict who can reach it (firewall, network policy)");
    }
    let builder = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_events".into()), &BATCH_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_requests".into()), &BATCH_BUCKETS)?;
    let (recorder, exporter) = builder
        .build()
        .with_context(|| format!("--metrics-listen {addr}: cannot serve metrics"))?;
    metrics::set_global_recorder(recorder).context("a metrics recorder is already installed")?;
    tokio::spawn(async move {
        if let Err(e) = exporter.await {
            tracing::error!(error = ?e, "metrics endpoint stopped");
        }
    });
    ENABLED.store(true, Ordering::Relaxed);
    event_store::metrics::describe();
    projections::metrics::describe();
    crate::grpc_metrics::describe();
    tracing::info!(%addr, "serving Prometheus metrics at http://{addr}/metrics");
    Ok(())
}
