//! Who may ask for which token: callers authenticate with an API key
//! (`authorization: Bearer <key>`) or a client certificate (mutual TLS,
//! matched by the names it carries), and each caller's policy names the
//! RPCs, providers and scopes it may use, and how fast.
//!
//! The configuration holds only SHA-256 hashes of the keys, so a leaked
//! configuration file or ConfigMap gives no working key.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustls_pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use crate::config::{AccessConfig, CallerConfig, ConfigError, Sha256Hex};
use crate::token_bucket::TokenBucket;

/// The RPCs of `bankauth.v1.AuthService`: the names a policy may list, and
/// the `method` that logs and metrics label them with (`api::observe`).
pub const RPCS: &[&str] = &[
    "CreateUser",
    "GetUser",
    "IssueWidgetToken",
    "IssueDataToken",
    "CreateAuthorizationUrl",
    "ExchangeAuthorizationCode",
    "RefreshToken",
    "InvalidateToken",
    "DeleteUser",
    "ListUsers",
    "ListUserConnections",
    "DeleteUserConnection",
    "RevokeToken",
];

/// Checks that each policy lists RPC names from [`RPCS`] (or `"*"`): the
/// part of `access` that only the API knows. The rest is checked by
/// [`AccessConfig::validate`](crate::config::Config::validate).
pub fn validate(config: &AccessConfig) -> Result<(), ConfigError> {
    for (name, caller) in &config.callers {
        let known_rpc = |rpc: &String| rpc == "*" || RPCS.contains(&rpc.as_str());
        if caller.rpcs.is_empty() || !caller.rpcs.iter().all(known_rpc) {
            return Err(ConfigError::invalid(
                format!("access.callers.{name}.rpcs"),
                format!("list RPC names from {RPCS:?}, or \"*\""),
            ));
        }
    }
    Ok(())
}

/// The SHA-256 a presented key is looked up by, and `bankauth hash-key`
/// prints, so the hash an operator configures is the one compared.
fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The lowercase hex SHA-256 to list in `access.callers.<name>.api_key_sha256`
/// for `key`. A key no caller could present as it is, because metadata
/// carries only printable ASCII and tab, and the `Bearer` value is trimmed, is
/// refused: its hash would never match.
pub fn api_key_sha256(key: &str) -> Result<String, &'static str> {
    if key.is_empty() {
        return Err("the API key is empty");
    }
    if key.trim() != key {
        return Err("the API key starts or ends with white space, which callers cannot send");
    }
    if !key
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(
            "the API key has characters other than printable ASCII and tab, which callers cannot send",
        );
    }
    Ok(hex::encode(key_digest(key)))
}

/// Why a request was refused. Never carries the key itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("caller {caller} may not use {what} {value:?}")]
    Denied {
        caller: String,
        /// `rpc`, `provider` or `scope`.
        what: &'static str,
        value: String,
    },
    #[error("caller {caller} exceeded its rate limit")]
    RateLimited {
        caller: String,
        retry_after: Duration,
    },
}

/// The configured callers; built once at startup.
#[derive(Debug)]
pub struct Access {
    callers: Vec<Caller>,
    /// Who a request without credentials is, when that is allowed (the demo).
    anonymous: Option<Caller>,
}

/// An authenticated caller and what it may do.
#[derive(Debug)]
pub struct Caller {
    pub name: String,
    key_hashes: Vec<[u8; 32]>,
    /// DNS names a client certificate may carry to be this caller.
    cert_names: Vec<ServerName<'static>>,
    rpcs: Allowed,
    providers: Allowed,
    scopes: Allowed,
    limiter: Option<Mutex<TokenBucket>>,
}

/// A set of allowed names, or `"*"` for any.
#[derive(Debug)]
enum Allowed {
    Any,
    Only(BTreeSet<String>),
}

impl Allowed {
    fn from(names: &[String]) -> Self {
        if names.iter().any(|name| name == "*") {
            Self::Any
        } else {
            Self::Only(names.iter().cloned().collect())
        }
    }

    fn permits(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(names) => names.contains(name),
        }
    }
}

impl Access {
    pub fn from_config(config: &AccessConfig) -> Self {
        let callers = config
            .callers
            .iter()
            .map(|(name, caller)| Caller::from_config(name, caller))
            .collect();
        let anonymous = config.allow_anonymous.then(|| Caller {
            name: "anonymous".to_owned(),
            key_hashes: Vec::new(),
            cert_names: Vec::new(),
            rpcs: Allowed::Any,
            providers: Allowed::Any,
            scopes: Allowed::Any,
            limiter: None,
        });
        Self { callers, anonymous }
    }

