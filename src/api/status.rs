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
use crate::domain::ValidationError;
use crate::provider::{IdTokenError, ProviderError};
use crate::service::Error;

pub const ERROR_DOMAIN: &str = "bankauth.dev";

/// Every `ErrorInfo` reason bankauth sends, each with its gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    CallerRateLimited,
    UserNotFound,
    UserAlreadyExists,
    NotSupportedByProvider,
    IdTokenInvalid,
    InternalError,
    SharedCacheUnavailable,
    UpstreamRejectedRequest,
    UpstreamRejectedCredentials,
    UpstreamRefused,
    UpstreamMisdirected,
    UpstreamUnavailable,
    UpstreamRateLimited,
    UpstreamCircuitOpen,
    UpstreamBudgetExhausted,
    /// The RPC's deadline passed before it had an answer.
    DeadlineExceeded,
    /// The request message is over the size bankauth decodes.
    RequestTooLarge,
    /// No such service or method.
    Unimplemented,
}

impl Reason {
    /// Every reason, for tests and documentation.
    pub const ALL: [Reason; 21] = [
        Self::InvalidArgument,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::CallerRateLimited,
        Self::UserNotFound,
        Self::UserAlreadyExists,
        Self::NotSupportedByProvider,
        Self::IdTokenInvalid,
        Self::InternalError,
        Self::SharedCacheUnavailable,
        Self::UpstreamRejectedRequest,
        Self::UpstreamRejectedCredentials,
        Self::UpstreamRefused,
        Self::UpstreamMisdirected,
        Self::UpstreamUnavailable,
        Self::UpstreamRateLimited,
        Self::UpstreamCircuitOpen,
        Self::UpstreamBudgetExhausted,
        Self::DeadlineExceeded,
        Self::RequestTooLarge,
        Self::Unimplemented,
    ];

    /// The one table: each reason's gRPC code and its `ErrorInfo` string.
    const fn entry(self) -> (Code, &'static str) {
        match self {
            Self::InvalidArgument => (Code::InvalidArgument, "INVALID_ARGUMENT"),
            Self::Unauthenticated => (Code::Unauthenticated, "UNAUTHENTICATED"),
            Self::PermissionDenied => (Code::PermissionDenied, "PERMISSION_DENIED"),
            Self::CallerRateLimited => (Code::ResourceExhausted, "CALLER_RATE_LIMITED"),
            Self::UserNotFound => (Code::NotFound, "USER_NOT_FOUND"),
            Self::UserAlreadyExists => (Code::AlreadyExists, "USER_ALREADY_EXISTS"),
            Self::NotSupportedByProvider => (Code::FailedPrecondition, "NOT_SUPPORTED_BY_PROVIDER"),
            Self::IdTokenInvalid => (Code::Unauthenticated, "ID_TOKEN_INVALID"),
            Self::InternalError => (Code::Internal, "INTERNAL_ERROR"),
            Self::SharedCacheUnavailable => (Code::Unavailable, "SHARED_CACHE_UNAVAILABLE"),
            Self::UpstreamRejectedRequest => (Code::InvalidArgument, "UPSTREAM_REJECTED_REQUEST"),
            Self::UpstreamRejectedCredentials => {
                (Code::FailedPrecondition, "UPSTREAM_REJECTED_CREDENTIALS")
            }
            Self::UpstreamRefused => (Code::FailedPrecondition, "UPSTREAM_REFUSED"),
            Self::UpstreamMisdirected => (Code::FailedPrecondition, "UPSTREAM_MISDIRECTED"),
            Self::UpstreamUnavailable => (Code::Unavailable, "UPSTREAM_UNAVAILABLE"),
            Self::UpstreamRateLimited => (Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED"),
            Self::UpstreamCircuitOpen => (Code::Unavailable, "UPSTREAM_CIRCUIT_OPEN"),
            Self::UpstreamBudgetExhausted => (Code::ResourceExhausted, "UPSTREAM_BUDGET_EXHAUSTED"),
            Self::DeadlineExceeded => (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
            Self::RequestTooLarge => (Code::OutOfRange, "REQUEST_TOO_LARGE"),
            Self::Unimplemented => (Code::Unimplemented, "UNIMPLEMENTED"),
        }
    }

    pub const fn code(self) -> Code {
        self.entry().0
    }

    /// The UPPER_SNAKE `ErrorInfo` reason.
    pub const fn as_str(self) -> &'static str {
        self.entry().1
    }

    /// What to add to the message so the reader knows where to look.
    const fn hint(self) -> Option<&'static str> {
        match self {
            Self::UpstreamRejectedCredentials => Some(
                "the provider rejected this service's credentials: check the client id and key registered with it",
            ),
            _ => None,
        }
    }

