//! End to end: the real `accrual` binary on a free port with a temp data dir, driven by a
//! tonic client through the whole write side (SPEC §3–4), killed and restarted.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

type Client = CommandServiceClient<Channel>;

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(data_dir: &std::path::Path, port: u16) -> Server {
        Server::start_with(data_dir, port, &[])
    }

    /// Starts `accrual serve` with `extra` flags (e.g. `--role command`).
    fn start_with(data_dir: &std::path::Path, port: u16, extra: &[&str]) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_accrual"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--scheduler-interval-secs",
                "0",
            ])
            .args(extra)
            .arg("--data-dir")
            .arg(data_dir)
            .env("ACCRUAL_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start accrual serve");
        Server { child, port }
    }

    /// A channel to the server once its health service reports `service` SERVING.
    async fn serving(&self, service: &str) -> Channel {
        let url = format!("http://127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(channel) = Channel::from_shared(url.clone()).unwrap().connect().await {
                let mut health =
                    tonic_health::pb::health_client::HealthClient::new(channel.clone());
                let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
                if let Ok(r) = health.check(req).await {
                    assert_eq!(r.into_inner().status, 1, "SERVING");
                    return channel;
                }
            }
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn client(&self) -> Client {
        CommandServiceClient::new(self.serving("accrual.v1.CommandService").await)
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.child.wait().unwrap()
    }
}

/// What grpcurl does first: list services through server reflection (no proto files).
async fn reflected_services(port: u16) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let url = format!("http://127.0.0.1:{port}");
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    match replies.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection reply {other:?}"),
    }
}

async fn query_client(port: u16) -> QueryServiceClient<Channel> {
    let url = format!("http://127.0.0.1:{port}");
    QueryServiceClient::new(Channel::from_shared(url).unwrap().connect().await.unwrap())
}

/// A failing assertion must not leave a server behind (it would hold the test's output open).
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dec(s: &str) -> rust_decimal::Decimal {
    s.parse().unwrap_or_else(|_| panic!("{s:?} is a decimal"))
}

fn date_in(days: i64) -> String {
    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * days);
    at.to_zoned(jiff::tz::TimeZone::UTC).date().to_string()
}

/// MRR and the books after the run: one 20.00/month subscription; the 220.00 invoice
/// (20.00 base fee + 180.00 usage + 20.00 tax) written off as uncollectible.
async fn analytics(q: &mut QueryServiceClient<Channel>, seen: u64) {
    let mrr = pb::MrrRequest {
        currency: "USD".into(),
        date: date_in(1),
        min_position: Some(seen),
        ..Default::default()
    };
    assert_eq!(dec(&q.get_mrr(mrr).await.unwrap().into_inner().mrr), dec("20"));
    let moves = pb::MrrMovementsRequest {
        currency: "USD".into(),
        from: date_in(-40),
        to: date_in(1),
        granularity: "month".into(),
        min_position: Some(seen),
    };
    let moves = q.list_mrr_movements(moves).await.unwrap().into_inner();
    let net: rust_decimal::Decimal = moves.buckets.iter().map(|b| dec(&b.net)).sum();
    assert_eq!(
        dec(&moves.mrr_before) + net,
        dec(&moves.mrr_at_to),
        "the series is the sum of movements"
    );
    let as_of = pb::AsOfRequest { as_of: date_in(70), min_position: Some(seen) };
    let rows = q.get_trial_balance(as_of.clone()).await.unwrap().into_inner().rows;
    let debits: rust_decimal::Decimal = rows.iter().map(|r| dec(&r.debit)).sum();
    let credits: rust_decimal::Decimal = rows.iter().map(|r| dec(&r.credit)).sum();
    assert_eq!(debits, credits, "the trial balance balances: {rows:?}");
    let books = q.get_balances(as_of).await.unwrap().into_inner().balances;
    let usd = books.iter().find(|b| b.currency == "USD").expect("USD books");
    assert_eq!(dec(&usd.total_recognized_revenue), dec("200.00"));
    assert_eq!((dec(&usd.bad_debt), dec(&usd.accounts_receivable)), (dec("220.00"), dec("0")));
    assert_eq!((dec(&usd.tax_payable), dec(&usd.deferred_revenue)), (dec("20.00"), dec("0")));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: 0 }
}

