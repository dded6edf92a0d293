//! Tokens from a real OpenID provider (panva's `oidc-provider`, set up like
//! Moneyhub's identity service) through the real `bankauth serve`: user and
//! application tokens over `client_credentials` with `private_key_jwt`, the
//! cache in front of them, and the authorization-code exchange and refresh
//! with ID tokens validated against the provider's JWKS. Every test counts
//! the token requests the provider received.

use bankauth::proto::v1 as pb;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use serde_json::Value;
use tonic::Code;

use super::oidc_peer::{AuthorizationRequest, CLIENT_ID, OidcPeer, REDIRECT_URI};
use super::serve::{Bankauth, DATA_SCOPES, PROVIDER, write_config};
use crate::helpers::{error_info, sha256_hex};

/// A Moneyhub-shaped user id (the provider takes any `sub` here).
const USER: &str = "6682adce08dc9d0010bd7ede";
const VERIFIER: &str = "interop-pkce-verifier-0123456789-abcdefghijklmnopqrstuvwxyz";

/// The peer and a bankauth configured for it; both print their log tails
/// when a test fails.
struct Interop {
    // Dropped first: bankauth, then the peer, then the files.
    bankauth: Bankauth,
    peer: OidcPeer,
    _dir: tempfile::TempDir,
}

impl Interop {
    async fn start() -> Self {
        Self::start_allowing(DATA_SCOPES).await
    }

    /// With `data_scopes` allowed for user tokens.
    async fn start_allowing(data_scopes: &[&str]) -> Self {
        let peer = OidcPeer::start();
        let dir = tempfile::Builder::new()
            .prefix("oidc-interop-")
            .tempdir()
            .unwrap();
        let config = write_config(dir.path(), &peer, data_scopes);
        let bankauth = Bankauth::start(&config).await;
        Self {
            bankauth,
            peer,
            _dir: dir,
        }
    }

    async fn widget(&mut self, user: &str, force_refresh: bool) -> pb::AccessToken {
        let response = self
            .bankauth
            .client
            .issue_widget_token(pb::IssueWidgetTokenRequest {
                provider: PROVIDER.into(),
                user_id: user.into(),
                force_refresh,
            })
            .await;
        ok(response, "IssueWidgetToken").token.expect("a token")
    }

    async fn data(&mut self, user: &str, scopes: &[&str], force_refresh: bool) -> pb::AccessToken {
        ok(
            self.try_data(user, scopes, force_refresh).await,
            "IssueDataToken",
        )
        .token
        .expect("a token")
    }

    async fn try_data(
        &mut self,
        user: &str,
        scopes: &[&str],
        force_refresh: bool,
    ) -> Result<tonic::Response<pb::IssueDataTokenResponse>, tonic::Status> {
        self.bankauth
            .client
            .issue_data_token(pb::IssueDataTokenRequest {
                provider: PROVIDER.into(),
                user_id: user.into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                force_refresh,
            })
            .await
    }

    async fn exchange(
        &mut self,
        request: pb::ExchangeAuthorizationCodeRequest,
    ) -> Result<pb::TokenSet, tonic::Status> {
        self.bankauth
            .client
            .exchange_authorization_code(request)
            .await
            .map(|response| response.into_inner().token_set.expect("a token set"))
    }

    async fn client_credentials_calls(&self) -> u64 {
        self.peer.token_requests("client_credentials").await
    }

    /// A code for [`USER`], asked with `nonce` and a PKCE challenge.
    async fn code(&self, nonce: &str) -> String {
        self.peer
            .authorization_code(&AuthorizationRequest {
                login: USER,
                scope: "openid offline_access accounts:read",
                nonce: Some(nonce),
                code_verifier: Some(VERIFIER),
            })
            .await
    }

