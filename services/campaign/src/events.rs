//! Campaign's consumers: the order saga's events drive redemptions ([`crate::redemption`]),
//! product's events keep the product -> category map that category-scoped rules use current.
//! Every handler is idempotent by event id (the runtime) and by its conditional updates.

use futures::future::BoxFuture;
use mesh_contracts::events::v1::{
    Envelope, OrderCancelled, OrderConfirmed, OrderCreated, ProductCreated, ProductDeleted,
    ProductUpdated,
};
use mesh_runtime::consumer::{Consumer, EventHandler, HandlerError};
use mesh_runtime::outbox::Tx;
use mesh_runtime::payload::DecodePayload as _;

use crate::error::CampaignError;
use mesh_runtime::domain::time;

use crate::{redemption, store};

fn failed(e: CampaignError) -> HandlerError {
    HandlerError::retry(e)
}

/// Which event a [`On`] handler applies.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `order.created`: holds become reservations.
    OrderCreated,
    /// `order.confirmed`: reservations are consumed.
    OrderConfirmed,
    /// `order.cancelled`: redemptions are released.
    OrderCancelled,
    /// `product.created` / `product.updated`: the product's category.
    ProductChanged,
    /// `product.deleted`: forget the product.
    ProductDeleted,
}

/// The handler of one [`Kind`].
#[derive(Debug, Clone, Copy)]
pub struct On(pub Kind);

impl EventHandler for On {
    fn handle<'a>(
        &'a self,
        event: &'a Envelope,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let now = time::now_us();
            match self.0 {
                Kind::OrderCreated => {
                    let e: OrderCreated = event.decode_payload()?;
                    redemption::order_created(tx, &e.order_id, &e.applied_campaign_ids, now)
                        .await
                        .map_err(failed)
                }
                Kind::OrderConfirmed => {
                    let e: OrderConfirmed = event.decode_payload()?;
                    redemption::order_confirmed(tx, &e.order_id, now)
                        .await
                        .map(|_| ())
                        .map_err(failed)
                }
                Kind::OrderCancelled => {
                    let e: OrderCancelled = event.decode_payload()?;
                    redemption::order_cancelled(tx, &e.order_id, now)
                        .await
                        .map_err(failed)
                }
                Kind::ProductChanged => {
                    let product = if event.r#type == "product.created" {
                        event.decode_payload::<ProductCreated>()?.product
                    } else {
                        event.decode_payload::<ProductUpdated>()?.product
                    };
                    let Some(p) = product.filter(|p| !p.id.is_empty()) else {
                        return Err(HandlerError::permanent("the event names no product"));
                    };
                    store::set_category(tx, &p.id, &p.category_id, now)
                        .await
                        .map_err(failed)
                }
                Kind::ProductDeleted => {
                    let e: ProductDeleted = event.decode_payload()?;
                    store::forget_product(tx, &e.product_id)
                        .await
                        .map_err(failed)
                }
            }
        })
    }
}

/// Campaign's consumer group with every handler. One transaction at a time: holds and releases
/// of many orders lock the same campaign rows.
pub fn handlers(consumer: Consumer) -> Consumer {
    consumer
        .concurrency(1)
        .on("order.created", On(Kind::OrderCreated))
        .on("order.confirmed", On(Kind::OrderConfirmed))
        .on("order.cancelled", On(Kind::OrderCancelled))
        .on("product.created", On(Kind::ProductChanged))
        .on("product.updated", On(Kind::ProductChanged))
        .on("product.deleted", On(Kind::ProductDeleted))
}
