//! Caller authentication, per-caller policy and rate limits, over real gRPC.

use bankauth::config::{AccessConfig, CallerConfig};
use bankauth::proto::v1 as pb;
use bankauth::server::Application;
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, error_info, sha256_hex, spawn_app_with, start_upstream};

const ADMIN_KEY: &str = "admin-key-7f3a9c";
const WIDGET_KEY: &str = "widget-key-51e0d2";
const REVOKED_KEY: &str = "widget-key-old-0c4b";

fn caller(keys: &[&str], rpcs: &[&str], scopes: &[&str]) -> CallerConfig {
    let strings = |values: &[&str]| values.iter().map(|v| v.to_string()).collect();
    CallerConfig {
        api_key_sha256: keys.iter().map(|key| sha256_hex(key)).collect(),
        client_cert_names: Vec::new(),
        rpcs: strings(rpcs),
        providers: vec!["*".to_owned()],
        scopes: strings(scopes),
        requests_per_second: None,
        burst: None,
    }
}

/// An admin that may do anything, and a web frontend that may only get
/// widget tokens (its previous key, REVOKED_KEY, has been removed).
async fn app_with_callers(configure: impl FnOnce(&mut AccessConfig)) -> TestApp {
    let upstream = start_upstream().await;
    spawn_app_with(upstream, |config| {
        config.access = AccessConfig {
            allow_anonymous: false,
            callers: [
                ("admin".to_owned(), caller(&[ADMIN_KEY], &["*"], &["*"])),
                (
                    "web".to_owned(),
                    caller(
                        &[WIDGET_KEY],
                        &["IssueWidgetToken"],
                        &["widget_authentication"],
                    ),
                ),
            ]
            .into(),
        };
        configure(&mut config.access);
    })
    .await
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    let bearer = format!("Bearer {key}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    request
}

fn widget(user_id: &str) -> pb::IssueWidgetTokenRequest {
    pb::IssueWidgetTokenRequest {
        provider: String::new(),
        user_id: user_id.to_owned(),
        force_refresh: false,
    }
}

fn data(user_id: &str, scopes: &[&str]) -> pb::IssueDataTokenRequest {
    pb::IssueDataTokenRequest {
        provider: String::new(),
        user_id: user_id.to_owned(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        force_refresh: false,
    }
}

async fn create_user(app: &mut TestApp) -> String {
    app.client
        .create_user(with_key(crate::helpers::new_user("customer-1"), ADMIN_KEY))
        .await
        .expect("the admin creates a user")
        .into_inner()
        .user
        .unwrap()
        .id
}

#[tokio::test]
async fn a_request_without_a_valid_key_is_unauthenticated() {
    let mut app = app_with_callers(|_| {}).await;
    let user = create_user(&mut app).await;
    let calls = app.sandbox().token_requests();

    let no_key = app.client.issue_widget_token(widget(&user)).await;
    let wrong_key = app
        .client
        .issue_widget_token(with_key(widget(&user), "not-a-key"))
        .await;
    let revoked_key = app
        .client
        .issue_widget_token(with_key(widget(&user), REVOKED_KEY))
        .await;
    let mut malformed = Request::new(widget(&user));
    malformed.metadata_mut().insert(
        "authorization",
        format!("Basic {WIDGET_KEY}").parse().unwrap(),
    );
    let not_bearer = app.client.issue_widget_token(malformed).await;

    for (answer, key) in [
        (no_key, ""),
        (wrong_key, "not-a-key"),
        (revoked_key, REVOKED_KEY),
        (not_bearer, WIDGET_KEY),
    ] {
        let status = answer.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(error_info(&status).reason, "UNAUTHENTICATED");
        if !key.is_empty() {
            assert!(!status.message().contains(key), "{status:?}");
        }
    }
    assert_eq!(app.sandbox().token_requests(), calls, "nothing was fetched");

    let token = app
        .client
        .issue_widget_token(with_key(widget(&user), WIDGET_KEY))
        .await;
    assert!(token.is_ok(), "{token:?}");
}

#[tokio::test]
async fn a_caller_gets_only_what_its_policy_allows() {
    let mut app = app_with_callers(|_| {}).await;
    let user = create_user(&mut app).await;

    // The widget-only caller cannot reach transactions…
    let status = app
        .client
        .issue_data_token(with_key(
            data(&user, &["transactions:read:all"]),
            WIDGET_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let info = error_info(&status);
    assert_eq!(info.reason, "PERMISSION_DENIED");
    assert_eq!(info.metadata["caller"], "web");
    assert_eq!(info.metadata["rpc"], "IssueDataToken");
    assert!(!status.message().contains(WIDGET_KEY));

    // …nor create users.
    let status = app
        .client
        .create_user(with_key(crate::helpers::new_user("customer-2"), WIDGET_KEY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn scopes_and_providers_outside_the_policy_are_refused_by_name() {
    let mut app = app_with_callers(|access| {
        let reader = access.callers.get_mut("web").unwrap();
        reader.rpcs = vec!["IssueDataToken".into()];
        reader.scopes = vec!["accounts:read".into()];
    })
    .await;
    let user = create_user(&mut app).await;

    let allowed = app
        .client
        .issue_data_token(with_key(data(&user, &["accounts:read"]), WIDGET_KEY))
        .await;
    assert!(allowed.is_ok(), "{allowed:?}");

    let status = app
        .client
        .issue_data_token(with_key(
            data(&user, &["accounts:read", "transactions:read:all"]),
            WIDGET_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let info = error_info(&status);
    assert_eq!(info.metadata["refused"], "scope");
    assert_eq!(info.metadata["scope"], "transactions:read:all");
}

#[tokio::test]
async fn a_policy_naming_an_unknown_provider_or_no_callers_at_all_stops_startup() {
    let upstream = start_upstream().await;
    let mut config = upstream.config(([127, 0, 0, 1], 0).into());
    config.access = AccessConfig::default();
    let error = Application::build(config.clone()).await.err().unwrap();
    assert!(error.to_string().contains("access.callers"), "{error}");

    let mut web = caller(&[WIDGET_KEY], &["*"], &["*"]);
    web.providers = vec!["moneyhub".into()];
    config.access.callers.insert("web".into(), web);
    let error = Application::build(config).await.err().unwrap();
    assert!(
        error.to_string().contains("access.callers.web.providers"),
        "{error}"
    );
}

#[tokio::test]
async fn a_caller_over_its_rate_limit_is_told_when_to_retry() {
    let mut app = app_with_callers(|access| {
        let web = access.callers.get_mut("web").unwrap();
        web.requests_per_second = Some(0.5);
        web.burst = Some(2.0);
    })
    .await;
    let user = create_user(&mut app).await;
    for _ in 0..2 {
        app.client
            .issue_widget_token(with_key(widget(&user), WIDGET_KEY))
            .await
            .expect("within the burst");
    }
    let status = app
        .client
        .issue_widget_token(with_key(widget(&user), WIDGET_KEY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(error_info(&status).reason, "CALLER_RATE_LIMITED");
    let retry = status.get_error_details().retry_info().cloned().unwrap();
    assert!(retry.retry_delay.is_some_and(|d| !d.is_zero()));

    // Other callers have their own budget.
    app.client
        .issue_widget_token(with_key(widget(&user), ADMIN_KEY))
        .await
        .expect("the admin is not limited");
}

#[tokio::test]
async fn health_and_reflection_need_no_credentials() {
    let app = app_with_callers(|_| {}).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "bankauth.v1.AuthService".into(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");
}
