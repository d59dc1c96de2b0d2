//! Campaign's consumers: the order saga's events drive redemptions ([`crate::redemption`]),
//! product's events keep the product -> category map that category-scoped rules use current.
//! Every handler is idempotent by event id (the runtime) and by its conditional updates.
//!
//! The order's events are repeatable steps ([`Step::Repeatable`]): most orders hold no
//! redemption, so alone in its batch an event costs one autocommit statement (a read, or
//! `order.confirmed`'s conditional update) and no transaction or handled record. A step that
//! must count something once (a release, a retake) asks for the transaction first.

use mesh_contracts::events::v1::{
    Envelope, OrderCancelled, OrderConfirmed, OrderCreated, ProductCreated, ProductDeleted,
    ProductUpdated,
};
use mesh_contracts::product::v1::Product;
use mesh_runtime::consumer::{Consumer, HandlerError, Step};
use mesh_runtime::outbox::Tx;
use mesh_runtime::payload::DecodePayload as _;
use mesh_runtime::typed_handler::{EventPayload, Handled, TypedHandler};

use crate::error::CampaignError;
use mesh_runtime::domain::time;

use crate::{redemption, store};

fn failed(e: CampaignError) -> HandlerError {
    HandlerError::retry(e)
}

/// `order.created`: holds become reservations.
#[derive(Debug, Clone, Copy)]
pub struct OnOrderCreated;

impl TypedHandler for OnOrderCreated {
    type Event = OrderCreated;
    /// Reads, and conditional updates of HELD rows: repeatable; releases and retakes ask for
    /// the transaction.
    const STEP: Step = Step::Repeatable;

    async fn handle(&self, e: OrderCreated, _: &Envelope, tx: &mut Tx) -> Handled {
        let actions = redemption::order_created_actions(tx, &e.order_id, &e.applied_campaign_ids)
            .await
            .map_err(failed)?;
        if actions.is_empty() {
            return Ok(());
        }
        if !actions.iter().all(redemption::CreatedAction::repeatable) {
            tx.need_transaction()?;
        }
        if redemption::order_created(tx, &e.order_id, &actions, time::now_us())
            .await
            .map_err(failed)?
        {
            Ok(())
        } else {
            Err(HandlerError::retry(
                "a hold to reserve expired while the event was handled; handled again to count it again",
            ))
        }
    }
}

/// `order.confirmed`: reservations are consumed.
#[derive(Debug, Clone, Copy)]
pub struct OnOrderConfirmed;

impl TypedHandler for OnOrderConfirmed {
    type Event = OrderConfirmed;
    /// One conditional update (`HELD`/`RESERVED` -> `CONSUMED`), which a second run, even after
    /// a cancel released the rows, leaves as it is.
    const STEP: Step = Step::Repeatable;

    async fn handle(&self, e: OrderConfirmed, _: &Envelope, tx: &mut Tx) -> Handled {
        redemption::order_confirmed(tx, &e.order_id, time::now_us())
            .await
            .map(|_| ())
            .map_err(failed)
    }
}

/// `order.cancelled`: redemptions are released.
#[derive(Debug, Clone, Copy)]
pub struct OnOrderCancelled;

impl TypedHandler for OnOrderCancelled {
    type Event = OrderCancelled;
    /// A read; releasing counts back, so it asks for the transaction.
    const STEP: Step = Step::Repeatable;

    async fn handle(&self, e: OrderCancelled, _: &Envelope, tx: &mut Tx) -> Handled {
        let campaigns = redemption::to_release(tx, &e.order_id)
            .await
            .map_err(failed)?;
        if campaigns.is_empty() {
            return Ok(());
        }
        tx.need_transaction()?;
        redemption::order_cancelled(tx, &e.order_id, &campaigns, time::now_us())
            .await
            .map_err(failed)
    }
}

/// The product of a `product.created` or `product.updated` event: the same snapshot under two
/// event types.
#[derive(Debug, Clone, Default)]
pub struct ProductSnapshot(pub Option<Product>);

impl EventPayload for ProductSnapshot {
    fn read(envelope: &Envelope) -> Result<Self, HandlerError> {
        let product = if envelope.r#type == "product.created" {
            envelope.decode_payload::<ProductCreated>()?.product
        } else {
            envelope.decode_payload::<ProductUpdated>()?.product
        };
        Ok(Self(product))
    }
}

/// `product.created` / `product.updated`: the product's category.
#[derive(Debug, Clone, Copy)]
pub struct OnProductChanged;

impl TypedHandler for OnProductChanged {
    type Event = ProductSnapshot;

    async fn handle(&self, e: ProductSnapshot, _: &Envelope, tx: &mut Tx) -> Handled {
        let Some(p) = e.0.filter(|p| !p.id.is_empty()) else {
            return Err(HandlerError::permanent("the event names no product"));
        };
        store::set_category(tx, &p.id, &p.category_id, time::now_us())
            .await
            .map_err(failed)
    }
}

/// `product.deleted`: forget the product.
#[derive(Debug, Clone, Copy)]
pub struct OnProductDeleted;

impl TypedHandler for OnProductDeleted {
    type Event = ProductDeleted;

    async fn handle(&self, e: ProductDeleted, _: &Envelope, tx: &mut Tx) -> Handled {
        store::forget_product(tx, &e.product_id)
            .await
            .map_err(failed)
    }
}

/// Campaign's consumer group with every handler. One transaction at a time: holds and releases
/// of many orders lock the same campaign rows.
pub fn handlers(consumer: Consumer) -> Consumer {
    consumer
        .concurrency(1)
        .on("order.created", OnOrderCreated)
        .on("order.confirmed", OnOrderConfirmed)
        .on("order.cancelled", OnOrderCancelled)
        .on("product.created", OnProductChanged)
        .on("product.updated", OnProductChanged)
        .on("product.deleted", OnProductDeleted)
}
