//! `accrual.v1.CommandService`: each call parses its request (convert), runs it through the
//! engine, and shapes the reply. Every call is one tracing span.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use domain::catalog::{check_id, check_invoice_id};
use domain::commands::Command;
use domain::error::Violations;
use domain::events::Event;
use domain::ledger::Ledger;
use futures::{Stream, StreamExt};
use prost::Message;
use proto::v1 as pb;
use proto::v1::command_service_server::CommandService;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::engine::{Engine, Executed, UsageItem};
use crate::status::{bad_field, echo, from_domain};

/// Bounds on what one call may ask for.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most usage events in one `UsageBatch` (IngestUsage) and per append in StreamUsage.
    pub batch_events_max: usize,
    /// Most usage events in one StreamUsage or IngestUsage call.
    pub stream_events_max: usize,
    /// Longest an IngestUsage stream stays open (its response streams, so the server's request
    /// deadline does not bound it); then it ends with RESOURCE_EXHAUSTED: open a new one.
    pub stream_duration_ms_max: u64,
    /// Batch results IngestUsage may hold for a slow reader before it stops reading.
    pub ingest_replies_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch_events_max: 10_000,
            stream_events_max: 1_000_000,
            stream_duration_ms_max: 600_000,
            ingest_replies_max: 16,
        }
    }
}

pub struct CommandApi {
    pub(crate) engine: Arc<Engine>,
    limits: Limits,
}

impl CommandApi {
    pub fn new(engine: Arc<Engine>, limits: Limits) -> Self {
        CommandApi { engine, limits }
    }

    async fn run<R: Message + Clone>(
        &self,
        method: &str,
        req: &R,
        key: &str,
        cmd: Result<Command, domain::DomainError>,
        guard: Option<(String, u64)>,
    ) -> Result<Executed, Status> {
        let cmd = cmd.map_err(from_domain)?;
        let key = idempotency(method, req, key)?;
        self.engine.execute(cmd, key, guard).await
    }

    async fn subscription_reply(
        &self,
        id: &str,
        done: Executed,
    ) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let stream_version =
            self.engine.stream_version(&format!("subscription-{id}")).await.unwrap_or_default();
        let now = self.engine.now();
        let reply = self.engine.read(|l| {
            let sub = &l.subscriptions[id];
            let today = domain::calendar::local_date(now, &sub.time_zone);
            let plan = sub.current_plan();
            let period = sub.next_close.and_then(|_| sub.period_of(today.max(sub.start_date())));
            pb::SubscriptionResponse {
                ack: Some(ack(&done)),
                subscription_id: id.to_string(),
                status: l.subscription_status(sub, today).to_string(),
                plan_code: plan.code.clone(),
                plan_version: plan.version,
                current_period_start: period.map(|p| p.start.to_string()).unwrap_or_default(),
                current_period_end: period.map(|p| p.end.to_string()).unwrap_or_default(),
                invoices: issued(l, &done.events),
                stream_version,
            }
        });
        Ok(Response::new(reply.await))
    }

    async fn invoice_reply(
        &self,
        id: &str,
        done: Executed,
    ) -> Result<Response<pb::InvoiceResponse>, Status> {
        let invoice = self.engine.read(|l| l.invoices.get(id).map(convert::invoice)).await;
        Ok(Response::new(pb::InvoiceResponse { ack: Some(ack(&done)), invoice }))
    }

    /// ApplyCoupon or RemoveCoupon (`method`): the same request and checks, `command` builds
    /// the command from (customer id, coupon code).
    async fn customer_coupon(
        &self,
        method: &str,
        request: &pb::CustomerCouponRequest,
        command: fn(String, String) -> Command,
    ) -> Result<Response<pb::CommandAck>, Status> {
        let mut r = request.clone();
        let key = std::mem::take(&mut r.idempotency_key);
        bounded_ids(|v| {
            check_id(v, "customer_id", &r.customer_id);
            check_id(v, "coupon_code", &r.coupon_code);
        })?;
        let cmd = command(r.customer_id.clone(), r.coupon_code.clone());
        let done = self.run(method, &r, &key, Ok(cmd), None).await?;
        Ok(Response::new(ack(&done)))
    }

    pub(crate) async fn usage_chunk(
        &self,
        events: Vec<pb::UsageEvent>,
    ) -> Result<pb::UsageBatchResult, Status> {
        let items = events.into_iter().map(|e| convert::usage(e).map_err(from_domain)).collect();
        let results = self.engine.record_usage(items).await?;
        Ok(batch_result(results))
    }
}

