use std::process::Command;

use bankauth::config::ProviderKind;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{spawn_app, spawn_app_with, start_upstream};

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_service() {
    let app = spawn_app().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "bankauth.v1.AuthService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
}

fn write_config(dir: &tempfile::TempDir, key_pem: &str) -> std::path::PathBuf {
    let key_path = dir.path().join("key.pem");
    std::fs::write(&key_path, key_pem).unwrap();
    let config_path = dir.path().join("bankauth.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
            [server]
            allow_plaintext = true

            [access.callers.backend]
            api_key_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
            rpcs = ["*"]
            providers = ["*"]

            [providers.mh]
            kind = "moneyhub"
            issuer = "https://identity.moneyhub.co.uk/oidc"
            client_id = "client-1"
            private_key_file = "{}"
            data_scopes = ["accounts:read"]
            "#,
            key_path.display()
        ),
    )
    .unwrap();
    config_path
}

#[test]
fn check_config_accepts_a_valid_file_and_env_overrides_name_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let (_, pem) =
        bankauth::provider::SigningKey::generate(bankauth::provider::SigningAlgorithm::RS256)
            .unwrap();
    let config = write_config(&dir, secrecy::ExposeSecret::expose_secret(&pem));
    let bin = env!("CARGO_BIN_EXE_bankauth");

    let ok = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let bad = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&config)
        .env("BANKAUTH_PROVIDERS__MH__CLIENT_ID", " ")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("providers.mh.client_id"), "{stderr}");

    let unrelated = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&config)
        .env("BANKAUTH_SOMETHING_ELSE", "x")
        .output()
        .unwrap();
    assert!(
        unrelated.status.success(),
        "{}",
        String::from_utf8_lossy(&unrelated.stderr)
    );
}

#[test]
fn check_config_reads_the_servers_tls_certificate_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let (_, pem) =
        bankauth::provider::SigningKey::generate(bankauth::provider::SigningAlgorithm::RS256)
            .unwrap();
    let config = write_config(&dir, secrecy::ExposeSecret::expose_secret(&pem));
    let not_a_certificate = dir.path().join("server.pem");
    std::fs::write(&not_a_certificate, "not a certificate").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bankauth"))
        .args(["check-config", "--config"])
        .arg(&config)
        .env("BANKAUTH_SERVER__TLS__CERT_FILE", &not_a_certificate)
        .env("BANKAUTH_SERVER__TLS__KEY_FILE", &not_a_certificate)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.tls"), "{stderr}");
}

#[test]
fn a_key_that_is_not_a_key_is_named_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let output = Command::new(env!("CARGO_BIN_EXE_bankauth"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("providers.mh.private_key"), "{stderr}");
}

#[test]
fn the_readme_configuration_is_valid() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```toml\n")
        .expect("a TOML example in the README")
        + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let config = bankauth::config::Config::from_toml(&readme[start..end])
        .and_then(|config| bankauth::server::validate(&config).map(|()| config))
        .unwrap_or_else(|e| panic!("the README's configuration does not parse: {e}"));
    let kinds: Vec<_> = config.providers.values().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [
            ProviderKind::Moneyhub,
            ProviderKind::Moneykit,
            ProviderKind::Oauth2
        ]
    );
}

/// A bare HTTP/2 connection to bankauth, read frame by frame, so a test sees
/// exactly what the server sends (a client library would hide GOAWAY and
/// PING behind reconnects).
struct RawHttp2(tokio::net::TcpStream);

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

impl RawHttp2 {
    /// Sends the client preface and an empty SETTINGS frame.
    async fn connect(addr: std::net::SocketAddr) -> Self {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Self(stream);
        raw.send(SETTINGS, 0, &[]).await;
        raw
    }

    async fn send(&mut self, kind: u8, flags: u8, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![length[1], length[2], length[3], kind, flags, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        self.0.write_all(&frame).await.unwrap();
    }

    /// The next frame's type, flags and payload; None once the server closed.
    async fn next(&mut self) -> Option<(u8, u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut header = [0u8; 9];
        self.0.read_exact(&mut header).await.ok()?;
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        self.0.read_exact(&mut payload).await.ok()?;
        Some((header[3], header[4], payload))
    }
}

/// Long enough for any of the ages and intervals below, on a loaded machine.
const GENEROUS: std::time::Duration = std::time::Duration::from_secs(20);

#[tokio::test]
async fn connections_older_than_max_connection_age_are_sent_goaway() {
    let app = spawn_app_with(start_upstream().await, |c| {
        c.server.max_connection_age_ms = 1_000;
        c.server.http2_keepalive_interval_ms = 0;
    })
    .await;
    let mut connection = RawHttp2::connect(app.addr).await;
    let goaway = tokio::time::timeout(GENEROUS, async {
        // A well-behaved client: it acknowledges SETTINGS and PINGs (h2's
        // graceful shutdown pings), so only the age can end the connection.
        while let Some((kind, flags, payload)) = connection.next().await {
            match kind {
                GOAWAY => return true,
                SETTINGS if flags & ACK == 0 => connection.send(SETTINGS, ACK, &[]).await,
                PING if flags & ACK == 0 => connection.send(PING, ACK, &payload).await,
                _ => {}
            }
        }
        false
    })
    .await;
    assert_eq!(
        goaway,
        Ok(true),
        "no GOAWAY within {GENEROUS:?} of a 1 s max age"
    );
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_disconnected() {
    let app = spawn_app_with(start_upstream().await, |c| {
        c.server.http2_keepalive_interval_ms = 1_000;
        c.server.http2_keepalive_timeout_ms = 1_000;
        c.server.max_connection_age_ms = 0;
    })
    .await;
    let mut connection = RawHttp2::connect(app.addr).await;
    let pinged_then_closed = tokio::time::timeout(GENEROUS, async {
        let mut pinged = false;
        // A vanished peer: SETTINGS acknowledged, PINGs never answered.
        while let Some((kind, flags, _)) = connection.next().await {
            match kind {
                SETTINGS if flags & ACK == 0 => connection.send(SETTINGS, ACK, &[]).await,
                PING if flags & ACK == 0 => pinged = true,
                _ => {}
            }
        }
        pinged
    })
    .await;
    assert_eq!(
        pinged_then_closed,
        Ok(true),
        "expected a PING, then the connection closed, within {GENEROUS:?}"
    );
}

#[tokio::test]
async fn the_health_subcommand_reaches_a_server_by_host_name() {
    // As the chart's `helm test` pod does, through the Service's DNS name.
    let app = spawn_app().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_bankauth"))
        .args(["health", "--service", "bankauth.v1.AuthService", "--addr"])
        .arg(format!("localhost:{}", app.addr.port()))
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "SERVING");

    let no_port = tokio::process::Command::new(env!("CARGO_BIN_EXE_bankauth"))
        .args(["health", "--addr", "localhost"])
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&no_port.stderr).contains("expected host:port"),
        "{}",
        String::from_utf8_lossy(&no_port.stderr)
    );
}
