//! The Redis cache, shared by every replica. Keys are hashed (see
//! [`super::TokenKey`]); each token entry expires with Redis's own TTL.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::OnceCell;
use tracing::Instrument;

use super::redis_connection::{Connection, RedisTarget};
use super::seal::Sealer;
use super::{AuthorizationKey, CacheError, CachedToken, TokenKey, UserKey, keys};

/// How long a created user's id is remembered: far longer than any retry.
const REMEMBERED_USER_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Deletes the lock only if this owner still holds it, so a holder whose
/// lock expired never releases the next holder's.
const RELEASE_LOCK: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"#;

/// Deletes a token entry only if it still holds the token with this
/// fingerprint (values start with it). One key, so it runs on a cluster too.
const DELETE_IF_TOKEN: &str = r#"
local value = redis.call("GET", KEYS[1])
if value and string.sub(value, 1, 64) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"#;

/// Rewrites a token entry (a postponed refresh) only if it still holds the
/// token with this fingerprint, so a token another replica invalidated or
/// replaced meanwhile is never written back. ARGV: fingerprint, value, TTL ms.
const REPLACE_IF_TOKEN: &str = r#"
local value = redis.call("GET", KEYS[1])
if value and string.sub(value, 1, 64) == ARGV[1] then
    redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3])
    return 1
end
return 0
"#;

/// Adds a token's fingerprint to its user's index, a sorted set scored by
/// when each token stops being served (the server's clock), and drops the
/// fingerprints of tokens already past that: an active user's tokens are
/// refreshed for ever, each refresh pushing the index's expiry out, so an
/// index that only grew would grow without bound. Keeps the index at least
/// as long as this token lives. ARGV: fingerprint, TTL ms.
const INDEX_USER_TOKEN: &str = r#"
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now)
redis.call("ZADD", KEYS[1], now + ttl, ARGV[1])
if redis.call("PTTL", KEYS[1]) < ttl then
    redis.call("PEXPIRE", KEYS[1], ttl)
end
return redis.call("ZCARD", KEYS[1])
"#;

/// What one replica announces to the others on the invalidation channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Announcement<'a> {
    /// Drop `provider`'s token with this fingerprint.
    Token {
        provider: &'a str,
        fingerprint: &'a str,
    },
    /// Forget this remembered user (a [`UserKey`] name): it was deleted.
    ForgetUser(&'a str),
}

/// The prefix of a [`Announcement::ForgetUser`] payload; ':' is in no provider name.
const FORGET_USER: &str = "user:forget ";

impl<'a> Announcement<'a> {
    fn parse(payload: &'a str) -> Option<Self> {
        if let Some(name) = payload.strip_prefix(FORGET_USER) {
            return Some(Self::ForgetUser(name));
        }
        let (provider, fingerprint) = payload.split_once(' ')?;
        Some(Self::Token {
            provider,
            fingerprint,
        })
    }
}

/// A token bucket shared by every replica: refills continuously by the
/// server's clock (`TIME`, so replicas' clocks do not matter), takes one
/// token if it can, else returns the milliseconds until one is there.
/// ARGV: capacity, tokens per millisecond.
const TAKE_FROM_BUCKET: &str = r#"
local capacity = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2])
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local state = redis.call("HMGET", KEYS[1], "tokens", "at")
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * per_ms)
local wait = 0
if tokens >= 1 then
    tokens = tokens - 1
else
    wait = math.ceil((1 - tokens) / per_ms)
end
redis.call("HSET", KEYS[1], "tokens", tostring(tokens), "at", now)
redis.call("PEXPIRE", KEYS[1], math.ceil(capacity / per_ms) + 1000)
return wait
"#;

