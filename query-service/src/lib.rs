//! `accrual.v1.QueryService`: the read API over the projections' read models. Every reply
//! states the log position it reflects; a request's `min_position` waits (bounded) until the
//! read models include that event, so a caller reads its own writes.
//!
//! Architecture invariant: reads only. It never appends and never writes a read model.
//! Each call waits on the progress of the read model it reads (invoices, mrr or journal).

// tonic::Status is this crate's error type; boxing it everywhere would only add noise.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use std::str::FromStr;

use domain::invoice::{InvoiceAccount, InvoiceStatus};
use domain::money::Currency;
use jiff::civil::Date;
use projections::invoices::{InvoiceFilter, InvoiceReader, InvoiceRecord};
use projections::journal::JournalReader;
use projections::mrr::{Granularity, MrrReader};
use projections::{Progress, ProjectionError, WaitError};
use proto::v1 as pb;
use proto::v1::query_service_server::QueryService;
use tonic::{Request, Response, Status};

/// Longest a request waits for `min_position`, whatever its deadline.
pub const WAIT_MS_MAX: u64 = 10_000;

/// A read model's reader with its runner's progress (for `min_position` waits).
#[derive(Clone)]
pub struct View<R> {
    pub reader: R,
    pub progress: Progress,
}

/// The read models this query service serves.
#[derive(Clone)]
pub struct ReadModels {
    pub invoices: View<InvoiceReader>,
    pub mrr: View<MrrReader>,
    pub journal: View<JournalReader>,
}

pub struct QueryApi {
    models: ReadModels,
}

impl QueryApi {
    pub fn new(models: ReadModels) -> Self {
        QueryApi { models }
    }
}

