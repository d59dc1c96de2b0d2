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

/// Polls `get` (every 20 ms, at most `within` on tokio's clock) until `done` holds for what it
/// returns, and returns that value; on time-out panics naming `what` and the last value seen.
pub async fn until_value<T, F, Fut>(
    within: Duration,
    what: &str,
    mut get: F,
    done: impl Fn(&T) -> bool,
) -> T
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let value = get().await;
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; it is {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
