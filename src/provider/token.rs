//! The OAuth 2.0 token endpoint with `private_key_jwt` client authentication
//! (RFC 7523), as Moneyhub's identity service and any OpenID provider speak it.

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::{Url, form_urlencoded};

use super::http::Answer;
use super::{ProviderError, SigningKey};
use crate::domain::{AccessToken, ScopeSet, UserId};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Client assertions are single-use; a short life limits a leaked one.
const ASSERTION_LIFETIME_SECS: i64 = 60;

/// Claims of the client assertion, per RFC 7523 §3.
#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: i64,
    exp: i64,
}

/// A client of one provider's token endpoint.
#[derive(Debug)]
pub struct TokenEndpoint {
    pub(super) http: reqwest::Client,
    pub(super) url: Url,
    pub(super) client_id: String,
    pub(super) signer: SigningKey,
    pub(super) audience: String,
    pub(super) default_lifetime: Duration,
}

impl TokenEndpoint {
    /// Requests a client-credentials token, for a user when `sub` is given.
    pub async fn client_credentials(
        &self,
        sub: Option<&UserId>,
        scopes: &ScopeSet,
    ) -> Result<AccessToken, ProviderError> {
        // Expiry counts from before the request is sent, so time spent in
        // flight never makes a token look fresher than it is.
        let sent_at = OffsetDateTime::now_utc().unix_timestamp();
        let form = self.client_credentials_form(sub, scopes, sent_at)?;
        let response = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?;
        let answer = Answer::read(response).await?;
        parse_token_answer(&answer, sent_at, scopes, self.default_lifetime)
    }

    fn client_credentials_form(
        &self,
        sub: Option<&UserId>,
        scopes: &ScopeSet,
        now: i64,
    ) -> Result<String, ProviderError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials")
            .append_pair("scope", &scopes.to_space_separated());
        if let Some(sub) = sub {
            form.append_pair("sub", sub.as_str());
        }
        form.append_pair("client_id", &self.client_id)
            .append_pair("client_assertion_type", JWT_BEARER)
            .append_pair("client_assertion", &self.client_assertion(now)?);
        Ok(form.finish())
    }

    /// A fresh, single-use assertion: the provider rejects a reused `jti`.
    fn client_assertion(&self, now: i64) -> Result<String, ProviderError> {
        let claims = AssertionClaims {
            iss: &self.client_id,
            sub: &self.client_id,
            aud: &self.audience,
            jti: random_jti(),
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        self.signer.sign(&claims).map_err(|e| {
            ProviderError::unavailable(format!("cannot sign the client assertion: {e}"))
        })
    }
}

fn random_jti() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source is available");
    hex::encode(bytes)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    expires_at: Option<serde_json::Value>,
    scope: Option<String>,
}

/// RFC 6749 §5.2 error response.
#[derive(Deserialize)]
pub(super) struct OAuthErrorResponse {
    pub error: String,
    pub error_description: Option<String>,
}

impl OAuthErrorResponse {
    /// RFC 6749 error codes are short printable ASCII; anything else is not one.
    pub fn is_plausible(&self) -> bool {
        !self.error.is_empty()
            && self.error.len() <= 64
            && self
                .error
                .bytes()
                .all(|b| (0x20..=0x7E).contains(&b) && b != b'"' && b != b'\\')
    }
}

/// Turns a token endpoint answer into a token or the error it reports.
pub(super) fn parse_token_answer(
    answer: &Answer,
    sent_at: i64,
    requested: &ScopeSet,
    default_lifetime: Duration,
) -> Result<AccessToken, ProviderError> {
    if answer.status == 429 {
        return Err(answer.rate_limited());
    }
    if answer.status >= 500 {
        return Err(answer.unexpected());
    }
    if !answer.is_success() {
        return match serde_json::from_slice::<OAuthErrorResponse>(&answer.body) {
            Ok(oauth) if oauth.is_plausible() => Err(ProviderError::OAuth {
                status: answer.status,
                error: oauth.error,
                description: oauth.error_description,
            }),
            _ => Err(answer.unexpected()),
        };
    }
    let body: TokenResponse = answer.json()?;
    if body.access_token.is_empty() {
        return Err(ProviderError::unavailable(
            "the token response has an empty access_token",
        ));
    }
    let expires_at = expiry(&body, sent_at, default_lifetime);
    if expires_at <= OffsetDateTime::now_utc().unix_timestamp() {
        return Err(ProviderError::unavailable(
            "the provider issued a token that has already expired",
        ));
    }
    let granted = body
        .scope
        .as_deref()
        .map(ScopeSet::from_granted)
        .filter(|granted| !granted.is_empty())
        .unwrap_or_else(|| requested.clone());
    Ok(AccessToken {
        access_token: body.access_token,
        token_type: body.token_type.unwrap_or_else(|| "Bearer".into()),
        expires_at,
        scopes: granted.to_vec(),
    })
}

