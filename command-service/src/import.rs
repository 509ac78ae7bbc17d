//! `Import`: a company's history streamed one record per message (docs/import.md). Each record
//! runs exactly as its own call would (the same handler; usage in batches as `IngestUsage`),
//! in stream order. With `validate_only` every record is decided on a copy of the books
//! ([`crate::engine::DryRun`]) and nothing is appended, so a client can refuse a whole file
//! that has a bad record before anything of it is in the log.
//!
//! Re-running a file appends nothing new: catalog records equal to what exists and usage with
//! known transaction ids are replays by themselves; a plan change, cancellation or billing run
//! without an idempotency key gets one derived from its content (`import:<sha-256>`), so its
//! second run is a keyed replay.

use std::time::Duration;

use domain::commands::Command;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use proto::v1 as pb;
use proto::v1::command_service_server::CommandService;
use proto::v1::import_record::Record;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::{Request, Status, Streaming};

use crate::convert;
use crate::engine::{DryOutcome, DryRun};
use crate::service::{idempotency, CommandApi};
use crate::status::from_domain;

/// Most records one `Import` stream takes (a 5M-event migration fits; split larger files).
pub const IMPORT_RECORDS_MAX: u64 = 20_000_000;
/// Longest an `Import` stream stays open.
pub const IMPORT_DURATION_MS_MAX: u64 = 3_600_000;
/// Usage events sent to the engine in one batch (one append, one fsync).
pub const IMPORT_USAGE_BATCH_MAX: usize = 1_000;
/// A progress reply after this many records.
pub const IMPORT_PROGRESS_EVERY: u64 = 10_000;
/// Usage batches appended concurrently (each waits for its fsync while the next is decided;
/// the engine's lock is fair, so they are decided in stream order).
pub const IMPORT_USAGE_BATCHES_IN_FLIGHT_MAX: usize = 4;

/// A usage batch being appended: its records' lines and the engine's answer.
type InFlight<'a> = FuturesOrdered<BoxFuture<'a, (Vec<u64>, Result<pb::UsageBatchResult, Status>)>>;

/// Where an import stands.
#[derive(Default)]
struct Tally {
    records: u64,
    events_appended: u64,
    records_unchanged: u64,
    errors: Vec<pb::ImportLineError>,
}

impl Tally {
    fn reply(&mut self, done: bool) -> pb::ImportReply {
        pb::ImportReply {
            records: self.records,
            errors: std::mem::take(&mut self.errors),
            events_appended: self.events_appended,
            records_unchanged: self.records_unchanged,
            done,
        }
    }

    fn fail(&mut self, line: u64, status: &Status) {
        self.errors.push(line_error(line, status));
    }
}