    /// The access token's claims, after checking its signature against the
    /// provider's JWKS (so it is the provider's token, not one made up).
    async fn verified_claims(&self, token: &str) -> Value {
        let header = decode_header(token).expect("a JWT access token");
        let jwks = self.peer.jwks().await;
        let jwk = jwks
            .find(header.kid.as_deref().expect("a kid"))
            .expect("the signing key is in the provider's JWKS");
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[self.peer.issuer()]);
        validation.set_audience(&[CLIENT_ID]);
        decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .expect("the access token verifies against the provider's JWKS")
            .claims
    }
}

/// The answer, or a panic naming the RPC and the status bankauth returned
/// (which carries the provider's error); the log tails follow on drop.
fn ok<T>(response: Result<tonic::Response<T>, tonic::Status>, rpc: &str) -> T {
    match response {
        Ok(response) => response.into_inner(),
        Err(status) => panic!(
            "{rpc} failed: {:?} {}; ErrorInfo: {:?}",
            status.code(),
            status.message(),
            tonic_types::StatusExt::get_error_details(&status).error_info()
        ),
    }
}

fn exchange_request(code: &str, nonce: &str) -> pb::ExchangeAuthorizationCodeRequest {
    pb::ExchangeAuthorizationCodeRequest {
        provider: PROVIDER.into(),
        code: code.into(),
        redirect_uri: REDIRECT_URI.into(),
        code_verifier: VERIFIER.into(),
        nonce: nonce.into(),
        sub: USER.into(),
        state: String::new(),
    }
}

