//! Refunded units coming back (`docs/saga.md`, "Refunds"): the consumer of order's
//! `order.refunded`, emitted once the refund's money went back. The goods follow the money: a
//! refund that payment could not pay back never reaches inventory, so its units stay sold.
//! Each line is one stock adjustment at the order's location, with the refund's reason in its
//! note: RESTOCK puts the units back on hand (reason RETURN, positive
//! delta, `inventory.adjusted`); WRITE_OFF records them as written off (reason DAMAGE, delta 0:
//! the units left the shelf when the order's stock was committed and do not come back), with an
//! `inventory.adjusted` too, so the write-off is on the audit trail.
//!
//! Idempotent by fact as well as by event id: each line's adjustment carries the request id
//! `refund:<refund id>:<product id>` (unique), so the same refund delivered again under another
//! event id adjusts nothing twice.

use mesh_contracts::events::v1::{Envelope, OrderRefunded};
use mesh_contracts::inventory::v1::AdjustmentReason;
use mesh_contracts::order::v1::StockDisposition;
use mesh_runtime::consumer::HandlerError;
use mesh_runtime::outbox::Tx;
use mesh_runtime::typed_handler::{Handled, TypedHandler};

use crate::error::InventoryError;
use crate::events;
use crate::saga::SagaOptions;
use crate::store;
use crate::validate;

/// Event type of a completed refund of a confirmed order (its money went back).
pub const ORDER_REFUNDED: &str = "order.refunded";

/// Who the adjustments of refunds are recorded as made by.
pub const ACTOR: &str = "order-refund";

fn permanent(event: &Envelope, e: InventoryError) -> HandlerError {
    HandlerError::permanent(format!("{} {}: {e}", event.r#type, event.id))
}

fn db_err(e: InventoryError) -> HandlerError {
    match e {
        InventoryError::Database(d) => HandlerError::from(d),
        other => HandlerError::permanent(other),
    }
}

/// `order.refunded` -> restock or write off every line.
#[derive(Debug, Clone)]
pub struct Return(pub SagaOptions);

impl TypedHandler for Return {
    type Event = OrderRefunded;

    async fn handle(&self, e: OrderRefunded, event: &Envelope, tx: &mut Tx) -> Handled {
        let refund =
            validate::reference("refund_id", &e.refund_id).map_err(|err| permanent(event, err))?;
        let location = validate::location_id("location_id", &e.location_id, true)
            .map_err(|err| permanent(event, err))?;
        let now = self.0.clock.now_us();
        let mut lines = e.lines.clone();
        // Sorted, so concurrent adjustments lock stock rows in one order.
        lines.sort_by(|a, b| a.product_id.cmp(&b.product_id));
        for line in lines {
            let product = validate::product_id("lines.product_id", &line.product_id)
                .map_err(|err| permanent(event, err))?;
            if line.quantity < 1 {
                continue;
            }
            let request_id = format!("refund:{refund}:{product}");
            if store::adjustment_by_request(tx, &request_id)
                .await
                .map_err(db_err)?
                .is_some()
            {
                continue;
            }
            let write_off = line.disposition == StockDisposition::WriteOff as i32;
            let (delta, reason, what) = if write_off {
                (0, AdjustmentReason::Damage, "written off")
            } else {
                (line.quantity, AdjustmentReason::Return, "restocked")
            };
            if delta > 0 {
                store::adjust(tx, &product, &location, delta, now)
                    .await
                    .map_err(db_err)?;
            }
            let level = store::stock_in(tx, &product, &location)
                .await
                .map_err(db_err)?;
            let note = format!(
                "{} units {what}: refund {refund} of order {}: {}",
                line.quantity, e.order_id, e.reason
            );
            store::insert_adjustment(
                tx,
                Some(&request_id),
                &level,
                delta,
                reason as i32,
                &note,
                ACTOR,
                now,
            )
            .await
            .map_err(db_err)?;
            tx.emit(
                events::adjusted(&level, delta, reason as i32, ACTOR, note)
                    .correlation(e.order_id.clone()),
            )
            .await?;
        }
        Ok(())
    }
}
