//! What every upstream HTTP exchange shares: a client span with the W3C
//! trace context passed on, a metric, bounded bodies, JSON content types,
//! and the reading of rate-limit answers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use tracing::Instrument;

use super::ProviderError;
use super::budget::RequestBudget;
use super::resilience::{Admission, Breaker, Replay, RetryPolicy};
use crate::deadline;
use crate::telemetry::Metrics;
use crate::telemetry::propagation;

/// One provider's HTTP client, shared by its token, SCIM, discovery and
/// JWKS calls, with what protects both sides when the provider struggles.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub client: reqwest::Client,
    pub provider: String,
    pub metrics: Arc<Metrics>,
    pub retry: RetryPolicy,
    /// The identity endpoints' breaker, or SCIM's own.
    pub breaker: Arc<Breaker>,
    /// Present when the provider publishes a rate limit.
    pub budget: Option<Arc<RequestBudget>>,
    /// The deadline of calls made outside any RPC (background refreshes, discovery).
    pub default_deadline: Duration,
}

/// Lets the next request probe if a probe's caller went away before its outcome.
struct ProbeGuard<'a>(Option<&'a Breaker>);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(breaker) = self.0 {
            breaker.abandon_probe();
        }
    }
}

impl Upstream {
    /// Runs `attempt` (which builds, sends and reads one request) through
    /// the breaker and the request budget, retrying what `replay` allows
    /// with backoff, and never starting a pause that ends past the
    /// deadline of the RPC this work belongs to.
    pub async fn call<T, Attempt, Fut>(
        &self,
        replay: Replay,
        mut attempt: Attempt,
    ) -> Result<T, ProviderError>
    where
        Attempt: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        // Read afresh at each decision: callers joining a shared fetch extend it.
        let fallback = Instant::now() + self.default_deadline;
        let deadline = || deadline::current().unwrap_or(fallback);
        let mut number = 0;
        loop {
            number += 1;
            let admission = self.breaker.admit().inspect_err(|_| {
                self.metrics.upstream_guard(&self.provider, "circuit_open");
            })?;
            let mut probe = ProbeGuard((admission == Admission::Probe).then_some(&*self.breaker));
            if let Some(budget) = &self.budget {
                budget.acquire(deadline()).await.inspect_err(|_| {
                    self.metrics
                        .upstream_guard(&self.provider, "budget_exhausted");
                })?;
            }
            let result = attempt().await;
            probe.0 = None;
            if self.breaker.record(admission, result.as_ref().map(|_| ())) {
                self.metrics
                    .upstream_guard(&self.provider, "circuit_opened");
                tracing::warn!(provider = %self.provider, breaker = self.breaker.name, "provider failing repeatedly; the circuit breaker is open");
            }
            let error = match result {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let Some(pause) = self.retry.pause_after(number, &error, replay) else {
                return Err(error);
            };
            if Instant::now() + pause >= deadline() {
                return Err(error);
            }
            self.metrics.upstream_guard(&self.provider, "retry");
            tracing::debug!(provider = %self.provider, %error, attempt = number, "retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// GETs a JSON document (discovery, JWKS), retrying as reads may be.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &url::Url,
        endpoint: &'static str,
    ) -> Result<T, ProviderError> {
        self.call(Replay::Safe, move || async move {
            let answer = self.send(self.client.get(url.clone()), endpoint).await?;
            if !answer.is_success() {
                return Err(answer.unexpected());
            }
            answer.json()
        })
        .await
    }

    /// Sends `request` and reads the whole (bounded) answer. `endpoint`
    /// names the call in spans and metrics: token, scim, discovery, jwks.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        endpoint: &'static str,
    ) -> Result<Answer, ProviderError> {
        let mut request = request
            .build()
            .map_err(|_| ProviderError::unavailable("cannot build the request"))?;
        let span = tracing::info_span!(
            "upstream",
            otel.name = format!("{} {endpoint}", request.method()),
            otel.kind = "client",
            provider = %self.provider,
            endpoint,
            http.request.method = %request.method(),
            server.address = request.url().host_str().unwrap_or_default(),
            http.response.status_code = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = async {
            propagation::inject_current(request.headers_mut());
            let response = self
                .client
                .execute(request)
                .await
                .map_err(|e| ProviderError::from_transport(&e))?;
            tracing::Span::current()
                .record("http.response.status_code", response.status().as_u16());
            let answer = Answer::read(response).await?;
            if (300..400).contains(&answer.status) {
                return Err(ProviderError::Unavailable {
                    reason: format!(
                        "the endpoint answered HTTP {}, a redirect, which bankauth does not follow: it would re-send credentials elsewhere (configure the URL it points to)",
                        answer.status
                    ),
                    status: Some(answer.status),
                });
            }
            Ok(answer)
        }
        .instrument(span)
        .await;
        let outcome = match &result {
            Ok(answer) if answer.is_success() => "ok",
            Ok(answer) if answer.status == 429 => "rate_limited",
            Ok(answer) if answer.status >= 500 => "server_error",
            Ok(_) => "client_error",
            Err(_) => "unavailable",
        };
        self.metrics
            .upstream(&self.provider, endpoint, outcome, started.elapsed());
        result
    }
}

/// Largest upstream body read. Token and SCIM answers are a few kB; anything
/// far larger is a misbehaving upstream, not data worth buffering.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A fully read upstream answer.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// Reads the whole body, failing once it exceeds [`MAX_BODY_BYTES`].
    pub async fn read(mut response: reqwest::Response) -> Result<Self, ProviderError> {
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(ProviderError::Unavailable {
                    reason: format!("the answer is larger than {MAX_BODY_BYTES} bytes"),
                    status: Some(status),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Self {
            status,
            headers,
            body,
        })
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Whether the body is declared as JSON (`application/json`, or a
    /// `+json` type such as `application/scim+json`). A missing header is
    /// accepted; the body still has to parse.
    pub fn is_json(&self) -> bool {
        let Some(value) = self.headers.get(CONTENT_TYPE) else {
            return true;
        };
        let Ok(value) = value.to_str() else {
            return false;
        };
        let essence = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    }

    /// Parses a JSON body, or explains why it is not one.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ProviderError> {
        let invalid = |reason: String| ProviderError::Unavailable {
            reason,
            status: Some(self.status),
        };
        if !self.is_json() {
            return Err(invalid(format!("HTTP {} answer is not JSON", self.status)));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            invalid(format!(
                "HTTP {} answer is not the documented JSON ({})",
                self.status,
                json_error_kind(&e)
            ))
        })
    }

    /// The 429 answer as an error, with its `Retry-After` when readable.
    pub fn rate_limited(&self, code: Option<String>) -> ProviderError {
        ProviderError::RateLimited {
            code,
            retry_after: self
                .headers
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(parse_retry_after),
        }
    }

    /// A well-formed answer that does not serve the request as asked: the
    /// request is at fault, not the provider ([`ProviderError::Misdirected`]).
    pub fn misdirected(&self, endpoint: &str, what: &str) -> ProviderError {
        ProviderError::Misdirected {
            reason: format!("the {endpoint} answered HTTP {} {what}", self.status),
            status: Some(self.status),
        }
    }

    /// The fallback for an answer no protocol rule explains.
    pub fn unexpected(&self) -> ProviderError {
        ProviderError::Unavailable {
            reason: format!("unexpected HTTP {}", self.status),
            status: Some(self.status),
        }
    }
}

/// `Retry-After` is either delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = OffsetDateTime::parse(value.trim(), &Rfc2822).ok()?;
    let delay = date - OffsetDateTime::now_utc();
    Some(Duration::try_from(delay).unwrap_or(Duration::ZERO))
}

/// Names what is wrong with a body without quoting it: the body may hold a token.
fn json_error_kind(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "missing or mistyped fields",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("30"), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
