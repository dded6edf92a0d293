//! One observer around every gRPC call the server takes: the AuthService's
//! RPCs, health, reflection, and requests refused before any handler (too
//! large, unknown method).
//!
//! [`ObserveLayer`] gives each call its deadline (the caller's
//! `grpc-timeout`, capped by `server.request_timeout_ms`), runs it inside
//! that deadline's [`deadline::scope`] so the upstream layer sees it, answers
//! `DEADLINE_EXCEEDED` with an `ErrorInfo` when it passes, counts it as
//! started, and ends every call with exactly one log line, one
//! `grpc_server_handled_total` and latency sample, and its span's status,
//! all from the gRPC code read from the response's headers (a trailers-only
//! answer) or its trailers.
//!
//! That line is the call's audit record (target [`AUDIT`]): the handler
//! records on the call's span who called (`caller`) and, for a token, what
//! was handed out (`event = "token_issued"`, `provider`, `sub`, `scopes`,
//! `cache`), and the line carries the span's fields. One formatted line per
//! call instead of two is what keeps logging cheap on the hit path.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Frame;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::{Bytes, Service, http};
use tonic::{Code, Status};
use tonic_types::ErrorDetails;
use tower_layer::Layer;
use tracing::{Instrument, Span, field};

use super::status::Reason;
use crate::access::RPCS;
use crate::deadline;
use crate::proto::v1::auth_service_server::SERVICE_NAME;
use crate::telemetry::metrics::GrpcMethod;
use crate::telemetry::{Metrics, propagation};

/// The other methods this server serves.
const OTHER_METHODS: &[GrpcMethod] = &[
    GrpcMethod {
        grpc_type: "unary",
        grpc_service: "grpc.health.v1.Health",
        grpc_method: "Check",
    },
    GrpcMethod {
        grpc_type: "server_stream",
        grpc_service: "grpc.health.v1.Health",
        grpc_method: "Watch",
    },
    GrpcMethod {
        grpc_type: "bidi_stream",
        grpc_service: "grpc.reflection.v1.ServerReflection",
        grpc_method: "ServerReflectionInfo",
    },
    GrpcMethod {
        grpc_type: "bidi_stream",
        grpc_service: "grpc.reflection.v1alpha.ServerReflection",
        grpc_method: "ServerReflectionInfo",
    },
];

/// The log target of each call's line and span: every call is audited, and
/// `RUST_LOG=warn,bankauth::audit=info` keeps exactly these lines.
pub const AUDIT: &str = "bankauth::audit";

/// The labels of any path this server does not serve (so that a scan of
/// made-up paths cannot grow the metrics without bound).
const UNKNOWN_METHOD: GrpcMethod = GrpcMethod {
    grpc_type: "unary",
    grpc_service: "unknown",
    grpc_method: "unknown",
};

/// The method a call is for, as metrics, spans and logs label it. The
/// layer puts it in the request's extensions, where the policy check reads
/// an AuthService RPC's name (`grpc_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method(pub GrpcMethod);

impl Method {
    fn of(path: &str) -> Self {
        let path = path.strip_prefix('/').unwrap_or(path);
        let Some((service, method)) = path.split_once('/') else {
            return Self(UNKNOWN_METHOD);
        };
        let rpc = (service == SERVICE_NAME)
            .then(|| RPCS.iter().find(|rpc| **rpc == method).copied())
            .flatten()
            .map(|rpc| GrpcMethod {
                grpc_type: "unary",
                grpc_service: SERVICE_NAME,
                grpc_method: rpc,
            });
        let other = || {
            OTHER_METHODS
                .iter()
                .find(|known| known.grpc_service == service && known.grpc_method == method)
                .copied()
        };
        Self(rpc.or_else(other).unwrap_or(UNKNOWN_METHOD))
    }
}

