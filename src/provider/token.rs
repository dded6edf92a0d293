//! The OAuth 2.0 token endpoint: client credentials (with `sub` for user
//! tokens, as Moneyhub does), the authorization-code exchange and refresh.
//! Parses RFC 6749 answers and MoneyKit's error shape.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use time::OffsetDateTime;
use url::form_urlencoded;

use super::ProviderError;
use super::client_auth::ClientAuth;
use super::discovery::Endpoints;
use super::http::{Answer, Upstream};
use super::resilience::Replay;
use crate::config::ExpiryField;
use crate::domain::{AccessToken, ScopeSet, UserId};

/// What a token request asks for.
pub enum Grant<'a> {
    /// A token for this client, or for a user when `sub` is given.
    ClientCredentials {
        sub: Option<&'a UserId>,
        scopes: &'a ScopeSet,
    },
    /// The code the provider redirected the user back with.
    AuthorizationCode {
        code: &'a str,
        redirect_uri: &'a str,
        code_verifier: Option<&'a str>,
        sub: Option<&'a UserId>,
    },
    Refresh {
        refresh_token: &'a str,
    },
}

/// A successful token response, with its expiry resolved.
pub struct TokenResponse {
    pub token: AccessToken,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
}

/// A client of one provider's token endpoint.
#[derive(Debug)]
pub struct TokenEndpoint {
    pub(super) upstream: Upstream,
    /// The revocation endpoint's, on a breaker of its own: callers revoking
    /// while it fails must not open the breaker token issuance goes through.
    pub(super) revocation: Upstream,
    pub(super) client_id: String,
    pub(super) auth: ClientAuth,
    pub(super) expiry: ExpiryRules,
}

/// How a token response's expiry is read.
#[derive(Debug, Clone, Copy)]
pub struct ExpiryRules {
    /// Which response field(s) to read.
    pub field: ExpiryField,
    /// When a response carries no expiry at all.
    pub default_lifetime: Duration,
    /// Longer is a misread expiry (milliseconds, say), not a token to cache.
    pub max_lifetime: Duration,
}

impl TokenEndpoint {
    /// Requests a token, retrying what may be retried; each attempt carries
    /// a fresh client assertion (a new `jti`), as providers reject replays.
    pub async fn request(
        &self,
        endpoints: Arc<Endpoints>,
        grant: Grant<'_>,
    ) -> Result<TokenResponse, ProviderError> {
        // A code or refresh token is spent once the provider acts on it.
        let replay = match grant {
            Grant::ClientCredentials { .. } => Replay::Safe,
            _ => Replay::OnlyUnprocessed,
        };
        let (endpoints, grant) = (&endpoints, &grant);
        self.upstream
            .call(replay, move || self.attempt(endpoints, grant))
            .await
    }

    async fn attempt(
        &self,
        endpoints: &Endpoints,
        grant: &Grant<'_>,
    ) -> Result<TokenResponse, ProviderError> {
        // Expiry counts from before the request is sent, so time spent in
        // flight never makes a token look fresher than it is.
        let sent_at = OffsetDateTime::now_utc().unix_timestamp();
        let (form, basic) = self.form(endpoints, grant, sent_at)?;
        let mut request = self
            .upstream
            .client
            .post(endpoints.token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(form);
        if let Some(basic) = basic {
            request = request.header(AUTHORIZATION, basic);
        }
        let answer = self.upstream.send(request, "token").await?;
        let requested = match grant {
            Grant::ClientCredentials { scopes, .. } => Some(*scopes),
            _ => None,
        };
        parse_token_answer(&answer, sent_at, requested, self.expiry)
    }

    /// Revokes `token` at the revocation endpoint (RFC 7009), authenticated
    /// as token requests are (a fresh assertion per attempt). Revoking is
    /// idempotent, so every failure the retry policy allows is retried.
    pub async fn revoke(
        &self,
        endpoints: &Endpoints,
        revocation_url: &url::Url,
        token: &str,
        hint: Option<TokenTypeHint>,
    ) -> Result<(), ProviderError> {
        self.revocation
            .call(Replay::Safe, move || async move {
                let (body, basic) = self.revocation_form(endpoints, token, hint)?;
                let mut request = self
                    .revocation
                    .client
                    .post(revocation_url.clone())
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(ACCEPT, "application/json")
                    .body(body);
                if let Some(basic) = basic {
                    request = request.header(AUTHORIZATION, basic);
                }
                let answer = self.revocation.send(request, "revocation").await?;
                parse_revocation_answer(&answer)
            })
            .await
    }

    /// The revocation request's form body and, for Basic, the header value.
    fn revocation_form(
        &self,
        endpoints: &Endpoints,
        token: &str,
        hint: Option<TokenTypeHint>,
    ) -> Result<(String, Option<reqwest::header::HeaderValue>), ProviderError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token);
        if let Some(hint) = hint {
            form.append_pair("token_type_hint", hint.as_str());
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let basic = self.authenticate(&mut form, endpoints, now)?;
        Ok((form.finish(), basic))
    }

