//! The gRPC server: the command service and the query service (each when this process runs
//! its role), the audit service and the event feed (with the query role, when the process has
//! the log open),
//! health (SERVING for the services registered here; others are unknown to it) and reflection
//! (so grpcurl, grpcui and Postman work with no proto files; it lists the services registered
//! here), with explicit transport limits and graceful shutdown; over TLS (every service on the
//! one port) when `ServerLimits::tls` is set (handshakes in `crate::tls`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use command_service::engine::Engine;
use command_service::service::{CommandApi, Limits};
use proto::v1::audit_service_server::{self, AuditServiceServer};
use proto::v1::command_service_server::{self, CommandServiceServer};
use proto::v1::feed_service_server::{self, FeedServiceServer};
use proto::v1::query_service_server::{self, QueryServiceServer};
use proto::v1::webhook_service_server::{self, WebhookServiceServer};
use query_service::QueryApi;
use tokio::net::TcpListener;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::audit_service::AuditApi;
use crate::auth::{Guard, Guarded, Tokens};
use crate::feed::FeedApi;

/// The services that need the log open in this process and the query role's read models.
pub struct LogServices {
    pub audit: AuditApi,
    pub feed: FeedApi,
    pub webhooks: Arc<crate::webhooks::WebhookApi>,
}

/// Serves the shared webhook API (the process keeps a handle to stop its tasks at shutdown).
#[derive(Clone)]
pub struct SharedWebhooks(pub Arc<crate::webhooks::WebhookApi>);

#[tonic::async_trait]
impl proto::v1::webhook_service_server::WebhookService for SharedWebhooks {
    async fn create_webhook_endpoint(
        &self,
        r: tonic::Request<proto::v1::CreateWebhookEndpointRequest>,
    ) -> Result<tonic::Response<proto::v1::CreateWebhookEndpointResponse>, tonic::Status> {
        self.0.create_webhook_endpoint(r).await
    }
    async fn list_webhook_endpoints(
        &self,
        r: tonic::Request<proto::v1::ListWebhookEndpointsRequest>,
    ) -> Result<tonic::Response<proto::v1::ListWebhookEndpointsResponse>, tonic::Status> {
        self.0.list_webhook_endpoints(r).await
    }
    async fn set_webhook_endpoint_enabled(
        &self,
        r: tonic::Request<proto::v1::SetWebhookEndpointEnabledRequest>,
    ) -> Result<tonic::Response<proto::v1::WebhookEndpoint>, tonic::Status> {
        self.0.set_webhook_endpoint_enabled(r).await
    }
    async fn delete_webhook_endpoint(
        &self,
        r: tonic::Request<proto::v1::DeleteWebhookEndpointRequest>,
    ) -> Result<tonic::Response<proto::v1::DeleteWebhookEndpointResponse>, tonic::Status> {
        self.0.delete_webhook_endpoint(r).await
    }
    async fn list_webhook_deliveries(
        &self,
        r: tonic::Request<proto::v1::ListWebhookDeliveriesRequest>,
    ) -> Result<tonic::Response<proto::v1::ListWebhookDeliveriesResponse>, tonic::Status> {
        self.0.list_webhook_deliveries(r).await
    }
    async fn redeliver_webhook_event(
        &self,
        r: tonic::Request<proto::v1::RedeliverWebhookEventRequest>,
    ) -> Result<tonic::Response<proto::v1::RedeliverWebhookEventResponse>, tonic::Status> {
        self.0.redeliver_webhook_event(r).await
    }
}

pub mod call_limits;

/// Transport bounds of the server (`crate::limits` reads them from flags, env and TOML), and
/// its TLS.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Largest request message any service accepts (decoded size); more: RESOURCE_EXHAUSTED.
    pub message_bytes_max: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: streams one connection may open; a client's
    /// HTTP/2 stack queues calls beyond it (no error).
    pub concurrent_streams_max: u32,
    /// Calls one connection may have in progress at once; more: RESOURCE_EXHAUSTED at once.
    pub concurrency_per_connection_max: usize,
    /// Calls (accrual services) in progress on the whole server; more: RESOURCE_EXHAUSTED.
    pub calls_in_flight_max: u32,
    /// Longest wait for a call's response headers (a whole unary call or client-streaming
    /// upload); a client's shorter grpc-timeout wins; over it: DEADLINE_EXCEEDED.
    pub request_timeout_ms: u64,
    /// `Some`: every connection is TLS (health and reflection too); `None`: plaintext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            message_bytes_max: 16 * 1024 * 1024,
            concurrent_streams_max: 256,
            concurrency_per_connection_max: 128,
            calls_in_flight_max: 512,
            request_timeout_ms: 60_000,
            tls: None,
        }
    }
}

/// Longest a graceful shutdown waits for open connections to finish their calls and close
/// (HTTP/2 GOAWAY, then a PING the client must answer). A client that never answers (hung, or
/// a process whose runtime is blocked) would otherwise hold the shutdown until the keepalive
/// gives up on it (50 s), past a typical orchestrator's grace period; after this the
/// connections are dropped and the engine is flushed as usual.
pub const SHUTDOWN_DRAIN_MS_MAX: u64 = 5_000;

