//! Fault injection: the sandbox misbehaves on demand and Redis goes away,
//! over real gRPC. Each test asserts what callers saw (codes, counts) and
//! what the provider received.

use std::time::Duration;

use bankauth::config::{Config, ProviderConfig};
use bankauth::proto::v1 as pb;
use bankauth::sandbox::{Endpoint, ExpiryField, Fault};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

use crate::helpers::{
    RedisServer, TestApp, error_info, health_status, sample, spawn_app, spawn_app_with,
    start_upstream, use_redis, with_metrics,
};

fn sandbox_provider(config: &mut Config) -> &mut ProviderConfig {
    config.providers.get_mut("sandbox").unwrap()
}

/// A widget-token request the caller gives `timeout` to answer.
fn widget_within(user: &str, timeout: Duration) -> tonic::Request<pb::IssueWidgetTokenRequest> {
    let mut request = tonic::Request::new(pb::IssueWidgetTokenRequest {
        provider: String::new(),
        user_id: user.to_owned(),
        force_refresh: false,
    });
    request.set_timeout(timeout);
    request
}

#[tokio::test]
async fn transient_failures_are_retried_each_with_a_fresh_client_assertion() {
    let mut app = spawn_app_with(start_upstream().await, with_metrics).await;
    let user = app.sandbox().seed_users(1).remove(0);
    for fault in [Fault::Status(503), Fault::Garbage] {
        app.sandbox().fail_next(Endpoint::Token, fault);
    }
    app.widget_token(&user).await.unwrap();
    assert_eq!(app.sandbox().token_requests(), 3);
    let assertions = app.sandbox().recent_assertions();
    let last: std::collections::HashSet<_> = assertions.iter().rev().take(3).collect();
    assert_eq!(last.len(), 3, "each attempt signs a new assertion");
    let metrics = app.scrape().await;
    assert_eq!(
        sample(
            &metrics,
            "bankauth_upstream_guard_events_total",
            &[("event", "retry")]
        ),
        2.0
    );
}

#[tokio::test]
async fn a_4xx_is_final_with_or_without_an_oauth_code_but_a_408_is_retried() {
    let mut app = spawn_app().await;
    let users = app.sandbox().seed_users(3);
    app.sandbox().fail_next(Endpoint::Token, Fault::Status(404));
    let status = app.widget_token(&users[0]).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(error_info(&status).reason, "UPSTREAM_MISDIRECTED");
    assert_eq!(error_info(&status).metadata["upstream_error"], "http_404");
    assert_eq!(app.sandbox().token_requests(), 1, "no retry of a 404");

    // 408: the provider tired of waiting for the request, as a timeout.
    app.sandbox().fail_next(Endpoint::Token, Fault::Status(408));
    app.widget_token(&users[1]).await.unwrap();
    assert_eq!(app.sandbox().token_requests(), 3);
    let get = pb::GetUserRequest {
        provider: String::new(),
        user_id: users[1].clone(),
    };
    app.client.get_user(get.clone()).await.unwrap();
    app.sandbox().fail_next(Endpoint::Scim, Fault::Status(408));
    app.client.get_user(get).await.unwrap();
    assert_eq!(app.sandbox().scim_requests(), 3);

    app.sandbox().fail_next(
        Endpoint::Token,
        Fault::OAuth {
            status: 401,
            error: "invalid_client",
        },
    );
    let status = app.widget_token(&users[2]).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        app.sandbox().token_requests(),
        5,
        "no retry of invalid_client"
    );
}

/// `.` and `..` as user ids once addressed the SCIM collection (a URL
/// resolves dot segments), whose answer is not a user: each GetUser was
/// retried and counted as a provider failure until the breaker opened.
#[tokio::test]
async fn hostile_or_refused_requests_never_stop_token_issuance() {
    let mut app = spawn_app_with(start_upstream().await, |c| {
        let provider = sandbox_provider(c);
        provider.breaker_failure_threshold = 2;
        provider.retry_base_delay_ms = 1;
    })
    .await;
    let users = app.sandbox().seed_users(2);
    let mut refused = Vec::new();
    for hostile in ["..", ".", "..", "."] {
        let request = pb::GetUserRequest {
            provider: String::new(),
            user_id: hostile.into(),
        };
        refused.push(app.client.get_user(request).await.unwrap_err());
    }
    app.widget_token(&users[0]).await.unwrap();
    for status in &refused {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(error_info(status).metadata["field"], "user_id");
    }

    // Requests the provider answers with a 4xx are the request's fault too.
    for _ in 0..3 {
        let request = pb::GetUserRequest {
            provider: String::new(),
            user_id: "000000000000000000000000".into(),
        };
        let status = app.client.get_user(request).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        app.sandbox().fail_next(Endpoint::Token, Fault::Status(400));
        let status = app.widget_token(&users[1]).await.unwrap_err();
        assert_eq!(error_info(&status).reason, "UPSTREAM_MISDIRECTED");
    }
    app.widget_token(&users[1]).await.unwrap();
}

