//! The client examples a team copies (examples/python, examples/node,
//! examples/go), run exactly as their READMEs say against the real binary
//! (`bankauth serve`, callers need an API key) and the in-test sandbox; what
//! they print is checked against what bankauth answers a Rust client.
//!
//! A missing toolchain fails the test with the command that installs it
//! (`scripts/test` installs them all).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bankauth::demo::DemoUpstream;
use bankauth::proto::v1::auth_service_client::AuthServiceClient;
use bankauth::proto::v1::{self as pb};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::helpers::{serve_binary, sha256_hex, start_upstream, write_client_key};

const API_KEY: &str = "examples-test-api-key-6bc1bee22e409f96";

/// `bankauth serve` with one caller (by API key) and the sandbox as provider.
struct Bankauth {
    addr: String,
    upstream: Arc<DemoUpstream>,
    client: AuthServiceClient<Channel>,
    logs: Arc<Mutex<Vec<String>>>,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Bankauth {
    async fn start() -> Self {
        let upstream = start_upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let key = write_client_key(dir.path(), &upstream);
        let config = dir.path().join("bankauth.toml");
        std::fs::write(
            &config,
            format!(
                r#"
                [server]
                listen_addr = "127.0.0.1:0"
                allow_plaintext = true

                [access.callers.examples]
                api_key_sha256 = ["{}"]
                rpcs = ["*"]
                providers = ["*"]
                scopes = ["*"]

                [providers.sandbox]
                kind = "moneyhub"
                issuer = "{}"
                client_id = "{}"
                private_key_file = "{}"
                data_scopes = ["accounts:read", "transactions:read:all"]
                redirect_uris = ["{}"]
                "#,
                sha256_hex(API_KEY),
                upstream.sandbox.issuer(),
                bankauth::demo::DEMO_CLIENT_ID,
                key.display(),
                bankauth::sandbox::DEFAULT_REDIRECT_URI,
            ),
        )
        .unwrap();
        let (child, mut lines) = serve_binary(&config, &[]);
        // Its logs are drained as they come (so it never blocks), kept for failure messages.
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (listening, addr) = tokio::sync::oneshot::channel();
        let mut listening = Some(listening);
        let sink = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("bankauth listening") {
                    if let Some(addr) = line
                        .split_whitespace()
                        .find_map(|field| field.strip_prefix("addr="))
                        .zip(listening.take())
                    {
                        let _ = addr.1.send(addr.0.trim_matches('"').to_owned());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), addr)
            .await
            .unwrap_or_else(|_| panic!("bankauth did not start: {:?}", logs.lock().unwrap()))
            .unwrap_or_else(|_| panic!("bankauth exited: {:?}", logs.lock().unwrap()));
        let client = AuthServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Self {
            addr,
            upstream,
            client,
            logs,
            _child: child,
            _dir: dir,
        }
    }
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let bearer = format!("Bearer {API_KEY}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    request
}

fn example_dir(language: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(language)
}

/// Runs `program args` in the example's directory, with the API key in the
/// environment; returns its stdout, failing the test (with `install` as the
/// hint) if it cannot run or exits non-zero.
async fn run_example(
    bankauth: &Bankauth,
    language: &str,
    program: &str,
    args: &[&str],
    install: &str,
) -> String {
    let mut command = Command::new(program);
    command
        .args(args)
        .arg(&bankauth.addr)
        .current_dir(example_dir(language))
        .env("BANKAUTH_API_KEY", API_KEY)
        .env("BUF", buf())
        .kill_on_drop(true);
    // A bound against a hang, not a timing assertion (Go compiles gRPC on its first run).
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .unwrap_or_else(|_| panic!("the {language} example did not finish within 600 s"))
        .unwrap_or_else(|e| {
            panic!("cannot run `{program}` for the {language} example ({e}). {install}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the {language} example failed ({}).\nstdout:\n{stdout}\nstderr:\n{}\nbankauth logs:\n{}\n{install}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        bankauth.logs.lock().unwrap().join("\n")
    );
    stdout
}

/// buf: `$BUF`, else where `scripts/test` installs it, else the one on PATH,
/// so a plain `cargo test` after `scripts/test` finds it.
fn buf() -> String {
    let installed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/.scripts-test/buf/node_modules/.bin/buf");
    std::env::var("BUF").unwrap_or_else(|_| {
        if installed.is_file() {
            installed.display().to_string()
        } else {
            "buf".to_owned()
        }
    })
}

/// Fails the test with `install` unless `program args` runs and succeeds.
async fn require(program: &str, args: &[&str], install: &str) {
    let ok = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success());
    assert!(ok, "`{program} {}` failed: {install}", args.join(" "));
}

/// `key=value` fields of the line starting with `step ` (the first such line).
fn fields<'a>(stdout: &'a str, step: &str) -> BTreeMap<&'a str, &'a str> {
    let line = stdout
        .lines()
        .find(|line| line.starts_with(&format!("{step} ")))
        .unwrap_or_else(|| panic!("no {step:?} line in:\n{stdout}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|field| field.split_once('='))
        .collect()
}

fn rfc3339(timestamp: &prost_types::Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(timestamp.seconds)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// What an example should print for a token: what bankauth serves a Rust
/// client for the same request (the cached token, so the same facts).
fn token_line(step: &str, token: &pb::AccessToken) -> String {
    format!(
        "{step} scopes={} token_type={} token_length={} expire_time={}",
        token.scopes.join(","),
        token.token_type,
        token.access_token.len(),
        rfc3339(token.expire_time.as_ref().unwrap())
    )
}

/// Checks an example's whole output against bankauth itself.
async fn check_output(bankauth: &mut Bankauth, language: &str, stdout: &str) {
    let external_id = format!("{language}-customer-1");
    let created = fields(stdout, "CreateUser");
    let id = created["id"].to_owned();
    assert_eq!(created["external_id"], external_id, "{stdout}");
    assert_eq!(bankauth.upstream.sandbox.user_count(), 1, "{stdout}");

    // The user the example created is the one bankauth now serves.
    let user = bankauth
        .client
        .get_user(authorized(pb::GetUserRequest {
            provider: String::new(),
            user_id: id.clone(),
        }))
        .await
        .expect("the example's user exists")
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.external_id, external_id);
    let widget = bankauth
        .client
        .issue_widget_token(authorized(pb::IssueWidgetTokenRequest {
            provider: String::new(),
            user_id: id.clone(),
            force_refresh: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    let data = bankauth
        .client
        .issue_data_token(authorized(pb::IssueDataTokenRequest {
            provider: String::new(),
            user_id: id.clone(),
            scopes: vec!["accounts:read".into(), "transactions:read:all".into()],
            force_refresh: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(widget.scopes, ["widget_authentication"]);
    assert_eq!(data.scopes, ["accounts:read", "transactions:read:all"]);

    // The same two failures, as a Rust client sees them.
    let not_found = bankauth
        .client
        .get_user(authorized(pb::GetUserRequest {
            provider: String::new(),
            user_id: "no-such-user".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(not_found.code(), tonic::Code::NotFound);
    let bad_scope = bankauth
        .client
        .issue_data_token(authorized(pb::IssueDataTokenRequest {
            provider: String::new(),
            user_id: id.clone(),
            scopes: vec!["payments:write".into()],
            force_refresh: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_scope.code(), tonic::Code::InvalidArgument);
    let violation = bad_scope
        .get_details_bad_request()
        .unwrap()
        .field_violations[0]
        .clone();
    assert_eq!(violation.field, "scopes");

    // The connect flow: the example exchanged the code by its state, so the
    // state is spent, and the ID token named the example's user.
    let state = fields(stdout, "CreateAuthorizationUrl")["state"].to_owned();
    let exchanged = fields(stdout, "ExchangeAuthorizationCode");
    let connection_id = exchanged["connection_id"].to_owned();
    assert!(!connection_id.is_empty(), "{stdout}");
    let spent = bankauth
        .client
        .exchange_authorization_code(authorized(pb::ExchangeAuthorizationCodeRequest {
            state: state.clone(),
            code: "a-code".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(spent.code(), tonic::Code::InvalidArgument, "{spent:?}");
    assert_eq!(
        spent.get_details_bad_request().unwrap().field_violations[0].field,
        "state"
    );

    let expected = [
        format!("CreateUser id={id} external_id={external_id}"),
        format!("GetUser id={id} external_id={external_id} email=alex@example.com"),
        token_line("IssueWidgetToken", &widget),
        token_line("IssueDataToken", &data),
        format!("CreateAuthorizationUrl state={state}"),
        format!(
            "ExchangeAuthorizationCode sub={id} connection_id={connection_id} scopes=openid refresh_token=yes"
        ),
        format!("GetUser error code=NOT_FOUND message={}", not_found.message()),
        "  ErrorInfo reason=USER_NOT_FOUND domain=bankauth.dev provider=sandbox upstream_error=http_404".into(),
        format!("IssueDataToken error code=INVALID_ARGUMENT message={}", bad_scope.message()),
        "  ErrorInfo reason=INVALID_ARGUMENT domain=bankauth.dev field=scopes".into(),
        format!("  BadRequest field=scopes description={}", violation.description),
    ];
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        expected,
        "the {language} example's output"
    );
    for token in [&widget.access_token, &data.access_token] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !stdout.contains(signature),
            "the {language} example printed a token"
        );
    }
}

#[tokio::test]
async fn python_example_calls_every_rpc_and_decodes_error_details() {
    let install = "Install the Python example's packages with \
                   `python3 -m pip install -r examples/python/requirements.txt` (scripts/test does this).";
    require(
        "python3",
        &["-c", "import grpc_tools.protoc, grpc_status"],
        install,
    )
    .await;
    let mut bankauth = Bankauth::start().await;
    let stdout = run_example(&bankauth, "python", "sh", &["run.sh"], install).await;
    check_output(&mut bankauth, "python", &stdout).await;
}

#[tokio::test]
async fn node_example_calls_every_rpc_and_decodes_error_details() {
    let install = "Install Node.js (`apt-get install nodejs npm`) and the example's packages with \
                   `npm ci` in examples/node (scripts/test does this).";
    require("node", &["--version"], install).await;
    for package in ["@grpc/grpc-js", "typescript"] {
        assert!(
            example_dir("node")
                .join("node_modules")
                .join(package)
                .is_dir(),
            "examples/node/node_modules/{package} is missing: {install}"
        );
    }
    let mut bankauth = Bankauth::start().await;
    // run.sh generates the types, type-checks and compiles, then runs the client.
    let stdout = run_example(&bankauth, "node", "sh", &["run.sh"], install).await;
    check_output(&mut bankauth, "node", &stdout).await;
}

#[tokio::test]
async fn go_example_calls_every_rpc_and_decodes_error_details() {
    let install = "Install Go, the protoc Go plugins and the gRPC sources (Debian) with \
                   `apt-get install golang-go golang-github-golang-protobuf-1-5-dev \
                   golang-google-grpc-dev golang-google-genproto-dev \
                   protoc-gen-go protoc-gen-go-grpc`, buf with \
                   `npm install -g @bufbuild/buf@1.75.0` (or set BUF to its path) and \
                   grpcio-tools (the Python example's requirements) (scripts/test does all this).";
    require("go", &["version"], install).await;
    require(&buf(), &["--version"], install).await;
    require("python3", &["-c", "import grpc_tools.protoc"], install).await;
    require("protoc-gen-go", &["--version"], install).await;
    require("protoc-gen-go-grpc", &["--version"], install).await;
    for package in [
        "google.golang.org/grpc",
        "google.golang.org/genproto/googleapis/rpc/errdetails",
        "google.golang.org/protobuf",
    ] {
        assert!(
            Path::new("/usr/share/gocode/src").join(package).is_dir(),
            "{package} is missing from /usr/share/gocode: {install}"
        );
    }
    let mut bankauth = Bankauth::start().await;
    let stdout = run_example(&bankauth, "go", "sh", &["run.sh"], install).await;
    check_output(&mut bankauth, "go", &stdout).await;
}
