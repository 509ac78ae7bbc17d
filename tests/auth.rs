//! Access control on the real binary: tokens made by `accrual token new`, configured as hashes;
//! each service admits its roles only (writer: commands; analyst and auditor: queries; auditor:
//! audit); no or unknown token → UNAUTHENTICATED, wrong role → PERMISSION_DENIED; health stays
//! open; a non-loopback address without auth is refused at start.

mod common;

use std::process::Command;

use common::{free_port, Server};
use proto::v1 as pb;
use proto::v1::audit_service_client::AuditServiceClient;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::{Code, Request};

/// `accrual token new --role R`: (the token, its `role:sha256` configuration entry).
fn token_new(role: &str) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["token", "new", "--role", role])
        .output()
        .expect("run accrual token new");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |prefix: &str| {
        let line = text.lines().find_map(|l| l.strip_prefix(prefix)).expect(prefix);
        line.trim().to_string()
    };
    (field("token:"), field("env:   ACCRUAL_AUTH_TOKENS="))
}

fn with<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(message);
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

fn customer(id: &str) -> pb::RegisterCustomerRequest {
    pb::RegisterCustomerRequest {
        customer_id: id.into(),
        name: "Acme".into(),
        currency: "USD".into(),
        ..Default::default()
    }
}

/// The call's outcome: Ok, or the status code.
fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<(), Code> {
    r.map(|_| ()).map_err(|s| s.code())
}

fn mrr() -> pb::MrrRequest {
    pb::MrrRequest { currency: "USD".into(), date: "2025-01-31".into(), ..Default::default() }
}

// Multi-threaded: `terminate` blocks this thread while the server waits for our connection
// to close, which the client's connection task must be free to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_admits_its_roles_only() {
    let (writer, w) = token_new("writer");
    let (analyst, a) = token_new("analyst");
    let (auditor, u) = token_new("auditor");
    let dir = tempfile::tempdir().unwrap();
    let server =
        Server::start_with(dir.path(), free_port(), &["--auth-tokens", &format!("{w},{a},{u}")]);
    // Health needs no token: this waits until the command service reports SERVING.
    let channel = server.serving("accrual.v1.CommandService").await;
    let mut c = CommandServiceClient::new(channel.clone());
    assert_eq!(
        code(c.register_customer(with(customer("x"), None)).await),
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        code(c.register_customer(with(customer("x"), Some("acc_nope"))).await),
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        code(c.register_customer(with(customer("x"), Some(&analyst))).await),
        Err(Code::PermissionDenied)
    );
    let ack =
        c.register_customer(with(customer("acme"), Some(&writer))).await.unwrap().into_inner();
    let refused = c.register_customer(with(customer("x"), Some(&auditor))).await;
    assert_eq!(code(refused), Err(Code::PermissionDenied));
    let again =
        c.register_customer(with(customer("acme2"), Some(&writer))).await.unwrap().into_inner();
    let (first, second) = (ack.position, again.position);
    assert_eq!(second, first + 1, "refused calls appended nothing");

    let mut q = QueryServiceClient::new(channel.clone());
    assert_eq!(code(q.get_mrr(with(mrr(), None)).await), Err(Code::Unauthenticated));
    assert_eq!(code(q.get_mrr(with(mrr(), Some(&writer))).await), Err(Code::PermissionDenied));
    assert_eq!(code(q.get_mrr(with(mrr(), Some(&analyst))).await), Ok(()));
    assert_eq!(code(q.get_mrr(with(mrr(), Some(&auditor))).await), Ok(()));

    let mut audit = AuditServiceClient::new(channel);
    let digest = || pb::GetDigestRequest::default();
    assert_eq!(
        code(audit.get_digest(with(digest(), Some(&analyst))).await),
        Err(Code::PermissionDenied)
    );
    assert_eq!(code(audit.get_digest(with(digest(), Some(&auditor))).await), Ok(()));
    assert!(server.terminate().await.success());
}

#[test]
fn a_public_address_without_auth_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["serve", "--listen", &format!("0.0.0.0:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_BACKTRACE", "0")
        .env_remove("ACCRUAL_AUTH_TOKENS")
        .output()
        .expect("run accrual serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without auth"), "{err}");
    assert!(!dir.path().join("data").exists(), "refused before opening anything");
    let bad = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["serve", "--auth-tokens", "boss:00"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run accrual serve");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown role \"boss\""));
}