fn days_later(days: i64) -> prost_types::Timestamp {
    let t = now();
    prost_types::Timestamp { seconds: t.seconds + days * 86_400, nanos: 0 }
}

/// The usage instant of the test: fixed once, so a resent event is byte-for-byte the same.
fn usage_time() -> prost_types::Timestamp {
    static AT: std::sync::OnceLock<prost_types::Timestamp> = std::sync::OnceLock::new();
    *AT.get_or_init(now)
}

fn usage(tx: &str, calls: &str) -> pb::UsageEvent {
    pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx.into(),
        metric_code: "api_calls".into(),
        occurred_at: Some(usage_time()),
        properties: [("calls".to_string(), calls.to_string())].into(),
    }
}

fn tier(up_to: &str, price: &str, flat: &str) -> pb::Tier {
    pb::Tier { up_to: up_to.into(), unit_price: price.into(), flat_fee: flat.into() }
}

fn plan_request(code: &str, currency: &str) -> pb::PublishPlanRequest {
    let graduated = pb::TieredModel {
        tiers: vec![tier("100", "1.00", "5"), tier("1000", "0.50", "0"), tier("", "0.10", "0")],
    };
    pb::PublishPlanRequest {
        code: code.into(),
        name: "Growth".into(),
        currency: currency.into(),
        interval: "monthly".into(),
        base_fee: "20.00".into(),
        base_fee_in_advance: false,
        charges: vec![pb::Charge {
            metric_code: "api_calls".into(),
            pay_in_advance: false,
            model: Some(pb::charge::Model::Graduated(graduated)),
        }],
        ..Default::default()
    }
}

async fn setup(c: &mut Client) -> u64 {
    let customer = pb::RegisterCustomerRequest {
        idempotency_key: "cust-acme".into(),
        customer_id: "acme".into(),
        name: "Acme".into(),
        currency: "USD".into(),
        time_zone: "Europe/Berlin".into(),
        tax_rate: "10".into(),
    };
    let first = c.register_customer(customer.clone()).await.unwrap().into_inner();
    let replay = c.register_customer(customer.clone()).await.unwrap().into_inner();
    assert!(
        replay.duplicate && replay.position == first.position,
        "idempotent replay returns the original"
    );
    let metric = pb::DefineMetricRequest {
        code: "api_calls".into(),
        name: "API calls".into(),
        aggregation: "sum".into(),
        property: "calls".into(),
        ..Default::default()
    };
    c.define_metric(metric).await.unwrap();
    let plan = c.publish_plan(plan_request("growth", "USD")).await.unwrap().into_inner();
    assert_eq!(plan.version, 1);
    let start = pb::StartSubscriptionRequest {
        subscription_id: "sub-1".into(),
        customer_id: "acme".into(),
        plan_code: "growth".into(),
        ..Default::default()
    };
    let sub = c.start_subscription(start).await.unwrap().into_inner();
    assert_eq!((sub.status.as_str(), sub.stream_version), ("active", 0));
    sub.ack.unwrap().position
}

/// Unary, client-streaming and bidi usage with duplicates and bad items: 200 + 50 calls accepted.
async fn record_usage(c: &mut Client) {
    let one = c.record_usage(usage("tx-1", "200")).await.unwrap().into_inner();
    assert_eq!(one.status, "accepted");
    let items =
        vec![usage("tx-1", "200"), usage("tx-2", "30"), usage("tx-3", "lots"), usage("tx-2", "31")];
    let reply = c.stream_usage(tokio_stream::iter(items)).await.unwrap().into_inner();
    let statuses: Vec<_> = reply.results.iter().map(|r| (r.status.as_str(), r.code)).collect();
    assert_eq!(
        statuses,
        vec![
            ("duplicate", 0),
            ("accepted", 0),
            ("rejected", Code::InvalidArgument as i32),
            ("rejected", Code::AlreadyExists as i32)
        ]
    );
    assert_eq!(
        reply.results[0].position, one.position,
        "a duplicate reports the original position"
    );
    let batch = pb::UsageBatch { events: vec![usage("tx-4", "20"), usage("tx-2", "30")] };
    let mut acks = c.ingest_usage(tokio_stream::iter(vec![batch])).await.unwrap().into_inner();
    let ack = acks.message().await.unwrap().unwrap();
    assert_eq!((ack.accepted, ack.duplicates, ack.rejected), (1, 1, 0));
    // A batch over the limit (10,000 events) is refused whole and appends nothing.
    let too_big =
        pb::UsageBatch { events: (0..10_001).map(|i| usage(&format!("big-{i}"), "1")).collect() };
    let mut acks = c.ingest_usage(tokio_stream::iter(vec![too_big])).await.unwrap().into_inner();
    assert_eq!(acks.message().await.unwrap_err().code(), Code::ResourceExhausted);
}

