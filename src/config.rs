//! `accrual serve` settings: flags > environment variables > TOML file > defaults.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, Deserialize, ValueEnum, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Which parts of the service one process runs (`--role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// `command`: the CommandService (the write model and the log's only writer) and the billing
    /// scheduler.
    pub command: bool,
    /// `projector`: the projection runners, folding the log into the read models.
    pub projector: bool,
    /// `query`: the QueryService over the read models.
    pub query: bool,
}

impl Roles {
    pub const ALL: Roles = Roles { command: true, projector: true, query: true };
    const NAMES: &'static str = "command, projector, query";

    /// Parses a comma-separated list of `command`, `projector` and `query` (spaces around names
    /// are ignored, repeats are harmless). `source` names where the value came from, for errors.
    pub fn parse(value: &str, source: &str) -> anyhow::Result<Roles> {
        let mut roles = Roles { command: false, projector: false, query: false };
        anyhow::ensure!(
            !value.trim().is_empty(),
            "{source} is empty: give a comma-separated list of {}",
            Roles::NAMES
        );
        for name in value.split(',').map(str::trim) {
            match name {
                "command" => roles.command = true,
                "projector" => roles.projector = true,
                "query" => roles.query = true,
                other => anyhow::bail!(
                    "{source} {value:?}: unknown role {other:?} (roles: {})",
                    Roles::NAMES
                ),
            }
        }
        Ok(roles)
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names =
            [(self.command, "command"), (self.projector, "projector"), (self.query, "query")];
        let on: Vec<&str> = names.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        f.write_str(&on.join(","))
    }
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of: role, read_only, auth_tokens, data_dir, store, listen, log_format,
    /// log_level, grace_period_secs, backdate_days_max, scheduler_interval_secs,
    /// max_payment_attempts, tls_cert,
    /// tls_key, tls_client_ca, allow_plaintext, metrics_listen, dashboard_listen, dashboard
    /// (false: none), and a `[limits]` table (keys:
    /// the limit flags' names with `_`). Flags and env vars override it.
    #[arg(long, env = "ACCRUAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// What this process runs: a comma-separated list of command (CommandService and billing
    /// scheduler), projector (projection runners), query (QueryService). With sled, roles not
    /// run here cannot run in another process on the same data dir [default:
    /// command,projector,query]
    #[arg(long, env = "ACCRUAL_ROLE")]
    pub role: Option<String>,
    /// Serve the read models as they are, without opening the log (only with `--role query`):
    /// a stopped server's data dir, or the output dir of `accrual replay`.
    #[arg(long, env = "ACCRUAL_READ_ONLY")]
    pub read_only: bool,
    /// Bearer tokens admitted, as comma-separated `role:sha256hex` (roles: writer, analyst,
    /// auditor, admin; `accrual token new --role R` makes one). Without any, the server only
    /// listens on a loopback address.
    #[arg(long, env = "ACCRUAL_AUTH_TOKENS", hide_env_values = true)]
    pub auth_tokens: Option<String>,
    /// The event log: `sled:PATH` (embedded, the default: `sled:<data-dir>/log`), an
    /// EventStoreDB / KurrentDB connection string, e.g. `esdb://HOST:2113?tls=false`
    /// (`&stream=NAME` picks the log stream, default accrual-log), or NATS JetStream servers,
    /// e.g. `nats://HOST:4222,HOST:4222?replicas=3` (`stream=NAME`, default accrual-log;
    /// `replicas=N`: without it a new stream gets 1 copy for one server and 3 for several, and
    /// an existing stream is taken as it is). Read models stay in the data dir.
    #[arg(long, env = "ACCRUAL_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Directory of the embedded sled store [default: ./accrual-data]
    #[arg(long, env = "ACCRUAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:50051]
    #[arg(long, env = "ACCRUAL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Log format [default: pretty]
    #[arg(long, env = "ACCRUAL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or accrual=debug,info [default: info]
    #[arg(long, env = "ACCRUAL_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Seconds after a period's end before a billing run closes it [default: 0]
    #[arg(long, env = "ACCRUAL_GRACE_PERIOD_SECS")]
    pub grace_period_secs: Option<i64>,
    /// Days before today a subscription may start, or a plan change or cancellation take
    /// effect (the back-dating horizon; docs/effective-dates.md) [default: 366, at most 3660]
    #[arg(long, env = "ACCRUAL_BACKDATE_DAYS_MAX")]
    pub backdate_days_max: Option<u32>,
    /// Seconds between scheduled billing runs; 0 disables the scheduler [default: 60]
    #[arg(long, env = "ACCRUAL_SCHEDULER_INTERVAL_SECS")]
    pub scheduler_interval_secs: Option<u64>,
    /// Failed payment attempts after which an invoice is uncollectible [default: 3]
    #[arg(long, env = "ACCRUAL_MAX_PAYMENT_ATTEMPTS")]
    pub max_payment_attempts: Option<u32>,
    /// PEM certificate chain the server presents (with --tls-key): every connection is TLS
    #[arg(long, env = "ACCRUAL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1)
    #[arg(long, env = "ACCRUAL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mutual TLS; needs --tls-cert)
    #[arg(long, env = "ACCRUAL_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve plaintext on a non-loopback address with auth tokens (they travel in clear text):
    /// only behind a proxy or service mesh that terminates TLS
    #[arg(long, env = "ACCRUAL_ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,
    #[command(flatten)]
    pub limits: crate::limits::LimitArgs,
    /// Serve Prometheus metrics over HTTP on this address (GET /metrics; no authentication: a
    /// non-loopback address gets a warning) [default: off]
    #[arg(long, env = "ACCRUAL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Event feed: messages buffered per subscriber (1..=100000) [default: 1024]
    #[arg(long, env = "ACCRUAL_FEED_BUFFER_EVENTS")]
    pub feed_buffer_events: Option<usize>,
    /// Event feed: how long a subscriber with a full buffer may read nothing before it is cut
    /// off (100..=600000 ms) [default: 30000]
    #[arg(long, env = "ACCRUAL_FEED_STALL_MS")]
    pub feed_stall_ms: Option<u64>,
    /// Webhooks: attempts of one event before it is dead-lettered (1..=20) [default: 8]
    #[arg(long, env = "ACCRUAL_WEBHOOK_ATTEMPTS_MAX")]
    pub webhook_attempts_max: Option<u32>,
    /// Webhooks: first retry delay, doubled each retry, ±20 % jitter (10..=600000 ms)
    /// [default: 1000]
    #[arg(long, env = "ACCRUAL_WEBHOOK_BACKOFF_MS")]
    pub webhook_backoff_ms: Option<u64>,
    /// Webhooks: dead letters in a row that disable an endpoint (1..=1000) [default: 10]
    #[arg(long, env = "ACCRUAL_WEBHOOK_DISABLE_AFTER")]
    pub webhook_disable_after: Option<u32>,
    /// Webhooks: allow endpoints on loopback addresses (tests, local receivers)
    #[arg(long, env = "ACCRUAL_WEBHOOKS_ALLOW_LOOPBACK")]
    pub webhooks_allow_loopback: bool,
    /// The analysts' dashboard (HTTP) listens here; a non-loopback address needs auth tokens
    /// and --allow-plaintext (put a TLS proxy in front) [default: 127.0.0.1:8080; if that port
    /// is taken the service runs without it and logs why]
    #[arg(long, env = "ACCRUAL_DASHBOARD_LISTEN")]
    pub dashboard_listen: Option<SocketAddr>,
    /// Serve no dashboard
    #[arg(long, env = "ACCRUAL_NO_DASHBOARD", conflicts_with = "dashboard_listen")]
    pub no_dashboard: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    role: Option<String>,
    /// `["role:sha256hex", ...]`
    auth_tokens: Option<Vec<String>>,
    read_only: Option<bool>,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    grace_period_secs: Option<i64>,
    backdate_days_max: Option<u32>,
    scheduler_interval_secs: Option<u64>,
    max_payment_attempts: Option<u32>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    allow_plaintext: Option<bool>,
    limits: Option<crate::limits::LimitArgs>,
    metrics_listen: Option<SocketAddr>,
    feed_buffer_events: Option<usize>,
    feed_stall_ms: Option<u64>,
    webhook_attempts_max: Option<u32>,
    webhook_backoff_ms: Option<u64>,
    webhook_disable_after: Option<u32>,
    webhooks_allow_loopback: Option<bool>,
    dashboard_listen: Option<SocketAddr>,
    /// false: no dashboard.
    dashboard: Option<bool>,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub roles: Roles,
    /// `None`: no auth configured (loopback only).
    pub auth: Option<std::sync::Arc<crate::auth::Tokens>>,
    pub read_only: bool,
    pub data_dir: PathBuf,
    /// Where the event log lives (`--store`).
    pub store: StoreSpec,
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    pub log_level: String,
    pub grace_period_secs: i64,
    pub backdate_days_max: u32,
    pub scheduler_interval_secs: u64,
    pub max_payment_attempts: u32,
    /// `None`: plaintext.
    pub tls: Option<crate::tls::ServerTls>,
    /// Plaintext with auth tokens on a non-loopback address was asked for explicitly.
    pub allow_plaintext: bool,
    pub limits: command_service::service::Limits,
    pub server_limits: crate::server::ServerLimits,
    /// `None`: no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    pub feed: crate::feed::FeedOptions,
    pub webhooks: crate::webhooks::dispatch::DeliveryOptions,
    /// The dashboard's listener (`None`: no dashboard), and whether it was asked for
    /// explicitly (then a failure to bind it stops the serve; the default only logs).
    pub dashboard_listen: Option<SocketAddr>,
    pub dashboard_listen_explicit: bool,
}

