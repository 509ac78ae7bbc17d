//! What a dashboard page is made of, and how it is written: a [`Page`] of sections (figures,
//! charts, tables), rendered as HTML with maud, or one of its tables as CSV. Every page builder
//! returns a `Page`, so a table's CSV download and its HTML show the very same cells.

use maud::{html, Markup, PreEscaped, DOCTYPE};

/// The pages, in the navigation's order: (path, title).
pub const NAV: [(&str, &str); 6] = [
    ("/mrr", "MRR"),
    ("/retention", "Retention"),
    ("/revenue", "Revenue"),
    ("/receivables", "Receivables"),
    ("/invoices", "Invoices"),
    ("/exports", "Exports"),
];

/// A table: `id` names it in the page (the DOM id) and in its CSV download (`?csv=<id>`).
pub struct Table {
    pub id: &'static str,
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

/// A cell: its text, and a link for the HTML (the CSV has the text only).
pub struct Cell {
    pub text: String,
    pub href: Option<String>,
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell { text, href: None }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell { text: text.to_string(), href: None }
    }
}

impl Cell {
    pub fn link(text: impl Into<String>, href: String) -> Cell {
        Cell { text: text.into(), href: Some(href) }
    }
}

pub enum Section {
    /// Headline figures: (DOM id, label, value).
    Figures(Vec<(String, String, String)>),
    /// An SVG drawn by `chart`.
    Chart(String),
    Table(Table),
    /// A sentence or two for the reader.
    Note(String),
    /// A link to the next page of a listing.
    More(String),
}

