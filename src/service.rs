//! The business logic: users and tokens, through the cache, from providers.
//! Knows nothing of gRPC; the `api` module adapts it.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::cache::{Cache, TokenKey, UserKey};
use crate::domain::{AccessToken, NewUser, ScopeSet, User, UserId, ValidationError};
use crate::provider::{
    Grant, IdTokenClaims, IdTokenError, Provider, ProviderError, Providers, SCIM_READ_SCOPE,
    SCIM_WRITE_SCOPE, WIDGET_SCOPE,
};
use crate::telemetry::Metrics;

/// Why a request failed. Mapped to a gRPC status in `api::status`, only there.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidArgument(#[from] ValidationError),
    #[error("provider {provider}: {source}")]
    Provider {
        provider: String,
        #[source]
        source: ProviderError,
    },
    #[error(
        "provider {provider}: a user with this external_id was already created with other details (id {user_id})"
    )]
    UserConflict { provider: String, user_id: String },
    /// The provider (or its configuration) cannot do what was asked.
    #[error("provider {provider} {reason}")]
    Unsupported {
        provider: String,
        reason: &'static str,
    },
    #[error("provider {provider}: {source}")]
    IdToken {
        provider: String,
        #[source]
        source: IdTokenError,
    },
}

/// The result of a code exchange or refresh. Holds bearer secrets, so it
/// has no `Debug`.
pub struct TokenSet {
    pub token: AccessToken,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    /// The validated ID token's claims, when the provider returned one.
    pub claims: Option<IdTokenClaims>,
}

/// What the caller hands over after the provider redirected the user back.
pub struct CodeExchange<'a> {
    pub code: &'a str,
    pub redirect_uri: &'a str,
    pub code_verifier: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub sub: Option<&'a UserId>,
}

/// Whether a token came from the cache; logged with every token RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }
}

/// Users and tokens for every configured provider.
#[derive(Debug)]
pub struct AuthService {
    providers: Providers,
    cache: Cache,
    safety_margin: Duration,
    metrics: Arc<Metrics>,
}

