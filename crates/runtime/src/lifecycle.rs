//! A service's background work, supervised: a service declares its long-lived tasks (a
//! [`crate::work_queue::WorkQueue`], its event consumer, a loop of its own) with
//! [`ServiceContext::background`](crate::ServiceContext::background), and the process's
//! [`Supervisor`] runs them.
//!
//! - A task that fails (returns an error or panics) is logged with its cause and restarted after
//!   a backoff that grows from [`SupervisorOptions::initial_backoff`] to
//!   [`SupervisorOptions::max_backoff`].
//! - After [`SupervisorOptions::failures_before_unready`] failures in a row, the service is
//!   reported not ready (`/readyz` 503, its port's `grpc.health.v1` `NOT_SERVING`) with the
//!   task's last error as the cause; once a restarted task has run for
//!   [`SupervisorOptions::stable_after`] without failing, the count resets and readiness returns.
//! - A task that returns `Ok` has finished its work and is not restarted.
//! - On shutdown every task sees its cancellation token; [`Supervisor::drain`] waits for them
//!   within the grace period and aborts what is left.
//! - [`Supervisor::tracker`] gives a service a [`TaskTracker`] for short-lived work that may
//!   outlive the call that started it (vm's vend drive, the gateway's per-connection tasks):
//!   not restarted, but owned: on shutdown the tracker is closed and [`Supervisor::drain`] waits
//!   for its tasks within the same grace period.
//! - [`Supervisor::watch_database`] checks the service's database periodically with a cheap
//!   query and reports it not ready while the database cannot be reached.
//!
//! A fault switch `task/<name>:error=<rate>` (see [`crate::faults`]) makes task `<name>` fail,
//! for tests and drills.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::readiness::Readiness;
use crate::storage::Database;

/// Why a background task stopped.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// Starts one run of a task with the token that tells it to stop.
type Start =
    Arc<dyn Fn(CancellationToken) -> BoxFuture<'static, Result<(), TaskError>> + Send + Sync>;

/// A declared background task: a name (unique within its service) and how to start a run of it.
#[derive(Clone)]
pub struct Task {
    name: String,
    start: Start,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("name", &self.name).finish()
    }
}

impl Task {
    /// A task named `name`; `start` is called again for every restart.
    pub fn new<F, Fut>(name: impl Into<String>, start: F) -> Self
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        Self {
            name: name.into(),
            start: Arc::new(move |stop| start(stop).boxed()),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Restart and readiness policy of a [`Supervisor`].
#[derive(Debug, Clone, Copy)]
pub struct SupervisorOptions {
    /// The wait before the first restart; doubled after each failure in a row.
    pub initial_backoff: Duration,
    /// The longest wait between restarts.
    pub max_backoff: Duration,
    /// Failures in a row after which the service is reported not ready.
    pub failures_before_unready: u32,
    /// How long a run must last without failing for the failure count to reset (and readiness
    /// to return).
    pub stable_after: Duration,
    /// How often [`Supervisor::watch_database`] checks the database.
    pub database_check_every: Duration,
    /// How long a database check may take before the database counts as unreachable.
    pub database_check_timeout: Duration,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            failures_before_unready: 3,
            stable_after: Duration::from_secs(5),
            database_check_every: Duration::from_secs(2),
            database_check_timeout: Duration::from_secs(2),
        }
    }
}

struct Inner {
    readiness: Readiness,
    options: SupervisorOptions,
    shutdown: CancellationToken,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

/// Runs and restarts the background tasks of the services of one process. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor reporting into `readiness`, stopping its tasks when `shutdown` is cancelled.
    pub fn new(readiness: Readiness, shutdown: CancellationToken) -> Self {
        Self::with_options(readiness, shutdown, SupervisorOptions::default())
    }

    /// As [`new`](Self::new), with `options`.
    pub fn with_options(
        readiness: Readiness,
        shutdown: CancellationToken,
        options: SupervisorOptions,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                readiness,
                options,
                shutdown,
                handles: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The readiness it reports into.
    pub fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }

    /// Starts `task` of `service` under supervision.
    pub fn start(&self, service: &str, task: Task) {
        let run = supervise(
            service.to_string(),
            task,
            self.inner.readiness.clone(),
            self.inner.options,
            self.inner.shutdown.clone(),
        );
        let handle = tokio::spawn(run);
        let mut handles = self.inner.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
    }

    /// A tracker for `service`'s short-lived tasks named `name` (spawn them with
    /// [`TaskTracker::spawn`]): on shutdown it is closed and [`drain`](Self::drain) waits for
    /// its tasks like for the supervised ones, aborting them after the grace period.
    pub fn tracker(&self, service: &str, name: &str) -> TaskTracker {
        let tracker = TaskTracker::new();
        let owned = tracker.clone();
        let shutdown = self.inner.shutdown.clone();
        let (service, name) = (service.to_string(), name.to_string());
        let handle = tokio::spawn(async move {
            shutdown.cancelled().await;
            owned.close();
            if !owned.is_empty() {
                tracing::info!(%service, tasks = %name, running = owned.len(), "waiting for tracked tasks");
            }
            owned.wait().await;
        });
        let mut handles = self.inner.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
        tracker
    }

