//! The upstream providers' keys. What each kind implies (defaults, rules)
//! is the protocol's, in `provider::kinds`; here is only what was written.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{ConfigError, resolve_secret};

/// The protocol family of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Moneyhub: `private_key_jwt`, SCIM users, user-scoped tokens, code exchange.
    Moneyhub,
    /// MoneyKit: client id and secret, application tokens only.
    Moneykit,
    /// Any OAuth 2.0 token endpoint, every knob explicit.
    Oauth2,
}

/// How bankauth authenticates to a token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// A JWT signed with our private key (RFC 7523).
    PrivateKeyJwt,
    /// Client id and secret as HTTP Basic credentials.
    ClientSecretBasic,
    /// Client id and secret as form fields.
    ClientSecretPost,
}

/// Who the client assertion's `aud` names; providers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssertionAudience {
    #[default]
    TokenEndpoint,
    Issuer,
}

/// Which field of a token response carries the expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryField {
    /// `expires_in` or `expires_at`, whichever is present (the earlier if both).
    #[default]
    Auto,
    /// Seconds from the request (RFC 6749).
    ExpiresIn,
    /// Epoch seconds (as Moneyhub's examples show).
    ExpiresAt,
}

/// The JWS algorithms bankauth signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    #[default]
    RS256,
    PS256,
    ES256,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::PS256 => "PS256",
            Self::ES256 => "ES256",
        }
    }
}

/// One upstream provider. Which keys apply depends on `kind`; each kind's
/// defaults follow its provider's documentation (see `provider::kinds`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// The OpenID issuer, such as `https://identity.moneyhub.co.uk/oidc`.
    /// Without `token_url`, its discovery document supplies the token
    /// endpoint and JWKS at startup.
    pub issuer: Option<Url>,
    /// MoneyKit's API base; defaults to `https://api.moneykit.com/`.
    pub base_url: Option<Url>,
    /// The token endpoint, when not discovered.
    pub token_url: Option<Url>,
    /// The JWKS that signs ID tokens, when not discovered.
    pub jwks_url: Option<Url>,
    /// SCIM base URL; Moneyhub's defaults to the issuer's origin + `/scim`.
    pub scim_url: Option<Url>,
    /// Moneyhub's users API base (`DELETE /users/{id}`, connections);
    /// Moneyhub's defaults to the issuer's origin + `/users`.
    pub users_url: Option<Url>,
    pub client_id: String,
    /// Defaults: moneyhub `private_key_jwt`, moneykit `client_secret_basic`;
    /// required for oauth2.
    pub client_auth: Option<ClientAuthMethod>,
    /// Path of the PEM private key registered for `private_key_jwt`.
    pub private_key_file: Option<PathBuf>,
    /// Name of an environment variable holding the PEM private key.
    pub private_key_env: Option<String>,
    /// The key in memory, for the demo and tests; never read from a file.
    #[serde(skip)]
    pub private_key_pem: Option<SecretString>,
    /// The `kid` registered with the provider; defaults to the key's RFC 7638 thumbprint.
    pub key_id: Option<String>,
    #[serde(default)]
    pub signing_algorithm: SigningAlgorithm,
    #[serde(default)]
    pub assertion_audience: AssertionAudience,
    /// Path of a file holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// Name of an environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// The secret in memory, for the demo and tests; never read from a file.
    #[serde(skip)]
    pub client_secret: Option<SecretString>,
    /// Whether user tokens send `sub`. Moneyhub: yes; MoneyKit: no; required for oauth2.
    pub send_sub: Option<bool>,
    /// Which expiry field responses carry. Required for oauth2.
    pub expiry_field: Option<ExpiryField>,
    /// Scopes IssueDataToken may request for a user.
    #[serde(default)]
    pub data_scopes: Vec<String>,
    /// Scopes IssueDataToken may request with an empty `user_id`: an
    /// application token with no `sub`.
    #[serde(default)]
    pub application_scopes: Vec<String>,
    /// Lifetime assumed when the token response carries no expiry at all.
    #[serde(default = "default_token_lifetime_secs")]
    pub default_token_lifetime_secs: u64,
    /// Bound on each HTTP request to the provider.
    #[serde(default = "default_upstream_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Content type of SCIM request bodies. RFC 7644 servers accept
    /// `application/scim+json`; Moneyhub's own client sends `application/json`.
    #[serde(default = "default_scim_content_type")]
    pub scim_content_type: String,
    /// Attempts per upstream request, the first included (1: no retries).
    #[serde(default = "default_retry_max_attempts")]
    pub retry_max_attempts: u32,
    /// First backoff step; each retry doubles it, up to `retry_max_delay_ms`.
    #[serde(default = "default_retry_base_delay_ms")]
    pub retry_base_delay_ms: u64,
    #[serde(default = "default_retry_max_delay_ms")]
    pub retry_max_delay_ms: u64,
    /// Consecutive provider failures that open the circuit breaker.
    #[serde(default = "default_breaker_failure_threshold")]
    pub breaker_failure_threshold: u32,
    /// How long the breaker stays open before one probe request.
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
    /// The provider's published rate limit for this client, shared by all
    /// replicas. Defaults: moneyhub 1000, moneykit 300, oauth2 none; 0: none.
    pub rate_limit_per_minute: Option<u32>,
    /// Allows `http://` endpoints off loopback, configured or discovered. For
    /// development only: secrets and codes would cross the network in clear.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// The least time between two JWKS fetches caused by an unknown `kid`.
    #[serde(default = "default_jwks_refetch_interval_ms")]
    pub jwks_refetch_interval_ms: u64,
    /// A longer token lifetime is a misread expiry (milliseconds, say): refused.
    #[serde(default = "default_max_token_lifetime_secs")]
    pub max_token_lifetime_secs: u64,
    /// Where the provider may send a user's browser back after
    /// CreateAuthorizationUrl: callers pick one of these, never a free URL.
    /// Kept as written: compared with the caller's and sent to the provider
    /// verbatim, since providers match them as strings.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// oauth2 only: sign the authorization request as a request object
    /// (RFC 9101) with the client key, which must be this algorithm
    /// (`signing_algorithm`). Moneyhub's requests are always signed.
    pub request_object_signing_alg: Option<SigningAlgorithm>,
    /// oauth2 only: the scopes of the authorization request; default `["openid"]`.
    pub authorization_scopes: Option<Vec<String>>,
}

