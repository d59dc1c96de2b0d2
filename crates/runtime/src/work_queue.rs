//! The durable work queue every service's background work runs on: payment's charges and
//! refunds, notification's deliveries, order's saga timeouts, inventory's expired reservations,
//! vm's pending vends.
//!
//! The work is rows in the service's database (the durable part); a [`WorkSource`] says which
//! items are due and does one attempt at an item (claiming it with a conditional update, so
//! every replica may run a queue and each item is finished once). The [`WorkQueue`] runs them:
//!
//! - **hand-off**: work committed in this process is handed over in process
//!   ([`WorkHandle::push_after_commit`]) and started at once, without a due-scan round; work
//!   whose row was inserted already leased to this process (as the source's claim would lease
//!   it) is handed over with that row ([`Leased`]), so its first attempt claims nothing: the
//!   lease keeps the scans of every replica off it, and if this process dies before finishing
//!   it, a scan finds it due once the lease ran out;
//! - **scan**: at start, when woken ([`WorkHandle::wake`]), every poll interval, and again at
//!   once after a full batch, it asks the source for due items: work left by a crash, by another
//!   replica, or deferred by the source itself (a provider's backoff);
//! - at most [`WorkQueueOptions::concurrency`] attempts run at once, each in a task of its own,
//!   and an item is never attempted twice at once in this process (the in-flight set);
//! - an attempt that fails on a **transient** error ([`WorkSource::is_transient`]: the database
//!   or a peer unavailable) is retried after a short backoff (from
//!   [`WorkQueueOptions::retry_backoff`], doubling up to [`WorkQueueOptions::max_retry_backoff`],
//!   at most [`WorkQueueOptions::max_retries`] times), not when its lease runs out; any other
//!   failure is logged and left to a later scan;
//! - a scan that fails is logged once per change of state ("failing", then "recovered").
//!
//! Run it as a supervised background task: [`WorkQueue::task`].

use std::collections::{HashSet, VecDeque};
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::Task;
use crate::outbox::Tx;

/// Where a [`WorkQueue`]'s items come from and how one is done.
pub trait WorkSource: Send + Sync + 'static {
    /// An item of work (a row's id, or a kind and an id).
    type Item: Clone + Eq + Hash + Display + Send + Sync + 'static;
    /// Why a scan or an attempt failed.
    type Error: Display + Send + 'static;

    /// At most `limit` items due now, oldest first.
    fn due(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Self::Item>, Self::Error>> + Send;

    /// One attempt at `item`. `retry` is 0 for the first attempt and counts the transient
    /// failures before this one: a source whose attempt claims a lease may take `retry > 0` to
    /// mean that the lease is its own.
    fn process(
        &self,
        item: Self::Item,
        retry: u32,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether `error` is transient (the database or a peer unavailable): the item is then
    /// retried after a short backoff.
    fn is_transient(&self, error: &Self::Error) -> bool;
}

/// Work handed over with its row as its insert leased it to this process ([`WorkSource`]s
/// whose items are rows' ids take one as an item kind of their own): the first attempt works
/// from the row instead of claiming it, a retry after a transient failure claims it back by id.
/// Compared, hashed and shown by its key (the row's id) alone.
#[derive(Debug)]
pub struct Leased<R> {
    key: String,
    row: Arc<R>,
}

impl<R> Leased<R> {
    /// The row `row`, whose id is `key`, inserted leased to this process.
    pub fn new(key: impl Into<String>, row: R) -> Self {
        Self {
            key: key.into(),
            row: Arc::new(row),
        }
    }

    /// The row's id.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The row as inserted, leased.
    pub fn row(&self) -> &R {
        &self.row
    }
}

impl<R> Clone for Leased<R> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            row: self.row.clone(),
        }
    }
}

impl<R> PartialEq for Leased<R> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<R> Eq for Leased<R> {}

impl<R> Hash for Leased<R> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl<R> Display for Leased<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

/// A [`WorkQueue`]'s settings.
#[derive(Debug, Clone, Copy)]
pub struct WorkQueueOptions {
    /// Its name, for logs and as the supervised task's name (`task/<name>` fault switches).
    pub name: &'static str,
    /// How many attempts run at once.
    pub concurrency: usize,
    /// How often it scans for due items when nothing wakes it.
    pub poll_interval: Duration,
    /// Most items asked of one scan.
    pub batch: usize,
    /// The wait before the first retry of an item that failed on a transient error.
    pub retry_backoff: Duration,
    /// The longest wait between retries.
    pub max_retry_backoff: Duration,
    /// Retries after transient errors before the item is left to a later scan.
    pub max_retries: u32,
}

