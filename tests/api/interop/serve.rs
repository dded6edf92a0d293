//! The real `bankauth serve` pointed at the interop OpenID provider, as an
//! operator would configure Moneyhub: only the issuer (discovery supplies the
//! token endpoint and JWKS), the client id and the private key file.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bankauth::proto::v1::auth_service_client::AuthServiceClient;
use tonic::transport::Channel;

use super::oidc_peer::{CLIENT_ID, OidcPeer, write_key};
use crate::helpers::serve_binary;

/// The provider's name in bankauth's configuration.
pub const PROVIDER: &str = "moneyhub";

/// Log lines kept for [`Bankauth::log_tail`].
const LOG_LINES: usize = 200;

/// The data scopes bankauth allows by default: ones the peer grants.
pub const DATA_SCOPES: &[&str] = &["accounts:read", "transactions:read:all"];

/// Writes a `bankauth.toml` with one `kind = "moneyhub"` provider whose
/// issuer is `peer`'s, allowing `data_scopes`; returns its path.
pub fn write_config(dir: &Path, peer: &OidcPeer, data_scopes: &[&str]) -> PathBuf {
    let key = write_key(dir, peer);
    let config = dir.join("bankauth.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [server]
            listen_addr = "127.0.0.1:0"
            allow_plaintext = true

            [access]
            allow_anonymous = true

            [providers.{PROVIDER}]
            kind = "moneyhub"
            issuer = "{issuer}"
            client_id = "{CLIENT_ID}"
            private_key_file = "{key}"
            data_scopes = {data_scopes:?}
            application_scopes = ["scim_user:read"]
            "#,
            issuer = peer.issuer(),
            key = key.display(),
        ),
    )
    .unwrap();
    config
}

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
