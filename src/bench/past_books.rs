//! `accrual bench past-books`: what a bitemporal query (`as_recorded_at`) costs on a server
//! holding a generated history (the migration bench's company), loaded in four parts so the
//! log has four recorded times T1 < T2 < T3 < T4. Each run restarts the server (an empty
//! cache) and times `GetBalances` as the books stood at:
//! - T3 cold: the whole prefix folded (the peer: what every new time cost before the books
//!   were built from the kept ones);
//! - then, on a fresh restart, T2 cold, T3 and T4 (each from a copy of the previous books,
//!   folding only the events between), T2 again (kept), T1 (before every kept books: the
//!   whole prefix again), and the same query on the live books.
//!
//! It prints each run's figures and the medians.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use jiff::Timestamp;
use proto::v1 as pb;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;

use super::migration::{caught_up, free_port, import_pass, write_history, MigrationArgs};
use super::scale::ServerProcess;

#[derive(Args, Clone, Debug)]
pub struct PastBooksArgs {
    /// Customers (one subscription each).
    #[arg(long, default_value_t = 200)]
    pub customers: u32,
    /// Months of history, ending with the last whole month before today.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=36))]
    pub months: u32,
    /// Usage events in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Runs of the query sequence (each on a restarted server).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,
    /// Where the history and the server's data go (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

/// Parts the history is imported in: each ends at one recorded time.
const PARTS: usize = 4;
/// The steps of one run, in the order printed.
const STEPS: [&str; 7] =
    ["T3 cold (peer)", "T2 cold", "T3 from T2", "T4 from T3", "T2 kept", "T1 cold", "live"];

pub async fn run(args: PastBooksArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let today = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date();
    let first = today.first_of_month().checked_sub(jiff::Span::new().months(args.months))?;
    let horizon = ((today - first).get_days() + 1).to_string();
    let history = MigrationArgs {
        customers: args.customers,
        months: args.months,
        events: args.events,
        dir: None,
    };
    let file = dir.join("history.jsonl");
    let records = write_history(&file, &history, first)?;
    let parts = split(&file, records, &dir)?;
    let flags =
        ["--scheduler-interval-secs", "0", "--backdate-days-max", &horizon, "--no-dashboard"];
    let data = dir.join("server");
    let log = dir.join("server.log");
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let mut server = ServerProcess::start(&data, port, &log, &flags)?;
    server.serving(&url, 60).await?;
    let mut times = Vec::with_capacity(PARTS);
    for (path, lines) in &parts {
        let done = import_pass(&url, path, *lines, false)
            .await
            .with_context(|| format!("importing {}", path.display()))?;
        anyhow::ensure!(done.errors.is_empty(), "failed records: {:?}", &done.errors[..1]);
        times.push(Timestamp::now());
        // Events recorded after this instant belong to the next part.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let end = today.first_of_month();
    let channel = Channel::from_shared(url.clone())?.connect().await?;
    let head = caught_up(&channel, end).await?;
    server.stop()?;
    println!(
        "history: {} customers, {} months, {records} records, {head} events in the log, imported in {PARTS} parts",
        args.customers, args.months
    );

    let mut figures: Vec<[f64; STEPS.len()]> = Vec::new();
    for run in 1..=args.runs {
        let mut ms = [0.0; STEPS.len()];
        let mut server = ServerProcess::start(&data, port, &log, &flags)?;
        let channel = server.serving(&url, 60).await?;
        caught_up(&channel, end).await?;
        ms[0] = timed(&channel, end, Some(times[2])).await?;
        server.stop()?;
        let mut server = ServerProcess::start(&data, port, &log, &flags)?;
        let channel = server.serving(&url, 60).await?;
        caught_up(&channel, end).await?;
        ms[1] = timed(&channel, end, Some(times[1])).await?;
        ms[2] = timed(&channel, end, Some(times[2])).await?;
        ms[3] = timed(&channel, end, Some(times[3])).await?;
        ms[4] = timed(&channel, end, Some(times[1])).await?;
        ms[5] = timed(&channel, end, Some(times[0])).await?;
        ms[6] = timed(&channel, end, None).await?;
        server.stop()?;
        let row: Vec<String> =
            STEPS.iter().zip(ms).map(|(s, m)| format!("{s} {m:.0} ms")).collect();
        println!("run {run}: {}", row.join(", "));
        figures.push(ms);
    }
    let median = |i: usize| {
        let mut v: Vec<f64> = figures.iter().map(|f| f[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let row: Vec<String> =
        STEPS.iter().enumerate().map(|(i, s)| format!("{s} {:.0} ms", median(i))).collect();
    println!("median of {} runs: {}", args.runs, row.join(", "));
    println!("T3 from the kept T2 books / T3 from the whole prefix: {:.2}", median(2) / median(0));
    Ok(())
}

/// Splits the history into [`PARTS`] files of consecutive lines: (path, lines).
fn split(file: &Path, records: u64, dir: &Path) -> anyhow::Result<Vec<(std::path::PathBuf, u64)>> {
    use std::io::{BufRead, Write};
    let per_part = records.div_ceil(PARTS as u64);
    let reader = std::io::BufReader::new(std::fs::File::open(file)?);
    let mut parts = Vec::with_capacity(PARTS);
    let mut out: Option<std::io::BufWriter<std::fs::File>> = None;
    let mut in_part = 0u64;
    for line in reader.lines() {
        let line = line?;
        if out.is_none() || in_part == per_part {
            let path = dir.join(format!("part-{}.jsonl", parts.len() + 1));
            out = Some(std::io::BufWriter::new(std::fs::File::create(&path)?));
            parts.push((path, 0));
            in_part = 0;
        }
        writeln!(out.as_mut().expect("opened above"), "{line}")?;
        in_part += 1;
        parts.last_mut().expect("pushed above").1 += 1;
    }
    if let Some(mut w) = out {
        w.flush()?;
    }
    Ok(parts)
}

/// One `GetBalances` at `as_of`, as recorded at `at` (the live books when `None`): its time.
async fn timed(
    channel: &Channel,
    as_of: jiff::civil::Date,
    at: Option<Timestamp>,
) -> anyhow::Result<f64> {
    let mut q = QueryServiceClient::new(channel.clone());
    let req = pb::AsOfRequest {
        as_of: as_of.to_string(),
        min_position: None,
        as_recorded_at: at.map(|t| prost_types::Timestamp {
            seconds: t.as_second(),
            nanos: t.subsec_nanosecond(),
        }),
    };
    let started = Instant::now();
    let reply = q.get_balances(req).await.context("GetBalances")?.into_inner();
    anyhow::ensure!(!reply.balances.is_empty(), "no balances in the books at {at:?}");
    Ok(started.elapsed().as_secs_f64() * 1e3)
}
