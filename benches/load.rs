//! Load generator: drives bankauth over real gRPC on loopback and reports
//! throughput, latency percentiles and server CPU time per request, as
//! ratios to an empty tonic handler measured in the same run.
//!
//! ```sh
//! cargo bench --bench load                      # 5 s per point, 100,000 tokens
//! cargo bench --bench load -- --seconds 2 --tokens 10000
//! cargo bench --bench load -- --soak 180           # sustained mixed load, memory over time
//! ```
//!
//! The server under test runs in a child process (this binary, re-executed
//! with `BANKAUTH_BENCH_ROLE` set), so its CPU time and resident memory are
//! its own; the load generator, the sandbox provider and `redis-server` are
//! separate processes or live in this one.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bankauth::config::{
    AccessConfig, CallerConfig, Config, EncryptionKeyConfig, ProviderConfig, ProviderKind,
};
use bankauth::demo::{DEMO_CLIENT_ID, DEMO_DATA_SCOPES, DEMO_PROVIDER, DemoUpstream};
use bankauth::proto::v1 as pb;
use bankauth::sandbox::SandboxOptions;
use bankauth::server::Application;
use pb::auth_service_client::AuthServiceClient;
use secrecy::{ExposeSecret, SecretString};
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

const ROLE: &str = "BANKAUTH_BENCH_ROLE";
const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Linux reports process CPU time in these ticks per second (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match std::env::var(ROLE).as_deref() {
        Ok("baseline") => runtime.block_on(serve_baseline()),
        Ok("bankauth") => runtime.block_on(serve_bankauth()),
        _ => {
            let options = Options::from_args();
            match options.soak_seconds {
                Some(seconds) => runtime.block_on(soak(seconds)),
                None => runtime.block_on(run(options)),
            }
        }
    }
}

struct Options {
    seconds: u64,
    tokens: usize,
    /// Run the soak instead of the comparison, for this many seconds.
    soak_seconds: Option<u64>,
}

impl Options {
    /// `cargo bench` appends `--bench`; anything unknown is ignored.
    fn from_args() -> Self {
        let mut options = Self {
            seconds: 5,
            tokens: 100_000,
            soak_seconds: None,
        };
        let args: Vec<String> = std::env::args().collect();
        for pair in args.windows(2) {
            match pair[0].as_str() {
                "--seconds" => options.seconds = pair[1].parse().expect("--seconds N"),
                "--tokens" => options.tokens = pair[1].parse().expect("--tokens N"),
                "--soak" => options.soak_seconds = Some(pair[1].parse().expect("--soak SECONDS")),
                _ => {}
            }
        }
        options
    }
}

// ---------------------------------------------------------------- servers

/// The baseline: the same tonic server answering IssueWidgetToken with a
/// prepared response of a real token's size, doing nothing else.
async fn serve_baseline() {
    let token_len = std::env::var("BENCH_TOKEN_LEN")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(800);
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("ready {}", listener.local_addr().unwrap());
    tonic::transport::Server::builder()
        .add_service(pb::auth_service_server::AuthServiceServer::new(
            EmptyHandler { response },
        ))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .unwrap();
}

