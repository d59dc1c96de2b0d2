//! Admission of new orders: PlaceOrder refuses new orders while the saga is further behind
//! than `MESH_ORDER_MAX_SAGA_BACKLOG`, measured as the age of the open orders (PENDING,
//! RESERVED or PAID) behind the [`DEFAULT_STRAGGLERS`] oldest.
//!
//! Without it a mesh offered more orders than its saga steps can take accepts them all: the
//! backlog grows for as long as the overload lasts, and once it is older than the saga timeout
//! the sweeper cancels the orders at its head (TIMEOUT), whose compensation is more work for
//! the same steps. Measured: 90 s of 32 clients placing as fast as they could, every order
//! accepted, 91% of them cancelled by the timeout and 105 confirmed/s where the steps confirm
//! 400/s when the offer stays within reach (docs/BENCHMARKS.md, "Session 15"). Refusing at the
//! door keeps the backlog below the bound, so what is accepted gets an outcome: the caller
//! retries later (`RESOURCE_EXHAUSTED` with `retry-after: 1`, as the runtime's load shedder
//! refuses; the idempotency key makes the retry safe).
//!
//! The oldest orders are set aside because a backlog is many orders waiting, while a few
//! orders can wait long on their own (an event dead-lettered, a card whose processor keeps
//! failing: the saga timeout settles those); with them counted, one stuck order would close
//! the door to every customer until the timeout cancelled it.
//!
//! The sweeper ([`crate::sweeper`]) samples the open orders on each of its scans (at most every
//! second) and hands the backlog's head here; PlaceOrder compares its age with the bound
//! before any other work, so a refusal costs no statement and no call to a peer. Each replica
//! refuses on its own sample. The bound must be below the saga timeout (checked with the
//! settings).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use mesh_runtime::domain::ServiceError;

use crate::error::OrderError;

/// No backlog (or none sampled yet).
const NONE: i64 = i64::MAX;

/// How many of the oldest open orders the backlog leaves out unless told otherwise.
pub const DEFAULT_STRAGGLERS: u32 = 100;

/// The admission check of one order service process.
#[derive(Debug)]
pub struct Admission {
    max_backlog: Duration,
    stragglers: u32,
    /// `created_at_us` of the backlog's head at the last sample; [`NONE`] when none.
    head_us: AtomicI64,
    refusals: Counter,
    backlog_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Admission {
    /// Refuses new orders while the backlog's head is older than `max_backlog`
    /// ([`Duration::ZERO`]: never), leaving [`DEFAULT_STRAGGLERS`] out; counts refusals in
    /// `refusals` and shows the sampled backlog in `backlog_seconds`.
    pub fn new(
        max_backlog: Duration,
        refusals: Counter,
        backlog_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    ) -> Self {
        Self {
            max_backlog,
            stragglers: DEFAULT_STRAGGLERS,
            head_us: AtomicI64::new(NONE),
            refusals,
            backlog_seconds,
        }
    }

    /// Leaves the `n` oldest open orders out of the backlog (0: the oldest open order is its
    /// head).
    pub fn stragglers(mut self, n: u32) -> Self {
        self.stragglers = n;
        self
    }

    /// How many of the oldest open orders the backlog leaves out: what the sweeper's sample
    /// skips.
    pub fn skipped(&self) -> i64 {
        i64::from(self.stragglers)
    }

    /// One that admits every order.
    pub fn open() -> Self {
        Self::new(Duration::ZERO, Counter::default(), Gauge::default())
    }

    /// Records a sample taken at `now_us`: the backlog's head (the oldest open order once the
    /// stragglers are left out) was created at `head_us`, or there is none.
    pub fn observe(&self, head_us: Option<i64>, now_us: i64) {
        let head = head_us.unwrap_or(NONE);
        self.head_us.store(head, Ordering::Relaxed);
        self.backlog_seconds.set(age(head, now_us).as_secs_f64());
    }

    /// How far behind the saga is at `now_us`: the age of the backlog's head sampled.
    pub fn backlog(&self, now_us: i64) -> Duration {
        age(self.head_us.load(Ordering::Relaxed), now_us)
    }

    /// Admits a new order at `now_us`, or refuses it ([`ServiceError::Overloaded`], saying how
    /// far behind the saga is and what to do) while the backlog exceeds the bound.
    pub fn admit(&self, now_us: i64) -> Result<(), OrderError> {
        if self.max_backlog.is_zero() {
            return Ok(());
        }
        let backlog = self.backlog(now_us);
        if backlog <= self.max_backlog {
            return Ok(());
        }
        self.refusals.inc();
        Err(ServiceError::Overloaded(format!(
            "the order saga is {:.1}s behind (its open orders' age), more than \
             MESH_ORDER_MAX_SAGA_BACKLOG ({}): new orders are refused until it catches up; \
             retry later with the same idempotency_key",
            backlog.as_secs_f64(),
            humantime::format_duration(self.max_backlog)
        ))
        .into())
    }
}

/// The age at `now_us` of an order created at `created_us` (zero for [`NONE`] or the future).
fn age(created_us: i64, now_us: i64) -> Duration {
    if created_us == NONE {
        return Duration::ZERO;
    }
    Duration::from_micros(u64::try_from(now_us.saturating_sub(created_us)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn refuses_only_while_the_backlog_is_older_than_the_bound() {
        let a = Admission::new(
            Duration::from_secs(10),
            Counter::default(),
            Gauge::default(),
        );
        // Nothing sampled yet, then nothing open.
        assert!(a.admit(100 * S).is_ok());
        a.observe(None, 100 * S);
        assert!(a.admit(100 * S).is_ok());
        // Open for 9 s, then for 12 s as time passes without a new sample.
        a.observe(Some(91 * S), 100 * S);
        assert!(a.admit(100 * S).is_ok());
        let refused = a.admit(103 * S).unwrap_err().to_string();
        assert!(
            refused.contains("12.0s behind") && refused.contains("MESH_ORDER_MAX_SAGA_BACKLOG"),
            "{refused}"
        );
        assert_eq!(a.refusals.get(), 1);
        // The saga caught up.
        a.observe(Some(102 * S), 103 * S);
        assert!(a.admit(103 * S).is_ok());
    }

    #[test]
    fn a_zero_bound_admits_everything() {
        let a = Admission::open();
        a.observe(Some(0), 1_000 * S);
        assert!(a.admit(1_000 * S).is_ok());
        assert_eq!(a.backlog(1_000 * S), Duration::from_secs(1_000));
    }
}