    /// Adds the client's credentials to `form`; for Basic, the header value.
    fn authenticate(
        &self,
        form: &mut form_urlencoded::Serializer<'_, String>,
        endpoints: &Endpoints,
        now: i64,
    ) -> Result<Option<reqwest::header::HeaderValue>, ProviderError> {
        self.auth
            .apply(
                form,
                &self.client_id,
                endpoints.token_url.as_str(),
                endpoints.issuer.as_deref(),
                now,
            )
            .map_err(|e| {
                ProviderError::unavailable(format!("cannot authenticate the request: {e}"))
            })
    }

    /// The form body and, for Basic authentication, the header value.
    fn form(
        &self,
        endpoints: &Endpoints,
        grant: &Grant<'_>,
        now: i64,
    ) -> Result<(String, Option<reqwest::header::HeaderValue>), ProviderError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        match grant {
            Grant::ClientCredentials { sub, scopes } => {
                form.append_pair("grant_type", "client_credentials")
                    .append_pair("scope", &scopes.to_space_separated());
                if let Some(sub) = sub {
                    form.append_pair("sub", sub.as_str());
                }
            }
            Grant::AuthorizationCode {
                code,
                redirect_uri,
                code_verifier,
                sub,
            } => {
                form.append_pair("grant_type", "authorization_code")
                    .append_pair("code", code)
                    .append_pair("redirect_uri", redirect_uri);
                if let Some(verifier) = code_verifier {
                    form.append_pair("code_verifier", verifier);
                }
                if let Some(sub) = sub {
                    form.append_pair("sub", sub.as_str());
                }
            }
            Grant::Refresh { refresh_token } => {
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", refresh_token);
            }
        }
        let basic = self.authenticate(&mut form, endpoints, now)?;
        Ok((form.finish(), basic))
    }
}

/// RFC 7009's `token_type_hint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTypeHint {
    AccessToken,
    RefreshToken,
}

impl TokenTypeHint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::RefreshToken => "refresh_token",
        }
    }
}

/// RFC 7009 §2.2: 200 means revoked, or never valid; an error is an RFC
/// 6749 §5.2 body (`unsupported_token_type`, `invalid_client`, …).
fn parse_revocation_answer(answer: &Answer) -> Result<(), ProviderError> {
    if answer.is_success() {
        return Ok(());
    }
    if answer.status == 429 {
        return Err(answer.rate_limited(ErrorBody::parse(&answer.body).map(|e| e.error)));
    }
    if answer.status == 408 || answer.status >= 500 {
        return Err(answer.unexpected());
    }
    match ErrorBody::parse(&answer.body) {
        Some(body) => Err(ProviderError::OAuth {
            status: answer.status,
            error: body.error,
            description: body.error_description,
        }),
        None => Err(answer.misdirected("revocation endpoint", "without an OAuth error code")),
    }
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    expires_at: Option<serde_json::Value>,
    scope: Option<String>,
    id_token: Option<String>,
    refresh_token: Option<String>,
}

