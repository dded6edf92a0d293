//! The cache at scale: bursts make one upstream call per key, in one process
//! and across replicas; no caller ever gets another's token; tokens refresh
//! ahead of expiry; a caller giving up or a crashed lock holder harms no one.

use std::collections::HashSet;
use std::time::Duration;

use bankauth::proto::v1 as pb;
use bankauth::proto::v1::invalidate_token_request::Token;
use bankauth::sandbox::{Endpoint, Fault};
use futures::future::join_all;
use jsonwebtoken::dangerous::insecure_decode_claims;
use serde::Deserialize;

use crate::helpers::{
    RedisServer, TestApp, error_info, sample, spawn_app, spawn_app_with, start_upstream,
    with_metrics,
};

#[derive(Deserialize)]
struct Claims {
    sub: String,
    scope: String,
}

fn claims(token: &pb::AccessToken) -> Claims {
    insecure_decode_claims(&token.access_token).unwrap()
}

/// Holds every token request at the sandbox long enough for a burst to pile up.
fn stall_next(app: &TestApp, count: usize) {
    for _ in 0..count {
        app.sandbox()
            .fail_next(Endpoint::Token, Fault::Stall(Duration::from_millis(300)));
    }
}

async fn widget_burst(app: &TestApp, user: &str, callers: usize) -> Vec<pb::AccessToken> {
    let calls = (0..callers).map(|_| {
        let mut client = app.client.clone();
        let user = user.to_owned();
        async move {
            client
                .issue_widget_token(pb::IssueWidgetTokenRequest {
                    provider: String::new(),
                    user_id: user,
                    force_refresh: false,
                })
                .await
                .unwrap()
                .into_inner()
                .token
                .unwrap()
        }
    });
    join_all(calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_identical_misses_make_one_upstream_call() {
    let mut app = spawn_app_with(start_upstream().await, with_metrics).await;
    let user = app.create_user("customer-1").await;
    let before = app.sandbox().token_requests();
    stall_next(&app, 1);
    let tokens = widget_burst(&app, &user, 1_000).await;
    assert_eq!(app.sandbox().token_requests(), before + 1);
    assert!(tokens.iter().all(|t| t == &tokens[0]));
    // Those that joined the one call, not already served from the cache.
    let joined = sample(
        &app.scrape().await,
        "bankauth_coalesced_requests_total",
        &[("provider", "sandbox")],
    );
    assert!(
        (1.0..1_000.0).contains(&joined),
        "{joined} requests counted as coalesced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_make_one_upstream_call() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut a = spawn_app_with(upstream.clone(), |c| crate::helpers::use_redis(c, &redis)).await;
    let b = spawn_app_with(upstream, |c| crate::helpers::use_redis(c, &redis)).await;
    let user = a.create_user("customer-1").await;
    let before = a.sandbox().token_requests();
    stall_next(&a, 2);
    let (from_a, from_b) = tokio::join!(widget_burst(&a, &user, 200), widget_burst(&b, &user, 200));
    assert_eq!(a.sandbox().token_requests(), before + 1);
    assert!(from_a.iter().chain(&from_b).all(|t| t == &from_a[0]));
}

/// `replicas` bankauth processes on one Redis, `rounds` times a new user
/// asked for a widget token by 400 concurrent callers spread over them:
/// every round, one provider call and one token for everyone.
async fn replicas_fill_each_key_once(replicas: usize, rounds: usize) {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut apps = Vec::new();
    for _ in 0..replicas {
        apps.push(spawn_app_with(upstream.clone(), |c| crate::helpers::use_redis(c, &redis)).await);
    }
    let users = apps[0].sandbox().seed_users(rounds);
    for (round, user) in users.iter().enumerate() {
        let before = apps[0].sandbox().token_requests();
        let bursts = apps
            .iter()
            .map(|app| widget_burst(app, user, 400_usize.div_ceil(replicas)));
        let tokens: Vec<_> = join_all(bursts).await.into_iter().flatten().collect();
        assert_eq!(
            apps[0].sandbox().token_requests(),
            before + 1,
            "round {round}: {replicas} replicas made more than one provider call"
        );
        assert!(tokens.iter().all(|t| t == &tokens[0]), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_make_exactly_one_provider_call_per_key_round_after_round() {
    replicas_fill_each_key_once(2, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_make_exactly_one_provider_call_per_key_round_after_round() {
    replicas_fill_each_key_once(3, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_requests_never_get_another_users_or_scopes_token() {
    let mut app = spawn_app().await;
    let mut users = Vec::new();
    for i in 0..50 {
        users.push(app.create_user(&format!("customer-{i}")).await);
    }
    let before = app.sandbox().token_requests();
    let scope_sets: [&[&str]; 3] = [
        &["accounts:read"],
        &["transactions:read:all", "accounts:read"],
        &["categories:read"],
    ];
    let calls = (0..1_000).map(|i| {
        let mut client = app.client.clone();
        let user = users[i % 50].clone();
        let scopes: Vec<String> = scope_sets[(i / 50) % 3]
            .iter()
            .map(|s| s.to_string())
            .collect();
        async move {
            let token = client
                .issue_data_token(pb::IssueDataTokenRequest {
                    provider: String::new(),
                    user_id: user.clone(),
                    scopes: scopes.clone(),
                    force_refresh: false,
                })
                .await
                .unwrap()
                .into_inner()
                .token
                .unwrap();
            (user, scopes, token)
        }
    });
    let results = join_all(calls).await;
    for (user, scopes, token) in &results {
        let claims = claims(token);
        assert_eq!(&claims.sub, user);
        let mut wanted: Vec<&str> = scopes.iter().map(String::as_str).collect();
        wanted.sort();
        assert_eq!(claims.scope, wanted.join(" "));
    }
    assert_eq!(app.sandbox().token_requests(), before + 150);
    let distinct: HashSet<&str> = results
        .iter()
        .map(|(_, _, t)| t.access_token.as_str())
        .collect();
    assert_eq!(distinct.len(), 150);
}

/// Waits (bounded) until the sandbox has seen `count` token requests.
async fn wait_for_token_requests(app: &TestApp, count: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.sandbox().token_requests() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refresh happened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An app whose tokens live 4 s and are refreshed after 1 s (and served until 3.6 s).
async fn refreshing_app() -> (TestApp, String) {
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| c.cache.refresh_window = [0.25, 0.25]).await;
    let user = app.create_user("customer-1").await;
    app.sandbox().set_token_lifetime(Duration::from_secs(4));
    (app, user)
}

#[tokio::test]
async fn a_token_is_refreshed_ahead_of_expiry_while_callers_keep_the_cached_one() {
    let (mut app, user) = refreshing_app().await;
    let first = app.widget_token(&user).await.unwrap();
    let fetched = app.sandbox().token_requests();
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    // Due for refresh: the caller is answered from the cache at once…
    assert_eq!(app.widget_token(&user).await.unwrap(), first);
    // …and the refresh happens behind it.
    wait_for_token_requests(&app, fetched + 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let current = app.widget_token(&user).await.unwrap();
        if current != first {
            assert!(current.expire_time.unwrap().seconds >= first.expire_time.unwrap().seconds);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refreshed token never replaced the old one"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.sandbox().token_requests(), fetched + 1);
}

#[tokio::test]
async fn a_failed_refresh_keeps_serving_the_valid_token() {
    let (mut app, user) = refreshing_app().await;
    let first = app.widget_token(&user).await.unwrap();
    let fetched = app.sandbox().token_requests();
    // Every attempt of the refresh (3 by default) fails.
    for _ in 0..3 {
        app.sandbox().fail_next(Endpoint::Token, Fault::Status(503));
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    assert_eq!(app.widget_token(&user).await.unwrap(), first);
    wait_for_token_requests(&app, fetched + 3).await;
    // The refresh failed; the next one waits, and until then callers get the valid token.
    for _ in 0..10 {
        assert_eq!(app.widget_token(&user).await.unwrap(), first);
    }
    assert_eq!(app.sandbox().token_requests(), fetched + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_giving_up_mid_fetch_does_not_fail_the_others() {
    // Every RPC gets 1 s; the provider takes 1.2 s for the first token.
    let mut app = spawn_app_with(start_upstream().await, |c| {
        c.server.request_timeout_ms = 1_000;
    })
    .await;
    let user = app.create_user("customer-1").await;
    let before = app.sandbox().token_requests();
    app.sandbox()
        .fail_next(Endpoint::Token, Fault::Stall(Duration::from_millis(1_200)));

    // The first caller would wait 5 s, so the server's deadline is what
    // cuts it off, at 1 s, while the others still wait on its fetch.
    let mut impatient = tonic::Request::new(pb::IssueWidgetTokenRequest {
        provider: String::new(),
        user_id: user.clone(),
        force_refresh: false,
    });
    impatient.set_timeout(Duration::from_secs(5));
    let mut first = app.client.clone();
    let leader = tokio::spawn(async move { first.issue_widget_token(impatient).await });
    // The others join at 500 ms and wait about 700 ms, within their 1 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let patient = widget_burst(&app, &user, 10).await;

    let status = leader.await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert_eq!(error_info(&status).reason, "DEADLINE_EXCEEDED");
    assert!(patient.iter().all(|t| t == &patient[0]));
    assert_eq!(app.sandbox().token_requests(), before + 1);
}

#[tokio::test]
async fn a_crashed_lock_holder_stalls_others_only_until_its_lock_expires() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| crate::helpers::use_redis(c, &redis)).await;
    let user = app.create_user("customer-1").await;
    let before = app.sandbox().token_requests();

    // Another replica took the fill lock and died without releasing it.
    let key = crate::helpers::widget_key(app.sandbox(), &user);
    let _: () = redis::cmd("SET")
        .arg(key.lock_name())
        .arg("crashed-replica")
        .arg("PX")
        .arg(1_000)
        .query(&mut redis.client().get_connection().unwrap())
        .unwrap();

    let token = app.widget_token(&user).await.unwrap();
    assert_eq!(claims(&token).sub, user);
    assert_eq!(app.sandbox().token_requests(), before + 1);
    let lock: Option<String> = redis::cmd("GET")
        .arg(key.lock_name())
        .query(&mut redis.client().get_connection().unwrap())
        .unwrap();
    assert_eq!(lock, None, "the new holder released its lock");
}

#[tokio::test]
async fn an_invalidated_token_is_refetched_by_every_replica_but_a_stale_one_evicts_nothing() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut a = spawn_app_with(upstream.clone(), |c| crate::helpers::use_redis(c, &redis)).await;
    let mut b = spawn_app_with(upstream, |c| crate::helpers::use_redis(c, &redis)).await;
    let user = a.create_user("customer-1").await;
    let revoked = a.widget_token(&user).await.unwrap();
    assert_eq!(
        b.widget_token(&user).await.unwrap(),
        revoked,
        "b holds it in process too"
    );

    assert!(a.invalidate(&revoked.access_token, false).await);
    let fresh = a.widget_token(&user).await.unwrap();
    assert_ne!(fresh, revoked);
    // b drops its in-process copy when it hears of the invalidation.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.widget_token(&user).await.unwrap() == revoked {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b kept serving the revoked token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.widget_token(&user).await.unwrap(), fresh);

    // Invalidating the old token again (late, from another caller) keeps the fresh one.
    let calls = a.sandbox().token_requests();
    assert!(!b.invalidate(&revoked.access_token, true).await);
    assert_eq!(a.widget_token(&user).await.unwrap(), fresh);
    assert_eq!(b.widget_token(&user).await.unwrap(), fresh);
    assert_eq!(a.sandbox().token_requests(), calls);
}

#[tokio::test]
async fn invalidation_drops_only_the_named_providers_token() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let app = spawn_app_with(upstream, |c| {
        crate::helpers::use_redis(c, &redis);
        let sandbox = c.providers["sandbox"].clone();
        c.providers.insert("other".into(), sandbox);
    })
    .await;
    let user = app.sandbox().seed_users(1).remove(0);
    let mut client = app.client.clone();
    let widget = |provider: &str| {
        let request = pb::IssueWidgetTokenRequest {
            provider: provider.into(),
            user_id: user.clone(),
            force_refresh: false,
        };
        let mut client = app.client.clone();
        async move {
            let response = client.issue_widget_token(request).await.unwrap();
            response.into_inner().token.unwrap()
        }
    };
    let token = widget("sandbox").await;
    let calls = app.sandbox().token_requests();
    // Rights over "other" do not reach "sandbox"'s token, even by its hash.
    for form in [
        Token::AccessToken(token.access_token.clone()),
        Token::AccessTokenSha256(crate::helpers::sha256_hex(&token.access_token)),
    ] {
        let invalidated = client
            .invalidate_token(pb::InvalidateTokenRequest {
                provider: "other".into(),
                token: Some(form),
            })
            .await
            .unwrap()
            .into_inner()
            .invalidated;
        assert!(!invalidated, "another provider's token was dropped");
    }
    assert_eq!(widget("sandbox").await, token);
    assert_eq!(app.sandbox().token_requests(), calls);
}

#[tokio::test]
async fn an_invalidation_redis_cannot_record_is_unavailable_not_reported_done() {
    let mut redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| {
        crate::helpers::use_redis(c, &redis);
        c.cache.redis_timeout_ms = 200;
    })
    .await;
    let user = app.sandbox().seed_users(1).remove(0);
    let revoked = app.widget_token(&user).await.unwrap();
    redis.kill();
    // Other replicas would still read the token from Redis once it is
    // back: the caller must hear that the invalidation did not happen.
    let status = app
        .client
        .invalidate_token(pb::InvalidateTokenRequest {
            provider: String::new(),
            token: Some(Token::AccessToken(revoked.access_token.clone())),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        crate::helpers::error_info(&status).reason,
        "SHARED_CACHE_UNAVAILABLE"
    );
}

#[tokio::test]
async fn invalidation_without_redis_drops_the_in_process_token_once() {
    let mut app = spawn_app().await;
    let user = app.create_user("customer-1").await;
    let other = app.create_user("customer-2").await;
    let revoked = app.widget_token(&user).await.unwrap();
    let kept = app.widget_token(&other).await.unwrap();
    let calls = app.sandbox().token_requests();

    assert!(app.invalidate(&revoked.access_token, true).await);
    assert!(!app.invalidate(&revoked.access_token, false).await);
    assert_ne!(app.widget_token(&user).await.unwrap(), revoked);
    assert_eq!(app.widget_token(&other).await.unwrap(), kept);
    assert_eq!(app.sandbox().token_requests(), calls + 1);
}

#[tokio::test]
async fn force_refresh_replaces_the_cached_token() {
    let mut app = spawn_app().await;
    let user = app.create_user("customer-1").await;
    let first = app.widget_token(&user).await.unwrap();
    let calls = app.sandbox().token_requests();
    let forced = app
        .client
        .issue_widget_token(pb::IssueWidgetTokenRequest {
            provider: String::new(),
            user_id: user.clone(),
            force_refresh: true,
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_ne!(forced, first);
    assert_eq!(app.sandbox().token_requests(), calls + 1);
    assert_eq!(app.widget_token(&user).await.unwrap(), forced);
}

#[tokio::test]
async fn invalidation_needs_one_well_formed_form_of_the_token() {
    let mut app = spawn_app().await;
    for (token, field) in [
        (None, "access_token"),
        (Some(Token::AccessToken(String::new())), "access_token"),
        (
            Some(Token::AccessTokenSha256("XYZ".into())),
            "access_token_sha256",
        ),
    ] {
        let status = app
            .client
            .invalidate_token(pb::InvalidateTokenRequest {
                provider: String::new(),
                token,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(crate::helpers::error_info(&status).metadata["field"], field);
    }
}

/// InvalidateTokenRequest before its two forms became a oneof.
#[derive(Clone, PartialEq, prost::Message)]
struct PlainInvalidateTokenRequest {
    #[prost(string, tag = "1")]
    provider: String,
    #[prost(string, tag = "2")]
    access_token: String,
    #[prost(string, tag = "3")]
    access_token_sha256: String,
}

#[test]
fn the_invalidation_oneof_keeps_the_wire_format() {
    use prost::Message;
    let hash = crate::helpers::sha256_hex("t");
    for (plain, token) in [
        (
            PlainInvalidateTokenRequest {
                provider: "p".into(),
                access_token: "t".into(),
                access_token_sha256: String::new(),
            },
            Token::AccessToken("t".into()),
        ),
        (
            PlainInvalidateTokenRequest {
                provider: "p".into(),
                access_token: String::new(),
                access_token_sha256: hash.clone(),
            },
            Token::AccessTokenSha256(hash.clone()),
        ),
    ] {
        let form = pb::InvalidateTokenRequest {
            provider: "p".into(),
            token: Some(token),
        };
        assert_eq!(plain.encode_to_vec(), form.encode_to_vec());
        assert_eq!(
            pb::InvalidateTokenRequest::decode(&*plain.encode_to_vec()).unwrap(),
            form
        );
    }
}
