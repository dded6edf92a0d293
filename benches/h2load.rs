//! The independent harness: Debian's `h2load` (nghttp2-client) drives the
//! real release binary, configured as shipped, and two anchor handlers
//! served by the same tonic version. See BENCHMARKS.md.
//!
//! ```sh
//! cargo bench --bench h2load                                 # 3 rounds of 8 s per point
//! cargo bench --bench h2load -- --seconds 4 --rounds 3
//! cargo bench --bench h2load -- --bin before=/tmp/bankauth-before   # A/B against another build
//! cargo bench --bench h2load -- --log-format json            # serve logging as the chart ships it
//! ```
//!
//! Every server is pinned to core 0 (`taskset -c 0`); h2load and
//! `redis-server` to core 1. Points are interleaved: each round runs every
//! server once, and the tables report medians over rounds. Server CPU per
//! request comes from `/proc/<pid>/stat`. Each point is checked: h2load's
//! 2xx count must equal the requests it sent, and bankauth's own
//! `grpc_server_handled_total` must have grown by as much with code OK,
//! and with any other code by no more than the calls in flight when h2load
//! stops and hangs up on them (a gRPC error also travels as HTTP 200). The anchors and the demo (no
//! metrics port) are checked with a tonic client before and after.
//!
//! Servers under test, each on its own port, all alive for the whole run
//! (an idle one costs nothing):
//! - `empty`: an empty tonic handler answering IssueWidgetToken with a
//!   prepared response of the real token's size;
//! - `redis GET`: the same, after one Redis GET of a value of the size
//!   bankauth stores, per request;
//! - `demo`: `bankauth demo` (in-process cache, no API key, text logs);
//! - `serve memory`: `bankauth serve`, no Redis, an API key on every request,
//!   metrics on, default log level, text logs (`--log-format json`: the
//!   chart's JSON lines);
//! - `serve redis`: the same with Redis and `memory_ttl_secs = 0`, so every
//!   hit is a Redis GET, an AES-GCM open and a decode.
//!
//! Logs (stderr) go to files in the run directory, as a container runtime
//! would take them; their size per request is reported.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bankauth::demo::{DEMO_CLIENT_ID, DemoUpstream};
use bankauth::proto::v1 as pb;
use bankauth::sandbox::SandboxOptions;
use pb::auth_service_client::AuthServiceClient;
use prost::Message;
use secrecy::ExposeSecret;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

const ROLE: &str = "BANKAUTH_H2LOAD_ROLE";
/// The load generator's key; its SHA-256 is in the configuration.
const API_KEY: &str = "h2load-bench-api-key";
/// Linux reports process CPU time in these ticks per second (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;
const PATH: &str = "/bankauth.v1.AuthService/IssueWidgetToken";
const SERVER_CORE: &str = "0";
const LOAD_CORE: &str = "1";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match std::env::var(ROLE).as_deref() {
        Ok("empty") => runtime.block_on(serve_anchor(None)),
        Ok("redis-get") => runtime.block_on(serve_anchor(Some(
            std::env::var("ANCHOR_REDIS_URL").expect("ANCHOR_REDIS_URL"),
        ))),
        _ => runtime.block_on(run(Options::from_args())),
    }
}

struct Options {
    seconds: u64,
    rounds: usize,
    /// Other bankauth builds to measure beside this one, as `name=path`.
    others: Vec<(String, PathBuf)>,
    /// Skip the 4 × 16 throughput points, or the 1 × 16 latency points.
    only: Option<String>,
    /// `serve`'s `telemetry.log_format`: `text` (the configuration's
    /// default, and every table's before issue 18) or `json` (the chart's).
    log_format: String,
}

impl Options {
    /// `cargo bench` appends `--bench`; anything unknown is ignored.
    fn from_args() -> Self {
        let mut options = Self {
            seconds: 8,
            rounds: 3,
            others: Vec::new(),
            only: None,
            log_format: "text".to_owned(),
        };
        let args: Vec<String> = std::env::args().collect();
        for pair in args.windows(2) {
            match pair[0].as_str() {
                "--seconds" => options.seconds = pair[1].parse().expect("--seconds N"),
                "--rounds" => options.rounds = pair[1].parse().expect("--rounds N"),
                "--only" => options.only = Some(pair[1].clone()),
                "--log-format" => options.log_format = pair[1].clone(),
                "--bin" => {
                    let (name, path) = pair[1].split_once('=').expect("--bin NAME=PATH");
                    options.others.push((name.to_owned(), path.into()));
                }
                _ => {}
            }
        }
        options
    }
}

