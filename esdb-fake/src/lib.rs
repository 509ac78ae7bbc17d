//! **A wire-protocol fake of the part of EventStoreDB's gRPC API that Accrual's `esdb` backend
//! uses — for tests. It is not EventStoreDB.** It was written from the `.proto` files the
//! `eventstore` 4.0.0 client is generated from (vendored in `protos/`) and from EventStoreDB's
//! documented semantics, so that the real `eventstore::Client` and Accrual's real `EsdbLog` can
//! run over a real TCP port on a machine where no EventStoreDB server can run.
//!
//! Implemented (in memory, one mutex, nothing durable):
//!
//! * `ServerFeatures.GetSupportedMethods`: advertises `streams.read`, `streams.append` and
//!   itself only (no `batchappend`, so the client never tries BatchAppend);
//! * `Streams.Append`: options then proposed messages; `any` / `no_stream` / `stream_exists` /
//!   exact revision, atomic, `WrongExpectedVersion` with the current revision; idempotent
//!   append (the same event ids already stored right after the expected revision, or in a row
//!   anywhere for `any`, are acknowledged with the original result and not written again);
//!   required `type` and `content-type` metadata; the maximum append size (1 MiB by default)
//!   with ESDB's `maximum-append-size-exceeded` error; success carries the stream's revision
//!   and a `$all` position (increasing, not dense; commit = prepare);
//! * `Streams.Read` of one stream, forwards, from a revision with a count (`stream_not_found`
//!   for a missing stream), and as a catch-up subscription (start, exclusive revision, end):
//!   confirmation, stored events, `caught_up`, live events; bounded buffers.
//!
//! Not implemented (UNIMPLEMENTED or ignored): `$all` reads and subscriptions, backward reads,
//! filters, link resolution, Delete, Tombstone, BatchAppend, persistent subscriptions,
//! projections, users, gossip (a single-node `tls=false` client needs none), TLS,
//! authentication, stream metadata (`$maxCount`, `$tb`), scavenging, durability, clustering.
//!
//! Test controls: [`FakeServer::stop`] / [`FakeServer::restart`] (same port, same data),
//! [`FakeServer::fail_appends`] (transient faults), [`FakeServer::append_raw`] (write an event
//! no client would, e.g. a foreign event type in a log stream), [`FakeServer::attempts`].

mod db;
mod proxy;
mod service;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use db::{Expect, Outcome, Proposed, StoredEvent};
pub use service::REPORTED_VERSION;
pub use state::{AppendAttempt, Fault, DEFAULT_MAX_APPEND_SIZE};

/// The vendored protos, compiled server side (see `protos/README.md`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    pub mod event_store {
        pub mod client {
            tonic::include_proto!("event_store.client");
            pub mod streams {
                tonic::include_proto!("event_store.client.streams");
            }
            pub mod server_features {
                tonic::include_proto!("event_store.client.server_features");
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

use pb::event_store::client::server_features::server_features_server::ServerFeaturesServer;
use pb::event_store::client::streams::streams_server::StreamsServer;

/// A running fake: a gRPC server on a private loopback port behind a relay on the public one.
pub struct FakeServer {
    addr: SocketAddr,
    state: Arc<state::State>,
    backend: SocketAddr,
    relay: tokio::sync::Mutex<Option<proxy::Relay>>,
    server: JoinHandle<()>,
}

impl FakeServer {
    /// Starts a fake on a free loopback port (needs a Tokio runtime).
    pub async fn start() -> std::io::Result<FakeServer> {
        FakeServer::start_with(DEFAULT_MAX_APPEND_SIZE).await
    }

    /// Starts a fake with another maximum append size (bytes of one `Streams.Append`).
    pub async fn start_with(max_append_size: usize) -> std::io::Result<FakeServer> {
        let public = TcpListener::bind("127.0.0.1:0").await?;
        let addr = public.local_addr()?;
        let state = Arc::new(state::State::new(addr, max_append_size));
        let inner = TcpListener::bind("127.0.0.1:0").await?;
        let backend = inner.local_addr()?;
        let server = tokio::spawn(serve(inner, state.clone()));
        let relay = proxy::Relay::start(public, backend);
        tracing::debug!(%addr, "esdb-fake listening");
        Ok(FakeServer { addr, state, backend, relay: tokio::sync::Mutex::new(Some(relay)), server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `esdb://127.0.0.1:PORT?tls=false`: a single-node connection string for the client.
    pub fn url(&self) -> String {
        format!("esdb://{}?tls=false", self.addr)
    }

    /// Closes the port and cuts every open connection (in-flight calls and subscriptions fail
    /// with a transport error; new connections are refused). The data stays.
    pub async fn stop(&self) {
        if let Some(relay) = self.relay.lock().await.take() {
            relay.stop().await;
        }
    }

    /// Listens on the same port again, with the same data.
    pub async fn restart(&self) -> std::io::Result<()> {
        let mut relay = self.relay.lock().await;
        if relay.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            *relay = Some(proxy::Relay::start(listener, self.backend));
        }
        Ok(())
    }

    /// The next `n` appends meet `fault` (queued in order after any already queued).
    pub fn fail_appends(&self, n: u32, fault: Fault) {
        self.state.add_faults(n, fault);
    }

    /// Faults not yet met.
    pub fn pending_faults(&self) -> usize {
        self.state.pending_faults()
    }

    /// Appends one event to `stream` bypassing every check and fault (any type, any bytes,
    /// a fresh id), as another program writing to the same stream would. Returns its revision.
    pub fn append_raw(&self, stream: &str, event_type: &str, data: &[u8]) -> u64 {
        let event = Proposed {
            id: Uuid::new_v4(),
            event_type: event_type.to_owned(),
            content_type: "application/octet-stream".to_owned(),
            custom_metadata: Vec::new(),
            data: data.to_vec(),
        };
        match self.state.append(stream, Expect::Any, vec![event]) {
            Outcome::Success { last_revision: Some(r), .. } => r,
            other => unreachable!("an append with Any always succeeds: {other:?}"),
        }
    }

    /// Every event of `stream`, in revision order.
    pub fn events(&self, stream: &str) -> Vec<StoredEvent> {
        let db = self.state.db.lock();
        let len = usize::try_from(db.len(stream)).unwrap_or(usize::MAX);
        let page = db.page(stream, 0, len).unwrap_or_default();
        page.iter().map(|e| (**e).clone()).collect()
    }

    /// The `Streams.Append` calls received (the latest [`state::ATTEMPTS_MAX`]), faulted or not.
    pub fn attempts(&self) -> Vec<AppendAttempt> {
        self.state.attempts()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.server.abort();
        if let Ok(mut relay) = self.relay.try_lock() {
            if let Some(relay) = relay.take() {
                drop(tokio::spawn(relay.stop()));
            }
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<state::State>) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let result = tonic::transport::Server::builder()
        .add_service(StreamsServer::new(service::Streams { state }))
        .add_service(ServerFeaturesServer::new(service::Features))
        .serve_with_incoming(incoming)
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "esdb-fake server ended");
    }
}
