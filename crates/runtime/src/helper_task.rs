//! Helper tasks of runtime objects: a balanced pool's DNS refresh or EndpointSlice watch, a
//! Redis guard's probe, the Redis bus's consumer heartbeat. Each lives exactly as long as the
//! object it serves (it holds only a weak reference and ends when the object is dropped, or the
//! object aborts it on drop), so it is not a service's background task and needs no drain.
//!
//! [`spawn`] runs one by the same rule as a service's supervised tasks ([`crate::restart`]),
//! under the service `mesh`: a panic is logged at error level with the helper's name and cause,
//! counted in `mesh_task_restarts_total{service="mesh",task=<helper>}`, and the helper is started
//! again after a backoff (100 ms doubling to 30 s); one that panics 3 times in a row turns the
//! process's readiness off (`/readyz` names `task:<helper>` under `mesh`) until a run has lasted
//! 5 s, and the fault switch `task/<helper>` of service `mesh` fails it on purpose. Readiness and
//! metric are the process's once [`report_to`] is called (by `mesh serve`; before that, and in a
//! process that never calls it, a panic is logged and counted by [`panics`] only). A restarted
//! helper whose object is gone ends at once; an aborted one clears the problem it had set.
//! Without this, a panicking DNS refresh would leave its pool on stale addresses, and a panicking
//! probe would leave Redis marked down for good, while readiness still said ready.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::restart::{Report, Rule, Task, supervise};
use crate::task_restarts::TaskRestarts;

/// The service name helpers report under.
pub const SERVICE: &str = "mesh";

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Where helper failures go, once the process says.
static REPORT: RwLock<Option<Report>> = RwLock::new(None);

/// Helper failures in this process so far (every helper, every restart).
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Reports helper failures into the process's `readiness` and `metrics` from now on (a later
/// call replaces an earlier one).
pub fn report_to(readiness: Readiness, metrics: &Metrics) {
    *REPORT.write().unwrap_or_else(|e| e.into_inner()) = Some(Report {
        readiness,
        restarts: Some(TaskRestarts::of(metrics)),
    });
}

/// The process's report, counting the failure.
fn report() -> Option<Report> {
    PANICS.fetch_add(1, Ordering::Relaxed);
    REPORT.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Spawns helper `name`: `start` makes one run; a run that returns has finished (its object is
/// gone), a run that panics is logged, counted and started again after the backoff (see the
/// module docs). Abort the returned handle to stop the helper with its object.
pub fn spawn<F, Fut>(name: &'static str, start: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // `Task` wants a `Sync` start; a helper's only runs one at a time.
    let start = Mutex::new(start);
    let task = Task::new(name, move |_stop| {
        let run = (start.lock().unwrap_or_else(|e| e.into_inner()))();
        async move {
            run.await;
            Ok(())
        }
    });
    // Helpers end with their objects, not with shutdown: a token nobody cancels.
    tokio::spawn(supervise(
        SERVICE.to_string(),
        task,
        Rule::default(),
        CancellationToken::new(),
        report,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_helper_is_restarted_and_a_finished_one_is_not() {
        let runs = Arc::new(AtomicU32::new(0));
        let before = panics();
        let counted = runs.clone();
        let started = tokio::time::Instant::now();
        let handle = spawn("test-helper", move || {
            let runs = counted.clone();
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(n > 2, "run {n} panics");
            }
        });
        handle.await.expect("the helper ends once a run returns");
        assert_eq!(runs.load(Ordering::SeqCst), 3, "two panics, two restarts");
        assert!(panics() >= before + 2);
        let initial = Rule::default().initial_backoff;
        assert_eq!(
            started.elapsed(),
            initial + initial * 2,
            "restarted after the backoff, doubling"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn aborting_the_handle_stops_it() {
        let handle = spawn("forever", std::future::pending::<()>);
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
    }

    /// Waits (on the paused clock) until `what` holds.
    async fn until(what: impl Fn() -> bool) {
        for _ in 0..100_000 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test(start_paused = true)]
    async fn a_helper_that_keeps_panicking_is_counted_and_turns_readiness_off_until_it_lasts() {
        let (readiness, metrics) = (Readiness::new(), Metrics::new());
        readiness.set("svc", true);
        report_to(readiness.clone(), &metrics);
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let handle = spawn("panicky-helper", move || {
            let runs = counted.clone();
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(n > 4, "run {n} panics");
                std::future::pending::<()>().await;
            }
        });
        until(|| runs.load(Ordering::SeqCst) == 2).await;
        assert!(readiness.is_ready(), "one panic is not yet a problem");
        until(|| !readiness.is_ready()).await;
        let cause = readiness.problems()[SERVICE]["task:panicky-helper"].clone();
        assert!(cause.contains("panicked: run 3 panics"), "{cause}");
        until(|| runs.load(Ordering::SeqCst) == 5).await;
        assert_eq!(TaskRestarts::of(&metrics).get(SERVICE, "panicky-helper"), 4);
        // The fifth run lasts: ready again once it has run for the stable period.
        until(|| readiness.is_ready()).await;

        // One more streak of failures, then its object goes (the handle is aborted): the
        // problem it set goes with it.
        crate::faults::global().set(
            SERVICE,
            crate::faults::parse("task/panicky-helper:error=1").expect("rule"),
        );
        until(|| !readiness.is_ready()).await;
        let cause = readiness.problems()[SERVICE]["task:panicky-helper"].clone();
        assert!(cause.contains("fault injected"), "{cause}");
        handle.abort();
        let _ = handle.await;
        assert!(readiness.is_ready(), "an aborted helper leaves no problem");
        crate::faults::global().set(SERVICE, Vec::new());
    }
}