/// An error body: RFC 6749 §5.2 (`error`, `error_description`) or MoneyKit's
/// (`error_code`, `error_message`, `documentation_url`).
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(alias = "error_code")]
    error: String,
    #[serde(alias = "error_message")]
    error_description: Option<String>,
}

impl ErrorBody {
    fn parse(body: &[u8]) -> Option<Self> {
        let parsed: Self = serde_json::from_slice(body).ok()?;
        // Error codes are short printable ASCII; anything else is not one.
        let plausible = !parsed.error.is_empty()
            && parsed.error.len() <= 64
            && parsed
                .error
                .bytes()
                .all(|b| (0x21..=0x7E).contains(&b) && b != b'"' && b != b'\\');
        plausible.then_some(parsed)
    }
}

/// The error an unsuccessful answer of an OAuth endpoint (token, PAR)
/// reports: rate limited, failing, an RFC 6749 error, or misdirected.
pub(super) fn error_answer(answer: &Answer, endpoint: &str) -> ProviderError {
    if answer.status == 429 {
        return answer.rate_limited(ErrorBody::parse(&answer.body).map(|e| e.error));
    }
    if answer.status >= 500 {
        return answer.unexpected();
    }
    match ErrorBody::parse(&answer.body) {
        Some(body) => ProviderError::OAuth {
            status: answer.status,
            error: body.error,
            description: body.error_description,
        },
        // 408: the provider tired of waiting for the request, like a timeout.
        None if answer.status == 408 => answer.unexpected(),
        None => answer.misdirected(endpoint, "without an OAuth error code"),
    }
}

/// Turns a token endpoint answer into a token or the error it reports.
/// `requested` is the scope set asked for, reported when the answer omits `scope`.
fn parse_token_answer(
    answer: &Answer,
    sent_at: i64,
    requested: Option<&ScopeSet>,
    rules: ExpiryRules,
) -> Result<TokenResponse, ProviderError> {
    if !answer.is_success() {
        return Err(error_answer(answer, "token endpoint"));
    }
    let body: TokenBody = answer.json()?;
    if body.access_token.is_empty() {
        return Err(ProviderError::unavailable(
            "the token response has an empty access_token",
        ));
    }
    let expires_at = expiry(&body, sent_at, rules);
    if expires_at <= OffsetDateTime::now_utc().unix_timestamp() {
        return Err(ProviderError::unavailable(
            "the provider issued a token that has already expired",
        ));
    }
    let max = rules.max_lifetime.as_secs();
    if expires_at.saturating_sub(sent_at) as u64 > max {
        return Err(ProviderError::unavailable(format!(
            "the provider issued a token living longer than max_token_lifetime_secs ({max} s); is its expiry in milliseconds?"
        )));
    }
    // RFC 6749 §5.1: no `scope` means the one requested. Some providers
    // (oidc-provider among them) also leave it out when they granted less,
    // even nothing; a JWT access token then says what it carries.
    let granted = body
        .scope
        .as_deref()
        .map(ScopeSet::from_granted)
        .filter(|granted| !granted.is_empty())
        .or_else(|| jwt_scope(&body.access_token))
        .or_else(|| requested.cloned());
    if let (Some(requested), Some(granted)) = (requested, &granted) {
        if !requested.is_empty() && granted.is_empty() {
            return Err(answer.misdirected(
                "token endpoint",
                "with a token carrying none of the requested scopes; does the provider grant them to this client?",
            ));
        }
    }
    Ok(TokenResponse {
        token: AccessToken {
            access_token: body.access_token,
            token_type: body.token_type.unwrap_or_else(|| "Bearer".into()),
            expires_at,
            scopes: granted.map(|s| s.to_vec()).unwrap_or_default(),
        },
        id_token: body.id_token.filter(|t| !t.is_empty()),
        refresh_token: body.refresh_token.filter(|t| !t.is_empty()),
    })
}

