//! panva's `oidc-provider` (npm, pinned in `tests/interop/oidc/package-lock.json`)
//! configured like Moneyhub's identity service by `tests/interop/oidc/provider.mjs`,
//! started on a free loopback port and killed when dropped.
//!
//! Its stderr (one line per request, and the provider's own error events) is
//! kept, and printed when a test fails while the peer is alive, so a
//! protocol mismatch is readable without rerunning.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bankauth::provider::{SigningAlgorithm, SigningKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use url::Url;

/// The client registered at the peer (shaped like a Moneyhub client id).
pub const CLIENT_ID: &str = "82423947-9d71-42b3-a3e0-86d1f0ab091f";
/// The client's registered redirect URI.
pub const REDIRECT_URI: &str = "https://app.example.com/callback";
/// Log lines kept for [`OidcPeer::log_tail`].
const LOG_LINES: usize = 200;

/// The peer's directory, with `provider.mjs` and its pinned `node_modules`.
fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/oidc")
}

/// A running `oidc-provider`, with the client key bankauth signs with.
pub struct OidcPeer {
    child: Child,
    port: u16,
    log: Arc<Mutex<VecDeque<String>>>,
    http: reqwest::Client,
    /// The client's private key (PKCS#8 PEM), for bankauth's `private_key_file`.
    pub client_key_pem: SecretString,
    /// Keeps the client's JWKS file while the peer runs.
    _dir: tempfile::TempDir,
}

/// What an authorization request asks for.
pub struct AuthorizationRequest<'a> {
    /// The user who signs in at the development login page.
    pub login: &'a str,
    pub scope: &'a str,
    pub nonce: Option<&'a str>,
    /// The PKCE verifier; its S256 challenge is sent.
    pub code_verifier: Option<&'a str>,
}

/// Held while a peer starts; see [`OidcPeer::start`].
static STARTING: Mutex<()> = Mutex::new(());

/// A bound against a peer that never starts, not a timing assertion.
const STARTUP_BOUND: Duration = Duration::from_secs(120);

