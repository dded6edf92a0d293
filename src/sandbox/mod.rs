//! A built-in sandbox provider. NOT FOR PRODUCTION.
//!
//! A small HTTP server on loopback that speaks the Moneyhub identity protocol
//! as documented: OpenID discovery and JWKS, a token endpoint that verifies
//! `private_key_jwt` client assertions (signature, `aud`, `exp`, single-use
//! `jti`) and issues signed JWT access tokens, and SCIM users kept in memory.
//! The demo runs against it, and the tests use it as their upstream: it
//! counts requests and can be made to fail on demand.

mod moneykit;
mod oidc;
mod scim;
mod users;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use jsonwebtoken::jwk::JwkSet;
use tokio::net::TcpListener;
use url::Url;

use crate::provider::scim::ScimUser;
use crate::provider::users_api::ConnectionBody;
use crate::provider::{KeyError, SigningAlgorithm, SigningKey};

/// A client registered at the sandbox, with the public keys its assertions
/// are verified against (as a client registers its JWKS at Moneyhub).
#[derive(Debug, Clone)]
pub struct RegisteredClient {
    pub client_id: String,
    pub jwks: JwkSet,
}

/// A MoneyKit application registered at the sandbox.
#[derive(Debug, Clone)]
pub struct MoneykitClient {
    pub client_id: String,
    pub client_secret: String,
}

/// Which expiry field token responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryField {
    /// `expires_in`, seconds from now (RFC 6749).
    ExpiresIn,
    /// `expires_at`, epoch seconds (as Moneyhub's examples show).
    ExpiresAt,
    /// Both `expires_in` and `expires_at`.
    Both,
}

