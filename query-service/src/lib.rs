//! `accrual.v1.QueryService`: the read API over the projections' read models. Every reply
//! states the log position it reflects; a request's `min_position` waits (bounded) until the
//! read models include that event, so a caller reads its own writes.
//!
//! Architecture invariant: reads only. It never appends and never writes a read model.

// tonic::Status is this crate's error type; boxing it everywhere would only add noise.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use domain::invoice::{InvoiceAccount, InvoiceStatus};
use projections::invoices::{InvoiceFilter, InvoiceReader, InvoiceRecord};
use projections::{Progress, ProjectionError, WaitError};
use proto::v1 as pb;
use proto::v1::query_service_server::QueryService;
use tonic::{Request, Response, Status};

/// Longest a request waits for `min_position`, whatever its deadline.
pub const WAIT_MS_MAX: u64 = 10_000;

/// The invoices read model with its runner's progress.
#[derive(Clone)]
pub struct InvoicesView {
    pub reader: InvoiceReader,
    pub progress: Progress,
}

pub struct QueryApi {
    invoices: InvoicesView,
}

impl QueryApi {
    pub fn new(invoices: InvoicesView) -> Self {
        QueryApi { invoices }
    }

    /// Waits until the event at `min_position` is in the read model (bounded by the call's
    /// deadline and [`WAIT_MS_MAX`]).
    async fn catch_up<T>(
        &self,
        request: &Request<T>,
        min_position: Option<u64>,
    ) -> Result<(), Status> {
        let Some(position) = min_position else { return Ok(()) };
        // Answer a little before the caller's deadline, so it gets our reason, not its timeout.
        let budget = deadline(request).map_or(Duration::from_millis(WAIT_MS_MAX), |d| d * 9 / 10);
        let until = tokio::time::Instant::now() + budget.min(Duration::from_millis(WAIT_MS_MAX));
        match self.invoices.progress.wait_for(position, until).await {
            Ok(_) => Ok(()),
            Err(WaitError::Timeout { position, checkpoint }) => Err(Status::deadline_exceeded(
                format!("the read models reached position {checkpoint}, not yet {position}"),
            )),
            Err(e @ WaitError::Stopped { .. }) => Err(Status::unavailable(e.to_string())),
        }
    }
}

/// The `grpc-timeout` a caller set, if any.
fn deadline<T>(request: &Request<T>) -> Option<Duration> {
    let raw = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (value, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let value: u64 = value.parse().ok()?;
    let nanos = match unit {
        "H" => value.checked_mul(3_600_000_000_000)?,
        "M" => value.checked_mul(60_000_000_000)?,
        "S" => value.checked_mul(1_000_000_000)?,
        "m" => value.checked_mul(1_000_000)?,
        "u" => value.checked_mul(1_000)?,
        "n" => value,
        _ => return None,
    };
    Some(Duration::from_nanos(nanos))
}

fn to_status(e: ProjectionError) -> Status {
    match e {
        ProjectionError::InvalidArgument(m) => Status::invalid_argument(m),
        other => Status::internal(other.to_string()),
    }
}

fn invoice(record: InvoiceRecord) -> pb::Invoice {
    let account = InvoiceAccount {
        invoice: record.invoice,
        amount_paid: record.amount_paid,
        failed_attempts: record.failed_attempts,
        status: record.status,
    };
    command_service::convert::invoice(&account)
}

fn parse_status(s: &str) -> Result<Option<InvoiceStatus>, Status> {
    Ok(Some(match s {
        "" => return Ok(None),
        "open" => InvoiceStatus::Open,
        "paid" => InvoiceStatus::Paid,
        "void" => InvoiceStatus::Void,
        "uncollectible" => InvoiceStatus::Uncollectible,
        other => {
            return Err(Status::invalid_argument(format!(
                "status {other:?} is not one of open, paid, void, uncollectible"
            )))
        }
    }))
}

#[tonic::async_trait]
impl QueryService for QueryApi {
    #[tracing::instrument(skip_all, fields(invoice_id = %request.get_ref().invoice_id))]
    async fn get_invoice(
        &self,
        request: Request<pb::InvoiceQuery>,
    ) -> Result<Response<pb::InvoiceView>, Status> {
        self.catch_up(&request, request.get_ref().min_position).await?;
        let id = &request.get_ref().invoice_id;
        let position = self.invoices.reader.model().checkpoint().map_err(to_status)?;
        let record = self.invoices.reader.get(id).map_err(to_status)?;
        let record = record.ok_or_else(|| Status::not_found(format!("invoice {id} not found")))?;
        Ok(Response::new(pb::InvoiceView { invoice: Some(invoice(record)), position }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_invoices(
        &self,
        request: Request<pb::ListInvoicesRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        self.catch_up(&request, request.get_ref().min_position).await?;
        let r = request.get_ref();
        let filter = InvoiceFilter {
            customer_id: (!r.customer_id.is_empty()).then(|| r.customer_id.clone()),
            status: parse_status(&r.status)?,
        };
        let token = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let page =
            self.invoices.reader.list(&filter, token, r.page_size as usize).map_err(to_status)?;
        Ok(Response::new(pb::ListInvoicesResponse {
            invoices: page.invoices.into_iter().map(invoice).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            position: page.position,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let cases = [
            ("5S", Some(5_000)),
            ("250m", Some(250)),
            ("1M", Some(60_000)),
            ("x", None),
            ("", None),
            ("9Q", None),
        ];
        for (raw, want) in cases {
            let mut r = Request::new(());
            if !raw.is_empty() {
                r.metadata_mut().insert("grpc-timeout", raw.parse().unwrap());
            }
            assert_eq!(deadline(&r).map(|d| d.as_millis() as u64), want, "{raw}");
        }
    }

    #[test]
    fn statuses_parse() {
        assert_eq!(parse_status("").unwrap(), None);
        assert_eq!(parse_status("uncollectible").unwrap(), Some(InvoiceStatus::Uncollectible));
        assert_eq!(parse_status("late").unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