    /// Checks `service`'s database every [`SupervisorOptions::database_check_every`] (a
    /// `SELECT 1` bounded by [`SupervisorOptions::database_check_timeout`]); the service is
    /// not ready while it fails.
    pub fn watch_database(&self, service: &str, db: Database) {
        let options = self.inner.options;
        let readiness = self.inner.readiness.clone();
        let svc = service.to_string();
        self.start(
            service,
            Task::new("database-check", move |stop| {
                let (db, readiness, svc) = (db.clone(), readiness.clone(), svc.clone());
                async move {
                    check_database(&svc, &db, &readiness, options, &stop).await;
                    Ok(())
                }
            }),
        );
    }

    /// Waits (at most `grace`) for every task to stop after shutdown began, then aborts the
    /// rest. Call after cancelling the shutdown token.
    pub async fn drain(&self, grace: Duration) {
        let handles =
            std::mem::take(&mut *self.inner.handles.lock().unwrap_or_else(|e| e.into_inner()));
        let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
        let all = futures::future::join_all(handles);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(grace = ?grace, "background tasks still running after the grace period; aborting them");
            for a in aborts {
                a.abort();
            }
        }
    }
}

/// The readiness source of a task.
fn source(task: &str) -> String {
    format!("task:{task}")
}

/// Runs `task` until it finishes or `shutdown`, restarting it after failures.
async fn supervise(
    service: String,
    task: Task,
    readiness: Readiness,
    options: SupervisorOptions,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    let mut backoff = options.initial_backoff;
    while !shutdown.is_cancelled() {
        let stop = shutdown.child_token();
        let run = AssertUnwindSafe((task.start)(stop.clone())).catch_unwind();
        tokio::pin!(run);
        let stable = tokio::time::sleep(options.stable_after);
        tokio::pin!(stable);
        let mut stable_done = false;
        let outcome: Result<(), String> = loop {
            tokio::select! {
                r = &mut run => break match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("failed: {e}")),
                    Err(panic) => Err(format!("panicked: {}", crate::helper_task::panic_message(&panic))),
                },
                () = &mut stable, if !stable_done => {
                    stable_done = true;
                    if failures > 0 {
                        tracing::info!(service = %service, task = %task.name, "background task recovered");
                        failures = 0;
                        backoff = options.initial_backoff;
                        readiness.clear_problem(&service, &source(&task.name));
                    }
                }
                cause = injected_fault(&service, &task.name) => {
                    // Stop the run (it sees its token), then count the failure.
                    stop.cancel();
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut run).await;
                    break Err(cause);
                }
            }
        };
        if shutdown.is_cancelled() {
            break;
        }
        let cause = match outcome {
            Ok(()) => {
                tracing::info!(service = %service, task = %task.name, "background task finished");
                readiness.clear_problem(&service, &source(&task.name));
                return;
            }
            Err(cause) => cause,
        };
        failures = failures.saturating_add(1);
        tracing::error!(
            service = %service,
            task = %task.name,
            failures,
            retry_in = ?backoff,
            cause = %cause,
            "background task {cause}; restarting"
        );
        if failures >= options.failures_before_unready {
            readiness.set_problem(
                &service,
                &source(&task.name),
                format!(
                    "background task `{}` {cause} ({failures} times in a row)",
                    task.name
                ),
            );
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

/// Resolves when the fault switch `task/<task>` of `service` fires (checked every 100 ms).
async fn injected_fault(service: &str, task: &str) -> String {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if let Some(rule) = crate::faults::global().task_fault(service, task)
            && rule.error_rate > 0.0
            && rand::random::<f64>() < rule.error_rate
        {
            return "failed: fault injected by a fault switch".to_string();
        }
    }
}

