//! Server-wide call bounds, as one tower layer in front of every gRPC service:
//!
//! - calls in flight, server-wide and per connection: a call over either bound is answered
//!   RESOURCE_EXHAUSTED at once (with RetryInfo), never queued. A call counts from its arrival
//!   until its response body is done, so open streams (IngestUsage, Export) count for as long
//!   as they are open. Health and reflection are not counted (a probe must answer under load).
//! - a deadline: the server's `request_timeout_ms`, or the client's `grpc-timeout` when shorter
//!   (answered shortly before it, so the client reads DEADLINE_EXCEEDED rather than its own
//!   timer). It bounds the wait for the response headers: a whole unary call or client-streaming
//!   upload; a bidi or server stream is bounded by its own limits.
//! - tonic reports a request message over `message_bytes_max` as OUT_OF_RANGE; the gRPC
//!   convention (and SPEC's limit table) is RESOURCE_EXHAUSTED, which this layer answers instead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::BoxBody;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::{BoxFuture, Context, Poll, Service};
use tonic::transport::server::TcpConnectInfo;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use super::ServerLimits;

/// Calls under this path prefix are counted (the accrual services; not health or reflection).
const COUNTED_PATH_PREFIX: &str = "/accrual.";
/// How long a refused caller is told to wait before retrying.
const BUSY_RETRY_MS: u64 = 100;
/// The server answers a client's deadline this much earlier (at most; 1/10 of short deadlines).
const CLIENT_DEADLINE_MARGIN_MS_MAX: u64 = 100;
/// What tonic's decoder says of a message over the size bound.
const DECODE_TOO_LARGE: &str = "decoded message length too large";

/// The tower layer; build with [`CallLimitsLayer::new`] and pass to `Server::layer`.
#[derive(Clone)]
pub struct CallLimitsLayer {
    shared: Arc<Shared>,
}

struct Shared {
    in_flight: Arc<Semaphore>,
    calls_in_flight_max: u32,
    per_connection: Mutex<HashMap<SocketAddr, u32>>,
    concurrency_per_connection_max: u32,
    request_timeout_ms: u64,
}

impl CallLimitsLayer {
    pub fn new(limits: &ServerLimits) -> Self {
        let shared = Shared {
            in_flight: Arc::new(Semaphore::new(limits.calls_in_flight_max as usize)),
            calls_in_flight_max: limits.calls_in_flight_max,
            per_connection: Mutex::new(HashMap::new()),
            concurrency_per_connection_max: limits.concurrency_per_connection_max as u32,
            request_timeout_ms: limits.request_timeout_ms,
        };
        CallLimitsLayer { shared: Arc::new(shared) }
    }
}

impl<S> tower_layer::Layer<S> for CallLimitsLayer {
    type Service = CallLimits<S>;

    fn layer(&self, inner: S) -> CallLimits<S> {
        CallLimits { inner, shared: self.shared.clone() }
    }
}

/// The service the layer wraps around the routes.
#[derive(Clone)]
pub struct CallLimits<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// A counted call's places: released when the response body is dropped.
struct Admitted {
    _permit: OwnedSemaphorePermit,
    _connection: Option<ConnectionSlot>,
}

struct ConnectionSlot {
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut map = self.shared.connections();
        if let Some(n) = map.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, HashMap<SocketAddr, u32>> {
        self.per_connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a place for a counted call, or says which bound refused it.
    fn admit(self: &Arc<Self>, req: &Request<BoxBody>) -> Result<Option<Admitted>, Box<Status>> {
        if !req.uri().path().starts_with(COUNTED_PATH_PREFIX) {
            return Ok(None);
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let max = self.calls_in_flight_max;
            let message = format!(
                "server busy: {max} calls in flight (calls_in_flight_max); retry with backoff"
            );
            return Err(busy("CALLS_IN_FLIGHT_MAX", max, message));
        };
        let peer = req.extensions().get::<TcpConnectInfo>().and_then(|i| i.remote_addr());
        let connection = match peer {
            Some(peer) => Some(self.connection_slot(peer)?),
            None => None,
        };
        Ok(Some(Admitted { _permit: permit, _connection: connection }))
    }

    fn connection_slot(self: &Arc<Self>, peer: SocketAddr) -> Result<ConnectionSlot, Box<Status>> {
        let max = self.concurrency_per_connection_max;
        let mut map = self.connections();
        let n = map.entry(peer).or_insert(0);
        if *n >= max {
            let message = format!(
                "this connection has {max} calls in progress (concurrency_per_connection_max); \
                 wait for one to finish or open another connection"
            );
            return Err(busy("CONCURRENCY_PER_CONNECTION_MAX", max, message));
        }
        *n += 1;
        Ok(ConnectionSlot { shared: self.clone(), peer })
    }

    /// The server's bound, or the client's `grpc-timeout` a margin early when that is sooner.
    fn deadline_ms(&self, headers: &HeaderMap) -> (u64, &'static str) {
        let client_ms = headers.get("grpc-timeout").and_then(|v| grpc_timeout_ms(v.to_str().ok()?));
        match client_ms {
            Some(ms) if ms < self.request_timeout_ms => {
                let margin_ms = (ms / 10).min(CLIENT_DEADLINE_MARGIN_MS_MAX);
                (ms - margin_ms, "the client's grpc-timeout")
            }
            _ => (self.request_timeout_ms, "the server's request_timeout_ms"),
        }
    }
}

/// RESOURCE_EXHAUSTED with the bound's name (ErrorInfo) and when to retry (RetryInfo).
fn busy(reason: &str, max: u32, message: String) -> Box<Status> {
    let metadata = HashMap::from([("limit".to_string(), max.to_string())]);
    let mut details = ErrorDetails::with_error_info(reason, "accrual", metadata);
    details.set_retry_info(Some(Duration::from_millis(BUSY_RETRY_MS)));
    Box::new(Status::with_error_details(Code::ResourceExhausted, message, details))
}

/// A `grpc-timeout` header value (`<up to 8 digits><H|M|S|m|u|n>`) in milliseconds, rounded up.
fn grpc_timeout_ms(value: &str) -> Option<u64> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    let ms = match unit {
        "H" => n * 3_600_000,
        "M" => n * 60_000,
        "S" => n * 1_000,
        "m" => n,
        "u" => n.div_ceil(1_000),
        "n" => n.div_ceil(1_000_000),
        _ => return None,
    };
    Some(ms)
}