fn scope_set(claims: &Value) -> Vec<&str> {
    let mut scopes: Vec<&str> = claims["scope"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    scopes.sort_unstable();
    scopes
}

#[tokio::test]
async fn widget_and_data_tokens_name_the_user_and_cost_one_provider_call_each() {
    let mut it = Interop::start().await;

    let widget = it.widget(USER, false).await;
    let claims = it.verified_claims(&widget.access_token).await;
    assert_eq!(claims["sub"], USER);
    assert_eq!(scope_set(&claims), ["widget_authentication"]);
    assert_eq!(widget.scopes, ["widget_authentication"]);
    assert_eq!(widget.token_type, "Bearer");
    let expires = widget.expire_time.expect("an expiry").seconds;
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!(
        (expires - claims["exp"].as_i64().unwrap()).abs() <= 5,
        "expire_time {expires} is the token's exp {} (lifetime {lifetime} s)",
        claims["exp"]
    );
    for _ in 0..5 {
        let again = it.widget(USER, false).await;
        assert_eq!(again.access_token, widget.access_token, "served from cache");
    }
    assert_eq!(it.client_credentials_calls().await, 1);

    let data = it
        .data(USER, &["transactions:read:all", "accounts:read"], false)
        .await;
    let claims = it.verified_claims(&data.access_token).await;
    assert_eq!(claims["sub"], USER);
    assert_eq!(
        scope_set(&claims),
        ["accounts:read", "transactions:read:all"]
    );
    assert_eq!(data.scopes, ["accounts:read", "transactions:read:all"]);
    for scopes in [
        ["accounts:read", "transactions:read:all"],
        ["transactions:read:all", "accounts:read"],
    ] {
        let again = it.data(USER, &scopes, false).await;
        assert_eq!(again.access_token, data.access_token, "served from cache");
    }
    assert_eq!(it.client_credentials_calls().await, 2);

    // Another user is another token, and another call.
    let other = it.widget("6682adce08dc9d0010bd7edf", false).await;
    let claims = it.verified_claims(&other.access_token).await;
    assert_eq!(claims["sub"], "6682adce08dc9d0010bd7edf");
    assert_eq!(it.client_credentials_calls().await, 3);
}

#[tokio::test]
async fn an_application_token_names_the_client_and_is_cached() {
    let mut it = Interop::start().await;
    let token = it.data("", &["scim_user:read"], false).await;
    let claims = it.verified_claims(&token.access_token).await;
    assert_eq!(
        claims["sub"], CLIENT_ID,
        "no user: the token is the client's own"
    );
    assert_eq!(claims["client_id"], CLIENT_ID);
    assert_eq!(scope_set(&claims), ["scim_user:read"]);
    let again = it.data("", &["scim_user:read"], false).await;
    assert_eq!(again.access_token, token.access_token);
    assert_eq!(it.client_credentials_calls().await, 1);
}

#[tokio::test]
async fn force_refresh_and_invalidate_token_each_cost_one_new_provider_call() {
    let mut it = Interop::start().await;
    let first = it.widget(USER, false).await;
    assert_eq!(it.client_credentials_calls().await, 1);

    let forced = it.widget(USER, true).await;
    assert_ne!(forced.access_token, first.access_token);
    assert_eq!(it.client_credentials_calls().await, 2);
    let cached = it.widget(USER, false).await;
    assert_eq!(
        cached.access_token, forced.access_token,
        "the forced token is the cached one now"
    );
    assert_eq!(it.client_credentials_calls().await, 2);

    let invalidated = ok(
        it.bankauth
            .client
            .invalidate_token(pb::InvalidateTokenRequest {
                provider: PROVIDER.into(),
                token: Some(pb::invalidate_token_request::Token::AccessTokenSha256(
                    sha256_hex(&forced.access_token),
                )),
            })
            .await,
        "InvalidateToken",
    );
    assert!(invalidated.invalidated);
    let fresh = it.widget(USER, false).await;
    assert_ne!(fresh.access_token, forced.access_token);
    assert_eq!(it.client_credentials_calls().await, 3);
    let claims = it.verified_claims(&fresh.access_token).await;
    assert_eq!(claims["sub"], USER);
}

#[tokio::test]
async fn a_real_code_exchanges_for_a_validated_token_set_that_refreshes() {
    let mut it = Interop::start().await;
    let code = it.code("nonce-1").await;
    let set = it.exchange(exchange_request(&code, "nonce-1")).await;
    let set = ok(set.map(tonic::Response::new), "ExchangeAuthorizationCode");
    assert_eq!(it.peer.token_requests("authorization_code").await, 1);
    assert_eq!(
        it.peer.jwks_requests().await,
        1,
        "the ID token was checked against the JWKS"
    );
    let claims = set.id_token_claims.expect("validated claims");
    assert_eq!(claims.sub, USER);
    assert!(!set.refresh_token.is_empty(), "offline_access was granted");
    assert_eq!(set.token_type, "Bearer");
    // The access token's scope (RFC 6749 §5.1): its resource server's part of the grant.
    assert_eq!(set.scopes, ["accounts:read"]);
    let access = it.verified_claims(&set.access_token).await;
    assert_eq!(access["sub"], USER);
    assert_eq!(scope_set(&access), ["accounts:read"]);

    let refreshed = ok(
        it.bankauth
            .client
            .refresh_token(pb::RefreshTokenRequest {
                provider: PROVIDER.into(),
                refresh_token: set.refresh_token.clone(),
            })
            .await,
        "RefreshToken",
    )
    .token_set
    .expect("a token set");
    assert_eq!(it.peer.token_requests("refresh_token").await, 1);
    assert_ne!(refreshed.access_token, set.access_token);
    assert_eq!(
        refreshed.id_token_claims.expect("validated claims").sub,
        USER
    );
    let access = it.verified_claims(&refreshed.access_token).await;
    assert_eq!(access["sub"], USER);
}

#[tokio::test]
async fn an_id_token_with_another_nonce_is_refused() {
    let mut it = Interop::start().await;
    let code = it.code("nonce-of-another-login").await;
    let status = it
        .exchange(exchange_request(&code, "nonce-1"))
        .await
        .expect_err("another login's ID token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "ID_TOKEN_INVALID");
    assert_eq!(info.metadata["check"], "nonce", "{}", status.message());
    assert_eq!(it.peer.token_requests("authorization_code").await, 1);
}

#[tokio::test]
async fn a_used_code_is_refused_by_the_provider_as_invalid_grant() {
    let mut it = Interop::start().await;
    let code = it.code("nonce-1").await;
    let first = it.exchange(exchange_request(&code, "nonce-1")).await;
    let first = ok(first.map(tonic::Response::new), "ExchangeAuthorizationCode");
    let status = it
        .exchange(exchange_request(&code, "nonce-1"))
        .await
        .expect_err("a used code");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        error_info(&status).metadata["upstream_error"],
        "invalid_grant"
    );
    assert_eq!(
        it.peer.token_requests("authorization_code").await,
        2,
        "sent once each, never retried"
    );

    // RFC 6749 §4.1.2: what the code issued is revoked too.
    let status = it
        .bankauth
        .client
        .refresh_token(pb::RefreshTokenRequest {
            provider: PROVIDER.into(),
            refresh_token: first.refresh_token,
        })
        .await
        .expect_err("the first exchange's refresh token is revoked");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        error_info(&status).metadata["upstream_error"],
        "invalid_grant"
    );
}

