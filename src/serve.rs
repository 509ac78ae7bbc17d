//! `accrual serve`: opens the sled event log, rebuilds the write model, runs the projections
//! (invoices, MRR, journal) into their own sled read models, serves gRPC (commands and queries),
//! runs the billing scheduler, and shuts down gracefully on SIGTERM or ctrl-c.
//!
//! `--role` runs a subset: `command` (the write model, CommandService, billing scheduler),
//! `projector` (the projection runners), `query` (QueryService, and AuditService over the log
//! this process has open). A query role without the projector serves the read models as they
//! are on disk. sled is single-process (one process locks `log/` and `read-models/`), so a role
//! not run here cannot run in another process on the same data dir. With `--store esdb://...`
//! (the EventStoreDB backend) or `--store nats://...` (a NATS JetStream stream) the log is
//! shared: any number of `--role command` processes and of `--role projector,query` processes
//! (each with its own data dir for its read models) run on one log stream.
//!
//! `--read-only` (with `--role query` only) serves the read models of a directory without
//! opening its log: a stopped server's data dir, or the output of `accrual replay` (the books
//! as they stood at a cutoff). With no log, it runs no AuditService.
//!
//! Data directory layout: `<data-dir>/log` (the event store), `<data-dir>/read-models` (the
//! projections; can be deleted at any time and is rebuilt from the log), `<data-dir>/replays`
//! (what AuditService.Replay wrote, created on first use), `<data-dir>/write-model.snapshot` (the
//! command role's write model at a log position; derived, checked against the log on load).

use std::sync::Arc;
use std::time::Duration;

use command_service::engine::{Clock, Engine};
use domain::commands::Policy;
use event_store::{EventStore, SledConfig, SledStore};
use projections::invoices::{InvoiceReader, InvoicesProjection};
use projections::journal::{JournalProjection, JournalReader};
use projections::mrr::{MrrProjection, MrrReader};
use projections::{Projection, ReadModel, Runner, RunnerConfig, SharedConfig, SharedLog};
use query_service::{QueryApi, ReadModels, View};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audit_service::AuditApi;
use crate::config::Settings;
use crate::server::{serve, ServerLimits};

pub fn system_clock() -> Clock {
    Arc::new(jiff::Timestamp::now)
}

/// Opens the event log under `data_dir`.
pub fn open_store(data_dir: &std::path::Path) -> anyhow::Result<Arc<dyn EventStore>> {
    let store = SledStore::open(SledConfig::new(data_dir.join("log")))?;
    Ok(Arc::new(store))
}

/// Opens the event log `--store` names: sled (the default, `<data-dir>/log`), or a log stream
/// on EventStoreDB or NATS JetStream (read until its end, then followed).
pub async fn open_configured_store(
    spec: &crate::config::StoreSpec,
) -> anyhow::Result<Arc<dyn EventStore>> {
    match spec {
        crate::config::StoreSpec::Sled(path) => {
            Ok(Arc::new(SledStore::open(SledConfig::new(path.clone()))?))
        }
        crate::config::StoreSpec::Esdb(config) => {
            let store = event_store::EsdbStore::open(config)
                .await
                .map_err(|e| anyhow::anyhow!("EventStoreDB {}: {e}", config.redacted()))?;
            Ok(Arc::new(store))
        }
        crate::config::StoreSpec::Nats(config) => {
            let store = event_store::EsdbStore::open_nats(config)
                .await
                .map_err(|e| anyhow::anyhow!("NATS JetStream {}: {e}", config.redacted()))?;
            Ok(Arc::new(store))
        }
    }
}

