//! The in-process tier: bounded, each entry expiring on its own deadline. In
//! front of Redis it saves a round trip per hit; without Redis it is the cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache as Moka;

use moka::ops::compute::{CompResult, Op};

/// SHA-256 of a token (the raw form of [`super::fingerprint`]).
fn fingerprint(access_token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(access_token.as_bytes()).into()
}
use super::{CachedToken, TokenKey, UserKey};

#[derive(Clone)]
struct Entry {
    token: Arc<CachedToken>,
    ttl: Duration,
    /// The token's SHA-256, to find it on invalidation.
    fingerprint: [u8; 32],
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
            fingerprint: fingerprint(&token.token.access_token),
        };
        self.tokens.insert(key.clone(), entry);
    }

    /// Drops the entry holding the token with `fingerprint`, if it still
    /// holds that token; a fresher token under the same key stays.
    ///
    /// A scan rather than an index: invalidations are rare, and an index
    /// would cost every cached token a second entry.
    pub fn invalidate(&self, fingerprint_hex: &str) -> bool {
        let Some(target) = hex::decode(fingerprint_hex)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        else {
            return false;
        };
        let Some((key, _)) = self.tokens.iter().find(|(_, e)| e.fingerprint == target) else {
            return false;
        };
        let removed = self
            .tokens
            .entry_by_ref(&*key)
            .and_compute_with(|entry| match entry {
                Some(entry) if entry.value().fingerprint == target => Op::Remove,
                _ => Op::Nop,
            });
        matches!(removed, CompResult::Removed(_))
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
