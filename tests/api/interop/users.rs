//! CreateUser and GetUser through the real `bankauth serve` binary against
//! the independent SCIM peer (scim2-server), which trusts only the access
//! tokens of the token issuer and checks their scope.
//!
//! The token issuer is the independent OpenID provider peer (oidc-provider),
//! so neither side of these exchanges is code of ours.

use std::path::{Path, PathBuf};

use bankauth::proto::v1::{self as pb};
use tonic::Code;

use super::scim_peer::ScimPeer;
use crate::helpers::{Bankauth, new_user};

/// The issuer of the access tokens bankauth presents and the SCIM peer
/// trusts: the provider bankauth gets its tokens from.
pub struct TokenIssuer {
    /// The `iss` of its tokens, and the base of its discovery.
    pub issuer: String,
    pub jwks_url: String,
    pub client_id: String,
    /// bankauth's `private_key_jwt` key, registered with the issuer.
    pub private_key_file: PathBuf,
    /// Keeps the issuer running.
    _running: Box<dyn std::any::Any + Send + Sync>,
}

/// The token issuer of these tests: the independent OpenID provider, so
/// neither side of the SCIM exchange is ours.
async fn token_issuer(dir: &Path) -> TokenIssuer {
    let peer = super::oidc_peer::OidcPeer::start();
    let issuer = peer.issuer();
    TokenIssuer {
        jwks_url: discover_jwks_url(&issuer).await,
        client_id: super::oidc_peer::CLIENT_ID.to_owned(),
        private_key_file: super::oidc_peer::write_key(dir, &peer),
        issuer,
        _running: Box::new(peer),
    }
}

/// `jwks_uri` from the issuer's OpenID discovery document, whose `issuer`
/// must be the issuer itself (OpenID Connect Discovery §4.3).
async fn discover_jwks_url(issuer: &str) -> String {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    let document: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(document["issuer"], issuer, "discovery at {url}");
    document["jwks_uri"]
        .as_str()
        .unwrap_or_else(|| panic!("no jwks_uri in {document}"))
        .to_owned()
}