/// A failure the sandbox serves instead of its normal answer.
#[derive(Debug, Clone)]
pub enum Fault {
    /// An RFC 6749 error response such as `invalid_client`.
    OAuth { status: u16, error: &'static str },
    /// A bare HTTP status with a non-JSON body.
    Status(u16),
    /// HTTP 429 with `Retry-After` in seconds.
    RateLimited { retry_after_secs: u64 },
    /// Waits this long, then answers normally.
    Stall(Duration),
    /// HTTP 200 with truncated JSON.
    Garbage,
    /// HTTP 200 with a JSON body of this many bytes, streamed.
    Oversized(usize),
    /// Well-formed JSON of any shape, with this status.
    Json { status: u16, body: &'static str },
}

/// A defect the sandbox builds into the next ID token it issues.
#[derive(Debug, Clone)]
pub enum IdTokenFault {
    /// The signature no longer matches the content.
    Tampered,
    /// `aud` names another client.
    Audience(&'static str),
    /// Signed with a key the JWKS does not publish.
    UnpublishedKey,
    /// `aud` names the client and `other`, with this `azp` (if any).
    ExtraAudience {
        other: &'static str,
        azp: Option<&'static str>,
    },
    /// Validly signed, but for another user (`sub`).
    Subject(&'static str),
    /// Validly signed, with this `mh:con_id` (none: the claim left out).
    Connection(Option<&'static str>),
}

/// The sandbox endpoints faults can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Token,
    Scim,
    Moneykit,
    Jwks,
    /// The users API (`/users/...`).
    Users,
    /// The revocation endpoint.
    Revocation,
}

/// Options for [`Sandbox::start`].
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub clients: Vec<RegisteredClient>,
    pub moneykit_clients: Vec<MoneykitClient>,
    /// Lifetime of issued access tokens.
    pub token_lifetime: Duration,
    pub expiry_field: ExpiryField,
    /// Seconds the sandbox's clock is ahead (negative: behind) in the
    /// tokens it issues, as a provider with a skewed clock would be.
    pub clock_skew_secs: i64,
    /// Redirect URIs registered for every client.
    pub redirect_uris: Vec<String>,
    /// Whether discovery advertises the pushed authorization request
    /// endpoint (RFC 9126); off, clients put the request in the URL.
    pub pushed_authorization_requests: bool,
    /// The `expires_in` the PAR endpoint answers (RFC 9126 §2.2).
    pub pushed_request_lifetime_secs: i64,
}

/// The redirect URI the sandbox registers for its clients by default.
pub const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1/callback";

impl SandboxOptions {
    pub fn new(clients: Vec<RegisteredClient>) -> Self {
        Self {
            clients,
            moneykit_clients: Vec::new(),
            token_lifetime: Duration::from_secs(3600),
            // Moneyhub's documents show `expires_at`, and
            // an oidc-provider answers `expires_in`: both, as the interop peer does.
            expiry_field: ExpiryField::Both,
            clock_skew_secs: 0,
            redirect_uris: vec![DEFAULT_REDIRECT_URI.to_owned()],
            pushed_authorization_requests: true,
            pushed_request_lifetime_secs: 60,
        }
    }
}

/// How many client assertions [`Sandbox::recent_assertions`] keeps.
pub const RECENT_ASSERTIONS: usize = 32;

/// Scopes the sandbox issues: Moneyhub's SCIM and widget scopes and a few
/// of its data scopes.
pub const SUPPORTED_SCOPES: &[&str] = &[
    "scim_user:read",
    "scim_user:write",
    "widget_authentication",
    "accounts:read",
    "accounts_details:read",
    "transactions:read:all",
    "categories:read",
    "user:read",
    "user:delete",
];

struct State {
    issuer: Url,
    token_url: Url,
    /// Replaced by [`Sandbox::rotate_signing_key`].
    signing_key: RwLock<Arc<SigningKey>>,
    clients: HashMap<String, JwkSet>,
    moneykit_clients: HashMap<String, String>,
    options: Mutex<SandboxOptions>,
    users: Mutex<HashMap<String, ScimUser>>,
    /// The `userName` of each user, lowercased: RFC 7643 §4.1.1 makes it
    /// unique and case-insensitive. Locked after `users`.
    user_names: Mutex<HashMap<String, String>>,
    /// Assertion `jti`s seen, with their expiry, to reject replays.
    seen_jtis: Mutex<HashMap<String, i64>>,
    /// The last few client assertions and request objects received, so
    /// tests can look for them where they must not be (logs).
    recent_assertions: Mutex<VecDeque<String>>,
    codes: Mutex<HashMap<String, oidc::AuthorizationCode>>,
    /// Pushed authorization requests by `request_uri`, each usable once.
    pushed_requests: Mutex<HashMap<String, oidc::PushedRequest>>,
    par_requests: AtomicU64,
    /// Codes already exchanged: the grant each started, and until when it is
    /// remembered, so a second use revokes what the first one issued.
    used_codes: Mutex<HashMap<String, oidc::UsedCode>>,
    refresh_tokens: Mutex<HashMap<String, oidc::RefreshGrant>>,
    faults: Mutex<HashMap<Endpoint, VecDeque<Fault>>>,
    id_token_faults: Mutex<VecDeque<IdTokenFault>>,
    token_requests: AtomicU64,
    jwks_requests: AtomicU64,
    /// `Cache-Control: max-age` of JWKS answers, when set.
    jwks_max_age: Mutex<Option<u64>>,
    /// The `alg` the JWKS states for the signing key, when not its own.
    jwks_stated_alg: Mutex<Option<&'static str>>,
    scim_requests: AtomicU64,
    moneykit_requests: AtomicU64,
    /// `traceparent` and `baggage` headers received, by name, to check
    /// trace propagation.
    trace_headers: Mutex<Vec<(&'static str, String)>>,
    /// Each user's bank connections, by user id. Locked after `users`.
    connections: Mutex<HashMap<String, Vec<ConnectionBody>>>,
    users_requests: AtomicU64,
    revocation_requests: AtomicU64,
    /// The `jti` of every access token revoked (RFC 7009); the SCIM and
    /// users endpoints refuse them.
    revoked_access_tokens: Mutex<HashSet<String>>,
}

impl State {
    fn next_fault(&self, endpoint: Endpoint) -> Option<Fault> {
        self.faults
            .lock()
            .expect("fault queue lock")
            .get_mut(&endpoint)
            .and_then(VecDeque::pop_front)
    }

    fn record_trace_headers(&self, headers: &axum::http::HeaderMap) {
        for name in ["traceparent", "baggage"] {
            if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
                self.trace_headers
                    .lock()
                    .expect("trace headers lock")
                    .push((name, value.to_owned()));
            }
        }
    }

    /// See [`Sandbox::add_connection`].
    fn add_connection(&self, user_id: &str, connection: ConnectionBody) -> bool {
        let users = self.users.lock().expect("users lock");
        if !users.contains_key(user_id) {
            return false;
        }
        self.connections
            .lock()
            .expect("connections lock")
            .entry(user_id.to_owned())
            .or_default()
            .push(connection);
        true
    }

    /// Keeps a client assertion or request object for [`Sandbox::recent_assertions`].
    fn record_signed(&self, jwt: &str) {
        let mut recent = self.recent_assertions.lock().expect("assertions lock");
        if recent.len() == RECENT_ASSERTIONS {
            recent.pop_front();
        }
        recent.push_back(jwt.to_owned());
    }

    fn signing_key(&self) -> Arc<SigningKey> {
        self.signing_key.read().expect("signing key lock").clone()
    }

    /// Deletes a user with everything that hangs off them: their userName,
    /// connections and refresh tokens. False when there was no such user.
    fn remove_user(&self, id: &str) -> bool {
        let mut users = self.users.lock().expect("users lock");
        if users.remove(id).is_none() {
            return false;
        }
        self.user_names
            .lock()
            .expect("user names lock")
            .retain(|_, user| user != id);
        self.connections
            .lock()
            .expect("connections lock")
            .remove(id);
        drop(users);
        oidc::revoke_user(self, id);
        true
    }
}

/// A running sandbox; stops when dropped.
pub struct Sandbox {
    base_url: Url,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Sandbox {
    /// Starts the sandbox on `addr` (use port 0 for any free port).
    pub async fn start(options: SandboxOptions, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let base_url: Url = format!("http://{}/", listener.local_addr()?)
            .parse()
            .expect("a socket address makes a valid URL");
        let issuer = base_url.join("oidc").expect("valid issuer URL");
        let signing_key = new_signing_key()?;
        let state = Arc::new(State {
            token_url: base_url.join("oidc/token").expect("valid token URL"),
            issuer,
            signing_key: RwLock::new(Arc::new(signing_key)),
            clients: options
                .clients
                .iter()
                .map(|c| (c.client_id.clone(), c.jwks.clone()))
                .collect(),
            moneykit_clients: options
                .moneykit_clients
                .iter()
                .map(|c| (c.client_id.clone(), c.client_secret.clone()))
                .collect(),
            options: Mutex::new(options),
            users: Mutex::default(),
            user_names: Mutex::default(),
            recent_assertions: Mutex::default(),
            seen_jtis: Mutex::default(),
            codes: Mutex::default(),
            pushed_requests: Mutex::default(),
            par_requests: AtomicU64::new(0),
            used_codes: Mutex::default(),
            refresh_tokens: Mutex::default(),
            faults: Mutex::default(),
            id_token_faults: Mutex::default(),
            token_requests: AtomicU64::new(0),
            jwks_requests: AtomicU64::new(0),
            jwks_max_age: Mutex::default(),
            jwks_stated_alg: Mutex::default(),
            scim_requests: AtomicU64::new(0),
            moneykit_requests: AtomicU64::new(0),
            trace_headers: Mutex::default(),
            connections: Mutex::default(),
            users_requests: AtomicU64::new(0),
            revocation_requests: AtomicU64::new(0),
            revoked_access_tokens: Mutex::default(),
        });
        let app = Router::new()
            .route(
                "/oidc/.well-known/openid-configuration",
                get(oidc::discovery),
            )
            .route("/oidc/certs", get(oidc::jwks))
            .route("/oidc/token", post(oidc::token))
            .route("/oidc/auth", get(oidc::authorize))
            .route("/oidc/request", post(oidc::pushed_authorization_request))
            .route("/moneykit/auth/token", post(moneykit::token))
            .route("/scim/users", post(scim::create_user).get(scim::list_users))
            .route(
                "/scim/users/{id}",
                get(scim::get_user).delete(scim::delete_user),
            )
            .route(
                "/users/{id}",
                get(users::get_user).delete(users::delete_user),
            )
            .route("/users/{id}/connections", get(users::connections))
            .route(
                "/users/{id}/connection/{connection_id}",
                delete(users::delete_connection),
            )
            .route("/oidc/revoke", post(oidc::revoke))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "sandbox provider stopped");
            }
        });
        tracing::warn!(%base_url, "sandbox provider running: NOT FOR PRODUCTION");
        Ok(Self {
            base_url,
            state,
            server,
        })
    }

