//! Right to erasure (`docs/events.md`): `user.deleted` clears the shipping addresses of the
//! customer's orders, in the orders table and in the `order.created` events of those orders that
//! the outbox (the audit trail) keeps. Amounts, lines and statuses stay: they are the shop's
//! records, keyed by an id that no longer leads to a person. Idempotent: a cleared address is
//! cleared again to the same nothing.

use mesh_contracts::events::v1::{Envelope, OrderCreated, UserDeleted};
use mesh_runtime::consumer::HandlerError;
use mesh_runtime::outbox::Tx;
use mesh_runtime::typed_handler::{Handled, TypedHandler};
use prost::Message;

/// Clears the customer's shipping addresses.
#[derive(Debug, Clone, Copy)]
pub struct OnUserDeleted;

/// Removes the shipping address from an `order.created` envelope; `true` if it had one.
fn clear_address(envelope: &mut Envelope) -> bool {
    if envelope.r#type != "order.created" {
        return false;
    }
    let Some(payload) = envelope.payload.as_mut() else {
        return false;
    };
    let Ok(mut created) = OrderCreated::decode(payload.value.as_slice()) else {
        return false;
    };
    if created.shipping_address.take().is_none() {
        return false;
    }
    payload.value = created.encode_to_vec();
    true
}

impl TypedHandler for OnUserDeleted {
    type Event = UserDeleted;

    async fn handle(&self, e: UserDeleted, _: &Envelope, tx: &mut Tx) -> Handled {
        if e.user_id.is_empty() {
            return Ok(());
        }
        let orders: Vec<String> =
            sqlx::query_scalar("SELECT id FROM orders WHERE customer_id = $1")
                .bind(&e.user_id)
                .fetch_all(&mut **tx)
                .await
                .map_err(HandlerError::retry)?;
        sqlx::query(
            "UPDATE orders SET shipping_address = '' WHERE customer_id = $1 AND shipping_address <> ''",
        )
        .bind(&e.user_id)
        .execute(&mut **tx)
        .await
        .map_err(HandlerError::retry)?;
        for order in &orders {
            mesh_runtime::redact::rewrite_subject(tx, order, clear_address)
                .await
                .map_err(HandlerError::retry)?;
        }
        tracing::info!(customer = %e.user_id, orders = orders.len(), "shipping addresses erased (user.deleted)");
        Ok(())
    }
}
