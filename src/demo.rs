//! `accrual demo`: runs the whole service in-process on a temp dir with a simulated clock, drives a
//! small company (customers, plans, usage, plan changes, cancellations, payments) through the real
//! gRPC clients day by day, then prints MRR, retention, revenue and the trial balance.
//! Every random choice comes from one seeded RNG, so the same seed prints the same report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use command_service::engine::Engine;
use command_service::service::Limits;
use domain::commands::Policy;
use event_store::{EventStore, SledConfig, SledStore};
use indicatif::{ProgressBar, ProgressStyle};
use jiff::civil::Date;
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use query_service::QueryApi;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::server::{serve, ServerLimits};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Seed of every random choice: the same seed prints the same report.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Data directory (default: a temporary directory removed at exit).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Months simulated from 2025-01-01 (1..=36).
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=36))]
    months: u32,
    /// Serve and call over mutual TLS with a throwaway CA, server and client certificate
    /// generated at start (nothing is written to disk).
    #[arg(long)]
    tls: bool,
}

type Cmd = CommandServiceClient<Channel>;
type Query = QueryServiceClient<Channel>;

const ZONES: [&str; 4] = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo"];
/// Monthly plans from cheapest to priciest (upgrades move right, downgrades left).
const LADDER: [&str; 3] = ["payments", "starter", "growth"];
const USAGE_EVENTS_PER_DAY_MAX: usize = 3_000;
const CUSTOMERS_FULL: u32 = 200;

/// One customer as the driver sees it.
struct Customer {
    id: String,
    arrival_day: usize,
    /// (subscription id, plan code) of the live subscription.
    sub: Option<(String, &'static str)>,
    subs_started: u32,
    churned: bool,
}

/// A payment the driver will record on `day`.
struct Due {
    day: usize,
    invoice_id: String,
    amount: String,
    /// Failures still to happen before success.
    failures_left: u32,
    /// After the failures, no payment: the invoice ends uncollectible.
    write_off: bool,
}

#[derive(Default)]
struct Stats {
    commands: u64,
    rejected_commands: u64,
    usage_accepted: u64,
    usage_rejected: u64,
    invoices: u64,
    credit_notes: u64,
    coupons_applied: u64,
    one_off_invoices: u64,
    wallets_opened: u64,
    wallet_top_ups: u64,
    last_position: u64,
}

struct Sim {
    rng: StdRng,
    /// Which invoices get a credit note: a stream of its own, so the rest of the simulation
    /// draws what it drew before credit notes existed.
    notes_rng: StdRng,
    clock: Arc<AtomicI64>,
    cmd: Cmd,
    start: Date,
    customers: Vec<Customer>,
    dues: Vec<Due>,
    sample_invoice: Option<String>,
    /// The first invoice a coupon discounted.
    sample_discounted: Option<String>,
    /// The wallets opened, in order (the report shows the first whose purchase was paid).
    wallets: Vec<String>,
    stats: Stats,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = args.data_dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let start = jiff::civil::date(2025, 1, 1);
    let clock = Arc::new(AtomicI64::new(micros_at(start)?));
    let (stop_tx, stop_rx) = watch::channel(false);
    let certs = if args.tls { Some(crate::tls::Throwaway::generate()?) } else { None };
    let server_tls = certs.as_ref().map(|c| c.server_config()).transpose()?;
    let (addr, server) = start_service(&dir, clock.clone(), stop_rx, server_tls).await?;
    let channel = match &certs {
        Some(certs) => {
            Channel::from_shared(format!("https://{addr}"))?.tls_config(certs.client_config())?
        }
        None => Channel::from_shared(format!("http://{addr}"))?,
    };
    let channel = channel.connect().await?;
    let end = start.checked_add(jiff::Span::new().months(args.months))?;
    let mut sim = Sim::new(args.seed, clock, CommandServiceClient::new(channel.clone()), start);
    sim.setup(end).await?;
    sim.simulate(end).await?;
    let mut q = QueryServiceClient::new(channel);
    let balanced = report(&mut q, &sim, end).await?;
    let _ = stop_tx.send(true);
    server.await??;
    anyhow::ensure!(balanced, "trial balance does not balance");
    Ok(())
}

fn micros_at(day: Date) -> anyhow::Result<i64> {
    let at = day.at(12, 0, 0, 0).to_zoned(jiff::tz::TimeZone::UTC)?;
    Ok(at.timestamp().as_microsecond())
}

/// Starts store, engine, projections and the gRPC server on 127.0.0.1:0 with the shared clock
/// (over TLS with `tls`); `accrual bench anomalies` drives the same service.
pub(crate) async fn start_service(
    dir: &std::path::Path,
    clock: Arc<AtomicI64>,
    stop: watch::Receiver<bool>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let mut config = SledConfig::new(dir.join("log"));
    let store_clock = clock.clone();
    config.clock = Arc::new(move || store_clock.load(Ordering::SeqCst));
    let store: Arc<dyn EventStore> = Arc::new(SledStore::open(config)?);
    let engine_clock: command_service::engine::Clock = Arc::new(move || {
        jiff::Timestamp::from_microsecond(clock.load(Ordering::SeqCst)).expect("clock in range")
    });
    let engine = Engine::open(store.clone(), Policy::default(), engine_clock)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let (models, projectors) = crate::serve::start_projections(dir, store, stop.clone())?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut stop_signal = stop;
    let shutdown = async move {
        let _ = stop_signal.wait_for(|s| *s).await;
    };
    let query = Some(QueryApi::new(models));
    let task = tokio::spawn(async move {
        let limits = (Limits::default(), ServerLimits { tls, ..ServerLimits::default() });
        let engine = Some(Arc::new(engine));
        serve(listener, engine, query, None, None, limits.0, limits.1, shutdown).await?;
        for p in projectors {
            p.await?;
        }
        Ok(())
    });
    Ok((addr, task))
}

/// The simulated clock's microseconds on the wire (whole seconds).
pub(crate) fn timestamp(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: us / 1_000_000, nanos: 0 }
}

