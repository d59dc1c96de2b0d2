//! Publish after commit: the envelopes a [`crate::outbox::Tx`] wrote go to the bus from the
//! committing process as soon as the transaction committed, without waiting for a relay pass.
//! The relay ([`crate::relay`]) stays as the sweeper of rows this path did not publish within a
//! short bound (a crash between commit and publish, a bus outage, a deferred row).
//!
//! Rules that keep every guarantee of the outbox:
//! - **Never before commit.** A row is registered when `emit` wrote it and becomes publishable
//!   only when its transaction committed; a rollback (or a rolled-back savepoint, or a dropped
//!   transaction, or a commit that failed) discards it, leaving the row, if it exists at all, to
//!   the sweeper.
//! - **In order per subject.** Rows of one subject are registered in `sequence` order (a later
//!   row's insert computes its sequence only once the earlier row committed). The publisher
//!   publishes row `n` of a subject only if `n` is 1, or row `n - 1` is known to be on the bus:
//!   published by this publisher (remembered for a while), ahead of it in the same pipelined
//!   batch, or marked sent when `emit` wrote row `n`. Otherwise row `n` is *deferred*: left to
//!   the sweeper, which publishes a subject's unsent rows in sequence order; every later row of
//!   that subject is then deferred too (its predecessor is not known published).
//! - **At least once.** Publishing marks nothing in the transaction: published rows are marked
//!   sent later, in batches, by [`Marker`]. A crash before the mark leaves the row unsent, and the
//!   sweeper publishes it again (consumers drop the duplicate by event id).
//! - **Bounded.** While the bus fails, committed rows are deferred at once (not queued), so a bus
//!   outage costs no memory; the queue of rows waiting for their commit is capped too.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::bus::{EventBus, OutgoingEvent};

/// Rows waiting for their commit or their publish; beyond this, new rows are left to the sweeper.
const QUEUE_CAP: usize = 100_000;
/// Subjects whose last published sequence is remembered, per generation (two generations).
const REMEMBERED: usize = 50_000;
/// How long one generation of remembered subjects lasts at most.
const GENERATION: Duration = Duration::from_secs(60);

/// One outbox row on its way to the bus.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// The outbox row's `seq` (marked sent by it).
    pub(crate) seq: i64,
    /// The subject's sequence number of the row.
    pub(crate) sequence: i64,
    /// Whether the subject's previous row was marked sent when this row was written.
    pub(crate) prev_sent: bool,
    /// The encoded envelope and its stream.
    pub(crate) event: OutgoingEvent,
}

#[derive(Debug)]
struct Entry {
    ticket: u64,
    committed: bool,
    row: Row,
}

/// A row registered by a transaction, for [`Publisher::committed`] / [`Publisher::discard`].
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    subject: Arc<str>,
    id: u64,
}

#[derive(Debug, Default)]
struct State {
    next_ticket: u64,
    queued: usize,
    /// Rows by subject, in registration (= sequence) order.
    subjects: HashMap<Arc<str>, VecDeque<Entry>>,
    /// Subjects whose first row may have become publishable.
    ready: HashSet<Arc<str>>,
    /// The last sequence published (or in the batch being published) per subject: two
    /// generations, so memory stays bounded and recent subjects are remembered.
    last: HashMap<Arc<str>, i64>,
    last_old: HashMap<Arc<str>, i64>,
    generation_started: Option<Instant>,
    /// While set and in the future, the bus is failing: committed rows are deferred at once.
    paused_until: Option<Instant>,
    /// Rows left to the sweeper since the last report.
    deferred: u64,
}

impl State {
    fn last_published(&self, subject: &str) -> Option<i64> {
        self.last
            .get(subject)
            .or_else(|| self.last_old.get(subject))
            .copied()
    }

    fn remember(&mut self, subject: &Arc<str>, sequence: i64) {
        let now = Instant::now();
        let started = *self.generation_started.get_or_insert(now);
        if self.last.len() >= REMEMBERED || now.duration_since(started) >= GENERATION {
            self.last_old = std::mem::take(&mut self.last);
            self.generation_started = Some(now);
        }
        self.last.insert(subject.clone(), sequence);
    }

    fn forget(&mut self, subject: &str) {
        self.last.remove(subject);
        self.last_old.remove(subject);
    }
}

