//! TLS on the real binary with certificates made here by rcgen: a CA, a server certificate for
//! localhost and 127.0.0.1, client certificates from that CA and from another one. A client that
//! trusts the CA gets commands, health and reflection; a plaintext client or one that trusts
//! another CA gets nothing; with a client CA configured (mTLS) only a client certificate it
//! signed is admitted; a broken TLS configuration stops the server at start, naming the problem.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{free_port, Server};
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const COMMANDS: &str = "accrual.v1.CommandService";

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign];
        Ca { cert: params.self_signed(&key).unwrap(), key }
    }

    /// (certificate PEM, key PEM) of a leaf for `names`, signed by this CA.
    fn issue(&self, names: &[&str], usage: Eku) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The PEM files of one test, in its temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// ca.pem, server.{pem,key}, client.{pem,key} from that CA; other-ca.pem and
    /// other-client.{pem,key} from another CA; garbage.pem that is no PEM at all.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let (ca, other) = (Ca::new("accrual test CA"), Ca::new("some other CA"));
        let (server_cert, server_key) = ca.issue(&["localhost", "127.0.0.1"], Eku::ServerAuth);
        let (client_cert, client_key) = ca.issue(&["billing-client"], Eku::ClientAuth);
        let (other_cert, other_key) = other.issue(&["billing-client"], Eku::ClientAuth);
        write("ca.pem", &ca.cert.pem());
        write("server.pem", &server_cert);
        write("server.key", &server_key);
        write("client.pem", &client_cert);
        write("client.key", &client_key);
        write("other-ca.pem", &other.cert.pem());
        write("other-client.pem", &other_cert);
        write("other-client.key", &other_key);
        write("garbage.pem", "this is not a certificate\n");
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// A client that trusts `ca` and, if given, presents the certificate and key `identity`.
    fn client(&self, ca: &str, identity: Option<(&str, &str)>) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.read(ca)))
            .domain_name("localhost");
        match identity {
            Some((cert, key)) => {
                config.identity(Identity::from_pem(self.read(cert), self.read(key)))
            }
            None => config,
        }
    }
}

/// Connects to 127.0.0.1:`port` (https with `tls`, else http) and asks health about the
/// command service: its status, or the error with its causes.
/// tonic's client TLS builds its rustls config with the process-default crypto provider. The
/// EventStoreDB client compiles aws-lc-rs into rustls beside ring, and with two providers rustls
/// refuses to pick one, so this test process installs ring, as `accrual`'s `main` does.
fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn health_over(port: u16, tls: Option<ClientTlsConfig>) -> Result<i32, String> {
    let attempt = async {
        let endpoint = match tls {
            Some(tls) => {
                let url = format!("https://127.0.0.1:{port}");
                Channel::from_shared(url).unwrap().tls_config(tls).unwrap()
            }
            None => Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap(),
        };
        let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let req = tonic_health::pb::HealthCheckRequest { service: COMMANDS.into() };
        let reply = health.check(req).await.map_err(|s| format!("call: {s:?}"))?;
        Ok(reply.into_inner().status)
    };
    match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Ok(result) => result,
        Err(_) => Err("no answer in 15 s".into()),
    }
}

async fn register(channel: Channel, id: &str) -> pb::CommandAck {
    let req = pb::RegisterCustomerRequest {
        customer_id: id.into(),
        name: "Acme".into(),
        currency: "USD".into(),
        ..Default::default()
    };
    let mut c = CommandServiceClient::new(channel);
    c.register_customer(req).await.expect("register over TLS").into_inner()
}

/// The services reflection lists.
async fn reflected_services(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(channel);
    let replies = client.server_reflection_info(tokio_stream::iter(vec![request])).await;
    match replies.unwrap().into_inner().message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection reply {other:?}"),
    }
}