pub struct Page {
    pub title: String,
    /// The navigation entry to highlight (a [`NAV`] path).
    pub nav: &'static str,
    /// The query form: (name, label, value, placeholder).
    pub form: Vec<(&'static str, &'static str, String, &'static str)>,
    pub sections: Vec<Section>,
}

impl Page {
    pub fn table(&self, id: &str) -> Option<&Table> {
        self.sections.iter().find_map(|s| match s {
            Section::Table(t) if t.id == id => Some(t),
            _ => None,
        })
    }
}

/// The page as CSV: its table `id` (RFC 4180 with a header row, as `accrual export` writes).
pub fn csv(table: &Table) -> anyhow::Result<String> {
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
    w.write_record(&table.columns)?;
    for row in &table.rows {
        w.write_record(row.iter().map(|c| c.text.as_str()))?;
    }
    Ok(String::from_utf8(w.into_inner().map_err(|e| e.into_error())?)?)
}

const STYLE: &str = "
*{box-sizing:border-box}body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:8px 16px;display:flex;flex-wrap:wrap;gap:4px 16px;align-items:center}
header a{color:#cfd8e3;text-decoration:none;padding:4px 6px;border-radius:4px}header a.on{background:#3a4658;color:#fff}
header .brand{font-weight:600;color:#fff;margin-right:8px}
main{padding:12px 16px;max-width:1200px}h1{font-size:20px;margin:8px 0}h2{font-size:16px;margin:16px 0 6px}
form{display:flex;flex-wrap:wrap;gap:8px;align-items:end;margin:8px 0}form label{display:flex;flex-direction:column;font-size:12px}
input{font:inherit;padding:4px 6px;border:1px solid #b8c2cf;border-radius:4px;max-width:180px}
button{font:inherit;padding:5px 12px;border:0;border-radius:4px;background:#2c6bc9;color:#fff}
.figures{display:flex;flex-wrap:wrap;gap:8px}.figure{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:8px 12px;min-width:140px}
.figure .label{font-size:12px;color:#5a6675}.figure .value{font-size:20px;font-weight:600}
.chart svg{width:100%;height:auto;background:#fff;border:1px solid #dde3ea;border-radius:6px}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;background:#fff;font-variant-numeric:tabular-nums}
th,td{border:1px solid #dde3ea;padding:4px 8px;text-align:right;white-space:nowrap}th{background:#eef1f5}
td:first-child,th:first-child{text-align:left}.csv{font-size:12px;margin-left:8px}.note{color:#5a6675}
.asof{background:#fff3cd;border:1px solid #e6d48a;padding:6px 10px;border-radius:6px;margin:8px 0}
.error{color:#a11}
";

/// Marks the page when it is wider than the window (checked by the browser test at phone width).
const SCRIPT: &str = "
document.addEventListener('DOMContentLoaded',function(){
 var w=document.documentElement.scrollWidth,v=window.innerWidth;
 document.body.setAttribute('data-overflow',w>v+1?'yes':'no');
 document.body.setAttribute('data-viewport',String(v));
 document.querySelectorAll('a.csv').forEach(function(a){a.setAttribute('download','')});
});";

/// The whole HTML page. `query` is the current query string (without `csv`), kept in the
/// navigation and the CSV links; `as_of_recorded` shows which books are on screen.
pub fn render(page: &Page, query: &str, as_of_recorded: Option<&str>) -> Markup {
    let keep = |path: &str| -> String {
        match as_of_recorded {
            Some(t) => format!("{path}?as_of_recorded={}", urlencode(t)),
            None => path.to_string(),
        }
    };
    let csv_href = |id: &str| {
        let sep = if query.is_empty() { "" } else { "&" };
        format!("?{query}{sep}csv={id}")
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (page.title) " · Accrual" }
                style { (PreEscaped(STYLE)) }
                script { (PreEscaped(SCRIPT)) }
            }
            body {
                header {
                    span.brand { "Accrual" }
                    @for (path, name) in NAV {
                        a href=(keep(path)) class=[(path == page.nav).then_some("on")] { (name) }
                    }
                }
                main {
                    h1 { (page.title) }
                    @if let Some(t) = as_of_recorded {
                        div.asof #asof { "The books as they stood at " strong { (t) } " (a replay of the events recorded until then). "
                            a href=(page.nav) { "Back to now" } }
                    }
                    form method="get" {
                        @for (name, label, value, placeholder) in &page.form {
                            label { (label) input name=(name) value=(value) placeholder=(placeholder); }
                        }
                        label { "Books as recorded at" input name="as_of_recorded" value=(as_of_recorded.unwrap_or("")) placeholder="2025-06-30T00:00:00Z"; }
                        button type="submit" { "Show" }
                    }
                    @for section in &page.sections {
                        @match section {
                            Section::Figures(figures) => div.figures {
                                @for (id, label, value) in figures {
                                    div.figure { div.label { (label) } div.value id=(id) { (value) } }
                                }
                            },
                            Section::Chart(svg) => div.chart { (PreEscaped(svg)) },
                            Section::Table(t) => {
                                h2 { (t.title) a.csv href=(csv_href(t.id)) { "CSV" } }
                                div.scroll { table id=(t.id) {
                                    thead { tr { @for c in &t.columns { th { (c) } } } }
                                    tbody { @for row in &t.rows { tr { @for cell in row { td {
                                        @match &cell.href { Some(h) => a href=(h) { (cell.text) }, None => (cell.text) }
                                    } } } } }
                                } }
                            },
                            Section::Note(text) => p.note { (text) },
                            Section::More(href) => p { a #more href=(href) { "Next page →" } },
                        }
                    }
                }
            }
        }
    }
}

/// A login form: the token is sent once and kept in an HttpOnly cookie.
pub fn login(message: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · Accrual" } style { (PreEscaped(STYLE)) } }
            body { main {
                h1 { "Accrual dashboard" }
                @if let Some(m) = message { p.error #login-error { (m) } }
                form method="post" action="/login" {
                    label { "Token (analyst, auditor or admin)" input type="password" name="token" autocomplete="off"; }
                    button type="submit" { "Sign in" }
                }
            } }
        }
    }
}

/// An error page with the reason (a refused filter, an unknown invoice).
pub fn error(status: u16, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" { head { meta charset="utf-8"; title { "Error · Accrual" } style { (PreEscaped(STYLE)) } }
            body { main { h1 { "Error " (status) } p.error #error { (message) } p { a href="/" { "Dashboard" } } } } }
    }
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
