//! Process readiness for the admin server's `/readyz` and each port's `grpc.health.v1`: ready
//! once every gRPC server of the process is serving and no service has a problem (a background
//! task that keeps failing, a database that cannot be reached), and not ready again from the
//! moment shutdown begins.
//!
//! Problems are kept per service and per source (`task:<name>`, `database`), with their cause,
//! so `/readyz` says why and each port's health answers `NOT_SERVING` only for the service
//! concerned. [`Readiness::changes`] wakes whoever mirrors the state (the gRPC health reporter).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Debug, Default)]
struct State {
    servers: BTreeMap<String, bool>,
    /// Service -> source -> cause.
    problems: BTreeMap<String, BTreeMap<String, String>>,
}

/// Shared readiness of the servers in one process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Readiness {
    state: Arc<Mutex<State>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

impl Readiness {
    /// Nothing registered yet (and so not ready).
    pub fn new() -> Self {
        Self::default()
    }

    fn update(&self, f: impl FnOnce(&mut State) -> bool) {
        let changed = f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        if changed {
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Sets whether the server `name` is serving.
    pub fn set(&self, name: &str, serving: bool) {
        self.update(|s| s.servers.insert(name.to_string(), serving) != Some(serving));
    }

    /// Records that `service` is not ready because of `source` (e.g. `task:worker`,
    /// `database`), with its `cause`. Replaces an earlier cause of the same source.
    pub fn set_problem(&self, service: &str, source: &str, cause: impl Into<String>) {
        let cause = cause.into();
        self.update(|s| {
            s.problems
                .entry(service.to_string())
                .or_default()
                .insert(source.to_string(), cause.clone())
                .as_ref()
                != Some(&cause)
        });
    }

    /// Clears `source`'s problem of `service`, if any.
    pub fn clear_problem(&self, service: &str, source: &str) {
        self.update(|s| {
            let Some(of) = s.problems.get_mut(service) else {
                return false;
            };
            let removed = of.remove(source).is_some();
            if of.is_empty() {
                s.problems.remove(service);
            }
            removed
        });
    }

    /// Every server and whether it is serving.
    pub fn snapshot(&self) -> BTreeMap<String, bool> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .servers
            .clone()
    }

    /// Every service with a problem: its sources and their causes.
    pub fn problems(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .clone()
    }

    /// Whether `service` has no problem (its server's own state aside).
    pub fn service_ok(&self, service: &str) -> bool {
        !self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .contains_key(service)
    }

    /// Ready when at least one server is registered, all are serving and no service has a
    /// problem.
    pub fn is_ready(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        !s.servers.is_empty() && s.servers.values().all(|v| *v) && s.problems.is_empty()
    }

    /// A receiver that sees a new value after every change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_makes_the_process_and_only_its_service_unready() {
        let r = Readiness::new();
        r.set("order", true);
        r.set("payment", true);
        let mut changes = r.changes();
        assert!(r.is_ready());
        r.set_problem("payment", "task:worker", "boom");
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert!(!r.is_ready());
        assert!(!r.service_ok("payment"));
        assert!(r.service_ok("order"));
        assert_eq!(r.problems()["payment"]["task:worker"], "boom");
        // The same cause again is no change.
        r.set_problem("payment", "task:worker", "boom");
        assert!(!changes.has_changed().unwrap());
        r.clear_problem("payment", "task:worker");
        assert!(changes.has_changed().unwrap());
        assert!(r.is_ready());
        assert!(r.problems().is_empty());
    }
}
