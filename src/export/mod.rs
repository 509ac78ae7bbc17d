//! `accrual export`: read models as CSV, JSON or Parquet for analysts and auditors (SPEC §6).
//!
//! The source is a data directory nobody writes meanwhile: a stopped `accrual serve`'s, or the
//! output of `accrual replay`. Read models are opened as they are on disk
//! ([`projections::ReadModel::open_existing`], never through a runner, so nothing is cleared or
//! rebuilt in place). `--as-of-recorded T` rebuilds the one model needed from the log, with the
//! events recorded at or before T, into a temporary directory and exports that. Rows are read
//! page by page and written as they come, so memory does not grow with the export.
//!
//! [`write`] is the export itself: a [`Spec`] (kind, format, effective dates, currency) over an
//! open [`ReadModel`] into any [`Write`]. The CLI writes to stdout or a file; the AuditService's
//! `Export` (`crate::audit_service`) streams it over gRPC from the live read models.
//!
//! Every format is written from the same cells (`kinds` builds the rows once per pass, `format`
//! writes them). Parquet reads the rows twice: a first pass finds each decimal column's scale
//! (the schema comes before the rows), the second writes them; so a Parquet export costs two
//! reads of the model and the memory of one row group (docs/decisions/0038-parquet-exports.md).

mod format;
mod kinds;
mod parquet;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use domain::money::Currency;
use event_store::{EventStore, SledConfig, SledStore};
use jiff::civil::Date;
use jiff::Timestamp;
use projections::invoices::InvoiceReader;
use projections::journal::JournalReader;
use projections::mrr::{Granularity, MrrReader};
use projections::ReadModel;
use replay::{Cutoff, Kind};

use format::Output;
use kinds::Window;

/// The long help of `accrual export` (after the options).
pub const HELP: &str = "\
SOURCE
  --data-dir is the data directory of a stopped `accrual serve` (DIR/read-models, DIR/log) or
  the output directory of `accrual replay` (DIR/read-models, DIR/replay.json). The read models
  are read as they are on disk, without writing: a model that is missing or was built by
  another version of accrual is an error (run `accrual serve` on the directory, or `accrual
  replay`, first). A serve that is still running holds the directory: stop it first. A model
  is exported at its own checkpoint (stderr names the log position); if a serve stopped before
  its projections caught up with the log, use --as-of-recorded with a time after the last
  event to export a fresh rebuild instead.
  --as-of-recorded T instead rebuilds the model the export needs from DIR/log, with the
  events recorded at or before T, in a temporary directory (under $TMPDIR, removed at exit):
  the books as they stood at T. A replay output has no log and cannot be used with it.

EFFECTIVE DATES (--from, --effective: YYYY-MM-DD, both inclusive)
  invoices           issued on those days (the UTC date of issued_at). Status, payments and
                     amount due are as of the log's end (or T), not as of --effective.
  invoice-lines      the lines of the invoices issued on those days (as invoices).
  credit-notes       issued on those days (the UTC date of issued_at).
  journal            entries dated on those days (business dates: the customer's local date).
  usage-daily        usage dated on those days (business dates: the customer's local date).
  trial-balance      balances at the end of --effective. Default: the date of the last journal
                     entry (recognition is posted ahead, so this includes scheduled revenue);
                     give --effective for the books at a date. --from is refused.
  revenue-waterfall  the months of --from to --effective. Default: the first to the last month
                     with recognized revenue.
  mrr-movements      movements dated on those days. With --granularity day|month: one MRR
                     bridge row per currency and day or month with movements instead of one
                     row per customer movement.

FORMATS
  csv      RFC 4180: one header row, comma-separated, CRLF line ends, fields quoted only when
           needed, UTF-8 without BOM.
  json     one JSON array, one record (object) per line, keys in the CSV's column order; `[]`
           when empty. Amounts, dates and ids are strings; counts and log positions are
           numbers; an absent value is null (an empty CSV field).
  parquet  the CSV's columns and rows, typed: amounts and other decimals decimal128(38, s),
           s = the most fractional digits of the column's values in the file (a one-currency
           file: the currency's minor unit, USD 2, JPY 0, KWD 3; several currencies: the
           largest of theirs, every value exact); dates date32; instants timestamp(µs, UTC)
           (sub-microsecond digits cut); counts and positions int64; ids and names utf8; an
           empty CSV field is null. Row groups of at most 65,536 rows, snappy; file metadata
           accrual.export_kind and accrual.log_position. The rows are read twice (the first
           pass finds the scales). A value that needs more than 38 digits is an error, never
           rounded. JSON-only nested lines are not in it: export invoice-lines.
  Amounts are decimal strings with exactly the currency's minor-unit digits (USD 12.50, JPY
  1250, KWD 1.250), never rounded. Dates are YYYY-MM-DD; instants RFC 3339 in UTC.
  --currency CODE keeps the rows whose currency column is CODE, in every format (not for
  usage-daily, which has no currency).

