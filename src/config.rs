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

use crate::cache::seal::Sealer;
use crate::cache::{ExpiryPolicy, RedisTarget, Tiers, Topology};
use crate::provider::SigningAlgorithm;
use crate::telemetry::LogFormat;

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

/// Who may call bankauth, and for what (see [`crate::access`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Requests without credentials are served with every permission. For
    /// development only (the demo sets it); refused beside `callers`.
    pub allow_anonymous: bool,
    /// Callers by name (the name appears in logs and errors).
    pub callers: BTreeMap<String, CallerConfig>,
}

/// One calling service: its API keys (as hashes) and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// Lowercase hex SHA-256 of each key this caller may present (several,
    /// so a key rotates without downtime): `printf %s "$KEY" | sha256sum`.
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
    /// RPC names (`IssueWidgetToken`, …) or `"*"`.
    pub rpcs: Vec<String>,
    /// Provider names or `"*"`.
    pub providers: Vec<String>,
    /// DNS names in the subject alternative names of client certificates
    /// that identify this caller (needs `server.tls.client_ca_file`).
    #[serde(default)]
    pub client_cert_names: Vec<String>,
    /// Scopes it may request (on top of the provider's allow-list), or `"*"`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Sustained requests a second; unlimited when unset.
    pub requests_per_second: Option<f64>,
    /// Requests allowed at once above the rate; defaults to one second's worth.
    pub burst: Option<f64>,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `redis://` or `rediss://` URL, possibly with credentials. Without it,
    /// tokens are cached in process (fine for one replica or the demo).
    pub redis_url: Option<SecretString>,
    /// Seed nodes of a Redis Cluster (`redis://` or `rediss://` URLs), instead
    /// of `redis_url`; the rest of the cluster is discovered from them.
    pub redis_cluster_urls: Vec<SecretString>,
    /// PEM CA bundle trusted for `rediss://`; without it, the system's roots.
    pub redis_ca_file: Option<PathBuf>,
    /// A token stops being served this long before it expires, so a caller
    /// always receives one with time left to use it (and clock skew is covered)…
    pub safety_margin_secs: u64,
    /// …but never more than this fraction of its lifetime, so short-lived
    /// tokens still cache.
    pub safety_margin_fraction: f64,
    /// A hit past a jittered point in this range of the lifetime refreshes
    /// the token in the background; callers keep getting the cached one.
    pub refresh_window: [f64; 2],
    /// Bound on every Redis command and on connecting.
    pub redis_timeout_ms: u64,
    /// Entries in the in-process cache (tokens, and remembered user ids).
    pub max_entries: u64,
    /// With Redis: how long a replica keeps its own copy of a Redis entry
    /// (0: none, every hit reads Redis). Bounds how long a replica that
    /// missed an invalidation message can serve the revoked token.
    pub memory_ttl_secs: u64,
    /// AES-256-GCM keys sealing token values in Redis. The first seals; all
    /// open, so a new key goes first and the old one stays until its values expire.
    pub encryption_keys: Vec<EncryptionKeyConfig>,
    /// Allows plaintext values in Redis. For development only.
    pub allow_plaintext: bool,
    /// Refuse to start while Redis is unreachable. Off by default: a replica
    /// started during an outage serves from its own tier and the provider,
    /// and attaches to Redis when it is back.
    pub require_redis_at_startup: bool,
    /// The most replicas that run with this configuration (an autoscaler's
    /// maximum). Without Redis to share a provider's request budget, each
    /// replica spends only 1/max_replicas of it, so together they still stay
    /// under the provider's published limit.
    pub max_replicas: u32,
}

