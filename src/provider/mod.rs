//! The upstream protocols: each configured provider's token endpoint and SCIM
//! users endpoint. Knows HTTP and OAuth, nothing of gRPC or caching.

mod error;
mod http;
pub mod scim;
mod signing;
mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

pub use error::ProviderError;
pub use http::MAX_BODY_BYTES;
pub use signing::{KeyError, SigningAlgorithm, SigningKey};
pub use token::TokenEndpoint;

use crate::config::{AssertionAudience, Config, ConfigError, MoneyhubConfig, ProviderConfig};
use crate::domain::{AccessToken, NewUser, Scope, ScopeSet, User, UserId};
use scim::ScimClient;

/// The scope Moneyhub requires for creating SCIM users.
pub const SCIM_WRITE_SCOPE: &str = "scim_user:write";
/// The scope Moneyhub requires for reading SCIM users.
pub const SCIM_READ_SCOPE: &str = "scim_user:read";
/// The scope of a token handed to Moneyhub's widget.
pub const WIDGET_SCOPE: &str = "widget_authentication";

/// One configured provider: its credentials, endpoints and policy.
#[derive(Debug)]
pub struct Provider {
    name: String,
    token_endpoint: TokenEndpoint,
    scim: ScimClient,
    data_scopes: BTreeSet<String>,
}

impl Provider {
    /// Builds a provider from its configuration, reading and parsing its
    /// private key; errors name the configuration key at fault.
    pub fn from_config(name: &str, config: &MoneyhubConfig) -> Result<Self, ConfigError> {
        let key = format!("providers.{name}");
        let pem = config.private_key(&key)?;
        let mut signer = SigningKey::from_pem(pem.expose_secret(), config.signing_algorithm)
            .map_err(|e| ConfigError::invalid(format!("{key}.private_key"), e.to_string()))?;
        if let Some(key_id) = &config.key_id {
            signer = signer.with_key_id(key_id);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .connect_timeout(Duration::from_millis(config.request_timeout_ms.min(5_000)))
            .user_agent(concat!("bankauth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ConfigError::invalid(&key, format!("cannot build the HTTP client: {e}"))
            })?;
        let token_url = config.token_url();
        let audience = match config.assertion_audience {
            AssertionAudience::TokenEndpoint => token_url.to_string(),
            AssertionAudience::Issuer => config.issuer.to_string(),
        };
        Ok(Self {
            name: name.to_owned(),
            token_endpoint: TokenEndpoint {
                http: http.clone(),
                url: token_url,
                client_id: config.client_id.clone(),
                signer,
                audience,
                default_lifetime: Duration::from_secs(config.default_token_lifetime_secs),
            },
            scim: ScimClient {
                http,
                base: config.scim_url(),
                content_type: config.scim_content_type.clone(),
            },
            data_scopes: config.data_scopes.iter().cloned().collect(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client_id(&self) -> &str {
        &self.token_endpoint.client_id
    }

    /// The first requested scope the configured allow-list does not include.
    pub fn disallowed_data_scope<'a>(&self, scopes: &'a ScopeSet) -> Option<&'a Scope> {
        scopes
            .iter()
            .find(|scope| !self.data_scopes.contains(scope.as_str()))
    }

    pub async fn request_token(
        &self,
        sub: Option<&UserId>,
        scopes: &ScopeSet,
    ) -> Result<AccessToken, ProviderError> {
        self.token_endpoint.client_credentials(sub, scopes).await
    }

    pub async fn create_user(&self, bearer: &str, user: &NewUser) -> Result<User, ProviderError> {
        self.scim.create_user(bearer, user).await
    }

    pub async fn get_user(&self, bearer: &str, id: &UserId) -> Result<User, ProviderError> {
        self.scim.get_user(bearer, id).await
    }
}

/// All configured providers, by name.
#[derive(Debug, Clone)]
pub struct Providers(BTreeMap<String, Arc<Provider>>);

impl Providers {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        config
            .providers
            .iter()
            .map(|(name, provider)| match provider {
                ProviderConfig::Moneyhub(moneyhub) => {
                    Provider::from_config(name, moneyhub).map(|p| (name.clone(), Arc::new(p)))
                }
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Resolves the request's `provider` field: a configured name, or empty
    /// when exactly one provider is configured.
    pub fn resolve(&self, name: &str) -> Result<&Arc<Provider>, String> {
        if name.is_empty() && self.0.len() == 1 {
            return Ok(self.0.values().next().expect("one provider"));
        }
        self.0.get(name).ok_or_else(|| {
            let known = self.0.keys().cloned().collect::<Vec<_>>().join(", ");
            if name.is_empty() {
                format!("is required when several providers are configured; configured: {known}")
            } else {
                format!("unknown provider; configured: {known}")
            }
        })
    }
}
