//! Startup and shutdown: builds the service from configuration, serves it
//! with health and reflection, and drains in-flight RPCs on a signal.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::ServerTlsConfig;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::access::{self, Access};
use crate::api::observe::ObserveLayer;
use crate::api::{AuthApi, AuthServiceServer};
use crate::cache::seal::Sealer;
use crate::cache::{Cache, CacheError, ExpiryPolicy, RedisTarget, Tiers};
use crate::config::{Config, ConfigError, ServerConfig};
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::provider::{Providers, SetupError};
use crate::service::AuthService;
use crate::telemetry::{Metrics, metrics};

/// Bound on a decoded request. The largest valid request is a few kB; this
/// leaves room while keeping hostile payloads cheap to refuse.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Provider(#[from] SetupError),
    #[error("cannot use Redis at {key}: {source}")]
    Redis {
        key: &'static str,
        #[source]
        source: CacheError,
    },
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// How often the Redis health status re-checks Redis.
const REDIS_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// The health service name the liveness probe checks: SERVING while the
/// process runs, whatever Redis or the providers are doing.
pub const LIVENESS_SERVICE: &str = "liveness";
/// The health service name that says whether Redis answers, for dashboards.
/// Readiness ("" and AuthService) does not follow it: without Redis a
/// replica still serves, from its own tier and the provider.
pub const REDIS_SERVICE: &str = "redis";

/// A configured bankauth, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    /// The plaintext health-only port, when configured.
    health_listener: Option<TcpListener>,
    service: Arc<AuthService>,
    access: Arc<Access>,
    tls: Option<ServerTlsConfig>,
    /// Kept to re-run discovery on SIGHUP.
    providers: Providers,
    cache: Cache,
    metrics: Arc<Metrics>,
    server: ServerConfig,
}

impl Application {
    /// Validates the configuration, loads keys, connects to Redis (when
    /// configured) and binds the listen address. Every failure names its cause.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let Checked { tls, redis, sealer } = check(&config)?;
        let metrics = Arc::new(Metrics::default());
        let cache = Cache::connect(
            redis.as_ref(),
            config.cache.require_redis_at_startup,
            sealer,
            Tiers::from_config(&config.cache),
            metrics.clone(),
        )
        .await
        .map_err(|source| StartupError::Redis {
            key: redis.as_ref().map_or("cache", RedisTarget::config_key),
            source,
        })?;
        let providers =
            Providers::connect(&config, metrics.clone(), &cache.shared_buckets()).await?;
        let service = Arc::new(AuthService::new(
            providers.clone(),
            cache.clone(),
            ExpiryPolicy::from_config(&config.cache),
            metrics.clone(),
        ));
        let listener = bind(config.server.listen_addr, "server.listen_addr").await?;
        let health_listener = match config.server.health_listen_addr {
            Some(addr) => Some(bind(addr, "server.health_listen_addr").await?),
            None => None,
        };
        let metrics_listener = match config.telemetry.metrics_addr {
            Some(addr) => Some(bind(addr, "telemetry.metrics_addr").await?),
            None => None,
        };
        Ok(Self {
            listener,
            metrics_listener,
            health_listener,
            service,
            access: Arc::new(Access::from_config(&config.access)),
            tls,
            providers,
            cache,
            metrics,
            server: config.server,
        })
    }

    /// The bound address (useful when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The bound metrics address, when metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// The bound health-only address, when one is configured.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// Serves until `shutdown` completes, then reports NOT_SERVING, stops
    /// accepting, and lets in-flight RPCs finish within the grace period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartupError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        // Readiness: this process answers from now until it drains.
        for service in [
            LIVENESS_SERVICE,
            "",
            <AuthServiceServer<AuthApi> as NamedService>::NAME,
        ] {
            health
                .set_service_status(service, ServingStatus::Serving)
                .await;
        }
        // Background tasks, stopped when this function returns.
        let _redis_health = AbortOnDrop(tokio::spawn(track_redis(
            health.clone(),
            self.cache.clone(),
        )));
        // Every call, on every port, gets its deadline, log line and metrics.
        let observe = ObserveLayer::new(
            self.metrics.clone(),
            Duration::from_millis(self.server.request_timeout_ms),
        );
        let _health_server = self.health_listener.map(|listener| {
            let health_only = Server::builder()
                .layer(observe.clone())
                .add_service(health_service.clone())
                .serve_with_incoming(accept(listener));
            AbortOnDrop(tokio::spawn(async move {
                if let Err(error) = health_only.await {
                    tracing::error!(%error, "the health port stopped");
                }
            }))
        });
        let _metrics_server = self
            .metrics_listener
            .map(|listener| AbortOnDrop(metrics::serve(listener, self.metrics.clone())));
        let _reload = AbortOnDrop(tokio::spawn(rediscover_on_sighup(self.providers)));
        let invalidations = self.cache.clone();
        let _invalidations = AbortOnDrop(tokio::spawn(async move {
            invalidations.follow_invalidations().await
        }));

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // So grpcurl can decode the google.rpc error details we send.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        let auth = AuthServiceServer::new(AuthApi::new(self.service, self.access))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        let (stop_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
        // tonic's max_connection_age_grace is left unset on purpose: in
        // tonic 0.14 setting it replaces the GOAWAY at max_connection_age
        // with an abrupt close at age + grace. Without it, in-flight RPCs
        // finish after the GOAWAY, each within request_timeout_ms.
        let mut builder = Server::builder()
            .http2_keepalive_interval(self.server.http2_keepalive_interval())
            .http2_keepalive_timeout(Some(Duration::from_millis(
                self.server.http2_keepalive_timeout_ms,
            )));
        if let Some(age) = self.server.max_connection_age() {
            builder = builder.max_connection_age(age);
        }
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls)?;
        }
        let server = builder
            .layer(observe)
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(auth)
            .serve_with_incoming_shutdown(accept(self.listener), async {
                stopped.await.ok();
            });
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return Ok(result?),
            () = shutdown => {}
        }
        tracing::info!("shutting down: no new RPCs, draining in-flight ones");
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health.set_not_serving::<AuthServiceServer<AuthApi>>().await;
        let _ = stop_accepting.send(());
        let grace = Duration::from_millis(self.server.shutdown_grace_ms);
        match tokio::time::timeout(grace, server).await {
            Ok(result) => Ok(result?),
            Err(_) => {
                tracing::warn!(?grace, "grace period elapsed with RPCs still in flight");
                Ok(())
            }
        }
    }
}