/// One cache encryption key: 32 random bytes, Base64-encoded, from a file or
/// an environment variable (generate one with `openssl rand -base64 32`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionKeyConfig {
    /// Stored beside each value to find the key that opens it: 1 to 32
    /// letters, digits, '-' or '_'.
    pub id: String,
    pub key_file: Option<PathBuf>,
    pub key_env: Option<String>,
    /// The key in memory, for tests; never read from a file.
    #[serde(skip)]
    pub key: Option<SecretString>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_cluster_urls: Vec::new(),
            redis_ca_file: None,
            safety_margin_secs: 60,
            safety_margin_fraction: 0.1,
            refresh_window: [0.70, 0.85],
            redis_timeout_ms: 1_000,
            max_entries: 100_000,
            memory_ttl_secs: 60,
            encryption_keys: Vec::new(),
            allow_plaintext: false,
            require_redis_at_startup: false,
            max_replicas: 1,
        }
    }
}

/// The protocol family of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Moneyhub: `private_key_jwt`, SCIM users, user-scoped tokens, code exchange.
    Moneyhub,
    /// MoneyKit: client id and secret, application tokens only.
    Moneykit,
    /// Any OAuth 2.0 token endpoint, every knob explicit.
    Oauth2,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Moneyhub => "moneyhub",
            Self::Moneykit => "moneykit",
            Self::Oauth2 => "oauth2",
        }
    }
}

/// How bankauth authenticates to a token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// A JWT signed with our private key (RFC 7523).
    PrivateKeyJwt,
    /// Client id and secret as HTTP Basic credentials.
    ClientSecretBasic,
    /// Client id and secret as form fields.
    ClientSecretPost,
}

/// Who the client assertion's `aud` names; providers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssertionAudience {
    #[default]
    TokenEndpoint,
    Issuer,
}

/// Which field of a token response carries the expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryField {
    /// `expires_in` or `expires_at`, whichever is present (the earlier if both).
    #[default]
    Auto,
    /// Seconds from the request (RFC 6749).
    ExpiresIn,
    /// Epoch seconds (as Moneyhub's examples show).
    ExpiresAt,
}

/// MoneyKit's production API.
pub const MONEYKIT_API: &str = "https://api.moneykit.com/";

/// One upstream provider. Which keys apply depends on `kind`; each kind's
/// defaults follow its provider's documentation (see `validate`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// The OpenID issuer, such as `https://identity.moneyhub.co.uk/oidc`.
    /// Without `token_url`, its discovery document supplies the token
    /// endpoint and JWKS at startup.
    pub issuer: Option<Url>,
    /// MoneyKit's API base; defaults to `https://api.moneykit.com/`.
    pub base_url: Option<Url>,
    /// The token endpoint, when not discovered.
    pub token_url: Option<Url>,
    /// The JWKS that signs ID tokens, when not discovered.
    pub jwks_url: Option<Url>,
    /// SCIM base URL; Moneyhub's defaults to the issuer's origin + `/scim`.
    pub scim_url: Option<Url>,
    pub client_id: String,
    /// Defaults: moneyhub `private_key_jwt`, moneykit `client_secret_basic`;
    /// required for oauth2.
    pub client_auth: Option<ClientAuthMethod>,
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
    /// Path of a file holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// Name of an environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// The secret in memory, for the demo and tests; never read from a file.
    #[serde(skip)]
    pub client_secret: Option<SecretString>,
    /// Whether user tokens send `sub`. Moneyhub: yes; MoneyKit: no; required for oauth2.
    pub send_sub: Option<bool>,
    /// Which expiry field responses carry. Required for oauth2.
    pub expiry_field: Option<ExpiryField>,
    /// Scopes IssueDataToken may request for a user.
    #[serde(default)]
    pub data_scopes: Vec<String>,
    /// Scopes IssueDataToken may request with an empty `user_id`: an
    /// application token with no `sub`.
    #[serde(default)]
    pub application_scopes: Vec<String>,
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
    /// Attempts per upstream request, the first included (1: no retries).
    #[serde(default = "default_retry_max_attempts")]
    pub retry_max_attempts: u32,
    /// First backoff step; each retry doubles it, up to `retry_max_delay_ms`.
    #[serde(default = "default_retry_base_delay_ms")]
    pub retry_base_delay_ms: u64,
    #[serde(default = "default_retry_max_delay_ms")]
    pub retry_max_delay_ms: u64,
    /// Consecutive provider failures that open the circuit breaker.
    #[serde(default = "default_breaker_failure_threshold")]
    pub breaker_failure_threshold: u32,
    /// How long the breaker stays open before one probe request.
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
    /// The provider's published rate limit for this client, shared by all
    /// replicas. Defaults: moneyhub 1000, moneykit 300, oauth2 none; 0: none.
    pub rate_limit_per_minute: Option<u32>,
    /// Allows `http://` endpoints off loopback, configured or discovered. For
    /// development only: secrets and codes would cross the network in clear.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// The least time between two JWKS fetches caused by an unknown `kid`.
    #[serde(default = "default_jwks_refetch_interval_ms")]
    pub jwks_refetch_interval_ms: u64,
    /// A longer token lifetime is a misread expiry (milliseconds, say): refused.
    #[serde(default = "default_max_token_lifetime_secs")]
    pub max_token_lifetime_secs: u64,
}

