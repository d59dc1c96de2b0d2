//! The saga timeout: an order still open (PENDING, RESERVED) longer than the saga timeout is
//! cancelled with reason TIMEOUT, which emits `order.cancelled` so inventory releases and
//! payment refunds. A [`WorkSource`] of the runtime's work queue: its scan finds the overdue
//! orders every sweep interval. Every replica may run it: each cancellation is a conditional
//! transition, so an order is cancelled once, and a confirmation that wins the race is never
//! overwritten. Each cancellation counts in `order_saga_timeouts_total` (the chart's alert).
//!
//! Each scan first reads, in one statement, when the oldest open order was created and where
//! the saga's backlog begins, which it hands to PlaceOrder's [`Admission`]; it looks for
//! overdue orders only when the oldest one is.

use std::sync::Arc;
use std::time::Duration;

use mesh_contracts::events::v1::CancelReason;
use mesh_runtime::Database;
use mesh_runtime::work_queue::{WorkHandle, WorkQueue, WorkQueueOptions, WorkSource};
use prometheus_client::metrics::counter::Counter;

use crate::admission::Admission;
use crate::error::OrderError;
use crate::{store, transitions};

/// Cancels overdue orders.
#[derive(Debug, Clone)]
pub struct Sweeper {
    db: Database,
    timeout: Duration,
    timeouts: Counter,
    admission: Arc<Admission>,
}

impl Sweeper {
    /// A sweeper over `db` cancelling orders open longer than `timeout`.
    pub fn new(db: Database, timeout: Duration) -> Self {
        Self {
            db,
            timeout,
            timeouts: Counter::default(),
            admission: Arc::new(Admission::open()),
        }
    }

    /// Hands the backlog it samples to `admission`.
    pub fn sampling(mut self, admission: Arc<Admission>) -> Self {
        self.admission = admission;
        self
    }

    /// Counts the orders it cancels in `timeouts`.
    pub fn counted(mut self, timeouts: Counter) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Cancels order `id` if it is still open; whether it did.
    pub async fn cancel_overdue(&self, id: &str) -> Result<bool, OrderError> {
        let mut tx = self.db.begin().await?;
        let detail = format!(
            "no progress within {}",
            humantime::format_duration(self.timeout)
        );
        let cancelled = transitions::cancel(&mut tx, id, CancelReason::Timeout, &detail, "")
            .await?
            .is_some();
        tx.commit().await?;
        if cancelled {
            self.timeouts.inc();
            tracing::info!(order = %id, "order cancelled by the saga timeout");
        }
        Ok(cancelled)
    }

    /// The sweeper's queue, scanning every `every`.
    pub fn queue(self, every: Duration) -> WorkQueue<Sweeper> {
        let options = WorkQueueOptions::new("saga-timeout")
            .concurrency(4)
            .poll_interval(every);
        WorkQueue::new(self, options, WorkHandle::new())
    }
}

impl WorkSource for Sweeper {
    type Item = String;
    type Error = OrderError;

    async fn due(&self, limit: usize) -> Result<Vec<String>, OrderError> {
        let timeout_us = i64::try_from(self.timeout.as_micros()).unwrap_or(i64::MAX);
        let now = store::now_us();
        let cutoff = now.saturating_sub(timeout_us);
        let mut conn = self.db.acquire().await?;
        let open = store::open_orders(&mut conn, self.admission.skipped()).await?;
        self.admission.observe(open.backlog_head_us, now);
        if open.oldest_us.is_none_or(|created| created > cutoff) {
            return Ok(Vec::new());
        }
        store::overdue(&mut conn, cutoff, i64::try_from(limit).unwrap_or(i64::MAX)).await
    }

    async fn process(&self, id: String, _retry: u32) -> Result<(), OrderError> {
        self.cancel_overdue(&id).await.map(|_| ())
    }

    fn is_transient(&self, error: &OrderError) -> bool {
        error.database().is_some_and(|e| e.is_unavailable())
    }
}