/// What the offline startup checks build, for startup to go on with.
pub struct Checked {
    pub tls: Option<ServerTlsConfig>,
    pub redis: Option<RedisTarget>,
    pub sealer: Sealer,
}

/// Every startup check that needs no network, the one list both
/// [`Application::build`] (before it connects to anything) and
/// `bankauth check-config` run: the configuration's own rules, the server's
/// TLS certificate and key, the cache's Redis target and sealing key, and
/// each provider's keys and secrets.
pub fn check(config: &Config) -> Result<Checked, ConfigError> {
    validate(config)?;
    let tls = usable_tls(config)?;
    let redis = RedisTarget::from_config(&config.cache)?;
    let sealer = Sealer::from_config(&config.cache)?;
    Providers::check(config)?;
    Ok(Checked { tls, redis, sealer })
}

/// The server's TLS configuration with its certificate and key parsed, so
/// a bad one is found at startup (and by `check-config`), naming the key.
pub fn usable_tls(config: &Config) -> Result<Option<ServerTlsConfig>, ConfigError> {
    let tls = server_tls(&config.server)?;
    if let Some(tls) = &tls {
        Server::builder().tls_config(tls.clone()).map_err(|e| {
            ConfigError::invalid(
                "server.tls",
                format!("is not a usable certificate and key: {e}"),
            )
        })?;
    }
    Ok(tls)
}

/// Reads the server's TLS files; errors name the key.
fn server_tls(config: &ServerConfig) -> Result<Option<ServerTlsConfig>, ConfigError> {
    use tonic::transport::{Certificate, Identity};
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let read = |key: &str, path: &Path| {
        std::fs::read(path).map_err(|e| ConfigError::invalid(key, format!("cannot be read: {e}")))
    };
    let identity = Identity::from_pem(
        read("server.tls.cert_file", &tls.cert_file)?,
        read("server.tls.key_file", &tls.key_file)?,
    );
    let mut tls_config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        // API-key callers connect without a certificate.
        tls_config = tls_config
            .client_ca_root(Certificate::from_pem(read(
                "server.tls.client_ca_file",
                ca,
            )?))
            .client_auth_optional(true);
    }
    Ok(Some(tls_config))
}

/// Every check a configuration must pass offline: its own consistency
/// ([`Config::validate`]), the RPC names policies list
/// ([`access::validate`]) and each provider kind's rules
/// ([`provider::kinds::validate`](crate::provider::kinds::validate)).
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    config.validate()?;
    access::validate(&config.access)?;
    for (name, provider) in &config.providers {
        crate::provider::kinds::validate(&format!("providers.{name}"), provider)?;
    }
    Ok(())
}

/// Accepted connections with Nagle off: a response's headers, body and
/// trailers go out in separate writes, and Nagle would hold the later ones
/// for the caller's delayed ACK (40 ms on Linux).
fn accept(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, key, source })
}

/// Stops a background task when the owner goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The [`REDIS_SERVICE`] health status: SERVING while Redis answers.
/// Checking also reattaches to Redis when no request comes by.
async fn track_redis(health: HealthReporter, cache: Cache) {
    let mut answered = None;
    loop {
        let Some(now_answers) = cache.redis_answers().await else {
            return;
        };
        if answered != Some(now_answers) {
            let status = if now_answers {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status(REDIS_SERVICE, status).await;
            answered = Some(now_answers);
        }
        tokio::time::sleep(REDIS_CHECK_INTERVAL).await;
    }
}

/// Re-reads every provider's discovery document on each SIGHUP.
async fn rediscover_on_sighup(providers: Providers) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot install a SIGHUP handler; discovery reload is off");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: re-running provider discovery");
            providers.rediscover().await;
        }
    }
    #[cfg(not(unix))]
    drop(providers);
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    interrupt.await.ok();
}
