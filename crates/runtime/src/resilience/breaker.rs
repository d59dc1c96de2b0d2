//! The circuit breaker of one upstream: client-side adaptive throttling (Google SRE book,
//! "Handling Overload").
//!
//! Over a sliding window the client counts `requests` (every call it wanted to make, including
//! the ones it rejected itself) and `accepts` (calls the upstream answered without an overload or
//! failure signal). Each new call is rejected locally with probability
//! `max(0, (requests - K x accepts) / (requests + 1))`. While the upstream is healthy,
//! `requests ~ accepts` and nothing is rejected; when it fails, the rejection probability climbs
//! towards 1 but never reaches it, so a trickle of calls keeps probing and the breaker closes by
//! itself as accepts come back and the failures slide out of the window. `K = 2` lets the upstream
//! see up to twice the calls it accepts; lower is more aggressive. Below `min_requests` calls in
//! the window nothing is rejected.
//!
//! A locally rejected call fails at once with `UNAVAILABLE` naming the upstream, and is never
//! retried. The state (`closed`: nothing rejected; `open`: rejecting a fraction) is the gauge
//! `grpc_client_breaker_state{upstream}` (0/1); changes are logged.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, Either, Ready, ready};
use tokio::time::Instant;
use tower_service::Service;

use super::{ClientMetrics, LocalRejection, UpstreamLabels};

/// Settings of a [`Throttle`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerOptions {
    /// The K of the formula; `0` turns the breaker off.
    pub k: f64,
    /// The sliding window.
    pub window: Duration,
    /// Buckets the window is divided into.
    pub buckets: u32,
    /// Below this many requests in the window nothing is rejected (as Kratos' SRE breaker does),
    /// so that one failed call of a quiet client does not reject half of the next ones.
    pub min_requests: u64,
}

impl Default for BreakerOptions {
    fn default() -> Self {
        Self {
            k: 2.0,
            window: Duration::from_secs(10),
            buckets: 10,
            min_requests: 20,
        }
    }
}

/// The adaptive throttle of one upstream (shared by every clone of its channel).
#[derive(Debug)]
pub struct Throttle {
    upstream: String,
    options: BreakerOptions,
    window: Mutex<Window>,
    open: AtomicBool,
    metrics: Option<ClientMetrics>,
}

#[derive(Debug)]
struct Window {
    /// (requests, accepts) per bucket; `current` is the bucket being filled.
    buckets: Vec<(u64, u64)>,
    current: usize,
    /// When the current bucket started.
    started: Instant,
    bucket_len: Duration,
}

impl Window {
    fn advance(&mut self, now: Instant) {
        let n = self.buckets.len();
        let mut steps = 0;
        while now.saturating_duration_since(self.started) >= self.bucket_len && steps <= n {
            self.current = (self.current + 1) % n;
            self.buckets[self.current] = (0, 0);
            self.started += self.bucket_len;
            steps += 1;
        }
        if steps > n {
            // Idle for longer than the window: everything has slid out.
            self.started = now;
        }
    }

    fn sums(&self) -> (u64, u64) {
        self.buckets
            .iter()
            .fold((0, 0), |(r, a), (br, ba)| (r + br, a + ba))
    }
}

impl Throttle {
    /// A throttle for `upstream` (named in errors, logs and metrics).
    pub fn new(
        upstream: impl Into<String>,
        options: BreakerOptions,
        metrics: Option<ClientMetrics>,
    ) -> Self {
        let buckets = options.buckets.max(1);
        Self {
            upstream: upstream.into(),
            window: Mutex::new(Window {
                buckets: vec![(0, 0); buckets as usize],
                current: 0,
                started: Instant::now(),
                bucket_len: options.window / buckets,
            }),
            options,
            open: AtomicBool::new(false),
            metrics,
        }
    }

    /// The upstream's name.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The local rejection probability now.
    pub fn reject_probability(&self) -> f64 {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.advance(Instant::now());
        let (requests, accepts) = w.sums();
        self.probability(requests, accepts)
    }

    fn probability(&self, requests: u64, accepts: u64) -> f64 {
        if requests < self.options.min_requests {
            return 0.0;
        }
        let (r, a) = (requests as f64, accepts as f64);
        ((r - self.options.k * a) / (r + 1.0)).max(0.0)
    }

