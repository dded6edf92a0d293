//! The gRPC surface: thin adapters from proto requests to the service.
//! Each handler validates its request into domain types, calls the service,
//! and converts back. [`observe::ObserveLayer`], around the whole server,
//! gives every call its deadline, log line and metrics.

mod convert;
pub mod observe;
mod page_token;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Span;

use crate::access::{Access, Caller};
use crate::cache::fingerprint;
use crate::domain::{
    ConnectionId, ExternalId, ScopeSet, UserId, ValidationError, code_verifier, opaque_value,
    redirect_uri, sha256_hex,
};
use crate::proto::v1 as pb;
use crate::proto::v1::auth_service_server::AuthService as AuthServiceRpc;
use crate::proto::v1::invalidate_token_request::Token as InvalidateForm;
use crate::provider::{Provider, TokenTypeHint, WIDGET_SCOPE};
use crate::service::{AuthService, CacheOutcome, CodeExchange, TokenSet};
use crate::telemetry::metrics::GrpcMethod;
use observe::{AUDIT, Method};
use status::RpcError;

/// Longest authorization code accepted; real ones are well under 100 characters.
const MAX_CODE_LEN: usize = 2048;
/// Longest refresh token accepted; JWT refresh tokens can be a few kB.
const MAX_REFRESH_TOKEN_LEN: usize = 8192;
const MAX_NONCE_LEN: usize = 512;
/// Longest state accepted; bankauth's are 64 hex characters.
const MAX_STATE_LEN: usize = 256;
/// Longest access token accepted for invalidation; JWTs run to a few kB.
const MAX_ACCESS_TOKEN_LEN: usize = 16 * 1024;
/// ListUsers' page size when the request leaves it 0 (AIP-158), and its bound.
const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 100;

pub use pb::auth_service_server::AuthServiceServer;

/// Serves `bankauth.v1.AuthService` from an [`AuthService`] to the callers
/// [`Access`] admits.
#[derive(Debug, Clone)]
pub struct AuthApi {
    service: Arc<AuthService>,
    access: Arc<Access>,
}

impl AuthApi {
    pub fn new(service: Arc<AuthService>, access: Arc<Access>) -> Self {
        Self { service, access }
    }

    /// Resolves the request's provider, checks the caller may use it, and
    /// notes it on the RPC's log line.
    fn provider(&self, caller: &Caller, name: &str) -> Result<Arc<Provider>, RpcError> {
        let provider = self.service.provider(name)?;
        Span::current().record("provider", provider.name());
        caller.check_provider(provider.name())?;
        Ok(provider)
    }
}

