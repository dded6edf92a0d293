//! The upstream protocols: each configured provider's token endpoint, SCIM
//! users endpoint and ID-token keys. Knows HTTP and OAuth, nothing of gRPC.
//! Caching tokens is the service's and the cache's business; the provider
//! only shares its request budget with other replicas through the cache's
//! shared buckets (`budget.rs`).

mod authorize;
mod budget;
mod client_auth;
mod discovery;
mod error;
mod http;
mod id_token;
pub mod kinds;
mod resilience;
pub mod scim;
mod signing;
mod token;
pub mod users_api;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use authorize::{
    AuthorizationParams, AuthorizationUrl, AuthorizeError, Consent, Purpose, permissions,
    provider_id,
};
pub use client_auth::ClientAuth;
pub use discovery::Endpoints;
pub use error::ProviderError;
pub use id_token::{Expected, IdTokenClaims, IdTokenError, find_key};
pub use signing::{KeyError, SigningAlgorithm, SigningKey};
pub use token::{Grant, TokenResponse, TokenTypeHint};
pub use users_api::{USER_DELETE_SCOPE, USER_READ_SCOPE, UsersApi};

use crate::cache::SharedBuckets;
use crate::config::{Config, ConfigError, ExpiryField, ProviderConfig};
use crate::domain::{AccessToken, Scope, ScopeSet, UserId};
use crate::telemetry::Metrics;
use budget::RequestBudget;
use http::Upstream;
use id_token::IdTokenVerifier;
use resilience::{Breaker, BreakerPolicy, RetryPolicy};
pub use scim::ScimClient;
use token::{ExpiryRules, TokenEndpoint};

/// The scope Moneyhub requires for creating SCIM users.
pub const SCIM_WRITE_SCOPE: &str = "scim_user:write";
/// The scope Moneyhub requires for reading SCIM users.
pub const SCIM_READ_SCOPE: &str = "scim_user:read";
/// The scope of a token handed to Moneyhub's widget.
pub const WIDGET_SCOPE: &str = "widget_authentication";

/// A configured provider could not be set up at startup.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("providers.{provider}.issuer: OpenID discovery failed: {source}")]
    Discovery {
        provider: String,
        #[source]
        source: ProviderError,
    },
}

/// One configured provider: its credentials, endpoints and policy.
#[derive(Debug)]
pub struct Provider {
    name: String,
    config: ProviderConfig,
    upstream: Upstream,
    /// Swapped as a whole when discovery is re-run.
    endpoints: RwLock<Arc<Endpoints>>,
    token_endpoint: TokenEndpoint,
    scim: Option<ScimClient>,
    users_api: Option<UsersApi>,
    id_tokens: IdTokenVerifier,
    send_sub: bool,
    data_scopes: BTreeSet<String>,
    application_scopes: BTreeSet<String>,
}

