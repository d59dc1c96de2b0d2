//! The product service's own events: what it emits, and the handler that drops cache entries
//! when it sees its `product.updated` / `product.deleted` on the bus.

use mesh_contracts::events::v1::Envelope;
use mesh_runtime::consumer::HandlerError;
use mesh_runtime::outbox::Tx;
use mesh_runtime::typed_handler::{Handled, TypedHandler, Undecoded};

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

impl TypedHandler for Invalidate {
    type Event = Undecoded;

    async fn handle(&self, _: Undecoded, event: &Envelope, _tx: &mut Tx) -> Handled {
        if let Some(local) = &self.local {
            local.invalidate(&event.subject);
        }
        match &self.cache {
            Some(cache) => cache.invalidate(&event.subject).await.map_err(|e| {
                HandlerError::retry(format!("invalidating the cache of {}: {e}", event.subject))
            }),
            None => Ok(()),
        }
    }
}