/// Starts the binary with one Moneyhub provider: tokens from `issuer`,
/// users at `scim_url`.
async fn start_bankauth(dir: &Path, issuer: &TokenIssuer, scim_url: &str) -> Bankauth {
    start_bankauth_of_kind(dir, issuer, scim_url, r#"kind = "moneyhub""#).await
}

/// As [`start_bankauth`], with the provider's `kind` (and the keys it
/// needs) written as `kind`.
async fn start_bankauth_of_kind(
    dir: &Path,
    issuer: &TokenIssuer,
    scim_url: &str,
    kind: &str,
) -> Bankauth {
    let config = dir.join(format!("bankauth-{}.toml", crate::helpers::free_port()));
    std::fs::write(
        &config,
        format!(
            r#"
            [server]
            listen_addr = "127.0.0.1:0"
            allow_plaintext = true

            [access]
            allow_anonymous = true

            [providers.moneyhub]
            {kind}
            issuer = "{issuer}"
            client_id = "{client_id}"
            private_key_file = "{key}"
            scim_url = "{scim_url}"
            data_scopes = ["accounts:read"]
            application_scopes = ["scim_user:read"]
            "#,
            issuer = issuer.issuer,
            client_id = issuer.client_id,
            key = issuer.private_key_file.display(),
        ),
    )
    .unwrap();
    Bankauth::start(&config).await
}

/// bankauth (the real binary) against the SCIM peer, both trusting one
/// token issuer.
struct Stack {
    bankauth: Bankauth,
    peer: ScimPeer,
    issuer: TokenIssuer,
    dir: tempfile::TempDir,
}

impl Stack {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let issuer = token_issuer(dir.path()).await;
        Self::with_issuer(issuer, dir).await
    }

    /// The peer trusts `issuer`'s tokens, checked against its JWKS URL.
    async fn with_issuer(issuer: TokenIssuer, dir: tempfile::TempDir) -> Self {
        let peer = ScimPeer::start(&issuer.issuer, &issuer.jwks_url);
        Self::assemble(issuer, dir, peer).await
    }

    /// bankauth getting its tokens from `issuer`, its users from `peer`.
    async fn assemble(issuer: TokenIssuer, dir: tempfile::TempDir, peer: ScimPeer) -> Self {
        let bankauth = start_bankauth(dir.path(), &issuer, &peer.base_url()).await;
        Self {
            bankauth,
            peer,
            issuer,
            dir,
        }
    }

    /// Another replica of bankauth, with its own cache, on the same peer.
    async fn another_bankauth(&self) -> Bankauth {
        start_bankauth(self.dir.path(), &self.issuer, &self.peer.base_url()).await
    }

    /// Both sides' logs, for a failure message.
    fn explain(&self) -> String {
        format!(
            "{}\n{}\n---",
            self.peer.log_tail(),
            self.bankauth.log_tail()
        )
    }

    /// The answer of an RPC expected to succeed; else a panic showing
    /// bankauth's error and both logs.
    fn ok<T>(&self, what: &str, result: Result<tonic::Response<T>, tonic::Status>) -> T {
        match result {
            Ok(response) => response.into_inner(),
            Err(status) => panic!("{what} failed: {}\n{}", describe(&status), self.explain()),
        }
    }

    /// The error of an RPC expected to fail; else a panic with both logs.
    fn err<T: std::fmt::Debug>(
        &self,
        what: &str,
        result: Result<tonic::Response<T>, tonic::Status>,
    ) -> tonic::Status {
        match result {
            Ok(response) => panic!(
                "{what} succeeded, returning {:?}\n{}",
                response.into_inner(),
                self.explain()
            ),
            Err(status) => status,
        }
    }

    fn check(&self, holds: bool, what: impl std::fmt::Display) {
        if !holds {
            panic!("{what}\n{}", self.explain());
        }
    }

    fn check_eq<T: PartialEq + std::fmt::Debug>(&self, left: T, right: T, what: &str) {
        if left != right {
            panic!("{what}: {left:?} != {right:?}\n{}", self.explain());
        }
    }

    /// bankauth's error: its code, message and ErrorInfo (reason, metadata).
    fn check_error(&self, status: &tonic::Status, code: Code, reason: &str) -> ErrorInfo {
        let info = error_info(status);
        if status.code() != code || info.reason != reason {
            panic!(
                "expected {code:?} {reason}, got {}\n{}",
                describe(status),
                self.explain()
            );
        }
        info
    }

    async fn create(&mut self, request: pb::CreateUserRequest) -> pb::User {
        let result = self.bankauth.client.create_user(request).await;
        self.ok("CreateUser", result).user.expect("a user")
    }

    async fn get(
        &mut self,
        user_id: &str,
    ) -> Result<tonic::Response<pb::GetUserResponse>, tonic::Status> {
        self.bankauth
            .client
            .get_user(pb::GetUserRequest {
                provider: String::new(),
                user_id: user_id.to_owned(),
            })
            .await
    }

    /// An application token with `scim_user:read`, issued to bankauth by the
    /// token issuer (through IssueDataToken), for calling the peer directly.
    async fn read_token(&mut self) -> String {
        let result = self
            .bankauth
            .client
            .issue_data_token(pb::IssueDataTokenRequest {
                provider: String::new(),
                user_id: String::new(),
                scopes: vec!["scim_user:read".into()],
                force_refresh: false,
            })
            .await;
        self.ok("IssueDataToken (scim_user:read)", result)
            .token
            .expect("a token")
            .access_token
    }

    /// A request straight to the peer, `path` under its SCIM base.
    async fn peer_call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = reqwest::Client::new().request(
            method,
            format!("{}/{}", self.peer.base_url(), path.trim_start_matches('/')),
        );
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/scim+json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        let json = serde_json::from_slice(&body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
        });
        (status, json)
    }
}