// ---------------------------------------------------------------- anchors

/// An anchor: IssueWidgetToken answered with a prepared response of
/// `ANCHOR_TOKEN_LEN` bytes of token, after one Redis GET when `redis_url`
/// is given. Plain tonic, no layers, no logs.
async fn serve_anchor(redis_url: Option<String>) {
    let token_len: usize = std::env::var("ANCHOR_TOKEN_LEN").unwrap().parse().unwrap();
    let addr: SocketAddr = std::env::var("ANCHOR_ADDR").unwrap().parse().unwrap();
    let redis = match redis_url {
        Some(url) => {
            let client = redis::Client::open(url).unwrap();
            let mut connection = redis::aio::ConnectionManager::new(client).await.unwrap();
            // The size of a sealed bankauth entry for such a token.
            let value = vec![b'v'; token_len + 300];
            let _: () = redis::cmd("SET")
                .arg(ANCHOR_KEY)
                .arg(value)
                .query_async(&mut connection)
                .await
                .unwrap();
            Some(connection)
        }
        None => None,
    };
    let response = pb::IssueWidgetTokenResponse {
        token: Some(pb::AccessToken {
            access_token: "x".repeat(token_len),
            token_type: "Bearer".into(),
            expire_time: Some(prost_types::Timestamp {
                seconds: 4_102_444_800,
                nanos: 0,
            }),
            scopes: vec!["widget_authentication".into()],
        }),
    };
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tonic::transport::Server::builder()
        .add_service(pb::auth_service_server::AuthServiceServer::new(Anchor {
            response,
            redis,
        }))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .unwrap();
}

const ANCHOR_KEY: &str = "bench:anchor:token";

struct Anchor {
    response: pb::IssueWidgetTokenResponse,
    redis: Option<redis::aio::ConnectionManager>,
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for Anchor {
    async fn issue_widget_token(
        &self,
        _: Request<pb::IssueWidgetTokenRequest>,
    ) -> Result<Response<pb::IssueWidgetTokenResponse>, Status> {
        if let Some(redis) = &self.redis {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(ANCHOR_KEY)
                .query_async(&mut redis.clone())
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            if value.is_none() {
                return Err(Status::not_found("the anchor's value is gone"));
            }
        }
        Ok(Response::new(self.response.clone()))
    }

    // The anchors serve IssueWidgetToken only.
    async fn create_user(
        &self,
        _: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        Err(Status::unimplemented("anchor"))
    }

    async fn get_user(
        &self,
        _: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        Err(Status::unimplemented("anchor"))
    }

    async fn issue_data_token(
        &self,
        _: Request<pb::IssueDataTokenRequest>,
    ) -> Result<Response<pb::IssueDataTokenResponse>, Status> {
        Err(Status::unimplemented("anchor"))
    }

    async fn create_authorization_url(
        &self,
        _: Request<pb::CreateAuthorizationUrlRequest>,
    ) -> Result<Response<pb::CreateAuthorizationUrlResponse>, Status> {
        Err(Status::unimplemented("anchor"))
    }

    async fn exchange_authorization_code(
        &self,
        _: Request<pb::ExchangeAuthorizationCodeRequest>,
    ) -> Result<Response<pb::ExchangeAuthorizationCodeResponse>, Status> {
        Err(Status::unimplemented("anchor"))
    }

    async fn refresh_token(
        &self,
        _: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::RefreshTokenResponse>, Status> {
        Err(Status::unimplemented("anchor"))
    }

    async fn invalidate_token(
        &self,
        _: Request<pb::InvalidateTokenRequest>,
    ) -> Result<Response<pb::InvalidateTokenResponse>, Status> {
        Err(Status::unimplemented("anchor"))
    }

    async fn delete_user(
        &self,
        _: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        Err(Status::unimplemented("anchor"))
    }

    async fn list_users(
        &self,
        _: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        Err(Status::unimplemented("anchor"))
    }

    async fn list_user_connections(
        &self,
        _: Request<pb::ListUserConnectionsRequest>,
    ) -> Result<Response<pb::ListUserConnectionsResponse>, Status> {
        Err(Status::unimplemented("anchor"))
    }

    async fn delete_user_connection(
        &self,
        _: Request<pb::DeleteUserConnectionRequest>,
    ) -> Result<Response<pb::DeleteUserConnectionResponse>, Status> {
        Err(Status::unimplemented("anchor"))
    }

    async fn revoke_token(
        &self,
        _: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        Err(Status::unimplemented("anchor"))
    }
}

// ---------------------------------------------------------------- servers

/// A server under test, pinned to [`SERVER_CORE`], killed when dropped.
struct Server {
    name: String,
    child: Child,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    /// Sent as `authorization` on every request.
    api_key: Option<&'static str>,
    user_id: String,
    log: PathBuf,
    is_anchor: bool,
}

impl Server {
    fn spawn(
        name: &str,
        command: &mut Command,
        addr: SocketAddr,
        metrics: Option<SocketAddr>,
        log: PathBuf,
    ) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "{name} did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            name: name.to_owned(),
            child,
            addr,
            metrics,
            api_key: None,
            user_id: String::new(),
            log,
            is_anchor: false,
        }
    }

