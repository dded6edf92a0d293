//! The authorization-code exchange and refresh: validated token sets, and
//! each way an ID token or a code can be wrong.

use bankauth::proto::v1 as pb;
use bankauth::sandbox::IdTokenFault;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::helpers::{
    TestApp, authorization_code, authorization_response, error_info, spawn_app, spawn_app_with,
    start_upstream,
};

const REDIRECT_URI: &str = "https://app.example.com/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mJ92K9lZ2rd5O_tL0eWeWXnN0ZD1TbZLcZ5eL8gQSwV";

/// A code for `sub`, obtained with nonce "n-1" and a PKCE challenge.
async fn code_for(app: &TestApp, sub: &str) -> String {
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()));
    authorization_code(
        &app.upstream,
        &[
            ("redirect_uri", REDIRECT_URI),
            ("scope", "openid id:1ffe704d"),
            ("state", "s-1"),
            ("nonce", "n-1"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("sub", sub),
        ],
    )
    .await
}

fn exchange(code: &str) -> pb::ExchangeAuthorizationCodeRequest {
    pb::ExchangeAuthorizationCodeRequest {
        provider: String::new(),
        code: code.into(),
        redirect_uri: REDIRECT_URI.into(),
        code_verifier: VERIFIER.into(),
        nonce: "n-1".into(),
        sub: String::new(),
        state: String::new(),
    }
}

async fn exchange_status(
    app: &mut TestApp,
    request: pb::ExchangeAuthorizationCodeRequest,
) -> tonic::Status {
    app.client
        .exchange_authorization_code(request)
        .await
        .unwrap_err()
}

fn assert_id_token_check(status: &tonic::Status, check: &str) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let info = error_info(status);
    assert_eq!(info.reason, "ID_TOKEN_INVALID");
    assert_eq!(info.metadata["check"], check, "{}", status.message());
}

#[tokio::test]
async fn a_code_exchanges_for_a_validated_token_set() {
    let mut app = spawn_app().await;
    let user = app.create_user("customer-1").await;
    let code = code_for(&app, &user).await;
    let mut request = exchange(&code);
    request.sub = user.clone();
    let set = app
        .client
        .exchange_authorization_code(request)
        .await
        .unwrap()
        .into_inner()
        .token_set
        .unwrap();
    assert!(!set.access_token.is_empty());
    assert!(!set.id_token.is_empty());
    assert!(!set.refresh_token.is_empty());
    assert_eq!(set.token_type, "Bearer");
    assert_eq!(set.scopes, ["id:1ffe704d", "openid"]);
    let claims = set.id_token_claims.unwrap();
    assert_eq!(claims.sub, user);
    assert!(
        claims.connection_id.contains(':'),
        "{}",
        claims.connection_id
    );
    assert!(claims.auth_time.is_some());
}

#[tokio::test]
async fn a_code_is_single_use() {
    let mut app = spawn_app().await;
    let code = code_for(&app, "someone").await;
    app.client
        .exchange_authorization_code(exchange(&code))
        .await
        .unwrap();
    let status = exchange_status(&mut app, exchange(&code)).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        error_info(&status).metadata["upstream_error"],
        "invalid_grant"
    );
}

/// RFC 9207, as oidc-provider does it: the redirect names the issuer, so a
/// client talking to several providers knows whose code it holds.
#[tokio::test]
async fn the_authorization_response_names_the_issuer() {
    let app = spawn_app().await;
    let params = [("redirect_uri", REDIRECT_URI), ("state", "s-1")];
    let iss = authorization_response(&app.upstream, &params, "iss").await;
    assert_eq!(iss, Some(app.upstream.sandbox.issuer().to_string()));
}

/// RFC 6749 §4.1.2, as oidc-provider does it (tests/api/interop): a code
/// used twice is refused, and the refresh token its first use issued stops working.
#[tokio::test]
async fn a_reused_code_revokes_the_refresh_token_it_issued() {
    let mut app = spawn_app().await;
    let code = code_for(&app, "someone").await;
    let set = app
        .client
        .exchange_authorization_code(exchange(&code))
        .await
        .unwrap()
        .into_inner()
        .token_set
        .unwrap();
    let refresh = |refresh_token: String| pb::RefreshTokenRequest {
        provider: String::new(),
        refresh_token,
    };
    let rotated = app
        .client
        .refresh_token(refresh(set.refresh_token.clone()))
        .await
        .unwrap()
        .into_inner()
        .token_set
        .unwrap()
        .refresh_token;

    exchange_status(&mut app, exchange(&code)).await;
    let status = app
        .client
        .refresh_token(refresh(rotated))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        error_info(&status).metadata["upstream_error"],
        "invalid_grant"
    );
}

