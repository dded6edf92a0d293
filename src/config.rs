//! Configuration is data: one typed struct, read from a TOML file and then
//! overridden by `BANKAUTH_*` environment variables (`__` separates levels,
//! so `BANKAUTH_CACHE__REDIS_URL` sets `cache.redis_url`). It is validated
//! once at startup; every error names the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::provider::SigningAlgorithm;

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
    /// Providers by the name callers use in the `provider` request field.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the gRPC server listens.
    pub listen_addr: SocketAddr,
    /// Upper bound on any one RPC; a shorter `grpc-timeout` from the caller wins.
    pub request_timeout_ms: u64,
    /// How long in-flight RPCs may run after SIGTERM before the process exits.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            request_timeout_ms: 15_000,
            shutdown_grace_ms: 20_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `redis://` or `rediss://` URL, possibly with credentials. Without it,
    /// tokens are cached in process (fine for one replica or the demo).
    pub redis_url: Option<SecretString>,
    /// A token is dropped from the cache this long before it expires, so a
    /// caller always receives one with time left to use it.
    pub safety_margin_secs: u64,
    /// Bound on every Redis command and on connecting.
    pub redis_timeout_ms: u64,
    /// Entries in the in-process cache (tokens, and remembered user ids).
    pub max_entries: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            safety_margin_secs: 60,
            redis_timeout_ms: 1_000,
            max_entries: 100_000,
        }
    }
}

/// One upstream provider, by kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderConfig {
    Moneyhub(MoneyhubConfig),
}

/// Who the client assertion's `aud` names; providers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssertionAudience {
    #[default]
    TokenEndpoint,
    Issuer,
}

/// A Moneyhub-style identity provider: `private_key_jwt` client
/// authentication, SCIM users and user-scoped client-credentials tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoneyhubConfig {
    /// The OpenID issuer, such as `https://identity.moneyhub.co.uk/oidc`.
    pub issuer: Url,
    /// Token endpoint; defaults to `{issuer}/token`.
    pub token_url: Option<Url>,
    /// SCIM base URL; defaults to the issuer's origin + `/scim`.
    pub scim_url: Option<Url>,
    pub client_id: String,
    /// Path of the PEM private key registered for `private_key_jwt`.
    pub private_key_file: Option<PathBuf>,
    /// Name of an environment variable holding the PEM private key.
    pub private_key_env: Option<String>,
    /// The key in memory, for the demo and tests; never read from a file.
    #[serde(skip)]
    pub private_key_pem: Option<SecretString>,
    /// The `kid` registered with the provider; defaults to the key's RFC 7638 thumbprint.
    pub key_id: Option<String>,
    #[serde(default)]
    pub signing_algorithm: SigningAlgorithm,
    #[serde(default)]
    pub assertion_audience: AssertionAudience,
    /// Scopes IssueDataToken may request.
    pub data_scopes: Vec<String>,
    /// Lifetime assumed when the token response carries no expiry at all.
    #[serde(default = "default_token_lifetime_secs")]
    pub default_token_lifetime_secs: u64,
    /// Bound on each HTTP request to the provider.
    #[serde(default = "default_upstream_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Content type of SCIM request bodies. RFC 7644 servers accept
    /// `application/scim+json`; Moneyhub's own client sends `application/json`.
    #[serde(default = "default_scim_content_type")]
    pub scim_content_type: String,
}

fn default_token_lifetime_secs() -> u64 {
    7_200
}

fn default_upstream_timeout_ms() -> u64 {
    10_000
}

fn default_scim_content_type() -> String {
    "application/json".into()
}

impl MoneyhubConfig {
    pub fn token_url(&self) -> Url {
        self.token_url
            .clone()
            .unwrap_or_else(|| join_path(&self.issuer, "token"))
    }

    pub fn scim_url(&self) -> Url {
        self.scim_url.clone().unwrap_or_else(|| {
            let mut origin = self.issuer.clone();
            origin.set_path("/scim");
            origin.set_query(None);
            origin
        })
    }

