//! The background worker: finishes every PENDING charge and refund, on the runtime's
//! [`WorkQueue`]. New saga charges and refunds are handed to it in process once their
//! transaction commits; its scan finds the rest (retries after provider errors, work left by a
//! crash, by another replica or by a caller that gave up waiting). Every replica may run one: a
//! row is claimed with a conditional update (its lease), and finishing is conditional too, so
//! each is finished once. A saga charge is inserted already claimed by this process and handed
//! over with its row ([`Work::Leased`]): its first attempt calls the provider without a claim;
//! if the process dies first, a scan finds it once the lease ran out.
//!
//! An attempt that fails because the database is unavailable is retried by the queue after a
//! short backoff; the retry re-claims the row regardless of its lease (the lease is the one the
//! failed attempt took), so a short database outage delays a charge by about the outage, not
//! by the lease.

use mesh_runtime::work_queue::{WorkHandle, WorkQueue, WorkQueueOptions, WorkSource};

use crate::engine::Engine;
use crate::error::PaymentError;
use crate::store::{self, now_micros};
pub use crate::work::Work;

/// How many charges and refunds are in flight at once.
pub const CONCURRENCY: usize = 64;

/// Payment's [`WorkSource`]: due charges and refunds, each attempted through the [`Engine`].
#[derive(Debug, Clone)]
pub struct PaymentWork(pub Engine);

impl WorkSource for PaymentWork {
    type Item = Work;
    type Error = PaymentError;

    async fn due(&self, limit: usize) -> Result<Vec<Work>, PaymentError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut c = self.0.db().acquire().await?;
        let now = now_micros();
        let charges = store::due_payments(&mut c, now, limit).await?;
        let refunds = store::due_refunds(&mut c, now, limit).await?;
        Ok(charges
            .into_iter()
            .map(Work::Charge)
            .chain(refunds.into_iter().map(Work::Refund))
            .collect())
    }

    async fn process(&self, item: Work, retry: u32) -> Result<(), PaymentError> {
        // The first attempt claims the row only if due; a retry after a transient failure
        // takes it back from the lease its own failed attempt may hold.
        let due_only = retry == 0;
        match item {
            Work::Charge(id) => self.0.attempt_charge(&id, due_only).await.map(|_| ()),
            Work::Leased(leased) if due_only => {
                let (p, card_ref) = leased.row().clone();
                self.0.charge_claimed(p, card_ref, true).await.map(|_| ())
            }
            Work::Leased(leased) => self.0.attempt_charge(leased.key(), false).await.map(|_| ()),
            Work::Refund(id) => self.0.attempt_refund(&id, due_only).await.map(|_| ()),
        }
    }

    fn is_transient(&self, error: &PaymentError) -> bool {
        error.database().is_some_and(|e| e.is_unavailable())
    }
}

/// The worker's queue over `engine`, taking the work handed to `handle` (the engine's).
pub fn queue(engine: Engine, handle: WorkHandle<Work>) -> WorkQueue<PaymentWork> {
    let options = WorkQueueOptions::new("charge-worker")
        .concurrency(CONCURRENCY)
        .poll_interval(engine.settings().retry.poll_interval);
    WorkQueue::new(PaymentWork(engine), options, handle)
}
