//! Every provider kind and client-authentication method: issued, cached, and
//! each error shape mapped; several providers side by side.

use bankauth::config::{
    ClientAuthMethod, ExpiryField as ConfiguredExpiry, ProviderConfig, ProviderKind,
};
use bankauth::demo::{DEMO_CLIENT_ID, DEMO_PROVIDER};
use bankauth::proto::v1 as pb;
use bankauth::provider::{SigningAlgorithm, SigningKey};
use bankauth::sandbox::{
    Endpoint, ExpiryField, Fault, RegisteredClient, SandboxOptions, client_jwks,
};
use bankauth::server::Application;
use secrecy::SecretString;
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{
    MONEYKIT_CLIENT_ID, TestApp, error_info, free_port, moneykit_config, new_user, spawn_app_with,
    start_upstream, start_upstream_with, start_upstream_with_moneykit,
};

async fn moneykit_app(auth: ClientAuthMethod) -> TestApp {
    let upstream = start_upstream_with_moneykit().await;
    let moneykit = moneykit_config(&upstream, auth);
    spawn_app_with(upstream, |c| {
        c.providers.clear();
        c.providers.insert("moneykit".into(), moneykit);
    })
    .await
}

#[tokio::test]
async fn moneykit_issues_and_caches_application_tokens_with_basic_and_form_auth() {
    for auth in [
        ClientAuthMethod::ClientSecretBasic,
        ClientAuthMethod::ClientSecretPost,
    ] {
        let mut app = moneykit_app(auth).await;
        let first = app
            .data_token("", &["transactions:read", "accounts:read"])
            .await
            .unwrap();
        assert_eq!(first.token_type, "bearer");
        assert_eq!(first.scopes, ["accounts:read", "transactions:read"]);
        let second = app
            .data_token("", &["accounts:read", "transactions:read"])
            .await
            .unwrap();
        assert_eq!(first, second);
        assert_eq!(app.sandbox().moneykit_requests(), 1, "{auth:?}");
    }
}

#[tokio::test]
async fn moneykit_errors_carry_its_error_code() {
    let mut app = moneykit_app(ClientAuthMethod::ClientSecretBasic).await;
    app.sandbox().fail_next(
        Endpoint::Moneykit,
        Fault::RateLimited {
            retry_after_secs: 30,
        },
    );
    let status = app.data_token("", &["accounts:read"]).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        error_info(&status).metadata["upstream_error"],
        "api_error.rate_limit_exceeded"
    );
    assert_eq!(
        status.get_error_details().retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(30))
    );
}