fn default_max_token_lifetime_secs() -> u64 {
    86_400
}

fn default_jwks_refetch_interval_ms() -> u64 {
    30_000
}

fn default_retry_max_attempts() -> u32 {
    3
}

fn default_retry_base_delay_ms() -> u64 {
    100
}

fn default_retry_max_delay_ms() -> u64 {
    2_000
}

fn default_breaker_failure_threshold() -> u32 {
    5
}

fn default_breaker_open_ms() -> u64 {
    10_000
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

impl ProviderConfig {
    /// A provider of `kind` with every optional key unset.
    pub fn new(kind: ProviderKind, client_id: impl Into<String>) -> Self {
        Self {
            kind,
            issuer: None,
            base_url: None,
            token_url: None,
            jwks_url: None,
            scim_url: None,
            client_id: client_id.into(),
            client_auth: None,
            private_key_file: None,
            private_key_env: None,
            private_key_pem: None,
            key_id: None,
            signing_algorithm: SigningAlgorithm::default(),
            assertion_audience: AssertionAudience::default(),
            client_secret_file: None,
            client_secret_env: None,
            client_secret: None,
            send_sub: None,
            expiry_field: None,
            data_scopes: Vec::new(),
            application_scopes: Vec::new(),
            default_token_lifetime_secs: default_token_lifetime_secs(),
            request_timeout_ms: default_upstream_timeout_ms(),
            scim_content_type: default_scim_content_type(),
            retry_max_attempts: default_retry_max_attempts(),
            retry_base_delay_ms: default_retry_base_delay_ms(),
            retry_max_delay_ms: default_retry_max_delay_ms(),
            breaker_failure_threshold: default_breaker_failure_threshold(),
            breaker_open_ms: default_breaker_open_ms(),
            rate_limit_per_minute: None,
            allow_insecure_http: false,
            jwks_refetch_interval_ms: default_jwks_refetch_interval_ms(),
            max_token_lifetime_secs: default_max_token_lifetime_secs(),
        }
    }

    /// The provider's published limit: Moneyhub allows 1,000 requests a
    /// minute per API client, MoneyKit's token endpoint 300.
    pub fn rate_limit_per_minute(&self) -> Option<u32> {
        let published = match self.kind {
            ProviderKind::Moneyhub => Some(1_000),
            ProviderKind::Moneykit => Some(300),
            ProviderKind::Oauth2 => None,
        };
        self.rate_limit_per_minute.or(published).filter(|n| *n > 0)
    }

    pub fn client_auth(&self) -> ClientAuthMethod {
        self.client_auth.unwrap_or(match self.kind {
            ProviderKind::Moneykit => ClientAuthMethod::ClientSecretBasic,
            _ => ClientAuthMethod::PrivateKeyJwt,
        })
    }

    /// The token endpoint when it is known without discovery.
    pub fn static_token_url(&self) -> Option<Url> {
        match (&self.token_url, self.kind) {
            (Some(url), _) => Some(url.clone()),
            (None, ProviderKind::Moneykit) => {
                let base = self
                    .base_url
                    .clone()
                    .unwrap_or_else(|| MONEYKIT_API.parse().expect("the MoneyKit URL is valid"));
                Some(join_path(&base, "auth/token"))
            }
            (None, _) => None,
        }
    }

    /// SCIM base URL: configured, or Moneyhub's default next to its issuer.
    pub fn scim_url(&self) -> Option<Url> {
        match (&self.scim_url, self.kind, &self.issuer) {
            (Some(url), _, _) => Some(url.clone()),
            (None, ProviderKind::Moneyhub, Some(issuer)) => {
                let mut origin = issuer.clone();
                origin.set_path("/scim");
                origin.set_query(None);
                Some(origin)
            }
            _ => None,
        }
    }

    /// Whether `url` is plain `http://` to a host off loopback while
    /// `allow_insecure_http` is off: client secrets, assertions and codes
    /// must not cross the network in clear.
    pub fn refuses_insecure(&self, url: &Url) -> bool {
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        url.scheme() == "http" && !loopback && !self.allow_insecure_http
    }

    pub fn send_sub(&self) -> bool {
        self.send_sub.unwrap_or(self.kind == ProviderKind::Moneyhub)
    }

    /// Reads the private key from wherever the configuration says it is.
    pub fn private_key(&self, key: &str) -> Result<SecretString, ConfigError> {
        resolve_secret(
            key,
            "private_key",
            &self.private_key_pem,
            &self.private_key_file,
            &self.private_key_env,
        )
    }

    /// Reads the client secret from wherever the configuration says it is.
    pub fn client_secret(&self, key: &str) -> Result<SecretString, ConfigError> {
        resolve_secret(
            key,
            "client_secret",
            &self.client_secret,
            &self.client_secret_file,
            &self.client_secret_env,
        )
        .map(|secret| SecretString::from(secret.expose_secret().trim().to_owned()))
    }
}

/// A secret from exactly one of: memory (demo, tests), a file, an
/// environment variable. Errors name `{key}.{name}_file` or `_env`.
fn resolve_secret(
    key: &str,
    name: &str,
    in_memory: &Option<SecretString>,
    file: &Option<PathBuf>,
    env: &Option<String>,
) -> Result<SecretString, ConfigError> {
    match (in_memory, file, env) {
        (Some(secret), None, None) => Ok(secret.clone()),
        (None, Some(path), None) => std::fs::read_to_string(path)
            .map(SecretString::from)
            .map_err(|e| {
                ConfigError::invalid(
                    format!("{key}.{name}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            }),
        (None, None, Some(var)) => std::env::var(var).map(SecretString::from).map_err(|_| {
            ConfigError::invalid(
                format!("{key}.{name}_env"),
                format!("environment variable {var} is not set"),
            )
        }),
        _ => Err(ConfigError::invalid(
            key,
            format!("set exactly one of {name}_file and {name}_env"),
        )),
    }
}

/// Appends a path segment to a URL whose path may or may not end in `/`.
pub(crate) fn join_path(base: &Url, segment: &str) -> Url {
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
        if self.server.tls.is_none() && !self.server.allow_plaintext {
            return Err(ConfigError::invalid(
                "server.tls",
                "configure cert_file and key_file (or, behind a TLS-terminating proxy or for development, set server.allow_plaintext = true)",
            ));
        }
        if self.server.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "server.request_timeout_ms",
                "must be positive",
            ));
        }
        if self.cache.redis_url.is_some() && !self.cache.redis_cluster_urls.is_empty() {
            return Err(ConfigError::invalid(
                "cache.redis_cluster_urls",
                "set either cache.redis_url (one node) or cache.redis_cluster_urls (a cluster), not both",
            ));
        }
        let urls = self
            .cache
            .redis_url
            .iter()
            .map(|url| ("cache.redis_url", url));
        let cluster_urls =
            (self.cache.redis_cluster_urls.iter()).map(|url| ("cache.redis_cluster_urls", url));
        for (key, url) in urls.chain(cluster_urls) {
            let parsed = Url::parse(url.expose_secret())
                .map_err(|_| ConfigError::invalid(key, "is not a URL"))?;
            if !matches!(parsed.scheme(), "redis" | "rediss") {
                return Err(ConfigError::invalid(
                    key,
                    "must start with redis:// or rediss://",
                ));
            }
        }
        self.validate_access()?;
        let fraction = self.cache.safety_margin_fraction;
        if !(0.0..0.5).contains(&fraction) {
            return Err(ConfigError::invalid(
                "cache.safety_margin_fraction",
                "must be at least 0 and below 0.5",
            ));
        }
        let [low, high] = self.cache.refresh_window;
        if !(0.0 < low && low <= high && high < 1.0 - fraction) {
            return Err(ConfigError::invalid(
                "cache.refresh_window",
                "must be [low, high] with 0 < low <= high < 1 - safety_margin_fraction, so refreshing starts while the token is still served",
            ));
        }
        if self.uses_redis() && self.cache.encryption_keys.is_empty() && !self.cache.allow_plaintext
        {
            return Err(ConfigError::invalid(
                "cache.encryption_keys",
                "token values in Redis must be encrypted: configure a key (or, for development only, set cache.allow_plaintext = true)",
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, key) in self.cache.encryption_keys.iter().enumerate() {
            let valid = (1..=32).contains(&key.id.len())
                && key
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid || !ids.insert(&key.id) {
                return Err(ConfigError::invalid(
                    format!("cache.encryption_keys[{i}].id"),
                    "must be unique, 1 to 32 letters, digits, '-' or '_'",
                ));
            }
        }
        if self.cache.max_entries == 0 {
            return Err(ConfigError::invalid(
                "cache.max_entries",
                "must be positive",
            ));
        }
        if self.cache.max_replicas == 0 {
            return Err(ConfigError::invalid(
                "cache.max_replicas",
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
            provider.validate(&key)?;
        }
        Ok(())
    }

    /// Reads the cache encryption keys; errors name the key at fault.
    pub fn cache_sealer(&self) -> Result<Sealer, ConfigError> {
        let keys = self
            .cache
            .encryption_keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let name = format!("cache.encryption_keys[{i}]");
                let encoded = resolve_secret(&name, "key", &key.key, &key.key_file, &key.key_env)?;
                let bytes = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    encoded.expose_secret().trim(),
                )
                .ok()
                .filter(|bytes| bytes.len() == 32)
                .ok_or_else(|| ConfigError::invalid(&name, "must be 32 bytes, Base64-encoded"))?;
                Ok((key.id.clone(), bytes))
            })
            .collect::<Result<_, ConfigError>>()?;
        Sealer::new(keys).map_err(|e| ConfigError::invalid("cache.encryption_keys", e.to_string()))
    }

    fn validate_access(&self) -> Result<(), ConfigError> {
        if self.access.callers.is_empty() && !self.access.allow_anonymous {
            return Err(ConfigError::invalid(
                "access.callers",
                "configure at least one caller (or, for development only, set access.allow_anonymous = true)",
            ));
        }
        // Anonymous requests get every right, so beside a policy they would void it.
        if self.access.allow_anonymous && !self.access.callers.is_empty() {
            return Err(ConfigError::invalid(
                "access.allow_anonymous",
                "must not be set beside access.callers: anonymous requests would get every right the callers' policies withhold",
            ));
        }
        for (name, caller) in &self.access.callers {
            let key = |field: &str| format!("access.callers.{name}.{field}");
            let is_hash = |h: &String| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            };
            if !caller.api_key_sha256.iter().all(is_hash) {
                return Err(ConfigError::invalid(
                    key("api_key_sha256"),
                    "list the SHA-256 of each key, as 64 lowercase hex characters",
                ));
            }
            if caller.api_key_sha256.is_empty() && caller.client_cert_names.is_empty() {
                return Err(ConfigError::invalid(
                    key("api_key_sha256"),
                    "give the caller API keys or client_cert_names",
                ));
            }
            let mutual_tls = self
                .server
                .tls
                .as_ref()
                .is_some_and(|tls| tls.client_ca_file.is_some());
            if !caller.client_cert_names.is_empty() && !mutual_tls {
                return Err(ConfigError::invalid(
                    key("client_cert_names"),
                    "needs server.tls.client_ca_file to verify client certificates",
                ));
            }
            let known_rpc =
                |rpc: &String| rpc == "*" || crate::access::RPCS.contains(&rpc.as_str());
            if caller.rpcs.is_empty() || !caller.rpcs.iter().all(known_rpc) {
                return Err(ConfigError::invalid(
                    key("rpcs"),
                    format!("list RPC names from {:?}, or \"*\"", crate::access::RPCS),
                ));
            }
            let known_provider = |p: &String| p == "*" || self.providers.contains_key(p);
            if caller.providers.is_empty() || !caller.providers.iter().all(known_provider) {
                return Err(ConfigError::invalid(
                    key("providers"),
                    "list configured provider names, or \"*\"",
                ));
            }
            if caller
                .requests_per_second
                .is_some_and(|rate| rate.is_nan() || rate <= 0.0)
            {
                return Err(ConfigError::invalid(
                    key("requests_per_second"),
                    "must be positive",
                ));
            }
            if caller
                .burst
                .is_some_and(|burst| burst.is_nan() || burst < 1.0)
            {
                return Err(ConfigError::invalid(key("burst"), "must be at least 1"));
            }
        }
        Ok(())
    }

    fn uses_redis(&self) -> bool {
        self.cache.redis_url.is_some() || !self.cache.redis_cluster_urls.is_empty()
    }

    /// Reads the server's TLS files; errors name the key.
    pub fn server_tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, ConfigError> {
        use tonic::transport::{Certificate, Identity};
        let Some(tls) = &self.server.tls else {
            return Ok(None);
        };
        let read = |key: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| ConfigError::invalid(key, format!("cannot be read: {e}")))
        };
        let identity = Identity::from_pem(
            read("server.tls.cert_file", &tls.cert_file)?,
            read("server.tls.key_file", &tls.key_file)?,
        );
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &tls.client_ca_file {
            // API-key callers connect without a certificate.
            config = config
                .client_ca_root(Certificate::from_pem(read(
                    "server.tls.client_ca_file",
                    ca,
                )?))
                .client_auth_optional(true);
        }
        Ok(Some(config))
    }

    /// Where the shared cache lives, if anywhere, with the CA file read.
    pub fn redis_target(&self) -> Result<Option<RedisTarget>, ConfigError> {
        let topology = match &self.cache.redis_url {
            Some(url) => Topology::SingleNode(url.clone()),
            None if self.cache.redis_cluster_urls.is_empty() => return Ok(None),
            None => Topology::Cluster(self.cache.redis_cluster_urls.clone()),
        };
        let ca_pem = match &self.cache.redis_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ConfigError::invalid("cache.redis_ca_file", format!("cannot be read: {e}"))
            })?),
            None => None,
        };
        Ok(Some(RedisTarget {
            topology,
            ca_pem,
            timeout: Duration::from_millis(self.cache.redis_timeout_ms),
        }))
    }

    pub fn cache_tiers(&self) -> Tiers {
        Tiers {
            max_entries: self.cache.max_entries,
            memory_ttl: Duration::from_secs(self.cache.memory_ttl_secs),
        }
    }

    pub fn expiry_policy(&self) -> ExpiryPolicy {
        ExpiryPolicy {
            margin: Duration::from_secs(self.cache.safety_margin_secs),
            margin_fraction: self.cache.safety_margin_fraction,
            refresh_window: (self.cache.refresh_window[0], self.cache.refresh_window[1]),
        }
    }
}

