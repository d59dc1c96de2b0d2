//! The order's saga transitions, each a conditional status change plus its history entry plus
//! its event, in the caller's transaction (an RPC's, the sweeper's or a consumer's): the state
//! change and the event commit together or not at all.

use mesh_contracts::events::v1::{
    CancelReason, OrderCancelled, OrderConfirmed, OrderCreated, OrderLineSnapshot,
};
use mesh_contracts::order::v1::{Order, OrderStatus};
use mesh_runtime::outbox::{Event, Tx};

use crate::error::OrderError;
use crate::store::{self, Changes, OPEN};

type Result<T> = std::result::Result<T, OrderError>;

/// Where online orders reserve stock.
pub const LOCATION: &str = "default";

/// Where `order` reserves stock: its store's location (the store id), or [`LOCATION`] online.
pub fn location(order: &Order) -> &str {
    location_of(&order.store_id)
}

/// The stock location of the orders of store `store_id` (empty: online, [`LOCATION`]).
pub fn location_of(store_id: &str) -> &str {
    if store_id.is_empty() {
        LOCATION
    } else {
        store_id
    }
}

fn snapshots(order: &Order) -> Vec<OrderLineSnapshot> {
    order
        .lines
        .iter()
        .map(|l| OrderLineSnapshot {
            product_id: l.product_id.clone(),
            quantity: l.quantity,
            unit_price: l.unit_price.clone(),
            discount: l.discount.clone(),
            total: l.total.clone(),
        })
        .collect()
}

/// The short name of a cancel reason (`PAYMENT_FAILED`), as recorded on the order.
pub fn reason_name(reason: CancelReason) -> &'static str {
    reason
        .as_str_name()
        .strip_prefix("CANCEL_REASON_")
        .unwrap_or("UNSPECIFIED")
}

/// `order.created` of the freshly written `order`.
pub fn created(order: &Order) -> Event {
    let payload = OrderCreated {
        order_id: order.id.clone(),
        customer_id: order.customer_id.clone(),
        lines: snapshots(order),
        subtotal: order.subtotal.clone(),
        discount_total: order.discount_total.clone(),
        shipping_total: order.shipping_total.clone(),
        total: order.total.clone(),
        card_token: order.card_token.clone(),
        location_id: location(order).into(),
        shipping_address: order.shipping_address.clone(),
        promo_code: order.promo_code.clone(),
        applied_campaign_ids: order.applied_campaign_ids.clone(),
    };
    Event::new("order.created", &order.id, "OrderCreated", &payload).correlation(&order.id)
}

/// Records the reservation of order `id`; PENDING becomes RESERVED. A final order only keeps
/// the id (inventory releases it on `order.cancelled`). `false` when the order is unknown. The
/// common case is one statement that also records the consumer's event (a one-statement step);
/// keeping the id alone takes a second one.
pub async fn reserved(tx: &mut Tx, id: &str, reservation: &str, event_id: &str) -> Result<bool> {
    let changes = Changes {
        reservation_id: Some(reservation),
        ..Changes::default()
    };
    let now = store::now_us();
    if store::transition(
        tx,
        id,
        &[OrderStatus::Pending],
        OrderStatus::Reserved,
        &changes,
        "inventory.reserved",
        event_id,
        now,
    )
    .await?
    .is_some()
    {
        return Ok(true);
    }
    store::set_reservation(tx, id, reservation).await
}

/// Confirms open order `id`, paid by `payment`, and emits `order.confirmed`. On Postgres two
/// statements without a transaction of their own ([`store::Transition::emitting`]: the order with
/// its lines read, then the update, its history entry and the outbox row in one), so in
/// order's `payment.succeeded` step, alone in its batch, they are all it costs; when the order
/// changed between the two (in a transaction) the general path follows: elsewhere always, the
/// update returning the order with its lines, then the outbox row. Returns the order with its
/// lines (no history); `None` when the order is unknown or already final (nothing changes).
pub async fn confirm(
    tx: &mut Tx,
    id: &str,
    payment: &str,
    event_id: &str,
) -> Result<Option<Order>> {
    let changes = Changes {
        payment_id: Some(payment),
        ..Changes::default()
    };
    let step = store::Transition {
        id,
        from: OPEN,
        to: OrderStatus::Confirmed,
        changes: &changes,
        reason: "payment.succeeded",
        event_id,
        now: store::now_us(),
    };
    if tx.backend_name() == "PostgreSQL" {
        match step.emitting(tx, confirmed).await? {
            store::Emitted::Moved(order) => return Ok(Some(*order)),
            store::Emitted::NotMoved => return Ok(None),
            store::Emitted::Raced => {}
        }
    }
    let Some(order) = step.with_lines(tx).await? else {
        return Ok(None);
    };
    tx.emit(confirmed(&order)).await?;
    Ok(Some(order))
}

/// `order.confirmed` of `order` as confirmed (with its lines).
fn confirmed(order: &Order) -> Event {
    let payload = OrderConfirmed {
        order_id: order.id.clone(),
        customer_id: order.customer_id.clone(),
        payment_id: order.payment_id.clone(),
        reservation_id: order.reservation_id.clone(),
        total: order.total.clone(),
        lines: snapshots(order),
        discount_total: order.discount_total.clone(),
    };
    Event::new("order.confirmed", &order.id, "OrderConfirmed", &payload).correlation(&order.id)
}

/// Cancels open order `id` for `reason` and emits `order.cancelled`: on Postgres two statements
/// (the update returning the order, joined to its history entry; the outbox row), elsewhere
/// three. Returns the order as updated,
/// without its lines and history; `None` when the order is unknown or already final (nothing
/// changes).
pub async fn cancel(
    tx: &mut Tx,
    id: &str,
    reason: CancelReason,
    detail: &str,
    event_id: &str,
) -> Result<Option<Order>> {
    let recorded = if detail.is_empty() {
        reason_name(reason).to_string()
    } else {
        format!("{}: {detail}", reason_name(reason))
    };
    let changes = Changes {
        cancel_reason: Some(&recorded),
        ..Changes::default()
    };
    let now = store::now_us();
    let Some(order) = store::transition(
        tx,
        id,
        OPEN,
        OrderStatus::Cancelled,
        &changes,
        &recorded,
        event_id,
        now,
    )
    .await?
    else {
        return Ok(None);
    };
    let payload = OrderCancelled {
        order_id: order.id.clone(),
        customer_id: order.customer_id.clone(),
        reason: reason as i32,
        detail: detail.into(),
        reservation_id: order.reservation_id.clone(),
        payment_id: order.payment_id.clone(),
        // Order never confirms and cancels the same order, so it never knows of a capture to
        // refund; payment refunds a late capture on its own (docs/saga.md).
        refund_required: false,
        total: order.total.clone(),
    };
    tx.emit(
        Event::new("order.cancelled", &order.id, "OrderCancelled", &payload).correlation(&order.id),
    )
    .await?;
    Ok(Some(order))
}
