//! Bad input gets INVALID_ARGUMENT naming the field, and never reaches the provider.

use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, error_info, new_user, spawn_app};
use bankauth::proto::v1 as pb;

fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{:?}",
        status.message()
    );
    assert_eq!(error_info(status).metadata["field"], field);
    let violations = status
        .get_error_details()
        .bad_request()
        .cloned()
        .unwrap()
        .field_violations;
    assert_eq!(violations[0].field, field);
}

async fn app_with_user() -> (TestApp, String) {
    let mut app = spawn_app().await;
    let user = app.create_user("customer-1").await;
    (app, user)
}

#[tokio::test]
async fn bad_user_ids_name_the_field() {
    let (mut app, _) = app_with_user().await;
    let calls = app.sandbox().token_requests();
    for bad in [
        String::new(),
        "a".repeat(10 * 1024),
        "../admin".into(),
        "a b".into(),
        // Dot segments: a URL would resolve them to the SCIM collection.
        ".".into(),
        "..".into(),
        // A format suffix a SCIM server strips (RFC 7644 §3.8): `.scim`
        // would address the collection.
        ".scim".into(),
        "x.scim".into(),
    ] {
        let status = app.widget_token(&bad).await.unwrap_err();
        assert_invalid(&status, "user_id");
        if !bad.is_empty() {
            // An empty user_id asks IssueDataToken for an application token.
            let status = app.data_token(&bad, &["accounts:read"]).await.unwrap_err();
            assert_invalid(&status, "user_id");
        }
        let status = app
            .client
            .get_user(pb::GetUserRequest {
                provider: String::new(),
                user_id: bad.clone(),
            })
            .await
            .unwrap_err();
        assert_invalid(&status, "user_id");
    }
    assert_eq!(app.sandbox().token_requests(), calls);
}

#[tokio::test]
async fn scopes_must_be_valid_and_allow_listed() {
    let (mut app, user) = app_with_user().await;
    let calls = app.sandbox().token_requests();
    for bad in [
        &[][..],
        &["payments:write"],
        &["accounts:read", "bad scope"],
        &["widget_authentication"],
    ] {
        let status = app.data_token(&user, bad).await.unwrap_err();
        assert_invalid(&status, "scopes");
    }
    let status = app
        .data_token(&user, &["payments:write"])
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .contains("\"payments:write\" is not allowed"),
        "{}",
        status.message()
    );
    assert_eq!(app.sandbox().token_requests(), calls);
}

#[tokio::test]
async fn bad_users_name_the_field() {
    let mut app = spawn_app().await;
    let cases: Vec<(pb::CreateUserRequest, &str)> = vec![
        (new_user(""), "external_id"),
        (new_user(&"x".repeat(129)), "external_id"),
        (
            pb::CreateUserRequest {
                emails: vec![],
                ..new_user("a")
            },
            "emails",
        ),
        (
            pb::CreateUserRequest {
                emails: [new_user("a").emails, new_user("b").emails].concat(),
                ..new_user("a")
            },
            "emails",
        ),
        (
            pb::CreateUserRequest {
                emails: vec![pb::Email {
                    value: "not-an-email".into(),
                    primary: true,
                }],
                ..new_user("a")
            },
            "emails[0].value",
        ),
        (
            pb::CreateUserRequest {
                emails: vec![pb::Email {
                    value: format!("{}@example.com", "a".repeat(250)),
                    primary: true,
                }],
                ..new_user("a")
            },
            "emails[0].value",
        ),
        (
            pb::CreateUserRequest {
                name: Some(pb::PersonName {
                    given_name: "x".repeat(300),
                    family_name: String::new(),
                }),
                ..new_user("a")
            },
            "name.given_name",
        ),
        (
            pb::CreateUserRequest {
                subtenant: Some(pb::Subtenant {
                    name: "Branch".into(),
                    provider_id: String::new(),
                }),
                ..new_user("a")
            },
            "subtenant.provider_id",
        ),
    ];
    for (request, field) in cases {
        let status = app.client.create_user(request).await.unwrap_err();
        assert_invalid(&status, field);
    }
    assert_eq!(app.sandbox().scim_requests(), 0);
    assert_eq!(app.sandbox().user_count(), 0);
}

#[tokio::test]
async fn an_unknown_provider_names_the_configured_ones() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .issue_widget_token(pb::IssueWidgetTokenRequest {
            provider: "moneykit".into(),
            user_id: "u1".into(),
            force_refresh: false,
        })
        .await
        .unwrap_err();
    assert_invalid(&status, "provider");
    assert!(
        status.message().contains("configured: sandbox"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn an_oversized_request_is_refused_without_a_crash() {
    let mut app = spawn_app().await;
    let status = app.widget_token(&"a".repeat(200 * 1024)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // The server is still serving.
    let status = app.widget_token("").await.unwrap_err();
    assert_invalid(&status, "user_id");
}
