//! The sandbox's SCIM 2.0 users, validated as Moneyhub validates them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use super::oidc::{random_id, verify_access_token};
use super::{Endpoint, State, serve_fault};
use crate::provider::scim::{ScimMeta, ScimName, ScimUser, ScimUserRequest};

const SCIM_ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const SCIM_LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

fn scim_json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/scim+json")],
        serde_json::to_vec(body).expect("SCIM bodies serialise"),
    )
        .into_response()
}

fn scim_error(status: StatusCode, scim_type: Option<&str>, detail: &str) -> Response {
    let mut body = serde_json::json!({
        "schemas": [SCIM_ERROR_SCHEMA],
        "status": status.as_u16().to_string(),
        "detail": detail,
    });
    if let Some(scim_type) = scim_type {
        body["scimType"] = scim_type.into();
    }
    scim_json(status, &body)
}

/// Checks the bearer token and its scope: `None` when authorised, else
/// the refusal to send.
fn refusal(state: &State, headers: &HeaderMap, scope: &str) -> Option<Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(token) = token else {
        return Some(scim_error(
            StatusCode::UNAUTHORIZED,
            None,
            "a bearer token is required",
        ));
    };
    let Some(claims) = verify_access_token(state, token) else {
        return Some(scim_error(
            StatusCode::UNAUTHORIZED,
            None,
            "the bearer token is invalid",
        ));
    };
    if claims.scope.split(' ').any(|granted| granted == scope) {
        None
    } else {
        Some(scim_error(
            StatusCode::FORBIDDEN,
            None,
            &format!("the token lacks scope {scope}"),
        ))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or("").trim())
        .is_some_and(|essence| essence == "application/json" || essence == "application/scim+json")
}

pub async fn create_user(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.scim_requests.fetch_add(1, Ordering::SeqCst);
    state.record_trace_headers(&headers);
    if let Some(response) = serve_fault(&state, Endpoint::Scim).await {
        return response;
    }
    if let Some(response) = refusal(&state, &headers, "scim_user:write") {
        return response;
    }
    if !is_json(&headers) {
        return scim_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            "send application/scim+json or application/json",
        );
    }
    let Ok(request) = serde_json::from_slice::<ScimUserRequest>(&body) else {
        return scim_error(
            StatusCode::BAD_REQUEST,
            Some("invalidSyntax"),
            "the body is not a SCIM user",
        );
    };
    if let Err(detail) = validate(&request) {
        return scim_error(StatusCode::BAD_REQUEST, Some("invalidValue"), detail);
    }
    let mut users = state.users.lock().expect("users lock");
    let mut user_names = state.user_names.lock().expect("user names lock");
    if users.values().any(|u| u.external_id == request.external_id) {
        return scim_error(
            StatusCode::CONFLICT,
            Some("uniqueness"),
            "externalId is already in use",
        );
    }
    // RFC 7643 §4.1.1: userName is unique and not case-exact, so
    // "Customer-1" is taken once "customer-1" is.
    let user_name = request.user_name.to_lowercase();
    if user_names.contains_key(&user_name) {
        return scim_error(
            StatusCode::CONFLICT,
            Some("uniqueness"),
            "userName is already in use",
        );
    }
    // As Moneyhub's documented response writes it: "2024-08-07T06:43:47.000Z".
    let now = OffsetDateTime::now_utc();
    let created = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    );
    let user = ScimUser {
        id: random_id(),
        external_id: request.external_id,
        meta: ScimMeta {
            resource_type: Some("User".into()),
            created: Some(created),
        },
        name: ScimName {
            given_name: request.name.given_name,
            family_name: request.name.family_name,
        },
        emails: request.emails,
        subtenant: request.subtenant,
    };
    let response = scim_json(StatusCode::CREATED, &user);
    user_names.insert(user_name, user.id.clone());
    users.insert(user.id.clone(), user);
    response
}

/// Moneyhub's documented bounds: externalId of 1–128 characters, exactly one
/// email of at most 254 characters; and RFC 7643's required userName.
fn validate(request: &ScimUserRequest) -> Result<(), &'static str> {
    if !request
        .schemas
        .iter()
        .any(|s| s == "urn:ietf:params:scim:schemas:core:2.0:User")
    {
        return Err("schemas must include the core User schema");
    }
    if request.user_name.trim().is_empty() {
        return Err("userName is required");
    }
    let len = request.external_id.chars().count();
    if len == 0 || len > 128 {
        return Err("externalId must be 1 to 128 characters");
    }
    match request.emails.as_slice() {
        [email] if !email.value.is_empty() && email.value.len() <= 254 => Ok(()),
        _ => Err("exactly one email of at most 254 characters is required"),
    }
}