#[tokio::test]
async fn a_scim_answer_that_is_not_the_user_asked_for_is_final_and_not_a_provider_failure() {
    let mut app = spawn_app_with(start_upstream().await, |c| {
        sandbox_provider(c).breaker_failure_threshold = 2;
    })
    .await;
    let user = app.sandbox().seed_users(1).remove(0);
    let get = |user_id: &str| pb::GetUserRequest {
        provider: String::new(),
        user_id: user_id.into(),
    };
    app.client.get_user(get(&user)).await.unwrap();
    let another_user = r#"{"id":"someone-else","externalId":"x"}"#;
    let a_list = r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":0,"Resources":[]}"#;
    for body in [another_user, a_list, another_user, a_list] {
        let before = app.sandbox().scim_requests();
        app.sandbox()
            .fail_next(Endpoint::Scim, Fault::Json { status: 200, body });
        let status = app.client.get_user(get(&user)).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{body}: {status:?}"
        );
        assert_eq!(error_info(&status).reason, "UPSTREAM_MISDIRECTED");
        assert_eq!(app.sandbox().scim_requests(), before + 1, "not retried");
    }
    let fetched = app.client.get_user(get(&user)).await.unwrap();
    assert_eq!(fetched.into_inner().user.unwrap().id, user);
}

/// SCIM and the token endpoint have separate breakers: users cannot be
/// managed while SCIM is down, but tokens are still issued.
#[tokio::test]
async fn a_failing_scim_endpoint_does_not_stop_token_issuance() {
    let mut app = spawn_app_with(start_upstream().await, |c| {
        let provider = sandbox_provider(c);
        provider.retry_max_attempts = 1;
        provider.breaker_failure_threshold = 2;
    })
    .await;
    let users = app.sandbox().seed_users(2);
    let get = pb::GetUserRequest {
        provider: String::new(),
        user_id: users[0].clone(),
    };
    app.client.get_user(get.clone()).await.unwrap();
    for _ in 0..10 {
        app.sandbox().fail_next(Endpoint::Scim, Fault::Status(500));
    }
    for reason in [
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_CIRCUIT_OPEN",
    ] {
        let status = app.client.get_user(get.clone()).await.unwrap_err();
        assert_eq!(error_info(&status).reason, reason);
    }
    app.widget_token(&users[1]).await.unwrap();
}

#[tokio::test]
async fn a_429_is_retried_once_its_retry_after_has_passed() {
    let mut app = spawn_app().await;
    let user = app.sandbox().seed_users(1).remove(0);
    app.sandbox().fail_next(
        Endpoint::Token,
        Fault::RateLimited {
            retry_after_secs: 1,
        },
    );
    app.widget_token(&user).await.unwrap();
    assert_eq!(app.sandbox().token_requests(), 2);
}

#[tokio::test]
async fn garbage_that_persists_is_unavailable_after_the_last_attempt() {
    let mut app = spawn_app().await;
    let user = app.sandbox().seed_users(1).remove(0);
    for _ in 0..3 {
        app.sandbox().fail_next(Endpoint::Token, Fault::Garbage);
    }
    let status = app.widget_token(&user).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(error_info(&status).metadata["upstream_error"], "http_200");
    assert!(
        status.message().contains("truncated JSON"),
        "{}",
        status.message()
    );
    assert_eq!(app.sandbox().token_requests(), 3);
}

