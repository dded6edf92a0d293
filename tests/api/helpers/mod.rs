//! The shared harness: a real bankauth on a free loopback port, driven over
//! a real gRPC socket, against the sandbox provider over real HTTP, with a
//! real `redis-server` when a test asks for one.
//!
//! By concern: this file (the app, its upstream, requests and what comes
//! back), [`redis`] (Redis servers, the cache's keys and encryption keys),
//! [`tls`] (throwaway certificate authorities) and [`process`] (ports, the
//! real binary). Everything is re-exported here, so tests import
//! `crate::helpers::…` whatever file it lives in.

mod process;
mod redis;
mod tls;

pub use self::process::*;
pub use self::redis::*;
pub use self::tls::*;

use std::net::SocketAddr;
use std::sync::Arc;

use bankauth::config::Config;
use bankauth::demo::DemoUpstream;
use bankauth::proto::v1::auth_service_client::AuthServiceClient;
use bankauth::proto::v1::invalidate_token_request::Token;
use bankauth::proto::v1::{self as pb};
use bankauth::sandbox::{RegisteredClient, SandboxOptions};
use bankauth::server::Application;
use secrecy::SecretString;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A bankauth serving on loopback; stops when dropped.
pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub health_addr: Option<SocketAddr>,
    pub client: AuthServiceClient<Channel>,
    pub upstream: Arc<DemoUpstream>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), bankauth::server::StartupError>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a sandbox provider with the demo client registered.
pub async fn start_upstream() -> Arc<DemoUpstream> {
    start_upstream_with(|client| SandboxOptions::new(vec![client])).await
}

pub async fn start_upstream_with(
    options: impl FnOnce(RegisteredClient) -> SandboxOptions,
) -> Arc<DemoUpstream> {
    init_logs();
    Arc::new(DemoUpstream::start(options).await.expect("sandbox starts"))
}

/// bankauth with the in-process cache against a fresh sandbox.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(start_upstream().await, |_| {}).await
}

/// bankauth against `upstream`, its configuration adjusted by `configure`.
pub async fn spawn_app_with(
    upstream: Arc<DemoUpstream>,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let mut config = upstream.config(SocketAddr::from(([127, 0, 0, 1], 0)));
    configure(&mut config);
    let app = Application::build(config).await.expect("bankauth starts");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let health_addr = app.health_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        stopped.await.ok();
    }));
    let client = AuthServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("bankauth accepts connections");
    TestApp {
        addr,
        metrics_addr,
        health_addr,
        client,
        upstream,
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestApp {
    /// Signals shutdown (as SIGTERM does) and waits for the server to finish draining.
    pub async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the server task")
                .expect("a clean shutdown");
        }
    }

    /// The Prometheus text the metrics endpoint serves.
    pub async fn scrape(&self) -> String {
        let addr = self.metrics_addr.expect("metrics are on");
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn sandbox(&self) -> &bankauth::sandbox::Sandbox {
        &self.upstream.sandbox
    }

    /// InvalidateToken by the token itself or (`by_hash`) by its SHA-256.
    pub async fn invalidate(&mut self, token: &str, by_hash: bool) -> bool {
        let token = if by_hash {
            Token::AccessTokenSha256(sha256_hex(token))
        } else {
            Token::AccessToken(token.to_owned())
        };
        self.client
            .invalidate_token(pb::InvalidateTokenRequest {
                provider: String::new(),
                token: Some(token),
            })
            .await
            .expect("InvalidateToken succeeds")
            .into_inner()
            .invalidated
    }

    /// Creates a user with the given external id and returns its provider id.
    pub async fn create_user(&mut self, external_id: &str) -> String {
        self.client
            .create_user(new_user(external_id))
            .await
            .expect("CreateUser succeeds")
            .into_inner()
            .user
            .expect("a user")
            .id
    }

    pub async fn widget_token(&mut self, user_id: &str) -> Result<pb::AccessToken, tonic::Status> {
        self.client
            .issue_widget_token(pb::IssueWidgetTokenRequest {
                provider: String::new(),
                user_id: user_id.to_owned(),
                force_refresh: false,
            })
            .await
            .map(|response| response.into_inner().token.expect("a token"))
    }

    pub async fn data_token(
        &mut self,
        user_id: &str,
        scopes: &[&str],
    ) -> Result<pb::AccessToken, tonic::Status> {
        self.client
            .issue_data_token(pb::IssueDataTokenRequest {
                provider: String::new(),
                user_id: user_id.to_owned(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                force_refresh: false,
            })
            .await
            .map(|response| response.into_inner().token.expect("a token"))
    }
}

pub fn new_user(external_id: &str) -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        provider: String::new(),
        external_id: external_id.to_owned(),
        name: Some(pb::PersonName {
            given_name: "Alex".into(),
            family_name: "Taylor".into(),
        }),
        emails: vec![pb::Email {
            value: format!("{external_id}@example.com"),
            primary: true,
        }],
        subtenant: None,
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("bankauth=debug")
        .with_test_writer()
        .try_init();
}

