//! The delivery queue: deliveries are rows first (QUEUED, or SUPPRESSED for opt-outs), written
//! in the transaction of what caused them (the consumer's, or the RPC's) and keyed so that one
//! event fact on one channel makes one row. The [`Deliverer`] sends QUEUED rows outside any
//! transaction, retrying with backoff, and finishes each with a conditional update that emits
//! `notification.sent` / `notification.failed` in the same transaction. A crash between a send
//! and its finish sends again after the lease (at-least-once on the wire; the webhook carries the
//! delivery id as `Idempotency-Key`), but never makes a second delivery record.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_contracts::events::v1::{NotificationFailed, NotificationSent};
use mesh_contracts::notification::v1::DeliveryStatus;
use mesh_runtime::outbox::Event;
use mesh_runtime::trace_context::TraceContext;
use mesh_runtime::{CallContext, Database};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::channels::Sender;
use crate::error::NotificationError;
use crate::settings::NotificationSettings;
use crate::store::{self, now_micros};

/// How many sends are in flight at once.
pub const CONCURRENCY: usize = 32;

/// Sends queued deliveries.
#[derive(Debug, Clone)]
pub struct Deliverer {
    db: Database,
    sender: Sender,
    settings: NotificationSettings,
    wake: Arc<Notify>,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Deliverer {
    /// A deliverer over `db`.
    pub fn new(db: Database, settings: NotificationSettings) -> Self {
        Self {
            db,
            sender: Sender::new(settings.clone()),
            settings,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Woken after commits that queue deliveries.
    pub fn wake(&self) -> &Arc<Notify> {
        &self.wake
    }

    /// The settings.
    pub fn settings(&self) -> &NotificationSettings {
        &self.settings
    }

    /// One attempt at delivery `id` if it is QUEUED and due.
    pub async fn attempt(&self, id: &str) -> Result<(), NotificationError> {
        let now = now_micros();
        let mut c = self.db.acquire().await?;
        let Some(attempt) =
            store::claim(&mut c, id, now, now + micros(self.settings.lease())).await?
        else {
            return Ok(());
        };
        let Some(row) = store::delivery(&mut c, id).await? else {
            return Ok(());
        };
        drop(c);
        let d = row.delivery;
        let context = TraceContext::parse(&row.traceparent).map(|p| CallContext {
            trace: p.child(),
            deadline: None,
        });
        let work = async {
            let result = self.sender.send(&d).await;
            let attempts = u32::try_from(attempt).unwrap_or(u32::MAX);
            let (status, error) = match result {
                Ok(()) => (DeliveryStatus::Sent, String::new()),
                Err(e) if attempts >= self.settings.max_attempts => (DeliveryStatus::Failed, e),
                Err(e) => {
                    tracing::warn!(delivery = %d.id, attempt = attempts, error = %e, "delivery failed; will retry");
                    let mut c = self.db.acquire().await?;
                    let at = now_micros() + micros(self.settings.backoff(attempts));
                    store::defer(&mut c, id, at, &e).await?;
                    return Ok(());
                }
            };
            let mut tx = self.db.begin().await?;
            if !store::finish(&mut tx, id, status, &error, now_micros()).await? {
                return Ok(());
            }
            let attempts = i32::try_from(attempt).unwrap_or(i32::MAX);
            let event = if status == DeliveryStatus::Sent {
                Event::new(
                    "notification.sent",
                    &d.id,
                    "NotificationSent",
                    &NotificationSent {
                        delivery_id: d.id.clone(),
                        user_id: d.user_id.clone(),
                        channel: d.channel,
                        trigger_event_id: d.event_id.clone(),
                        trigger_event_type: d.event_type.clone(),
                        attempts,
                    },
                )
            } else {
                tracing::error!(delivery = %d.id, %error, "delivery failed for good");
                Event::new(
                    "notification.failed",
                    &d.id,
                    "NotificationFailed",
                    &NotificationFailed {
                        delivery_id: d.id.clone(),
                        user_id: d.user_id.clone(),
                        channel: d.channel,
                        trigger_event_id: d.event_id.clone(),
                        trigger_event_type: d.event_type.clone(),
                        attempts,
                        error,
                    },
                )
            };
            tx.emit(event).await?;
            tx.commit().await?;
            Ok(())
        };
        match context {
            Some(ctx) => ctx.scope(work).await,
            None => work.await,
        }
    }

    /// Starts an attempt at every due delivery not already in flight in this process (ids in
    /// `inflight`); returns how many.
    pub async fn run_once(
        &self,
        slots: &Arc<Semaphore>,
        inflight: &Arc<Mutex<HashSet<String>>>,
        shutdown: &CancellationToken,
    ) -> Result<usize, NotificationError> {
        let ids = {
            let mut c = self.db.acquire().await?;
            store::due(&mut c, now_micros(), 256).await?
        };
        let mut n = 0;
        for id in ids {
            if !inflight
                .lock()
                .map(|mut s| s.insert(id.clone()))
                .unwrap_or(false)
            {
                continue;
            }
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            n += 1;
            let (me, shutdown, inflight) = (self.clone(), shutdown.clone(), inflight.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    r = me.attempt(&id) => if let Err(e) = r {
                        tracing::warn!(delivery = %id, error = %e, "delivery attempt failed; will retry");
                    },
                }
                if let Ok(mut s) = inflight.lock() {
                    s.remove(&id);
                }
                drop(permit);
            });
        }
        Ok(n)
    }

    /// Runs passes until `shutdown`: at once, when woken, and every poll interval.
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let inflight = Arc::new(Mutex::new(HashSet::new()));
        let mut failing = false;
        loop {
            let pass = tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.run_once(&slots, &inflight, &shutdown) => r,
            };
            match pass {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("notification worker recovered");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "notification worker failing; retrying");
                }
                Err(_) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }
}