#[tokio::test]
async fn a_code_exchange_that_may_have_reached_the_provider_is_not_replayed() {
    let mut app = spawn_app().await;
    let user = app.create_user("customer-1").await;
    let code = crate::helpers::authorization_code(
        &app.upstream,
        &[
            ("redirect_uri", "https://app.example/callback"),
            ("scope", "openid"),
            ("sub", &user),
        ],
    )
    .await;
    let exchange = pb::ExchangeAuthorizationCodeRequest {
        provider: String::new(),
        code,
        redirect_uri: "https://app.example/callback".into(),
        code_verifier: String::new(),
        nonce: String::new(),
        sub: user,
        state: String::new(),
    };
    let before = app.sandbox().token_requests();
    app.sandbox().fail_next(Endpoint::Token, Fault::Status(500));
    let status = app
        .client
        .exchange_authorization_code(exchange.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(app.sandbox().token_requests(), before + 1, "not replayed");
    // The provider did not spend the code, so the caller's own retry works.
    app.client
        .exchange_authorization_code(exchange)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failing_provider_opens_the_breaker_while_cached_tokens_keep_flowing() {
    let mut app = spawn_app_with(start_upstream().await, |c| {
        with_metrics(c);
        let provider = sandbox_provider(c);
        provider.retry_max_attempts = 1;
        provider.breaker_failure_threshold = 3;
        provider.breaker_open_ms = 1_000;
    })
    .await;
    let users = app.sandbox().seed_users(2);
    let cached = app.widget_token(&users[0]).await.unwrap();
    for _ in 0..100 {
        app.sandbox().fail_next(Endpoint::Token, Fault::Status(500));
    }
    for _ in 0..3 {
        let status = app.widget_token(&users[1]).await.unwrap_err();
        assert_eq!(error_info(&status).reason, "UPSTREAM_UNAVAILABLE");
    }
    let requests = app.sandbox().token_requests();

    let status = app.widget_token(&users[1]).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(error_info(&status).reason, "UPSTREAM_CIRCUIT_OPEN");
    assert!(status.get_error_details().retry_info().is_some());
    let breaker_open = |metrics: &str, breaker| {
        sample(
            metrics,
            "bankauth_circuit_breaker_open",
            &[("provider", "sandbox"), ("breaker", breaker)],
        )
    };
    let metrics = app.scrape().await;
    assert_eq!(breaker_open(&metrics, "identity"), 1.0, "{metrics}");
    assert!(
        metrics.contains(r#"bankauth_circuit_breaker_open{provider="sandbox",breaker="scim"} 0"#),
        "the other breakers stay closed: {metrics}"
    );
    assert_eq!(
        app.sandbox().token_requests(),
        requests,
        "an open breaker answers without calling the provider"
    );
    assert_eq!(
        app.widget_token(&users[0]).await.unwrap(),
        cached,
        "cached tokens are served while the provider is down"
    );

    // The provider recovers; after the open period one probe closes the breaker.
    app.sandbox().clear_faults(Endpoint::Token);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    app.widget_token(&users[1]).await.unwrap();
    app.client
        .issue_data_token(pb::IssueDataTokenRequest {
            provider: String::new(),
            user_id: users[1].clone(),
            scopes: vec!["accounts:read".into()],
            force_refresh: false,
        })
        .await
        .unwrap();
    let metrics = app.scrape().await;
    let event = |name| {
        sample(
            &metrics,
            "bankauth_upstream_guard_events_total",
            &[("event", name)],
        )
    };
    assert_eq!(event("circuit_opened"), 1.0);
    assert_eq!(event("circuit_open"), 1.0);
    assert_eq!(
        breaker_open(&metrics, "identity"),
        0.0,
        "closed by the probe"
    );
}

/// Fires `count` widget-token misses at `apps` in turn, each with `timeout`;
/// returns how many succeeded, checking every refusal is the budget's.
async fn burst(apps: &[&TestApp], users: &[String], timeout: Duration) -> usize {
    let calls: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let mut client = apps[i % apps.len()].client.clone();
            let request = widget_within(user, timeout);
            tokio::spawn(async move { client.issue_widget_token(request).await })
        })
        .collect();
    let mut succeeded = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => succeeded += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(error_info(&status).reason, "UPSTREAM_BUDGET_EXHAUSTED");
                assert!(status.get_error_details().retry_info().is_some());
            }
        }
    }
    succeeded
}

#[tokio::test]
async fn replicas_share_the_providers_rate_limit_and_queue_within_the_deadline() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    // 60 a minute: a burst of 6, then one every 1.1 s.
    let configure = |c: &mut Config| {
        use_redis(c, &redis);
        sandbox_provider(c).rate_limit_per_minute = Some(60);
    };
    let first = spawn_app_with(upstream.clone(), configure).await;
    let second = spawn_app_with(upstream.clone(), configure).await;
    let before = upstream.sandbox.token_requests();
    let users = upstream.sandbox.seed_users(12);

    // Startup discovery spent two of the six; refill adds about one a second.
    let succeeded = burst(&[&first, &second], &users, Duration::from_millis(300)).await;
    assert!(
        (3..=6).contains(&succeeded),
        "{succeeded} requests got through a shared burst of 6"
    );
    assert_eq!(
        upstream.sandbox.token_requests() - before,
        succeeded as u64,
        "refused requests never reached the provider"
    );

    // A caller with time to wait is queued until the budget refills.
    let late = upstream.sandbox.seed_users(1).remove(0);
    first
        .client
        .clone()
        .issue_widget_token(widget_within(&late, Duration::from_secs(10)))
        .await
        .unwrap();
}

