//! Shutdown signals.

use std::future::Future;

/// Listens for SIGTERM (what Kubernetes sends) and SIGINT (Ctrl-C) from the moment it is called,
/// and returns a future that resolves on the first of them. Must be called inside a tokio runtime.
///
/// Registering before awaiting matters: a signal that arrives between start-up and the first poll
/// still counts.
pub fn signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!(signal = "Ctrl-C", "shutting down");
        })
    }
}