impl Provider {
    /// Reads and parses the credentials and builds the HTTP client: all
    /// that can be checked without the network. Errors name the key.
    fn prepare(
        name: &str,
        config: &ProviderConfig,
    ) -> Result<(ClientAuth, reqwest::Client), ConfigError> {
        let key = format!("providers.{name}");
        let auth = ClientAuth::from_config(&key, config)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .connect_timeout(Duration::from_millis(config.request_timeout_ms.min(5_000)))
            .user_agent(concat!("bankauth/", env!("CARGO_PKG_VERSION")))
            // A 307/308 would re-post secrets, codes and refresh tokens wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                ConfigError::invalid(&key, format!("cannot build the HTTP client: {e}"))
            })?;
        Ok((auth, http))
    }

    /// Builds the provider, running OpenID discovery when only an issuer is configured.
    /// `buckets` shares the provider's request budget between up to `replicas` replicas.
    pub async fn connect(
        name: &str,
        config: &ProviderConfig,
        replicas: u32,
        metrics: Arc<Metrics>,
        buckets: &SharedBuckets,
    ) -> Result<Self, SetupError> {
        let (auth, client) = Self::prepare(name, config)?;
        let breaker = |breaker| {
            Arc::new(Breaker::new(
                breaker,
                BreakerPolicy {
                    failure_threshold: config.breaker_failure_threshold,
                    open_for: Duration::from_millis(config.breaker_open_ms),
                },
                metrics.breaker_gauge(name, breaker),
            ))
        };
        let upstream = Upstream {
            client,
            provider: name.to_owned(),
            metrics: metrics.clone(),
            retry: RetryPolicy {
                max_attempts: config.retry_max_attempts,
                base_delay: Duration::from_millis(config.retry_base_delay_ms),
                max_delay: Duration::from_millis(config.retry_max_delay_ms),
            },
            breaker: breaker("identity"),
            budget: config.rate_limit_per_minute().map(|per_minute| {
                Arc::new(RequestBudget::new(
                    name,
                    &config.client_id,
                    per_minute,
                    replicas,
                    buckets.clone(),
                ))
            }),
            default_deadline: longest_fetch(config),
        };
        let endpoints = discovery::resolve(&upstream, config)
            .await
            .map_err(|source| SetupError::Discovery {
                provider: name.to_owned(),
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            config: config.clone(),
            endpoints: RwLock::new(Arc::new(endpoints)),
            token_endpoint: TokenEndpoint {
                upstream: upstream.clone(),
                revocation: Upstream {
                    breaker: breaker("revocation"),
                    ..upstream.clone()
                },
                client_id: config.client_id.clone(),
                auth,
                expiry: ExpiryRules {
                    field: config.expiry_field.unwrap_or(ExpiryField::Auto),
                    default_lifetime: Duration::from_secs(config.default_token_lifetime_secs),
                    max_lifetime: Duration::from_secs(config.max_token_lifetime_secs),
                },
            },
            // SCIM has a breaker of its own, so a SCIM outage does not stop
            // token issuance; an identity outage stops SCIM anyway, as every
            // SCIM call needs a token. The request budget stays shared: the
            // provider limits the client, not an endpoint.
            scim: config.scim_url().map(|base| ScimClient {
                upstream: Upstream {
                    breaker: breaker("scim"),
                    ..upstream.clone()
                },
                base,
                content_type: config.scim_content_type.clone(),
            }),
            // Moneyhub's users API, on a breaker of its own for the same reason.
            users_api: config.users_url().map(|base| UsersApi {
                upstream: Upstream {
                    breaker: breaker("users"),
                    ..upstream.clone()
                },
                base,
            }),
            // The JWKS too: a struggling JWKS endpoint must not open the
            // breaker that token issuance goes through.
            id_tokens: IdTokenVerifier {
                upstream: Upstream {
                    breaker: breaker("jwks"),
                    ..upstream.clone()
                },
                client_id: config.client_id.clone(),
                refetch_interval: Duration::from_millis(config.jwks_refetch_interval_ms),
                jwks: Default::default(),
                fetching: Default::default(),
            },
            upstream,
            send_sub: config.send_sub(),
            data_scopes: config.data_scopes.iter().cloned().collect(),
            application_scopes: config.application_scopes.iter().cloned().collect(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client_id(&self) -> &str {
        &self.token_endpoint.client_id
    }

    /// The longest one fetch from this provider can take: every attempt
    /// timing out, with the longest pauses between them.
    pub fn longest_fetch(&self) -> Duration {
        longest_fetch(&self.config)
    }

    pub fn client_auth_method(&self) -> &'static str {
        self.token_endpoint.auth.method_name()
    }

    pub fn endpoints(&self) -> Arc<Endpoints> {
        self.endpoints.read().expect("endpoints lock").clone()
    }

    /// Re-runs discovery; on failure the endpoints in use are kept. The
    /// cached JWKS is dropped either way (after the endpoints are swapped,
    /// so it is not refilled from the old JWKS URL), and a key the provider
    /// removed is no longer trusted.
    pub async fn rediscover(&self) -> Result<(), ProviderError> {
        let resolved = discovery::resolve(&self.upstream, &self.config).await;
        if let Ok(endpoints) = &resolved {
            *self.endpoints.write().expect("endpoints lock") = Arc::new(endpoints.clone());
        }
        self.id_tokens.forget_keys().await;
        resolved.map(drop)
    }

    /// Whether the provider issues tokens for a user (with `sub`).
    pub fn has_user_tokens(&self) -> bool {
        self.send_sub
    }

    /// The first requested scope the allow-list for this kind of token
    /// (user or application) does not include.
    pub fn disallowed_scope<'a>(&self, scopes: &'a ScopeSet, for_user: bool) -> Option<&'a Scope> {
        let allowed = if for_user {
            &self.data_scopes
        } else {
            &self.application_scopes
        };
        scopes
            .iter()
            .find(|scope| !allowed.contains(scope.as_str()))
    }

    pub fn has_application_tokens(&self) -> bool {
        !self.application_scopes.is_empty()
    }

    pub async fn request_token(
        &self,
        sub: Option<&UserId>,
        scopes: &ScopeSet,
    ) -> Result<AccessToken, ProviderError> {
        let sub = sub.filter(|_| self.send_sub);
        self.token_endpoint
            .request(self.endpoints(), Grant::ClientCredentials { sub, scopes })
            .await
            .map(|response| response.token)
    }

    /// The code exchange or a refresh; the caller validates the ID token.
    pub async fn token_set(&self, grant: Grant<'_>) -> Result<TokenResponse, ProviderError> {
        self.token_endpoint.request(self.endpoints(), grant).await
    }

    pub async fn verify_id_token(
        &self,
        id_token: &str,
        expected: Expected<'_>,
    ) -> Result<IdTokenClaims, IdTokenError> {
        self.id_tokens
            .verify(&self.endpoints(), id_token, expected)
            .await
    }

    /// The redirect URIs callers may have the provider send users back to.
    pub fn redirect_uris(&self) -> &[String] {
        &self.config.redirect_uris
    }

    /// The URL that starts an authorization: pushed (PAR) where the
    /// provider offers it, signed as a request object where it must be.
    pub async fn authorization_url(
        &self,
        params: &AuthorizationParams<'_>,
    ) -> Result<AuthorizationUrl, AuthorizeError> {
        authorize::authorization_url(
            &self.upstream,
            &self.config,
            &self.token_endpoint.auth,
            &self.endpoints(),
            params,
        )
        .await
    }

    /// The provider's SCIM users endpoint; `None` when it has no user management.
    pub fn users(&self) -> Option<&ScimClient> {
        self.scim.as_ref()
    }

    /// Moneyhub's users API (user deletion, connections); `None` when the
    /// provider has none.
    pub fn users_api(&self) -> Option<&UsersApi> {
        self.users_api.as_ref()
    }

    /// Revokes a token at the discovered revocation endpoint (RFC 7009);
    /// `Ok(false)` when the provider has none, so nothing was sent.
    pub async fn revoke(
        &self,
        token: &str,
        hint: Option<TokenTypeHint>,
    ) -> Result<bool, ProviderError> {
        let endpoints = self.endpoints();
        let Some(url) = &endpoints.revocation_url else {
            return Ok(false);
        };
        self.token_endpoint
            .revoke(&endpoints, url, token, hint)
            .await
            .map(|()| true)
    }
}

