//! The import file formats (docs/import.md): JSON Lines, one record per line with a `type`
//! (customer, metric, plan, subscription, plan_change, cancellation, usage, billing_run,
//! invoice, payment), and
//! CSV of usage (`subscription_id,transaction_id,metric_code,occurred_at`, then one column
//! per property). Each line becomes the `Import` record its own gRPC call would take; money
//! and dates stay strings for the server to check, as on every call.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::Context as _;
use proto::v1 as pb;
use proto::v1::import_record::Record;
use serde::Deserialize;

use super::Format;

/// Longest line read (a plan with many tiers fits; a longer line is a bad record).
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// (line number from 1, the record or why the line is not one); an I/O error ends the file.
pub type Item = anyhow::Result<(u64, Result<Record, String>)>;

pub fn read(path: &Path, format: Format) -> anyhow::Result<Box<dyn Iterator<Item = Item>>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    Ok(match format {
        Format::Jsonl => Box::new(reader.lines().enumerate().filter_map(|(i, line)| {
            let line = match line {
                Ok(l) => l,
                Err(e) => return Some(Err(e.into())),
            };
            if line.trim().is_empty() || line.starts_with('#') {
                return None;
            }
            Some(Ok((i as u64 + 1, json_record(&line))))
        })),
        Format::Csv => Box::new(csv_records(reader)?),
    })
}

fn json_record(line: &str) -> Result<Record, String> {
    if line.len() > LINE_BYTES_MAX {
        return Err(format!("a line holds at most {LINE_BYTES_MAX} bytes"));
    }
    let parsed: Line = serde_json::from_str(line).map_err(|e| format!("not a record: {e}"))?;
    parsed.into_record()
}

fn csv_records(reader: impl std::io::Read + 'static) -> anyhow::Result<impl Iterator<Item = Item>> {
    let mut csv = csv::ReaderBuilder::new().has_headers(true).from_reader(reader);
    let headers = csv.headers().context("reading the CSV header")?.clone();
    let fixed = ["subscription_id", "transaction_id", "metric_code", "occurred_at"];
    anyhow::ensure!(
        headers.iter().take(4).eq(fixed),
        "a usage CSV starts with the columns {}; this one has {:?}",
        fixed.join(","),
        headers.iter().take(4).collect::<Vec<_>>()
    );
    let properties: Vec<String> = headers.iter().skip(4).map(str::to_string).collect();
    Ok(csv.into_records().enumerate().map(move |(i, row)| {
        // Line 1 is the header.
        let line = i as u64 + 2;
        let row = match row {
            Ok(r) => r,
            Err(e) if e.is_io_error() => return Err(e.into()),
            Err(e) => return Ok((line, Err(format!("not a CSV row: {e}")))),
        };
        let usage = Usage {
            subscription_id: row[0].to_string(),
            transaction_id: row[1].to_string(),
            metric_code: row[2].to_string(),
            occurred_at: row[3].to_string(),
            properties: properties
                .iter()
                .zip(row.iter().skip(4))
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string())))
                .collect(),
        };
        Ok((line, usage.into_record()))
    }))
}

/// One JSON Lines record.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Customer {
        customer_id: String,
        name: String,
        currency: String,
        time_zone: String,
        #[serde(default)]
        tax_rate: String,
    },
    Metric {
        code: String,
        name: String,
        aggregation: String,
        #[serde(default)]
        property: String,
        #[serde(default)]
        allow_negative: bool,
    },
    Plan(Box<Plan>),
    Subscription {
        subscription_id: String,
        customer_id: String,
        plan_code: String,
        #[serde(default)]
        plan_version: u32,
        #[serde(default)]
        billing_anchor: String,
        #[serde(default)]
        start_date: String,
        /// An imported subscription's cutover (docs/import.md).
        #[serde(default)]
        billed_until: String,
    },
    PlanChange {
        subscription_id: String,
        plan_code: String,
        #[serde(default)]
        plan_version: u32,
        #[serde(default)]
        effective_date: String,
        #[serde(default)]
        idempotency_key: String,
    },
    Cancellation {
        subscription_id: String,
        #[serde(default)]
        immediately: bool,
        #[serde(default)]
        effective_date: String,
        #[serde(default)]
        idempotency_key: String,
    },
    Usage(Usage),
    BillingRun {
        as_of: String,
        #[serde(default)]
        idempotency_key: String,
    },
    Invoice(Box<Invoice>),
    Payment {
        invoice_id: String,
        amount: String,
        /// RFC 3339, when the previous biller recorded it; absent: when imported.
        #[serde(default)]
        occurred_at: String,
        #[serde(default)]
        idempotency_key: String,
    },
}

