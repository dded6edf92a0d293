//! CreateAuthorizationUrl against an OpenID provider nobody here wrote:
//! the real `bankauth serve` signs the request object with the client key
//! and pushes it (PAR) to panva's `oidc-provider`, a browser walks the
//! provider's login and consent pages, and the exchange by state returns
//! an ID token for the user the URL was made for.

use bankauth::proto::v1 as pb;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pb::create_authorization_url_request::Purpose;
use reqwest::header::LOCATION;
use tonic::Code;
use url::Url;

use super::oidc_peer::{CLIENT_ID, OidcPeer, REDIRECT_URI};
use super::serve::{Bankauth, DATA_SCOPES, write_config};
use crate::helpers::error_info;

/// Any id works as the peer's account id; this one is Moneyhub-shaped.
const USER: &str = "6682adce08dc9d0010bd7e01";

#[tokio::test]
async fn a_pushed_signed_request_connects_the_user_and_the_state_is_spent_once() {
    let peer = OidcPeer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &peer, DATA_SCOPES);
    let mut bankauth = Bankauth::start(&config).await;

    let created = bankauth
        .client
        .create_authorization_url(pb::CreateAuthorizationUrlRequest {
            provider: String::new(),
            user_id: USER.into(),
            redirect_uri: REDIRECT_URI.into(),
            purpose: Some(Purpose::ConnectBank(pb::ConnectBank::default())),
        })
        .await
        .unwrap_or_else(|status| panic!("CreateAuthorizationUrl: {status:?}\n{}", peer.log_tail()))
        .into_inner();
    assert_eq!(peer.par_requests().await, 1, "the request was pushed");
    let url = Url::parse(&created.url).unwrap();
    assert!(
        url.query_pairs().any(|(name, _)| name == "request_uri"),
        "{url}"
    );

    let callback = peer.walk(url, USER).await;
    assert_eq!(callback.get("state"), Some(&created.state));
    let code = callback["code"].clone();
    let exchange = pb::ExchangeAuthorizationCodeRequest {
        state: created.state.clone(),
        code,
        ..Default::default()
    };
    let set = bankauth
        .client
        .exchange_authorization_code(exchange.clone())
        .await
        .unwrap_or_else(|status| panic!("exchange by state: {status:?}\n{}", peer.log_tail()))
        .into_inner()
        .token_set
        .unwrap();
    assert_eq!(set.id_token_claims.unwrap().sub, USER);
    assert_eq!(peer.token_requests("authorization_code").await, 1);

    let status = bankauth
        .client
        .exchange_authorization_code(exchange)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_info(&status).metadata["field"], "state");
    assert_eq!(
        peer.token_requests("authorization_code").await,
        1,
        "a spent state never reaches the provider"
    );
}

/// The peer checks what bankauth signs: a request object whose signature
/// does not verify, or one not signed at all, is refused.
#[tokio::test]
async fn the_peer_refuses_tampered_and_unsigned_request_objects() {
    let peer = OidcPeer::start();
    let engine = URL_SAFE_NO_PAD;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "iss": CLIENT_ID, "aud": peer.issuer(), "client_id": CLIENT_ID,
        "response_type": "code", "scope": "openid", "redirect_uri": REDIRECT_URI,
        "state": "s", "nonce": "n", "exp": now + 300,
    });
    let payload = engine.encode(claims.to_string());
    let unsigned = format!("{}.{payload}.", engine.encode(r#"{"alg":"none"}"#));
    let tampered = format!(
        "{}.{payload}.{}",
        engine.encode(r#"{"alg":"RS256","kid":"k"}"#),
        engine.encode([7u8; 256])
    );
    for request in [unsigned, tampered] {
        let mut url = Url::parse(&format!("{}/auth", peer.issuer())).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", CLIENT_ID)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid")
            .append_pair("request", &request);
        let response = peer.http().get(url).send().await.unwrap();
        let location = response
            .headers()
            .get(LOCATION)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(
            location.contains("error=invalid_request_object")
                || body.contains("invalid_request_object"),
            "{status} {location} {body}\n{}",
            peer.log_tail()
        );
        assert!(!location.contains("code="), "{location}");
    }
}