fn longest_fetch(config: &ProviderConfig) -> Duration {
    let attempts = config.retry_max_attempts.max(1);
    Duration::from_millis(config.request_timeout_ms).saturating_mul(attempts)
        + Duration::from_millis(config.retry_max_delay_ms).saturating_mul(attempts - 1)
}

/// All configured providers, by name.
#[derive(Debug, Clone)]
pub struct Providers(BTreeMap<String, Arc<Provider>>);

impl Providers {
    /// Checks every provider's credentials without touching the network.
    pub fn check(config: &Config) -> Result<(), ConfigError> {
        for (name, provider) in &config.providers {
            Provider::prepare(name, provider)?;
        }
        Ok(())
    }

    /// Builds every provider, discovering endpoints where needed.
    pub async fn connect(
        config: &Config,
        metrics: Arc<Metrics>,
        buckets: &SharedBuckets,
    ) -> Result<Self, SetupError> {
        let mut providers = BTreeMap::new();
        for (name, provider) in &config.providers {
            let provider = Provider::connect(
                name,
                provider,
                config.cache.max_replicas,
                metrics.clone(),
                buckets,
            )
            .await?;
            providers.insert(name.clone(), Arc::new(provider));
        }
        Ok(Self(providers))
    }

    /// Re-runs discovery everywhere, logging (not failing on) each error.
    pub async fn rediscover(&self) {
        for provider in self.0.values() {
            match provider.rediscover().await {
                Ok(()) => tracing::info!(provider = provider.name(), "endpoints reloaded"),
                Err(error) => tracing::warn!(
                    provider = provider.name(),
                    %error,
                    "discovery failed; keeping the endpoints in use"
                ),
            }
        }
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