/// oidc-provider grants only the scopes its resource server has, silently
/// (RFC 6749 §3.3 allows it), and then leaves `scope` out of its answer even
/// though it differs from the request (§5.1 requires it then). bankauth
/// reads the grant from the JWT access token instead of reporting the
/// scopes it asked for.
#[tokio::test]
async fn scopes_the_provider_does_not_grant_are_never_reported_as_granted() {
    let mut it = Interop::start_allowing(&["accounts:read", "payments:write"]).await;

    let partial = it
        .data(USER, &["accounts:read", "payments:write"], false)
        .await;
    assert_eq!(partial.scopes, ["accounts:read"], "what the token carries");
    let claims = it.verified_claims(&partial.access_token).await;
    assert_eq!(scope_set(&claims), ["accounts:read"]);

    let status = it
        .try_data(USER, &["payments:write"], false)
        .await
        .expect_err("a token carrying none of the requested scopes");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(error_info(&status).reason, "UPSTREAM_MISDIRECTED");
    assert!(
        status.message().contains("none of the requested scopes"),
        "{status:?}"
    );
    assert_eq!(it.client_credentials_calls().await, 2);
}

#[tokio::test]
async fn a_refresh_token_revoked_at_the_provider_no_longer_refreshes() {
    let mut it = Interop::start().await;
    let code = it.code("nonce-1").await;
    let set = it.exchange(exchange_request(&code, "nonce-1")).await;
    let set = ok(set.map(tonic::Response::new), "ExchangeAuthorizationCode");
    ok(
        it.bankauth
            .client
            .revoke_token(pb::RevokeTokenRequest {
                provider: PROVIDER.into(),
                token: set.refresh_token.clone(),
                token_type_hint: pb::TokenTypeHint::RefreshToken.into(),
            })
            .await,
        "RevokeToken",
    );
    let status = it
        .bankauth
        .client
        .refresh_token(pb::RefreshTokenRequest {
            provider: PROVIDER.into(),
            refresh_token: set.refresh_token,
        })
        .await
        .expect_err("a revoked refresh token");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        error_info(&status).metadata["upstream_error"],
        "invalid_grant"
    );
}

/// oidc-provider issues JWT access tokens here, which it cannot revoke:
/// it answers `unsupported_token_type` (RFC 7009 §2.2.1), and bankauth
/// keeps serving its cached copy, since the token still works.
#[tokio::test]
async fn the_provider_refuses_to_revoke_a_structured_access_token() {
    let mut it = Interop::start().await;
    let widget = it.widget(USER, false).await;
    let status = it
        .bankauth
        .client
        .revoke_token(pb::RevokeTokenRequest {
            provider: PROVIDER.into(),
            token: widget.access_token.clone(),
            token_type_hint: pb::TokenTypeHint::AccessToken.into(),
        })
        .await
        .expect_err("a JWT access token");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "UPSTREAM_REJECTED_REQUEST");
    assert_eq!(info.metadata["upstream_error"], "unsupported_token_type");
    assert!(!status.message().contains(&widget.access_token));
    let again = it.widget(USER, false).await;
    assert_eq!(again.access_token, widget.access_token, "still cached");
    assert_eq!(it.client_credentials_calls().await, 1);
}
