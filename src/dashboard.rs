//! The analysts' dashboard (issue 15): HTML pages served by `accrual serve` on their own HTTP
//! listener (default 127.0.0.1:8080; `--dashboard-listen`, `--no-dashboard`). Pages are built
//! from `QueryService` replies in-process (`pages`), drawn with maud (`view`) and plotters
//! SVG (`chart`); nothing is fetched from outside the server and the only script is a few lines
//! in the page. Every table has a CSV download (`?csv=<table id>`).
//!
//! Access: the serve's tokens. An analyst, auditor or admin token is sent as
//! `Authorization: Bearer <token>`, or entered once at `/login` and kept in an HttpOnly,
//! SameSite=Strict cookie. Without tokens (loopback only, as for gRPC) every request is admitted.
//!
//! `?as_of_recorded=T` shows any page as the books stood at T: the read models are rebuilt from
//! the events recorded at or before T into a temporary directory (`replay::rebuild`, as
//! `accrual replay` does), and served by a query API over them; the last few are kept.

mod chart;
mod pages;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};

use jiff::Timestamp;
use query_service::{PastBooks, QueryApi};

use crate::auth::{Role, Tokens};
use pages::Params;

/// The default listener.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
/// The cookie the token is kept in after `/login`.
const COOKIE: &str = "accrual_token";

/// One set of books: the query API over read models, and the models themselves for the
/// export downloads (`export::write`, as the AuditService's `Export` streams them).
#[derive(Clone)]
struct Books {
    api: Arc<QueryApi>,
    models: query_service::ReadModels,
}

impl Books {
    fn new(models: query_service::ReadModels) -> Books {
        Books { api: Arc::new(QueryApi::new(models.clone())), models }
    }
}

/// What the dashboard serves from.
#[derive(Clone)]
pub struct Dashboard {
    live: Books,
    tokens: Option<Arc<Tokens>>,
    /// The books as recorded at a time, for `as_of_recorded` (`None`: not offered).
    past: Option<Arc<dyn PastBooks>>,
}

impl Dashboard {
    pub fn new(
        live: query_service::ReadModels,
        tokens: Option<Arc<Tokens>>,
        past: Option<Arc<dyn PastBooks>>,
    ) -> Dashboard {
        Dashboard { live: Books::new(live), tokens, past }
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(|| async { Redirect::to("/mrr") }))
            .route("/login", get(login_form).post(login))
            .route("/mrr", get(page_mrr))
            .route("/retention", get(page_retention))
            .route("/revenue", get(page_revenue))
            .route("/receivables", get(page_receivables))
            .route("/invoices", get(page_invoices))
            .route("/invoices/:id", get(page_invoice))
            .route("/exports", get(page_exports))
            .route("/exports/:file", get(export_file))
            .with_state(self)
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await?;
        Ok(())
    }

    /// Admits a request with an analyst, auditor or admin token (header or cookie), or any
    /// request when no tokens are configured.
    fn admits(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(tokens) = &self.tokens else {
            // Without tokens the listener is on loopback; a page elsewhere that rebinds a name
            // of its own to 127.0.0.1 still sends its own Host: refused.
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
            let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
            return match name {
                "127.0.0.1" | "localhost" | "[::1]" => Ok(()),
                other => {
                    Err(format!("host {other:?} is not a loopback name (no tokens configured)"))
                }
            };
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_string));
        let token = bearer.map(str::to_string).or(cookie).ok_or("sign in with a token")?;
        match tokens.role_of(&token) {
            Some(Role::Analyst | Role::Auditor | Role::Admin) => Ok(()),
            Some(role) => Err(format!("role {role} may not read the dashboard")),
            None => Err("unknown token".into()),
        }
    }

    /// The query API to read: the live one, or the books as recorded at `as_of_recorded`.
    async fn books(&self, p: &Params) -> Result<Books, (StatusCode, String)> {
        let Some(t) = p.as_of_recorded.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(self.live.clone());
        };
        let bad = |m: String| (StatusCode::BAD_REQUEST, m);
        let at: Timestamp = t.parse().map_err(|e| {
            bad(format!("as_of_recorded {t:?} is not an RFC 3339 time (2025-06-30T00:00:00Z): {e}"))
        })?;
        if at > Timestamp::now() {
            return Err(bad(format!("as_of_recorded {at} is in the future: the books are as now")));
        }
        let past = self
            .past
            .as_ref()
            .ok_or_else(|| bad("this process has no log to rebuild past books from".to_string()))?;
        let models = past.at(at).await.map_err(|e| match e.code() {
            tonic::Code::InvalidArgument => bad(e.message().to_string()),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string()),
        })?;
        Ok(Books::new(models))
    }
}

