//! Where issued tokens (and the ids of users we created) are remembered: an
//! in-process tier, in front of Redis when Redis is configured.
//!
//! The cache is an optimisation, never a source of failure: a Redis error is
//! counted and logged, and the caller is served from the provider instead.

pub mod keys;
mod memory;
mod redis_connection;
mod redis_store;
pub mod seal;
pub mod single_flight;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::CacheConfig;
use crate::domain::{AccessToken, ScopeSet, UserId};
use crate::random::{random_hex, unit_random};
use crate::telemetry::Metrics;
use keys::KEY_VERSION;
pub use memory::MemoryStore;
pub use redis_connection::{RedisTarget, Topology};
pub use redis_store::{Announcement, RedisStore, fingerprint};

/// Who mints a token: everything about the request besides `sub` and the
/// scopes that could change what comes back. Pointing a provider name at
/// another token endpoint or client changes the key, so a sandbox token is
/// never served as a production one.
#[derive(Debug, Clone, Copy)]
pub struct TokenSource<'a> {
    pub provider: &'a str,
    pub token_url: &'a str,
    pub client_id: &'a str,
    pub client_auth: &'a str,
}

/// Identifies one token: its source, subject and normalised scopes. The
/// cache and single-flight key alike. Hashed, so Redis key names reveal no
/// user id or scope; kept as the raw digest, so a cached token costs 32
/// bytes of key in process.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// The SHA-256 of the compact JSON array `[version, provider,
    /// token_url, client_id, client_auth, sub, [scopes…]]`, written straight
    /// into the hash: every hit derives its key, and this allocates nothing.
    pub fn new(source: &TokenSource<'_>, sub: Option<&UserId>, scopes: &ScopeSet) -> Self {
        let canonical = (
            KEY_VERSION,
            source.provider,
            source.token_url,
            source.client_id,
            source.client_auth,
            sub.map(UserId::as_str),
            Scopes(scopes),
        );
        let mut hash = HashWriter(Sha256::new());
        serde_json::to_writer(&mut hash, &canonical).expect("hashing cannot fail");
        Self(hash.0.finalize().into())
    }

    /// The key's name in Redis.
    pub fn name(&self) -> String {
        keys::token(&self.0)
    }

    /// The name of the lock replicas take to fill this key.
    pub fn lock_name(&self) -> String {
        keys::lock(&self.name())
    }
}

/// A scope set as the JSON array of its (sorted) names.
struct Scopes<'a>(&'a ScopeSet);

impl Serialize for Scopes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|scope| scope.as_str()))
    }
}

/// Feeds whatever is written to it into a SHA-256.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Identifies every token cached for one user of one provider client, so
/// DeleteUser can drop them all: tokens are keyed by hashes that include
/// the scopes, so the user's tokens cannot be found from the user alone.
/// Hashed, so no Redis key names the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserTokens([u8; 32]);

impl UserTokens {
    pub fn new(provider: &str, client_id: &str, sub: &UserId) -> Self {
        let canonical = serde_json::json!([KEY_VERSION, provider, client_id, sub.as_str()]);
        Self(Sha256::digest(canonical.to_string()).into())
    }

    /// How a cached token names its owner.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// The Redis set of the fingerprints of the user's cached tokens.
    fn name(self) -> String {
        keys::user_tokens(&self.0)
    }
}

/// A token with the moments that govern its caching, in Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedToken {
    /// The provider that issued it: InvalidateToken names a provider and
    /// drops only that provider's tokens.
    pub provider: String,
    /// The user it was issued for ([`UserTokens::to_hex`]); `None` for an
    /// application token. Lets DeleteUser find it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub token: AccessToken,
    /// From here on a hit also refreshes the token in the background.
    pub refresh_at_ms: i64,
    /// From here on the token is no longer served (its expiry minus the margin).
    pub serve_until_ms: i64,
}

impl CachedToken {
    pub fn is_servable(&self, now_ms: i64) -> bool {
        now_ms < self.serve_until_ms
    }

    pub fn needs_refresh(&self, now_ms: i64) -> bool {
        now_ms >= self.refresh_at_ms
    }

