//! `accrual audit`: walk the log's hash chain (`verify`) and print its head (`digest`).
//!
//! Both read the raw log (`<data-dir>/log`) through [`LogScan`], never through
//! [`event_store::SledStore`]: the store's open refuses a log whose links are broken, and an
//! audit must still say where they break. Every event is checked by [`ChainVerifier`], which
//! recomputes its hash. The server must be stopped (sled allows one process per data dir).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use event_store::{
    BreakKind, ChainBreak, ChainVerifier, LogScan, Position, StoreError, GENESIS_HASH,
};
use indicatif::{ProgressBar, ProgressStyle};

/// Logs at least this long get a progress bar (on a terminal).
const PROGRESS_EVENTS_MIN: u64 = 100_000;
/// Events between two progress updates.
const PROGRESS_STEP: u64 = 4_096;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute every hash of the log and report the first broken link (non-zero exit).
    Verify(VerifyArgs),
    /// Print the chain head (hash of the last event) at a position, to keep outside the system.
    Digest(DigestArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Data directory of a stopped `accrual serve` (the log is `<dir>/log`).
    #[arg(long, env = "ACCRUAL_DATA_DIR", default_value = "accrual-data")]
    pub data_dir: PathBuf,
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
    /// Data directory of a stopped `accrual serve` (the log is `<dir>/log`).
    #[arg(long, env = "ACCRUAL_DATA_DIR", default_value = "accrual-data")]
    pub data_dir: PathBuf,
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
    // The walk is blocking I/O and hashing: keep it off the async workers.
    tokio::task::spawn_blocking(move || match cmd {
        AuditCommand::Verify(args) => verify(&args),
        AuditCommand::Digest(args) => digest(&args),
    })
    .await
    .context("audit task failed")?
}

fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let scan = open(&args.data_dir)?;
    let started = Instant::now();
    let walk = walk(&scan, None, args.position)?;
    let elapsed = started.elapsed();
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
            print_break(broken, &walk);
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

fn digest(args: &DigestArgs) -> anyhow::Result<()> {
    let scan = open(&args.data_dir)?;
    let walk = walk(&scan, args.position, args.position)?;
    if let Some(broken) = &walk.broken {
        print_break(broken, &walk);
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

fn open(data_dir: &Path) -> anyhow::Result<LogScan> {
    let path = data_dir.join("log");
    LogScan::open(&path).with_context(|| format!("cannot audit {}", path.display()))
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

/// Walks the chain from position 0, recomputing every hash, until the end of the log, the first
/// break, or `stop` events. Errors are storage failures only; a bad log is a [`Walk::broken`].
fn walk(scan: &LogScan, stop: Option<Position>, watch: Option<Position>) -> anyhow::Result<Walk> {
    let bar = progress(scan.claimed_end()?.map(|end| stop.map_or(end, |s| s.min(end))));
    let mut verifier = ChainVerifier::new(Some(0), GENESIS_HASH);
    let mut walk = Walk { events: 0, head: GENESIS_HASH, at_watched: None, broken: None };
    if watch == Some(0) {
        walk.at_watched = Some(GENESIS_HASH);
    }
    for item in scan.events() {
        if stop.is_some_and(|stop| walk.events >= stop) {
            break;
        }
        let expected = verifier.next_position().unwrap_or(0);
        let event = match item {
            Ok(event) => event,
            Err(StoreError::Corrupt { position: at, detail }) => {
                let what = What::Undecodable { at, detail };
                walk.broken = Some(Broken { position: expected.min(at), what });
                break;
            }
            Err(e) => return Err(e).context("reading the log"),
        };
        if let Err(ChainBreak { position, kind }) = verifier.push(&event) {
            walk.broken = Some(Broken { position, what: What::Chain(kind) });
            break;
        }
        walk.events += 1;
        walk.head = verifier.head_hash();
        if watch == Some(walk.events) {
            walk.at_watched = Some(walk.head);
        }
        if walk.events % PROGRESS_STEP == 0 {
            bar.set_position(walk.events);
        }
    }
    bar.finish_and_clear();
    Ok(walk)
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
