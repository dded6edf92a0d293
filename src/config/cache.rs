//! The token cache's keys: Redis, the in-process tier, sealing, expiry.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::ConfigError;

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

const KEY_ID_RULE: &str = "must be unique, 1 to 32 letters, digits, '-' or '_'";

/// The id of a cache encryption key: 1 to 32 letters, digits, '-' or '_'.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(String);

impl KeyId {
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let valid = (1..=32).contains(&text.len())
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(KEY_ID_RULE)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl CacheConfig {
    /// One node or a cluster, each a `redis://` or `rediss://` URL.
    pub(super) fn validate_redis_urls(&self) -> Result<(), ConfigError> {
        if self.redis_url.is_some() && !self.redis_cluster_urls.is_empty() {
            return Err(ConfigError::invalid(
                "cache.redis_cluster_urls",
                "set either cache.redis_url (one node) or cache.redis_cluster_urls (a cluster), not both",
            ));
        }
        let urls = self.redis_url.iter().map(|url| ("cache.redis_url", url));
        let cluster_urls =
            (self.redis_cluster_urls.iter()).map(|url| ("cache.redis_cluster_urls", url));
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
        Ok(())
    }

    /// Expiry, sealing and sizes.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let fraction = self.safety_margin_fraction;
        if !(0.0..0.5).contains(&fraction) {
            return Err(ConfigError::invalid(
                "cache.safety_margin_fraction",
                "must be at least 0 and below 0.5",
            ));
        }
        let [low, high] = self.refresh_window;
        if !(0.0 < low && low <= high && high < 1.0 - fraction) {
            return Err(ConfigError::invalid(
                "cache.refresh_window",
                "must be [low, high] with 0 < low <= high < 1 - safety_margin_fraction, so refreshing starts while the token is still served",
            ));
        }
        if self.uses_redis() && self.encryption_keys.is_empty() && !self.allow_plaintext {
            return Err(ConfigError::invalid(
                "cache.encryption_keys",
                "token values in Redis must be encrypted: configure a key (or, for development only, set cache.allow_plaintext = true)",
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, key) in self.encryption_keys.iter().enumerate() {
            let id = KeyId::parse(&key.id).map_err(|reason| {
                ConfigError::invalid(format!("cache.encryption_keys[{i}].id"), reason)
            })?;
            if !ids.insert(id) {
                return Err(ConfigError::invalid(
                    format!("cache.encryption_keys[{i}].id"),
                    KEY_ID_RULE,
                ));
            }
        }
        if self.max_entries == 0 {
            return Err(ConfigError::invalid(
                "cache.max_entries",
                "must be positive",
            ));
        }
        if self.max_replicas == 0 {
            return Err(ConfigError::invalid(
                "cache.max_replicas",
                "must be positive",
            ));
        }
        Ok(())
    }

    /// Whether a Redis node or cluster is configured.
    pub fn uses_redis(&self) -> bool {
        self.redis_url.is_some() || !self.redis_cluster_urls.is_empty()
    }
}
