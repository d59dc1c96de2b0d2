//! The cache-aside read cache of products in Redis.
//!
//! Entries are `<prefix>product:<id>` holding the encoded `product.v1.Product`, with a TTL as a
//! backstop. Reads try the cache, fall back to the database and fill the cache; writes delete
//! the entry after their transaction commits (the writer reads its own write at once), and the
//! service's consumer deletes it again on `product.updated` / `product.deleted` (every replica
//! shares the one Redis, so one delete clears it for all; the second delete also closes the race
//! of a reader that filled the cache with a value read just before the write committed). A Redis
//! failure is logged and the read served from the database: the cache never changes an answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_contracts::product::v1::Product;
use prost::Message as _;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;

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
    conn: ConnectionManager,
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
    /// A cache on the Redis at `url` (connects lazily), keys under `prefix`.
    pub fn connect(
        url: &str,
        prefix: impl Into<String>,
        ttl: Duration,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_connection_timeout(Some(Duration::from_secs(1)));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
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

    /// The cached product `id`, if any (a Redis failure counts as a miss).
    pub async fn get(&self, id: &str) -> Option<Product> {
        let mut conn = self.conn.clone();
        let found: Result<Option<Vec<u8>>, _> = conn.get(self.key(id)).await;
        let product = match found {
            Ok(Some(bytes)) => Product::decode(bytes.as_slice()).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "product cache unavailable; reading the database");
                None
            }
        };
        let counter = if product.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        product
    }

    /// Caches `product`.
    pub async fn put(&self, product: &Product) {
        let mut conn = self.conn.clone();
        let result: Result<(), _> = conn
            .set_ex(
                self.key(&product.id),
                product.encode_to_vec(),
                self.ttl.as_secs().max(1),
            )
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "caching a product failed");
        }
    }

    /// Drops the entry of product `id`.
    pub async fn invalidate(&self, id: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        conn.del::<_, ()>(self.key(id)).await
    }
}
