//! The sandbox's Moneyhub users API (`/users/...`): a user, their
//! connections, and deleting either, each checking the bearer token and its
//! scope (`user:read`, `user:delete`) as the SCIM endpoints do. Answers in
//! Moneyhub's shapes: lists in `{"data": [...]}`, errors as `{"code", "message"}`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::oidc::verify_access_token;
use super::{Endpoint, State, serve_fault};
use crate::provider::{USER_DELETE_SCOPE, USER_READ_SCOPE};

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"code": code, "message": message})),
    )
        .into_response()
}

/// Counts the request, serves any queued fault, and checks the bearer
/// token and its scope: `Some(response)` to answer instead.
async fn refusal(state: &State, headers: &HeaderMap, scope: &str) -> Option<Response> {
    state.users_requests.fetch_add(1, Ordering::SeqCst);
    state.record_trace_headers(headers);
    if let Some(response) = serve_fault(state, Endpoint::Users).await {
        return Some(response);
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(claims) = token.and_then(|token| verify_access_token(state, token)) else {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        ));
    };
    if claims.scope.split(' ').any(|granted| granted == scope) {
        None
    } else {
        Some(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("the token lacks scope {scope}"),
        ))
    }
}

fn no_such_user() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such user")
}

/// `GET /users/{id}`: the user, in the users API's own shape.
pub async fn get_user(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(response) = refusal(&state, &headers, USER_READ_SCOPE).await {
        return response;
    }
    if !state.users.lock().expect("users lock").contains_key(&id) {
        return no_such_user();
    }
    let connection_ids: Vec<String> = state
        .connections
        .lock()
        .expect("connections lock")
        .get(&id)
        .map(|connections| connections.iter().map(|c| c.id.clone()).collect())
        .unwrap_or_default();
    Json(serde_json::json!({"userId": id, "connectionIds": connection_ids})).into_response()
}

/// `DELETE /users/{id}`: the user, their SCIM record and connections.
pub async fn delete_user(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(response) = refusal(&state, &headers, USER_DELETE_SCOPE).await {
        return response;
    }
    if !state.remove_user(&id) {
        return no_such_user();
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /users/{id}/connections`.
pub async fn connections(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(response) = refusal(&state, &headers, USER_READ_SCOPE).await {
        return response;
    }
    if !state.users.lock().expect("users lock").contains_key(&id) {
        return no_such_user();
    }
    let connections = state
        .connections
        .lock()
        .expect("connections lock")
        .get(&id)
        .cloned()
        .unwrap_or_default();
    Json(serde_json::json!({"data": connections, "links": {"self": format!("/users/{id}/connections")}}))
        .into_response()
}

/// `DELETE /users/{id}/connection/{connection_id}`.
pub async fn delete_connection(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    Path((id, connection_id)): Path<(String, String)>,
) -> Response {
    if let Some(response) = refusal(&state, &headers, USER_DELETE_SCOPE).await {
        return response;
    }
    if !state.users.lock().expect("users lock").contains_key(&id) {
        return no_such_user();
    }
    let mut connections = state.connections.lock().expect("connections lock");
    let Some(list) = connections.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such connection");
    };
    let before = list.len();
    list.retain(|connection| connection.id != connection_id);
    if list.len() == before {
        return error(StatusCode::NOT_FOUND, "not_found", "no such connection");
    }
    StatusCode::NO_CONTENT.into_response()
}