/// The direct publisher of one service's outbox: transactions register rows, the publishing
/// loop ([`Publisher::run`], run by the relay) sends them to the bus right after their commit.
#[derive(Debug, Default)]
pub(crate) struct Publisher {
    state: Mutex<State>,
    wake: Notify,
    running: AtomicBool,
}

impl Publisher {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a publishing loop runs (rows are registered only then).
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Registers a row written (not yet committed) by a transaction; `None` when the queue is
    /// full (the row is then the sweeper's).
    pub(crate) fn register(&self, subject: &str, row: Row) -> Option<Ticket> {
        let mut state = self.lock();
        if state.queued >= QUEUE_CAP {
            state.deferred += 1;
            return None;
        }
        state.next_ticket += 1;
        let id = state.next_ticket;
        state.queued += 1;
        let subject: Arc<str> = match state.subjects.get_key_value(subject) {
            Some((k, _)) => k.clone(),
            None => Arc::from(subject),
        };
        state
            .subjects
            .entry(subject.clone())
            .or_default()
            .push_back(Entry {
                ticket: id,
                committed: false,
                row,
            });
        Some(Ticket { subject, id })
    }

    /// The transaction of `tickets` committed: its rows may go to the bus.
    pub(crate) fn committed(&self, tickets: &[Ticket]) {
        if tickets.is_empty() {
            return;
        }
        {
            let mut state = self.lock();
            for t in tickets {
                if let Some(q) = state.subjects.get_mut(&t.subject)
                    && let Some(e) = q.iter_mut().find(|e| e.ticket == t.id)
                {
                    e.committed = true;
                    state.ready.insert(t.subject.clone());
                }
            }
        }
        self.wake.notify_one();
    }

    /// The rows of `tickets` were rolled back (or their commit's outcome is unknown): never
    /// publish them from here.
    pub(crate) fn discard(&self, tickets: &[Ticket]) {
        if tickets.is_empty() {
            return;
        }
        let mut wake = false;
        {
            let mut state = self.lock();
            for t in tickets {
                let Some(q) = state.subjects.get_mut(&t.subject) else {
                    continue;
                };
                let before = q.len();
                q.retain(|e| e.ticket != t.id);
                let removed = before - q.len();
                let empty = q.is_empty();
                state.queued -= removed;
                if empty {
                    state.subjects.remove(&t.subject);
                } else {
                    // A later row of the subject may now be at the head.
                    state.ready.insert(t.subject.clone());
                    wake = true;
                }
            }
        }
        if wake {
            self.wake.notify_one();
        }
    }

    /// Takes the rows that may be published now, in order per subject; defers (drops) the
    /// committed rows whose predecessor is not known to be on the bus.
    fn take_ready(&self, max: usize) -> Vec<(Arc<str>, Row)> {
        let mut state = self.lock();
        let paused = state.paused_until.is_some_and(|t| t > Instant::now());
        let mut out = Vec::new();
        let subjects: Vec<Arc<str>> = state.ready.drain().collect();
        for (i, subject) in subjects.iter().enumerate() {
            if out.len() >= max {
                // The rest stay ready for the next batch.
                state.ready.extend(subjects[i..].iter().cloned());
                break;
            }
            loop {
                let last = state.last_published(subject);
                let Some(q) = state.subjects.get_mut(subject) else {
                    break;
                };
                let Some(head) = q.front() else {
                    state.subjects.remove(subject);
                    break;
                };
                if !head.committed {
                    // Its commit is on its way (or it will be discarded, which re-readies).
                    break;
                }
                let entry = q.pop_front().expect("head exists");
                let empty = q.is_empty();
                state.queued -= 1;
                if empty {
                    state.subjects.remove(subject);
                }
                let row = entry.row;
                let in_order = row.sequence == 1
                    || row.prev_sent
                    || last.is_some_and(|l| l == row.sequence - 1);
                if paused || !in_order {
                    state.deferred += 1;
                    state.forget(subject);
                } else {
                    state.remember(subject, row.sequence);
                    out.push((subject.clone(), row));
                }
                if empty {
                    break;
                }
                if out.len() >= max {
                    state.ready.insert(subject.clone());
                    break;
                }
            }
        }
        out
    }