/// Another biller's invoice, imported as a fact (`ImportInvoiceRequest`).
#[derive(Deserialize)]
struct Invoice {
    invoice_id: String,
    customer_id: String,
    #[serde(default)]
    subscription_id: String,
    currency: String,
    period_start: String,
    period_end: String,
    /// RFC 3339.
    issued_at: String,
    lines: Vec<InvoiceLine>,
    #[serde(default)]
    tax_rate: String,
    #[serde(default)]
    tax: String,
    total: String,
    #[serde(default)]
    idempotency_key: String,
}

#[derive(Deserialize)]
struct InvoiceLine {
    kind: String,
    description: String,
    #[serde(default)]
    metric_code: String,
    #[serde(default)]
    charge_model: String,
    #[serde(default)]
    units: String,
    service_start: String,
    service_end: String,
    amount: String,
}

#[derive(Deserialize)]
struct Plan {
    code: String,
    name: String,
    currency: String,
    interval: String,
    base_fee: String,
    /// advance | arrears (default)
    #[serde(default)]
    fee_timing: String,
    #[serde(default)]
    trial_days: u32,
    #[serde(default)]
    minimum_commitment: String,
    #[serde(default)]
    charges: Vec<Charge>,
}

#[derive(Deserialize)]
struct Charge {
    metric_code: String,
    /// standard | graduated | volume | package | percentage | graduated_percentage
    model: String,
    #[serde(default)]
    pay_in_advance: bool,
    #[serde(default)]
    unit_price: String,
    #[serde(default)]
    tiers: Vec<Tier>,
    #[serde(default)]
    package_size: String,
    #[serde(default)]
    package_price: String,
    #[serde(default)]
    free_units: String,
    #[serde(default)]
    rate: String,
    #[serde(default)]
    fixed_amount: String,
    free_events: Option<u64>,
    free_amount: Option<String>,
    min_per_event: Option<String>,
    max_per_event: Option<String>,
}

#[derive(Deserialize)]
struct Tier {
    /// Absent or empty for the last, unbounded tier.
    #[serde(default)]
    up_to: String,
    unit_price: String,
    #[serde(default)]
    flat_fee: String,
}

#[derive(Deserialize)]
struct Usage {
    subscription_id: String,
    transaction_id: String,
    metric_code: String,
    /// RFC 3339.
    occurred_at: String,
    /// Values as strings or numbers.
    #[serde(default)]
    properties: BTreeMap<String, serde_json::Value>,
}

impl Line {
    fn into_record(self) -> Result<Record, String> {
        Ok(match self {
            Line::Customer { customer_id, name, currency, time_zone, tax_rate } => {
                Record::Customer(pb::RegisterCustomerRequest {
                    idempotency_key: String::new(),
                    customer_id,
                    name,
                    currency,
                    time_zone,
                    tax_rate: if tax_rate.is_empty() { "0".into() } else { tax_rate },
                })
            }
            Line::Metric { code, name, aggregation, property, allow_negative } => {
                Record::Metric(pb::DefineMetricRequest {
                    idempotency_key: String::new(),
                    code,
                    name,
                    aggregation,
                    property,
                    allow_negative,
                })
            }
            Line::Plan(p) => Record::Plan(p.into_request()?),
            Line::Subscription {
                subscription_id,
                customer_id,
                plan_code,
                plan_version,
                billing_anchor,
                start_date,
                billed_until,
            } => Record::Subscription(pb::StartSubscriptionRequest {
                idempotency_key: String::new(),
                subscription_id,
                customer_id,
                plan_code,
                plan_version,
                billing_anchor,
                start_date,
                billed_until,
            }),
            Line::PlanChange {
                subscription_id,
                plan_code,
                plan_version,
                effective_date,
                idempotency_key,
            } => Record::PlanChange(pb::ChangePlanRequest {
                idempotency_key,
                subscription_id,
                plan_code,
                plan_version,
                expected_version: None,
                effective_date,
            }),
            Line::Cancellation {
                subscription_id,
                immediately,
                effective_date,
                idempotency_key,
            } => Record::Cancellation(pb::CancelSubscriptionRequest {
                idempotency_key,
                subscription_id,
                immediately,
                expected_version: None,
                effective_date,
            }),
            Line::Usage(u) => u.into_record()?,
            Line::BillingRun { as_of, idempotency_key } => {
                Record::BillingRun(pb::RunBillingRequest {
                    idempotency_key,
                    as_of: Some(instant(&as_of)?),
                })
            }
            Line::Invoice(i) => Record::Invoice(i.into_request()?),
            Line::Payment { invoice_id, amount, occurred_at, idempotency_key } => {
                Record::Payment(pb::RecordPaymentRequest {
                    idempotency_key,
                    invoice_id,
                    succeeded: true,
                    amount,
                    reason: String::new(),
                    occurred_at: if occurred_at.is_empty() {
                        None
                    } else {
                        Some(instant(&occurred_at)?)
                    },
                })
            }
        })
    }
}

