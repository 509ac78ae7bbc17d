//! TLS for the gRPC server (rustls), optional client-certificate verification (mTLS), the client
//! side of `accrual demo` and `accrual bench`, and throwaway certificates for them (rcgen).
//!
//! One crypto provider for Accrual's own TLS: ring. tonic 0.12's tokio-rustls is built with ring,
//! and this crate keeps rustls' and rcgen's default (aws-lc-rs) out of its own dependencies (the
//! `eventstore` client of the esdb backend brings it in anyway); [`install_crypto_provider`]
//! installs ring as the process default at start, so no rustls builder ever has to guess (with
//! two providers compiled in, rustls panics choosing) — except
//! `serve` with an EventStoreDB store, where the `eventstore` client must install its own
//! ([`install_crypto_provider_for`]).
//!
//! The server does the TLS handshakes itself ([`incoming`]) rather than through tonic's
//! `ServerTlsConfig`: tonic 0.12 gives a handshake no time limit, does not bound the handshakes
//! in progress, and ends the whole server when a handshake fails with an I/O error of a kind it
//! does not list. Here each handshake has [`HANDSHAKE_TIMEOUT_MS`], at most
//! [`HANDSHAKES_IN_FLIGHT_MAX`] run at once (the next connection waits in the kernel's backlog),
//! and a failure only closes (and logs) that connection.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A TLS handshake not finished after this long is dropped.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// TLS handshakes in progress at once; further connections wait to be accepted.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 128;
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next.
const ACCEPT_RETRY_MS: u64 = 100;

/// The provider every TLS config here is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process's rustls crypto provider; call first thing in `main` (for
/// `serve`, [`install_crypto_provider_for`] instead). Calling it again is harmless.
pub fn install_crypto_provider() {
    // Err: a provider is installed already (this one, by an earlier call).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The process provider for `serve` on `store`. With an EventStoreDB store, none: the
/// `eventstore` client (4.0.0) installs aws-lc-rs as the process default when its first
/// connection starts and panics (in its connection task, so every call then fails with
/// "connection closed") if a provider is installed already. Nothing `serve` builds depends on the
/// process default: every TLS config here names ring explicitly ([`provider`]).
pub fn install_crypto_provider_for(store: &crate::config::StoreSpec) {
    if !matches!(store, crate::config::StoreSpec::Esdb(_)) {
        install_crypto_provider();
    }
}

/// PEM text and where it came from (named in every error about it).
pub struct Pem {
    pub bytes: Vec<u8>,
    pub source: String,
}

impl Pem {
    /// Reads `path`; `what` names the setting, e.g. `--tls-cert`.
    pub fn read(path: &Path, what: &str) -> anyhow::Result<Pem> {
        let source = format!("{what} file {}", path.display());
        let bytes = std::fs::read(path).with_context(|| format!("reading {source}"))?;
        Ok(Pem { bytes, source })
    }

    fn certs(&self) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{}: invalid PEM: {e}", self.source))?;
        anyhow::ensure!(!certs.is_empty(), "{}: no PEM CERTIFICATE block in it", self.source);
        Ok(certs)
    }

    fn private_key(&self) -> anyhow::Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(&self.bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}",
                self.source
            )
        })
    }
}

/// The server's certificate chain and key, and for mTLS the CA its clients' certificates must
/// be signed by.
pub struct ServerPem {
    pub cert: Pem,
    pub key: Pem,
    pub client_ca: Option<Pem>,
}

/// A rustls server config (HTTP/2 only) from PEM, or an error naming the file at fault.
pub fn server_config(pem: &ServerPem) -> anyhow::Result<Arc<ServerConfig>> {
    let (certs, key) = (pem.cert.certs()?, pem.key.private_key()?);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &pem.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca)?),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
            "{} does not belong to {}: the key is not the certificate's",
            pem.key.source,
            pem.cert.source
        ),
        e => anyhow::anyhow!("{} with {}: {e}", pem.cert.source, pem.key.source),
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Requires every client to present a certificate that chains to a CA in `ca`.
fn client_verifier(
    ca: &Pem,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in ca.certs()? {
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("{}: unusable CA certificate: {e}", ca.source))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| anyhow::anyhow!("{}: {e}", ca.source))
}