fn key(parts: std::fmt::Arguments) -> String {
    parts.to_string()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_default()
}

fn money(s: &str) -> String {
    format!("{:.2}", dec(s))
}

impl Sim {
    fn new(seed: u64, clock: Arc<AtomicI64>, cmd: Cmd, start: Date) -> Sim {
        Sim {
            rng: StdRng::seed_from_u64(seed),
            notes_rng: StdRng::seed_from_u64(seed ^ NOTES_SEED_SALT),
            clock,
            cmd,
            start,
            customers: Vec::new(),
            dues: Vec::new(),
            sample_invoice: None,
            sample_discounted: None,
            wallets: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn day(&self, n: usize) -> Date {
        self.start.checked_add(jiff::Span::new().days(n as i64)).expect("date in range")
    }

    fn now(&self) -> prost_types::Timestamp {
        timestamp(self.clock.load(Ordering::SeqCst))
    }

    fn ack(&mut self, ack: Option<&pb::CommandAck>) {
        self.stats.commands += 1;
        if let Some(a) = ack {
            self.stats.last_position = self.stats.last_position.max(a.position);
        }
    }

    fn rejected(&mut self) {
        self.stats.commands += 1;
        self.stats.rejected_commands += 1;
    }

    /// Metrics, plans and the customers' arrival days.
    async fn setup(&mut self, end: Date) -> anyhow::Result<()> {
        for (code, agg, prop) in [
            ("api_calls", "sum", "calls"),
            ("storage_gb", "max", "gb"),
            ("payment_volume", "sum", "amount"),
        ] {
            let req = pb::DefineMetricRequest {
                idempotency_key: key(format_args!("metric-{code}")),
                code: code.into(),
                name: code.replace('_', " "),
                aggregation: agg.into(),
                property: prop.into(),
                allow_negative: false,
            };
            let ack = self.cmd.define_metric(req).await?.into_inner();
            self.ack(Some(&ack));
        }
        for plan in plans() {
            let ack = self.cmd.publish_plan(plan).await?.into_inner().ack;
            self.ack(ack.as_ref());
        }
        let welcome = pb::DefineCouponRequest {
            idempotency_key: key(format_args!("coupon-{WELCOME_COUPON}")),
            code: WELCOME_COUPON.into(),
            kind: "percentage".into(),
            percent: "20".into(),
            frequency: "recurring".into(),
            periods: 3,
            ..Default::default()
        };
        let ack = self.cmd.define_coupon(welcome).await?.into_inner();
        self.ack(Some(&ack));
        let onboarding = pb::DefineAddOnRequest {
            idempotency_key: key(format_args!("add-on-{ONBOARDING_ADD_ON}")),
            code: ONBOARDING_ADD_ON.into(),
            name: "Onboarding workshop".into(),
            currency: "USD".into(),
            amount: "250.00".into(),
            description: String::new(),
        };
        let ack = self.cmd.define_add_on(onboarding).await?.into_inner();
        self.ack(Some(&ack));
        self.arrivals(end);
        Ok(())
    }

    /// Some new customers get the welcome coupon (20 % off their first three invoices) and
    /// some buy the onboarding workshop (a one-off invoice), drawn from the notes' stream.
    async fn extras(&mut self, i: usize) -> anyhow::Result<()> {
        let id = self.customers[i].id.clone();
        if self.notes_rng.gen::<f64>() < WELCOME_CHANCE {
            let req = pb::CustomerCouponRequest {
                idempotency_key: key(format_args!("welcome-{id}")),
                customer_id: id.clone(),
                coupon_code: WELCOME_COUPON.into(),
            };
            let ack = self.cmd.apply_coupon(req).await?.into_inner();
            self.ack(Some(&ack));
            self.stats.coupons_applied += 1;
        }
        if self.notes_rng.gen::<f64>() < ONBOARDING_CHANCE {
            let req = pb::IssueOneOffInvoiceRequest {
                idempotency_key: key(format_args!("onboarding-{id}")),
                customer_id: id.clone(),
                lines: vec![pb::OneOffLine {
                    add_on_code: ONBOARDING_ADD_ON.into(),
                    ..Default::default()
                }],
            };
            let r = self.cmd.issue_one_off_invoice(req).await?.into_inner();
            self.ack(r.ack.as_ref());
            self.stats.one_off_invoices += 1;
            self.issued(&r.invoice.into_iter().collect::<Vec<_>>());
        }
        if self.notes_rng.gen::<f64>() < WALLET_CHANCE {
            self.wallet(&id).await?;
        }
        Ok(())
    }

    /// A prepaid wallet: granted welcome credits that expire, and paid credits bought on an
    /// invoice (usable once it is paid; they expire too, so unused ones become breakage).
    async fn wallet(&mut self, customer_id: &str) -> anyhow::Result<()> {
        let wallet_id = format!("wal-{customer_id}");
        let open = pb::OpenWalletRequest {
            idempotency_key: key(format_args!("open-{wallet_id}")),
            wallet_id: wallet_id.clone(),
            customer_id: customer_id.into(),
            name: "Prepaid usage".into(),
            low_balance_threshold: WALLET_LOW_BALANCE.into(),
            ..Default::default()
        };
        let ack = self.cmd.open_wallet(open).await?.into_inner();
        self.ack(Some(&ack));
        self.stats.wallets_opened += 1;
        self.wallets.push(wallet_id.clone());
        let today = self.day(self.today_index());
        for (kind, credits, days) in WALLET_TOP_UPS {
            let expires_on = today.checked_add(jiff::Span::new().days(days))?;
            let req = pb::TopUpWalletRequest {
                idempotency_key: key(format_args!("top-up-{wallet_id}-{kind}")),
                wallet_id: wallet_id.clone(),
                kind: kind.into(),
                credits: credits.into(),
                expires_on: expires_on.to_string(),
                usable_at_once: false,
            };
            let r = self.cmd.top_up_wallet(req).await?.into_inner();
            self.ack(r.ack.as_ref());
            self.stats.wallet_top_ups += 1;
            self.issued(&r.invoice.into_iter().collect::<Vec<_>>());
        }
        Ok(())
    }

    fn arrivals(&mut self, end: Date) {
        let days = (end - self.start).get_days().max(1) as usize;
        let months = (days as u32 / 30).max(1);
        let count = (CUSTOMERS_FULL * months / 14).clamp(10, CUSTOMERS_FULL * 3) as usize;
        let last_arrival = (days * 9 / 10).max(1);
        let mut days_of: Vec<usize> =
            (0..count).map(|_| self.rng.gen_range(0..last_arrival)).collect();
        days_of.sort_unstable();
        self.customers = days_of
            .into_iter()
            .enumerate()
            .map(|(i, arrival_day)| Customer {
                id: format!("cus-{:04}", i + 1),
                arrival_day,
                sub: None,
                subs_started: 0,
                churned: false,
            })
            .collect();
    }

    async fn simulate(&mut self, end: Date) -> anyhow::Result<()> {
        let days = (end - self.start).get_days().max(1) as usize;
        let bar = ProgressBar::new(days as u64);
        bar.set_style(ProgressStyle::with_template(
            "{spinner} simulating {pos}/{len} days [{bar:40}] {msg}",
        )?);
        for day in 0..days {
            self.clock.store(micros_at(self.day(day))?, Ordering::SeqCst);
            self.arrive(day).await?;
            self.lifecycle(day).await?;
            self.payments(day).await?;
            self.usage(day).await?;
            self.billing(day).await?;
            bar.set_message(format!("{} invoices", self.stats.invoices));
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(())
    }

    async fn arrive(&mut self, day: usize) -> anyhow::Result<()> {
        let new: Vec<usize> =
            (0..self.customers.len()).filter(|&i| self.customers[i].arrival_day == day).collect();
        for i in new {
            let req = pb::RegisterCustomerRequest {
                idempotency_key: key(format_args!("reg-{}", self.customers[i].id)),
                customer_id: self.customers[i].id.clone(),
                name: format!("Company {}", i + 1),
                currency: "USD".into(),
                time_zone: ZONES[self.rng.gen_range(0..ZONES.len())].into(),
                tax_rate: [0, 5, 8, 10, 19, 20][self.rng.gen_range(0..6)].to_string(),
            };
            match self.cmd.register_customer(req).await {
                Ok(r) => self.ack(Some(&r.into_inner())),
                Err(_) => self.rejected(),
            }
            self.extras(i).await?;
            let plan = ["starter", "starter", "growth", "growth", "scale", "payments"]
                [self.rng.gen_range(0..6)];
            self.start_sub(i, plan).await;
        }
        Ok(())
    }

    async fn start_sub(&mut self, i: usize, plan: &'static str) {
        let c = &mut self.customers[i];
        c.subs_started += 1;
        let sub_id = format!("sub-{}-{}", &c.id[4..], c.subs_started);
        let req = pb::StartSubscriptionRequest {
            idempotency_key: key(format_args!("start-{sub_id}")),
            subscription_id: sub_id.clone(),
            customer_id: c.id.clone(),
            plan_code: plan.into(),
            ..Default::default()
        };
        match self.cmd.start_subscription(req).await {
            Ok(r) => {
                let r = r.into_inner();
                self.customers[i].sub = Some((sub_id, plan));
                self.customers[i].churned = false;
                self.issued(&r.invoices);
                self.ack(r.ack.as_ref());
            }
            Err(_) => self.rejected(),
        }
    }

    /// Upgrades, downgrades, cancellations and reactivations of arrived customers.
    async fn lifecycle(&mut self, day: usize) -> anyhow::Result<()> {
        for i in 0..self.customers.len() {
            if self.customers[i].arrival_day >= day {
                continue;
            }
            let roll: f64 = self.rng.gen();
            match self.customers[i].sub.clone() {
                Some((sub, plan)) => self.maybe_change(i, &sub, plan, roll).await,
                None if self.customers[i].churned && roll < 0.004 => {
                    let plan = LADDER[self.rng.gen_range(0..LADDER.len())];
                    self.start_sub(i, plan).await;
                }
                None => {}
            }
        }
        Ok(())
    }

    async fn maybe_change(&mut self, i: usize, sub: &str, plan: &'static str, roll: f64) {
        let rung = LADDER.iter().position(|p| *p == plan);
        match rung {
            Some(r) if roll < 0.004 && r + 1 < LADDER.len() => {
                self.change_plan(i, sub, LADDER[r + 1]).await
            }
            Some(r) if (0.004..0.006).contains(&roll) && r > 0 => {
                self.change_plan(i, sub, LADDER[r - 1]).await
            }
            _ if (0.006..0.009).contains(&roll) => {
                let immediately = self.rng.gen_bool(0.4);
                self.cancel(i, sub, immediately).await
            }
            _ => {}
        }
    }

    async fn change_plan(&mut self, i: usize, sub: &str, to: &'static str) {
        let req = pb::ChangePlanRequest {
            idempotency_key: key(format_args!("change-{sub}-{}", self.now().seconds)),
            subscription_id: sub.into(),
            plan_code: to.into(),
            ..Default::default()
        };
        match self.cmd.change_plan(req).await {
            Ok(r) => {
                let r = r.into_inner();
                self.customers[i].sub = Some((sub.to_string(), to));
                self.issued(&r.invoices);
                self.ack(r.ack.as_ref());
            }
            Err(_) => self.rejected(),
        }
    }

    async fn cancel(&mut self, i: usize, sub: &str, immediately: bool) {
        let req = pb::CancelSubscriptionRequest {
            idempotency_key: key(format_args!("cancel-{sub}")),
            subscription_id: sub.into(),
            immediately,
            ..Default::default()
        };
        match self.cmd.cancel_subscription(req).await {
            Ok(r) => {
                let r = r.into_inner();
                self.customers[i].sub = None;
                self.customers[i].churned = true;
                self.issued(&r.invoices);
                self.ack(r.ack.as_ref());
            }
            Err(_) => self.rejected(),
        }
    }

    /// Schedules the payment of each issued invoice with something to pay.
    fn issued(&mut self, invoices: &[pb::Invoice]) {
        let today = self.today_index();
        for inv in invoices {
            self.stats.invoices += 1;
            if self.sample_invoice.is_none() && inv.reason == "period_close" && inv.lines.len() > 1
            {
                self.sample_invoice = Some(inv.invoice_id.clone());
            }
            if self.sample_discounted.is_none() && !inv.coupons.is_empty() {
                self.sample_discounted = Some(inv.invoice_id.clone());
            }
            if inv.status != "open" || dec(&inv.amount_due) <= Decimal::ZERO {
                continue;
            }
            let roll: f64 = self.rng.gen();
            let failures_left = if roll < 0.85 {
                0
            } else if roll < 0.96 {
                1
            } else {
                3
            };
            self.dues.push(Due {
                day: today + self.rng.gen_range(1..=5),
                invoice_id: inv.invoice_id.clone(),
                amount: inv.amount_due.clone(),
                failures_left,
                write_off: failures_left == 3,
            });
        }
    }

    fn today_index(&self) -> usize {
        let us = self.clock.load(Ordering::SeqCst);
        let ts = jiff::Timestamp::from_microsecond(us).expect("clock in range");
        let date = ts.to_zoned(jiff::tz::TimeZone::UTC).date();
        (date - self.start).get_days().max(0) as usize
    }

    /// Records the payments due today, concurrently (they touch different invoices, so the
    /// engine group-commits them); outcomes are handled in a fixed order.
    async fn payments(&mut self, day: usize) -> anyhow::Result<()> {
        let (due, later): (Vec<Due>, Vec<Due>) =
            std::mem::take(&mut self.dues).into_iter().partition(|d| d.day <= day);
        self.dues = later;
        let now = self.now();
        let calls = due.iter().map(|d| {
            let mut cmd = self.cmd.clone();
            let req = payment_request(d, day, now);
            async move { cmd.record_payment(req).await }
        });
        let replies = futures::future::join_all(calls).await;
        for (mut d, reply) in due.into_iter().zip(replies) {
            match reply {
                Ok(r) => self.ack(r.into_inner().ack.as_ref()),
                Err(_) => self.rejected(),
            }
            if d.failures_left > 0 {
                d.failures_left -= 1;
                d.day = day + 1;
                if !(d.write_off && d.failures_left == 0) {
                    self.dues.push(d);
                }
            }
        }
        Ok(())
    }

    /// A few usage events per live subscription (started before today), one IngestUsage batch.
    async fn usage(&mut self, day: usize) -> anyhow::Result<()> {
        let now = self.now();
        let mut events = Vec::new();
        for i in 0..self.customers.len() {
            let Some((sub, plan)) = self.customers[i].sub.clone() else { continue };
            if self.customers[i].arrival_day >= day || events.len() >= USAGE_EVENTS_PER_DAY_MAX {
                continue;
            }
            for n in 0..self.rng.gen_range(1..=3) {
                let (metric, prop, value) = self.usage_value(plan);
                let at = prost_types::Timestamp {
                    seconds: now.seconds - self.rng.gen_range(0..3_600),
                    nanos: 0,
                };
                events.push(pb::UsageEvent {
                    subscription_id: sub.clone(),
                    transaction_id: format!("tx-{day}-{i}-{n}"),
                    metric_code: metric.into(),
                    occurred_at: Some(at),
                    properties: [(prop.to_string(), value)].into_iter().collect(),
                });
            }
        }
        if !events.is_empty() {
            self.ingest(events).await?;
        }
        Ok(())
    }

    fn usage_value(&mut self, plan: &str) -> (&'static str, &'static str, String) {
        match plan {
            "growth" => ("storage_gb", "gb", self.rng.gen_range(5..120).to_string()),
            "payments" => {
                let cents: u32 = self.rng.gen_range(500..500_000);
                ("payment_volume", "amount", format!("{}.{:02}", cents / 100, cents % 100))
            }
            _ => ("api_calls", "calls", self.rng.gen_range(100..2_000).to_string()),
        }
    }

    async fn ingest(&mut self, events: Vec<pb::UsageEvent>) -> anyhow::Result<()> {
        let batch = pb::UsageBatch { events };
        let mut replies =
            self.cmd.ingest_usage(tokio_stream::iter(vec![batch])).await?.into_inner();
        while let Some(r) = replies.message().await? {
            self.stats.usage_accepted += u64::from(r.accepted + r.duplicates);
            self.stats.usage_rejected += u64::from(r.rejected);
            let last = r.results.iter().map(|x| x.position).max().unwrap_or(0);
            self.stats.last_position = self.stats.last_position.max(last);
        }
        Ok(())
    }

    async fn billing(&mut self, day: usize) -> anyhow::Result<()> {
        let req = pb::RunBillingRequest {
            idempotency_key: key(format_args!("billing-{day}")),
            as_of: Some(self.now()),
        };
        let mut r = self.cmd.run_billing(req).await?.into_inner();
        self.ack(r.ack.as_ref());
        for invoice in &mut r.invoices {
            self.maybe_credit(invoice).await?;
        }
        self.issued(&r.invoices);
        Ok(())
    }

    /// Now and then (a [`CREDIT_NOTE_CHANCE`] of open invoices) a service credit: an `offset`
    /// credit note for a tenth of the invoice's largest line; `invoice` becomes the credited
    /// invoice (its amount due is what the customer then pays).
    async fn maybe_credit(&mut self, invoice: &mut pb::Invoice) -> anyhow::Result<()> {
        if invoice.status != "open" || self.notes_rng.gen::<f64>() >= CREDIT_NOTE_CHANCE {
            return Ok(());
        }
        let currency = domain::money::Currency::parse(&invoice.currency)?;
        let largest = invoice.lines.iter().enumerate().max_by_key(|(_, l)| dec(&l.amount));
        let Some((index, line)) = largest else { return Ok(()) };
        let tenth = (dec(&line.amount) / Decimal::TEN).round_dp(currency.minor_units());
        // An offset may not exceed what is due (credit balance and wallet credits may have
        // paid most of the invoice): the note's total is the amount plus its tax.
        let rate = dec(&invoice.tax_rate) / Decimal::ONE_HUNDRED;
        if tenth <= Decimal::ZERO || tenth * (Decimal::ONE + rate) > dec(&invoice.amount_due) {
            return Ok(());
        }
        let req = pb::IssueCreditNoteRequest {
            idempotency_key: key(format_args!("credit-{}", invoice.invoice_id)),
            invoice_id: invoice.invoice_id.clone(),
            lines: vec![pb::CreditNoteLineRequest {
                line_index: index as u32,
                amount: tenth.to_string(),
            }],
            reason: "service credit: degraded performance".into(),
            destination: "offset".into(),
        };
        let reply = self.cmd.issue_credit_note(req).await?.into_inner();
        self.ack(reply.ack.as_ref());
        self.stats.credit_notes += 1;
        if let Some(credited) = reply.invoice {
            *invoice = credited;
        }
        Ok(())
    }
}

/// The coupon some new customers get: 20 % off three invoices.
const WELCOME_COUPON: &str = "welcome-20";
/// Share of new customers that get [`WELCOME_COUPON`].
const WELCOME_CHANCE: f64 = 0.25;
/// The add-on some new customers buy on a one-off invoice.
const ONBOARDING_ADD_ON: &str = "onboarding";
/// Share of new customers that buy [`ONBOARDING_ADD_ON`].
const ONBOARDING_CHANCE: f64 = 0.15;

/// Share of new customers that open a prepaid wallet.
const WALLET_CHANCE: f64 = 0.2;
/// The wallets' low-balance threshold (USD).
const WALLET_LOW_BALANCE: &str = "25.00";
/// A new wallet's top-ups: (kind, credits at 1.00 each, days until they expire).
const WALLET_TOP_UPS: [(&str, &str, i64); 2] = [("granted", "20", 45), ("paid", "150", 90)];

/// Share of open invoices that get a service credit (an `offset` credit note).
const CREDIT_NOTE_CHANCE: f64 = 0.05;
/// Mixed into the seed of the credit notes' random stream.
const NOTES_SEED_SALT: u64 = 0xC2ED_170F_u64;

fn payment_request(d: &Due, day: usize, now: prost_types::Timestamp) -> pb::RecordPaymentRequest {
    let succeeded = d.failures_left == 0;
    pb::RecordPaymentRequest {
        idempotency_key: format!("pay-{}-{day}", d.invoice_id),
        invoice_id: d.invoice_id.clone(),
        succeeded,
        amount: if succeeded { d.amount.clone() } else { String::new() },
        reason: if succeeded { String::new() } else { "card_declined".into() },
        occurred_at: Some(now),
    }
}

fn plan(
    code: &str,
    interval: &str,
    fee: &str,
    trial: u32,
    charge: Option<pb::Charge>,
) -> pb::PublishPlanRequest {
    pb::PublishPlanRequest {
        idempotency_key: format!("plan-{code}"),
        code: code.into(),
        name: code.to_uppercase(),
        currency: "USD".into(),
        interval: interval.into(),
        base_fee: fee.into(),
        base_fee_in_advance: true,
        trial_days: trial,
        minimum_commitment: String::new(),
        progressive_thresholds: Vec::new(),
        progressive_every: String::new(),
        charges: charge.into_iter().collect(),
    }
}

fn tier(up_to: &str, price: &str) -> pb::Tier {
    pb::Tier { up_to: up_to.into(), unit_price: price.into(), flat_fee: String::new() }
}

fn plans() -> Vec<pb::PublishPlanRequest> {
    use pb::charge::Model;
    let charge = |metric: &str, model| pb::Charge {
        metric_code: metric.into(),
        pay_in_advance: false,
        model: Some(model),
    };
    let graduated = pb::TieredModel {
        tiers: vec![tier("10000", "0"), tier("50000", "0.002"), tier("", "0.001")],
    };
    let package = pb::PackageModel {
        package_size: "10".into(),
        package_price: "5".into(),
        free_units: "20".into(),
    };
    let percentage = pb::PercentageModel {
        rate: "2.9".into(),
        fixed_amount: "0.30".into(),
        ..Default::default()
    };
    let standard = pb::StandardModel { unit_price: "0.001".into() };
    let mut scale =
        plan("scale", "yearly", "1990", 0, Some(charge("api_calls", Model::Standard(standard))));
    scale.minimum_commitment = "2400".into();
    vec![
        plan(
            "starter",
            "monthly",
            "29",
            14,
            Some(charge("api_calls", Model::Graduated(graduated))),
        ),
        plan("growth", "monthly", "99", 14, Some(charge("storage_gb", Model::Package(package)))),
        scale,
        plan(
            "payments",
            "monthly",
            "0",
            0,
            Some(charge("payment_volume", Model::Percentage(percentage))),
        ),
    ]
}

/// Month ends from the first simulated month to the last.
fn month_ends(start: Date, end: Date) -> Vec<Date> {
    let mut out = Vec::new();
    let mut m = start;
    while m < end && out.len() < 48 {
        let next = m.checked_add(jiff::Span::new().months(1)).expect("date in range");
        out.push(next.yesterday().expect("date in range"));
        m = next;
    }
    out
}

async fn report(q: &mut Query, sim: &Sim, end: Date) -> anyhow::Result<bool> {
    let pos = Some(sim.stats.last_position);
    let s = &sim.stats;
    println!(
        "Accrual demo: {} customers, {} days from {}",
        sim.customers.len(),
        (end - sim.start).get_days(),
        sim.start
    );
    println!(
        "commands {} (rejected {}), usage events {} (rejected {}), invoices {} (one-off {}), \
         credit notes {}, coupons applied {}, wallets {} (top-ups {})",
        s.commands,
        s.rejected_commands,
        s.usage_accepted,
        s.usage_rejected,
        s.invoices,
        s.one_off_invoices,
        s.credit_notes,
        s.coupons_applied,
        s.wallets_opened,
        s.wallet_top_ups
    );
    let ends = month_ends(sim.start, end);
    mrr_report(q, sim.start, &ends, pos).await?;
    retention_report(q, sim.start, &ends, pos).await?;
    balances_report(q, &ends, pos).await?;
    let balanced = trial_balance(q, &ends, pos).await?;
    if let Some(id) = &sim.sample_invoice {
        invoice_report(q, id, pos).await?;
    }
    if let Some(id) =
        sim.sample_discounted.as_ref().filter(|d| Some(*d) != sim.sample_invoice.as_ref())
    {
        invoice_report(q, id, pos).await?;
    }
    if let Some(last) = ends.last() {
        wallet_report(q, &sim.wallets, *last, pos).await?;
    }
    Ok(balanced)
}

async fn mrr_report(
    q: &mut Query,
    start: Date,
    ends: &[Date],
    pos: Option<u64>,
) -> anyhow::Result<()> {
    let last = *ends.last().expect("one month at least");
    let req = pb::MrrMovementsRequest {
        as_recorded_at: None,
        currency: "USD".into(),
        from: start.to_string(),
        to: last.to_string(),
        granularity: "month".into(),
        min_position: pos,
    };
    let moves = q.list_mrr_movements(req).await?.into_inner();
    println!("\nMRR by month (USD)");
    println!(
        "{:<8} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>12}",
        "month", "new", "expansion", "contraction", "churn", "reactivation", "net", "MRR"
    );
    for bucket in &moves.buckets {
        let get = |k: &str| {
            let t = bucket.totals.iter().find(|t| t.kind == k);
            t.map(|t| format!("{}/{}", t.count, money(&t.amount))).unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<8} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>12}",
            &bucket.start[..7],
            get("new"),
            get("expansion"),
            get("contraction"),
            get("churn"),
            get("reactivation"),
            money(&bucket.net),
            money(&bucket.mrr)
        );
    }
    println!(
        "(months with movements; count/amount per movement; MRR at the month end; final {})",
        money(&moves.mrr_at_to)
    );
    Ok(())
}

async fn retention_report(
    q: &mut Query,
    start: Date,
    ends: &[Date],
    pos: Option<u64>,
) -> anyhow::Result<()> {
    let last = *ends.last().expect("one month at least");
    let from = last.checked_sub(jiff::Span::new().months(12))?.max(start);
    let req = pb::RetentionRequest {
        as_recorded_at: None,
        currency: "USD".into(),
        start: from.to_string(),
        end: last.to_string(),
        min_position: pos,
    };
    let r = q.get_retention(req).await?.into_inner();
    let pct = |s: &str| {
        if s.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.1} %", dec(s) * Decimal::ONE_HUNDRED)
        }
    };
    println!(
        "\nRetention {from} .. {last}: NRR {}, GRR {} (cohort {}, MRR {} -> {})",
        pct(&r.nrr),
        pct(&r.grr),
        r.cohort_size,
        money(&r.mrr_start),
        money(&r.mrr_end)
    );
    Ok(())
}