#[tokio::test]
async fn a_wrong_moneykit_secret_is_a_credentials_error() {
    let upstream = start_upstream_with_moneykit().await;
    let mut moneykit = moneykit_config(&upstream, ClientAuthMethod::ClientSecretPost);
    moneykit.client_secret = Some(SecretString::from("not-the-secret"));
    let mut app = spawn_app_with(upstream, |c| {
        c.providers.insert("moneykit".into(), moneykit);
    })
    .await;
    let status = app
        .client
        .issue_data_token(pb::IssueDataTokenRequest {
            provider: "moneykit".into(),
            user_id: String::new(),
            scopes: vec!["accounts:read".into()],
            force_refresh: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        error_info(&status).metadata["upstream_error"],
        "api_error.auth.unauthorized"
    );
    assert!(
        status
            .message()
            .contains("rejected this service's credentials"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains("not-the-secret"));
}

#[tokio::test]
async fn moneykit_has_no_users() {
    let mut app = moneykit_app(ClientAuthMethod::ClientSecretBasic).await;
    let status = app.client.create_user(new_user("c")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("has no user management"),
        "{}",
        status.message()
    );
    let status = app
        .client
        .get_user(pb::GetUserRequest {
            provider: String::new(),
            user_id: "u1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        app.widget_token("u1").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        app.data_token("u1", &["accounts:read"])
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    assert_eq!(app.sandbox().moneykit_requests(), 0);
}

#[tokio::test]
async fn moneyhub_application_tokens_are_allowed_only_for_their_scopes() {
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |_| {}).await;
    let before = app.sandbox().token_requests();
    let token = app.data_token("", &["scim_user:read"]).await.unwrap();
    assert_eq!(token.scopes, ["scim_user:read"]);
    app.data_token("", &["scim_user:read"]).await.unwrap();
    assert_eq!(app.sandbox().token_requests(), before + 1);

    let status = app.data_token("", &["accounts:read"]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("application tokens"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn private_key_jwt_works_with_every_signing_algorithm() {
    for algorithm in [SigningAlgorithm::PS256, SigningAlgorithm::ES256] {
        let (key, pem) = SigningKey::generate(algorithm).unwrap();
        let upstream = start_upstream_with(|client| {
            SandboxOptions::new(vec![RegisteredClient {
                jwks: client_jwks(&key),
                ..client
            }])
        })
        .await;
        let mut app = spawn_app_with(upstream, |c| {
            let provider = c.providers.get_mut(DEMO_PROVIDER).unwrap();
            provider.signing_algorithm = algorithm;
            provider.private_key_pem = Some(pem);
        })
        .await;
        let user = app.create_user("customer-1").await;
        app.widget_token(&user).await.unwrap();
        app.widget_token(&user).await.unwrap();
        // scim_user:write for the create, then one widget token.
        assert_eq!(app.sandbox().token_requests(), 2, "{algorithm:?}");
    }
}

/// A hand-configured `kind = "oauth2"` provider against the sandbox's token endpoint.
fn oauth2_private_key_jwt(
    upstream: &bankauth::demo::DemoUpstream,
    expiry: ConfiguredExpiry,
) -> ProviderConfig {
    let mut config = ProviderConfig::new(ProviderKind::Oauth2, DEMO_CLIENT_ID);
    config.token_url = Some(upstream.sandbox.issuer().join("oidc/token").unwrap());
    config.client_auth = Some(ClientAuthMethod::PrivateKeyJwt);
    config.private_key_pem = Some(upstream.client_key_pem.clone());
    config.send_sub = Some(false);
    config.expiry_field = Some(expiry);
    config.application_scopes = vec!["accounts:read".into()];
    config
}

#[tokio::test]
async fn an_oauth2_provider_with_private_key_jwt_and_an_explicit_expiry_field() {
    let upstream = start_upstream_with(|client| {
        let mut options = SandboxOptions::new(vec![client]);
        options.expiry_field = ExpiryField::ExpiresAt;
        options
    })
    .await;
    let oauth2 = oauth2_private_key_jwt(&upstream, ConfiguredExpiry::ExpiresAt);
    let mut app = spawn_app_with(upstream, |c| {
        c.providers.clear();
        c.providers.insert("generic".into(), oauth2);
    })
    .await;
    let token = app.data_token("", &["accounts:read"]).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let lifetime = token.expire_time.unwrap().seconds - now;
    assert!((3590..=3600).contains(&lifetime), "{lifetime}");
    app.data_token("", &["accounts:read"]).await.unwrap();
    assert_eq!(app.sandbox().token_requests(), 1);
    // This provider sends no sub, so it issues no user tokens.
    assert_eq!(
        app.widget_token("u1").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}

#[tokio::test]
async fn an_oauth2_provider_with_client_secrets_against_any_token_endpoint() {
    for auth in [
        ClientAuthMethod::ClientSecretBasic,
        ClientAuthMethod::ClientSecretPost,
    ] {
        let upstream = start_upstream_with_moneykit().await;
        let mut oauth2 = ProviderConfig::new(ProviderKind::Oauth2, MONEYKIT_CLIENT_ID);
        oauth2.token_url = Some(upstream.sandbox.moneykit_url().join("auth/token").unwrap());
        oauth2.client_auth = Some(auth);
        oauth2.client_secret = Some(SecretString::from(crate::helpers::MONEYKIT_SECRET));
        oauth2.send_sub = Some(false);
        oauth2.expiry_field = Some(ConfiguredExpiry::ExpiresIn);
        oauth2.application_scopes = vec!["accounts:read".into()];
        let mut app = spawn_app_with(upstream, |c| {
            c.providers.clear();
            c.providers.insert("generic".into(), oauth2);
        })
        .await;
        let first = app.data_token("", &["accounts:read"]).await.unwrap();
        let second = app.data_token("", &["accounts:read"]).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(app.sandbox().moneykit_requests(), 1, "{auth:?}");
    }
}

#[tokio::test]
async fn two_providers_route_by_name() {
    let upstream = start_upstream_with_moneykit().await;
    let moneykit = moneykit_config(&upstream, ClientAuthMethod::ClientSecretBasic);
    let mut app = spawn_app_with(upstream, |c| {
        c.providers.insert("moneykit".into(), moneykit);
    })
    .await;
    let request = |provider: &str, user_id: &str, scopes: &[&str]| pb::IssueDataTokenRequest {
        provider: provider.into(),
        user_id: user_id.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        force_refresh: false,
    };

    let mut create = new_user("customer-1");
    create.provider = DEMO_PROVIDER.into();
    let user = app
        .client
        .create_user(create)
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .id;
    let moneyhub_calls = app.sandbox().token_requests();

    app.client
        .issue_data_token(request("moneykit", "", &["accounts:read"]))
        .await
        .unwrap();
    assert_eq!(app.sandbox().moneykit_requests(), 1);
    assert_eq!(app.sandbox().token_requests(), moneyhub_calls);

    app.client
        .issue_data_token(request(DEMO_PROVIDER, &user, &["accounts:read"]))
        .await
        .unwrap();
    assert_eq!(app.sandbox().moneykit_requests(), 1);
    assert_eq!(app.sandbox().token_requests(), moneyhub_calls + 1);

    let status = app
        .client
        .issue_data_token(request("", &user, &["accounts:read"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("moneykit, sandbox"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_failed_discovery_stops_startup_naming_the_issuer() {
    let upstream = start_upstream().await;
    let mut config = upstream.config("127.0.0.1:0".parse().unwrap());
    config.providers.get_mut(DEMO_PROVIDER).unwrap().issuer = Some(
        format!("http://127.0.0.1:{}/oidc", free_port())
            .parse()
            .unwrap(),
    );
    let error = match Application::build(config).await {
        Err(error) => error.to_string(),
        Ok(_) => panic!("startup succeeded without discovery"),
    };
    assert!(error.contains("providers.sandbox.issuer"), "{error}");
    assert!(error.contains("discovery"), "{error}");
}
