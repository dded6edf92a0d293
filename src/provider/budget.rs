//! bankauth's own budget for a provider's published rate limit, so that
//! however many replicas run, together they never trip the provider's
//! limiter: a token bucket in Redis shared by all of them. Without Redis
//! (or while it is unreachable) each replica keeps its own bucket holding
//! its share of the limit: the limit divided by `cache.max_replicas`.

use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::ProviderError;
use crate::cache::Cache;

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
    /// Holds the shared bucket when it has Redis.
    cache: Cache,
    /// This replica's share, used without Redis and while Redis is unreachable.
    local: Mutex<Bucket>,
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

#[derive(Debug)]
struct Bucket {
    shape: Shape,
    tokens: f64,
    at: Instant,
}

impl RequestBudget {
    /// A budget for a provider allowing `per_minute` requests a minute to
    /// `client_id`, shared through `cache`'s Redis when it has one, by up
    /// to `replicas` replicas.
    pub fn new(
        provider: &str,
        client_id: &str,
        per_minute: u32,
        replicas: u32,
        cache: Cache,
    ) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        let local = Shape::for_limit(per_minute / f64::from(replicas.max(1)));
        let identity = serde_json::json!(["v1", provider, client_id]).to_string();
        Self {
            name: format!(
                "bankauth:v1:budget:{}",
                hex::encode(Sha256::digest(identity))
            ),
            shared: Shape::for_limit(per_minute),
            cache,
            local: Mutex::new(Bucket {
                shape: local,
                tokens: local.capacity,
                at: Instant::now(),
            }),
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
            .cache
            .take_from_shared_bucket(&self.name, self.shared.capacity, self.shared.per_ms)
            .await
        {
            return wait;
        }
        let mut bucket = self.local.lock().expect("budget lock");
        let Shape { capacity, per_ms } = bucket.shape;
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * 1000.0 * per_ms;
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - bucket.tokens) / per_ms / 1000.0)
        }
    }
}
