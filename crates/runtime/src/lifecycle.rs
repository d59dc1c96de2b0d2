//! A service's background work, supervised: a service declares its long-lived tasks (a
//! [`crate::work_queue::WorkQueue`], its event consumer, a loop of its own) with
//! [`ServiceContext::background`](crate::ServiceContext::background), and the process's
//! [`Supervisor`] runs them by the restart rule of [`crate::restart`].
//!
//! - A task that fails (returns an error or panics) is logged with its cause, counted in
//!   `mesh_task_restarts_total{service,task}` ([`Supervisor::with_metrics`]) and restarted
//!   after a backoff that grows from [`SupervisorOptions::initial_backoff`] to
//!   [`SupervisorOptions::max_backoff`].
//! - After [`SupervisorOptions::failures_before_unready`] failures in a row, the service is
//!   reported not ready (`/readyz` 503, its port's `grpc.health.v1` `NOT_SERVING`) with the
//!   task's last error as the cause; once a restarted task has run for
//!   [`SupervisorOptions::stable_after`] without failing, the count resets and readiness returns.
//! - A task that returns `Ok` has finished its work and is not restarted.
//! - On shutdown every task sees its cancellation token; [`Supervisor::drain`] waits for them
//!   within the grace period, then aborts what is left (a task that ignores its token, a
//!   tracked task still running), logs each by name, and returns.
//! - [`Supervisor::tracker`] gives a service a [`Tracker`] for short-lived work that may
//!   outlive the call that started it (vm's vend drive, the gateway's per-connection tasks):
//!   not restarted, but owned: on shutdown the tracker is closed and [`Supervisor::drain`] waits
//!   for its tasks within the same grace period and aborts them after it.
//! - [`Supervisor::watch_database`] checks the service's database periodically with a cheap
//!   query and reports it not ready while the database cannot be reached.
//!
//! A fault switch `task/<name>:error=<rate>` (see [`crate::faults`]) makes task `<name>` fail,
//! for tests and drills. The runtime's helper tasks ([`crate::helper_task`]) follow the same
//! rule under the service `mesh`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::restart::{Report, Rule, supervise};
pub use crate::restart::{Task, TaskError};
use crate::storage::Database;
use crate::task_restarts::TaskRestarts;
use crate::tracker::Tracker;

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
        let rule = Rule::default();
        Self {
            initial_backoff: rule.initial_backoff,
            max_backoff: rule.max_backoff,
            failures_before_unready: rule.failures_before_unready,
            stable_after: rule.stable_after,
            database_check_every: Duration::from_secs(2),
            database_check_timeout: Duration::from_secs(2),
        }
    }
}

impl SupervisorOptions {
    /// The restart rule these options give.
    pub(crate) fn rule(&self) -> Rule {
        Rule {
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            failures_before_unready: self.failures_before_unready,
            stable_after: self.stable_after,
        }
    }
}

/// A task the supervisor owns: its name (`<service>/<task>`) for the drain's log, its handle,
/// and for a tracker's waiter the tracker whose tasks are aborted with it.
struct Owned {
    name: String,
    handle: JoinHandle<()>,
    tracker: Option<Tracker>,
}

struct Inner {
    readiness: Readiness,
    options: SupervisorOptions,
    shutdown: CancellationToken,
    restarts: OnceLock<TaskRestarts>,
    owned: Mutex<Vec<Owned>>,
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
                restarts: OnceLock::new(),
                owned: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Counts restarts in `metrics` (`mesh_task_restarts_total{service,task}`, see
    /// [`crate::task_restarts`]) from now on; a supervisor already counting keeps its registry.
    pub fn with_metrics(self, metrics: &Metrics) -> Self {
        let _ = self.inner.restarts.set(TaskRestarts::of(metrics));
        self
    }

    /// The readiness it reports into.
    pub fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }

    fn own(&self, owned: Owned) {
        let mut all = self.inner.owned.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|o| !o.handle.is_finished());
        all.push(owned);
    }

    /// Starts `task` of `service` under supervision.
    pub fn start(&self, service: &str, task: Task) {
        let name = format!("{service}/{}", task.name());
        let inner = self.inner.clone();
        let report = move || {
            Some(Report {
                readiness: inner.readiness.clone(),
                restarts: inner.restarts.get().cloned(),
            })
        };
        let run = supervise(
            service.to_string(),
            task,
            self.inner.options.rule(),
            self.inner.shutdown.clone(),
            report,
        );
        self.own(Owned {
            name,
            handle: tokio::spawn(run),
            tracker: None,
        });
    }

    /// A tracker for `service`'s short-lived tasks named `name`: on shutdown it is closed and
    /// [`drain`](Self::drain) waits for its tasks like for the supervised ones, aborting those
    /// still running after the grace period.
    pub fn tracker(&self, service: &str, name: &str) -> Tracker {
        let tracker = Tracker::new();
        let owned = tracker.clone();
        let shutdown = self.inner.shutdown.clone();
        let (svc, tasks) = (service.to_string(), name.to_string());
        let handle = tokio::spawn(async move {
            shutdown.cancelled().await;
            owned.close();
            if !owned.is_empty() {
                tracing::info!(service = %svc, %tasks, running = owned.len(), "waiting for tracked tasks");
            }
            owned.wait().await;
        });
        self.own(Owned {
            name: format!("{service}/{name}"),
            handle,
            tracker: Some(tracker.clone()),
        });
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
    /// rest, each logged by name (`<service>/<task>`, with how many tracked tasks a tracker
    /// still had), and returns their names. A task that ignores its token cannot keep the
    /// process alive past the grace period. Call after cancelling the shutdown token.
    pub async fn drain(&self, grace: Duration) -> Vec<String> {
        let mut owned =
            std::mem::take(&mut *self.inner.owned.lock().unwrap_or_else(|e| e.into_inner()));
        let all = futures::future::join_all(owned.iter_mut().map(|o| &mut o.handle));
        if tokio::time::timeout(grace, all).await.is_ok() {
            return Vec::new();
        }
        let mut aborted = Vec::new();
        for o in owned.into_iter().filter(|o| !o.handle.is_finished()) {
            let tracked = o.tracker.as_ref().map_or(0, Tracker::abort_all);
            tracing::warn!(task = %o.name, tracked, grace = ?grace, "still running after the grace period; aborted");
            o.handle.abort();
            aborted.push(o.name);
        }
        aborted
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
        let metrics = Metrics::new();
        let sup = Supervisor::with_options(readiness.clone(), shutdown.clone(), options())
            .with_metrics(&metrics);
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
        assert_eq!(
            TaskRestarts::of(&metrics).get("svc", "flaky"),
            4,
            "each failure counted as a restart"
        );

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
    async fn drain_waits_for_tracked_tasks() {
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
        assert!(drain.await.is_empty(), "nothing aborted");
        assert_eq!(finished.load(Ordering::SeqCst), 1, "it ran to its end");
    }

    /// Counts the drops of the run that holds it.
    struct Dropped(Arc<AtomicU32>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn what_ignores_shutdown_is_aborted_after_the_grace_and_the_drain_returns() {
        let shutdown = CancellationToken::new();
        let sup = Supervisor::with_options(Readiness::new(), shutdown.clone(), options());
        let tracker = sup.tracker("svc", "stuck");
        let stuck = tracker.spawn(std::future::pending::<()>());
        let dropped = Arc::new(AtomicU32::new(0));
        let d = dropped.clone();
        sup.start(
            "svc",
            Task::new("deaf", move |_stop| {
                let held = Dropped(d.clone());
                async move {
                    let _held = held;
                    std::future::pending::<Result<(), TaskError>>().await
                }
            }),
        );
        sup.start(
            "svc",
            Task::new("polite", |stop| async move {
                stop.cancelled().await;
                Ok(())
            }),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        shutdown.cancel();
        let started = tokio::time::Instant::now();
        let mut aborted = sup.drain(Duration::from_secs(30)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        aborted.sort();
        assert_eq!(
            aborted,
            ["svc/deaf", "svc/stuck"],
            "each named; the polite one ended"
        );
        assert!(
            stuck.await.unwrap_err().is_cancelled(),
            "the tracked task is aborted"
        );
        until(|| dropped.load(Ordering::SeqCst) == 1).await;
        assert!(tracker.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_with_nothing_left_returns_at_once() {
        let shutdown = CancellationToken::new();
        let sup = Supervisor::with_options(Readiness::new(), shutdown.clone(), options());
        let runs = Arc::new(AtomicU32::new(0));
        sup.start("svc", flaky(runs.clone(), 0));
        let _idle = sup.tracker("svc", "idle");
        until(|| runs.load(Ordering::SeqCst) == 1).await;
        shutdown.cancel();
        let started = tokio::time::Instant::now();
        assert!(sup.drain(Duration::from_secs(30)).await.is_empty());
        assert!(started.elapsed() < Duration::from_secs(1));
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
