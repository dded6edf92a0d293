//! The sandbox's OpenID side: discovery, JWKS and the token endpoint.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Form;
use axum::Json;
use axum::extract::{Query, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{Endpoint, ExpiryField, IdTokenFault, SUPPORTED_SCOPES, State, serve_fault};
use crate::provider::users_api::ConnectionBody;
use crate::provider::{SigningAlgorithm, SigningKey, find_key};
use crate::random::random_hex;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub async fn discovery(AxumState(state): AxumState<Arc<State>>) -> Json<serde_json::Value> {
    let issuer = state.issuer.as_str();
    let pushed = state
        .options
        .lock()
        .expect("options lock")
        .pushed_authorization_requests;
    let mut document = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": state.token_url.as_str(),
        "jwks_uri": format!("{issuer}/certs"),
        "authorization_endpoint": format!("{issuer}/auth"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
        "scopes_supported": SUPPORTED_SCOPES,
        "request_parameter_supported": true,
        "request_object_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
        "claims_parameter_supported": true,
    });
    if pushed {
        document["pushed_authorization_request_endpoint"] = format!("{issuer}/request").into();
    }
    Json(document)
}

pub async fn jwks(AxumState(state): AxumState<Arc<State>>) -> Response {
    state.jwks_requests.fetch_add(1, Ordering::SeqCst);
    if let Some(response) = serve_fault(&state, Endpoint::Jwks).await {
        return response;
    }
    let mut jwk = serde_json::to_value(state.signing_key().public_jwk()).unwrap_or_default();
    if let Some(alg) = *state.jwks_stated_alg.lock().expect("jwks lock") {
        jwk["alg"] = alg.into();
    }
    let mut response = Json(serde_json::json!({ "keys": [jwk] })).into_response();
    if let Some(secs) = *state.jwks_max_age.lock().expect("jwks lock") {
        let value = format!("public, max-age={secs}");
        if let Ok(value) = value.parse() {
            response.headers_mut().insert(header::CACHE_CONTROL, value);
        }
    }
    response
}

/// An authorization code awaiting exchange.
pub struct AuthorizationCode {
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    code_challenge: Option<String>,
    sub: String,
    scope: String,
    connection_id: String,
    expires_at: i64,
}

/// What a refresh token stands for.
pub struct RefreshGrant {
    /// The code exchange this token descends from, through its rotations.
    grant_id: String,
    client_id: String,
    sub: String,
    scope: String,
    connection_id: String,
}

/// Codes are short-lived, as RFC 6749 §4.1.2 recommends.
const CODE_LIFETIME_SECS: i64 = 60;

/// A code already exchanged: the grant it started, remembered for a while.
pub struct UsedCode {
    grant_id: String,
    forget_at: i64,
}

/// How long a used code is remembered, to revoke its tokens on a replay.
const USED_CODE_MEMORY_SECS: i64 = 3600;

