//! The business logic: users and tokens, through the cache, from providers.
//! Knows nothing of gRPC; the `api` module adapts it.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use time::OffsetDateTime;
use tracing::Instrument;

use crate::cache::single_flight::{Abandoned, Flight, SingleFlight};
use crate::cache::{
    AuthorizationKey, Cache, CacheError, ExpiryPolicy, Fill, TokenKey, TokenSource, UserKey,
    UserTokens, fingerprint,
};
use crate::deadline;
use crate::domain::{
    AccessToken, Connection, ConnectionId, ExternalId, NewUser, ScopeSet, User, UserId,
    ValidationError,
};
use crate::provider::scim::UserPage;
use crate::provider::{
    AuthorizationParams, AuthorizeError, Expected, Grant, IdTokenClaims, IdTokenError, Provider,
    ProviderError, Providers, Purpose, SCIM_READ_SCOPE, SCIM_WRITE_SCOPE, TokenTypeHint,
    USER_DELETE_SCOPE, USER_READ_SCOPE, WIDGET_SCOPE,
};
use crate::random::random_hex;
use crate::telemetry::Metrics;

/// Why a request failed. Mapped to a gRPC status in `api::status`, only there.
/// `Clone`, so every caller that joined one upstream call gets its outcome.
#[derive(Debug, Clone, thiserror::Error)]
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
        reason: Cow<'static, str>,
    },
    #[error("provider {provider}: {source}")]
    IdToken {
        provider: String,
        #[source]
        source: IdTokenError,
    },
    /// Redis could not be told of an invalidation, so other replicas may
    /// still serve the token; retrying is safe.
    #[error("the shared cache is unavailable, so other replicas may still serve this token; retry")]
    CacheUnavailable,
    /// Redis is configured but down: an authorization state kept only in
    /// this process could not be exchanged on another replica; retry.
    #[error(
        "the shared cache is unavailable, so the authorization state cannot be shared with other replicas; retry"
    )]
    StateUnavailable,
    /// The provider did what was asked, but Redis could not be told to drop
    /// the cached tokens it concerns, so other replicas may serve them
    /// until they expire. Retrying is safe and drops them.
    #[error(
        "{done}, but the shared cache is unavailable, so other replicas may still serve its cached tokens until they expire; retry to drop them"
    )]
    DoneButCacheUnavailable { done: &'static str },
    /// A bug: the shared fetch this request waited on ended without a
    /// result (it panicked). The next request starts a new fetch.
    #[error("the token fetch failed unexpectedly; retry")]
    Internal(#[from] Abandoned),
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

/// How long a state, and the URL carrying it, can be used.
pub const AUTHORIZATION_TTL: Duration = Duration::from_secs(600);

/// What CreateAuthorizationUrl remembers under the state, for the one
/// exchange that spends it. Holds the nonce and PKCE verifier: sealed in
/// Redis, never logged, so it has no `Debug`.
#[derive(Serialize, Deserialize)]
struct PendingAuthorization {
    provider: String,
    caller: String,
    user_id: String,
    redirect_uri: String,
    nonce: String,
    code_verifier: String,
    purpose: Purpose,
}

/// What CreateAuthorizationUrl answers.
pub struct StartedAuthorization {
    pub url: String,
    pub state: String,
    /// Unix seconds: the state's lifetime, or the pushed request's if shorter.
    pub expires_at: i64,
}

/// A completed exchange by state: the token set, and who it was for.
pub struct StateExchange {
    pub token_set: TokenSet,
    pub user_id: UserId,
    pub purpose: Purpose,
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
    expiry: ExpiryPolicy,
    metrics: Arc<Metrics>,
    flights: SingleFlight<TokenKey, Result<AccessToken, Error>>,
}

/// Added to the provider's longest fetch (all its attempts) to make the
/// fill lock's TTL, so the lock outlives any fetch its holder can still be making.
const FILL_LOCK_SLACK: Duration = Duration::from_secs(2);
/// After a failed background refresh, the next try waits this long.
const REFRESH_RETRY: Duration = Duration::from_secs(5);

impl AuthService {
    pub fn new(
        providers: Providers,
        cache: Cache,
        expiry: ExpiryPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            providers,
            cache,
            expiry,
            metrics,
            flights: SingleFlight::default(),
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
        provider: &Arc<Provider>,
        user: &UserId,
        force_refresh: bool,
    ) -> Result<(AccessToken, CacheOutcome), Error> {
        if !provider.has_user_tokens() {
            return Err(unsupported(
                provider,
                "issues no user tokens, so no widget tokens",
            ));
        }
        let scopes = ScopeSet::single(WIDGET_SCOPE);
        self.issue_token(provider, Some(user), &scopes, force_refresh)
            .await
    }

    /// A token with data scopes for `user`, or an application token (no
    /// `sub`) when `user` is `None`; each scope must be allow-listed for
    /// that kind of token.
    pub async fn issue_data_token(
        &self,
        provider: &Arc<Provider>,
        user: Option<&UserId>,
        scopes: &ScopeSet,
        force_refresh: bool,
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
        self.issue_token(provider, user, scopes, force_refresh)
            .await
    }

    /// Drops `provider`'s cached token with this SHA-256 wherever it is
    /// still the cached one; true when a copy was dropped here or in Redis.
    pub async fn invalidate(&self, provider: &Provider, fingerprint: &str) -> Result<bool, Error> {
        self.cache
            .invalidate(provider.name(), fingerprint)
            .await
            .map_err(|_| Error::CacheUnavailable)
    }

    /// Exchanges an authorization code for a token set and validates its ID
    /// token. Codes are single-use, so nothing here is cached.
    pub async fn exchange_code(
        &self,
        provider: &Arc<Provider>,
        exchange: CodeExchange<'_>,
    ) -> Result<TokenSet, Error> {
        // Refuse before spending the single-use code on a set we could not validate.
        validates_id_tokens(provider)?;
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
            .verify_id_token(
                &id_token,
                Expected::CodeExchange {
                    nonce: exchange.nonce,
                    sub: exchange.sub.map(UserId::as_str),
                },
            )
            .await
            .map_err(|source| id_token_error(provider, source))?;
        Ok(TokenSet {
            token: response.token,
            id_token: Some(id_token),
            refresh_token: response.refresh_token,
            claims: Some(claims),
        })
    }

    /// Starts an authorization for `user`: makes the state, nonce and PKCE
    /// verifier, remembers them under the state for [`AUTHORIZATION_TTL`]
    /// (for `caller` only), and builds the provider's URL.
    pub async fn create_authorization_url(
        &self,
        provider: &Arc<Provider>,
        caller: &str,
        user: &UserId,
        redirect_uri: &str,
        purpose: Purpose,
    ) -> Result<StartedAuthorization, Error> {
        let configured = provider.redirect_uris();
        if configured.is_empty() {
            return Err(unsupported(
                provider,
                format!(
                    "has no redirect URIs configured: set providers.{}.redirect_uris",
                    provider.name()
                ),
            ));
        }
        // Exactly as configured, as the provider compares it (RFC 9700
        // §4.1.3): no normalisation that could make two URIs one.
        if !configured.iter().any(|uri| uri == redirect_uri) {
            return Err(ValidationError::new(
                "redirect_uri",
                format!(
                    "is not one of provider {}'s configured redirect_uris",
                    provider.name()
                ),
            )
            .into());
        }
        // 256 bits each: unguessable, and the verifier is a valid RFC 7636 one.
        let (state, nonce, code_verifier) =
            (random_hex::<32>(), random_hex::<32>(), random_hex::<32>());
        let code_challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(code_verifier.as_bytes()));
        let params = AuthorizationParams {
            user_id: user.as_str(),
            redirect_uri,
            state: &state,
            nonce: &nonce,
            code_challenge: &code_challenge,
            purpose: &purpose,
        };
        // Built first: a purpose the provider cannot serve is refused
        // before anything is remembered.
        let started_at = OffsetDateTime::now_utc().unix_timestamp();
        let authorization =
            provider
                .authorization_url(&params)
                .await
                .map_err(|error| match error {
                    AuthorizeError::Unsupported(reason) => unsupported(provider, reason),
                    AuthorizeError::Provider(source) => provider_error(provider, source),
                })?;
        let pending = PendingAuthorization {
            provider: provider.name().to_owned(),
            caller: caller.to_owned(),
            user_id: user.as_str().to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            nonce,
            code_verifier,
            purpose,
        };
        let value = serde_json::to_vec(&pending).map_err(|_| Error::StateUnavailable)?;
        let key = AuthorizationKey::new(caller, provider.name(), &state);
        self.cache
            .put_authorization(&key, &value, AUTHORIZATION_TTL)
            .await
            .map_err(|_| Error::StateUnavailable)?;
        let state_expires_at = started_at + AUTHORIZATION_TTL.as_secs() as i64;
        Ok(StartedAuthorization {
            url: authorization.url.into(),
            state,
            expires_at: authorization
                .expires_at
                .map_or(state_expires_at, |at| at.min(state_expires_at)),
        })
    }

    /// Exchanges `code` for the flow `state` started: spends the state
    /// (atomically, so only one exchange gets it), then exchanges with the
    /// remembered redirect URI, verifier and nonce, requiring the ID token
    /// to name the user (and, where it says, the connection) asked for.
    pub async fn exchange_state(
        &self,
        provider: &Arc<Provider>,
        caller: &str,
        state: &str,
        code: &str,
    ) -> Result<StateExchange, Error> {
        // Nor spend the state on an exchange that cannot succeed.
        validates_id_tokens(provider)?;
        let key = AuthorizationKey::new(caller, provider.name(), state);
        let value = self
            .cache
            .take_authorization(&key)
            .await
            .map_err(|_| Error::StateUnavailable)?
            .ok_or_else(unusable_state)?;
        let pending: PendingAuthorization =
            serde_json::from_slice(&value).map_err(|_| unusable_state())?;
        if pending.provider != provider.name() || pending.caller != caller {
            return Err(unusable_state());
        }
        let user_id = UserId::parse("state", &pending.user_id).map_err(|_| unusable_state())?;
        let token_set = self
            .exchange_code(
                provider,
                CodeExchange {
                    code,
                    redirect_uri: &pending.redirect_uri,
                    code_verifier: Some(&pending.code_verifier),
                    nonce: Some(&pending.nonce),
                    sub: Some(&user_id),
                },
            )
            .await?;
        // A purpose naming a connection asked for it as an essential claim
        // with that value: an ID token without it, or with another, is not
        // the connection the caller means to use.
        if let Some(expected) = pending.purpose.connection_id() {
            let returned = token_set
                .claims
                .as_ref()
                .and_then(|claims| claims.connection_id.as_deref());
            if returned != Some(expected) {
                return Err(id_token_error(provider, IdTokenError::Connection));
            }
        }
        Ok(StateExchange {
            token_set,
            user_id,
            purpose: pending.purpose,
        })
    }

    /// Uses a refresh token; an ID token in the answer is validated too.
    pub async fn refresh(
        &self,
        provider: &Arc<Provider>,
        refresh_token: &str,
    ) -> Result<TokenSet, Error> {
        let response = provider
            .token_set(Grant::Refresh { refresh_token })
            .await
            .map_err(|source| provider_error(provider, source))?;
        let claims = match &response.id_token {
            Some(id_token) => Some(
                provider
                    .verify_id_token(id_token, Expected::Refresh)
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
        provider: &Arc<Provider>,
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
            .issue_token(provider, None, &ScopeSet::single(SCIM_WRITE_SCOPE), false)
            .await?;
        let user = match users.create_user(&token.access_token, new_user).await {
            Ok(user) => user,
            // Taken: by this user, when an earlier create's answer was lost
            // and its id not remembered (another replica, a flushed
            // Redis)? Then the retry returns it, as CreateUser promises.
            Err(conflict @ ProviderError::Scim { status: 409, .. }) => {
                match self.find_user(provider, &new_user.external_id).await {
                    Ok(Some(found)) if found.matches(new_user) => found,
                    _ => return Err(provider_error(provider, conflict)),
                }
            }
            Err(source) => return Err(provider_error(provider, source)),
        };
        self.cache.remember_user(&key, &user.id).await;
        Ok(user)
    }

    /// The user with this external id, found with a SCIM filter.
    async fn find_user(
        &self,
        provider: &Arc<Provider>,
        external_id: &ExternalId,
    ) -> Result<Option<User>, Error> {
        let page = self.list_users(provider, 1, 1, Some(external_id)).await?;
        Ok(page.users.into_iter().next())
    }

    /// One page of users (SCIM `startIndex` is 1-based), or those with
    /// `external_id`.
    pub async fn list_users(
        &self,
        provider: &Arc<Provider>,
        start_index: u32,
        count: u32,
        external_id: Option<&ExternalId>,
    ) -> Result<UserPage, Error> {
        let users = provider.users().ok_or_else(|| no_users(provider))?;
        let (token, _) = self
            .issue_token(provider, None, &ScopeSet::single(SCIM_READ_SCOPE), false)
            .await?;
        users
            .list_users(&token.access_token, start_index, count, external_id)
            .await
            .map_err(|source| provider_error(provider, source))
    }

    /// Deletes a user at the provider: through its users API (Moneyhub's
    /// `DELETE /users/{id}`), else SCIM. Then drops every token cached for
    /// the user and the external id remembered for them, on every replica;
    /// also when the provider answers 404, so a retry after a Redis outage
    /// finishes the job.
    pub async fn delete_user(&self, provider: &Arc<Provider>, id: &UserId) -> Result<(), Error> {
        // The external id, read before the user is gone, to forget it after.
        let external_id = match provider.users() {
            Some(_) => match self.get_user(provider, id).await {
                Ok(user) => Some(user.external_id),
                Err(error) if is_not_found(&error) => None,
                Err(error) => return Err(error),
            },
            None => None,
        };
        let deleted = if let Some(api) = provider.users_api() {
            let token = self.application_token(provider, USER_DELETE_SCOPE).await?;
            api.delete_user(&token, id).await
        } else if let Some(scim) = provider.users() {
            let token = self.application_token(provider, SCIM_WRITE_SCOPE).await?;
            scim.delete_user(&token, id).await
        } else {
            return Err(no_users(provider));
        }
        .map_err(|source| provider_error(provider, source));
        let forgotten = self.forget_deleted(provider, id, external_id).await;
        deleted?;
        forgotten.map_err(|_| Error::DoneButCacheUnavailable {
            done: "the user was deleted",
        })
    }

    /// Drops what the cache holds of a deleted user, everywhere.
    async fn forget_deleted(
        &self,
        provider: &Provider,
        id: &UserId,
        external_id: Option<String>,
    ) -> Result<(), CacheError> {
        let owner = UserTokens::new(provider.name(), provider.client_id(), id);
        let tokens = self.cache.drop_user_tokens(provider.name(), owner).await;
        if let Some(external_id) = external_id {
            let key = UserKey::new(provider.name(), provider.client_id(), &external_id);
            self.cache.forget_user_everywhere(&key).await?;
        }
        tokens.map(drop)
    }

    /// A user's bank connections (Moneyhub's users API).
    pub async fn connections(
        &self,
        provider: &Arc<Provider>,
        id: &UserId,
    ) -> Result<Vec<Connection>, Error> {
        let api = provider.users_api().ok_or_else(|| no_users_api(provider))?;
        let token = self.application_token(provider, USER_READ_SCOPE).await?;
        api.connections(&token, id)
            .await
            .map_err(|source| provider_error(provider, source))
    }

    /// Removes one of a user's bank connections (Moneyhub's users API).
    pub async fn delete_connection(
        &self,
        provider: &Arc<Provider>,
        id: &UserId,
        connection: &ConnectionId,
    ) -> Result<(), Error> {
        let api = provider.users_api().ok_or_else(|| no_users_api(provider))?;
        let token = self.application_token(provider, USER_DELETE_SCOPE).await?;
        api.delete_connection(&token, id, connection)
            .await
            .map_err(|source| provider_error(provider, source))
    }

    /// Revokes a token at the provider (RFC 7009), then drops any cached
    /// copy on every replica. The token is not cached-checked first: a
    /// refresh token, or an access token bankauth never cached, is revoked too.
    pub async fn revoke_token(
        &self,
        provider: &Arc<Provider>,
        token: &str,
        hint: Option<TokenTypeHint>,
    ) -> Result<(), Error> {
        let revoked = provider
            .revoke(token, hint)
            .await
            .map_err(|source| provider_error(provider, source))?;
        if !revoked {
            return Err(unsupported(
                provider,
                "has no revocation endpoint (its discovery document names none)",
            ));
        }
        self.cache
            .invalidate(provider.name(), &fingerprint(token))
            .await
            .map(drop)
            .map_err(|_| Error::DoneButCacheUnavailable {
                done: "the provider revoked the token",
            })
    }

    /// A cached client-credentials token (no `sub`) with one scope.
    async fn application_token(
        &self,
        provider: &Arc<Provider>,
        scope: &str,
    ) -> Result<String, Error> {
        let (token, _) = self
            .issue_token(provider, None, &ScopeSet::single(scope), false)
            .await?;
        Ok(token.access_token)
    }

    /// The user this service created under `key`, if it still exists.
    async fn existing_user(
        &self,
        provider: &Arc<Provider>,
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

    pub async fn get_user(&self, provider: &Arc<Provider>, id: &UserId) -> Result<User, Error> {
        let users = provider.users().ok_or_else(|| no_users(provider))?;
        let (token, _) = self
            .issue_token(provider, None, &ScopeSet::single(SCIM_READ_SCOPE), false)
            .await?;
        users
            .get_user(&token.access_token, id)
            .await
            .map_err(|source| provider_error(provider, source))
    }

    /// Serves a token from the cache (refreshing it in the background once
    /// it is due), or fetches it: concurrent misses for one key, in this
    /// process and across replicas sharing Redis, make one upstream call.
    async fn issue_token(
        &self,
        provider: &Arc<Provider>,
        sub: Option<&UserId>,
        scopes: &ScopeSet,
        force_refresh: bool,
    ) -> Result<(AccessToken, CacheOutcome), Error> {
        let endpoints = provider.endpoints();
        let source = TokenSource {
            provider: provider.name(),
            token_url: endpoints.token_url.as_str(),
            client_id: provider.client_id(),
            client_auth: provider.client_auth_method(),
        };
        let key = TokenKey::new(&source, sub, scopes);
        let now = now_millis();
        let cached = self.cache.get_token(&key, now).await;
        if let (true, Some(revoked)) = (force_refresh, &cached) {
            // Compare-and-delete, as InvalidateToken: a fresher token stays.
            // Best effort: during a Redis outage the fresh token is still
            // fetched and served, though other replicas may keep the old one.
            let _ = self
                .cache
                .invalidate(provider.name(), &fingerprint(&revoked.token.access_token))
                .await;
        }
        if let Some(cached) = cached.filter(|_| !force_refresh) {
            if cached.needs_refresh(now) {
                // Nobody waits on a refresh: it keeps the provider's own deadline.
                let refresh = self.fill(provider, &key, sub, scopes);
                let provider_name = provider.name().to_owned();
                self.flights.spawn(key, async move {
                    let result = refresh.await;
                    if let Err(error) = &result {
                        tracing::warn!(provider = provider_name, %error, "background refresh failed; the cached token is served until it expires");
                    }
                    result
                });
            }
            return Ok((cached.token, CacheOutcome::Hit));
        }
        let fill = self.fill(provider, &key, sub, scopes);
        let (result, flight) = self.flights.run(key, deadline::current(), fill).await?;
        if flight == Flight::Joined {
            self.metrics.coalesced(provider.name());
        }
        result.map(|token| (token, CacheOutcome::Miss))
    }

    /// One flight's detached work: coordinate with other replicas, fetch,
    /// cache. Owns everything it needs, since it outlives its callers; its
    /// retries stop at the latest deadline among the callers waiting on it
    /// (see [`SingleFlight::run`]), and a caller giving up cancels nothing.
    fn fill(
        &self,
        provider: &Arc<Provider>,
        key: &TokenKey,
        sub: Option<&UserId>,
        scopes: &ScopeSet,
    ) -> impl Future<Output = Result<AccessToken, Error>> + Send + 'static {
        let (cache, metrics, expiry) = (self.cache.clone(), self.metrics.clone(), self.expiry);
        let (provider, key, sub, scopes) = (provider.clone(), *key, sub.cloned(), scopes.clone());
        async move {
            let lock_ttl = provider.longest_fetch() + FILL_LOCK_SLACK;
            let lock = match cache.coordinate_fill(&key, lock_ttl, now_millis).await {
                Fill::FilledByOther(cached) => return Ok(cached.token),
                Fill::Proceed(lock) => lock,
            };
            let issued_at = now_millis();
            let result = provider
                .request_token(sub.as_ref(), &scopes)
                .await
                .map_err(|source| provider_error(&provider, source));
            match &result {
                Ok(token) => {
                    metrics.token_issued(provider.name());
                    let mut entry = expiry.entry(provider.name(), token.clone(), issued_at);
                    entry.owner = sub.as_ref().map(|sub| {
                        UserTokens::new(provider.name(), provider.client_id(), sub).to_hex()
                    });
                    cache.put_token(&key, &entry, now_millis()).await;
                }
                Err(_) => {
                    cache
                        .postpone_refresh(&key, now_millis(), REFRESH_RETRY)
                        .await
                }
            }
            if let Some(lock) = lock {
                cache.release(lock).await;
            }
            result
        }
        // The upstream call belongs to the trace of the caller that started it.
        .instrument(tracing::Span::current())
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

/// Refuses an exchange whose ID token could not be validated.
fn validates_id_tokens(provider: &Provider) -> Result<(), Error> {
    let endpoints = provider.endpoints();
    if endpoints.issuer.is_none() || endpoints.jwks_url.is_none() {
        return Err(unsupported(
            provider,
            "cannot validate ID tokens: configure its issuer (with discovery) or issuer and jwks_url",
        ));
    }
    Ok(())
}

fn unsupported(provider: &Provider, reason: impl Into<Cow<'static, str>>) -> Error {
    Error::Unsupported {
        provider: provider.name().to_owned(),
        reason: reason.into(),
    }
}

/// The one answer for every state that cannot be used, so a caller learns
/// nothing about states that are not its own.
fn unusable_state() -> Error {
    ValidationError::new(
        "state",
        "is unknown, expired, already used, or was made for another caller or provider",
    )
    .into()
}

fn no_users(provider: &Provider) -> Error {
    unsupported(provider, "has no user management")
}

fn no_users_api(provider: &Provider) -> Error {
    unsupported(
        provider,
        "has no users API, so no connections (set users_url for a Moneyhub-compatible one)",
    )
}

/// Whether the provider said there is no such user.
fn is_not_found(error: &Error) -> bool {
    matches!(
        error,
        Error::Provider {
            source: ProviderError::Scim { status: 404, .. }
                | ProviderError::UsersApi { status: 404, .. },
            ..
        }
    )
}

fn now_millis() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
