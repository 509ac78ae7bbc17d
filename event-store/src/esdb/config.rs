//! `esdb://` connection strings: the EventStoreDB client's own settings plus Accrual's
//! `stream=` parameter (the name of the log stream), validated before anything connects.

use std::str::FromStr;

use crate::{StoreError, MAX_STREAM_NAME_BYTES};

/// Log stream used when the connection string names none.
pub const DEFAULT_LOG_STREAM: &str = "accrual-log";
/// Accrual's own query parameter; removed before the string reaches the client.
const STREAM_PARAM: &str = "stream";

/// A validated EventStoreDB / KurrentDB backend configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EsdbConfig {
    /// The connection string for the `eventstore` client (without Accrual's parameters).
    pub connection: String,
    /// The stream holding Accrual's log (one ESDB event per stored chunk).
    pub log_stream: String,
    /// Bound of events per group commit (and per request).
    pub commit_events_max: usize,
}

impl EsdbConfig {
    /// Parses `esdb://HOST:PORT?tls=false[&stream=NAME]` or `esdb+discover://...` (TLS options:
    /// `tls`, `tlsVerifyCert`, `tlsCaFile`, credentials as `user:password@`; cluster seeds as
    /// `esdb://h1:2113,h2:2113,h3:2113`). Every other parameter is the client's.
    pub fn parse(url: &str) -> Result<EsdbConfig, StoreError> {
        let invalid = |m: String| StoreError::Invalid(format!("store URL {}: {m}", redact(url)));
        if !(url.starts_with("esdb://") || url.starts_with("esdb+discover://")) {
            return Err(invalid("must start with esdb:// or esdb+discover://".into()));
        }
        let (connection, stream) = split_stream_param(url);
        let log_stream = stream.unwrap_or_else(|| DEFAULT_LOG_STREAM.to_owned());
        check_log_stream(&log_stream).map_err(invalid)?;
        eventstore::ClientSettings::from_str(&connection)
            .map_err(|e| invalid(format!("not a valid EventStoreDB connection string: {e}")))?;
        Ok(EsdbConfig {
            connection,
            log_stream,
            commit_events_max: crate::DEFAULT_COMMIT_EVENTS_MAX,
        })
    }

    /// The connection string with any password hidden, for logs and errors.
    pub fn redacted(&self) -> String {
        redact(&self.connection)
    }
}

/// Removes `stream=...` from the query string; returns the rest and the (percent-decoded-free)
/// value. Parameter names compare case-insensitively, like the client's.
fn split_stream_param(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None) };
    let mut stream = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if k.eq_ignore_ascii_case(STREAM_PARAM) => stream = Some(v.to_owned()),
            _ => kept.push(pair),
        }
    }
    let connection =
        if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    (connection, stream)
}

fn check_log_stream(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_STREAM_NAME_BYTES {
        return Err(format!("stream= must be 1 to {MAX_STREAM_NAME_BYTES} bytes"));
    }
    if name.starts_with('$') {
        return Err(format!("stream={name:?}: names starting with '$' are ESDB system streams"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
        return Err(format!("stream={name:?}: use ASCII letters, digits and - _ . :"));
    }
    Ok(())
}

/// `esdb://user:secret@host` → `esdb://user:***@host`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{hosts}{tail}")
        }
        None => url.to_owned(),
    }
}

/// Checks a log stream name given on its own (tests, tools).
pub fn validate_log_stream(name: &str) -> Result<(), StoreError> {
    check_log_stream(name).map_err(StoreError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_without_tls() {
        let c = EsdbConfig::parse("esdb://localhost:2113?tls=false").unwrap();
        assert_eq!(c.connection, "esdb://localhost:2113?tls=false");
        assert_eq!(c.log_stream, DEFAULT_LOG_STREAM);
    }

    #[test]
    fn stream_parameter_is_ours_and_removed() {
        let c = EsdbConfig::parse(
            "esdb://127.0.0.1:2113?tls=false&stream=billing-eu&tlsVerifyCert=false",
        )
        .unwrap();
        assert_eq!(c.connection, "esdb://127.0.0.1:2113?tls=false&tlsVerifyCert=false");
        assert_eq!(c.log_stream, "billing-eu");
        let only = EsdbConfig::parse("esdb://h:2113?Stream=x").unwrap();
        assert_eq!((only.connection.as_str(), only.log_stream.as_str()), ("esdb://h:2113", "x"));
    }

    #[test]
    fn cluster_and_discovery_strings_parse() {
        let seeds = "esdb://admin:changeit@n1:2113,n2:2113,n3:2113?nodePreference=leader&tlsCaFile=/etc/ca.crt";
        let c = EsdbConfig::parse(seeds).unwrap();
        assert!(c.connection.contains("n2:2113"));
        assert_eq!(
            c.redacted(),
            "esdb://admin:***@n1:2113,n2:2113,n3:2113?nodePreference=leader&tlsCaFile=/etc/ca.crt"
        );
        EsdbConfig::parse("esdb+discover://cluster.example:2113?tls=true").unwrap();
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        let err = |u: &str| EsdbConfig::parse(u).unwrap_err().to_string();
        assert!(err("sled:/tmp/x").contains("esdb://"));
        assert!(err("http://h:2113").contains("esdb://"));
        assert!(err("esdb://h:2113?stream=$all").contains("system streams"));
        assert!(err("esdb://h:2113?stream=").contains("1 to 256"));
        assert!(err("esdb://h:2113?stream=a%20b").contains("ASCII"));
        assert!(err("esdb://h:2113?nodePreference=sideways").contains("connection string"));
        assert!(err("esdb://u:pw@h:2113?nodePreference=x").contains("u:***@h"), "password hidden");
    }

    #[test]
    fn redaction_leaves_strings_without_password_alone() {
        assert_eq!(redact("esdb://h:2113?tls=false"), "esdb://h:2113?tls=false");
        assert_eq!(redact("esdb://u@h:2113"), "esdb://u:***@h:2113");
    }
}