/// The token's expiry in Unix seconds: `expires_in` (from `sent_at`) or
/// `expires_at`, the earlier if both are given; else the access token's own
/// JWT `exp`; else the configured default lifetime.
fn expiry(body: &TokenResponse, sent_at: i64, default_lifetime: Duration) -> i64 {
    let relative = body
        .expires_in
        .as_ref()
        .and_then(as_seconds)
        .map(|secs| sent_at.saturating_add(secs));
    let absolute = body.expires_at.as_ref().and_then(as_seconds);
    match (relative, absolute) {
        (Some(a), Some(b)) => a.min(b),
        (Some(at), None) | (None, Some(at)) => at,
        (None, None) => jwt_exp(&body.access_token)
            .unwrap_or_else(|| sent_at.saturating_add(default_lifetime.as_secs() as i64)),
    }
}

/// Seconds as a JSON number or numeric string (some providers quote them).
fn as_seconds(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads `exp` from a JWT access token without verifying it: the provider
/// just handed it to us over TLS, and we only want its lifetime.
fn jwt_exp(token: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Exp {
        exp: i64,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Exp>(token)
        .ok()
        .map(|claims| claims.exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        Answer {
            status,
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    fn scopes() -> ScopeSet {
        ScopeSet::single("accounts:read")
    }

    fn now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    const DEFAULT: Duration = Duration::from_secs(7200);

    #[test]
    fn expires_in_counts_from_the_moment_of_sending() {
        let sent = now() - 5;
        let body = r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#;
        let token = parse_token_answer(&answer(200, body), sent, &scopes(), DEFAULT).unwrap();
        assert_eq!(token.expires_at, sent + 3600);
        assert_eq!(token.scopes, ["accounts:read"]);
    }

    #[test]
    fn expires_at_is_read_as_epoch_seconds() {
        let at = now() + 100;
        let body = format!(r#"{{"access_token":"t","expires_at":{at},"scope":"b a"}}"#);
        let token = parse_token_answer(&answer(201, &body), now(), &scopes(), DEFAULT).unwrap();
        assert_eq!(token.expires_at, at);
        assert_eq!(token.scopes, ["a", "b"]);
        assert_eq!(token.token_type, "Bearer");
    }

    #[test]
    fn without_expiry_fields_the_jwt_exp_then_the_default_applies() {
        let exp = now() + 500;
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            format!(r#"{{"exp":{exp}}}"#),
        );
        let jwt = format!("eyJhbGciOiJub25lIn0.{payload}.sig");
        let body = format!(r#"{{"access_token":"{jwt}"}}"#);
        let token = parse_token_answer(&answer(200, &body), now(), &scopes(), DEFAULT).unwrap();
        assert_eq!(token.expires_at, exp);

        let sent = now();
        let token = parse_token_answer(
            &answer(200, r#"{"access_token":"opaque"}"#),
            sent,
            &scopes(),
            DEFAULT,
        )
        .unwrap();
        assert_eq!(token.expires_at, sent + 7200);
    }

    #[test]
    fn errors_are_classified() {
        let oauth = parse_token_answer(
            &answer(400, r#"{"error":"invalid_scope","error_description":"no"}"#),
            now(),
            &scopes(),
            DEFAULT,
        );
        assert!(
            matches!(oauth, Err(ProviderError::OAuth { ref error, .. }) if error == "invalid_scope")
        );
        assert!(matches!(
            parse_token_answer(&answer(429, "{}"), now(), &scopes(), DEFAULT),
            Err(ProviderError::RateLimited { .. })
        ));
        for (status, body) in [
            (503, "{}"),
            (200, "{\"access_tok"),
            (200, "<html>"),
            (404, ""),
        ] {
            assert!(
                matches!(
                    parse_token_answer(&answer(status, body), now(), &scopes(), DEFAULT),
                    Err(ProviderError::Unavailable { .. })
                ),
                "{status} {body}"
            );
        }
        let expired = format!(r#"{{"access_token":"t","expires_at":{}}}"#, now() - 10);
        assert!(parse_token_answer(&answer(200, &expired), now(), &scopes(), DEFAULT).is_err());
    }
}
