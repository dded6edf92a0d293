//! Logs, traces and metrics.
//!
//! Logs go to stderr (stdout stays free for what the demo prints): text, coloured
//! only on a terminal, or JSON lines. A thread of their own writes them, in
//! batches: a request formats its line and queues it, and never waits on a
//! write to stderr (one syscall per line was a tenth of a cached token's
//! CPU time). The queue never drops a line: when it is full (128,000
//! lines), requests wait, as they did on stderr. [`TelemetryGuard`] drains
//! it on exit; lines still queued when the process is killed (SIGKILL) are
//! lost. Traces are exported over OTLP when the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set, over
//! gRPC or, with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`, HTTP; an `https`
//! endpoint is verified against the system's roots, or only against the CA in
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` when that is set. The caller's trace
//! context is continued, and passed to providers, by the propagators
//! `OTEL_PROPAGATORS` selects ([`propagation`]).

mod json;
pub mod metrics;
pub mod propagation;

use std::io::{BufWriter, IsTerminal};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{
    ExporterBuildError, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::transport::{Certificate, ClientTlsConfig};
use tracing::field::{Field, Visit};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::{FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use metrics::Metrics;

/// How long an OTLP/HTTP export may take with a custom CA (the
/// specification's default `OTEL_EXPORTER_OTLP_TIMEOUT`).
const OTLP_HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub use crate::config::LogFormat;

/// How much of the log the writer thread hands to stderr in one write.
const LOG_WRITE_BUFFER: usize = 64 * 1024;

/// Flushes buffered spans and log lines when dropped, so the last ones are
/// not lost at exit.
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    /// Dropped after the tracer provider (fields drop after `drop`), so
    /// whatever shutting it down logs is written too; waits up to a second
    /// for the queued lines to reach stderr.
    _logs: WorkerGuard,
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
    let (stderr, log_guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("bankauth-logs")
        .finish(BufWriter::with_capacity(
            LOG_WRITE_BUFFER,
            std::io::stderr(),
        ));
    let json = json::JsonLines::default();
    let traced_by = json.traced_by();
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .fmt_fields(TextFields)
            .with_writer(stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(json::JsonMembers)
            .event_format(json)
            .with_writer(stderr)
            .boxed(),
    };
    let (tracer_provider, export_error) = match otlp_tracer_provider() {
        Ok(provider) => (provider, None),
        Err(error) => (None, Some(error)),
    };
    let traces = tracer_provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("bankauth")));
    let traced = traces.is_some();
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .init();
    if traced {
        tracing::dispatcher::get_default(|dispatch| traced_by.set(dispatch.downgrade()))
            .expect("set once, here");
    }
    let unknown_propagators = propagation::install_from_env();
    if !unknown_propagators.is_empty() {
        tracing::warn!(
            ignored = ?unknown_propagators,
            "OTEL_PROPAGATORS names propagators bankauth does not have (it has tracecontext, baggage and none); they are ignored"
        );
    }
    if let Some(error) = export_error {
        tracing::warn!(%error, "OTLP trace export is configured but could not start; traces are off");
    }
    TelemetryGuard {
        tracer_provider,
        _logs: log_guard,
    }
}

/// Whether a field is for OTLP only, and left out of log lines: the span's
/// name, kind and status (`otel.*`), `rpc.system`, and the numeric
/// `rpc.grpc.status_code`, which `code` names. Every RPC's line carried
/// them, and formatting them was a tenth of a line's cost.
fn is_otlp_only(name: &str) -> bool {
    name.starts_with("otel.") || name == "rpc.system" || name == "rpc.grpc.status_code"
}

/// Text lines' fields: tracing-subscriber's default layout (`name=value`,
/// the message bare), less the fields for OTLP only.
struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        let mut visitor = OmitOtlpOnly(DefaultVisitor::new(writer, true));
        fields.record(&mut visitor);
        visitor.finish()
    }

    /// Fields recorded later follow the others after a space, written only
    /// before a field that is shown (else a line would keep a stray space).
    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let first = current.fields.is_empty();
        let mut visitor = OmitOtlpOnly(DefaultVisitor::new(current.as_writer(), first));
        fields.record(&mut visitor);
        visitor.finish()
    }
}

/// Passes every field but the OTLP-only ones to the visitor inside.
struct OmitOtlpOnly<V>(V);

impl<V> OmitOtlpOnly<V> {
    fn shown(field: &Field) -> bool {
        !is_otlp_only(field.name())
    }
}

impl<V: Visit> Visit for OmitOtlpOnly<V> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if Self::shown(field) {
            self.0.record_str(field, value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if Self::shown(field) {
            self.0.record_error(field, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if Self::shown(field) {
            self.0.record_debug(field, value);
        }
    }
}

impl<V: VisitOutput<std::fmt::Result>> VisitOutput<std::fmt::Result> for OmitOtlpOnly<V> {
    fn finish(self) -> std::fmt::Result {
        self.0.finish()
    }
}

/// An OTLP exporter when the standard environment asks for one.
fn otlp_tracer_provider() -> Result<Option<SdkTracerProvider>, ExporterBuildError> {
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
    let collector_ca = otlp_env(&[
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ])
    .map(|path| {
        std::fs::read(&path).map_err(|error| {
            ExporterBuildError::InvalidConfiguration(format!(
                "OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read {path}: {error}"
            ))
        })
    })
    .transpose()?;
    let exporter = match otlp_env(&[
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ])
    .as_deref()
    {
        // Unset means gRPC: the specification's default is HTTP, but bankauth
        // spoke gRPC first, and existing deployments keep working unchanged.
        None | Some("grpc") => {
            let mut grpc = builder.with_tonic();
            let https = otlp_env(&[
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ])
            .is_some_and(|endpoint| endpoint.starts_with("https://"));
            if https {
                let tls = ClientTlsConfig::new();
                grpc = grpc.with_tls_config(match collector_ca {
                    Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                    None => tls.with_native_roots(),
                });
            }
            grpc.build()?
        }
        Some("http/protobuf") => {
            let mut http = builder
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(pem) = collector_ca {
                http = http.with_http_client(http_client_trusting(pem)?);
            }
            http.build()?
        }
        Some(other) => {
            return Err(ExporterBuildError::InvalidConfiguration(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL: {other:?} is not grpc or http/protobuf"
            )));
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

/// The first of `vars` set to something, as the specification orders them
/// (the per-signal variable before the general one).
fn otlp_env(vars: &[&str]) -> Option<String> {
    vars.iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
}

/// The OTLP/HTTP client, trusting only the collector's CA (`pem`). Built on
/// its own thread, as the exporter builds its default one: a blocking
/// client cannot be created inside the Tokio runtime.
fn http_client_trusting(pem: Vec<u8>) -> Result<reqwest::blocking::Client, ExporterBuildError> {
    let invalid = |error: reqwest::Error| {
        ExporterBuildError::InvalidConfiguration(format!("OTEL_EXPORTER_OTLP_CERTIFICATE: {error}"))
    };
    std::thread::spawn(move || {
        let ca = reqwest::Certificate::from_pem(&pem).map_err(invalid)?;
        reqwest::blocking::Client::builder()
            .tls_certs_only([ca])
            .timeout(OTLP_HTTP_TIMEOUT)
            .build()
            .map_err(invalid)
    })
    .join()
    .map_err(|_| {
        ExporterBuildError::InternalFailure("building the OTLP HTTP client panicked".into())
    })?
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    pub(crate) struct Sink(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_lines_leave_out_the_otlp_only_fields() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(TextFields)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "rpc",
                otel.name = "bankauth.v1.AuthService/GetUser",
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.method = "GetUser",
                caller = tracing::field::Empty,
                rpc.grpc.status_code = tracing::field::Empty,
            );
            span.record("caller", "app");
            span.record("rpc.grpc.status_code", 5);
            let _entered = span.enter();
            tracing::info!(latency_ms = 1.5, "rpc finished");
        });
        let line = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(
            line.contains(r#"rpc{rpc.method="GetUser" caller="app"}: "#),
            "{line}"
        );
        assert!(line.contains("rpc finished latency_ms=1.5"), "{line}");
        assert!(
            !line.contains("otel.")
                && !line.contains("rpc.system")
                && !line.contains("status_code"),
            "{line}"
        );
    }
}
