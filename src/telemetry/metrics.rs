//! Prometheus metrics, served as text on their own port (`/metrics`). One
//! registry per process (per `Application`, so tests do not share counters).

use std::sync::Arc;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
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

/// Every metric bankauth exports.
pub struct Metrics {
    registry: Registry,
    rpcs: Family<RpcLabels, Counter>,
    rpc_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    cache: Family<CacheLabels, Counter>,
    upstream: Family<UpstreamLabels, Counter>,
    upstream_seconds: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    redis_errors: Counter,
    redis_up: Gauge,
    tokens_issued: Family<ProviderLabels, Counter>,
    coalesced: Family<ProviderLabels, Counter>,
    guards: Family<GuardLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bankauth");
        let metrics = Self {
            rpcs: Family::default(),
            rpc_seconds: Family::new_with_constructor(latency_histogram),
            cache: Family::default(),
            upstream: Family::default(),
            upstream_seconds: Family::new_with_constructor(latency_histogram),
            redis_errors: Counter::default(),
            redis_up: Gauge::default(),
            tokens_issued: Family::default(),
            coalesced: Family::default(),
            guards: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "rpc_requests",
            "gRPC calls, each counted once when it ends (health, reflection and refused calls included), by method and gRPC code",
            metrics.rpcs.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "gRPC call latency, from the request to its status, by method",
            metrics.rpc_seconds.clone(),
        );
        registry.register(
            "cache_lookups",
            "Token cache lookups, by tier (memory, redis) and outcome (hit, miss)",
            metrics.cache.clone(),
        );
        registry.register(
            "upstream_requests",
            "HTTP requests to providers, by provider, endpoint and outcome",
            metrics.upstream.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Provider HTTP request latency, by provider",
            metrics.upstream_seconds.clone(),
        );
        registry.register(
            "redis_errors",
            "Redis commands that failed",
            metrics.redis_errors.clone(),
        );
        registry.register(
            "redis_up",
            "1 while Redis answers; 0 during an outage, or when no Redis is configured",
            metrics.redis_up.clone(),
        );
        registry.register(
            "tokens_issued",
            "Tokens obtained from providers (cache misses that succeeded)",
            metrics.tokens_issued.clone(),
        );
        registry.register(
            "coalesced_requests",
            "Token requests that joined another caller's upstream call, by provider",
            metrics.coalesced.clone(),
        );
        registry.register(
            "upstream_guard_events",
            "Retries, circuit-breaker and request-budget events, by provider",
            metrics.guards.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    pub fn rpc(&self, method: &'static str, code: &'static str, elapsed: Duration) {
        self.rpcs.get_or_create(&RpcLabels { method, code }).inc();
        self.rpc_seconds
            .get_or_create(&MethodLabels { method })
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

    pub fn coalesced(&self, provider: &str) {
        self.coalesced
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
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