/// The authorization endpoint, reduced to what tests need: no login page,
/// the user consents at once and is redirected back with a code (as if they
/// had connected a bank). A pushed request (`request_uri`) or a signed
/// request object (`request`) is Moneyhub's way: the user is the one its
/// `claims.id_token.sub.value` names. Plain parameters remain for tests of
/// the explicit exchange: `sub` picks the user; else one is made up.
pub async fn authorize(
    AxumState(state): AxumState<Arc<State>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if params.contains_key("request_uri") || params.contains_key("request") {
        return match requested(&state, &params) {
            Ok((client_id, request)) => authorize_request(&state, client_id, &request),
            Err(reason) => (StatusCode::BAD_REQUEST, reason).into_response(),
        };
    }
    let param = |name: &str| params.get(name).cloned();
    let (Some(client_id), Some(redirect_uri)) = (param("client_id"), param("redirect_uri")) else {
        return (
            StatusCode::BAD_REQUEST,
            "client_id and redirect_uri are required",
        )
            .into_response();
    };
    if !state.clients.contains_key(&client_id) {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    let Ok(mut location) = url::Url::parse(&redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not a URL").into_response();
    };
    if param("response_type").as_deref() != Some("code") {
        return (
            StatusCode::BAD_REQUEST,
            "only response_type=code is supported",
        )
            .into_response();
    }
    let code_challenge = param("code_challenge");
    if code_challenge.is_some() && param("code_challenge_method").as_deref() != Some("S256") {
        return (
            StatusCode::BAD_REQUEST,
            "only code_challenge_method=S256 is supported",
        )
            .into_response();
    }
    let code = random_hex::<16>();
    let scope = param("scope").unwrap_or_else(|| "openid".into());
    state.codes.lock().expect("codes lock").insert(
        code.clone(),
        AuthorizationCode {
            client_id,
            redirect_uri,
            nonce: param("nonce"),
            code_challenge,
            sub: param("sub")
                .or_else(|| claimed_sub(param("claims").as_deref()))
                .unwrap_or_else(random_id),
            connection_id: format!("{}:{}", random_hex::<16>(), random_hex::<8>()),
            scope,
            expires_at: OffsetDateTime::now_utc().unix_timestamp() + CODE_LIFETIME_SECS,
        },
    );
    location.query_pairs_mut().append_pair("code", &code);
    if let Some(state_param) = param("state") {
        location
            .query_pairs_mut()
            .append_pair("state", &state_param);
    }
    // RFC 9207, as oidc-provider answers: which issuer the code is from.
    location
        .query_pairs_mut()
        .append_pair("iss", state.issuer.as_str());
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

/// The user a plain `claims` parameter names (`id_token.sub.value`).
fn claimed_sub(claims: Option<&str>) -> Option<String> {
    let claims: serde_json::Value = serde_json::from_str(claims?).ok()?;
    claims["id_token"]["sub"]["value"]
        .as_str()
        .map(str::to_owned)
}

/// A pushed authorization request awaiting its one use.
pub struct PushedRequest {
    client_id: String,
    params: serde_json::Map<String, serde_json::Value>,
    expires_at: i64,
}

/// The furthest ahead a request object's `exp` may be.
const MAX_REQUEST_OBJECT_LIFETIME_SECS: i64 = 3600;

/// The pushed authorization request endpoint (RFC 9126): authenticates the
/// client as the token endpoint does, checks the request (a signed request
/// object, or plain parameters), and hands back a single-use `request_uri`.
pub async fn pushed_authorization_request(
    AxumState(state): AxumState<Arc<State>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.par_requests.fetch_add(1, Ordering::SeqCst);
    for signed in ["client_assertion", "request"] {
        if let Some(jwt) = form.get(signed) {
            state.record_signed(jwt);
        }
    }
    let client_id = match authenticate_client(&state, &form) {
        Ok(client_id) => client_id,
        Err(reason) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", reason),
    };
    let params = match form.get("request") {
        Some(request) => match verify_request_object(&state, &client_id, request) {
            Ok(params) => params,
            Err(reason) => {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request_object", reason);
            }
        },
        None => {
            let mut params = serde_json::Map::new();
            for (name, value) in &form {
                if !name.starts_with("client_assertion") {
                    params.insert(name.clone(), parameter(name, value));
                }
            }
            params.insert("client_id".into(), client_id.clone().into());
            params
        }
    };
    if let Err(reason) = check_redirect_uri(&state, &params) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_redirect_uri", reason);
    }
    let request_uri = format!("urn:ietf:params:oauth:request_uri:{}", random_hex::<16>());
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let lifetime = state
        .options
        .lock()
        .expect("options lock")
        .pushed_request_lifetime_secs;
    let mut pushed = state.pushed_requests.lock().expect("pushed lock");
    pushed.retain(|_, request| request.expires_at > now);
    pushed.insert(
        request_uri.clone(),
        PushedRequest {
            client_id,
            params,
            expires_at: now.saturating_add(lifetime),
        },
    );
    (
        StatusCode::CREATED,
        Json(serde_json::json!({
            "request_uri": request_uri,
            "expires_in": lifetime,
        })),
    )
        .into_response()
}

/// A request parameter as the request object would carry it: `claims` is JSON.
fn parameter(name: &str, value: &str) -> serde_json::Value {
    match name {
        "claims" => serde_json::from_str(value).unwrap_or_else(|_| value.into()),
        _ => value.into(),
    }
}

/// The client and request an authorization names by `request_uri` (taken:
/// single use) or carries as a `request` object.
fn requested(
    state: &State,
    query: &HashMap<String, String>,
) -> Result<(String, serde_json::Map<String, serde_json::Value>), &'static str> {
    let client_id = query.get("client_id").ok_or("client_id is required")?;
    if let Some(request_uri) = query.get("request_uri") {
        let pushed = state
            .pushed_requests
            .lock()
            .expect("pushed lock")
            .remove(request_uri)
            .ok_or("request_uri is unknown, expired or already used")?;
        if pushed.client_id != *client_id {
            return Err("request_uri was pushed by another client");
        }
        if pushed.expires_at < OffsetDateTime::now_utc().unix_timestamp() {
            return Err("request_uri is unknown, expired or already used");
        }
        return Ok((pushed.client_id, pushed.params));
    }
    let request = query
        .get("request")
        .ok_or("request or request_uri is required")?;
    let params = verify_request_object(state, client_id, request)?;
    check_redirect_uri(state, &params)?;
    Ok((client_id.clone(), params))
}