    /// Reads the private key from wherever the configuration says it is.
    pub fn private_key(&self, key: &str) -> Result<SecretString, ConfigError> {
        match (
            &self.private_key_pem,
            &self.private_key_file,
            &self.private_key_env,
        ) {
            (Some(pem), None, None) => Ok(pem.clone()),
            (None, Some(path), None) => std::fs::read_to_string(path)
                .map(SecretString::from)
                .map_err(|e| {
                    ConfigError::invalid(
                        format!("{key}.private_key_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                }),
            (None, None, Some(var)) => std::env::var(var).map(SecretString::from).map_err(|_| {
                ConfigError::invalid(
                    format!("{key}.private_key_env"),
                    format!("environment variable {var} is not set"),
                )
            }),
            _ => Err(ConfigError::invalid(
                key,
                "set exactly one of private_key_file and private_key_env",
            )),
        }
    }
}

/// Appends a path segment to a URL whose path may or may not end in `/`.
fn join_path(base: &Url, segment: &str) -> Url {
    let mut url = base.clone();
    let path = format!("{}/{segment}", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
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
        if self.server.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "server.request_timeout_ms",
                "must be positive",
            ));
        }
        if let Some(url) = &self.cache.redis_url {
            let parsed = Url::parse(url.expose_secret())
                .map_err(|_| ConfigError::invalid("cache.redis_url", "is not a URL"))?;
            if !matches!(parsed.scheme(), "redis" | "rediss") {
                return Err(ConfigError::invalid(
                    "cache.redis_url",
                    "must start with redis:// or rediss://",
                ));
            }
        }
        if self.cache.max_entries == 0 {
            return Err(ConfigError::invalid(
                "cache.max_entries",
                "must be positive",
            ));
        }
        for (name, provider) in &self.providers {
            let key = format!("providers.{name}");
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError::invalid(
                    key,
                    "provider names are 1 to 64 letters, digits, '-' or '_'",
                ));
            }
            match provider {
                ProviderConfig::Moneyhub(moneyhub) => moneyhub.validate(&key)?,
            }
        }
        Ok(())
    }

    pub fn safety_margin(&self) -> Duration {
        Duration::from_secs(self.cache.safety_margin_secs)
    }
}

impl MoneyhubConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let http_url = |field: &str, url: &Url| {
            if matches!(url.scheme(), "http" | "https") && url.host().is_some() {
                Ok(())
            } else {
                Err(ConfigError::invalid(
                    format!("{key}.{field}"),
                    "must be an http(s) URL",
                ))
            }
        };
        http_url("issuer", &self.issuer)?;
        if let Some(url) = &self.token_url {
            http_url("token_url", url)?;
        }
        if let Some(url) = &self.scim_url {
            http_url("scim_url", url)?;
        }
        if self.client_id.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.client_id"),
                "must not be empty",
            ));
        }
        if self.data_scopes.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.data_scopes"),
                "list the scopes IssueDataToken may request",
            ));
        }
        for scope in &self.data_scopes {
            crate::domain::Scope::parse("", scope).map_err(|_| {
                ConfigError::invalid(
                    format!("{key}.data_scopes"),
                    format!("{scope:?} is not a valid OAuth 2.0 scope"),
                )
            })?;
        }
        if self.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.request_timeout_ms"),
                "must be positive",
            ));
        }
        let sources = [
            self.private_key_pem.is_some(),
            self.private_key_file.is_some(),
            self.private_key_env.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() != 1 {
            return Err(ConfigError::invalid(
                key,
                "set exactly one of private_key_file and private_key_env",
            ));
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
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [providers.moneyhub]
        kind = "moneyhub"
        issuer = "https://identity.moneyhub.co.uk/oidc"
        client_id = "client-1"
        private_key_file = "/etc/bankauth/moneyhub.pem"
        data_scopes = ["accounts:read"]
    "#;

    #[test]
    fn defaults_follow_the_provider_documentation() {
        let config = Config::from_toml(MINIMAL).unwrap();
        let ProviderConfig::Moneyhub(moneyhub) = &config.providers["moneyhub"];
        assert_eq!(
            moneyhub.token_url().as_str(),
            "https://identity.moneyhub.co.uk/oidc/token"
        );
        assert_eq!(
            moneyhub.scim_url().as_str(),
            "https://identity.moneyhub.co.uk/scim"
        );
        assert_eq!(config.server.listen_addr.port(), 50051);
        assert_eq!(config.cache.safety_margin_secs, 60);
        assert_eq!(moneyhub.signing_algorithm, SigningAlgorithm::RS256);
    }

    #[test]
    fn errors_name_the_bad_key() {
        let cases = [
            (
                MINIMAL.replace("client-1", " "),
                "providers.moneyhub.client_id",
            ),
            (
                MINIMAL.replace("[\"accounts:read\"]", "[]"),
                "providers.moneyhub.data_scopes",
            ),
            (
                MINIMAL.replace("https://identity", "ftp://identity"),
                "providers.moneyhub.issuer",
            ),
            (
                format!("{MINIMAL}\nprivate_key_env = \"KEY\""),
                "providers.moneyhub",
            ),
            (
                format!("[cache]\nredis_url = \"http://x\"\n{MINIMAL}"),
                "cache.redis_url",
            ),
            (
                format!("[server]\nlisten_adr = \"0.0.0.0:1\"\n{MINIMAL}"),
                "listen_adr",
            ),
            (
                MINIMAL.replace("kind = \"moneyhub\"", "kind = \"nope\""),
                "nope",
            ),
        ];
        for (toml, key) in cases {
            let error = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(error.contains(key), "{error:?} does not name {key}");
        }
    }

    #[test]
    fn redis_credentials_are_not_printed() {
        let toml = format!("[cache]\nredis_url = \"redis://:hunter2@localhost\"\n{MINIMAL}");
        let config = Config::from_toml(&toml).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
