//! Helper tasks of runtime objects: a balanced pool's DNS refresh or EndpointSlice watch, a
//! Redis guard's probe, the Redis bus's consumer heartbeat. Each lives exactly as long as the
//! object it serves (it holds only a weak reference and ends when the object is dropped, or the
//! object aborts it on drop), so it is not a service's background task and needs no drain.
//!
//! [`spawn`] runs one so that a panic is neither silent nor final: it is logged at error level
//! with the helper's name and cause, counted, and the helper is started again after a backoff
//! (100 ms doubling to 30 s). A restarted helper whose object is gone ends at once. Without
//! this, a panicking DNS refresh would leave its pool on stale addresses, and a panicking probe
//! would leave Redis marked down for good, while readiness still said ready.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use tokio::task::JoinHandle;

/// The first wait before a helper is restarted after a panic; doubled per panic in a row.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Helper panics in this process so far (every helper, every restart).
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Spawns helper `name`: `start` makes one run; a run that returns has finished (its object is
/// gone), a run that panics is logged and started again after the backoff. Abort the returned
/// handle to stop the helper with its object.
pub fn spawn<F, Fut>(name: &'static str, start: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            match AssertUnwindSafe(start()).catch_unwind().await {
                Ok(()) => return,
                Err(panic) => {
                    PANICS.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        helper = name,
                        cause = %panic_message(&panic),
                        retry_in = ?backoff,
                        "helper task panicked; restarting it"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    })
}

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

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
        assert_eq!(
            started.elapsed(),
            INITIAL_BACKOFF + INITIAL_BACKOFF * 2,
            "restarted after the backoff, doubling"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn aborting_the_handle_stops_it() {
        let handle = spawn("forever", std::future::pending::<()>);
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
    }
}
