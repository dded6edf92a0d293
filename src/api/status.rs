//! The one place where errors become gRPC statuses.
//!
//! Every status carries a `google.rpc.ErrorInfo` with an UPPER_SNAKE reason
//! in domain [`ERROR_DOMAIN`]; provider failures add the provider's own
//! error code as metadata `upstream_error`, invalid input a `BadRequest`
//! naming the field, rate limits a `RetryInfo`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::access::AccessError;
use crate::provider::{IdTokenError, ProviderError};
use crate::service::Error;

pub const ERROR_DOMAIN: &str = "bankauth.dev";

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::new();
        let (code, reason) = match error {
            Error::InvalidArgument(invalid) => {
                details.add_bad_request_violation(&invalid.field, &invalid.reason);
                metadata.insert("field".to_owned(), invalid.field);
                (Code::InvalidArgument, "INVALID_ARGUMENT")
            }
            Error::Access(refused) => match refused {
                AccessError::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
                AccessError::Denied {
                    caller,
                    what,
                    value,
                } => {
                    metadata.insert("caller".to_owned(), caller);
                    metadata.insert("refused".to_owned(), what.to_owned());
                    metadata.insert(what.to_owned(), value);
                    (Code::PermissionDenied, "PERMISSION_DENIED")
                }
                AccessError::RateLimited {
                    caller,
                    retry_after,
                } => {
                    metadata.insert("caller".to_owned(), caller);
                    details.set_retry_info(Some(retry_after));
                    (Code::ResourceExhausted, "CALLER_RATE_LIMITED")
                }
            },
            Error::UserConflict { provider, .. } => {
                metadata.insert("provider".to_owned(), provider);
                (Code::AlreadyExists, "USER_ALREADY_EXISTS")
            }
            Error::Unsupported { provider, .. } => {
                metadata.insert("provider".to_owned(), provider);
                (Code::FailedPrecondition, "NOT_SUPPORTED_BY_PROVIDER")
            }
            Error::IdToken { provider, source } => {
                metadata.insert("provider".to_owned(), provider);
                metadata.insert("check".to_owned(), source.check().to_owned());
                match source {
                    IdTokenError::Jwks(_) => (Code::Unavailable, "UPSTREAM_UNAVAILABLE"),
                    IdTokenError::NotConfigured => {
                        (Code::FailedPrecondition, "NOT_SUPPORTED_BY_PROVIDER")
                    }
                    _ => (Code::Unauthenticated, "ID_TOKEN_INVALID"),
                }
            }
            Error::Internal(_) => (Code::Internal, "INTERNAL_ERROR"),
            Error::CacheUnavailable => (Code::Unavailable, "SHARED_CACHE_UNAVAILABLE"),
            Error::Provider { provider, source } => {
                metadata.insert("provider".to_owned(), provider);
                if let Some(upstream) = upstream_error(&source) {
                    metadata.insert("upstream_error".to_owned(), upstream);
                }
                match source {
                    ProviderError::RateLimited {
                        retry_after: Some(delay),
                        ..
                    }
                    | ProviderError::CircuitOpen { retry_after: delay }
                    | ProviderError::BudgetExhausted { retry_after: delay } => {
                        details.set_retry_info(Some(delay));
                    }
                    _ => {}
                }
                classify(&source)
            }
        };
        let message = match reason {
            "UPSTREAM_REJECTED_CREDENTIALS" => format!(
                "{message} (the provider rejected this service's credentials: check the client id and key registered with it)"
            ),
            _ => message,
        };
        details.set_error_info(reason, ERROR_DOMAIN, metadata);
        Status::with_error_details(code, message, details)
    }
}

/// The gRPC code and ErrorInfo reason for each provider failure.
fn classify(error: &ProviderError) -> (Code, &'static str) {
    match error {
        ProviderError::OAuth { error, .. } => match error.as_str() {
            "invalid_scope" | "invalid_request" | "invalid_grant" => {
                (Code::InvalidArgument, "UPSTREAM_REJECTED_REQUEST")
            }
            "invalid_client" | "unauthorized_client" | "api_error.auth.unauthorized" => {
                (Code::FailedPrecondition, "UPSTREAM_REJECTED_CREDENTIALS")
            }
            "temporarily_unavailable" | "server_error" => {
                (Code::Unavailable, "UPSTREAM_UNAVAILABLE")
            }
            _ => (Code::FailedPrecondition, "UPSTREAM_REFUSED"),
        },
        ProviderError::Scim { status, .. } => match status {
            404 => (Code::NotFound, "USER_NOT_FOUND"),
            409 => (Code::AlreadyExists, "USER_ALREADY_EXISTS"),
            401 | 403 => (Code::FailedPrecondition, "UPSTREAM_REJECTED_CREDENTIALS"),
            400 => (Code::InvalidArgument, "UPSTREAM_REJECTED_REQUEST"),
            _ => (Code::Unavailable, "UPSTREAM_UNAVAILABLE"),
        },
        ProviderError::Misdirected { .. } => (Code::FailedPrecondition, "UPSTREAM_MISDIRECTED"),
        ProviderError::RateLimited { .. } => (Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED"),
        ProviderError::Unavailable { .. } | ProviderError::Unreachable { .. } => {
            (Code::Unavailable, "UPSTREAM_UNAVAILABLE")
        }
        ProviderError::CircuitOpen { .. } => (Code::Unavailable, "UPSTREAM_CIRCUIT_OPEN"),
        ProviderError::BudgetExhausted { .. } => {
            (Code::ResourceExhausted, "UPSTREAM_BUDGET_EXHAUSTED")
        }
    }
}

/// The provider's own error code: the OAuth `error`, the SCIM `scimType`,
/// or the HTTP status.
fn upstream_error(error: &ProviderError) -> Option<String> {
    match error {
        ProviderError::OAuth { error, .. } => Some(error.clone()),
        ProviderError::Scim {
            scim_type: Some(scim_type),
            ..
        } => Some(scim_type.clone()),
        ProviderError::Scim { status, .. } => Some(format!("http_{status}")),
        ProviderError::RateLimited { code, .. } => {
            Some(code.clone().unwrap_or_else(|| "http_429".to_owned()))
        }
        ProviderError::Unavailable { status, .. } | ProviderError::Misdirected { status, .. } => {
            status.map(|s| format!("http_{s}"))
        }
        ProviderError::Unreachable { .. }
        | ProviderError::CircuitOpen { .. }
        | ProviderError::BudgetExhausted { .. } => None,
    }
}
