//! What an operator relies on: metrics that move, readiness that follows
//! Redis while liveness does not, and a shutdown that drops no call.

use std::time::Duration;

use bankauth::sandbox::{Endpoint, Fault};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{
    RedisServer, error_info, health_status, sample, spawn_app_with, start_upstream, with_metrics,
};

/// `grpc_server_handled_total` for `service`/`method` answered with `code`
/// (grpc-go's name), in a scrape.
fn handled(text: &str, service: &str, method: &str, code: &str) -> f64 {
    sample(
        text,
        "grpc_server_handled_total",
        &[
            ("grpc_service", service),
            ("grpc_method", method),
            ("grpc_code", code),
        ],
    )
}

const AUTH_SERVICE: &str = "bankauth.v1.AuthService";

#[tokio::test]
async fn metrics_count_rpcs_cache_lookups_upstream_calls_and_tokens() {
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, with_metrics).await;
    let before = app.scrape().await;
    assert_eq!(sample(&before, "grpc_server_handled_total", &[]), 0.0);
    assert_eq!(
        sample(
            &before,
            "bankauth_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    let user = app.create_user("customer-1").await;
    app.widget_token(&user).await.unwrap();
    app.widget_token(&user).await.unwrap();
    app.widget_token("not valid").await.unwrap_err();
    let text = app.scrape().await;

    let rpcs = |method, code| handled(&text, AUTH_SERVICE, method, code);
    assert_eq!(rpcs("IssueWidgetToken", "OK"), 2.0);
    assert_eq!(rpcs("IssueWidgetToken", "InvalidArgument"), 1.0);
    assert_eq!(rpcs("CreateUser", "OK"), 1.0);
    let widget = [
        ("grpc_type", "unary"),
        ("grpc_service", AUTH_SERVICE),
        ("grpc_method", "IssueWidgetToken"),
    ];
    assert_eq!(sample(&text, "grpc_server_started_total", &widget), 3.0);
    // The latency histogram carries the code too.
    let latency = |code| {
        let labels = [widget.as_slice(), &[("grpc_code", code)]].concat();
        sample(&text, "grpc_server_handling_seconds_count", &labels)
    };
    assert_eq!(latency("OK"), 2.0);
    assert_eq!(latency("InvalidArgument"), 1.0);
    // The cache-size gauge counts the two tokens this process holds.
    assert_eq!(
        sample(&text, "bankauth_cache_entries", &[("kind", "tokens")]),
        2.0
    );
    let lookups = |outcome| {
        sample(
            &text,
            "bankauth_cache_lookups_total",
            &[("tier", "memory"), ("outcome", outcome)],
        )
    };
    assert_eq!(lookups("hit"), 1.0);
    // scim_user:write for the create, then the first widget token.
    assert_eq!(lookups("miss"), 2.0);
    let upstream = |endpoint| {
        sample(
            &text,
            "bankauth_upstream_requests_total",
            &[
                ("provider", "sandbox"),
                ("endpoint", endpoint),
                ("outcome", "ok"),
            ],
        )
    };
    assert_eq!(upstream("token"), 2.0);
    assert_eq!(upstream("scim"), 1.0);
    assert_eq!(upstream("discovery"), 1.0);
    assert_eq!(
        sample(
            &text,
            "bankauth_tokens_issued_total",
            &[("provider", "sandbox")]
        ),
        2.0
    );
}

/// Calls no handler sees are counted too: health, a request too large to
/// decode, a method the server does not have.
#[tokio::test]
async fn health_checks_and_calls_refused_before_a_handler_are_counted() {
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, with_metrics).await;

    let status = app.widget_token(&"a".repeat(200 * 1024)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(error_info(&status).reason, "REQUEST_TOO_LARGE");
    assert_eq!(health_status(app.addr, "").await, ServingStatus::Serving);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<(), (), _>(
            tonic::Request::new(()),
            tonic::codegen::http::uri::PathAndQuery::from_static("/bankauth.v1.AuthService/Nope"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "UNIMPLEMENTED");
    assert_eq!(info.metadata["method"], "/bankauth.v1.AuthService/Nope");

    let text = app.scrape().await;
    let calls = [
        (AUTH_SERVICE, "IssueWidgetToken", "OutOfRange"),
        ("grpc.health.v1.Health", "Check", "OK"),
        ("unknown", "unknown", "Unimplemented"),
    ];
    for (service, method, code) in calls {
        assert_eq!(handled(&text, service, method, code), 1.0, "{method}");
        let labels = [
            ("grpc_service", service),
            ("grpc_method", method),
            ("grpc_code", code),
        ];
        assert_eq!(
            sample(&text, "grpc_server_handling_seconds_count", &labels),
            1.0,
            "{method}"
        );
    }
    let samples = text
        .lines()
        .filter(|line| line.starts_with("grpc_server_handled_total{"))
        .count();
    assert_eq!(samples, 3, "{text}");
}

/// Readiness (`""` and AuthService) and liveness, which must all be SERVING.
async fn assert_ready(addr: std::net::SocketAddr) {
    for service in ["", "bankauth.v1.AuthService", "liveness"] {
        assert_eq!(
            health_status(addr, service).await,
            ServingStatus::Serving,
            "health of {service:?}"
        );
    }
}

/// Waits (bounded) until the `redis` health status is `wanted`, checking
/// all along that readiness never leaves SERVING.
async fn wait_for_redis_status(addr: std::net::SocketAddr, wanted: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while health_status(addr, "redis").await != wanted {
        assert_ready(addr).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the redis status never became {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_redis_outage_shows_in_the_redis_status_while_readiness_stays_serving() {
    let mut redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |c| {
        crate::helpers::use_redis(c, &redis);
        c.cache.redis_timeout_ms = 300;
        with_metrics(c);
    })
    .await;
    let user = app.create_user("customer-1").await;
    assert_ready(app.addr).await;
    wait_for_redis_status(app.addr, ServingStatus::Serving).await;
    assert_eq!(sample(&app.scrape().await, "bankauth_redis_up", &[]), 1.0);

    redis.kill();
    wait_for_redis_status(app.addr, ServingStatus::NotServing).await;
    assert_ready(app.addr).await;
    assert_eq!(sample(&app.scrape().await, "bankauth_redis_up", &[]), 0.0);
    // Callers are still served, from the provider, and the errors are counted.
    app.widget_token(&user).await.unwrap();
    assert!(sample(&app.scrape().await, "bankauth_redis_errors_total", &[]) >= 1.0);

    redis.restart();
    wait_for_redis_status(app.addr, ServingStatus::Serving).await;
    assert_ready(app.addr).await;
    assert_eq!(sample(&app.scrape().await, "bankauth_redis_up", &[]), 1.0);
}

#[tokio::test]
async fn shutdown_lets_in_flight_calls_finish_and_then_refuses_new_ones() {
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream, |_| {}).await;
    let user = app.create_user("customer-1").await;
    const IN_FLIGHT: usize = 16;
    for _ in 0..IN_FLIGHT {
        app.sandbox()
            .fail_next(Endpoint::Token, Fault::Stall(Duration::from_millis(700)));
    }
    // Distinct scope sets, so each call is a miss that waits on the stalled provider.
    let scope_sets = [
        vec!["accounts:read"],
        vec!["transactions:read:all"],
        vec!["categories:read"],
        vec!["accounts_details:read"],
    ];
    let calls: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let mut client = app.client.clone();
            let user = if i < 4 {
                user.clone()
            } else {
                format!("{user}{i}")
            };
            let scopes = scope_sets[i % 4].iter().map(|s| s.to_string()).collect();
            tokio::spawn(async move {
                client
                    .issue_data_token(bankauth::proto::v1::IssueDataTokenRequest {
                        provider: String::new(),
                        user_id: user,
                        scopes,
                        force_refresh: false,
                    })
                    .await
            })
        })
        .collect();
    while app.sandbox().token_requests() < 1 + IN_FLIGHT as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.shut_down().await;

    let mut failures = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => {}
            // Users the sandbox does not know are its answer, not a dropped call.
            Err(status) if status.code() == Code::InvalidArgument => {}
            Err(status) => failures.push(status),
        }
    }
    assert!(
        failures.is_empty(),
        "in-flight calls failed during shutdown: {failures:?}"
    );
    let after = app.widget_token(&user).await.unwrap_err();
    assert_eq!(after.code(), Code::Unavailable, "{after:?}");
}