COLUMNS
  invoices           one row per invoice, in issue order: invoice_id, customer_id,
                     subscription_id, currency, period_start, period_end_exclusive, issued_at,
                     reason, status, subtotal, tax_rate_percent, tax, total, amount_paid,
                     amount_due, failed_attempts, line_count, amount_credited (Σ its credit
                     notes), amount_offset (of which offset against the amount due),
                     credit_applied (the customer's credit balance applied at issue):
                     amount_due = total - credit_applied - wallet_applied - amount_paid -
                     amount_offset;
                     discount (what coupons took off its lines, before tax); wallet_applied
                     (what wallet credits paid at issue, after credit_applied; amount_due
                     subtracts it too). JSON adds `lines`
                     (line_index,
                     kind, description, metric_code, charge_model, units, service_period_start,
                     service_period_end_exclusive, amount, discount); CSV and Parquet have no
                     lines (export invoice-lines).
  invoice-lines      one row per invoice line, invoices in issue order then lines in order:
                     invoice_id, line_index, customer_id, subscription_id, currency, issued_at,
                     kind, description, metric_code, charge_model, units,
                     service_period_start, service_period_end_exclusive, amount (net of
                     discount: Σ amount of an invoice's lines = its subtotal), discount.
  credit-notes       one row per credit note, in issue order: credit_note_id, number,
                     customer_id, invoice_id, currency, issued_at, destination, reason,
                     subtotal, tax, total, line_count. JSON adds `lines` (line_index,
                     description, amount).
  journal            one row per posting, entries in date then posting order: entry, date,
                     kind, invoice_id, subscription_id, currency, account, debit, credit,
                     log_position, credit_note_id (its credit note's entries), wallet_id
                     (wallet_expiry entries). `entry` is the posting counter, or A<n> for a usage
                     accrual (numbered apart; n = log position of the day's first event).
  usage-daily        one row per business date, subscription and metric with usage, in that
                     order: date, customer_id, subscription_id, metric_code, units (Σ of the
                     value the metric reads from each event: its property for sum, max, min,
                     latest and weighted_sum, 1 per event for count and unique_count; the
                     day's raw quantity, not the billed units), events (count).
  trial-balance      as_of, currency, account, debit, credit: each account with a balance, then
                     a TOTAL row per currency (Σ debit = Σ credit).
  revenue-waterfall  invoice_id, line_index, currency, revenue_type, one column per month
                     (YYYY-MM, revenue recognized that month, 0 when none), total.
  mrr-movements      date, customer_id, currency, kind, amount, mrr_before, mrr_after, by
                     currency then date then customer. With --granularity: period_start,
                     currency, mrr_start, new, expansion, contraction, churn, reactivation, net,
                     mrr_end, movements (count).

Progress and a summary go to stderr; the export to stdout, or to --out FILE (written beside it
and renamed into place when complete).";

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ExportKind {
    Invoices,
    InvoiceLines,
    CreditNotes,
    Journal,
    TrialBalance,
    RevenueWaterfall,
    MrrMovements,
    UsageDaily,
}

impl ExportKind {
    /// The kind named `name` (as on the command line: `trial-balance`, ...).
    pub fn parse(name: &str) -> Option<ExportKind> {
        <ExportKind as ValueEnum>::from_str(name, false).ok()
    }

    /// The read model the export reads.
    pub fn source(self) -> Kind {
        match self {
            ExportKind::Invoices | ExportKind::InvoiceLines | ExportKind::CreditNotes => {
                Kind::Invoices
            }
            ExportKind::Journal
            | ExportKind::TrialBalance
            | ExportKind::RevenueWaterfall
            | ExportKind::UsageDaily => Kind::Journal,
            ExportKind::MrrMovements => Kind::Mrr,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExportKind::Invoices => "invoices",
            ExportKind::InvoiceLines => "invoice-lines",
            ExportKind::CreditNotes => "credit-notes",
            ExportKind::Journal => "journal",
            ExportKind::TrialBalance => "trial-balance",
            ExportKind::RevenueWaterfall => "revenue-waterfall",
            ExportKind::MrrMovements => "mrr-movements",
            ExportKind::UsageDaily => "usage-daily",
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Json,
    Parquet,
}

impl ExportFormat {
    /// `csv`, `json` or `parquet`.
    pub fn parse(name: &str) -> Option<ExportFormat> {
        <ExportFormat as ValueEnum>::from_str(name, false).ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
            ExportFormat::Parquet => "parquet",
        }
    }
}

/// Bucket size of the `mrr-movements` bridge.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum GranularityArg {
    Day,
    Month,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// What to export.
    #[arg(value_enum)]
    pub kind: ExportKind,
    /// csv (RFC 4180, header row), json (an array, one record per line) or parquet (typed
    /// columns; see --help).
    #[arg(long, value_enum, default_value = "csv")]
    pub format: ExportFormat,
    /// Data directory of a stopped `accrual serve`, or the output of `accrual replay`.
    #[arg(long, env = "ACCRUAL_DATA_DIR", default_value = "accrual-data")]
    pub data_dir: PathBuf,
    /// The books as they stood at this recorded time (RFC 3339, e.g. 2025-04-05T00:00:00Z):
    /// rebuilds the model from <data-dir>/log up to it in a temporary directory.
    #[arg(long, value_name = "T", value_parser = parse_timestamp)]
    pub as_of_recorded: Option<Timestamp>,
    /// Last effective (business) date included, YYYY-MM-DD; the trial balance's as-of date
    /// (default: the last journal entry's date); per export: see --help.
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub effective: Option<Date>,
    /// First effective date included, YYYY-MM-DD (not for trial-balance).
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub from: Option<Date>,
    /// mrr-movements only: an MRR bridge per day or month instead of one row per movement.
    #[arg(long, value_enum)]
    pub granularity: Option<GranularityArg>,
    /// Only the rows in this currency (ISO 4217 code, e.g. USD), in any format; not for
    /// usage-daily.
    #[arg(long, value_name = "CODE", value_parser = parse_currency)]
    pub currency: Option<Currency>,
    /// Write the export to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

fn parse_date(s: &str) -> Result<Date, String> {
    let wrong = || format!("{s:?} is not a date YYYY-MM-DD");
    if s.len() != 10 || s.as_bytes()[4] != b'-' || s.as_bytes()[7] != b'-' {
        return Err(wrong());
    }
    s.parse::<Date>().map_err(|e| format!("{}: {e}", wrong()))
}

fn parse_currency(s: &str) -> Result<Currency, String> {
    Currency::parse(s).map_err(|_| format!("{s:?} is not an ISO 4217 currency code (e.g. USD)"))
}

fn parse_timestamp(s: &str) -> Result<Timestamp, String> {
    s.parse::<Timestamp>().map_err(|e| {
        format!("{s:?} is not an RFC 3339 time with an offset (e.g. 2025-04-05T00:00:00Z): {e}")
    })
}

/// What one export writes: the kind, the format and the effective-date options (both dates
/// inclusive; see [`HELP`] for what they mean per kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub kind: ExportKind,
    pub format: ExportFormat,
    pub from: Option<Date>,
    pub effective: Option<Date>,
    /// `mrr-movements` only: a bridge per day or month.
    pub granularity: Option<Granularity>,
    /// Only the rows in this currency (not for `usage-daily`).
    pub currency: Option<Currency>,
}

/// An option combination an export refuses: the option (`granularity`, `from`, `effective`)
/// and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: &'static str,
    pub message: String,
}

impl Spec {
    /// The option combinations this export refuses (none: it can run). `name` spells an option
    /// as the caller knows it (`--from` on the command line, `from` in a gRPC request).
    pub fn problems(&self, name: impl Fn(&str) -> String) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.granularity.is_some() && self.kind != ExportKind::MrrMovements {
            let message = format!("{} is for mrr-movements only", name("granularity"));
            problems.push(Problem { field: "granularity", message });
        }
        if self.from.is_some() && self.kind == ExportKind::TrialBalance {
            let message = format!(
                "a trial balance is at one date: give {}, not {}",
                name("effective"),
                name("from")
            );
            problems.push(Problem { field: "from", message });
        }
        if self.currency.is_some() && self.kind == ExportKind::UsageDaily {
            let message =
                format!("usage-daily has no currency column: leave out {}", name("currency"));
            problems.push(Problem { field: "currency", message });
        }
        if let (Some(from), Some(to)) = (self.from, self.effective) {
            if from > to {
                let message =
                    format!("{} {from} is after {} {to}", name("from"), name("effective"));
                problems.push(Problem { field: "effective", message });
            }
        }
        problems
    }
}

/// What [`write`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub rows: u64,
    /// Worth telling the reader (e.g. the date a trial balance defaulted to).
    pub note: Option<String>,
}

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let spec = Spec {
        kind: args.kind,
        format: args.format,
        from: args.from,
        effective: args.effective,
        granularity: args.granularity.map(|g| match g {
            GranularityArg::Day => Granularity::Day,
            GranularityArg::Month => Granularity::Month,
        }),
        currency: args.currency,
    };
    if let Some(problem) = spec.problems(|option| format!("--{option}")).into_iter().next() {
        anyhow::bail!(problem.message);
    }
    let source = Source::open(&args).await?;
    let kind = args.kind.source();
    let model = source.model(kind)?;
    let position = model.checkpoint()?;
    let (written, written_to) = match &args.out {
        None => {
            let stdout = std::io::stdout();
            let written = match write(&spec, model, std::io::BufWriter::new(stdout)) {
                Err(e) if is_broken_pipe(&e) => return Ok(()),
                other => other?,
            };
            (written, "stdout".to_string())
        }
        Some(path) => (export_to_file(&spec, model, path)?, path.display().to_string()),
    };
    if let Some(note) = &written.note {
        eprintln!("{note}");
    }
    eprintln!(
        "accrual export: {} {} rows ({}) to {written_to}, from {} at log position {position}",
        written.rows,
        args.kind.name(),
        args.format.name(),
        source.label,
    );
    Ok(())
}

/// Writes the export to a temporary file beside `path`, renamed to `path` once complete.
fn export_to_file(spec: &Spec, model: ReadModel, path: &Path) -> anyhow::Result<Written> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".accrual-export-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let (file, temp_path) = temp.into_parts();
    let written = write(spec, model, std::io::BufWriter::new(file))?;
    temp_path.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(written)
}