struct ErrorInfo {
    reason: String,
    metadata: std::collections::HashMap<String, String>,
}

fn error_info(status: &tonic::Status) -> ErrorInfo {
    use tonic_types::StatusExt;
    let info = status.get_error_details().error_info().cloned();
    ErrorInfo {
        reason: info.as_ref().map(|i| i.reason.clone()).unwrap_or_default(),
        metadata: info.map(|i| i.metadata).unwrap_or_default(),
    }
}

fn describe(status: &tonic::Status) -> String {
    let info = error_info(status);
    format!(
        "{:?}: {} (reason {:?}, metadata {:?})",
        status.code(),
        status.message(),
        info.reason,
        info.metadata
    )
}

/// The claims of a JWT, unverified (the peer verifies; this only reads).
fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn with_subtenant(external_id: &str) -> pb::CreateUserRequest {
    let mut request = new_user(external_id);
    request.subtenant = Some(pb::Subtenant {
        name: "Branch".into(),
        provider_id: "sub-7".into(),
    });
    request
}

#[tokio::test]
async fn a_user_created_at_the_peer_is_fetched_back_with_identical_fields() {
    let mut stack = Stack::start().await;
    let created = stack.create(with_subtenant("customer-1")).await;

    stack.check_eq(created.external_id.as_str(), "customer-1", "externalId");
    let name = created.name.clone().unwrap_or_default();
    stack.check_eq(
        (name.given_name.as_str(), name.family_name.as_str()),
        ("Alex", "Taylor"),
        "name",
    );
    stack.check_eq(created.emails.len(), 1, "emails");
    stack.check_eq(
        (created.emails[0].value.as_str(), created.emails[0].primary),
        ("customer-1@example.com", true),
        "email",
    );
    stack.check_eq(
        created.subtenant.clone(),
        Some(pb::Subtenant {
            name: "Branch".into(),
            provider_id: "sub-7".into(),
        }),
        "subtenant",
    );
    // The peer's meta.created parsed: within a minute of now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let created_at = created.create_time.map(|t| t.seconds);
    stack.check(
        created_at.is_some_and(|t| (now - t).abs() < 60),
        format_args!("create_time {created_at:?} is not about now ({now})"),
    );

    let fetched = stack.get(&created.id).await;
    let fetched = stack.ok("GetUser", fetched).user.expect("a user");
    stack.check_eq(&fetched, &created, "GetUser returns what CreateUser did");

    // What the peer stored, read straight from it: bankauth's request as an
    // RFC 7643 server understood it.
    let token = stack.read_token().await;
    let (status, stored) = stack
        .peer_call(
            reqwest::Method::GET,
            &format!("users/{}", created.id),
            Some(&token),
            None,
        )
        .await;
    stack.check_eq(status, 200, "the peer's GET of the user");
    stack.check_eq(
        &stored["userName"],
        &serde_json::json!("customer-1"),
        "userName",
    );
    stack.check_eq(
        &stored["externalId"],
        &serde_json::json!("customer-1"),
        "externalId",
    );
    stack.check_eq(
        &stored[bankauth::provider::scim::SUBTENANT_SCHEMA],
        &serde_json::json!({"name": "Branch", "providerId": "sub-7"}),
        "the subtenant extension",
    );

    let stats = stack.peer.requests().await;
    stack.check_eq(
        (stats.count("POST"), stats.users),
        (1, 1),
        "one POST, one user at the peer",
    );
}

#[tokio::test]
async fn a_retried_create_returns_the_same_user_and_the_peer_holds_one() {
    let mut stack = Stack::start().await;
    let first = stack.create(new_user("customer-1")).await;
    let second = stack.create(new_user("customer-1")).await;
    stack.check_eq(&second, &first, "the retry's user");

    let stats = stack.peer.requests().await;
    // The retry read the remembered user back instead of posting again.
    stack.check_eq(
        (stats.count("POST"), stats.count("GET"), stats.users),
        (1, 1, 1),
        "POSTs, GETs and users at the peer",
    );
}