    /// A batch could not be published: its subjects' later rows must not overtake it, so they
    /// are forgotten (deferred from now on), and publishing pauses for `backoff`.
    fn failed(&self, batch: &[(Arc<str>, Row)], backoff: Duration) {
        let mut state = self.lock();
        for (subject, _) in batch {
            state.forget(subject);
        }
        state.deferred += batch.len() as u64;
        state.paused_until = Some(Instant::now() + backoff);
    }

    fn take_deferred(&self) -> u64 {
        std::mem::take(&mut self.lock().deferred)
    }

    /// Publishes committed rows to `bus` until `shutdown`, handing each published row's `seq`
    /// to `marker`. Rows pile up while a batch is in flight and go out as the next pipelined
    /// batch.
    pub(crate) async fn run(
        self: Arc<Self>,
        bus: Arc<dyn EventBus>,
        latency: Option<prometheus_client::metrics::histogram::Histogram>,
        marker: Arc<Marker>,
        service: String,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // A second relay of the same database (tests): one publishing loop keeps the
            // order per subject; this relay only sweeps.
            return;
        }
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        loop {
            let batch = self.take_ready(512);
            if batch.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.wake.notified() => {}
                    // Catches rows made ready by a discard that raced the notification.
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                continue;
            }
            let events: Vec<OutgoingEvent> = batch.iter().map(|(_, r)| r.event.clone()).collect();
            // One `publish` span per event, ending when the bus answered.
            let spans = crate::spans::publish_spans(&service, &events);
            let started = std::time::Instant::now();
            let published = bus.publish(&events).await;
            if published.is_err() {
                crate::spans::publish_failed(&spans);
            }
            drop(spans);
            match published {
                Ok(()) => {
                    if let Some(latency) = &latency {
                        latency.observe(started.elapsed().as_secs_f64());
                    }
                    if failing {
                        failing = false;
                        tracing::info!(%service, "direct publishing recovered");
                    }
                    backoff = Duration::from_millis(100);
                    marker.push(batch.iter().map(|(_, r)| r.seq));
                }
                Err(e) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(%service, error = %e, "direct publishing failed; events stay in the outbox for the relay's sweep");
                    }
                    self.failed(&batch, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            let deferred = self.take_deferred();
            if deferred > 0 {
                tracing::debug!(%service, deferred, "outbox rows left to the relay's sweep");
            }
        }
        self.running.store(false, Ordering::Release);
        // Rows still queued are the sweeper's (this process's next start, or another replica).
        let mut state = self.lock();
        state.subjects.clear();
        state.ready.clear();
        state.queued = 0;
    }
}

/// Marks published rows sent, in batches, off the publishing path: one statement for every row
/// published since the last one (a lost mark is one more duplicate, never a lost event).
#[derive(Debug, Default)]
pub(crate) struct Marker {
    seqs: Mutex<Vec<i64>>,
    wake: Notify,
}

/// Rows kept for marking while the database fails; beyond it they are dropped (and published
/// again by the sweeper).
const MARK_CAP: usize = 200_000;

