//! How bankauth proves its identity to a token endpoint: a signed client
//! assertion (RFC 7523, `private_key_jwt`) or a client secret (RFC 6749 §2.3.1).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use url::form_urlencoded;

use super::{KeyError, SigningKey};
use crate::config::{AssertionAudience, ClientAuthMethod, ConfigError, ProviderConfig};
use crate::random::random_hex;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Client assertions are single-use; a short life limits a leaked one.
const ASSERTION_LIFETIME_SECS: i64 = 60;

/// A provider's client credentials, parsed once at startup.
pub enum ClientAuth {
    PrivateKeyJwt {
        signer: SigningKey,
        audience: AssertionAudience,
    },
    SecretBasic(SecretString),
    SecretPost(SecretString),
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.method_name())
    }
}

/// Claims of the client assertion, per RFC 7523 §3.
#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: i64,
    exp: i64,
}

impl ClientAuth {
    /// Reads and parses the configured credential; errors name the key.
    pub fn from_config(key: &str, config: &ProviderConfig) -> Result<Self, ConfigError> {
        match config.client_auth() {
            ClientAuthMethod::PrivateKeyJwt => {
                let pem = config.private_key(key)?;
                let mut signer =
                    SigningKey::from_pem(pem.expose_secret(), config.signing_algorithm).map_err(
                        |e: KeyError| {
                            ConfigError::invalid(format!("{key}.private_key"), e.to_string())
                        },
                    )?;
                if let Some(key_id) = &config.key_id {
                    signer = signer.with_key_id(key_id);
                }
                Ok(Self::PrivateKeyJwt {
                    signer,
                    audience: config.assertion_audience,
                })
            }
            ClientAuthMethod::ClientSecretBasic => {
                Ok(Self::SecretBasic(config.client_secret(key)?))
            }
            ClientAuthMethod::ClientSecretPost => Ok(Self::SecretPost(config.client_secret(key)?)),
        }
    }

    pub fn method_name(&self) -> &'static str {
        match self {
            Self::PrivateKeyJwt { .. } => "private_key_jwt",
            Self::SecretBasic(_) => "client_secret_basic",
            Self::SecretPost(_) => "client_secret_post",
        }
    }

    /// Adds the credential to a token request: form fields, and for Basic
    /// the value of the `Authorization` header. Every call makes a fresh assertion,
    /// since providers reject a reused `jti`.
    pub fn apply(
        &self,
        form: &mut form_urlencoded::Serializer<'_, String>,
        client_id: &str,
        token_url: &str,
        issuer: Option<&str>,
        now: i64,
    ) -> Result<Option<HeaderValue>, KeyError> {
        match self {
            Self::PrivateKeyJwt { signer, audience } => {
                let aud = match (audience, issuer) {
                    (AssertionAudience::Issuer, Some(issuer)) => issuer,
                    _ => token_url,
                };
                let assertion = signer.sign(&AssertionClaims {
                    iss: client_id,
                    sub: client_id,
                    aud,
                    jti: random_hex::<16>(),
                    iat: now,
                    exp: now + ASSERTION_LIFETIME_SECS,
                })?;
                form.append_pair("client_id", client_id)
                    .append_pair("client_assertion_type", JWT_BEARER)
                    .append_pair("client_assertion", &assertion);
                Ok(None)
            }
            Self::SecretPost(secret) => {
                form.append_pair("client_id", client_id)
                    .append_pair("client_secret", secret.expose_secret());
                Ok(None)
            }
            Self::SecretBasic(secret) => {
                // RFC 6749 §2.3.1: both parts are form-encoded before Base64.
                let encode =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let credentials =
                    format!("{}:{}", encode(client_id), encode(secret.expose_secret()));
                let mut value =
                    HeaderValue::try_from(format!("Basic {}", STANDARD.encode(credentials)))
                        .map_err(|_| KeyError::SigningFailed)?;
                value.set_sensitive(true);
                Ok(Some(value))
            }
        }
    }
}