#[tokio::test]
async fn an_external_id_taken_at_the_peer_is_already_exists() {
    let mut stack = Stack::start().await;
    stack.create(new_user("customer-1")).await;
    // Another replica, with its own cache: only the peer knows the user,
    // whose details differ from these.
    let mut other = stack.another_bankauth().await;
    let mut request = new_user("customer-1");
    request.name.as_mut().unwrap().given_name = "Sam".into();
    let result = other.client.create_user(request).await;
    let status = stack.err("CreateUser of a taken externalId", result);
    let info = stack.check_error(&status, Code::AlreadyExists, "USER_ALREADY_EXISTS");
    // RFC 7644 §3.3: 409 with scimType "uniqueness".
    stack.check_eq(
        info.metadata.get("upstream_error").map(String::as_str),
        Some("uniqueness"),
        "upstream_error",
    );
    let stats = stack.peer.requests().await;
    stack.check_eq(
        (stats.statuses.get("409").copied(), stats.users),
        (Some(1), 1),
        "the peer's 409 and users",
    );
}

#[tokio::test]
async fn an_unknown_user_is_not_found() {
    let mut stack = Stack::start().await;
    let result = stack.get("000000000000000000000000").await;
    let status = stack.err("GetUser of an unknown id", result);
    stack.check_error(&status, Code::NotFound, "USER_NOT_FOUND");
    let stats = stack.peer.requests().await;
    stack.check_eq(
        stats.statuses.get("404").copied(),
        Some(1),
        "the peer answered 404",
    );
}

