//! Reservation state changes shared by the RPCs and the sweeper: each moves an ACTIVE
//! reservation to its final state, adjusts the stock of its lines, and emits its event, in one
//! transaction.

use std::sync::Arc;

use mesh_contracts::events::v1::{
    InventoryCommitted, InventoryReleased, InventoryReservationExpired, ReservedLine,
};
use mesh_contracts::inventory::v1::{Reservation, ReservationStatus};
use mesh_runtime::Database;
use mesh_runtime::auth::Clock;
use mesh_runtime::outbox::Event;

use crate::error::InventoryError;
use crate::store;
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

/// Ends reservation `id` as `to` (COMMITTED, RELEASED or EXPIRED). Returns the reservation
/// after the change, or as it was when it had already left ACTIVE (the caller decides whether
/// that is fine).
pub async fn finish(
    db: &Database,
    clock: &Arc<dyn Clock>,
    id: &str,
    to: ReservationStatus,
    reason: &str,
) -> Result<Reservation, InventoryError> {
    let now = clock.now_unix();
    let mut tx = db.begin().await?;
    let current = store::reservation(&mut tx, id, false)
        .await?
        .ok_or_else(|| InventoryError::NotFound(id.into()))?;
    if current.status != ReservationStatus::Active as i32 {
        return Ok(current);
    }
    let expire_at = current.expire_time.as_ref().map_or(0, |t| t.seconds);
    if to == ReservationStatus::Committed && expire_at <= now {
        return Err(InventoryError::FailedPrecondition(format!(
            "reservation `{id}` expired at {expire_at}; its stock is being returned"
        )));
    }
    if !store::transition(&mut tx, id, to, now).await? {
        // Another writer ended it first; report its state.
        drop(tx);
        let mut tx = db.begin().await?;
        return store::reservation(&mut tx, id, false)
            .await?
            .ok_or_else(|| InventoryError::NotFound(id.into()));
    }
    let lines = store::reservation_lines(&mut tx, id).await?;
    for line in crate::validate::merged(&lines) {
        match to {
            ReservationStatus::Committed => store::take(&mut tx, &line, now).await?,
            _ => store::unhold(&mut tx, &line, now).await?,
        }
    }
    let reference_id = current.reference_id.clone();
    let event = match to {
        ReservationStatus::Committed => Event::new(
            "inventory.committed",
            id,
            "InventoryCommitted",
            &InventoryCommitted {
                reservation_id: id.into(),
                reference_id,
                lines: event_lines(&lines),
            },
        ),
        ReservationStatus::Expired => Event::new(
            "inventory.reservation_expired",
            id,
            "InventoryReservationExpired",
            &InventoryReservationExpired {
                reservation_id: id.into(),
                reference_id,
                lines: event_lines(&lines),
                expire_time: current.expire_time,
            },
        ),
        _ => Event::new(
            "inventory.released",
            id,
            "InventoryReleased",
            &InventoryReleased {
                reservation_id: id.into(),
                reference_id,
                lines: event_lines(&lines),
                reason: reason.into(),
            },
        ),
    };
    tx.emit(event.correlation(current.reference_id.clone()))
        .await?;
    let after = store::reservation(&mut tx, id, false)
        .await?
        .ok_or_else(|| InventoryError::NotFound(id.into()))?;
    tx.commit().await?;
    Ok(after)
}
