//! The product service's own events: what it emits, and the handler that drops cache entries
//! when it sees its `product.updated` / `product.deleted` on the bus.

use futures::future::BoxFuture;
use mesh_contracts::events::v1::Envelope;
use mesh_runtime::consumer::{EventHandler, HandlerError};
use mesh_runtime::outbox::Tx;

use crate::cache::ProductCache;
use crate::local_cache::LocalCache;

/// Event type of a new product.
pub const CREATED: &str = "product.created";
/// Event type of a changed product.
pub const UPDATED: &str = "product.updated";
/// Event type of a deleted product.
pub const DELETED: &str = "product.deleted";

/// Drops the cache entries of the event's subject (the product id) from both tiers.
#[derive(Debug, Clone)]
pub struct Invalidate {
    /// The in-process tier, if on.
    pub local: Option<LocalCache>,
    /// The Redis tier, if on.
    pub cache: Option<ProductCache>,
}

impl EventHandler for Invalidate {
    fn handle<'a>(
        &'a self,
        event: &'a Envelope,
        _tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if let Some(local) = &self.local {
                local.invalidate(&event.subject);
            }
            match &self.cache {
                Some(cache) => cache.invalidate(&event.subject).await.map_err(|e| {
                    HandlerError::retry(format!("invalidating the cache of {}: {e}", event.subject))
                }),
                None => Ok(()),
            }
        })
    }
}
