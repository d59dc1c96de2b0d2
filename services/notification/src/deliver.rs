//! The delivery queue: deliveries are rows first (QUEUED, or SUPPRESSED for opt-outs), written
//! in the transaction of what caused them (the consumer's, or the RPC's) and keyed so that one
//! event fact on one channel makes one row. The [`Deliverer`] sends QUEUED rows outside any
//! transaction, retrying transient failures with backoff (a permanent one, such as a 5xx SMTP reply, fails
//! the delivery at once), and finishes each with a conditional update that emits
//! `notification.sent` / `notification.failed` with it (one statement on Postgres). A crash between a send
//! and its finish sends again after the lease (at-least-once on the wire; the webhook carries the
//! delivery id as `Idempotency-Key`), but never makes a second delivery record.
//!
//! The deliverer is a [`WorkSource`] of the runtime's [`WorkQueue`]: a delivery queued by a
//! committed transaction of this process is inserted already claimed by it (leased, its first
//! attempt counted) and handed to it with its row at once ([`Deliverer::work`]), so sending it
//! takes no claim; its scan finds deferred ones and those of a crashed process (once their
//! lease ran out) or another replica. An attempt that failed because the database was
//! unavailable is retried after a short backoff, taking back its own lease.

use std::time::Duration;

use mesh_contracts::events::v1::{NotificationFailed, NotificationSent};
use mesh_contracts::notification::v1::DeliveryStatus;
use mesh_runtime::Database;
use mesh_runtime::outbox::Event;
use mesh_runtime::spans::TracedWork;
use mesh_runtime::work_queue::{Leased, WorkHandle, WorkQueue, WorkQueueOptions, WorkSource};

use crate::channels::Sender;
use crate::error::NotificationError;
use crate::settings::NotificationSettings;
use crate::store::{self, DeliveryRow, now_micros};

/// How many sends are in flight at once.
pub const CONCURRENCY: usize = 32;

/// A unit of the deliverer's work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeliveryWork {
    /// The QUEUED delivery with this id, claimed when due.
    Due(String),
    /// A QUEUED delivery inserted claimed by this process: its first attempt claims nothing.
    Leased(Leased<DeliveryRow>),
}

impl std::fmt::Display for DeliveryWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Due(id) => write!(f, "delivery {id}"),
            Self::Leased(leased) => write!(f, "delivery {leased}"),
        }
    }
}