/// The login page.
async fn login_form() -> Response {
    html(StatusCode::OK, view::login(None))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// Checks the token and keeps it in a cookie.
async fn login(State(d): State<Dashboard>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim().to_string();
    let mut headers = HeaderMap::new();
    if let Ok(v) = format!("Bearer {token}").parse() {
        headers.insert(header::AUTHORIZATION, v);
    }
    match d.admits(&headers) {
        Ok(()) => {
            let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
            ([(header::SET_COOKIE, cookie)], Redirect::to("/mrr")).into_response()
        }
        Err(why) => html(StatusCode::UNAUTHORIZED, view::login(Some(&why))),
    }
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        // Nothing from outside the server: no scripts, styles, images or frames from elsewhere.
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
        ),
    ];
    (status, headers, markup.into_string()).into_response()
}

/// The status a query API error is shown with.
fn http_status(s: &tonic::Status) -> StatusCode {
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Answers a page request: sign-in check, the books to read, the page as HTML or one table as
/// CSV.
async fn answer<F, Fut>(
    d: &Dashboard,
    headers: &HeaderMap,
    raw_query: &str,
    p: Params,
    build: F,
) -> Response
where
    F: FnOnce(Arc<QueryApi>, Params) -> Fut,
    Fut: std::future::Future<Output = Result<view::Page, tonic::Status>>,
{
    if let Err(why) = d.admits(headers) {
        return html(StatusCode::UNAUTHORIZED, view::login(Some(&why)));
    }
    let api = match d.books(&p).await {
        Ok(books) => books.api,
        Err((status, message)) => return html(status, view::error(status.as_u16(), &message)),
    };
    let csv = p.csv.clone();
    let as_of_recorded = p.as_of_recorded.clone().filter(|s| !s.trim().is_empty());
    let page = match build(api, p).await {
        Ok(page) => page,
        Err(s) => {
            let status = http_status(&s);
            return html(status, view::error(status.as_u16(), s.message()));
        }
    };
    match csv {
        Some(id) => match page.table(&id).map(view::csv) {
            Some(Ok(text)) => {
                let name = format!(
                    "attachment; filename=\"{}-{id}.csv\"",
                    page.nav.trim_start_matches('/')
                );
                let headers = [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                    (header::CONTENT_DISPOSITION, name),
                ];
                (StatusCode::OK, headers, text).into_response()
            }
            Some(Err(e)) => {
                html(StatusCode::INTERNAL_SERVER_ERROR, view::error(500, &e.to_string()))
            }
            None => html(
                StatusCode::NOT_FOUND,
                view::error(404, &format!("no table {id:?} on this page")),
            ),
        },
        None => {
            let keep: Vec<&str> = raw_query
                .split('&')
                .filter(|kv| !kv.starts_with("csv=") && !kv.is_empty())
                .collect();
            html(StatusCode::OK, view::render(&page, &keep.join("&"), as_of_recorded.as_deref()))
        }
    }
}

macro_rules! page {
    ($name:ident, $build:path) => {
        async fn $name(
            State(d): State<Dashboard>,
            headers: HeaderMap,
            uri: axum::http::Uri,
            Query(p): Query<Params>,
        ) -> Response {
            let raw = uri.query().unwrap_or("").to_string();
            answer(&d, &headers, &raw, p, |api, p| async move { $build(&api, &p).await }).await
        }
    };
}

page!(page_mrr, pages::mrr);
page!(page_retention, pages::retention);
page!(page_revenue, pages::revenue);
page!(page_receivables, pages::receivables);
page!(page_invoices, pages::invoices);

async fn page_invoice(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(id): Path<String>,
    Query(p): Query<Params>,
) -> Response {
    let raw = uri.query().unwrap_or("").to_string();
    answer(&d, &headers, &raw, p, |api, _| async move { pages::invoice(&api, &id).await }).await
}

/// Where the dashboard listens: `--dashboard-listen`, or none with `--no-dashboard`.
pub fn listen_address(listen: Option<SocketAddr>, disabled: bool) -> Option<SocketAddr> {
    if disabled {
        return None;
    }
    Some(listen.unwrap_or_else(|| LISTEN_DEFAULT.parse().expect("a valid address")))
}

/// The export downloads: every `accrual export` kind in CSV, JSON and Parquet.
async fn page_exports(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Query(p): Query<Params>,
) -> Response {
    let raw = uri.query().unwrap_or("").to_string();
    let suffix = match p.as_of_recorded.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(t) => format!("?as_of_recorded={}", view::urlencode(t)),
        None => String::new(),
    };
    answer(&d, &headers, &raw, p, |_, _| async move { Ok(pages::exports(&suffix)) }).await
}

