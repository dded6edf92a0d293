use std::process::Command;

use bankauth::config::ProviderKind;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::spawn_app;

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