/// Verifies a request object (RFC 9101) as Moneyhub would: signed with a
/// key in the client's registered JWKS, `iss` and `client_id` the client,
/// `aud` the issuer, `exp` in the future but at most an hour away.
fn verify_request_object(
    state: &State,
    client_id: &str,
    request: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, &'static str> {
    let jwks = state.clients.get(client_id).ok_or("unknown client")?;
    let header = decode_header(request).map_err(|_| "request is not a signed JWT")?;
    if !matches!(
        header.alg,
        Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256
    ) {
        return Err("unsupported request object algorithm");
    }
    let jwk = find_key(jwks, header.kid.as_deref()).ok_or("no registered key has this kid")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "registered key is unusable")?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[state.issuer.as_str()]);
    validation.set_issuer(&[client_id]);
    validation.set_required_spec_claims(&["exp", "aud", "iss"]);
    validation.leeway = 5;
    let params = decode::<serde_json::Map<String, serde_json::Value>>(request, &key, &validation)
        .map_err(|_| "request object failed verification (signature, aud, iss or exp)")?
        .claims;
    let exp = params
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    if exp > OffsetDateTime::now_utc().unix_timestamp() + MAX_REQUEST_OBJECT_LIFETIME_SECS {
        return Err("request object exp is more than an hour away");
    }
    if params.get("client_id").and_then(serde_json::Value::as_str) != Some(client_id) {
        return Err("request object client_id is not the client");
    }
    Ok(params)
}

fn check_redirect_uri(
    state: &State,
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), &'static str> {
    let redirect_uri = params
        .get("redirect_uri")
        .and_then(serde_json::Value::as_str)
        .ok_or("redirect_uri is required")?;
    let options = state.options.lock().expect("options lock");
    if options.redirect_uris.iter().any(|uri| uri == redirect_uri) {
        Ok(())
    } else {
        Err("redirect_uri is not registered for this client")
    }
}