#[tokio::test]
async fn the_peer_accepts_only_the_issuers_tokens_with_the_needed_scope() {
    let mut stack = Stack::start().await;
    let token = stack.read_token().await;
    // What the peer relies on: a JWT of the issuer carrying the scope.
    let claims = claims(&token);
    stack.check_eq(
        &claims["iss"],
        &serde_json::json!(stack.issuer.issuer),
        "the token's iss",
    );
    stack.check(
        claims["scope"]
            .as_str()
            .is_some_and(|scope| scope.split(' ').any(|s| s == "scim_user:read")),
        format_args!("the token's scope {} lacks scim_user:read", claims["scope"]),
    );

    // A read token reads…
    let (status, body) = stack
        .peer_call(
            reqwest::Method::GET,
            "users/000000000000000000000000",
            Some(&token),
            None,
        )
        .await;
    stack.check_eq(status, 404, "a read with scim_user:read");
    stack.check_eq(
        &body["schemas"],
        &serde_json::json!(["urn:ietf:params:scim:api:messages:2.0:Error"]),
        "a SCIM error",
    );

    // …but cannot create: 403 with a SCIM error, and nothing stored.
    let user = serde_json::json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "customer-1",
        "externalId": "customer-1",
    });
    let (status, body) = stack
        .peer_call(
            reqwest::Method::POST,
            "users",
            Some(&token),
            Some(user.clone()),
        )
        .await;
    stack.check_eq(status, 403, "a create with scim_user:read");
    stack.check_eq(
        &body["schemas"],
        &serde_json::json!(["urn:ietf:params:scim:api:messages:2.0:Error"]),
        "a SCIM error",
    );
    stack.check(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("scim_user:write")),
        format_args!("the 403 names the missing scope: {body}"),
    );

    // No token, a forged one, and one from another issuer: 401.
    let (status, _) = stack
        .peer_call(reqwest::Method::POST, "users", None, Some(user.clone()))
        .await;
    stack.check_eq(status, 401, "no token");
    let mut forged = token.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let (status, _) = stack
        .peer_call(reqwest::Method::GET, "users/x", Some(&forged), None)
        .await;
    stack.check_eq(status, 401, "a token with a broken signature");
    // The sandbox: another issuer and signing key.
    let mut stranger = crate::helpers::spawn_app().await;
    let strange_token = stranger
        .client
        .issue_data_token(pb::IssueDataTokenRequest {
            provider: String::new(),
            user_id: String::new(),
            scopes: vec!["scim_user:read".into()],
            force_refresh: false,
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .expect("a token")
        .access_token;
    let (status, _) = stack
        .peer_call(reqwest::Method::GET, "users/x", Some(&strange_token), None)
        .await;
    stack.check_eq(status, 401, "a token of another issuer");

    let stats = stack.peer.requests().await;
    stack.check_eq(stats.users, 0, "users at the peer");
}

#[tokio::test]
async fn hostile_ids_never_reach_another_path_at_the_peer() {
    let mut stack = Stack::start().await;
    for hostile in [
        ".", "..", "a/b", "../users", "%2e%2e", "a?b", "a#b", "a b", ".scim", "x.scim", "x.SCIM",
    ] {
        let result = stack.get(hostile).await;
        let status = stack.err(&format!("GetUser({hostile:?})"), result);
        stack.check_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    }
    let stats = stack.peer.requests().await;
    stack.check_eq(stats.total(), 0, "requests that reached the peer");
}

#[tokio::test]
async fn external_ids_differing_only_in_case_collide_at_an_rfc_server() {
    // bankauth sends userName = externalId; RFC 7643 §4.1.1 makes userName
    // unique and case-insensitive, so the peer refuses the second.
    let mut stack = Stack::start().await;
    stack.create(new_user("customer-1")).await;
    let result = stack
        .bankauth
        .client
        .create_user(new_user("Customer-1"))
        .await;
    let status = stack.err("CreateUser of Customer-1 after customer-1", result);
    let info = stack.check_error(&status, Code::AlreadyExists, "USER_ALREADY_EXISTS");
    stack.check_eq(
        info.metadata.get("upstream_error").map(String::as_str),
        Some("uniqueness"),
        "upstream_error",
    );
    stack.check_eq(stack.peer.requests().await.users, 1, "users at the peer");
}

#[tokio::test]
async fn a_peer_refusing_bankauths_tokens_is_failed_precondition() {
    // The peer trusts another issuer (with the same keys): bankauth's tokens
    // are refused with 401, which no retry would fix.
    let dir = tempfile::tempdir().unwrap();
    let issuer = token_issuer(dir.path()).await;
    let peer = ScimPeer::start("https://identity.elsewhere.example/oidc", &issuer.jwks_url);
    let mut stack = Stack::assemble(issuer, dir, peer).await;

    let result = stack
        .bankauth
        .client
        .create_user(new_user("customer-1"))
        .await;
    let status = stack.err("CreateUser with tokens the peer refuses", result);
    let info = stack.check_error(
        &status,
        Code::FailedPrecondition,
        "UPSTREAM_REJECTED_CREDENTIALS",
    );
    stack.check_eq(
        info.metadata.get("upstream_error").map(String::as_str),
        Some("http_401"),
        "upstream_error",
    );
    let result = stack.get("000000000000000000000000").await;
    let status = stack.err("GetUser with tokens the peer refuses", result);
    stack.check_error(
        &status,
        Code::FailedPrecondition,
        "UPSTREAM_REJECTED_CREDENTIALS",
    );
    let stats = stack.peer.requests().await;
    // Neither request was retried.
    stack.check_eq(
        (
            stats.statuses.get("401").copied(),
            stats.total(),
            stats.users,
        ),
        (Some(2), 2, 0),
        "the peer's 401s, requests and users",
    );
}

/// A provider with SCIM and no users API: an OAuth 2.0 provider set up as
/// Moneyhub's identity service is, without its `/users`.
const SCIM_ONLY: &str = r#"kind = "oauth2"
            client_auth = "private_key_jwt"
            send_sub = true
            expiry_field = "auto""#;

impl Stack {
    /// bankauth against the peer with a SCIM-only provider: DeleteUser
    /// goes to SCIM.
    async fn start_scim_only() -> Self {
        let mut stack = Self::start().await;
        stack.bankauth = start_bankauth_of_kind(
            stack.dir.path(),
            &stack.issuer,
            &stack.peer.base_url(),
            SCIM_ONLY,
        )
        .await;
        stack
    }

    async fn list(
        &mut self,
        page_size: i32,
        page_token: &str,
        external_id: &str,
    ) -> pb::ListUsersResponse {
        let result = self
            .bankauth
            .client
            .list_users(pb::ListUsersRequest {
                provider: String::new(),
                page_size,
                page_token: page_token.into(),
                external_id: external_id.into(),
            })
            .await;
        self.ok("ListUsers", result)
    }
}

#[tokio::test]
async fn list_users_pages_through_the_peers_users_each_once() {
    let mut stack = Stack::start().await;
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(stack.create(new_user(&format!("customer-{n}"))).await.id);
    }
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = stack.list(2, &token, "").await;
        pages += 1;
        stack.check(
            page.users.len() <= 2,
            format_args!("page of {}", page.users.len()),
        );
        seen.extend(page.users.into_iter().map(|user| user.id));
        token = page.next_page_token;
        if token.is_empty() || pages > 5 {
            break;
        }
    }
    stack.check_eq(pages, 3, "pages of 2 for 5 users");
    created.sort();
    seen.sort();
    stack.check_eq(seen, created, "every user once");
}

