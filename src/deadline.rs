//! The moment by which the caller wants an answer, carried alongside each
//! RPC's work the way its trace context is, so the upstream layer can stop
//! retrying or queueing once nobody is waiting any more.
//!
//! The API layer sets it from the caller's `grpc-timeout` (capped by
//! `server.request_timeout_ms`); detached work (a shared fetch, a background
//! refresh) captures it or sets its own.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `work` with `deadline` as its deadline.
pub async fn scope<F: Future>(deadline: Instant, work: F) -> F::Output {
    DEADLINE.scope(deadline, work).await
}

/// The deadline of the work in progress, if it has one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// The current deadline, or `fallback` from now when there is none.
pub fn current_or(fallback: Duration) -> Instant {
    current().unwrap_or_else(|| Instant::now() + fallback)
}

/// Reads a `grpc-timeout` header value (gRPC over HTTP/2: at most eight
/// digits and a unit, H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit_at = value.len().checked_sub(1)?;
    if !value.is_char_boundary(unit_at) {
        return None;
    }
    let (digits, unit) = value.split_at(unit_at);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_refuse_the_rest() {
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_grpc_timeout("1500m"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("1é"), None);
    }

    #[tokio::test]
    async fn the_deadline_is_visible_inside_its_scope_only() {
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(current(), None);
        assert_eq!(scope(deadline, async { current() }).await, Some(deadline));
    }
}
