//! `accrual audit`: walk the log's hash chain (`verify`) and print its head (`digest`).
//!
//! On a data dir (or `--store sled:PATH`) both read the raw sled log through [`LogScan`], never
//! through [`event_store::SledStore`]: the store's open refuses a log whose links are broken,
//! and an audit must still say where they break. The server must be stopped (sled allows one
//! process per data dir). With `--store esdb://...` or `--store nats://...` the log is read
//! through the [`EventStore`] trait, in pages from position 0 to the head at open, while the
//! nodes keep running; that store's open already refuses a log whose links are broken, so a
//! break there is an open error rather than a located break. Either way every event is checked
//! by [`ChainVerifier`], which recomputes its hash.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use event_store::{
    BreakKind, ChainBreak, ChainVerifier, EventStore, LogScan, Position, RecordedEvent, StoreError,
    GENESIS_HASH,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::StoreSpec;

/// Logs at least this long get a progress bar (on a terminal).
const PROGRESS_EVENTS_MIN: u64 = 100_000;
/// Events between two progress updates.
const PROGRESS_STEP: u64 = 4_096;
/// Most events one read of a store's log asks for.
const PAGE_EVENTS_MAX: usize = 4_096;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute every hash of the log and report the first broken link (non-zero exit).
    Verify(VerifyArgs),
    /// Print the chain head (hash of the last event) at a position, to keep outside the system.
    Digest(DigestArgs),
}

impl AuditCommand {
    /// The `--store` given, if any.
    pub fn store(&self) -> Option<String> {
        match self {
            AuditCommand::Verify(a) => a.log.store.clone(),
            AuditCommand::Digest(a) => a.log.store.clone(),
        }
    }
}

/// Where the log to audit is.
#[derive(Args, Debug)]
pub struct LogArgs {
    /// Data directory of a stopped `accrual serve` (the log is `<dir>/log`); not read when
    /// `--store` is given.
    #[arg(long, env = "ACCRUAL_DATA_DIR", default_value = "accrual-data")]
    pub data_dir: PathBuf,
    /// The log itself, as `accrual serve --store` takes it: `esdb://...`, `nats://...` (read
    /// while the nodes run) or `sled:PATH` (a stopped server's log directory).
    #[arg(long, env = "ACCRUAL_STORE", hide_env_values = true)]
    pub store: Option<String>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub log: LogArgs,
    /// A head hash kept earlier (`audit digest`, 64 hex digits): the chain must still have it
    /// at `--position`.
    #[arg(long, requires = "position", value_parser = parse_hash)]
    pub digest: Option<[u8; 32]>,
    /// With `--digest`: the position it was taken at (events `[0, N)`).
    #[arg(long, requires = "digest")]
    pub position: Option<u64>,
}

#[derive(Args, Debug)]
pub struct DigestArgs {
    #[command(flatten)]
    pub log: LogArgs,
    /// Events `[0, N)`: prints the hash of event N-1 (the genesis hash, all zeros, for 0);
    /// default: the whole log.
    #[arg(long)]
    pub position: Option<u64>,
}

fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(s.trim()).map_err(|e| format!("not hex: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("a SHA-256 hash is 32 bytes (64 hex digits), got {}", bytes.len()))
}

pub async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify(args) => {
            let started = Instant::now();
            let walk = walk_log(&args.log, None, args.position).await?;
            verify(&args, &walk, started.elapsed())
        }
        AuditCommand::Digest(args) => {
            let walk = walk_log(&args.log, args.position, args.position).await?;
            digest(&args, &walk)
        }
    }
}

/// Walks the log `log` names (see [`Walker`] for `stop` and `watch`).
async fn walk_log(
    log: &LogArgs,
    stop: Option<Position>,
    watch: Option<Position>,
) -> anyhow::Result<Walk> {
    let path = match &log.store {
        None => log.data_dir.join("log"),
        Some(url) => match StoreSpec::parse_for_reading(url)? {
            StoreSpec::Sled(path) => path,
            spec => return walk_store(&spec, stop, watch).await,
        },
    };
    // The raw walk is blocking I/O and hashing: keep it off the async workers.
    tokio::task::spawn_blocking(move || walk_scan(&open(&path)?, stop, watch))
        .await
        .context("audit task failed")?
}

