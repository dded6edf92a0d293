//! A user's lifecycle against the sandbox: DeleteUser (and what it drops
//! from the cache, on every replica), ListUsers, ListUserConnections,
//! DeleteUserConnection and RevokeToken. Moneyhub's users API has no
//! independent implementation to test against; the sandbox follows its
//! Node client's endpoints and shapes.

use std::time::{Duration, Instant};

use bankauth::config::{
    AccessConfig, CallerConfig, ClientAuthMethod, ExpiryField, ProviderConfig, ProviderKind,
};
use bankauth::demo::DemoUpstream;
use bankauth::proto::v1 as pb;
use bankauth::provider::users_api::ConnectionBody;
use bankauth::sandbox::{Endpoint, Fault};
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::helpers::{
    RedisServer, TestApp, authorization_code, error_info, moneykit_config, new_user, sha256_hex,
    spawn_app, spawn_app_with, start_upstream, start_upstream_with_moneykit, use_redis,
};

const REDIRECT_URI: &str = "https://app.example.com/callback";

fn delete(user_id: &str) -> pb::DeleteUserRequest {
    pb::DeleteUserRequest {
        provider: String::new(),
        user_id: user_id.into(),
    }
}

fn list_connections(user_id: &str) -> pb::ListUserConnectionsRequest {
    pb::ListUserConnectionsRequest {
        provider: String::new(),
        user_id: user_id.into(),
    }
}

fn delete_connection(user_id: &str, connection_id: &str) -> pb::DeleteUserConnectionRequest {
    pb::DeleteUserConnectionRequest {
        provider: String::new(),
        user_id: user_id.into(),
        connection_id: connection_id.into(),
    }
}

fn list(page_size: i32, page_token: &str, external_id: &str) -> pb::ListUsersRequest {
    pb::ListUsersRequest {
        provider: String::new(),
        page_size,
        page_token: page_token.into(),
        external_id: external_id.into(),
    }
}

fn revoke(token: &str, hint: pb::TokenTypeHint) -> pb::RevokeTokenRequest {
    pb::RevokeTokenRequest {
        provider: String::new(),
        token: token.into(),
        token_type_hint: hint.into(),
    }
}

fn connection(id: &str) -> ConnectionBody {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "name": "Mock Bank",
        "type": "api",
        "connectedOn": "2024-08-07T06:43:47.000Z",
        "lastUpdated": "2024-08-08T06:43:47.000Z",
        "expiresAt": "2024-11-05T06:43:47.000Z",
        "accountIds": ["acc-1", "acc-2"],
        "status": "error",
        "error": "resync",
    }))
    .unwrap()
}

fn assert_status(status: &tonic::Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(error_info(status).reason, reason, "{status:?}");
}

fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_status(status, Code::InvalidArgument, "INVALID_ARGUMENT");
    let violations = status
        .get_error_details()
        .bad_request()
        .cloned()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"))
        .field_violations;
    assert_eq!(violations[0].field, field, "{status:?}");
}

/// A user that exists at the sandbox, with its widget token cached.
async fn user_with_token(app: &mut TestApp, external_id: &str) -> (String, pb::AccessToken) {
    let user = app.create_user(external_id).await;
    let token = app.widget_token(&user).await.unwrap();
    (user, token)
}

#[tokio::test]
async fn delete_user_deletes_at_the_users_api_and_drops_the_users_tokens() {
    let mut app = spawn_app().await;
    let (user, widget) = user_with_token(&mut app, "customer-1").await;
    let data = app.data_token(&user, &["accounts:read"]).await.unwrap();
    assert_eq!(app.widget_token(&user).await.unwrap(), widget, "cached");
    let (other, other_widget) = user_with_token(&mut app, "customer-2").await;

    app.client.delete_user(delete(&user)).await.unwrap();
    assert!(!app.sandbox().has_user(&user));
    assert_eq!(app.sandbox().users_requests(), 1, "DELETE /users/{{id}}");

    // Neither token is served from the cache: the sandbox refuses a token
    // for a user it no longer has.
    let status = app.widget_token(&user).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "UPSTREAM_REJECTED_REQUEST");
    let status = app.data_token(&user, &["accounts:read"]).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "UPSTREAM_REJECTED_REQUEST");
    assert_ne!(data.access_token, widget.access_token);
    // Another user's token stays.
    assert_eq!(app.widget_token(&other).await.unwrap(), other_widget);

    let status = app
        .client
        .get_user(pb::GetUserRequest {
            provider: String::new(),
            user_id: user.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "USER_NOT_FOUND");
    let status = app.client.delete_user(delete(&user)).await.unwrap_err();
    assert_status(&status, Code::NotFound, "USER_NOT_FOUND");
}

