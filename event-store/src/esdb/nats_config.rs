//! `nats://` store URLs: the servers to connect to plus Accrual's `stream=` and `replicas=`
//! parameters, validated before anything connects.

use crate::StoreError;

use super::config::redact;

/// JetStream stream used when the URL names none.
pub const DEFAULT_NATS_STREAM: &str = "accrual-log";
/// JetStream's own bound on replicas.
pub const REPLICAS_MAX: usize = 5;
/// JetStream limits stream names to this many bytes (they become part of subjects and paths).
const STREAM_NAME_BYTES_MAX: usize = 255;
/// Servers one URL may list.
const SERVERS_MAX: usize = 16;

/// A validated NATS JetStream backend configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// Client URLs, one per listed server (`nats://[user:password@]host:port`); the client
    /// connects to one and learns the rest of the cluster from it.
    pub servers: Vec<String>,
    /// The JetStream stream holding Accrual's log (one message per stored chunk).
    pub stream: String,
    /// Copies JetStream keeps of the stream (1, 3 or 5 in practice; Raft needs a majority).
    pub replicas: usize,
    /// Whether the URL said `replicas=`: then an existing stream must have that many; without
    /// it, `replicas` is only what a new stream gets, and an existing one is taken as it is.
    pub replicas_given: bool,
    /// Bound of events per group commit (and per request).
    pub commit_events_max: usize,
    /// Whether opening creates the stream when it does not exist: true for `serve`, false for
    /// the tools that only read (`audit`, `replay`), so a misspelt `stream=` is an error there
    /// rather than a new empty log.
    pub create_stream: bool,
}

impl NatsConfig {
    /// Parses `nats://HOST:PORT[,HOST:PORT...][?stream=NAME&replicas=N]`. Credentials go in the
    /// authority (`nats://user:password@host:4222`) and apply to every listed server. Without
    /// `replicas=` a new stream gets 1 copy when one server is listed and 3 when several are,
    /// and an existing stream is taken with the copies it has.
    pub fn parse(url: &str) -> Result<NatsConfig, StoreError> {
        let invalid = |m: String| StoreError::Invalid(format!("store URL {}: {m}", redact(url)));
        let Some(rest) = url.strip_prefix("nats://") else {
            return Err(invalid("must start with nats://".into()));
        };
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        // Later servers may repeat the scheme (`nats://a:4222,nats://b:4222`).
        let hosts: Vec<&str> = hosts
            .split(',')
            .map(|h| h.trim())
            .map(|h| h.strip_prefix("nats://").unwrap_or(h))
            .collect();
        if hosts.iter().any(|h| h.is_empty()) || hosts.len() > SERVERS_MAX {
            return Err(invalid(format!("list 1 to {SERVERS_MAX} servers as HOST:PORT,HOST:PORT")));
        }
        for host in &hosts {
            check_host(host).map_err(invalid)?;
        }
        let mut stream = None;
        let mut replicas = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if k.eq_ignore_ascii_case("stream") => stream = Some(v.to_owned()),
                Some((k, v)) if k.eq_ignore_ascii_case("replicas") => {
                    let n = v.parse::<usize>().ok().filter(|n| (1..=REPLICAS_MAX).contains(n));
                    let n = n.ok_or_else(|| {
                        invalid(format!("replicas={v:?}: a number from 1 to {REPLICAS_MAX}"))
                    })?;
                    replicas = Some(n);
                }
                _ => {
                    return Err(invalid(format!("unknown parameter {pair:?} (stream=, replicas=)")))
                }
            }
        }
        let stream = stream.unwrap_or_else(|| DEFAULT_NATS_STREAM.to_owned());
        check_stream_name(&stream).map_err(invalid)?;
        let prefix = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        Ok(NatsConfig {
            servers: hosts.iter().map(|h| format!("nats://{prefix}{h}")).collect(),
            stream,
            replicas_given: replicas.is_some(),
            replicas: replicas.unwrap_or(if hosts.len() > 1 { 3 } else { 1 }),
            commit_events_max: crate::DEFAULT_COMMIT_EVENTS_MAX,
            create_stream: true,
        })
    }

    /// The servers with any password hidden, for logs and errors.
    pub fn redacted(&self) -> String {
        self.servers.iter().map(|s| redact(s)).collect::<Vec<_>>().join(",")
    }
}

fn check_host(host: &str) -> Result<(), String> {
    let Some((name, port)) = host.rsplit_once(':') else {
        return Err(format!("server {host:?}: write HOST:PORT (the client port, usually 4222)"));
    };
    if name.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("server {host:?}: write HOST:PORT (the client port, usually 4222)"));
    }
    Ok(())
}

fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > STREAM_NAME_BYTES_MAX {
        return Err(format!("stream= must be 1 to {STREAM_NAME_BYTES_MAX} bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
        return Err(format!(
            "stream={name:?}: JetStream stream names here use ASCII letters, digits, - and _"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_defaults_to_one_copy_of_accrual_log() {
        let c = NatsConfig::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!(c.servers, vec!["nats://127.0.0.1:4222"]);
        assert_eq!((c.stream.as_str(), c.replicas), (DEFAULT_NATS_STREAM, 1));
        assert!(!c.replicas_given, "an existing stream is then taken with the copies it has");
        assert!(NatsConfig::parse("nats://h:4222?replicas=1").unwrap().replicas_given);
    }

    #[test]
    fn a_server_list_defaults_to_three_copies_and_takes_the_parameters() {
        let c = NatsConfig::parse("nats://a:4222,b:4223,c:4224?stream=billing_eu").unwrap();
        assert_eq!(c.servers, vec!["nats://a:4222", "nats://b:4223", "nats://c:4224"]);
        assert_eq!((c.stream.as_str(), c.replicas), ("billing_eu", 3));
        let again =
            NatsConfig::parse("nats://a:4222,nats://b:4223,nats://c:4224?stream=billing_eu");
        assert_eq!(again.unwrap(), c, "later servers may repeat the scheme");
        let c = NatsConfig::parse("nats://a:4222,b:4223?Replicas=5&stream=x").unwrap();
        assert_eq!(c.replicas, 5);
    }

    #[test]
    fn credentials_apply_to_every_server_and_are_hidden() {
        let c = NatsConfig::parse("nats://acc:s3cret@a:4222,b:4222?replicas=3").unwrap();
        assert_eq!(c.servers, vec!["nats://acc:s3cret@a:4222", "nats://acc:s3cret@b:4222"]);
        assert_eq!(c.redacted(), "nats://acc:***@a:4222,nats://acc:***@b:4222");
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        let err = |u: &str| NatsConfig::parse(u).unwrap_err().to_string();
        assert!(err("esdb://h:2113").contains("nats://"));
        assert!(err("nats://h").contains("HOST:PORT"));
        assert!(err("nats://h:4222,").contains("servers"));
        assert!(err("nats://h:99999").contains("HOST:PORT"));
        assert!(err("nats://h:4222?replicas=0").contains("1 to 5"));
        assert!(err("nats://h:4222?replicas=7").contains("1 to 5"));
        assert!(err("nats://h:4222?stream=a.b").contains("letters"));
        assert!(err("nats://h:4222?stream=").contains("1 to 255"));
        assert!(err("nats://h:4222?tls=true").contains("unknown parameter"));
        assert!(err("nats://u:pw@h:4222?replicas=x").contains("u:***@h"), "password hidden");
    }
}