    fn ttl(&self, now_ms: i64) -> Option<Duration> {
        u64::try_from(self.serve_until_ms - now_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }
}

/// Sizes of the in-process tier.
#[derive(Debug, Clone, Copy)]
pub struct Tiers {
    pub max_entries: u64,
    pub memory_ttl: Duration,
}

impl Tiers {
    pub fn from_config(config: &CacheConfig) -> Self {
        Self {
            max_entries: config.max_entries,
            memory_ttl: Duration::from_secs(config.memory_ttl_secs),
        }
    }
}

/// When tokens stop being served and start being refreshed.
#[derive(Debug, Clone, Copy)]
pub struct ExpiryPolicy {
    /// The most a token's serving time is cut short before its expiry.
    pub margin: Duration,
    /// The most, as a fraction of the lifetime, so short-lived tokens still cache.
    pub margin_fraction: f64,
    /// The refresh point is drawn from this range of the lifetime, so tokens
    /// issued together are not all refreshed together.
    pub refresh_window: (f64, f64),
}

impl ExpiryPolicy {
    pub fn from_config(config: &CacheConfig) -> Self {
        Self {
            margin: Duration::from_secs(config.safety_margin_secs),
            margin_fraction: config.safety_margin_fraction,
            refresh_window: (config.refresh_window[0], config.refresh_window[1]),
        }
    }

