//! Processes and ports: free loopback ports, and the real `bankauth` binary
//! serving a configuration file.

use std::net::TcpListener;
use std::process::Stdio;

use bankauth::demo::DemoUpstream;

/// A loopback port nothing listens on (the OS picked it and it was released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
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