#[tokio::test]
async fn a_wrong_code_verifier_or_redirect_uri_is_refused_by_the_provider() {
    let mut app = spawn_app().await;
    let code = code_for(&app, "someone").await;
    let mut request = exchange(&code);
    request.code_verifier = "x".repeat(43);
    let status = exchange_status(&mut app, request).await;
    assert_eq!(
        error_info(&status).metadata["upstream_error"],
        "invalid_grant"
    );

    let code = code_for(&app, "someone").await;
    let mut request = exchange(&code);
    request.redirect_uri = "https://evil.example.com/callback".into();
    let status = exchange_status(&mut app, request).await;
    assert_eq!(
        error_info(&status).metadata["upstream_error"],
        "invalid_grant"
    );
}

#[tokio::test]
async fn a_tampered_id_token_fails_the_signature_check() {
    let mut app = spawn_app().await;
    let code = code_for(&app, "someone").await;
    app.sandbox().fault_next_id_token(IdTokenFault::Tampered);
    assert_id_token_check(
        &exchange_status(&mut app, exchange(&code)).await,
        "signature",
    );
}

#[tokio::test]
async fn an_id_token_for_another_client_fails_the_audience_check() {
    let mut app = spawn_app().await;
    let code = code_for(&app, "someone").await;
    app.sandbox()
        .fault_next_id_token(IdTokenFault::Audience("another-client"));
    assert_id_token_check(&exchange_status(&mut app, exchange(&code)).await, "aud");
}