/// Writes the export `spec` of `model` (the read model `spec.kind.source()`, open) to `out`,
/// row by row as the pages are read, then flushes `out`. The caller checks
/// [`Spec::problems`] first. Parquet reads the rows twice (see the module documentation).
pub fn write<W: Write + Send>(spec: &Spec, model: ReadModel, out: W) -> anyhow::Result<Written> {
    let output = match spec.format {
        ExportFormat::Csv => Output::new(format::Target::Csv, spec.currency),
        ExportFormat::Json => Output::new(format::Target::Json, spec.currency),
        ExportFormat::Parquet => {
            let position = model.checkpoint()?;
            let (scan, scales) = Output::scan(spec.currency);
            write_rows(spec, model.clone(), &scan, std::io::sink())?;
            let scales = scales.borrow().clone();
            let metadata = vec![
                ("accrual.export_kind".to_string(), spec.kind.name().to_string()),
                ("accrual.log_position".to_string(), position.to_string()),
            ];
            Output::parquet(scales, metadata, spec.currency)
        }
    };
    write_rows(spec, model, &output, out)
}

/// One pass over the rows of `spec` into `output`.
fn write_rows<W: Write + Send>(
    spec: &Spec,
    model: ReadModel,
    output: &Output,
    out: W,
) -> anyhow::Result<Written> {
    let window = Window { from: spec.from, to: spec.effective };
    let mut note = None;
    let (mut out, rows) = match spec.kind {
        ExportKind::Invoices => kinds::invoices(&InvoiceReader::new(model), window, output, out)?,
        ExportKind::InvoiceLines => {
            kinds::invoice_lines(&InvoiceReader::new(model), window, output, out)?
        }
        ExportKind::CreditNotes => {
            kinds::credit_notes(&InvoiceReader::new(model), window, output, out)?
        }
        ExportKind::Journal => kinds::journal(&JournalReader::new(model), window, output, out)?,
        ExportKind::UsageDaily => {
            kinds::usage_daily(&JournalReader::new(model), window, output, out)?
        }
        ExportKind::TrialBalance => {
            let reader = JournalReader::new(model);
            let as_of = match spec.effective {
                Some(d) => Some(d),
                None => reader.last_entry_date()?,
            };
            if spec.effective.is_none() {
                note = Some(match as_of {
                    Some(d) => format!("trial balance as of {d} (the last journal entry's date)"),
                    None => "the journal is empty: no trial balance rows".to_string(),
                });
            }
            kinds::trial_balance(&reader, as_of, output, out)?
        }
        ExportKind::RevenueWaterfall => {
            kinds::revenue_waterfall(&JournalReader::new(model), window, output, out)?
        }
        ExportKind::MrrMovements => {
            let reader = MrrReader::new(model);
            match spec.granularity {
                None => kinds::mrr_movements(&reader, window, output, out)?,
                Some(g) => kinds::mrr_bridge(&reader, window, g, output, out)?,
            }
        }
    };
    out.flush()?;
    Ok(Written { rows, note })
}