#[tokio::test]
async fn without_redis_the_redis_health_status_is_not_found() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let app = spawn_app_with(start_upstream().await, |_| {}).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "redis".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(health_status(app.addr, "").await, ServingStatus::Serving);
}

/// A caller that goes away while its call is still being handled (the
/// stream reset before any response) is still counted as handled, as
/// `Canceled`: else `grpc_server_started_total - grpc_server_handled_total`
/// (calls in flight) would grow forever, and the call have no audit line.
#[tokio::test]
async fn a_call_abandoned_before_its_answer_is_counted_handled_as_canceled() {
    use bankauth::sandbox::{Endpoint, Fault};
    let upstream = start_upstream().await;
    let mut app = spawn_app_with(upstream.clone(), with_metrics).await;
    let user = app.create_user("customer-1").await;
    upstream.sandbox.fail_next(
        Endpoint::Token,
        Fault::Stall(std::time::Duration::from_secs(2)),
    );
    let abandoned = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        app.widget_token(&user),
    )
    .await;
    assert!(abandoned.is_err(), "the call was still running");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let text = app.scrape().await;
    let widget = [
        ("grpc_service", AUTH_SERVICE),
        ("grpc_method", "IssueWidgetToken"),
    ];
    let started = sample(&text, "grpc_server_started_total", &widget);
    let handled = sample(&text, "grpc_server_handled_total", &widget);
    assert_eq!(started, 1.0, "{text}");
    assert_eq!(handled, started, "started but never handled:\n{text}");
    let canceled = [widget.as_slice(), &[("grpc_code", "Canceled")]].concat();
    assert_eq!(sample(&text, "grpc_server_handled_total", &canceled), 1.0);
}