/// Folds the log into the write engine. On a shared log (EventStoreDB, NATS) the engine keeps a
/// recovery copy of its model, since appends lost to another command node are routine there.
/// `snapshots_in`: the command node's data dir, where the write-model snapshot is kept
/// (`<data-dir>/write-model.snapshot`, on either backend): loaded at open, written at shutdown
/// (and every `snapshot::INTERVAL_EVENTS_DEFAULT` events by a background task when that is > 0).
/// Its dedup index lives in `<data_dir>/dedup`.
async fn engine_on(
    store: Arc<dyn EventStore>,
    policy: Policy,
    shared_log: bool,
    snapshots_in: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> anyhow::Result<Arc<Engine>> {
    let snapshots = snapshots_in.map(command_service::snapshot::SnapshotOptions::in_dir);
    let dedup_dir = Some(data_dir.join("dedup"));
    let options = command_service::engine::EngineOptions { shared_log, snapshots, dedup_dir };
    let engine = Engine::open_with(store, policy, system_clock(), options)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let engine = Arc::new(engine);
    // Ends by itself when the engine closes.
    let _snapshots = engine.start_snapshots();
    Ok(engine)
}

/// Opens the event log under `data_dir` and folds it into the write engine.
pub async fn open_engine(
    data_dir: &std::path::Path,
    policy: Policy,
) -> anyhow::Result<(Arc<dyn EventStore>, Arc<Engine>)> {
    let store = open_store(data_dir)?;
    let engine = engine_on(store.clone(), policy, false, None, data_dir).await?;
    Ok((store, engine))
}

/// Most events a live runner applies as one batch. A runner that keeps up applies what the
/// shared reader read since its last batch; one that fell behind applies up to this many at
/// once, which is what lets the journal catch up: it rates each subscription a batch touches
/// once (docs/decisions/0027-shared-reader-and-journal-batches.md).
pub(crate) const LIVE_BATCH_EVENTS_MAX: usize = projections::BATCH_EVENTS_MAX_LIMIT;

/// The live runners' settings.
pub(crate) fn live_runner_config() -> RunnerConfig {
    RunnerConfig { batch_events_max: LIVE_BATCH_EVENTS_MAX, ..RunnerConfig::default() }
}

/// The log as every live runner reads it: one [`SharedLog`] for all of them.
pub(crate) type LiveLog = SharedLog<Arc<dyn EventStore>>;

/// Spawns one projection's runner on the shared reader `log`, following the log until `stop`;
/// returns its view.
pub(crate) fn spawn_runner<P: Projection, R>(
    db: &sled::Db,
    log: &mut LiveLog,
    store: Arc<dyn EventStore>,
    projection: P,
    reader: impl FnOnce(ReadModel) -> R,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(View<R>, tokio::task::JoinHandle<()>)> {
    let name = projection.name();
    let runner = Runner::open(db, store, projection, live_runner_config())?;
    let feed = log.subscribe(&runner);
    let view = View { reader: reader(runner.read_model()), progress: runner.progress() };
    let task = tokio::spawn(async move {
        if let Err(e) = runner.run_shared(feed, stop).await {
            tracing::error!(projection = name, error = %e, "projection stopped");
        }
    });
    Ok((view, task))
}

/// Starts the projections (invoices, MRR, journal) on `<data_dir>/read-models`, fed by one
/// shared log reader (each keeps its own checkpoint and commits).
pub(crate) fn start_projections(
    data_dir: &std::path::Path,
    store: Arc<dyn EventStore>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(ReadModels, Vec<tokio::task::JoinHandle<()>>)> {
    start_projections_on(&projections::open_db(data_dir.join("read-models"))?, store, stop)
}

/// [`start_projections`] on the read-model database `db`, already open.
fn start_projections_on(
    db: &sled::Db,
    store: Arc<dyn EventStore>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(ReadModels, Vec<tokio::task::JoinHandle<()>>)> {
    let db = db.clone();
    let mut log = SharedLog::new(store.clone(), SharedConfig::default())?;
    let s = (store.clone(), store.clone(), store);
    let (invoices, a) =
        spawn_runner(&db, &mut log, s.0, InvoicesProjection, InvoiceReader::new, stop.clone())?;
    let (mrr, b) = spawn_runner(&db, &mut log, s.1, MrrProjection, MrrReader::new, stop.clone())?;
    let journal = JournalProjection::default();
    let (journal, c) = spawn_runner(&db, &mut log, s.2, journal, JournalReader::new, stop.clone())?;
    let reader = tokio::spawn(async move {
        if let Err(e) = log.run(stop).await {
            tracing::error!(error = %e, "shared log reader stopped; runners read the log alone");
        }
    });
    Ok((ReadModels { invoices, mrr, journal }, vec![a, b, c, reader]))
}

/// One projection's read model as it is on disk, with no runner and without writing to it
/// (a missing model, or one of another layout version, is an error rather than being rebuilt).
/// Its checkpoint never moves here, so a wait for a later position ends at once (QueryService
/// answers UNAVAILABLE). `head`: the log's head, if this process has the log.
fn still_view<P: Projection, R>(
    db: &sled::Db,
    projection: P,
    reader: impl FnOnce(ReadModel) -> R,
    head: Option<watch::Receiver<u64>>,
) -> anyhow::Result<View<R>> {
    let name = projection.name();
    let model = ReadModel::open_existing(db, name, projection.version())?.ok_or_else(|| {
        anyhow::anyhow!(
            "read model {name:?} is missing or of another version: run `accrual serve` with the \
             projector role or `accrual replay` to build it"
        )
    })?;
    let checkpoint = model.checkpoint()?;
    let head = head.unwrap_or_else(|| watch::channel(checkpoint).1);
    let behind = *head.borrow() > checkpoint;
    tracing::info!(
        projection = name,
        checkpoint,
        head = *head.borrow(),
        behind,
        "no projector in this process: serving the read model as it is on disk"
    );
    Ok(View { reader: reader(model), progress: projections::Progress::still(checkpoint, head) })
}

/// The read models on `<data_dir>/read-models` as they are, for a query role without the
/// projector. `store`: the log, if this process opened it (not with `--read-only`).
pub(crate) fn open_projections(
    data_dir: &std::path::Path,
    store: Option<Arc<dyn EventStore>>,
) -> anyhow::Result<ReadModels> {
    open_projections_on(&projections::open_db(data_dir.join("read-models"))?, store)
}

/// [`open_projections`] on the read-model database `db`, already open.
pub(crate) fn open_projections_on(
    db: &sled::Db,
    store: Option<Arc<dyn EventStore>>,
) -> anyhow::Result<ReadModels> {
    let db = db.clone();
    let head = || store.as_ref().map(|s| s.watch_head());
    Ok(ReadModels {
        invoices: still_view(&db, InvoicesProjection, InvoiceReader::new, head())?,
        mrr: still_view(&db, MrrProjection, MrrReader::new, head())?,
        journal: still_view(&db, JournalProjection::default(), JournalReader::new, head())?,
    })
}

pub async fn run(s: Settings) -> anyhow::Result<()> {
    let policy = Policy {
        max_payment_attempts: s.max_payment_attempts,
        grace_period_secs: s.grace_period_secs,
        backdate_days_max: s.backdate_days_max,
        ..Policy::default()
    };
    let roles = s.roles;
    if let Some(addr) = s.metrics_listen {
        crate::prometheus::install(addr)?;
    }
    if s.auth.is_none() {
        tracing::warn!(listen = %s.listen, "no auth tokens configured: every call is admitted (allowed on a loopback address only)");
    }
    log_transport(&s);
    if s.read_only {
        return serve_read_only(s).await;
    }
    let store = open_configured_store(&s.store).await?;
    let engine = match roles.command {
        true => {
            let shared_log = s.store.is_shared();
            Some(
                engine_on(store.clone(), policy, shared_log, Some(&s.data_dir), &s.data_dir)
                    .await?,
            )
        }
        false => None,
    };
    let listener = TcpListener::bind(s.listen).await?;
    tracing::info!(roles = %roles, store = %s.store, data_dir = %s.data_dir.display(), listen = %listener.local_addr()?, "accrual serving");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // The read models are opened without reading them whole, so the restart does not grow with
    // them; the full read that finds a damaged page runs while serving (`read_models_damaged`).
    let read_models = s.data_dir.join("read-models");
    let db = match roles.projector || roles.query {
        true => Some(projections::open_db_unchecked(&read_models)?),
        false => None,
    };
    let models = match &db {
        Some(db) if roles.projector => {
            let (models, projectors) = start_projections_on(db, store.clone(), stop_rx.clone())?;
            tasks.extend(projectors);
            Some(models)
        }
        Some(db) => Some(open_projections_on(db, Some(store.clone()))?),
        None => None,
    };
    let damaged = read_models_damaged(db, read_models);
    let models = models.filter(|_| roles.query);
    // The audit side and the event feed need the log, which this process has open, and the
    // query role's models.
    // Bitemporal queries and the dashboard's past books rebuild from this process's log.
    let past: Arc<dyn query_service::PastBooks> =
        crate::past_books::RebuiltBooks::new(store.clone());
    let dashboard = match (&models, s.dashboard_listen) {
        (Some(m), Some(addr)) => {
            let board =
                crate::dashboard::Dashboard::new(m.clone(), s.auth.clone(), Some(past.clone()));
            bind_dashboard(board, addr, s.dashboard_listen_explicit, stop_rx.clone()).await?
        }
        _ => None,
    };
    tasks.extend(dashboard);
    let log_services = match &models {
        Some(models) => {
            let invoices = &models.invoices;
            let feed = crate::feed::FeedApi::new(
                store.clone(),
                invoices.reader.clone(),
                invoices.progress.clone(),
                s.feed,
            );
            let hooks = crate::webhooks::store::Store::open(&s.data_dir.join("webhooks"))?;
            let webhooks =
                crate::webhooks::WebhookApi::start(hooks, store.clone(), s.webhooks).await?;
            let audit = AuditApi::new(store, models.clone(), &s.data_dir)?;
            let webhooks = std::sync::Arc::new(webhooks);
            Some(crate::server::LogServices { audit, feed, webhooks })
        }
        None => None,
    };
    let query = models.map(|m| QueryApi::new(m).with_past_books(past));
    if let Some(engine) = &engine {
        let interval = s.scheduler_interval_secs;
        tasks.push(tokio::spawn(scheduler(engine.clone(), interval, stop_rx.clone())));
    }
    let (damage_tx, mut damage_rx) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("shutdown requested"),
            e = damaged => {
                tracing::error!(error = %e, "read models damaged: stopping");
                let _ = damage_tx.send(e);
            }
        }
        let _ = stop_tx.send(true);
    };
    let limits = (s.limits.clone(), server_limits(&s));
    let (auth, limits, server) = (s.auth.clone(), limits.0, limits.1);
    serve(listener, engine, query, log_services, auth, limits, server, shutdown).await?;
    for task in tasks {
        task.await?;
    }
    match damage_rx.try_recv() {
        Ok(e) => Err(e.into()),
        Err(_) => Ok(()),
    }
}

/// Starts the dashboard on `addr` until `stop`. A default address that is taken (another
/// serve on this machine) is logged and skipped; an explicit one is an error.
async fn bind_dashboard(
    board: crate::dashboard::Dashboard,
    addr: std::net::SocketAddr,
    explicit: bool,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if !explicit => {
            tracing::warn!(dashboard = %addr, error = %e, "dashboard not started: its default address is taken (give --dashboard-listen ADDR or --no-dashboard)");
            return Ok(None);
        }
        Err(e) => return Err(anyhow::anyhow!("binding the dashboard to {addr}: {e}")),
    };
    tracing::info!(dashboard = %listener.local_addr()?, "dashboard serving (HTTP)");
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = board.serve(listener, shutdown).await {
            tracing::error!(error = %e, "dashboard stopped");
        }
    })))
}

