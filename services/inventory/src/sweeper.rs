//! The sweeper: expires ACTIVE reservations past their `expire_time`, returning their stock and
//! emitting `inventory.reservation_expired`. Every replica may run it: each expiry is a
//! conditional state change, so a reservation expires once.

use std::sync::Arc;
use std::time::Duration;

use mesh_contracts::inventory::v1::ReservationStatus;
use mesh_runtime::Database;
use mesh_runtime::auth::Clock;
use tokio_util::sync::CancellationToken;

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

    /// Expires every overdue reservation now; returns how many.
    pub async fn sweep_once(&self) -> Result<usize, InventoryError> {
        let mut total = 0;
        loop {
            let ids = store::expired(self.db.pool(), self.clock.now_unix(), 100).await?;
            if ids.is_empty() {
                return Ok(total);
            }
            for id in &ids {
                reservations::finish(
                    &self.db,
                    &self.clock,
                    id,
                    ReservationStatus::Expired,
                    "expired",
                )
                .await?;
            }
            total += ids.len();
        }
    }

    /// Sweeps every `every` until `shutdown`; failures are logged and retried next round.
    pub async fn run(self, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.sweep_once().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "expired reservations released"),
                Err(e) => {
                    tracing::warn!(error = %e, "sweeping expired reservations failed; retrying")
                }
            }
        }
    }
}