/// The shared cache on a Redis node or cluster. Every command names one key
/// (keys of one operation would hash to different cluster slots).
#[derive(Clone)]
pub struct RedisStore {
    subscribers: Vec<redis::Client>,
    target: Arc<RedisTarget>,
    /// Made on first use, so a replica starts while Redis is down and
    /// attaches once it is back; it then reconnects by itself.
    connection: Arc<OnceCell<Connection>>,
    release_lock: redis::Script,
    delete_if_token: redis::Script,
    replace_if_token: redis::Script,
    take_from_bucket: redis::Script,
    index_user_token: redis::Script,
    sealer: Arc<Sealer>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store that connects on first use; a malformed URL fails here.
    pub fn new(target: &RedisTarget, sealer: Sealer) -> Result<Self, CacheError> {
        Ok(Self {
            subscribers: target.subscribers()?,
            target: Arc::new(target.clone()),
            connection: Arc::default(),
            release_lock: redis::Script::new(RELEASE_LOCK),
            delete_if_token: redis::Script::new(DELETE_IF_TOKEN),
            replace_if_token: redis::Script::new(REPLACE_IF_TOKEN),
            take_from_bucket: redis::Script::new(TAKE_FROM_BUCKET),
            index_user_token: redis::Script::new(INDEX_USER_TOKEN),
            sealer: Arc::new(sealer),
        })
    }

