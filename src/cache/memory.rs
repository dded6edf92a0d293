//! The in-process tier: bounded in entries, each entry trusted until its own
//! deadline. In front of Redis it saves a round trip per hit; without Redis
//! it is the cache.
//!
//! quick_cache rather than moka: it keeps about 85 bytes of bookkeeping per
//! entry against moka's ~390, which was nearly a third of a cached token's
//! whole footprint.
//! It has no timers, so an entry past its deadline is never served and is
//! dropped when next read, or evicted like any other when the tier is full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache as Bounded;

use super::{AuthorizationKey, CachedToken, TokenKey, UserKey};

/// Most pending authorizations held in process (without Redis) for one
/// caller. Each is a few hundred bytes; past this that caller's are
/// evicted, so a caller making URLs in a loop costs bounded memory and only
/// spoils its own flows: every caller has its own bound, and callers are
/// the configured ones.
const MAX_PENDING_AUTHORIZATIONS: usize = 10_000;

/// SHA-256 of a token (the raw form of [`super::fingerprint`]).
fn fingerprint(access_token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(access_token.as_bytes()).into()
}

/// A remembered authorization request, and when it expires.
type Pending = (Arc<Vec<u8>>, Instant);

/// One caller's pending authorizations.
type CallerAuthorizations = Arc<Bounded<AuthorizationKey, Pending>>;

#[derive(Clone)]
struct Entry {
    token: Arc<CachedToken>,
    /// Not served from this moment on.
    expires_at: Instant,
    /// The token's SHA-256, to find it on invalidation.
    fingerprint: [u8; 32],
}

/// Tokens and remembered user ids, held in this process only.
#[derive(Clone)]
pub struct MemoryStore {
    tokens: Arc<Bounded<TokenKey, Entry>>,
    users: Arc<Bounded<UserKey, String>>,
    /// Pending authorizations by caller: the remembered request, and when
    /// it expires.
    authorizations: Arc<Mutex<HashMap<String, CallerAuthorizations>>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("tokens", &self.tokens.len())
            .field("users", &self.users.len())
            .finish()
    }
}

impl MemoryStore {
    pub fn new(max_entries: u64) -> Self {
        let capacity = usize::try_from(max_entries).unwrap_or(usize::MAX);
        Self {
            tokens: Arc::new(Bounded::new(capacity)),
            users: Arc::new(Bounded::new(capacity)),
            authorizations: Arc::default(),
        }
    }

    /// How many tokens this process holds (some may be past their deadline,
    /// not yet dropped).
    pub fn tokens(&self) -> u64 {
        self.tokens.len() as u64
    }

    /// How many external ids this process remembers.
    pub fn users(&self) -> u64 {
        self.users.len() as u64
    }

    pub fn get_token(&self, key: &TokenKey) -> Option<CachedToken> {
        let entry = self.tokens.get(key)?;
        if Instant::now() < entry.expires_at {
            return Some((*entry.token).clone());
        }
        self.tokens
            .remove_if(key, |current| current.expires_at <= Instant::now());
        None
    }

    /// Stores `token` for `ttl`, which callers keep no later than the
    /// token's `serve_until` (and than its Redis entry).
    pub fn put_token(&self, key: &TokenKey, token: &CachedToken, ttl: Duration) {
        let entry = Entry {
            token: Arc::new(token.clone()),
            expires_at: Instant::now() + ttl,
            fingerprint: fingerprint(&token.token.access_token),
        };
        self.tokens.insert(*key, entry);
    }

    /// Drops the entry holding the token with `fingerprint`, if it still
    /// holds that token; a fresher token under the same key stays.
    ///
    /// A scan rather than an index: invalidations are rare, and an index
    /// would cost every cached token a second entry.
    pub fn invalidate(&self, provider: &str, fingerprint_hex: &str) -> bool {
        let Some(target) = hex::decode(fingerprint_hex)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        else {
            return false;
        };
        let held = |entry: &Entry| entry.fingerprint == target && entry.token.provider == provider;
        let Some((key, _)) = self.tokens.iter().find(|(_, entry)| held(entry)) else {
            return false;
        };
        self.tokens.remove_if(&key, held).is_some()
    }

