//! The events inventory emits about stock, built in one place for every path that emits them:
//! `inventory.reserved` (the saga's reservation and the `Reserve` RPC) and `inventory.adjusted`
//! (the `AdjustStock` RPC and a refund's restock).

use mesh_contracts::events::v1::{InventoryAdjusted, InventoryReserved};
use mesh_contracts::inventory::v1::StockLevel;
use mesh_runtime::domain::time::to_timestamp;
use mesh_runtime::outbox::Event;

use crate::reservations::event_lines;
use crate::validate::Line;

/// `inventory.reserved`: reservation `id` for `reference` holds `lines` until `expires_us`,
/// correlated with the reference (the order id in the saga).
pub fn reserved(id: &str, reference: &str, lines: &[Line], expires_us: i64) -> Event {
    Event::new(
        "inventory.reserved",
        id,
        "InventoryReserved",
        &InventoryReserved {
            reservation_id: id.to_string(),
            reference_id: reference.to_string(),
            lines: event_lines(lines),
            expire_time: Some(to_timestamp(expires_us)),
        },
    )
    .correlation(reference.to_string())
}

/// `inventory.adjusted`: `delta` units of the stock `level` (as it is after the change) for
/// `reason`, by `actor`, with the adjustment's `note`.
pub fn adjusted(level: &StockLevel, delta: i64, reason: i32, actor: &str, note: String) -> Event {
    Event::new(
        "inventory.adjusted",
        &level.product_id,
        "InventoryAdjusted",
        &InventoryAdjusted {
            location_id: level.location_id.clone(),
            product_id: level.product_id.clone(),
            delta,
            reason,
            on_hand: level.on_hand,
            available: level.available,
            actor_id: actor.to_string(),
            note,
        },
    )
}
