//! The gRPC surface: thin adapters from proto requests to the service.
//! Each handler validates its request into domain types, calls the service,
//! and converts back; `observe` logs one line per RPC.

mod convert;
pub mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, field};

use crate::domain::{ScopeSet, UserId};
use crate::proto::v1 as pb;
use crate::proto::v1::auth_service_server::AuthService as AuthServiceRpc;
use crate::provider::Provider;
use crate::service::{AuthService, CacheOutcome, Error};

pub use pb::auth_service_server::AuthServiceServer;

/// Serves `bankauth.v1.AuthService` from an [`AuthService`].
#[derive(Debug, Clone)]
pub struct AuthApi {
    service: Arc<AuthService>,
}

impl AuthApi {
    pub fn new(service: Arc<AuthService>) -> Self {
        Self { service }
    }

    /// Resolves the request's provider and notes it on the RPC's log line.
    fn provider(&self, name: &str) -> Result<Arc<Provider>, Error> {
        let provider = self.service.provider(name)?;
        Span::current().record("provider", provider.name());
        Ok(provider)
    }
}

#[tonic::async_trait]
impl AuthServiceRpc for AuthApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let request = request.into_inner();
        observe("CreateUser", async {
            let provider = self.provider(&request.provider)?;
            let new_user = convert::new_user(&request)?;
            let user = self.service.create_user(&provider, &new_user).await?;
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
        let request = request.into_inner();
        observe("GetUser", async {
            let provider = self.provider(&request.provider)?;
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
        let request = request.into_inner();
        observe("IssueWidgetToken", async {
            let provider = self.provider(&request.provider)?;
            let user_id = UserId::parse("user_id", &request.user_id)?;
            let (token, outcome) = self.service.issue_widget_token(&provider, &user_id).await?;
            record_cache(outcome);
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
        let request = request.into_inner();
        observe("IssueDataToken", async {
            let provider = self.provider(&request.provider)?;
            let user_id = UserId::parse("user_id", &request.user_id)?;
            let scopes = ScopeSet::parse("scopes", &request.scopes)?;
            let (token, outcome) = self
                .service
                .issue_data_token(&provider, &user_id, &scopes)
                .await?;
            record_cache(outcome);
            Ok(pb::IssueDataTokenResponse {
                token: Some(token.into()),
            })
        })
        .await
    }
}

fn record_cache(outcome: CacheOutcome) {
    Span::current().record("cache", outcome.as_str());
}

/// Runs one RPC inside its span and logs one line when it ends: method,
/// provider, cache outcome, gRPC code and latency. Never the request body.
async fn observe<T>(
    method: &'static str,
    handler: impl Future<Output = Result<T, Error>>,
) -> Result<Response<T>, Status> {
    let span = tracing::info_span!("rpc", method, provider = field::Empty, cache = field::Empty);
    let started = Instant::now();
    let result = handler.instrument(span.clone()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let _entered = span.enter();
    match result {
        Ok(response) => {
            tracing::info!(code = "OK", latency_ms, "rpc finished");
            Ok(Response::new(response))
        }
        Err(error) => {
            let status = Status::from(error);
            let code = format!("{:?}", status.code());
            match status.code() {
                tonic::Code::Unavailable | tonic::Code::Internal => {
                    tracing::warn!(code, latency_ms, error = status.message(), "rpc failed")
                }
                _ => tracing::info!(code, latency_ms, error = status.message(), "rpc failed"),
            }
            Err(status)
        }
    }
}