/// The server's TLS settings: the files they came from and the config built from them.
#[derive(Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Set: mutual TLS, clients must present a certificate this CA bundle signed.
    pub client_ca: Option<PathBuf>,
    pub config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// TLS from the resolved `--tls-cert`, `--tls-key` and `--tls-client-ca` (`None`: plaintext).
    /// A key without a certificate (or the reverse), a client CA without them, or a file that is
    /// unreadable or not the PEM expected is an error naming it.
    pub fn load(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> anyhow::Result<Option<ServerTls>> {
        let (cert, key) = match (cert, key, &client_ca) {
            (Some(cert), Some(key), _) => (cert, key),
            (None, None, None) => return Ok(None),
            (None, None, Some(_)) => anyhow::bail!(
                "tls_client_ca (--tls-client-ca) is set without a server certificate: mutual TLS \
                 needs tls_cert and tls_key (--tls-cert, --tls-key) too"
            ),
            (Some(_), None, _) => anyhow::bail!(
                "tls_cert (--tls-cert) is set without tls_key (--tls-key): give both or neither"
            ),
            (None, Some(_), _) => anyhow::bail!(
                "tls_key (--tls-key) is set without tls_cert (--tls-cert): give both or neither"
            ),
        };
        let pem = ServerPem {
            cert: Pem::read(&cert, "tls_cert (--tls-cert)")?,
            key: Pem::read(&key, "tls_key (--tls-key)")?,
            client_ca: match &client_ca {
                Some(path) => Some(Pem::read(path, "tls_client_ca (--tls-client-ca)")?),
                None => None,
            },
        };
        let config = server_config(&pem)?;
        Ok(Some(ServerTls { cert, key, client_ca, config }))
    }
}

/// Accepts connections on `listener` and yields them once their TLS handshake is done. The
/// stream never yields an error (failed handshakes and accepts are logged and skipped). Abort
/// the returned task when the server stops; it also ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> (ReceiverStream<io::Result<TlsStream<TcpStream>>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(HANDSHAKES_IN_FLIGHT_MAX);
    let task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
    (ReceiverStream::new(rx), task)
}

type Handshaken = mpsc::Sender<io::Result<TlsStream<TcpStream>>>;

/// Accepts until the stream is dropped, with at most [`HANDSHAKES_IN_FLIGHT_MAX`] handshakes
/// running; they are aborted with this task.
async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, tx: Handshaken) {
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let room = handshakes.len() < HANDSHAKES_IN_FLIGHT_MAX;
        let accepted = tokio::select! {
            accepted = listener.accept(), if room => accepted,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            _ = tx.closed() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // Small gRPC frames go out at once (as tonic's own listener does).
                let _ = tcp.set_nodelay(true);
                handshakes.spawn(handshake(acceptor.clone(), tcp, peer, tx.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
            }
        }
    }
}

/// One TLS handshake within [`HANDSHAKE_TIMEOUT_MS`]; the connection goes to the server if
/// it succeeds, and is closed (and logged) if not.
async fn handshake(acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr, tx: Handshaken) {
    let limit = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let _ = tx.send(Ok(tls)).await;
        }
        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => {
            tracing::info!(%peer, limit_ms = HANDSHAKE_TIMEOUT_MS, "TLS handshake timed out")
        }
    }
}

/// The client side: trust `ca_pem`, present `identity` (certificate and key PEM) if the server
/// asks, and expect the server's certificate to name `domain`.
pub fn client_config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
    domain: &str,
) -> ClientTlsConfig {
    let config =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(domain);
    match identity {
        Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
        None => config,
    }
}

/// A fresh CA, a server certificate it signed for `localhost` and `127.0.0.1`, and a client
/// certificate it signed: what `accrual demo --tls` and `accrual bench ingest --tls` use.
pub struct Throwaway {
    pub ca_pem: String,
    pub server: ServerPem,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl Throwaway {
    pub fn generate() -> anyhow::Result<Throwaway> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name.push(DnType::CommonName, "accrual throwaway CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign];
        let ca = ca.self_signed(&ca_key)?;
        let leaf = |names: Vec<String>, eku: Eku| -> anyhow::Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params.extended_key_usages = vec![eku];
            let cert = params.signed_by(&key, &ca, &ca_key)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let (server_cert, server_key) = leaf(names, Eku::ServerAuth)?;
        let (client_cert_pem, client_key_pem) =
            leaf(vec!["accrual-client".into()], Eku::ClientAuth)?;
        let pem =
            |text: String, source: &str| Pem { bytes: text.into_bytes(), source: source.into() };
        let server = ServerPem {
            cert: pem(server_cert, "throwaway server certificate"),
            key: pem(server_key, "throwaway server key"),
            client_ca: Some(pem(ca.pem(), "throwaway CA")),
        };
        Ok(Throwaway { ca_pem: ca.pem(), server, client_cert_pem, client_key_pem })
    }

    /// The server config: TLS that requires this CA's client certificate (mTLS).
    pub fn server_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        server_config(&self.server)
    }

    /// The client config: trusts this CA, presents the client certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        let identity = (self.client_cert_pem.as_bytes(), self.client_key_pem.as_bytes());
        client_config(self.ca_pem.as_bytes(), Some(identity), "localhost")
    }
}
