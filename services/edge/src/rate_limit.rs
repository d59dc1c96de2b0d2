//! Per-client rate limiting with a token bucket: the limit ([`RateLimit`], parsed from
//! `MESH_EDGE_RATE_LIMIT`) and the in-process buckets ([`RateLimiter`], each edge replica counts
//! alone). The Redis buckets shared by replicas are [`crate::redis_limit`]; [`crate::limiter`]
//! puts the two behind one type.
//!
//! The client ([`crate::client_key`]) is the `sub` of a verified token when there is one, else
//! its IP address. A request over the limit gets `429` with `Retry-After` (gRPC:
//! `RESOURCE_EXHAUSTED`). Idle in-process buckets are dropped once the map grows large, so
//! memory stays bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A token-bucket rate limit per client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size (the largest burst).
    pub burst: u32,
}

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

/// `off`, `100/s`, `100/s,burst=200`, `600/m`.
pub fn parse_rate_limit(raw: &str) -> Result<Option<RateLimit>, String> {
    let raw = raw.trim();
    if raw.is_empty() || raw == "off" {
        return Ok(None);
    }
    let expected = "expected `off`, `RATE/s` or `RATE/s,burst=N` (or `/m`), e.g. `50/s,burst=100`";
    let (rate, burst) = match raw.split_once(',') {
        Some((rate, burst)) => (rate.trim(), Some(burst.trim())),
        None => (raw, None),
    };
    let (n, unit) = rate.split_once('/').ok_or(expected)?;
    let n: f64 = n.trim().parse().map_err(|_| expected)?;
    let per_second = match unit.trim() {
        "s" => n,
        "m" => n / 60.0,
        _ => return Err(expected.into()),
    };
    if !(per_second > 0.0 && per_second.is_finite()) {
        return Err("the rate must be above zero".into());
    }
    let burst = match burst {
        Some(b) => b
            .strip_prefix("burst=")
            .and_then(|b| b.parse::<u32>().ok())
            .filter(|b| *b >= 1)
            .ok_or(expected)?,
        None => (per_second.ceil() as u32).max(1),
    };
    Ok(Some(RateLimit { per_second, burst }))
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