#[tonic::async_trait]
impl AuthServiceRpc for AuthApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let new_user = convert::new_user(&request)?;
            let user = self.service.create_user(&provider, &new_user).await?;
            tracing::info!(
                target: AUDIT,
                event = "user_created",
                caller = %caller.name,
                provider = provider.name(),
                sub = %user.id,
            );
            Ok(pb::CreateUserResponse {
                user: Some(user.into()),
            })
        })
        .await
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let user_id = UserId::parse("user_id", &request.user_id)?;
            let user = self.service.get_user(&provider, &user_id).await?;
            Ok(pb::GetUserResponse {
                user: Some(user.into()),
            })
        })
        .await
    }

    async fn issue_widget_token(
        &self,
        request: Request<pb::IssueWidgetTokenRequest>,
    ) -> Result<Response<pb::IssueWidgetTokenResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let user_id = UserId::parse("user_id", &request.user_id)?;
            caller.check_scopes([WIDGET_SCOPE])?;
            let (token, outcome) = self
                .service
                .issue_widget_token(&provider, &user_id, request.force_refresh)
                .await?;
            record_cache(outcome);
            audit_token(Some(&user_id), &token.scopes);
            Ok(pb::IssueWidgetTokenResponse {
                token: Some(token.into()),
            })
        })
        .await
    }

    async fn issue_data_token(
        &self,
        request: Request<pb::IssueDataTokenRequest>,
    ) -> Result<Response<pb::IssueDataTokenResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let user_id = optional(&request.user_id, |v| UserId::parse("user_id", v))?;
            let scopes = ScopeSet::parse("scopes", &request.scopes)?;
            caller.check_scopes(scopes.iter().map(|scope| scope.as_str()))?;
            let (token, outcome) = self
                .service
                .issue_data_token(&provider, user_id.as_ref(), &scopes, request.force_refresh)
                .await?;
            record_cache(outcome);
            audit_token(user_id.as_ref(), &token.scopes);
            Ok(pb::IssueDataTokenResponse {
                token: Some(token.into()),
            })
        })
        .await
    }

    async fn create_authorization_url(
        &self,
        request: Request<pb::CreateAuthorizationUrlRequest>,
    ) -> Result<Response<pb::CreateAuthorizationUrlResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let user_id = UserId::parse("user_id", &request.user_id)?;
            let redirect_uri = redirect_uri("redirect_uri", &request.redirect_uri)?;
            let purpose = convert::purpose(&request)?;
            let purpose_name = purpose.name();
            let connection_id = purpose.connection_id().map(str::to_owned);
            let started = self
                .service
                .create_authorization_url(&provider, &caller.name, &user_id, &redirect_uri, purpose)
                .await?;
            tracing::info!(
                target: AUDIT,
                event = "authorization_url_created",
                caller = %caller.name,
                provider = provider.name(),
                sub = %user_id,
                purpose = purpose_name,
                connection_id,
            );
            Ok(pb::CreateAuthorizationUrlResponse {
                url: started.url,
                state: started.state,
                expire_time: Some(prost_types::Timestamp {
                    seconds: started.expires_at,
                    nanos: 0,
                }),
            })
        })
        .await
    }

    async fn exchange_authorization_code(
        &self,
        request: Request<pb::ExchangeAuthorizationCodeRequest>,
    ) -> Result<Response<pb::ExchangeAuthorizationCodeResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let code = opaque_value("code", &request.code, MAX_CODE_LEN)?;
            if !request.state.is_empty() {
                return self
                    .exchange_by_state(caller, &provider, &request, &code)
                    .await;
            }
            let redirect_uri = redirect_uri("redirect_uri", &request.redirect_uri)?;
            let code_verifier = optional(&request.code_verifier, |v| {
                code_verifier("code_verifier", v)
            })?;
            let nonce = optional(&request.nonce, |v| opaque_value("nonce", v, MAX_NONCE_LEN))?;
            let sub = optional(&request.sub, |v| UserId::parse("sub", v))?;
            let exchange = CodeExchange {
                code: &code,
                redirect_uri: &redirect_uri,
                code_verifier: code_verifier.as_deref(),
                nonce: nonce.as_deref(),
                sub: sub.as_ref(),
            };
            let token_set = self.service.exchange_code(&provider, exchange).await?;
            Ok(pb::ExchangeAuthorizationCodeResponse {
                token_set: Some(token_set.into()),
            })
        })
        .await
    }

    async fn refresh_token(
        &self,
        request: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::RefreshTokenResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let refresh_token = opaque_value(
                "refresh_token",
                &request.refresh_token,
                MAX_REFRESH_TOKEN_LEN,
            )?;
            let token_set = self.service.refresh(&provider, &refresh_token).await?;
            Ok(pb::RefreshTokenResponse {
                token_set: Some(token_set.into()),
            })
        })
        .await
    }

    async fn invalidate_token(
        &self,
        request: Request<pb::InvalidateTokenRequest>,
    ) -> Result<Response<pb::InvalidateTokenResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let fingerprint = match &request.token {
                Some(InvalidateForm::AccessToken(token)) => {
                    fingerprint(&opaque_value("access_token", token, MAX_ACCESS_TOKEN_LEN)?)
                }
                Some(InvalidateForm::AccessTokenSha256(hash)) => {
                    sha256_hex("access_token_sha256", hash)?
                }
                None => {
                    return Err(ValidationError::new(
                        "access_token",
                        "give one of access_token and access_token_sha256",
                    )
                    .into());
                }
            };
            let invalidated = self.service.invalidate(&provider, &fingerprint).await?;
            Ok(pb::InvalidateTokenResponse { invalidated })
        })
        .await
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let user_id = UserId::parse("user_id", &request.user_id)?;
            self.service.delete_user(&provider, &user_id).await?;
            tracing::info!(
                target: AUDIT,
                event = "user_deleted",
                caller = %caller.name,
                provider = provider.name(),
                sub = %user_id,
            );
            Ok(pb::DeleteUserResponse {})
        })
        .await
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let page_size = page_size(request.page_size)?;
            let external_id = optional(&request.external_id, |v| {
                ExternalId::parse("external_id", v)
            })?;
            let listing = page_token::Listing {
                provider: provider.name(),
                external_id: external_id.as_ref(),
            };
            let start_index = optional(&request.page_token, |v| listing.start_index(v))?;
            let page = self
                .service
                .list_users(
                    &provider,
                    start_index.unwrap_or(1),
                    page_size,
                    external_id.as_ref(),
                )
                .await?;
            Ok(pb::ListUsersResponse {
                users: page.users.into_iter().map(pb::User::from).collect(),
                next_page_token: page
                    .next_start_index
                    .map(|start| listing.token(start))
                    .unwrap_or_default(),
            })
        })
        .await
    }

    async fn list_user_connections(
        &self,
        request: Request<pb::ListUserConnectionsRequest>,
    ) -> Result<Response<pb::ListUserConnectionsResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let user_id = UserId::parse("user_id", &request.user_id)?;
            let connections = self.service.connections(&provider, &user_id).await?;
            Ok(pb::ListUserConnectionsResponse {
                connections: connections.into_iter().map(pb::Connection::from).collect(),
            })
        })
        .await
    }

    async fn delete_user_connection(
        &self,
        request: Request<pb::DeleteUserConnectionRequest>,
    ) -> Result<Response<pb::DeleteUserConnectionResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let user_id = UserId::parse("user_id", &request.user_id)?;
            let connection_id = ConnectionId::parse("connection_id", &request.connection_id)?;
            self.service
                .delete_connection(&provider, &user_id, &connection_id)
                .await?;
            tracing::info!(
                target: AUDIT,
                event = "connection_deleted",
                caller = %caller.name,
                provider = provider.name(),
                sub = %user_id,
                connection_id = %connection_id,
            );
            Ok(pb::DeleteUserConnectionResponse {})
        })
        .await
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let token = opaque_value("token", &request.token, MAX_ACCESS_TOKEN_LEN)?;
            let hint = token_type_hint(request.token_type_hint)?;
            self.service.revoke_token(&provider, &token, hint).await?;
            tracing::info!(
                target: AUDIT,
                event = "token_revoked",
                caller = %caller.name,
                provider = provider.name(),
                token_type_hint = hint.map_or("none", TokenTypeHint::as_str),
            );
            Ok(pb::RevokeTokenResponse {})
        })
        .await
    }
}

