use std::time::{SystemTime, UNIX_EPOCH};

use bankauth::server::{Application, StartupError};
use redis::Commands;

use crate::helpers::{RedisServer, free_port, sha256_hex, spawn_app_with, start_upstream};

#[tokio::test]
async fn the_redis_entry_expires_the_safety_margin_before_the_token() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| {
        crate::helpers::use_redis(c, &redis);
        c.cache.safety_margin_secs = 90;
    })
    .await;
    let user = app.create_user("customer-1").await;
    let token = app.widget_token(&user).await.unwrap();

    let key = crate::helpers::widget_key(app.sandbox(), &user);
    let ttl_ms: i64 = redis
        .client()
        .get_connection()
        .unwrap()
        .pttl(key.name())
        .unwrap();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let expected_ms = (token.expire_time.unwrap().seconds - 90) * 1000 - now_ms;
    assert!(
        (ttl_ms - expected_ms).abs() <= 1000,
        "Redis TTL {ttl_ms} ms, expected {expected_ms} ms ± 1 s"
    );
}

#[tokio::test]
async fn redis_key_names_reveal_no_user_id_or_scope() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| crate::helpers::use_redis(c, &redis)).await;
    let user = app.create_user("customer-1").await;
    app.data_token(&user, &["accounts:read"]).await.unwrap();

    let mut connection = redis.client().get_connection().unwrap();
    let keys: Vec<String> = connection.keys("*").unwrap();
    assert!(
        keys.iter().any(|key| key.contains(":user:")) && keys.len() >= 3,
        "expected token and user entries, got {keys:?}"
    );
    for key in keys {
        assert!(key.starts_with("bankauth:"), "{key}");
        // Values too: a dump yields no user id (tokens and ids are sealed).
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection).unwrap();
        let value: Vec<u8> = match kind.as_str() {
            "string" => connection.get(&key).unwrap(),
            _ => Vec::new(),
        };
        let value = String::from_utf8_lossy(&value);
        for private in [user.as_str(), "customer-1", "accounts", "scim_user"] {
            assert!(!key.contains(private), "{key} reveals {private}");
            assert!(
                !value.contains(private),
                "the value of {key} reveals {private}"
            );
        }
    }
}

