//! Inventory's part of the order saga (`/docs/saga.md`): consumers of the order's events.
//!
//! - `order.created` reserves every line at the order's location, reference = order id, and
//!   emits `inventory.reserved`, or `inventory.rejected` when a line is short (nothing held);
//! - `order.confirmed` commits the order's reservation (`inventory.committed`);
//! - `order.cancelled` releases it if held (`inventory.released`), or, when the order is not
//!   known yet, leaves a tombstone so a late `order.created` reserves nothing.
//!
//! The runtime's consumer makes each event id count once; these handlers are also idempotent by
//! order id (the `saga_orders` row), since one business fact can come twice under two event ids.

use std::sync::Arc;
use std::time::Duration;

use mesh_contracts::events::v1::{
    Envelope, InventoryRejected, OrderCancelled, OrderConfirmed, OrderCreated, ShortLine,
};
use mesh_contracts::inventory::v1::ReservationStatus;
use mesh_runtime::auth::Clock;
use mesh_runtime::consumer::{Consumer, HandlerError, Step};
use mesh_runtime::domain::time::duration_us;
use mesh_runtime::outbox::{Event, Tx};
use mesh_runtime::typed_handler::{Handled, TypedHandler};

use crate::error::InventoryError;
use crate::events;
use crate::reservations::{self, Expiry};
use crate::store;
use crate::validate::{self, Line};

/// Event type that starts a reservation.
pub const ORDER_CREATED: &str = "order.created";
/// Event type that commits it.
pub const ORDER_CONFIRMED: &str = "order.confirmed";
/// Event type that releases it.
pub const ORDER_CANCELLED: &str = "order.cancelled";

/// Settings of the saga handlers.
#[derive(Debug, Clone)]
pub struct SagaOptions {
    /// The clock reservations start and expire by.
    pub clock: Arc<dyn Clock>,
    /// Lifetime of a saga reservation; must exceed the order saga's timeout, or a reservation
    /// could lapse under an order about to be confirmed.
    pub reservation_ttl: Duration,
}

/// Adds the saga handlers to `consumer` (the refund's restock, `crate::refunds`, is added beside
/// them by the service's build).
pub fn handlers(consumer: Consumer, options: &SagaOptions) -> Consumer {
    consumer
        .on(ORDER_CREATED, Reserve(options.clone()))
        .on(ORDER_CONFIRMED, Commit(options.clone()))
        .on(ORDER_CANCELLED, Release(options.clone()))
}

