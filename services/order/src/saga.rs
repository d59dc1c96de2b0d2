//! Order's consumers of the saga's events (`docs/saga.md`):
//!
//! | event | effect |
//! |---|---|
//! | `inventory.reserved` | record the reservation; PENDING -> RESERVED |
//! | `inventory.rejected` | cancel, OUT_OF_STOCK |
//! | `inventory.reservation_expired` | cancel, TIMEOUT (if still open) |
//! | `payment.succeeded` | confirm -> `order.confirmed` (ignored when already final) |
//! | `payment.failed` | cancel, PAYMENT_FAILED |
//! | `payment.refunded` | an order refund (key `order-refund:<id>`) COMPLETED -> `order.refunded` |
//! | `payment.refund_failed` | an order refund FAILED |
//!
//! Events of different streams arrive in any order, so every handler is a conditional
//! transition from the open statuses: whichever of "confirm" and "cancel" comes first wins, the
//! other changes nothing. Events about references that are not orders (vends reserve stock and
//! pay too) are ignored.

use mesh_contracts::events::v1::{
    CancelReason, Envelope, InventoryRejected, InventoryReservationExpired, InventoryReserved,
    PaymentFailed, PaymentRefundFailed, PaymentRefunded, PaymentSucceeded,
};
use mesh_runtime::consumer::{Consumer, HandlerError, Step};
use mesh_runtime::outbox::Tx;
use mesh_runtime::typed_handler::{Handled, TypedHandler};

use crate::error::OrderError;
use crate::{refund, transitions};

fn handler_err(e: OrderError) -> HandlerError {
    match e {
        OrderError::Common(mesh_runtime::domain::ServiceError::Database(d)) => {
            HandlerError::from(d)
        }
        other => HandlerError::retry(other),
    }
}

/// Adds the saga handlers to `consumer`.
pub fn handlers(consumer: Consumer) -> Consumer {
    consumer
        .on("inventory.reserved", Reserved)
        .on("inventory.rejected", Rejected)
        .on("inventory.reservation_expired", Expired)
        .on("payment.succeeded", Succeeded)
        .on("payment.failed", Failed)
        .on("payment.refunded", Refunded)
        .on("payment.refund_failed", RefundFailed)
}

/// `inventory.reserved`.
#[derive(Debug, Clone, Copy)]
pub struct Reserved;

impl TypedHandler for Reserved {
    type Event = InventoryReserved;
    // PENDING -> RESERVED with its history entry is one statement (it records the event);
    // otherwise (a final order keeps the id) the step runs again in a transaction.
    const STEP: Step = Step::OneStatement;

    async fn handle(&self, p: InventoryReserved, event: &Envelope, tx: &mut Tx) -> Handled {
        transitions::reserved(tx, &p.reference_id, &p.reservation_id, &event.id)
            .await
            .map_err(handler_err)?;
        Ok(())
    }
}

/// `inventory.rejected`.
#[derive(Debug, Clone, Copy)]
pub struct Rejected;

impl TypedHandler for Rejected {
    type Event = InventoryRejected;

    async fn handle(&self, p: InventoryRejected, event: &Envelope, tx: &mut Tx) -> Handled {
        let detail = if p.reason.is_empty() {
            "out of stock".to_string()
        } else {
            p.reason.clone()
        };
        transitions::cancel(
            tx,
            &p.reference_id,
            CancelReason::OutOfStock,
            &detail,
            &event.id,
        )
        .await
        .map_err(handler_err)?;
        Ok(())
    }
}

/// `inventory.reservation_expired`: the stock is gone back to the shelf, so an open order can
/// no longer complete.
#[derive(Debug, Clone, Copy)]
pub struct Expired;

impl TypedHandler for Expired {
    type Event = InventoryReservationExpired;

    async fn handle(
        &self,
        p: InventoryReservationExpired,
        event: &Envelope,
        tx: &mut Tx,
    ) -> Handled {
        transitions::cancel(
            tx,
            &p.reference_id,
            CancelReason::Timeout,
            "the stock reservation expired",
            &event.id,
        )
        .await
        .map_err(handler_err)?;
        Ok(())
    }
}

/// `payment.succeeded`.
#[derive(Debug, Clone, Copy)]
pub struct Succeeded;

impl TypedHandler for Succeeded {
    type Event = PaymentSucceeded;
    // On Postgres a read, then the confirmation, its history entry, `order.confirmed` and the
    // record in one statement; when the order changed in between, the step runs again in a
    // transaction.
    const STEP: Step = Step::OneStatement;

    async fn handle(&self, p: PaymentSucceeded, event: &Envelope, tx: &mut Tx) -> Handled {
        let confirmed = transitions::confirm(tx, &p.order_id, &p.payment_id, &event.id)
            .await
            .map_err(handler_err)?;
        if confirmed.is_none() {
            // Already final (cancelled by timeout or the customer first) or not an order:
            // payment refunds a capture of a cancelled order on `order.cancelled`.
            tracing::info!(order = %p.order_id, payment = %p.payment_id, "payment.succeeded for an order that is not open; ignored");
        }
        Ok(())
    }
}

/// `payment.failed`.
#[derive(Debug, Clone, Copy)]
pub struct Failed;

impl TypedHandler for Failed {
    type Event = PaymentFailed;

    async fn handle(&self, p: PaymentFailed, event: &Envelope, tx: &mut Tx) -> Handled {
        let detail = if p.message.is_empty() {
            "payment failed".to_string()
        } else {
            p.message.clone()
        };
        transitions::cancel(
            tx,
            &p.order_id,
            CancelReason::PaymentFailed,
            &detail,
            &event.id,
        )
        .await
        .map_err(handler_err)?;
        Ok(())
    }
}

/// The order refund id in payment's idempotency key, if the refund is an order refund.
fn order_refund(key: &str) -> Option<&str> {
    key.strip_prefix(refund::PAYMENT_KEY_PREFIX)
        .filter(|id| !id.is_empty())
}

/// `payment.refunded`: an order refund's money went back; other refunds (a cancelled order's
/// capture, a Refund call) are not order refunds and are ignored.
#[derive(Debug, Clone, Copy)]
pub struct Refunded;

impl TypedHandler for Refunded {
    type Event = PaymentRefunded;

    async fn handle(&self, p: PaymentRefunded, _: &Envelope, tx: &mut Tx) -> Handled {
        let Some(id) = order_refund(&p.idempotency_key) else {
            return Ok(());
        };
        refund::finish(tx, &p.order_id, id, &p.refund_id, true)
            .await
            .map_err(handler_err)?;
        Ok(())
    }
}

/// `payment.refund_failed`: the processor refused an order refund.
#[derive(Debug, Clone, Copy)]
pub struct RefundFailed;

impl TypedHandler for RefundFailed {
    type Event = PaymentRefundFailed;

    async fn handle(&self, p: PaymentRefundFailed, _: &Envelope, tx: &mut Tx) -> Handled {
        let Some(id) = order_refund(&p.idempotency_key) else {
            return Ok(());
        };
        refund::finish(tx, &p.order_id, id, &p.refund_id, false)
            .await
            .map_err(handler_err)?;
        Ok(())
    }
}