/// The first wallet whose purchase was paid (else the first), and what wallets did to the
/// books at `last` (a month end).
async fn wallet_report(
    q: &mut Query,
    ids: &[String],
    last: Date,
    pos: Option<u64>,
) -> anyhow::Result<()> {
    let mut shown = None;
    for id in ids {
        let view = q.get_wallet(pb::WalletQuery { wallet_id: id.clone(), min_position: pos });
        let view = view.await?.into_inner();
        let paid = view.wallet.as_ref().is_some_and(|w| dec(&w.pending).is_zero());
        if shown.is_none() || paid {
            shown = Some((id.clone(), view));
        }
        if paid {
            break;
        }
    }
    let Some((id, view)) = shown else { return Ok(()) };
    let w = view.wallet.clone().unwrap_or_default();
    println!(
        "\nWallet {id} ({}): balance {} {}, pending {}, ongoing balance {} (current usage {}), \
         {} top-ups{}",
        w.customer_id,
        w.balance,
        w.currency,
        w.pending,
        view.ongoing_balance,
        view.ongoing_usage,
        w.top_ups,
        if w.low { ", below its low-balance threshold" } else { "" }
    );
    let page = pb::WalletTransactionsQuery {
        wallet_id: id.clone(),
        min_position: pos,
        page_size: 20,
        ..Default::default()
    };
    for t in q.list_wallet_transactions(page).await?.into_inner().transactions {
        println!(
            "  {:<12} {:>8} {:>10} {:>10} {}",
            t.kind, t.credit_kind, t.amount, t.balance_after, t.invoice_id
        );
    }
    let req = pb::AsOfRequest { as_recorded_at: None, as_of: last.to_string(), min_position: pos };
    let r = q.get_balances(req).await?.into_inner();
    if let Some(b) = r.balances.iter().find(|b| b.currency == "USD") {
        let breakage =
            b.recognized_revenue.get("breakage").cloned().unwrap_or_else(|| "0.00".into());
        println!(
            "All wallets at {last}: prepaid credits (liability) {}, granted credits used \
             (discounts) {}, breakage revenue {breakage}",
            b.prepaid_credits, b.discounts
        );
    }
    Ok(())
}

