//! A Redis on a request path that never stalls a request: product's cache, the edge's shared
//! rate limits, any token or idempotency store kept in Redis.
//!
//! [`GuardedRedis`] wraps a lazy, reconnecting [`ConnectionManager`] with a small breaker of its
//! own:
//! - every command is bounded by the configured timeout (the manager's own reconnect, which
//!   otherwise retries with backoff for seconds while callers wait, is a single attempt here);
//! - the first command that fails for want of Redis (I/O error, refused or dropped connection,
//!   timeout, `LOADING`...) marks Redis down; while it is down every call returns
//!   [`GuardError::Down`] at once, without touching the network, and the caller takes its other
//!   path (the database, an in-process bucket);
//! - meanwhile one background task pings Redis every `retry_every`; the first answer marks it up
//!   again and calls go back to Redis. Transitions are logged once each, not per request.
//!
//! An answer from Redis that is an error of the command itself (a script missing, a wrong type)
//! is returned as [`GuardError::Command`] and says nothing about Redis being down.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Why a guarded call did not return Redis's answer.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Redis is known to be down; nothing was sent.
    #[error("{0} (Redis) is down; not waiting for it")]
    Down(&'static str),
    /// No answer within the timeout (Redis is now marked down).
    #[error("{what} (Redis) gave no answer within {timeout:?}")]
    Timeout {
        /// The store.
        what: &'static str,
        /// The bound.
        timeout: Duration,
    },
    /// Redis could not be reached (it is now marked down).
    #[error("{what} (Redis) unreachable: {source}")]
    Unreachable {
        /// The store.
        what: &'static str,
        /// The cause.
        source: RedisError,
    },
    /// Redis answered with an error of the command itself.
    #[error("{what} (Redis): {source}")]
    Command {
        /// The store.
        what: &'static str,
        /// Redis's answer.
        source: RedisError,
    },
}

/// Timeouts of a [`GuardedRedis`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardOptions {
    /// The longest a request waits for one command (and for a connection).
    pub timeout: Duration,
    /// How often Redis is pinged while it is down.
    pub retry_every: Duration,
}

impl Default for GuardOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(250),
            retry_every: Duration::from_millis(500),
        }
    }
}

/// A Redis connection behind a timeout and a down/up breaker (see the module docs). Cheap to
/// clone; clones share the connection and the breaker.
#[derive(Clone)]
pub struct GuardedRedis {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    what: &'static str,
    options: GuardOptions,
    down: AtomicBool,
    /// Calls answered [`GuardError::Down`] (for tests and diagnostics).
    skipped: AtomicU64,
}

impl std::fmt::Debug for GuardedRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedRedis")
            .field("what", &self.inner.what)
            .field("options", &self.inner.options)
            .field("down", &self.inner.down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl GuardedRedis {
    /// A guarded connection to the Redis at `url` (connected lazily) for the store named `what`
    /// in logs and errors (e.g. `"product cache"`).
    pub fn connect(
        url: &str,
        what: &'static str,
        options: GuardOptions,
    ) -> Result<Self, RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.timeout))
            .set_connection_timeout(Some(options.timeout))
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                what,
                options,
                down: AtomicBool::new(false),
                skipped: AtomicU64::new(0),
            }),
        })
    }

    /// Whether Redis is currently believed reachable.
    pub fn is_up(&self) -> bool {
        !self.inner.down.load(Ordering::Acquire)
    }

    /// How many calls were answered [`GuardError::Down`] without touching Redis.
    pub fn skipped(&self) -> u64 {
        self.inner.skipped.load(Ordering::Relaxed)
    }

    /// Runs `command` on the connection, bounded by the timeout; at once `Err(Down)` while
    /// Redis is known down.
    pub async fn run<T, F, Fut>(&self, command: F) -> Result<T, GuardError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let inner = &self.inner;
        if inner.down.load(Ordering::Acquire) {
            inner.skipped.fetch_add(1, Ordering::Relaxed);
            return Err(GuardError::Down(inner.what));
        }
        let timeout = inner.options.timeout;
        match tokio::time::timeout(timeout, command(inner.conn.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) if !means_down(&source) => Err(GuardError::Command {
                what: inner.what,
                source,
            }),
            Ok(Err(source)) => {
                self.trip(&source);
                Err(GuardError::Unreachable {
                    what: inner.what,
                    source,
                })
            }
            Err(_) => {
                let error = GuardError::Timeout {
                    what: inner.what,
                    timeout,
                };
                self.trip(&error);
                Err(error)
            }
        }
    }

    /// Marks Redis down (once) and starts the task that brings it back.
    fn trip(&self, cause: &dyn std::fmt::Display) {
        if self.inner.down.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            store = self.inner.what,
            error = %cause,
            retry_every = ?self.inner.options.retry_every,
            "Redis down; requests skip it until it answers again"
        );
        let inner = Arc::downgrade(&self.inner);
        crate::helper_task::spawn("redis-probe", move || probe(inner.clone()));
    }
}

/// Pings until Redis answers, then marks it up. Stops when the guard is dropped.
async fn probe(inner: Weak<Inner>) {
    loop {
        let Some(retry_every) = inner.upgrade().map(|i| i.options.retry_every) else {
            return;
        };
        tokio::time::sleep(retry_every).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let mut conn = strong.conn.clone();
        let ping = redis::cmd("PING");
        let answer = ping.query_async::<String>(&mut conn);
        if let Ok(Ok(_)) = tokio::time::timeout(strong.options.timeout, answer).await {
            strong.down.store(false, Ordering::Release);
            tracing::info!(store = strong.what, "Redis answers again; using it");
            return;
        }
    }
}

/// Whether an error means Redis (not the command) is the problem.
fn means_down(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain,
        ) => true,
        ErrorKind::Server(_)
        | ErrorKind::Parse
        | ErrorKind::UnexpectedReturnType
        | ErrorKind::Extension => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port nothing listens on.
    fn dead_url() -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("redis://127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn a_dead_redis_costs_one_failure_then_nothing() {
        let guard = GuardedRedis::connect(
            &dead_url(),
            "test store",
            GuardOptions {
                timeout: Duration::from_millis(200),
                retry_every: Duration::from_secs(60),
            },
        )
        .unwrap();
        assert!(guard.is_up(), "believed up until a call fails");
        let started = std::time::Instant::now();
        let first = guard
            .run(|mut c| async move { redis::cmd("GET").arg("k").query_async::<()>(&mut c).await })
            .await;
        assert!(
            matches!(
                first,
                Err(GuardError::Unreachable { .. } | GuardError::Timeout { .. })
            ),
            "{first:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(400), "bounded");
        assert!(!guard.is_up());
        let called = AtomicBool::new(false);
        let second = guard
            .run(|_| {
                called.store(true, Ordering::Relaxed);
                async { Ok(()) }
            })
            .await;
        assert!(matches!(second, Err(GuardError::Down("test store"))));
        assert!(!called.load(Ordering::Relaxed), "nothing sent while down");
        assert_eq!(guard.skipped(), 1);
    }

    #[test]
    fn command_errors_do_not_mean_redis_is_down() {
        let no_script =
            RedisError::from((ErrorKind::Server(ServerErrorKind::NoScript), "NOSCRIPT"));
        assert!(!means_down(&no_script));
        let loading =
            RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "LOADING"));
        assert!(means_down(&loading));
        let io = RedisError::from((ErrorKind::Io, "broken pipe"));
        assert!(means_down(&io));
    }
}
