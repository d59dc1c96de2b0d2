//! Per-client rate limiting with a token bucket: in process ([`RateLimiter`], each edge replica
//! counts alone) or in Redis ([`crate::redis_limit::RedisLimiter`], one budget shared by every
//! replica), behind one [`Limiter`].
//!
//! The client ([`crate::client_key`]) is the `sub` of a verified token when there is one, else
//! its IP address. A request over the limit gets `429` with `Retry-After` (gRPC:
//! `RESOURCE_EXHAUSTED`). Idle in-process buckets are dropped once the map grows large, so
//! memory stays bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimit;

/// Buckets by client key.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The largest number of buckets kept before full ones are dropped.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// A limiter applying `limit` to each client.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `client`: `Ok` if it had one, else the whole seconds until it will.
    pub fn check(&self, client: &str) -> Result<(), u64> {
        self.check_at(client, Instant::now())
    }

    /// [`check`](Self::check) at a given time (for tests).
    pub fn check_at(&self, client: &str, now: Instant) -> Result<(), u64> {
        let burst = f64::from(self.limit.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(client) {
            let rate = self.limit.per_second;
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(client.to_string()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.limit.per_second).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.limit.per_second;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

/// The limiter of an edge: in process, or in Redis with the in-process one as the fallback
/// while Redis cannot be reached.
#[derive(Debug)]
pub enum Limiter {
    /// Each replica counts alone.
    Memory(RateLimiter),
    /// Replicas share one budget per client.
    Redis(crate::redis_limit::RedisLimiter),
}

impl Limiter {
    /// Takes a token for the client `key`: `Ok` if it had one, else the whole seconds until it
    /// will.
    pub async fn check(&self, key: &str) -> Result<(), u64> {
        match self {
            Self::Memory(limiter) => limiter.check(key),
            Self::Redis(limiter) => limiter.check(key).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_over_time() {
        let l = RateLimiter::new(RateLimit {
            per_second: 1.0,
            burst: 2,
        });
        let t = Instant::now();
        assert!(l.check_at("a", t).is_ok());
        assert!(l.check_at("a", t).is_ok());
        assert_eq!(l.check_at("a", t), Err(1));
        assert!(l.check_at("b", t).is_ok(), "clients are counted apart");
        assert!(l.check_at("a", t + Duration::from_millis(1100)).is_ok());
    }
}
