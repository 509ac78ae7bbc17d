//! `accrual replay`: rebuild read models from the log up to a cutoff into a fresh directory
//! (servable with `accrual serve --role query --read-only --data-dir OUT`), and `replay verify`:
//! rebuild every live read model up to its checkpoint and compare digests.
//!
//! The log is `<data-dir>/log` of a stopped server, or `--store` (`esdb://...`, `nats://...`,
//! read while the nodes run, or `sled:PATH`); the live read models of `replay verify` are always
//! `<data-dir>/read-models` (on a shared log: a stopped query node's data dir).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use event_store::{EventStore, SledConfig, SledStore};
use indicatif::{ProgressBar, ProgressStyle};
use replay::{Cutoff, Kind, Verdict};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ReplayArgs {
    #[command(subcommand)]
    pub command: Option<ReplayCommand>,
    #[command(flatten)]
    pub rebuild: RebuildArgs,
}

#[derive(Subcommand, Debug)]
pub enum ReplayCommand {
    /// Rebuild every live read model up to its checkpoint and compare digests; exits non-zero
    /// naming the first projection that differs.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct RebuildArgs {
    /// Data directory of a stopped `accrual serve` (the log is `<dir>/log`); not read when
    /// `--store` is given.
    #[arg(long, env = "ACCRUAL_DATA_DIR", default_value = "accrual-data")]
    pub data_dir: PathBuf,
    /// The log, as `accrual serve --store` takes it: `esdb://...`, `nats://...` or `sled:PATH`
    /// [default: `<data-dir>/log`]
    #[arg(long, env = "ACCRUAL_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Replay the events before this log position.
    #[arg(long, conflicts_with = "as_of_recorded", required_unless_present = "as_of_recorded")]
    pub position: Option<u64>,
    /// Replay every event recorded at or before this instant (RFC 3339), "the books as they
    /// stood then".
    #[arg(long)]
    pub as_of_recorded: Option<jiff::Timestamp>,
    /// Comma-separated read models to rebuild: invoices, mrr, journal [default: all]
    #[arg(long, value_delimiter = ',')]
    pub projections: Vec<String>,
    /// Output directory; must not exist (a rebuild never writes over a store).
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Data directory of a stopped `accrual serve` (or query node): the live read models are
    /// `<dir>/read-models`, the log `<dir>/log` unless `--store` is given.
    #[arg(long, env = "ACCRUAL_DATA_DIR", default_value = "accrual-data")]
    pub data_dir: PathBuf,
    /// The log, as `accrual serve --store` takes it: `esdb://...`, `nats://...` or `sled:PATH`
    /// [default: `<data-dir>/log`]
    #[arg(long, env = "ACCRUAL_STORE", hide_env_values = true)]
    pub store: Option<String>,
}

impl ReplayArgs {
    /// The `--store` given, if any.
    pub fn store(&self) -> Option<String> {
        match &self.command {
            Some(ReplayCommand::Verify(v)) => v.store.clone(),
            None => self.rebuild.store.clone(),
        }
    }
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    match args.command {
        Some(ReplayCommand::Verify(v)) => {
            let store = open_log(&v.data_dir, v.store.as_deref()).await?;
            closing(store.clone(), verify(store, &v.data_dir).await).await
        }
        None => rebuild(args.rebuild).await,
    }
}

/// Closes `store` after a command, then returns the command's outcome (or the close's error).
async fn closing<T, E>(store: Arc<dyn EventStore>, outcome: Result<T, E>) -> anyhow::Result<T>
where
    anyhow::Error: From<E>,
{
    let closed = store.close().await.context("closing the log");
    let value = outcome?;
    closed?;
    Ok(value)
}

