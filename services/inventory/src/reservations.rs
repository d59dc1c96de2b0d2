//! Reservation state changes shared by the RPCs and the sweeper: each moves an ACTIVE
//! reservation to its final state, adjusts the stock of its lines, and emits its event, in one
//! transaction (on Postgres in one statement: the status change gates the stock change and the
//! outbox row).

use std::sync::Arc;

use mesh_contracts::events::v1::{
    InventoryCommitted, InventoryReleased, InventoryReservationExpired, ReservedLine,
};
use mesh_contracts::inventory::v1::{Reservation, ReservationStatus};
use mesh_runtime::Database;
use mesh_runtime::auth::Clock;
use mesh_runtime::domain::time::{from_timestamp, to_timestamp};
use mesh_runtime::outbox::{Event, Tx};

use crate::error::InventoryError;
use crate::store::{self, StockChange};
use crate::validate::Line;

/// Event lines of reservation `lines`.
pub fn event_lines(lines: &[Line]) -> Vec<ReservedLine> {
    lines
        .iter()
        .map(|l| ReservedLine {
            product_id: l.product_id.clone(),
            location_id: l.location_id.clone(),
            quantity: l.quantity,
        })
        .collect()
}

/// Ends reservation `id` as `to` (COMMITTED, RELEASED or EXPIRED) in a transaction of its own.
/// Returns the reservation after the change, or as it was when it had already left ACTIVE (the
/// caller decides whether that is fine).
pub async fn finish(
    db: &Database,
    clock: &Arc<dyn Clock>,
    id: &str,
    to: ReservationStatus,
    reason: &str,
) -> Result<Reservation, InventoryError> {
    let mut tx = db.begin().await?;
    let after = finish_in(&mut tx, clock.now_us(), id, to, reason, Expiry::Enforce).await?;
    tx.commit().await?;
    Ok(after)
}

/// Whether committing a reservation past its `expire_time` (but not yet swept) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Refuse (the RPC): the sweeper is about to return the stock.
    Enforce,
    /// Allow (the saga): the stock is still held, and the order was confirmed.
    Ignore,
}

/// [`finish`] inside `tx` (a consumer's transaction, or the RPC's), at `now` (microseconds since the epoch).
pub async fn finish_in(
    tx: &mut Tx,
    now: i64,
    id: &str,
    to: ReservationStatus,
    reason: &str,
    expiry: Expiry,
) -> Result<Reservation, InventoryError> {
    let current = store::reservation(tx, id, false)
        .await?
        .ok_or_else(|| InventoryError::not_found("reservation", id))?;
    finish_loaded(tx, now, current, to, reason, expiry).await
}

/// [`finish_in`] for a reservation the caller has just read in `tx` (`current`, with its lines):
/// saves reading it again. Returns the reservation after the change.
pub async fn finish_loaded(
    tx: &mut Tx,
    now: i64,
    current: Reservation,
    to: ReservationStatus,
    reason: &str,
    expiry: Expiry,
) -> Result<Reservation, InventoryError> {
    let id = current.id.clone();
    if current.status != ReservationStatus::Active as i32 {
        return Ok(current);
    }
    // A stored expiry always converts; one that did not would count as past.
    let expired = current.expire_time.as_ref().is_none_or(|t| {
        from_timestamp("expire_time", t)
            .map(|us| us <= now)
            .unwrap_or(true)
    });
    if to == ReservationStatus::Committed && expiry == Expiry::Enforce && expired {
        let at = current.expire_time.as_ref().map_or(0, |t| t.seconds);
        return Err(InventoryError::FailedPrecondition(format!(
            "reservation `{id}` expired at {at} (Unix seconds); its stock is being returned"
        )));
    }
    let lines: Vec<Line> = current
        .lines
        .iter()
        .map(|l| Line {
            product_id: l.product_id.clone(),
            location_id: l.location_id.clone(),
            quantity: l.quantity,
        })
        .collect();
    let merged = crate::validate::merged(&lines);
    let change = match to {
        ReservationStatus::Committed => StockChange::Take,
        _ => StockChange::Unhold,
    };
    let reference_id = current.reference_id.clone();
    let event = match to {
        ReservationStatus::Committed => Event::new(
            "inventory.committed",
            &id,
            "InventoryCommitted",
            &InventoryCommitted {
                reservation_id: id.clone(),
                reference_id,
                lines: event_lines(&lines),
            },
        ),
        ReservationStatus::Expired => Event::new(
            "inventory.reservation_expired",
            &id,
            "InventoryReservationExpired",
            &InventoryReservationExpired {
                reservation_id: id.clone(),
                reference_id,
                lines: event_lines(&lines),
                expire_time: current.expire_time,
            },
        ),
        _ => Event::new(
            "inventory.released",
            &id,
            "InventoryReleased",
            &InventoryReleased {
                reservation_id: id.clone(),
                reference_id,
                lines: event_lines(&lines),
                reason: reason.into(),
            },
        ),
    };
    // The status change gates the stock change and the event: on Postgres one statement.
    let mut writes = vec![store::transition(&id, to, now)];
    writes.extend(store::change_writes(change, &merged, now));
    let emitted = tx
        .write_and_emit(&writes, event.correlation(current.reference_id.clone()))
        .await?;
    if emitted.is_none() {
        // Another writer ended it first (its commit is visible now); report its state.
        return store::reservation(tx, &id, false)
            .await?
            .ok_or_else(|| InventoryError::not_found("reservation", &id));
    }
    // What `transition` wrote: the new status, updated now.
    Ok(Reservation {
        status: to as i32,
        update_time: Some(to_timestamp(now)),
        ..current
    })
}
