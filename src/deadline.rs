//! The moment by which the caller wants an answer, carried alongside each
//! RPC's work the way its trace context is, so the upstream layer can stop
//! retrying or queueing once nobody is waiting any more.
//!
//! `api::observe` sets it from the caller's `grpc-timeout` (capped by
//! `server.request_timeout_ms`), and answers `DEADLINE_EXCEEDED` when it
//! passes. A shared fetch runs under a [`Deadline`]
//! that every caller joining it extends to its own, so the fetch keeps
//! trying for as long as anyone still waits; a background refresh has none
//! and the upstream layer uses the provider's own bound.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Deadline;
}

/// A deadline that waiters can push later, never earlier.
#[derive(Debug, Clone)]
pub struct Deadline(Arc<Mutex<Instant>>);

impl Deadline {
    pub fn new(at: Instant) -> Self {
        Self(Arc::new(Mutex::new(at)))
    }

    /// The latest of the current deadline and `at`.
    pub fn extend_to(&self, at: Instant) {
        let mut current = self.0.lock().expect("deadline lock");
        *current = (*current).max(at);
    }

    pub fn at(&self) -> Instant {
        *self.0.lock().expect("deadline lock")
    }
}

/// Runs `work` with `deadline` as its deadline.
pub async fn scope<F: Future>(deadline: Instant, work: F) -> F::Output {
    scope_shared(Deadline::new(deadline), work).await
}

/// Runs `work` under a deadline others may extend while it runs.
pub async fn scope_shared<F: Future>(deadline: Deadline, work: F) -> F::Output {
    DEADLINE.scope(deadline, work).await
}

/// The deadline of the work in progress, as it stands now, if it has one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(Deadline::at).ok()
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

    #[tokio::test]
    async fn a_shared_deadline_only_ever_moves_later() {
        let first = Instant::now() + Duration::from_millis(50);
        let shared = Deadline::new(first);
        let seen = scope_shared(shared.clone(), async {
            shared.extend_to(first + Duration::from_secs(10));
            shared.extend_to(first);
            current()
        })
        .await;
        assert_eq!(seen, Some(first + Duration::from_secs(10)));
    }
}