/// Serves Prometheus metrics on a free loopback port ([`TestApp::scrape`]).
pub fn with_metrics(config: &mut Config) {
    config.telemetry.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
}

/// The value of the sample of `metric` whose labels include every pair in `labels`.
pub fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{metric}{{")) || line.starts_with(&format!("{metric} "))
        })
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// The `google.rpc.ErrorInfo` of a status.
pub fn error_info(status: &tonic::Status) -> tonic_types::ErrorInfo {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
}

/// The MoneyKit application the sandbox registers in [`start_upstream_with_moneykit`].
pub const MONEYKIT_CLIENT_ID: &str = "mk_test_5c739a369515e10fc9e0";
pub const MONEYKIT_SECRET: &str = "mk-secret:with/odd=chars";

/// A sandbox that also knows the MoneyKit test application.
pub async fn start_upstream_with_moneykit() -> Arc<DemoUpstream> {
    start_upstream_with(|client| {
        let mut options = SandboxOptions::new(vec![client]);
        options.moneykit_clients = vec![bankauth::sandbox::MoneykitClient {
            client_id: MONEYKIT_CLIENT_ID.into(),
            client_secret: MONEYKIT_SECRET.into(),
        }];
        options
    })
    .await
}

/// A `kind = "moneykit"` provider pointing at the sandbox.
pub fn moneykit_config(
    upstream: &DemoUpstream,
    auth: bankauth::config::ClientAuthMethod,
) -> bankauth::config::ProviderConfig {
    let mut config = bankauth::config::ProviderConfig::new(
        bankauth::config::ProviderKind::Moneykit,
        MONEYKIT_CLIENT_ID,
    );
    config.base_url = Some(upstream.sandbox.moneykit_url());
    config.client_auth = Some(auth);
    config.client_secret = Some(SecretString::from(MONEYKIT_SECRET));
    config.application_scopes = vec!["accounts:read".into(), "transactions:read".into()];
    config
}

/// Walks the sandbox's authorization endpoint as a browser would and
/// returns the code from the redirect.
pub async fn authorization_code(upstream: &DemoUpstream, params: &[(&str, &str)]) -> String {
    authorization_response(upstream, params, "code")
        .await
        .expect("a code in the redirect")
}

/// Walks the sandbox's authorization endpoint as a browser would and
/// returns the parameter `name` of the redirect it answers with.
pub async fn authorization_response(
    upstream: &DemoUpstream,
    params: &[(&str, &str)],
    name: &str,
) -> Option<String> {
    let mut url = upstream.sandbox.authorization_url();
    url.query_pairs_mut()
        .append_pair("client_id", bankauth::demo::DEMO_CLIENT_ID)
        .append_pair("response_type", "code")
        .extend_pairs(params);
    follow_authorization_url(url.as_str()).await.remove(name)
}

/// Lowercase hex SHA-256, computed independently of bankauth's own helper.
pub fn sha256_hex(value: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The status the health service reports for `service` at `addr`.
pub async fn health_status(
    addr: std::net::SocketAddr,
    service: &str,
) -> tonic_health::pb::health_check_response::ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

/// Opens an authorization URL as a browser would, at a provider that
/// consents at once (the sandbox), and returns the query of the redirect
/// back to the client (`code`, `state`, `iss`, or `error`).
pub async fn follow_authorization_url(url: &str) -> std::collections::BTreeMap<String, String> {
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "{:?}", response.text().await);
    let location: url::Url = response.headers()["location"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    location.query_pairs().into_owned().collect()
}
