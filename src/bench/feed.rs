//! `accrual bench feed` (issue 14): does the event feed keep up with full ingest, and what does
//! a stalled subscriber cost? A full server (child process, every role, real port, real sled)
//! is fed usage by streaming clients while:
//! 1. one subscriber (from now, its own connection) reads every event: ingest events/s and
//!    feed events/s over the same window, and how long after ingest it has them all;
//! 2. one subscriber (from position 0, small HTTP/2 windows) reads nothing: the server's RSS
//!    before it subscribed and after the whole stage, against a stage with no subscriber.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::feed_service_client::FeedServiceClient;

use super::scale::{ingest, ScaleArgs, ServerProcess};

#[derive(Args, Clone)]
pub struct FeedArgs {
    /// Usage events per stage.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Subscriptions the events are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub subscriptions: u64,
    /// Concurrent streaming ingest clients.
    #[arg(long, default_value_t = 4)]
    pub clients: u64,
    /// Keep the server's data here (must not exist) instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub async fn run(args: FeedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.events > 0 && args.subscriptions > 0 && args.clients > 0, "positive");
    let tmp = tempfile::tempdir()?;
    let data_dir = match &args.data_dir {
        Some(d) => {
            anyhow::ensure!(!d.exists(), "--data-dir {} exists: give a new path", d.display());
            d.clone()
        }
        None => tmp.path().join("data"),
    };
    let log = tmp.path().join("server.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    // A stalled subscriber is never cut off during the run: its memory is what is measured.
    let mut server = ServerProcess::start(&data_dir, port, &log, &["--feed-stall-ms", "600000"])?;
    let channel = server.serving(&url, 120).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    super::setup(CommandServiceClient::new(channel.clone()), &run_id, args.subscriptions).await?;
    let scale = ScaleArgs {
        checkpoints: vec![args.events],
        subscriptions: args.subscriptions,
        batch: 1_000,
        clients: args.clients,
        data_dir: None,
        sample_interval_ms: 250,
        catch_up_s_max: 600,
        start_s_max: 120,
    };
    let head = Arc::new(AtomicU64::new(0));
    println!(
        "feed setup events_per_stage={} subscriptions={} clients={} server_log={}",
        args.events,
        args.subscriptions,
        args.clients,
        log.display()
    );

    // Stage 0: no subscriber (the peer of stage 2's RSS).
    let rss_start = server.rss_mib();
    let started = Instant::now();
    ingest(&url, &scale, &run_id, 0..args.events, head.clone()).await?;
    let alone_per_s = args.events as f64 / started.elapsed().as_secs_f64();
    let rss_alone = server.rss_mib();
    println!(
        "feed stage=no_subscriber ingest_events_per_s={alone_per_s:.0} \
         rss_before_mib={rss_start:.0} rss_after_mib={rss_alone:.0}"
    );

    // Stage 1: one subscriber reading everything from now.
    let from = head.load(Ordering::SeqCst);
    let reader = tonic::transport::Channel::from_shared(url.clone())?.connect().await?;
    let mut feed = FeedServiceClient::new(reader);
    let request = pb::SubscribeEventsRequest { from_position: from, ..Default::default() };
    let mut stream = feed.subscribe_events(request).await?.into_inner();
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let target = from + args.events;
    let reading = tokio::spawn(async move {
        while let Some(m) = stream.message().await? {
            if let Some(pb::feed_message::Kind::Event(e)) = m.kind {
                counter.fetch_add(1, Ordering::Relaxed);
                if e.position + 1 >= target {
                    return anyhow::Ok(Instant::now());
                }
            }
        }
        anyhow::bail!("the feed ended early")
    });
    let started = Instant::now();
    ingest(&url, &scale, &run_id, args.events..2 * args.events, head.clone()).await?;
    let ingest_s = started.elapsed().as_secs_f64();
    let during = received.load(Ordering::Relaxed);
    let all_at = tokio::time::timeout(Duration::from_secs(600), reading).await???;
    let feed_s = all_at.duration_since(started).as_secs_f64();
    println!(
        "feed stage=one_subscriber ingest_events_per_s={:.0} feed_events_per_s={:.0} \
         feed_events_during_ingest={during} feed_all_after_ingest_ms={:.0}",
        args.events as f64 / ingest_s,
        args.events as f64 / feed_s,
        (feed_s - ingest_s).max(0.0) * 1000.0
    );

    // Stage 2: one subscriber that reads nothing, from the start of history.
    let small = tonic::transport::Endpoint::from_shared(url.clone())?
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await?;
    let mut stalled = FeedServiceClient::new(small);
    let stream = stalled.subscribe_events(pb::SubscribeEventsRequest::default()).await?;
    let rss_before = server.rss_mib();
    let started = Instant::now();
    ingest(&url, &scale, &run_id, 2 * args.events..3 * args.events, head.clone()).await?;
    let stalled_per_s = args.events as f64 / started.elapsed().as_secs_f64();
    let rss_after = server.rss_mib();
    println!(
        "feed stage=stalled_subscriber ingest_events_per_s={stalled_per_s:.0} \
         log_events={} rss_before_mib={rss_before:.0} rss_after_mib={rss_after:.0} \
         rss_growth_mib={:.0} rss_growth_no_subscriber_stage_mib={:.0}",
        3 * args.events,
        rss_after - rss_before,
        rss_alone - rss_start
    );
    drop(stream);
    server.stop()?;
    Ok(())
}