/// AIP-158: 0 asks for the default; 1 to [`MAX_PAGE_SIZE`] otherwise.
fn page_size(value: i32) -> Result<u32, ValidationError> {
    match u32::try_from(value) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) if size <= MAX_PAGE_SIZE => Ok(size),
        _ => Err(ValidationError::new(
            "page_size",
            format!("must be 1 to {MAX_PAGE_SIZE}, or 0 for {DEFAULT_PAGE_SIZE}"),
        )),
    }
}

fn token_type_hint(value: i32) -> Result<Option<TokenTypeHint>, ValidationError> {
    match pb::TokenTypeHint::try_from(value) {
        Ok(pb::TokenTypeHint::Unspecified) => Ok(None),
        Ok(pb::TokenTypeHint::AccessToken) => Ok(Some(TokenTypeHint::AccessToken)),
        Ok(pb::TokenTypeHint::RefreshToken) => Ok(Some(TokenTypeHint::RefreshToken)),
        Err(_) => Err(ValidationError::new(
            "token_type_hint",
            "is not a TokenTypeHint value",
        )),
    }
}

/// Optional request fields are empty strings on the wire.
fn optional<T>(
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, ValidationError>,
) -> Result<Option<T>, ValidationError> {
    if value.is_empty() {
        Ok(None)
    } else {
        parse(value).map(Some)
    }
}