#[tokio::test]
async fn an_unreachable_redis_stops_startup_only_when_required() {
    let upstream = start_upstream().await;
    let mut config = upstream.config("127.0.0.1:0".parse().unwrap());
    config.cache.redis_url = Some(format!("redis://127.0.0.1:{}/", free_port()).into());
    config.cache.encryption_keys = vec![crate::helpers::encryption_key("k1")];
    config.cache.redis_timeout_ms = 200;
    assert!(
        Application::build(config.clone()).await.is_ok(),
        "by default a replica starts during a Redis outage"
    );
    config.cache.require_redis_at_startup = true;
    let error = match Application::build(config).await {
        Err(error) => error,
        Ok(_) => panic!("startup succeeded without Redis"),
    };
    assert!(matches!(error, StartupError::Redis { .. }));
    assert!(error.to_string().contains("cache.redis_url"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_during_a_redis_outage_serves_then_attaches_to_redis() {
    let mut redis = RedisServer::start();
    redis.kill();
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| {
        crate::helpers::use_redis(c, &redis);
        c.cache.redis_timeout_ms = 200;
    })
    .await;
    let users = app.sandbox().seed_users(2);
    // Served from the provider and this replica's own tier meanwhile.
    let token = app.widget_token(&users[0]).await.unwrap();
    assert_eq!(app.widget_token(&users[0]).await.unwrap(), token);

    redis.restart();
    // Once Redis answers (the replica probes it at most once a second),
    // new tokens land there for the other replicas.
    let key = crate::helpers::widget_key(app.sandbox(), &users[1]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        app.widget_token(&users[1]).await.unwrap();
        let stored: bool = redis
            .client()
            .get_connection()
            .unwrap()
            .exists(key.name())
            .unwrap();
        if stored {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never attached to Redis"
        );
        // A token cached in process is not written again: drop it.
        app.client
            .issue_widget_token(bankauth::proto::v1::IssueWidgetTokenRequest {
                provider: String::new(),
                user_id: users[1].clone(),
                force_refresh: true,
            })
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn redis_without_an_encryption_key_is_refused_unless_explicitly_allowed() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut config = upstream.config("127.0.0.1:0".parse().unwrap());
    config.cache.redis_url = Some(redis.url());
    let error = match Application::build(config.clone()).await {
        Err(error) => error.to_string(),
        Ok(_) => panic!("plaintext Redis values were accepted"),
    };
    assert!(error.contains("cache.encryption_keys"), "{error}");
    config.cache.allow_plaintext = true;
    assert!(Application::build(config).await.is_ok());
}

/// Reads the raw Redis value of `user`'s widget token.
fn raw_widget_entry(
    redis: &RedisServer,
    sandbox: &bankauth::sandbox::Sandbox,
    user: &str,
) -> (String, Vec<u8>) {
    let key = crate::helpers::widget_key(sandbox, user);
    let value: Vec<u8> = redis
        .client()
        .get_connection()
        .unwrap()
        .get(key.name())
        .unwrap();
    (key.name(), value)
}

#[tokio::test]
async fn redis_values_are_sealed_and_do_not_open_under_another_key() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| crate::helpers::use_redis(c, &redis)).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let token = app.widget_token(&alice).await.unwrap();

    let (_, stored) = raw_widget_entry(&redis, app.sandbox(), &alice);
    // A value is the token's SHA-256 fingerprint (for InvalidateToken), then the sealed token.
    let (fingerprint, sealed) = stored.split_at(64);
    assert_eq!(fingerprint, sha256_hex(&token.access_token).as_bytes());
    assert!(
        sealed.starts_with(b"v1.k1."),
        "not sealed: {:?}",
        String::from_utf8_lossy(sealed)
    );
    let raw = String::from_utf8_lossy(sealed);
    assert!(
        !raw.contains(&token.access_token[..20]) && !raw.contains("Bearer"),
        "{raw}"
    );

    // Alice's sealed token planted under Bob's key does not open: Bob gets his own.
    let bob_key = crate::helpers::widget_key(app.sandbox(), &bob);
    let _: () = redis
        .client()
        .get_connection()
        .unwrap()
        .set(bob_key.name(), &stored)
        .unwrap();
    let before = app.sandbox().token_requests();
    let bobs = app.widget_token(&bob).await.unwrap();
    assert_ne!(bobs.access_token, token.access_token);
    assert_eq!(app.sandbox().token_requests(), before + 1);
}

#[tokio::test]
async fn a_key_rotation_keeps_serving_from_the_cache() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let old_key = crate::helpers::encryption_key("2026-10");
    let old = old_key.clone();
    let mut before_rotation = spawn_app_with(upstream.clone(), |c| {
        c.cache.redis_url = Some(redis.url());
        c.cache.encryption_keys = vec![old];
    })
    .await;
    let user = before_rotation.create_user("customer-1").await;
    let token = before_rotation.widget_token(&user).await.unwrap();
    let calls = before_rotation.sandbox().token_requests();

    // The new key seals; the old one still opens what it sealed.
    let mut after_rotation = spawn_app_with(upstream, |c| {
        c.cache.redis_url = Some(redis.url());
        c.cache.encryption_keys = vec![crate::helpers::encryption_key("2026-11"), old_key];
    })
    .await;
    assert_eq!(after_rotation.widget_token(&user).await.unwrap(), token);
    assert_eq!(after_rotation.sandbox().token_requests(), calls);

    let other = after_rotation.create_user("customer-2").await;
    after_rotation.widget_token(&other).await.unwrap();
    assert!(
        raw_widget_entry(&redis, after_rotation.sandbox(), &other).1[64..]
            .starts_with(b"v1.2026-11.")
    );
}

