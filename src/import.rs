//! `accrual import FILE`: loads a company's history into a running service through the
//! `Import` stream (docs/import.md). Two passes over the file: the first validates every
//! record on a copy of the books (nothing appended), the second runs them, unless the first
//! found a bad record and `--skip-invalid` was not given: then nothing is imported. A re-run
//! of the same file appends nothing new (the server answers what is there as replays).

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

pub(crate) mod records;

/// Requests (batches) buffered between the file reader and the stream.
const SEND_QUEUE_MAX: usize = 16;
/// Records per `Import` message: one record per message makes HTTP/2 DATA frames so small that
/// the server's h2 ends the connection ("too_many_data_frames", ENHANCE_YOUR_CALM).
const BATCH_RECORDS_MAX: usize = 1_000;
/// Encoded bytes per `Import` message (the server takes up to 16 MiB by default).
const BATCH_BYTES_MAX: usize = 1 << 20;
/// Bad records printed in full (the rest are counted).
const ERRORS_PRINTED_MAX: usize = 100;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The file: JSON Lines (`.jsonl`, every record type) or CSV (`.csv`, usage only).
    pub file: PathBuf,
    /// The command service.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// A writer or admin bearer token, when the service checks tokens.
    #[arg(long, env = "ACCRUAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The file's format [default: by its extension].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Import the valid records and report the bad ones (by default a file with a bad record
    /// imports nothing).
    #[arg(long)]
    pub skip_invalid: bool,
    /// Only validate: report the bad records, import nothing.
    #[arg(long)]
    pub validate_only: bool,
    /// No progress bar (for logs and scripts).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

/// What one pass saw.
#[derive(Debug, Default)]
pub struct PassReport {
    pub records: u64,
    pub events_appended: u64,
    pub records_unchanged: u64,
    /// (line, code, message), in line order.
    pub errors: Vec<(u64, String, String)>,
    pub seconds: f64,
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let format = match args.format {
        Some(f) => f,
        None if args.file.extension().is_some_and(|e| e == "csv") => Format::Csv,
        None => Format::Jsonl,
    };
    let lines = count_lines(&args.file)?;
    let channel = Channel::from_shared(args.addr.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let token = args.token.as_deref().map(|t| format!("Bearer {t}").parse()).transpose()?;
    let client = Client { channel, token };
    let validated = pass(&client, &args, format, lines, true, &BTreeSet::new()).await?;
    print_report("validated", &validated);
    if args.validate_only {
        anyhow::ensure!(validated.errors.is_empty(), "{} bad records", validated.errors.len());
        return Ok(());
    }
    let bad: BTreeSet<u64> = validated.errors.iter().map(|(l, _, _)| *l).collect();
    if !bad.is_empty() && !args.skip_invalid {
        anyhow::bail!(
            "{} bad records: nothing imported (fix them, or pass --skip-invalid to import the \
             rest)",
            bad.len()
        );
    }
    let imported = pass(&client, &args, format, lines, false, &bad).await?;
    print_report("imported", &imported);
    anyhow::ensure!(
        imported.errors.is_empty(),
        "{} records failed while importing (they passed validation: the books changed \
         meanwhile); re-run the file to retry them",
        imported.errors.len()
    );
    Ok(())
}

/// A connection and its bearer token.
pub struct Client {
    pub channel: Channel,
    pub token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// One pass over the file: every record (but the lines in `skip`) sent on one `Import`
/// stream; a record the file cannot give (a syntax error) is a bad record of the pass.
pub async fn pass(
    client: &Client,
    args: &ImportArgs,
    format: Format,
    lines: u64,
    validate_only: bool,
    skip: &BTreeSet<u64>,
) -> anyhow::Result<PassReport> {
    let started = Instant::now();
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(lines) };
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} lines {per_sec} eta {eta}")?
            .progress_chars("=> "),
    );
    bar.set_message(if validate_only { "validating" } else { "importing" });
    let (tx, rx) = mpsc::channel::<pb::ImportRequest>(SEND_QUEUE_MAX);
    let path = args.file.clone();
    let skip = skip.clone();
    // The reader runs on a blocking thread: parsing is CPU work and the file is read as it goes.
    let reader =
        tokio::task::spawn_blocking(move || read_batches(&path, format, &skip, validate_only, &tx));
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = &client.token {
        request.metadata_mut().insert("authorization", t.clone());
    }
    let mut grpc = CommandServiceClient::new(client.channel.clone())
        .max_decoding_message_size(64 * 1024 * 1024);
    let mut replies = grpc.import(request).await?.into_inner();
    let mut report = PassReport::default();
    while let Some(reply) = replies.next().await {
        let reply = reply?;
        bar.set_position(reply.records.min(lines));
        report.records = reply.records;
        report.events_appended = reply.events_appended;
        report.records_unchanged = reply.records_unchanged;
        report.errors.extend(reply.errors.into_iter().map(|e| (e.line, e.code, e.message)));
        if reply.done {
            break;
        }
    }
    let local = reader.await??;
    report.records += local.len() as u64;
    report.errors.extend(local);
    report.errors.sort_by_key(|(line, _, _)| *line);
    bar.finish_and_clear();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Reads the file and sends its records in batches; returns the lines that are not records.
fn read_batches(
    path: &Path,
    format: Format,
    skip: &BTreeSet<u64>,
    validate_only: bool,
    tx: &mpsc::Sender<pb::ImportRequest>,
) -> anyhow::Result<Vec<(u64, String, String)>> {
    let mut local_errors = Vec::new();
    let mut batch = Vec::with_capacity(BATCH_RECORDS_MAX);
    let mut batch_bytes: usize = 0;
    for item in records::read(path, format)? {
        let (line, record) = item?;
        if skip.contains(&line) {
            continue;
        }
        match record {
            Ok(record) => {
                let record = pb::ImportRecord { line, record: Some(record) };
                batch_bytes += prost::Message::encoded_len(&record);
                batch.push(record);
                if batch.len() == BATCH_RECORDS_MAX || batch_bytes >= BATCH_BYTES_MAX {
                    let records = std::mem::take(&mut batch);
                    batch_bytes = 0;
                    if tx.blocking_send(pb::ImportRequest { validate_only, records }).is_err() {
                        return Ok(local_errors);
                    }
                }
            }
            Err(message) => local_errors.push((line, "InvalidArgument".to_string(), message)),
        }
    }
    // Always a last message, so that even a file of bad lines tells the server the mode.
    let _ = tx.blocking_send(pb::ImportRequest { validate_only, records: batch });
    Ok(local_errors)
}

fn print_report(what: &str, r: &PassReport) {
    let per_sec = r.records as f64 / r.seconds.max(1e-9);
    println!(
        "{what}: {} records in {:.1} s ({per_sec:.0} records/s): {} events {}, {} records \
         already there, {} bad",
        r.records,
        r.seconds,
        r.events_appended,
        if what == "validated" { "would be appended" } else { "appended" },
        r.records_unchanged,
        r.errors.len()
    );
    for (line, code, message) in r.errors.iter().take(ERRORS_PRINTED_MAX) {
        eprintln!("line {line}: {code}: {message}");
    }
    if r.errors.len() > ERRORS_PRINTED_MAX {
        eprintln!("... and {} more bad records", r.errors.len() - ERRORS_PRINTED_MAX);
    }
}

fn count_lines(path: &Path) -> anyhow::Result<u64> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut n: u64 = 0;
    for line in std::io::BufReader::with_capacity(1 << 20, file).split(b'\n') {
        line?;
        n += 1;
    }
    Ok(n)
}