/// Rewrites tonic's OUT_OF_RANGE for an oversize message into RESOURCE_EXHAUSTED.
fn oversize_to_exhausted(headers: &mut HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else { return };
    if status.code() != Code::OutOfRange || !status.message().contains(DECODE_TOO_LARGE) {
        return;
    }
    let message = format!("request message too large (message_bytes_max): {}", status.message());
    if Status::resource_exhausted(message).add_header(headers).is_err() {
        tracing::warn!("could not rewrite an oversize-message status");
    }
}

/// The response with the oversize status rewritten (headers or trailers) and `held` released
/// when its body is dropped.
fn finish(response: Response<BoxBody>, held: Option<Admitted>) -> Response<BoxBody> {
    let (mut parts, body) = response.into_parts();
    oversize_to_exhausted(&mut parts.headers);
    let body = body.map_frame(move |frame| {
        let _held = &held;
        match frame.into_trailers() {
            Ok(mut trailers) => {
                oversize_to_exhausted(&mut trailers);
                http_body::Frame::trailers(trailers)
            }
            Err(frame) => frame,
        }
    });
    Response::from_parts(parts, BoxBody::new(body))
}

impl<S> Service<Request<BoxBody>> for CallLimits<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = BoxFuture<Response<BoxBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let held = match self.shared.admit(&req) {
            Ok(held) => held,
            Err(status) => return Box::pin(std::future::ready(Ok((*status).into_http()))),
        };
        let (deadline_ms, whose) = self.shared.deadline_ms(req.headers());
        // The clone is ready only if polled; the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let call = inner.call(req);
            match tokio::time::timeout(Duration::from_millis(deadline_ms), call).await {
                Ok(Ok(response)) => Ok(finish(response, held)),
                Ok(Err(error)) => Err(error),
                Err(_) => {
                    let message = format!("deadline exceeded: {deadline_ms} ms ({whose})");
                    Ok(Status::deadline_exceeded(message).into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse_to_milliseconds() {
        assert_eq!(grpc_timeout_ms("250m"), Some(250));
        assert_eq!(grpc_timeout_ms("2S"), Some(2_000));
        assert_eq!(grpc_timeout_ms("1M"), Some(60_000));
        assert_eq!(grpc_timeout_ms("1H"), Some(3_600_000));
        assert_eq!(grpc_timeout_ms("1500u"), Some(2));
        assert_eq!(grpc_timeout_ms("1n"), Some(1));
        for bad in ["", "m", "12", "5x", "123456789m", "-5m"] {
            assert_eq!(grpc_timeout_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_sooner_deadline_wins_and_a_client_one_is_answered_early() {
        let limits = ServerLimits { request_timeout_ms: 5_000, ..ServerLimits::default() };
        let layer = CallLimitsLayer::new(&limits);
        let mut headers = HeaderMap::new();
        assert_eq!(layer.shared.deadline_ms(&headers).0, 5_000);
        headers.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(layer.shared.deadline_ms(&headers).0, 1_900);
        headers.insert("grpc-timeout", "200m".parse().unwrap());
        assert_eq!(layer.shared.deadline_ms(&headers).0, 180);
        headers.insert("grpc-timeout", "9S".parse().unwrap());
        assert_eq!(layer.shared.deadline_ms(&headers), (5_000, "the server's request_timeout_ms"));
    }

    #[test]
    fn only_tonics_oversize_out_of_range_becomes_resource_exhausted() {
        let mut headers = HeaderMap::new();
        let oversize = "Error, decoded message length too large: found 9 bytes, the limit is: 8";
        Status::out_of_range(oversize).add_header(&mut headers).unwrap();
        oversize_to_exhausted(&mut headers);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("message_bytes_max"), "{}", status.message());
        let mut headers = HeaderMap::new();
        Status::out_of_range("position beyond the head").add_header(&mut headers).unwrap();
        oversize_to_exhausted(&mut headers);
        assert_eq!(Status::from_header_map(&headers).unwrap().code(), Code::OutOfRange);
    }
}
