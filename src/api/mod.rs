//! The gRPC surface: thin adapters from proto requests to the service.
//! Each handler validates its request into domain types, calls the service,
//! and converts back. [`observe::ObserveLayer`], around the whole server,
//! gives every call its deadline, log line and metrics.

mod convert;
pub mod observe;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Span;

use crate::access::{Access, Caller};
use crate::cache::fingerprint;
use crate::domain::{
    ScopeSet, UserId, ValidationError, code_verifier, opaque_value, redirect_uri, sha256_hex,
};
use crate::proto::v1 as pb;
use crate::proto::v1::auth_service_server::AuthService as AuthServiceRpc;
use crate::provider::{Provider, WIDGET_SCOPE};
use crate::service::{AuthService, CacheOutcome, CodeExchange};
use observe::Method;
use status::RpcError;

/// Longest authorization code accepted; real ones are well under 100 characters.
const MAX_CODE_LEN: usize = 2048;
/// Longest refresh token accepted; JWT refresh tokens can be a few kB.
const MAX_REFRESH_TOKEN_LEN: usize = 8192;
const MAX_NONCE_LEN: usize = 512;
/// Longest access token accepted for invalidation; JWTs run to a few kB.
const MAX_ACCESS_TOKEN_LEN: usize = 16 * 1024;

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
                target: observe::AUDIT,
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
        _request: Request<pb::CreateAuthorizationUrlRequest>,
    ) -> Result<Response<pb::CreateAuthorizationUrlResponse>, Status> {
        Err(Status::unimplemented("TODO(issue 16)"))
    }

    async fn exchange_authorization_code(
        &self,
        request: Request<pb::ExchangeAuthorizationCodeRequest>,
    ) -> Result<Response<pb::ExchangeAuthorizationCodeResponse>, Status> {
        self.observe(request, |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let code = opaque_value("code", &request.code, MAX_CODE_LEN)?;
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
            let fingerprint = match (
                request.access_token.as_str(),
                request.access_token_sha256.as_str(),
            ) {
                (token, "") if !token.is_empty() => {
                    fingerprint(&opaque_value("access_token", token, MAX_ACCESS_TOKEN_LEN)?)
                }
                ("", hash) if !hash.is_empty() => sha256_hex("access_token_sha256", hash)?,
                _ => {
                    return Err(ValidationError::new(
                        "access_token",
                        "give exactly one of access_token and access_token_sha256",
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
        _request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        Err(Status::unimplemented("TODO(issue 16)"))
    }

    async fn list_users(
        &self,
        _request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        Err(Status::unimplemented("TODO(issue 16)"))
    }

    async fn list_user_connections(
        &self,
        _request: Request<pb::ListUserConnectionsRequest>,
    ) -> Result<Response<pb::ListUserConnectionsResponse>, Status> {
        Err(Status::unimplemented("TODO(issue 16)"))
    }

    async fn delete_user_connection(
        &self,
        _request: Request<pb::DeleteUserConnectionRequest>,
    ) -> Result<Response<pb::DeleteUserConnectionResponse>, Status> {
        Err(Status::unimplemented("TODO(issue 16)"))
    }

    async fn revoke_token(
        &self,
        _request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        Err(Status::unimplemented("TODO(issue 16)"))
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

impl AuthApi {
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
        let Some(&Method(method)) = extensions.get::<Method>() else {
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
