//! The circuit breaker of one upstream: client-side adaptive throttling (Google SRE book,
//! "Handling Overload").
//!
//! Over a sliding window the client counts `requests` (calls it made or rejected itself) and
//! `accepts` (calls the upstream answered without an overload or failure signal). Each new call is
//! rejected locally with probability `max(0, (requests - K x accepts) / (requests + 1))`. While
//! the upstream is healthy, `requests ~ accepts` and nothing is rejected; when it fails, the
//! rejection probability climbs towards 1 but never reaches it, so a trickle of calls keeps
//! probing and the breaker closes by itself as accepts come back and the failures slide out of the
//! window. `K = 2` lets the upstream see up to twice the calls it accepts; lower is more
//! aggressive. Below `min_requests` calls in the window nothing is rejected.
//!
//! **Only the upstream's own answers count** ([`Verdict`]): an admitted call is counted when its
//! outcome is known, as an accept or a failure; a call that ends without an answer from the
//! upstream for a local reason (the caller gave up or dropped it before its deadline, the local
//! transport refused it as overloaded: a response marked [`super::LocalRejection`]) is not counted
//! at all. So local queueing, pool limits and the breaker's own rejections never look like the
//! upstream failing, and a burst of calls still in flight is not a burst of failures. Failures
//! are: a transport failure (no answer: refused, reset), the statuses `UNAVAILABLE`,
//! `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN` answered by the upstream, a
//! `CANCELLED` answered after the call's deadline (tonic servers' answer to an expired
//! `grpc-timeout`), and no answer at all by the call's deadline (`grpc-timeout`, which
//! [`crate::client::Propagate`] always sets): the breaker then ends the call with
//! `DEADLINE_EXCEEDED` itself, so no call waits on a silent upstream for ever.
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

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::{ClientMetrics, GRPC_STATUS, LocalRejection, UpstreamLabels};
use crate::grpc_timeout::{self, GRPC_TIMEOUT_HEADER};

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
    /// The upstream's series, resolved once (no label formatting per call).
    rejections: Option<Counter>,
    state: Option<Gauge>,
}

/// What an admitted call's outcome tells the breaker about the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream answered, without an overload or failure signal.
    Accept,
    /// The upstream failed the call: no answer (transport failure, nothing by the deadline) or an
    /// overload or failure status of its own.
    Failure,
    /// Not the upstream's answer (a local rejection, or the caller dropped the call): not counted.
    Neutral,
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
        let upstream = upstream.into();
        let labels = UpstreamLabels::new(&upstream);
        Self {
            rejections: metrics
                .as_ref()
                .map(|m| m.breaker_rejections.get_or_create(&labels).clone()),
            state: metrics
                .as_ref()
                .map(|m| m.breaker_state.get_or_create(&labels).clone()),
            upstream,
            window: Mutex::new(Window {
                buckets: vec![(0, 0); buckets as usize],
                current: 0,
                started: Instant::now(),
                bucket_len: options.window / buckets,
            }),
            options,
            open: AtomicBool::new(false),
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

    /// Decides whether a call may go out (`true`) or is rejected here; a rejected call counts as
    /// a request at once, an admitted one when its outcome is [`record`](Self::record)ed.
    pub fn admit(&self) -> bool {
        if self.options.k <= 0.0 {
            return true;
        }
        let (p, admitted) = {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            w.advance(Instant::now());
            let (requests, accepts) = w.sums();
            let p = self.probability(requests, accepts);
            let admitted = p <= 0.0 || rand::random::<f64>() >= p;
            if !admitted {
                let current = w.current;
                w.buckets[current].0 += 1;
            }
            (p, admitted)
        };
        self.set_open(p > 0.0, p);
        if !admitted && let Some(c) = &self.rejections {
            c.inc();
        }
        admitted
    }

    /// Records the outcome of an admitted call: an accept or a failure counts as a request (and an
    /// accept as an accept); a neutral outcome is not counted.
    pub fn record(&self, verdict: Verdict) {
        if self.options.k <= 0.0 || verdict == Verdict::Neutral {
            return;
        }
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.advance(Instant::now());
        let current = w.current;
        let bucket = &mut w.buckets[current];
        bucket.0 += 1;
        if verdict == Verdict::Accept {
            bucket.1 += 1;
        }
    }

    fn set_open(&self, open: bool, p: f64) {
        if self.open.swap(open, Ordering::Relaxed) != open {
            if open {
                tracing::warn!(upstream = %self.upstream, reject_probability = p, "circuit breaker open: rejecting calls locally");
            } else {
                tracing::info!(upstream = %self.upstream, "circuit breaker closed");
            }
            if let Some(g) = &self.state {
                g.set(i64::from(open));
            }
        }
    }
}

