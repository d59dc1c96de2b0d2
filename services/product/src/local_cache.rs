//! The in-process tier of the product read cache, in front of Redis (or alone, without Redis).
//!
//! A bounded map of decoded products with a short time to live. In one process every write drops
//! its entry after commit and the service's own `product.updated` / `product.deleted` consumer
//! drops it again (closing the race of a reader that filled it with a value read just before
//! the write). Across replicas only one replica consumes each event, so another replica may
//! answer with the old product for at most the time to live: the staleness bound of
//! `MESH_PRODUCT_LOCAL_CACHE_TTL` (default 2 s; `0` turns this tier off).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_contracts::product::v1::Product;

use crate::cache::CacheStats;

/// The in-process product cache; clones share the entries.
#[derive(Clone)]
pub struct LocalCache {
    entries: moka::sync::Cache<String, Arc<Product>>,
    stats: Arc<CacheStats>,
}

impl std::fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache")
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl LocalCache {
    /// A cache of at most `capacity` products, each kept at most `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            stats: Arc::new(CacheStats::default()),
        }
    }

    /// The cached product `id`, if any.
    pub fn get(&self, id: &str) -> Option<Product> {
        let found = self.entries.get(id);
        let counter = if found.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found.map(|p| Product::clone(&p))
    }

    /// Caches `product`.
    pub fn put(&self, product: &Product) {
        self.entries
            .insert(product.id.clone(), Arc::new(product.clone()));
    }

    /// Drops the entry of product `id`.
    pub fn invalidate(&self, id: &str) {
        self.entries.invalidate(id);
    }

    /// Hit and miss counts.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: &str, name: &str) -> Product {
        Product {
            id: id.into(),
            name: name.into(),
            ..Product::default()
        }
    }

    #[test]
    fn hits_after_put_and_misses_after_invalidate() {
        let cache = LocalCache::new(100, Duration::from_secs(60));
        assert!(cache.get("p1").is_none());
        cache.put(&product("p1", "Widget"));
        assert_eq!(cache.get("p1").map(|p| p.name), Some("Widget".into()));
        cache.invalidate("p1");
        assert!(cache.get("p1").is_none());
        assert_eq!(cache.stats().hits.load(Ordering::Relaxed), 1);
        assert_eq!(cache.stats().misses.load(Ordering::Relaxed), 2);
    }
}
