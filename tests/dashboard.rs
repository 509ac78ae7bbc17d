//! The analysts' dashboard (issue 15) on the real binary: `accrual demo` seeds a data dir,
//! `accrual serve` serves it with the dashboard on its own port, and every page's figures and
//! tables are checked against the gRPC QueryService's replies for the same question: over
//! plain HTTP, and in a real headless Chromium (the DOM it rendered, at 1280×800 and at phone
//! width, with a screenshot of each page saved under target/dashboard-screenshots/). Also:
//! CSV downloads equal the tables, tokens (header, login cookie, refused roles), bad input,
//! and `as_of_recorded` (the books as they stood).
//!
//! Chromium: the browser half needs `chromium` on PATH (Debian's package; `.ci/run` installs
//! it). Without it the test says so and checks over HTTP only, unless
//! ACCRUAL_REQUIRE_BROWSER=1 (CI), which makes a missing browser a failure.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{free_port, Server};
use proto::v1 as pb;
use proto::v1::query_service_client::QueryServiceClient;
use rust_decimal::Decimal;
use tonic::transport::Channel;

const FROM: &str = "2025-02";
const TO: &str = "2025-05";
/// The window's months with their last days.
const MONTHS: [(&str, &str); 4] =
    [("2025-02", "28"), ("2025-03", "31"), ("2025-04", "30"), ("2025-05", "31")];
const WINDOW_END: &str = "2025-05-31";

/// The text of the element with `id` (its first text run).
fn by_id(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let rest = &html[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')?;
    Some(decode(&rest[start..start + end]))
}

fn decode(s: &str) -> String {
    s.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"")
}

/// The rows of table `id` as cell texts (links unwrapped).
fn table(html: &str, id: &str) -> Vec<Vec<String>> {
    let Some(at) = html.find(&format!("<table id=\"{id}\"")) else { return Vec::new() };
    let body = &html[at..];
    let body = &body[..body.find("</table>").unwrap_or(body.len())];
    let body = &body[body.find("<tbody>").map_or(0, |i| i + 7)..];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td>")
                .skip(1)
                .map(|cell| {
                    let cell = &cell[..cell.find("</td>").unwrap_or(cell.len())];
                    let text: String = strip_tags(cell);
                    decode(text.trim())
                })
                .collect()
        })
        .collect()
}

fn strip_tags(s: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in s.chars() {
        match c {
            '<' => inside = true,
            '>' => inside = false,
            c if !inside => out.push(c),
            _ => {}
        }
    }
    out
}

/// A ratio as the pages print it ("–" for an empty cohort's).
fn percent(ratio: &str) -> String {
    match ratio.parse::<Decimal>() {
        Ok(r) => format!("{:.1} %", (r * Decimal::ONE_HUNDRED).round_dp(1)),
        Err(_) => "–".into(),
    }
}

struct Site {
    base: String,
    http: reqwest::Client,
}

impl Site {
    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn page(&self, path: &str) -> String {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }
}

/// The figures each page must show, asked of gRPC: page path → (element id → text), and
/// page path → (table id → rows).
struct Expected {
    figures: BTreeMap<String, BTreeMap<String, String>>,
    tables: BTreeMap<String, BTreeMap<String, Vec<Vec<String>>>>,
}

