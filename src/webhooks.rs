//! `accrual.v1.WebhookService` (issue 14, part 2): endpoints registered over gRPC, each
//! delivered by its own task (`webhooks/dispatch.rs`) from its cursor in the webhook store
//! (`webhooks/store.rs`), signed (`webhooks/signature.rs`). The service never changes an
//! endpoint while its task runs: it stops the task, writes, and starts it again, so the task's
//! own writes (cursor, counters) never race a call's.

// tonic's Status is the error of every gRPC call; boxing it here would only be unboxed again.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use command_service::status::{beyond_head, from_domain};
use domain::error::Violations;
use event_store::EventStore;
use proto::v1 as pb;
use proto::v1::webhook_service_server::WebhookService;
use rand::RngCore;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

pub mod dispatch;
pub mod signature;
pub mod store;

use dispatch::{DeliveryOptions, Dispatcher};
use store::{Endpoint, Store};

/// Most endpoints one server delivers to.
pub const ENDPOINTS_MAX: usize = 100;
/// Longest URL accepted.
const URL_BYTES_MAX: usize = 2_048;

/// A running delivery task: its stop signal and its handle.
type Task = (watch::Sender<bool>, JoinHandle<()>);

pub struct WebhookApi {
    dispatcher: Arc<Dispatcher>,
    tasks: Mutex<HashMap<String, Task>>,
}

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

fn wire(e: &Endpoint) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        endpoint_id: e.endpoint_id.clone(),
        url: e.url.clone(),
        types: e.types.clone(),
        enabled: e.enabled,
        disabled_reason: e.disabled_reason.clone(),
        position: e.position,
        failure_streak: e.failure_streak,
        delivered: e.delivered,
        dead_letters: e.dead_letters,
    }
}

impl WebhookApi {
    /// Opens the store and starts a task per enabled endpoint.
    pub async fn start(
        store: Store,
        log: Arc<dyn EventStore>,
        options: DeliveryOptions,
    ) -> anyhow::Result<WebhookApi> {
        let dispatcher = Arc::new(Dispatcher { store, log, client: dispatch::client()?, options });
        let api = WebhookApi { dispatcher, tasks: Mutex::new(HashMap::new()) };
        for e in api.dispatcher.store.endpoints()? {
            if e.enabled {
                api.start_task(&e.endpoint_id).await;
            }
        }
        Ok(api)
    }