fn default_max_token_lifetime_secs() -> u64 {
    86_400
}

fn default_jwks_refetch_interval_ms() -> u64 {
    30_000
}

fn default_retry_max_attempts() -> u32 {
    3
}

fn default_retry_base_delay_ms() -> u64 {
    100
}

fn default_retry_max_delay_ms() -> u64 {
    2_000
}

fn default_breaker_failure_threshold() -> u32 {
    5
}

fn default_breaker_open_ms() -> u64 {
    10_000
}

fn default_token_lifetime_secs() -> u64 {
    7_200
}

fn default_upstream_timeout_ms() -> u64 {
    10_000
}

fn default_scim_content_type() -> String {
    "application/json".into()
}

impl ProviderConfig {
    /// A provider of `kind` with every optional key unset.
    pub fn new(kind: ProviderKind, client_id: impl Into<String>) -> Self {
        Self {
            kind,
            issuer: None,
            base_url: None,
            token_url: None,
            jwks_url: None,
            scim_url: None,
            users_url: None,
            client_id: client_id.into(),
            client_auth: None,
            private_key_file: None,
            private_key_env: None,
            private_key_pem: None,
            key_id: None,
            signing_algorithm: SigningAlgorithm::default(),
            assertion_audience: AssertionAudience::default(),
            client_secret_file: None,
            client_secret_env: None,
            client_secret: None,
            send_sub: None,
            expiry_field: None,
            data_scopes: Vec::new(),
            application_scopes: Vec::new(),
            default_token_lifetime_secs: default_token_lifetime_secs(),
            request_timeout_ms: default_upstream_timeout_ms(),
            scim_content_type: default_scim_content_type(),
            retry_max_attempts: default_retry_max_attempts(),
            retry_base_delay_ms: default_retry_base_delay_ms(),
            retry_max_delay_ms: default_retry_max_delay_ms(),
            breaker_failure_threshold: default_breaker_failure_threshold(),
            breaker_open_ms: default_breaker_open_ms(),
            rate_limit_per_minute: None,
            allow_insecure_http: false,
            jwks_refetch_interval_ms: default_jwks_refetch_interval_ms(),
            max_token_lifetime_secs: default_max_token_lifetime_secs(),
            redirect_uris: Vec::new(),
            request_object_signing_alg: None,
            authorization_scopes: None,
        }
    }

    /// Whether `url` is plain `http://` to a host off loopback while
    /// `allow_insecure_http` is off: client secrets, assertions and codes
    /// must not cross the network in clear.
    pub fn refuses_insecure(&self, url: &Url) -> bool {
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        url.scheme() == "http" && !loopback && !self.allow_insecure_http
    }

    /// Reads the private key from wherever the configuration says it is.
    pub fn private_key(&self, key: &str) -> Result<SecretString, ConfigError> {
        resolve_secret(
            key,
            "private_key",
            &self.private_key_pem,
            &self.private_key_file,
            &self.private_key_env,
        )
    }

    /// Reads the client secret from wherever the configuration says it is.
    pub fn client_secret(&self, key: &str) -> Result<SecretString, ConfigError> {
        resolve_secret(
            key,
            "client_secret",
            &self.client_secret,
            &self.client_secret_file,
            &self.client_secret_env,
        )
        .map(|secret| SecretString::from(secret.expose_secret().trim().to_owned()))
    }
}
/// A provider's name, as callers give it in the `provider` request field:
/// 1 to 64 letters, digits, '-' or '_'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderName(String);

impl ProviderName {
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let valid = !text.is_empty()
            && text.len() <= 64
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err("provider names are 1 to 64 letters, digits, '-' or '_'")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}