    /// The shared connection, made now if there is none yet.
    async fn connection(&self) -> Result<Connection, CacheError> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection.clone());
        }
        let connection = self
            .connection
            .get_or_try_init(|| self.target.connect())
            .await?;
        Ok(connection.clone())
    }

    pub async fn get_token(&self, key: &TokenKey) -> Result<Option<CachedToken>, CacheError> {
        let name = key.name();
        let value: Option<Vec<u8>> = self
            .connection()
            .await?
            .get(&name)
            .instrument(span("GET"))
            .await?;
        let Some(sealed) = value.as_deref().and_then(|v| v.get(FINGERPRINT_LEN..)) else {
            return Ok(None);
        };
        // A value that does not open (moved, tampered, sealed with a retired
        // key) is a miss: the token is fetched again and the entry rewritten.
        let Some(plaintext) = self.sealer.open(&name, sealed) else {
            tracing::debug!("a cached value did not open; treating it as a miss");
            return Ok(None);
        };
        serde_json::from_slice(&plaintext)
            .map(Some)
            .map_err(|_| CacheError::Corrupt)
    }

    pub async fn put_token(
        &self,
        key: &TokenKey,
        token: &CachedToken,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let (name, fingerprint, value) = self.sealed(key, token)?;
        let mut connection = self.connection().await?;
        let _: () = connection
            .pset_ex(&name, value, millis(ttl))
            .instrument(span("SET"))
            .await?;
        let _: () = connection
            .pset_ex(
                keys::fingerprint_index(&token.provider, &fingerprint),
                &name,
                millis(ttl),
            )
            .instrument(span("SET"))
            .await?;
        if let Some(owner) = &token.owner {
            let owner = hex::decode(owner)
                .ok()
                .and_then(|digest| <[u8; 32]>::try_from(digest).ok())
                .ok_or(CacheError::Corrupt)?;
            let _: i64 = self
                .index_user_token
                .key(keys::user_tokens(&owner))
                .arg(&fingerprint)
                .arg(millis(ttl))
                .invoke_async(&mut connection)
                .instrument(span("EVALSHA"))
                .await?;
        }
        Ok(())
    }

    /// The fingerprints in a user's token index (see [`super::UserTokens`]).
    pub async fn user_token_fingerprints(&self, name: String) -> Result<Vec<String>, CacheError> {
        let fingerprints: Vec<String> = self
            .connection()
            .await?
            .zrange(name, 0, -1)
            .instrument(span("ZRANGE"))
            .await?;
        Ok(fingerprints)
    }

    /// Deletes a user's token set, once its tokens are invalidated.
    pub async fn forget_user_tokens(&self, name: String) -> Result<(), CacheError> {
        let _: i64 = self
            .connection()
            .await?
            .del(name)
            .instrument(span("DEL"))
            .await?;
        Ok(())
    }

    /// Writes `token` over the entry only if the entry still holds the same
    /// token; false when it is gone or holds another.
    pub async fn replace_token(
        &self,
        key: &TokenKey,
        token: &CachedToken,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let (name, fingerprint, value) = self.sealed(key, token)?;
        let replaced: i64 = self
            .replace_if_token
            .key(name)
            .arg(fingerprint)
            .arg(value)
            .arg(millis(ttl))
            .invoke_async(&mut self.connection().await?)
            .instrument(span("EVALSHA"))
            .await?;
        Ok(replaced > 0)
    }

    /// The entry's name, the token's fingerprint, and the value to store:
    /// the fingerprint (for compare-and-delete) then the sealed entry.
    fn sealed(
        &self,
        key: &TokenKey,
        token: &CachedToken,
    ) -> Result<(String, String, Vec<u8>), CacheError> {
        let plaintext = serde_json::to_vec(token).map_err(|_| CacheError::Corrupt)?;
        let fingerprint = fingerprint(&token.token.access_token);
        let name = key.name();
        let value = [fingerprint.as_bytes(), &self.sealer.seal(&name, &plaintext)].concat();
        Ok((name, fingerprint, value))
    }

    /// Takes the fill lock for `key` if nobody holds it (`SET NX PX`).
    pub async fn try_lock(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(key.lock_name())
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut self.connection().await?)
            .instrument(span("SET NX"))
            .await?;
        Ok(taken.is_some())
    }

    /// Releases the fill lock if `owner` still holds it.
    pub async fn unlock(&self, key: &TokenKey, owner: &str) -> Result<(), CacheError> {
        let _: i64 = self
            .release_lock
            .key(key.lock_name())
            .arg(owner)
            .invoke_async(&mut self.connection().await?)
            .instrument(span("EVALSHA"))
            .await?;
        Ok(())
    }

    /// Deletes the entry holding `provider`'s token with `fingerprint`, if
    /// it still holds that token, and tells every replica to drop its own copy.
    pub async fn invalidate(&self, provider: &str, fingerprint: &str) -> Result<bool, CacheError> {
        let index = keys::fingerprint_index(provider, fingerprint);
        let key: Option<String> = self
            .connection()
            .await?
            .get(&index)
            .instrument(span("GET"))
            .await?;
        let deleted = match key {
            Some(key) => {
                let deleted: i64 = self
                    .delete_if_token
                    .key(key)
                    .arg(fingerprint)
                    .invoke_async(&mut self.connection().await?)
                    .instrument(span("EVALSHA"))
                    .await?;
                // The index entry is stale either way: its token is gone or replaced.
                let _: i64 = self
                    .connection()
                    .await?
                    .del(&index)
                    .instrument(span("DEL"))
                    .await?;
                deleted > 0
            }
            None => false,
        };
        let _: i64 = self
            .connection()
            .await?
            .publish(keys::invalidations(), format!("{provider} {fingerprint}"))
            .instrument(span("PUBLISH"))
            .await?;
        Ok(deleted)
    }

    /// Calls `apply` with every announcement any replica makes (a token
    /// invalidated, a user forgotten), reconnecting (to the next cluster
    /// seed) after an outage; runs until the task is dropped. Calls
    /// `missed` each time it subscribes again after losing the channel:
    /// announcements made meanwhile never arrive, and after a Redis restart
    /// nothing is left in Redis to announce them again.
    pub async fn follow_invalidations(&self, apply: impl Fn(Announcement<'_>), missed: impl Fn()) {
        let mut subscribed = false;
        for client in self.subscribers.iter().cycle() {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(keys::invalidations()).await.is_ok() {
                        if subscribed {
                            missed();
                        }
                        subscribed = true;
                        let mut messages = pubsub.on_message();
                        while let Some(message) = tokio_stream::StreamExt::next(&mut messages).await
                        {
                            let payload = message.get_payload::<String>().unwrap_or_default();
                            if let Some(announcement) = Announcement::parse(&payload) {
                                apply(announcement);
                            }
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "invalidation channel unavailable"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The remembered id, unsealed; a value that does not open is a miss.
    pub async fn remembered_user(&self, key: &UserKey) -> Result<Option<String>, CacheError> {
        let value: Option<Vec<u8>> = self
            .connection()
            .await?
            .get(key.as_str())
            .instrument(span("GET"))
            .await?;
        Ok(value
            .and_then(|sealed| self.sealer.open(key.as_str(), &sealed))
            .and_then(|plaintext| String::from_utf8(plaintext).ok()))
    }

    /// Remembers a created user's id, sealed like tokens: a Redis dump does
    /// not link external ids to the provider's users.
    pub async fn remember_user(&self, key: &UserKey, user_id: &str) -> Result<(), CacheError> {
        let sealed = self.sealer.seal(key.as_str(), user_id.as_bytes());
        let _: () = self
            .connection()
            .await?
            .set_ex(key.as_str(), sealed, REMEMBERED_USER_TTL.as_secs())
            .instrument(span("SET"))
            .await?;
        Ok(())
    }

    /// Deletes a remembered user and tells every replica to forget it too.
    pub async fn forget_user_everywhere(&self, key: &UserKey) -> Result<(), CacheError> {
        self.forget_user(key).await?;
        let _: i64 = self
            .connection()
            .await?
            .publish(
                keys::invalidations(),
                format!("{FORGET_USER}{}", key.as_str()),
            )
            .instrument(span("PUBLISH"))
            .await?;
        Ok(())
    }

    pub async fn forget_user(&self, key: &UserKey) -> Result<(), CacheError> {
        let _: () = self
            .connection()
            .await?
            .del(key.as_str())
            .instrument(span("DEL"))
            .await?;
        Ok(())
    }

    /// Stores a pending authorization, sealed under its key name.
    pub async fn put_authorization(
        &self,
        key: &AuthorizationKey,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let sealed = self.sealer.seal(key.as_str(), value);
        let _: () = self
            .connection()
            .await?
            .pset_ex(key.as_str(), sealed, millis(ttl))
            .instrument(span("SET"))
            .await?;
        Ok(())
    }

    /// Reads and deletes a pending authorization in one command (GETDEL),
    /// so two concurrent exchanges cannot both have it. A value that does
    /// not open is unknown.
    pub async fn take_authorization(
        &self,
        key: &AuthorizationKey,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        let value: Option<Vec<u8>> = redis::cmd("GETDEL")
            .arg(key.as_str())
            .query_async(&mut self.connection().await?)
            .instrument(span("GETDEL"))
            .await?;
        Ok(value.and_then(|sealed| self.sealer.open(key.as_str(), &sealed)))
    }

    /// Takes one request from the shared bucket `name`; returns how long
    /// until one is available when it is empty (zero: taken).
    pub async fn take_from_bucket(
        &self,
        name: &str,
        capacity: f64,
        per_ms: f64,
    ) -> Result<Duration, CacheError> {
        let wait_ms: u64 = self
            .take_from_bucket
            .key(name)
            .arg(capacity)
            .arg(per_ms)
            .invoke_async(&mut self.connection().await?)
            .instrument(span("EVALSHA"))
            .await?;
        Ok(Duration::from_millis(wait_ms))
    }

    pub async fn ping(&self) -> Result<(), CacheError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection().await?)
            .instrument(span("PING"))
            .await?;
        Ok(())
    }
}

/// Hex SHA-256 of a token: identifies it for invalidation, reveals nothing.
pub fn fingerprint(access_token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(access_token.as_bytes()))
}

const FINGERPRINT_LEN: usize = 64;

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A client span for one Redis command (key names are hashes, but are
/// still left out).
fn span(operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "redis",
        otel.name = operation,
        otel.kind = "client",
        db.system = "redis",
        db.operation = operation,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_are_told_apart() {
        assert_eq!(
            Announcement::parse("moneyhub f00d"),
            Some(Announcement::Token {
                provider: "moneyhub",
                fingerprint: "f00d"
            })
        );
        assert_eq!(
            Announcement::parse("user:forget bankauth:v2:user:0102"),
            Some(Announcement::ForgetUser("bankauth:v2:user:0102"))
        );
        assert_eq!(Announcement::parse("garbage"), None);
    }
}