/// Reports a finished walk: `chain ok ...` or the break, then the kept digest if any.
fn verify(args: &VerifyArgs, walk: &Walk, elapsed: std::time::Duration) -> anyhow::Result<()> {
    let mut failed = None;
    match &walk.broken {
        None => {
            println!("chain ok events={} head={}", walk.events, hex::encode(walk.head));
            eprintln!(
                "verified {} events in {:.3} s ({:.0} events/s)",
                walk.events,
                elapsed.as_secs_f64(),
                walk.events as f64 / elapsed.as_secs_f64().max(1e-9)
            );
        }
        Some(broken) => {
            print_break(broken, walk);
            failed = Some(format!("hash chain broken at position {}", broken.position));
        }
    }
    if let (Some(kept), Some(position)) = (args.digest, args.position) {
        let kept_hex = hex::encode(kept);
        match walk.at_watched {
            Some(actual) if actual == kept => {
                println!("digest ok position={position} head={kept_hex}");
            }
            Some(actual) => {
                let actual = hex::encode(actual);
                println!(
                    "digest mismatch at position {position}: kept {kept_hex}, chain has {actual}"
                );
                failed.get_or_insert(format!(
                    "digest mismatch at position {position}: kept {kept_hex}, chain has {actual}"
                ));
            }
            None if walk.broken.is_some() => {
                println!("digest not checked: the chain breaks before position {position}");
            }
            None => {
                let msg = beyond_head(position, walk.events);
                println!("digest not checked: {msg}");
                failed.get_or_insert(msg);
            }
        }
    }
    match failed {
        Some(msg) => Err(anyhow::anyhow!(msg)),
        None => Ok(()),
    }
}

/// Prints the head of a finished walk at `--position` (or the whole log's).
fn digest(args: &DigestArgs, walk: &Walk) -> anyhow::Result<()> {
    if let Some(broken) = &walk.broken {
        print_break(broken, walk);
        anyhow::bail!(
            "hash chain broken at position {}: no digest printed (run `accrual audit verify`)",
            broken.position
        );
    }
    let position = args.position.unwrap_or(walk.events);
    let Some(head) = walk.at_watched.or(args.position.is_none().then_some(walk.head)) else {
        anyhow::bail!(beyond_head(position, walk.events));
    };
    println!("position={position} head={}", hex::encode(head));
    Ok(())
}

fn beyond_head(position: Position, events: u64) -> String {
    format!("position {position} is beyond the head: the log holds {events} events")
}

/// The raw sled log in the directory `path`.
fn open(path: &Path) -> anyhow::Result<LogScan> {
    LogScan::open(path).with_context(|| format!("cannot audit {}", path.display()))
}

/// The first broken link: a failed chain check, or an event that does not decode.
#[derive(Debug)]
struct Broken {
    /// Where the chain stops continuing correctly: the position expected next.
    position: Position,
    what: What,
}

#[derive(Debug)]
enum What {
    Chain(BreakKind),
    /// The bytes at `at` (normally `position`) do not decode.
    Undecodable {
        at: Position,
        detail: String,
    },
}

/// What a walk from position 0 found.
struct Walk {
    /// Events verified (the whole log, or up to the stop position, or up to the break).
    events: u64,
    /// Hash of the last verified event (the genesis hash when none).
    head: [u8; 32],
    /// The head when exactly the watched number of events had been verified.
    at_watched: Option<[u8; 32]>,
    broken: Option<Broken>,
}

/// A walk of the chain from position 0, fed one event at a time: recomputes every hash, stops
/// at the first break, or after `stop` events; notes the head after `watch` events.
struct Walker {
    verifier: ChainVerifier,
    walk: Walk,
    stop: Option<Position>,
    watch: Option<Position>,
    bar: ProgressBar,
}

impl Walker {
    /// `len`: the events expected, if known (for the progress bar).
    fn new(stop: Option<Position>, watch: Option<Position>, len: Option<u64>) -> Walker {
        let mut walk = Walk { events: 0, head: GENESIS_HASH, at_watched: None, broken: None };
        if watch == Some(0) {
            walk.at_watched = Some(GENESIS_HASH);
        }
        let bar = progress(len.map(|end| stop.map_or(end, |s| s.min(end))));
        let verifier = ChainVerifier::new(Some(0), GENESIS_HASH);
        Walker { verifier, walk, stop, watch, bar }
    }

    /// Whether the walk wants another event (no break, `stop` not reached).
    fn wants_more(&self) -> bool {
        self.walk.broken.is_none() && self.stop.is_none_or(|stop| self.walk.events < stop)
    }

    /// Checks the next event read (or the read's failure). Errors are storage failures only;
    /// undecodable bytes and a failed check are a [`Walk::broken`].
    fn push(&mut self, item: Result<RecordedEvent, StoreError>) -> anyhow::Result<()> {
        let expected = self.verifier.next_position().unwrap_or(0);
        let event = match item {
            Ok(event) => event,
            Err(StoreError::Corrupt { position: at, detail }) => {
                let what = What::Undecodable { at, detail };
                self.walk.broken = Some(Broken { position: expected.min(at), what });
                return Ok(());
            }
            Err(e) => return Err(e).context("reading the log"),
        };
        if let Err(ChainBreak { position, kind }) = self.verifier.push(&event) {
            self.walk.broken = Some(Broken { position, what: What::Chain(kind) });
            return Ok(());
        }
        self.walk.events += 1;
        self.walk.head = self.verifier.head_hash();
        if self.watch == Some(self.walk.events) {
            self.walk.at_watched = Some(self.walk.head);
        }
        if self.walk.events % PROGRESS_STEP == 0 {
            self.bar.set_position(self.walk.events);
        }
        Ok(())
    }