impl Invoice {
    fn into_request(self) -> Result<pb::ImportInvoiceRequest, String> {
        Ok(pb::ImportInvoiceRequest {
            idempotency_key: self.idempotency_key,
            invoice_id: self.invoice_id,
            customer_id: self.customer_id,
            subscription_id: self.subscription_id,
            currency: self.currency,
            period_start: self.period_start,
            period_end: self.period_end,
            issued_at: Some(instant(&self.issued_at)?),
            lines: self
                .lines
                .into_iter()
                .map(|l| pb::ImportedInvoiceLine {
                    kind: l.kind,
                    description: l.description,
                    metric_code: l.metric_code,
                    charge_model: l.charge_model,
                    units: l.units,
                    service_start: l.service_start,
                    service_end: l.service_end,
                    amount: l.amount,
                })
                .collect(),
            tax_rate: self.tax_rate,
            tax: self.tax,
            total: self.total,
        })
    }
}

impl Usage {
    fn into_record(self) -> Result<Record, String> {
        let mut properties = BTreeMap::new();
        for (k, v) in self.properties {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                other => return Err(format!("property {k:?}: a string or a number, not {other}")),
            };
            properties.insert(k, v);
        }
        Ok(Record::Usage(pb::UsageEvent {
            subscription_id: self.subscription_id,
            transaction_id: self.transaction_id,
            metric_code: self.metric_code,
            occurred_at: Some(instant(&self.occurred_at)?),
            properties,
        }))
    }
}

impl Plan {
    fn into_request(self) -> Result<pb::PublishPlanRequest, String> {
        let base_fee_in_advance = match self.fee_timing.as_str() {
            "advance" => true,
            "" | "arrears" => false,
            other => return Err(format!("fee_timing: advance or arrears, not {other:?}")),
        };
        let charges =
            self.charges.into_iter().map(Charge::into_charge).collect::<Result<_, _>>()?;
        Ok(pb::PublishPlanRequest {
            code: self.code,
            name: self.name,
            currency: self.currency,
            interval: self.interval,
            base_fee: self.base_fee,
            base_fee_in_advance,
            trial_days: self.trial_days,
            minimum_commitment: self.minimum_commitment,
            charges,
            ..Default::default()
        })
    }
}

impl Charge {
    fn into_charge(self) -> Result<pb::Charge, String> {
        use pb::charge::Model;
        let tiers = || pb::TieredModel {
            tiers: self
                .tiers
                .iter()
                .map(|t| pb::Tier {
                    up_to: t.up_to.clone(),
                    unit_price: t.unit_price.clone(),
                    flat_fee: t.flat_fee.clone(),
                })
                .collect(),
        };
        let model = match self.model.as_str() {
            "standard" => Model::Standard(pb::StandardModel { unit_price: self.unit_price.clone() }),
            "graduated" => Model::Graduated(tiers()),
            "volume" => Model::Volume(tiers()),
            "graduated_percentage" => Model::GraduatedPercentage(tiers()),
            "package" => Model::Package(pb::PackageModel {
                package_size: self.package_size.clone(),
                package_price: self.package_price.clone(),
                free_units: self.free_units.clone(),
            }),
            "percentage" => Model::Percentage(pb::PercentageModel {
                rate: self.rate.clone(),
                fixed_amount: self.fixed_amount.clone(),
                free_events: self.free_events,
                free_amount: self.free_amount.clone(),
                min_per_event: self.min_per_event.clone(),
                max_per_event: self.max_per_event.clone(),
            }),
            other => return Err(format!("charge model {other:?} is not one of standard, graduated, volume, package, percentage, graduated_percentage")),
        };
        Ok(pb::Charge {
            metric_code: self.metric_code,
            pay_in_advance: self.pay_in_advance,
            model: Some(model),
        })
    }
}

/// An RFC 3339 instant as a protobuf Timestamp.
fn instant(s: &str) -> Result<prost_types::Timestamp, String> {
    let t: jiff::Timestamp =
        s.parse().map_err(|e| format!("{s:?} is not an RFC 3339 instant: {e}"))?;
    Ok(prost_types::Timestamp { seconds: t.as_second(), nanos: t.subsec_nanosecond() })
}