/// Completes a verified request: the user its claims name consents at
/// once, and is redirected back with a code for them and the connection.
fn authorize_request(
    state: &State,
    client_id: String,
    request: &serde_json::Map<String, serde_json::Value>,
) -> Response {
    let text = |name: &str| request.get(name).and_then(serde_json::Value::as_str);
    if text("response_type") != Some("code") {
        return (
            StatusCode::BAD_REQUEST,
            "only response_type=code is supported",
        )
            .into_response();
    }
    let code_challenge = text("code_challenge").map(str::to_owned);
    if code_challenge.is_some() && text("code_challenge_method") != Some("S256") {
        return (
            StatusCode::BAD_REQUEST,
            "only code_challenge_method=S256 is supported",
        )
            .into_response();
    }
    let id_token_claims = request
        .get("claims")
        .and_then(|claims| claims.get("id_token"));
    let requested_value = |claim: &str| {
        id_token_claims
            .and_then(|claims| claims.get(claim))
            .and_then(|claim| claim.get("value"))
            .and_then(serde_json::Value::as_str)
    };
    let Some(sub) = requested_value("sub") else {
        return (
            StatusCode::BAD_REQUEST,
            "claims.id_token.sub.value must name the user",
        )
            .into_response();
    };
    if !state.users.lock().expect("users lock").contains_key(sub) {
        return (
            StatusCode::BAD_REQUEST,
            "claims.id_token.sub.value is not a known user",
        )
            .into_response();
    }
    let connection_id = match requested_value("mh:con_id") {
        Some(existing) => existing.to_owned(),
        None => {
            // Connecting a bank makes a connection, which the users API lists.
            let id = format!("{}:{}", random_hex::<16>(), random_hex::<8>());
            let now = OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .ok();
            state.add_connection(
                sub,
                ConnectionBody {
                    id: id.clone(),
                    name: "Sandbox Bank".to_owned(),
                    kind: "test".to_owned(),
                    connected_on: now.clone(),
                    last_updated: now,
                    expires_at: None,
                    account_ids: Vec::new(),
                    status: "ok".to_owned(),
                    error: None,
                },
            );
            id
        }
    };
    let (Some(redirect_uri), Ok(mut location)) = (
        text("redirect_uri"),
        url::Url::parse(text("redirect_uri").unwrap_or_default()),
    ) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not a URL").into_response();
    };
    let code = random_hex::<16>();
    state.codes.lock().expect("codes lock").insert(
        code.clone(),
        AuthorizationCode {
            client_id,
            redirect_uri: redirect_uri.to_owned(),
            nonce: text("nonce").map(str::to_owned),
            code_challenge,
            sub: sub.to_owned(),
            connection_id,
            scope: text("scope").unwrap_or("openid").to_owned(),
            expires_at: OffsetDateTime::now_utc().unix_timestamp() + CODE_LIFETIME_SECS,
        },
    );
    {
        let mut query = location.query_pairs_mut();
        query.append_pair("code", &code);
        if let Some(state_param) = text("state") {
            query.append_pair("state", state_param);
        }
        query.append_pair("iss", state.issuer.as_str());
    }
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

/// Claims the sandbox requires of a client assertion (RFC 7523 §3).
#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    jti: String,
    exp: i64,
}

/// Claims of the access tokens the sandbox issues.
#[derive(Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    pub scope: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": error, "error_description": description})),
    )
        .into_response()
}

pub async fn token(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    state.record_trace_headers(&headers);
    // Recorded before any fault, so tests see what every attempt sent.
    if let Some(assertion) = form.get("client_assertion") {
        state.record_signed(assertion);
    }
    if let Some(response) = serve_fault(&state, Endpoint::Token).await {
        return response;
    }
    let client_id = match authenticate_client(&state, &form) {
        Ok(client_id) => client_id,
        Err(reason) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", reason),
    };
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => client_credentials(&state, client_id, &form),
        Some("authorization_code") => authorization_code(&state, client_id, &form),
        Some("refresh_token") => refresh(&state, client_id, &form),
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials, authorization_code or refresh_token",
        ),
    }
}