impl OidcPeer {
    /// Starts the peer with a fresh RS256 client key registered as the
    /// client's JWKS, and waits until it listens.
    pub fn start() -> Self {
        let dir = peer_dir();
        assert!(
            dir.join("node_modules/oidc-provider/package.json").exists(),
            "the interop OpenID provider is not installed: run `npm ci --prefix tests/interop/oidc` \
             (or `cd tests/interop/oidc && npm ci`) first; it needs Node.js 20 or later"
        );
        let (key, client_key_pem) =
            SigningKey::generate(SigningAlgorithm::RS256).expect("an RSA key");
        let scratch = tempfile::Builder::new()
            .prefix("oidc-peer-")
            .tempdir()
            .unwrap();
        let jwks_file = scratch.path().join("client-jwks.json");
        std::fs::write(
            &jwks_file,
            serde_json::json!({ "keys": [key.public_jwk()] }).to_string(),
        )
        .unwrap();

        // One peer starts at a time: a dozen Node processes loading
        // oidc-provider at once on two busy cores took over 30 s each.
        let _starting = STARTING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("OIDC_PORT", "0")
            .env("OIDC_CLIENT_ID", CLIENT_ID)
            .env("OIDC_CLIENT_JWKS_FILE", &jwks_file)
            .env("OIDC_REDIRECT_URI", REDIRECT_URI)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `node` ({e}): install Node.js 20 or later (apt-get install nodejs)")
            });

        let log = Arc::new(Mutex::new(VecDeque::new()));
        let stderr = child.stderr.take().unwrap();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = kept.lock().unwrap();
                if log.len() == LOG_LINES {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (ready, port) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = ready.send(port.trim().parse::<u16>().ok());
                }
            }
        });
        let port = port.recv_timeout(STARTUP_BOUND).ok().flatten();
        let mut peer = Self {
            child,
            port: 0,
            log,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            client_key_pem,
            _dir: scratch,
        };
        match port {
            Some(port) => peer.port = port,
            None => panic!(
                "the OpenID provider did not print `listening <port>` within {:?} (exit: {:?}); its log:\n{}",
                STARTUP_BOUND,
                peer.child.try_wait(),
                peer.log_tail()
            ),
        }
        peer
    }

    /// The issuer, as bankauth is configured with it: `http://127.0.0.1:<port>/oidc`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}/oidc", self.port)
    }

    /// The peer's counters (`GET /__stats`).
    pub async fn stats(&self) -> serde_json::Value {
        let body = self
            .http
            .get(format!("http://127.0.0.1:{}/__stats", self.port))
            .send()
            .await
            .expect("the peer answers /__stats")
            .text()
            .await
            .unwrap();
        serde_json::from_str(&body).expect("/__stats is JSON")
    }

    /// Token endpoint requests with this `grant_type`, whatever their outcome.
    pub async fn token_requests(&self, grant_type: &str) -> u64 {
        self.stats().await["token_requests_by_grant"][grant_type]
            .as_u64()
            .unwrap_or(0)
    }

    /// Requests at the pushed authorization request endpoint (RFC 9126).
    pub async fn par_requests(&self) -> u64 {
        self.stats().await["pushed_authorization_requests"]
            .as_u64()
            .unwrap_or(0)
    }

    /// An HTTP client that follows no redirects, as the flows need.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn jwks_requests(&self) -> u64 {
        self.stats().await["jwks_requests"].as_u64().unwrap_or(0)
    }

    /// The last lines the peer logged, one request or provider error each.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        let lines: Vec<&str> = log.iter().map(String::as_str).collect();
        format!(
            "--- oidc-provider log (last {} lines) ---\n{}",
            lines.len(),
            lines.join("\n")
        )
    }

    /// The peer's public keys, as served at its `jwks_uri`.
    pub async fn jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        let body = self
            .http
            .get(format!("{}/jwks", self.issuer()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&body).expect("a JWKS")
    }

    /// Walks the authorization endpoint as a browser would: the development
    /// login page (signing in as `login`), the consent page, and back to the
    /// redirect URI. Returns the callback's query parameters (`code`, `state`, `iss`).
    pub async fn authorize(&self, request: &AuthorizationRequest<'_>) -> BTreeMap<String, String> {
        let mut url = Url::parse(&format!("{}/auth", self.issuer())).unwrap();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("client_id", CLIENT_ID)
                .append_pair("response_type", "code")
                .append_pair("redirect_uri", REDIRECT_URI)
                .append_pair("scope", request.scope)
                .append_pair("state", "interop-state")
                // offline_access is only honoured with consent asked (OIDC Core §11).
                .append_pair("prompt", "consent");
            if let Some(nonce) = request.nonce {
                query.append_pair("nonce", nonce);
            }
            if let Some(verifier) = request.code_verifier {
                query
                    .append_pair("code_challenge", &pkce_challenge(verifier))
                    .append_pair("code_challenge_method", "S256");
            }
        }
        self.walk(url, request.login).await
    }

    /// Opens `url` (an authorization request) as a browser would, signing
    /// in as `login` and consenting; returns the callback's query parameters.
    pub async fn walk(&self, url: Url, login: &str) -> BTreeMap<String, String> {
        let mut jar = CookieJar::default();
        let mut next = Step::Get(url);
        for _ in 0..12 {
            let response = match &next {
                Step::Get(url) => self.http.get(url.clone()),
                Step::Post(url, form) => self
                    .http
                    .post(url.clone())
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form.clone()),
            }
            .header(COOKIE, jar.header())
            .send()
            .await
            .unwrap_or_else(|e| panic!("the authorization flow: {e}\n{}", self.log_tail()));
            jar.keep(&response);
            let status = response.status();
            let base = response.url().clone();
            if status.is_redirection() {
                let location = response.headers()[LOCATION].to_str().unwrap().to_owned();
                let target = base.join(&location).unwrap();
                if target.as_str().starts_with(REDIRECT_URI) {
                    let params: BTreeMap<String, String> =
                        target.query_pairs().into_owned().collect();
                    assert!(
                        !params.contains_key("error"),
                        "the provider redirected back with an error: {params:?}\n{}",
                        self.log_tail()
                    );
                    return params;
                }
                next = Step::Get(target);
                continue;
            }
            let page = response.text().await.unwrap();
            assert!(
                status.is_success(),
                "the authorization flow got HTTP {status}: {page}\n{}",
                self.log_tail()
            );
            let action = form_action(&page).unwrap_or_else(|| {
                panic!(
                    "no form on the interaction page: {page}\n{}",
                    self.log_tail()
                )
            });
            let target = base.join(&action).unwrap();
            let form = if page.contains(r#"name="prompt" value="login""#) {
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("prompt", "login")
                    .append_pair("login", login)
                    .append_pair("password", "any password: development interactions")
                    .finish()
            } else if page.contains(r#"name="prompt" value="consent""#) {
                "prompt=consent".to_owned()
            } else {
                panic!(
                    "an interaction page that is neither login nor consent: {page}\n{}",
                    self.log_tail()
                )
            };
            next = Step::Post(target, form);
        }
        panic!(
            "the authorization flow did not come back to the redirect URI in 12 steps\n{}",
            self.log_tail()
        )
    }

    /// A fresh authorization code for `request`.
    pub async fn authorization_code(&self, request: &AuthorizationRequest<'_>) -> String {
        let params = self.authorize(request).await;
        assert_eq!(
            params.get("state").map(String::as_str),
            Some("interop-state")
        );
        params.get("code").cloned().expect("a code in the redirect")
    }
}

impl Drop for OidcPeer {
    fn drop(&mut self) {
        // A failing test unwinds through here: show what the provider saw.
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Step {
    Get(Url),
    Post(Url, String),
}

/// The cookies a browser would send back: reqwest here has no cookie store.
/// Paths are ignored (each step replaces the cookies of the same name).
#[derive(Default)]
struct CookieJar(BTreeMap<String, String>);

impl CookieJar {
    fn keep(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(SET_COOKIE) {
            let Ok(cookie) = value.to_str() else { continue };
            let pair = cookie.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            // Cleared cookies come back empty, expiring at the epoch.
            let expired = value.is_empty() || cookie.contains("1970");
            if expired {
                self.0.remove(name.trim());
            } else {
                self.0
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The `action` of the page's first form (the dev pages' URLs need no unescaping).
fn form_action(page: &str) -> Option<String> {
    let form = &page[page.find("<form")?..];
    let start = form.find("action=\"")? + "action=\"".len();
    let end = form[start..].find('"')?;
    Some(form[start..start + end].replace("&amp;", "&"))
}

/// RFC 7636 S256: BASE64URL(SHA256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Writes the client key into `dir` for `private_key_file`; returns its path.
pub fn write_key(dir: &Path, peer: &OidcPeer) -> PathBuf {
    let path = dir.join("oidc-client.pem");
    std::fs::write(&path, peer.client_key_pem.expose_secret()).unwrap();
    path
}
