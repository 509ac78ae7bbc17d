//! `accrual.v1.QueryService`: the read API over the projections' read models. Every reply
//! states the log position it reflects; a request's `min_position` waits (bounded) until the
//! read models include that event, so a caller reads its own writes.
//!
//! Architecture invariant: reads only. It never appends and never writes a read model.
//! Each call waits on the progress of the read models it reads (invoices, mrr, journal), and
//! reads its reply's position before its data, so the data includes at least that prefix.
//! Bad input is INVALID_ARGUMENT with a BadRequest naming every bad field ([`check`]).

// tonic::Status is this crate's error type; boxing it everywhere would only add noise.
#![allow(clippy::result_large_err)]

mod aging;
mod check;
mod ledger;
mod schedule;
mod wallets;

use std::sync::Arc;
use std::time::Duration;

use check::{checked, not_found, read_error, Check};
use command_service::convert::money;
use command_service::status::{bad_field, beyond_head, echo};
use domain::invoice::{InvoiceAccount, InvoiceStatus};
use domain::money::Currency;
use jiff::civil::Date;
use projections::invoices::{CreditNotesOf, InvoiceFilter, InvoiceReader, InvoiceRecord};
use projections::journal::JournalReader;
use projections::mrr::{Granularity, MovementBucket, MrrReader};
use projections::{Progress, WaitError};
use proto::v1 as pb;
use proto::v1::query_service_server::QueryService;
use rust_decimal::Decimal;
use schedule::Scope;
use tonic::{Request, Response, Status};

/// Longest a request waits for `min_position`, whatever its deadline.
pub const WAIT_MS_MAX: u64 = 10_000;

/// Longest a request waits for the log's head to reach its `min_position` before it is
/// OUT_OF_RANGE: a process that follows a log written elsewhere learns of appends a little
/// after they are acknowledged; a writer's own process knows its head at once.
pub const HEAD_WAIT_MS_MAX: u64 = 1_000;

pub use aging::{AGE_BUCKETS, DUNNING_STATES};

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

/// The read models as the books stood at a recorded time: what a query with `as_recorded_at`
/// reads (bitemporal queries). Implemented by the shell that has the log open.
#[async_trait::async_trait]
pub trait PastBooks: Send + Sync {
    /// The read models of every event recorded at or before `at` (not in the future).
    async fn at(&self, at: jiff::Timestamp) -> Result<ReadModels, Status>;
}

pub struct QueryApi {
    models: ReadModels,
    past: Option<Arc<dyn PastBooks>>,
}

/// The read models one query reads: live, or past books (fixed: nothing to wait for).
struct Books {
    models: ReadModels,
    past: bool,
}

impl Books {
    /// The `min_position` to wait for: none on past books, which never move.
    fn min_position(&self, given: Option<u64>) -> Option<u64> {
        if self.past {
            None
        } else {
            given
        }
    }
}

impl QueryApi {
    pub fn new(models: ReadModels) -> Self {
        QueryApi { models, past: None }
    }

    /// Answers `as_recorded_at` from `past` (without it such a query is FAILED_PRECONDITION).
    pub fn with_past_books(mut self, past: Arc<dyn PastBooks>) -> Self {
        self.past = Some(past);
        self
    }

    /// The books a query with `as_recorded_at` reads.
    async fn books(
        &self,
        as_recorded_at: Option<&prost_types::Timestamp>,
    ) -> Result<Books, Status> {
        let Some(t) = as_recorded_at else {
            return Ok(Books { models: self.models.clone(), past: false });
        };
        let at = u32::try_from(t.nanos)
            .ok()
            .and_then(|n| jiff::Timestamp::new(t.seconds, n as i32).ok())
            .ok_or_else(|| bad_field("as_recorded_at", "not a valid timestamp"))?;
        if at > jiff::Timestamp::now() {
            return Err(bad_field(
                "as_recorded_at",
                format!("{at} is in the future: the books as known now are the live ones"),
            ));
        }
        let past = self.past.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this node has no log to rebuild past books from (a --read-only node): ask a \
                 node that runs the query role with the log open",
            )
        })?;
        Ok(Books { models: past.at(at).await?, past: true })
    }
}