    /// Finds the caller presenting the request's API key (or, without one,
    /// its verified client certificate) and checks it may call `rpc` now
    /// (policy and rate limit).
    pub fn admit(
        &self,
        metadata: &MetadataMap,
        client_certificates: Option<&[CertificateDer<'static>]>,
        rpc: &str,
    ) -> Result<&Caller, AccessError> {
        let caller = match client_certificates.and_then(<[_]>::first) {
            Some(certificate) if !metadata.contains_key("authorization") => {
                self.identify(certificate)?
            }
            _ => self.authenticate(metadata)?,
        };
        if !caller.rpcs.permits(rpc) {
            return Err(caller.denied("rpc", rpc));
        }
        caller.take_rate_token()?;
        Ok(caller)
    }

    /// The caller named in a client certificate's subject alternative names.
    /// rustls has already verified the chain against the client CA.
    fn identify(&self, certificate: &CertificateDer<'static>) -> Result<&Caller, AccessError> {
        let unknown = AccessError::Unauthenticated("the client certificate names no known caller");
        let certificate =
            webpki::EndEntityCert::try_from(certificate).map_err(|_| unknown.clone())?;
        self.callers
            .iter()
            .find(|caller| {
                caller
                    .cert_names
                    .iter()
                    .any(|name| certificate.verify_is_valid_for_subject_name(name).is_ok())
            })
            .ok_or(unknown)
    }

    fn authenticate(&self, metadata: &MetadataMap) -> Result<&Caller, AccessError> {
        let Some(header) = metadata.get("authorization") else {
            return self.anonymous.as_ref().ok_or(AccessError::Unauthenticated(
                "send an API key as `authorization: Bearer <key>` metadata",
            ));
        };
        let key = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .ok_or(AccessError::Unauthenticated(
                "the authorization metadata must be `Bearer <key>`",
            ))?;
        let presented = key_digest(key);
        // Every configured hash is compared, in constant time, whatever matches.
        let mut found = None;
        for caller in &self.callers {
            for hash in &caller.key_hashes {
                if aws_lc_rs::constant_time::verify_slices_are_equal(hash, &presented).is_ok() {
                    found = Some(caller);
                }
            }
        }
        found.ok_or(AccessError::Unauthenticated("unknown or revoked API key"))
    }
}

impl Caller {
    fn from_config(name: &str, config: &CallerConfig) -> Self {
        let key_hashes = config
            .api_key_sha256
            .iter()
            .filter_map(|hex_hash| Sha256Hex::parse(hex_hash).ok())
            .map(|hash| *hash.digest())
            .collect();
        let limiter = config.requests_per_second.map(|rate| {
            Mutex::new(TokenBucket::new(
                rate,
                config.burst.unwrap_or(rate.ceil().max(1.0)),
                Instant::now(),
            ))
        });
        let cert_names = config
            .client_cert_names
            .iter()
            .filter_map(|name| ServerName::try_from(name.clone()).ok())
            .collect();
        Self {
            name: name.to_owned(),
            key_hashes,
            cert_names,
            rpcs: Allowed::from(&config.rpcs),
            providers: Allowed::from(&config.providers),
            scopes: Allowed::from(&config.scopes),
            limiter,
        }
    }

    pub fn check_provider(&self, provider: &str) -> Result<(), AccessError> {
        if self.providers.permits(provider) {
            Ok(())
        } else {
            Err(self.denied("provider", provider))
        }
    }

    pub fn check_scopes<'a>(
        &self,
        scopes: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), AccessError> {
        match scopes.into_iter().find(|scope| !self.scopes.permits(scope)) {
            Some(scope) => Err(self.denied("scope", scope)),
            None => Ok(()),
        }
    }

    fn take_rate_token(&self) -> Result<(), AccessError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let mut bucket = limiter.lock().expect("rate limiter lock");
        bucket
            .take(Instant::now())
            .map_err(|retry_after| AccessError::RateLimited {
                caller: self.name.clone(),
                retry_after,
            })
    }

    fn denied(&self, what: &'static str, value: &str) -> AccessError {
        AccessError::Denied {
            caller: self.name.clone(),
            what,
            value: value.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::MINIMAL;

    #[test]
    fn policies_name_known_rpcs() {
        let config = Config::from_toml(MINIMAL).unwrap();
        validate(&config.access).unwrap();
        for rpcs in ["[\"IssueToken\"]", "[]"] {
            let toml = MINIMAL.replace("rpcs = [\"*\"]", &format!("rpcs = {rpcs}"));
            let error = validate(&Config::from_toml(&toml).unwrap().access)
                .unwrap_err()
                .to_string();
            assert!(error.contains("access.callers.app.rpcs"), "{error:?}");
        }
    }

    #[test]
    fn a_key_hashes_as_sha256sum_does_and_keys_no_caller_can_send_are_refused() {
        assert_eq!(
            api_key_sha256("password").unwrap(),
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        );
        assert!(api_key_sha256("a key\twith inner space").is_ok());
        for key in ["", " key", "key ", "key\n", "k\u{e9}y", "k\u{7f}y"] {
            assert!(api_key_sha256(key).is_err(), "{key:?}");
        }
    }
}