impl Settings {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let roles = match (args.role, file.role) {
            (Some(value), _) => Roles::parse(&value, "--role (or ACCRUAL_ROLE)")?,
            (None, Some(value)) => {
                let path = args.config.as_deref().map(|p| p.display().to_string());
                Roles::parse(&value, &format!("role in {}", path.unwrap_or_default()))?
            }
            (None, None) => Roles::ALL,
        };
        let auth = match (args.auth_tokens, file.auth_tokens) {
            (Some(list), _) => {
                crate::auth::Tokens::parse_list(&list, "--auth-tokens (or ACCRUAL_AUTH_TOKENS)")?
            }
            (None, Some(list)) => {
                crate::auth::Tokens::parse_list(&list.join(","), "auth_tokens in the config file")?
            }
            (None, None) => crate::auth::Tokens::default(),
        };
        let auth = (!auth.is_empty()).then(|| std::sync::Arc::new(auth));
        let tls = crate::tls::ServerTls::load(
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
            args.tls_client_ca.or(file.tls_client_ca),
        )?;
        let (limits, server_limits) = crate::limits::resolve(args.limits, file.limits)?;
        let data_dir =
            args.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("accrual-data"));
        let store = match args.store.or(file.store) {
            Some(value) => StoreSpec::parse(&value)?,
            None => StoreSpec::Sled(data_dir.join("log")),
        };
        let settings = Settings {
            roles,
            auth,
            read_only: args.read_only || file.read_only.unwrap_or(false),
            data_dir,
            store,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:50051".parse().expect("valid")),
            log_format: args.log_format.or(file.log_format).unwrap_or(LogFormat::Pretty),
            log_level: args.log_level.or(file.log_level).unwrap_or_else(|| "info".to_string()),
            grace_period_secs: args.grace_period_secs.or(file.grace_period_secs).unwrap_or(0),
            backdate_days_max: args
                .backdate_days_max
                .or(file.backdate_days_max)
                .unwrap_or(domain::ledger::BACKDATE_DAYS_MAX),
            scheduler_interval_secs: args
                .scheduler_interval_secs
                .or(file.scheduler_interval_secs)
                .unwrap_or(60),
            max_payment_attempts: args
                .max_payment_attempts
                .or(file.max_payment_attempts)
                .unwrap_or(3),
            tls,
            allow_plaintext: args.allow_plaintext || file.allow_plaintext.unwrap_or(false),
            limits,
            server_limits,
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            feed: feed_options(
                args.feed_buffer_events.or(file.feed_buffer_events),
                args.feed_stall_ms.or(file.feed_stall_ms),
            )?,
            webhooks: webhook_options(
                args.webhook_attempts_max.or(file.webhook_attempts_max),
                args.webhook_backoff_ms.or(file.webhook_backoff_ms),
                args.webhook_disable_after.or(file.webhook_disable_after),
                args.webhooks_allow_loopback || file.webhooks_allow_loopback.unwrap_or(false),
            )?,
            dashboard_listen: crate::dashboard::listen_address(
                args.dashboard_listen.or(file.dashboard_listen),
                args.no_dashboard || file.dashboard == Some(false),
            ),
            dashboard_listen_explicit: args.dashboard_listen.or(file.dashboard_listen).is_some(),
        };
        anyhow::ensure!(
            !settings.read_only
                || settings.roles == Roles { command: false, projector: false, query: true },
            "--read-only serves read models only: use it with --role query (roles given: {})",
            settings.roles
        );
        anyhow::ensure!(
            settings.auth.is_some() || settings.listen.ip().is_loopback(),
            "refusing to serve on {} without auth: configure auth tokens (`accrual token new \
             --role R` prints one) or listen on a loopback address",
            settings.listen
        );
        anyhow::ensure!(
            settings.tls.is_some()
                || settings.listen.ip().is_loopback()
                || settings.allow_plaintext,
            "refusing to serve on {} without TLS: bearer tokens would cross the network in clear \
             text. Configure tls_cert and tls_key (--tls-cert, --tls-key), or, behind a proxy or \
             service mesh that terminates TLS, pass --allow-plaintext",
            settings.listen
        );
        anyhow::ensure!(
            settings.metrics_listen != Some(settings.listen),
            "--metrics-listen {} is the gRPC listen address: metrics need a port of their own",
            settings.listen
        );
        if let Some(d) = settings.dashboard_listen {
            anyhow::ensure!(
                d != settings.listen && Some(d) != settings.metrics_listen,
                "--dashboard-listen {d} is taken by gRPC or metrics: the dashboard needs a port \
                 of its own"
            );
            anyhow::ensure!(
                d.ip().is_loopback() || (settings.auth.is_some() && settings.allow_plaintext),
                "refusing to serve the dashboard on {d}: off loopback it needs auth tokens and \
                 --allow-plaintext (it speaks plain HTTP: put a TLS proxy in front), or give \
                 --no-dashboard"
            );
        }
        anyhow::ensure!(settings.grace_period_secs >= 0, "grace_period_secs must not be negative");
        anyhow::ensure!(
            settings.backdate_days_max <= domain::ledger::BACKDATE_DAYS_LIMIT,
            "backdate_days_max must be at most {} (ten years)",
            domain::ledger::BACKDATE_DAYS_LIMIT
        );
        anyhow::ensure!(
            settings.max_payment_attempts >= 1,
            "max_payment_attempts must be at least 1"
        );
        Ok(settings)
    }
}

