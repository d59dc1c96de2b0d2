//! A token bucket per client in Redis, so several edge replicas share one budget.
//!
//! One Lua script reads the bucket (a hash: `tokens`, `ts` in ms), refills it for the time
//! passed, takes a token if there is one and writes it back, all atomically in Redis and on
//! Redis's clock (`TIME`), so replicas with skewed clocks agree. Buckets expire once they would
//! be full again. While Redis cannot be reached the edge falls back to an in-process bucket
//! (and logs it), so an outage of Redis neither opens the gates nor refuses everyone.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::config::RateLimit;
use crate::rate_limit::RateLimiter;

/// The bucket script: `KEYS[1]` the bucket, `ARGV[1]` tokens per ms, `ARGV[2]` burst.
/// Returns `{allowed (0/1), wait_ms}`.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return {allowed, wait}
";

/// The default key prefix of the buckets.
pub const DEFAULT_PREFIX: &str = "mesh:edge:ratelimit:";

/// Buckets in Redis, with an in-process fallback.
pub struct RedisLimiter {
    limit: RateLimit,
    conn: ConnectionManager,
    /// The script's SHA-1 as Redis named it at `SCRIPT LOAD` (loaded on first use, and again
    /// after Redis lost it).
    sha: tokio::sync::RwLock<Option<String>>,
    prefix: String,
    fallback: RateLimiter,
    last_warning: Mutex<Option<Instant>>,
    /// After a failure, Redis is left alone until then (calls count in process meanwhile).
    down_until: Mutex<Option<Instant>>,
}

/// The longest a bucket update may take before the in-process fallback answers.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long Redis is left alone after a failure.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("limit", &self.limit)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// A limiter on the Redis at `url` (connects lazily), buckets under `prefix`.
    pub fn connect(
        url: &str,
        prefix: impl Into<String>,
        limit: RateLimit,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_millis(250)))
            .set_connection_timeout(Some(Duration::from_secs(1)));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            limit,
            conn,
            sha: tokio::sync::RwLock::new(None),
            prefix: prefix.into(),
            fallback: RateLimiter::new(limit),
            last_warning: Mutex::new(None),
            down_until: Mutex::new(None),
        })
    }

    /// Takes a token for `client`: `Ok` if it had one, else the whole seconds until it will.
    pub async fn check(&self, client: &str) -> Result<(), u64> {
        let resting = self
            .down_until
            .lock()
            .ok()
            .and_then(|d| *d)
            .is_some_and(|until| Instant::now() < until);
        if resting {
            return self.fallback.check(client);
        }
        let result = match tokio::time::timeout(CALL_TIMEOUT, self.take(client)).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no answer in time",
            ))),
        };
        match result {
            Ok((1, _)) => Ok(()),
            Ok((_, wait_ms)) => Err(u64::try_from(wait_ms).unwrap_or(1).div_ceil(1000).max(1)),
            Err(e) => {
                if let Ok(mut d) = self.down_until.lock() {
                    *d = Some(Instant::now() + RETRY_AFTER_FAILURE);
                }
                self.warn(&e);
                self.fallback.check(client)
            }
        }
    }

    /// Runs the script for `client` (`EVALSHA`, loading it first when Redis does not have it).
    async fn take(&self, client: &str) -> Result<(i64, i64), redis::RedisError> {
        let mut conn = self.conn.clone();
        let key = format!("{}{client}", self.prefix);
        let per_ms = self.limit.per_second / 1000.0;
        for _ in 0..2 {
            let known = self.sha.read().await.clone();
            let sha = match known {
                Some(sha) => sha,
                None => {
                    let sha: String = redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(SCRIPT)
                        .query_async(&mut conn)
                        .await?;
                    *self.sha.write().await = Some(sha.clone());
                    sha
                }
            };
            let result = redis::cmd("EVALSHA")
                .arg(&sha)
                .arg(1)
                .arg(&key)
                .arg(per_ms)
                .arg(self.limit.burst)
                .query_async(&mut conn)
                .await;
            match result {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    *self.sha.write().await = None;
                }
                other => return other,
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "the rate limit script keeps disappearing from Redis",
        )))
    }

    fn warn(&self, e: &redis::RedisError) {
        let Ok(mut last) = self.last_warning.lock() else {
            return;
        };
        if last.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(error = %e, "rate limit store (Redis) unavailable; counting in process until it is back");
        }
    }
}