struct EmptyHandler {
    response: pb::IssueWidgetTokenResponse,
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for EmptyHandler {
    async fn issue_widget_token(
        &self,
        _: Request<pb::IssueWidgetTokenRequest>,
    ) -> Result<Response<pb::IssueWidgetTokenResponse>, Status> {
        Ok(Response::new(self.response.clone()))
    }

    async fn create_user(
        &self,
        _: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn get_user(
        &self,
        _: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn issue_data_token(
        &self,
        _: Request<pb::IssueDataTokenRequest>,
    ) -> Result<Response<pb::IssueDataTokenResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn exchange_authorization_code(
        &self,
        _: Request<pb::ExchangeAuthorizationCodeRequest>,
    ) -> Result<Response<pb::ExchangeAuthorizationCodeResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn refresh_token(
        &self,
        _: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::RefreshTokenResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn invalidate_token(
        &self,
        _: Request<pb::InvalidateTokenRequest>,
    ) -> Result<Response<pb::InvalidateTokenResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn create_authorization_url(
        &self,
        _: Request<pb::CreateAuthorizationUrlRequest>,
    ) -> Result<Response<pb::CreateAuthorizationUrlResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn delete_user(
        &self,
        _: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn list_users(
        &self,
        _: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn list_user_connections(
        &self,
        _: Request<pb::ListUserConnectionsRequest>,
    ) -> Result<Response<pb::ListUserConnectionsResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn delete_user_connection(
        &self,
        _: Request<pb::DeleteUserConnectionRequest>,
    ) -> Result<Response<pb::DeleteUserConnectionResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn revoke_token(
        &self,
        _: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

/// bankauth itself, configured from the environment the parent sets: the
/// sandbox as a Moneyhub provider (RS256 client assertions), and Redis when
/// `BENCH_REDIS_URL` is set (then every hit reads Redis: no in-process copy).
async fn serve_bankauth() {
    let env = |name: &str| std::env::var(name).ok();
    let mut provider = ProviderConfig::new(ProviderKind::Moneyhub, DEMO_CLIENT_ID);
    provider.issuer = Some(env("BENCH_ISSUER").unwrap().parse().unwrap());
    provider.private_key_pem = Some(SecretString::from(env("BENCH_CLIENT_KEY").unwrap()));
    provider.data_scopes = DEMO_DATA_SCOPES.iter().map(|s| s.to_string()).collect();
    // The sandbox publishes no rate limit; Moneyhub's 1,000 a minute would
    // make the miss figures measure the budget, not bankauth.
    provider.rate_limit_per_minute = Some(0);
    let mut config = Config {
        server: Default::default(),
        cache: Default::default(),
        telemetry: Default::default(),
        access: AccessConfig {
            allow_anonymous: false,
            callers: [("bench".to_owned(), bench_caller())].into(),
        },
        providers: [(DEMO_PROVIDER.to_owned(), provider)].into(),
    };
    config.server.listen_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    // Loopback only: TLS would measure rustls, not bankauth.
    config.server.allow_plaintext = true;
    config.cache.max_entries = 200_000;
    if let Some(url) = env("BENCH_REDIS_URL") {
        config.cache.redis_url = Some(SecretString::from(url));
        config.cache.memory_ttl_secs =
            env("BENCH_MEMORY_TTL_SECS").map_or(0, |s| s.parse().unwrap());
        config.cache.encryption_keys = vec![EncryptionKeyConfig {
            id: "bench".into(),
            key_file: None,
            key_env: Some("BENCH_CACHE_KEY".into()),
            key: None,
        }];
    }
    let app = Application::build(config).await.expect("bankauth starts");
    println!("ready {}", app.local_addr());
    app.run_until_stopped(std::future::pending()).await.unwrap();
}

/// The load generator's identity: every request carries its API key, as
/// production callers do.
const API_KEY: &str = "bench-api-key";

fn bench_caller() -> CallerConfig {
    use sha2::Digest;
    let everything = vec!["*".to_owned()];
    CallerConfig {
        api_key_sha256: vec![hex::encode(sha2::Sha256::digest(API_KEY))],
        client_cert_names: Vec::new(),
        rpcs: everything.clone(),
        providers: everything.clone(),
        scopes: everything,
        requests_per_second: None,
        burst: None,
    }
}

/// A server under test in its own process, killed when dropped.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    fn start(role: &str, env: &[(&str, String)]) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, role)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .spawn()
            .expect("the bench binary re-executes itself");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("{role} did not start: {line:?}"))
            .trim()
            .parse()
            .unwrap();
        Self { child, addr }
    }

    /// User plus system CPU time so far.
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the parenthesised command name; utime and stime are 14th and 15th.
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND)
    }

    fn resident_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }

    async fn channels(&self, count: usize) -> Vec<AuthServiceClient<Channel>> {
        let mut clients = Vec::new();
        for _ in 0..count {
            let channel = Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
                .unwrap();
            clients.push(AuthServiceClient::new(channel));
        }
        clients
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- load

/// What one scenario at one concurrency measured.
struct Point {
    requests: usize,
    errors: usize,
    throughput: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    cpu_per_request: Duration,
}

/// Which user each request asks for.
#[derive(Clone)]
enum Users {
    /// Always the same one: hits once warm.
    Same(String),
    /// A new one per request, until they run out: misses.
    Each(Arc<Vec<String>>, Arc<AtomicUsize>),
}

impl Users {
    fn next(&self) -> Option<String> {
        match self {
            Self::Same(user) => Some(user.clone()),
            Self::Each(users, next) => users.get(next.fetch_add(1, Ordering::Relaxed)).cloned(),
        }
    }
}

/// `concurrency` callers, each sending IssueWidgetToken back to back for
/// `duration` (or until the users run out), over one HTTP/2 connection per
/// 16 callers.
async fn drive(
    server: &ServerProcess,
    users: &Users,
    concurrency: usize,
    duration: Duration,
) -> Point {
    let clients = server.channels(concurrency.div_ceil(16)).await;
    let cpu_before = server.cpu_time();
    let started = Instant::now();
    let callers = (0..concurrency).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let users = users.clone();
        tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0);
            while started.elapsed() < duration {
                let Some(user_id) = users.next() else { break };
                let sent = Instant::now();
                let answer = client.issue_widget_token(widget_request(user_id)).await;
                latencies.push(sent.elapsed());
                if let Err(status) = answer {
                    if errors == 0 {
                        eprintln!("error: {:?} {}", status.code(), status.message());
                    }
                    errors += 1;
                }
            }
            (latencies, errors)
        })
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    for caller in futures::future::join_all(callers).await {
        let (caller_latencies, caller_errors) = caller.unwrap();
        latencies.extend(caller_latencies);
        errors += caller_errors;
    }
    let elapsed = started.elapsed();
    let cpu = server.cpu_time() - cpu_before;
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let last = latencies.len().saturating_sub(1);
        latencies
            .get((last as f64 * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    Point {
        requests: latencies.len(),
        errors,
        throughput: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(0.50),
        p99: percentile(0.99),
        p999: percentile(0.999),
        cpu_per_request: cpu / latencies.len().max(1) as u32,
    }
}

async fn measure(
    name: &'static str,
    server: &ServerProcess,
    users: &Users,
    seconds: u64,
    results: &mut Vec<(&'static str, usize, Point)>,
) {
    for concurrency in CONCURRENCY {
        let point = drive(server, users, concurrency, Duration::from_secs(seconds)).await;
        eprintln!(
            "{name:<16} c={concurrency:<3} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  cpu {:>6.1} µs/req  errors {}",
            point.throughput,
            ms(point.p50),
            ms(point.p99),
            point.cpu_per_request.as_secs_f64() * 1e6,
            point.errors
        );
        results.push((name, concurrency, point));
    }
}

async fn run(options: Options) {
    let upstream = DemoUpstream::start(|client| SandboxOptions::new(vec![client]))
        .await
        .expect("the sandbox starts");
    let redis = RedisProcess::start();
    let users = upstream.sandbox.seed_users(options.tokens + 1);
    let hot_user = users[0].clone();
    let bankauth_env = vec![
        ("BENCH_ISSUER", upstream.sandbox.issuer().to_string()),
        (
            "BENCH_CLIENT_KEY",
            upstream.client_key_pem.expose_secret().to_owned(),
        ),
    ];
    let hits = Users::Same(hot_user.clone());
    let warm = Duration::from_secs(1);
    let mut results = Vec::new();

    // In-process hits; the first call fills the cache, the warm-up runs past it.
    let memory = ServerProcess::start("bankauth", &bankauth_env);
    let token_len = memory.channels(1).await[0]
        .issue_widget_token(widget_request(hot_user.clone()))
        .await
        .expect("a widget token")
        .into_inner()
        .token
        .unwrap()
        .access_token
        .len();
    drive(&memory, &hits, 16, warm).await;
    measure("memory hit", &memory, &hits, options.seconds, &mut results).await;
    drop(memory);

    let baseline = ServerProcess::start("baseline", &[("BENCH_TOKEN_LEN", token_len.to_string())]);
    drive(&baseline, &hits, 16, warm).await;
    measure(
        "empty handler",
        &baseline,
        &hits,
        options.seconds,
        &mut results,
    )
    .await;
    drop(baseline);

    let mut redis_env = bankauth_env.clone();
    redis_env.push(("BENCH_REDIS_URL", redis.url()));
    redis_env.push(("BENCH_CACHE_KEY", random_cache_key()));
    let shared = ServerProcess::start("bankauth", &redis_env);
    drive(&shared, &hits, 16, warm).await;
    measure("redis hit", &shared, &hits, options.seconds, &mut results).await;
    drop(shared);

    // Misses: every request a user not asked for before. What remains of the
    // users afterwards fills the cache to `tokens` entries for the memory figure.
    let fresh = Users::Each(Arc::new(users[1..].to_vec()), Arc::new(AtomicUsize::new(0)));
    let issued_before = upstream.sandbox.token_requests();
    let misses = ServerProcess::start("bankauth", &bankauth_env);
    let idle_mib = misses.resident_mib();
    measure("miss", &misses, &fresh, options.seconds, &mut results).await;
    let fill = drive(&misses, &fresh, 64, Duration::from_secs(3_600)).await;
    assert_eq!(fill.errors, 0, "errors while filling the cache");
    let full_mib = misses.resident_mib();
    let cached = (upstream.sandbox.token_requests() - issued_before) as usize;

    report(&results, token_len, cached, idle_mib, full_mib);
}

fn report(
    results: &[(&'static str, usize, Point)],
    token_len: usize,
    tokens: usize,
    idle_mib: f64,
    full_mib: f64,
) {
    let baseline = |concurrency: usize| {
        results
            .iter()
            .find(|(name, c, _)| *name == "empty handler" && *c == concurrency)
            .map(|(_, _, point)| point)
            .unwrap()
    };
    println!(
        "\n| scenario | concurrency | requests | errors | req/s | vs empty handler | p50 ms | p99 ms | p99.9 ms | server CPU µs/req | CPU vs empty handler |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, concurrency, point) in results {
        let base = baseline(*concurrency);
        let cpu = point.cpu_per_request.as_secs_f64() * 1e6;
        let base_cpu = base.cpu_per_request.as_secs_f64() * 1e6;
        println!(
            "| {name} | {concurrency} | {} | {} | {:.0} | {:.2} | {:.3} | {:.3} | {:.3} | {cpu:.1} | {:.2} |",
            point.requests,
            point.errors,
            point.throughput,
            point.throughput / base.throughput,
            ms(point.p50),
            ms(point.p99),
            ms(point.p999),
            cpu / base_cpu,
        );
    }
    if let Some((_, _, miss)) = results
        .iter()
        .find(|(name, c, _)| *name == "miss" && *c == 64)
    {
        println!(
            "\nmisses: {:.0} per second of server CPU (a core), at concurrency 64",
            1.0 / miss.cpu_per_request.as_secs_f64()
        );
    }
    println!(
        "resident memory: {idle_mib:.1} MiB idle, {full_mib:.1} MiB with {tokens} cached tokens of {token_len} bytes"
    );
}

// ---------------------------------------------------------------- soak

/// Users the soak spreads its requests over.
const SOAK_USERS: usize = 2_000;
/// Concurrent callers in the soak.
const SOAK_CONCURRENCY: usize = 64;
/// Reports (throughput, errors, memory) over the soak.
const SOAK_INTERVALS: u32 = 6;

/// Sustained load, bounded in time, loopback only: 64 callers mixing
/// widget and data tokens over 2,000 users, against bankauth with Redis and
/// tokens living 60 s, so entries expire, are refreshed ahead and missed
/// throughout (every tier and the provider stay busy). Reports throughput,
/// errors and the server's resident memory per interval; memory is compared
/// between the end of the warm-up and the end of the run.
async fn soak(seconds: u64) {
    let upstream = DemoUpstream::start(|client| {
        let mut options = SandboxOptions::new(vec![client]);
        options.token_lifetime = Duration::from_secs(60);
        options
    })
    .await
    .expect("the sandbox starts");
    let redis = RedisProcess::start();
    let users = Arc::new(upstream.sandbox.seed_users(SOAK_USERS));
    let env = vec![
        ("BENCH_ISSUER", upstream.sandbox.issuer().to_string()),
        (
            "BENCH_CLIENT_KEY",
            upstream.client_key_pem.expose_secret().to_owned(),
        ),
        ("BENCH_REDIS_URL", redis.url()),
        ("BENCH_CACHE_KEY", random_cache_key()),
        ("BENCH_MEMORY_TTL_SECS", "10".to_owned()),
    ];
    let server = ServerProcess::start("bankauth", &env);
    let clients = server.channels(SOAK_CONCURRENCY.div_ceil(16)).await;
    let warm_up = Duration::from_secs((seconds / 10).max(5));
    soak_interval(&clients, &users, warm_up, 0).await;
    let start_mib = server.resident_mib();
    eprintln!("warmed up for {warm_up:?}: {start_mib:.1} MiB resident");
    println!("| interval | requests | errors | req/s | upstream token requests | resident MiB |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    let interval = Duration::from_secs(seconds) / SOAK_INTERVALS;
    let (mut requests, mut errors) = (0, 0);
    for number in 1..=SOAK_INTERVALS {
        let upstream_before = upstream.sandbox.token_requests();
        let started = Instant::now();
        let (done, failed) = soak_interval(&clients, &users, interval, number as usize).await;
        println!(
            "| {number} | {done} | {failed} | {:.0} | {} | {:.1} |",
            done as f64 / started.elapsed().as_secs_f64(),
            upstream.sandbox.token_requests() - upstream_before,
            server.resident_mib()
        );
        requests += done;
        errors += failed;
    }
    let end_mib = server.resident_mib();
    println!(
        "\n{requests} requests in {seconds} s at concurrency {SOAK_CONCURRENCY}, {errors} errors; \
         resident memory {start_mib:.1} MiB after warm-up, {end_mib:.1} MiB at the end ({:+.1} %)",
        (end_mib / start_mib - 1.0) * 100.0
    );
}

/// One stretch of the soak; returns requests made and errors seen.
async fn soak_interval(
    clients: &[AuthServiceClient<Channel>],
    users: &Arc<Vec<String>>,
    duration: Duration,
    seed: usize,
) -> (usize, usize) {
    let started = Instant::now();
    let callers = (0..SOAK_CONCURRENCY).map(|caller| {
        let mut client = clients[caller % clients.len()].clone();
        let users = users.clone();
        tokio::spawn(async move {
            let (mut done, mut failed) = (0, 0);
            // A cheap, deterministic walk over users and token kinds.
            let mut step = caller * 7_919 + seed * 104_729;
            while started.elapsed() < duration {
                step = step.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let user = users[(step >> 33) % users.len()].clone();
                let answer = match (step >> 20) % 3 {
                    0 => client
                        .issue_widget_token(widget_request(user))
                        .await
                        .map(drop),
                    kind => client
                        .issue_data_token(data_request(user, &DEMO_DATA_SCOPES[..kind]))
                        .await
                        .map(drop),
                };
                done += 1;
                if let Err(status) = answer {
                    if failed == 0 {
                        eprintln!("error: {:?} {}", status.code(), status.message());
                    }
                    failed += 1;
                }
            }
            (done, failed)
        })
    });
    futures::future::join_all(callers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .fold((0, 0), |(done, failed), (d, f)| (done + d, failed + f))
}

fn data_request(user_id: String, scopes: &[&str]) -> Request<pb::IssueDataTokenRequest> {
    with_api_key(Request::new(pb::IssueDataTokenRequest {
        provider: String::new(),
        user_id,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        force_refresh: false,
    }))
}

fn with_api_key<T>(mut request: Request<T>) -> Request<T> {
    let bearer = format!("Bearer {API_KEY}").parse().expect("ASCII metadata");
    request.metadata_mut().insert("authorization", bearer);
    request
}

fn widget_request(user_id: String) -> Request<pb::IssueWidgetTokenRequest> {
    with_api_key(Request::new(pb::IssueWidgetTokenRequest {
        provider: String::new(),
        user_id,
        force_refresh: false,
    }))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn random_cache_key() -> String {
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key)
}

/// A throwaway `redis-server` on a free loopback port.
struct RedisProcess {
    child: Child,
    port: u16,
}

impl RedisProcess {
    fn start() -> Self {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (`apt-get install redis-server`)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