impl CommandApi {
    /// Import's reading side: runs (or validates) each record in order, replying with progress
    /// every [`IMPORT_PROGRESS_EVERY`] records and at the end.
    pub(crate) async fn import(
        &self,
        mut inbound: Streaming<pb::ImportRequest>,
        tx: mpsc::Sender<Result<pb::ImportReply, Status>>,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(IMPORT_DURATION_MS_MAX);
        let mut tally = Tally::default();
        let mut mode: Option<Mode> = None;
        let mut usage: Vec<(u64, pb::UsageEvent)> = Vec::new();
        let mut in_flight: InFlight<'_> = FuturesOrdered::new();
        loop {
            let next = match tokio::time::timeout_at(deadline, inbound.next()).await {
                Ok(next) => next,
                Err(_) => Some(Err(Status::resource_exhausted(format!(
                    "an Import stream stays open at most {IMPORT_DURATION_MS_MAX} ms; \
                     re-run the file: what was imported is skipped"
                )))),
            };
            let request = match next {
                None => break,
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mode = match &mut mode {
                Some(m) => m,
                None => match self.mode(request.validate_only).await {
                    Ok(m) => mode.insert(m),
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                },
            };
            let records = request.records.len() as u64;
            if tally.records.saturating_add(records) > IMPORT_RECORDS_MAX {
                let status = Status::resource_exhausted(format!(
                    "an Import stream takes at most {IMPORT_RECORDS_MAX} records; split the file"
                ));
                let _ = tx.send(Err(status)).await;
                return;
            }
            let progress_before = tally.records / IMPORT_PROGRESS_EVERY;
            for item in request.records {
                tally.records += 1;
                let line = item.line;
                match item.record {
                    None => tally.fail(line, &Status::invalid_argument("the record is empty")),
                    Some(Record::Usage(u)) => {
                        usage.push((line, u));
                        if usage.len() >= IMPORT_USAGE_BATCH_MAX {
                            self.flush_usage(mode, &mut usage, &mut in_flight, &mut tally).await;
                        }
                    }
                    Some(record) => {
                        self.flush_usage(mode, &mut usage, &mut in_flight, &mut tally).await;
                        settle_all(&mut in_flight, &mut tally).await;
                        match self.run_record(mode, record).await {
                            Ok(0) => tally.records_unchanged += 1,
                            Ok(n) => tally.events_appended += n,
                            Err(status) => tally.fail(line, &status),
                        }
                    }
                }
            }
            let due =
                tally.records / IMPORT_PROGRESS_EVERY > progress_before || !tally.errors.is_empty();
            if due && tx.send(Ok(tally.reply(false))).await.is_err() {
                return;
            }
        }
        if let Some(mode) = &mut mode {
            self.flush_usage(mode, &mut usage, &mut in_flight, &mut tally).await;
        }
        settle_all(&mut in_flight, &mut tally).await;
        let _ = tx.send(Ok(tally.reply(true))).await;
    }

    async fn mode(&self, validate_only: bool) -> Result<Mode, Status> {
        Ok(if validate_only {
            Mode::Validate(Box::new(self.engine.dry_run().await?))
        } else {
            Mode::Apply
        })
    }

    /// Validates the usage gathered so far, or starts appending it as one batch (settling
    /// the oldest batch in flight first when [`IMPORT_USAGE_BATCHES_IN_FLIGHT_MAX`] are).
    async fn flush_usage<'a>(
        &'a self,
        mode: &mut Mode,
        usage: &mut Vec<(u64, pb::UsageEvent)>,
        in_flight: &mut InFlight<'a>,
        tally: &mut Tally,
    ) {
        if usage.is_empty() {
            return;
        }
        let batch = std::mem::take(usage);
        match mode {
            Mode::Validate(run) => {
                for (line, u) in batch {
                    let cmd = convert::usage(u).map(Command::RecordUsage).map_err(from_domain);
                    let outcome = match cmd {
                        Ok(cmd) => self.engine.dry_execute(run, cmd, None).await,
                        Err(e) => Err(e),
                    };
                    count(tally, line, outcome);
                }
            }
            Mode::Apply => {
                if in_flight.len() >= IMPORT_USAGE_BATCHES_IN_FLIGHT_MAX {
                    settle_one(in_flight, tally).await;
                }
                let (lines, events): (Vec<u64>, Vec<pb::UsageEvent>) = batch.into_iter().unzip();
                in_flight.push_back(async move { (lines, self.usage_chunk(events).await) }.boxed());
            }
        }
    }

    /// Runs (or validates) one record that is not usage: the events it appended.
    async fn run_record(&self, mode: &mut Mode, record: Record) -> Result<u64, Status> {
        let record = with_derived_key(record)?;
        let Mode::Validate(run) = mode else { return self.apply(record).await };
        let (cmd, key) = command_of(&record, self.engine.now())?;
        match self.engine.dry_execute(run, cmd, key).await? {
            DryOutcome::Appends(n) => Ok(n),
            DryOutcome::Unchanged => Ok(0),
        }
    }

    /// One record through the handler of its own call.
    async fn apply(&self, record: Record) -> Result<u64, Status> {
        let ack = match record {
            Record::Customer(r) => self.register_customer(Request::new(r)).await?.into_inner(),
            Record::Metric(r) => self.define_metric(Request::new(r)).await?.into_inner(),
            Record::Plan(r) => {
                self.publish_plan(Request::new(r)).await?.into_inner().ack.unwrap_or_default()
            }
            Record::Subscription(r) => {
                self.start_subscription(Request::new(r)).await?.into_inner().ack.unwrap_or_default()
            }
            Record::PlanChange(r) => {
                self.change_plan(Request::new(r)).await?.into_inner().ack.unwrap_or_default()
            }
            Record::Cancellation(r) => self
                .cancel_subscription(Request::new(r))
                .await?
                .into_inner()
                .ack
                .unwrap_or_default(),
            Record::BillingRun(r) => {
                self.run_billing(Request::new(r)).await?.into_inner().ack.unwrap_or_default()
            }
            Record::Invoice(r) => {
                self.import_invoice(Request::new(r)).await?.into_inner().ack.unwrap_or_default()
            }
            Record::Payment(r) => {
                self.record_payment(Request::new(r)).await?.into_inner().ack.unwrap_or_default()
            }
            Record::Usage(u) => return Ok(u64::from(self.usage_chunk(vec![u]).await?.accepted)),
        };
        Ok(u64::from(ack.events_appended))
    }
}

/// An idempotency key with the digest of its request.
type Key = (String, [u8; 32]);

/// How the stream's records are run: appended, or decided on a copy.
enum Mode {
    Apply,
    Validate(Box<DryRun>),
}