async fn balances_report(q: &mut Query, ends: &[Date], pos: Option<u64>) -> anyhow::Result<()> {
    println!("\nRevenue by month (USD): recognized in the month, balances at its end");
    println!(
        "{:<11} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>10}",
        "month end",
        "recognized",
        "of it usage",
        "deferred",
        "unbilled",
        "receivable",
        "cash",
        "bad debt"
    );
    let (mut total_before, mut usage_before) = (Decimal::ZERO, Decimal::ZERO);
    for day in ends {
        let req =
            pb::AsOfRequest { as_recorded_at: None, as_of: day.to_string(), min_position: pos };
        let r = q.get_balances(req).await?.into_inner();
        let Some(b) = r.balances.iter().find(|b| b.currency == "USD") else { continue };
        let total = dec(&b.total_recognized_revenue);
        let usage = b.recognized_revenue.get("usage").map_or(Decimal::ZERO, |u| dec(u));
        println!(
            "{:<11} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>10}",
            day.to_string(),
            format!("{:.2}", total - total_before),
            format!("{:.2}", usage - usage_before),
            money(&b.deferred_revenue),
            money(&b.unbilled_receivable),
            money(&b.accounts_receivable),
            money(&b.cash),
            money(&b.bad_debt)
        );
        (total_before, usage_before) = (total, usage);
    }
    Ok(())
}

