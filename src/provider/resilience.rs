//! What keeps a struggling provider from taking callers down with it:
//! retries with capped exponential backoff and full jitter, and a circuit
//! breaker that answers at once while the provider is failing.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use super::ProviderError;

/// Whether a request may be sent again when it is unknown if the provider
/// acted on it (a timeout or reset after sending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Repeating it only costs a request (client credentials, reads).
    Safe,
    /// Repeating it could act twice or spend a single-use value (SCIM
    /// create, code exchange, refresh): retried only when the provider
    /// surely did not act (no connection, 429, 503).
    OnlyUnprocessed,
}

/// How often and how patiently to retry a provider request.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 disables retries.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The pause before the attempt after `attempt` (1-based) failed with
    /// `error`, or `None` when it must not be retried. The pause is drawn
    /// uniformly from zero to the capped exponential step ("full jitter"),
    /// so replicas retrying together spread out; a provider's `Retry-After`
    /// is honoured as given.
    pub fn pause_after(
        &self,
        attempt: u32,
        error: &ProviderError,
        replay: Replay,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts || !retryable(error, replay) {
            return None;
        }
        if let ProviderError::RateLimited {
            retry_after: Some(delay),
            ..
        } = error
        {
            return Some(*delay);
        }
        let step = self
            .base_delay
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(self.max_delay);
        Some(step.mul_f64(crate::random::unit_random()))
    }
}

fn retryable(error: &ProviderError, replay: Replay) -> bool {
    match error {
        ProviderError::Unreachable { .. } | ProviderError::RateLimited { .. } => true,
        ProviderError::Unavailable {
            status: Some(503), ..
        } => true,
        // A redirect (never followed) answers the same way every time.
        ProviderError::Unavailable {
            status: Some(300..=399),
            ..
        } => false,
        ProviderError::Unavailable { .. } => replay == Replay::Safe,
        ProviderError::OAuth { error, .. } => {
            // RFC 6749 §5.2 errors are final, but for these two, which say
            // the server is struggling.
            replay == Replay::Safe
                && matches!(error.as_str(), "temporarily_unavailable" | "server_error")
        }
        ProviderError::Scim { .. }
        | ProviderError::UsersApi { .. }
        | ProviderError::Misdirected { .. }
        | ProviderError::CircuitOpen { .. }
        | ProviderError::BudgetExhausted { .. } => false,
    }
}

/// Whether an outcome says the provider itself is failing (as opposed to
/// refusing this request, or limiting its rate): what the breaker counts.
fn is_provider_failure(error: &ProviderError) -> bool {
    match error {
        ProviderError::Unreachable { .. } | ProviderError::Unavailable { .. } => true,
        ProviderError::OAuth { error, .. } => {
            matches!(error.as_str(), "temporarily_unavailable" | "server_error")
        }
        ProviderError::Scim { status, .. } | ProviderError::UsersApi { status, .. } => {
            *status >= 500
        }
        ProviderError::RateLimited { .. }
        | ProviderError::Misdirected { .. }
        | ProviderError::CircuitOpen { .. }
        | ProviderError::BudgetExhausted { .. } => false,
    }
}

/// When the breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    /// Consecutive provider failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before one probe is let through.
    pub open_for: Duration,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else is refused until it reports.
    Probing,
}

/// A circuit breaker for one provider's identity endpoints (token,
/// discovery, JWKS) or its SCIM endpoint: after `failure_threshold`
/// consecutive failures, requests fail at once (UNAVAILABLE) for
/// `open_for`; then one probe goes through, and its outcome closes or
/// reopens the breaker.
#[derive(Debug)]
pub struct Breaker {
    /// Which endpoints it guards (`identity`, `scim`), for logs.
    pub name: &'static str,
    policy: BreakerPolicy,
    state: Mutex<State>,
    /// 1 from opening until a probe succeeds (`bankauth_circuit_breaker_open`).
    open_gauge: Gauge,
}

/// Outcome of asking the breaker for permission to send.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Closed,
    /// This request is the probe: its outcome decides the breaker's state.
    Probe,
}

impl Breaker {
    pub fn new(name: &'static str, policy: BreakerPolicy, open_gauge: Gauge) -> Self {
        open_gauge.set(0);
        Self {
            name,
            policy,
            state: Mutex::new(State::Closed { failures: 0 }),
            open_gauge,
        }
    }

    /// Lets a request through, or refuses it with the time until the next probe.
    pub fn admit(&self) -> Result<Admission, ProviderError> {
        let mut state = self.state.lock().expect("breaker lock");
        let now = Instant::now();
        match *state {
            State::Closed { .. } => Ok(Admission::Closed),
            State::Open { until } if now >= until => {
                *state = State::Probing;
                Ok(Admission::Probe)
            }
            State::Open { until } => Err(ProviderError::CircuitOpen {
                retry_after: until - now,
            }),
            State::Probing => Err(ProviderError::CircuitOpen {
                retry_after: self.policy.open_for.min(Duration::from_secs(1)),
            }),
        }
    }