#[tokio::test]
async fn the_peer_finds_an_external_id_and_a_hostile_one_matches_no_other() {
    let mut stack = Stack::start().await;
    let plain = stack.create(new_user("customer-1")).await;
    stack.create(new_user("customer-2")).await;
    let hostile = r#"nobody" or externalId eq "customer-1"#;
    let mut request = new_user("x");
    request.external_id = hostile.into();
    let hostile_user = stack.create(request).await;
    let quoted = r#"a\"b"#;
    for (external_id, expected) in [
        ("customer-1", vec![plain.id.clone()]),
        (hostile, vec![hostile_user.id.clone()]),
        (r#"customer-1" or "1" eq "1"#, vec![]),
        (quoted, vec![]),
        ("nobody", vec![]),
    ] {
        let page = stack.list(0, "", external_id).await;
        let ids: Vec<String> = page.users.into_iter().map(|user| user.id).collect();
        stack.check_eq(ids, expected, external_id);
    }
}

#[tokio::test]
async fn delete_user_deletes_at_the_peer_over_scim() {
    let mut stack = Stack::start_scim_only().await;
    let user = stack.create(new_user("customer-1")).await;
    let result = stack
        .bankauth
        .client
        .delete_user(pb::DeleteUserRequest {
            provider: String::new(),
            user_id: user.id.clone(),
        })
        .await;
    stack.ok("DeleteUser", result);
    let result = stack.get(&user.id).await;
    let status = stack.err("GetUser of a deleted user", result);
    stack.check_error(&status, Code::NotFound, "USER_NOT_FOUND");
    let stats = stack.peer.requests().await;
    stack.check_eq(
        (stats.count("DELETE"), stats.users),
        (1, 0),
        "one DELETE, no users left at the peer",
    );
    // Its external id is free again, and not remembered: a new user.
    let again = stack.create(new_user("customer-1")).await;
    stack.check(again.id != user.id, "a new user");
}

#[tokio::test]
async fn a_create_retried_by_a_replica_that_never_knew_the_user_returns_it() {
    let mut stack = Stack::start().await;
    let first = stack.create(new_user("customer-1")).await;
    // A lost answer, then the retry through a replica with an empty cache:
    // the peer answers 409, and the user found by external id is the one asked for.
    let mut other = stack.another_bankauth().await;
    let result = other.client.create_user(new_user("customer-1")).await;
    let again = stack
        .ok("CreateUser retried elsewhere", result)
        .user
        .expect("a user");
    stack.check_eq(&again, &first, "the retry's user");
    let stats = stack.peer.requests().await;
    stack.check_eq(
        (stats.statuses.get("409").copied(), stats.users),
        (Some(1), 1),
        "the peer's 409 and users",
    );
}