/// Whether `e` is the reader going away (a closed pipe or client): not worth reporting.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let io = c.downcast_ref::<std::io::Error>().map(|e| e.kind());
        let csv = c.downcast_ref::<csv::Error>().and_then(|e| match e.kind() {
            csv::ErrorKind::Io(io) => Some(io.kind()),
            _ => None,
        });
        io.or(csv) == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// Where the read models come from. The database closes before the scratch directory goes.
struct Source {
    db: sled::Db,
    /// For messages: the directory and, for a rebuild, its cutoff.
    label: String,
    data_dir: PathBuf,
    _scratch: Option<tempfile::TempDir>,
}

impl Source {
    async fn open(args: &ExportArgs) -> anyhow::Result<Source> {
        let dir = &args.data_dir;
        anyhow::ensure!(dir.is_dir(), "the data directory {} does not exist", dir.display());
        match args.as_of_recorded {
            None => Self::on_disk(dir),
            Some(t) => Self::rebuilt(dir, t, args.kind.source()).await,
        }
    }

    fn on_disk(dir: &Path) -> anyhow::Result<Source> {
        let models = dir.join(replay::READ_MODELS_DIR);
        anyhow::ensure!(
            models.is_dir(),
            "no read models in {}: run `accrual serve --data-dir {0}` (then stop it) or \
             `accrual replay` into it first",
            dir.display()
        );
        let db = projections::open_db(&models).with_context(|| {
            format!(
                "opening {} (is `accrual serve` still running on it? stop it first)",
                models.display()
            )
        })?;
        let manifest = dir.join(replay::MANIFEST_FILE);
        let label = if manifest.is_file() {
            format!("the replay in {}", dir.display())
        } else {
            dir.display().to_string()
        };
        Ok(Source { db, label, data_dir: dir.to_path_buf(), _scratch: None })
    }

