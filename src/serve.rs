//! `accrual serve`: opens the sled store, rebuilds the write model, serves gRPC, runs the
//! billing scheduler, and shuts down gracefully on SIGTERM or ctrl-c.

use std::sync::Arc;
use std::time::Duration;

use command_service::engine::{Clock, Engine};
use command_service::server::{serve, ServerLimits};
use command_service::service::Limits;
use domain::commands::Policy;
use event_store::{EventStore, SledConfig, SledStore};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Settings;

pub fn system_clock() -> Clock {
    Arc::new(jiff::Timestamp::now)
}

pub async fn open_engine(
    data_dir: &std::path::Path,
    policy: Policy,
) -> anyhow::Result<Arc<Engine>> {
    let store = SledStore::open(SledConfig::new(data_dir))?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    let engine = Engine::open(store, policy, system_clock())
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok(Arc::new(engine))
}

pub async fn run(s: Settings) -> anyhow::Result<()> {
    let policy = Policy {
        max_payment_attempts: s.max_payment_attempts,
        grace_period_secs: s.grace_period_secs,
        ..Policy::default()
    };
    let engine = open_engine(&s.data_dir, policy).await?;
    let listener = TcpListener::bind(s.listen).await?;
    tracing::info!(data_dir = %s.data_dir.display(), listen = %listener.local_addr()?, "accrual serving");
    let (stop_tx, stop_rx) = watch::channel(false);
    let scheduler =
        tokio::spawn(scheduler(engine.clone(), s.scheduler_interval_secs, stop_rx.clone()));
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    };
    serve(listener, engine, Limits::default(), ServerLimits::default(), shutdown).await?;
    scheduler.await?;
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
