//! Payment's part of the order saga (`/docs/saga.md`): three event handlers that record what
//! they learn about an order, in any order of arrival, and charge exactly when the amount is
//! known, the stock is reserved, the order is not cancelled and it has no payment yet.
//!
//! Every handler is idempotent by event id (the runtime's consumer) and by order id: the facts
//! are flags set with upserts, the charge is the order's unique payment row, the cancel refund
//! has the key `cancel:<order id>`, an order refund `order-refund:<refund id>`. The same fact
//! under a new event id has no second effect.

use mesh_contracts::events::v1::{
    Envelope, InventoryReserved, OrderCancelled, OrderCreated, OrderRefundRequested,
};
use mesh_contracts::payment::v1::PaymentStatus;
use mesh_runtime::consumer::{HandlerError, Step};
use mesh_runtime::outbox::Tx;
use mesh_runtime::typed_handler::{Handled, TypedHandler};

use crate::engine::Engine;
use crate::error::PaymentError;
use crate::store::{self, SagaOrder};

fn order_id(field: &str, id: &str) -> Result<String, HandlerError> {
    crate::validate::id(field, id).map_err(HandlerError::permanent)
}

fn handler_error(e: PaymentError) -> HandlerError {
    match e {
        PaymentError::Common(mesh_runtime::domain::ServiceError::Database(d)) => {
            HandlerError::retry(d)
        }
        other => HandlerError::retry(other),
    }
}

/// Charges the order if every condition holds and it has no payment yet. `o` is the saga row as
/// the handler's upsert returned it (no second read).
async fn maybe_charge(engine: &Engine, tx: &mut Tx, o: &SagaOrder) -> Result<(), PaymentError> {
    if !o.known || !o.reserved || o.cancelled {
        return Ok(());
    }
    let (p, created) = engine.request_saga_charge(tx, o).await?;
    if created {
        tracing::info!(order = %o.order_id, payment = %p.id, status = ?p.status, "charge requested");
    }
    Ok(())
}

/// `order.created`: remembers amount, currency, card token and customer; charges if the stock
/// is already reserved. Usually (the stock not reserved yet) one statement that records the
/// event too: a one-statement step, run without a transaction.
#[derive(Debug, Clone)]
pub struct OnOrderCreated(pub Engine);

impl TypedHandler for OnOrderCreated {
    type Event = OrderCreated;
    const STEP: Step = Step::OneStatement;

    async fn handle(&self, e: OrderCreated, _: &Envelope, tx: &mut Tx) -> Handled {
        let id = order_id("order_id", &e.order_id)?;
        let total = e.total.unwrap_or_default();
        let order = SagaOrder {
            order_id: id.clone(),
            known: true,
            customer_id: e.customer_id,
            currency: total.currency_code,
            amount_minor: total.amount_minor.max(0),
            card_token: e.card_token,
            reserved: false,
            cancelled: false,
        };
        // Without a transaction the step is the upsert while the stock is not reserved yet
        // (nothing to charge); when it is, that changes nothing, fails, and the step runs
        // again in a transaction, which upserts and charges.
        if !tx.in_transaction() && store::saga_created_unreserved(tx, &order).await?.is_some() {
            return Ok(());
        }
        let now = store::saga_created(tx, &order).await?;
        maybe_charge(&self.0, tx, &now).await.map_err(handler_error)
    }
}

/// `inventory.reserved`: marks the order's stock reserved (reference id = order id); charges if
/// the order is known. On Postgres usually one statement that records the event too (the flag,
/// and the charge inserted leased when the order can be charged): a one-statement step, run
/// without a transaction. When the charge needs more (a zero amount, an unknown token, a
/// payment already there) the flag upsert and the charge's general path follow, in a transaction.
#[derive(Debug, Clone)]
pub struct OnInventoryReserved(pub Engine);

impl TypedHandler for OnInventoryReserved {
    type Event = InventoryReserved;
    const STEP: Step = Step::OneStatement;

    async fn handle(&self, e: InventoryReserved, _: &Envelope, tx: &mut Tx) -> Handled {
        let id = order_id("reference_id", &e.reference_id)?;
        if tx.backend_name() == "PostgreSQL"
            && self
                .0
                .reserved_and_charge(tx, &id)
                .await
                .map_err(handler_error)?
        {
            return Ok(());
        }
        let now = store::saga_flag(tx, &id, true).await?;
        maybe_charge(&self.0, tx, &now).await.map_err(handler_error)
    }
}

/// `order.cancelled`: marks the order cancelled (a later `inventory.reserved` does not charge);
/// refunds what was captured and not yet refunded. A charge requested but never attempted is
/// voided (its row deleted: the provider was never called); one in flight is refunded when it
/// finishes (the engine checks the mark).
#[derive(Debug, Clone)]
pub struct OnOrderCancelled(pub Engine);

impl TypedHandler for OnOrderCancelled {
    type Event = OrderCancelled;

    async fn handle(&self, e: OrderCancelled, _: &Envelope, tx: &mut Tx) -> Handled {
        let id = order_id("order_id", &e.order_id)?;
        store::saga_flag(tx, &id, false).await?;
        let Some(p) = store::payment_of_order(tx, &id).await? else {
            return Ok(());
        };
        match p.status {
            PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded => {
                self.0
                    .refund_cancelled(tx, &p)
                    .await
                    .map_err(handler_error)?;
            }
            PaymentStatus::Pending if store::void_unattempted(tx, &p.id).await? => {
                tracing::info!(order = %id, payment = %p.id, "charge voided: the order was cancelled first");
            }
            _ => {}
        }
        Ok(())
    }
}

/// `order.refund_requested`: staff refunded (some of) a confirmed order; its amount is paid back
/// from the order's payment with the key `order-refund:<refund id>` (once, whatever the
/// deliveries), by the worker after the commit. A refund of nothing needs no payment.
#[derive(Debug, Clone)]
pub struct OnOrderRefundRequested(pub Engine);

impl TypedHandler for OnOrderRefundRequested {
    type Event = OrderRefundRequested;

    async fn handle(&self, e: OrderRefundRequested, _: &Envelope, tx: &mut Tx) -> Handled {
        let id = order_id("order_id", &e.order_id)?;
        let refund_id = order_id("refund_id", &e.refund_id)?;
        let amount = e.amount.map_or(0, |m| m.amount_minor);
        if amount <= 0 {
            return Ok(());
        }
        // Saga row first, then the payment: the lock order of every charge and refund.
        store::lock_saga_order(tx, &id).await?;
        let Some(p) = store::payment_of_order(tx, &id).await? else {
            // A confirmed order always has its payment; retried, then dead-lettered loudly.
            return Err(HandlerError::retry(format!(
                "order `{id}` has no payment to refund"
            )));
        };
        let refund = self
            .0
            .refund_order(tx, &p, &refund_id, amount, &e.reason)
            .await
            .map_err(handler_error)?;
        if let Some(r) = refund {
            tracing::info!(order = %id, payment = %p.id, refund = %r.id, amount, "order refund requested");
        }
        Ok(())
    }
}