#[tokio::test]
async fn a_wrong_nonce_fails_the_nonce_check() {
    let mut app = spawn_app().await;
    let code = code_for(&app, "someone").await;
    let mut request = exchange(&code);
    request.nonce = "n-2".into();
    assert_id_token_check(&exchange_status(&mut app, request).await, "nonce");
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_once_so_rotation_works() {
    let mut app = spawn_app().await;
    let code = code_for(&app, "someone").await;
    app.client
        .exchange_authorization_code(exchange(&code))
        .await
        .unwrap();

    // The provider rotates its key: the cached JWKS no longer has the kid.
    app.sandbox().rotate_signing_key().unwrap();
    let code = code_for(&app, "someone").await;
    let set = app
        .client
        .exchange_authorization_code(exchange(&code))
        .await
        .unwrap();
    assert_eq!(
        set.into_inner()
            .token_set
            .unwrap()
            .id_token_claims
            .unwrap()
            .sub,
        "someone"
    );

    // A key the JWKS does not publish even after refetching is refused.
    let code = code_for(&app, "someone").await;
    app.sandbox()
        .fault_next_id_token(IdTokenFault::UnpublishedKey);
    assert_id_token_check(&exchange_status(&mut app, exchange(&code)).await, "kid");
}

#[tokio::test]
async fn a_refresh_token_yields_a_new_validated_set_once() {
    let mut app = spawn_app().await;
    let code = code_for(&app, "someone").await;
    let first = app
        .client
        .exchange_authorization_code(exchange(&code))
        .await
        .unwrap()
        .into_inner()
        .token_set
        .unwrap();
    let refresh = |token: &str| pb::RefreshTokenRequest {
        provider: String::new(),
        refresh_token: token.into(),
    };
    let second = app
        .client
        .refresh_token(refresh(&first.refresh_token))
        .await
        .unwrap()
        .into_inner()
        .token_set
        .unwrap();
    assert_ne!(second.access_token, first.access_token);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.id_token_claims.unwrap().sub, "someone");

    let status = app
        .client
        .refresh_token(refresh(&first.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        error_info(&status).metadata["upstream_error"],
        "invalid_grant"
    );
}

#[tokio::test]
async fn exchange_inputs_are_validated_before_spending_the_code() {
    let mut app = spawn_app().await;
    let cases = [
        (
            pb::ExchangeAuthorizationCodeRequest {
                code: String::new(),
                ..exchange("c")
            },
            "code",
        ),
        (
            pb::ExchangeAuthorizationCodeRequest {
                redirect_uri: "not a url".into(),
                ..exchange("c")
            },
            "redirect_uri",
        ),
        (
            pb::ExchangeAuthorizationCodeRequest {
                code_verifier: "short".into(),
                ..exchange("c")
            },
            "code_verifier",
        ),
        (
            pb::ExchangeAuthorizationCodeRequest {
                sub: "a/b".into(),
                ..exchange("c")
            },
            "sub",
        ),
    ];
    for (request, field) in cases {
        let status = exchange_status(&mut app, request).await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(error_info(&status).metadata["field"], field);
    }
    assert_eq!(app.sandbox().token_requests(), 0);
}

#[tokio::test]
async fn a_request_without_a_nonce_refuses_an_id_token_carrying_one() {
    let mut app = spawn_app().await;
    let code = code_for(&app, "someone").await;
    let mut request = exchange(&code);
    request.nonce = String::new();
    assert_id_token_check(&exchange_status(&mut app, request).await, "nonce");
}

#[tokio::test]
async fn an_id_token_for_another_user_than_the_request_names_fails_the_sub_check() {
    let mut app = spawn_app().await;
    let code = code_for(&app, "someone").await;
    let mut request = exchange(&code);
    request.sub = "someone-else".into();
    assert_id_token_check(&exchange_status(&mut app, request).await, "sub");
}

#[tokio::test]
async fn an_id_token_with_several_audiences_needs_an_azp_naming_this_client() {
    let mut app = spawn_app().await;
    for azp in [None, Some("another-client")] {
        let code = code_for(&app, "someone").await;
        app.sandbox()
            .fault_next_id_token(IdTokenFault::ExtraAudience {
                other: "another-client",
                azp,
            });
        assert_id_token_check(&exchange_status(&mut app, exchange(&code)).await, "azp");
    }
    let code = code_for(&app, "someone").await;
    app.sandbox()
        .fault_next_id_token(IdTokenFault::ExtraAudience {
            other: "another-client",
            azp: Some(bankauth::demo::DEMO_CLIENT_ID),
        });
    app.client
        .exchange_authorization_code(exchange(&code))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_key_stating_its_algorithm_verifies_only_tokens_signed_with_it() {
    let mut app = spawn_app().await;
    // The sandbox signs ES256; its JWKS now says the key is for ES384.
    app.sandbox().misstate_jwks_alg("ES384");
    let code = code_for(&app, "someone").await;
    assert_id_token_check(&exchange_status(&mut app, exchange(&code)).await, "alg");
}

#[tokio::test]
async fn unknown_kids_refetch_the_jwks_at_most_once_per_interval() {
    let mut app = spawn_app_with(start_upstream().await, |c| {
        c.providers
            .get_mut("sandbox")
            .unwrap()
            .jwks_refetch_interval_ms = 60_000;
    })
    .await;
    let code = code_for(&app, "someone").await;
    app.client
        .exchange_authorization_code(exchange(&code))
        .await
        .unwrap();
    assert_eq!(app.sandbox().jwks_requests(), 1);
    for _ in 0..3 {
        let code = code_for(&app, "someone").await;
        app.sandbox()
            .fault_next_id_token(IdTokenFault::UnpublishedKey);
        assert_id_token_check(&exchange_status(&mut app, exchange(&code)).await, "kid");
    }
    assert_eq!(
        app.sandbox().jwks_requests(),
        2,
        "one refetch for three unknown kids"
    );
}

#[tokio::test]
async fn the_jwks_is_fetched_again_once_its_max_age_has_passed() {
    // A max-age shorter than the refetch interval counts as the interval.
    let mut app = spawn_app_with(start_upstream().await, |c| {
        c.providers
            .get_mut("sandbox")
            .unwrap()
            .jwks_refetch_interval_ms = 1_000;
    })
    .await;
    app.sandbox().set_jwks_max_age(Some(3));
    for _ in 0..2 {
        let code = code_for(&app, "someone").await;
        app.client
            .exchange_authorization_code(exchange(&code))
            .await
            .unwrap();
    }
    assert_eq!(
        app.sandbox().jwks_requests(),
        1,
        "cached within its max-age"
    );
    tokio::time::sleep(std::time::Duration::from_millis(3_100)).await;
    let code = code_for(&app, "someone").await;
    app.client
        .exchange_authorization_code(exchange(&code))
        .await
        .unwrap();
    assert_eq!(app.sandbox().jwks_requests(), 2, "fetched again after it");
}

#[tokio::test]
async fn a_failing_jwks_endpoint_neither_fails_exchanges_its_last_keys_verify_nor_stops_tokens() {
    let mut app = spawn_app_with(start_upstream().await, |c| {
        let sandbox = c.providers.get_mut("sandbox").unwrap();
        sandbox.jwks_refetch_interval_ms = 1_000;
        sandbox.breaker_failure_threshold = 2;
    })
    .await;
    app.sandbox().set_jwks_max_age(Some(1));
    let code = code_for(&app, "someone").await;
    app.client
        .exchange_authorization_code(exchange(&code))
        .await
        .unwrap();
    // The keys' max-age passes and the JWKS endpoint fails every attempt.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    for _ in 0..20 {
        app.sandbox().fail_next(
            bankauth::sandbox::Endpoint::Jwks,
            bankauth::sandbox::Fault::Status(503),
        );
    }
    let fetches = app.sandbox().jwks_requests();
    let code = code_for(&app, "someone").await;
    app.client
        .exchange_authorization_code(exchange(&code))
        .await
        .expect("the last keys still verify");
    assert!(app.sandbox().jwks_requests() > fetches, "a fetch was tried");
    // Those failures opened no breaker that token issuance goes through.
    let user = app.sandbox().seed_users(1).remove(0);
    app.widget_token(&user).await.expect("tokens still flow");
}