    /// Drops every token of `provider` cached for `owner` (see
    /// [`super::UserTokens`]) and returns their fingerprints, in hex.
    pub fn invalidate_owner(&self, provider: &str, owner: &str) -> Vec<String> {
        let owned = |entry: &Entry| {
            entry.token.provider == provider && entry.token.owner.as_deref() == Some(owner)
        };
        let keys: Vec<TokenKey> = self
            .tokens
            .iter()
            .filter(|(_, entry)| owned(entry))
            .map(|(key, _)| key)
            .collect();
        keys.iter()
            .filter_map(|key| self.tokens.remove_if(key, owned))
            .map(|(_, entry)| hex::encode(entry.fingerprint))
            .collect()
    }

    /// Drops every token held in process (remembered users stay: a stale
    /// one is found out when read back as 404), for when announcements may
    /// have been missed.
    pub fn clear_tokens(&self) {
        self.tokens.clear();
    }

    pub fn remembered_user(&self, key: &UserKey) -> Option<String> {
        self.users.get(key)
    }

    pub fn remember_user(&self, key: &UserKey, user_id: &str) {
        self.users.insert(key.clone(), user_id.to_owned());
    }

    pub fn forget_user(&self, key: &UserKey) {
        self.users.remove(key);
    }

    /// The pending authorizations of `key`'s caller.
    fn caller_authorizations(&self, key: &AuthorizationKey) -> CallerAuthorizations {
        let mut callers = self
            .authorizations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        callers
            .entry(key.caller().to_owned())
            .or_insert_with(|| Arc::new(Bounded::new(MAX_PENDING_AUTHORIZATIONS)))
            .clone()
    }

    pub fn put_authorization(&self, key: &AuthorizationKey, value: &[u8], ttl: Duration) {
        self.caller_authorizations(key).insert(
            key.clone(),
            (Arc::new(value.to_vec()), Instant::now() + ttl),
        );
    }

