//! bankauth's own budget for a provider's published rate limit, so that
//! however many replicas run, together they never trip the provider's
//! limiter: a token bucket in Redis shared by all of them. Without Redis
//! (or while it is unreachable) each replica keeps its own bucket holding
//! its share of the limit: the limit divided by `cache.max_replicas`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::ProviderError;
use crate::cache::{SharedBuckets, keys};
use crate::token_bucket::TokenBucket;

/// The share of the published limit that refills each minute; the rest is
/// the burst. Burst plus a minute's refill is the limit, so no sliding
/// 60-second window at the provider ever sees more than it allows.
const REFILL_SHARE: f64 = 0.9;

/// Requests a provider may receive from every replica together.
#[derive(Debug)]
pub struct RequestBudget {
    /// Redis key of the shared bucket (a hash: it names no client id).
    name: String,
    shared: Shape,
    /// Holds the shared bucket when the cache has Redis.
    buckets: SharedBuckets,
    /// This replica's share, used without Redis and while Redis is unreachable.
    local: Mutex<TokenBucket>,
}

/// A token bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Shape {
    capacity: f64,
    per_ms: f64,
}

impl Shape {
    /// Burst plus a minute's refill equals `per_minute`; at least one
    /// request fits, or the bucket would never admit any.
    fn for_limit(per_minute: f64) -> Self {
        Self {
            capacity: (per_minute * (1.0 - REFILL_SHARE)).max(1.0),
            per_ms: per_minute * REFILL_SHARE / 60_000.0,
        }
    }
}

impl RequestBudget {
    /// A budget for a provider allowing `per_minute` requests a minute to
    /// `client_id`, shared through `buckets` when the cache has Redis, by up
    /// to `replicas` replicas.
    pub fn new(
        provider: &str,
        client_id: &str,
        per_minute: u32,
        replicas: u32,
        buckets: SharedBuckets,
    ) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        let local = Shape::for_limit(per_minute / f64::from(replicas.max(1)));
        Self {
            name: keys::budget(provider, client_id),
            shared: Shape::for_limit(per_minute),
            buckets,
            // The tokio clock, which tests may pause, as the budget always read.
            local: Mutex::new(TokenBucket::new(
                local.per_ms * 1000.0,
                local.capacity,
                Instant::now().into_std(),
            )),
        }
    }

    /// Takes one request from the budget, waiting for one while the wait
    /// ends before `deadline`; past it, the caller is told when to retry.
    pub async fn acquire(&self, deadline: Instant) -> Result<(), ProviderError> {
        loop {
            let wait = self.take().await;
            if wait.is_zero() {
                return Ok(());
            }
            if Instant::now() + wait > deadline {
                return Err(ProviderError::BudgetExhausted { retry_after: wait });
            }
            tokio::time::sleep(wait).await;
        }
    }

    async fn take(&self) -> Duration {
        if let Some(wait) = self
            .buckets
            .take(&self.name, self.shared.capacity, self.shared.per_ms)
            .await
        {
            return wait;
        }
        let mut bucket = self.local.lock().expect("budget lock");
        match bucket.take(Instant::now().into_std()) {
            Ok(()) => Duration::ZERO,
            Err(wait) => wait,
        }
    }
}
