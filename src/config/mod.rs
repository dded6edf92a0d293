//! Configuration is data: one typed struct, read from a TOML file and then
//! overridden by `BANKAUTH_*` environment variables (`__` separates levels,
//! so `BANKAUTH_CACHE__REDIS_URL` sets `cache.redis_url`). It is validated
//! once at startup; every error names the offending key.
//!
//! It is plain data on the ground floor and imports nothing of the service.
//! What a key means to the rest of the service is checked there: the RPC
//! names a policy lists by [`crate::access::validate`], each provider kind's
//! rules by `provider::kinds`; `server::validate` runs every check. Builders
//! live next to what they build (`cache::RedisTarget::from_config`, …).

mod access;
mod cache;
mod providers;
#[cfg(test)]
mod reference;
mod secrets;
mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

pub use access::{AccessConfig, CallerConfig, Sha256Hex};
pub use cache::{CacheConfig, EncryptionKeyConfig, KeyId};
pub use providers::{
    AssertionAudience, ClientAuthMethod, ExpiryField, ProviderConfig, ProviderKind, ProviderName,
    SigningAlgorithm,
};
pub use secrets::resolve_secret;
pub use server::{ServerConfig, ServerTlsConfig};

/// The prefix of environment variables that override the file.
pub const ENV_PREFIX: &str = "BANKAUTH_";

/// A configuration key that is missing, malformed or inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: {key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration of a bankauth process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub access: AccessConfig,
    /// Providers by the name callers use in the `provider` request field.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
}

/// Logs and metrics. Traces are configured by the standard `OTEL_*`
/// environment variables, as every OpenTelemetry SDK is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// Where Prometheus scrapes `/metrics`; off when unset.
    pub metrics_addr: Option<SocketAddr>,
}

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

impl Config {
    /// Reads `path` (when given), applies `BANKAUTH_*` overrides from the
    /// environment, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Parse(format!(
                    "configuration file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        Self::extract(figment.merge(env_overrides()))
    }

    /// Parses and validates a TOML document, ignoring the environment.
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        Self::extract(Figment::from(Toml::string(toml)))
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let config: Self = figment
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot: consistency and sane bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.providers.is_empty() {
            return Err(ConfigError::invalid(
                "providers",
                "configure at least one provider",
            ));
        }
        self.server.validate()?;
        self.cache.validate_redis_urls()?;
        self.access.validate(&self.server, &self.providers)?;
        self.cache.validate()?;
        for name in self.providers.keys() {
            ProviderName::parse(name)
                .map_err(|reason| ConfigError::invalid(format!("providers.{name}"), reason))?;
        }
        Ok(())
    }
}

/// Every setting lives in a table, so an override names at least two levels
/// (`BANKAUTH_SERVER__LISTEN_ADDR`); other `BANKAUTH_*` variables, such as one
/// named by `private_key_env`, are not configuration keys and are ignored.
fn env_overrides() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

/// Figment names the key in its message already; keep it and its source.
fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
        [server.tls]
        cert_file = "/etc/bankauth/tls/tls.crt"
        key_file = "/etc/bankauth/tls/tls.key"

        [access.callers.app]
        api_key_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
        rpcs = ["*"]
        providers = ["moneyhub"]

        [providers.moneyhub]
        kind = "moneyhub"
        issuer = "https://identity.moneyhub.co.uk/oidc"
        client_id = "client-1"
        private_key_file = "/etc/bankauth/moneyhub.pem"
        data_scopes = ["accounts:read"]
    "#;

    #[test]
    fn errors_name_the_bad_key() {
        let cases = [
            (
                format!("[cache]\nredis_url = \"http://x\"\n{MINIMAL}"),
                "cache.redis_url",
            ),
            (
                format!("[cache]\nmax_replicas = 0\n{MINIMAL}"),
                "cache.max_replicas",
            ),
            (
                format!("[server]\nlisten_adr = \"0.0.0.0:1\"\n{MINIMAL}"),
                "listen_adr",
            ),
            (
                MINIMAL.replace("kind = \"moneyhub\"", "kind = \"nope\""),
                "nope",
            ),
            (
                MINIMAL.replace("[\"9f86", "[\"9F86"),
                "access.callers.app.api_key_sha256",
            ),
            (
                MINIMAL.replace("providers = [\"moneyhub\"]", "providers = [\"moneykit\"]"),
                "access.callers.app.providers",
            ),
            (
                MINIMAL.replace("rpcs = [\"*\"]", "rpcs = [\"*\"]\nburst = 0.5"),
                "access.callers.app.burst",
            ),
            (
                MINIMAL.replace("[access.callers.app]", "[access.callers.app.x]"),
                "access",
            ),
            (
                format!("[server]\nhttp2_keepalive_timeout_ms = 0\n{MINIMAL}"),
                "server.http2_keepalive_timeout_ms",
            ),
            (
                format!("[server]\nmax_connection_age_ms = 500\n{MINIMAL}"),
                "server.max_connection_age_ms",
            ),
        ];
        for (toml, key) in cases {
            let error = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(error.contains(key), "{error:?} does not name {key}");
        }
    }

    #[test]
    fn anonymous_access_beside_callers_is_refused() {
        let both = format!("[access]\nallow_anonymous = true\n{MINIMAL}");
        let error = Config::from_toml(&both).unwrap_err().to_string();
        assert!(error.contains("access.allow_anonymous"), "{error}");

        // Without callers, it stays the development switch it is.
        let (head, rest) = MINIMAL.split_once("[access.callers.app]").unwrap();
        let (_, providers) = rest.split_once("[providers.moneyhub]").unwrap();
        let alone =
            format!("{head}[access]\nallow_anonymous = true\n[providers.moneyhub]{providers}");
        assert!(Config::from_toml(&alone).unwrap().access.allow_anonymous);
    }

    #[test]
    fn redis_credentials_are_not_printed() {
        let toml = format!(
            "[cache]\nredis_url = \"redis://:hunter2@localhost\"\nallow_plaintext = true\n{MINIMAL}"
        );
        let config = Config::from_toml(&toml).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