/// Applies [`Observe`] to a service stack.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    /// The longest any call may take, whatever deadline its caller sets.
    request_timeout: Duration,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>, request_timeout: Duration) -> Self {
        Self {
            metrics,
            request_timeout,
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

impl<S, B> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let method = Method::of(&path);
        let span = tracing::info_span!(
            target: AUDIT,
            "rpc",
            otel.name = path.strip_prefix('/').unwrap_or(&path),
            otel.kind = "server",
            otel.status_description = field::Empty,
            rpc.system = "grpc",
            rpc.service = method.0.grpc_service,
            rpc.method = method.0.grpc_method,
            caller = field::Empty,
            event = field::Empty,
            provider = field::Empty,
            sub = field::Empty,
            scopes = field::Empty,
            cache = field::Empty,
            code = field::Empty,
            rpc.grpc.status_code = field::Empty,
            trace_id = field::Empty,
        );
        self.layer.metrics.rpc_started(method.0);
        if let Some(trace_id) = propagation::continue_trace(&span, request.headers()) {
            span.record("trace_id", trace_id);
        }
        let asked = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(deadline::parse_grpc_timeout)
            .filter(|asked| *asked < self.layer.request_timeout);
        let allowed = asked.unwrap_or(self.layer.request_timeout);
        let deadline = started + allowed;
        request.extensions_mut().insert(method);
        let mut observer = Observer {
            span: span.clone(),
            method,
            path,
            started,
            metrics: self.layer.metrics.clone(),
            finished: false,
        };
        // The clone is ready only if polled; the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let call = deadline::scope(deadline, inner.call(request)).instrument(span);
            match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(response)) => Ok(observer.watch(response)),
                Ok(Err(error)) => {
                    observer.finish(Code::Unknown, &error.to_string());
                    Err(error)
                }
                Err(_elapsed) => {
                    let set_by = if asked.is_some() {
                        "the caller's grpc-timeout"
                    } else {
                        "server.request_timeout_ms"
                    };
                    let status = Reason::DeadlineExceeded.status(
                        format!(
                            "no answer within the deadline of {} ms ({set_by})",
                            allowed.as_millis()
                        ),
                        ErrorDetails::new(),
                        HashMap::from([("timeout_ms".to_owned(), allowed.as_millis().to_string())]),
                    );
                    observer.finish(status.code(), status.message());
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// What one call needs to end with its log line and metrics.
struct Observer {
    span: Span,
    method: Method,
    path: String,
    started: Instant,
    metrics: Arc<Metrics>,
    /// Set by [`Observer::finish`]; an observer dropped unfinished (the
    /// caller went away first) finishes the call as CANCELLED.
    finished: bool,
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.finish(
            Code::Cancelled,
            "the caller went away before the answer ended",
        );
    }
}

impl Observer {
    /// Ends the call now if its status is in the headers (a trailers-only
    /// answer), else when its body yields its trailers.
    fn watch(mut self, response: http::Response<Body>) -> http::Response<Body> {
        let (mut parts, body) = response.into_parts();
        match Status::from_header_map(&parts.headers) {
            Some(status) => {
                let status = self.explain(status);
                // A status that cannot be written keeps the one tonic wrote.
                let _ = status.add_header(&mut parts.headers);
                self.finish(status.code(), status.message());
                http::Response::from_parts(parts, body)
            }
            None => {
                let body = Watched {
                    inner: body,
                    observer: self,
                };
                http::Response::from_parts(parts, Body::new(body))
            }
        }
    }

    /// Gives the refusals tonic answers before any handler (no such method,
    /// a message over the size limit) the `ErrorInfo` every error carries.
    fn explain(&self, status: Status) -> Status {
        if !status.details().is_empty() {
            return status;
        }
        let (reason, metadata) = match status.code() {
            Code::OutOfRange => (Reason::RequestTooLarge, HashMap::new()),
            Code::Unimplemented => (
                Reason::Unimplemented,
                HashMap::from([("method".to_owned(), self.path.clone())]),
            ),
            _ => return status,
        };
        reason.status(status.message(), ErrorDetails::new(), metadata)
    }

    /// The call's one log line, its metrics, and its span's status, once.
    fn finish(&mut self, code: Code, message: &str) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        self.span.record("code", code_name(code));
        self.span.record("rpc.grpc.status_code", code as i32);
        if is_server_error(code) {
            // Marks the span as failed (tracing-opentelemetry's convention).
            self.span.record("otel.status_description", message);
        }
        self.metrics
            .rpc_handled(self.method.0, go_code_name(code), elapsed);
        let _entered = self.span.enter();
        match code {
            Code::Ok => tracing::info!(target: AUDIT, latency_ms, "rpc finished"),
            Code::Unavailable | Code::Internal | Code::Unknown => {
                tracing::warn!(target: AUDIT, latency_ms, error = message, "rpc failed")
            }
            _ => tracing::info!(target: AUDIT, latency_ms, error = message, "rpc failed"),
        }
    }
}

/// A response body that ends its call when the trailers go by, or, through
/// its observer, when it is dropped first (the caller went away mid-stream).
struct Watched {
    inner: Body,
    observer: Observer,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let status = Status::from_header_map(trailers).unwrap_or_else(|| {
                        Status::unknown("the response's trailers carry no grpc-status")
                    });
                    self.end(status.code(), status.message());
                }
            }
            Poll::Ready(Some(Err(error))) => self.end(error.code(), error.message()),
            Poll::Ready(None) => self.end(Code::Unknown, "the response ended without a status"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Watched {
    fn end(&mut self, code: Code, message: &str) {
        self.observer.finish(code, message);
    }
}

/// Whether a server span ending with `code` failed, as OpenTelemetry's
/// semantic conventions for gRPC define it: the server's own failures. A
/// caller's mistake (INVALID_ARGUMENT, NOT_FOUND, ...) leaves it unset.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The code names grpc-go gives (`codes.Code.String()`), which the
/// grpc-ecosystem metrics use in `grpc_code` and dashboards query.
fn go_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The canonical gRPC code names, as logs label them.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn the_rpc_table_lists_exactly_the_services_methods() {
        let files = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let mut served: Vec<String> = files
            .file
            .iter()
            .filter(|file| file.package() == "bankauth.v1")
            .flat_map(|file| &file.service)
            .filter(|service| format!("bankauth.v1.{}", service.name()) == SERVICE_NAME)
            .flat_map(|service| &service.method)
            .map(|method| method.name().to_owned())
            .collect();
        let mut listed: Vec<String> = RPCS.iter().map(|rpc| (*rpc).to_owned()).collect();
        served.sort();
        listed.sort();
        assert_eq!(served, listed);
    }

    #[test]
    fn paths_resolve_to_bounded_labels() {
        assert_eq!(
            Method::of("/bankauth.v1.AuthService/IssueWidgetToken"),
            Method(GrpcMethod {
                grpc_type: "unary",
                grpc_service: "bankauth.v1.AuthService",
                grpc_method: "IssueWidgetToken",
            })
        );
        assert_eq!(
            Method::of("/grpc.health.v1.Health/Check"),
            Method(OTHER_METHODS[0])
        );
        assert_eq!(
            Method::of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Method(OTHER_METHODS[3])
        );
        for unknown in [
            "/bankauth.v1.AuthService/Nope",
            "/bankauth.v1.AuthServiceX/GetUser",
            "/bankauth.v1.AuthService",
            "/grpc.health.v1.Health/Nope",
            "/bankauth.v1.AuthService/Check",
            "/",
            "",
        ] {
            assert_eq!(Method::of(unknown), Method(UNKNOWN_METHOD), "{unknown}");
        }
    }
}