    /// The OpenID issuer, `{base}/oidc`, as Moneyhub's is `…/oidc`.
    pub fn issuer(&self) -> Url {
        self.state.issuer.clone()
    }

    /// The sandbox's root URL.
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// MoneyKit's API base at this sandbox, `{base}/moneykit/`.
    pub fn moneykit_url(&self) -> Url {
        self.base_url.join("moneykit/").expect("valid MoneyKit URL")
    }

    /// The authorization endpoint, where tests obtain codes without a browser.
    pub fn authorization_url(&self) -> Url {
        self.base_url
            .join("oidc/auth")
            .expect("valid authorization URL")
    }

    /// The public keys access and ID tokens are signed with.
    pub fn jwks(&self) -> JwkSet {
        client_jwks(&self.state.signing_key())
    }

    /// Replaces the signing key (with a new `kid`); the JWKS serves only the new one.
    pub fn rotate_signing_key(&self) -> std::io::Result<()> {
        *self.state.signing_key.write().expect("signing key lock") = Arc::new(new_signing_key()?);
        Ok(())
    }

    /// The W3C `traceparent` headers the token, SCIM and users endpoints received.
    pub fn traceparents(&self) -> Vec<String> {
        self.trace_headers("traceparent")
    }

    /// The W3C `baggage` headers those endpoints received.
    pub fn baggage_headers(&self) -> Vec<String> {
        self.trace_headers("baggage")
    }