impl Marker {
    fn push(&self, seqs: impl Iterator<Item = i64>) {
        {
            let mut s = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
            s.extend(seqs);
            if s.len() > MARK_CAP {
                let excess = s.len() - MARK_CAP;
                s.drain(..excess);
            }
        }
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<i64> {
        std::mem::take(&mut *self.seqs.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn put_back(&self, mut seqs: Vec<i64>) {
        let mut s = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
        seqs.append(&mut s);
        *s = seqs;
    }

    /// Marks rows until `shutdown` (then once more): waits for published rows, lets `gather`
    /// pass so one statement covers many, and marks them with `mark`.
    pub(crate) async fn run<F, Fut, E>(
        self: Arc<Self>,
        gather: Duration,
        service: String,
        shutdown: tokio_util::sync::CancellationToken,
        mark: F,
    ) where
        F: Fn(Vec<i64>) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let mut failing = false;
        let mut backoff = Duration::from_millis(100);
        loop {
            let stopping = tokio::select! {
                () = shutdown.cancelled() => true,
                () = self.wake.notified() => false,
            };
            if !stopping {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(gather) => {}
                }
            }
            let seqs = self.take();
            if !seqs.is_empty() {
                match mark(seqs.clone()).await {
                    Ok(()) => {
                        if failing {
                            failing = false;
                            tracing::info!(%service, "marking published outbox rows recovered");
                        }
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        if !failing {
                            failing = true;
                            tracing::warn!(%service, error = %e, "marking published outbox rows failed; retrying (unmarked rows may be published again)");
                        }
                        self.put_back(seqs);
                        if !stopping {
                            self.wake.notify_one();
                            tokio::select! {
                                () = shutdown.cancelled() => {}
                                () = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
            if stopping || shutdown.is_cancelled() {
                let rest = self.take();
                if !rest.is_empty() {
                    let _ = mark(rest).await;
                }
                return;
            }
        }
    }
}

/// The fault switch of the crash point "committed, not yet published": with
/// `MESH_FAULT_ABORT_AFTER_COMMIT=<service>:<n>` the process aborts (no unwinding, no shutdown)
/// right after `<service>`'s `n`-th committed transaction that emitted events, before that
/// transaction's events reach the direct publisher. For fault tests only.
pub(crate) fn abort_after_commit_if_armed(service: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static COMMITS: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let raw = std::env::var("MESH_FAULT_ABORT_AFTER_COMMIT").ok()?;
        let (name, n) = raw.trim().rsplit_once(':')?;
        Some((name.to_string(), n.parse().ok().filter(|n| *n > 0)?))
    });
    if let Some((name, n)) = armed
        && name == service
        && COMMITS.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!(
            "MESH_FAULT_ABORT_AFTER_COMMIT: {service} aborts after commit {n}, before publishing"
        );
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, sequence: i64, prev_sent: bool) -> Row {
        Row {
            seq,
            sequence,
            prev_sent,
            event: OutgoingEvent {
                domain: "order".into(),
                event_id: seq.to_string(),
                payload: bytes::Bytes::new(),
            },
        }
    }

    fn seqs(batch: &[(Arc<str>, Row)]) -> Vec<i64> {
        batch.iter().map(|(_, r)| r.seq).collect()
    }

    #[tokio::test]
    async fn nothing_goes_out_before_its_commit_and_a_subject_stays_in_order() {
        let p = Publisher::default();
        let a1 = p.register("a", row(1, 1, false)).unwrap();
        let a2 = p.register("a", row(2, 2, false)).unwrap();
        let b1 = p.register("b", row(3, 1, false)).unwrap();
        assert!(p.take_ready(100).is_empty(), "nothing committed yet");
        // a's second row commits first (in the window after a1's commit reached the database
        // and before its task told the publisher): it waits for a1.
        p.committed(&[a2, b1]);
        assert_eq!(seqs(&p.take_ready(100)), vec![3]);
        p.committed(&[a1]);
        assert_eq!(seqs(&p.take_ready(100)), vec![1, 2]);
    }

    #[tokio::test]
    async fn a_row_whose_predecessor_is_not_known_published_is_left_to_the_sweeper() {
        let p = Publisher::default();
        // Sequence 5 of a subject this process never published, predecessor not marked sent.
        let t = p.register("c", row(10, 5, false)).unwrap();
        let u = p.register("c", row(11, 6, false)).unwrap();
        p.committed(&[t, u]);
        assert!(p.take_ready(100).is_empty(), "both deferred, in order");
        assert_eq!(p.take_deferred(), 2);
        // Predecessor marked sent when the row was written: published.
        let v = p.register("d", row(12, 3, true)).unwrap();
        p.committed(&[v]);
        assert_eq!(seqs(&p.take_ready(100)), vec![12]);
    }

    #[tokio::test]
    async fn rolled_back_rows_never_go_out_and_free_the_subject() {
        let p = Publisher::default();
        let t = p.register("a", row(1, 1, false)).unwrap();
        p.discard(&[t]);
        // The same sequence written again by a second transaction.
        let u = p.register("a", row(2, 1, false)).unwrap();
        p.committed(&[u]);
        assert_eq!(seqs(&p.take_ready(100)), vec![2]);
    }

    #[tokio::test]
    async fn a_failed_batch_defers_the_rest_of_its_subjects() {
        let p = Publisher::default();
        let t = p.register("a", row(1, 1, false)).unwrap();
        p.committed(&[t]);
        let batch = p.take_ready(100);
        p.failed(&batch, Duration::from_secs(60));
        let u = p.register("a", row(2, 2, false)).unwrap();
        let v = p.register("b", row(3, 1, false)).unwrap();
        p.committed(&[u, v]);
        assert!(p.take_ready(100).is_empty(), "paused: everything deferred");
    }
}
