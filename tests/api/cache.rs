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

    let keys: Vec<String> = redis.client().get_connection().unwrap().keys("*").unwrap();
    assert!(
        keys.len() >= 3,
        "expected token and user entries, got {keys:?}"
    );
    for key in keys {
        assert!(key.starts_with("bankauth:v1:"), "{key}");
        for private in [user.as_str(), "customer-1", "accounts", "scim_user"] {
            assert!(!key.contains(private), "{key} reveals {private}");
        }
    }
}

#[tokio::test]
async fn an_unreachable_redis_stops_startup_with_a_clear_error() {
    let upstream = start_upstream().await;
    let mut config = upstream.config("127.0.0.1:0".parse().unwrap());
    config.cache.redis_url = Some(format!("redis://127.0.0.1:{}/", free_port()).into());
    config.cache.encryption_keys = vec![crate::helpers::encryption_key("k1")];
    let error = match Application::build(config).await {
        Err(error) => error,
        Ok(_) => panic!("startup succeeded without Redis"),
    };
    assert!(matches!(error, StartupError::Redis { .. }));
    assert!(error.to_string().contains("cache.redis_url"), "{error}");
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
