//! Logs, traces and metrics.
//!
//! Logs go to stderr (stdout stays free for what the demo prints): text, coloured
//! only on a terminal, or JSON lines. Traces are exported over OTLP when the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set, over
//! gRPC or, with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`, HTTP; W3C
//! `traceparent` is continued from incoming gRPC metadata and passed to providers.

pub mod metrics;
pub mod propagation;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use metrics::Metrics;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Flushes buffered spans when dropped, so the last ones are not lost at exit.
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("could not flush traces: {error}");
            }
        }
    }
}

/// Installs the global subscriber. Call once, from `main`, inside the Tokio runtime.
pub fn init(format: LogFormat) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (tracer_provider, export_error) = match otlp_tracer_provider() {
        Ok(provider) => (provider, None),
        Err(error) => (None, Some(error)),
    };
    let traces = tracer_provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("bankauth")));
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .init();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if let Some(error) = export_error {
        tracing::warn!(%error, "OTLP trace export is configured but could not start; traces are off");
    }
    TelemetryGuard { tracer_provider }
}

/// An OTLP exporter when the standard environment asks for one.
fn otlp_tracer_provider()
-> Result<Option<SdkTracerProvider>, opentelemetry_otlp::ExporterBuildError> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if !configured || disabled {
        return Ok(None);
    }
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match otlp_protocol().as_deref() {
        None | Some("grpc") => builder.with_tonic().build()?,
        Some("http/protobuf") => builder
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()?,
        Some(other) => {
            return Err(
                opentelemetry_otlp::ExporterBuildError::InvalidConfiguration(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL: {other:?} is not grpc or http/protobuf"
                )),
            );
        }
    };
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("bankauth");
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`.
/// Unset means gRPC (the specification's default is HTTP; bankauth keeps
/// gRPC, which it spoke first, so existing deployments do not change).
fn otlp_protocol() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
}