#[tokio::test]
async fn while_redis_is_down_each_replica_spends_only_its_share_of_the_rate_limit() {
    let mut redis = RedisServer::start();
    let upstream = start_upstream().await;
    // 120 a minute for up to 2 replicas: a shared burst of 12; alone, each
    // replica's bucket holds a burst of 6 and refills one every 1.1 s.
    let configure = |c: &mut Config| {
        use_redis(c, &redis);
        c.cache.redis_timeout_ms = 200;
        c.cache.max_replicas = 2;
        sandbox_provider(c).rate_limit_per_minute = Some(120);
    };
    let first = spawn_app_with(upstream.clone(), configure).await;
    let second = spawn_app_with(upstream.clone(), configure).await;
    redis.kill();
    let before = upstream.sandbox.token_requests();
    let users = upstream.sandbox.seed_users(24);

    let succeeded = burst(&[&first, &second], &users, Duration::from_secs(1)).await;
    // The whole limit per replica would let all 24 through.
    assert!(
        (10..=14).contains(&succeeded),
        "{succeeded} requests got through two replicas' shares of 6"
    );
    assert_eq!(
        upstream.sandbox.token_requests() - before,
        succeeded as u64,
        "refused requests never reached the provider"
    );
}

#[tokio::test]
async fn a_stalled_provider_fails_a_caller_at_its_deadline_and_serves_cached_tokens() {
    let mut app = spawn_app_with(start_upstream().await, |c| {
        c.server.request_timeout_ms = 1_000;
    })
    .await;
    let users = app.sandbox().seed_users(2);
    let cached = app.widget_token(&users[0]).await.unwrap();
    app.sandbox()
        .fail_next(Endpoint::Token, Fault::Stall(Duration::from_secs(10)));
    // The caller would wait 5 s; the server's 1 s is what fires.
    let started = std::time::Instant::now();
    let status = app
        .client
        .issue_widget_token(widget_within(&users[1], Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let info = error_info(&status);
    assert_eq!(info.reason, "DEADLINE_EXCEEDED");
    assert_eq!(info.domain, "bankauth.dev");
    assert_eq!(info.metadata["timeout_ms"], "1000");
    assert!(
        status.message().contains("server.request_timeout_ms"),
        "{}",
        status.message()
    );
    assert_eq!(app.widget_token(&users[0]).await.unwrap(), cached);
}

#[tokio::test]
async fn a_token_already_expired_on_arrival_is_unavailable_and_never_cached() {
    let mut app = spawn_app().await;
    let user = app.sandbox().seed_users(1).remove(0);
    app.sandbox().set_expiry_field(ExpiryField::ExpiresAt);
    app.sandbox().set_clock_skew(-2 * 3600);
    let status = app.widget_token(&user).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("already expired"),
        "{}",
        status.message()
    );
    let failed_attempts = app.sandbox().token_requests();

    app.sandbox().set_clock_skew(0);
    app.widget_token(&user).await.unwrap();
    assert_eq!(
        app.sandbox().token_requests(),
        failed_attempts + 1,
        "nothing was cached from the expired answers"
    );
}

#[tokio::test]
async fn a_provider_clock_minutes_off_does_not_change_how_long_tokens_are_served() {
    let mut app = spawn_app().await;
    app.sandbox().set_expiry_field(ExpiryField::ExpiresIn);
    let users = app.sandbox().seed_users(2);
    for (user, skew) in users.iter().zip([-300, 300]) {
        app.sandbox().set_clock_skew(skew);
        let before = app.sandbox().token_requests();
        let issued = app.widget_token(user).await.unwrap();
        assert_eq!(app.widget_token(user).await.unwrap(), issued, "a cache hit");
        assert_eq!(app.sandbox().token_requests(), before + 1);
        // `expires_in` counts from our own clock: an hour from now, whatever the provider's says.
        let expires = issued.expire_time.unwrap().seconds;
        let hour_from_now = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        assert!(
            (hour_from_now - 10..=hour_from_now).contains(&expires),
            "skew {skew}: expires at {expires}, an hour from now is {hour_from_now}"
        );
    }
}

#[tokio::test]
async fn a_provider_clock_ten_minutes_ahead_does_not_lengthen_how_long_tokens_are_served() {
    let mut app = spawn_app().await;
    let users = app.sandbox().seed_users(2);
    app.sandbox().set_clock_skew(600);
    for (user, field) in users
        .iter()
        .zip([ExpiryField::ExpiresAt, ExpiryField::Both])
    {
        app.sandbox().set_expiry_field(field);
        let issued = app.widget_token(user).await.unwrap();
        // The lifetime (the JWT's exp − iat, or expires_in) counts from our
        // clock; the provider's expires_at, 10 minutes later, only caps it.
        let expires = issued.expire_time.unwrap().seconds;
        let hour_from_now = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        assert!(
            (hour_from_now - 10..=hour_from_now).contains(&expires),
            "{field:?}: expires at {expires}, an hour from now is {hour_from_now}"
        );
    }
}

/// Redis first hangs (SIGSTOP: every command waits out the Redis timeout),
/// then dies and comes back empty; callers keep being served throughout.
#[tokio::test]
async fn a_redis_outage_under_load_fails_no_call_and_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let upstream = start_upstream().await;
    let app = spawn_app_with(upstream.clone(), |c| {
        use_redis(c, &redis);
        with_metrics(c);
        // Replicas trust their own copies briefly, so Redis is read throughout.
        c.cache.memory_ttl_secs = 1;
        c.cache.redis_timeout_ms = 300;
    })
    .await;
    let users = upstream.sandbox.seed_users(20);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let mut client = app.client.clone();
            let users = users.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let mut i = worker;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let request = widget_within(&users[i % users.len()], Duration::from_secs(5));
                    match client.issue_widget_token(request).await {
                        Ok(_) => ok += 1,
                        Err(status) => failed.push(status),
                    }
                    i += 3;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (ok, failed)
            })
        })
        .collect();

    // Readiness, watched all along: it must never leave SERVING.
    let probe = {
        let stop = stop.clone();
        let addr = app.addr;
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(health_status(addr, "").await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            statuses
        })
    };

    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.pause();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    redis.resume();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Down across the 5 s mark, when Redis's state is checked again.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = probe.await.unwrap();
    assert!(
        statuses.len() > 20,
        "readiness was checked {} times",
        statuses.len()
    );
    assert!(
        statuses
            .iter()
            .all(|status| *status == ServingStatus::Serving),
        "readiness left SERVING during the outage: {statuses:?}"
    );

    let mut served = 0;
    for worker in workers {
        let (ok, failed) = worker.await.unwrap();
        assert!(
            failed.is_empty(),
            "calls failed during the outage: {failed:?}"
        );
        served += ok;
    }
    assert!(served > 100, "only {served} calls were made");
    assert!(sample(&app.scrape().await, "bankauth_redis_errors_total", &[]) >= 1.0);

    // Redis is back and used again without a restart: new tokens land in it
    // (within a few seconds: the connection backs off while Redis is down).
    let mut connection = redis.client().get_connection().unwrap();
    let reattached = std::time::Instant::now();
    loop {
        let fresh = upstream.sandbox.seed_users(1).remove(0);
        app.client
            .clone()
            .issue_widget_token(widget_within(&fresh, Duration::from_secs(5)))
            .await
            .unwrap();
        let key = crate::helpers::widget_key(&upstream.sandbox, &fresh);
        let stored: bool = redis::cmd("EXISTS")
            .arg(key.name())
            .query(&mut connection)
            .unwrap();
        if stored {
            break;
        }
        assert!(
            reattached.elapsed() < Duration::from_secs(20),
            "no token was written to the restarted Redis"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_fetch_keeps_retrying_for_callers_that_joined_with_longer_deadlines() {
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| {
        // The first attempt times out after the first caller has given up.
        sandbox_provider(c).request_timeout_ms = 150;
    })
    .await;
    let user = app.sandbox().seed_users(1).remove(0);
    let before = app.sandbox().token_requests();
    app.sandbox()
        .fail_next(Endpoint::Token, Fault::Stall(Duration::from_secs(2)));
    let mut impatient = app.client.clone();
    let first = {
        let user = user.clone();
        tokio::spawn(async move {
            impatient
                .issue_widget_token(widget_within(&user, Duration::from_millis(100)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let joiners = (0..10).map(|_| {
        let mut client = app.client.clone();
        let user = user.clone();
        async move {
            client
                .issue_widget_token(widget_within(&user, Duration::from_secs(10)))
                .await
        }
    });
    let joined = futures::future::join_all(joiners).await;
    assert!(first.await.unwrap().is_err(), "the first caller gave up");
    for result in &joined {
        assert!(result.is_ok(), "a patient caller failed: {result:?}");
    }
    assert_eq!(
        app.sandbox().token_requests(),
        before + 2,
        "one timed-out attempt and one retry, shared by every caller"
    );
    assert!(app.widget_token(&user).await.is_ok());
}