    async fn start_task(&self, id: &str) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(self.dispatcher.clone().run(id.to_string(), rx));
        self.tasks.lock().await.insert(id.to_string(), (tx, task));
    }

    async fn stop_task(&self, id: &str) {
        let running = self.tasks.lock().await.remove(id);
        if let Some((tx, task)) = running {
            let _ = tx.send(true);
            let _ = task.await;
        }
    }

    /// Stops every delivery task (at shutdown).
    pub async fn stop(&self) {
        let ids: Vec<String> = self.tasks.lock().await.keys().cloned().collect();
        for id in ids {
            self.stop_task(&id).await;
        }
        if let Err(e) = self.dispatcher.store.flush() {
            tracing::warn!(error = %e, "webhook cursors not flushed at shutdown");
        }
    }

    fn endpoint(&self, id: &str) -> Result<Endpoint, Status> {
        let found = self.dispatcher.store.endpoint(id).map_err(internal)?;
        found.ok_or_else(|| Status::not_found(format!("webhook endpoint {id} not found")))
    }
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<Response<pb::CreateWebhookEndpointResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::default();
        if r.url.len() > URL_BYTES_MAX {
            v.push("url", format!("at most {URL_BYTES_MAX} bytes"));
        } else if let Some(why) =
            dispatch::refuse_url(&r.url, self.dispatcher.options.allow_loopback).await
        {
            v.push("url", why);
        }
        for (i, t) in r.types.iter().enumerate() {
            if !crate::feed::schema::PUBLIC_TYPES.contains(&t.as_str()) {
                v.push(format!("types[{i}]"), format!("{t:?} is not a public event type"));
            }
        }
        v.into_result().map_err(from_domain)?;
        let head = self.dispatcher.log.head();
        let position = r.from_position.unwrap_or(head);
        if position > head {
            return Err(beyond_head("from_position", position, head));
        }
        if self.dispatcher.store.endpoints().map_err(internal)?.len() >= ENDPOINTS_MAX {
            return Err(Status::resource_exhausted(format!(
                "at most {ENDPOINTS_MAX} webhook endpoints: delete one first"
            )));
        }
        let mut secret = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut secret);
        let endpoint = Endpoint {
            endpoint_id: format!("we_{}", uuid::Uuid::new_v4().simple()),
            url: r.url,
            types: r.types,
            secret: format!("whsec_{}", hex::encode(secret)),
            enabled: true,
            disabled_reason: String::new(),
            position,
            failure_streak: 0,
            delivered: 0,
            dead_letters: 0,
            log_seq: 0,
        };
        self.dispatcher.store.put(&endpoint).map_err(internal)?;
        self.start_task(&endpoint.endpoint_id).await;
        Ok(Response::new(pb::CreateWebhookEndpointResponse {
            endpoint: Some(wire(&endpoint)),
            secret: endpoint.secret.clone(),
        }))
    }

    async fn list_webhook_endpoints(
        &self,
        _request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<Response<pb::ListWebhookEndpointsResponse>, Status> {
        let endpoints = self.dispatcher.store.endpoints().map_err(internal)?;
        Ok(Response::new(pb::ListWebhookEndpointsResponse {
            endpoints: endpoints.iter().map(wire).collect(),
        }))
    }

    async fn set_webhook_endpoint_enabled(
        &self,
        request: Request<pb::SetWebhookEndpointEnabledRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let r = request.into_inner();
        self.endpoint(&r.endpoint_id)?;
        self.stop_task(&r.endpoint_id).await;
        let mut e = self.endpoint(&r.endpoint_id)?;
        e.enabled = r.enabled;
        e.disabled_reason = if r.enabled { String::new() } else { "disabled by a call".into() };
        if r.enabled {
            e.failure_streak = 0;
        }
        self.dispatcher.store.put(&e).map_err(internal)?;
        if e.enabled {
            self.start_task(&e.endpoint_id).await;
        }
        Ok(Response::new(wire(&e)))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<Response<pb::DeleteWebhookEndpointResponse>, Status> {
        let id = request.into_inner().endpoint_id;
        self.endpoint(&id)?;
        self.stop_task(&id).await;
        self.dispatcher.store.delete(&id).map_err(internal)?;
        Ok(Response::new(pb::DeleteWebhookEndpointResponse {}))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let r = request.into_inner();
        self.endpoint(&r.endpoint_id)?;
        let size = match r.page_size {
            0 => 100,
            n => n.min(1_000) as usize,
        };
        let token = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let (deliveries, next) =
            self.dispatcher.store.deliveries(&r.endpoint_id, token, size).map_err(internal)?;
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            deliveries: deliveries
                .into_iter()
                .map(|d| pb::WebhookDelivery {
                    position: d.position,
                    event_id: d.event_id,
                    r#type: d.event_type,
                    attempt: d.attempt,
                    status_code: u32::from(d.status_code),
                    latency_ms: d.latency_ms,
                    outcome: d.outcome,
                    error: d.error,
                    at: Some(command_service::convert::to_timestamp(d.at)),
                    redelivery: d.redelivery,
                })
                .collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn redeliver_webhook_event(
        &self,
        request: Request<pb::RedeliverWebhookEventRequest>,
    ) -> Result<Response<pb::RedeliverWebhookEventResponse>, Status> {
        let r = request.into_inner();
        self.endpoint(&r.endpoint_id)?;
        let head = self.dispatcher.log.head();
        if r.position >= head {
            return Err(beyond_head("position", r.position + 1, head));
        }
        self.dispatcher.store.queue_redelivery(&r.endpoint_id, r.position).map_err(internal)?;
        Ok(Response::new(pb::RedeliverWebhookEventResponse {}))
    }
}