fn client_credentials(
    state: &State,
    client_id: String,
    form: &HashMap<String, String>,
) -> Response {
    let scope = form.get("scope").map(String::as_str).unwrap_or("");
    let scopes: Vec<&str> = scope.split_ascii_whitespace().collect();
    if scopes.is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "scope is required",
        );
    }
    if let Some(unknown) = scopes.iter().find(|s| !SUPPORTED_SCOPES.contains(s)) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!("scope {unknown} is not supported"),
        );
    }
    let sub = form.get("sub").cloned();
    if let Some(sub) = &sub {
        if !state.users.lock().expect("users lock").contains_key(sub) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "sub is not a known user",
            );
        }
    }
    let scope = scopes
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(" ");
    let sub = sub.unwrap_or_else(|| client_id.clone());
    issue(state, &client_id, &sub, &scope, None)
}

fn authorization_code(
    state: &State,
    client_id: String,
    form: &HashMap<String, String>,
) -> Response {
    let invalid_grant =
        |reason: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", reason);
    let Some(code) = form.get("code") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code is required",
        );
    };
    // Removed on first use: a code is single-use whatever the outcome.
    let Some(grant) = state.codes.lock().expect("codes lock").remove(code) else {
        // RFC 6749 §4.1.2: a code used twice is refused, and what it issued
        // revoked (as oidc-provider, which Moneyhub runs, does).
        let used = state
            .used_codes
            .lock()
            .expect("used codes lock")
            .remove(code);
        if let Some(used) = used {
            state
                .refresh_tokens
                .lock()
                .expect("refresh lock")
                .retain(|_, refresh| refresh.grant_id != used.grant_id);
        }
        return invalid_grant("the code is unknown or was already used");
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let grant_id = random_hex::<16>();
    {
        let mut used_codes = state.used_codes.lock().expect("used codes lock");
        used_codes.retain(|_, used| used.forget_at > now);
        used_codes.insert(
            code.clone(),
            UsedCode {
                grant_id: grant_id.clone(),
                forget_at: now + USED_CODE_MEMORY_SECS,
            },
        );
    }
    if grant.expires_at < OffsetDateTime::now_utc().unix_timestamp() {
        return invalid_grant("the code has expired");
    }
    if grant.client_id != client_id {
        return invalid_grant("the code was issued to another client");
    }
    if form.get("redirect_uri") != Some(&grant.redirect_uri) {
        return invalid_grant("redirect_uri does not match the authorization request");
    }
    if let Some(challenge) = &grant.code_challenge {
        let verifier = form.get("code_verifier").map(String::as_str).unwrap_or("");
        let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if computed != *challenge {
            return invalid_grant("code_verifier does not match the code_challenge");
        }
    }
    let refresh_token = random_hex::<32>();
    state.refresh_tokens.lock().expect("refresh lock").insert(
        refresh_token.clone(),
        RefreshGrant {
            grant_id,
            client_id: client_id.clone(),
            sub: grant.sub.clone(),
            scope: grant.scope.clone(),
            connection_id: grant.connection_id.clone(),
        },
    );
    let id_token = IdToken {
        nonce: grant.nonce.as_deref(),
        connection_id: &grant.connection_id,
        refresh_token,
    };
    issue(state, &client_id, &grant.sub, &grant.scope, Some(id_token))
}

fn refresh(state: &State, client_id: String, form: &HashMap<String, String>) -> Response {
    let Some(token) = form.get("refresh_token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required",
        );
    };
    let mut refresh_tokens = state.refresh_tokens.lock().expect("refresh lock");
    // Rotated on use: the old refresh token stops working.
    let Some(grant) = refresh_tokens.remove(token) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the refresh token is unknown or was already used",
        );
    };
    if grant.client_id != client_id {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the refresh token belongs to another client",
        );
    }
    let rotated = random_hex::<32>();
    let (sub, scope, connection_id) = (
        grant.sub.clone(),
        grant.scope.clone(),
        grant.connection_id.clone(),
    );
    refresh_tokens.insert(rotated.clone(), grant);
    drop(refresh_tokens);
    let id_token = IdToken {
        nonce: None,
        connection_id: &connection_id,
        refresh_token: rotated,
    };
    issue(state, &client_id, &sub, &scope, Some(id_token))
}

