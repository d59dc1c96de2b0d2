//! `mesh_task_restarts_total{service,task}`: how often a task was restarted after a failure (an
//! error, a panic or a fault switch), for a service's supervised background tasks
//! ([`crate::lifecycle`]) and the runtime's helper tasks ([`crate::helper_task`], counted under
//! the service `mesh`). A task that keeps failing shows as a rising series here, and as a
//! problem on `/readyz`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::Metrics;

/// The labels of one task's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    service: String,
    task: String,
}

/// The restart counter of one metrics registry. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct TaskRestarts {
    family: Family<TaskLabels, Counter>,
}

impl TaskRestarts {
    /// The counter of `metrics`, registered on first use.
    pub fn of(metrics: &Metrics) -> Self {
        metrics.once(|m| {
            let restarts = Self::default();
            m.register(
                "mesh_task_restarts",
                "Background and helper task restarts after a failure (error, panic or fault switch)",
                restarts.family.clone(),
            );
            restarts
        })
    }

    /// Counts one restart of `service`'s task `task`.
    pub fn count(&self, service: &str, task: &str) {
        self.family.get_or_create(&labels(service, task)).inc();
    }

    /// Restarts of `service`'s task `task` so far.
    pub fn get(&self, service: &str, task: &str) -> u64 {
        self.family.get_or_create(&labels(service, task)).get()
    }
}

fn labels(service: &str, task: &str) -> TaskLabels {
    TaskLabels {
        service: service.to_string(),
        task: task.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_counted_per_task_and_exposed() {
        let metrics = Metrics::new();
        let restarts = TaskRestarts::of(&metrics);
        restarts.count("payment", "charge-worker");
        TaskRestarts::of(&metrics).count("payment", "charge-worker");
        assert_eq!(restarts.get("payment", "charge-worker"), 2);
        assert_eq!(restarts.get("payment", "other"), 0);
        let text = metrics.encode();
        assert!(
            text.contains(r#"mesh_task_restarts_total{service="payment",task="charge-worker"} 2"#),
            "{text}"
        );
    }
}