async fn expected(q: &mut QueryServiceClient<Channel>) -> Expected {
    let mut figures: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut tables: BTreeMap<String, BTreeMap<String, Vec<Vec<String>>>> = BTreeMap::new();
    let window = format!("?currency=USD&from={FROM}&to={TO}");

    // MRR: before the window, at its end, and each month's bridge.
    let mrr = |date: &str| pb::MrrRequest {
        currency: "USD".into(),
        date: date.into(),
        ..Default::default()
    };
    let end = q.get_mrr(mrr(WINDOW_END)).await.unwrap().into_inner().mrr;
    let before = q.get_mrr(mrr("2025-01-31")).await.unwrap().into_inner().mrr;
    let path = format!("/mrr{window}");
    figures.entry(path.clone()).or_default().insert("mrr-end".into(), end);
    figures.entry(path.clone()).or_default().insert("mrr-start".into(), before);
    let moves = pb::MrrMovementsRequest {
        as_recorded_at: None,
        currency: "USD".into(),
        from: format!("{FROM}-01"),
        to: WINDOW_END.into(),
        granularity: "month".into(),
        min_position: None,
    };
    let moves = q.list_mrr_movements(moves).await.unwrap().into_inner();
    let rows: Vec<Vec<String>> = MONTHS
        .iter()
        .map(|(m, _)| {
            let b = moves.buckets.iter().find(|b| b.start == format!("{m}-01"));
            let amount = |k: &str| {
                let t = b.and_then(|b| b.totals.iter().find(|t| t.kind == k));
                t.map_or("0.00".to_string(), |t| t.amount.clone())
            };
            vec![
                m.to_string(),
                amount("new"),
                amount("expansion"),
                amount("reactivation"),
                amount("contraction"),
                amount("churn"),
                b.map_or("0.00".into(), |b| b.net.clone()),
            ]
        })
        .collect();
    tables.entry(path).or_default().insert("mrr".into(), rows);

    // Retention over the window.
    let r = pb::RetentionRequest {
        as_recorded_at: None,
        currency: "USD".into(),
        start: format!("{FROM}-01"),
        end: WINDOW_END.into(),
        min_position: None,
    };
    let r = q.get_retention(r).await.unwrap().into_inner();
    let path = format!("/retention{window}");
    let f = figures.entry(path).or_default();
    f.insert("nrr".into(), percent(&r.nrr));
    f.insert("grr".into(), percent(&r.grr));
    f.insert("cohort-size".into(), r.cohort_size.to_string());
    f.insert("cohort-mrr-end".into(), r.mrr_end);

    // Revenue: recognized in each month = the difference of cumulative balances; and the
    // balances at each month end.
    let balances =
        |d: &str| pb::AsOfRequest { as_recorded_at: None, as_of: d.into(), min_position: None };
    let before = q.get_balances(balances("2025-01-31")).await.unwrap().into_inner();
    let usd = before.balances.iter().find(|b| b.currency == "USD").cloned().unwrap_or_default();
    let mut previous: Decimal = usd.total_recognized_revenue.parse().unwrap_or_default();
    let mut rows = Vec::new();
    for (m, last) in MONTHS {
        let b = q.get_balances(balances(&format!("{m}-{last}"))).await.unwrap().into_inner();
        let usd = b.balances.iter().find(|b| b.currency == "USD").cloned().unwrap_or_default();
        let total: Decimal = usd.total_recognized_revenue.parse().unwrap_or_default();
        rows.push(vec![
            m.to_string(),
            format!("{:.2}", total - previous),
            usd.deferred_revenue.clone(),
            usd.unbilled_receivable.clone(),
            usd.accounts_receivable.clone(),
        ]);
        previous = total;
    }
    tables.entry(format!("/revenue{window}")).or_default().insert("revenue".into(), rows);

    // Receivables at the window's end.
    let aging = pb::ReceivablesAgingRequest {
        as_recorded_at: None,
        currency: "USD".into(),
        as_of: WINDOW_END.into(),
        terms_days: 30,
        min_position: None,
    };
    let aging = q.get_receivables_aging(aging).await.unwrap().into_inner();
    let path = format!("/receivables?currency=USD&as_of={WINDOW_END}&terms_days=30");
    let total = aging.total.clone().unwrap();
    figures.entry(path.clone()).or_default().insert("receivable-total".into(), total.amount);
    let rows = |cells: &[pb::ReceivablesCell]| {
        cells
            .iter()
            .map(|c| vec![c.name.clone(), c.invoices.to_string(), c.amount.clone()])
            .collect()
    };
    let t = tables.entry(path).or_default();
    t.insert("aging".into(), rows(&aging.buckets));
    t.insert("dunning".into(), rows(&aging.dunning));

    // Invoices: the first page, and the first invoice's page.
    let list = pb::ListInvoicesRequest { page_size: 100, ..Default::default() };
    let list = q.list_invoices(list).await.unwrap().into_inner();
    let rows = list
        .invoices
        .iter()
        .map(|i| {
            vec![i.invoice_id.clone(), i.customer_id.clone(), i.total.clone(), i.amount_due.clone()]
        })
        .collect();
    tables.entry("/invoices".into()).or_default().insert("invoices".into(), rows);
    let first = &list.invoices[0];
    let path = format!("/invoices/{}", first.invoice_id);
    let f = figures.entry(path.clone()).or_default();
    f.insert("invoice-total".into(), first.total.clone());
    f.insert("invoice-tax".into(), first.tax.clone());
    f.insert("invoice-due".into(), first.amount_due.clone());
    let lines = first.lines.iter().map(|l| vec![l.kind.clone(), l.amount.clone()]).collect();
    tables.entry(path).or_default().insert("lines".into(), lines);
    Expected { figures, tables }
}

