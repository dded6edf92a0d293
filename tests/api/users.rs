use tonic::Code;

use crate::helpers::{
    RedisServer, error_info, new_user, spawn_app, spawn_app_with, start_upstream,
};
use bankauth::proto::v1 as pb;

#[tokio::test]
async fn a_created_user_is_fetched_with_identical_fields() {
    let mut app = spawn_app().await;
    let mut request = new_user("customer-1");
    request.subtenant = Some(pb::Subtenant {
        name: "Branch".into(),
        provider_id: "sub-7".into(),
    });
    let created = app
        .client
        .create_user(request)
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();

    assert_eq!(created.external_id, "customer-1");
    assert_eq!(created.name.as_ref().unwrap().given_name, "Alex");
    assert_eq!(created.name.as_ref().unwrap().family_name, "Taylor");
    assert_eq!(created.emails.len(), 1);
    assert_eq!(created.emails[0].value, "customer-1@example.com");
    assert!(created.emails[0].primary);
    assert_eq!(created.subtenant.as_ref().unwrap().provider_id, "sub-7");
    assert!(created.create_time.is_some());

    let fetched = app
        .client
        .get_user(pb::GetUserRequest {
            provider: "sandbox".into(),
            user_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn a_retried_create_returns_the_same_user_without_creating_another() {
    let mut app = spawn_app().await;
    let first = app.create_user("customer-1").await;
    let second = app.create_user("customer-1").await;
    assert_eq!(first, second);
    assert_eq!(app.sandbox().user_count(), 1);
}

#[tokio::test]
async fn a_retry_through_another_replica_sharing_redis_returns_the_same_user() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut a = spawn_app_with(upstream.clone(), |c| crate::helpers::use_redis(c, &redis)).await;
    let mut b = spawn_app_with(upstream, |c| crate::helpers::use_redis(c, &redis)).await;
    let first = a.create_user("customer-1").await;
    let second = b.create_user("customer-1").await;
    assert_eq!(first, second);
    assert_eq!(a.sandbox().user_count(), 1);
}

#[tokio::test]
async fn reusing_an_external_id_with_other_details_is_already_exists() {
    let mut app = spawn_app().await;
    app.create_user("customer-1").await;
    let mut other = new_user("customer-1");
    other.emails[0].value = "someone-else@example.com".into();
    let status = app.client.create_user(other).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(error_info(&status).reason, "USER_ALREADY_EXISTS");
}

#[tokio::test]
async fn an_external_id_taken_at_the_provider_by_someone_else_is_already_exists() {
    let upstream = start_upstream().await;
    // Two replicas with separate in-process caches: the second does not know
    // the first created the user, so the provider's SCIM 409 decides, and
    // the user it finds by external id has other details.
    let mut a = spawn_app_with(upstream.clone(), |_| {}).await;
    let mut b = spawn_app_with(upstream, |_| {}).await;
    a.create_user("customer-1").await;
    let mut other = new_user("customer-1");
    other.emails[0].value = "someone-else@example.com".into();
    let status = b.client.create_user(other).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(error_info(&status).metadata["upstream_error"], "uniqueness");
}

#[tokio::test]
async fn external_ids_differing_only_in_case_collide_as_user_names() {
    // userName (= externalId) is unique and case-insensitive (RFC 7643
    // §4.1.1), as the independent SCIM peer enforces it.
    let mut app = spawn_app().await;
    app.create_user("customer-1").await;
    let status = app
        .client
        .create_user(new_user("Customer-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(error_info(&status).metadata["upstream_error"], "uniqueness");
    assert_eq!(app.sandbox().user_count(), 1);
}

#[tokio::test]
async fn an_unknown_user_is_not_found() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .get_user(pb::GetUserRequest {
            provider: String::new(),
            user_id: "000000000000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(error_info(&status).reason, "USER_NOT_FOUND");
}

#[tokio::test]
async fn scim_tokens_are_cached_too() {
    let mut app = spawn_app().await;
    let id = app.create_user("customer-1").await;
    for _ in 0..3 {
        app.client
            .get_user(pb::GetUserRequest {
                provider: String::new(),
                user_id: id.clone(),
            })
            .await
            .unwrap();
    }
    // One scim_user:write token for the create, one scim_user:read for all reads.
    assert_eq!(app.sandbox().token_requests(), 2);
    assert_eq!(app.sandbox().scim_requests(), 4);
}
