//! The real binary as an operator runs it: `bankauth serve` with a file,
//! SIGHUP re-running discovery, SIGTERM draining and exiting 0.

use std::process::Stdio;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStderr, Command};

use crate::helpers::start_upstream;

/// Reads log lines until one contains `needle`; returns it.
async fn wait_for(lines: &mut Lines<BufReader<ChildStderr>>, needle: &str) -> String {
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("the process ended before logging {needle:?}");
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?} within 20 s"))
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn serve_reloads_discovery_on_sighup_and_exits_cleanly_on_sigterm() {
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("client.pem");
    std::fs::write(&key, upstream.client_key_pem.expose_secret()).unwrap();
    let config = dir.path().join("bankauth.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [server]
            listen_addr = "127.0.0.1:0"

            [providers.sandbox]
            kind = "moneyhub"
            issuer = "{}"
            client_id = "{}"
            private_key_file = "{}"
            data_scopes = ["accounts:read"]
            "#,
            upstream.sandbox.issuer(),
            bankauth::demo::DEMO_CLIENT_ID,
            key.display()
        ),
    )
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_bankauth"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = wait_for(&mut lines, "bankauth listening").await;
    assert!(
        !listening.contains('\u{1b}'),
        "ANSI codes in piped logs: {listening:?}"
    );
    let addr = listening
        .split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .expect("the listening line names the address")
        .to_owned();

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
