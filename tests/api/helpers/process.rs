//! Processes and ports: free loopback ports, and the real `bankauth` binary
//! serving a configuration file.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bankauth::proto::v1::auth_service_client::AuthServiceClient;
use tonic::transport::Channel;

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

/// Log lines kept for [`Bankauth::log_tail`].
const LOG_LINES: usize = 200;

/// A running `bankauth serve`, with a gRPC client; killed when dropped.
pub struct Bankauth {
    _child: tokio::process::Child,
    pub client: AuthServiceClient<Channel>,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Bankauth {
    /// Starts the binary with `config` and connects once it listens.
    pub async fn start(config: &Path) -> Self {
        let (child, mut lines) = serve_binary(config, &[]);
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let keep = |log: &Arc<Mutex<VecDeque<String>>>, line: String| {
            let mut log = log.lock().unwrap();
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(line);
        };
        let listening = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let addr = line.contains("bankauth listening").then(|| {
                    line.split_whitespace()
                        .find_map(|field| field.strip_prefix("addr="))
                        .map(str::to_owned)
                });
                keep(&log, line);
                if let Some(addr) = addr {
                    return addr;
                }
            }
            None
        })
        .await;
        let tail = || log.lock().unwrap().iter().cloned().collect::<Vec<_>>();
        let addr = match listening {
            Ok(Some(addr)) => addr,
            Ok(None) => panic!(
                "bankauth exited before listening; it logged:\n{}",
                tail().join("\n")
            ),
            Err(_) => panic!(
                "bankauth did not listen within 30 s; it logged:\n{}",
                tail().join("\n")
            ),
        };
        // Keeps draining its stderr, so a full pipe never stalls it.
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep(&kept, line);
            }
        });
        let client = AuthServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("bankauth accepts connections");
        Self {
            _child: child,
            client,
            log,
        }
    }

    /// The last lines bankauth logged.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        let lines: Vec<&str> = log.iter().map(String::as_str).collect();
        format!(
            "--- bankauth log (last {} lines) ---\n{}",
            lines.len(),
            lines.join("\n")
        )
    }
}

impl Drop for Bankauth {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}