/// Sends queued deliveries.
#[derive(Debug, Clone)]
pub struct Deliverer {
    db: Database,
    sender: Sender,
    settings: NotificationSettings,
    work: WorkHandle<DeliveryWork>,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Deliverer {
    /// A deliverer over `db`. Fails when the sender cannot be built ([`Sender::new`]).
    pub fn new(db: Database, settings: NotificationSettings) -> Result<Self, String> {
        Ok(Self {
            db,
            sender: Sender::new(settings.clone())?,
            settings,
            work: WorkHandle::new(),
        })
    }

    /// Its queue's handle: deliveries queued by a transaction are handed to it after commit.
    pub fn work(&self) -> &WorkHandle<DeliveryWork> {
        &self.work
    }

    /// When a delivery claimed now is leased until: what [`store::insert_deliveries`] inserts
    /// a QUEUED one with.
    pub fn lease_until(&self) -> i64 {
        now_micros() + micros(self.settings.lease())
    }

    /// Hands `row`, inserted QUEUED and leased in `tx`, to this process's queue once `tx`
    /// committed.
    pub fn send_after_commit(&self, tx: &mut mesh_runtime::outbox::Tx, row: DeliveryRow) {
        let leased = Leased::new(row.delivery.id.clone(), row);
        self.work
            .push_after_commit(tx, DeliveryWork::Leased(leased));
    }

    /// The queue that sends (run it as a background task: [`WorkQueue::task`]).
    pub fn queue(&self) -> WorkQueue<Deliverer> {
        let options = WorkQueueOptions::new("deliverer")
            .concurrency(CONCURRENCY)
            .poll_interval(self.settings.retry.poll_interval);
        WorkQueue::new(self.clone(), options, self.work.clone())
    }

    /// The settings.
    pub fn settings(&self) -> &NotificationSettings {
        &self.settings
    }

    /// One attempt at delivery `id` if it is QUEUED and due (or, with `own_lease`, whether due
    /// or not: the retry of an attempt that failed on a transient error).
    pub async fn attempt(&self, id: &str, own_lease: bool) -> Result<(), NotificationError> {
        let now = now_micros();
        let lease_until = now + micros(self.settings.lease());
        let mut c = self.db.acquire().await?;
        // The claim returns the delivery: no read after it.
        let Some(row) = store::claim(&mut c, id, now, lease_until, own_lease).await? else {
            return Ok(());
        };
        drop(c);
        self.send_claimed(row).await
    }

    /// Sends the delivery `row`, claimed by this process (by [`Deliverer::attempt`], or
    /// inserted so), and finishes it, or defers it after a transient failure.
    pub async fn send_claimed(&self, row: DeliveryRow) -> Result<(), NotificationError> {
        let id = row.delivery.id.clone();
        let id = id.as_str();
        let attempt = i64::from(row.delivery.attempts);
        let d = row.delivery;
        // A `delivery` span, a child of what queued the delivery: the send and its event.
        let traced = TracedWork::continuing(self.db.service(), "delivery", &row.traceparent);
        let work = async {
            let result = self.sender.send(&d).await;
            let attempts = u32::try_from(attempt).unwrap_or(u32::MAX);
            let (status, error) = match result {
                Ok(()) => (DeliveryStatus::Sent, String::new()),
                Err(e) if e.permanent || attempts >= self.settings.retry.max_attempts => {
                    (DeliveryStatus::Failed, e.message)
                }
                Err(e) => {
                    let e = e.message;
                    tracing::warn!(delivery = %d.id, attempt = attempts, error = %e, "delivery failed; will retry");
                    let mut c = self.db.acquire().await?;
                    let at = now_micros() + micros(self.settings.retry.backoff(attempts));
                    store::defer(&mut c, id, at, &e).await?;
                    return Ok(());
                }
            };
            let finish = store::finish(id, status, &error, now_micros());
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
                        error: error.clone(),
                    },
                )
            };
            // The finish and its event: one statement on Postgres, no transaction around it;
            // nothing is emitted when the delivery was no longer QUEUED.
            let finished = self.db.write_and_emit(&[finish], event).await?;
            if finished.is_some() && status == DeliveryStatus::Failed {
                tracing::error!(delivery = %d.id, %error, "delivery failed for good");
            }
            Ok(())
        };
        traced.run(work).await
    }
}

impl WorkSource for Deliverer {
    type Item = DeliveryWork;
    type Error = NotificationError;

    async fn due(&self, limit: usize) -> Result<Vec<DeliveryWork>, NotificationError> {
        let mut c = self.db.acquire().await?;
        let due = store::due(
            &mut c,
            now_micros(),
            i64::try_from(limit).unwrap_or(i64::MAX),
        )
        .await?;
        Ok(due.into_iter().map(DeliveryWork::Due).collect())
    }

    async fn process(&self, item: DeliveryWork, retry: u32) -> Result<(), NotificationError> {
        match item {
            DeliveryWork::Due(id) => self.attempt(&id, retry > 0).await,
            DeliveryWork::Leased(leased) if retry == 0 => {
                self.send_claimed(leased.row().clone()).await
            }
            // A retry after a transient failure takes its own lease back.
            DeliveryWork::Leased(leased) => self.attempt(leased.key(), true).await,
        }
    }

    fn is_transient(&self, error: &NotificationError) -> bool {
        matches!(error, NotificationError::Database(e) if e.is_unavailable())
    }
}