    fn finish(self) -> Walk {
        self.bar.finish_and_clear();
        self.walk
    }
}

/// Walks the raw sled log until its end, the first break, or `stop` events.
fn walk_scan(
    scan: &LogScan,
    stop: Option<Position>,
    watch: Option<Position>,
) -> anyhow::Result<Walk> {
    let mut walker = Walker::new(stop, watch, scan.claimed_end()?);
    let mut events = scan.events();
    while walker.wants_more() {
        let Some(item) = events.next() else { break };
        walker.push(item)?;
    }
    Ok(walker.finish())
}

/// Opens the shared log `spec` (EventStoreDB, NATS), walks it, and closes it.
async fn walk_store(
    spec: &StoreSpec,
    stop: Option<Position>,
    watch: Option<Position>,
) -> anyhow::Result<Walk> {
    let store = crate::serve::open_configured_store(spec).await?;
    if store.head() == 0 {
        // An EventStoreDB stream that does not exist reads as empty (a JetStream one is an
        // error): a misspelt stream= would otherwise pass as an empty, unbroken chain.
        eprintln!("warning: {spec} holds no events (a new log, or another stream= than meant?)");
    }
    let walked = walk_events(store.as_ref(), stop, watch).await;
    let closed = store.close().await.with_context(|| format!("closing {spec}"));
    let walk = walked?;
    closed?;
    Ok(walk)
}

/// Walks a store's log through [`EventStore::read_all`], in pages of at most
/// [`PAGE_EVENTS_MAX`], from position 0 to its head at the start, the first break, or `stop`
/// events.
async fn walk_events(
    store: &dyn EventStore,
    stop: Option<Position>,
    watch: Option<Position>,
) -> anyhow::Result<Walk> {
    let head = store.head();
    let end = stop.map_or(head, |stop| stop.min(head));
    let mut walker = Walker::new(stop, watch, Some(head));
    // Every page moves the walk forward by at least one event, or ends it.
    while walker.wants_more() && walker.walk.events < end {
        let from = walker.walk.events;
        let count = usize::try_from(end - from).unwrap_or(usize::MAX).min(PAGE_EVENTS_MAX);
        let page = match store.read_all(from, count).await {
            Ok(page) => page,
            Err(e) => {
                walker.push(Err(e))?;
                break;
            }
        };
        anyhow::ensure!(
            !page.is_empty(),
            "reading the log: no events from position {from}, though its head is {head}"
        );
        for event in page {
            if !walker.wants_more() {
                break;
            }
            walker.push(Ok(event))?;
        }
    }
    Ok(walker.finish())
}

fn progress(len: Option<u64>) -> ProgressBar {
    let (bar, template) = match len {
        Some(len) if len < PROGRESS_EVENTS_MIN => return ProgressBar::hidden(),
        Some(len) => (
            ProgressBar::new(len),
            "{spinner} verifying the hash chain {human_pos}/{human_len} events [{bar:40}] eta {eta}",
        ),
        // The last chunk does not decode: the length is unknown.
        None => (ProgressBar::new_spinner(), "{spinner} verifying the hash chain {human_pos} events"),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// `chain broken at position P: <kind>`, then what was expected and what was found.
fn print_break(broken: &Broken, walk: &Walk) {
    let p = broken.position;
    let (kind, expected, actual) = match &broken.what {
        What::Chain(BreakKind::Hash { expected, found }) => (
            "altered event: its stored hash is not the hash of its envelope".to_owned(),
            hex::encode(expected),
            hex::encode(found),
        ),
        What::Chain(BreakKind::PrevHash { expected, found }) => (
            "broken link: prev_hash is not the previous event's hash".to_owned(),
            hex::encode(expected),
            hex::encode(found),
        ),
        What::Chain(BreakKind::Position { expected, found }) => {
            let why =
                if found > expected { "missing or reordered" } else { "duplicated or reordered" };
            (
                format!("the next stored event has position {found} (events {why})"),
                format!("position {expected}"),
                format!("position {found}"),
            )
        }
        What::Chain(BreakKind::RecordedAt { previous, found }) => (
            "recorded_at goes back in time".to_owned(),
            format!("recorded_at >= {previous}"),
            format!("recorded_at {found}"),
        ),
        What::Undecodable { at, detail } => (
            format!("undecodable log bytes at position {at}: {detail}"),
            format!("a decodable event at position {p}"),
            "undecodable bytes".to_owned(),
        ),
    };
    println!("chain broken at position {p}: {kind}");
    println!("  expected: {expected}");
    println!("  actual:   {actual}");
    println!(
        "  events verified before the break: {}, their head: {}",
        walk.events,
        hex::encode(walk.head)
    );
}
