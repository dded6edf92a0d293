//! TLS on the gRPC port, and callers identified by client certificates.

use bankauth::config::{AccessConfig, CallerConfig, Config, ServerTlsConfig};
use bankauth::proto::v1 as pb;
use bankauth::server::Application;
use pb::auth_service_client::AuthServiceClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::{TestApp, TestCa, error_info, spawn_app_with, start_upstream};

/// A server certificate for 127.0.0.1 and client certificates from the
/// trusted CA (one a caller is configured for, one nobody is) and from a
/// rogue CA.
struct Pki {
    _dir: tempfile::TempDir,
    trusted: TestCa,
    rogue: TestCa,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let trusted = TestCa::new(dir.path(), "ca");
    trusted.issue("server", "IP:127.0.0.1");
    trusted.issue("payments", "DNS:payments.internal");
    trusted.issue("stranger", "DNS:stranger.internal");
    let rogue = TestCa::new(dir.path(), "rogue-ca");
    rogue.issue("impostor", "DNS:payments.internal");
    Pki {
        _dir: dir,
        trusted,
        rogue,
    }
}

async fn app_with_mutual_tls(pki: &Pki) -> TestApp {
    spawn_tls_app(pki, |_| {}).await
}

async fn spawn_tls_app(pki: &Pki, configure: impl FnOnce(&mut Config)) -> TestApp {
    let upstream = start_upstream().await;
    let ca = &pki.trusted;
    let tls = ServerTlsConfig {
        cert_file: ca.path("server.pem"),
        key_file: ca.path("server.key"),
        client_ca_file: Some(ca.path("ca.pem")),
    };
    spawn_app_with(upstream, move |config| {
        config.server.tls = Some(tls);
        config.server.allow_plaintext = false;
        config.access = AccessConfig {
            allow_anonymous: false,
            callers: [(
                "payments".to_owned(),
                CallerConfig {
                    api_key_sha256: Vec::new(),
                    client_cert_names: vec!["payments.internal".into()],
                    rpcs: vec!["*".into()],
                    providers: vec!["*".into()],
                    scopes: vec!["*".into()],
                    requests_per_second: None,
                    burst: None,
                },
            )]
            .into(),
        };
        configure(config);
    })
    .await
}

/// A client trusting the test CA, presenting `client` (`stem` in `ca`) if given.
async fn client(
    app: &TestApp,
    pki: &Pki,
    client: Option<(&TestCa, &str)>,
) -> Result<AuthServiceClient<Channel>, tonic::transport::Error> {
    let read = |path: std::path::PathBuf| std::fs::read(path).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(pki.trusted.path("ca.pem"))))
        .domain_name("127.0.0.1");
    if let Some((ca, stem)) = client {
        tls = tls.identity(Identity::from_pem(
            read(ca.path(&format!("{stem}.pem"))),
            read(ca.path(&format!("{stem}.key"))),
        ));
    }
    let channel = Channel::from_shared(format!("https://{}", app.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(AuthServiceClient::new(channel))
}

fn app_token_request() -> pb::IssueDataTokenRequest {
    pb::IssueDataTokenRequest {
        provider: String::new(),
        user_id: String::new(),
        scopes: vec!["scim_user:read".into()],
        force_refresh: false,
    }
}

#[tokio::test]
async fn a_caller_with_a_configured_client_certificate_is_served_over_tls() {
    let pki = pki();
    let app = app_with_mutual_tls(&pki).await;
    let mut payments = client(&app, &pki, Some((&pki.trusted, "payments")))
        .await
        .unwrap();
    let token = payments.issue_data_token(app_token_request()).await;
    assert!(token.is_ok(), "{token:?}");
}

#[tokio::test]
async fn unknown_client_certificates_and_plaintext_are_refused() {
    let pki = pki();
    let app = app_with_mutual_tls(&pki).await;

    // Signed by the trusted CA, but naming no caller; or no certificate at all.
    for identity in [Some((&pki.trusted, "stranger")), None] {
        let mut unknown = client(&app, &pki, identity).await.unwrap();
        let status = unknown
            .issue_data_token(app_token_request())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(error_info(&status).reason, "UNAUTHENTICATED");
    }

    // Signed by another CA: the handshake itself fails.
    let impostor = match client(&app, &pki, Some((&pki.rogue, "impostor"))).await {
        Ok(mut client) => client.issue_data_token(app_token_request()).await.err(),
        Err(error) => Some(tonic::Status::unavailable(error.to_string())),
    };
    assert!(impostor.is_some(), "a rogue CA's certificate was accepted");
    assert_eq!(app.sandbox().token_requests(), 0);

    // A plaintext client gets nothing either.
    let plaintext = AuthServiceClient::connect(format!("http://{}", app.addr)).await;
    let refused = match plaintext {
        Ok(mut client) => client.issue_data_token(app_token_request()).await.is_err(),
        Err(_) => true,
    };
    assert!(refused);
}

#[tokio::test]
async fn without_tls_the_server_starts_only_when_plaintext_is_chosen() {
    let upstream = start_upstream().await;
    let mut config = upstream.config(([127, 0, 0, 1], 0).into());
    config.server.allow_plaintext = false;
    let error = Application::build(config).await.err().unwrap();
    assert!(error.to_string().contains("server.tls"), "{error}");
}

#[tokio::test]
async fn probes_that_cannot_speak_tls_use_the_plaintext_health_port() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let pki = pki();
    let app = spawn_tls_app(&pki, |config| {
        config.server.health_listen_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let health_addr = app.health_addr.expect("the health port is bound");
    let channel = Channel::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for service in ["", "liveness", "bankauth.v1.AuthService"] {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    // Only health is served there: the AuthService stays behind TLS.
    let status = AuthServiceClient::new(channel)
        .issue_data_token(app_token_request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}