/// The token's expiry in Unix seconds. Its lifetime comes from
/// `expires_in` or else the access token's JWT `exp − iat`, counted from
/// `sent_at` on our clock, since the provider's may run ahead; `expires_at`
/// (on the provider's clock) only caps it, and is used alone only when
/// nothing relative is given; then the JWT's bare `exp`; then the default.
/// `rules.field` says which of `expires_in` and `expires_at` are read.
fn expiry(body: &TokenBody, sent_at: i64, rules: ExpiryRules) -> i64 {
    let read = |value: &Option<serde_json::Value>| value.as_ref().and_then(as_seconds);
    let (expires_in, expires_at) = match rules.field {
        ExpiryField::ExpiresIn => (read(&body.expires_in), None),
        ExpiryField::ExpiresAt => (None, read(&body.expires_at)),
        ExpiryField::Auto => (read(&body.expires_in), read(&body.expires_at)),
    };
    let jwt = jwt_times(&body.access_token);
    let lifetime = expires_in.or_else(|| {
        jwt.as_ref()
            .and_then(|jwt| Some(jwt.exp.saturating_sub(jwt.iat?)))
    });
    match (lifetime, expires_at) {
        (Some(lifetime), cap) => {
            let relative = sent_at.saturating_add(lifetime);
            cap.map_or(relative, |cap| relative.min(cap))
        }
        (None, Some(expires_at)) => expires_at,
        (None, None) => jwt
            .map(|jwt| jwt.exp)
            .unwrap_or_else(|| sent_at.saturating_add(rules.default_lifetime.as_secs() as i64)),
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

/// A JWT access token's `exp` and `iat`.
#[derive(Deserialize)]
struct JwtTimes {
    exp: i64,
    iat: Option<i64>,
}

/// The scope a JWT access token carries, read without verifying it (as its
/// lifetime is): its `scope` claim (RFC 9068 §2.2.3); none at all for an
/// RFC 9068 token (`typ: at+jwt`) without one; `None` when the token says
/// nothing (opaque, or a plain JWT without the claim).
fn jwt_scope(token: &str) -> Option<ScopeSet> {
    #[derive(Deserialize)]
    struct ScopeClaim {
        scope: Option<String>,
    }
    let header = jsonwebtoken::decode_header(token).ok()?;
    let claims = jsonwebtoken::dangerous::insecure_decode_claims::<ScopeClaim>(token).ok()?;
    match claims.scope {
        Some(scope) => Some(ScopeSet::from_granted(&scope)),
        None => header
            .typ
            .is_some_and(|typ| {
                let typ = typ.to_ascii_lowercase();
                typ == "at+jwt" || typ == "application/at+jwt"
            })
            .then(|| ScopeSet::from_granted("")),
    }
}

/// Reads `exp` and `iat` from a JWT access token without verifying it: the
/// provider just handed it to us over TLS, and we only want its lifetime.
fn jwt_times(token: &str) -> Option<JwtTimes> {
    jsonwebtoken::dangerous::insecure_decode_claims::<JwtTimes>(token).ok()
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

    fn rules(field: ExpiryField) -> ExpiryRules {
        ExpiryRules {
            field,
            default_lifetime: Duration::from_secs(7200),
            max_lifetime: Duration::from_secs(86_400),
        }
    }

    fn parse(answer: &Answer, sent_at: i64) -> Result<AccessToken, ProviderError> {
        parse_token_answer(answer, sent_at, Some(&scopes()), rules(ExpiryField::Auto))
            .map(|r| r.token)
    }

    /// An unsigned JWT carrying `claims`, as an access token.
    fn jwt(claims: &str) -> String {
        let payload =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims);
        format!("eyJhbGciOiJub25lIn0.{payload}.sig")
    }

    fn now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn expires_in_counts_from_the_moment_of_sending() {
        let sent = now() - 5;
        let body = r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#;
        let token = parse(&answer(200, body), sent).unwrap();
        assert_eq!(token.expires_at, sent + 3600);
        assert_eq!(token.scopes, ["accounts:read"]);
    }

    #[test]
    fn expires_at_is_read_as_epoch_seconds() {
        let at = now() + 100;
        let body = format!(r#"{{"access_token":"t","expires_at":{at},"scope":"b a"}}"#);
        let token = parse(&answer(201, &body), now()).unwrap();
        assert_eq!(token.expires_at, at);
        assert_eq!(token.scopes, ["a", "b"]);
        assert_eq!(token.token_type, "Bearer");
    }

    #[test]
    fn without_expiry_fields_the_jwt_lifetime_then_its_exp_then_the_default_applies() {
        let sent = now();
        let ahead = sent + 600;
        let body = format!(
            r#"{{"access_token":"{}"}}"#,
            jwt(&format!(r#"{{"iat":{ahead},"exp":{}}}"#, ahead + 500))
        );
        let token = parse(&answer(200, &body), sent).unwrap();
        assert_eq!(token.expires_at, sent + 500, "exp − iat from our clock");

        let exp = now() + 500;
        let body = format!(
            r#"{{"access_token":"{}"}}"#,
            jwt(&format!(r#"{{"exp":{exp}}}"#))
        );
        let token = parse(&answer(200, &body), now()).unwrap();
        assert_eq!(token.expires_at, exp);

        let sent = now();
        let token = parse(&answer(200, r#"{"access_token":"opaque"}"#), sent).unwrap();
        assert_eq!(token.expires_at, sent + 7200);
    }

    #[test]
    fn errors_are_classified() {
        let oauth = parse(
            &answer(400, r#"{"error":"invalid_scope","error_description":"no"}"#),
            now(),
        );
        assert!(
            matches!(oauth, Err(ProviderError::OAuth { ref error, .. }) if error == "invalid_scope")
        );
        assert!(matches!(
            parse(&answer(429, "{}"), now()),
            Err(ProviderError::RateLimited { .. })
        ));
        assert!(matches!(
            parse(&answer(404, ""), now()),
            Err(ProviderError::Misdirected {
                status: Some(404),
                ..
            })
        ));
        for (status, body) in [
            (503, "{}"),
            (200, "{\"access_tok"),
            (200, "<html>"),
            (408, ""),
        ] {
            assert!(
                matches!(
                    parse(&answer(status, body), now()),
                    Err(ProviderError::Unavailable { .. })
                ),
                "{status} {body}"
            );
        }
        let expired = format!(r#"{{"access_token":"t","expires_at":{}}}"#, now() - 10);
        assert!(parse(&answer(200, &expired), now()).is_err());
    }

    #[test]
    fn revocation_answers_are_classified() {
        assert!(parse_revocation_answer(&answer(200, "")).is_ok());
        let refused = parse_revocation_answer(&answer(
            400,
            r#"{"error":"unsupported_token_type","error_description":"structured tokens cannot be revoked"}"#,
        ));
        assert!(
            matches!(refused, Err(ProviderError::OAuth { ref error, .. }) if error == "unsupported_token_type")
        );
        assert!(matches!(
            parse_revocation_answer(&answer(503, "down")),
            Err(ProviderError::Unavailable {
                status: Some(503),
                ..
            })
        ));
        assert!(matches!(
            parse_revocation_answer(&answer(404, "")),
            Err(ProviderError::Misdirected { .. })
        ));
    }

    #[test]
    fn moneykit_errors_are_read_like_oauth_errors() {
        let body = r#"{"error_code":"api_error.auth.unauthorized","error_message":"Accounts access not permitted","documentation_url":"x"}"#;
        let error = parse(&answer(401, body), now()).unwrap_err();
        assert!(
            matches!(error, ProviderError::OAuth { ref error, .. } if error == "api_error.auth.unauthorized"),
            "{error:?}"
        );
        let limited = r#"{"error_code":"api_error.rate_limit_exceeded","error_message":"slow"}"#;
        let error = parse(&answer(429, limited), now()).unwrap_err();
        assert!(
            matches!(error, ProviderError::RateLimited { code: Some(ref code), .. } if code == "api_error.rate_limit_exceeded"),
            "{error:?}"
        );
    }

    #[test]
    fn an_explicit_expiry_field_is_the_only_one_read() {
        let sent = now();
        let body = format!(
            r#"{{"access_token":"t","expires_in":100,"expires_at":{}}}"#,
            sent + 50
        );
        let read = |field| {
            parse_token_answer(&answer(200, &body), sent, Some(&scopes()), rules(field))
                .unwrap()
                .token
                .expires_at
        };
        assert_eq!(read(ExpiryField::ExpiresIn), sent + 100);
        assert_eq!(read(ExpiryField::ExpiresAt), sent + 50);
        assert_eq!(read(ExpiryField::Auto), sent + 50, "the earlier of the two");
    }

    #[test]
    fn a_provider_clock_ten_minutes_ahead_is_read_by_our_clock() {
        let sent = now();
        let provider_now = sent + 600;
        let access_token = jwt(&format!(
            r#"{{"iat":{provider_now},"exp":{}}}"#,
            provider_now + 3600
        ));
        let both = format!(
            r#"{{"access_token":"{access_token}","expires_in":3600,"expires_at":{}}}"#,
            provider_now + 3600
        );
        let expires_at_only = format!(
            r#"{{"access_token":"{access_token}","expires_at":{}}}"#,
            provider_now + 3600
        );
        for body in [both, expires_at_only] {
            for field in [ExpiryField::Auto, ExpiryField::ExpiresAt] {
                let parsed =
                    parse_token_answer(&answer(200, &body), sent, None, rules(field)).unwrap();
                assert_eq!(parsed.token.expires_at, sent + 3600, "{field:?} {body}");
            }
        }
        // A provider clock behind ours: its expires_at is the earlier, and caps.
        let behind = format!(
            r#"{{"access_token":"t","expires_in":3600,"expires_at":{}}}"#,
            sent - 600 + 3600
        );
        assert_eq!(
            parse(&answer(200, &behind), sent).unwrap().expires_at,
            sent + 3000
        );
    }

    /// A JWT with this header and claims (signature not checked here).
    fn jwt_with(header: &str, claims: &str) -> String {
        let engine = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            base64::Engine::encode(engine, header),
            base64::Engine::encode(engine, claims)
        )
    }

    #[test]
    fn without_a_scope_field_a_jwt_access_token_says_what_was_granted() {
        let exp = now() + 3600;
        let requested = ScopeSet::from_granted("accounts:read payments:write");
        let parse_with = |access_token: String| {
            let body = format!(r#"{{"access_token":"{access_token}","expires_in":3600}}"#);
            parse_token_answer(
                &answer(200, &body),
                now(),
                Some(&requested),
                rules(ExpiryField::Auto),
            )
        };
        let at_jwt = r#"{"alg":"RS256","typ":"at+jwt","kid":"k"}"#;

        // oidc-provider leaves out `scope` when it granted less than asked.
        let partial = jwt_with(
            at_jwt,
            &format!(r#"{{"scope":"accounts:read","exp":{exp}}}"#),
        );
        let token = parse_with(partial).unwrap().token;
        assert_eq!(token.scopes, ["accounts:read"]);

        // …and when it granted nothing: a token for none of them is refused.
        let none = jwt_with(at_jwt, &format!(r#"{{"exp":{exp}}}"#));
        let error = parse_with(none).err().expect("no scope granted");
        assert!(
            matches!(&error, ProviderError::Misdirected { reason, .. } if reason.contains("none of the requested scopes")),
            "{error:?}"
        );

        // A plain JWT without the claim, or an opaque token, says nothing:
        // RFC 6749 §5.1 then means the scope requested.
        let plain = jwt_with(
            r#"{"alg":"RS256","typ":"JWT"}"#,
            &format!(r#"{{"exp":{exp}}}"#),
        );
        for access_token in [plain, "opaque".to_owned()] {
            let token = parse_with(access_token).unwrap().token;
            assert_eq!(token.scopes, ["accounts:read", "payments:write"]);
        }
    }

    #[test]
    fn an_expires_at_in_milliseconds_is_a_clear_error() {
        let millis = (now() + 3600) * 1000;
        let body = format!(r#"{{"access_token":"t","expires_at":{millis}}}"#);
        let error = parse(&answer(200, &body), now()).unwrap_err();
        assert!(
            matches!(&error, ProviderError::Unavailable { reason, .. } if reason.contains("max_token_lifetime_secs")),
            "{error:?}"
        );
        let body = format!(r#"{{"access_token":"t","expires_in":{}}}"#, 3600 * 1000);
        assert!(parse(&answer(200, &body), now()).is_err());
    }

    /// JSON-ish bodies: real field names with values of any type, truncated
    /// at any point, or plain bytes.
    fn bodies() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let value = prop_oneof![
            Just("null".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| n.to_string()),
            ".{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
        ];
        let field = prop_oneof![
            Just("access_token"),
            Just("token_type"),
            Just("expires_in"),
            Just("expires_at"),
            Just("scope"),
            Just("id_token"),
            Just("refresh_token"),
            Just("error"),
            Just("error_description"),
        ];
        let json = proptest::collection::vec((field, value), 0..8).prop_flat_map(|fields| {
            let body = format!(
                "{{{}}}",
                fields
                    .iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let len = body.len();
            (Just(body), 0..=len)
                .prop_map(|(body, cut)| body.as_bytes()[..cut.max(body.len() / 2)].to_vec())
        });
        prop_oneof![json, proptest::collection::vec(any::<u8>(), 0..256)]
    }

    proptest::proptest! {
        /// Any three dot-separated base64url segments (a JWT's shape, with
        /// arbitrary content) yield an `exp` or nothing; never a panic.
        #[test]
        fn any_jwt_shaped_access_token_reads_an_expiry_or_none(
            parts in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 3),
            exp in proptest::prelude::any::<i64>(),
            well_formed_payload in proptest::prelude::any::<bool>(),
        ) {
            use base64::Engine;
            let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let payload = if well_formed_payload {
                engine.encode(format!(r#"{{"exp":{exp}}}"#))
            } else {
                engine.encode(&parts[1])
            };
            let token = format!("{}.{payload}.{}", engine.encode(&parts[0]), engine.encode(&parts[2]));
            let read = jwt_times(&token).map(|times| times.exp);
            if well_formed_payload {
                proptest::prop_assert!(read.is_none() || read == Some(exp));
            }
        }

        /// Whatever a token endpoint answers, the parser returns a token or
        /// an error; it never panics, and a token never outlives the maximum.
        #[test]
        fn any_token_endpoint_answer_parses_without_panicking(
            status in 100u16..600,
            body in bodies(),
        ) {
            let answer = Answer {
                status,
                headers: reqwest::header::HeaderMap::new(),
                body,
            };
            for field in [ExpiryField::Auto, ExpiryField::ExpiresIn, ExpiryField::ExpiresAt] {
                let sent = now();
                if let Ok(parsed) = parse_token_answer(&answer, sent, None, rules(field)) {
                    proptest::prop_assert!(!parsed.token.access_token.is_empty());
                    proptest::prop_assert!(parsed.token.expires_at > sent - 1);
                    proptest::prop_assert!(parsed.token.expires_at <= sent + 86_400);
                }
            }
        }
    }
}
