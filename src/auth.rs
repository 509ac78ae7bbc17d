//! Access control (issue #5): bearer tokens with roles, checked per gRPC service.
//!
//! * `writer` may call `CommandService`; `analyst` `QueryService`; `auditor` `QueryService`,
//!   `AuditService` and `FeedService`; `subscriber` `FeedService` (services that only react to
//!   events); `admin` everything, and alone `WebhookService` (endpoint secrets). Health and
//!   reflection stay open.
//! * Tokens are configured as the hex SHA-256 of the token, never the token itself; the server
//!   hashes the presented `authorization: Bearer <token>` and looks the hash up. No token, or
//!   one it does not know → UNAUTHENTICATED; a known token of a role the service does not admit
//!   → PERMISSION_DENIED. Tokens are never logged.
//! * `accrual token new --role R` prints a fresh token and the configuration line for it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use clap::{Args, Subcommand};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Role {
    /// CommandService: every write
    Writer,
    /// QueryService: invoices, MRR, revenue, the journal
    Analyst,
    /// QueryService, AuditService and FeedService
    Auditor,
    /// FeedService: the event feed only
    Subscriber,
    /// every service
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> anyhow::Result<Role> {
        match s {
            "writer" => Ok(Role::Writer),
            "analyst" => Ok(Role::Analyst),
            "auditor" => Ok(Role::Auditor),
            "admin" => Ok(Role::Admin),
            "subscriber" => Ok(Role::Subscriber),
            other => anyhow::bail!(
                "unknown role {other:?} (roles: writer, analyst, auditor, subscriber, admin)"
            ),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Analyst => "analyst",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::Subscriber => "subscriber",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The gRPC services behind access control, and who may call each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarded {
    Command,
    Query,
    Audit,
    Feed,
    Webhooks,
}

impl Guarded {
    fn admits(self, role: Role) -> bool {
        matches!(
            (self, role),
            (_, Role::Admin)
                | (Guarded::Command, Role::Writer)
                | (Guarded::Query, Role::Analyst | Role::Auditor)
                | (Guarded::Audit, Role::Auditor)
                | (Guarded::Feed, Role::Subscriber | Role::Auditor)
        )
    }

    fn name(self) -> &'static str {
        match self {
            Guarded::Command => "accrual.v1.CommandService",
            Guarded::Query => "accrual.v1.QueryService",
            Guarded::Audit => "accrual.v1.AuditService",
            Guarded::Feed => "accrual.v1.FeedService",
            Guarded::Webhooks => "accrual.v1.WebhookService",
        }
    }
}

/// The configured tokens: SHA-256 of each token → its role.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Role>,
}

impl Tokens {
    /// Most tokens one configuration may hold.
    pub const TOKENS_MAX: usize = 1_024;

    /// Parses `role:sha256hex` entries separated by commas (the flag and env form).
    pub fn parse_list(list: &str, source: &str) -> anyhow::Result<Tokens> {
        let entries = list.split(',').map(str::trim).filter(|e| !e.is_empty());
        let pairs = entries.map(|e| {
            let (role, hash) = e.split_once(':').ok_or_else(|| {
                anyhow::anyhow!("{source}: {e:?} is not role:sha256 (see `accrual token new`)")
            })?;
            Ok((role.trim().to_string(), hash.trim().to_string()))
        });
        Tokens::from_pairs(pairs.collect::<anyhow::Result<Vec<_>>>()?, source)
    }

    /// Builds from (role, hex SHA-256) pairs; every one must be valid and unique.
    pub fn from_pairs(pairs: Vec<(String, String)>, source: &str) -> anyhow::Result<Tokens> {
        anyhow::ensure!(pairs.len() <= Tokens::TOKENS_MAX, "{source}: more than 1,024 tokens");
        let mut by_hash = HashMap::with_capacity(pairs.len());
        for (role, hash) in pairs {
            let role = Role::parse(&role).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
            let bytes: [u8; 32] = hex::decode(&hash)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| anyhow::anyhow!("{source}: {hash:?} is not 64 hex digits"))?;
            anyhow::ensure!(
                by_hash.insert(bytes, role).is_none(),
                "{source}: a token is listed twice"
            );
        }
        Ok(Tokens { by_hash })
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The role of a presented token, if configured.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash).copied()
    }
}

/// A tonic interceptor for one service. Without tokens (no auth configured) it admits every
/// call; `accrual serve` allows that on a loopback address only.
#[derive(Clone)]
pub struct Guard {
    tokens: Option<Arc<Tokens>>,
    service: Guarded,
}

impl Guard {
    pub fn new(tokens: Option<Arc<Tokens>>, service: Guarded) -> Guard {
        Guard { tokens, service }
    }

