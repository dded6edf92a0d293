use std::time::Duration;

/// What went wrong talking to a provider. Messages describe the failure, never
/// a credential or token: they may reach callers and logs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The token endpoint answered with an RFC 6749 error.
    #[error("the token endpoint answered {error}{}", describe(.description))]
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
    /// The provider's rate limit was hit (HTTP 429).
    #[error("the provider is rate limiting requests")]
    RateLimited {
        retry_after: Option<Duration>,
        /// The provider's own error code, when its body carried one.
        code: Option<String>,
    },
    /// The provider could not be reached, timed out, failed (5xx), or answered
    /// something that is not the documented protocol.
    #[error("the provider is unavailable: {reason}")]
    Unavailable {
        reason: String,
        /// The HTTP status, when the provider answered at all.
        status: Option<u16>,
    },
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
        let reason = if error.is_timeout() {
            "the request timed out"
        } else if error.is_connect() {
            "could not connect"
        } else {
            "the connection failed"
        };
        Self::unavailable(reason)
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
