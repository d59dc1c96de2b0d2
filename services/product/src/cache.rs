//! The cache-aside read cache of products in Redis.
//!
//! Entries are `<prefix>product:<id>` holding the encoded `product.v1.Product`, with a TTL as a
//! backstop. Reads try the cache, fall back to the database and fill the cache; writes delete
//! the entry after their transaction commits (the writer reads its own write at once), and the
//! service's consumer deletes it again on `product.updated` / `product.deleted` (every replica
//! shares the one Redis, so one delete clears it for all; the second delete also closes the race
//! of a reader that filled the cache with a value read just before the write committed). A Redis
//! failure is logged and the read served from the database: the cache never changes an answer.
//!
//! Redis is reached through the runtime's [`GuardedRedis`]: each command waits at most the
//! configured timeout, and while Redis is known down reads go straight to the database (no
//! network wait at all) until a background ping sees it back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_contracts::product::v1::Product;
use mesh_runtime::redis_guard::{GuardError, GuardOptions, GuardedRedis};
use prost::Message as _;
use redis::AsyncCommands as _;

/// Hit and miss counters.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Reads answered from Redis.
    pub hits: AtomicU64,
    /// Reads that went to the database.
    pub misses: AtomicU64,
}

/// A product cache in Redis.
#[derive(Clone)]
pub struct ProductCache {
    redis: GuardedRedis,
    prefix: String,
    ttl: Duration,
    stats: Arc<CacheStats>,
}

impl std::fmt::Debug for ProductCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProductCache")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ProductCache {
    /// A cache on the Redis at `url` (connects lazily), keys under `prefix`, each command
    /// bounded by `guard`'s timeout.
    pub fn connect(
        url: &str,
        prefix: impl Into<String>,
        ttl: Duration,
        guard: GuardOptions,
    ) -> Result<Self, redis::RedisError> {
        Ok(Self {
            redis: GuardedRedis::connect(url, "product cache", guard)?,
            prefix: prefix.into(),
            ttl,
            stats: Arc::new(CacheStats::default()),
        })
    }

    /// The key of product `id`.
    pub fn key(&self, id: &str) -> String {
        format!("{}product:{id}", self.prefix)
    }

    /// Hit and miss counts.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The guarded connection (whether Redis is believed up, how many reads skipped it).
    pub fn redis(&self) -> &GuardedRedis {
        &self.redis
    }

    /// The cached product `id`, if any (Redis down or failing counts as a miss; the guard logs
    /// Redis going down and coming back, so only command errors are logged here).
    pub async fn get(&self, id: &str) -> Option<Product> {
        let key = self.key(id);
        let found = self
            .redis
            .run(|mut conn| async move { conn.get::<_, Option<Vec<u8>>>(key).await })
            .await;
        let product = match found {
            Ok(Some(bytes)) => Product::decode(bytes.as_slice()).ok(),
            Ok(None) => None,
            Err(e @ GuardError::Command { .. }) => {
                tracing::warn!(error = %e, "product cache read failed; reading the database");
                None
            }
            Err(_) => None,
        };
        let counter = if product.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        product
    }

    /// Caches `product` (skipped while Redis is down).
    pub async fn put(&self, product: &Product) {
        let key = self.key(&product.id);
        let value = product.encode_to_vec();
        let ttl = self.ttl.as_secs().max(1);
        let result = self
            .redis
            .run(|mut conn| async move { conn.set_ex::<_, _, ()>(key, value, ttl).await })
            .await;
        if let Err(e @ GuardError::Command { .. }) = result {
            tracing::warn!(error = %e, "caching a product failed");
        }
    }

    /// Drops the entry of product `id`. Fails while Redis is down, so that the product event's
    /// handler retries it until Redis is back.
    pub async fn invalidate(&self, id: &str) -> Result<(), GuardError> {
        let key = self.key(id);
        self.redis
            .run(|mut conn| async move { conn.del::<_, ()>(key).await })
            .await
    }
}
