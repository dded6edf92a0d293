use std::time::Duration;

/// What went wrong talking to a provider. Messages describe the failure, never
/// a credential or token: they may reach callers and logs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The token or pushed authorization request endpoint answered with
    /// an RFC 6749 error.
    #[error("the provider answered {error}{}", describe(.description))]
    OAuth {
        status: u16,
        error: String,
        description: Option<String>,
    },
    /// The SCIM endpoint answered with an error status.
    #[error("the SCIM endpoint answered HTTP {status}{}", describe(.detail))]
    Scim {
        status: u16,
        scim_type: Option<String>,
        detail: Option<String>,
    },
    /// Moneyhub's users API answered with an error status (its body's
    /// `code` and `message`, when it carried them).
    #[error("the users API answered HTTP {status}{}", describe(.message))]
    UsersApi {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    /// The provider's rate limit was hit (HTTP 429).
    #[error("the provider is rate limiting requests")]
    RateLimited {
        retry_after: Option<Duration>,
        /// The provider's own error code, when its body carried one.
        code: Option<String>,
    },
    /// No connection to the provider could be made: it surely received nothing.
    #[error("the provider is unavailable: {reason}")]
    Unreachable { reason: String },
    /// The provider timed out, failed (5xx), or answered
    /// something that is not the documented protocol.
    #[error("the provider is unavailable: {reason}")]
    Unavailable {
        reason: String,
        /// The HTTP status, when the provider answered at all.
        status: Option<u16>,
    },
    /// The request itself is at fault, and asking again would not change
    /// that: the provider answered a 4xx without an error code, or a 2xx
    /// holding something other than what was asked for (a SCIM list,
    /// another user); or the request would not address one resource
    /// (`status: None`, nothing sent). Never retried, and not a provider
    /// failure, so no caller can open the circuit breaker with it.
    #[error("the request was not served as asked: {reason}")]
    Misdirected {
        reason: String,
        /// The HTTP status, when the provider answered at all.
        status: Option<u16>,
    },
    /// The provider has been failing, so bankauth is not calling it for now.
    #[error("the provider is failing; not calling it for {}s", .retry_after.as_secs_f64().ceil())]
    CircuitOpen { retry_after: Duration },
    /// bankauth's own budget for the provider's published rate limit is
    /// spent until after the caller's deadline.
    #[error("the request budget for the provider's rate limit is spent; retry in {}s", .retry_after.as_secs_f64().ceil())]
    BudgetExhausted { retry_after: Duration },
}

impl ProviderError {
    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            status: None,
        }
    }

    /// Describes a transport failure without echoing the URL's query or any
    /// request body.
    pub(crate) fn from_transport(error: &reqwest::Error) -> Self {
        if error.is_timeout() {
            Self::unavailable("the request timed out")
        } else if error.is_connect() {
            Self::Unreachable {
                reason: "could not connect".into(),
            }
        } else {
            Self::unavailable("the connection failed")
        }
    }
}

/// Bounds upstream-supplied text before it reaches our callers and logs.
const MAX_DESCRIPTION_LEN: usize = 200;

fn describe(text: &Option<String>) -> String {
    match text {
        Some(text) if !text.is_empty() => {
            let clean: String = text
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_DESCRIPTION_LEN)
                .collect();
            format!(": {clean}")
        }
        _ => String::new(),
    }
}