/// Waits until every read model behind `progress` includes the log prefix `[0, min_position)`
/// (bounded, all together, by the call's deadline and [`WAIT_MS_MAX`]). A position is a log
/// length, the same on every API: a command's `CommandAck.position` (or `UsageResult.position`)
/// is the prefix that ends with its last event, a reply's `position` the prefix it reflects;
/// either passed as `min_position` is answered as soon as the read models include it. A
/// position beyond the log's head cannot be reached: OUT_OF_RANGE (after at most
/// [`HEAD_WAIT_MS_MAX`] for a head learned from elsewhere), never a wait for the deadline.
async fn catch_up<T>(
    progress: &[&Progress],
    request: &Request<T>,
    min_position: Option<u64>,
) -> Result<(), Status> {
    let Some(position) = min_position else { return Ok(()) };
    // Answer a little before the caller's deadline, so it gets our reason, not its timeout.
    let budget = deadline(request).map_or(Duration::from_millis(WAIT_MS_MAX), |d| d * 9 / 10);
    let start = tokio::time::Instant::now();
    let until = start + budget.min(Duration::from_millis(WAIT_MS_MAX));
    let head_until = until.min(start + Duration::from_millis(HEAD_WAIT_MS_MAX));
    for p in progress {
        if p.head() < position {
            let head = p.wait_for_head(position, head_until).await;
            if head < position {
                return Err(beyond_head("min_position", position, head));
            }
        }
        match p.wait_for(position, until).await {
            Ok(_) => {}
            Err(WaitError::Timeout { position, checkpoint }) => {
                return Err(Status::deadline_exceeded(format!(
                    "the read models include the log up to position {checkpoint}, not yet up \
                     to {position}"
                )))
            }
            Err(e @ WaitError::Stopped { .. }) => return Err(Status::unavailable(e.to_string())),
        }
    }
    Ok(())
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

fn position(model: &projections::ReadModel) -> Result<u64, Status> {
    model.checkpoint().map_err(read_error("min_position"))
}

fn invoice(record: InvoiceRecord) -> pb::Invoice {
    let account = InvoiceAccount {
        invoice: record.invoice,
        amount_paid: record.amount_paid,
        failed_attempts: record.failed_attempts,
        status: record.status,
        credits: record.credits,
    };
    command_service::convert::invoice(&account)
}

fn held_coupon(h: &domain::coupon::HeldCoupon) -> pb::HeldCoupon {
    use domain::coupon::{CouponKind, Frequency};
    let (kind, amount, currency, percent) = match &h.coupon.kind {
        CouponKind::FixedAmount { amount, currency } => (
            "fixed_amount",
            command_service::convert::money(*currency, *amount),
            currency.code().to_string(),
            String::new(),
        ),
        CouponKind::Percentage { percent } => {
            ("percentage", String::new(), String::new(), percent.normalize().to_string())
        }
    };
    let amount_left = match &h.coupon.kind {
        CouponKind::FixedAmount { currency, .. } if h.coupon.frequency == Frequency::Once => {
            command_service::convert::money(*currency, h.amount_left)
        }
        _ => String::new(),
    };
    let frequency = match h.coupon.frequency {
        Frequency::Once => "once",
        Frequency::Recurring { .. } => "recurring",
        Frequency::Forever => "forever",
    };
    let periods_left = match h.coupon.frequency {
        Frequency::Recurring { .. } => h.periods_left,
        _ => 0,
    };
    pb::HeldCoupon {
        coupon_code: h.coupon.code.clone(),
        kind: kind.into(),
        amount,
        currency,
        percent,
        frequency: frequency.into(),
        amount_left,
        periods_left,
        used_up: h.is_used_up(),
    }
}

fn parse_status(c: &mut Check, s: &str) -> Option<Option<InvoiceStatus>> {
    Some(Some(match s {
        "" => return Some(None),
        "open" => InvoiceStatus::Open,
        "paid" => InvoiceStatus::Paid,
        "void" => InvoiceStatus::Void,
        "uncollectible" => InvoiceStatus::Uncollectible,
        "closed" => InvoiceStatus::Closed,
        other => {
            let all = "open, paid, void, uncollectible, closed";
            c.bad("status", format!("{other:?} is not one of {all}"));
            return None;
        }
    }))
}

/// A validated `ListInvoicesRequest`.
fn invoice_listing(r: &pb::ListInvoicesRequest) -> Result<(InvoiceFilter, usize), Status> {
    let mut c = Check::default();
    if !r.customer_id.is_empty() {
        c.id("customer_id", &r.customer_id);
    }
    let status = parse_status(&mut c, &r.status);
    let period_from = c.opt_date("period_from", &r.period_from);
    let period_to = c.opt_date("period_to", &r.period_to);
    c.order("period_to", period_from, period_to);
    let page_size = c.page_size("page_size", r.page_size);
    c.done()?;
    let filter = InvoiceFilter {
        customer_id: (!r.customer_id.is_empty()).then(|| r.customer_id.clone()),
        status: checked(status)?,
        period_from: checked(period_from)?,
        period_to: checked(period_to)?,
        flagged: r.flagged,
    };
    Ok((filter, page_size))
}

/// A validated currency, date range and granularity (movements, usage revenue).
fn series(
    currency: &str,
    from: &str,
    to: &str,
    granularity: &str,
) -> Result<(Currency, Date, Date, Granularity), Status> {
    let mut c = Check::default();
    let cur = c.currency("currency", currency);
    let (from, to) = (c.date("from", from), c.date("to", to));
    c.order("to", from.map(Some), to.map(Some));
    let granularity = c.granularity("granularity", granularity, Granularity::Month);
    c.done()?;
    Ok((checked(cur)?, checked(from)?, checked(to)?, checked(granularity)?))
}

/// A validated currency and date (and customer id, if one is given).
fn currency_date(
    currency: &str,
    field: &str,
    date: &str,
    customer_id: &str,
) -> Result<(Currency, Date), Status> {
    let mut c = Check::default();
    let (cur, date) = (c.currency("currency", currency), c.date(field, date));
    if !customer_id.is_empty() {
        c.id("customer_id", customer_id);
    }
    c.done()?;
    Ok((checked(cur)?, checked(date)?))
}

/// NOT_FOUND unless the journal (which applies every `CustomerRegistered`) knows the customer.
fn known_customer(journal: &View<JournalReader>, customer_id: &str) -> Result<(), Status> {
    let known = journal.reader.has_customer(customer_id).map_err(read_error("customer_id"))?;
    known.then_some(()).ok_or_else(|| not_found("customer", customer_id))
}

fn as_of(r: &pb::AsOfRequest) -> Result<Date, Status> {
    let mut c = Check::default();
    let as_of = c.date("as_of", &r.as_of);
    c.done()?;
    checked(as_of)
}

#[tonic::async_trait]
impl QueryService for QueryApi {
    #[tracing::instrument(skip_all, fields(invoice_id = %echo(&request.get_ref().invoice_id)))]
    async fn get_invoice(
        &self,
        request: Request<pb::InvoiceQuery>,
    ) -> Result<Response<pb::InvoiceView>, Status> {
        let id = &request.get_ref().invoice_id;
        let mut c = Check::default();
        c.invoice_id("invoice_id", id);
        c.done()?;
        let books = self.books(request.get_ref().as_recorded_at.as_ref()).await?;
        let view = &books.models.invoices;
        let min_position = books.min_position(request.get_ref().min_position);
        catch_up(&[&view.progress], &request, min_position).await?;
        let position = position(view.reader.model())?;
        let record = view.reader.get(id).map_err(read_error("invoice_id"))?;
        let record = record.ok_or_else(|| not_found("invoice", id))?;
        Ok(Response::new(pb::InvoiceView { invoice: Some(invoice(record)), position }))
    }

    #[tracing::instrument(skip_all, fields(credit_note_id = %echo(&request.get_ref().credit_note_id)))]
    async fn get_credit_note(
        &self,
        request: Request<pb::CreditNoteQuery>,
    ) -> Result<Response<pb::CreditNoteView>, Status> {
        let view = &self.models.invoices;
        let id = &request.get_ref().credit_note_id;
        let mut c = Check::default();
        c.invoice_id("credit_note_id", id);
        c.done()?;
        catch_up(&[&view.progress], &request, request.get_ref().min_position).await?;
        let position = position(view.reader.model())?;
        let record = view.reader.credit_note(id).map_err(read_error("credit_note_id"))?;
        let record = record.ok_or_else(|| not_found("credit note", id))?;
        let credit_note = Some(command_service::convert::credit_note_reply(&record.note));
        Ok(Response::new(pb::CreditNoteView { credit_note, position }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_credit_notes(
        &self,
        request: Request<pb::ListCreditNotesRequest>,
    ) -> Result<Response<pb::ListCreditNotesResponse>, Status> {
        let view = &self.models.invoices;
        let r = request.get_ref();
        let mut c = Check::default();
        let of = match (r.invoice_id.is_empty(), r.customer_id.is_empty()) {
            (false, true) => {
                c.invoice_id("invoice_id", &r.invoice_id);
                Some(CreditNotesOf::Invoice(&r.invoice_id))
            }
            (true, false) => {
                c.id("customer_id", &r.customer_id);
                Some(CreditNotesOf::Customer(&r.customer_id))
            }
            _ => {
                c.bad("invoice_id", "give exactly one of invoice_id and customer_id");
                None
            }
        };
        c.done()?;
        catch_up(&[&view.progress], &request, r.min_position).await?;
        let position = position(view.reader.model())?;
        let of = of.expect("checked");
        let notes = view.reader.credit_notes(of).map_err(read_error("invoice_id"))?;
        let credit_notes =
            notes.iter().map(|n| command_service::convert::credit_note_reply(&n.note)).collect();
        Ok(Response::new(pb::ListCreditNotesResponse { credit_notes, position }))
    }

    #[tracing::instrument(skip_all, fields(customer_id = %echo(&request.get_ref().customer_id)))]
    async fn get_customer_credit(
        &self,
        request: Request<pb::CustomerCreditQuery>,
    ) -> Result<Response<pb::CustomerCreditView>, Status> {
        let view = &self.models.invoices;
        let id = &request.get_ref().customer_id;
        let mut c = Check::default();
        c.id("customer_id", id);
        c.done()?;
        catch_up(&[&view.progress], &request, request.get_ref().min_position).await?;
        let position = position(view.reader.model())?;
        let credit = view.reader.credit_balance(id).map_err(read_error("customer_id"))?;
        let (currency, balance) = match credit {
            Some(c) => (
                c.currency.code().to_string(),
                command_service::convert::money(c.currency, c.balance),
            ),
            None => (String::new(), "0".to_string()),
        };
        Ok(Response::new(pb::CustomerCreditView {
            customer_id: id.clone(),
            currency,
            balance,
            position,
        }))
    }

    #[tracing::instrument(skip_all, fields(customer_id = %echo(&request.get_ref().customer_id)))]
    async fn list_customer_coupons(
        &self,
        request: Request<pb::CustomerCouponsQuery>,
    ) -> Result<Response<pb::CustomerCouponsView>, Status> {
        let view = &self.models.invoices;
        let id = &request.get_ref().customer_id;
        let mut c = Check::default();
        c.id("customer_id", id);
        c.done()?;
        catch_up(&[&view.progress], &request, request.get_ref().min_position).await?;
        let position = position(view.reader.model())?;
        let held = projections::customer_coupons::held(&view.reader, id)
            .map_err(read_error("customer_id"))?;
        let coupons = held.iter().map(held_coupon).collect();
        Ok(Response::new(pb::CustomerCouponsView { customer_id: id.clone(), coupons, position }))
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %echo(&request.get_ref().subscription_id)))]
    async fn list_usage_alerts(
        &self,
        request: Request<pb::UsageAlertsQuery>,
    ) -> Result<Response<pb::UsageAlertsResponse>, Status> {
        let view = &self.models.invoices;
        let id = &request.get_ref().subscription_id;
        let mut c = Check::default();
        c.id("subscription_id", id);
        c.done()?;
        catch_up(&[&view.progress], &request, request.get_ref().min_position).await?;
        let position = position(view.reader.model())?;
        let (alerts, fired) =
            view.reader.usage_alerts(id).map_err(read_error("subscription_id"))?;
        if alerts.is_empty()
            && fired.is_empty()
            && view
                .reader
                .customer_of_subscription(id)
                .map_err(read_error("subscription_id"))?
                .is_none()
        {
            return Err(not_found("subscription", id));
        }
        let d = |x: rust_decimal::Decimal| x.normalize().to_string();
        Ok(Response::new(pb::UsageAlertsResponse {
            alerts: alerts
                .iter()
                .map(|a| pb::UsageAlertDefinition {
                    alert_id: a.alert_id.clone(),
                    on: a.on.as_str().to_string(),
                    metric_code: a.metric_code.clone().unwrap_or_default(),
                    threshold: d(a.threshold),
                    every: a.every.map(d).unwrap_or_default(),
                })
                .collect(),
            triggered: fired
                .iter()
                .map(|t| pb::TriggeredUsageAlert {
                    alert_id: t.alert_id.clone(),
                    period_start: t.period_start.to_string(),
                    level: d(t.level),
                    value: d(t.value),
                    at: Some(command_service::convert::to_timestamp(t.at)),
                    position: t.position,
                })
                .collect(),
            position,
        }))
    }

    #[tracing::instrument(skip_all, fields(wallet_id = %echo(&request.get_ref().wallet_id)))]
    async fn get_wallet(
        &self,
        request: Request<pb::WalletQuery>,
    ) -> Result<Response<pb::WalletView>, Status> {
        let (view, journal) = (&self.models.invoices, &self.models.journal);
        let id = &request.get_ref().wallet_id;
        let mut c = Check::default();
        c.id("wallet_id", id);
        c.done()?;
        catch_up(&[&view.progress, &journal.progress], &request, request.get_ref().min_position)
            .await?;
        let position = position(view.reader.model())?;
        let record = view.reader.wallet(id).map_err(read_error("wallet_id"))?;
        let record = record.ok_or_else(|| not_found("wallet", id))?;
        let customer = &record.account.customer_id;
        let usage = wallets::ongoing_usage(&view.reader, &journal.reader, customer)
            .map_err(read_error("wallet_id"))?;
        let cur = record.account.wallet.currency;
        let ongoing = record.account.balance().saturating_sub(usage);
        Ok(Response::new(pb::WalletView {
            wallet: Some(wallets::wallet(&record)),
            ongoing_balance: money(cur, ongoing),
            ongoing_usage: money(cur, usage),
            position,
        }))
    }

    #[tracing::instrument(skip_all, fields(customer_id = %echo(&request.get_ref().customer_id)))]
    async fn list_wallets(
        &self,
        request: Request<pb::CustomerWalletsQuery>,
    ) -> Result<Response<pb::ListWalletsResponse>, Status> {
        let (view, journal) = (&self.models.invoices, &self.models.journal);
        let id = &request.get_ref().customer_id;
        let mut c = Check::default();
        c.id("customer_id", id);
        c.done()?;
        catch_up(&[&view.progress, &journal.progress], &request, request.get_ref().min_position)
            .await?;
        let position = position(view.reader.model())?;
        let records = view.reader.wallets_of(id).map_err(read_error("customer_id"))?;
        if records.is_empty() {
            known_customer(journal, id)?;
        }
        let wallets = records.iter().map(wallets::wallet).collect();
        Ok(Response::new(pb::ListWalletsResponse { wallets, position }))
    }

    #[tracing::instrument(skip_all, fields(wallet_id = %echo(&request.get_ref().wallet_id)))]
    async fn list_wallet_transactions(
        &self,
        request: Request<pb::WalletTransactionsQuery>,
    ) -> Result<Response<pb::WalletTransactionsResponse>, Status> {
        let view = &self.models.invoices;
        let r = request.get_ref();
        let mut c = Check::default();
        c.id("wallet_id", &r.wallet_id);
        c.done()?;
        catch_up(&[&view.progress], &request, r.min_position).await?;
        let position = position(view.reader.model())?;
        let record = view.reader.wallet(&r.wallet_id).map_err(read_error("wallet_id"))?;
        let record = record.ok_or_else(|| not_found("wallet", &r.wallet_id))?;
        let token = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let page = view
            .reader
            .wallet_transactions(&r.wallet_id, token, r.page_size as usize)
            .map_err(read_error("page_token"))?;
        let cur = record.account.wallet.currency;
        Ok(Response::new(pb::WalletTransactionsResponse {
            transactions: page.transactions.iter().map(|t| wallets::transaction(t, cur)).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            position,
        }))
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %echo(&request.get_ref().subscription_id)))]
    async fn get_current_usage(
        &self,
        request: Request<pb::CurrentUsageQuery>,
    ) -> Result<Response<pb::InvoiceView>, Status> {
        let view = &self.models.journal;
        let id = &request.get_ref().subscription_id;
        let mut c = Check::default();
        c.id("subscription_id", id);
        c.done()?;
        catch_up(&[&view.progress], &request, request.get_ref().min_position).await?;
        let position = position(view.reader.model())?;
        let draft = view.reader.current_usage(id).map_err(read_error("subscription_id"))?;
        let draft = draft.ok_or_else(|| not_found("open period of subscription", id))?;
        let invoice = Some(command_service::convert::draft(draft));
        Ok(Response::new(pb::InvoiceView { invoice, position }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_invoices(
        &self,
        request: Request<pb::ListInvoicesRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        let r = request.get_ref();
        let (filter, page_size) = invoice_listing(r)?;
        let books = self.books(r.as_recorded_at.as_ref()).await?;
        let (view, journal) = (&books.models.invoices, &books.models.journal);
        // A customer's listing also waits for the journal, which knows every customer.
        let both = [&view.progress, &journal.progress];
        let models = if filter.customer_id.is_some() { &both[..] } else { &both[..1] };
        catch_up(models, &request, books.min_position(r.min_position)).await?;
        let token = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let page = view.reader.list(&filter, token, page_size).map_err(read_error("page_token"))?;
        if let (Some(customer), true, None) = (&filter.customer_id, page.invoices.is_empty(), token)
        {
            known_customer(journal, customer)?;
        }
        Ok(Response::new(pb::ListInvoicesResponse {
            invoices: page.invoices.into_iter().map(invoice).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            position: page.position,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_receivables_aging(
        &self,
        request: Request<pb::ReceivablesAgingRequest>,
    ) -> Result<Response<pb::ReceivablesAgingResponse>, Status> {
        let r = request.get_ref();
        let (cur, at) = currency_date(&r.currency, "as_of", &r.as_of, "")?;
        if r.terms_days > 3_660 {
            return Err(bad_field("terms_days", format!("{} is over 3660 days", r.terms_days)));
        }
        let books = self.books(r.as_recorded_at.as_ref()).await?;
        let view = &books.models.invoices;
        catch_up(&[&view.progress], &request, books.min_position(r.min_position)).await?;
        let position = position(view.reader.model())?;
        let a = aging::aging(&view.reader, cur, at, r.terms_days).map_err(read_error("as_of"))?;
        let cell = |name: &str, c: aging::Cell| pb::ReceivablesCell {
            name: name.to_string(),
            invoices: c.invoices,
            amount: money(cur, c.amount),
        };
        Ok(Response::new(pb::ReceivablesAgingResponse {
            buckets: AGE_BUCKETS.iter().zip(a.buckets).map(|((n, _, _), c)| cell(n, c)).collect(),
            dunning: DUNNING_STATES.iter().zip(a.dunning).map(|(n, c)| cell(n, c)).collect(),
            total: Some(cell("total", a.total)),
            position,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_mrr(
        &self,
        request: Request<pb::MrrRequest>,
    ) -> Result<Response<pb::MrrResponse>, Status> {
        let r = request.get_ref();
        let (cur, at) = currency_date(&r.currency, "date", &r.date, &r.customer_id)?;
        let books = self.books(r.as_recorded_at.as_ref()).await?;
        let (view, journal) = (&books.models.mrr, &books.models.journal);
        let both = [&view.progress, &journal.progress];
        let models = if r.customer_id.is_empty() { &both[..1] } else { &both[..] };
        catch_up(models, &request, books.min_position(r.min_position)).await?;
        let position = position(view.reader.model())?;
        let mrr = match r.customer_id.as_str() {
            "" => view.reader.mrr_at(at, cur),
            customer => {
                known_customer(journal, customer)?;
                view.reader.customer_mrr_at(customer, at, cur)
            }
        };
        let mrr = money(cur, mrr.map_err(read_error("customer_id"))?);
        Ok(Response::new(pb::MrrResponse { mrr, position }))
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
        self.retention(request).await.map(Response::new)
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
        let books = self.books(request.get_ref().as_recorded_at.as_ref()).await?;
        let view = &books.models.journal;
        let min_position = books.min_position(request.get_ref().min_position);
        catch_up(&[&view.progress], &request, min_position).await?;
        let as_of = as_of(request.get_ref())?;
        let position = position(view.reader.model())?;
        let rows = view.reader.trial_balance(as_of).map_err(read_error("as_of"))?;
        let rows = rows
            .into_iter()
            .map(|r| pb::TrialBalanceRow {
                currency: r.currency.code().into(),
                account: r.account.as_str().into(),
                debit: money(r.currency, r.debit),
                credit: money(r.currency, r.credit),
            })
            .collect();
        Ok(Response::new(pb::TrialBalanceResponse { rows, position }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_revenue_schedule(
        &self,
        request: Request<pb::RevenueScheduleRequest>,
    ) -> Result<Response<pb::RevenueScheduleResponse>, Status> {
        self.revenue_schedule(request).await.map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn list_journal_entries(
        &self,
        request: Request<pb::ListJournalEntriesRequest>,
    ) -> Result<Response<pb::ListJournalEntriesResponse>, Status> {
        let books = self.books(request.get_ref().as_recorded_at.as_ref()).await?;
        let view = &books.models.journal;
        let min_position = books.min_position(request.get_ref().min_position);
        catch_up(&[&view.progress], &request, min_position).await?;
        let a = ledger::parse_entries(request.get_ref())?;
        let page = view
            .reader
            .entries_between(a.from, a.to, a.page_token.as_deref(), a.page_size)
            .map_err(read_error("page_token"))?;
        Ok(Response::new(pb::ListJournalEntriesResponse {
            entries: page.entries.into_iter().map(ledger::entry).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            position: page.position,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_revenue_waterfall(
        &self,
        request: Request<pb::RevenueWaterfallRequest>,
    ) -> Result<Response<pb::RevenueWaterfallResponse>, Status> {
        let books = self.books(request.get_ref().as_recorded_at.as_ref()).await?;
        let view = &books.models.journal;
        let min_position = books.min_position(request.get_ref().min_position);
        catch_up(&[&view.progress], &request, min_position).await?;
        let args = ledger::parse_waterfall(request.get_ref())?;
        let position = position(view.reader.model())?;
        let rows =
            view.reader.revenue_waterfall(args.from, args.to).map_err(read_error("to_month"))?;
        Ok(Response::new(pb::RevenueWaterfallResponse {
            position,
            ..ledger::waterfall(&args, rows)
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_usage_revenue(
        &self,
        request: Request<pb::UsageRevenueRequest>,
    ) -> Result<Response<pb::UsageRevenueResponse>, Status> {
        let books = self.books(request.get_ref().as_recorded_at.as_ref()).await?;
        let view = &books.models.journal;
        let min_position = books.min_position(request.get_ref().min_position);
        catch_up(&[&view.progress], &request, min_position).await?;
        let r = request.get_ref();
        let (cur, from, to, granularity) = series(&r.currency, &r.from, &r.to, &r.granularity)?;
        let position = position(view.reader.model())?;
        let buckets = view.reader.usage_revenue(from, to, granularity, cur);
        let buckets = buckets.map_err(read_error("to"))?;
        let total: Decimal = buckets.iter().map(|b| b.amount).sum();
        let buckets = buckets
            .into_iter()
            .map(|b| pb::UsageRevenueBucket {
                start: b.start.to_string(),
                days: b.days,
                amount: money(cur, b.amount),
            })
            .collect();
        let total = money(cur, total);
        Ok(Response::new(pb::UsageRevenueResponse { buckets, total, position }))
    }
}

impl QueryApi {
    async fn mrr_movements(
        &self,
        request: Request<pb::MrrMovementsRequest>,
    ) -> Result<pb::MrrMovementsResponse, Status> {
        let books = self.books(request.get_ref().as_recorded_at.as_ref()).await?;
        let view = &books.models.mrr;
        let min_position = books.min_position(request.get_ref().min_position);
        catch_up(&[&view.progress], &request, min_position).await?;
        let r = request.get_ref();
        let (cur, from, to, granularity) = series(&r.currency, &r.from, &r.to, &r.granularity)?;
        let before = from.yesterday().map_err(|_| bad_field("from", "out of range"))?;
        let position = position(view.reader.model())?;
        let mrr_before = view.reader.mrr_at(before, cur).map_err(read_error("from"))?;
        let buckets =
            view.reader.movements(from, to, granularity, cur).map_err(read_error("to"))?;
        let mut mrr = mrr_before;
        let buckets = buckets
            .into_iter()
            .map(|b| {
                mrr += b.net;
                movement_bucket(cur, b, mrr)
            })
            .collect();
        Ok(pb::MrrMovementsResponse {
            mrr_before: money(cur, mrr_before),
            buckets,
            mrr_at_to: money(cur, view.reader.mrr_at(to, cur).map_err(read_error("to"))?),
            position,
        })
    }

    async fn retention(
        &self,
        request: Request<pb::RetentionRequest>,
    ) -> Result<pb::RetentionResponse, Status> {
        let books = self.books(request.get_ref().as_recorded_at.as_ref()).await?;
        let view = &books.models.mrr;
        let min_position = books.min_position(request.get_ref().min_position);
        catch_up(&[&view.progress], &request, min_position).await?;
        let r = request.get_ref();
        let (cur, start) = currency_date(&r.currency, "start", &r.start, "")?;
        let end = match r.end.as_str() {
            "" => start
                .checked_add(jiff::Span::new().years(1))
                .map_err(|_| bad_field("start", "out of range"))?,
            end => {
                let mut c = Check::default();
                let end = c.date("end", end);
                c.order("end", Some(Some(start)), end.map(Some));
                c.done()?;
                checked(end)?
            }
        };
        let position = position(view.reader.model())?;
        let ret = view.reader.retention(start, end, cur).map_err(read_error("end"))?;
        Ok(pb::RetentionResponse {
            nrr: ret.nrr.map(|d| d.to_string()).unwrap_or_default(),
            grr: ret.grr.map(|d| d.to_string()).unwrap_or_default(),
            cohort_size: ret.cohort_size as u32,
            mrr_start: money(cur, ret.mrr_start),
            mrr_end: money(cur, ret.mrr_end),
            position,
        })
    }

    async fn balances(
        &self,
        request: Request<pb::AsOfRequest>,
    ) -> Result<pb::BalancesResponse, Status> {
        let books = self.books(request.get_ref().as_recorded_at.as_ref()).await?;
        let view = &books.models.journal;
        let min_position = books.min_position(request.get_ref().min_position);
        catch_up(&[&view.progress], &request, min_position).await?;
        let as_of = as_of(request.get_ref())?;
        let position = position(view.reader.model())?;
        let balances = view.reader.balances(as_of).map_err(read_error("as_of"))?;
        let balances = balances
            .into_iter()
            .map(|(cur, b)| pb::CurrencyBalances {
                currency: cur.code().into(),
                accounts_receivable: money(cur, b.accounts_receivable),
                unbilled_receivable: money(cur, b.unbilled_receivable),
                cash: money(cur, b.cash),
                bad_debt: money(cur, b.bad_debt),
                deferred_revenue: money(cur, b.deferred_revenue),
                tax_payable: money(cur, b.tax_payable),
                customer_credit: money(cur, b.customer_credit),
                prepaid_credits: money(cur, b.prepaid_credits),
                discounts: money(cur, b.discounts),
                total_recognized_revenue: money(cur, b.total_revenue()),
                recognized_revenue: b
                    .recognized_revenue
                    .iter()
                    .map(|(t, a)| (t.as_str().to_string(), money(cur, *a)))
                    .collect(),
            })
            .collect();
        Ok(pb::BalancesResponse { balances, position })
    }

    /// One invoice's (or line's) schedule from the journal; a customer's from the invoices it
    /// lists, both models caught up, the reply at the lower of their positions.
    async fn revenue_schedule(
        &self,
        request: Request<pb::RevenueScheduleRequest>,
    ) -> Result<pb::RevenueScheduleResponse, Status> {
        let args = schedule::parse(request.get_ref())?;
        let books = self.books(request.get_ref().as_recorded_at.as_ref()).await?;
        let (invoices, journal) = (&books.models.invoices, &books.models.journal);
        let min = books.min_position(request.get_ref().min_position);
        let (ids, position) = match &args.scope {
            Scope::Line { invoice_id, .. } | Scope::Invoice { invoice_id } => {
                catch_up(&[&journal.progress], &request, min).await?;
                (vec![invoice_id.clone()], position(journal.reader.model())?)
            }
            Scope::Customer { customer_id } => {
                catch_up(&[&invoices.progress, &journal.progress], &request, min).await?;
                let position =
                    position(invoices.reader.model())?.min(position(journal.reader.model())?);
                known_customer(journal, customer_id)?;
                let ids = invoices.reader.customer_invoice_ids(customer_id);
                (ids.map_err(read_error("customer_id"))?, position)
            }
        };
        let schedules = journal.reader.invoice_schedules(&ids).map_err(read_error("invoice_id"))?;
        Ok(pb::RevenueScheduleResponse { position, ..schedule::response(&args, &schedules)? })
    }
}

fn movement_bucket(cur: Currency, b: MovementBucket, mrr: Decimal) -> pb::MrrMovementBucket {
    pb::MrrMovementBucket {
        start: b.start.to_string(),
        totals: b
            .totals
            .iter()
            .map(|(kind, t)| pb::MovementTotal {
                kind: kind.as_str().into(),
                count: t.count,
                amount: money(cur, t.amount),
            })
            .collect(),
        net: money(cur, b.net),
        mrr: money(cur, mrr),
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
        let mut c = Check::default();
        assert_eq!(parse_status(&mut c, ""), Some(None));
        assert_eq!(parse_status(&mut c, "uncollectible"), Some(Some(InvoiceStatus::Uncollectible)));
        assert!(c.done().is_ok());
        let mut c = Check::default();
        assert_eq!(parse_status(&mut c, "late"), None);
        assert_eq!(c.done().unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