    /// Admits the call or says why not (UNAUTHENTICATED / PERMISSION_DENIED). The error is
    /// tonic's own `Status`, as the `Interceptor` trait requires.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(tokens) = &self.tokens else { return Ok(req) };
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return Err(Status::unauthenticated(
                "missing bearer token (authorization: Bearer <token>)",
            ));
        };
        let Some(role) = tokens.role_of(token.trim()) else {
            return Err(Status::unauthenticated("unknown token"));
        };
        if !self.service.admits(role) {
            let msg = format!("role {role} may not call {}", self.service.name());
            return Err(Status::permission_denied(msg));
        }
        Ok(req)
    }
}

impl tonic::service::Interceptor for Guard {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.check(req)
    }
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a new random token for a role and the configuration line that admits it.
    New(NewTokenArgs),
}

#[derive(Args, Debug)]
pub struct NewTokenArgs {
    /// What the token may call: writer (CommandService), analyst (QueryService), auditor
    /// (QueryService and AuditService), admin (everything). Health and reflection need none.
    #[arg(long, value_enum)]
    pub role: Role,
}

/// A new token: `acc_` and 64 hex digits (256 random bits).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("acc_{}", hex::encode(bytes))
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::New(args) = cmd;
    let token = new_token();
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    println!("token: {token}");
    println!("(shown once; the server keeps only its SHA-256)");
    println!("env:   ACCRUAL_AUTH_TOKENS={}:{hash}", args.role);
    println!("toml:  auth_tokens = [\"{}:{hash}\"]", args.role);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(pairs: &[(&str, &str)]) -> Arc<Tokens> {
        let hashed = pairs
            .iter()
            .map(|(role, token)| (role.to_string(), hex::encode(Sha256::digest(token.as_bytes()))))
            .collect();
        Arc::new(Tokens::from_pairs(hashed, "test").unwrap())
    }

    fn call(guard: &Guard, token: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = Request::new(());
        if let Some(t) = token {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        guard.check(req).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn roles_admit_their_services_only() {
        use tonic::Code::{PermissionDenied, Unauthenticated};
        let t = tokens(&[
            ("writer", "w"),
            ("analyst", "a"),
            ("auditor", "u"),
            ("subscriber", "s"),
            ("admin", "x"),
        ]);
        let denied = Err(PermissionDenied);
        // Columns: writer, analyst, auditor, subscriber, admin.
        let table: [(Guarded, [Result<(), tonic::Code>; 5]); 5] = [
            (Guarded::Command, [Ok(()), denied, denied, denied, Ok(())]),
            (Guarded::Query, [denied, Ok(()), Ok(()), denied, Ok(())]),
            (Guarded::Audit, [denied, denied, Ok(()), denied, Ok(())]),
            (Guarded::Feed, [denied, denied, Ok(()), Ok(()), Ok(())]),
            (Guarded::Webhooks, [denied, denied, denied, denied, Ok(())]),
        ];
        for (service, expected) in table {
            let guard = Guard::new(Some(t.clone()), service);
            for (token, want) in ["w", "a", "u", "s", "x"].into_iter().zip(expected) {
                assert_eq!(call(&guard, Some(token)), want, "{service:?} with {token}");
            }
            assert_eq!(call(&guard, None), Err(Unauthenticated));
            assert_eq!(call(&guard, Some("nope")), Err(Unauthenticated));
            let open = Guard::new(None, service);
            assert_eq!(call(&open, None), Ok(()), "no auth configured: open (loopback only)");
        }
    }

    #[test]
    fn bad_configuration_is_refused_by_name() {
        let bad = [
            "writer",
            "boss:0000000000000000000000000000000000000000000000000000000000000000",
            "writer:abc",
        ];
        for list in bad {
            let err = Tokens::parse_list(list, "ACCRUAL_AUTH_TOKENS").unwrap_err().to_string();
            assert!(err.starts_with("ACCRUAL_AUTH_TOKENS"), "{err}");
        }
        let hash = hex::encode([7u8; 32]);
        let twice = format!("writer:{hash},admin:{hash}");
        assert!(Tokens::parse_list(&twice, "x").is_err(), "a hash listed twice");
        assert!(Tokens::parse_list("", "x").unwrap().is_empty());
    }

    #[test]
    fn new_tokens_are_random_and_hash_to_their_line() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        let line = format!("writer:{}", hex::encode(Sha256::digest(a.as_bytes())));
        let t = Tokens::parse_list(&line, "x").unwrap();
        assert_eq!(t.role_of(&a), Some(Role::Writer));
        assert_eq!(t.role_of(&b), None);
    }
}
