//! The gRPC server's keys: where it listens, its deadlines and its TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// The shortest `server.max_connection_age_ms` other than 0.
const MIN_CONNECTION_AGE_MS: u64 = 1_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the gRPC server listens.
    pub listen_addr: SocketAddr,
    /// Upper bound on any one RPC; a shorter `grpc-timeout` from the caller wins.
    pub request_timeout_ms: u64,
    /// How long in-flight RPCs may run after SIGTERM before the process exits.
    pub shutdown_grace_ms: u64,
    /// TLS on the gRPC port; with `client_ca_file`, callers may authenticate
    /// with a client certificate.
    pub tls: Option<ServerTlsConfig>,
    /// Serve plaintext gRPC when `tls` is not set: only behind a mesh or
    /// proxy that terminates TLS, or for development (the demo).
    pub allow_plaintext: bool,
    /// A second, plaintext port serving only `grpc.health.v1`, for probes
    /// that cannot speak TLS (Kubernetes' gRPC probes, container health
    /// checks) when the gRPC port has `tls`.
    pub health_listen_addr: Option<SocketAddr>,
    /// Interval of the HTTP/2 PINGs sent on every connection
    /// (0: none), so a peer that vanished without closing (a node lost, a
    /// NAT entry dropped) is noticed and its connection freed.
    pub http2_keepalive_interval_ms: u64,
    /// How long a PING may go unanswered before the connection is closed.
    pub http2_keepalive_timeout_ms: u64,
    /// Connections older than this get a GOAWAY (0: no limit): clients finish
    /// their in-flight RPCs (each bounded by `request_timeout_ms`) and
    /// reconnect through the Service, so new replicas get a share of
    /// long-lived clients' traffic.
    pub max_connection_age_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain and private key of the server.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// PEM CA whose client certificates identify callers (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            request_timeout_ms: 15_000,
            shutdown_grace_ms: 20_000,
            tls: None,
            allow_plaintext: false,
            health_listen_addr: None,
            http2_keepalive_interval_ms: 60_000,
            http2_keepalive_timeout_ms: 20_000,
            max_connection_age_ms: 30 * 60 * 1000,
        }
    }
}

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.tls.is_none() && !self.allow_plaintext {
            return Err(ConfigError::invalid(
                "server.tls",
                "configure cert_file and key_file (or, behind a TLS-terminating proxy or for development, set server.allow_plaintext = true)",
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "server.request_timeout_ms",
                "must be positive",
            ));
        }
        if self.http2_keepalive_interval_ms > 0 && self.http2_keepalive_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "server.http2_keepalive_timeout_ms",
                "must be positive while server.http2_keepalive_interval_ms is on",
            ));
        }
        // Below a second every client would spend its time reconnecting.
        if (1..MIN_CONNECTION_AGE_MS).contains(&self.max_connection_age_ms) {
            return Err(ConfigError::invalid(
                "server.max_connection_age_ms",
                format!("must be 0 (no limit) or at least {MIN_CONNECTION_AGE_MS}"),
            ));
        }
        Ok(())
    }

    /// The HTTP/2 keepalive interval, when PINGs are on.
    pub fn http2_keepalive_interval(&self) -> Option<Duration> {
        (self.http2_keepalive_interval_ms > 0)
            .then(|| Duration::from_millis(self.http2_keepalive_interval_ms))
    }

    /// The age after which a connection is sent GOAWAY, when limited.
    pub fn max_connection_age(&self) -> Option<Duration> {
        (self.max_connection_age_ms > 0).then(|| Duration::from_millis(self.max_connection_age_ms))
    }

    /// Whether callers may present client certificates (mutual TLS).
    pub fn verifies_client_certificates(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca_file.is_some())
    }
}