/// Verifies the `private_key_jwt` assertion and returns the client id.
fn authenticate_client(
    state: &State,
    form: &HashMap<String, String>,
) -> Result<String, &'static str> {
    if form.get("client_assertion_type").map(String::as_str) != Some(JWT_BEARER) {
        return Err("client_assertion_type must be jwt-bearer");
    }
    let client_id = form.get("client_id").ok_or("client_id is required")?;
    let assertion = form
        .get("client_assertion")
        .ok_or("client_assertion is required")?;
    let jwks = state.clients.get(client_id).ok_or("unknown client")?;
    let header = decode_header(assertion).map_err(|_| "client_assertion is not a JWT")?;
    if !matches!(
        header.alg,
        Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256
    ) {
        return Err("unsupported client_assertion algorithm");
    }
    let jwk = find_key(jwks, header.kid.as_deref()).ok_or("no registered key has this kid")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "registered key is unusable")?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[state.token_url.as_str(), state.issuer.as_str()]);
    validation.set_issuer(&[client_id]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    validation.leeway = 5;
    let claims = decode::<AssertionClaims>(assertion, &key, &validation)
        .map_err(|_| "client_assertion failed verification (signature, aud, iss or exp)")?
        .claims;
    if claims.sub != *client_id || claims.iss != *client_id {
        return Err("client_assertion iss and sub must be the client_id");
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut seen = state.seen_jtis.lock().expect("jti lock");
    seen.retain(|_, exp| *exp + 60 > now);
    if seen.insert(claims.jti, claims.exp).is_some() {
        return Err("client_assertion jti was already used");
    }
    Ok(client_id.clone())
}

/// What a code exchange or refresh adds to the token response.
struct IdToken<'a> {
    nonce: Option<&'a str>,
    connection_id: &'a str,
    refresh_token: String,
}

/// Claims of the ID tokens the sandbox issues (Moneyhub's shape).
#[derive(Serialize)]
struct IdTokenClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    azp: Option<&'a str>,
    iat: i64,
    exp: i64,
    auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    #[serde(rename = "mh:con_id", skip_serializing_if = "Option::is_none")]
    connection_id: Option<&'a str>,
}

fn issue(
    state: &State,
    client_id: &str,
    sub: &str,
    scope: &str,
    id_token: Option<IdToken<'_>>,
) -> Response {
    let (lifetime, expiry_field, skew) = {
        let options = state.options.lock().expect("options lock");
        (
            options.token_lifetime.as_secs() as i64,
            options.expiry_field,
            options.clock_skew_secs,
        )
    };
    let now = OffsetDateTime::now_utc().unix_timestamp() + skew;
    let signing_key = state.signing_key();
    let claims = AccessTokenClaims {
        iss: state.issuer.to_string(),
        sub: sub.to_owned(),
        aud: client_id.to_owned(),
        client_id: client_id.to_owned(),
        scope: scope.to_owned(),
        iat: now,
        exp: now + lifetime,
        jti: random_id(),
    };
    // RFC 9068, as Moneyhub's documented tokens and oidc-provider's are.
    let Ok(access_token) = signing_key.sign_typed(&claims, "at+jwt") else {
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "signing failed",
        );
    };
    let mut body = serde_json::json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "scope": scope,
    });
    match expiry_field {
        ExpiryField::ExpiresIn => body["expires_in"] = lifetime.into(),
        ExpiryField::ExpiresAt => body["expires_at"] = (now + lifetime).into(),
        ExpiryField::Both => {
            body["expires_in"] = lifetime.into();
            body["expires_at"] = (now + lifetime).into();
        }
    }
    if let Some(id_token) = id_token {
        let fault = state
            .id_token_faults
            .lock()
            .expect("fault lock")
            .pop_front();
        let (audience, azp) = match &fault {
            Some(IdTokenFault::Audience(other)) => ((*other).into(), None),
            Some(IdTokenFault::ExtraAudience { other, azp }) => {
                (serde_json::json!([client_id, other]), *azp)
            }
            _ => (client_id.into(), None),
        };
        let (sub, connection_id) = match &fault {
            Some(IdTokenFault::Subject(other)) => (*other, Some(id_token.connection_id)),
            Some(IdTokenFault::Connection(other)) => (sub, *other),
            _ => (sub, Some(id_token.connection_id)),
        };
        let claims = IdTokenClaims {
            iss: state.issuer.as_str(),
            sub,
            aud: audience,
            azp,
            iat: now,
            exp: now + lifetime,
            auth_time: now,
            nonce: id_token.nonce,
            connection_id,
        };
        let signed = match &fault {
            Some(IdTokenFault::UnpublishedKey) => {
                SigningKey::generate(SigningAlgorithm::ES256).and_then(|(key, _)| key.sign(&claims))
            }
            _ => signing_key.sign(&claims),
        };
        let Ok(mut signed) = signed else {
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "signing failed",
            );
        };
        if let Some(IdTokenFault::Tampered) = fault {
            // Swap the payload for one naming another user, keeping the signature.
            let forged = URL_SAFE_NO_PAD.encode(
                serde_json::to_vec(&IdTokenClaims {
                    sub: "someone-else",
                    ..claims
                })
                .unwrap_or_default(),
            );
            let parts: Vec<&str> = signed.split('.').collect();
            signed = format!("{}.{forged}.{}", parts[0], parts[2]);
        }
        body["id_token"] = signed.into();
        body["refresh_token"] = id_token.refresh_token.into();
    }
    (StatusCode::OK, Json(body)).into_response()
}

