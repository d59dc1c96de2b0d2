//! A token bucket per client in Redis, so several edge replicas share one budget.
//!
//! One Lua script reads the bucket (a hash: `tokens`, `ts` in ms), refills it for the time
//! passed, takes a token if there is one and writes it back, all atomically in Redis and on
//! Redis's clock (`TIME`), so replicas with skewed clocks agree. Buckets expire once they would
//! be full again. While Redis cannot be reached the edge falls back to an in-process bucket, so
//! an outage of Redis neither opens the gates nor refuses everyone. Redis is reached through the
//! runtime's [`GuardedRedis`]: a bucket update waits at most [`CALL_TIMEOUT`], and while Redis
//! is known down requests count in process at once until a background ping sees it back (the
//! guard logs both transitions).

use std::time::Duration;

use mesh_runtime::redis_guard::{GuardError, GuardOptions, GuardedRedis};

use crate::rate_limit::{RateLimit, RateLimiter};

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
    redis: GuardedRedis,
    /// The script's SHA-1 as Redis named it at `SCRIPT LOAD` (loaded on first use, and again
    /// after Redis lost it).
    sha: tokio::sync::RwLock<Option<String>>,
    prefix: String,
    fallback: RateLimiter,
}

/// The longest a bucket update may take before the in-process fallback answers.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How often Redis is pinged while it is down.
const RETRY_EVERY: Duration = Duration::from_millis(500);

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
        let redis = GuardedRedis::connect(
            url,
            "edge rate limits",
            GuardOptions {
                timeout: CALL_TIMEOUT,
                retry_every: RETRY_EVERY,
            },
        )?;
        Ok(Self {
            limit,
            redis,
            sha: tokio::sync::RwLock::new(None),
            prefix: prefix.into(),
            fallback: RateLimiter::new(limit),
        })
    }

    /// The guarded connection (whether Redis is believed up).
    pub fn redis(&self) -> &GuardedRedis {
        &self.redis
    }

    /// Takes a token for `client`: `Ok` if it had one, else the whole seconds until it will.
    pub async fn check(&self, client: &str) -> Result<(), u64> {
        match self.redis.run(|conn| self.take(conn, client)).await {
            Ok((1, _)) => Ok(()),
            Ok((_, wait_ms)) => Err(u64::try_from(wait_ms).unwrap_or(1).div_ceil(1000).max(1)),
            Err(e) => {
                if let GuardError::Command { .. } = e {
                    tracing::warn!(error = %e, "rate limit script failed; counting in process");
                }
                self.fallback.check(client)
            }
        }
    }

    /// Runs the script for `client` (`EVALSHA`, loading it first when Redis does not have it).
    async fn take(
        &self,
        mut conn: redis::aio::ConnectionManager,
        client: &str,
    ) -> Result<(i64, i64), redis::RedisError> {
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
}
