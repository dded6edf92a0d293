//! Where issued tokens (and the ids of users we created) are remembered:
//! Redis when configured, shared by every replica; else an in-process map.
//!
//! The cache is an optimisation, never a source of failure: a Redis error is
//! logged and the caller is served from the provider instead.

mod memory;
mod redis_store;

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::domain::{AccessToken, ScopeSet, UserId};
use crate::telemetry::Metrics;
pub use memory::MemoryStore;
pub use redis_store::RedisStore;

/// Bumped whenever the key derivation or the stored value's shape changes,
/// so old entries are simply never read again.
const KEY_VERSION: &str = "v1";

/// Identifies one token: provider, client, subject and normalised scopes.
/// Hashed, so Redis key names reveal no user id or scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey(String);

impl TokenKey {
    pub fn new(provider: &str, client_id: &str, sub: Option<&UserId>, scopes: &ScopeSet) -> Self {
        let canonical = serde_json::json!([
            KEY_VERSION,
            provider,
            client_id,
            sub.map(UserId::as_str),
            scopes.to_vec(),
        ]);
        Self(format!(
            "bankauth:{KEY_VERSION}:token:{}",
            hex::encode(Sha256::digest(canonical.to_string()))
        ))
    }

    /// The key's name in Redis.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Identifies a user this service created, by provider and external id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserKey(String);

impl UserKey {
    pub fn new(provider: &str, client_id: &str, external_id: &str) -> Self {
        let canonical = serde_json::json!([KEY_VERSION, provider, client_id, external_id]);
        Self(format!(
            "bankauth:{KEY_VERSION}:user:{}",
            hex::encode(Sha256::digest(canonical.to_string()))
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Failure of the cache backend; never reaches callers.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot reach Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("a cached value is corrupt")]
    Corrupt,
}

/// Where entries live: Redis when configured, else this process.
#[derive(Debug, Clone)]
enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// The token cache, counting lookups by tier and Redis failures.
#[derive(Debug, Clone)]
pub struct Cache {
    store: Store,
    metrics: Arc<Metrics>,
}

impl Cache {
    /// Connects to Redis when a URL is given (failing at startup if it is
    /// unreachable), else keeps everything in process.
    pub async fn connect(
        redis_url: Option<&SecretString>,
        timeout: Duration,
        max_entries: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Self, CacheError> {
        let store = match redis_url {
            Some(url) => Store::Redis(RedisStore::connect(url.expose_secret(), timeout).await?),
            None => Store::Memory(MemoryStore::new(max_entries)),
        };
        Ok(Self { store, metrics })
    }

    /// The cached token, if one is stored.
    pub async fn get_token(&self, key: &TokenKey) -> Option<AccessToken> {
        let (tier, token) = match &self.store {
            Store::Memory(store) => ("memory", store.get_token(key)),
            Store::Redis(store) => {
                let token = store.get_token(key).await;
                (
                    "redis",
                    self.report(token, "token cache read failed; asking the provider")
                        .flatten(),
                )
            }
        };
        self.metrics.cache_lookup(tier, token.is_some());
        token
    }

    /// Stores a token for `ttl`.
    pub async fn put_token(&self, key: &TokenKey, token: &AccessToken, ttl: Duration) {
        match &self.store {
            Store::Memory(store) => store.put_token(key, token, ttl),
            Store::Redis(store) => {
                let written = store.put_token(key, token, ttl).await;
                self.report(
                    written,
                    "token cache write failed; the token is served uncached",
                );
            }
        }
    }

    /// The provider's id for a user this service created, if remembered.
    pub async fn remembered_user(&self, key: &UserKey) -> Option<String> {
        match &self.store {
            Store::Memory(store) => store.remembered_user(key),
            Store::Redis(store) => {
                let id = store.remembered_user(key).await;
                self.report(id, "user id lookup failed").flatten()
            }
        }
    }

    /// Remembers the id of a user this service created, so a retried
    /// CreateUser returns that user instead of failing.
    pub async fn remember_user(&self, key: &UserKey, user_id: &str) {
        match &self.store {
            Store::Memory(store) => store.remember_user(key, user_id),
            Store::Redis(store) => {
                let written = store.remember_user(key, user_id).await;
                self.report(
                    written,
                    "could not remember a created user's id; a retry will see ALREADY_EXISTS",
                );
            }
        }
    }

    /// Forgets a remembered user that no longer exists at the provider.
    pub async fn forget_user(&self, key: &UserKey) {
        match &self.store {
            Store::Memory(store) => store.forget_user(key),
            Store::Redis(store) => {
                let deleted = store.forget_user(key).await;
                self.report(deleted, "could not forget a deleted user's id");
            }
        }
    }

    /// Whether the cache can serve: always in process; Redis must answer PING.
    pub async fn is_ready(&self) -> bool {
        match &self.store {
            Store::Memory(_) => true,
            Store::Redis(store) => store.ping().await.is_ok(),
        }
    }

    /// Redis failures never reach callers: they are counted and logged here.
    fn report<T>(&self, result: Result<T, CacheError>, consequence: &str) -> Option<T> {
        result
            .inspect_err(|error| {
                self.metrics.redis_error();
                tracing::warn!(%error, "{consequence}");
            })
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_keys_hide_the_user_and_normalise_scopes() {
        let user = UserId::parse("user_id", "user-42").unwrap();
        let a = TokenKey::new(
            "mh",
            "client",
            Some(&user),
            &ScopeSet::parse("s", &["b", "a", "a"]).unwrap(),
        );
        let b = TokenKey::new(
            "mh",
            "client",
            Some(&user),
            &ScopeSet::parse("s", &["a", "b"]).unwrap(),
        );
        assert_eq!(a, b);
        assert!(!a.as_str().contains("user-42"));
        let other = TokenKey::new(
            "mh",
            "client",
            None,
            &ScopeSet::parse("s", &["a", "b"]).unwrap(),
        );
        assert_ne!(a, other);
    }
}