fn record_cache(outcome: CacheOutcome) {
    Span::current().record("cache", outcome.as_str());
}

/// Notes a token handed out on the call's span. The call's one log line
/// (its audit record, see [`observe`]) then names what went to whom: the
/// caller, provider and cache outcome are on the span already. Never the token.
fn audit_token(sub: Option<&UserId>, scopes: &[String]) {
    let span = Span::current();
    span.record("event", "token_issued");
    if let Some(sub) = sub {
        span.record("sub", sub.as_str());
    }
    span.record("scopes", tracing::field::display(Joined(scopes)));
}

/// Scopes as one space-separated field, without building the string.
struct Joined<'a>(&'a [String]);

impl std::fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope)?;
        }
        Ok(())
    }
}

/// One event per completed exchange by state: who, for whom, which
/// connection; never the code, state or tokens.
fn audit_exchange(caller: &Caller, provider: &Provider, token_set: &TokenSet, purpose: &str) {
    let claims = token_set.claims.as_ref();
    tracing::info!(
        target: AUDIT,
        event = "authorization_code_exchanged",
        caller = %caller.name,
        provider = provider.name(),
        sub = claims.map(|claims| claims.sub.as_str()),
        connection_id = claims.and_then(|claims| claims.connection_id.as_deref()),
        purpose,
    );
}

impl AuthApi {
    /// ExchangeAuthorizationCode for a flow CreateAuthorizationUrl started:
    /// only `state` and `code`; the rest was remembered under the state.
    async fn exchange_by_state(
        &self,
        caller: &Caller,
        provider: &Arc<Provider>,
        request: &pb::ExchangeAuthorizationCodeRequest,
        code: &str,
    ) -> Result<pb::ExchangeAuthorizationCodeResponse, RpcError> {
        for (field, value) in [
            ("redirect_uri", &request.redirect_uri),
            ("code_verifier", &request.code_verifier),
            ("nonce", &request.nonce),
            ("sub", &request.sub),
        ] {
            if !value.is_empty() {
                return Err(ValidationError::new(
                    field,
                    "must be empty with state: it comes from the flow CreateAuthorizationUrl started",
                )
                .into());
            }
        }
        let state = opaque_value("state", &request.state, MAX_STATE_LEN)?;
        let exchange = self
            .service
            .exchange_state(provider, &caller.name, &state, code)
            .await?;
        audit_exchange(
            caller,
            provider,
            &exchange.token_set,
            exchange.purpose.name(),
        );
        Ok(pb::ExchangeAuthorizationCodeResponse {
            token_set: Some(exchange.token_set.into()),
        })
    }

    /// Admits the caller (API key or client certificate, RPC policy, rate
    /// limit) and runs the handler. The RPC's name, span and deadline come
    /// from [`observe::ObserveLayer`], which also logs and counts it.
    async fn observe<'a, M, T, Handler, Fut>(
        &'a self,
        request: Request<M>,
        handler: Handler,
    ) -> Result<Response<T>, Status>
    where
        Handler: FnOnce(&'a Caller, M) -> Fut,
        Fut: Future<Output = Result<T, RpcError>>,
    {
        let client_certificates = request.peer_certs();
        let (metadata, extensions, message) = request.into_parts();
        let Some(&Method(GrpcMethod {
            grpc_method: method,
            ..
        })) = extensions.get::<Method>()
        else {
            return Err(Status::internal(
                "the AuthService is served without its observer",
            ));
        };
        let caller = self.access.admit(
            &metadata,
            client_certificates.as_deref().map(Vec::as_slice),
            method,
        );
        let result = async {
            let caller = caller?;
            Span::current().record("caller", caller.name.as_str());
            handler(caller, message).await
        };
        result.await.map(Response::new).map_err(Status::from)
    }
}