/// Where the event log lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// The embedded sled log in this directory.
    Sled(PathBuf),
    /// A log stream on an EventStoreDB / KurrentDB server.
    Esdb(event_store::EsdbConfig),
    /// A JetStream stream on a NATS server or cluster.
    Nats(event_store::NatsConfig),
}

impl StoreSpec {
    /// [`StoreSpec::parse`] for a tool that only reads the log (`audit`, `replay`): a JetStream
    /// stream that does not exist is an error, not created empty.
    pub fn parse_for_reading(value: &str) -> anyhow::Result<StoreSpec> {
        let mut spec = StoreSpec::parse(value)?;
        if let StoreSpec::Nats(config) = &mut spec {
            config.create_stream = false;
        }
        Ok(spec)
    }

    /// `sled:PATH`, `esdb://...` / `esdb+discover://...` or `nats://...`.
    pub fn parse(value: &str) -> anyhow::Result<StoreSpec> {
        if let Some(path) = value.strip_prefix("sled:") {
            anyhow::ensure!(!path.is_empty(), "--store sled:PATH needs a directory");
            return Ok(StoreSpec::Sled(PathBuf::from(path)));
        }
        if value.starts_with("esdb://") || value.starts_with("esdb+discover://") {
            return Ok(StoreSpec::Esdb(event_store::EsdbConfig::parse(value)?));
        }
        if value.starts_with("nats://") {
            return Ok(StoreSpec::Nats(event_store::NatsConfig::parse(value)?));
        }
        anyhow::bail!(
            "--store {:?}: expected sled:PATH, esdb://HOST:PORT?tls=false (or esdb+discover://) \
             or nats://HOST:PORT[,HOST:PORT...][?stream=NAME&replicas=N]",
            event_store::esdb::redact(value)
        )
    }