/// Asks `app` for the user's widget token until it stops serving `cached`
/// (it hears of the deletion on the invalidation channel, well before
/// memory_ttl_secs) and returns the error that follows.
async fn until_dropped(app: &mut TestApp, user: &str, cached: &pb::AccessToken) -> tonic::Status {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match app.widget_token(user).await {
            Ok(token) => {
                assert_eq!(&token, cached);
                assert!(
                    Instant::now() < deadline,
                    "a replica kept serving the deleted user's token"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => return status,
        }
    }
}

#[tokio::test]
async fn a_deleted_users_widget_token_is_served_by_no_replica() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut a = spawn_app_with(upstream.clone(), |c| use_redis(c, &redis)).await;
    let mut b = spawn_app_with(upstream.clone(), |c| use_redis(c, &redis)).await;
    let (user, widget) = user_with_token(&mut a, "customer-1").await;
    assert_eq!(
        b.widget_token(&user).await.unwrap(),
        widget,
        "b holds it too"
    );

    // Deleted through a replica that never saw the token: Redis's index
    // of the user's tokens is how it finds them.
    let mut c = spawn_app_with(upstream.clone(), |c| use_redis(c, &redis)).await;
    c.client.delete_user(delete(&user)).await.unwrap();

    for replica in [&mut a, &mut b] {
        let status = until_dropped(replica, &user, &widget).await;
        assert_status(&status, Code::InvalidArgument, "UPSTREAM_REJECTED_REQUEST");
    }
    // A replica started afterwards finds nothing in Redis either.
    let mut d = spawn_app_with(upstream, |c| use_redis(c, &redis)).await;
    assert!(d.widget_token(&user).await.is_err());
}

#[tokio::test]
async fn a_deleted_users_external_id_is_forgotten_on_every_replica() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut a = spawn_app_with(upstream.clone(), |c| use_redis(c, &redis)).await;
    let mut b = spawn_app_with(upstream.clone(), |c| use_redis(c, &redis)).await;
    let first = b.create_user("customer-1").await;
    a.client.delete_user(delete(&first)).await.unwrap();

    // b remembered the id in process too; once told, it creates anew
    // without first reading the deleted user back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = upstream.sandbox.scim_requests();
        let second = b.create_user("customer-1").await;
        assert_ne!(second, first);
        if upstream.sandbox.scim_requests() - before == 1 {
            break;
        }
        // Not yet told: it read the old id back (404), then created.
        assert!(
            Instant::now() < deadline,
            "b still remembers the deleted user"
        );
        a.client.delete_user(delete(&second)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A provider with SCIM users and no users API (kind oauth2 at the sandbox).
fn scim_only(upstream: &DemoUpstream) -> ProviderConfig {
    let mut config = ProviderConfig::new(ProviderKind::Oauth2, bankauth::demo::DEMO_CLIENT_ID);
    config.issuer = Some(upstream.sandbox.issuer());
    config.scim_url = Some(upstream.sandbox.base_url().join("scim").unwrap());
    config.client_auth = Some(ClientAuthMethod::PrivateKeyJwt);
    config.private_key_pem = Some(upstream.client_key_pem.clone());
    config.send_sub = Some(true);
    config.expiry_field = Some(ExpiryField::Auto);
    config.data_scopes = vec!["accounts:read".into()];
    config
}

#[tokio::test]
async fn a_scim_only_provider_deletes_over_scim_and_has_no_connections() {
    let upstream = start_upstream().await;
    let config = scim_only(&upstream);
    let mut app = spawn_app_with(upstream, |c| {
        c.providers.insert("scimonly".into(), config);
    })
    .await;
    let mut request = new_user("customer-1");
    request.provider = "scimonly".into();
    let user = app
        .client
        .create_user(request)
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .id;
    let mut request = delete(&user);
    request.provider = "scimonly".into();
    app.client.delete_user(request.clone()).await.unwrap();
    assert!(!app.sandbox().has_user(&user));
    assert_eq!(app.sandbox().users_requests(), 0, "SCIM DELETE, not /users");
    let status = app.client.delete_user(request).await.unwrap_err();
    assert_status(&status, Code::NotFound, "USER_NOT_FOUND");

    let mut request = list_connections(&user);
    request.provider = "scimonly".into();
    let status = app.client.list_user_connections(request).await.unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "NOT_SUPPORTED_BY_PROVIDER",
    );
    let mut request = delete_connection(&user, "c1");
    request.provider = "scimonly".into();
    let status = app
        .client
        .delete_user_connection(request)
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "NOT_SUPPORTED_BY_PROVIDER",
    );
}