/// The log `store` names (`--store`), or else `<data_dir>/log`.
async fn open_log(data_dir: &Path, store: Option<&str>) -> anyhow::Result<Arc<dyn EventStore>> {
    let spec = match store {
        Some(url) => crate::config::StoreSpec::parse_for_reading(url)?,
        None => crate::config::StoreSpec::Sled(data_dir.join("log")),
    };
    match spec {
        crate::config::StoreSpec::Sled(path) => open_sled(&path),
        shared => crate::serve::open_configured_store(&shared).await,
    }
}

/// The sled log in the directory `path`, of a stopped server.
fn open_sled(path: &Path) -> anyhow::Result<Arc<dyn EventStore>> {
    anyhow::ensure!(path.exists(), "no event log at {}", path.display());
    let store = SledStore::open(SledConfig::new(path)).map_err(|e| {
        // A held lock is sled's "could not acquire lock"; a damaged log says so itself.
        let hint = if e.to_string().contains("lock") {
            " (is `accrual serve` still running on it?)"
        } else {
            ""
        };
        anyhow::anyhow!("opening {}: {e}{hint}", path.display())
    })?;
    Ok(Arc::new(store))
}

fn kinds(names: &[String]) -> anyhow::Result<Vec<Kind>> {
    if names.is_empty() {
        return Ok(Kind::ALL.to_vec());
    }
    let mut kinds = Vec::with_capacity(names.len());
    for name in names {
        let kind = Kind::parse(name.trim())?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Rebuilds the read models from the log up to the cutoff into `--out`.
async fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    let cutoff = match (args.position, args.as_of_recorded) {
        (Some(p), _) => Cutoff::Position(p),
        (None, Some(t)) => Cutoff::RecordedAt(t),
        (None, None) => anyhow::bail!("give --position or --as-of-recorded"),
    };
    let out = args.out.expect("clap requires --out");
    let kinds = kinds(&args.projections)?;
    let store = open_log(&args.data_dir, args.store.as_deref()).await?;
    let bar = progress_bar(0);
    let progress = |applied: u64, end: u64| {
        bar.set_length(end);
        bar.set_position(applied);
    };
    let done = replay::rebuild(store.clone(), cutoff, &kinds, &out, &progress).await;
    bar.finish_and_clear();
    let done = closing(store, done).await?;
    for p in &done.manifest.projections {
        println!("{:<9} digest={} position={}", p.projection.name(), p.sha256, p.position);
    }
    println!("log head hash at the cutoff: {}", done.manifest.log_head_hash);
    println!(
        "wrote {} (serve it: accrual serve --role query --read-only --data-dir {0})",
        out.display()
    );
    println!(
        "replay events={} secs={:.3} events_per_s={:.0}",
        done.events,
        done.secs,
        done.events_per_s()
    );
    Ok(())
}

/// Compares every live read model of `data_dir` with its rebuild from `store`.
async fn verify(store: Arc<dyn EventStore>, data_dir: &Path) -> anyhow::Result<()> {
    let live_path = data_dir.join("read-models");
    anyhow::ensure!(live_path.exists(), "no read models at {}", live_path.display());
    let live = projections::open_db(&live_path)?;
    let scratch = tempfile::tempdir()?;
    let verdicts = replay::verify(store, &live, &scratch.path().join("verify")).await?;
    let mut first_bad = None;
    for v in &verdicts {
        match v {
            Verdict::Equal { projection, position, sha256 } => {
                println!("{:<9} equal    position={position} digest={sha256}", projection.name())
            }
            Verdict::Differs { projection, position, live, rebuilt } => {
                println!(
                    "{:<9} DIFFERS  position={position} live={live} rebuilt={rebuilt}",
                    projection.name()
                );
                first_bad.get_or_insert(projection.name());
            }
            Verdict::Missing { projection } => {
                println!(
                    "{:<9} missing  (no live model of the current version)",
                    projection.name()
                );
                first_bad.get_or_insert(projection.name());
            }
        }
    }
    match first_bad {
        None => {
            println!("verify: every read model equals its rebuild");
            Ok(())
        }
        Some(name) => anyhow::bail!("verify: read model {name:?} does not equal its rebuild"),
    }
}