impl ProviderConfig {
    /// Checks the keys `kind` requires and refuses those it cannot use, so a
    /// misconfiguration is found at startup rather than on the first call.
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let invalid =
            |field: &str, reason: &str| ConfigError::invalid(format!("{key}.{field}"), reason);
        let http_url = |field: &str, url: &Option<Url>| match url {
            Some(url) if !(matches!(url.scheme(), "http" | "https") && url.host().is_some()) => {
                Err(invalid(field, "must be an http(s) URL"))
            }
            Some(url) if self.refuses_insecure(url) => Err(invalid(
                field,
                &format!(
                    "must be https:// unless on loopback (for development only: {key}.allow_insecure_http = true)"
                ),
            )),
            _ => Ok(()),
        };
        http_url("issuer", &self.issuer)?;
        http_url("base_url", &self.base_url)?;
        http_url("token_url", &self.token_url)?;
        http_url("jwks_url", &self.jwks_url)?;
        http_url("scim_url", &self.scim_url)?;
        if self.client_id.trim().is_empty() {
            return Err(invalid("client_id", "must not be empty"));
        }
        if self.request_timeout_ms == 0 {
            return Err(invalid("request_timeout_ms", "must be positive"));
        }
        if !(1..=10).contains(&self.retry_max_attempts) {
            return Err(invalid("retry_max_attempts", "must be between 1 and 10"));
        }
        if self.retry_base_delay_ms == 0 || self.retry_max_delay_ms < self.retry_base_delay_ms {
            return Err(invalid(
                "retry_max_delay_ms",
                "must be at least retry_base_delay_ms, which must be positive",
            ));
        }
        if self.breaker_failure_threshold == 0 {
            return Err(invalid("breaker_failure_threshold", "must be positive"));
        }
        if self.max_token_lifetime_secs < self.default_token_lifetime_secs.max(1) {
            return Err(invalid(
                "max_token_lifetime_secs",
                "must be positive and at least default_token_lifetime_secs",
            ));
        }
        if self.jwks_refetch_interval_ms == 0 {
            return Err(invalid("jwks_refetch_interval_ms", "must be positive"));
        }
        for (field, scopes) in [
            ("data_scopes", &self.data_scopes),
            ("application_scopes", &self.application_scopes),
        ] {
            if let Some(bad) = scopes
                .iter()
                .find(|scope| crate::domain::Scope::parse("", scope).is_err())
            {
                return Err(invalid(
                    field,
                    &format!("{bad:?} is not a valid OAuth 2.0 scope"),
                ));
            }
        }
        match self.kind {
            ProviderKind::Moneyhub => {
                if self.issuer.is_none() {
                    return Err(invalid("issuer", "is required for kind \"moneyhub\""));
                }
                if self.client_auth() != ClientAuthMethod::PrivateKeyJwt {
                    return Err(invalid(
                        "client_auth",
                        "moneyhub authenticates with private_key_jwt",
                    ));
                }
                if self.data_scopes.is_empty() && self.application_scopes.is_empty() {
                    return Err(invalid(
                        "data_scopes",
                        "list the scopes IssueDataToken may request",
                    ));
                }
            }
            ProviderKind::Moneykit => {
                if self.client_auth() == ClientAuthMethod::PrivateKeyJwt {
                    return Err(invalid(
                        "client_auth",
                        "moneykit authenticates with client_secret_basic or client_secret_post",
                    ));
                }
                if self.send_sub == Some(true) {
                    return Err(invalid("send_sub", "MoneyKit has no users"));
                }
                if !self.data_scopes.is_empty() {
                    return Err(invalid(
                        "data_scopes",
                        "MoneyKit has no users: list its scopes under application_scopes",
                    ));
                }
                if self.application_scopes.is_empty() {
                    return Err(invalid(
                        "application_scopes",
                        "list the scopes IssueDataToken may request",
                    ));
                }
            }
            ProviderKind::Oauth2 => {
                if self.issuer.is_none() && self.token_url.is_none() {
                    return Err(invalid(
                        "token_url",
                        "set token_url, or issuer for discovery",
                    ));
                }
                if self.client_auth.is_none() {
                    return Err(invalid(
                        "client_auth",
                        "is required for kind \"oauth2\": private_key_jwt, client_secret_basic or client_secret_post",
                    ));
                }
                if self.send_sub.is_none() {
                    return Err(invalid("send_sub", "is required for kind \"oauth2\""));
                }
                if self.expiry_field.is_none() {
                    return Err(invalid(
                        "expiry_field",
                        "is required for kind \"oauth2\": expires_in, expires_at or auto",
                    ));
                }
                if self.data_scopes.is_empty() && self.application_scopes.is_empty() {
                    return Err(invalid(
                        "data_scopes",
                        "list the scopes IssueDataToken may request",
                    ));
                }
            }
        }
        if !self.data_scopes.is_empty() && !self.send_sub() {
            return Err(invalid(
                "data_scopes",
                "user tokens need send_sub = true; list application token scopes under application_scopes",
            ));
        }
        let (secret_sources, other, other_name) = match self.client_auth() {
            ClientAuthMethod::PrivateKeyJwt => (
                [
                    self.private_key_pem.is_some(),
                    self.private_key_file.is_some(),
                    self.private_key_env.is_some(),
                ],
                self.client_secret_file.is_some() || self.client_secret_env.is_some(),
                "private_key",
            ),
            _ => (
                [
                    self.client_secret.is_some(),
                    self.client_secret_file.is_some(),
                    self.client_secret_env.is_some(),
                ],
                self.private_key_file.is_some() || self.private_key_env.is_some(),
                "client_secret",
            ),
        };
        if secret_sources.iter().filter(|set| **set).count() != 1 {
            return Err(ConfigError::invalid(
                key,
                format!("set exactly one of {other_name}_file and {other_name}_env"),
            ));
        }
        if other {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "client_auth {:?} uses only {other_name}; remove the other credential",
                    self.client_auth()
                ),
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
    fn defaults_follow_the_provider_documentation() {
        let config = Config::from_toml(MINIMAL).unwrap();
        let moneyhub = &config.providers["moneyhub"];
        assert_eq!(
            moneyhub.static_token_url(),
            None,
            "discovered from the issuer"
        );
        assert_eq!(
            moneyhub.scim_url().unwrap().as_str(),
            "https://identity.moneyhub.co.uk/scim"
        );
        assert_eq!(moneyhub.client_auth(), ClientAuthMethod::PrivateKeyJwt);
        assert!(moneyhub.send_sub());
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
                MINIMAL.replace("rpcs = [\"*\"]", "rpcs = [\"IssueToken\"]"),
                "access.callers.app.rpcs",
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
    fn http_endpoints_off_loopback_are_refused_unless_allowed() {
        let token_url = |url: &str| {
            MINIMAL.replace(
                "data_scopes",
                &format!("token_url = \"{url}\"\ndata_scopes"),
            )
        };
        for (toml, key) in [
            (
                MINIMAL.replace("https://identity", "http://identity"),
                "providers.moneyhub.issuer",
            ),
            (
                token_url("http://auth.example.com/token"),
                "providers.moneyhub.token_url",
            ),
        ] {
            let error = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(error.contains(key), "{error:?} does not name {key}");
            assert!(
                error.contains("providers.moneyhub.allow_insecure_http"),
                "{error:?}"
            );
            let allowed = toml.replace("data_scopes", "allow_insecure_http = true\ndata_scopes");
            Config::from_toml(&allowed).unwrap();
        }
        for loopback in [
            "http://127.0.0.1:8080/token",
            "http://127.3.2.1/token",
            "http://localhost:8080/token",
            "http://[::1]:8080/token",
        ] {
            Config::from_toml(&token_url(loopback)).unwrap();
        }
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