#[tokio::test]
async fn connections_are_listed_in_the_protos_shape_and_deleted_one_by_one() {
    let mut app = spawn_app().await;
    let user = app.create_user("customer-1").await;
    let ids = ["1ffe704d39629a929c8e293880fb449a:3a7e", "0abc:77"];
    for id in ids {
        assert!(app.sandbox().add_connection(&user, connection(id)));
    }
    let listed = app
        .client
        .list_user_connections(list_connections(&user))
        .await
        .unwrap()
        .into_inner()
        .connections;
    assert_eq!(listed.len(), 2);
    let first = &listed[0];
    assert_eq!(first.id, ids[0]);
    assert_eq!(
        (first.name.as_str(), first.r#type.as_str()),
        ("Mock Bank", "api")
    );
    assert_eq!(
        (first.status.as_str(), first.error.as_str()),
        ("error", "resync")
    );
    assert_eq!(first.account_ids, ["acc-1", "acc-2"]);
    assert_eq!(first.connect_time.as_ref().unwrap().seconds, 1_723_013_027);
    assert_eq!(
        first.update_time.as_ref().unwrap().seconds,
        1_723_013_027 + 86_400
    );
    assert!(first.expire_time.is_some());

    app.client
        .delete_user_connection(delete_connection(&user, ids[0]))
        .await
        .unwrap();
    assert_eq!(app.sandbox().connection_ids(&user), [ids[1]]);
    let status = app
        .client
        .delete_user_connection(delete_connection(&user, ids[0]))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "USER_NOT_FOUND");

    let status = app
        .client
        .list_user_connections(list_connections("000000000000000000000000"))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "USER_NOT_FOUND");
    assert_eq!(error_info(&status).metadata["upstream_error"], "not_found");
}