pub async fn get_user(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    state.scim_requests.fetch_add(1, Ordering::SeqCst);
    state.record_trace_headers(&headers);
    if let Some(response) = serve_fault(&state, Endpoint::Scim).await {
        return response;
    }
    if let Some(response) = refusal(&state, &headers, "scim_user:read") {
        return response;
    }
    match state.users.lock().expect("users lock").get(&id) {
        Some(user) => scim_json(StatusCode::OK, user),
        None => scim_error(StatusCode::NOT_FOUND, None, "no such user"),
    }
}

/// `DELETE /scim/users/{id}`: RFC 7644 §3.6, 204 once deleted. Deletes
/// what the users API's delete does (connections, refresh tokens) too.
pub async fn delete_user(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    state.scim_requests.fetch_add(1, Ordering::SeqCst);
    state.record_trace_headers(&headers);
    if let Some(response) = serve_fault(&state, Endpoint::Scim).await {
        return response;
    }
    if let Some(response) = refusal(&state, &headers, "scim_user:write") {
        return response;
    }
    if state.remove_user(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        scim_error(StatusCode::NOT_FOUND, None, "no such user")
    }
}

/// The largest page served, whatever `count` asks (RFC 7644 §3.4.2.4 lets
/// a server cap it).
const MAX_PAGE: usize = 200;

/// `GET /scim/users`: an RFC 7644 §3.4.2 ListResponse, paged by the
/// 1-based `startIndex` and `count` (§3.4.2.4), in a stable order (by id),
/// filtered by `filter=externalId eq "<JSON string>"`, the one filter the
/// sandbox understands (others: 400 `invalidFilter`).
pub async fn list_users(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    state.scim_requests.fetch_add(1, Ordering::SeqCst);
    state.record_trace_headers(&headers);
    if let Some(response) = serve_fault(&state, Endpoint::Scim).await {
        return response;
    }
    if let Some(response) = refusal(&state, &headers, "scim_user:read") {
        return response;
    }
    let number = |name: &str, default: usize| match params.get(name) {
        None => Some(default),
        Some(value) => value.parse::<usize>().ok(),
    };
    let (Some(start_index), Some(count)) = (number("startIndex", 1), number("count", MAX_PAGE))
    else {
        return scim_error(
            StatusCode::BAD_REQUEST,
            Some("invalidValue"),
            "startIndex and count must be non-negative integers",
        );
    };
    let external_id = match params
        .get("filter")
        .map(|filter| external_id_filter(filter))
    {
        None => None,
        Some(Some(external_id)) => Some(external_id),
        Some(None) => {
            return scim_error(
                StatusCode::BAD_REQUEST,
                Some("invalidFilter"),
                "the sandbox understands only externalId eq \"...\"",
            );
        }
    };
    let users = state.users.lock().expect("users lock");
    let mut matching: Vec<&ScimUser> = users
        .values()
        .filter(|user| {
            external_id
                .as_ref()
                .is_none_or(|id| user.external_id == *id)
        })
        .collect();
    matching.sort_by(|a, b| a.id.cmp(&b.id));
    let page: Vec<&ScimUser> = matching
        .iter()
        .skip(start_index.max(1) - 1)
        .take(count.min(MAX_PAGE))
        .copied()
        .collect();
    let body = serde_json::json!({
        "schemas": [SCIM_LIST_SCHEMA],
        "totalResults": matching.len(),
        "startIndex": start_index.max(1),
        "itemsPerPage": page.len(),
        "Resources": page,
    });
    scim_json(StatusCode::OK, &body)
}

/// The value of `externalId eq "<value>"`, the value a JSON string.
fn external_id_filter(filter: &str) -> Option<String> {
    let (attribute, rest) = filter.trim().split_once(char::is_whitespace)?;
    let (operator, value) = rest.trim_start().split_once(char::is_whitespace)?;
    if !attribute.eq_ignore_ascii_case("externalId") || !operator.eq_ignore_ascii_case("eq") {
        return None;
    }
    serde_json::from_str::<String>(value.trim()).ok()
}