/// Only the columns the expectation names: MRR rows skip mrr_start and mrr_end; revenue rows
/// keep month, recognized_total and the three balances; invoices keep id, customer, total, due;
/// lines keep kind and amount.
fn project(table_id: &str, row: &[String]) -> Vec<String> {
    let pick =
        |idx: &[usize]| idx.iter().map(|i| row.get(*i).cloned().unwrap_or_default()).collect();
    match table_id {
        "mrr" => pick(&[0, 2, 3, 4, 5, 6, 7]),
        "revenue" => pick(&[0, 7, 8, 9, 10]),
        "invoices" => pick(&[0, 1, 8, 9]),
        "lines" => pick(&[0, 5]),
        _ => row.to_vec(),
    }
}

/// Checks one rendered page (`html`, from HTTP or the browser's DOM) against gRPC.
fn check_page(path: &str, html: &str, want: &Expected, source: &str) {
    for (id, value) in want.figures.get(path).into_iter().flatten() {
        assert_eq!(by_id(html, id).as_deref(), Some(value.as_str()), "{source} {path} #{id}");
    }
    for (id, rows) in want.tables.get(path).into_iter().flatten() {
        let got: Vec<Vec<String>> = table(html, id).iter().map(|r| project(id, r)).collect();
        assert_eq!(&got, rows, "{source} {path} table {id}");
    }
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        let out = Command::new("which").arg(name).output().ok()?;
        out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
}

