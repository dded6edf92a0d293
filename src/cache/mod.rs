//! Where issued tokens (and the ids of users we created) are remembered:
//! Redis when configured, shared by every replica; else an in-process map.
//!
//! The cache is an optimisation, never a source of failure: a Redis error is
//! logged and the caller is served from the provider instead.

mod memory;
mod redis_store;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::domain::{AccessToken, ScopeSet, UserId};
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

/// The configured cache backend.
#[derive(Debug, Clone)]
pub enum Cache {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Cache {
    /// Connects to Redis when a URL is given (failing at startup if it is
    /// unreachable), else keeps everything in process.
    pub async fn connect(
        redis_url: Option<&SecretString>,
        timeout: Duration,
        max_entries: u64,
    ) -> Result<Self, CacheError> {
        match redis_url {
            Some(url) => Ok(Self::Redis(
                RedisStore::connect(url.expose_secret(), timeout).await?,
            )),
            None => Ok(Self::Memory(MemoryStore::new(max_entries))),
        }
    }

    /// The cached token, if one is stored and still valid.
    pub async fn get_token(&self, key: &TokenKey) -> Option<AccessToken> {
        let result = match self {
            Self::Memory(store) => Ok(store.get_token(key)),
            Self::Redis(store) => store.get_token(key).await,
        };
        result.unwrap_or_else(|error| {
            tracing::warn!(%error, "token cache read failed; asking the provider");
            None
        })
    }

    /// Stores a token for `ttl`.
    pub async fn put_token(&self, key: &TokenKey, token: &AccessToken, ttl: Duration) {
        let result = match self {
            Self::Memory(store) => {
                store.put_token(key, token, ttl);
                Ok(())
            }
            Self::Redis(store) => store.put_token(key, token, ttl).await,
        };
        if let Err(error) = result {
            tracing::warn!(%error, "token cache write failed; the token is served uncached");
        }
    }

    /// The provider's id for a user this service created, if remembered.
    pub async fn remembered_user(&self, key: &UserKey) -> Option<String> {
        let result = match self {
            Self::Memory(store) => Ok(store.remembered_user(key)),
            Self::Redis(store) => store.remembered_user(key).await,
        };
        result.unwrap_or_else(|error| {
            tracing::warn!(%error, "user id lookup failed");
            None
        })
    }

    /// Remembers the id of a user this service created, so a retried
    /// CreateUser returns that user instead of failing.
    pub async fn remember_user(&self, key: &UserKey, user_id: &str) {
        let result = match self {
            Self::Memory(store) => {
                store.remember_user(key, user_id);
                Ok(())
            }
            Self::Redis(store) => store.remember_user(key, user_id).await,
        };
        if let Err(error) = result {
            tracing::warn!(%error, "could not remember a created user's id; a retry will see ALREADY_EXISTS");
        }
    }

    /// Forgets a remembered user that no longer exists at the provider.
    pub async fn forget_user(&self, key: &UserKey) {
        let result = match self {
            Self::Memory(store) => {
                store.forget_user(key);
                Ok(())
            }
            Self::Redis(store) => store.forget_user(key).await,
        };
        if let Err(error) = result {
            tracing::warn!(%error, "could not forget a deleted user's id");
        }
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