/// What the outcome of a call sent at `sent` with `deadline` says about the upstream (see the
/// module docs). A status in the trailers of a non-trailers-only response is not seen here (the
/// headers count as an accept: the upstream did answer).
pub fn verdict<E>(
    result: &Result<http::Response<tonic::body::Body>, E>,
    deadline: Option<Instant>,
) -> Verdict {
    use tonic::Code;
    let response = match result {
        Err(_) => return Verdict::Failure,
        Ok(r) => r,
    };
    if response.extensions().get::<LocalRejection>().is_some() {
        return Verdict::Neutral;
    }
    let Some(code) = response
        .headers()
        .get(&GRPC_STATUS)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
    else {
        return Verdict::Accept;
    };
    match code {
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Internal
        | Code::Unknown => Verdict::Failure,
        Code::Cancelled if deadline.is_some_and(|d| Instant::now() >= d) => Verdict::Failure,
        _ => Verdict::Accept,
    }
}

/// How long past a call's deadline the breaker waits for the upstream's own answer (tonic servers
/// answer an expired `grpc-timeout` themselves) before it ends the call as unanswered.
pub const DEADLINE_GRACE: Duration = Duration::from_millis(20);

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
        let deadline = req
            .headers()
            .get(&GRPC_TIMEOUT_HEADER)
            .and_then(grpc_timeout::from_header)
            .map(|d| Instant::now() + d);
        // For the message if the deadline passes (a shared `Bytes`: no copy).
        let path = req.uri().path_and_query().cloned();
        let throttle = self.throttle.clone();
        let future = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let result = match deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline + DEADLINE_GRACE, future).await {
                        Ok(result) => result,
                        Err(_) => {
                            throttle.record(Verdict::Failure);
                            let status = tonic::Status::deadline_exceeded(format!(
                                "{}: upstream `{}` did not answer within the call's deadline",
                                path.as_ref().map_or("", |p| p.path()),
                                throttle.upstream,
                            ));
                            let mut response = status.into_http::<tonic::body::Body>();
                            // Made here: never retried (the deadline is spent anyway).
                            response.extensions_mut().insert(LocalRejection);
                            return Ok(response);
                        }
                    }
                }
                None => future.await,
            };
            throttle.record(verdict(&result, deadline));
            result
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn resilience_breaker_opens_on_failures_and_closes_after_recovery() {
        let t = Throttle::new("inventory", BreakerOptions::default(), None);
        // Healthy: nothing rejected.
        for _ in 0..100 {
            assert!(t.admit());
            t.record(Verdict::Accept);
        }
        assert!(!t.is_open());
        // The upstream fails every call for 5 s at 100 calls/s.
        let mut rejected = 0;
        for _ in 0..500 {
            if t.admit() {
                t.record(Verdict::Failure);
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
                t.record(Verdict::Accept);
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
            t.record(Verdict::Failure);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn resilience_breaker_ignores_neutral_outcomes() {
        let t = Throttle::new("x", BreakerOptions::default(), None);
        // Calls dropped by their callers or refused locally say nothing about the upstream.
        for _ in 0..10_000 {
            assert!(t.admit());
            t.record(Verdict::Neutral);
        }
        assert_eq!(t.reject_probability(), 0.0);
    }

    fn grpc_response(code: Option<tonic::Code>) -> http::Response<tonic::body::Body> {
        let mut response = http::Response::new(tonic::body::Body::empty());
        if let Some(code) = code {
            response
                .headers_mut()
                .insert("grpc-status", (code as i32).into());
        }
        response
    }

    #[tokio::test(start_paused = true)]
    async fn resilience_breaker_verdicts_count_only_the_upstreams_answers() {
        use tonic::Code;
        let ok: Result<_, ()> = Ok(grpc_response(None));
        assert_eq!(verdict(&ok, None), Verdict::Accept);
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::PermissionDenied,
        ] {
            assert_eq!(
                verdict::<()>(&Ok(grpc_response(Some(code))), None),
                Verdict::Accept
            );
        }
        for code in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unknown,
        ] {
            assert_eq!(
                verdict::<()>(&Ok(grpc_response(Some(code))), None),
                Verdict::Failure,
                "{code:?}"
            );
        }
        // No answer at all.
        assert_eq!(verdict::<()>(&Err(()), None), Verdict::Failure);
        // Made locally (a pool refusing the call, the breaker itself): not the upstream's answer.
        let mut local = grpc_response(Some(Code::ResourceExhausted));
        local.extensions_mut().insert(LocalRejection);
        assert_eq!(verdict::<()>(&Ok(local), None), Verdict::Neutral);
        // CANCELLED is the caller's business, unless the deadline had passed (a tonic server's
        // answer to an expired grpc-timeout).
        let now = Instant::now();
        let cancelled = || Ok::<_, ()>(grpc_response(Some(Code::Cancelled)));
        assert_eq!(
            verdict(&cancelled(), Some(now + Duration::from_secs(1))),
            Verdict::Accept
        );
        assert_eq!(verdict(&cancelled(), Some(now)), Verdict::Failure);
    }

    type FakeResult = Result<http::Response<tonic::body::Body>, std::convert::Infallible>;

    /// A fake upstream for the control-loop tests: answers after `latency`; while `capacity` is
    /// set, it answers `RESOURCE_EXHAUSTED` to calls beyond that many per second.
    #[derive(Default)]
    struct Fake {
        latency: Duration,
        capacity: std::sync::Mutex<Option<(u64, u64)>>,
        received: AtomicU64,
        answered_ok: AtomicU64,
    }

    impl Fake {
        fn service(
            self: &Arc<Self>,
        ) -> impl Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future = BoxFuture<'static, FakeResult>,
        > + Clone
        + Send
        + 'static {
            let fake = self.clone();
            tower::service_fn(move |_req: http::Request<tonic::body::Body>| {
                let fake = fake.clone();
                let fut: BoxFuture<'static, _> = Box::pin(async move {
                    fake.received.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(fake.latency).await;
                    let refused = {
                        let mut cap = fake.capacity.lock().unwrap();
                        match cap.as_mut() {
                            // (per second, taken this second; `new_second` resets it).
                            Some((limit, taken)) if *taken >= *limit => true,
                            Some((_, taken)) => {
                                *taken += 1;
                                false
                            }
                            None => false,
                        }
                    };
                    if refused {
                        return Ok(grpc_response(Some(tonic::Code::ResourceExhausted)));
                    }
                    fake.answered_ok.fetch_add(1, Ordering::Relaxed);
                    Ok(grpc_response(None))
                });
                fut
            })
        }

        fn new_second(&self) {
            if let Some((_, taken)) = self.capacity.lock().unwrap().as_mut() {
                *taken = 0;
            }
        }
    }

    fn request() -> http::Request<tonic::body::Body> {
        let mut req = http::Request::new(tonic::body::Body::empty());
        *req.uri_mut() = "/pkg.S/M".parse().unwrap();
        req.headers_mut()
            .insert(GRPC_TIMEOUT_HEADER, http::HeaderValue::from_static("10S"));
        req
    }

    #[tokio::test(start_paused = true)]
    async fn resilience_breaker_never_opens_for_a_healthy_upstream_under_a_burst_of_256() {
        let fake = Arc::new(Fake {
            latency: Duration::from_millis(30),
            ..Fake::default()
        });
        let throttle = Arc::new(Throttle::new("healthy", BreakerOptions::default(), None));
        let breaker = Breaker::new(fake.service(), throttle.clone());
        // From a cold start, 20 rounds of 256 callers at once, each round waiting for the
        // upstream's answers (30 ms): every call is in flight together, none has an answer yet.
        for _ in 0..20 {
            let calls: Vec<_> = (0..256)
                .map(|_| {
                    let b = breaker.clone();
                    tokio::spawn(async move { b.oneshot(request()).await.unwrap() })
                })
                .collect();
            for call in calls {
                let response = call.await.unwrap();
                assert!(response.extensions().get::<LocalRejection>().is_none());
                assert!(response.headers().get("grpc-status").is_none());
            }
            assert!(!throttle.is_open());
        }
        assert_eq!(fake.answered_ok.load(Ordering::Relaxed), 20 * 256);
    }

    #[tokio::test(start_paused = true)]
    async fn resilience_breaker_throttles_an_overloaded_upstream_and_recovers_when_it_heals() {
        // The upstream can take 100 calls/s and refuses the rest; callers offer 400 calls/s (open
        // model). Unthrottled, it would see 400/s and refuse three quarters.
        let fake = Arc::new(Fake {
            latency: Duration::from_millis(5),
            capacity: std::sync::Mutex::new(Some((100, 0))),
            ..Fake::default()
        });
        let throttle = Arc::new(Throttle::new("overloaded", BreakerOptions::default(), None));
        let breaker = Breaker::new(fake.service(), throttle.clone());
        let run = |seconds: u64| {
            let breaker = breaker.clone();
            let fake = fake.clone();
            async move {
                let mut calls = Vec::new();
                for tick in 0..seconds * 400 {
                    if tick % 400 == 0 {
                        fake.new_second();
                    }
                    let b = breaker.clone();
                    calls.push(tokio::spawn(
                        async move { b.oneshot(request()).await.unwrap() },
                    ));
                    tokio::time::sleep(Duration::from_micros(2_500)).await;
                }
                let mut rejected_locally = 0u64;
                for call in calls {
                    if call
                        .await
                        .unwrap()
                        .extensions()
                        .get::<LocalRejection>()
                        .is_some()
                    {
                        rejected_locally += 1;
                    }
                }
                rejected_locally
            }
        };
        // 20 s overloaded: after the first window, the upstream sees about K x what it accepts.
        run(10).await;
        let received_before = fake.received.load(Ordering::Relaxed);
        let ok_before = fake.answered_ok.load(Ordering::Relaxed);
        let rejected = run(10).await;
        let received = fake.received.load(Ordering::Relaxed) - received_before;
        let ok = fake.answered_ok.load(Ordering::Relaxed) - ok_before;
        assert!(throttle.is_open());
        // It took what it can (100/s), and was offered about twice that, not four times.
        assert!((900..=1_000).contains(&ok), "accepted {ok} in 10 s");
        assert!(
            (1_500..=2_600).contains(&received),
            "the upstream received {received} calls in 10 s (offered 4,000)"
        );
        assert!(rejected >= 1_400, "{rejected} rejected locally");
        // Healed: the breaker closes within a window and every call goes through again.
        *fake.capacity.lock().unwrap() = None;
        run(12).await;
        assert!(!throttle.is_open(), "p = {}", throttle.reject_probability());
        assert_eq!(run(2).await, 0, "calls rejected after the upstream healed");
    }

    #[tokio::test(start_paused = true)]
    async fn resilience_breaker_ends_an_unanswered_call_at_its_deadline_as_a_failure() {
        let silent = tower::service_fn(|_req: http::Request<tonic::body::Body>| async {
            std::future::pending::<
                Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
            >()
            .await
        });
        let throttle = Arc::new(Throttle::new("silent", BreakerOptions::default(), None));
        let breaker = Breaker::new(silent, throttle.clone());
        let mut req = request();
        req.headers_mut()
            .insert(GRPC_TIMEOUT_HEADER, http::HeaderValue::from_static("100m"));
        let started = Instant::now();
        let response = breaker.clone().oneshot(req).await.unwrap();
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100) + DEADLINE_GRACE
        );
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            status.message().contains("`silent` did not answer"),
            "{}",
            status.message()
        );
        // Counted as a failure: 20 of them open the breaker.
        for _ in 0..30 {
            let mut req = request();
            req.headers_mut()
                .insert(GRPC_TIMEOUT_HEADER, http::HeaderValue::from_static("10m"));
            let _ = breaker.clone().oneshot(req).await;
        }
        assert!(throttle.reject_probability() > 0.5);
    }
}
