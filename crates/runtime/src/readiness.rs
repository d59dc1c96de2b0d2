//! Process readiness for the admin server's `/readyz`: ready once every gRPC server of the
//! process is serving, and not ready again from the moment shutdown begins.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared readiness of the servers in one process. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    servers: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Readiness {
    /// Nothing registered yet (and so not ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets whether the server `name` is serving.
    pub fn set(&self, name: &str, serving: bool) {
        self.servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), serving);
    }

    /// Every server and whether it is serving.
    pub fn snapshot(&self) -> BTreeMap<String, bool> {
        self.servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ready when at least one server is registered and all are serving.
    pub fn is_ready(&self) -> bool {
        let servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        !servers.is_empty() && servers.values().all(|s| *s)
    }
}