impl WorkQueueOptions {
    /// Defaults for a queue named `name`: 32 at once, a scan every second, batches of 256,
    /// retries after 200 ms doubling to 5 s, at most 12 of them.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            concurrency: 32,
            poll_interval: Duration::from_secs(1),
            batch: 256,
            retry_backoff: Duration::from_millis(200),
            max_retry_backoff: Duration::from_secs(5),
            max_retries: 12,
        }
    }

    /// With `n` attempts at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// With a scan every `every`.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }
}

struct Shared<T> {
    pushed: Mutex<VecDeque<T>>,
    on_push: Notify,
    on_wake: Notify,
}

/// Hands work to a [`WorkQueue`] in process. Cheap to clone; make it before the queue (the code
/// that creates work holds it) and give it to [`WorkQueue::new`].
pub struct WorkHandle<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for WorkHandle<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for WorkHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkHandle").finish_non_exhaustive()
    }
}

impl<T> Default for WorkHandle<T> {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                pushed: Mutex::new(VecDeque::new()),
                on_push: Notify::new(),
                on_wake: Notify::new(),
            }),
        }
    }
}

impl<T: Send + Sync + 'static> WorkHandle<T> {
    /// A handle not yet given to a queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts `item` now (its rows must be committed).
    pub fn push(&self, item: T) {
        self.shared
            .pushed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(item);
        self.shared.on_push.notify_one();
    }

    /// Starts `item` once `tx` has committed (never if it rolls back).
    pub fn push_after_commit(&self, tx: &mut Tx, item: T) {
        let me = self.clone();
        tx.after_commit(move || me.push(item));
    }

    /// Makes the queue scan for due items now.
    pub fn wake(&self) {
        self.shared.on_wake.notify_one();
    }

    fn take(&self) -> Vec<T> {
        self.shared
            .pushed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }
}

/// Runs a [`WorkSource`]'s items (see the module docs). Cheap to clone (shared state).
pub struct WorkQueue<S: WorkSource> {
    source: Arc<S>,
    options: WorkQueueOptions,
    handle: WorkHandle<S::Item>,
    inflight: Arc<Mutex<HashSet<S::Item>>>,
    running: Arc<tokio::sync::Mutex<()>>,
}

impl<S: WorkSource> Clone for WorkQueue<S> {
    fn clone(&self) -> Self {
        Self {
            source: self.source.clone(),
            options: self.options,
            handle: self.handle.clone(),
            inflight: self.inflight.clone(),
            running: self.running.clone(),
        }
    }
}

impl<S: WorkSource> std::fmt::Debug for WorkQueue<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkQueue")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// An item marked in flight in this process; dropping it (when the attempt ends, even by a
/// panic or an abort) unmarks it.
pub struct InFlight<T: Eq + Hash> {
    set: Arc<Mutex<HashSet<T>>>,
    item: T,
}

impl<T: Eq + Hash> std::fmt::Debug for InFlight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").finish_non_exhaustive()
    }
}

impl<T: Eq + Hash> Drop for InFlight<T> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.item);
    }
}

impl<S: WorkSource> WorkQueue<S> {
    /// A queue over `source`, taking work handed to `handle`.
    pub fn new(source: S, options: WorkQueueOptions, handle: WorkHandle<S::Item>) -> Self {
        Self {
            source: Arc::new(source),
            options: WorkQueueOptions {
                concurrency: options.concurrency.max(1),
                batch: options.batch.max(1),
                ..options
            },
            handle,
            inflight: Arc::default(),
            running: Arc::default(),
        }
    }

    /// Its handle.
    pub fn handle(&self) -> &WorkHandle<S::Item> {
        &self.handle
    }

    /// Its source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Claims `item` as in flight in this process for the life of the returned guard, for a
    /// caller that drives an item itself (vm's Vend call) so the queue does not start a second
    /// attempt meanwhile; `None` if it is already in flight.
    pub fn claim_in_process(&self, item: S::Item) -> Option<InFlight<S::Item>> {
        let fresh = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(item.clone());
        fresh.then(|| InFlight {
            set: self.inflight.clone(),
            item,
        })
    }

    /// The queue as a supervised background task named after it.
    pub fn task(&self) -> Task {
        let me = self.clone();
        Task::new(self.options.name, move |stop| {
            let me = me.clone();
            async move {
                me.run(stop).await;
                Ok(())
            }
        })
    }