    /// The cache entry for `provider`'s `token`, whose request was sent at `issued_at_ms`.
    pub fn entry(&self, provider: &str, token: AccessToken, issued_at_ms: i64) -> CachedToken {
        let expires_at_ms = token.expires_at.saturating_mul(1000);
        let lifetime_ms = (expires_at_ms - issued_at_ms).max(0) as f64;
        let margin_ms = (self.margin.as_millis() as f64).min(lifetime_ms * self.margin_fraction);
        let (low, high) = self.refresh_window;
        let refresh_fraction = low + (high - low) * unit_random();
        CachedToken {
            provider: provider.to_owned(),
            owner: None,
            refresh_at_ms: issued_at_ms + (lifetime_ms * refresh_fraction) as i64,
            serve_until_ms: expires_at_ms - margin_ms as i64,
            token,
        }
    }
}

/// Identifies a user this service created, by provider and external id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserKey(String);

impl UserKey {
    pub fn new(provider: &str, client_id: &str, external_id: &str) -> Self {
        let canonical = serde_json::json!([KEY_VERSION, provider, client_id, external_id]);
        Self(keys::user(&Sha256::digest(canonical.to_string())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Identifies a pending authorization by the caller that made it, its
/// provider and its state, hashed: a state presented by another caller or
/// for another provider names another key, so it is unknown there and is
/// not spent; and Redis key names reveal no state.
/// The caller is kept beside the name so the in-process store can bound
/// each caller's pending authorizations on its own.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AuthorizationKey {
    name: String,
    caller: String,
}

impl AuthorizationKey {
    pub fn new(caller: &str, provider: &str, state: &str) -> Self {
        let canonical = serde_json::json!([KEY_VERSION, "authorization", caller, provider, state]);
        Self {
            name: keys::authorization(&Sha256::digest(canonical.to_string())),
            caller: caller.to_owned(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The caller that made the authorization (a configured name).
    pub fn caller(&self) -> &str {
        &self.caller
    }
}

impl std::fmt::Debug for AuthorizationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Failure of the cache backend; never reaches callers.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot reach Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("a cached value is corrupt")]
    Corrupt,
    #[error("the shared cache (Redis) is unavailable")]
    Unavailable,
}

impl CacheError {
    /// Redis answered, but refused our credentials or presented a
    /// certificate we do not trust: waiting will not fix it.
    fn is_misconfiguration(&self) -> bool {
        let Self::Redis(error) = self else {
            return false;
        };
        // The TLS error reaches us only as text ("invalid peer certificate: …").
        let untrusted_certificate =
            error.kind() == redis::ErrorKind::Io && error.to_string().contains("certificate");
        let refused = matches!(error.code(), Some("NOAUTH" | "NOPERM" | "WRONGPASS"));
        error.kind() == redis::ErrorKind::AuthenticationFailed || untrusted_certificate || refused
    }
}

/// What a replica about to call the provider learned from the others.
pub enum Fill {
    /// Go ahead; release the lock (if any) once the token is cached.
    Proceed(Option<FillLock>),
    /// Another replica filled the key meanwhile: use its token.
    FilledByOther(CachedToken),
}

/// The cross-replica fill lock, held by one owner.
pub struct FillLock {
    key: TokenKey,
    owner: String,
}

/// During a Redis outage, how often one command probes whether it is back.
const OUTAGE_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a replica waiting on another's fill looks for the result.
const FILL_POLL: Duration = Duration::from_millis(25);

/// The token cache, counting lookups by tier and Redis failures.
#[derive(Debug, Clone)]
pub struct Cache {
    memory: MemoryStore,
    redis: Option<RedisStore>,
    /// How long an in-process copy of a Redis entry is trusted; zero keeps
    /// none. Without Redis, the in-process tier is the cache and unbounded by this.
    memory_ttl: Duration,
    metrics: Arc<Metrics>,
    /// While Redis is failing: when the next command may probe it. Logged
    /// once per outage; requests meanwhile skip Redis instead of each
    /// waiting out its timeout.
    outage: Arc<Mutex<Option<Instant>>>,
}

impl Cache {
    /// The in-process tier, in front of Redis when a target is given. Redis
    /// is tried once here: unreachable, startup fails if `require_redis`,
    /// else the cache starts in an outage (serving from this process and
    /// the provider) and attaches to Redis when it answers. A refused
    /// password or certificate is configuration, not an outage: it always
    /// fails startup.
    pub async fn connect(
        redis: Option<&RedisTarget>,
        require_redis: bool,
        sealer: seal::Sealer,
        tiers: Tiers,
        metrics: Arc<Metrics>,
    ) -> Result<Self, CacheError> {
        let redis = redis
            .map(|target| RedisStore::new(target, sealer))
            .transpose()?;
        let cache = Self {
            memory: MemoryStore::new(tiers.max_entries),
            redis,
            memory_ttl: tiers.memory_ttl,
            metrics,
            outage: Arc::default(),
        };
        let memory = cache.memory.clone();
        cache.metrics.sample_on_scrape(move |metrics| {
            metrics.cache_entries(memory.tokens(), memory.users())
        });
        if let Some(redis) = &cache.redis {
            match redis.ping().await {
                Ok(()) => cache.metrics.redis_up(true),
                Err(error) if require_redis || error.is_misconfiguration() => return Err(error),
                Err(error) => {
                    cache.report::<()>(Err(error), "starting without Redis");
                }
            }
        }
        Ok(cache)
    }

    /// Keeps a copy in process. While Redis holds the original
    /// (`in_redis`), for no longer than `memory_ttl`: a replica that missed
    /// an invalidation message serves the revoked token no longer than that.
    /// Otherwise (no Redis, or Redis is down) this copy is the cache, kept
    /// until the token's own deadline.
    fn keep_local(&self, key: &TokenKey, token: &CachedToken, ttl: Duration, in_redis: bool) {
        let ttl = if in_redis {
            ttl.min(self.memory_ttl)
        } else {
            ttl
        };
        if !ttl.is_zero() {
            self.memory.put_token(key, token, ttl);
        }
    }

    /// A servable cached token: from this process, else from Redis (then
    /// kept in process for at most `memory_ttl`).
    pub async fn get_token(&self, key: &TokenKey, now_ms: i64) -> Option<CachedToken> {
        let local = self.memory.get_token(key).filter(|t| t.is_servable(now_ms));
        self.metrics.cache_lookup("memory", local.is_some());
        if local.is_some() {
            return local;
        }
        let shared = self.get_shared(key, now_ms).await?;
        if let Some(ttl) = shared.ttl(now_ms) {
            self.keep_local(key, &shared, ttl, true);
        }
        Some(shared)
    }

    /// A servable token from Redis only, bypassing this process's tier.
    async fn get_shared(&self, key: &TokenKey, now_ms: i64) -> Option<CachedToken> {
        let redis = self.shared()?;
        let read = redis.get_token(key).await;
        let token = self
            .report(read, "token cache read failed; asking the provider")
            .flatten()
            .filter(|t| t.is_servable(now_ms));
        self.metrics.cache_lookup("redis", token.is_some());
        token
    }

    /// Stores a token until its serving deadline, in both tiers.
    pub async fn put_token(&self, key: &TokenKey, token: &CachedToken, now_ms: i64) {
        let Some(ttl) = token.ttl(now_ms) else {
            return;
        };
        let written = match self.shared() {
            Some(redis) => {
                let written = redis.put_token(key, token, ttl).await;
                self.report(
                    written,
                    "token cache write failed; the token is kept in process",
                )
                .is_some()
            }
            None => false,
        };
        self.keep_local(key, token, ttl, written);
    }

    /// Drops every token cached for a user (here, in Redis, and through
    /// the invalidation channel on every replica) and returns how many this
    /// replica or Redis held. An error when Redis could not be told: other
    /// replicas may then still serve them.
    pub async fn drop_user_tokens(
        &self,
        provider: &str,
        owner: UserTokens,
    ) -> Result<usize, CacheError> {
        let mut fingerprints = self.memory.invalidate_owner(provider, &owner.to_hex());
        let Some(redis) = &self.redis else {
            return Ok(fingerprints.len());
        };
        let dropped = async {
            for fingerprint in redis.user_token_fingerprints(owner.name()).await? {
                if !fingerprints.contains(&fingerprint) {
                    fingerprints.push(fingerprint);
                }
            }
            // Each announced, even one only this replica held: another
            // replica may hold it in process too.
            for fingerprint in &fingerprints {
                redis.invalidate(provider, fingerprint).await?;
            }
            redis.forget_user_tokens(owner.name()).await
        }
        .await;
        self.report(dropped, "could not drop a deleted user's tokens in Redis")
            .ok_or(CacheError::Unavailable)?;
        Ok(fingerprints.len())
    }

    /// After a failed refresh, keeps serving the cached token and tries
    /// again no sooner than `delay` from now, so an outage is not hammered.
    /// Only while the entry still holds the token this replica knows: one
    /// another replica invalidated or replaced is never written back.
    pub async fn postpone_refresh(&self, key: &TokenKey, now_ms: i64, delay: Duration) {
        let cached = match self.memory.get_token(key) {
            Some(token) => Some(token),
            None => self.get_shared(key, now_ms).await,
        };
        let Some(mut token) = cached.filter(|t| t.is_servable(now_ms)) else {
            return;
        };
        let Some(ttl) = token.ttl(now_ms) else {
            return;
        };
        token.refresh_at_ms = now_ms + delay.as_millis() as i64;
        let replaced = match self.shared() {
            Some(redis) => {
                let replaced = redis.replace_token(key, &token, ttl).await;
                self.report(replaced, "could not postpone a refresh in Redis")
            }
            None => None,
        };
        if replaced != Some(false) {
            self.keep_local(key, &token, ttl, replaced.is_some());
        } else {
            self.memory
                .invalidate(&token.provider, &fingerprint(&token.token.access_token));
        }
    }

    /// Coordinates a fill with other replicas: take the lock, or wait for
    /// the holder's token, or (after the lock's TTL: a crashed holder) take
    /// over. An efficiency lock only: on a Redis error, go ahead.
    ///
    /// Having taken the lock, it reads Redis once more: a replica that saw
    /// a miss before the previous holder wrote its token, and locked after
    /// that holder released, would otherwise fetch a second token.
    pub async fn coordinate_fill(
        &self,
        key: &TokenKey,
        lock_ttl: Duration,
        now: impl Fn() -> i64,
    ) -> Fill {
        // A fill that finished just before this one started (its caller saw
        // the miss first) left its token here.
        let now_ms = now();
        if let Some(token) = self.memory.get_token(key) {
            if token.is_servable(now_ms) && !token.needs_refresh(now_ms) {
                return Fill::FilledByOther(token);
            }
        }
        let Some(redis) = self.shared() else {
            return Fill::Proceed(None);
        };
        let owner = random_hex::<16>();
        loop {
            match redis.try_lock(key, &owner, lock_ttl).await {
                Ok(true) => {
                    let lock = FillLock { key: *key, owner };
                    return match self.filled(key, now()).await {
                        Some(token) => {
                            self.release(lock).await;
                            Fill::FilledByOther(token)
                        }
                        None => Fill::Proceed(Some(lock)),
                    };
                }
                Ok(false) => {}
                Err(error) => {
                    self.report::<()>(Err(error), "fill lock unavailable; fetching without it");
                    return Fill::Proceed(None);
                }
            }
            tokio::time::sleep(FILL_POLL).await;
            if let Some(token) = self.filled(key, now()).await {
                return Fill::FilledByOther(token);
            }
        }
    }

    /// A token another replica put in Redis that needs no refresh yet, kept
    /// in process as any token read from Redis is.
    async fn filled(&self, key: &TokenKey, now_ms: i64) -> Option<CachedToken> {
        let token = self
            .get_shared(key, now_ms)
            .await
            .filter(|token| !token.needs_refresh(now_ms))?;
        if let Some(ttl) = token.ttl(now_ms) {
            self.keep_local(key, &token, ttl, true);
        }
        Some(token)
    }

    /// Releases a fill lock taken by [`Cache::coordinate_fill`], even in
    /// what looks like an outage: a lock left behind would hold up other
    /// replicas' callers until it expires.
    pub async fn release(&self, lock: FillLock) {
        if let Some(redis) = &self.redis {
            let released = redis.unlock(&lock.key, &lock.owner).await;
            self.report(
                released,
                "could not release a fill lock; it expires by itself",
            );
        }
    }

    /// Drops `provider`'s cached token with this fingerprint wherever it is
    /// still the cached one: here, in Redis, and (via pub/sub) on every
    /// replica. Another provider's token with the same hash stays. True when
    /// a copy was dropped; an error when Redis could not be told, since the
    /// other replicas may then still serve the token.
    pub async fn invalidate(&self, provider: &str, fingerprint: &str) -> Result<bool, CacheError> {
        let local = self.memory.invalidate(provider, fingerprint);
        let Some(redis) = &self.redis else {
            return Ok(local);
        };
        let deleted = redis.invalidate(provider, fingerprint).await;
        let shared = self
            .report(deleted, "could not invalidate in Redis")
            .ok_or(CacheError::Unavailable)?;
        Ok(local || shared)
    }

    /// Applies other replicas' invalidations to this process's tier; runs
    /// until dropped (only with Redis: without it there are no replicas).
    /// Once the channel is back after being lost, drops every token held in
    /// process: an invalidation, revocation or user deletion announced
    /// meanwhile was missed, and a retry after a Redis restart finds
    /// nothing left to announce. The next requests read Redis again.
    pub async fn follow_invalidations(&self) {
        if let Some(redis) = &self.redis {
            let memory = self.memory.clone();
            let missed = self.memory.clone();
            redis
                .follow_invalidations(
                    move |announcement| match announcement {
                        Announcement::Token {
                            provider,
                            fingerprint,
                        } => {
                            memory.invalidate(provider, fingerprint);
                        }
                        Announcement::ForgetUser(name) => {
                            memory.forget_user(&UserKey(name.to_owned()));
                        }
                    },
                    move || {
                        tracing::info!(
                            "invalidation channel back: dropping the tokens held in process, as announcements made meanwhile were missed"
                        );
                        missed.clear_tokens();
                    },
                )
                .await;
        }
    }

    /// The provider's id for a user this service created, if remembered:
    /// in Redis, or else in this process (which also covers users created
    /// while Redis was unavailable).
    pub async fn remembered_user(&self, key: &UserKey) -> Option<String> {
        if let Some(redis) = self.shared() {
            let id = redis.remembered_user(key).await;
            if let Some(id) = self.report(id, "user id lookup failed").flatten() {
                return Some(id);
            }
        }
        self.memory.remembered_user(key)
    }

    /// Remembers the id of a user this service created, so a retried
    /// CreateUser returns that user instead of failing: in this process
    /// always (a retry here works through a Redis outage), and in Redis
    /// for the other replicas.
    pub async fn remember_user(&self, key: &UserKey, user_id: &str) {
        self.memory.remember_user(key, user_id);
        if let Some(redis) = self.shared() {
            let written = redis.remember_user(key, user_id).await;
            self.report(
                written,
                "could not remember a created user's id; a retry through another replica will see ALREADY_EXISTS",
            );
        }
    }

    /// Forgets a user this service deleted, here, in Redis and on every
    /// replica; an error when Redis could not be told.
    pub async fn forget_user_everywhere(&self, key: &UserKey) -> Result<(), CacheError> {
        self.memory.forget_user(key);
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        let forgotten = redis.forget_user_everywhere(key).await;
        self.report(forgotten, "could not forget a deleted user's id")
            .ok_or(CacheError::Unavailable)
    }

    /// Forgets a remembered user that no longer exists at the provider.
    pub async fn forget_user(&self, key: &UserKey) {
        self.memory.forget_user(key);
        if let Some(redis) = self.shared() {
            let deleted = redis.forget_user(key).await;
            self.report(deleted, "could not forget a deleted user's id");
        }
    }

    /// Remembers a pending authorization for `ttl`: in Redis (sealed) when
    /// Redis is configured, since the callback may reach another replica;
    /// an error, never a silent in-process copy, while Redis is down.
    pub async fn put_authorization(
        &self,
        key: &AuthorizationKey,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), CacheError> {
        if self.redis.is_none() {
            self.memory.put_authorization(key, value, ttl);
            return Ok(());
        }
        let redis = self.shared().ok_or(CacheError::Unavailable)?;
        let written = redis.put_authorization(key, value, ttl).await;
        self.report(written, "could not remember an authorization state")
            .ok_or(CacheError::Unavailable)
    }

    /// Takes (reads and deletes at once) a pending authorization; `None`
    /// when unknown, expired or already taken.
    pub async fn take_authorization(
        &self,
        key: &AuthorizationKey,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        if self.redis.is_none() {
            return Ok(self.memory.take_authorization(key));
        }
        let redis = self.shared().ok_or(CacheError::Unavailable)?;
        let taken = redis.take_authorization(key).await;
        self.report(taken, "could not read an authorization state")
            .ok_or(CacheError::Unavailable)
    }

    /// The handle through which a provider's request budget is shared.
    pub fn shared_buckets(&self) -> SharedBuckets {
        SharedBuckets(self.clone())
    }

    /// Whether Redis answers PING now; `None` without Redis. Also what
    /// brings a replica back to Redis when no request comes by.
    pub async fn redis_answers(&self) -> Option<bool> {
        let redis = self.redis.as_ref()?;
        let ping = redis.ping().await;
        Some(self.report(ping, "Redis does not answer PING").is_some())
    }

    /// Redis, unless it is failing and this is not the moment to probe it.
    fn shared(&self) -> Option<&RedisStore> {
        let redis = self.redis.as_ref()?;
        let mut outage = self.outage.lock().expect("outage lock");
        match *outage {
            Some(next_probe) if Instant::now() < next_probe => None,
            Some(_) => {
                *outage = Some(Instant::now() + OUTAGE_PROBE_INTERVAL);
                Some(redis)
            }
            None => Some(redis),
        }
    }

    /// Redis failures never reach callers: they are counted here, and logged
    /// once when an outage starts and once when it ends, not per request.
    fn report<T>(&self, result: Result<T, CacheError>, consequence: &str) -> Option<T> {
        match result {
            Ok(value) => {
                let recovered = self.outage.lock().expect("outage lock").take().is_some();
                if recovered {
                    self.metrics.redis_up(true);
                    tracing::info!("Redis answers again; the shared cache is back in use");
                }
                Some(value)
            }
            Err(CacheError::Corrupt) => {
                tracing::warn!("{consequence}: a cached value is corrupt");
                None
            }
            Err(error) => {
                self.metrics.redis_error();
                let started = self
                    .outage
                    .lock()
                    .expect("outage lock")
                    .replace(Instant::now() + OUTAGE_PROBE_INTERVAL)
                    .is_none();
                if started {
                    self.metrics.redis_up(false);
                    tracing::warn!(
                        %error,
                        "Redis is unavailable ({consequence}); serving from this process and the provider until it is back"
                    );
                }
                None
            }
        }
    }
}

/// Token buckets shared by every replica through Redis: all a provider's
/// request budget sees of the cache.
#[derive(Debug, Clone)]
pub struct SharedBuckets(Cache);

impl SharedBuckets {
    /// Takes one request from the bucket `name` (see [`keys::budget`]);
    /// the wait until one is available, or `None` without a reachable Redis.
    pub async fn take(&self, name: &str, capacity: f64, per_ms: f64) -> Option<Duration> {
        let cache = &self.0;
        let redis = cache.shared()?;
        let taken = redis.take_from_bucket(name, capacity, per_ms).await;
        cache.report(
            taken,
            "the shared request budget is unavailable; using this replica's own",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: i64) -> AccessToken {
        AccessToken {
            access_token: "t".into(),
            token_type: "Bearer".into(),
            expires_at,
            scopes: vec![],
        }
    }

    #[test]
    fn token_keys_keep_their_derivation() {
        // The derivation as first published (a serde_json::Value, printed):
        // a key that changed would make every replica miss every token.
        fn published(
            source: &TokenSource<'_>,
            sub: Option<&UserId>,
            scopes: &ScopeSet,
        ) -> [u8; 32] {
            let canonical = serde_json::json!([
                KEY_VERSION,
                source.provider,
                source.token_url,
                source.client_id,
                source.client_auth,
                sub.map(UserId::as_str),
                scopes.to_vec(),
            ]);
            Sha256::digest(canonical.to_string()).into()
        }
        let sub = UserId::parse("user_id", "66b3-user_1").unwrap();
        let scopes = ScopeSet::parse("scopes", &["transactions:read", "accounts:read"]).unwrap();
        for source in [
            TokenSource {
                provider: "moneyhub",
                token_url: "https://identity.moneyhub.co.uk/oidc/token",
                client_id: "client-1",
                client_auth: "private_key_jwt",
            },
            TokenSource {
                provider: "quote\"back\\slash\u{1}",
                token_url: "https://é.example/токен?a=1&b=</script>",
                client_id: "\n\t",
                client_auth: "",
            },
        ] {
            for sub in [None, Some(&sub)] {
                assert_eq!(
                    TokenKey::new(&source, sub, &scopes).0,
                    published(&source, sub, &scopes)
                );
            }
        }
    }

    #[test]
    fn the_margin_is_capped_by_a_fraction_of_the_lifetime() {
        let policy = ExpiryPolicy {
            margin: Duration::from_secs(60),
            margin_fraction: 0.1,
            refresh_window: (0.7, 0.85),
        };
        // An hour-long token: the configured minute applies.
        let entry = policy.entry("p", token(3_600), 0);
        assert_eq!(entry.serve_until_ms, 3_540_000);
        assert!(
            (2_520_000..=3_060_000).contains(&entry.refresh_at_ms),
            "{}",
            entry.refresh_at_ms
        );
        // A 30-second token still caches: a tenth of its life is cut, not a minute.
        let entry = policy.entry("p", token(30), 0);
        assert_eq!(entry.serve_until_ms, 27_000);
        assert!(entry.refresh_at_ms < entry.serve_until_ms);
    }

    #[test]
    fn token_keys_hide_the_user_and_normalise_scopes() {
        let source = TokenSource {
            provider: "mh",
            token_url: "https://identity.example/oidc/token",
            client_id: "client",
            client_auth: "private_key_jwt",
        };
        let user = UserId::parse("user_id", "user-42").unwrap();
        let scopes = ScopeSet::parse("s", &["a", "b"]).unwrap();
        let a = TokenKey::new(&source, Some(&user), &scopes);
        let b = TokenKey::new(
            &source,
            Some(&user),
            &ScopeSet::parse("s", &["b", "a", "a"]).unwrap(),
        );
        assert_eq!(a, b);
        assert!(!a.name().contains("user-42"));
        assert_ne!(a, TokenKey::new(&source, None, &scopes));
        let elsewhere = TokenSource {
            token_url: "https://sandbox.example/oidc/token",
            ..source
        };
        assert_ne!(a, TokenKey::new(&elsewhere, Some(&user), &scopes));
        let by_secret = TokenSource {
            client_auth: "client_secret_basic",
            ..source
        };
        assert_ne!(a, TokenKey::new(&by_secret, Some(&user), &scopes));
    }
}