/// Verifies an access token the sandbox issued; returns its claims.
pub fn verify_access_token(state: &State, token: &str) -> Option<AccessTokenClaims> {
    let jwk = state.signing_key().public_jwk();
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_aud = false;
    validation.set_issuer(&[state.issuer.as_str()]);
    let claims = decode::<AccessTokenClaims>(token, &key, &validation)
        .ok()?
        .claims;
    let revoked = state.revoked_access_tokens.lock().expect("revoked lock");
    (!revoked.contains(&claims.jti)).then_some(claims)
}

/// 12 random bytes in hex: the shape of Moneyhub's (MongoDB) ids.
pub fn random_id() -> String {
    random_hex::<12>()
}

/// Drops every refresh token issued for `sub`: the user was deleted.
pub fn revoke_user(state: &State, sub: &str) {
    state
        .refresh_tokens
        .lock()
        .expect("refresh lock")
        .retain(|_, grant| grant.sub != sub);
}

/// The revocation endpoint (RFC 7009): the client authenticates as at the
/// token endpoint; a refresh token of this client stops working at once,
/// an access token (by its `jti`) at the SCIM and users endpoints. An
/// unknown token, or another client's, is answered 200 and left alone
/// (§2.2).
pub async fn revoke(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.revocation_requests.fetch_add(1, Ordering::SeqCst);
    state.record_trace_headers(&headers);
    if let Some(response) = serve_fault(&state, Endpoint::Revocation).await {
        return response;
    }
    let client_id = match authenticate_client(&state, &form) {
        Ok(client_id) => client_id,
        Err(reason) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", reason),
    };
    let Some(token) = form.get("token").filter(|token| !token.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    match form.get("token_type_hint").map(String::as_str) {
        None | Some("access_token" | "refresh_token") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_token_type",
                "token_type_hint must be access_token or refresh_token",
            );
        }
    }
    {
        let mut refresh_tokens = state.refresh_tokens.lock().expect("refresh lock");
        if refresh_tokens
            .get(token)
            .is_some_and(|grant| grant.client_id == client_id)
        {
            refresh_tokens.remove(token);
        }
    }
    if let Some(claims) = verify_access_token(&state, token).filter(|c| c.client_id == client_id) {
        state
            .revoked_access_tokens
            .lock()
            .expect("revoked lock")
            .insert(claims.jti);
    }
    StatusCode::OK.into_response()
}