impl AuthService {
    pub fn new(
        providers: Providers,
        cache: Cache,
        safety_margin: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            providers,
            cache,
            safety_margin,
            metrics,
        }
    }

    /// Resolves the request's `provider` field.
    pub fn provider(&self, name: &str) -> Result<Arc<Provider>, Error> {
        self.providers
            .resolve(name)
            .cloned()
            .map_err(|reason| ValidationError::new("provider", reason).into())
    }

    /// A token with scope `widget_authentication` for `user`.
    pub async fn issue_widget_token(
        &self,
        provider: &Provider,
        user: &UserId,
    ) -> Result<(AccessToken, CacheOutcome), Error> {
        if !provider.has_user_tokens() {
            return Err(unsupported(
                provider,
                "issues no user tokens, so no widget tokens",
            ));
        }
        self.issue_token(provider, Some(user), &ScopeSet::single(WIDGET_SCOPE))
            .await
    }

    /// A token with data scopes for `user`, or an application token (no
    /// `sub`) when `user` is `None`; each scope must be allow-listed for
    /// that kind of token.
    pub async fn issue_data_token(
        &self,
        provider: &Provider,
        user: Option<&UserId>,
        scopes: &ScopeSet,
    ) -> Result<(AccessToken, CacheOutcome), Error> {
        match user {
            Some(_) if !provider.has_user_tokens() => {
                return Err(unsupported(
                    provider,
                    "issues no user tokens: leave user_id empty for an application token",
                ));
            }
            None if !provider.has_application_tokens() => {
                return Err(ValidationError::new(
                    "user_id",
                    format!(
                        "must not be empty: provider {} issues no application tokens",
                        provider.name()
                    ),
                )
                .into());
            }
            _ => {}
        }
        if let Some(scope) = provider.disallowed_scope(scopes, user.is_some()) {
            let kind = if user.is_some() {
                "user"
            } else {
                "application"
            };
            return Err(ValidationError::new(
                "scopes",
                format!(
                    "{:?} is not allowed in {kind} tokens of provider {}",
                    scope.as_str(),
                    provider.name()
                ),
            )
            .into());
        }
        self.issue_token(provider, user, scopes).await
    }

    /// Exchanges an authorization code for a token set and validates its ID
    /// token. Codes are single-use, so nothing here is cached.
    pub async fn exchange_code(
        &self,
        provider: &Provider,
        exchange: CodeExchange<'_>,
    ) -> Result<TokenSet, Error> {
        // Refuse before spending the single-use code on a set we could not validate.
        let endpoints = provider.endpoints();
        if endpoints.issuer.is_none() || endpoints.jwks_url.is_none() {
            return Err(unsupported(
                provider,
                "cannot validate ID tokens: configure its issuer (with discovery) or issuer and jwks_url",
            ));
        }
        let response = provider
            .token_set(Grant::AuthorizationCode {
                code: exchange.code,
                redirect_uri: exchange.redirect_uri,
                code_verifier: exchange.code_verifier,
                sub: exchange.sub,
            })
            .await
            .map_err(|source| provider_error(provider, source))?;
        let id_token = response
            .id_token
            .ok_or_else(|| id_token_error(provider, IdTokenError::Missing))?;
        let claims = provider
            .verify_id_token(&id_token, exchange.nonce)
            .await
            .map_err(|source| id_token_error(provider, source))?;
        Ok(TokenSet {
            token: response.token,
            id_token: Some(id_token),
            refresh_token: response.refresh_token,
            claims: Some(claims),
        })
    }

    /// Uses a refresh token; an ID token in the answer is validated too.
    pub async fn refresh(
        &self,
        provider: &Provider,
        refresh_token: &str,
    ) -> Result<TokenSet, Error> {
        let response = provider
            .token_set(Grant::Refresh { refresh_token })
            .await
            .map_err(|source| provider_error(provider, source))?;
        let claims = match &response.id_token {
            Some(id_token) => Some(
                provider
                    .verify_id_token(id_token, None)
                    .await
                    .map_err(|source| id_token_error(provider, source))?,
            ),
            None => None,
        };
        Ok(TokenSet {
            token: response.token,
            id_token: response.id_token,
            refresh_token: response.refresh_token,
            claims,
        })
    }

    /// Creates a user. A retry for an external_id this service already
    /// created returns that user, so a lost response costs nothing.
    pub async fn create_user(
        &self,
        provider: &Provider,
        new_user: &NewUser,
    ) -> Result<User, Error> {
        let users = provider.users().ok_or_else(|| no_users(provider))?;
        let key = UserKey::new(
            provider.name(),
            provider.client_id(),
            new_user.external_id.as_str(),
        );
        if let Some(existing) = self.existing_user(provider, &key).await? {
            return if existing.matches(new_user) {
                Ok(existing)
            } else {
                Err(Error::UserConflict {
                    provider: provider.name().to_owned(),
                    user_id: existing.id,
                })
            };
        }
        let (token, _) = self
            .issue_token(provider, None, &ScopeSet::single(SCIM_WRITE_SCOPE))
            .await?;
        let user = users
            .create_user(&token.access_token, new_user)
            .await
            .map_err(|source| provider_error(provider, source))?;
        self.cache.remember_user(&key, &user.id).await;
        Ok(user)
    }

    /// The user this service created under `key`, if it still exists.
    async fn existing_user(
        &self,
        provider: &Provider,
        key: &UserKey,
    ) -> Result<Option<User>, Error> {
        let Some(id) = self.cache.remembered_user(key).await else {
            return Ok(None);
        };
        let Ok(id) = UserId::parse("user_id", &id) else {
            self.cache.forget_user(key).await;
            return Ok(None);
        };
        match self.get_user(provider, &id).await {
            Ok(user) => Ok(Some(user)),
            Err(Error::Provider {
                source: ProviderError::Scim { status: 404, .. },
                ..
            }) => {
                self.cache.forget_user(key).await;
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    pub async fn get_user(&self, provider: &Provider, id: &UserId) -> Result<User, Error> {
        let users = provider.users().ok_or_else(|| no_users(provider))?;
        let (token, _) = self
            .issue_token(provider, None, &ScopeSet::single(SCIM_READ_SCOPE))
            .await?;
        users
            .get_user(&token.access_token, id)
            .await
            .map_err(|source| provider_error(provider, source))
    }

    /// Serves a token from the cache, or fetches and caches it until
    /// `safety_margin` before it expires.
    async fn issue_token(
        &self,
        provider: &Provider,
        sub: Option<&UserId>,
        scopes: &ScopeSet,
    ) -> Result<(AccessToken, CacheOutcome), Error> {
        let key = TokenKey::new(provider.name(), provider.client_id(), sub, scopes);
        let margin_ms = self.safety_margin.as_millis() as i64;
        if let Some(token) = self.cache.get_token(&key).await {
            if token.expires_at * 1000 - margin_ms > now_millis() {
                return Ok((token, CacheOutcome::Hit));
            }
        }
        let token = provider
            .request_token(sub, scopes)
            .await
            .map_err(|source| provider_error(provider, source))?;
        self.metrics.token_issued(provider.name());
        let ttl_ms = token.expires_at * 1000 - margin_ms - now_millis();
        if ttl_ms > 0 {
            self.cache
                .put_token(&key, &token, Duration::from_millis(ttl_ms as u64))
                .await;
        }
        Ok((token, CacheOutcome::Miss))
    }
}

fn provider_error(provider: &Provider, source: ProviderError) -> Error {
    Error::Provider {
        provider: provider.name().to_owned(),
        source,
    }
}

fn id_token_error(provider: &Provider, source: IdTokenError) -> Error {
    Error::IdToken {
        provider: provider.name().to_owned(),
        source,
    }
}

fn unsupported(provider: &Provider, reason: &'static str) -> Error {
    Error::Unsupported {
        provider: provider.name().to_owned(),
        reason,
    }
}

fn no_users(provider: &Provider) -> Error {
    unsupported(provider, "has no user management")
}

fn now_millis() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
