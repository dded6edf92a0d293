//! The sandbox's OpenID side: discovery, JWKS and the token endpoint.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Form;
use axum::Json;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Endpoint, ExpiryField, SUPPORTED_SCOPES, State, find_key, serve_fault};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub async fn discovery(AxumState(state): AxumState<Arc<State>>) -> Json<serde_json::Value> {
    let issuer = state.issuer.as_str();
    Json(serde_json::json!({
        "issuer": issuer,
        "token_endpoint": state.token_url.as_str(),
        "jwks_uri": format!("{issuer}/certs"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
        "scopes_supported": SUPPORTED_SCOPES,
    }))
}

pub async fn jwks(AxumState(state): AxumState<Arc<State>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "keys": [state.signing_key.public_jwk()] }))
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
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    if let Some(response) = serve_fault(&state, Endpoint::Token).await {
        return response;
    }
    let client_id = match authenticate_client(&state, &form) {
        Ok(client_id) => client_id,
        Err(reason) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", reason),
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only client_credentials is supported",
        );
    }
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
    issue(&state, client_id, sub, &scopes)
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

fn issue(state: &State, client_id: String, sub: Option<String>, scopes: &[&str]) -> Response {
    let (lifetime, expiry_field) = {
        let options = state.options.lock().expect("options lock");
        (
            options.token_lifetime.as_secs() as i64,
            options.expiry_field,
        )
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let scope = scopes
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(" ");
    let claims = AccessTokenClaims {
        iss: state.issuer.to_string(),
        sub: sub.unwrap_or_else(|| client_id.clone()),
        aud: client_id.clone(),
        client_id,
        scope: scope.clone(),
        iat: now,
        exp: now + lifetime,
        jti: random_id(),
    };
    let Ok(access_token) = state.signing_key.sign(&claims) else {
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
    }
    (StatusCode::OK, Json(body)).into_response()
}

/// Verifies an access token the sandbox issued; returns its claims.
pub fn verify_access_token(state: &State, token: &str) -> Option<AccessTokenClaims> {
    let jwk = state.signing_key.public_jwk();
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_aud = false;
    validation.set_issuer(&[state.issuer.as_str()]);
    decode::<AccessTokenClaims>(token, &key, &validation)
        .ok()
        .map(|data| data.claims)
}

/// 12 random bytes in hex: the shape of Moneyhub's (MongoDB) ids.
pub fn random_id() -> String {
    let mut bytes = [0u8; 12];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source is available");
    hex::encode(bytes)
}