/// Runs headless Chromium on `url` at `width`×`height` with `args` (killed after 60 s); its
/// stdout.
fn browse(
    chromium: &Path,
    profile: &Path,
    url: &str,
    (width, height): (u32, u32),
    args: &[String],
) -> String {
    let out_path = profile.with_extension(format!("out-{width}"));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={width},{height}"))
        .args(["--virtual-time-budget=3000", "--run-all-compositor-stages-before-draw"])
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run chromium");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "chromium {url} {args:?}: {status}");
                break;
            }
            None if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                panic!("chromium {url} {args:?} ran past 60 s");
            }
            None => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    std::fs::read_to_string(&out_path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_what_the_query_api_says_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let demo = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["demo", "--seed", "1", "--months", "5", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(demo.status.success(), "demo: {}", String::from_utf8_lossy(&demo.stderr));

    let board_port = free_port();
    let board = format!("127.0.0.1:{board_port}");
    let server = Server::start_with(&data, free_port(), &["--dashboard-listen", &board]);
    let channel = server.serving("accrual.v1.QueryService").await;
    let mut q = QueryServiceClient::new(channel);
    let want = expected(&mut q).await;
    let site = Site { base: format!("http://{board}"), http: reqwest::Client::new() };

    // Over HTTP: every page, and each table's CSV is the table.
    let mut paths: Vec<String> = want.figures.keys().chain(want.tables.keys()).cloned().collect();
    paths.sort();
    paths.dedup();
    for path in &paths {
        let html = site.page(path).await;
        check_page(path, &html, &want, "http");
        assert!(
            !html.contains("src=\"http") && !html.contains("href=\"http"),
            "{path}: nothing from outside"
        );
        for id in want.tables.get(path).into_iter().flatten().map(|(id, _)| id) {
            let sep = if path.contains('?') { '&' } else { '?' };
            let (status, csv) = site.get(&format!("{path}{sep}csv={id}")).await;
            assert_eq!(status, 200, "{path} csv {id}");
            let mut reader = csv::Reader::from_reader(csv.as_bytes());
            let rows: Vec<Vec<String>> =
                reader.records().map(|r| r.unwrap().iter().map(String::from).collect()).collect();
            assert_eq!(rows, table(&html, id), "{path}: the CSV of {id} is the table");
        }
    }
    for path in ["/mrr", "/retention", "/revenue", "/receivables", "/invoices"] {
        site.page(path).await; // the defaults render too
    }

    // Bad input is the query API's reason, and nothing else.
    let (status, body) = site.get("/mrr?currency=USD&from=2025-13").await;
    assert_eq!(status, 400, "{body}");
    assert!(by_id(&body, "error").unwrap().contains("not a month"), "{body}");
    let (status, body) = site.get("/invoices/inv-nope").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = site.get("/revenue?currency=USD&csv=nope").await;
    assert_eq!(status, 404);

    // The export downloads: the invoices as CSV list every invoice the query API lists, and
    // the same export as Parquet is read by pyarrow (the Parquet test's reader) with as many
    // rows.
    let exports = site.page("/exports").await;
    assert_eq!(table(&exports, "exports").len(), 8, "every export kind is offered");
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let req = pb::ListInvoicesRequest {
            page_size: 1000,
            page_token: token.clone(),
            ..Default::default()
        };
        let page = q.list_invoices(req).await.unwrap().into_inner();
        listed.extend(page.invoices.into_iter().map(|i| i.invoice_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let (status, csv_body) = site.get("/exports/invoices.csv").await;
    assert_eq!(status, 200);
    let mut reader = csv::Reader::from_reader(csv_body.as_bytes());
    let ids: Vec<String> = reader.records().map(|r| r.unwrap()[0].to_string()).collect();
    assert_eq!(ids, listed, "the CSV download is every invoice, in issue order");
    let parquet =
        site.http.get(format!("{}/exports/invoices.parquet", site.base)).send().await.unwrap();
    assert_eq!(parquet.status().as_u16(), 200);
    let bytes = parquet.bytes().await.unwrap();
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"), "a Parquet file");
    let file = dir.path().join("invoices.parquet");
    std::fs::write(&file, &bytes).unwrap();
    let requirements =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/export_parquet/requirements.txt");
    match common::python::python_env("export-parquet", &requirements) {
        Ok(python) => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/export_parquet/read.py");
            let log = dir.path().join("read.log");
            common::process::run_bounded(
                Command::new(python).arg(script).arg(&file),
                &log,
                120_000,
            )
            .unwrap_or_else(|e| panic!("read.py: {e}"));
            let text = std::fs::read_to_string(&log).unwrap();
            let result: serde_json::Value = text
                .lines()
                .find_map(|l| l.strip_prefix("RESULT "))
                .map(|l| serde_json::from_str(l).unwrap())
                .unwrap_or_else(|| panic!("no RESULT line: {text}"));
            assert_eq!(
                result["rows"].as_u64(),
                Some(listed.len() as u64),
                "pyarrow reads every invoice"
            );
        }
        Err(reason) => common::python::skip_or_fail("dashboard Parquet download", &reason),
    }
    let (status, _) = site.get("/exports/nothing.csv").await;
    assert_eq!(status, 404);

    // The books as they stood: before the first event nothing was billed; long after, the
    // same as now.
    let (status, body) = site.get("/invoices?as_of_recorded=2000-01-01T00:00:00Z").await;
    assert_eq!(status, 200, "{body}");
    assert!(by_id(&body, "asof").is_some(), "the page says which books it shows");
    assert!(table(&body, "invoices").is_empty(), "no invoice was recorded by 2000");
    let later =
        format!("/mrr?currency=USD&from={FROM}&to={TO}&as_of_recorded=2026-01-01T00:00:00Z");
    let html = site.page(&later).await;
    check_page(&format!("/mrr?currency=USD&from={FROM}&to={TO}"), &html, &want, "as_of_recorded");
    let (status, body) = site.get("/mrr?as_of_recorded=yesterday").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = site.get("/mrr?as_of_recorded=2999-01-01T00:00:00Z").await;
    assert_eq!(status, 400, "the future is refused, never cached: {body}");
    let (status, _) = site.get("/mrr?to=9999-12").await;
    assert_eq!(status, 200, "the last month of the calendar is no error");
    let foreign = site.http.get(format!("{}/mrr", site.base)).header("host", "evil.example:8080");
    assert_eq!(foreign.send().await.unwrap().status().as_u16(), 401, "a rebound name is refused");

    // A real browser: the DOM Chromium rendered carries the same numbers, no page is wider
    // than a phone, and each page is photographed at both sizes.
    match chromium() {
        Some(chromium) => {
            let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
            std::fs::create_dir_all(&shots).unwrap();
            let profile = dir.path().join("chromium-profile");
            for (i, path) in paths.iter().enumerate() {
                let url = format!("{}{path}", site.base);
                let dom = browse(&chromium, &profile, &url, (1280, 800), &["--dump-dom".into()]);
                check_page(path, &dom, &want, "chromium");
                let phone = browse(&chromium, &profile, &url, (390, 844), &["--dump-dom".into()]);
                assert!(
                    phone.contains("data-overflow=\"no\""),
                    "{path} is wider than a phone: {}",
                    &phone[..phone.len().min(400)]
                );
                for (label, size) in [("desktop", (1280, 800)), ("phone", (390, 844))] {
                    let file = shots.join(format!("{i:02}-{label}.png"));
                    browse(
                        &chromium,
                        &profile,
                        &url,
                        size,
                        &[format!("--screenshot={}", file.display())],
                    );
                    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                    assert!(bytes > 5_000, "{path} {label}: screenshot of {bytes} bytes");
                }
            }
        }
        None if std::env::var("ACCRUAL_REQUIRE_BROWSER").as_deref() == Ok("1") => {
            panic!("ACCRUAL_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
        }
        None => eprintln!("dashboard browser half skipped: no chromium on PATH"),
    }
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_admits_analysts_auditors_and_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    let token = |role: &str| format!("{role}-token-0123456789abcdef");
    let hash = |t: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(t.as_bytes()));
    let tokens: Vec<String> = ["analyst", "auditor", "admin", "writer", "subscriber"]
        .iter()
        .map(|r| format!("{r}:{}", hash(&token(r))))
        .collect();
    let board = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with(
        dir.path(),
        free_port(),
        &["--dashboard-listen", &board, "--auth-tokens", &tokens.join(",")],
    );
    server.serving("accrual.v1.QueryService").await;
    let http =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let url = format!("http://{board}/mrr?currency=USD");
    let status = |r: reqwest::Response| r.status().as_u16();

    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(status(anonymous), 401);
    for (role, want) in
        [("analyst", 200), ("auditor", 200), ("admin", 200), ("writer", 401), ("subscriber", 401)]
    {
        let r = http.get(&url).bearer_auth(token(role)).send().await.unwrap();
        assert_eq!(status(r), want, "{role}");
    }
    let unknown = http.get(&url).bearer_auth("nobody").send().await.unwrap();
    assert_eq!(status(unknown), 401);

    // The token entered once at /login is kept in an HttpOnly cookie.
    let login = format!("http://{board}/login");
    let refused = http.post(&login).form(&[("token", token("writer"))]).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert!(refused.text().await.unwrap().contains("may not read the dashboard"));
    let signed = http.post(&login).form(&[("token", token("analyst"))]).send().await.unwrap();
    assert_eq!(signed.status().as_u16(), 303);
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap();
    let r = http.get(&url).header("cookie", pair).send().await.unwrap();
    assert_eq!(status(r), 200);
    server.terminate().await;
}