#[tokio::test]
async fn a_replica_trusts_its_own_copy_of_a_redis_entry_no_longer_than_memory_ttl() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| {
        crate::helpers::use_redis(c, &redis);
        c.cache.memory_ttl_secs = 1;
    })
    .await;
    let user = app.create_user("customer-1").await;
    let token = app.widget_token(&user).await.unwrap();
    let calls = app.sandbox().token_requests();

    // The Redis entry vanishes without an invalidation message reaching this
    // replica (a flush, a missed pub/sub message): its own copy still serves…
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut redis.client().get_connection().unwrap())
        .unwrap();
    assert_eq!(app.widget_token(&user).await.unwrap(), token);
    assert_eq!(app.sandbox().token_requests(), calls);

    // …until memory_ttl_secs has passed; then it asks Redis, and the provider.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    assert_ne!(app.widget_token(&user).await.unwrap(), token);
    assert_eq!(app.sandbox().token_requests(), calls + 1);
}

#[tokio::test]
async fn a_provider_name_pointed_at_another_token_endpoint_does_not_reuse_its_tokens() {
    let redis = RedisServer::start();
    // Two token endpoints (think sandbox and production) behind one provider
    // name and client id, sharing one Redis.
    let sandbox = start_upstream().await;
    let production = start_upstream().await;
    let mut before = spawn_app_with(sandbox, |c| crate::helpers::use_redis(c, &redis)).await;
    let mut after = spawn_app_with(production, |c| crate::helpers::use_redis(c, &redis)).await;

    let sandbox_token = before.data_token("", &["scim_user:read"]).await.unwrap();
    let production_token = after.data_token("", &["scim_user:read"]).await.unwrap();
    assert_ne!(production_token, sandbox_token);
    assert_eq!(after.sandbox().token_requests(), 1);
}

/// A cache on `redis` as a replica builds it, with the key the replicas share.
async fn replica_cache(redis: &RedisServer, memory_ttl_secs: u64) -> bankauth::cache::Cache {
    replica_cache_with(Some(redis), memory_ttl_secs).await
}