    /// Whether several processes share this log (EventStoreDB, NATS): then any number of
    /// command nodes may append to it, and each must expect to lose races to the others.
    pub fn is_shared(&self) -> bool {
        matches!(self, StoreSpec::Esdb(_) | StoreSpec::Nats(_))
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Sled(path) => write!(f, "sled:{}", path.display()),
            StoreSpec::Esdb(c) => write!(f, "{} (stream {})", c.redacted(), c.log_stream),
            StoreSpec::Nats(c) => {
                write!(f, "{} (stream {}, replicas {})", c.redacted(), c.stream, c.replicas)
            }
        }
    }
}

pub fn init_tracing(s: &Settings) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&s.log_level)
        .with_context(|| format!("bad log level {:?}", s.log_level))?;
    // Colour codes only on a terminal: a log redirected to a file or a pipe stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match s.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accrual.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:6000\"\ngrace_period_secs = 30\nlog_format = \"json\"\n",
        )
        .unwrap();
        let args =
            ServeArgs { config: Some(path), grace_period_secs: Some(5), ..Default::default() };
        let s = Settings::resolve(args).unwrap();
        assert_eq!(s.listen.port(), 6000);
        assert_eq!(s.grace_period_secs, 5);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.data_dir, PathBuf::from("accrual-data"));
        assert_eq!(s.scheduler_interval_secs, 60);
        assert_eq!(s.roles, Roles::ALL);
    }

    #[test]
    fn roles_are_a_comma_separated_list_and_the_flag_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accrual.toml");
        std::fs::write(&path, "role = \"projector, query\"\n").unwrap();
        let from_file = ServeArgs { config: Some(path.clone()), ..Default::default() };
        let s = Settings::resolve(from_file).unwrap();
        assert_eq!(s.roles, Roles { command: false, projector: true, query: true });
        assert_eq!(s.roles.to_string(), "projector,query");
        let flag = Some("command,command".to_string());
        let s =
            Settings::resolve(ServeArgs { config: Some(path), role: flag, ..Default::default() });
        assert_eq!(s.unwrap().roles, Roles { command: true, projector: false, query: false });
        assert_eq!(Roles::parse("query,projector,command", "x").unwrap(), Roles::ALL);
    }

    #[test]
    fn empty_or_unknown_roles_are_refused_by_name() {
        for (value, named) in
            [("", "is empty"), (" ", "is empty"), ("command,", "\"\""), ("cmd", "\"cmd\"")]
        {
            let args = ServeArgs { role: Some(value.into()), ..Default::default() };
            let error = Settings::resolve(args).unwrap_err().to_string();
            assert!(error.contains(named) && error.contains("--role"), "{value:?}: {error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accrual.toml");
        std::fs::write(&path, "role = \"query,reader\"\n").unwrap();
        let error = Settings::resolve(ServeArgs { config: Some(path), ..Default::default() });
        let error = error.unwrap_err().to_string();
        assert!(error.contains("\"reader\"") && error.contains("accrual.toml"), "{error}");
    }

    #[test]
    fn metrics_listen_is_off_unless_given_and_the_flag_beats_the_file() {
        assert_eq!(Settings::resolve(ServeArgs::default()).unwrap().metrics_listen, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accrual.toml");
        std::fs::write(&path, "metrics_listen = \"127.0.0.1:9464\"\n").unwrap();
        let from_file = ServeArgs { config: Some(path.clone()), ..Default::default() };
        let s = Settings::resolve(from_file).unwrap();
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let flag = Some("0.0.0.0:9100".parse().unwrap());
        let args = ServeArgs { config: Some(path), metrics_listen: flag, ..Default::default() };
        assert_eq!(Settings::resolve(args).unwrap().metrics_listen, flag);
        let same = Some("127.0.0.1:50051".parse().unwrap());
        let error = Settings::resolve(ServeArgs { metrics_listen: same, ..Default::default() });
        assert!(error.unwrap_err().to_string().contains("port of their own"));
    }

    #[test]
    fn store_defaults_to_sled_in_the_data_dir_and_takes_esdb_urls() {
        let args = ServeArgs { data_dir: Some("/d".into()), ..Default::default() };
        assert_eq!(Settings::resolve(args).unwrap().store, StoreSpec::Sled("/d/log".into()));
        let sled = ServeArgs { store: Some("sled:/var/log-dir".into()), ..Default::default() };
        assert_eq!(Settings::resolve(sled).unwrap().store, StoreSpec::Sled("/var/log-dir".into()));
        let url = "esdb://127.0.0.1:2113?tls=false&stream=eu-log";
        let esdb = ServeArgs { store: Some(url.into()), ..Default::default() };
        match Settings::resolve(esdb).unwrap().store {
            StoreSpec::Esdb(c) => {
                assert_eq!(
                    (c.connection.as_str(), c.log_stream.as_str()),
                    ("esdb://127.0.0.1:2113?tls=false", "eu-log")
                );
            }
            other => panic!("{other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accrual.toml");
        std::fs::write(&path, "store = \"esdb://n1:2113,n2:2113,n3:2113\"\n").unwrap();
        let from_file = Settings::resolve(ServeArgs { config: Some(path), ..Default::default() });
        assert!(matches!(from_file.unwrap().store, StoreSpec::Esdb(_)));
    }

    #[test]
    fn store_takes_nats_urls_from_the_flag_and_the_file() {
        let url = "nats://n1:4222,n2:4222,n3:4222?stream=eu_log&replicas=3";
        let nats = ServeArgs { store: Some(url.into()), ..Default::default() };
        let store = Settings::resolve(nats).unwrap().store;
        match &store {
            StoreSpec::Nats(c) => {
                let servers = ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"];
                assert_eq!(c.servers, servers);
                assert_eq!((c.stream.as_str(), c.replicas), ("eu_log", 3));
            }
            other => panic!("{other:?}"),
        }
        assert!(store.is_shared());
        assert!(!StoreSpec::Sled("/d/log".into()).is_shared());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accrual.toml");
        std::fs::write(&path, "store = \"nats://u:hunter2@127.0.0.1:4222\"\n").unwrap();
        let from_file = Settings::resolve(ServeArgs { config: Some(path), ..Default::default() });
        let shown = from_file.unwrap().store.to_string();
        assert_eq!(shown, "nats://u:***@127.0.0.1:4222 (stream accrual-log, replicas 1)");
    }

    #[test]
    fn bad_store_values_are_refused_with_the_reason() {
        for (value, says) in [
            ("sled:", "needs a directory"),
            ("postgres://x", "expected sled:PATH, esdb://"),
            ("postgres://x", "or nats://HOST:PORT"),
            ("esdb://u:secret@h:2113?stream=$all", "system streams"),
            ("nats://u:secret@h:4222?replicas=9", "replicas=\"9\""),
            ("nats://u:secret@h:4222?stream=a.b", "letters, digits"),
            ("nats://u:secret@h", "HOST:PORT"),
        ] {
            let args = ServeArgs { store: Some(value.into()), ..Default::default() };
            let error = format!("{:#}", Settings::resolve(args).unwrap_err());
            assert!(error.contains(says), "{value}: {error}");
            assert!(!error.contains("secret"), "passwords are not echoed: {error}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listne = \"x\"\n").unwrap();
        assert!(Settings::resolve(ServeArgs { config: Some(path), ..Default::default() }).is_err());
        let args = ServeArgs { max_payment_attempts: Some(0), ..Default::default() };
        assert!(Settings::resolve(args).is_err());
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    /// A throwaway CA's server certificate, key and CA in `dir`: (cert, key, ca) paths.
    fn pem_files(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
        let made = crate::tls::Throwaway::generate().unwrap();
        let server = &made.server;
        let paths = (dir.join("server.pem"), dir.join("server.key"), dir.join("ca.pem"));
        std::fs::write(&paths.0, &server.cert.bytes).unwrap();
        std::fs::write(&paths.1, &server.key.bytes).unwrap();
        std::fs::write(&paths.2, &made.ca_pem).unwrap();
        paths
    }

    fn toml_path(value: &std::path::Path) -> String {
        format!("{:?}", value.display().to_string())
    }

    #[test]
    fn tls_comes_from_the_file_and_each_flag_overrides_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = pem_files(dir.path());
        let config = dir.path().join("accrual.toml");
        let text = format!("tls_cert = {}\ntls_key = {}\n", toml_path(&cert), toml_path(&key));
        std::fs::write(&config, text).unwrap();
        let from_file = ServeArgs { config: Some(config.clone()), ..Default::default() };
        let tls = Settings::resolve(from_file).unwrap().tls.expect("TLS from the file");
        assert_eq!((tls.cert.as_path(), tls.key.as_path()), (cert.as_path(), key.as_path()));
        assert_eq!(tls.client_ca, None);
        assert_eq!(tls.config.alpn_protocols, vec![b"h2".to_vec()]);

        let copy = dir.path().join("copy.pem");
        std::fs::copy(&cert, &copy).unwrap();
        let args = ServeArgs {
            config: Some(config),
            tls_cert: Some(copy.clone()),
            tls_client_ca: Some(ca.clone()),
            ..Default::default()
        };
        let tls = Settings::resolve(args).unwrap().tls.expect("TLS");
        assert_eq!((tls.cert, tls.key, tls.client_ca), (copy, key, Some(ca)));
    }

    #[test]
    fn no_tls_settings_is_plaintext_on_loopback() {
        let s = Settings::resolve(ServeArgs::default()).unwrap();
        assert!(s.tls.is_none() && !s.allow_plaintext);
    }

    #[test]
    fn half_a_tls_configuration_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = pem_files(dir.path());
        let cases = [
            (Some(cert.clone()), None, None, "tls_cert (--tls-cert) is set without tls_key"),
            (None, Some(key.clone()), None, "tls_key (--tls-key) is set without tls_cert"),
            (None, None, Some(ca.clone()), "tls_client_ca (--tls-client-ca) is set without"),
            (Some(cert.clone()), None, Some(ca), "without tls_key"),
        ];
        for (tls_cert, tls_key, tls_client_ca, named) in cases {
            let args = ServeArgs { tls_cert, tls_key, tls_client_ca, ..Default::default() };
            let error = Settings::resolve(args).unwrap_err().to_string();
            assert!(error.contains(named), "{error}");
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _, _) = pem_files(dir.path());
        let other = tempfile::tempdir().unwrap();
        let (_, other_key, _) = pem_files(other.path());
        let args = ServeArgs {
            tls_cert: Some(cert.clone()),
            tls_key: Some(other_key.clone()),
            ..Default::default()
        };
        let error = Settings::resolve(args).unwrap_err().to_string();
        let (cert, key) = (cert.display().to_string(), other_key.display().to_string());
        assert!(error.contains(&cert) && error.contains(&key), "{error}");
    }

    #[test]
    fn tokens_on_a_public_address_need_tls_or_an_explicit_allow_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = pem_files(dir.path());
        let public = || ServeArgs {
            listen: Some("0.0.0.0:50051".parse().unwrap()),
            auth_tokens: Some(format!("writer:{}", "ab".repeat(32))),
            ..Default::default()
        };
        let error = Settings::resolve(public()).unwrap_err().to_string();
        assert!(error.contains("without TLS") && error.contains("--allow-plaintext"), "{error}");
        let tls = ServeArgs { tls_cert: Some(cert), tls_key: Some(key), ..public() };
        assert!(Settings::resolve(tls).unwrap().tls.is_some());
        let allowed = Settings::resolve(ServeArgs { allow_plaintext: true, ..public() }).unwrap();
        assert!(allowed.allow_plaintext && allowed.tls.is_none());
        let config = dir.path().join("accrual.toml");
        std::fs::write(&config, "allow_plaintext = true\n").unwrap();
        let from_file = ServeArgs { config: Some(config), ..public() };
        assert!(Settings::resolve(from_file).unwrap().allow_plaintext);
    }
}

/// The event feed's bounds, checked.
fn feed_options(
    buffer: Option<usize>,
    stall_ms: Option<u64>,
) -> anyhow::Result<crate::feed::FeedOptions> {
    let default = crate::feed::FeedOptions::default();
    let options = crate::feed::FeedOptions {
        buffer_events_max: buffer.unwrap_or(default.buffer_events_max),
        stall_ms_max: stall_ms.unwrap_or(default.stall_ms_max),
    };
    anyhow::ensure!(
        (1..=100_000).contains(&options.buffer_events_max),
        "--feed-buffer-events must be 1..=100000 (got {})",
        options.buffer_events_max
    );
    anyhow::ensure!(
        (100..=600_000).contains(&options.stall_ms_max),
        "--feed-stall-ms must be 100..=600000 (got {})",
        options.stall_ms_max
    );
    Ok(options)
}

/// The webhook deliveries' bounds, checked.
fn webhook_options(
    attempts: Option<u32>,
    backoff_ms: Option<u64>,
    disable_after: Option<u32>,
    allow_loopback: bool,
) -> anyhow::Result<crate::webhooks::dispatch::DeliveryOptions> {
    let default = crate::webhooks::dispatch::DeliveryOptions::default();
    let options = crate::webhooks::dispatch::DeliveryOptions {
        attempts_max: attempts.unwrap_or(default.attempts_max),
        backoff_ms: backoff_ms.unwrap_or(default.backoff_ms),
        disable_after: disable_after.unwrap_or(default.disable_after),
        allow_loopback,
    };
    anyhow::ensure!(
        (1..=20).contains(&options.attempts_max),
        "--webhook-attempts-max must be 1..=20 (got {})",
        options.attempts_max
    );
    anyhow::ensure!(
        (10..=600_000).contains(&options.backoff_ms),
        "--webhook-backoff-ms must be 10..=600000 (got {})",
        options.backoff_ms
    );
    anyhow::ensure!(
        (1..=1_000).contains(&options.disable_after),
        "--webhook-disable-after must be 1..=1000 (got {})",
        options.disable_after
    );
    Ok(options)
}