fn order_id(id: &str, event: &Envelope) -> Result<String, HandlerError> {
    validate::reference("order_id", id)
        .map_err(|e| HandlerError::permanent(format!("{} {}: {e}", event.r#type, event.id)))
}

fn db_err(e: InventoryError) -> HandlerError {
    match e {
        InventoryError::Database(d) => HandlerError::from(d),
        other => HandlerError::permanent(other),
    }
}

async fn set_state(
    tx: &mut Tx,
    order: &str,
    state: &str,
    reservation: &str,
    now: i64,
) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO saga_orders (order_id, state, reservation_id, updated_us) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (order_id) DO UPDATE SET state = $2, \
         reservation_id = CASE WHEN $3 = '' THEN saga_orders.reservation_id ELSE $3 END, updated_us = $4",
    )
    .bind(order)
    .bind(state)
    .bind(reservation)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `order.created` -> reserve, or reject.
#[derive(Debug, Clone)]
pub struct Reserve(SagaOptions);

impl TypedHandler for Reserve {
    type Event = OrderCreated;
    // On Postgres, alone in its batch: the whole reservation in one statement (below).
    const STEP: Step = Step::OneStatement;

    async fn handle(&self, created: OrderCreated, event: &Envelope, tx: &mut Tx) -> Handled {
        let order = order_id(&created.order_id, event)?;
        let now = self.0.clock.now_us();
        let id = uuid::Uuid::now_v7().to_string();
        let expires = now.saturating_add(duration_us(self.0.reservation_ttl));
        let location = validate::location_id("location_id", &created.location_id, true);
        let mut lines = Vec::with_capacity(created.lines.len());
        let mut problems = Vec::new();
        for (i, l) in created.lines.iter().enumerate() {
            match (&location, validate::product_id("product_id", &l.product_id)) {
                (Ok(loc), Ok(product_id)) if l.quantity > 0 => lines.push(Line {
                    product_id,
                    location_id: loc.clone(),
                    quantity: l.quantity,
                }),
                _ => problems.push(format!("line {i} is malformed")),
            }
        }
        // Rows in (product, location) order: every line held in one statement.
        let merged = validate::merged(&lines);
        if tx.reruns_failed_step() && !lines.is_empty() && problems.is_empty() {
            // On Postgres, alone in its batch (a one-statement step) or in a batch's first
            // transaction: the claims, the holds, the lines, `inventory.reserved` and the
            // record in one statement that writes all or nothing. When it fails (a known order,
            // a taken reference, a line short of stock) the consumer runs the step again, below.
            tx.write_and_emit(
                &store::reserve_writes(&order, &id, &lines, &merged, now, expires),
                events::reserved(&id, &order, &lines, expires),
            )
            .await?;
            return Ok(());
        }
        if !tx.in_transaction() {
            // A malformed order: the general path, in a transaction.
            tx.need_transaction()?;
        }
        // Idempotent by order id: claim the order; a known order (reserved, rejected, or
        // cancelled before it arrived) gets nothing more. The claim already records the
        // outcome of the common case (reserved under `id`); the other outcomes overwrite it
        // in this transaction, so no one sees it. The reservation row, claimed with it, claims
        // the reference (unique): an order reserved through the RPC already keeps that
        // reservation, found without a read in the common case.
        let claim = store::claim_order(tx, &order, &id, now, expires)
            .await
            .map_err(db_err)?;
        if claim == store::OrderClaim::Known {
            tracing::debug!(order = %order, "order.created for a known order: nothing to do");
            return Ok(());
        }
        if claim == store::OrderClaim::ReferenceTaken {
            let existing = store::reservation(tx, &order, true)
                .await
                .map_err(db_err)?
                .map(|r| r.id)
                .unwrap_or_default();
            return set_state(tx, &order, "RESERVED", &existing, now).await;
        }
        if lines.is_empty() || !problems.is_empty() {
            problems.push("the order has no valid line".into());
            store::unclaim_reservation(tx, &id).await.map_err(db_err)?;
            return reject(tx, &order, Vec::new(), &problems.join("; "), now).await;
        }
        let held = store::hold_all(tx, &merged, now).await.map_err(db_err)?;
        if held.len() < merged.len() {
            // All or nothing: give back what this order held a moment ago.
            let (held, missing): (Vec<Line>, Vec<Line>) = merged
                .into_iter()
                .partition(|l| held.contains(&l.product_id));
            let mut short = Vec::with_capacity(missing.len());
            for line in missing {
                let level = store::stock_in(tx, &line.product_id, &line.location_id)
                    .await
                    .map_err(db_err)?;
                short.push(ShortLine {
                    product_id: line.product_id,
                    location_id: line.location_id,
                    requested: line.quantity,
                    available: level.available,
                });
            }
            store::unhold_all(tx, &held, now).await.map_err(db_err)?;
            store::unclaim_reservation(tx, &id).await.map_err(db_err)?;
            let reason = format!("{} line(s) short of stock", short.len());
            return reject(tx, &order, short, &reason, now).await;
        }
        // The lines and the event: one statement on Postgres.
        tx.write_and_emit(
            &store::lines_writes(&id, &lines),
            events::reserved(&id, &order, &lines, expires),
        )
        .await?;
        Ok(())
    }
}

async fn reject(
    tx: &mut Tx,
    order: &str,
    short_lines: Vec<ShortLine>,
    reason: &str,
    now: i64,
) -> Result<(), HandlerError> {
    // No reservation: clear the one the claim named.
    sqlx::query("UPDATE saga_orders SET state = 'REJECTED', reservation_id = '', updated_us = $1 WHERE order_id = $2")
        .bind(now)
        .bind(order)
        .execute(&mut **tx)
        .await?;
    tx.emit(
        Event::new(
            "inventory.rejected",
            order,
            "InventoryRejected",
            &InventoryRejected {
                reference_id: order.into(),
                short_lines,
                reason: reason.into(),
            },
        )
        .correlation(order),
    )
    .await?;
    Ok(())
}

/// `order.confirmed` -> commit the order's reservation.
#[derive(Debug, Clone)]
pub struct Commit(SagaOptions);

impl TypedHandler for Commit {
    type Event = OrderConfirmed;
    // A read, then one statement: the reservation's status change gating every line's stock,
    // the outbox row and the handled record. Alone in its batch it runs without a transaction;
    // a reservation no longer ACTIVE (redelivery, or expired and swept) runs it in one.
    const STEP: Step = Step::OneStatement;

    async fn handle(&self, confirmed: OrderConfirmed, event: &Envelope, tx: &mut Tx) -> Handled {
        let order = order_id(&confirmed.order_id, event)?;
        let now = self.0.clock.now_us();
        let Some(reservation) = store::reservation(tx, &order, true).await.map_err(db_err)? else {
            // Payment charges only after inventory.reserved, so this cannot normally happen;
            // retry (the reservation may be in a transaction not yet visible) and then
            // dead-letter for an operator.
            return Err(HandlerError::retry(format!(
                "order {order} was confirmed but has no reservation"
            )));
        };
        let status = ReservationStatus::try_from(reservation.status).unwrap_or_default();
        let reservation_id = reservation.id.clone();
        match status {
            ReservationStatus::Active => {
                // Past its expiry but not swept yet: the stock is still held, commit it.
                reservations::finish_loaded(
                    tx,
                    now,
                    reservation,
                    ReservationStatus::Committed,
                    "",
                    Expiry::Ignore,
                )
                .await
                .map_err(db_err)?;
            }
            ReservationStatus::Committed => {}
            _ => {
                // Released or expired under a confirmed order: the saga's settings are wrong
                // (reservation TTL not above the saga timeout) or someone released it by
                // hand. Never take stock that may be sold to another order: leave it to an
                // operator, loudly.
                tracing::error!(order = %order, reservation = %reservation_id, status = store::status_name(status), "order confirmed but its reservation is no longer held");
                return Err(HandlerError::permanent(format!(
                    "order {order} confirmed but reservation {reservation_id} is {}",
                    store::status_name(status)
                )));
            }
        }
        // The reservation's COMMITTED status is the saga's memory of it: `order.cancelled`
        // reads the reservation anyway, so no saga row update is needed here.
        Ok(())
    }
}

/// `order.cancelled` -> release the order's reservation, or leave a tombstone.
#[derive(Debug, Clone)]
pub struct Release(SagaOptions);

impl TypedHandler for Release {
    type Event = OrderCancelled;

    async fn handle(&self, cancelled: OrderCancelled, event: &Envelope, tx: &mut Tx) -> Handled {
        let order = order_id(&cancelled.order_id, event)?;
        let now = self.0.clock.now_us();
        let reservation = store::reservation(tx, &order, true).await.map_err(db_err)?;
        if reservation
            .as_ref()
            .is_some_and(|r| r.status == ReservationStatus::Committed as i32)
        {
            tracing::warn!(order = %order, "order.cancelled for a committed order: stock stays sold");
            return Ok(());
        }
        let reservation_id = reservation
            .as_ref()
            .map(|r| r.id.clone())
            .unwrap_or_default();
        set_state(tx, &order, "CANCELLED", &reservation_id, now).await?;
        if let Some(r) = reservation
            && r.status == ReservationStatus::Active as i32
        {
            let reason = if cancelled.detail.is_empty() {
                "order cancelled".to_string()
            } else {
                format!("order cancelled: {}", cancelled.detail)
            };
            reservations::finish_loaded(
                tx,
                now,
                r,
                ReservationStatus::Released,
                &reason,
                Expiry::Ignore,
            )
            .await
            .map_err(db_err)?;
        }
        Ok(())
    }
}
