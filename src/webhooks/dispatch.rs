//! Delivering one endpoint's events: a task per enabled endpoint reads the log from the
//! endpoint's cursor (and its manual redeliveries first), POSTs each matching event's public
//! JSON with its signature, retries a failure with exponential backoff and jitter up to
//! `attempts_max`, then dead-letters it and goes on; a streak of dead letters disables the
//! endpoint. The cursor is persisted after each event, so deliveries are at least once and in
//! log order per endpoint.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::events::Event;
use event_store::{EventStore, Position, RecordedEvent};
use rand::Rng;
use tokio::sync::watch;

use super::signature::{sign, ATTEMPT_HEADER, EVENT_ID_HEADER, SIGNATURE_HEADER};
use super::store::{Delivery, Endpoint, Store};
use crate::feed::schema;

/// Bounds of delivery (flags of `accrual serve`).
#[derive(Clone, Copy, Debug)]
pub struct DeliveryOptions {
    /// Attempts of one event before it is dead-lettered (`--webhook-attempts-max`).
    pub attempts_max: u32,
    /// First retry delay; each further one doubles, ±20 % jitter (`--webhook-backoff-ms`).
    pub backoff_ms: u64,
    /// Dead letters in a row that disable an endpoint (`--webhook-disable-after`).
    pub disable_after: u32,
    /// Allow endpoints on loopback addresses (`--webhooks-allow-loopback`; tests).
    pub allow_loopback: bool,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            attempts_max: 8,
            backoff_ms: 1_000,
            disable_after: 10,
            allow_loopback: false,
        }
    }
}

/// Longest a retry waits, whatever the attempt.
const BACKOFF_MS_MAX: u64 = 300_000;
/// Whole-request timeout of one delivery.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Response bytes read at most (the rest is dropped).
const RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// Events read from the log per batch; the cursor is flushed to disk after each batch (and
/// before any wait), so a crash re-delivers at most one batch.
const READ_BATCH_EVENTS_MAX: usize = 256;

/// Why an endpoint's URL is refused, if it is: not http(s), no host, or a host that resolves
/// to a link-local (cloud metadata), multicast, unspecified or broadcast address, or to
/// loopback unless allowed.
pub async fn refuse_url(url: &str, allow_loopback: bool) -> Option<String> {
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return Some(format!("not a URL: {e}")),
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return Some(format!("scheme {} is not http or https", parsed.scheme()));
    }
    let Some(host) = parsed.host_str() else { return Some("no host".into()) };
    let port = parsed.port_or_known_default().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<IpAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(a) => a.map(|s| s.ip()).collect(),
        Err(e) => return Some(format!("host {host} does not resolve: {e}")),
    };
    for ip in addrs {
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        if link_local || ip.is_multicast() || ip.is_unspecified() {
            return Some(format!("{host} resolves to {ip}: link-local, metadata or non-unicast"));
        }
        if ip.is_loopback() && !allow_loopback {
            return Some(format!(
                "{host} resolves to loopback {ip} (allowed only with --webhooks-allow-loopback)"
            ));
        }
    }
    None
}

pub struct Dispatcher {
    pub store: Store,
    pub log: Arc<dyn EventStore>,
    pub client: reqwest::Client,
    pub options: DeliveryOptions,
}

/// The HTTP client of every delivery: timeouts, no redirects (a redirect could lead past the
/// address check).
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .connect_timeout(Duration::from_millis(5_000))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("accrual-webhooks/1")
        .build()?)
}

