//! Device events through the outbox: `device.connected`, `device.disconnected` and (sampled)
//! `device.telemetry`. Connection tasks hand events to one writer task over a bounded queue; the
//! writer commits them in batches (one transaction per batch), so thousands of devices cost a
//! few transactions per second, not one each. When the queue is full, telemetry is dropped (and
//! counted) rather than slowing devices down; connection events wait for room.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_runtime::Database;
use mesh_runtime::outbox::Event;
use mesh_runtime::tracker::Tracker;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events per transaction, at most.
const BATCH: usize = 256;

/// Where connection tasks send their events.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

impl EventSink {
    /// A sink writing to `db`'s outbox, and its writer (run it until `shutdown`).
    pub fn new(db: Database, capacity: usize) -> (Self, EventWriter) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Self {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            EventWriter { db, rx },
        )
    }

    /// Queues an event that must not be lost (connect, disconnect): waits for room.
    pub async fn send(&self, event: Event) {
        let _ = self.tx.send(event).await;
    }

    /// Queues an event that may be dropped under load (telemetry samples).
    pub fn offer(&self, event: Event) {
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Telemetry events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Commits queued events to the outbox in batches.
#[derive(Debug)]
pub struct EventWriter {
    db: Database,
    rx: mpsc::Receiver<Event>,
}

impl EventWriter {
    /// Writes until `shutdown` and then until every task of `producers` (the connection
    /// tasks, which send `device.disconnected` as they end) has ended, then drains what is
    /// queued: a device's last event is written, not lost to the shutdown. Takes `&mut self`
    /// so a supervisor can run it again after a failure (what is queued stays queued).
    pub async fn run(&mut self, shutdown: CancellationToken, producers: Tracker) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut backoff = Duration::from_millis(100);
        let producers_done = async {
            shutdown.cancelled().await;
            producers.wait().await;
        };
        tokio::pin!(producers_done);
        let mut closing = false;
        loop {
            if batch.is_empty() {
                tokio::select! {
                    n = self.rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
                    () = &mut producers_done, if !closing => {
                        closing = true;
                        self.rx.close();
                        if self.rx.recv_many(&mut batch, BATCH).await == 0 {
                            return;
                        }
                    }
                }
            }
            match self.write(&batch).await {
                Ok(()) => {
                    batch.clear();
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!(error = %e, events = batch.len(), "writing device events failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn write(&self, batch: &[Event]) -> Result<(), mesh_runtime::DatabaseError> {
        let mut tx = self.db.begin().await?;
        for e in batch {
            tx.emit(e.clone()).await?;
        }
        tx.commit().await
    }
}