    /// Runs until `stop`, then lets the attempts in flight see `stop` and waits for them.
    pub async fn run(&self, stop: CancellationToken) {
        // One run at a time (a restarted run waits for the old one to be gone).
        let _running = self.running.lock().await;
        let slots = Arc::new(Semaphore::new(self.options.concurrency));
        let mut attempts = JoinSet::new();
        let mut failing = false;
        let mut scan_now = true;
        let mut next_scan = Instant::now();
        loop {
            for item in self.handle.take() {
                if !self.start(item, &slots, &mut attempts, &stop).await {
                    break;
                }
            }
            if scan_now || Instant::now() >= next_scan {
                scan_now = false;
                next_scan = Instant::now() + self.options.poll_interval;
                let due = tokio::select! {
                    () = stop.cancelled() => break,
                    r = self.source.due(self.options.batch) => r,
                };
                match due {
                    Ok(items) => {
                        if failing {
                            failing = false;
                            tracing::info!(queue = self.options.name, "work queue scans recovered");
                        }
                        let full = items.len() >= self.options.batch;
                        let mut started = 0;
                        for item in items {
                            if self.start(item, &slots, &mut attempts, &stop).await {
                                started += 1;
                            }
                        }
                        // More may be due: look again at once, unless all were in flight.
                        scan_now = full && started > 0;
                    }
                    Err(e) => {
                        if !failing {
                            failing = true;
                            tracing::warn!(queue = self.options.name, error = %e, "work queue scan failed; retrying every poll interval");
                        }
                    }
                }
                if scan_now {
                    continue;
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.handle.shared.on_push.notified() => {}
                () = self.handle.shared.on_wake.notified() => scan_now = true,
                () = tokio::time::sleep_until(next_scan) => {}
                Some(joined) = attempts.join_next() => {
                    if let Err(e) = joined
                        && e.is_panic()
                    {
                        tracing::error!(queue = self.options.name, "a work item's attempt panicked; a later scan retries it");
                    }
                }
            }
        }
        while attempts.join_next().await.is_some() {}
    }

    /// Starts an attempt at `item` unless it is in flight; `false` when `stop` came first.
    async fn start(
        &self,
        item: S::Item,
        slots: &Arc<Semaphore>,
        attempts: &mut JoinSet<()>,
        stop: &CancellationToken,
    ) -> bool {
        let Some(guard) = self.claim_in_process(item.clone()) else {
            return true;
        };
        let permit = tokio::select! {
            () = stop.cancelled() => return false,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return false,
            },
        };
        let (source, options, stop) = (self.source.clone(), self.options, stop.clone());
        attempts.spawn(async move {
            let _permit = permit;
            let _guard = guard;
            let mut retry = 0;
            let mut backoff = options.retry_backoff;
            loop {
                let result = tokio::select! {
                    () = stop.cancelled() => return,
                    r = source.process(item.clone(), retry) => r,
                };
                match result {
                    Ok(()) => return,
                    Err(e) if source.is_transient(&e) && retry < options.max_retries => {
                        if retry == 0 {
                            tracing::warn!(queue = options.name, item = %item, error = %e, retry_in = ?backoff, "work item failed on a transient error; retrying");
                        }
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(options.max_retry_backoff);
                        retry += 1;
                    }
                    Err(e) => {
                        tracing::warn!(queue = options.name, item = %item, error = %e, retries = retry, "work item failed; a later scan retries it");
                        return;
                    }
                }
            }
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// In-memory rows: id -> (due at, transient failures left). Records each attempt's time.
    #[derive(Default)]
    struct Rows {
        rows: Mutex<BTreeMap<u32, (Instant, u32)>>,
        done: Mutex<Vec<(u32, Instant, u32)>>,
        scans: AtomicU32,
        busy: AtomicU32,
        max_busy: AtomicU32,
    }

    #[derive(Debug)]
    struct Unavailable;

    impl Display for Unavailable {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("unavailable")
        }
    }

    impl WorkSource for Arc<Rows> {
        type Item = u32;
        type Error = Unavailable;

        async fn due(&self, limit: usize) -> Result<Vec<u32>, Unavailable> {
            self.scans.fetch_add(1, Ordering::SeqCst);
            let now = Instant::now();
            Ok(self
                .rows
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(id, _)| *id)
                .take(limit)
                .collect())
        }

        async fn process(&self, item: u32, retry: u32) -> Result<(), Unavailable> {
            let busy = self.busy.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_busy.fetch_max(busy, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.busy.fetch_sub(1, Ordering::SeqCst);
            let mut rows = self.rows.lock().unwrap();
            let Some(row) = rows.get_mut(&item) else {
                return Ok(());
            };
            if row.1 > 0 {
                row.1 -= 1;
                return Err(Unavailable);
            }
            rows.remove(&item);
            self.done
                .lock()
                .unwrap()
                .push((item, Instant::now(), retry));
            Ok(())
        }

        fn is_transient(&self, _: &Unavailable) -> bool {
            true
        }
    }

    fn queue(rows: &Arc<Rows>, concurrency: usize) -> WorkQueue<Arc<Rows>> {
        WorkQueue::new(
            rows.clone(),
            WorkQueueOptions::new("test")
                .concurrency(concurrency)
                .poll_interval(Duration::from_secs(20)),
            WorkHandle::new(),
        )
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..100_000 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test(start_paused = true)]
    async fn handed_work_starts_at_once_without_a_scan() {
        let rows = Arc::new(Rows::default());
        let q = queue(&rows, 4);
        let stop = CancellationToken::new();
        let run = tokio::spawn({
            let (q, stop) = (q.clone(), stop.clone());
            async move { q.run(stop).await }
        });
        until(|| rows.scans.load(Ordering::SeqCst) == 1).await;
        let t0 = Instant::now();
        rows.rows.lock().unwrap().insert(7, (t0, 0));
        q.handle().push(7);
        until(|| !rows.done.lock().unwrap().is_empty()).await;
        let (id, at, _) = rows.done.lock().unwrap()[0];
        assert_eq!(id, 7);
        assert!(at - t0 < Duration::from_millis(50), "{:?}", at - t0);
        assert_eq!(rows.scans.load(Ordering::SeqCst), 1, "no scan was needed");
        stop.cancel();
        run.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_after_a_short_growing_backoff() {
        let rows = Arc::new(Rows::default());
        let t0 = Instant::now();
        // Three failures (a short database outage), then it works.
        rows.rows.lock().unwrap().insert(1, (t0, 3));
        let q = queue(&rows, 4);
        let stop = CancellationToken::new();
        let run = tokio::spawn({
            let (q, stop) = (q.clone(), stop.clone());
            async move { q.run(stop).await }
        });
        until(|| !rows.done.lock().unwrap().is_empty()).await;
        let (_, at, retry) = rows.done.lock().unwrap()[0];
        assert_eq!(retry, 3);
        // 4 attempts of 10 ms plus 200 + 400 + 800 ms of backoff: well before the next scan
        // (20 s), i.e. not when a lease runs out.
        let took = at - t0;
        assert!(took >= Duration::from_millis(1440), "{took:?}");
        assert!(took < Duration::from_millis(1600), "{took:?}");
        assert_eq!(rows.scans.load(Ordering::SeqCst), 1);
        stop.cancel();
        run.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn scans_find_due_rows_and_respect_concurrency_and_in_flight() {
        let rows = Arc::new(Rows::default());
        let t0 = Instant::now();
        for id in 0..50 {
            rows.rows.lock().unwrap().insert(id, (t0, 0));
        }
        // Due later: found by the poll.
        rows.rows
            .lock()
            .unwrap()
            .insert(99, (t0 + Duration::from_secs(5), 0));
        let q = queue(&rows, 3);
        let stop = CancellationToken::new();
        let run = tokio::spawn({
            let (q, stop) = (q.clone(), stop.clone());
            async move { q.run(stop).await }
        });
        // Pushing an item already being worked on does not start it twice.
        q.handle().push(0);
        until(|| rows.done.lock().unwrap().len() == 50).await;
        assert_eq!(rows.max_busy.load(Ordering::SeqCst), 3);
        let mut ids: Vec<u32> = rows.done.lock().unwrap().iter().map(|d| d.0).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 50, "each item done once");
        until(|| rows.done.lock().unwrap().len() == 51).await;
        let (id, at, _) = *rows.done.lock().unwrap().last().unwrap();
        assert_eq!(id, 99);
        assert!(at - t0 >= Duration::from_secs(20), "found by the next poll");
        stop.cancel();
        run.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn wake_scans_now() {
        let rows = Arc::new(Rows::default());
        let q = queue(&rows, 2);
        let stop = CancellationToken::new();
        let run = tokio::spawn({
            let (q, stop) = (q.clone(), stop.clone());
            async move { q.run(stop).await }
        });
        until(|| rows.scans.load(Ordering::SeqCst) == 1).await;
        rows.rows.lock().unwrap().insert(3, (Instant::now(), 0));
        q.handle().wake();
        until(|| rows.done.lock().unwrap().len() == 1).await;
        assert_eq!(rows.scans.load(Ordering::SeqCst), 2);
        assert!(q.claim_in_process(3).is_some(), "in-flight set emptied");
        stop.cancel();
        run.await.unwrap();
    }
}
