//! The independent SCIM server: `tests/interop/scim/server.py`, scim2-server
//! (PyPI) serving `/scim/users` on a free loopback port, trusting the JWT
//! access tokens of one issuer (verified with its JWKS) and checking their
//! scope. Killed when dropped.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub const PIP_INSTALL: &str = "python3 -m pip install -r tests/interop/scim/requirements.txt";

/// How many of the peer's log lines [`ScimPeer::log_tail`] keeps.
const LOG_LINES: usize = 200;

pub struct ScimPeer {
    child: Child,
    port: u16,
    log: Arc<Mutex<VecDeque<String>>>,
}

/// What the peer served so far (`GET /__stats`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct PeerStats {
    /// SCIM requests by HTTP method.
    pub requests: BTreeMap<String, u64>,
    /// SCIM answers by HTTP status.
    pub statuses: BTreeMap<String, u64>,
    /// Users stored.
    pub users: u64,
}

impl PeerStats {
    pub fn count(&self, method: &str) -> u64 {
        self.requests.get(method).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.requests.values().sum()
    }
}

impl ScimPeer {
    /// Starts the peer trusting the access tokens of `issuer`, verified with
    /// the keys at `jwks_url`; waits until it listens.
    pub fn start(issuer: &str, jwks_url: &str) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/scim/server.py");
        let mut child = Command::new("python3")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg(script)
            .args(["--issuer", issuer, "--jwks-url", jwks_url, "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run python3 for the SCIM peer ({e}); install Python 3.11+, then `{PIP_INSTALL}`")
            });

        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_LINES)));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                if log.len() == LOG_LINES {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });

        let stdout = child.stdout.take().expect("piped stdout");
        let (ready, listening) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let port = lines.find_map(|line| {
                line.ok()?
                    .strip_prefix("listening ")
                    .and_then(|port| port.trim().parse::<u16>().ok())
            });
            let _ = ready.send(port);
            // Keep draining, so the peer never blocks on a full pipe.
            for _ in lines {}
        });

        let mut peer = Self {
            child,
            port: 0,
            log,
        };
        match listening.recv_timeout(Duration::from_secs(120)) {
            Ok(Some(port)) => peer.port = port,
            outcome => {
                // Let the stderr reader catch the last lines of a peer that exited.
                let exited = peer.child.wait_timeout(Duration::from_secs(2));
                panic!(
                    "the SCIM peer did not start ({}). If a Python package is missing, run `{PIP_INSTALL}`.\n\
                     peer log tail:\n{}",
                    match (outcome, exited) {
                        (_, Some(status)) => format!("it exited with {status}"),
                        (Err(_), None) => "no `listening` line within 120 s".to_owned(),
                        (Ok(_), None) => "it closed its stdout".to_owned(),
                    },
                    peer.log_tail()
                );
            }
        }
        peer
    }

    /// The SCIM base, `http://127.0.0.1:<port>/scim`.
    pub fn base_url(&self) -> String {
        format!("{}/scim", self.origin())
    }

    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the peer served so far.
    pub async fn requests(&self) -> PeerStats {
        let response = reqwest::get(format!("{}/__stats", self.origin()))
            .await
            .unwrap_or_else(|e| panic!("the SCIM peer's stats: {e}\n{}", self.log_tail()));
        let body = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("the SCIM peer's stats: {e}\n{}", self.log_tail()));
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("the SCIM peer's stats: {e}\n{}", self.log_tail()))
    }

    /// The peer's last log lines (one per request, with its status and the
    /// SCIM error's detail), for a failure message.
    pub fn log_tail(&self) -> String {
        // The reader thread may still be behind by the last line or two.
        std::thread::sleep(Duration::from_millis(50));
        let log = self.log.lock().unwrap();
        let tail: Vec<&str> = log
            .iter()
            .rev()
            .take(40)
            .rev()
            .map(String::as_str)
            .collect();
        format!("--- SCIM peer log tail ---\n{}\n---", tail.join("\n"))
    }
}

trait WaitTimeout {
    fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus>;
}

impl WaitTimeout for Child {
    fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.try_wait() {
                // Give the reader thread a moment to store the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ScimPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