    /// A status with this reason's code and an `ErrorInfo` in [`ERROR_DOMAIN`]
    /// (plus `details` and `metadata`), its message ending in the reason's hint.
    pub fn status(
        self,
        message: impl Into<String>,
        mut details: ErrorDetails,
        metadata: HashMap<String, String>,
    ) -> Status {
        let message = message.into();
        let message = match self.hint() {
            Some(hint) => format!("{message} ({hint})"),
            None => message,
        };
        details.set_error_info(self.as_str(), ERROR_DOMAIN, metadata);
        Status::with_error_details(self.code(), message, details)
    }
}

/// Why an RPC failed: the service's reasons, or the caller's own (the API
/// layer is where callers are known).
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(transparent)]
    Service(#[from] Error),
    /// The caller is unknown, not allowed this, or over its rate limit.
    #[error(transparent)]
    Access(#[from] AccessError),
}

impl From<ValidationError> for RpcError {
    fn from(invalid: ValidationError) -> Self {
        Self::Service(invalid.into())
    }
}

impl From<RpcError> for Status {
    fn from(error: RpcError) -> Self {
        match error {
            RpcError::Service(error) => error.into(),
            RpcError::Access(refused) => {
                let message = refused.to_string();
                let mut details = ErrorDetails::new();
                let mut metadata = HashMap::new();
                let reason = match refused {
                    AccessError::Unauthenticated(_) => Reason::Unauthenticated,
                    AccessError::Denied {
                        caller,
                        what,
                        value,
                    } => {
                        metadata.insert("caller".to_owned(), caller);
                        metadata.insert("refused".to_owned(), what.to_owned());
                        metadata.insert(what.to_owned(), value);
                        Reason::PermissionDenied
                    }
                    AccessError::RateLimited {
                        caller,
                        retry_after,
                    } => {
                        metadata.insert("caller".to_owned(), caller);
                        details.set_retry_info(Some(retry_after));
                        Reason::CallerRateLimited
                    }
                };
                reason.status(message, details, metadata)
            }
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::new();
        let reason = match error {
            Error::InvalidArgument(invalid) => {
                details.add_bad_request_violation(&invalid.field, &invalid.reason);
                metadata.insert("field".to_owned(), invalid.field);
                Reason::InvalidArgument
            }
            Error::UserConflict { provider, .. } => {
                metadata.insert("provider".to_owned(), provider);
                Reason::UserAlreadyExists
            }
            Error::Unsupported { provider, .. } => {
                metadata.insert("provider".to_owned(), provider);
                Reason::NotSupportedByProvider
            }
            Error::IdToken { provider, source } => {
                metadata.insert("provider".to_owned(), provider);
                metadata.insert("check".to_owned(), source.check().to_owned());
                match source {
                    IdTokenError::Jwks(_) => Reason::UpstreamUnavailable,
                    IdTokenError::NotConfigured => Reason::NotSupportedByProvider,
                    _ => Reason::IdTokenInvalid,
                }
            }
            Error::Internal(_) => Reason::InternalError,
            Error::CacheUnavailable
            | Error::StateUnavailable
            | Error::DoneButCacheUnavailable { .. } => Reason::SharedCacheUnavailable,
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
        reason.status(message, details, metadata)
    }
}

/// The ErrorInfo reason for each provider failure.
fn classify(error: &ProviderError) -> Reason {
    match error {
        ProviderError::OAuth { error, .. } => match error.as_str() {
            "invalid_scope"
            | "invalid_request"
            | "invalid_grant"
            | "invalid_request_object"
            | "invalid_redirect_uri"
            | "unsupported_token_type" => Reason::UpstreamRejectedRequest,
            "invalid_client" | "unauthorized_client" | "api_error.auth.unauthorized" => {
                Reason::UpstreamRejectedCredentials
            }
            "temporarily_unavailable" | "server_error" => Reason::UpstreamUnavailable,
            _ => Reason::UpstreamRefused,
        },
        ProviderError::Scim { status, .. } | ProviderError::UsersApi { status, .. } => match status
        {
            404 => Reason::UserNotFound,
            409 => Reason::UserAlreadyExists,
            401 | 403 => Reason::UpstreamRejectedCredentials,
            400 => Reason::UpstreamRejectedRequest,
            _ => Reason::UpstreamUnavailable,
        },
        ProviderError::Misdirected { .. } => Reason::UpstreamMisdirected,
        ProviderError::RateLimited { .. } => Reason::UpstreamRateLimited,
        ProviderError::Unavailable { .. } | ProviderError::Unreachable { .. } => {
            Reason::UpstreamUnavailable
        }
        ProviderError::CircuitOpen { .. } => Reason::UpstreamCircuitOpen,
        ProviderError::BudgetExhausted { .. } => Reason::UpstreamBudgetExhausted,
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
        ProviderError::UsersApi { code, status, .. } => Some(
            code.clone()
                .filter(|code| is_error_code(code))
                .unwrap_or_else(|| format!("http_{status}")),
        ),
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

/// Whether upstream text is plausibly an error code (short printable
/// ASCII), fit to pass on as metadata.
fn is_error_code(code: &str) -> bool {
    !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct_upper_snake_names() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let name = reason.as_str();
            assert!(
                name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{name}"
            );
            assert!(seen.insert(name), "{name} twice");
            assert_ne!(reason.code(), Code::Ok, "{name}");
        }
    }

    /// The proto's ErrorReason enum documents every reason for callers: it
    /// must list exactly `Reason::ALL`, each as its wire string with the
    /// ERROR_REASON_ prefix, beside ERROR_REASON_UNSPECIFIED.
    #[test]
    fn the_proto_error_reason_enum_lists_every_reason() {
        use prost::Message;
        let files =
            prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let in_proto: std::collections::BTreeSet<String> = files
            .file
            .iter()
            .filter(|file| file.package() == "bankauth.v1")
            .flat_map(|file| &file.enum_type)
            .filter(|enumeration| enumeration.name() == "ErrorReason")
            .flat_map(|enumeration| &enumeration.value)
            .map(|value| value.name().to_owned())
            .collect();
        let expected: std::collections::BTreeSet<String> = Reason::ALL
            .iter()
            .map(|reason| format!("ERROR_REASON_{}", reason.as_str()))
            .chain(["ERROR_REASON_UNSPECIFIED".to_owned()])
            .collect();
        assert_eq!(in_proto, expected);
    }

    #[test]
    fn a_hint_follows_the_message_and_the_reason_is_in_the_error_info() {
        let status = Reason::UpstreamRejectedCredentials.status(
            "provider sandbox: invalid_client",
            ErrorDetails::new(),
            HashMap::new(),
        );
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().ends_with("registered with it)"),
            "{status:?}"
        );
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "UPSTREAM_REJECTED_CREDENTIALS");
        assert_eq!(info.domain, ERROR_DOMAIN);
        let plain = Reason::UserNotFound.status("gone", ErrorDetails::new(), HashMap::new());
        assert_eq!(plain.message(), "gone");
    }
}