async fn trial_balance(q: &mut Query, ends: &[Date], pos: Option<u64>) -> anyhow::Result<bool> {
    let last = *ends.last().expect("one month at least");
    let req = pb::AsOfRequest { as_recorded_at: None, as_of: last.to_string(), min_position: pos };
    let r = q.get_trial_balance(req).await?.into_inner();
    println!("\nTrial balance as of {last}");
    let mut sums: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    for row in &r.rows {
        println!(
            "{:<4} {:<24} {:>14} {:>14}",
            row.currency,
            row.account,
            money(&row.debit),
            money(&row.credit)
        );
        let e = sums.entry(row.currency.clone()).or_default();
        e.0 += dec(&row.debit);
        e.1 += dec(&row.credit);
    }
    let mut ok = !sums.is_empty();
    for (cur, (d, c)) in &sums {
        let verdict = if d == c { "balances" } else { "DOES NOT BALANCE" };
        ok &= d == c;
        println!(
            "{cur:<4} {:<24} {:>14} {:>14}  {verdict}",
            "total",
            format!("{d:.2}"),
            format!("{c:.2}")
        );
    }
    println!("trial balance: {}", if ok { "balances" } else { "DOES NOT BALANCE" });
    Ok(ok)
}

async fn invoice_report(q: &mut Query, id: &str, pos: Option<u64>) -> anyhow::Result<()> {
    let req = pb::InvoiceQuery { as_recorded_at: None, invoice_id: id.into(), min_position: pos };
    let Some(inv) = q.get_invoice(req).await?.into_inner().invoice else { return Ok(()) };
    println!(
        "\nSample invoice {} ({}, {}), period {} .. {}, status {}",
        inv.invoice_id, inv.customer_id, inv.reason, inv.period_start, inv.period_end, inv.status
    );
    for l in &inv.lines {
        let discount = dec(&l.discount);
        let note =
            if discount.is_zero() { String::new() } else { format!("  (coupon -{discount:.2})") };
        println!(
            "  {:<26} {:<34} {:>12} {:>10}{note}",
            l.kind,
            l.description,
            l.units,
            money(&l.amount)
        );
    }
    println!(
        "  subtotal {}  tax {} ({} %)  total {}  paid {}",
        money(&inv.subtotal),
        money(&inv.tax),
        inv.tax_rate,
        money(&inv.total),
        money(&inv.amount_paid)
    );
    for u in &inv.coupons {
        println!("  coupon {} gave {}", u.coupon_code, money(&u.amount));
    }
    Ok(())
}