fn assert_code(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code) -> tonic::Status {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

/// Every kind of bad input of SPEC §3 gets its code and details, and appends nothing.
async fn bad_inputs(c: &mut Client, position_before: u64) {
    let bad = pb::RegisterCustomerRequest {
        customer_id: "bad id!".into(),
        name: "x".into(),
        currency: "XYZ".into(),
        ..Default::default()
    };
    let status = assert_code(c.register_customer(bad).await, Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, vec!["currency", "customer_id"]);
    let mut plan = plan_request("broken", "USD");
    plan.charges[0].model = Some(pb::charge::Model::Graduated(pb::TieredModel {
        tiers: vec![tier("10", "1", ""), tier("5", "1", ""), tier("", "x", "")],
    }));
    let status = assert_code(c.publish_plan(plan).await, Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert!(fields.iter().any(|f| f == "charges[0].graduated.tiers[2].unit_price"), "{fields:?}");
    let status = assert_code(
        c.start_subscription(pb::StartSubscriptionRequest {
            subscription_id: "sub-2".into(),
            customer_id: "acme".into(),
            plan_code: "nope".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    assert_eq!(status.get_details_resource_info().unwrap().resource_name, "nope");
    assert_code(
        c.record_usage(pb::UsageEvent { subscription_id: "ghost".into(), ..usage("tx-9", "1") })
            .await,
        Code::NotFound,
    );
    let mut eur = plan_request("growth-eur", "EUR");
    eur.charges.clear();
    c.publish_plan(eur).await.unwrap();
    let status = assert_code(
        c.change_plan(pb::ChangePlanRequest {
            subscription_id: "sub-1".into(),
            plan_code: "growth-eur".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        status.get_details_precondition_failure().unwrap().violations[0].r#type,
        "CURRENCY_MISMATCH"
    );
    let stale = pb::ChangePlanRequest {
        subscription_id: "sub-1".into(),
        plan_code: "growth".into(),
        expected_version: Some(7),
        ..Default::default()
    };
    assert_code(c.change_plan(stale).await, Code::Aborted);
    let reused = pb::RegisterCustomerRequest {
        idempotency_key: "cust-acme".into(),
        customer_id: "other".into(),
        name: "Other".into(),
        currency: "USD".into(),
        ..Default::default()
    };
    assert_code(c.register_customer(reused).await, Code::AlreadyExists);
    assert_code(c.run_billing(pb::RunBillingRequest::default()).await, Code::InvalidArgument);
    assert_code(
        c.record_payment(pb::RecordPaymentRequest {
            invoice_id: "nope".into(),
            succeeded: true,
            amount: "1".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    // Only the EUR plan above was appended (one event) since position_before.
    let probe = pb::DefineMetricRequest {
        code: "probe".into(),
        name: "Probe".into(),
        aggregation: "count".into(),
        ..Default::default()
    };
    let ack = c.define_metric(probe).await.unwrap().into_inner();
    assert_eq!(ack.position, position_before + 2, "refused commands appended nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_side_end_to_end_with_kill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    let services = reflected_services(port).await;
    assert!(services.iter().any(|s| s == "accrual.v1.CommandService"), "{services:?}");
    setup(&mut c).await;
    record_usage(&mut c).await;
    let last = c.record_usage(usage("tx-5", "0")).await.unwrap().into_inner().position;
    bad_inputs(&mut c, last).await;

    server.kill9();
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    let again = c.record_usage(usage("tx-1", "200")).await.unwrap().into_inner();
    assert_eq!(again.status, "duplicate", "dedup survives a kill -9");
    let draft = c
        .get_current_usage(pb::GetCurrentUsageRequest { subscription_id: "sub-1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (draft.status.as_str(), draft.total.as_str()),
        ("draft", "220.00"),
        "the draft before the close"
    );

    let run = c
        .run_billing(pb::RunBillingRequest { as_of: Some(days_later(40)), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((run.periods_closed, run.invoices.len()), (1, 1));
    let invoice = &run.invoices[0];
    // 250 calls graduated: 100 × 1.00 + 5 + 150 × 0.50 = 180.00; base fee 20.00 in arrears;
    // tax 10 % of 200.00 = 20.00; total 220.00.
    let lines: Vec<(&str, &str)> =
        invoice.lines.iter().map(|l| (l.kind.as_str(), l.amount.as_str())).collect();
    assert_eq!(lines, vec![("base_fee", "20.00"), ("usage", "180.00")]);
    assert_eq!(invoice.lines[1].units, "250");
    assert_eq!(
        (invoice.subtotal.as_str(), invoice.tax.as_str(), invoice.total.as_str()),
        ("200.00", "20.00", "220.00")
    );
    // The read side: the invoice is in the query service once it reached the run's position.
    let mut q = query_client(port).await;
    let billed_at = run.ack.as_ref().unwrap().position;
    let mine = pb::ListInvoicesRequest {
        customer_id: "acme".into(),
        min_position: Some(billed_at),
        ..Default::default()
    };
    let listed = q.list_invoices(mine).await.unwrap().into_inner();
    assert!(listed.position > billed_at, "the reply reflects the caller's write");
    let read: Vec<(&str, &str)> =
        listed.invoices.iter().map(|i| (i.status.as_str(), i.total.as_str())).collect();
    assert_eq!(read, vec![("open", "220.00")]);
    let bad = pb::ListInvoicesRequest { status: "late".into(), ..Default::default() };
    assert_code(q.list_invoices(bad).await, Code::InvalidArgument);
    let rerun = c
        .run_billing(pb::RunBillingRequest { as_of: Some(days_later(40)), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(rerun.invoices.is_empty(), "billing twice for the same as_of issues nothing");
    assert_code(c.record_usage(usage("tx-6", "1")).await, Code::FailedPrecondition);

    let mut last_payment = 0;
    for attempt in 1..=3u32 {
        let failed = pb::RecordPaymentRequest {
            invoice_id: invoice.invoice_id.clone(),
            succeeded: false,
            reason: "card_declined".into(),
            ..Default::default()
        };
        let reply = c.record_payment(failed).await.unwrap().into_inner();
        last_payment = reply.ack.unwrap().position;
        let inv = reply.invoice.unwrap();
        assert_eq!(inv.failed_attempts, attempt);
        assert_eq!(inv.status, if attempt < 3 { "open" } else { "uncollectible" });
    }

    server.kill9();
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    let inv = c
        .get_invoice(pb::GetInvoiceRequest { invoice_id: invoice.invoice_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (inv.status.as_str(), inv.total.as_str(), inv.failed_attempts),
        ("uncollectible", "220.00", 3)
    );
    let mut q = query_client(port).await;
    let id = invoice.invoice_id.clone();
    let after_payments =
        pb::InvoiceQuery { invoice_id: id.clone(), min_position: Some(last_payment) };
    let read = q.get_invoice(after_payments).await.unwrap().into_inner().invoice.unwrap();
    assert_eq!(
        (read.status.as_str(), read.amount_due.as_str(), read.failed_attempts),
        ("uncollectible", "220.00", 3)
    );
    analytics(&mut q, last_payment).await;
    let never = pb::InvoiceQuery { invoice_id: id, min_position: Some(1_000_000) };
    let mut request = tonic::Request::new(never);
    request.set_timeout(Duration::from_millis(300));
    assert_code(q.get_invoice(request).await, Code::DeadlineExceeded);
    let status = server.terminate();
    assert!(status.success(), "SIGTERM shuts down gracefully with exit 0: {status:?}");
}

/// The health status of `service` (NOT_FOUND for a service this process does not run).
async fn health_of(channel: Channel, service: &str) -> Result<i32, tonic::Status> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
    health.check(req).await.map(|r| r.into_inner().status)
}

fn mrr_today(min_position: u64) -> pb::MrrRequest {
    pb::MrrRequest {
        currency: "USD".into(),
        date: date_in(1),
        min_position: Some(min_position),
        ..Default::default()
    }
}

/// `--role` runs a subset on one data dir, one process at a time (sled): the command side
/// alone, then the projector with the query service, then the query service alone over the
/// read models as they are on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_run_a_subset_of_the_services() {
    const COMMAND: &str = "accrual.v1.CommandService";
    const QUERY: &str = "accrual.v1.QueryService";
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();

    let server = Server::start_with(dir.path(), port, &["--role", "command"]);
    let mut c = server.client().await;
    let subscribed = setup(&mut c).await;
    let channel = server.serving(COMMAND).await;
    assert_code(health_of(channel.clone(), QUERY).await, Code::NotFound);
    let services = reflected_services(port).await;
    assert!(!services.iter().any(|s| s == QUERY), "{services:?}");
    let mut q = QueryServiceClient::new(channel);
    assert_code(q.get_mrr(mrr_today(0)).await, Code::Unimplemented);
    assert!(server.terminate().success(), "exit 0 after SIGTERM");

    let server = Server::start_with(dir.path(), port, &["--role", "projector,query"]);
    let channel = server.serving(QUERY).await;
    assert_code(health_of(channel.clone(), COMMAND).await, Code::NotFound);
    let draft = pb::GetCurrentUsageRequest { subscription_id: "sub-1".into() };
    let mut c = CommandServiceClient::new(channel.clone());
    assert_code(c.get_current_usage(draft).await, Code::Unimplemented);
    let mut q = QueryServiceClient::new(channel);
    let mrr = q.get_mrr(mrr_today(subscribed)).await.unwrap().into_inner();
    assert_eq!(dec(&mrr.mrr), dec("20"), "the projector built the MRR of the command side's log");
    assert!(server.terminate().success());

    let env_role = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env("ACCRUAL_ROLE", "query")
        .env("ACCRUAL_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start accrual serve");
    let server = Server { child: env_role, port };
    let mut q = QueryServiceClient::new(server.serving(QUERY).await);
    let mrr = q.get_mrr(mrr_today(subscribed)).await.unwrap().into_inner();
    assert_eq!(dec(&mrr.mrr), dec("20"), "read models served as they are on disk");
    let unreached = q.get_mrr(mrr_today(mrr.position + 10)).await;
    assert_code(unreached, Code::Unavailable);
    assert!(server.terminate().success());
}

/// An empty or unknown role stops `accrual serve` before it opens anything, naming the value.
#[test]
fn a_bad_role_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let run = |role_flag: Option<&str>, role_env: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_accrual"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path().join("d"));
        if let Some(role) = role_flag {
            cmd.args(["--role", role]);
        }
        if let Some(role) = role_env {
            cmd.env("ACCRUAL_ROLE", role);
        }
        let out = cmd.env("RUST_BACKTRACE", "0").output().expect("run accrual serve");
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for (flag, env, named) in [
        (Some("command,qurey"), None, "\"qurey\""),
        (None, Some("projector,,query"), "\"\""),
        (Some(""), None, "is empty"),
        (None, Some("writer"), "\"writer\""),
    ] {
        let (status, stderr) = run(flag, env);
        assert!(!status.success(), "{flag:?}/{env:?} must fail: {stderr}");
        assert!(stderr.contains(named) && stderr.contains("--role"), "{flag:?}/{env:?}: {stderr}");
    }
    assert!(!dir.path().join("d").exists(), "nothing opened or created");
}