impl CommandApi {
    /// IngestUsage's reading side: one reply per batch until the client ends the stream, a
    /// batch is refused, or a bound (events per call, stream duration) is reached.
    async fn ingest(
        &self,
        mut inbound: Streaming<pb::UsageBatch>,
        tx: mpsc::Sender<Result<pb::UsageBatchResult, Status>>,
    ) {
        let duration_ms = self.limits.stream_duration_ms_max;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(duration_ms);
        let mut events_seen = 0usize;
        loop {
            let reply = match tokio::time::timeout_at(deadline, inbound.next()).await {
                Ok(None) => return,
                Ok(Some(Ok(batch))) => self.ingest_batch(batch, &mut events_seen).await,
                Ok(Some(Err(e))) => Err(e),
                Err(_) => Err(Status::resource_exhausted(format!(
                    "an IngestUsage stream stays open at most {duration_ms} ms \
                     (stream_duration_ms_max); open a new one"
                ))),
            };
            let failed = reply.is_err();
            if tx.send(reply).await.is_err() || failed {
                return;
            }
        }
    }

    /// One IngestUsage batch, refused whole (nothing appended) when it is over a bound.
    async fn ingest_batch(
        &self,
        batch: pb::UsageBatch,
        events_seen: &mut usize,
    ) -> Result<pb::UsageBatchResult, Status> {
        let (batch_max, stream_max) = (self.limits.batch_events_max, self.limits.stream_events_max);
        let n = batch.events.len();
        if n > batch_max {
            return Err(Status::resource_exhausted(format!(
                "a batch holds at most {batch_max} events (batch_events_max); this one has {n}"
            )));
        }
        *events_seen += n;
        if *events_seen > stream_max {
            return Err(Status::resource_exhausted(format!(
                "at most {stream_max} events per IngestUsage call (stream_events_max); \
                 open a new stream for more"
            )));
        }
        self.usage_chunk(batch.events).await
    }
}

/// The idempotency key with the SHA-256 of the method and the request without its key.
pub(crate) fn idempotency<R: Message + Clone>(
    method: &str,
    req: &R,
    key: &str,
) -> Result<Option<(String, [u8; 32])>, Status> {
    if key.is_empty() {
        return Ok(None);
    }
    if key.len() > 128 {
        return Err(bad_field("idempotency_key", "at most 128 characters"));
    }
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(req.encode_to_vec());
    Ok(Some((key.to_string(), hasher.finalize().into())))
}

/// INVALID_ARGUMENT naming each id `check` finds that no write could have made (longer than
/// the write path allows, or of other characters): such an id names nothing, on any path.
fn bounded_ids(check: impl FnOnce(&mut Violations)) -> Result<(), Status> {
    let mut v = Violations::default();
    check(&mut v);
    v.into_result().map_err(from_domain)
}

/// Clears the idempotency key so the digest covers only the request's content.
macro_rules! without_key {
    ($req:expr) => {{
        let mut r = $req.clone();
        let key = std::mem::take(&mut r.idempotency_key);
        (r, key)
    }};
}

/// The position a reply states for an event at `event_position`: the log prefix that ends with
/// it, `[0, event_position + 1)`, the position a query's `min_position` waits for (one meaning of
/// position on every API: a prefix of the log, as a reply's `position`).
fn through(event_position: u64) -> u64 {
    event_position.checked_add(1).expect("a log position below u64::MAX")
}

