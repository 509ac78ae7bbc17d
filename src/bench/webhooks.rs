//! `accrual bench webhooks` (issue 14): deliveries per second to a fast local receiver. A full
//! server (child process, every role, `--webhooks-allow-loopback`) is fed usage; one endpoint
//! registered from the log's head receives every event from a receiver in this process that
//! answers 200 at once. Prints the ingest rate and the delivery rate over the same events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::webhook_service_client::WebhookServiceClient;

use super::scale::{ingest, ScaleArgs, ServerProcess};

#[derive(Args, Clone)]
pub struct WebhooksArgs {
    /// Usage events (each one delivery).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Subscriptions the events are spread over.
    #[arg(long, default_value_t = 100)]
    pub subscriptions: u64,
}

/// A receiver that counts deliveries and answers 200.
async fn receiver(count: Arc<AtomicU64>) -> anyhow::Result<String> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/hook",
        post(move || {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

pub async fn run(args: WebhooksArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.events > 0 && args.subscriptions > 0, "positive counts");
    let tmp = tempfile::tempdir()?;
    let log = tmp.path().join("server.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let data = tmp.path().join("data");
    let mut server = ServerProcess::start(&data, port, &log, &["--webhooks-allow-loopback"])?;
    let channel = server.serving(&url, 120).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    super::setup(CommandServiceClient::new(channel.clone()), &run_id, args.subscriptions).await?;
    let count = Arc::new(AtomicU64::new(0));
    let hook = receiver(count.clone()).await?;
    let mut w = WebhookServiceClient::new(channel.clone());
    let types = vec!["usage.recorded".to_string()];
    let req = pb::CreateWebhookEndpointRequest { url: hook, types, from_position: None };
    w.create_webhook_endpoint(req).await?;
    let scale = ScaleArgs {
        checkpoints: vec![args.events],
        subscriptions: args.subscriptions,
        batch: 1_000,
        clients: 2,
        data_dir: None,
        sample_interval_ms: 250,
        catch_up_s_max: 600,
        start_s_max: 120,
    };
    let started = Instant::now();
    ingest(&url, &scale, &run_id, 0..args.events, Arc::new(AtomicU64::new(0))).await?;
    let ingest_s = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(1_800);
    while count.load(Ordering::Relaxed) < args.events {
        anyhow::ensure!(Instant::now() < deadline, "deliveries did not finish in 30 min");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_s = started.elapsed().as_secs_f64();
    println!(
        "webhooks events={} ingest_events_per_s={:.0} deliveries_per_s={:.0} \
         all_delivered_after_s={delivered_s:.1} rss_mib={:.0}",
        args.events,
        args.events as f64 / ingest_s,
        args.events as f64 / delivered_s,
        server.rss_mib()
    );
    server.stop()?;
    Ok(())
}