/// Waits until the event at `min_position` is in the read model behind `progress` (bounded by
/// the call's deadline and [`WAIT_MS_MAX`]).
async fn catch_up<T>(
    progress: &Progress,
    request: &Request<T>,
    min_position: Option<u64>,
) -> Result<(), Status> {
    let Some(position) = min_position else { return Ok(()) };
    // Answer a little before the caller's deadline, so it gets our reason, not its timeout.
    let budget = deadline(request).map_or(Duration::from_millis(WAIT_MS_MAX), |d| d * 9 / 10);
    let until = tokio::time::Instant::now() + budget.min(Duration::from_millis(WAIT_MS_MAX));
    match progress.wait_for(position, until).await {
        Ok(_) => Ok(()),
        Err(WaitError::Timeout { position, checkpoint }) => Err(Status::deadline_exceeded(
            format!("the read models reached position {checkpoint}, not yet {position}"),
        )),
        Err(e @ WaitError::Stopped { .. }) => Err(Status::unavailable(e.to_string())),
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

fn date(field: &str, s: &str) -> Result<Date, Status> {
    Date::from_str(s)
        .map_err(|_| Status::invalid_argument(format!("{field}: {s:?} is not a date YYYY-MM-DD")))
}

fn currency(s: &str) -> Result<Currency, Status> {
    Currency::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn position(model: &projections::ReadModel) -> Result<u64, Status> {
    model.checkpoint().map_err(to_status)
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
        let view = &self.models.invoices;
        catch_up(&view.progress, &request, request.get_ref().min_position).await?;
        let id = &request.get_ref().invoice_id;
        let position = view.reader.model().checkpoint().map_err(to_status)?;
        let record = view.reader.get(id).map_err(to_status)?;
        let record = record.ok_or_else(|| Status::not_found(format!("invoice {id} not found")))?;
        Ok(Response::new(pb::InvoiceView { invoice: Some(invoice(record)), position }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_mrr(
        &self,
        request: Request<pb::MrrRequest>,
    ) -> Result<Response<pb::MrrResponse>, Status> {
        let view = &self.models.mrr;
        catch_up(&view.progress, &request, request.get_ref().min_position).await?;
        let r = request.get_ref();
        let (cur, at) = (currency(&r.currency)?, date("date", &r.date)?);
        let mrr = match r.customer_id.as_str() {
            "" => view.reader.mrr_at(at, cur),
            customer => view.reader.customer_mrr_at(customer, at, cur),
        };
        let mrr = mrr.map_err(to_status)?.to_string();
        Ok(Response::new(pb::MrrResponse { mrr, position: position(view.reader.model())? }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_mrr_movements(
        &self,
        request: Request<pb::MrrMovementsRequest>,
    ) -> Result<Response<pb::MrrMovementsResponse>, Status> {
        self.mrr_movements(request).await.map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn get_retention(
        &self,
        request: Request<pb::RetentionRequest>,
    ) -> Result<Response<pb::RetentionResponse>, Status> {
        let view = &self.models.mrr;
        catch_up(&view.progress, &request, request.get_ref().min_position).await?;
        let r = request.get_ref();
        let (cur, start) = (currency(&r.currency)?, date("start", &r.start)?);
        let end = match r.end.as_str() {
            "" => start
                .checked_add(jiff::Span::new().years(1))
                .map_err(|_| Status::invalid_argument("start: out of range"))?,
            end => date("end", end)?,
        };
        let ret = view.reader.retention(start, end, cur).map_err(to_status)?;
        Ok(Response::new(pb::RetentionResponse {
            nrr: ret.nrr.map(|d| d.to_string()).unwrap_or_default(),
            grr: ret.grr.map(|d| d.to_string()).unwrap_or_default(),
            cohort_size: ret.cohort_size as u32,
            mrr_start: ret.mrr_start.to_string(),
            mrr_end: ret.mrr_end.to_string(),
            position: position(view.reader.model())?,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_balances(
        &self,
        request: Request<pb::AsOfRequest>,
    ) -> Result<Response<pb::BalancesResponse>, Status> {
        self.balances(request).await.map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn get_trial_balance(
        &self,
        request: Request<pb::AsOfRequest>,
    ) -> Result<Response<pb::TrialBalanceResponse>, Status> {
        let view = &self.models.journal;
        catch_up(&view.progress, &request, request.get_ref().min_position).await?;
        let as_of = date("as_of", &request.get_ref().as_of)?;
        let rows = view.reader.trial_balance(as_of).map_err(to_status)?;
        let rows = rows
            .into_iter()
            .map(|r| pb::TrialBalanceRow {
                currency: r.currency.code().into(),
                account: r.account.as_str().into(),
                debit: r.debit.to_string(),
                credit: r.credit.to_string(),
            })
            .collect();
        Ok(Response::new(pb::TrialBalanceResponse {
            rows,
            position: position(view.reader.model())?,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_invoices(
        &self,
        request: Request<pb::ListInvoicesRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        let view = &self.models.invoices;
        catch_up(&view.progress, &request, request.get_ref().min_position).await?;
        let r = request.get_ref();
        let filter = InvoiceFilter {
            customer_id: (!r.customer_id.is_empty()).then(|| r.customer_id.clone()),
            status: parse_status(&r.status)?,
            ..Default::default()
        };
        let token = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let page = view.reader.list(&filter, token, r.page_size as usize).map_err(to_status)?;
        Ok(Response::new(pb::ListInvoicesResponse {
            invoices: page.invoices.into_iter().map(invoice).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            position: page.position,
        }))
    }
}

impl QueryApi {
    async fn mrr_movements(
        &self,
        request: Request<pb::MrrMovementsRequest>,
    ) -> Result<pb::MrrMovementsResponse, Status> {
        let view = &self.models.mrr;
        catch_up(&view.progress, &request, request.get_ref().min_position).await?;
        let r = request.get_ref();
        let (cur, from, to) = (currency(&r.currency)?, date("from", &r.from)?, date("to", &r.to)?);
        let granularity = match r.granularity.as_str() {
            "" | "month" => Granularity::Month,
            "day" => Granularity::Day,
            other => {
                return Err(Status::invalid_argument(format!(
                    "granularity {other:?} is not day or month"
                )))
            }
        };
        let buckets = view.reader.movements(from, to, granularity, cur).map_err(to_status)?;
        let before =
            from.yesterday().map_err(|_| Status::invalid_argument("from: out of range"))?;
        let buckets = buckets
            .into_iter()
            .map(|b| pb::MrrMovementBucket {
                start: b.start.to_string(),
                totals: b
                    .totals
                    .iter()
                    .map(|(kind, t)| pb::MovementTotal {
                        kind: kind.as_str().into(),
                        count: t.count,
                        amount: t.amount.to_string(),
                    })
                    .collect(),
                net: b.net.to_string(),
            })
            .collect();
        Ok(pb::MrrMovementsResponse {
            mrr_before: view.reader.mrr_at(before, cur).map_err(to_status)?.to_string(),
            buckets,
            mrr_at_to: view.reader.mrr_at(to, cur).map_err(to_status)?.to_string(),
            position: position(view.reader.model())?,
        })
    }

    async fn balances(
        &self,
        request: Request<pb::AsOfRequest>,
    ) -> Result<pb::BalancesResponse, Status> {
        let view = &self.models.journal;
        catch_up(&view.progress, &request, request.get_ref().min_position).await?;
        let as_of = date("as_of", &request.get_ref().as_of)?;
        let balances = view.reader.balances(as_of).map_err(to_status)?;
        let balances = balances
            .into_iter()
            .map(|(cur, b)| pb::CurrencyBalances {
                currency: cur.code().into(),
                accounts_receivable: b.accounts_receivable.to_string(),
                unbilled_receivable: b.unbilled_receivable.to_string(),
                cash: b.cash.to_string(),
                bad_debt: b.bad_debt.to_string(),
                deferred_revenue: b.deferred_revenue.to_string(),
                tax_payable: b.tax_payable.to_string(),
                total_recognized_revenue: b.total_revenue().to_string(),
                recognized_revenue: b
                    .recognized_revenue
                    .iter()
                    .map(|(t, a)| (t.as_str().to_string(), a.to_string()))
                    .collect(),
            })
            .collect();
        Ok(pb::BalancesResponse { balances, position: position(view.reader.model())? })
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
