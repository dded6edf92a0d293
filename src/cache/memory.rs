//! The in-process tier: bounded, each entry expiring on its own deadline. In
//! front of Redis it saves a round trip per hit; without Redis it is the cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache as Moka;

use super::redis_store::fingerprint;
use super::{CachedToken, TokenKey, UserKey};

#[derive(Clone)]
struct Entry {
    token: Arc<CachedToken>,
    ttl: Duration,
}

/// Tells moka to drop each token entry after its own time to live.
struct PerEntryTtl;

impl moka::Expiry<TokenKey, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &TokenKey, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &TokenKey,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Tokens and remembered user ids, held in this process only.
#[derive(Clone)]
pub struct MemoryStore {
    tokens: Moka<TokenKey, Entry>,
    /// Token fingerprint → its key, to invalidate by token.
    fingerprints: Moka<String, TokenKey>,
    users: Moka<UserKey, String>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("tokens", &self.tokens.entry_count())
            .field("users", &self.users.entry_count())
            .finish()
    }
}

impl MemoryStore {
    pub fn new(max_entries: u64) -> Self {
        Self {
            tokens: Moka::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
            fingerprints: Moka::builder()
                .max_capacity(max_entries)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
            users: Moka::builder().max_capacity(max_entries).build(),
        }
    }

    pub fn get_token(&self, key: &TokenKey) -> Option<CachedToken> {
        self.tokens.get(key).map(|entry| (*entry.token).clone())
    }

    /// Stores `token` for `ttl`, which callers keep no later than the
    /// token's `serve_until` (and than its Redis entry).
    pub fn put_token(&self, key: &TokenKey, token: &CachedToken, ttl: Duration) {
        let entry = Entry {
            token: Arc::new(token.clone()),
            ttl,
        };
        self.tokens.insert(key.clone(), entry);
        self.fingerprints
            .insert(fingerprint(&token.token.access_token), key.clone());
    }

    /// Drops the entry holding the token with `fingerprint`, if it still
    /// holds that token; a fresher token under the same key stays.
    pub fn invalidate(&self, fingerprint_hex: &str) -> bool {
        let Some(key) = self.fingerprints.remove(fingerprint_hex) else {
            return false;
        };
        let holds_it = self
            .tokens
            .get(&key)
            .is_some_and(|entry| fingerprint(&entry.token.token.access_token) == fingerprint_hex);
        if holds_it {
            self.tokens.invalidate(&key);
        }
        holds_it
    }

    pub fn remembered_user(&self, key: &UserKey) -> Option<String> {
        self.users.get(key)
    }

    pub fn remember_user(&self, key: &UserKey, user_id: &str) {
        self.users.insert(key.clone(), user_id.to_owned());
    }

    pub fn forget_user(&self, key: &UserKey) {
        self.users.invalidate(key);
    }
}