fn ack(done: &Executed) -> pb::CommandAck {
    pb::CommandAck {
        position: done.last_position.map_or(0, through),
        events_appended: if done.duplicate { 0 } else { done.events.len() as u32 },
        duplicate: done.duplicate,
    }
}

fn issued(l: &Ledger, events: &[Event]) -> Vec<pb::Invoice> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::InvoiceIssued(i) => l.invoices.get(&i.invoice_id).map(convert::invoice),
            _ => None,
        })
        .collect()
}

fn usage_result(item: UsageItem) -> pb::UsageResult {
    match item {
        UsageItem::Accepted { position, invoice_id } => pb::UsageResult {
            status: "accepted".into(),
            position: through(position),
            invoice_id: invoice_id.unwrap_or_default(),
            ..Default::default()
        },
        UsageItem::Duplicate { position } => pb::UsageResult {
            status: "duplicate".into(),
            position: through(position),
            ..Default::default()
        },
        UsageItem::Rejected(s) => pb::UsageResult {
            status: "rejected".into(),
            code: s.code() as i32,
            message: s.message().to_string(),
            ..Default::default()
        },
    }
}

fn batch_result(items: Vec<UsageItem>) -> pb::UsageBatchResult {
    let mut out = pb::UsageBatchResult::default();
    for item in items {
        match &item {
            UsageItem::Accepted { .. } => out.accepted += 1,
            UsageItem::Duplicate { .. } => out.duplicates += 1,
            UsageItem::Rejected(_) => out.rejected += 1,
        }
        out.results.push(usage_result(item));
    }
    out
}

type IngestStream = Pin<Box<dyn Stream<Item = Result<pb::UsageBatchResult, Status>> + Send>>;
type ImportStream = Pin<Box<dyn Stream<Item = Result<pb::ImportReply, Status>> + Send>>;

#[tonic::async_trait]
impl CommandService for CommandApi {
    #[tracing::instrument(skip_all, fields(customer_id = %echo(&request.get_ref().customer_id)))]
    async fn register_customer(
        &self,
        request: Request<pb::RegisterCustomerRequest>,
    ) -> Result<Response<pb::CommandAck>, Status> {
        let (r, key) = without_key!(request.get_ref());
        let done =
            self.run("RegisterCustomer", &r, &key, convert::register_customer(&r), None).await?;
        Ok(Response::new(ack(&done)))
    }

    #[tracing::instrument(skip_all, fields(customer_id = %echo(&request.get_ref().customer_id)))]
    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::CommandAck>, Status> {
        let (r, key) = without_key!(request.get_ref());
        bounded_ids(|v| check_id(v, "customer_id", &r.customer_id))?;
        let done = self.run("UpdateCustomer", &r, &key, convert::update_customer(&r), None).await?;
        Ok(Response::new(ack(&done)))
    }

    #[tracing::instrument(skip_all, fields(code = %echo(&request.get_ref().code)))]
    async fn define_metric(
        &self,
        request: Request<pb::DefineMetricRequest>,
    ) -> Result<Response<pb::CommandAck>, Status> {
        let (r, key) = without_key!(request.get_ref());
        let done = self.run("DefineMetric", &r, &key, convert::define_metric(&r), None).await?;
        Ok(Response::new(ack(&done)))
    }