impl Dispatcher {
    /// Delivers the endpoint's events until `stop` turns true, it is disabled, or deleted.
    pub async fn run(self: Arc<Self>, id: String, mut stop: watch::Receiver<bool>) {
        let mut head = self.log.watch_head();
        loop {
            if *stop.borrow() {
                return;
            }
            match self.step(&id, &mut stop).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(endpoint = %id, error = %e, "webhook delivery stopped");
                    return;
                }
            }
            // Nothing to do: wait for the log or a redelivery (polled) or the stop.
            tokio::select! {
                _ = head.changed() => {}
                _ = stop.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// One event (a redelivery first); `Ok(false)` when there was none, or the endpoint is
    /// gone or disabled (then `run` waits and looks again).
    async fn step(&self, id: &str, stop: &mut watch::Receiver<bool>) -> anyhow::Result<bool> {
        let Some(mut e) = self.store.endpoint(id)? else { return Ok(false) };
        if !e.enabled {
            return Ok(false);
        }
        if let Some(position) = self.store.next_redelivery(id)? {
            if let Some(recorded) = self.read_one(position).await? {
                self.deliver(&mut e, &recorded, true, stop).await?;
            }
            self.store.done_redelivery(id, position)?;
            self.store.put(&e)?;
            return Ok(true);
        }
        if e.position >= self.log.head() {
            return Ok(false);
        }
        let batch = self.log.read_all(e.position, READ_BATCH_EVENTS_MAX).await?;
        if batch.is_empty() {
            return Ok(false);
        }
        for recorded in batch {
            if *stop.borrow() {
                self.store.flush()?;
                return Ok(false);
            }
            let wanted = schema::public_type(&recorded.event_type)
                .is_some_and(|t| e.types.is_empty() || e.types.iter().any(|w| w == t));
            if wanted {
                let gave_up = !self.deliver(&mut e, &recorded, false, stop).await?;
                if gave_up && !e.enabled {
                    e.position = recorded.position + 1;
                    self.store.put(&e)?;
                    return Ok(false);
                }
            }
            e.position = recorded.position + 1;
            self.store.put_cursor(&e)?;
        }
        self.store.flush()?;
        Ok(true)
    }

    async fn read_one(&self, position: Position) -> anyhow::Result<Option<RecordedEvent>> {
        if position >= self.log.head() {
            return Ok(None);
        }
        Ok(self.log.read_all(position, 1).await?.into_iter().next())
    }

    /// Delivers one event with retries; `Ok(true)` when delivered, `Ok(false)` when
    /// dead-lettered (the endpoint's counters and log updated; the caller persists it).
    async fn deliver(
        &self,
        e: &mut Endpoint,
        recorded: &RecordedEvent,
        redelivery: bool,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        let decoded =
            Event::decode(&recorded.event_type, recorded.schema_version, &recorded.payload)?;
        let (customer, _, _) = schema::ids(&decoded);
        let public = schema::feed_event(recorded, &decoded, customer);
        let body = serde_json::to_vec(&public)?;
        let event_type = public.r#type.clone();
        for attempt in 1..=self.options.attempts_max {
            let started = Instant::now();
            let outcome = self.post(e, &body, &public.event_id, attempt).await;
            let latency_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
            let (status_code, error) = match &outcome {
                Ok(code) => (*code, String::new()),
                Err(why) => (0, why.clone()),
            };
            let delivered = (200..300).contains(&status_code);
            let last = attempt == self.options.attempts_max;
            let label = match (delivered, last) {
                (true, _) => "delivered",
                (false, false) => "failed",
                (false, true) => "dead_letter",
            };
            let d = Delivery {
                position: recorded.position,
                event_id: public.event_id.clone(),
                event_type: event_type.clone(),
                attempt,
                status_code,
                latency_ms,
                outcome: label.to_string(),
                error,
                at: jiff::Timestamp::now(),
                redelivery,
            };
            self.store.log(e, &d)?;
            if delivered {
                e.delivered += 1;
                e.failure_streak = 0;
                return Ok(true);
            }
            if last {
                break;
            }
            let base = self.options.backoff_ms.saturating_mul(1 << (attempt - 1).min(20));
            let jitter = rand::thread_rng().gen_range(0.8..1.2);
            let wait = ((base.min(BACKOFF_MS_MAX) as f64) * jitter) as u64;
            self.store.put_cursor(e)?;
            self.store.flush()?;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = stop.changed() => return Ok(false),
            }
        }
        e.dead_letters += 1;
        e.failure_streak += 1;
        if e.failure_streak >= self.options.disable_after {
            e.enabled = false;
            e.disabled_reason = format!(
                "disabled after {} events in a row were dead-lettered (last at position {})",
                e.failure_streak, recorded.position
            );
            tracing::warn!(endpoint = %e.endpoint_id, "webhook endpoint disabled: failing");
        }
        Ok(false)
    }

    /// One POST; the response status, or why there was none. The body read is capped.
    async fn post(
        &self,
        e: &Endpoint,
        body: &[u8],
        event_id: &str,
        attempt: u32,
    ) -> Result<u16, String> {
        if let Some(why) = refuse_url(&e.url, self.options.allow_loopback).await {
            return Err(why);
        }
        let now = jiff::Timestamp::now().as_second();
        let response = self
            .client
            .post(&e.url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, sign(&e.secret, now, body))
            .header(EVENT_ID_HEADER, event_id)
            .header(ATTEMPT_HEADER, attempt.to_string())
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let mut response = response;
        let mut read = 0usize;
        while let Ok(Some(chunk)) = response.chunk().await {
            read += chunk.len();
            if read >= RESPONSE_BYTES_MAX {
                break;
            }
        }
        Ok(status)
    }
}