/// Serves until `shutdown` resolves, then stops accepting, lets calls in flight finish (at most
/// [`SHUTDOWN_DRAIN_MS_MAX`]), and flushes the engine (every acknowledged command is already durable; this drains the rest).
/// `engine` serves the CommandService, `query` the QueryService and `audit` the AuditService;
/// a service given `None` is not registered (its calls answer UNIMPLEMENTED). With `auth`, each
/// of them admits only the roles `crate::auth` gives it; health and reflection stay open.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    engine: Option<Arc<Engine>>,
    query: Option<QueryApi>,
    log_services: Option<LogServices>,
    auth: Option<Arc<Tokens>>,
    limits: Limits,
    server: ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (mut health, health_service) = tonic_health::server::health_reporter();
    let mut services = vec![tonic_health::pb::health_server::SERVICE_NAME];
    if engine.is_some() {
        health.set_serving::<CommandServiceServer<CommandApi>>().await;
        services.push(command_service_server::SERVICE_NAME);
    }
    if query.is_some() {
        health.set_serving::<QueryServiceServer<QueryApi>>().await;
        services.push(query_service_server::SERVICE_NAME);
    }
    let (audit, feed, webhooks) = match log_services {
        Some(LogServices { audit, feed, webhooks }) => (Some(audit), Some(feed), Some(webhooks)),
        None => (None, None, None),
    };
    let webhooks_handle = webhooks.clone();
    if audit.is_some() {
        health.set_serving::<AuditServiceServer<AuditApi>>().await;
        health.set_serving::<FeedServiceServer<FeedApi>>().await;
        health.set_serving::<WebhookServiceServer<SharedWebhooks>>().await;
        services.push(audit_service_server::SERVICE_NAME);
        services.push(feed_service_server::SERVICE_NAME);
        services.push(webhook_service_server::SERVICE_NAME);
    }
    let reflection = |own: &str| {
        services.iter().chain([&own]).fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(*name),
        )
    };
    use tonic_reflection::pb::{v1, v1alpha};
    let reflection_v1 = reflection(v1::server_reflection_server::SERVICE_NAME).build_v1()?;
    let reflection_v1alpha =
        reflection(v1alpha::server_reflection_server::SERVICE_NAME).build_v1alpha()?;
    let running = (engine.is_some(), query.is_some(), audit.is_some());
    let guard = |service| Guard::new(auth.clone(), service);
    let commands = engine.clone().map(|engine| {
        let api = CommandServiceServer::new(CommandApi::new(engine, limits))
            .max_decoding_message_size(server.message_bytes_max);
        InterceptedService::new(api, guard(Guarded::Command))
    });
    let bytes_max = server.message_bytes_max;
    let query = query.map(|q| {
        let api = QueryServiceServer::new(q).max_decoding_message_size(bytes_max);
        InterceptedService::new(api, guard(Guarded::Query))
    });
    let audit = audit.map(|a| {
        let api = AuditServiceServer::new(a).max_decoding_message_size(bytes_max);
        InterceptedService::new(api, guard(Guarded::Audit))
    });
    let feed = feed.map(|f| {
        let api = FeedServiceServer::new(f).max_decoding_message_size(bytes_max);
        InterceptedService::new(api, guard(Guarded::Feed))
    });
    let webhooks = webhooks.map(|w| {
        let api = WebhookServiceServer::new(SharedWebhooks(w)).max_decoding_message_size(bytes_max);
        InterceptedService::new(api, guard(Guarded::Webhooks))
    });
    let tls = server.tls.is_some();
    tracing::info!(addr = %listener.local_addr()?, services = ?services, tls, "accrual listening");
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(server.concurrent_streams_max)
        // Outermost first: metrics see every call, including those the call limits refuse.
        .layer(crate::grpc_metrics::GrpcMetricsLayer)
        .layer(call_limits::CallLimitsLayer::new(&server))
        .trace_fn(|req| tracing::info_span!("grpc", path = %req.uri().path()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_optional_service(commands)
        .add_optional_service(query)
        .add_optional_service(audit)
        .add_optional_service(feed)
        .add_optional_service(webhooks);
    let (requested_tx, requested_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = requested_tx.send(());
    };
    let drain_deadline = async move {
        if requested_rx.await.is_ok() {
            tokio::time::sleep(Duration::from_millis(SHUTDOWN_DRAIN_MS_MAX)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    match server.tls {
        Some(config) => {
            let (incoming, acceptor) = crate::tls::incoming(listener, config);
            let served = bounded_drain(
                router.serve_with_incoming_shutdown(incoming, shutdown),
                drain_deadline,
            )
            .await;
            acceptor.abort();
            served?
        }
        None => {
            // tonic's own incoming sets TCP_NODELAY (a bare listener stream does not: unary
            // calls then wait on Nagle's algorithm, about 2x the p99).
            let incoming = TcpIncoming::from_listener(listener, true, None)
                .map_err(|e| anyhow::anyhow!("listening: {e}"))?;
            bounded_drain(router.serve_with_incoming_shutdown(incoming, shutdown), drain_deadline)
                .await?
        }
    }
    if running.0 {
        health.set_not_serving::<CommandServiceServer<CommandApi>>().await;
    }
    if running.1 {
        health.set_not_serving::<QueryServiceServer<QueryApi>>().await;
    }
    if running.2 {
        health.set_not_serving::<AuditServiceServer<AuditApi>>().await;
        health.set_not_serving::<FeedServiceServer<FeedApi>>().await;
        health.set_not_serving::<WebhookServiceServer<SharedWebhooks>>().await;
    }
    if let Some(w) = webhooks_handle {
        w.stop().await;
    }
    tracing::info!("server stopped accepting; flushing");
    if let Some(engine) = engine {
        engine.close().await?;
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Runs `serving` until it ends, or until `deadline` (the drain bound after a shutdown request)
/// passes first: then the connections still open are dropped with it.
async fn bounded_drain<E>(
    serving: impl Future<Output = Result<(), E>>,
    deadline: impl Future<Output = ()>,
) -> Result<(), E> {
    tokio::select! {
        served = serving => served,
        () = deadline => {
            tracing::warn!(
                drain_ms_max = SHUTDOWN_DRAIN_MS_MAX,
                "connections still open after the drain bound: closing them"
            );
            Ok(())
        }
    }
}
