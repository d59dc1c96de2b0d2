//! Refunds of confirmed orders (`docs/saga.md`, "Refunds"): the request and the finish, each a
//! state change plus its events in the caller's transaction.
//!
//! - [`request`] (RefundOrder, a staff CancelOrder of a confirmed order): records the refund
//!   REQUESTED with its lines, counts the units on the order's lines, moves the order to REFUNDED
//!   when no unit is left, and emits `order.refund_requested` (payment pays back, inventory
//!   restocks or writes off). A refund of nothing (a free order) is COMPLETED at once and emits
//!   `order.refunded` too.
//! - [`finish`] (order's consumer of `payment.refunded` / `payment.refund_failed`): REQUESTED ->
//!   COMPLETED (and `order.refunded`: notification tells the customer, inventory takes the
//!   units back) or FAILED. The goods follow the money: a FAILED refund's units count as sold
//!   again (they can be refunded anew; an order it had made REFUNDED is CONFIRMED again) and
//!   inventory, which acts only on `order.refunded`, never took them back.

use mesh_contracts::events::v1::{OrderRefundRequested, OrderRefunded, RefundedLine};
use mesh_contracts::order::v1::{Order, OrderStatus, RefundOrderRequest, RefundStatus};
use mesh_runtime::domain::ServiceError;
use mesh_runtime::domain::money::to_money;
use mesh_runtime::outbox::{Event, Tx};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::error::OrderError;
use crate::refund_plan::{self, Plan};
use crate::store::{self, Changes};
use crate::{refund_store, transitions};

type Result<T> = std::result::Result<T, OrderError>;

/// The idempotency key of the refund a staff CancelOrder of a confirmed order makes; refused
/// in RefundOrder.
pub const CANCEL_KEY: &str = "cancel";

/// The prefix of payment's idempotency key for an order refund: `order-refund:<refund id>`.
pub const PAYMENT_KEY_PREFIX: &str = "order-refund:";

/// The fingerprint of a refund request of order `id` (the same key with another request is
/// refused): a SHA-256 of the request with the order id normalised.
pub fn fingerprint(id: &str, req: &RefundOrderRequest) -> String {
    let mut canonical = req.clone();
    canonical.id = id.to_string();
    canonical.reason = canonical.reason.trim().to_string();
    let digest = Sha256::digest(canonical.encode_to_vec());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A checked refund request.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    /// Idempotency key.
    pub key: &'a str,
    /// Its fingerprint.
    pub request_hash: &'a str,
    /// The request (lines and dispositions are checked against the order here).
    pub request: &'a RefundOrderRequest,
    /// Why (trimmed, not empty).
    pub reason: &'a str,
}

fn currency(order: &Order) -> String {
    order
        .total
        .as_ref()
        .map(|m| m.currency_code.clone())
        .unwrap_or_default()
}

fn event_lines(plan: &Plan, currency: &str) -> Vec<RefundedLine> {
    plan.lines
        .iter()
        .map(|l| RefundedLine {
            product_id: l.product_id.clone(),
            quantity: l.quantity,
            amount: Some(to_money(currency, l.amount_minor)),
            disposition: l.disposition as i32,
        })
        .collect()
}

