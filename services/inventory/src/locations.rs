//! The stores that locations belong to: a store's own location is the store id; a vending
//! machine's is the machine id, registered in shop at a store. The consumer of shop's
//! `machine.registered` keeps that pairing in `location_stores` (idempotent: the same machine
//! again writes the same row), so [`crate::scope`] can tell whether a machine's stock is a store
//! staff member's without calling shop.

use mesh_contracts::events::v1::{Envelope, MachineRegistered};
use mesh_runtime::consumer::HandlerError;
use mesh_runtime::outbox::Tx;
use mesh_runtime::typed_handler::{Handled, TypedHandler};
use sqlx::AnyPool;

use crate::error::InventoryError;
use crate::validate;

/// Event type of a machine registered at a store (shop).
pub const MACHINE_REGISTERED: &str = "machine.registered";

/// The store location `location` belongs to through a registered machine, if any.
pub async fn store_of(pool: &AnyPool, location: &str) -> Result<Option<String>, InventoryError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT store_id FROM location_stores WHERE location_id = $1")
            .bind(location)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(s,)| s))
}

/// `machine.registered` -> the machine's location belongs to its store.
#[derive(Debug, Clone, Copy)]
pub struct OnMachineRegistered;

impl TypedHandler for OnMachineRegistered {
    type Event = MachineRegistered;

    async fn handle(&self, e: MachineRegistered, event: &Envelope, tx: &mut Tx) -> Handled {
        let checked =
            validate::location_id("machine_id", &e.machine_id, false).and_then(|machine| {
                Ok((
                    machine,
                    validate::location_id("store_id", &e.store_id, false)?,
                ))
            });
        let (machine, store) = checked.map_err(|err| {
            HandlerError::permanent(format!("{} {}: {err}", event.r#type, event.id))
        })?;
        sqlx::query(
            "INSERT INTO location_stores (location_id, store_id) VALUES ($1, $2) \
             ON CONFLICT (location_id) DO UPDATE SET store_id = excluded.store_id",
        )
        .bind(machine)
        .bind(store)
        .execute(&mut **tx)
        .await
        .map_err(HandlerError::retry)?;
        Ok(())
    }
}
