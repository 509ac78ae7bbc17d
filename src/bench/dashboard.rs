//! `accrual bench dashboard`: how long each dashboard page takes on the demo's data (issue 15
//! asks for < 200 ms). `accrual demo` writes a data dir (a child process), then the dashboard
//! serves its read models in-process on 127.0.0.1:0 and each page is fetched over HTTP
//! `--rounds` times after one warm-up; per page: median, p95 and max in ms.

use std::time::Instant;

use clap::Args;

#[derive(Args, Clone)]
pub struct DashboardArgs {
    /// Months the demo simulates (its data: ~200 customers).
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=36))]
    pub months: u32,
    /// Fetches of each page.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub rounds: u32,
}

/// Pages timed, over the demo's whole window.
const PAGES: [&str; 6] = [
    "/mrr?currency=USD&from=2025-01&to=2026-02",
    "/retention?currency=USD&from=2025-01&to=2026-02",
    "/revenue?currency=USD&from=2025-01&to=2026-02",
    "/receivables?currency=USD&as_of=2026-02-28",
    "/invoices",
    "/invoices?flagged=true",
];

pub async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("accrual-bench-dashboard-").tempdir()?;
    let data = dir.path().join("demo");
    let demo = std::process::Command::new(std::env::current_exe()?)
        .args(["demo", "--months", &args.months.to_string(), "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(demo.success(), "accrual demo failed: {demo}");
    let db = projections::open_db(data.join(replay::READ_MODELS_DIR))?;
    let models = crate::serve::open_projections_on(&db, None)?;
    let board = crate::dashboard::Dashboard::new(models, None, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(board.serve(listener, async move {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::new();
    let mut first_invoice = None;
    let mut pages: Vec<String> = PAGES.iter().map(|p| p.to_string()).collect();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); pages.len() + 1];
    for round in 0..=args.rounds {
        for (i, path) in pages.clone().iter().enumerate() {
            let start = Instant::now();
            let body =
                http.get(format!("{base}{path}")).send().await?.error_for_status()?.text().await?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            if round == 0 {
                if path == "/invoices" {
                    first_invoice = first_link(&body);
                }
            } else {
                times[i].push(ms);
            }
        }
        if round == 0 {
            if let Some(id) = first_invoice.take() {
                pages.push(format!("/invoices/{id}"));
            }
        }
    }
    let _ = stop_tx.send(());
    server.await??;
    let mut worst = 0.0f64;
    for (i, path) in pages.iter().enumerate() {
        let mut t = times[i].clone();
        t.sort_by(f64::total_cmp);
        let at = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
        worst = worst.max(at(0.5));
        println!(
            "dashboard page={path} rounds={} median_ms={:.1} p95_ms={:.1} max_ms={:.1}",
            t.len(),
            at(0.5),
            at(0.95),
            t[t.len() - 1]
        );
    }
    println!(
        "dashboard target median<200ms on every page: {}",
        if worst < 200.0 { "met" } else { "NOT met" }
    );
    Ok(())
}

/// The first invoice id linked from a listing page.
fn first_link(html: &str) -> Option<String> {
    let at = html.find("href=\"/invoices/")? + "href=\"/invoices/".len();
    let end = html[at..].find('"')?;
    Some(html[at..at + end].to_string())
}
