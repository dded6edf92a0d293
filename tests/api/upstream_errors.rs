//! Each upstream failure class maps to its gRPC code, with the provider's
//! own code in ErrorInfo; failures are never cached. Retries and the
//! circuit breaker are off here (see `resilience` for those), so each
//! injected fault is what the caller sees.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::{IntoResponse, Response};
use bankauth::config::Config;
use bankauth::proto::v1 as pb;
use bankauth::provider::{SigningAlgorithm, SigningKey};
use bankauth::sandbox::{Endpoint, Fault, RegisteredClient, SandboxOptions, client_jwks};
use bankauth::server::Application;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{
    TestApp, error_info, free_port, spawn_app, spawn_app_with, start_upstream, start_upstream_with,
};

/// bankauth that reports each upstream failure as it comes.
async fn spawn_app_without_retries() -> TestApp {
    spawn_app_with(start_upstream().await, without_retries).await
}

fn without_retries(config: &mut Config) {
    let provider = config.providers.get_mut("sandbox").unwrap();
    provider.retry_max_attempts = 1;
    provider.breaker_failure_threshold = 1_000;
}

#[tokio::test]
async fn token_endpoint_failures_map_to_codes() {
    let mut app = spawn_app_without_retries().await;
    let user = app.create_user("customer-1").await;
    let cases = [
        (
            Fault::OAuth {
                status: 400,
                error: "invalid_scope",
            },
            Code::InvalidArgument,
            "invalid_scope",
        ),
        (
            Fault::OAuth {
                status: 400,
                error: "invalid_request",
            },
            Code::InvalidArgument,
            "invalid_request",
        ),
        (
            Fault::OAuth {
                status: 401,
                error: "invalid_client",
            },
            Code::FailedPrecondition,
            "invalid_client",
        ),
        (
            Fault::OAuth {
                status: 400,
                error: "unauthorized_client",
            },
            Code::FailedPrecondition,
            "unauthorized_client",
        ),
        (
            Fault::RateLimited {
                retry_after_secs: 7,
            },
            Code::ResourceExhausted,
            "rate_limited",
        ),
        (Fault::Status(503), Code::Unavailable, "http_503"),
        (Fault::Status(500), Code::Unavailable, "http_500"),
        (Fault::Garbage, Code::Unavailable, "http_200"),
        (Fault::Oversized(10 << 20), Code::Unavailable, "http_200"),
    ];
    for (fault, code, upstream_error) in cases {
        app.sandbox().fail_next(Endpoint::Token, fault.clone());
        let status = app.widget_token(&user).await.unwrap_err();
        assert_eq!(status.code(), code, "{fault:?}: {status:?}");
        let info = error_info(&status);
        assert_eq!(info.domain, "bankauth.dev");
        assert_eq!(info.metadata["provider"], "sandbox");
        assert_eq!(info.metadata["upstream_error"], upstream_error, "{fault:?}");
    }
}

