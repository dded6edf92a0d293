//! The gRPC server's keys: where it listens, its deadlines and its TLS.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

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
        Ok(())
    }

    /// Whether callers may present client certificates (mutual TLS).
    pub fn verifies_client_certificates(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca_file.is_some())
    }
}
