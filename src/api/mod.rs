//! The gRPC surface: thin adapters from proto requests to the service.
//! Each handler validates its request into domain types, calls the service,
//! and converts back; `observe` logs one line per RPC.

mod convert;
pub mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Code, Request, Response, Status};
use tracing::{Instrument, Span, field};

use crate::access::{Access, Caller};
use crate::cache::fingerprint;
use crate::deadline;
use crate::domain::{ScopeSet, UserId, ValidationError, code_verifier, opaque_value, redirect_uri};
use crate::proto::v1 as pb;
use crate::proto::v1::auth_service_server::AuthService as AuthServiceRpc;
use crate::provider::Provider;
use crate::service::{AuthService, CacheOutcome, CodeExchange};
use crate::telemetry::{Metrics, propagation};
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
    metrics: Arc<Metrics>,
    /// The longest any RPC may take, whatever deadline its caller sets.
    request_timeout: Duration,
}

impl AuthApi {
    pub fn new(
        service: Arc<AuthService>,
        access: Arc<Access>,
        metrics: Arc<Metrics>,
        request_timeout: Duration,
    ) -> Self {
        Self {
            service,
            access,
            metrics,
            request_timeout,
        }
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
        self.observe(request, "CreateUser", |caller, request| async move {
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
        self.observe(request, "GetUser", |caller, request| async move {
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
        self.observe(request, "IssueWidgetToken", |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let user_id = UserId::parse("user_id", &request.user_id)?;
            caller.check_scopes([WIDGET_SCOPE])?;
            let (token, outcome) = self
                .service
                .issue_widget_token(&provider, &user_id, request.force_refresh)
                .await?;
            record_cache(outcome);
            audit_token(caller, &provider, Some(&user_id), &token.scopes, outcome);
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
        self.observe(request, "IssueDataToken", |caller, request| async move {
            let provider = self.provider(caller, &request.provider)?;
            let user_id = optional(&request.user_id, |v| UserId::parse("user_id", v))?;
            let scopes = ScopeSet::parse("scopes", &request.scopes)?;
            caller.check_scopes(scopes.iter().map(|scope| scope.as_str()))?;
            let (token, outcome) = self
                .service
                .issue_data_token(&provider, user_id.as_ref(), &scopes, request.force_refresh)
                .await?;
            record_cache(outcome);
            audit_token(caller, &provider, user_id.as_ref(), &token.scopes, outcome);
            Ok(pb::IssueDataTokenResponse {
                token: Some(token.into()),
            })
        })
        .await
    }

    async fn exchange_authorization_code(
        &self,
        request: Request<pb::ExchangeAuthorizationCodeRequest>,
    ) -> Result<Response<pb::ExchangeAuthorizationCodeResponse>, Status> {
        self.observe(
            request,
            "ExchangeAuthorizationCode",
            |caller, request| async move {
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
            },
        )
        .await
    }

    async fn refresh_token(
        &self,
        request: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::RefreshTokenResponse>, Status> {
        self.observe(request, "RefreshToken", |caller, request| async move {
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
        self.observe(request, "InvalidateToken", |caller, request| async move {
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
}

/// A SHA-256 as 64 lowercase hex characters.
fn sha256_hex(field: &str, value: &str) -> Result<String, ValidationError> {
    if value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(value.to_owned())
    } else {
        Err(ValidationError::new(
            field,
            "must be 64 lowercase hex characters",
        ))
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

/// The log target of audit events: one per token issued or user created,
/// naming the caller; never the token.
const AUDIT: &str = "bankauth::audit";

/// The scope of every widget token.
const WIDGET_SCOPE: &str = "widget_authentication";

fn audit_token(
    caller: &Caller,
    provider: &Provider,
    sub: Option<&UserId>,
    scopes: &[String],
    outcome: CacheOutcome,
) {
    tracing::info!(
        target: AUDIT,
        event = "token_issued",
        caller = %caller.name,
        provider = provider.name(),
        sub = sub.map(UserId::as_str),
        scopes = %scopes.join(" "),
        cache = outcome.as_str(),
    );
}

impl AuthApi {
    /// Runs one RPC inside its span (continuing the caller's W3C trace) and
    /// ends it with one log line and its metrics: method, provider, cache
    /// outcome, gRPC code, latency, trace id. Never the request body.
    /// The caller is admitted (API key, RPC policy, rate limit) first.
    async fn observe<'a, M, T, Handler, Fut>(
        &'a self,
        request: Request<M>,
        method: &'static str,
        handler: Handler,
    ) -> Result<Response<T>, Status>
    where
        Handler: FnOnce(&'a Caller, M) -> Fut,
        Fut: Future<Output = Result<T, RpcError>>,
    {
        let client_certificates = request.peer_certs();
        let (metadata, _, message) = request.into_parts();
        let metadata = &metadata;
        let span = tracing::info_span!(
            "rpc",
            otel.name = format!("bankauth.v1.AuthService/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            method,
            caller = field::Empty,
            provider = field::Empty,
            cache = field::Empty,
            code = field::Empty,
            trace_id = field::Empty,
        );
        if let Some(trace_id) = propagation::continue_trace(&span, metadata) {
            span.record("trace_id", trace_id);
        }
        let started = Instant::now();
        let allowed = metadata
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(deadline::parse_grpc_timeout)
            .map_or(self.request_timeout, |asked| {
                asked.min(self.request_timeout)
            });
        let admitted = async {
            let caller = self.access.admit(
                metadata,
                client_certificates.as_deref().map(Vec::as_slice),
                method,
            )?;
            Span::current().record("caller", caller.name.as_str());
            handler(caller, message).await
        };
        let deadline = tokio::time::Instant::from_std(started) + allowed;
        let result = deadline::scope(deadline, admitted.instrument(span.clone())).await;
        let elapsed = started.elapsed();
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let (code, result) = match result {
            Ok(response) => (Code::Ok, Ok(Response::new(response))),
            Err(error) => {
                let status = Status::from(error);
                (status.code(), Err(status))
            }
        };
        let code_name = code_name(code);
        span.record("code", code_name);
        self.metrics.rpc(method, code_name, elapsed);
        let _entered = span.enter();
        match &result {
            Ok(_) => tracing::info!(latency_ms, "rpc finished"),
            Err(status) if matches!(code, Code::Unavailable | Code::Internal | Code::Unknown) => {
                tracing::warn!(latency_ms, error = status.message(), "rpc failed")
            }
            Err(status) => tracing::info!(latency_ms, error = status.message(), "rpc failed"),
        }
        result
    }
}

/// The canonical gRPC code names, as metrics and logs label them.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
