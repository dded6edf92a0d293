use std::time::Duration;

use bankauth::sandbox::ExpiryField;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;

use crate::helpers::{spawn_app, spawn_app_with, start_upstream, start_upstream_with};

#[derive(Deserialize)]
struct Claims {
    sub: String,
    scope: String,
    exp: i64,
}

fn verified_claims(app: &crate::helpers::TestApp, token: &str) -> Claims {
    let jwks = app.sandbox().jwks();
    let key = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_aud = false;
    decode::<Claims>(token, &key, &validation).unwrap().claims
}

#[tokio::test]
async fn a_widget_token_is_a_provider_jwt_for_the_user_with_the_widget_scope() {
    let mut app = spawn_app().await;
    let user = app.create_user("customer-1").await;
    let token = app.widget_token(&user).await.unwrap();

    let claims = verified_claims(&app, &token.access_token);
    assert_eq!(claims.sub, user);
    assert_eq!(claims.scope, "widget_authentication");
    // An RFC 9068 access token, as in Moneyhub's documents.
    let header = jsonwebtoken::decode_header(&token.access_token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(token.scopes, ["widget_authentication"]);
    assert_eq!(token.token_type, "Bearer");
    assert_eq!(token.expire_time.unwrap().seconds, claims.exp);
}

#[tokio::test]
async fn a_second_identical_request_makes_no_upstream_call() {
    let mut app = spawn_app().await;
    let user = app.create_user("customer-1").await;
    let before = app.sandbox().token_requests();

    let first = app.widget_token(&user).await.unwrap();
    assert_eq!(app.sandbox().token_requests(), before + 1);
    let second = app.widget_token(&user).await.unwrap();
    assert_eq!(app.sandbox().token_requests(), before + 1);
    assert_eq!(first, second);
}

#[tokio::test]
async fn each_user_gets_a_token_of_their_own() {
    let mut app = spawn_app().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let alice_token = app.widget_token(&alice).await.unwrap();
    let bob_token = app.widget_token(&bob).await.unwrap();
    assert_eq!(verified_claims(&app, &alice_token.access_token).sub, alice);
    assert_eq!(verified_claims(&app, &bob_token.access_token).sub, bob);
}

#[tokio::test]
async fn data_scopes_in_any_order_with_duplicates_share_one_token() {
    let mut app = spawn_app().await;
    let user = app.create_user("customer-1").await;
    let before = app.sandbox().token_requests();

    let first = app
        .data_token(
            &user,
            &["transactions:read:all", "accounts:read", "accounts:read"],
        )
        .await
        .unwrap();
    let second = app
        .data_token(&user, &["accounts:read", "transactions:read:all"])
        .await
        .unwrap();
    assert_eq!(app.sandbox().token_requests(), before + 1);
    assert_eq!(first, second);
    assert_eq!(first.scopes, ["accounts:read", "transactions:read:all"]);
    let claims = verified_claims(&app, &first.access_token);
    assert_eq!(claims.sub, user);
    assert_eq!(claims.scope, "accounts:read transactions:read:all");

    app.data_token(&user, &["accounts:read"]).await.unwrap();
    assert_eq!(
        app.sandbox().token_requests(),
        before + 2,
        "another scope set is another token"
    );
}

#[tokio::test]
async fn an_expires_at_response_is_read_and_cached() {
    let upstream = start_upstream_with(|client| {
        let mut options = bankauth::sandbox::SandboxOptions::new(vec![client]);
        options.expiry_field = ExpiryField::ExpiresAt;
        options
    })
    .await;
    let mut app = spawn_app_with(upstream, |_| {}).await;
    let user = app.create_user("customer-1").await;
    let token = app.widget_token(&user).await.unwrap();
    let claims = verified_claims(&app, &token.access_token);
    // Counted from sending (exp − iat), capped by expires_at: a second may tick between.
    let expires = token.expire_time.unwrap().seconds;
    assert!(
        (claims.exp - 1..=claims.exp).contains(&expires),
        "{expires}"
    );
    let before = app.sandbox().token_requests();
    app.widget_token(&user).await.unwrap();
    assert_eq!(app.sandbox().token_requests(), before);
}

#[tokio::test]
async fn a_token_living_less_than_the_margin_still_caches_for_most_of_its_life() {
    let redis = crate::helpers::RedisServer::start();
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| {
        crate::helpers::use_redis(c, &redis);
        c.cache.safety_margin_secs = 60;
    })
    .await;
    let user = app.create_user("customer-1").await;
    app.sandbox().set_token_lifetime(Duration::from_secs(30));
    let before = app.sandbox().token_requests();

    let first = app.widget_token(&user).await.unwrap();
    let second = app.widget_token(&user).await.unwrap();
    assert_eq!(app.sandbox().token_requests(), before + 1);
    assert_eq!(first, second);

    // Served until a tenth of its life before expiry, not a minute (which
    // would be longer than it lives).
    let key = crate::helpers::widget_key(app.sandbox(), &user);
    let ttl_ms: i64 =
        redis::Commands::pttl(&mut redis.client().get_connection().unwrap(), key.name()).unwrap();
    assert!((25_000..=27_000).contains(&ttl_ms), "Redis TTL {ttl_ms} ms");
}

#[tokio::test]
async fn without_a_cache_entry_every_replica_fetches_but_with_redis_they_share() {
    let redis = crate::helpers::RedisServer::start();
    let upstream = start_upstream().await;
    let mut a = spawn_app_with(upstream.clone(), |c| crate::helpers::use_redis(c, &redis)).await;
    let mut b = spawn_app_with(upstream, |c| crate::helpers::use_redis(c, &redis)).await;
    let user = a.create_user("customer-1").await;
    let before = a.sandbox().token_requests();
    let from_a = a.widget_token(&user).await.unwrap();
    let from_b = b.widget_token(&user).await.unwrap();
    assert_eq!(from_a, from_b);
    assert_eq!(a.sandbox().token_requests(), before + 1);
}