// Multi-threaded: `terminate` blocks this thread while the server waits for our connection
// to close, which the client's connection task must be free to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_commands_health_and_reflection_to_clients_trusting_its_ca() {
    install_ring();
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server.key"));
    let server =
        Server::start_with(data.path(), free_port(), &["--tls-cert", &cert, "--tls-key", &key]);
    let channel = server.serving_tls(COMMANDS, pki.client("ca.pem", None)).await;
    let first = register(channel.clone(), "acme").await;
    assert!(reflected_services(channel.clone()).await.iter().any(|s| s == COMMANDS));

    let plaintext = health_over(server.port(), None).await;
    assert!(plaintext.is_err(), "a plaintext client was answered: {plaintext:?}");
    let distrusting = health_over(server.port(), Some(pki.client("other-ca.pem", None))).await;
    let error = distrusting.expect_err("a client trusting another CA was answered");
    assert!(error.contains("UnknownIssuer"), "{error}");

    // A connection that never starts its handshake holds up no one (handshakes run apart, each
    // with a time limit); the refused connections left the server serving its data.
    let _silent = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    assert_eq!(health_over(server.port(), Some(pki.client("ca.pem", None))).await, Ok(1));
    assert_eq!(register(channel, "acme-2").await.position, first.position + 1);
    assert!(server.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_client_certificates_from_the_configured_ca() {
    install_ring();
    let pki = Pki::new();
    let config = pki.path("accrual.toml");
    let toml = format!(
        "tls_cert = {:?}\ntls_key = {:?}\ntls_client_ca = {:?}\n",
        pki.arg("server.pem"),
        pki.arg("server.key"),
        pki.arg("ca.pem")
    );
    std::fs::write(&config, toml).unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = config.display().to_string();
    let server = Server::start_with(data.path(), free_port(), &["--config", &config]);
    let admitted = pki.client("ca.pem", Some(("client.pem", "client.key")));
    let channel = server.serving_tls(COMMANDS, admitted.clone()).await;
    let first = register(channel.clone(), "acme").await;

    let port = server.port();
    let anonymous = health_over(port, Some(pki.client("ca.pem", None))).await;
    assert!(anonymous.is_err(), "a client without a certificate was answered: {anonymous:?}");
    let foreign = pki.client("ca.pem", Some(("other-client.pem", "other-client.key")));
    let foreign = health_over(port, Some(foreign)).await;
    assert!(foreign.is_err(), "a certificate from another CA was admitted: {foreign:?}");
    // The server's own certificate is from the CA but not for client authentication.
    let server_cert = pki.client("ca.pem", Some(("server.pem", "server.key")));
    let misused = health_over(port, Some(server_cert)).await;
    assert!(misused.is_err(), "a server-auth-only certificate was admitted: {misused:?}");

    assert_eq!(health_over(port, Some(admitted)).await, Ok(1));
    assert_eq!(register(channel, "acme-2").await.position, first.position + 1);
    assert!(server.terminate().await.success());
}

/// Runs `accrual serve` with `args` and `env` (on a loopback port unless `args` has --listen),
/// expecting it to refuse to start: returns its stderr, after checking it created no data dir.
fn refused(args: &[&str], env: &[(&str, String)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut command = Command::new(env!("CARGO_BIN_EXE_accrual"));
    command.arg("serve").args(args);
    if !args.contains(&"--listen") {
        command.args(["--listen", &format!("127.0.0.1:{}", free_port())]);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.arg("--data-dir").arg(&data).env("RUST_BACKTRACE", "0").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "started with {args:?} {env:?}: {stderr}");
    assert!(!data.exists(), "{args:?}: opened the data dir before refusing");
    stderr
}

fn assert_names(stderr: &str, parts: &[&str]) {
    for part in parts {
        assert!(stderr.contains(part), "{part:?} not in: {stderr}");
    }
}

#[test]
fn a_broken_tls_configuration_stops_the_server_at_start_naming_the_problem() {
    let pki = Pki::new();
    let (cert, key, ca) = (pki.arg("server.pem"), pki.arg("server.key"), pki.arg("ca.pem"));
    let missing = pki.arg("missing.key");
    let garbage = pki.arg("garbage.pem");
    let other_key = pki.arg("other-client.key");

    let err = refused(&["--tls-cert", &cert, "--tls-key", &missing], &[]);
    assert_names(&err, &["tls_key", &missing]);
    let err = refused(&["--tls-cert", &garbage, "--tls-key", &key], &[]);
    assert_names(&err, &["tls_cert", &garbage, "no PEM CERTIFICATE"]);
    let err = refused(&["--tls-cert", &cert, "--tls-key", &garbage], &[]);
    assert_names(&err, &["tls_key", &garbage, "no usable PEM private key"]);
    let err = refused(&["--tls-cert", &cert, "--tls-key", &other_key], &[]);
    assert_names(&err, &[&cert, &other_key, "not the certificate's"]);
    let err = refused(&["--tls-cert", &cert], &[]);
    assert_names(&err, &["without tls_key"]);
    let err = refused(&[], &[("ACCRUAL_TLS_KEY", key.clone())]);
    assert_names(&err, &["without tls_cert"]);
    let err = refused(&[], &[("ACCRUAL_TLS_CLIENT_CA", ca.clone())]);
    assert_names(&err, &["tls_client_ca", "without a server certificate"]);
    let err = refused(&["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &garbage], &[]);
    assert_names(&err, &["tls_client_ca", &garbage]);
}

#[test]
fn tokens_in_clear_text_on_a_public_address_are_refused_unless_allowed() {
    let tokens = format!("writer:{}", "ab".repeat(32));
    let public = format!("0.0.0.0:{}", free_port());
    let err = refused(&["--listen", &public, "--auth-tokens", &tokens], &[]);
    assert_names(&err, &["without TLS", "--allow-plaintext", "--tls-cert"]);
}

/// Runs `accrual` with `args`: (success, stdout, stderr).
fn accrual(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_accrual")).args(args).output().unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).to_string();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[test]
fn demo_over_mutual_tls_prints_the_same_report_as_without() {
    let (ok, over_tls, err) = accrual(&["demo", "--seed", "3", "--months", "1", "--tls"]);
    assert!(ok, "demo --tls failed: {err}");
    assert!(over_tls.contains("trial balance: balances"), "{over_tls}");
    let (ok, plain, err) = accrual(&["demo", "--seed", "3", "--months", "1"]);
    assert!(ok, "demo failed: {err}");
    assert_eq!(over_tls, plain, "TLS changes nothing in the report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ingest_over_mutual_tls_in_process_and_to_a_running_server() {
    install_ring();
    let small = ["--events", "300", "--batch", "100", "--clients", "2", "--subscriptions", "3"];
    let (ok, out, err) = accrual(&[&["bench", "ingest", "--tls"][..], &small].concat());
    assert!(ok && out.contains("ingest events=300 "), "bench ingest --tls: {out}{err}");

    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (pki.arg("server.pem"), pki.arg("server.key"), pki.arg("ca.pem"));
    let tls = ["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca];
    let server = Server::start_with(data.path(), free_port(), &tls);
    let admitted = pki.client("ca.pem", Some(("client.pem", "client.key")));
    server.serving_tls(COMMANDS, admitted).await;
    let url = format!("https://127.0.0.1:{}", server.port());
    let (client_cert, client_key) = (pki.arg("client.pem"), pki.arg("client.key"));
    let remote = ["bench", "ingest", "--addr", &url, "--tls-ca", &ca, "--tls-domain", "localhost"];
    let identity = ["--tls-cert", &client_cert, "--tls-key", &client_key];
    let (ok, out, err) = accrual(&[&remote[..], &identity, &small].concat());
    assert!(ok && out.contains("ingest events=300 "), "bench ingest --addr {url}: {out}{err}");
    let (ok, _, err) = accrual(&[&remote[..], &small].concat());
    assert!(!ok, "a bench client without a certificate was admitted");
    assert!(err.contains("connecting to") || err.contains("transport"), "{err}");

    let (ok, _, err) = accrual(&[&["bench", "ingest", "--addr", &url][..], &small].concat());
    assert!(!ok && err.contains("give --tls-ca"), "{err}");
    let http = format!("http://127.0.0.1:{}", server.port());
    let (ok, _, err) = accrual(&["bench", "ingest", "--addr", &http, "--tls-ca", &ca]);
    assert!(!ok && err.contains("must be an https:// URL"), "{err}");
    assert!(server.terminate().await.success());
}