    #[tracing::instrument(skip_all, fields(code = %echo(&request.get_ref().code)))]
    async fn publish_plan(
        &self,
        request: Request<pb::PublishPlanRequest>,
    ) -> Result<Response<pb::PublishPlanResponse>, Status> {
        let (r, key) = without_key!(request.get_ref());
        let done = self.run("PublishPlan", &r, &key, convert::publish_plan(&r), None).await?;
        let version = done.events.iter().find_map(|e| match e {
            Event::PlanPublished(p) => Some(p.version),
            _ => None,
        });
        Ok(Response::new(pb::PublishPlanResponse {
            ack: Some(ack(&done)),
            version: version.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %echo(&request.get_ref().subscription_id)))]
    async fn start_subscription(
        &self,
        request: Request<pb::StartSubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let (r, key) = without_key!(request.get_ref());
        bounded_ids(|v| {
            check_id(v, "subscription_id", &r.subscription_id);
            check_id(v, "customer_id", &r.customer_id);
            check_id(v, "plan_code", &r.plan_code);
        })?;
        let done =
            self.run("StartSubscription", &r, &key, convert::start_subscription(&r), None).await?;
        self.subscription_reply(&r.subscription_id, done).await
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %echo(&request.get_ref().subscription_id)))]
    async fn change_plan(
        &self,
        request: Request<pb::ChangePlanRequest>,
    ) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let (r, key) = without_key!(request.get_ref());
        bounded_ids(|v| {
            check_id(v, "subscription_id", &r.subscription_id);
            check_id(v, "plan_code", &r.plan_code);
        })?;
        let cmd = convert::change_plan(&r);
        let guard = r.expected_version.map(|v| (format!("subscription-{}", r.subscription_id), v));
        let done = self.run("ChangePlan", &r, &key, cmd, guard).await?;
        self.subscription_reply(&r.subscription_id, done).await
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %echo(&request.get_ref().subscription_id)))]
    async fn cancel_subscription(
        &self,
        request: Request<pb::CancelSubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let (r, key) = without_key!(request.get_ref());
        bounded_ids(|v| check_id(v, "subscription_id", &r.subscription_id))?;
        let cmd = convert::cancel_subscription(&r);
        let guard = r.expected_version.map(|v| (format!("subscription-{}", r.subscription_id), v));
        let done = self.run("CancelSubscription", &r, &key, cmd, guard).await?;
        self.subscription_reply(&r.subscription_id, done).await
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %echo(&request.get_ref().subscription_id)))]
    async fn record_usage(
        &self,
        request: Request<pb::UsageEvent>,
    ) -> Result<Response<pb::UsageResult>, Status> {
        let usage = convert::usage(request.into_inner()).map_err(from_domain)?;
        let item =
            self.engine.record_usage(vec![Ok(usage)]).await?.pop().expect("one result per item");
        match item {
            UsageItem::Rejected(status) => Err(status),
            other => Ok(Response::new(usage_result(other))),
        }
    }

    #[tracing::instrument(skip_all)]
    async fn stream_usage(
        &self,
        request: Request<Streaming<pb::UsageEvent>>,
    ) -> Result<Response<pb::UsageBatchResult>, Status> {
        let mut inbound = request.into_inner();
        let mut total = pb::UsageBatchResult::default();
        let mut chunk = Vec::with_capacity(self.limits.batch_events_max);
        let mut seen = 0usize;
        loop {
            let next = inbound.next().await.transpose()?;
            let end = next.is_none();
            if let Some(event) = next {
                seen += 1;
                if seen > self.limits.stream_events_max {
                    return Err(Status::resource_exhausted(format!(
                        "at most {} events per StreamUsage call (stream_events_max); use \
                         IngestUsage for more",
                        self.limits.stream_events_max
                    )));
                }
                chunk.push(event);
            }
            if (end && !chunk.is_empty()) || chunk.len() >= self.limits.batch_events_max {
                let part = self.usage_chunk(std::mem::take(&mut chunk)).await?;
                total.accepted += part.accepted;
                total.duplicates += part.duplicates;
                total.rejected += part.rejected;
                total.results.extend(part.results);
            }
            if end {
                return Ok(Response::new(total));
            }
        }
    }

    type IngestUsageStream = IngestStream;

    #[tracing::instrument(skip_all)]
    async fn ingest_usage(
        &self,
        request: Request<Streaming<pb::UsageBatch>>,
    ) -> Result<Response<IngestStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.limits.ingest_replies_max);
        let api = CommandApi { engine: self.engine.clone(), limits: self.limits.clone() };
        tokio::spawn(async move { api.ingest(inbound, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ImportStream = ImportStream;

    #[tracing::instrument(skip_all)]
    async fn import(
        &self,
        request: Request<Streaming<pb::ImportRequest>>,
    ) -> Result<Response<ImportStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.limits.ingest_replies_max);
        let api = CommandApi { engine: self.engine.clone(), limits: self.limits.clone() };
        tokio::spawn(async move { api.import(inbound, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all)]
    async fn run_billing(
        &self,
        request: Request<pb::RunBillingRequest>,
    ) -> Result<Response<pb::RunBillingResponse>, Status> {
        let (r, key) = without_key!(request.get_ref());
        let as_of = convert::timestamp("as_of", r.as_of.as_ref()).map_err(from_domain)?;
        let key = idempotency("RunBilling", &r, &key)?;
        let done = self.engine.run_billing(as_of, key).await?;
        let periods_closed =
            done.events.iter().filter(|e| matches!(e, Event::BillingPeriodClosed { .. })).count()
                as u32;
        let invoices = self.engine.read(|l| issued(l, &done.events)).await;
        Ok(Response::new(pb::RunBillingResponse {
            ack: Some(ack(&done)),
            invoices,
            periods_closed,
        }))
    }

    #[tracing::instrument(skip_all, fields(invoice_id = %echo(&request.get_ref().invoice_id)))]
    async fn record_payment(
        &self,
        request: Request<pb::RecordPaymentRequest>,
    ) -> Result<Response<pb::InvoiceResponse>, Status> {
        let (r, key) = without_key!(request.get_ref());
        bounded_ids(|v| check_invoice_id(v, "invoice_id", &r.invoice_id))?;
        let cmd = convert::record_payment(&r, self.engine.now());
        let done = self.run("RecordPayment", &r, &key, cmd, None).await?;
        self.invoice_reply(&r.invoice_id, done).await
    }

    #[tracing::instrument(skip_all, fields(invoice_id = %echo(&request.get_ref().invoice_id)))]
    async fn import_invoice(
        &self,
        request: Request<pb::ImportInvoiceRequest>,
    ) -> Result<Response<pb::InvoiceResponse>, Status> {
        let (r, key) = without_key!(request.get_ref());
        bounded_ids(|v| check_invoice_id(v, "invoice_id", &r.invoice_id))?;
        let cmd = convert::import_invoice(&r);
        let done = self.run("ImportInvoice", &r, &key, cmd, None).await?;
        self.invoice_reply(&r.invoice_id, done).await
    }

    #[tracing::instrument(skip_all, fields(invoice_id = %echo(&request.get_ref().invoice_id)))]
    async fn void_invoice(
        &self,
        request: Request<pb::VoidInvoiceRequest>,
    ) -> Result<Response<pb::InvoiceResponse>, Status> {
        let (r, key) = without_key!(request.get_ref());
        bounded_ids(|v| check_invoice_id(v, "invoice_id", &r.invoice_id))?;
        if r.reason.trim().is_empty() || r.reason.len() > 256 {
            return Err(bad_field("reason", "1 to 256 characters"));
        }
        let cmd =
            Command::VoidInvoice { invoice_id: r.invoice_id.clone(), reason: r.reason.clone() };
        let done = self.run("VoidInvoice", &r, &key, Ok(cmd), None).await?;
        self.invoice_reply(&r.invoice_id, done).await
    }

    #[tracing::instrument(skip_all, fields(code = %echo(&request.get_ref().code)))]
    async fn define_add_on(
        &self,
        request: Request<pb::DefineAddOnRequest>,
    ) -> Result<Response<pb::CommandAck>, Status> {
        let (r, key) = without_key!(request.get_ref());
        let done = self.run("DefineAddOn", &r, &key, convert::define_add_on(&r), None).await?;
        Ok(Response::new(ack(&done)))
    }

    #[tracing::instrument(skip_all, fields(code = %echo(&request.get_ref().code)))]
    async fn define_coupon(
        &self,
        request: Request<pb::DefineCouponRequest>,
    ) -> Result<Response<pb::CommandAck>, Status> {
        let (r, key) = without_key!(request.get_ref());
        let done = self.run("DefineCoupon", &r, &key, convert::define_coupon(&r), None).await?;
        Ok(Response::new(ack(&done)))
    }

    #[tracing::instrument(skip_all, fields(customer_id = %echo(&request.get_ref().customer_id)))]
    async fn apply_coupon(
        &self,
        request: Request<pb::CustomerCouponRequest>,
    ) -> Result<Response<pb::CommandAck>, Status> {
        let apply = |customer_id, coupon_code| Command::ApplyCoupon { customer_id, coupon_code };
        self.customer_coupon("ApplyCoupon", request.get_ref(), apply).await
    }

    #[tracing::instrument(skip_all, fields(customer_id = %echo(&request.get_ref().customer_id)))]
    async fn remove_coupon(
        &self,
        request: Request<pb::CustomerCouponRequest>,
    ) -> Result<Response<pb::CommandAck>, Status> {
        let remove = |customer_id, coupon_code| Command::RemoveCoupon { customer_id, coupon_code };
        self.customer_coupon("RemoveCoupon", request.get_ref(), remove).await
    }

    #[tracing::instrument(skip_all, fields(customer_id = %echo(&request.get_ref().customer_id)))]
    async fn issue_one_off_invoice(
        &self,
        request: Request<pb::IssueOneOffInvoiceRequest>,
    ) -> Result<Response<pb::InvoiceResponse>, Status> {
        let (r, key) = without_key!(request.get_ref());
        bounded_ids(|v| check_id(v, "customer_id", &r.customer_id))?;
        let cmd = convert::one_off_invoice(&r);
        let done = self.run("IssueOneOffInvoice", &r, &key, cmd, None).await?;
        let id = done.events.iter().find_map(|e| match e {
            Event::InvoiceIssued(i) => Some(i.invoice_id.clone()),
            _ => None,
        });
        self.invoice_reply(&id.unwrap_or_default(), done).await
    }

    #[tracing::instrument(skip_all, fields(alert_id = %echo(&request.get_ref().alert_id)))]
    async fn create_usage_alert(
        &self,
        request: Request<pb::CreateUsageAlertRequest>,
    ) -> Result<Response<pb::CommandAck>, Status> {
        let (r, key) = without_key!(request.get_ref());
        bounded_ids(|v| {
            check_id(v, "alert_id", &r.alert_id);
            check_id(v, "subscription_id", &r.subscription_id);
        })?;
        let cmd = convert::create_usage_alert(&r);
        let done = self.run("CreateUsageAlert", &r, &key, cmd, None).await?;
        Ok(Response::new(ack(&done)))
    }

    #[tracing::instrument(skip_all, fields(alert_id = %echo(&request.get_ref().alert_id)))]
    async fn delete_usage_alert(
        &self,
        request: Request<pb::DeleteUsageAlertRequest>,
    ) -> Result<Response<pb::CommandAck>, Status> {
        let (r, key) = without_key!(request.get_ref());
        bounded_ids(|v| {
            check_id(v, "alert_id", &r.alert_id);
            check_id(v, "subscription_id", &r.subscription_id);
        })?;
        let cmd = Command::DeleteUsageAlert {
            subscription_id: r.subscription_id.clone(),
            alert_id: r.alert_id.clone(),
        };
        let done = self.run("DeleteUsageAlert", &r, &key, Ok(cmd), None).await?;
        Ok(Response::new(ack(&done)))
    }

    #[tracing::instrument(skip_all, fields(wallet_id = %echo(&request.get_ref().wallet_id)))]
    async fn open_wallet(
        &self,
        request: Request<pb::OpenWalletRequest>,
    ) -> Result<Response<pb::CommandAck>, Status> {
        let (r, key) = without_key!(request.get_ref());
        bounded_ids(|v| {
            check_id(v, "wallet_id", &r.wallet_id);
            check_id(v, "customer_id", &r.customer_id);
        })?;
        let done = self.run("OpenWallet", &r, &key, convert::open_wallet(&r), None).await?;
        Ok(Response::new(ack(&done)))
    }

    #[tracing::instrument(skip_all, fields(wallet_id = %echo(&request.get_ref().wallet_id)))]
    async fn top_up_wallet(
        &self,
        request: Request<pb::TopUpWalletRequest>,
    ) -> Result<Response<pb::TopUpWalletResponse>, Status> {
        let (r, key) = without_key!(request.get_ref());
        bounded_ids(|v| check_id(v, "wallet_id", &r.wallet_id))?;
        let done = self.run("TopUpWallet", &r, &key, convert::top_up_wallet(&r), None).await?;
        let top_up = done.events.iter().find_map(|e| match e {
            Event::WalletToppedUp(t) => Some(t.clone()),
            _ => None,
        });
        let Some(t) = top_up else {
            return Err(Status::internal("TopUpWallet appended no WalletToppedUp"));
        };
        let invoice = match &t.invoice_id {
            Some(id) => self.engine.read(|l| l.invoices.get(id).map(convert::invoice)).await,
            None => None,
        };
        let currency = self.engine.read(|l| l.wallets.get(&t.wallet_id).map(|w| w.wallet.currency));
        let amount = match currency.await {
            Some(c) => convert::money(c, t.amount),
            None => t.amount.to_string(),
        };
        Ok(Response::new(pb::TopUpWalletResponse {
            ack: Some(ack(&done)),
            top_up: t.top_up,
            amount,
            invoice,
            usable: t.usable,
        }))
    }

    #[tracing::instrument(skip_all, fields(invoice_id = %echo(&request.get_ref().invoice_id)))]
    async fn issue_credit_note(
        &self,
        request: Request<pb::IssueCreditNoteRequest>,
    ) -> Result<Response<pb::CreditNoteResponse>, Status> {
        let (r, key) = without_key!(request.get_ref());
        bounded_ids(|v| check_invoice_id(v, "invoice_id", &r.invoice_id))?;
        let cmd = convert::credit_note(&r);
        let done = self.run("IssueCreditNote", &r, &key, cmd, None).await?;
        let note = done.events.iter().find_map(|e| match e {
            Event::CreditNoteIssued(n) => Some(convert::credit_note_reply(n)),
            _ => None,
        });
        let invoice = self.engine.read(|l| l.invoices.get(&r.invoice_id).map(convert::invoice));
        let invoice = invoice.await;
        Ok(Response::new(pb::CreditNoteResponse {
            ack: Some(ack(&done)),
            credit_note: note,
            invoice,
        }))
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %echo(&request.get_ref().subscription_id)))]
    async fn get_current_usage(
        &self,
        request: Request<pb::GetCurrentUsageRequest>,
    ) -> Result<Response<pb::Invoice>, Status> {
        let id = &request.get_ref().subscription_id;
        bounded_ids(|v| check_id(v, "subscription_id", id))?;
        let now = self.engine.now();
        let draft = self
            .engine
            .read_durable(|l| l.draft_invoice(id, now, domain::anomaly::Completeness::PeriodSoFar))
            .await?;
        let draft = draft.map_err(from_domain)?;
        let draft = draft.ok_or_else(|| {
            from_domain(domain::DomainError::precondition(
                "NO_OPEN_PERIOD",
                format!("subscription-{id}"),
                "the subscription has no open billing period",
            ))
        })?;
        Ok(Response::new(convert::draft(draft)))
    }

    #[tracing::instrument(skip_all, fields(invoice_id = %echo(&request.get_ref().invoice_id)))]
    async fn get_invoice(
        &self,
        request: Request<pb::GetInvoiceRequest>,
    ) -> Result<Response<pb::Invoice>, Status> {
        let id = &request.get_ref().invoice_id;
        bounded_ids(|v| check_invoice_id(v, "invoice_id", id))?;
        let invoice = self.engine.read_durable(|l| l.invoices.get(id).map(convert::invoice));
        invoice
            .await?
            .map(Response::new)
            .ok_or_else(|| from_domain(domain::DomainError::not_found("invoice", id)))
    }
}