/// Reads the whole read-model database `db` (at `path`) on the blocking pool while the server
/// serves: resolves with the damaged-store error if a page cannot be read, and never if every
/// page can (or there is no database), so it can end the server as a shutdown signal would.
async fn read_models_damaged(
    db: Option<sled::Db>,
    path: std::path::PathBuf,
) -> projections::ProjectionError {
    let Some(db) = db else { return std::future::pending().await };
    let started = std::time::Instant::now();
    let (data_dir, shown) = (path.parent().map(|p| p.display().to_string()), path.display());
    let (data_dir, shown) = (data_dir.unwrap_or_default(), shown.to_string());
    let checked = tokio::task::spawn_blocking(move || projections::check_db(&db, path)).await;
    match checked {
        Ok(Ok(())) => {
            let read_ms = started.elapsed().as_millis() as u64;
            tracing::info!(read_ms, "read models read whole: no damaged page");
            std::future::pending().await
        }
        Ok(Err(e)) => e,
        Err(join) => projections::ProjectionError::Damaged {
            path: shown,
            data_dir,
            detail: format!("the read did not finish: {join}"),
        },
    }
}

/// `--read-only` (query role only): serves the read models of a data directory, or of a
/// `accrual replay` output, as they are; the log is not opened (a replay output has none).
async fn serve_read_only(s: Settings) -> anyhow::Result<()> {
    let models = open_projections(&s.data_dir, None)?;
    let listener = TcpListener::bind(s.listen).await?;
    tracing::info!(data_dir = %s.data_dir.display(), listen = %listener.local_addr()?, "accrual serving read-only");
    let query = Some(QueryApi::new(models));
    let shutdown = async {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
    };
    let (limits, server) = (s.limits.clone(), server_limits(&s));
    serve(listener, None, query, None, s.auth.clone(), limits, server, shutdown).await
}

/// The default transport bounds, with the TLS of `s`.
/// The transport limits of the settings, with their TLS.
fn server_limits(s: &Settings) -> ServerLimits {
    ServerLimits { tls: s.tls.as_ref().map(|t| t.config.clone()), ..s.server_limits.clone() }
}

/// Says how connections are secured; loudly when tokens would cross the network in clear text
/// (`--allow-plaintext`: config refuses it otherwise).
fn log_transport(s: &Settings) {
    match &s.tls {
        Some(tls) => tracing::info!(
            cert = %tls.cert.display(),
            client_ca = ?tls.client_ca,
            mutual = tls.client_ca.is_some(),
            "TLS on every connection"
        ),
        None if !s.listen.ip().is_loopback() => tracing::warn!(
            listen = %s.listen,
            "PLAINTEXT on a non-loopback address (--allow-plaintext): bearer tokens and billing \
             data cross the network unencrypted; only safe behind a proxy or mesh that \
             terminates TLS"
        ),
        None => {}
    }
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
