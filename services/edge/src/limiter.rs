//! The limiter of an edge: the in-process buckets ([`RateLimiter`]) or the Redis ones shared by
//! every replica ([`RedisLimiter`]), behind one type.

use crate::rate_limit::RateLimiter;
use crate::redis_limit::RedisLimiter;

/// The limiter of an edge: in process, or in Redis with the in-process one as the fallback
/// while Redis cannot be reached.
#[derive(Debug)]
pub enum Limiter {
    /// Each replica counts alone.
    Memory(RateLimiter),
    /// Replicas share one budget per client.
    Redis(RedisLimiter),
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
