//! `accrual`: the one binary. `serve` runs the service on embedded sled; `demo` simulates a
//! company through it; `replay`, `audit` and `export` are for auditors; `bench` measures.

mod audit;
mod audit_service;
mod auth;
mod bench;
mod config;
mod dashboard;
mod demo;
mod export;
mod feed;
mod grpc_metrics;
mod import;
mod limits;
mod past_books;
mod prometheus;
mod replay_cmd;
mod serve;
mod server;
mod tls;
mod webhooks;

use clap::{Parser, Subcommand};

/// mimalloc: the ingest path allocates many small strings; the system allocator cost ~25 % of CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "accrual", version, about = "Event-sourced, usage-based billing ledger")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the gRPC service: commands, queries, audit, health and reflection (and, with
    /// --metrics-listen, Prometheus metrics), on an embedded sled store or EventStoreDB.
    ///
    /// By default one process runs every role (--role command,projector,query):
    /// CommandService (writes and the billing scheduler), the projections that fold the log
    /// into read models, QueryService over them, and AuditService (replay, chain, export;
    /// wherever the log is open and the query role runs, so not with --read-only). gRPC health
    /// and reflection list only the services this process runs. With --auth-tokens each call
    /// needs a bearer token whose role admits the service (`accrual token new --help`).
    Serve(Box<config::ServeArgs>),
    /// Benchmarks that print figures (never pass/fail).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Simulate a small company through the real gRPC APIs and print its metrics.
    Demo(demo::DemoArgs),
    /// Rebuild read models from the log up to a cutoff into a fresh directory, or verify the
    /// live ones against a rebuild (`replay verify`).
    Replay(replay_cmd::ReplayArgs),
    /// Walk the log's hash chain (`audit verify`) or print its head (`audit digest`).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Export invoices, invoice lines, credit notes, the journal, a trial balance, the revenue
    /// waterfall, MRR movements or usage per day as CSV, JSON or Parquet.
    #[command(after_long_help = export::HELP)]
    Export(export::ExportArgs),
    /// Bearer tokens for the gRPC services (`token new --role R`).
    #[command(subcommand)]
    Token(auth::TokenCommand),
    /// Load a company's history (customers, plans, subscriptions with past starts and plan
    /// changes, usage, billing runs) from JSON Lines or a usage CSV into a running service:
    /// validated first, idempotent, resumable (docs/import.md).
    Import(import::ImportArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Commands::Serve(args) => {
            let settings = config::Settings::resolve(*args)?;
            tls::install_crypto_provider_for(&settings.store);
            config::init_tracing(&settings)?;
            runtime.block_on(serve::run(settings))
        }
        Commands::Bench(cmd) => with_ring(|| runtime.block_on(bench::run(cmd))),
        Commands::Demo(args) => with_ring(|| runtime.block_on(demo::run(args))),
        Commands::Replay(args) => {
            ring_unless_esdb(args.store().as_deref());
            runtime.block_on(replay_cmd::run(args))
        }
        Commands::Audit(cmd) => {
            ring_unless_esdb(cmd.store().as_deref());
            runtime.block_on(audit::run(cmd))
        }
        Commands::Import(args) => with_ring(|| runtime.block_on(import::run(args))),
        Commands::Export(args) => with_ring(|| runtime.block_on(export::run(args))),
        Commands::Token(cmd) => with_ring(|| auth::run(cmd)),
    }
}

/// For the tools that read a `--store`: ring as the rustls provider, except on EventStoreDB,
/// whose client installs its own and fails when one is already there (as for `serve`).
fn ring_unless_esdb(store: Option<&str>) {
    if !store.is_some_and(|s| s.starts_with("esdb")) {
        tls::install_crypto_provider();
    }
}

/// Runs a command with ring installed as the process's rustls provider first.
fn with_ring<T>(command: impl FnOnce() -> T) -> T {
    tls::install_crypto_provider();
    command()
}