    /// Removes and returns the pending authorization, unless it expired:
    /// one removal, so two concurrent takers cannot both have it.
    pub fn take_authorization(&self, key: &AuthorizationKey) -> Option<Vec<u8>> {
        let (_, (value, expires_at)) = self.caller_authorizations(key).remove(key)?;
        (Instant::now() < expires_at).then(|| value.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AccessToken;

    fn token(value: &str) -> CachedToken {
        CachedToken {
            provider: "p".into(),
            owner: None,
            token: AccessToken {
                access_token: value.into(),
                token_type: "Bearer".into(),
                expires_at: 0,
                scopes: vec![],
            },
            refresh_at_ms: 0,
            serve_until_ms: 0,
        }
    }

    fn key(n: u8) -> TokenKey {
        TokenKey([n; 32])
    }

    #[test]
    fn a_pending_authorization_is_taken_once_and_never_after_expiry() {
        let store = MemoryStore::new(10);
        let (live, expired) = (
            AuthorizationKey::new("caller", "p", "s1"),
            AuthorizationKey::new("caller", "p", "s2"),
        );
        store.put_authorization(&live, b"request", Duration::from_secs(60));
        store.put_authorization(&expired, b"request", Duration::ZERO);
        assert_eq!(
            store.take_authorization(&live).as_deref(),
            Some(&b"request"[..])
        );
        assert_eq!(store.take_authorization(&live), None);
        assert_eq!(store.take_authorization(&expired), None);
        for n in 0..2 * MAX_PENDING_AUTHORIZATIONS {
            let key = AuthorizationKey::new("caller", "p", &n.to_string());
            store.put_authorization(&key, b"request", Duration::from_secs(60));
        }
        let key = AuthorizationKey::new("caller", "p", "0");
        assert!(store.caller_authorizations(&key).len() <= MAX_PENDING_AUTHORIZATIONS);
    }

    /// Without Redis, a caller making URLs in a loop must not push another
    /// caller's pending authorizations out of the store.
    #[test]
    fn one_caller_filling_the_store_evicts_no_state_of_another() {
        let store = MemoryStore::new(10);
        let flood = |from: usize, to: usize| {
            for n in from..to {
                let key = AuthorizationKey::new("hostile", "p", &n.to_string());
                store.put_authorization(&key, b"request", Duration::from_secs(60));
            }
        };
        // The flood runs before and after the victim's URL is made.
        flood(0, MAX_PENDING_AUTHORIZATIONS);
        let victim = AuthorizationKey::new("victim", "p", "s");
        store.put_authorization(&victim, b"request", Duration::from_secs(60));
        flood(MAX_PENDING_AUTHORIZATIONS, 3 * MAX_PENDING_AUTHORIZATIONS);
        assert_eq!(
            store.take_authorization(&victim).as_deref(),
            Some(&b"request"[..]),
            "the victim's state survives another caller's flood"
        );
    }

    #[test]
    fn an_entry_is_served_until_its_own_deadline_only() {
        let store = MemoryStore::new(10);
        store.put_token(&key(1), &token("lasting"), Duration::from_secs(60));
        store.put_token(&key(2), &token("expired"), Duration::ZERO);
        assert_eq!(
            store.get_token(&key(1)).map(|t| t.token.access_token),
            Some("lasting".into())
        );
        assert!(store.get_token(&key(2)).is_none());
        assert_eq!(store.tokens.len(), 1, "the expired entry was dropped");
    }

    #[test]
    fn invalidation_drops_only_the_named_token() {
        let store = MemoryStore::new(10);
        store.put_token(&key(1), &token("revoked"), Duration::from_secs(60));
        store.put_token(&key(2), &token("other"), Duration::from_secs(60));
        assert!(!store.invalidate("p", &hex::encode(fingerprint("never cached"))));
        assert!(
            !store.invalidate("other-provider", &hex::encode(fingerprint("revoked"))),
            "another provider's token is not this one"
        );
        assert!(store.invalidate("p", &hex::encode(fingerprint("revoked"))));
        assert!(store.get_token(&key(1)).is_none());
        assert!(store.get_token(&key(2)).is_some());
    }

    #[test]
    fn an_owners_tokens_are_dropped_and_no_others() {
        let store = MemoryStore::new(10);
        let owned = |value: &str, owner: &str| CachedToken {
            owner: Some(owner.into()),
            ..token(value)
        };
        store.put_token(&key(1), &owned("a", "alex"), Duration::from_secs(60));
        store.put_token(&key(2), &owned("b", "alex"), Duration::from_secs(60));
        store.put_token(&key(3), &owned("c", "sam"), Duration::from_secs(60));
        store.put_token(&key(4), &token("app"), Duration::from_secs(60));
        assert!(store.invalidate_owner("other-provider", "alex").is_empty());
        let mut dropped = store.invalidate_owner("p", "alex");
        dropped.sort();
        let mut expected = vec![hex::encode(fingerprint("a")), hex::encode(fingerprint("b"))];
        expected.sort();
        assert_eq!(dropped, expected);
        assert!(store.get_token(&key(1)).is_none());
        assert!(store.get_token(&key(2)).is_none());
        assert!(store.get_token(&key(3)).is_some());
        assert!(store.get_token(&key(4)).is_some());
    }

    #[test]
    fn the_tier_holds_no_more_than_its_bound() {
        let store = MemoryStore::new(100);
        for n in 0..=255 {
            store.put_token(&key(n), &token("t"), Duration::from_secs(60));
        }
        assert!(store.tokens.len() <= 100, "{} entries", store.tokens.len());
    }
}
