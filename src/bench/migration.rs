//! `accrual bench migration`: a generated company's history (customers, plans, subscriptions
//! started months ago, dated plan changes and cancellations, usage, month-end billing runs)
//! loaded twice, into two fresh servers: once with `accrual import`'s passes (the `Import`
//! stream) and once call by call as a live client would (unary calls, usage on `IngestUsage`).
//! It prints the throughput of each and compares the books: every invoice (lines, tax, totals,
//! status), the balances at the end and MRR at each month start. Unequal books are a failure
//! (exit status 1): this is the migration check of issue 16, at any size.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use futures::StreamExt;
use jiff::civil::Date;
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::import_record::Record;
use proto::v1::query_service_client::QueryServiceClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::scale::ServerProcess;

#[derive(Args, Clone, Debug)]
pub struct MigrationArgs {
    /// Customers (one subscription each).
    #[arg(long, default_value_t = 1_000)]
    pub customers: u32,
    /// Months of history, ending with the last whole month before today.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=36))]
    pub months: u32,
    /// Usage events in all, spread over customers and months.
    #[arg(long, default_value_t = 5_000_000)]
    pub events: u64,
    /// Where the file and both servers' data go (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

/// Usage events sent per `IngestUsage` batch on the live side.
const LIVE_BATCH_EVENTS: usize = 1_000;
/// Longest wait for a server's projections to reach the head.
const CATCH_UP_S_MAX: u64 = 3_600;

pub async fn run(args: MigrationArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let today = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date();
    let first = today.first_of_month().checked_sub(jiff::Span::new().months(args.months))?;
    let horizon = (today - first).get_days() + 1;
    let file = dir.join("history.jsonl");
    let started = Instant::now();
    let records = write_history(&file, &args, first)?;
    println!(
        "history: {} customers, {} months from {first}, {records} records (usage: {} events less those of customers who left), {:.1} MB, written in {:.1} s",
        args.customers,
        args.months,
        args.events,
        std::fs::metadata(&file)?.len() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let horizon = horizon.to_string();
    let flags =
        ["--scheduler-interval-secs", "0", "--backdate-days-max", &horizon, "--no-dashboard"];

    // Imported: the Import stream, validate pass then import pass.
    let port = free_port()?;
    let mut imported =
        ServerProcess::start(&dir.join("imported"), port, &dir.join("imported.log"), &flags)?;
    let url = format!("http://127.0.0.1:{port}");
    let channel = imported.serving(&url, 60).await?;
    let validated = import_pass(&url, &file, records, true).await.context("the validate pass")?;
    anyhow::ensure!(validated.errors.is_empty(), "bad records: {:?}", &validated.errors[..1]);
    let done = import_pass(&url, &file, records, false).await.context("the import pass")?;
    anyhow::ensure!(done.errors.is_empty(), "failed records: {:?}", &done.errors[..1]);
    println!(
        "import: validate {:.1} s ({:.0} records/s), import {:.1} s ({:.0} records/s), {} events appended",
        validated.seconds,
        validated.records as f64 / validated.seconds,
        done.seconds,
        done.records as f64 / done.seconds,
        done.events_appended
    );

    // Live: the same records, call by call.
    let live_port = free_port()?;
    let mut live =
        ServerProcess::start(&dir.join("live"), live_port, &dir.join("live.log"), &flags)?;
    let live_channel = live.serving(&format!("http://127.0.0.1:{live_port}"), 60).await?;
    let started = Instant::now();
    let sent = send_live(&live_channel, &file).await.context("sending live")?;
    let live_s = started.elapsed().as_secs_f64();
    println!("live: {sent} records in {live_s:.1} s ({:.0} records/s)", sent as f64 / live_s);

    let started = Instant::now();
    let end = today.first_of_month();
    let a = books(&channel, first, end).await.context("reading the imported books")?;
    let b = books(&live_channel, first, end).await.context("reading the live books")?;
    println!(
        "compared after {:.1} s (projections caught up): {} invoices, balances at {end}, MRR on {} month starts",
        started.elapsed().as_secs_f64(),
        a.invoices.len(),
        a.mrr.len()
    );
    imported.stop()?;
    live.stop()?;
    if a != b {
        let diff = a.invoices.iter().zip(&b.invoices).find(|(x, y)| x != y);
        anyhow::bail!(
            "the books differ: {} vs {} invoices; first differing invoice {diff:?}; balances equal: {}; MRR equal: {}",
            a.invoices.len(),
            b.invoices.len(),
            a.balances == b.balances,
            a.mrr == b.mrr
        );
    }
    println!("books equal: yes");
    Ok(())
}

/// One pass of `accrual import` over a JSON Lines `file` of `records` lines, quietly, to the
/// server at `url`: validate only, or import.
pub(super) async fn import_pass(
    url: &str,
    file: &Path,
    records: u64,
    validate_only: bool,
) -> anyhow::Result<crate::import::PassReport> {
    let args = crate::import::ImportArgs {
        file: file.to_path_buf(),
        addr: url.to_string(),
        token: None,
        format: Some(crate::import::Format::Jsonl),
        skip_invalid: false,
        validate_only: false,
        quiet: true,
    };
    let channel = Channel::from_shared(url.to_string())?.connect().await?;
    let client = crate::import::Client { channel, token: None };
    let fmt = crate::import::Format::Jsonl;
    crate::import::pass(&client, &args, fmt, records, validate_only, &Default::default()).await
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes the history as JSON Lines; returns the number of records.
pub(super) fn write_history(path: &Path, args: &MigrationArgs, first: Date) -> anyhow::Result<u64> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut n: u64 = 0;
    let mut put = |v: Value| -> anyhow::Result<()> {
        serde_json::to_writer(&mut out, &v)?;
        out.write_all(b"\n")?;
        n += 1;
        Ok(())
    };
    put(
        json!({"type": "metric", "code": "api_calls", "name": "API calls", "aggregation": "sum", "property": "calls"}),
    )?;
    put(
        json!({"type": "plan", "code": "basic", "name": "Basic", "currency": "USD", "interval": "monthly",
               "base_fee": "30.00", "fee_timing": "advance",
               "charges": [{"metric_code": "api_calls", "model": "standard", "unit_price": "0.002"}]}),
    )?;
    put(
        json!({"type": "plan", "code": "pro", "name": "Pro", "currency": "USD", "interval": "monthly",
               "base_fee": "62.00", "fee_timing": "advance",
               "charges": [{"metric_code": "api_calls", "model": "graduated", "tiers": [
                   {"up_to": "10000", "unit_price": "0.001", "flat_fee": "5"}, {"unit_price": "0.0005"}]}]}),
    )?;
    put(
        json!({"type": "plan", "code": "metered", "name": "Metered", "currency": "USD", "interval": "monthly",
               "base_fee": "10.00", "fee_timing": "arrears",
               "charges": [{"metric_code": "api_calls", "model": "package", "package_size": "1000",
                            "package_price": "1.50", "free_units": "5000"}]}),
    )?;
    let plans = ["basic", "pro", "metered"];
    for c in 0..args.customers {
        put(
            json!({"type": "customer", "customer_id": format!("c{c}"), "name": format!("Customer {c}"),
                   "currency": "USD", "time_zone": "UTC", "tax_rate": "8.25"}),
        )?;
        put(
            json!({"type": "subscription", "subscription_id": format!("s{c}"), "customer_id": format!("c{c}"),
                   "plan_code": plans[(c % 3) as usize], "start_date": first.to_string()}),
        )?;
    }
    let per_month = args.events / u64::from(args.months);
    // One customer in 25 leaves on the 20th of the eighth month (or the last): no usage after.
    let cancel_month = 7.min(args.months - 1);
    let left = |c: u64, m: u32| c % 25 == 2 && m > cancel_month;
    for m in 0..args.months {
        let month = first.checked_add(jiff::Span::new().months(m))?;
        let days = u64::from(month.days_in_month() as u8);
        for i in 0..per_month {
            let c = i % u64::from(args.customers);
            if left(c, m) {
                continue;
            }
            let day = (i / u64::from(args.customers)) % days;
            let at = month.checked_add(jiff::Span::new().days(day as i64))?;
            let second = (i * 7919) % 86_400;
            put(json!({"type": "usage", "subscription_id": format!("s{c}"),
                       "transaction_id": format!("t{m}-{i}"), "metric_code": "api_calls",
                       "occurred_at": format!("{at}T{:02}:{:02}:{:02}Z", second / 3600, second / 60 % 60, second % 60),
                       "properties": {"calls": (i * 31 + u64::from(m)) % 50}}))?;
        }
        // Dated changes inside the month, while it is open: one customer in six (on basic)
        // upgrades to pro on the 16th of the third month, one in 25 leaves on the 20th of the
        // eighth.
        if m == 2 {
            for c in (0..args.customers).filter(|c| c % 6 == 0) {
                put(
                    json!({"type": "plan_change", "subscription_id": format!("s{c}"), "plan_code": "pro",
                           "effective_date": month.checked_add(jiff::Span::new().days(15))?.to_string()}),
                )?;
            }
        }
        if m == cancel_month {
            for c in (0..args.customers).filter(|c| c % 25 == 2) {
                put(json!({"type": "cancellation", "subscription_id": format!("s{c}"),
                           "effective_date": month.checked_add(jiff::Span::new().days(19))?.to_string()}))?;
            }
        }
        let next = month.checked_add(jiff::Span::new().months(1))?;
        put(json!({"type": "billing_run", "as_of": format!("{next}T00:00:00Z")}))?;
    }
    out.flush()?;
    drop(out);
    Ok(n)
}

/// Sends every record of `file` through its own call, usage on `IngestUsage` streams in
/// batches (each acknowledged before the next record that is not usage).
async fn send_live(channel: &Channel, file: &Path) -> anyhow::Result<u64> {
    let mut c = CommandServiceClient::new(channel.clone());
    let mut usage = LiveUsage::new(channel.clone());
    let mut batch: Vec<pb::UsageEvent> = Vec::with_capacity(LIVE_BATCH_EVENTS);
    let mut sent: u64 = 0;
    for item in crate::import::records::read(file, crate::import::Format::Jsonl)? {
        let (line, record) = item?;
        let record = record.map_err(|e| anyhow::anyhow!("line {line}: {e}"))?;
        sent += 1;
        if let Record::Usage(u) = record {
            batch.push(u);
            if batch.len() == LIVE_BATCH_EVENTS {
                usage.send(std::mem::take(&mut batch)).await?;
            }
            continue;
        }
        if !batch.is_empty() {
            usage.send(std::mem::take(&mut batch)).await?;
        }
        usage.settle().await?;
        match record {
            Record::Customer(r) => drop(c.register_customer(r).await?),
            Record::Metric(r) => drop(c.define_metric(r).await?),
            Record::Plan(r) => drop(c.publish_plan(r).await?),
            Record::Subscription(r) => drop(c.start_subscription(r).await?),
            Record::PlanChange(r) => drop(c.change_plan(r).await?),
            Record::Cancellation(r) => drop(c.cancel_subscription(r).await?),
            Record::BillingRun(r) => drop(c.run_billing(r).await?),
            Record::Invoice(r) => drop(c.import_invoice(r).await?),
            Record::Payment(r) => drop(c.record_payment(r).await?),
            Record::Usage(_) => unreachable!("usage is batched above"),
        }
    }
    if !batch.is_empty() {
        usage.send(batch).await?;
    }
    usage.settle().await?;
    Ok(sent)
}

/// Usage batches sent on `IngestUsage` as a client would: a few in flight, a new stream
/// before the server's per-stream bound (1M events by default).
struct LiveUsage {
    channel: Channel,
    stream:
        Option<(tokio::sync::mpsc::Sender<pb::UsageBatch>, tonic::Streaming<pb::UsageBatchResult>)>,
    events_in_stream: usize,
    in_flight: usize,
}

/// Batches awaiting their acknowledgement on the live side.
const LIVE_BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Events sent on one `IngestUsage` stream before a new one is opened.
const LIVE_STREAM_EVENTS_MAX: usize = 500_000;

impl LiveUsage {
    fn new(channel: Channel) -> LiveUsage {
        LiveUsage { channel, stream: None, events_in_stream: 0, in_flight: 0 }
    }

    async fn send(&mut self, events: Vec<pb::UsageEvent>) -> anyhow::Result<()> {
        if self.events_in_stream + events.len() > LIVE_STREAM_EVENTS_MAX {
            self.settle().await?;
            self.stream = None;
        }
        if self.stream.is_none() {
            let (tx, rx) = tokio::sync::mpsc::channel(LIVE_BATCHES_IN_FLIGHT_MAX);
            let mut c = CommandServiceClient::new(self.channel.clone());
            let acks = c.ingest_usage(tokio_stream::wrappers::ReceiverStream::new(rx)).await?;
            self.stream = Some((tx, acks.into_inner()));
            self.events_in_stream = 0;
        }
        if self.in_flight == LIVE_BATCHES_IN_FLIGHT_MAX {
            self.ack().await?;
        }
        self.events_in_stream += events.len();
        let (tx, _) = self.stream.as_ref().expect("opened above");
        tx.send(pb::UsageBatch { events }).await?;
        self.in_flight += 1;
        Ok(())
    }

    async fn ack(&mut self) -> anyhow::Result<()> {
        let (_, acks) = self.stream.as_mut().expect("a batch in flight has a stream");
        let ack = acks.next().await.context("the IngestUsage stream ended")??;
        let rejected = ack.results.iter().find(|r| r.status == "rejected");
        anyhow::ensure!(ack.rejected == 0, "usage rejected: {rejected:?}");
        self.in_flight -= 1;
        Ok(())
    }

    /// Waits for every batch in flight.
    async fn settle(&mut self) -> anyhow::Result<()> {
        while self.in_flight > 0 {
            self.ack().await?;
        }
        Ok(())
    }
}

/// What the comparison reads.
#[derive(Debug, PartialEq)]
struct Books {
    invoices: Vec<String>,
    balances: String,
    mrr: Vec<String>,
}

/// The books once the projections reach the log's head.
async fn books(channel: &Channel, first: Date, end: Date) -> anyhow::Result<Books> {
    let head = caught_up(channel, end).await?;
    let mut q = QueryServiceClient::new(channel.clone());
    let mut invoices = Vec::new();
    let mut token = String::new();
    loop {
        let req = pb::ListInvoicesRequest {
            page_size: 1_000,
            page_token: token.clone(),
            min_position: Some(head),
            ..Default::default()
        };
        let page = q.list_invoices(req).await?.into_inner();
        for i in page.invoices {
            let lines: Vec<String> = i
                .lines
                .iter()
                .map(|l| {
                    format!(
                        "{}:{}:{}:{}-{}",
                        l.kind, l.units, l.amount, l.service_start, l.service_end
                    )
                })
                .collect();
            invoices.push(format!(
                "{} {} {}..{} {:?} tax={} total={} due={} {}",
                i.invoice_id,
                i.reason,
                i.period_start,
                i.period_end,
                lines,
                i.tax,
                i.total,
                i.amount_due,
                i.status
            ));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    invoices.sort();
    let req =
        pb::AsOfRequest { as_of: end.to_string(), min_position: Some(head), as_recorded_at: None };
    let balances = format!("{:?}", q.get_balances(req).await?.into_inner().balances);
    let mut mrr = Vec::new();
    let mut month = first;
    while month <= end {
        let req = pb::MrrRequest {
            currency: "USD".into(),
            date: month.to_string(),
            min_position: Some(head),
            ..Default::default()
        };
        mrr.push(format!("{month} {}", q.get_mrr(req).await?.into_inner().mrr));
        month = month.checked_add(jiff::Span::new().months(1))?;
    }
    Ok(Books { invoices, balances, mrr })
}

/// Appends a probe and waits until every read model of the server includes it (retried while
/// they catch up): the log position the models then hold.
pub(super) async fn caught_up(channel: &Channel, end: Date) -> anyhow::Result<u64> {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut c = CommandServiceClient::new(channel.clone());
    let probe = pb::DefineMetricRequest {
        code: format!("probe-{}-{n}", std::process::id()),
        name: "probe".into(),
        aggregation: "count".into(),
        ..Default::default()
    };
    let head = c.define_metric(probe).await?.into_inner().position;
    let mut q = QueryServiceClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(CATCH_UP_S_MAX);
    // The first query waits for every model to reach the head (retried while they catch up).
    loop {
        let req = pb::AsOfRequest {
            as_of: end.to_string(),
            min_position: Some(head),
            as_recorded_at: None,
        };
        match q.get_trial_balance(req).await {
            Ok(_) => break,
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.code(),
                        tonic::Code::DeadlineExceeded | tonic::Code::Unavailable
                    ) =>
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(head)
}