/// Waits for the oldest usage batch in flight and counts its results.
async fn settle_one(in_flight: &mut InFlight<'_>, tally: &mut Tally) {
    let Some((lines, result)) = in_flight.next().await else { return };
    match result {
        Ok(result) => {
            for (line, r) in lines.iter().zip(&result.results) {
                match r.status.as_str() {
                    "accepted" => tally.events_appended += 1,
                    "duplicate" => tally.records_unchanged += 1,
                    _ => tally.errors.push(pb::ImportLineError {
                        line: *line,
                        code: format!("{:?}", tonic::Code::from(r.code)),
                        message: r.message.clone(),
                    }),
                }
            }
        }
        Err(status) => lines.iter().for_each(|l| tally.fail(*l, &status)),
    }
}

/// Waits for every usage batch in flight (before a record that must follow them).
async fn settle_all(in_flight: &mut InFlight<'_>, tally: &mut Tally) {
    while !in_flight.is_empty() {
        settle_one(in_flight, tally).await;
    }
}

fn count(tally: &mut Tally, line: u64, outcome: Result<DryOutcome, Status>) {
    match outcome {
        Ok(DryOutcome::Appends(n)) => tally.events_appended += n,
        Ok(DryOutcome::Unchanged) => tally.records_unchanged += 1,
        Err(status) => tally.fail(line, &status),
    }
}

/// A plan change, cancellation or billing run without an idempotency key gets
/// `import:<sha-256 of the record>`: its re-run is a keyed replay.
fn with_derived_key(record: Record) -> Result<Record, Status> {
    fn derive(kind: &str, bytes: Vec<u8>) -> String {
        let mut h = Sha256::new();
        h.update(kind.as_bytes());
        h.update(bytes);
        let digest: [u8; 32] = h.finalize().into();
        format!("import:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }
    use prost::Message;
    Ok(match record {
        Record::PlanChange(mut r) if r.idempotency_key.is_empty() => {
            r.idempotency_key = derive("plan_change", r.encode_to_vec());
            Record::PlanChange(r)
        }
        Record::Cancellation(mut r) if r.idempotency_key.is_empty() => {
            r.idempotency_key = derive("cancellation", r.encode_to_vec());
            Record::Cancellation(r)
        }
        Record::BillingRun(mut r) if r.idempotency_key.is_empty() => {
            r.idempotency_key = derive("billing_run", r.encode_to_vec());
            Record::BillingRun(r)
        }
        Record::Invoice(mut r) if r.idempotency_key.is_empty() => {
            r.idempotency_key = derive("invoice", r.encode_to_vec());
            Record::Invoice(r)
        }
        Record::Payment(mut r) if r.idempotency_key.is_empty() => {
            r.idempotency_key = derive("payment", r.encode_to_vec());
            Record::Payment(r)
        }
        other => other,
    })
}

/// The command a record runs and its idempotency key with the request digest, as the
/// record's own handler computes them.
fn command_of(record: &Record, now: jiff::Timestamp) -> Result<(Command, Option<Key>), Status> {
    macro_rules! keyed {
        ($method:expr, $r:expr, $convert:expr) => {{
            let mut r = $r.clone();
            let key = std::mem::take(&mut r.idempotency_key);
            let cmd = $convert(&r).map_err(from_domain)?;
            (cmd, idempotency($method, &r, &key)?)
        }};
    }
    Ok(match record {
        Record::Customer(r) => keyed!("RegisterCustomer", r, convert::register_customer),
        Record::Metric(r) => keyed!("DefineMetric", r, convert::define_metric),
        Record::Plan(r) => keyed!("PublishPlan", r, convert::publish_plan),
        Record::Subscription(r) => keyed!("StartSubscription", r, convert::start_subscription),
        Record::PlanChange(r) => keyed!("ChangePlan", r, convert::change_plan),
        Record::Cancellation(r) => keyed!("CancelSubscription", r, convert::cancel_subscription),
        Record::BillingRun(r) => keyed!("RunBilling", r, |r: &pb::RunBillingRequest| {
            convert::timestamp("as_of", r.as_of.as_ref()).map(|as_of| Command::RunBilling { as_of })
        }),
        Record::Invoice(r) => keyed!("ImportInvoice", r, convert::import_invoice),
        Record::Payment(r) => keyed!("RecordPayment", r, |r: &pb::RecordPaymentRequest| {
            convert::record_payment(r, now)
        }),
        Record::Usage(u) => {
            (Command::RecordUsage(convert::usage(u.clone()).map_err(from_domain)?), None)
        }
    })
}

/// A failed record: its line, the status code's name and message (a FAILED_PRECONDITION's
/// type in brackets first).
fn line_error(line: u64, status: &Status) -> pb::ImportLineError {
    use tonic_types::StatusExt;
    let kind = status
        .get_details_precondition_failure()
        .and_then(|f| f.violations.first().map(|v| format!("[{}] ", v.r#type)))
        .unwrap_or_default();
    pb::ImportLineError {
        line,
        code: format!("{:?}", status.code()),
        message: format!("{kind}{}", status.message()),
    }
}
