//! The product service's own events: what it emits, and the handler that drops cache entries
//! when it sees its `product.updated` / `product.deleted` on the bus.

use futures::future::BoxFuture;
use mesh_contracts::events::v1::Envelope;
use mesh_runtime::consumer::{EventHandler, HandlerError};
use mesh_runtime::outbox::Tx;

use crate::cache::ProductCache;

/// Event type of a new product.
pub const CREATED: &str = "product.created";
/// Event type of a changed product.
pub const UPDATED: &str = "product.updated";
/// Event type of a deleted product.
pub const DELETED: &str = "product.deleted";

/// Drops the cache entry of the event's subject (the product id).
#[derive(Debug, Clone)]
pub struct Invalidate {
    /// The cache.
    pub cache: ProductCache,
}

impl EventHandler for Invalidate {
    fn handle<'a>(
        &'a self,
        event: &'a Envelope,
        _tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            self.cache.invalidate(&event.subject).await.map_err(|e| {
                HandlerError::retry(format!("invalidating the cache of {}: {e}", event.subject))
            })
        })
    }
}
