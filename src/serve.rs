//! `accrual serve`: opens the sled event log, rebuilds the write model, runs the projections
//! (invoices, MRR, journal) into their own sled read models, serves gRPC (commands and queries), runs the billing
//! scheduler, and shuts down gracefully on SIGTERM or ctrl-c.
//!
//! Data directory layout: `<data-dir>/log` (the event store), `<data-dir>/read-models` (the
//! projections; can be deleted at any time and is rebuilt from the log).

use std::sync::Arc;
use std::time::Duration;

use command_service::engine::{Clock, Engine};
use command_service::service::Limits;
use domain::commands::Policy;
use event_store::{EventStore, SledConfig, SledStore};
use projections::invoices::{InvoiceReader, InvoicesProjection};
use projections::journal::{JournalProjection, JournalReader};
use projections::mrr::{MrrProjection, MrrReader};
use projections::{Projection, ReadModel, Runner, RunnerConfig};
use query_service::{QueryApi, ReadModels, View};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Settings;
use crate::server::{serve, ServerLimits};

pub fn system_clock() -> Clock {
    Arc::new(jiff::Timestamp::now)
}

/// Opens the event log under `data_dir` and folds it into the write engine.
pub async fn open_engine(
    data_dir: &std::path::Path,
    policy: Policy,
) -> anyhow::Result<(Arc<dyn EventStore>, Arc<Engine>)> {
    let store = SledStore::open(SledConfig::new(data_dir.join("log")))?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    let engine = Engine::open(store.clone(), policy, system_clock())
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok((store, Arc::new(engine)))
}

/// Spawns one projection's runner, following the log until `stop`; returns its view.
pub(crate) fn spawn_runner<P: Projection, R>(
    db: &sled::Db,
    store: Arc<dyn EventStore>,
    projection: P,
    reader: impl FnOnce(ReadModel) -> R,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(View<R>, tokio::task::JoinHandle<()>)> {
    let name = projection.name();
    let runner = Runner::open(db, store, projection, RunnerConfig::default())?;
    let view = View { reader: reader(runner.read_model()), progress: runner.progress() };
    let task = tokio::spawn(async move {
        if let Err(e) = runner.run(stop).await {
            tracing::error!(projection = name, error = %e, "projection stopped");
        }
    });
    Ok((view, task))
}

/// Starts the projections (invoices, MRR, journal) on `<data_dir>/read-models`.
pub(crate) fn start_projections(
    data_dir: &std::path::Path,
    store: Arc<dyn EventStore>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(ReadModels, Vec<tokio::task::JoinHandle<()>>)> {
    let db = projections::open_db(data_dir.join("read-models"))?;
    let (invoices, a) =
        spawn_runner(&db, store.clone(), InvoicesProjection, InvoiceReader::new, stop.clone())?;
    let (mrr, b) = spawn_runner(&db, store.clone(), MrrProjection, MrrReader::new, stop.clone())?;
    let (journal, c) =
        spawn_runner(&db, store, JournalProjection::default(), JournalReader::new, stop)?;
    Ok((ReadModels { invoices, mrr, journal }, vec![a, b, c]))
}

pub async fn run(s: Settings) -> anyhow::Result<()> {
    let policy = Policy {
        max_payment_attempts: s.max_payment_attempts,
        grace_period_secs: s.grace_period_secs,
        ..Policy::default()
    };
    let (store, engine) = open_engine(&s.data_dir, policy).await?;
    let listener = TcpListener::bind(s.listen).await?;
    tracing::info!(data_dir = %s.data_dir.display(), listen = %listener.local_addr()?, "accrual serving");
    let (stop_tx, stop_rx) = watch::channel(false);
    let (models, projectors) = start_projections(&s.data_dir, store, stop_rx.clone())?;
    let scheduler =
        tokio::spawn(scheduler(engine.clone(), s.scheduler_interval_secs, stop_rx.clone()));
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    };
    let query = Some(QueryApi::new(models));
    serve(listener, engine, query, Limits::default(), ServerLimits::default(), shutdown).await?;
    scheduler.await?;
    for projector in projectors {
        projector.await?;
    }
    Ok(())
}

/// Calls RunBilling(now) every `interval_secs` until told to stop.
async fn scheduler(engine: Arc<Engine>, interval_secs: u64, mut stop: watch::Receiver<bool>) {
    if interval_secs == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(interval_secs));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let as_of = engine.now();
        match engine.run_billing(as_of, None).await {
            Ok(done) if !done.events.is_empty() => {
                tracing::info!(events = done.events.len(), "scheduled billing run")
            }
            Ok(_) => {}
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "scheduled billing run failed")
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