    /// Records a request's outcome; true when this opened the breaker.
    pub fn record(&self, admission: Admission, result: Result<(), &ProviderError>) -> bool {
        let failed = result.err().is_some_and(is_provider_failure);
        let mut state = self.state.lock().expect("breaker lock");
        let open = State::Open {
            until: Instant::now() + self.policy.open_for,
        };
        let opened = match (&mut *state, admission, failed) {
            (_, Admission::Probe, false) | (State::Closed { .. }, _, false) => {
                *state = State::Closed { failures: 0 };
                false
            }
            (_, Admission::Probe, true) => {
                *state = open;
                true
            }
            (State::Closed { failures }, Admission::Closed, true) => {
                *failures += 1;
                let opens = *failures >= self.policy.failure_threshold;
                if opens {
                    *state = open;
                }
                opens
            }
            // Outcomes of requests admitted before the breaker opened.
            (State::Open { .. } | State::Probing, Admission::Closed, _) => false,
        };
        self.open_gauge
            .set(i64::from(!matches!(*state, State::Closed { .. })));
        opened
    }

    /// A probe that ended without an outcome (its caller went away): let
    /// the next request probe instead.
    pub fn abandon_probe(&self) {
        let mut state = self.state.lock().expect("breaker lock");
        if matches!(*state, State::Probing) {
            *state = State::Open {
                until: Instant::now(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> ProviderError {
        ProviderError::unavailable("down")
    }

    fn breaker(open_for: Duration) -> Breaker {
        Breaker::new(
            "identity",
            BreakerPolicy {
                failure_threshold: 3,
                open_for,
            },
            Gauge::default(),
        )
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_only() {
        let breaker = breaker(Duration::from_secs(60));
        for _ in 0..2 {
            breaker.record(breaker.admit().unwrap(), Err(&failure()));
        }
        // A success in between starts the count again.
        breaker.record(breaker.admit().unwrap(), Ok(()));
        for _ in 0..2 {
            assert!(!breaker.record(breaker.admit().unwrap(), Err(&failure())));
        }
        assert!(breaker.record(breaker.admit().unwrap(), Err(&failure())));
        assert!(matches!(
            breaker.admit(),
            Err(ProviderError::CircuitOpen { .. })
        ));
    }

    #[test]
    fn refusals_and_rate_limits_do_not_count_as_failures() {
        let breaker = breaker(Duration::from_secs(60));
        let refused = ProviderError::OAuth {
            status: 400,
            error: "invalid_scope".into(),
            description: None,
        };
        let limited = ProviderError::RateLimited {
            retry_after: None,
            code: None,
        };
        let misdirected = ProviderError::Misdirected {
            reason: "a list, not a user".into(),
            status: Some(200),
        };
        for _ in 0..10 {
            breaker.record(breaker.admit().unwrap(), Err(&refused));
            breaker.record(breaker.admit().unwrap(), Err(&limited));
            breaker.record(breaker.admit().unwrap(), Err(&misdirected));
        }
        assert_eq!(breaker.admit().unwrap(), Admission::Closed);
    }

    #[test]
    fn one_probe_closes_or_reopens_the_breaker() {
        let breaker = breaker(Duration::ZERO);
        for _ in 0..3 {
            breaker.record(breaker.admit().unwrap(), Err(&failure()));
        }
        let probe = breaker.admit().unwrap();
        assert_eq!(probe, Admission::Probe);
        assert!(breaker.admit().is_err(), "only one probe at a time");
        assert!(
            breaker.record(probe, Err(&failure())),
            "a failed probe reopens"
        );
        let probe = breaker.admit().unwrap();
        breaker.record(probe, Ok(()));
        assert_eq!(breaker.admit().unwrap(), Admission::Closed);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let breaker = breaker(Duration::ZERO);
        for _ in 0..3 {
            breaker.record(breaker.admit().unwrap(), Err(&failure()));
        }
        assert_eq!(breaker.admit().unwrap(), Admission::Probe);
        breaker.abandon_probe();
        assert_eq!(breaker.admit().unwrap(), Admission::Probe);
    }

    #[test]
    fn retries_follow_the_error_and_the_replay_rule() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let timeout = failure();
        let refused = ProviderError::OAuth {
            status: 401,
            error: "invalid_client".into(),
            description: None,
        };
        let unreachable = ProviderError::Unreachable {
            reason: "could not connect".into(),
        };
        let limited = ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
            code: None,
        };
        assert!(
            policy.pause_after(1, &timeout, Replay::Safe).unwrap() <= Duration::from_millis(100)
        );
        assert!(
            policy.pause_after(2, &timeout, Replay::Safe).unwrap() <= Duration::from_millis(200)
        );
        assert_eq!(
            policy.pause_after(3, &timeout, Replay::Safe),
            None,
            "attempts are capped"
        );
        assert_eq!(policy.pause_after(1, &refused, Replay::Safe), None);
        let misdirected = ProviderError::Misdirected {
            reason: "HTTP 404".into(),
            status: Some(404),
        };
        assert_eq!(policy.pause_after(1, &misdirected, Replay::Safe), None);
        assert_eq!(
            policy.pause_after(1, &timeout, Replay::OnlyUnprocessed),
            None
        );
        assert!(
            policy
                .pause_after(1, &unreachable, Replay::OnlyUnprocessed)
                .is_some()
        );
        assert_eq!(
            policy.pause_after(1, &limited, Replay::OnlyUnprocessed),
            Some(Duration::from_secs(2))
        );
    }
}