#[tokio::test]
async fn rejected_credentials_say_so() {
    let mut app = spawn_app().await;
    app.sandbox().fail_next(
        Endpoint::Token,
        Fault::OAuth {
            status: 401,
            error: "invalid_client",
        },
    );
    let status = app.widget_token("u1").await.unwrap_err();
    assert!(
        status
            .message()
            .contains("rejected this service's credentials"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_key_the_provider_does_not_know_is_rejected_by_real_verification() {
    let upstream = start_upstream_with(|client| {
        let (other_key, _) = SigningKey::generate(SigningAlgorithm::RS256).unwrap();
        SandboxOptions::new(vec![RegisteredClient {
            jwks: client_jwks(&other_key),
            ..client
        }])
    })
    .await;
    let mut app = spawn_app_with(upstream, |_| {}).await;
    let status = app
        .client
        .create_user(crate::helpers::new_user("c"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        error_info(&status).metadata["upstream_error"],
        "invalid_client"
    );
}

#[tokio::test]
async fn a_rate_limit_past_the_callers_deadline_carries_the_retry_delay() {
    let mut app = spawn_app().await;
    app.sandbox().fail_next(
        Endpoint::Token,
        Fault::RateLimited {
            retry_after_secs: 7,
        },
    );
    let mut request = tonic::Request::new(pb::IssueWidgetTokenRequest {
        provider: String::new(),
        user_id: "u1".into(),
        force_refresh: false,
    });
    request.set_timeout(Duration::from_secs(3));
    let status = app.client.issue_widget_token(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status.get_error_details().retry_info().cloned().unwrap();
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(7)));
    assert_eq!(
        app.sandbox().token_requests(),
        1,
        "no retry that would end past the caller's deadline"
    );
}

#[tokio::test]
async fn a_provider_slower_than_the_timeout_is_unavailable() {
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| {
        without_retries(c);
        c.providers.get_mut("sandbox").unwrap().request_timeout_ms = 300;
    })
    .await;
    app.sandbox()
        .fail_next(Endpoint::Token, Fault::Stall(Duration::from_secs(3)));
    let status = app.widget_token("u1").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("timed out"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| {
        c.providers.get_mut("sandbox").unwrap().token_url = Some(
            format!("http://127.0.0.1:{}/oidc/token", free_port())
                .parse()
                .unwrap(),
        );
    })
    .await;
    let status = app.widget_token("u1").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("could not connect"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn scim_failures_map_to_codes() {
    let mut app = spawn_app_without_retries().await;
    let cases = [
        (Fault::Status(502), Code::Unavailable),
        (
            Fault::RateLimited {
                retry_after_secs: 1,
            },
            Code::ResourceExhausted,
        ),
        (Fault::Garbage, Code::Unavailable),
    ];
    for (fault, code) in cases {
        app.sandbox().fail_next(Endpoint::Scim, fault.clone());
        let status = app
            .client
            .create_user(crate::helpers::new_user("c"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{fault:?}: {status:?}");
    }
    assert_eq!(app.sandbox().user_count(), 0);
}

#[tokio::test]
async fn failures_are_not_cached() {
    let mut app = spawn_app_without_retries().await;
    let user = app.create_user("customer-1").await;
    app.sandbox().fail_next(Endpoint::Token, Fault::Status(503));
    app.widget_token(&user).await.unwrap_err();
    let before = app.sandbox().token_requests();
    app.widget_token(&user).await.unwrap();
    assert_eq!(app.sandbox().token_requests(), before + 1);
}

#[tokio::test]
async fn an_unknown_user_is_refused_by_the_provider() {
    let mut app = spawn_app().await;
    let status = app
        .widget_token("000000000000000000000000")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        error_info(&status).metadata["upstream_error"],
        "invalid_request"
    );
}

/// A loopback token endpoint answering every request with `answer()`;
/// returns its URL and how many requests it received.
async fn token_endpoint(
    answer: impl Fn() -> Response + Clone + Send + Sync + 'static,
) -> (url::Url, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move || async move {
            counter.fetch_add(1, Ordering::SeqCst);
            answer()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

#[tokio::test]
async fn a_redirect_from_the_token_endpoint_is_not_followed_nor_retried() {
    let upstream = start_upstream().await;
    let sandbox_token_url = upstream.sandbox.issuer().join("oidc/token").unwrap();
    let (token_url, received) = token_endpoint(move || {
        let location = [(LOCATION, sandbox_token_url.to_string())];
        (StatusCode::TEMPORARY_REDIRECT, location).into_response()
    })
    .await;
    let mut app = spawn_app_with(upstream, |c| {
        c.providers.get_mut("sandbox").unwrap().token_url = Some(token_url);
    })
    .await;
    let user = app.sandbox().seed_users(1).remove(0);
    let status = app.widget_token(&user).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .contains("redirect, which bankauth does not follow"),
        "{}",
        status.message()
    );
    assert_eq!(error_info(&status).metadata["upstream_error"], "http_307");
    assert_eq!(
        app.sandbox().token_requests(),
        0,
        "the redirect's target received nothing"
    );
    assert_eq!(received.load(Ordering::SeqCst), 1, "not retried");
}

#[tokio::test]
async fn a_discovered_http_endpoint_off_loopback_stops_startup() {
    let upstream = start_upstream().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer: url::Url = format!("http://{}/oidc", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let document = serde_json::json!({
        "issuer": issuer.as_str(),
        "token_endpoint": "http://identity.example.com/oidc/token",
        "jwks_uri": format!("{issuer}/certs"),
    });
    let app = axum::Router::new().route(
        "/oidc/.well-known/openid-configuration",
        axum::routing::get(move || async move { axum::Json(document) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut config = upstream.config("127.0.0.1:0".parse().unwrap());
    config.providers.get_mut("sandbox").unwrap().issuer = Some(issuer);
    let error = match Application::build(config.clone()).await {
        Err(error) => error.to_string(),
        Ok(_) => panic!("startup accepted an http:// token endpoint"),
    };
    assert!(error.contains("providers.sandbox.issuer"), "{error}");
    assert!(error.contains("token_endpoint is http://"), "{error}");
    assert!(error.contains("allow_insecure_http"), "{error}");

    config
        .providers
        .get_mut("sandbox")
        .unwrap()
        .allow_insecure_http = true;
    assert!(Application::build(config).await.is_ok());
}

#[tokio::test]
async fn an_expiry_in_milliseconds_is_unavailable_saying_so() {
    let (token_url, _) = token_endpoint(|| {
        let millis = (time::OffsetDateTime::now_utc().unix_timestamp() + 3600) * 1000;
        let body = serde_json::json!({"access_token": "opaque", "expires_at": millis});
        axum::Json(body).into_response()
    })
    .await;
    let mut app = spawn_app_with(start_upstream().await, |c| {
        without_retries(c);
        c.providers.get_mut("sandbox").unwrap().token_url = Some(token_url);
    })
    .await;
    let status = app.widget_token("u1").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .contains("longer than max_token_lifetime_secs"),
        "{}",
        status.message()
    );
}
