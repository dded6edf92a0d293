//! W3C trace context across process boundaries: read from incoming gRPC
//! metadata, written into outgoing HTTP headers.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A gRPC request's headers: its metadata.
struct MetadataExtractor<'a>(&'a tonic::codegen::http::HeaderMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(|key| key.as_str())
            .filter(|key| !key.ends_with("-bin"))
            .collect()
    }
}

struct HeaderInjector<'a>(&'a mut reqwest::header::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(key.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` a child of the caller's trace (when the metadata carries
/// one) and returns the trace id to log, if any.
pub fn continue_trace(span: &Span, metadata: &tonic::codegen::http::HeaderMap) -> Option<String> {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MetadataExtractor(metadata))
    });
    let remote = parent.span().span_context().clone();
    let _ = span.set_parent(parent);
    let local = span.context().span().span_context().clone();
    [local, remote]
        .into_iter()
        .find(|context| context.is_valid())
        .map(|context| context.trace_id().to_string())
}

/// Writes the current span's trace context into outgoing request headers.
pub fn inject_current(headers: &mut reqwest::header::HeaderMap) {
    let context = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers))
    });
}