/// In `tx`, with `order` locked ([`store::lock`]): the refund `ask` makes, or the one the same
/// key made before (the same request; another request under the key is `ALREADY_EXISTS` naming
/// `idempotency_key`). Returns the refund's id.
pub async fn request(tx: &mut Tx, order: &Order, ask: &Ask<'_>) -> Result<String> {
    if let Some((id, hash)) = refund_store::by_key(tx, &order.id, ask.key).await? {
        if hash == ask.request_hash {
            return Ok(id);
        }
        return Err(ServiceError::AlreadyExists(format!(
            "idempotency_key: `{}` was already used for a different refund of order `{}`; use a new key for a new refund",
            ask.key, order.id
        ))
        .into());
    }
    let status = OrderStatus::try_from(order.status).unwrap_or_default();
    if status != OrderStatus::Confirmed {
        return Err(OrderError::precondition(
            "id",
            format!(
                "order `{}` is {}; only a CONFIRMED order can be refunded",
                order.id,
                status.as_str_name()
            ),
        ));
    }
    let bought = refund_store::bought(tx, &order.id).await?;
    let plan = refund_plan::plan(&bought, &ask.request.lines, ask.request.disposition)?;
    let id = uuid::Uuid::now_v7().to_string();
    let now = store::now_us();
    let refund_status = if plan.amount_minor == 0 {
        RefundStatus::Completed
    } else {
        RefundStatus::Requested
    };
    refund_store::insert(
        tx,
        &refund_store::NewRefund {
            id: &id,
            order_id: &order.id,
            key: ask.key,
            request_hash: ask.request_hash,
            reason: ask.reason,
            plan: &plan,
            status: refund_status,
            now,
        },
    )
    .await?;
    if plan.whole {
        store::transition(
            tx,
            &order.id,
            &[OrderStatus::Confirmed],
            OrderStatus::Refunded,
            &Changes::default(),
            &format!("refunded: {}", ask.reason),
            "",
            now,
        )
        .await?;
    }
    let currency = currency(order);
    let amount = Some(to_money(&currency, plan.amount_minor));
    let payload = OrderRefundRequested {
        order_id: order.id.clone(),
        customer_id: order.customer_id.clone(),
        refund_id: id.clone(),
        payment_id: order.payment_id.clone(),
        lines: event_lines(&plan, &currency),
        amount: amount.clone(),
        reason: ask.reason.to_string(),
        location_id: transitions::location(order).to_string(),
        whole_order: plan.whole,
    };
    tx.emit(
        Event::new(
            "order.refund_requested",
            &order.id,
            "OrderRefundRequested",
            &payload,
        )
        .correlation(&order.id),
    )
    .await?;
    if refund_status == RefundStatus::Completed {
        let refunded_minor =
            order.refunded_total.as_ref().map_or(0, |m| m.amount_minor) + plan.amount_minor;
        let done = OrderRefunded {
            order_id: order.id.clone(),
            customer_id: order.customer_id.clone(),
            refund_id: id.clone(),
            payment_refund_id: String::new(),
            amount,
            lines: payload.lines.clone(),
            reason: ask.reason.to_string(),
            whole_order: plan.whole,
            refunded_total: Some(to_money(&currency, refunded_minor)),
            location_id: payload.location_id.clone(),
        };
        emit_refunded(tx, &done).await?;
    }
    Ok(id)
}

async fn emit_refunded(tx: &mut Tx, done: &OrderRefunded) -> Result<()> {
    tx.emit(
        Event::new("order.refunded", &done.order_id, "OrderRefunded", done)
            .correlation(&done.order_id),
    )
    .await?;
    Ok(())
}

/// In `tx`: payment finished refund `refund_id` of order `order_id` (its refund
/// `payment_refund_id`): COMPLETED when `succeeded` (and `order.refunded`), else FAILED: its
/// amount leaves the order's refunded sum and its units the lines' refunded counts, and an order
/// it had made REFUNDED is CONFIRMED again (the sale stands; staff may refund anew). `false` when
/// the refund is not REQUESTED (a redelivery, or not an order refund of this order): nothing
/// changes.
pub async fn finish(
    tx: &mut Tx,
    order_id: &str,
    refund_id: &str,
    payment_refund_id: &str,
    succeeded: bool,
) -> Result<bool> {
    let to = if succeeded {
        RefundStatus::Completed
    } else {
        RefundStatus::Failed
    };
    let now = store::now_us();
    let Some(f) = refund_store::finish(tx, refund_id, order_id, to, payment_refund_id, now).await?
    else {
        return Ok(false);
    };
    if !succeeded {
        tracing::error!(order = %order_id, refund = %refund_id, "payment could not refund an order refund; it is FAILED, its units count as sold again");
        if f.order_status == store::status_name(OrderStatus::Refunded) {
            store::transition(
                tx,
                order_id,
                &[OrderStatus::Refunded],
                OrderStatus::Confirmed,
                &Changes::default(),
                &format!("refund {refund_id} failed: its units are sold again"),
                "",
                now,
            )
            .await?;
        }
        return Ok(true);
    }
    let refunds = refund_store::of_order(tx, order_id, &f.currency_code).await?;
    let lines = refunds
        .into_iter()
        .find(|r| r.id == refund_id)
        .map(|r| r.lines)
        .unwrap_or_default();
    let done = OrderRefunded {
        order_id: order_id.to_string(),
        customer_id: f.customer_id.clone(),
        refund_id: refund_id.to_string(),
        payment_refund_id: payment_refund_id.to_string(),
        amount: Some(to_money(&f.currency_code, f.amount_minor)),
        lines: lines
            .into_iter()
            .map(|l| RefundedLine {
                product_id: l.product_id,
                quantity: l.quantity,
                amount: l.amount,
                disposition: l.disposition,
            })
            .collect(),
        reason: f.reason.clone(),
        whole_order: f.order_status == store::status_name(OrderStatus::Refunded),
        refunded_total: Some(to_money(&f.currency_code, f.refunded_minor)),
        location_id: transitions::location_of(&f.store_id).to_string(),
    };
    emit_refunded(tx, &done).await?;
    Ok(true)
}