/// One export (`<kind>.<csv|json|parquet>`), written whole by `export::write` from the books
/// the page shows (`?as_of_recorded`), as `accrual export` writes it.
async fn export_file(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(file): Path<String>,
    Query(p): Query<Params>,
) -> Response {
    if let Err(why) = d.admits(&headers) {
        return html(StatusCode::UNAUTHORIZED, view::login(Some(&why)));
    }
    let parsed = file.rsplit_once('.').and_then(|(kind, format)| {
        Some((crate::export::ExportKind::parse(kind)?, crate::export::ExportFormat::parse(format)?))
    });
    let Some((kind, format)) = parsed else {
        let message = format!("no export {file:?}: see /exports");
        return html(StatusCode::NOT_FOUND, view::error(404, &message));
    };
    let books = match d.books(&p).await {
        Ok(books) => books,
        Err((status, message)) => return html(status, view::error(status.as_u16(), &message)),
    };
    let model = match kind.source() {
        replay::Kind::Invoices => books.models.invoices.reader.model().clone(),
        replay::Kind::Mrr => books.models.mrr.reader.model().clone(),
        replay::Kind::Journal => books.models.journal.reader.model().clone(),
    };
    let spec = crate::export::Spec {
        kind,
        format,
        from: None,
        effective: None,
        granularity: None,
        currency: None,
    };
    let written = tokio::task::spawn_blocking(move || {
        let mut body = Vec::new();
        crate::export::write(&spec, model, &mut body).map(|_| body)
    })
    .await;
    match written {
        Ok(Ok(body)) => {
            let content_type = match format {
                crate::export::ExportFormat::Csv => "text/csv; charset=utf-8",
                crate::export::ExportFormat::Json => "application/json",
                crate::export::ExportFormat::Parquet => "application/vnd.apache.parquet",
            };
            let disposition = format!("attachment; filename=\"{file}\"");
            let headers = [
                (header::CONTENT_TYPE, content_type.to_string()),
                (header::CONTENT_DISPOSITION, disposition),
            ];
            (StatusCode::OK, headers, body).into_response()
        }
        Ok(Err(e)) => html(StatusCode::INTERNAL_SERVER_ERROR, view::error(500, &format!("{e:#}"))),
        Err(e) => html(StatusCode::INTERNAL_SERVER_ERROR, view::error(500, &e.to_string())),
    }
}
