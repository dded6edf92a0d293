//! Prometheus metrics, served as text on their own port (`/metrics`). One
//! registry per process (per `Application`, so tests do not share counters).
//!
//! Calls are counted in the grpc-ecosystem family (`grpc_server_started_total`,
//! `grpc_server_handled_total`, `grpc_server_handling_seconds`, labelled
//! `grpc_type`, `grpc_service`, `grpc_method`, `grpc_code` with Go's code
//! names) rather than OpenTelemetry's `rpc.server.duration`: these are the
//! names Prometheus-based gRPC dashboards, alerts and SLO tools already
//! query, and a Prometheus scrape is how bankauth exports metrics. Unlike
//! go-grpc-prometheus, the latency histogram carries `grpc_code` too, so a
//! latency objective can leave errors out. The rest is bankauth's own,
//! prefixed `bankauth_`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// A gRPC method as the grpc-ecosystem metrics label it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcMethod {
    /// `unary`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
    /// The fully qualified service, e.g. `bankauth.v1.AuthService`.
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    #[prometheus(flatten)]
    method: GrpcMethod,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    provider: String,
    /// The endpoints it guards: identity, scim, users, jwks, revocation.
    breaker: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EntryLabels {
    /// `tokens` or `users` (remembered external ids).
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    tier: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    provider: String,
    endpoint: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuardLabels {
    provider: String,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

/// Latency buckets from 0.25 ms to about 8 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// A gauge read when scraped rather than kept up to date.
type Sampler = Box<dyn Fn(&Metrics) + Send + Sync>;

/// Every metric bankauth exports.
pub struct Metrics {
    registry: Registry,
    started: Family<GrpcMethod, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling_seconds: Family<HandledLabels, Histogram, fn() -> Histogram>,
    cache: Family<CacheLabels, Counter>,
    cache_entries: Family<EntryLabels, Gauge>,
    upstream: Family<UpstreamLabels, Counter>,
    upstream_seconds: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    redis_errors: Counter,
    redis_up: Gauge,
    tokens_issued: Family<ProviderLabels, Counter>,
    coalesced: Family<ProviderLabels, Counter>,
    guards: Family<GuardLabels, Counter>,
    breaker_open: Family<BreakerLabels, Gauge>,
    samplers: Mutex<Vec<Sampler>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            started: Family::default(),
            handled: Family::default(),
            handling_seconds: Family::new_with_constructor(latency_histogram),
            cache: Family::default(),
            cache_entries: Family::default(),
            upstream: Family::default(),
            upstream_seconds: Family::new_with_constructor(latency_histogram),
            redis_errors: Counter::default(),
            redis_up: Gauge::default(),
            tokens_issued: Family::default(),
            coalesced: Family::default(),
            guards: Family::default(),
            breaker_open: Family::default(),
            samplers: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "grpc_server_started",
            "gRPC calls started (health, reflection and refused calls included)",
            metrics.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "gRPC calls ended, by gRPC code (Go's names: OK, NotFound, Unavailable, ...)",
            metrics.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "gRPC call latency, from the request to its status, by gRPC code",
            metrics.handling_seconds.clone(),
        );
        let own = registry.sub_registry_with_prefix("bankauth");
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        own.register(
            "build_info",
            "1, labelled with the running bankauth's version",
            build,
        );
        own.register(
            "cache_lookups",
            "Token cache lookups, by tier (memory, redis) and outcome (hit, miss)",
            metrics.cache.clone(),
        );
        own.register(
            "cache_entries",
            "Entries in this process's cache tier, by kind (tokens, users: remembered external ids)",
            metrics.cache_entries.clone(),
        );
        own.register(
            "upstream_requests",
            "HTTP requests to providers, by provider, endpoint and outcome",
            metrics.upstream.clone(),
        );
        own.register(
            "upstream_duration_seconds",
            "Provider HTTP request latency, by provider",
            metrics.upstream_seconds.clone(),
        );
        own.register(
            "redis_errors",
            "Redis commands that failed",
            metrics.redis_errors.clone(),
        );
        own.register(
            "redis_up",
            "1 while Redis answers; 0 during an outage, or when no Redis is configured",
            metrics.redis_up.clone(),
        );
        own.register(
            "tokens_issued",
            "Tokens obtained from providers (cache misses that succeeded)",
            metrics.tokens_issued.clone(),
        );
        own.register(
            "coalesced_requests",
            "Token requests that joined another caller's upstream call, by provider",
            metrics.coalesced.clone(),
        );
        own.register(
            "upstream_guard_events",
            "Retries, circuit-breaker and request-budget events, by provider",
            metrics.guards.clone(),
        );
        own.register(
            "circuit_breaker_open",
            "1 from the moment a provider's circuit breaker opens until a probe succeeds, else 0; by provider and breaker (identity, scim, users, jwks, revocation)",
            metrics.breaker_open.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// A call has started.
    pub fn rpc_started(&self, method: GrpcMethod) {
        self.started.get_or_create(&method).inc();
    }

    /// A call has ended with `code` (a Go code name) after `elapsed`.
    pub fn rpc_handled(&self, method: GrpcMethod, grpc_code: &'static str, elapsed: Duration) {
        let labels = HandledLabels { method, grpc_code };
        self.handled.get_or_create(&labels).inc();
        self.handling_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn cache_lookup(&self, tier: &'static str, hit: bool) {
        let outcome = if hit { "hit" } else { "miss" };
        self.cache
            .get_or_create(&CacheLabels { tier, outcome })
            .inc();
    }

    pub fn upstream(
        &self,
        provider: &str,
        endpoint: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        let provider = provider.to_owned();
        self.upstream_seconds
            .get_or_create(&ProviderLabels {
                provider: provider.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.upstream
            .get_or_create(&UpstreamLabels {
                provider,
                endpoint,
                outcome,
            })
            .inc();
    }

    pub fn redis_error(&self) {
        self.redis_errors.inc();
    }

    pub fn redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    pub fn token_issued(&self, provider: &str) {
        self.tokens_issued
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .inc();
    }

    /// `retry`, `circuit_opened`, `circuit_open` (a request refused),
    /// `budget_exhausted`.
    pub fn upstream_guard(&self, provider: &str, event: &'static str) {
        self.guards
            .get_or_create(&GuardLabels {
                provider: provider.to_owned(),
                event,
            })
            .inc();
    }

    /// The gauge a breaker sets to 1 while open, 0 while closed.
    pub fn breaker_gauge(&self, provider: &str, breaker: &'static str) -> Gauge {
        self.breaker_open
            .get_or_create(&BreakerLabels {
                provider: provider.to_owned(),
                breaker,
            })
            .clone()
    }

    /// How many tokens and remembered users this process holds.
    pub fn cache_entries(&self, tokens: u64, users: u64) {
        for (kind, count) in [("tokens", tokens), ("users", users)] {
            self.cache_entries
                .get_or_create(&EntryLabels { kind })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Runs `sample` before each scrape, to set gauges that are cheaper to
    /// read then than to keep up to date.
    pub fn sample_on_scrape(&self, sample: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.samplers
            .lock()
            .expect("samplers lock")
            .push(Box::new(sample));
    }

    pub fn coalesced(&self, provider: &str) {
        self.coalesced
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        for sample in self.samplers.lock().expect("samplers lock").iter() {
            sample(self);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
    async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            metrics.render(),
        )
    }
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "metrics endpoint stopped");
        }
    })
}
