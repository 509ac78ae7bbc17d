//! gRPC requests by service, method and status code: a tower layer around the whole server
//! (so calls refused by the auth interceptors, unknown methods and health checks count too).
//!
//! The code of a call is its `grpc-status`: in the response headers for a trailers-only
//! response (tonic's answer to an error returned by a handler), else in the trailers at the end
//! of the body; a body dropped before its trailers (the client went away) counts as
//! `Cancelled`. Labels only take the methods of the descriptor sets this server registers
//! (anything else is `unknown`), so clients cannot grow the label set.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use metrics::SharedString;
use prost::Message as _;

/// Counter: gRPC calls finished, by `service`, `method` and `code` (tonic's `Code` names).
pub const GRPC_REQUESTS_TOTAL: &str = "accrual_grpc_requests_total";
/// Histogram: seconds from a call's arrival to its status, by `service` and `method`.
pub const GRPC_REQUEST_SECONDS: &str = "accrual_grpc_request_seconds";

/// `tonic::Code` names by value (0..=16), as Prometheus label values.
const CODE_NAMES: [&str; 17] = [
    "Ok",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(GRPC_REQUESTS_TOTAL, Unit::Count, "gRPC calls by service, method and code");
    describe_histogram!(GRPC_REQUEST_SECONDS, Unit::Seconds, "gRPC call duration until its status");
}

/// Label values of a known path (`/package.Service/Method`).
type Labels = (SharedString, SharedString);

/// Every method of the services this binary can register, from their descriptor sets.
fn known_methods() -> &'static HashMap<String, Labels> {
    static METHODS: OnceLock<HashMap<String, Labels>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let sets = [
            proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut methods = HashMap::new();
        for bytes in sets {
            let set = prost_types::FileDescriptorSet::decode(bytes).expect("embedded descriptors");
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = format!("{package}.{}", service.name.unwrap_or_default());
                    let shared = SharedString::from(name.clone());
                    for method in service.method.into_iter().filter_map(|m| m.name) {
                        let path = format!("/{name}/{method}");
                        methods.insert(path, (shared.clone(), SharedString::from(method)));
                    }
                }
            }
        }
        methods
    })
}

/// A call being measured.
struct Call {
    labels: Labels,
    started: Instant,
}

impl Call {
    fn start(path: &str) -> Call {
        let labels = known_methods().get(path).cloned().unwrap_or_else(|| {
            (SharedString::const_str("unknown"), SharedString::const_str("unknown"))
        });
        Call { labels, started: Instant::now() }
    }

    fn finish(self, code: &'static str) {
        let (service, method) = self.labels;
        let seconds = metrics::histogram!(GRPC_REQUEST_SECONDS, "service" => service.clone(), "method" => method.clone());
        seconds.record(self.started.elapsed());
        metrics::counter!(GRPC_REQUESTS_TOTAL, "service" => service, "method" => method, "code" => code)
            .increment(1);
    }
}

/// The code named by a `grpc-status` header or trailer, if there is one.
fn status_code(headers: &http::HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?;
    let code = value.to_str().ok().and_then(|v| v.parse::<usize>().ok());
    Some(code.and_then(|c| CODE_NAMES.get(c).copied()).unwrap_or("Unknown"))
}

/// The layer given to `tonic::transport::Server::layer`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
}

type ResponseFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B, R> tower_service::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Body + Unpin,
{
    type Response = http::Response<Observed<R>>;
    type Error = S::Error;
    type Future = ResponseFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = crate::prometheus::enabled().then(|| Call::start(req.uri().path()));
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            let call = match (call, status_code(response.headers())) {
                (Some(call), Some(code)) => {
                    call.finish(code);
                    None
                }
                (call, _) => call,
            };
            Ok(response.map(|inner| Observed { inner, call }))
        })
    }
}

/// A response body that reports its call's status when its trailers pass (or it is dropped).
pub struct Observed<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> Observed<B> {
    fn finish(&mut self, code: &'static str) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl<B: Body + Unpin> Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => self.finish("Unknown"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        self.finish("Cancelled");
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn every_service_method_is_known_and_codes_are_named() {
        let methods = known_methods();
        let (service, method) = &methods["/accrual.v1.CommandService/RecordUsage"];
        assert_eq!(
            (service.as_ref(), method.as_ref()),
            ("accrual.v1.CommandService", "RecordUsage")
        );
        assert!(methods.contains_key("/accrual.v1.QueryService/GetMrr"));
        assert!(methods.contains_key("/accrual.v1.AuditService/Export"));
        assert!(methods.contains_key("/grpc.health.v1.Health/Check"));
        assert!(methods.contains_key("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(!methods.contains_key("/accrual.v1.CommandService/Nope"));
        for (value, name) in CODE_NAMES.iter().enumerate() {
            assert_eq!(format!("{:?}", Code::from_i32(value as i32)), *name);
        }
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_code(&headers), None);
        headers.insert("grpc-status", "3".parse().unwrap());
        assert_eq!(status_code(&headers), Some("InvalidArgument"));
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(status_code(&headers), Some("Unknown"));
    }
}
