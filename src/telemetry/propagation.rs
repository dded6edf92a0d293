//! Trace context across process boundaries, through OpenTelemetry's own
//! propagators as the standard `OTEL_PROPAGATORS` selects them: read from
//! incoming gRPC metadata, written into requests to providers.
//!
//! bankauth knows `tracecontext` (W3C `traceparent`/`tracestate`),
//! `baggage` and `none`; the default is the specification's,
//! `tracecontext,baggage`. Baggage is read but never sent on: providers are
//! outside the callers' trust boundary, and baggage is the callers' data.

use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The specification's default `OTEL_PROPAGATORS`.
const DEFAULT_PROPAGATORS: &str = "tracecontext,baggage";

/// Installs the propagators `OTEL_PROPAGATORS` lists, and returns the names
/// it lists that bankauth does not know, which the specification says to
/// ignore with a warning.
pub fn install_from_env() -> Vec<String> {
    let listed = std::env::var("OTEL_PROPAGATORS")
        .ok()
        .filter(|value| !value.trim().is_empty());
    let (propagator, unknown) = from_list(listed.as_deref().unwrap_or(DEFAULT_PROPAGATORS));
    opentelemetry::global::set_text_map_propagator(propagator);
    unknown
}

/// The propagator a comma-separated `OTEL_PROPAGATORS` value asks for, and
/// the names in it that are not known.
fn from_list(list: &str) -> (TextMapCompositePropagator, Vec<String>) {
    let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    let mut unknown = Vec::new();
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    if !names.contains(&"none") {
        for name in names {
            match name {
                "tracecontext" => propagators.push(Box::new(TraceContextPropagator::new())),
                "baggage" => propagators.push(Box::new(BaggagePropagator::new())),
                "" => {}
                other => unknown.push(other.to_owned()),
            }
        }
    }
    (TextMapCompositePropagator::new(propagators), unknown)
}

/// Makes `span` a child of the caller's trace (when the metadata carries
/// one) and returns the trace id to log, if any.
pub fn continue_trace(span: &Span, metadata: &tonic::codegen::http::HeaderMap) -> Option<String> {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(metadata))
    });
    let remote = parent.span().span_context().clone();
    let _ = span.set_parent(parent);
    let local = span.context().span().span_context().clone();
    [local, remote]
        .into_iter()
        .find(|context| context.is_valid())
        .map(|context| context.trace_id().to_string())
}

/// Writes the current span's trace context, and not the caller's baggage,
/// into a request to a provider.
pub fn inject_current(headers: &mut reqwest::header::HeaderMap) {
    let context = Span::current().context().with_cleared_baggage();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers))
    });
}

#[cfg(test)]
mod tests {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    fn headers(list: &str) -> reqwest::header::HeaderMap {
        let (propagator, unknown) = from_list(list);
        assert_eq!(unknown, Vec::<String>::new());
        let context = opentelemetry::Context::new()
            .with_remote_span_context(SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ))
            .with_baggage([KeyValue::new("customer", "secret")]);
        let mut headers = reqwest::header::HeaderMap::new();
        propagator.inject_context(&context, &mut HeaderInjector(&mut headers));
        headers
    }

    #[test]
    fn the_list_selects_the_propagators() {
        let both = headers(DEFAULT_PROPAGATORS);
        assert_eq!(
            both["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(both["baggage"], "customer=secret");
        assert!(headers("baggage").get("traceparent").is_none());
        assert!(headers("none").is_empty());
        assert!(headers("tracecontext , none").is_empty());
        assert_eq!(
            from_list("b3,tracecontext,xray").1,
            ["b3".to_owned(), "xray".to_owned()]
        );
    }
}
