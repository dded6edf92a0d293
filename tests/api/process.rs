//! The real binary as an operator runs it: `bankauth serve` with a file,
//! SIGHUP re-running discovery, SIGTERM draining and exiting 0.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bankauth::demo::DemoUpstream;
use bankauth::proto::v1::auth_service_client::AuthServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStderr, Command};

use crate::helpers::{
    RedisServer, TestCa, authorization_code, error_info, new_user, sample, serve_binary,
    start_upstream, write_client_key,
};
use bankauth::sandbox::{Endpoint, Fault};

/// Reads log lines until one contains `needle`; returns it.
async fn wait_for(lines: &mut Lines<BufReader<ChildStderr>>, needle: &str) -> String {
    let read = async {
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(needle) {
                return line;
            }
            seen.push(line);
        }
        panic!(
            "the process ended before logging {needle:?}; it printed:\n{}",
            seen.join("\n")
        );
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?} within 20 s"))
}

/// Waits for a JSON-logging bankauth's `bankauth listening` line and
/// connects to the address it names.
async fn connect_when_listening(
    lines: &mut Lines<BufReader<ChildStderr>>,
) -> AuthServiceClient<tonic::transport::Channel> {
    let listening = wait_for(lines, "bankauth listening").await;
    let listening: serde_json::Value = serde_json::from_str(&listening).expect("JSON log lines");
    let addr = listening["addr"].as_str().unwrap();
    AuthServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Writes a configuration for the sandbox `upstream` (plus `extra` TOML) and
/// its key into `dir`; returns the configuration's path. Requests are
/// anonymous unless `extra` configures callers.
fn write_config(dir: &tempfile::TempDir, upstream: &DemoUpstream, extra: &str) -> PathBuf {
    let key = write_client_key(dir.path(), upstream);
    let anonymous = !extra.contains("[access.callers.");
    let config = dir.path().join("bankauth.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            {extra}

            [server]
            listen_addr = "127.0.0.1:0"
            allow_plaintext = true

            [access]
            allow_anonymous = {anonymous}

            [providers.sandbox]
            kind = "moneyhub"
            issuer = "{}"
            client_id = "{}"
            private_key_file = "{}"
            data_scopes = ["accounts:read"]
            redirect_uris = ["{}"]
            "#,
            upstream.sandbox.issuer(),
            bankauth::demo::DEMO_CLIENT_ID,
            key.display(),
            bankauth::sandbox::DEFAULT_REDIRECT_URI,
        ),
    )
    .unwrap();
    config
}

/// Waits for the "listening" log line; returns the address it names.
async fn listening_addr(lines: &mut Lines<BufReader<ChildStderr>>) -> String {
    let listening = wait_for(lines, "bankauth listening").await;
    assert!(
        !listening.contains('\u{1b}'),
        "ANSI codes in piped logs: {listening:?}"
    );
    listening
        .split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .expect("the listening line names the address")
        .to_owned()
}

#[tokio::test]
async fn serve_reloads_discovery_on_sighup_and_exits_cleanly_on_sigterm() {
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &upstream, "");
    let (mut child, mut lines) = serve_binary(&config, &[]);
    let pid = child.id().unwrap();
    let addr = listening_addr(&mut lines).await;

    let mut client = bankauth::proto::v1::auth_service_client::AuthServiceClient::connect(format!(
        "http://{addr}"
    ))
    .await
    .unwrap();
    let user = client
        .create_user(crate::helpers::new_user("customer-1"))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(upstream.sandbox.user_count(), 1);
    assert!(!user.id.is_empty());

    signal(pid, "HUP");
    let reloaded = wait_for(&mut lines, "endpoints reloaded").await;
    assert!(
        reloaded.contains("provider=\"sandbox\"") || reloaded.contains("provider=sandbox"),
        "{reloaded}"
    );

    signal(pid, "TERM");
    wait_for(&mut lines, "shutting down").await;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("bankauth exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sighup_drops_the_cached_jwks_so_removed_keys_stop_being_trusted() {
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &upstream, "");
    let (child, mut lines) = serve_binary(&config, &[]);
    let addr = listening_addr(&mut lines).await;
    let mut client = AuthServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut exchange = async || {
        let code = authorization_code(
            &upstream,
            &[
                ("redirect_uri", "https://app.example.com/cb"),
                ("nonce", "n"),
            ],
        )
        .await;
        client
            .exchange_authorization_code(bankauth::proto::v1::ExchangeAuthorizationCodeRequest {
                provider: String::new(),
                code,
                redirect_uri: "https://app.example.com/cb".into(),
                code_verifier: String::new(),
                nonce: "n".into(),
                sub: String::new(),
                state: String::new(),
            })
            .await
            .unwrap();
    };
    exchange().await;
    exchange().await;
    assert_eq!(upstream.sandbox.jwks_requests(), 1);

    signal(child.id().unwrap(), "HUP");
    wait_for(&mut lines, "endpoints reloaded").await;
    exchange().await;
    assert_eq!(upstream.sandbox.jwks_requests(), 2);
}