async fn replica_cache_with(
    redis: Option<&RedisServer>,
    memory_ttl_secs: u64,
) -> bankauth::cache::Cache {
    use bankauth::cache::{Cache, RedisTarget, Tiers, Topology};
    let target = redis.map(|redis| RedisTarget {
        topology: Topology::SingleNode(redis.url()),
        ca_pem: None,
        timeout: std::time::Duration::from_millis(300),
    });
    let tiers = Tiers {
        max_entries: 100,
        memory_ttl: std::time::Duration::from_secs(memory_ttl_secs),
    };
    let sealer = match redis {
        Some(redis) => redis.sealer(),
        None => bankauth::cache::seal::Sealer::new(vec![]).unwrap(),
    };
    Cache::connect(target.as_ref(), false, sealer, tiers, Default::default())
        .await
        .unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn cached(provider: &str, access_token: &str) -> bankauth::cache::CachedToken {
    bankauth::cache::CachedToken {
        provider: provider.into(),
        owner: None,
        token: bankauth::domain::AccessToken {
            access_token: access_token.into(),
            token_type: "Bearer".into(),
            expires_at: now_ms() / 1000 + 3600,
            scopes: vec!["widget_authentication".into()],
        },
        refresh_at_ms: now_ms(),
        serve_until_ms: now_ms() + 3_000_000,
    }
}

fn some_key(n: u8) -> bankauth::cache::TokenKey {
    let source = bankauth::cache::TokenSource {
        provider: "sandbox",
        token_url: "http://127.0.0.1/token",
        client_id: "client",
        client_auth: "private_key_jwt",
    };
    let user = bankauth::domain::UserId::parse("user_id", &format!("user-{n}")).unwrap();
    bankauth::cache::TokenKey::new(
        &source,
        Some(&user),
        &bankauth::domain::ScopeSet::single("widget_authentication"),
    )
}

#[tokio::test]
async fn a_failed_refresh_never_writes_back_a_token_another_replica_dropped_or_replaced() {
    let redis = RedisServer::start();
    let a = replica_cache(&redis, 60).await;
    let b = replica_cache(&redis, 60).await;
    let delay = std::time::Duration::from_secs(5);

    // Invalidated by replica B while A holds a copy: A's failed refresh
    // does not bring it back.
    let key = some_key(1);
    a.put_token(&key, &cached("sandbox", "revoked"), now_ms())
        .await;
    assert!(
        b.invalidate("sandbox", &sha256_hex("revoked"))
            .await
            .unwrap()
    );
    a.postpone_refresh(&key, now_ms(), delay).await;
    assert_eq!(b.get_token(&key, now_ms()).await, None);

    // Replaced by replica B: A's postponement leaves B's newer token.
    let key = some_key(2);
    a.put_token(&key, &cached("sandbox", "older"), now_ms())
        .await;
    b.put_token(&key, &cached("sandbox", "newer"), now_ms())
        .await;
    a.postpone_refresh(&key, now_ms(), delay).await;
    let fresh = replica_cache(&redis, 60).await;
    let kept = fresh.get_token(&key, now_ms()).await.unwrap();
    assert_eq!(kept.token.access_token, "newer");

    // Still the same token: the refresh is postponed in Redis too.
    let key = some_key(3);
    let now = now_ms();
    a.put_token(&key, &cached("sandbox", "same"), now).await;
    a.postpone_refresh(&key, now, delay).await;
    let postponed = fresh.get_token(&key, now_ms()).await.unwrap();
    assert_eq!(postponed.token.access_token, "same");
    assert!(!postponed.needs_refresh(now_ms()), "refresh_at moved later");
}

#[tokio::test]
async fn a_token_filled_by_another_replica_is_kept_in_process_no_longer_than_memory_ttl() {
    let redis = RedisServer::start();
    let holder = replica_cache(&redis, 0).await;
    let waiter = replica_cache(&redis, 0).await;
    let key = some_key(4);
    let lock_ttl = std::time::Duration::from_secs(10);
    let bankauth::cache::Fill::Proceed(Some(lock)) =
        holder.coordinate_fill(&key, lock_ttl, now_ms).await
    else {
        panic!("the first replica takes the lock");
    };
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.coordinate_fill(&key, lock_ttl, now_ms).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    holder
        .put_token(&key, &cached_fresh("filled"), now_ms())
        .await;
    holder.release(lock).await;
    let bankauth::cache::Fill::FilledByOther(token) = waiting.await.unwrap() else {
        panic!("the waiter uses the holder's token");
    };
    assert_eq!(token.token.access_token, "filled");

    // With memory_ttl_secs = 0 the waiter keeps no copy of its own: once
    // the Redis entry is gone, it does not serve the token.
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut redis.client().get_connection().unwrap())
        .unwrap();
    assert_eq!(waiter.get_token(&key, now_ms()).await, None);
}

#[tokio::test]
async fn a_replica_that_takes_the_lock_after_another_filled_uses_that_token() {
    let redis = RedisServer::start();
    let first = replica_cache(&redis, 60).await;
    let late = replica_cache(&redis, 60).await;
    let key = some_key(5);
    let lock_ttl = std::time::Duration::from_secs(10);
    // The late replica saw a miss before this fill finished…
    assert_eq!(late.get_token(&key, now_ms()).await, None);
    let bankauth::cache::Fill::Proceed(Some(lock)) =
        first.coordinate_fill(&key, lock_ttl, now_ms).await
    else {
        panic!("the first replica takes the lock");
    };
    first.put_token(&key, &cached_fresh("only"), now_ms()).await;
    first.release(lock).await;
    // …and takes the lock after it was released: it must not fetch again.
    match late.coordinate_fill(&key, lock_ttl, now_ms).await {
        bankauth::cache::Fill::FilledByOther(token) => {
            assert_eq!(token.token.access_token, "only")
        }
        bankauth::cache::Fill::Proceed(_) => panic!("a second fetch for a filled key"),
    }
}

