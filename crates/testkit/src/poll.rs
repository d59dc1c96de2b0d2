//! Waiting for a condition instead of sleeping a guessed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// Waits (at most 10 s, checking every 20 ms) until `check` holds; panics naming `what`.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(Duration::from_secs(10), what, check).await;
}

/// As [`eventually`], waiting at most `within`.
pub async fn eventually_within<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
