//! The restart rule shared by a service's supervised background tasks ([`crate::lifecycle`])
//! and the runtime's helper tasks ([`crate::helper_task`]): a [`Task`] run again and again until
//! a run finishes (`Ok`) or shutdown.
//!
//! - A run that fails (returns an error, panics, or is failed by the fault switch
//!   `task/<name>` of its service, see [`crate::faults`]) is logged with its cause, counted in
//!   `mesh_task_restarts_total` ([`crate::task_restarts`]) and started again after a backoff
//!   that doubles from [`Rule::initial_backoff`] to [`Rule::max_backoff`].
//! - After [`Rule::failures_before_unready`] failures in a row the service is reported not ready
//!   (source `task:<name>`) with the last cause; once a run has lasted [`Rule::stable_after`],
//!   the count resets and the problem is cleared. It is cleared too when the task finishes or
//!   is dropped (aborted), so a task that is gone never leaves readiness off.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::readiness::Readiness;
use crate::task_restarts::TaskRestarts;

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

/// When a failed task is restarted and when it turns readiness off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rule {
    /// The wait before the first restart; doubled after each failure in a row.
    pub(crate) initial_backoff: Duration,
    /// The longest wait between restarts.
    pub(crate) max_backoff: Duration,
    /// Failures in a row after which the service is reported not ready.
    pub(crate) failures_before_unready: u32,
    /// How long a run must last without failing for the count to reset.
    pub(crate) stable_after: Duration,
}

impl Default for Rule {
    /// 100 ms doubling to 30 s; unready after 3 failures in a row; stable after 5 s.
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            failures_before_unready: 3,
            stable_after: Duration::from_secs(5),
        }
    }
}

/// Where a task's failures are reported.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// The readiness a task that keeps failing turns off.
    pub(crate) readiness: Readiness,
    /// The restart counter, when the process has a metrics registry.
    pub(crate) restarts: Option<TaskRestarts>,
}

/// The readiness source of a task.
fn source(task: &str) -> String {
    format!("task:{task}")
}

/// The readiness problem a run loop has set; cleared when the loop ends or is dropped.
struct Problem {
    set_in: Option<Readiness>,
    service: String,
    source: String,
}

impl Problem {
    fn set(&mut self, readiness: &Readiness, cause: String) {
        readiness.set_problem(&self.service, &self.source, cause);
        self.set_in = Some(readiness.clone());
    }

    fn clear(&mut self) {
        if let Some(readiness) = self.set_in.take() {
            readiness.clear_problem(&self.service, &self.source);
        }
    }
}

impl Drop for Problem {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Runs `task` of `service` until a run finishes or `shutdown`, restarting it after failures
/// by `rule`; `report` says (at each failure) where to report.
pub(crate) async fn supervise(
    service: String,
    task: Task,
    rule: Rule,
    shutdown: CancellationToken,
    report: impl Fn() -> Option<Report> + Send,
) {
    let mut problem = Problem {
        set_in: None,
        service: service.clone(),
        source: source(&task.name),
    };
    let mut failures: u32 = 0;
    let mut backoff = rule.initial_backoff;
    while !shutdown.is_cancelled() {
        let stop = shutdown.child_token();
        let run = AssertUnwindSafe((task.start)(stop.clone())).catch_unwind();
        tokio::pin!(run);
        let stable = tokio::time::sleep(rule.stable_after);
        tokio::pin!(stable);
        let mut stable_done = false;
        let outcome: Result<(), String> = loop {
            tokio::select! {
                r = &mut run => break match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("failed: {e}")),
                    Err(panic) => Err(format!("panicked: {}", panic_message(&panic))),
                },
                () = &mut stable, if !stable_done => {
                    stable_done = true;
                    if failures > 0 {
                        tracing::info!(service = %service, task = %task.name, "background task recovered");
                        failures = 0;
                        backoff = rule.initial_backoff;
                        problem.clear();
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
        let report = report();
        if let Some(restarts) = report.as_ref().and_then(|r| r.restarts.as_ref()) {
            restarts.count(&service, &task.name);
        }
        if let Some(report) = &report
            && failures >= rule.failures_before_unready
        {
            problem.set(
                &report.readiness,
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
        backoff = (backoff * 2).min(rule.max_backoff);
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

/// The text of a caught panic.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".to_string())
}
