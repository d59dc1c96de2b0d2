//! The saga timeout: an order still open (PENDING, RESERVED) longer than the saga timeout is
//! cancelled with reason TIMEOUT, which emits `order.cancelled` so inventory releases and
//! payment refunds. Every replica may run it: each cancellation is a conditional transition, so
//! an order is cancelled once, and a confirmation that wins the race is never overwritten.

use std::time::Duration;

use mesh_contracts::events::v1::CancelReason;
use mesh_runtime::Database;
use tokio_util::sync::CancellationToken;

use crate::error::OrderError;
use crate::{store, transitions};

/// Cancels overdue orders.
#[derive(Debug, Clone)]
pub struct Sweeper {
    db: Database,
    timeout: Duration,
}

impl Sweeper {
    /// A sweeper over `db` cancelling orders open longer than `timeout`.
    pub fn new(db: Database, timeout: Duration) -> Self {
        Self { db, timeout }
    }

    /// Cancels every overdue order now; returns how many it cancelled.
    pub async fn sweep_once(&self) -> Result<usize, OrderError> {
        let timeout_us = i64::try_from(self.timeout.as_micros()).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let cutoff = store::now_us().saturating_sub(timeout_us);
            let ids = {
                let mut conn = self.db.acquire().await?;
                store::overdue(&mut conn, cutoff, 100).await?
            };
            if ids.is_empty() {
                return Ok(total);
            }
            let mut progressed = false;
            for id in &ids {
                let mut tx = self.db.begin().await?;
                let detail = format!(
                    "no progress within {}",
                    humantime::format_duration(self.timeout)
                );
                if transitions::cancel(&mut tx, id, CancelReason::Timeout, &detail, "")
                    .await?
                    .is_some()
                {
                    total += 1;
                    progressed = true;
                }
                tx.commit().await?;
            }
            if !progressed {
                // Someone else finished them between the query and the update.
                return Ok(total);
            }
        }
    }

    /// Sweeps every `every` until `shutdown`; failures are logged and retried next round.
    pub async fn run(self, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.sweep_once().await {
                Ok(n) => {
                    if failing {
                        failing = false;
                        tracing::info!("order saga timeout sweeper recovered");
                    }
                    if n > 0 {
                        tracing::info!(cancelled = n, "orders cancelled by the saga timeout");
                    }
                }
                Err(e) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %e, "order saga timeout sweep failed; retrying");
                    }
                }
            }
        }
    }
}
