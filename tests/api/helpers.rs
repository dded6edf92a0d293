//! The shared harness: a real bankauth on a free loopback port, driven over
//! a real gRPC socket, against the sandbox provider over real HTTP, with a
//! real `redis-server` when a test asks for one.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bankauth::config::Config;
use bankauth::demo::DemoUpstream;
use bankauth::proto::v1::auth_service_client::AuthServiceClient;
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
        let (access_token, access_token_sha256) = if by_hash {
            (String::new(), sha256_hex(token))
        } else {
            (token.to_owned(), String::new())
        };
        self.client
            .invalidate_token(pb::InvalidateTokenRequest {
                provider: String::new(),
                access_token,
                access_token_sha256,
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

/// A `redis-server` on a free loopback port, with persistence off; killed
/// when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
    /// The cache encryption key every replica using this Redis shares.
    key: bankauth::config::EncryptionKeyConfig,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = free_port();
        let server = Self {
            child: spawn_redis_server(&["--port", &port.to_string()]),
            port,
            key: encryption_key("k1"),
        };
        server.wait_until_ready();
        server
    }

    /// Stops the server (as an outage would); the port stays reserved for `restart`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a server frozen by [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{name} failed");
    }

    /// Starts the server again on its port after [`RedisServer::kill`], empty.
    pub fn restart(&mut self) {
        self.child = spawn_redis_server(&["--port", &self.port.to_string()]);
        self.wait_until_ready();
    }

    pub fn url(&self) -> SecretString {
        SecretString::from(format!("redis://127.0.0.1:{}/", self.port))
    }

    /// The sealer of the replicas using this Redis (see [`use_redis`]).
    pub fn sealer(&self) -> bankauth::cache::seal::Sealer {
        use secrecy::ExposeSecret;
        let encoded = self.key.key.as_ref().expect("an in-memory key");
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            encoded.expose_secret(),
        )
        .unwrap();
        bankauth::cache::seal::Sealer::new(vec![(self.key.id.clone(), bytes)]).unwrap()
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("a valid URL")
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ping = self
                .client()
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Serves Prometheus metrics on a free loopback port ([`TestApp::scrape`]).
pub fn with_metrics(config: &mut Config) {
    config.telemetry.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
}

/// Starts `redis-server` on loopback with persistence off and `args` added.
pub fn spawn_redis_server(args: &[&str]) -> Child {
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start redis-server ({e}). Install it with `apt-get install redis-server` \
                 (scripts/test does this)"
            )
        })
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (the OS picked it and it was released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
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
    let mut url = upstream.sandbox.authorization_url();
    url.query_pairs_mut()
        .append_pair("client_id", bankauth::demo::DEMO_CLIENT_ID)
        .append_pair("response_type", "code")
        .extend_pairs(params);
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
    location
        .query_pairs()
        .find(|(name, _)| name == "code")
        .map(|(_, code)| code.into_owned())
        .expect("a code in the redirect")
}

/// Points `config` at `redis`, with the encryption key its replicas share.
pub fn use_redis(config: &mut Config, redis: &RedisServer) {
    config.cache.redis_url = Some(redis.url());
    config.cache.encryption_keys = vec![redis.key.clone()];
}

/// A random cache encryption key named `id`, held in memory.
pub fn encryption_key(id: &str) -> bankauth::config::EncryptionKeyConfig {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    bankauth::config::EncryptionKeyConfig {
        id: id.to_owned(),
        key_file: None,
        key_env: None,
        key: Some(SecretString::from(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            bytes,
        ))),
    }
}

/// Lowercase hex SHA-256, computed independently of bankauth's own helper.
pub fn sha256_hex(value: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cache key of `user`'s widget token from the demo provider at `sandbox`.
pub fn widget_key(sandbox: &bankauth::sandbox::Sandbox, user: &str) -> bankauth::cache::TokenKey {
    let token_url = format!("{}/token", sandbox.issuer());
    let source = bankauth::cache::TokenSource {
        provider: bankauth::demo::DEMO_PROVIDER,
        token_url: &token_url,
        client_id: bankauth::demo::DEMO_CLIENT_ID,
        client_auth: "private_key_jwt",
    };
    bankauth::cache::TokenKey::new(
        &source,
        Some(&bankauth::domain::UserId::parse("user_id", user).unwrap()),
        &bankauth::domain::ScopeSet::single("widget_authentication"),
    )
}

/// A throwaway certificate authority made with openssl: `{name}.pem` and
/// `{name}.key` in `dir`, and the certificates it issues beside them.
pub struct TestCa {
    dir: std::path::PathBuf,
    name: String,
}

impl TestCa {
    pub fn new(dir: &std::path::Path, name: &str) -> Self {
        let ca = Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
        };
        let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
        ca.openssl(&[
            "req",
            "-x509",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=bankauth test CA",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &key,
            "-out",
            &pem,
        ]);
        ca
    }

    /// Issues `{stem}.pem` and `{stem}.key` for a subject alternative name
    /// such as `IP:127.0.0.1` or `DNS:payments.internal`.
    pub fn issue(&self, stem: &str, san: &str) {
        let (pem, key, csr, ext) = (
            format!("{stem}.pem"),
            format!("{stem}.key"),
            format!("{stem}.csr"),
            format!("{stem}.ext"),
        );
        self.openssl(&[
            "req",
            "-nodes",
            "-subj",
            &format!("/CN={stem}"),
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        std::fs::write(self.dir.join(&ext), format!("subjectAltName={san}\n")).unwrap();
        let (ca_pem, ca_key) = (format!("{}.pem", self.name), format!("{}.key", self.name));
        self.openssl(&[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ]);
    }

    pub fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.join(file)
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .output()
            .expect("openssl (`apt-get install openssl`)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Writes the sandbox client's private key into `dir`, as a deployment
/// mounts it; returns its path for `private_key_file`.
pub fn write_client_key(dir: &std::path::Path, upstream: &DemoUpstream) -> std::path::PathBuf {
    use secrecy::ExposeSecret;
    let key = dir.join("client.pem");
    std::fs::write(&key, upstream.client_key_pem.expose_secret()).unwrap();
    key
}

/// Starts the real binary, `bankauth serve --config <config>`, with `env`;
/// its logs are piped to the returned lines, and it is killed when dropped.
pub fn serve_binary(
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bankauth"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}