    fn trace_headers(&self, name: &str) -> Vec<String> {
        self.state
            .trace_headers
            .lock()
            .expect("trace headers lock")
            .iter()
            .filter(|(received, _)| *received == name)
            .map(|(_, value)| value.clone())
            .collect()
    }

    /// Requests received at MoneyKit's token endpoint.
    pub fn moneykit_requests(&self) -> u64 {
        self.state.moneykit_requests.load(Ordering::SeqCst)
    }

    /// Requests received at the token endpoint, failed ones included.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Requests received at the pushed authorization request endpoint.
    pub fn par_requests(&self) -> u64 {
        self.state.par_requests.load(Ordering::SeqCst)
    }

    /// Requests received at the JWKS endpoint.
    pub fn jwks_requests(&self) -> u64 {
        self.state.jwks_requests.load(Ordering::SeqCst)
    }

    /// Makes JWKS answers carry `Cache-Control: max-age=<seconds>` (none: no header).
    pub fn set_jwks_max_age(&self, seconds: Option<u64>) {
        *self.state.jwks_max_age.lock().expect("jwks lock") = seconds;
    }

    /// Makes the JWKS state `alg` for the signing key, which still signs with its own.
    pub fn misstate_jwks_alg(&self, alg: &'static str) {
        *self.state.jwks_stated_alg.lock().expect("jwks lock") = Some(alg);
    }

    /// Requests received at the SCIM endpoints, failed ones included.
    pub fn scim_requests(&self) -> u64 {
        self.state.scim_requests.load(Ordering::SeqCst)
    }

    /// Registers `count` users directly, as if created over SCIM, and
    /// returns their ids: a load test needs many users, not many SCIM calls.
    pub fn seed_users(&self, count: usize) -> Vec<String> {
        let mut users = self.state.users.lock().expect("users lock");
        (0..count)
            .map(|_| {
                let id = oidc::random_id();
                let user = ScimUser {
                    id: id.clone(),
                    external_id: format!("seeded-{id}"),
                    meta: Default::default(),
                    name: Default::default(),
                    emails: Vec::new(),
                    subtenant: None,
                };
                users.insert(id.clone(), user);
                id
            })
            .collect()
    }

    /// Gives `user_id` a bank connection, as connecting a bank through the
    /// authorization endpoint does; false (and nothing stored) when there
    /// is no such user.
    pub fn add_connection(&self, user_id: &str, connection: ConnectionBody) -> bool {
        self.state.add_connection(user_id, connection)
    }

