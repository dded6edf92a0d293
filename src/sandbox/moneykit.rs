//! The sandbox's MoneyKit token endpoint, as MoneyKit documents it:
//! `POST /auth/token`, client id and secret as HTTP Basic or form fields,
//! `201` with an opaque bearer token, errors as `{error_code, error_message,
//! documentation_url}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Form;
use axum::Json;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use url::form_urlencoded;

use super::{Endpoint, State, error_body, serve_fault};
use crate::random::random_hex;

const UNAUTHORIZED: &str = "api_error.auth.unauthorized";

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(error_body(Endpoint::Moneykit, UNAUTHORIZED, message)),
    )
        .into_response()
}

/// Client id and secret from the Basic header (RFC 6749 §2.3.1: each part
/// form-encoded) or, failing that, from the form.
fn credentials(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<(String, String)> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| STANDARD.decode(encoded).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            let decode = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((decode(id)?, decode(secret)?))
        });
    basic.or_else(|| {
        Some((
            form.get("client_id")?.clone(),
            form.get("client_secret")?.clone(),
        ))
    })
}

pub async fn token(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.moneykit_requests.fetch_add(1, Ordering::SeqCst);
    if let Some(response) = serve_fault(&state, Endpoint::Moneykit).await {
        return response;
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return refuse(StatusCode::BAD_REQUEST, "Invalid grant_type");
    }
    let authenticated = credentials(&headers, &form).is_some_and(|(id, secret)| {
        state.moneykit_clients.get(&id).is_some_and(|expected| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                expected.as_bytes(),
                secret.as_bytes(),
            )
            .is_ok()
        })
    });
    if !authenticated {
        return refuse(StatusCode::UNAUTHORIZED, "Accounts access not permitted");
    }
    let lifetime = state
        .options
        .lock()
        .expect("options lock")
        .token_lifetime
        .as_secs();
    let body = serde_json::json!({
        "access_token": random_hex::<24>(),
        "token_type": "bearer",
        "expires_in": lifetime,
    });
    (StatusCode::CREATED, Json(body)).into_response()
}