#[tokio::test]
async fn list_users_pages_through_every_user_once() {
    let mut app = spawn_app().await;
    let mut seeded = app.sandbox().seed_users(7);
    seeded.sort();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .client
            .list_users(list(3, &token, ""))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.users.len() <= 3);
        seen.extend(page.users.into_iter().map(|user| user.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    seen.sort();
    assert_eq!(seen, seeded);
    // 0 is the default page size, 50: one page.
    let page = app
        .client
        .list_users(list(0, "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.users.len(), 7);
    assert!(page.next_page_token.is_empty());
}

#[tokio::test]
async fn list_users_finds_one_external_id_however_hostile() {
    let mut app = spawn_app().await;
    let plain = app.create_user("customer-1").await;
    let hostile = r#"x" or externalId pr or externalId eq "customer-1\"#;
    let mut request = new_user(hostile);
    request.emails[0].value = "hostile@example.com".into();
    let created = app.client.create_user(request).await.unwrap().into_inner();
    let hostile_id = created.user.unwrap().id;

    for (external_id, expected) in [
        ("customer-1", vec![plain.clone()]),
        (hostile, vec![hostile_id]),
        ("nobody", vec![]),
        ("ünïcødé ✓", vec![]),
    ] {
        let page = app
            .client
            .list_users(list(0, "", external_id))
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<String> = page.users.into_iter().map(|user| user.id).collect();
        assert_eq!(ids, expected, "{external_id:?}");
    }
}

#[tokio::test]
async fn page_tokens_that_are_garbage_or_from_another_call_are_invalid_argument() {
    let mut app = spawn_app().await;
    app.sandbox().seed_users(3);
    let page = app
        .client
        .list_users(list(1, "", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    for token in [
        "garbage",
        "eyJ4IjoxfQ",
        &format!("{}x", page.next_page_token),
    ] {
        let status = app.client.list_users(list(1, token, "")).await.unwrap_err();
        assert_invalid(&status, "page_token");
    }
    let status = app
        .client
        .list_users(list(1, &page.next_page_token, "customer-1"))
        .await
        .unwrap_err();
    assert_invalid(&status, "page_token");
    assert!(status.message().contains("another"), "{status:?}");
    // The token still works for its own call, with another page size.
    app.client
        .list_users(list(2, &page.next_page_token, ""))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_list_the_provider_garbles_is_refused_without_a_panic() {
    let mut app = spawn_app().await;
    app.sandbox().fail_next(
        Endpoint::Scim,
        Fault::Json {
            status: 200,
            body: r#"{"totalResults":2,"startIndex":1,"Resources":[{"id":"a"},{"id":"b"}]}"#,
        },
    );
    let status = app.client.list_users(list(1, "", "")).await.unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "UPSTREAM_MISDIRECTED");
    app.sandbox().fail_next(
        Endpoint::Scim,
        Fault::Json {
            status: 200,
            body: r#"{"totalResults":1,"Resources":[{"id":"a","externalId":"someone-else"}]}"#,
        },
    );
    let status = app
        .client
        .list_users(list(0, "", "customer-1"))
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "UPSTREAM_MISDIRECTED");
    for _ in 0..3 {
        app.sandbox().fail_next(Endpoint::Scim, Fault::Garbage);
    }
    let status = app.client.list_users(list(0, "", "")).await.unwrap_err();
    assert_status(&status, Code::Unavailable, "UPSTREAM_UNAVAILABLE");
}

#[tokio::test]
async fn a_create_retried_after_a_lost_answer_and_a_lost_memory_returns_the_user() {
    let upstream = start_upstream().await;
    let mut first = spawn_app_with(upstream.clone(), |_| {}).await;
    let created = first.create_user("customer-1").await;
    // A fresh replica, with an empty cache: only the provider knows the user.
    let mut fresh = spawn_app_with(upstream.clone(), |_| {}).await;
    assert_eq!(fresh.create_user("customer-1").await, created);
    assert_eq!(upstream.sandbox.user_count(), 1);
    // Remembered now: a further retry reads it back without a POST.
    assert_eq!(fresh.create_user("customer-1").await, created);

    let mut other = new_user("customer-1");
    other.name.as_mut().unwrap().family_name = "Jones".into();
    let mut another = spawn_app_with(upstream, |_| {}).await;
    let status = another.client.create_user(other).await.unwrap_err();
    assert_status(&status, Code::AlreadyExists, "USER_ALREADY_EXISTS");
    assert_eq!(error_info(&status).metadata["upstream_error"], "uniqueness");
}

/// A token set from a code exchange for `user`.
async fn token_set(app: &mut TestApp, user: &str) -> pb::TokenSet {
    let code = authorization_code(
        &app.upstream,
        &[
            ("redirect_uri", REDIRECT_URI),
            ("scope", "openid"),
            ("sub", user),
        ],
    )
    .await;
    app.client
        .exchange_authorization_code(pb::ExchangeAuthorizationCodeRequest {
            provider: String::new(),
            code,
            redirect_uri: REDIRECT_URI.into(),
            code_verifier: String::new(),
            nonce: String::new(),
            sub: user.into(),
            state: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token_set
        .unwrap()
}

#[tokio::test]
async fn a_revoked_refresh_token_no_longer_refreshes() {
    let mut app = spawn_app().await;
    let user = app.create_user("customer-1").await;
    let set = token_set(&mut app, &user).await;
    app.client
        .revoke_token(revoke(&set.refresh_token, pb::TokenTypeHint::RefreshToken))
        .await
        .unwrap();
    assert_eq!(app.sandbox().revocation_requests(), 1);
    let status = app
        .client
        .refresh_token(pb::RefreshTokenRequest {
            provider: String::new(),
            refresh_token: set.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "UPSTREAM_REJECTED_REQUEST");
    assert_eq!(
        error_info(&status).metadata["upstream_error"],
        "invalid_grant"
    );
    // Revoking it again, or a token the provider never issued, succeeds (RFC 7009 §2.2).
    for token in [set.refresh_token.as_str(), "never-issued"] {
        app.client
            .revoke_token(revoke(token, pb::TokenTypeHint::Unspecified))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_revoked_access_token_is_dropped_from_every_replicas_cache() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut a = spawn_app_with(upstream.clone(), |c| use_redis(c, &redis)).await;
    let mut b = spawn_app_with(upstream.clone(), |c| use_redis(c, &redis)).await;
    let (user, widget) = user_with_token(&mut a, "customer-1").await;
    assert_eq!(b.widget_token(&user).await.unwrap(), widget);
    a.client
        .revoke_token(revoke(&widget.access_token, pb::TokenTypeHint::AccessToken))
        .await
        .unwrap();
    assert_ne!(a.widget_token(&user).await.unwrap(), widget);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.widget_token(&user).await.unwrap() == widget {
        assert!(
            Instant::now() < deadline,
            "b kept serving the revoked token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn revocation_failures_are_mapped_and_never_show_the_token() {
    let mut app = spawn_app().await;
    let token = "secret-refresh-token-4c1d";
    let cases = [
        (
            Fault::OAuth {
                status: 400,
                error: "unsupported_token_type",
            },
            Code::InvalidArgument,
            "UPSTREAM_REJECTED_REQUEST",
        ),
        (
            Fault::OAuth {
                status: 401,
                error: "invalid_client",
            },
            Code::FailedPrecondition,
            "UPSTREAM_REJECTED_CREDENTIALS",
        ),
    ];
    for (fault, code, reason) in cases {
        app.sandbox().fail_next(Endpoint::Revocation, fault);
        let status = app
            .client
            .revoke_token(revoke(token, pb::TokenTypeHint::RefreshToken))
            .await
            .unwrap_err();
        assert_status(&status, code, reason);
        assert!(!status.message().contains(token), "{status:?}");
    }
    // 503 is retried (revoking is idempotent), then UNAVAILABLE.
    let before = app.sandbox().revocation_requests();
    for _ in 0..3 {
        app.sandbox()
            .fail_next(Endpoint::Revocation, Fault::Status(503));
    }
    let status = app
        .client
        .revoke_token(revoke(token, pb::TokenTypeHint::RefreshToken))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "UPSTREAM_UNAVAILABLE");
    assert!(app.sandbox().revocation_requests() - before > 1, "retried");
}

#[tokio::test]
async fn a_provider_without_a_revocation_endpoint_is_failed_precondition() {
    let upstream = start_upstream_with_moneykit().await;
    let moneykit = moneykit_config(&upstream, ClientAuthMethod::ClientSecretBasic);
    let mut app = spawn_app_with(upstream, |c| {
        c.providers.insert("moneykit".into(), moneykit);
    })
    .await;
    let mut request = revoke("some-token", pb::TokenTypeHint::AccessToken);
    request.provider = "moneykit".into();
    let status = app.client.revoke_token(request).await.unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "NOT_SUPPORTED_BY_PROVIDER",
    );
    let mut request = delete("u1");
    request.provider = "moneykit".into();
    let status = app.client.delete_user(request).await.unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "NOT_SUPPORTED_BY_PROVIDER",
    );
}

#[tokio::test]
async fn every_new_field_is_validated_and_named() {
    let mut app = spawn_app().await;
    for hostile in ["", "..", ".", "a/b", "x.scim", "a?b", &"a".repeat(129)] {
        let status = app.client.delete_user(delete(hostile)).await.unwrap_err();
        assert_invalid(&status, "user_id");
        let status = app
            .client
            .list_user_connections(list_connections(hostile))
            .await
            .unwrap_err();
        assert_invalid(&status, "user_id");
        let status = app
            .client
            .delete_user_connection(delete_connection(hostile, "c1"))
            .await
            .unwrap_err();
        assert_invalid(&status, "user_id");
    }
    for hostile in ["", "..", "a/b", "a%2fb", "a b", &"c".repeat(129)] {
        let status = app
            .client
            .delete_user_connection(delete_connection("u1", hostile))
            .await
            .unwrap_err();
        assert_invalid(&status, "connection_id");
    }
    for size in [-1, 101, i32::MAX, i32::MIN] {
        let status = app.client.list_users(list(size, "", "")).await.unwrap_err();
        assert_invalid(&status, "page_size");
    }
    for external_id in ["a\u{0}b", "line\nbreak", &"e".repeat(129)] {
        let status = app
            .client
            .list_users(list(0, "", external_id))
            .await
            .unwrap_err();
        assert_invalid(&status, "external_id");
    }
    let long = "t".repeat(16 * 1024 + 1);
    for token in ["", "tab\there", long.as_str()] {
        let status = app
            .client
            .revoke_token(revoke(token, pb::TokenTypeHint::Unspecified))
            .await
            .unwrap_err();
        assert_invalid(&status, "token");
    }
    let mut request = revoke("a-token", pb::TokenTypeHint::Unspecified);
    request.token_type_hint = 7;
    let status = app.client.revoke_token(request).await.unwrap_err();
    assert_invalid(&status, "token_type_hint");
    assert_eq!(app.sandbox().users_requests(), 0);
    assert_eq!(app.sandbox().revocation_requests(), 0);
}

const KEY: &str = "reader-key-2b7e";

fn with_key<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let bearer = format!("Bearer {KEY}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    request
}

/// A caller allowed `rpcs` on `providers`, beside the sandbox a SCIM-only
/// provider, "scimonly".
async fn app_for_reader(providers: &[&str], rpcs: &[&str]) -> TestApp {
    let upstream = start_upstream().await;
    let strings = |values: &[&str]| values.iter().map(|v| v.to_string()).collect();
    let scimonly = scim_only(&upstream);
    spawn_app_with(upstream, |config| {
        config.providers.insert("scimonly".into(), scimonly);
        config.access = AccessConfig {
            allow_anonymous: false,
            callers: [(
                "reader".to_owned(),
                CallerConfig {
                    api_key_sha256: vec![sha256_hex(KEY)],
                    client_cert_names: Vec::new(),
                    rpcs: strings(rpcs),
                    providers: strings(providers),
                    scopes: vec!["*".into()],
                    requests_per_second: None,
                    burst: None,
                },
            )]
            .into(),
        };
    })
    .await
}

#[tokio::test]
async fn a_caller_whose_policy_lacks_the_rpc_is_permission_denied() {
    let mut app = app_for_reader(&["*"], &["GetUser"]).await;
    let client = &mut app.client;
    let statuses = [
        (
            "DeleteUser",
            client.delete_user(with_key(delete("u1"))).await,
        ),
        (
            "ListUsers",
            client
                .list_users(with_key(list(0, "", "")))
                .await
                .map(|_| tonic::Response::new(pb::DeleteUserResponse {})),
        ),
        (
            "ListUserConnections",
            client
                .list_user_connections(with_key(list_connections("u1")))
                .await
                .map(|_| tonic::Response::new(pb::DeleteUserResponse {})),
        ),
        (
            "DeleteUserConnection",
            client
                .delete_user_connection(with_key(delete_connection("u1", "c1")))
                .await
                .map(|_| tonic::Response::new(pb::DeleteUserResponse {})),
        ),
        (
            "RevokeToken",
            client
                .revoke_token(with_key(revoke("t", pb::TokenTypeHint::Unspecified)))
                .await
                .map(|_| tonic::Response::new(pb::DeleteUserResponse {})),
        ),
    ];
    for (rpc, result) in statuses {
        let status = result.expect_err(rpc);
        assert_status(&status, Code::PermissionDenied, "PERMISSION_DENIED");
        let info = error_info(&status);
        assert_eq!(info.metadata["refused"], "rpc", "{rpc}");
        assert_eq!(info.metadata["rpc"], rpc);
    }
    assert_eq!(app.sandbox().users_requests(), 0);
    assert_eq!(app.sandbox().revocation_requests(), 0);
}

#[tokio::test]
async fn a_caller_whose_policy_lacks_the_provider_is_permission_denied() {
    let mut app = app_for_reader(&["scimonly"], &["*"]).await;
    let mut request = delete("u1");
    request.provider = "sandbox".into();
    let status = app.client.delete_user(with_key(request)).await.unwrap_err();
    assert_status(&status, Code::PermissionDenied, "PERMISSION_DENIED");
    assert_eq!(error_info(&status).metadata["refused"], "provider");
    let mut request = revoke("t", pb::TokenTypeHint::Unspecified);
    request.provider = "sandbox".into();
    let status = app
        .client
        .revoke_token(with_key(request))
        .await
        .unwrap_err();
    assert_eq!(error_info(&status).metadata["refused"], "provider");
    let mut request = list(0, "", "");
    request.provider = "sandbox".into();
    let status = app.client.list_users(with_key(request)).await.unwrap_err();
    assert_eq!(error_info(&status).metadata["refused"], "provider");
    let mut request = list_connections("u1");
    request.provider = "sandbox".into();
    let status = app
        .client
        .list_user_connections(with_key(request))
        .await
        .unwrap_err();
    assert_eq!(error_info(&status).metadata["refused"], "provider");
    let mut request = delete_connection("u1", "c1");
    request.provider = "sandbox".into();
    let status = app
        .client
        .delete_user_connection(with_key(request))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "PERMISSION_DENIED");
    assert_eq!(error_info(&status).metadata["refused"], "provider");
    assert_eq!(app.sandbox().users_requests(), 0);
    assert_eq!(app.sandbox().revocation_requests(), 0);
    assert_eq!(app.sandbox().scim_requests(), 0);
}

#[tokio::test]
async fn a_user_under_another_subtenant_is_not_returned_as_the_one_asked_for() {
    let upstream = start_upstream().await;
    let under = |provider_id: Option<&str>| {
        let mut request = new_user("customer-1");
        request.subtenant = provider_id.map(|id| pb::Subtenant {
            name: "Branch".into(),
            provider_id: id.into(),
        });
        request
    };
    let mut first = spawn_app_with(upstream.clone(), |_| {}).await;
    let created = first
        .client
        .create_user(under(Some("sub-a")))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    // The replica that remembers the user, and a fresh one that finds it
    // by external id after the 409: the same name and email under another
    // subtenant (or none) is not the user asked for.
    let mut fresh = spawn_app_with(upstream.clone(), |_| {}).await;
    for app in [&mut first, &mut fresh] {
        for other in [Some("sub-b"), None] {
            let status = app.client.create_user(under(other)).await.unwrap_err();
            assert_status(&status, Code::AlreadyExists, "USER_ALREADY_EXISTS");
        }
    }
    let retried = fresh
        .client
        .create_user(under(Some("sub-a")))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(retried.id, created.id);
    assert_eq!(upstream.sandbox.user_count(), 1);
}

/// The revocation endpoint has a breaker of its own: callers revoking while
/// it fails must not open the one that token issuance goes through.
#[tokio::test]
async fn a_failing_revocation_endpoint_does_not_stop_token_issuance() {
    let mut app = spawn_app_with(start_upstream().await, |c| {
        let provider = c.providers.get_mut("sandbox").unwrap();
        provider.retry_max_attempts = 1;
        provider.breaker_failure_threshold = 2;
    })
    .await;
    let user = app.create_user("customer-1").await;
    for _ in 0..10 {
        app.sandbox()
            .fail_next(Endpoint::Revocation, Fault::Status(503));
    }
    for reason in [
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_CIRCUIT_OPEN",
    ] {
        let status = app
            .client
            .revoke_token(revoke("some-token", pb::TokenTypeHint::Unspecified))
            .await
            .unwrap_err();
        assert_eq!(error_info(&status).reason, reason, "{status:?}");
    }
    app.widget_token(&user).await.unwrap();
}

/// The sizes of the per-user token indexes in Redis.
fn token_index_sizes(redis: &RedisServer) -> Vec<usize> {
    let mut connection = redis.client().get_connection().unwrap();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("bankauth:*:user-tokens:*")
        .query(&mut connection)
        .unwrap();
    names
        .iter()
        .map(|name| {
            let kind: String = redis::cmd("TYPE").arg(name).query(&mut connection).unwrap();
            let count = if kind == "zset" { "ZCARD" } else { "SCARD" };
            redis::cmd(count).arg(name).query(&mut connection).unwrap()
        })
        .collect()
}

/// An active user's tokens are refreshed for ever, each refresh pushing
/// the index's expiry out: the index must drop the tokens no longer served
/// rather than grow by one per refresh.
#[tokio::test]
async fn a_users_token_index_holds_only_live_tokens_however_often_they_are_refreshed() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| use_redis(c, &redis)).await;
    let user = app.create_user("customer-1").await;
    // A long-lived token keeps the index alive…
    app.data_token(&user, &["accounts:read"]).await.unwrap();
    // …while short-lived ones come and go.
    app.sandbox().set_token_lifetime(Duration::from_secs(3));
    for _ in 0..5 {
        app.client
            .issue_widget_token(pb::IssueWidgetTokenRequest {
                provider: String::new(),
                user_id: user.clone(),
                force_refresh: true,
            })
            .await
            .unwrap();
    }
    assert_eq!(token_index_sizes(&redis), [6]);
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let live = app.widget_token(&user).await.unwrap();
    assert_eq!(
        token_index_sizes(&redis),
        [2],
        "the data token and the live widget token"
    );

    app.client.delete_user(delete(&user)).await.unwrap();
    assert!(token_index_sizes(&redis).is_empty());
    assert_ne!(app.widget_token(&user).await.ok(), Some(live));
}

/// Redis unreachable during DeleteUser: the deletion stands, the caller is
/// told the cache could not be, and a retry (NOT_FOUND) still sweeps.
#[tokio::test]
async fn a_delete_while_redis_is_down_says_so_and_a_retry_sweeps_every_replica() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut a = spawn_app_with(upstream.clone(), |c| use_redis(c, &redis)).await;
    let mut b = spawn_app_with(upstream.clone(), |c| use_redis(c, &redis)).await;
    let (user, widget) = user_with_token(&mut a, "customer-1").await;
    assert_eq!(b.widget_token(&user).await.unwrap(), widget);
    // The SCIM token DeleteUser reads the user with, cached beforehand.
    a.client
        .get_user(pb::GetUserRequest {
            provider: String::new(),
            user_id: user.clone(),
        })
        .await
        .unwrap();

    redis.pause();
    let status = a.client.delete_user(delete(&user)).await.unwrap_err();
    redis.resume();
    assert_status(&status, Code::Unavailable, "SHARED_CACHE_UNAVAILABLE");
    assert!(status.message().contains("deleted"), "{status:?}");
    assert!(!upstream.sandbox.has_user(&user), "the deletion stands");

    let status = a.client.delete_user(delete(&user)).await.unwrap_err();
    assert_status(&status, Code::NotFound, "USER_NOT_FOUND");
    let status = until_dropped(&mut b, &user, &widget).await;
    assert_status(&status, Code::InvalidArgument, "UPSTREAM_REJECTED_REQUEST");
}

/// Redis restarted empty while a replica held a deleted user's token in
/// process: the index is gone, so the retried DeleteUser announces nothing.
/// The replica lost the invalidation channel meanwhile, so once it is back
/// it must stop trusting what it holds, not serve it for memory_ttl_secs.
#[tokio::test]
async fn a_replica_that_lost_the_invalidation_channel_drops_what_it_may_have_missed() {
    let mut redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut a = spawn_app_with(upstream.clone(), |c| use_redis(c, &redis)).await;
    let mut b = spawn_app_with(upstream.clone(), |c| use_redis(c, &redis)).await;
    let (user, widget) = user_with_token(&mut a, "customer-1").await;
    assert_eq!(b.widget_token(&user).await.unwrap(), widget);

    redis.kill();
    let status = a.client.delete_user(delete(&user)).await.unwrap_err();
    assert_status(&status, Code::Unavailable, "SHARED_CACHE_UNAVAILABLE");
    assert!(!upstream.sandbox.has_user(&user));
    redis.restart();
    let status = a.client.delete_user(delete(&user)).await.unwrap_err();
    assert_status(&status, Code::NotFound, "USER_NOT_FOUND");

    let status = until_dropped(&mut b, &user, &widget).await;
    assert_status(&status, Code::InvalidArgument, "UPSTREAM_REJECTED_REQUEST");
}
