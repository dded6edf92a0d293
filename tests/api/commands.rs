//! The binary's commands beside `serve`, as an operator types them:
//! `check-config` on the shipped example, `hash-key` and `completions`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use bankauth::provider::{SigningAlgorithm, SigningKey};
use secrecy::ExposeSecret;

use crate::helpers::TestCa;

const BIN: &str = env!("CARGO_BIN_EXE_bankauth");

/// `bankauth hash-key` with `input` on its standard input.
pub fn hash_key(input: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// The example names its secrets by environment variables, set here to
/// fresh values, and its files by paths a deployment mounts under
/// /etc/bankauth, pointed here at files made for the check by the
/// documented `BANKAUTH_*` overrides; every other key is checked as written.
#[test]
fn check_config_accepts_the_example_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    ca.issue("server", "DNS:bankauth.payments.svc.cluster.local");
    let (_, moneyhub_key) = SigningKey::generate(SigningAlgorithm::RS256).unwrap();
    let (_, partner_key) = SigningKey::generate(SigningAlgorithm::ES256).unwrap();
    let ca_file = ca.path("ca.pem");
    let output = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/bankauth.example.toml"
        ))
        .env("MONEYHUB_PRIVATE_KEY", moneyhub_key.expose_secret())
        .env("PARTNER_PRIVATE_KEY", partner_key.expose_secret())
        .env("MONEYKIT_CLIENT_SECRET", "moneykit-test-secret")
        .env(
            "BANKAUTH_CACHE_KEY_2026_11",
            "3DXneSaadW+7/f62xuDwRAWsFmeLRY+gr1r5B8Gtk0U=",
        )
        .env(
            "BANKAUTH_CACHE_KEY_2026_05",
            "tK5aXFv0CS0rmRzZGLT2ieV/NHWuK8xZNuOK5RPcI5Q=",
        )
        .env("BANKAUTH_SERVER__TLS__CERT_FILE", ca.path("server.pem"))
        .env("BANKAUTH_SERVER__TLS__KEY_FILE", ca.path("server.key"))
        .env("BANKAUTH_SERVER__TLS__CLIENT_CA_FILE", &ca_file)
        .env("BANKAUTH_CACHE__REDIS_CA_FILE", &ca_file)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout, "configuration is valid: 3 provider(s)\n");
}

#[test]
fn hash_key_prints_the_sha256_of_the_key_without_its_newline() {
    const PASSWORD: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
    for input in ["password", "password\n", "password\r\n"] {
        let output = hash_key(input.as_bytes());
        assert!(output.status.success(), "{input:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("{PASSWORD}\n"),
            "{input:?}"
        );
        assert!(output.stderr.is_empty(), "{input:?}");
    }
    // Only one newline is the terminal's or the file's: the next is the key's.
    let output = hash_key(b"password\n\n");
    assert!(!output.status.success());
}

#[test]
fn hash_key_refuses_an_empty_key_and_never_prints_one() {
    for input in ["", "\n", "\r\n"] {
        let output = hash_key(input.as_bytes());
        assert!(!output.status.success(), "{input:?}");
        assert!(output.stdout.is_empty(), "{input:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("the API key is empty"), "{stderr}");
    }
    // A key no caller could send is refused, and the error does not echo it.
    let output = hash_key(b"s3cret-key \n");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("white space"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn completions_complete_every_command_in_each_shell() {
    let script = |shell: &str| {
        let output = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}");
        String::from_utf8(output.stdout).unwrap()
    };
    let bash = script("bash");
    assert!(bash.contains("complete -F _bankauth"), "{bash}");
    for command in [
        "serve",
        "demo",
        "check-config",
        "health",
        "hash-key",
        "completions",
    ] {
        assert!(bash.contains(command), "bash completion lacks {command}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(script(shell).contains("check-config"), "{shell}");
    }
    let unknown = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
}