    /// Whether the breaker is rejecting some calls.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts a call and decides whether it may go out (`true`) or is rejected here.
    pub fn admit(&self) -> bool {
        if self.options.k <= 0.0 {
            return true;
        }
        let p = {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            w.advance(Instant::now());
            let (requests, accepts) = w.sums();
            let p = self.probability(requests, accepts);
            let current = w.current;
            w.buckets[current].0 += 1;
            p
        };
        self.set_open(p > 0.0, p);
        let admitted = p <= 0.0 || rand::random::<f64>() >= p;
        if !admitted && let Some(m) = &self.metrics {
            m.breaker_rejections
                .get_or_create(&UpstreamLabels::new(&self.upstream))
                .inc();
        }
        admitted
    }

    /// Records the outcome of an admitted call.
    pub fn record(&self, accepted: bool) {
        if accepted && self.options.k > 0.0 {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            w.advance(Instant::now());
            let current = w.current;
            w.buckets[current].1 += 1;
        }
    }

    fn set_open(&self, open: bool, p: f64) {
        if self.open.swap(open, Ordering::Relaxed) != open {
            if open {
                tracing::warn!(upstream = %self.upstream, reject_probability = p, "circuit breaker open: rejecting calls locally");
            } else {
                tracing::info!(upstream = %self.upstream, "circuit breaker closed");
            }
            if let Some(m) = &self.metrics {
                m.breaker_state
                    .get_or_create(&UpstreamLabels::new(&self.upstream))
                    .set(i64::from(open));
            }
        }
    }
}

/// Whether a response means the upstream accepted the call: any status but the overload and
/// failure ones. A status in the trailers of a non-trailers-only response is not seen here (the
/// headers count as an accept: the upstream did answer).
pub(crate) fn is_accept(response: &http::Response<tonic::body::Body>) -> bool {
    use tonic::Code;
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32);
    !matches!(
        code,
        Some(
            Code::Unavailable
                | Code::ResourceExhausted
                | Code::DeadlineExceeded
                | Code::Internal
                | Code::Unknown
        )
    )
}

/// The breaker as a tower service around a channel.
#[derive(Debug, Clone)]
pub struct Breaker<S> {
    inner: S,
    throttle: std::sync::Arc<Throttle>,
}

impl<S> Breaker<S> {
    /// Wraps `inner` with `throttle`.
    pub fn new(inner: S, throttle: std::sync::Arc<Throttle>) -> Self {
        Self { inner, throttle }
    }

    /// The throttle.
    pub fn throttle(&self) -> &std::sync::Arc<Throttle> {
        &self.throttle
    }
}

impl<S> Service<http::Request<tonic::body::Body>> for Breaker<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<
        Ready<Result<Self::Response, S::Error>>,
        BoxFuture<'static, Result<Self::Response, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if !self.throttle.admit() {
            let status = tonic::Status::unavailable(format!(
                "{}: circuit breaker for upstream `{}` is open (rejected locally; reject probability {:.2})",
                req.uri().path(),
                self.throttle.upstream,
                self.throttle.reject_probability(),
            ));
            let mut response = status.into_http::<tonic::body::Body>();
            response.extensions_mut().insert(LocalRejection);
            return Either::Left(ready(Ok(response)));
        }
        let throttle = self.throttle.clone();
        let future = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let result = future.await;
            throttle.record(matches!(&result, Ok(r) if is_accept(r)));
            result
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn resilience_breaker_opens_on_failures_and_closes_after_recovery() {
        let t = Throttle::new("inventory", BreakerOptions::default(), None);
        // Healthy: nothing rejected.
        for _ in 0..100 {
            assert!(t.admit());
            t.record(true);
        }
        assert!(!t.is_open());
        // The upstream fails every call for 5 s at 100 calls/s.
        let mut rejected = 0;
        for _ in 0..500 {
            if t.admit() {
                t.record(false);
            } else {
                rejected += 1;
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!(t.is_open());
        // The 100 accepts of the healthy second are still in the window (K x 100 = 200 calls of
        // headroom), then the rejection probability climbs.
        assert!(rejected > 100, "rejected only {rejected} of 500");
        assert!(t.reject_probability() > 0.5);
        // Healed: probes get through, failures slide out of the window, it closes.
        let mut admitted_late = 0;
        for i in 0..1_500 {
            if t.admit() {
                t.record(true);
                if i >= 1_400 {
                    admitted_late += 1;
                }
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!(!t.is_open(), "p = {}", t.reject_probability());
        assert_eq!(admitted_late, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn resilience_breaker_with_k_zero_is_off() {
        let t = Throttle::new(
            "x",
            BreakerOptions {
                k: 0.0,
                ..BreakerOptions::default()
            },
            None,
        );
        for _ in 0..1000 {
            assert!(t.admit());
            t.record(false);
        }
    }
}
