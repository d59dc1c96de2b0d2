//! [`Tracker`]: a service's short-lived tasks that may outlive the call that started them (vm's
//! vend drives, the gateway's device connections), owned by the process: on shutdown the
//! [`crate::lifecycle::Supervisor`] closes the tracker, waits for its tasks within the grace
//! period and aborts those still running after it.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::task::TaskTracker;

/// The abort handles of the tasks spawned so far (finished ones dropped now and then).
#[derive(Debug, Default)]
struct Spawned {
    handles: Vec<AbortHandle>,
    /// How many were left after the last sweep of finished ones: the next sweep waits until
    /// the list has doubled, so spawning stays amortised O(1).
    kept: usize,
}

/// A set of tracked tasks. Cheap to clone; every clone is the same set.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    tasks: TaskTracker,
    spawned: Arc<Mutex<Spawned>>,
}

impl Tracker {
    /// An empty, open tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `task` on the runtime, tracked.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        let mut spawned = self.spawned.lock().unwrap_or_else(|e| e.into_inner());
        if spawned.handles.len() >= (2 * spawned.kept).max(16) {
            spawned.handles.retain(|h| !h.is_finished());
            spawned.kept = spawned.handles.len();
        }
        spawned.handles.push(handle.abort_handle());
        handle
    }

    /// Closes the tracker: [`wait`](Self::wait) resolves once its tasks have ended.
    pub fn close(&self) {
        self.tasks.close();
    }

    /// Waits until the tracker is closed and every task has ended (or was aborted).
    pub async fn wait(&self) {
        self.tasks.wait().await;
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Aborts every task still running; returns how many there were.
    pub(crate) fn abort_all(&self) -> usize {
        let handles = std::mem::take(
            &mut self
                .spawned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .handles,
        );
        handles
            .into_iter()
            .filter(|h| !h.is_finished())
            .map(|h| h.abort())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn aborting_ends_the_running_tasks_and_the_wait() {
        let tracker = Tracker::new();
        let done = tracker.spawn(async {});
        done.await.unwrap();
        let stuck: Vec<_> = (0..40)
            .map(|_| tracker.spawn(std::future::pending::<()>()))
            .collect();
        tracker.close();
        assert_eq!(tracker.len(), 40);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), tracker.wait())
                .await
                .is_err(),
            "stuck tasks hold the wait"
        );
        assert_eq!(tracker.abort_all(), 40);
        for task in stuck {
            assert!(task.await.unwrap_err().is_cancelled());
        }
        tracker.wait().await;
        assert!(tracker.is_empty());
    }
}