/// A cached token not due for refresh for a long while.
fn cached_fresh(access_token: &str) -> bankauth::cache::CachedToken {
    bankauth::cache::CachedToken {
        refresh_at_ms: now_ms() + 2_000_000,
        ..cached("sandbox", access_token)
    }
}

#[tokio::test]
async fn a_fill_lock_is_released_even_right_after_a_redis_error() {
    let redis = RedisServer::start();
    let holder = replica_cache(&redis, 60).await;
    let key = some_key(6);
    let lock_ttl = std::time::Duration::from_secs(30);
    let bankauth::cache::Fill::Proceed(Some(lock)) =
        holder.coordinate_fill(&key, lock_ttl, now_ms).await
    else {
        panic!("the replica takes the lock");
    };
    // The token write times out (Redis frozen), which starts an outage…
    redis.pause();
    holder.put_token(&key, &cached_fresh("t"), now_ms()).await;
    redis.resume();
    // …but the lock is released at once, not left for other replicas'
    // callers to wait out (30 s here).
    holder.release(lock).await;
    let held: bool = redis
        .client()
        .get_connection()
        .unwrap()
        .exists(key.lock_name())
        .unwrap();
    assert!(!held, "the fill lock was left behind");
}

#[tokio::test]
async fn a_fill_finished_just_before_another_started_is_not_repeated() {
    for redis in [None, Some(RedisServer::start())] {
        let cache = replica_cache_with(redis.as_ref(), 60).await;
        let key = some_key(7);
        // One fill cached its token; a caller that saw the miss before it
        // finished starts the next fill: it uses that token.
        cache
            .put_token(&key, &cached_fresh("filled"), now_ms())
            .await;
        let lock_ttl = std::time::Duration::from_secs(10);
        match cache.coordinate_fill(&key, lock_ttl, now_ms).await {
            bankauth::cache::Fill::FilledByOther(token) => {
                assert_eq!(token.token.access_token, "filled")
            }
            bankauth::cache::Fill::Proceed(_) => panic!("a second fetch for a filled key"),
        }
    }
}

#[tokio::test]
async fn during_a_redis_outage_this_replica_keeps_what_it_fetched_until_it_expires() {
    let mut redis = RedisServer::start();
    // memory_ttl_secs = 0: with Redis up, no copy is kept in process…
    let cache = replica_cache(&redis, 0).await;
    redis.kill();
    let key = some_key(8);
    cache
        .put_token(&key, &cached_fresh("fetched"), now_ms())
        .await;
    // …but with Redis down, the in-process copy is the cache.
    let kept = cache.get_token(&key, now_ms()).await;
    assert_eq!(kept.map(|t| t.token.access_token), Some("fetched".into()));
}

#[tokio::test]
async fn a_redis_that_refuses_our_credentials_stops_startup() {
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let port = free_port();
    let _redis = KillOnDrop(crate::helpers::spawn_redis_server(&[
        "--port",
        &port.to_string(),
        "--requirepass",
        "s3cret",
    ]));
    let upstream = start_upstream().await;
    let mut config = upstream.config("127.0.0.1:0".parse().unwrap());
    // No password at all: Redis answers NOAUTH, which waiting will not fix.
    config.cache.redis_url = Some(format!("redis://127.0.0.1:{port}/").into());
    config.cache.encryption_keys = vec![crate::helpers::encryption_key("k1")];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let error = loop {
        match Application::build(config.clone()).await {
            Err(error) => break error,
            Ok(_) => {
                // The server may not have been listening yet: that one is an outage.
                assert!(
                    std::time::Instant::now() < deadline,
                    "startup succeeded against NOAUTH"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    assert!(matches!(error, StartupError::Redis { .. }), "{error}");
}