/// The database readiness loop of [`Supervisor::watch_database`].
async fn check_database(
    service: &str,
    db: &Database,
    readiness: &Readiness,
    options: SupervisorOptions,
    stop: &CancellationToken,
) {
    let mut down = false;
    loop {
        let check = tokio::time::timeout(
            options.database_check_timeout,
            sqlx::query("SELECT 1").execute(db.pool()),
        )
        .await;
        let problem = match check {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("the database is unreachable: {e}")),
            Err(_) => Some(format!(
                "the database did not answer within {}",
                humantime::format_duration(options.database_check_timeout)
            )),
        };
        match problem {
            None if down => {
                down = false;
                tracing::info!(service, "the database is reachable again");
                readiness.clear_problem(service, "database");
            }
            None => {}
            Some(cause) => {
                if !down {
                    tracing::error!(service, cause = %cause, "not ready: the database cannot be reached");
                }
                down = true;
                readiness.set_problem(service, "database", cause);
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(options.database_check_every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn options() -> SupervisorOptions {
        SupervisorOptions {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            failures_before_unready: 3,
            stable_after: Duration::from_secs(5),
            ..SupervisorOptions::default()
        }
    }

    /// A task that fails (error, then panic, alternately) its first `fail` runs, then runs
    /// until stopped; counts its runs.
    fn flaky(runs: Arc<AtomicU32>, fail: u32) -> Task {
        Task::new("flaky", move |stop| {
            let runs = runs.clone();
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= fail {
                    if n.is_multiple_of(2) {
                        panic!("run {n} panics");
                    }
                    return Err(format!("run {n} fails").into());
                }
                stop.cancelled().await;
                Ok(())
            }
        })
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_keeps_failing_turns_readiness_off_until_it_runs_stably() {
        let readiness = Readiness::new();
        readiness.set("svc", true);
        let shutdown = CancellationToken::new();
        let sup = Supervisor::with_options(readiness.clone(), shutdown.clone(), options());
        let runs = Arc::new(AtomicU32::new(0));
        sup.start("svc", flaky(runs.clone(), 4));

        until(|| runs.load(Ordering::SeqCst) >= 2).await;
        assert!(readiness.is_ready(), "two failures are not yet a problem");
        until(|| !readiness.is_ready()).await;
        let cause = readiness.problems()["svc"]["task:flaky"].clone();
        assert!(cause.contains("3 times in a row"), "{cause}");
        // Restarted after each failure; the fifth run lasts, and after `stable_after` the
        // service is ready again.
        until(|| runs.load(Ordering::SeqCst) == 5).await;
        assert!(!readiness.is_ready());
        until(|| readiness.is_ready()).await;
        assert_eq!(runs.load(Ordering::SeqCst), 5);

        shutdown.cancel();
        sup.drain(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_back_off() {
        let readiness = Readiness::new();
        let shutdown = CancellationToken::new();
        let sup = Supervisor::with_options(readiness, shutdown.clone(), options());
        let runs = Arc::new(AtomicU32::new(0));
        let start = tokio::time::Instant::now();
        sup.start("svc", flaky(runs.clone(), 100));
        until(|| runs.load(Ordering::SeqCst) >= 5).await;
        // 100 + 200 + 400 + 800 ms of backoff before the fifth run.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(1500), "{waited:?}");
        assert!(waited < Duration::from_millis(1700), "{waited:?}");
        shutdown.cancel();
        sup.drain(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tracked_tasks_then_aborts_them_after_the_grace() {
        let shutdown = CancellationToken::new();
        let sup = Supervisor::with_options(Readiness::new(), shutdown.clone(), options());
        let tracker = sup.tracker("svc", "vends");
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(AtomicU32::new(0));
        let f = finished.clone();
        tracker.spawn(async move {
            let _ = released.await;
            f.fetch_add(1, Ordering::SeqCst);
        });
        shutdown.cancel();
        let drain = sup.drain(Duration::from_secs(30));
        tokio::pin!(drain);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), &mut drain)
                .await
                .is_err(),
            "the drain waits for the tracked task"
        );
        release.send(()).unwrap();
        drain.await;
        assert_eq!(finished.load(Ordering::SeqCst), 1, "it ran to its end");

        // One that never ends is aborted once the grace period is over.
        let shutdown = CancellationToken::new();
        let sup = Supervisor::with_options(Readiness::new(), shutdown.clone(), options());
        let tracker = sup.tracker("svc", "stuck");
        tracker.spawn(std::future::pending::<()>());
        shutdown.cancel();
        let started = tokio::time::Instant::now();
        sup.drain(Duration::from_secs(30)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_task_is_not_restarted_and_drain_stops_the_rest() {
        let readiness = Readiness::new();
        let shutdown = CancellationToken::new();
        let sup = Supervisor::with_options(readiness, shutdown.clone(), options());
        let once = Arc::new(AtomicU32::new(0));
        let o = once.clone();
        sup.start(
            "svc",
            Task::new("once", move |_| {
                let o = o.clone();
                async move {
                    o.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        );
        let stopped = Arc::new(AtomicU32::new(0));
        let s = stopped.clone();
        sup.start(
            "svc",
            Task::new("loop", move |stop| {
                let s = s.clone();
                async move {
                    stop.cancelled().await;
                    s.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(once.load(Ordering::SeqCst), 1);
        shutdown.cancel();
        sup.drain(Duration::from_secs(1)).await;
        assert_eq!(stopped.load(Ordering::SeqCst), 1, "the loop saw its token");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fault_switch_fails_a_running_task() {
        let service = "lifecycle-fault-test";
        let readiness = Readiness::new();
        let shutdown = CancellationToken::new();
        let sup = Supervisor::with_options(readiness.clone(), shutdown.clone(), options());
        let runs = Arc::new(AtomicU32::new(0));
        sup.start(service, flaky(runs.clone(), 0));
        until(|| runs.load(Ordering::SeqCst) == 1).await;
        crate::faults::global().set(
            service,
            crate::faults::parse("task/flaky:error=1").expect("rule"),
        );
        until(|| !readiness.service_ok(service)).await;
        assert!(
            runs.load(Ordering::SeqCst) >= 3,
            "restarted after each injected failure"
        );
        crate::faults::global().set(service, Vec::new());
        until(|| readiness.service_ok(service)).await;
        shutdown.cancel();
        sup.drain(Duration::from_secs(1)).await;
    }
}
