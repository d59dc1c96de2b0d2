//! The sweeper: expires ACTIVE reservations past their `expire_time`, returning their stock and
//! emitting `inventory.reservation_expired`. A [`WorkSource`] of the runtime's work queue: its
//! scan finds the expired reservations every sweep interval. Every replica may run it: each
//! expiry is a conditional state change, so a reservation expires once.

use std::sync::Arc;
use std::time::Duration;

use mesh_contracts::inventory::v1::ReservationStatus;
use mesh_runtime::Database;
use mesh_runtime::auth::Clock;
use mesh_runtime::work_queue::{WorkHandle, WorkQueue, WorkQueueOptions, WorkSource};

use crate::error::InventoryError;
use crate::{reservations, store};

/// Expires overdue reservations.
#[derive(Debug, Clone)]
pub struct Sweeper {
    db: Database,
    clock: Arc<dyn Clock>,
}

impl Sweeper {
    /// A sweeper over `db`, on `clock`.
    pub fn new(db: Database, clock: Arc<dyn Clock>) -> Self {
        Self { db, clock }
    }

    /// The sweeper's queue, scanning every `every`. One expiry at a time: reservations of
    /// different orders lock the same stock rows.
    pub fn queue(self, every: Duration) -> WorkQueue<Sweeper> {
        let options = WorkQueueOptions::new("reservation-expiry")
            .concurrency(1)
            .poll_interval(every);
        WorkQueue::new(self, options, WorkHandle::new())
    }
}

impl WorkSource for Sweeper {
    type Item = String;
    type Error = InventoryError;

    async fn due(&self, limit: usize) -> Result<Vec<String>, InventoryError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        store::expired(self.db.pool(), self.clock.now_us(), limit).await
    }

    async fn process(&self, id: String, _retry: u32) -> Result<(), InventoryError> {
        reservations::finish(
            &self.db,
            &self.clock,
            &id,
            ReservationStatus::Expired,
            "expired",
        )
        .await?;
        tracing::info!(reservation = %id, "expired reservation released");
        Ok(())
    }

    fn is_transient(&self, error: &InventoryError) -> bool {
        matches!(error, InventoryError::Database(e) if e.is_unavailable())
    }
}