    /// User plus system CPU time so far.
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the parenthesised command name; utime and stime are 14th and 15th.
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND)
    }

    fn log_bytes(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// IssueWidgetTokens ended, by the server's own count: (OK, any other
    /// code).
    fn rpc_counts(&self) -> Option<(u64, u64)> {
        let addr = self.metrics?;
        let mut stream = TcpStream::connect(addr).ok()?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let (mut ok, mut other) = (0, 0);
        for line in text.lines().filter(|line| {
            // Named bankauth_rpc_requests_total{method,code} before 0.2,
            // which `--bin` may be running: both names are counted.
            (line.starts_with("grpc_server_handled_total")
                || line.starts_with("bankauth_rpc_requests_total"))
                && line.contains("method=\"IssueWidgetToken\"")
        }) {
            let count = line.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            if line.contains("code=\"OK\"") {
                ok += count;
            } else {
                other += count;
            }
        }
        Some((ok, other))
    }

    /// One request through a tonic client: the token, or why not.
    async fn check(&self) -> Result<usize, Status> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut request = Request::new(pb::IssueWidgetTokenRequest {
            provider: String::new(),
            user_id: self.user_id.clone(),
            force_refresh: false,
        });
        if let Some(key) = self.api_key {
            let bearer = format!("Bearer {key}").parse().unwrap();
            request.metadata_mut().insert("authorization", bearer);
        }
        let token = AuthServiceClient::new(channel)
            .issue_widget_token(request)
            .await?
            .into_inner()
            .token
            .ok_or_else(|| Status::internal("no token"))?;
        Ok(token.access_token.len())
    }

    /// The gRPC request h2load sends, framed (uncompressed, 4-byte length).
    fn body_file(&self, dir: &Path) -> PathBuf {
        let message = pb::IssueWidgetTokenRequest {
            provider: String::new(),
            user_id: self.user_id.clone(),
            force_refresh: false,
        }
        .encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        let path = dir.join(format!("{}.body", self.name.replace(' ', "-")));
        std::fs::write(&path, framed).unwrap();
        path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pinned(core: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("taskset");
    command.arg("-c").arg(core).arg(program);
    command
}

fn free_addr() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A throwaway `redis-server` on [`LOAD_CORE`].
struct Redis {
    child: Child,
    addr: SocketAddr,
}

impl Redis {
    fn start() -> Self {
        let addr = free_addr();
        let child = pinned(LOAD_CORE, "redis-server")
            .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (`apt-get install redis-server`)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bankauth serve`'s configuration, as an operator would write it: the
/// sandbox as a Moneyhub provider, one caller with an API key, metrics on,
/// logs at the default level in `log_format`; Redis (every hit from Redis)
/// when given.
fn serve_config(
    dir: &Path,
    issuer: &str,
    listen: SocketAddr,
    metrics: SocketAddr,
    redis: Option<&str>,
    log_format: &str,
) -> PathBuf {
    use sha2::Digest;
    let key_hash = hex::encode(sha2::Sha256::digest(API_KEY));
    let cache = match redis {
        Some(url) => format!(
            "redis_url = \"{url}\"\nmemory_ttl_secs = 0\n\
             encryption_keys = [{{ id = \"bench\", key_env = \"BENCH_CACHE_KEY\" }}]\n"
        ),
        None => String::new(),
    };
    let toml = format!(
        r#"[server]
listen_addr = "{listen}"
allow_plaintext = true

[telemetry]
metrics_addr = "{metrics}"
log_format = "{log_format}"

[cache]
{cache}
[access.callers.bench]
api_key_sha256 = ["{key_hash}"]
rpcs = ["*"]
providers = ["*"]
scopes = ["*"]

[providers.sandbox]
kind = "moneyhub"
issuer = "{issuer}"
client_id = "{DEMO_CLIENT_ID}"
private_key_file = "{key}"
data_scopes = ["accounts:read"]
# The sandbox publishes no rate limit.
rate_limit_per_minute = 0
"#,
        key = dir.join("client-key.pem").display(),
    );
    let name = if redis.is_some() { "redis" } else { "memory" };
    let path = dir.join(format!("bankauth-{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

// ---------------------------------------------------------------- load

/// What one h2load run measured.
#[derive(Clone, Copy, Default)]
struct Point {
    throughput: f64,
    cpu_us: f64,
    p50_ms: f64,
    p99_ms: f64,
    log_bytes: f64,
}

/// Runs h2load against `server` for `seconds` with `clients` connections of
/// `streams` streams each, and checks every request was a token.
fn drive(server: &Server, dir: &Path, clients: u32, streams: u32, seconds: u64) -> Point {
    let body = server.body_file(dir);
    let latency_log = dir.join("latency.tsv");
    let _ = std::fs::remove_file(&latency_log);
    // The warm-up is a run of its own, unmeasured: h2load's own warm-up
    // (`--warm-up-time`) leaves its requests out of the counts but not the
    // server's CPU out of /proc, which overstated the CPU per request of
    // every server counted by h2load (the anchors) by up to a fifth.
    let h2load_run = |seconds: u64, log: Option<&Path>| {
        let mut h2load = pinned(LOAD_CORE, "h2load");
        h2load
            .args([
                "-c",
                &clients.to_string(),
                "-m",
                &streams.to_string(),
                "-t",
                "1",
            ])
            .args(["-D", &seconds.to_string()])
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .arg("-d")
            .arg(&body);
        if let Some(log) = log {
            h2load.arg(format!("--log-file={}", log.display()));
        }
        if let Some(key) = server.api_key {
            h2load.args(["-H", &format!("authorization: Bearer {key}")]);
        }
        h2load.arg(format!("http://{}{PATH}", server.addr));
        h2load
    };
    let warm_up = h2load_run(1, None)
        .output()
        .expect("h2load (`apt-get install nghttp2-client`)");
    assert!(warm_up.status.success(), "the h2load warm-up failed");
    let mut h2load = h2load_run(seconds, Some(&latency_log));
    let counts_before = server.rpc_counts();
    let log_before = server.log_bytes();
    let cpu_before = server.cpu_time();
    let output = h2load
        .output()
        .expect("h2load (`apt-get install nghttp2-client`)");
    let cpu = server.cpu_time() - cpu_before;
    let log = server.log_bytes() - log_before;
    let counts = server
        .rpc_counts()
        .zip(counts_before)
        .map(|(after, before)| (after.0 - before.0, after.1 - before.1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "h2load failed: {stdout}");
    // "finished in 8.00s, 25311.12 req/s, 31.2MB/s"
    let throughput: f64 = line(&stdout, "finished in ")
        .split(", ")
        .nth(1)
        .and_then(|rate| rate.strip_suffix(" req/s"))
        .and_then(|rate| rate.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {stdout}"));
    // "requests: N total, N started, N done, N succeeded, 0 failed, …"
    let count = |what: &str| -> u64 {
        line(&stdout, "requests: ")
            .split(", ")
            .find_map(|piece| piece.strip_suffix(what))
            .and_then(|n| n.trim_start_matches("requests: ").parse().ok())
            .unwrap_or_else(|| panic!("no {what:?} count in {stdout}"))
    };
    let done = count(" done");
    let succeeded = count(" succeeded");
    assert_eq!(
        done, succeeded,
        "{}: non-2xx answers\n{stdout}",
        server.name
    );
    // The calls in flight when h2load stops and hangs up end in an error.
    if let Some((ok, other)) = counts {
        assert!(
            ok >= done && other <= u64::from(clients * streams),
            "{}: {ok} OK and {other} errors for {done} requests by the server's count",
            server.name
        );
    }
    let mut latencies: Vec<u64> = std::fs::read_to_string(&latency_log)
        .unwrap()
        .lines()
        .filter_map(|line| line.split('\t').nth(2)?.parse().ok())
        .collect();
    latencies.sort_unstable();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize] as f64 / 1e3;
    // The same count for every server: h2load's, over the measured run.
    let requests = done.max(1) as f64;
    Point {
        throughput,
        cpu_us: cpu.as_secs_f64() * 1e6 / requests,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        log_bytes: log as f64 / requests,
    }
}

/// The line of h2load's output starting with `prefix`.
fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .map(str::trim)
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {text}"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(options: Options) {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let upstream = DemoUpstream::start(|client| SandboxOptions::new(vec![client]))
        .await
        .expect("the sandbox starts");
    std::fs::write(
        dir.join("client-key.pem"),
        upstream.client_key_pem.expose_secret(),
    )
    .unwrap();
    let user = upstream.sandbox.seed_users(1).remove(0);
    let redis = Redis::start();
    let issuer = upstream.sandbox.issuer().to_string();
    let cache_key = {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).unwrap();
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key)
    };

    let mut builds = vec![("".to_owned(), PathBuf::from(env!("CARGO_BIN_EXE_bankauth")))];
    builds.extend(
        options
            .others
            .iter()
            .map(|(name, path)| (format!(" ({name})"), path.clone())),
    );
    let mut servers = Vec::new();
    for (suffix, bin) in &builds {
        // The demo: its own sandbox; a user made through CreateUser.
        let addr = free_addr();
        let name = format!("demo{suffix}");
        let mut demo = Server::spawn(
            &name,
            pinned(SERVER_CORE, bin).args(["demo", "--listen", &addr.to_string()]),
            addr,
            None,
            dir.join(format!("{name}.log")),
        );
        demo.user_id = create_demo_user(addr).await;
        servers.push(demo);
        for redis_url in [None, Some(redis.url())] {
            let (addr, metrics) = (free_addr(), free_addr());
            let config = serve_config(
                dir,
                &issuer,
                addr,
                metrics,
                redis_url.as_deref(),
                &options.log_format,
            );
            let tier = if redis_url.is_some() {
                "redis"
            } else {
                "memory"
            };
            let name = format!("serve {tier}{suffix}");
            let mut serve = Server::spawn(
                &name,
                pinned(SERVER_CORE, bin)
                    .args(["serve", "--config"])
                    .arg(&config)
                    .env("BENCH_CACHE_KEY", &cache_key)
                    .env_remove("RUST_LOG"),
                addr,
                Some(metrics),
                dir.join(format!("{}.log", name.replace(' ', "-"))),
            );
            serve.api_key = Some(API_KEY);
            serve.user_id = user.clone();
            servers.push(serve);
        }
    }
    let token_len = servers[1]
        .check()
        .await
        .expect("a token from bankauth serve");
    for (role, name) in [("empty", "empty"), ("redis-get", "redis GET")] {
        let addr = free_addr();
        let mut anchor = Server::spawn(
            name,
            pinned(SERVER_CORE, std::env::current_exe().unwrap())
                .env(ROLE, role)
                .env("ANCHOR_ADDR", addr.to_string())
                .env("ANCHOR_TOKEN_LEN", token_len.to_string())
                .env("ANCHOR_REDIS_URL", redis.url()),
            addr,
            None,
            dir.join(format!("{role}.log")),
        );
        anchor.is_anchor = true;
        servers.insert(0, anchor);
    }
    servers.swap(0, 1);
    for server in &servers {
        let len = server
            .check()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", server.name));
        assert!(
            len >= token_len.min(100),
            "{}: a {len}-byte token",
            server.name
        );
    }

    eprintln!(
        "h2load harness: {} rounds of {} s per point, token {} bytes, serve logs {}, load average before: {}",
        options.rounds,
        options.seconds,
        token_len,
        options.log_format,
        load_average()
    );
    let shapes: Vec<(&str, u32, u32)> = [("4x16", 4, 16), ("1x16", 1, 16)]
        .into_iter()
        .filter(|(name, ..)| options.only.as_deref().is_none_or(|only| only == *name))
        .collect();
    // points[shape][server][round]
    let mut points = vec![vec![Vec::new(); servers.len()]; shapes.len()];
    for round in 0..options.rounds {
        for (s, (shape, clients, streams)) in shapes.iter().enumerate() {
            for (i, server) in servers.iter().enumerate() {
                let point = drive(server, dir, *clients, *streams, options.seconds);
                eprintln!(
                    "round {round} {shape} {:<22} {:>8.0} req/s {:>6.1} µs/req p50 {:.3} ms p99 {:.3} ms log {:>4.0} B/req",
                    server.name,
                    point.throughput,
                    point.cpu_us,
                    point.p50_ms,
                    point.p99_ms,
                    point.log_bytes
                );
                points[s][i].push(point);
            }
        }
        // The anchors and the demo have no metrics: check they still answer tokens.
        for server in servers.iter().filter(|s| s.metrics.is_none()) {
            server
                .check()
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", server.name));
        }
    }
    eprintln!("load average after: {}", load_average());
    for server in &servers {
        assert!(!server.is_anchor || server.log_bytes() == 0);
    }
    report(&servers, &shapes, &points);
}

async fn create_demo_user(addr: SocketAddr) -> String {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AuthServiceClient::new(channel)
        .create_user(pb::CreateUserRequest {
            provider: String::new(),
            external_id: "h2load".into(),
            name: Some(pb::PersonName {
                given_name: "Bench".into(),
                family_name: "Mark".into(),
            }),
            emails: vec![pb::Email {
                value: "bench@example.com".into(),
                primary: true,
            }],
            subtenant: None,
        })
        .await
        .expect("CreateUser on the demo")
        .into_inner()
        .user
        .unwrap()
        .id
}

/// Markdown tables of the medians, as BENCHMARKS.md shows them.
fn report(servers: &[Server], shapes: &[(&str, u32, u32)], points: &[Vec<Vec<Point>>]) {
    let med =
        |s: usize, i: usize, f: fn(&Point) -> f64| median(points[s][i].iter().map(f).collect());
    for (s, (shape, clients, streams)) in shapes.iter().enumerate() {
        println!(
            "\n{shape}: {clients} connection(s) × {streams} streams, medians of {} rounds\n",
            points[s][0].len()
        );
        println!(
            "| server | req/s | vs empty | vs redis GET | server CPU µs/req | CPU vs empty | p50 ms | p99 ms | log B/req |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        let empty = med(s, 0, |p| p.throughput);
        let redis_get = med(s, 1, |p| p.throughput);
        let empty_cpu = med(s, 0, |p| p.cpu_us);
        for (i, server) in servers.iter().enumerate() {
            let throughput = med(s, i, |p| p.throughput);
            let cpu = med(s, i, |p| p.cpu_us);
            println!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.2} | {:.3} | {:.3} | {:.0} |",
                server.name,
                throughput,
                throughput / empty,
                throughput / redis_get,
                cpu,
                cpu / empty_cpu,
                med(s, i, |p| p.p50_ms),
                med(s, i, |p| p.p99_ms),
                med(s, i, |p| p.log_bytes),
            );
        }
    }
}
