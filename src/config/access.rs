//! Who may call bankauth, and for what: the callers and their policies.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ConfigError, ProviderConfig, ServerConfig};

/// Who may call bankauth, and for what (see [`crate::access`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Requests without credentials are served with every permission. For
    /// development only (the demo sets it); refused beside `callers`.
    pub allow_anonymous: bool,
    /// Callers by name (the name appears in logs and errors).
    pub callers: BTreeMap<String, CallerConfig>,
}

/// One calling service: its API keys (as hashes) and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// Lowercase hex SHA-256 of each key this caller may present (several,
    /// so a key rotates without downtime), as `bankauth hash-key` prints it.
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
    /// RPC names (`IssueWidgetToken`, …) or `"*"`.
    pub rpcs: Vec<String>,
    /// Provider names or `"*"`.
    pub providers: Vec<String>,
    /// DNS names in the subject alternative names of client certificates
    /// that identify this caller (needs `server.tls.client_ca_file`).
    #[serde(default)]
    pub client_cert_names: Vec<String>,
    /// Scopes it may request (on top of the provider's allow-list), or `"*"`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Sustained requests a second; unlimited when unset.
    pub requests_per_second: Option<f64>,
    /// Requests allowed at once above the rate; defaults to one second's worth.
    pub burst: Option<f64>,
}

/// A SHA-256 digest written as 64 lowercase hex characters, as
/// `api_key_sha256` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sha256Hex([u8; 32]);

impl Sha256Hex {
    pub const REQUIREMENT: &str = "list the SHA-256 of each key, as 64 lowercase hex characters";

    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let digest = hex::decode(text)
            .ok()
            .filter(|_| crate::domain::is_sha256_hex(text));
        digest
            .and_then(|bytes| bytes.try_into().ok())
            .map(Self)
            .ok_or(Self::REQUIREMENT)
    }

    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }
}

impl AccessConfig {
    /// Checks what the configuration alone can: the RPC names a policy
    /// lists are the API's, checked by [`crate::access::validate`].
    pub(super) fn validate(
        &self,
        server: &ServerConfig,
        providers: &BTreeMap<String, ProviderConfig>,
    ) -> Result<(), ConfigError> {
        if self.callers.is_empty() && !self.allow_anonymous {
            return Err(ConfigError::invalid(
                "access.callers",
                "configure at least one caller (or, for development only, set access.allow_anonymous = true)",
            ));
        }
        // Anonymous requests get every right, so beside a policy they would void it.
        if self.allow_anonymous && !self.callers.is_empty() {
            return Err(ConfigError::invalid(
                "access.allow_anonymous",
                "must not be set beside access.callers: anonymous requests would get every right the callers' policies withhold",
            ));
        }
        for (name, caller) in &self.callers {
            let key = |field: &str| format!("access.callers.{name}.{field}");
            if let Some(reason) =
                (caller.api_key_sha256.iter()).find_map(|hash| Sha256Hex::parse(hash).err())
            {
                return Err(ConfigError::invalid(key("api_key_sha256"), reason));
            }
            if caller.api_key_sha256.is_empty() && caller.client_cert_names.is_empty() {
                return Err(ConfigError::invalid(
                    key("api_key_sha256"),
                    "give the caller API keys or client_cert_names",
                ));
            }
            if !caller.client_cert_names.is_empty() && !server.verifies_client_certificates() {
                return Err(ConfigError::invalid(
                    key("client_cert_names"),
                    "needs server.tls.client_ca_file to verify client certificates",
                ));
            }
            let known_provider = |p: &String| p == "*" || providers.contains_key(p);
            if caller.providers.is_empty() || !caller.providers.iter().all(known_provider) {
                return Err(ConfigError::invalid(
                    key("providers"),
                    "list configured provider names, or \"*\"",
                ));
            }
            if caller
                .requests_per_second
                .is_some_and(|rate| rate.is_nan() || rate <= 0.0)
            {
                return Err(ConfigError::invalid(
                    key("requests_per_second"),
                    "must be positive",
                ));
            }
            if caller
                .burst
                .is_some_and(|burst| burst.is_nan() || burst < 1.0)
            {
                return Err(ConfigError::invalid(key("burst"), "must be at least 1"));
            }
        }
        Ok(())
    }
}