    /// The ids of `user_id`'s connections.
    pub fn connection_ids(&self, user_id: &str) -> Vec<String> {
        self.state
            .connections
            .lock()
            .expect("connections lock")
            .get(user_id)
            .map(|list| list.iter().map(|c| c.id.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether the sandbox holds this user.
    pub fn has_user(&self, user_id: &str) -> bool {
        self.state
            .users
            .lock()
            .expect("users lock")
            .contains_key(user_id)
    }

    /// Requests received at the users API, failed ones included.
    pub fn users_requests(&self) -> u64 {
        self.state.users_requests.load(Ordering::SeqCst)
    }

    /// Requests received at the revocation endpoint, failed ones included.
    pub fn revocation_requests(&self) -> u64 {
        self.state.revocation_requests.load(Ordering::SeqCst)
    }

    /// The last client assertions and request objects received (at most
    /// [`RECENT_ASSERTIONS`]).
    pub fn recent_assertions(&self) -> Vec<String> {
        let recent = self
            .state
            .recent_assertions
            .lock()
            .expect("assertions lock");
        recent.iter().cloned().collect()
    }

    /// Users the sandbox holds.
    pub fn user_count(&self) -> usize {
        self.state.users.lock().expect("users lock").len()
    }

    /// Makes the next request to `endpoint` fail with `fault`; queued faults
    /// are served in order, one per request.
    pub fn fail_next(&self, endpoint: Endpoint, fault: Fault) {
        self.state
            .faults
            .lock()
            .expect("fault queue lock")
            .entry(endpoint)
            .or_default()
            .push_back(fault);
    }

    /// Drops every fault still queued for `endpoint`: the outage is over.
    pub fn clear_faults(&self, endpoint: Endpoint) {
        self.state
            .faults
            .lock()
            .expect("fault queue lock")
            .remove(&endpoint);
    }

    /// Skews the clock the sandbox issues tokens by (seconds ahead; negative: behind).
    pub fn set_clock_skew(&self, seconds: i64) {
        self.state
            .options
            .lock()
            .expect("options lock")
            .clock_skew_secs = seconds;
    }

    /// Builds `fault` into the next ID token issued.
    pub fn fault_next_id_token(&self, fault: IdTokenFault) {
        self.state
            .id_token_faults
            .lock()
            .expect("fault queue lock")
            .push_back(fault);
    }

    /// Switches which expiry field token responses carry.
    pub fn set_expiry_field(&self, field: ExpiryField) {
        self.state
            .options
            .lock()
            .expect("options lock")
            .expiry_field = field;
    }

    /// Sets the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state
            .options
            .lock()
            .expect("options lock")
            .token_lifetime = lifetime;
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn new_signing_key() -> std::io::Result<SigningKey> {
    SigningKey::generate(SigningAlgorithm::ES256)
        .map(|(key, _)| key)
        .map_err(|e: KeyError| std::io::Error::other(e.to_string()))
}

/// An error body in the endpoint's own dialect: RFC 6749 or MoneyKit's.
fn error_body(endpoint: Endpoint, code: &str, message: &str) -> serde_json::Value {
    match endpoint {
        Endpoint::Moneykit => serde_json::json!({
            "error_code": code,
            "error_message": message,
            "documentation_url": "https://docs.moneykit.com/",
        }),
        _ => serde_json::json!({"error": code, "error_description": message}),
    }
}

/// Serves a fault, or `None` to go on normally (after any stall).
async fn serve_fault(state: &State, endpoint: Endpoint) -> Option<Response> {
    let fault = state.next_fault(endpoint)?;
    let json = |status: u16, body: serde_json::Value| {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(body)).into_response()
    };
    Some(match fault {
        Fault::OAuth { status, error } => json(
            status,
            error_body(endpoint, error, "injected by the sandbox"),
        ),
        Fault::Status(status) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "injected failure",
        )
            .into_response(),
        Fault::RateLimited { retry_after_secs } => {
            let code = match endpoint {
                Endpoint::Moneykit => "api_error.rate_limit_exceeded",
                _ => "rate_limited",
            };
            let mut response = json(429, error_body(endpoint, code, "slow down"));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            response
        }
        Fault::Stall(duration) => {
            tokio::time::sleep(duration).await;
            return None;
        }
        Fault::Garbage => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"access_token": "trunc"#,
        )
            .into_response(),
        Fault::Oversized(bytes) => {
            let padding = bytes.saturating_sub(32);
            let body = format!(r#"{{"access_token": "{}"}}"#, "a".repeat(padding));
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Fault::Json { status, body } => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
    })
}

/// The public JWK of `key`, for registering a client at the sandbox.
pub fn client_jwks(key: &SigningKey) -> JwkSet {
    JwkSet {
        keys: vec![key.public_jwk()],
    }
}