/// The hash `bankauth hash-key` prints, listed for a caller, lets that
/// caller's key in: it is the digest the service compares.
#[tokio::test]
async fn a_key_hashed_by_hash_key_is_accepted_and_no_other_is() {
    const API_KEY: &str = "k7Qm+2x/PzR9vT4wYc1NfHs8LdJ0aEuB6gKiVnXoM3A=";
    let output = crate::commands::hash_key(format!("{API_KEY}\n").as_bytes());
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap();
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let caller = format!(
        "[access.callers.backend]\napi_key_sha256 = [\"{}\"]\nrpcs = [\"*\"]\nproviders = [\"*\"]\n",
        hash.trim_end()
    );
    let config = write_config(&dir, &upstream, &caller);
    let (_child, mut lines) = serve_binary(&config, &[]);
    let addr = listening_addr(&mut lines).await;
    let mut client = AuthServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let with_key = |key: &str| {
        let mut request = tonic::Request::new(new_user("customer-1"));
        let bearer = format!("Bearer {key}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
        request
    };
    let refused = client
        .create_user(with_key("k7Qm+2x/PzR9vT4wYc1NfHs8LdJ0aEuB6gKiVnXoM3B="))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    client.create_user(with_key(API_KEY)).await.unwrap();
    assert_eq!(upstream.sandbox.user_count(), 1);
}

/// An OTLP trace receiver (gRPC or HTTP), as a collector would run one.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    fn keep(&self, request: ExportTraceServiceRequest) {
        let spans = request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
    }

    /// Serves OTLP/HTTP: protobuf bodies POSTed to `/v1/traces`; over TLS
    /// with `collector.pem` from `tls` when given.
    async fn start_http(&self, tls: Option<&TestCa>) -> std::net::SocketAddr {
        use prost::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = self.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        collector.keep(request);
                        let answer = ExportTraceServiceResponse::default().encode_to_vec();
                        (axum::http::StatusCode::OK, answer)
                    }
                    Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                }
            }),
        );
        match tls {
            None => tokio::spawn(async move { axum::serve(listener, app).await }),
            Some(ca) => {
                let tls = TlsListener::new(listener, ca);
                tokio::spawn(async move { axum::serve(tls, app).await })
            }
        };
        addr
    }

    /// Serves OTLP/gRPC; over TLS with `collector.pem` from `tls` when given.
    async fn start(&self, tls: Option<&TestCa>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = tonic::transport::Server::builder();
        if let Some(ca) = tls {
            let identity = tonic::transport::Identity::from_pem(
                std::fs::read(ca.path("collector.pem")).unwrap(),
                std::fs::read(ca.path("collector.key")).unwrap(),
            );
            server = server
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .unwrap();
        }
        tokio::spawn(
            server
                .add_service(TraceServiceServer::new(self.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

/// A TLS listener for axum, as a collector's HTTPS endpoint.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsListener {
    fn new(tcp: tokio::net::TcpListener, ca: &TestCa) -> Self {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls;
        let chain = CertificateDer::pem_file_iter(ca.path("collector.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(ca.path("collector.key")).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Self {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[tokio::test]
async fn traces_reach_an_otlp_grpc_collector_continuing_the_callers_trace() {
    traces_reach_a_collector("grpc", false).await;
}

#[tokio::test]
async fn traces_reach_an_otlp_http_collector_continuing_the_callers_trace() {
    traces_reach_a_collector("http/protobuf", false).await;
}

#[tokio::test]
async fn traces_reach_an_otlp_grpc_collector_over_tls_trusting_its_ca() {
    traces_reach_a_collector("grpc", true).await;
}

#[tokio::test]
async fn traces_reach_an_otlp_http_collector_over_tls_trusting_its_ca() {
    traces_reach_a_collector("http/protobuf", true).await;
}

/// The real binary exports its spans with `protocol` (as
/// `OTEL_EXPORTER_OTLP_PROTOCOL` names it), over TLS to a collector whose
/// CA it is given in `OTEL_EXPORTER_OTLP_CERTIFICATE` when `tls`: the RPC's
/// span continues the caller's trace, its children are the upstream and
/// Redis calls, and the provider receives the upstream span as its parent.
async fn traces_reach_a_collector(protocol: &str, tls: bool) {
    let pki = tempfile::tempdir().unwrap();
    let ca = tls.then(|| {
        let ca = TestCa::new(pki.path(), "ca");
        ca.issue("collector", "IP:127.0.0.1");
        ca
    });
    let collector = Collector::default();
    let collector_addr = match protocol {
        "grpc" => collector.start(ca.as_ref()).await,
        _ => collector.start_http(ca.as_ref()).await,
    };
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let telemetry = format!(
        "[telemetry]\nlog_format = \"json\"\n[cache]\nredis_url = \"{}\"\nencryption_keys = [{{ id = \"k1\", key_env = \"TEST_CACHE_KEY\" }}]",
        redis.url().expose_secret()
    );
    let config = write_config(&dir, &upstream, &telemetry);
    let scheme = if tls { "https" } else { "http" };
    let endpoint = format!("{scheme}://{collector_addr}");
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        (
            "TEST_CACHE_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_owned(),
        ),
    ];
    if let Some(ca) = &ca {
        let path = ca.path("ca.pem").to_str().unwrap().to_owned();
        env.push(("OTEL_EXPORTER_OTLP_CERTIFICATE", path));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut child, mut lines) = serve_binary(&config, &env);
    let mut client = connect_when_listening(&mut lines).await;
    let user = client
        .create_user(new_user("customer-1"))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .id;

    // The caller's own trace: 32 hex trace id, 16 hex parent span id.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(bankauth::proto::v1::IssueWidgetTokenRequest {
        provider: String::new(),
        user_id: user.clone(),
        force_refresh: false,
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    // The caller's baggage, which must not travel on to the provider.
    request
        .metadata_mut()
        .insert("baggage", "customer=acme-internal".parse().unwrap());
    client.issue_widget_token(request).await.unwrap();
    let logged = wait_for(&mut lines, trace_id).await;
    // A caller's mistake, then a failure on the provider's side.
    let widget_token = |user_id: &str| bankauth::proto::v1::IssueWidgetTokenRequest {
        provider: String::new(),
        user_id: user_id.to_owned(),
        force_refresh: true,
    };
    let refused = client.issue_widget_token(widget_token("..")).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);
    for _ in 0..5 {
        upstream
            .sandbox
            .fail_next(Endpoint::Token, Fault::Status(500));
    }
    let failed = client.issue_widget_token(widget_token(&user)).await;
    assert_eq!(failed.unwrap_err().code(), tonic::Code::Unavailable);

    signal(child.id().unwrap(), "TERM");
    assert!(child.wait().await.unwrap().success());

    let spans = collector.spans();
    let hex = |bytes: &[u8]| hex::encode(bytes);
    let mut rpcs: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "bankauth.v1.AuthService/IssueWidgetToken")
        .collect();
    rpcs.sort_by_key(|span| span.start_time_unix_nano);
    assert_eq!(
        rpcs.len(),
        3,
        "RPC spans among {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let rpc = rpcs
        .iter()
        .find(|s| hex(&s.trace_id) == trace_id)
        .expect("the RPC span continuing the caller's trace");
    assert_eq!(
        hex(&rpc.parent_span_id),
        caller_span,
        "the RPC span continues the caller's span"
    );
    // OpenTelemetry's RPC attributes, and a status only when the server failed.
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let attribute = |span: &Span, key: &str| {
        span.attributes
            .iter()
            .find(|attribute| attribute.key == key)
            .and_then(|attribute| attribute.value.clone()?.value)
    };
    let text = |value: &str| Some(Value::StringValue(value.to_owned()));
    assert_eq!(attribute(rpc, "rpc.system"), text("grpc"));
    assert_eq!(
        attribute(rpc, "rpc.service"),
        text("bankauth.v1.AuthService")
    );
    assert_eq!(attribute(rpc, "rpc.method"), text("IssueWidgetToken"));
    let status_of = |span: &Span| {
        let code = match attribute(span, "rpc.grpc.status_code") {
            Some(Value::IntValue(code)) => code,
            other => panic!("rpc.grpc.status_code: {other:?}"),
        };
        let status = span.status.clone().unwrap_or_default();
        (code, status.code)
    };
    // span status codes: 0 unset, 2 error.
    let outcomes: Vec<(i64, i32)> = rpcs.iter().map(|span| status_of(span)).collect();
    assert_eq!(
        outcomes,
        [(0, 0), (3, 0), (14, 2)],
        "OK, INVALID_ARGUMENT, UNAVAILABLE"
    );

    // The RPC's log line names the trace and the RPC's span at its top level.
    let logged: serde_json::Value = serde_json::from_str(&logged).expect("JSON log lines");
    assert_eq!(logged["message"], "rpc finished", "{logged}");
    assert_eq!(logged["trace_id"], trace_id, "{logged}");
    assert_eq!(logged["span_id"], hex(&rpc.span_id).as_str(), "{logged}");

    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == rpc.span_id)
        .collect();
    let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"POST token"),
        "upstream span missing: {names:?}"
    );
    assert!(
        names.contains(&"GET") && names.contains(&"SET"),
        "Redis spans missing: {names:?}"
    );
    assert!(children.iter().all(|s| hex(&s.trace_id) == trace_id));

    let upstream_span = children.iter().find(|s| s.name == "POST token").unwrap();
    let expected = format!("00-{trace_id}-{}-01", hex(&upstream_span.span_id));
    assert!(
        upstream.sandbox.traceparents().contains(&expected),
        "the provider did not receive {expected}: {:?}",
        upstream.sandbox.traceparents()
    );
    assert_eq!(upstream.sandbox.baggage_headers(), Vec::<String>::new());
}

/// `OTEL_PROPAGATORS` decides what is read and written: with only `b3`
/// (which bankauth does not have, and says so) and `baggage`, the caller's
/// `traceparent` is not continued, and none is sent to the provider.
#[tokio::test]
async fn otel_propagators_choose_the_propagation() {
    let collector = Collector::default();
    let collector_addr = collector.start(None).await;
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &upstream, "[telemetry]\nlog_format = \"json\"\n");
    let endpoint = format!("http://{collector_addr}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_PROPAGATORS", "b3, baggage"),
    ];
    let (mut child, mut lines) = serve_binary(&config, &env);
    let warning = wait_for(&mut lines, "OTEL_PROPAGATORS").await;
    assert!(
        warning.contains("b3") && warning.contains("WARN"),
        "{warning}"
    );
    let mut client = connect_when_listening(&mut lines).await;
    let user = upstream.sandbox.seed_users(1).remove(0);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(bankauth::proto::v1::IssueWidgetTokenRequest {
        provider: String::new(),
        user_id: user,
        force_refresh: false,
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    client.issue_widget_token(request).await.unwrap();
    signal(child.id().unwrap(), "TERM");
    assert!(child.wait().await.unwrap().success());

    let spans = collector.spans();
    let rpc = spans
        .iter()
        .find(|s| s.name == "bankauth.v1.AuthService/IssueWidgetToken")
        .expect("the RPC's span");
    assert_ne!(hex::encode(&rpc.trace_id), trace_id, "a trace of its own");
    assert!(rpc.parent_span_id.is_empty(), "{:?}", rpc.parent_span_id);
    assert_eq!(upstream.sandbox.traceparents(), Vec::<String>::new());
}

/// Every flow, with logs at TRACE (ours and every library's), and then the
/// logs searched for each secret that passed through the process.
#[tokio::test]
async fn no_secret_reaches_the_logs_even_at_trace_level() {
    const API_KEY: &str = "log-test-api-key-2b7e151628aed2a6";
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let caller = format!(
        "[access.callers.backend]\napi_key_sha256 = [\"{}\"]\nrpcs = [\"*\"]\nproviders = [\"*\"]\nscopes = [\"*\"]\n",
        crate::helpers::sha256_hex(API_KEY)
    );
    let config = write_config(&dir, &upstream, &caller);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bankauth"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Both streams are drained as they come, so the child never blocks.
    let logged = Arc::new(Mutex::new(String::new()));
    let (sink, mut lines) = (logged.clone(), BufReader::new(stderr).lines());
    let (ready, listening) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready);
    let stderr_reader = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("bankauth listening") {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(line.clone());
                }
            }
            let mut all = sink.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    });
    let stdout_reader = tokio::spawn(async move {
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut out)
            .await
            .unwrap();
        out
    });
    let listening = tokio::time::timeout(Duration::from_secs(20), listening)
        .await
        .expect("bankauth started")
        .unwrap();
    let addr = listening
        .split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .unwrap()
        .trim_matches('"')
        .to_owned();

    let mut client = AuthServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    fn authorized<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let bearer = format!("Bearer {API_KEY}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
        request
    }
    let user = client
        .create_user(authorized(new_user("customer-1")))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .id;
    let mut secrets = vec![API_KEY.to_owned()];
    let widget = client
        .issue_widget_token(authorized(bankauth::proto::v1::IssueWidgetTokenRequest {
            provider: String::new(),
            user_id: user.clone(),
            force_refresh: false,
        }))
        .await
        .unwrap()
        .into_inner();
    secrets.push(widget.token.unwrap().access_token);
    let data = client
        .issue_data_token(authorized(bankauth::proto::v1::IssueDataTokenRequest {
            provider: String::new(),
            user_id: user.clone(),
            scopes: vec!["accounts:read".into()],
            force_refresh: false,
        }))
        .await
        .unwrap()
        .into_inner();
    secrets.push(data.token.unwrap().access_token);
    let code = crate::helpers::authorization_code(
        &upstream,
        &[
            ("redirect_uri", "https://app.example/callback"),
            ("scope", "openid"),
            ("sub", &user),
        ],
    )
    .await;
    let set = client
        .exchange_authorization_code(authorized(
            bankauth::proto::v1::ExchangeAuthorizationCodeRequest {
                provider: String::new(),
                code: code.clone(),
                redirect_uri: "https://app.example/callback".into(),
                code_verifier: String::new(),
                nonce: String::new(),
                sub: String::new(),
                state: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token_set
        .unwrap();
    let refreshed = client
        .refresh_token(authorized(bankauth::proto::v1::RefreshTokenRequest {
            provider: String::new(),
            refresh_token: set.refresh_token.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .token_set
        .unwrap();
    secrets.extend([code, set.access_token, set.id_token, set.refresh_token]);
    let created = client
        .create_authorization_url(authorized(
            bankauth::proto::v1::CreateAuthorizationUrlRequest {
                provider: String::new(),
                user_id: user.clone(),
                redirect_uri: bankauth::sandbox::DEFAULT_REDIRECT_URI.into(),
                purpose: Some(
                    bankauth::proto::v1::create_authorization_url_request::Purpose::ConnectBank(
                        Default::default(),
                    ),
                ),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let callback = crate::helpers::follow_authorization_url(&created.url).await;
    let by_state = client
        .exchange_authorization_code(authorized(
            bankauth::proto::v1::ExchangeAuthorizationCodeRequest {
                state: created.state.clone(),
                code: callback["code"].clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token_set
        .unwrap();
    let request_uri = url::Url::parse(&created.url)
        .unwrap()
        .query_pairs()
        .find(|(name, _)| name == "request_uri")
        .map(|(_, value)| value.into_owned())
        .unwrap();
    // The nonce bankauth made, as the ID token carries it.
    let payload = by_state.id_token.split('.').nth(1).unwrap();
    let payload =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap();
    let nonce = serde_json::from_slice::<serde_json::Value>(&payload).unwrap()["nonce"]
        .as_str()
        .unwrap()
        .to_owned();
    secrets.extend([created.state, callback["code"].clone(), request_uri, nonce]);
    secrets.extend([
        by_state.access_token,
        by_state.id_token,
        by_state.refresh_token,
    ]);
    // RevokeToken sends the token in a form body, and DeleteUser sweeps
    // the user's cached tokens: neither may log a token.
    client
        .revoke_token(authorized(bankauth::proto::v1::RevokeTokenRequest {
            provider: String::new(),
            token: refreshed.refresh_token.clone(),
            token_type_hint: bankauth::proto::v1::TokenTypeHint::RefreshToken.into(),
        }))
        .await
        .unwrap();
    client
        .delete_user(authorized(bankauth::proto::v1::DeleteUserRequest {
            provider: String::new(),
            user_id: user.clone(),
        }))
        .await
        .unwrap();
    secrets.extend([refreshed.access_token, refreshed.refresh_token]);
    secrets.extend(upstream.sandbox.recent_assertions());
    // The private key, by a line of its Base64 body.
    let pem = upstream.client_key_pem.expose_secret().to_owned();
    secrets.extend(
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .take(3)
            .map(str::to_owned),
    );

    signal(child.id().unwrap(), "TERM");
    assert!(child.wait().await.unwrap().success());
    stderr_reader.await.unwrap();
    let stdout = String::from_utf8(stdout_reader.await.unwrap()).unwrap();
    let logs = format!("{}{stdout}", logged.lock().unwrap());
    assert!(
        logs.contains("token_issued")
            && logs.contains("authorization_url_created")
            && logs.contains("authorization_code_exchanged")
            && logs.contains("token_revoked")
            && logs.contains("user_deleted")
            && logs.contains("TRACE"),
        "the logs are not at trace level or lack audit events:\n{}",
        &logs[..logs.len().min(2000)]
    );
    let assertions = upstream.sandbox.recent_assertions().len();
    assert!(assertions >= 3, "only {assertions} client assertions seen");
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        // A JWT's signature part alone is enough to find it.
        let needle = secret.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(needle),
            "a secret ({} characters) appears in the logs",
            secret.len()
        );
    }
}

/// Every token handed out is attributable from the logs alone: its RPC's
/// one line (target `bankauth::audit`, JSON here) names the caller, the
/// provider, the user, the scopes and the cache outcome. The process is
/// stopped right after the last call, so its line must survive the
/// shutdown (log lines are written by a thread of their own).
#[tokio::test]
async fn each_token_handed_out_is_one_log_line_naming_its_caller() {
    const API_KEY: &str = "audit-test-api-key-8d969eef6ecad3c2";
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[telemetry]\nlog_format = \"json\"\n\n[access.callers.backend]\napi_key_sha256 = [\"{}\"]\nrpcs = [\"*\"]\nproviders = [\"*\"]\nscopes = [\"*\"]\n",
        crate::helpers::sha256_hex(API_KEY)
    );
    let config = write_config(&dir, &upstream, &extra);
    let (mut child, mut lines) = serve_binary(&config, &[]);
    let mut client = connect_when_listening(&mut lines).await;
    fn authorized<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let bearer = format!("Bearer {API_KEY}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
        request
    }
    let user = client
        .create_user(authorized(new_user("customer-1")))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .id;
    // A miss, then a hit, then a token with data scopes.
    for _ in 0..2 {
        client
            .issue_widget_token(authorized(bankauth::proto::v1::IssueWidgetTokenRequest {
                provider: String::new(),
                user_id: user.clone(),
                force_refresh: false,
            }))
            .await
            .unwrap();
    }
    client
        .issue_data_token(authorized(bankauth::proto::v1::IssueDataTokenRequest {
            provider: String::new(),
            user_id: user.clone(),
            scopes: vec!["accounts:read".into()],
            force_refresh: false,
        }))
        .await
        .unwrap();
    signal(child.id().unwrap(), "TERM");
    assert!(child.wait().await.unwrap().success());

    let mut log = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        log.push(serde_json::from_str::<serde_json::Value>(&line).expect("JSON log lines"));
    }
    let issued: Vec<&serde_json::Value> = log
        .iter()
        .filter(|line| line["event"] == "token_issued")
        .collect();
    let tokens: Vec<(&str, &str, &str)> = issued
        .iter()
        .map(|line| {
            assert_eq!(line["target"], "bankauth::audit", "{line}");
            assert_eq!(line["message"], "rpc finished", "{line}");
            assert_eq!(line["caller"], "backend", "{line}");
            assert_eq!(line["provider"], "sandbox", "{line}");
            assert_eq!(line["sub"], user.as_str(), "{line}");
            assert_eq!(line["code"], "OK", "{line}");
            (
                line["rpc.method"].as_str().unwrap(),
                line["scopes"].as_str().unwrap(),
                line["cache"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tokens,
        [
            ("IssueWidgetToken", "widget_authentication", "miss"),
            ("IssueWidgetToken", "widget_authentication", "hit"),
            ("IssueDataToken", "accounts:read", "miss"),
        ],
        "one line per token handed out, and only one"
    );
    let token_rpcs = log
        .iter()
        .filter(|line| {
            line["rpc.method"]
                .as_str()
                .is_some_and(|m| m.starts_with("Issue"))
        })
        .filter(|line| line["target"] == "bankauth::audit")
        .count();
    assert_eq!(token_rpcs, 3, "a token RPC writes one line: {log:#?}");
}

/// SIGTERM while callers keep calling: every call accepted before the
/// signal completes (some are waiting on a slow provider), calls after it
/// are refused rather than cut off, and the process exits 0.
#[tokio::test]
async fn sigterm_under_load_completes_every_accepted_call_and_exits_zero() {
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &upstream, "");
    let (mut child, mut lines) = serve_binary(&config, &[]);
    let addr = listening_addr(&mut lines).await;
    let users = upstream.sandbox.seed_users(200);
    const WORKERS: usize = 16;
    for _ in 0..WORKERS {
        upstream
            .sandbox
            .fail_next(Endpoint::Token, Fault::Stall(Duration::from_millis(800)));
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let mut client = AuthServiceClient::new(channel.clone());
            let users = users.clone();
            tokio::spawn(async move {
                // Every outcome in order; the worker stops at its first refusal.
                let mut outcomes = Vec::new();
                for user in users.iter().skip(worker).step_by(WORKERS).cycle() {
                    let result = client
                        .issue_widget_token(bankauth::proto::v1::IssueWidgetTokenRequest {
                            provider: String::new(),
                            user_id: user.clone(),
                            force_refresh: false,
                        })
                        .await;
                    let failed = result.is_err();
                    outcomes.push(result.map(|_| ()));
                    if failed {
                        break;
                    }
                }
                outcomes
            })
        })
        .collect();
    // Signal while the first calls wait on the stalled provider.
    while upstream.sandbox.token_requests() < 1 + WORKERS as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(child.id().unwrap(), "TERM");

    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("bankauth exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut served = 0;
    for worker in workers {
        let outcomes = worker.await.unwrap();
        assert!(
            outcomes.first().is_some_and(Result::is_ok),
            "a call in flight at SIGTERM failed: {:?}",
            outcomes.first()
        );
        assert!(
            outcomes[..outcomes.len() - 1].iter().all(Result::is_ok),
            "only the last call of a worker may fail: {outcomes:?}"
        );
        // After the signal, a call is refused: GOAWAY (UNAVAILABLE) or, if
        // the client had queued it on the closing connection, never sent
        // (CANCELLED, "connection closed"). The server's log below shows
        // it never started either.
        if let Some(Err(refused)) = outcomes.last() {
            assert!(
                matches!(
                    refused.code(),
                    tonic::Code::Unavailable | tonic::Code::Cancelled
                ),
                "{refused:?}"
            );
        }
        served += outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    }
    let mut log = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        log.push(line);
    }
    let rpcs = |needle: &str| log.iter().filter(|line| line.contains(needle)).count();
    assert_eq!(
        rpcs("rpc failed"),
        0,
        "the server failed a call it had accepted"
    );
    assert_eq!(
        rpcs("rpc finished"),
        served,
        "every call the server accepted reached its caller"
    );
}

/// An RPC whose deadline passes: the caller gets DEADLINE_EXCEEDED with its
/// ErrorInfo, and the server writes exactly one log line and one metric
/// sample for it.
#[tokio::test]
async fn an_rpc_past_its_deadline_is_answered_logged_and_counted_once() {
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &upstream,
        "[telemetry]\nmetrics_addr = \"127.0.0.1:0\"\n",
    );
    let (mut child, mut lines) =
        serve_binary(&config, &[("BANKAUTH_SERVER__REQUEST_TIMEOUT_MS", "1000")]);
    let listening = wait_for(&mut lines, "bankauth listening").await;
    let field = |name: &str| {
        listening
            .split_whitespace()
            .find_map(|field| field.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {listening}"))
            .trim_end_matches(')')
            .to_owned()
    };
    let (addr, metrics) = (field("addr="), field("metrics=Some("));
    let user = upstream.sandbox.seed_users(1).remove(0);
    upstream
        .sandbox
        .fail_next(Endpoint::Token, Fault::Stall(Duration::from_secs(10)));

    let mut client = AuthServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // The caller would wait 5 s; the server's 1 s is what fires.
    let mut request = tonic::Request::new(bankauth::proto::v1::IssueWidgetTokenRequest {
        provider: String::new(),
        user_id: user,
        force_refresh: false,
    });
    request.set_timeout(Duration::from_secs(5));
    let status = client.issue_widget_token(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    let info = error_info(&status);
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("DEADLINE_EXCEEDED", "bankauth.dev")
    );

    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples: Vec<_> = text
        .lines()
        .filter(|line| line.starts_with("grpc_server_handled_total{"))
        .collect();
    assert_eq!(samples.len(), 1, "{text}");
    let labels = [
        ("grpc_method", "IssueWidgetToken"),
        ("grpc_code", "DeadlineExceeded"),
    ];
    assert_eq!(
        sample(&text, "grpc_server_handled_total", &labels),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "grpc_server_handling_seconds_count", &labels),
        1.0
    );

    signal(child.id().unwrap(), "TERM");
    let exited = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("bankauth exits after SIGTERM")
        .unwrap();
    assert!(exited.success(), "{exited:?}");
    let mut log = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        log.push(line);
    }
    let ends: Vec<_> = log
        .iter()
        .filter(|line| line.contains("rpc failed") || line.contains("rpc finished"))
        .collect();
    assert_eq!(ends.len(), 1, "{ends:#?}");
    assert!(
        ends[0].contains("IssueWidgetToken") && ends[0].contains("DEADLINE_EXCEEDED"),
        "{}",
        ends[0]
    );
}

/// The keys of one JSON object, in order, duplicates kept (serde_json's
/// `Value` keeps only the last of a duplicated key).
fn json_keys(line: &str) -> Result<Vec<String>, serde_json::Error> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(key);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Keys>(line).map(|keys| keys.0)
}

/// JSON logs at TRACE (ours and every library's), traces exported: each
/// line is one JSON object with unique keys, and a record from a
/// `log`-crate library (reqwest, rustls, redis) keeps its own target, as
/// tracing-subscriber's formatters show it.
#[tokio::test]
async fn json_logs_at_trace_level_are_valid_unique_and_keep_library_targets() {
    let collector = Collector::default();
    let collector_addr = collector.start(None).await;
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &upstream, "[telemetry]\nlog_format = \"json\"\n");
    let endpoint = format!("http://{collector_addr}");
    let env = [
        ("RUST_LOG", "trace"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let (mut child, mut lines) = serve_binary(&config, &env);
    let mut client = connect_when_listening(&mut lines).await;
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
        all
    });
    let user = client
        .create_user(new_user("customer-1"))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .id;
    let mut request = tonic::Request::new(bankauth::proto::v1::IssueWidgetTokenRequest {
        provider: String::new(),
        user_id: user.clone(),
        force_refresh: false,
    });
    request.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    client.issue_widget_token(request).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(child.id().unwrap(), "TERM");
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("bankauth exits")
        .unwrap();
    let all = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .unwrap()
        .unwrap();
    let mut invalid = Vec::new();
    let mut duplicated = Vec::new();
    let mut log_target = Vec::new();
    for line in &all {
        match json_keys(line) {
            Err(error) => invalid.push(format!("{error}: {line}")),
            Ok(keys) => {
                let mut seen = std::collections::BTreeSet::new();
                if keys.iter().any(|key| !seen.insert(key)) {
                    duplicated.push(line.clone());
                }
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                if value["target"] == "log" || value.get("log.target").is_some() {
                    log_target.push(line.clone());
                }
            }
        }
    }
    assert!(all.len() > 10, "{all:?}");
    assert!(
        invalid.is_empty(),
        "{} invalid lines:\n{}",
        invalid.len(),
        invalid.join("\n")
    );
    assert!(
        duplicated.is_empty(),
        "{} lines with a duplicated key:\n{}",
        duplicated.len(),
        duplicated.join("\n")
    );
    assert!(
        log_target.is_empty(),
        "{} log-crate records logged under target \"log\":\n{}",
        log_target.len(),
        log_target
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
