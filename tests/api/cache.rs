use std::time::{SystemTime, UNIX_EPOCH};

use bankauth::cache::TokenKey;
use bankauth::demo::{DEMO_CLIENT_ID, DEMO_PROVIDER};
use bankauth::domain::{ScopeSet, UserId};
use bankauth::server::{Application, StartupError};
use redis::Commands;

use crate::helpers::{RedisServer, free_port, spawn_app_with, start_upstream};

#[tokio::test]
async fn the_redis_entry_expires_the_safety_margin_before_the_token() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| {
        c.cache.redis_url = Some(redis.url());
        c.cache.safety_margin_secs = 90;
    })
    .await;
    let user = app.create_user("customer-1").await;
    let token = app.widget_token(&user).await.unwrap();

    let key = TokenKey::new(
        DEMO_PROVIDER,
        DEMO_CLIENT_ID,
        Some(&UserId::parse("user_id", &user).unwrap()),
        &ScopeSet::single("widget_authentication"),
    );
    let ttl_ms: i64 = redis
        .client()
        .get_connection()
        .unwrap()
        .pttl(key.as_str())
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
    let mut app = spawn_app_with(upstream, |c| c.cache.redis_url = Some(redis.url())).await;
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
    let error = match Application::build(config).await {
        Err(error) => error,
        Ok(_) => panic!("startup succeeded without Redis"),
    };
    assert!(matches!(error, StartupError::Redis(_)));
    assert!(error.to_string().contains("cache.redis_url"), "{error}");
}