    async fn rebuilt(dir: &Path, t: Timestamp, kind: Kind) -> anyhow::Result<Source> {
        let log = dir.join("log");
        anyhow::ensure!(
            log.is_dir(),
            "--as-of-recorded rebuilds from the event log, and {} has none (the output of \
             `accrual replay` has no log: give the data directory of `accrual serve`)",
            dir.display()
        );
        let store = SledStore::open(SledConfig::new(&log)).with_context(|| {
            format!(
                "opening {} (is `accrual serve` still running on it? stop it first)",
                log.display()
            )
        })?;
        let store: Arc<dyn EventStore> = Arc::new(store);
        let scratch = tempfile::Builder::new().prefix("accrual-export-").tempdir()?;
        let out = scratch.path().join("replay");
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(indicatif::ProgressStyle::with_template(
            "rebuilding {msg} {pos}/{len} events [{bar:40}]",
        )?);
        bar.set_message(kind.name());
        let progress = |applied: u64, end: u64| {
            bar.set_length(end);
            bar.set_position(applied);
        };
        let rebuilt =
            replay::rebuild(store.clone(), Cutoff::RecordedAt(t), &[kind], &out, &progress)
                .await
                .context("rebuilding from the log")?;
        bar.finish_and_clear();
        store.close().await?;
        let end = rebuilt.manifest.end_position;
        eprintln!(
            "rebuilt {} from {} events recorded at or before {t} in {:.1} s",
            kind.name(),
            end,
            rebuilt.secs
        );
        let db = rebuilt.read_models;
        let label = format!("{} as recorded at {t}", log.display());
        Ok(Source { db, label, data_dir: dir.to_path_buf(), _scratch: Some(scratch) })
    }

    /// The read model `kind`, as it is on disk.
    fn model(&self, kind: Kind) -> anyhow::Result<ReadModel> {
        ReadModel::open_existing(&self.db, kind.name(), kind.version())?.ok_or_else(|| {
            anyhow::anyhow!(
                "the {} read model in {} is missing or was built by another version of accrual: \
                 run `accrual serve --data-dir {1}` (it rebuilds it; stop it afterwards) or \
                 `accrual replay` into a new directory, then export again",
                kind.name(),
                self.data_dir.display()
            )
        })
    }
}
