//! Server protection, per service port: a hard concurrency limit and an adaptive load shedder,
//! so that overload degrades by refusing calls (`RESOURCE_EXHAUSTED`, or HTTP 429 for REST)
//! rather than by queueing until everything times out. Fault injection ([`crate::faults`]) runs
//! here too, after admission, so injected latency counts as work in flight.
//!
//! The shedder follows Kratos' BBR, with a queueing-delay allowance in place of its CPU gate (CPU
//! usage is not portable here): over a sliding window of buckets it keeps, per bucket, the calls
//! completed (`pass`) and their mean latency (`rt`). The capacity estimate is
//! `maxPass x (minRt + queue_target)`: Little's law at the best throughput seen, for calls that
//! take the best latency seen plus at most `queue_target` of waiting. Never below
//! `min_in_flight`; no estimate (no limit) until a bucket of the window is complete. A call
//! arriving while the calls in flight already reach the estimate is rejected.
//!
//! Why the allowance: with BBR's bare `maxPass x minRt`, any closed-loop load of more callers than
//! that product (256 clients each waiting for its answer) is "overload", although the queue is
//! bounded by the callers and every call is answered in time: the shedder refused a quarter of
//! the calls of a healthy server. With the allowance, callers that wait for their answers queue
//! at most their own number and are served (the estimate follows them: their latency is the
//! `minRt` it sees), while an open-loop excess, whose queue grows without bound, is still refused
//! once the waiting passes `queue_target` (1 s by default: a tenth of the default deadline, and
//! enough for 256 waiting callers of a server answering 360 calls/s, as a debug build on two busy
//! cores does; BBR's window remembers the best latency of a lighter load, so the allowance must
//! cover the whole wait of the heavier one). Refusals carry `retry-after: 1` (a header on REST, gRPC
//! metadata). Health checks and reflection are exempt.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::settings::{Problem, Setting, env_prefix};

/// Settings of a port's protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtectOptions {
    /// Calls in flight above which every new call is rejected; 0 = no limit.
    pub max_concurrency: usize,
    /// Adaptive shedding on or off.
    pub shed: bool,
    /// The shedder never rejects below this many calls in flight.
    pub min_in_flight: usize,
    /// The shedder's window.
    pub window: Duration,
    /// Buckets in the window.
    pub buckets: u32,
    /// The waiting a call may see on top of the best latency before the shedder refuses more.
    pub queue_target: Duration,
}

impl Default for ProtectOptions {
    fn default() -> Self {
        Self {
            max_concurrency: 0,
            shed: true,
            min_in_flight: 32,
            window: Duration::from_secs(5),
            buckets: 50,
            queue_target: Duration::from_secs(1),
        }
    }
}

/// `MESH_SHED`: the adaptive shedder of every port, `on` or `off`.
pub const SHED: Setting = Setting::text(
    "MESH_SHED",
    "on",
    "The adaptive load shedder of every gRPC port: `on` or `off`.",
);
/// `MESH_SHED_MIN_IN_FLIGHT`: the shedder never refuses below this many calls in flight.
pub const SHED_MIN_IN_FLIGHT: Setting = Setting::number(
    "MESH_SHED_MIN_IN_FLIGHT",
    1..=u64::MAX,
    "32",
    "The shedder never refuses while fewer calls than this are in flight.",
);
/// `MESH_SHED_QUEUE_TARGET`: how long callers may wait in line before the shedder refuses.
pub const SHED_QUEUE_TARGET: Setting = Setting::duration(
    "MESH_SHED_QUEUE_TARGET",
    "1s",
    "How much queueing the shedder allows before it refuses (callers that wait are served).",
);

impl ProtectOptions {
    /// The settings of `service` from the environment: `MESH_<SERVICE>_MAX_CONCURRENCY`
    /// (0 = off), `MESH_SHED` (`on`/`off`), `MESH_SHED_MIN_IN_FLIGHT` and
    /// `MESH_SHED_QUEUE_TARGET` (a duration). Every bad one is named.
    pub fn from_env(
        service: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<Problem>> {
        let mut o = Self::default();
        let mut problems = Vec::new();
        let mut refuse = |setting: &str, value: &str, reason: &str| {
            problems.push(Problem {
                setting: setting.to_string(),
                value: value.to_string(),
                reason: reason.to_string(),
            });
        };
        let var = format!("{}_MAX_CONCURRENCY", env_prefix(service));
        if let Some(v) = env(&var) {
            match v.trim().parse() {
                Ok(n) => o.max_concurrency = n,
                Err(_) => refuse(&var, &v, "expected a whole number (0 = no limit)"),
            }
        }
        if let Some(v) = env(SHED.name) {
            match v.trim() {
                "on" | "true" | "1" => o.shed = true,
                "off" | "false" | "0" => o.shed = false,
                _ => refuse(SHED.name, &v, "expected `on` or `off`"),
            }
        }
        if let Some(v) = env(SHED_MIN_IN_FLIGHT.name) {
            match v.trim().parse().ok().filter(|n| *n >= 1) {
                Some(n) => o.min_in_flight = n,
                None => refuse(SHED_MIN_IN_FLIGHT.name, &v, "expected a whole number >= 1"),
            }
        }
        if let Some(v) = env(SHED_QUEUE_TARGET.name) {
            match humantime::parse_duration(v.trim()) {
                Ok(d) => o.queue_target = d,
                Err(e) => refuse(
                    SHED_QUEUE_TARGET.name,
                    &v,
                    &format!("expected a duration such as 50ms ({e})"),
                ),
            }
        }
        if problems.is_empty() {
            Ok(o)
        } else {
            Err(problems)
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    pass: u64,
    rt_sum_us: u64,
}

#[derive(Debug)]
struct Window {
    buckets: Vec<Bucket>,
    current: usize,
    started: Instant,
    bucket_len: Duration,
    /// [`Shedder::estimate`] of the complete buckets, kept until the window moves: it reads
    /// only buckets no call writes to any more, so it is computed once per bucket, not per call.
    estimate: Option<usize>,
}

impl Window {
    fn advance(&mut self, now: Instant) {
        let n = self.buckets.len();
        let mut steps = 0;
        while now.saturating_duration_since(self.started) >= self.bucket_len && steps <= n {
            self.current = (self.current + 1) % n;
            self.buckets[self.current] = Bucket::default();
            self.started += self.bucket_len;
            steps += 1;
        }
        if steps > n {
            self.started = now;
        }
        if steps > 0 {
            self.estimate = None;
        }
    }
}

/// The shedder and limit of one port.
#[derive(Debug)]
pub struct Shedder {
    options: ProtectOptions,
    in_flight: AtomicUsize,
    window: Mutex<Window>,
}

impl Shedder {
    /// A shedder with `options`.
    pub fn new(options: ProtectOptions) -> Self {
        let buckets = options.buckets.max(2);
        Self {
            options,
            in_flight: AtomicUsize::new(0),
            window: Mutex::new(Window {
                buckets: vec![Bucket::default(); buckets as usize],
                current: 0,
                started: Instant::now(),
                bucket_len: options.window / buckets,
                estimate: None,
            }),
        }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The calls the service can have in flight: `maxPass x (minRt + queue_target)` over the
    /// complete buckets of the window, at least `min_in_flight`; unlimited with no data yet.
    pub fn capacity(&self) -> usize {
        match self.estimate() {
            0 => usize::MAX,
            estimate => estimate.max(self.options.min_in_flight),
        }
    }

    /// `maxPass x (minRt + queue_target)` over the complete buckets of the window (0 with no
    /// data yet).
    pub fn estimate(&self) -> usize {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.advance(Instant::now());
        if let Some(estimate) = w.estimate {
            return estimate;
        }
        let current = w.current;
        let (mut max_pass, mut min_rt_us) = (0u64, f64::INFINITY);
        for (i, b) in w.buckets.iter().enumerate() {
            if i == current || b.pass == 0 {
                continue;
            }
            max_pass = max_pass.max(b.pass);
            min_rt_us = min_rt_us.min(b.rt_sum_us as f64 / b.pass as f64);
        }
        let per_sec = max_pass as f64 / w.bucket_len.as_secs_f64();
        let estimate = if max_pass == 0 {
            0.0
        } else {
            (per_sec * (min_rt_us / 1e6 + self.options.queue_target.as_secs_f64())).ceil()
        };
        let estimate = estimate as usize;
        w.estimate = Some(estimate);
        estimate
    }

    /// Admits a call (the guard records its end), or says why it is refused.
    pub fn admit(self: &Arc<Self>) -> Result<Admitted, String> {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        if self.options.max_concurrency > 0 && in_flight >= self.options.max_concurrency {
            return Err(format!(
                "server overloaded: {in_flight} calls in flight reach the concurrency limit {}",
                self.options.max_concurrency
            ));
        }
        if self.options.shed {
            let capacity = self.capacity();
            if in_flight >= capacity {
                return Err(format!(
                    "server overloaded: {in_flight} calls in flight reach the estimated capacity {capacity}; retry later"
                ));
            }
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            shedder: self.clone(),
            start: Instant::now(),
        })
    }
}

/// An admitted call; dropping it records its latency and frees its slot.
#[derive(Debug)]
pub struct Admitted {
    shedder: Arc<Shedder>,
    start: Instant,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.shedder.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        let rt = now.saturating_duration_since(self.start).as_micros() as u64;
        let mut w = self
            .shedder
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        w.advance(now);
        let current = w.current;
        let b = &mut w.buckets[current];
        b.pass += 1;
        b.rt_sum_us += rt.max(1);
    }
}

/// The protection layer of one port.
#[derive(Debug, Clone)]
pub struct ProtectLayer {
    service: Arc<str>,
    shedder: Arc<Shedder>,
}

impl ProtectLayer {
    /// Protection for the port of `service` (its module name: faults are looked up by it).
    pub fn new(service: &str, options: ProtectOptions) -> Self {
        Self {
            service: service.into(),
            shedder: Arc::new(Shedder::new(options)),
        }
    }

    /// The shedder.
    pub fn shedder(&self) -> &Arc<Shedder> {
        &self.shedder
    }
}

impl<S> Layer<S> for ProtectLayer {
    type Service = Protect<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Protect {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ProtectLayer`] produces.
#[derive(Debug, Clone)]
pub struct Protect<S> {
    inner: S,
    layer: ProtectLayer,
}

fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

fn refuse(is_grpc: bool, status: tonic::Status) -> http::Response<tonic::body::Body> {
    let retry_after = status.code() == tonic::Code::ResourceExhausted;
    if is_grpc {
        let mut response = status.into_http::<tonic::body::Body>();
        if retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
        }
        return response;
    }
    let body = serde_json::json!({"code": status.code() as i32, "message": status.message()});
    let mut response = http::Response::new(tonic::body::Body::new(
        http_body_util::Full::new(bytes::Bytes::from(body.to_string()))
            .map_err(|never: std::convert::Infallible| match never {}),
    ));
    *response.status_mut() = if status.code() == tonic::Code::ResourceExhausted {
        http::StatusCode::TOO_MANY_REQUESTS
    } else {
        http::StatusCode::SERVICE_UNAVAILABLE
    };
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
    response
}

/// The header (REST) and metadata key (gRPC) telling a refused caller when to try again, in
/// seconds.
const RETRY_AFTER: http::header::HeaderName = http::header::RETRY_AFTER;

use http_body_util::BodyExt as _;

impl<S, B> Service<http::Request<B>> for Protect<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = ProtectFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if exempt(path) {
            return ProtectFuture::Plain {
                inner: self.inner.call(req),
            };
        }
        let is_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let admitted = match self.layer.shedder.admit() {
            Ok(a) => a,
            Err(message) => {
                return ProtectFuture::Ready {
                    response: Some(refuse(is_grpc, tonic::Status::resource_exhausted(message))),
                };
            }
        };
        let fault = crate::faults::global()
            .any()
            .then(|| crate::faults::global().lookup(&self.layer.service, path))
            .flatten();
        match fault {
            None => ProtectFuture::Admitted {
                inner: self.inner.call(req),
                _admitted: admitted,
            },
            Some(fault) => {
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let path = path.to_string();
                ProtectFuture::Boxed {
                    inner: Box::pin(async move {
                        let _admitted = admitted;
                        if !fault.delay.is_zero() {
                            tokio::time::sleep(fault.delay).await;
                        }
                        if fault.error_rate > 0.0 && rand::random::<f64>() < fault.error_rate {
                            return Ok(refuse(
                                is_grpc,
                                tonic::Status::new(
                                    fault.code,
                                    format!("{path}: fault injected (fault switch {fault})"),
                                ),
                            ));
                        }
                        inner.call(req).await
                    }),
                }
            }
        }
    }
}

pub use future::ProtectFuture;

#[allow(missing_docs)]
mod future {
    use super::*;

    pin_project_lite::pin_project! {
        /// The response future of [`Protect`].
        #[project = ProtectProj]
        pub enum ProtectFuture<F, E> {
            /// Exempt.
            Plain {
                #[pin]
                inner: F,
            },
            /// Admitted; the slot is held until the handler answers.
            Admitted {
                #[pin]
                inner: F,
                _admitted: Admitted,
            },
            /// With a fault switch.
            Boxed {
                inner: BoxFuture<'static, Result<http::Response<tonic::body::Body>, E>>,
            },
            /// Refused.
            Ready {
                response: Option<http::Response<tonic::body::Body>>,
            },
        }
    }
}

impl<F, E> Future for ProtectFuture<F, E>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = Result<http::Response<tonic::body::Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            future::ProtectProj::Plain { inner } | future::ProtectProj::Admitted { inner, .. } => {
                inner.poll(cx)
            }
            future::ProtectProj::Boxed { inner } => inner.as_mut().poll(cx),
            future::ProtectProj::Ready { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_options_from_env_name_the_variable() {
        let env = |k: &str| match k {
            "MESH_IOT_GATEWAY_MAX_CONCURRENCY" => Some("x".to_string()),
            _ => None,
        };
        let err = ProtectOptions::from_env("iot-gateway", env).unwrap_err();
        assert_eq!(
            err[0].setting, "MESH_IOT_GATEWAY_MAX_CONCURRENCY",
            "{err:?}"
        );
        let err = ProtectOptions::from_env("a", |k| match k {
            "MESH_SHED" => Some("maybe".into()),
            "MESH_SHED_QUEUE_TARGET" => Some("soon".into()),
            _ => None,
        })
        .unwrap_err();
        let named: Vec<_> = err.iter().map(|p| p.setting.as_str()).collect();
        assert_eq!(named, ["MESH_SHED", "MESH_SHED_QUEUE_TARGET"]);
        assert_eq!(
            ProtectOptions::from_env("a", |_| None).unwrap(),
            ProtectOptions::default()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shed_never_refuses_callers_that_wait_for_their_answers() {
        // A closed loop of 256 callers on a server that answers 8,000 calls/s: each call waits
        // for the 255 before it (32 ms). Bare BBR (no allowance) would call that overload.
        let s = Arc::new(Shedder::new(ProtectOptions::default()));
        let mut in_flight: std::collections::VecDeque<Admitted> = (0..256)
            .map(|_| s.admit().expect("cold start: no limit"))
            .collect();
        for _ in 0..8_000 * 10 {
            tokio::time::advance(Duration::from_micros(125)).await;
            in_flight.pop_front();
            in_flight.push_back(s.admit().unwrap_or_else(|e| panic!("refused: {e}")));
        }
        assert!(s.capacity() > 256, "capacity {}", s.capacity());
        // An open-loop excess is still refused: at twice the rate for 3 s the queue grows by
        // 8,000 calls a second, past the allowance (1 s of waiting, about 8,000 calls).
        let mut refused = 0;
        for _ in 0..8_000 * 3 {
            tokio::time::advance(Duration::from_micros(125)).await;
            in_flight.pop_front();
            for _ in 0..2 {
                match s.admit() {
                    Ok(a) => in_flight.push_back(a),
                    Err(e) => {
                        assert!(e.contains("estimated capacity"), "{e}");
                        refused += 1;
                    }
                }
            }
        }
        assert!(
            refused > 10_000,
            "refused {refused} of 48,000 at twice the capacity"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shed_capacity_is_max_pass_times_min_rt() {
        let s = Arc::new(Shedder::new(ProtectOptions {
            min_in_flight: 50,
            window: Duration::from_secs(1),
            buckets: 10,
            queue_target: Duration::ZERO,
            ..ProtectOptions::default()
        }));
        // No data yet: no limit.
        assert_eq!(s.capacity(), usize::MAX);
        // 100 ms buckets, 50 calls of 20 ms each per bucket: 500/s x 20 ms = 10 in flight.
        for _ in 0..5 {
            let calls: Vec<_> = (0..50).map(|_| s.admit().unwrap()).collect();
            tokio::time::advance(Duration::from_millis(20)).await;
            drop(calls);
            tokio::time::advance(Duration::from_millis(80)).await;
        }
        assert_eq!(s.estimate(), 10);
        // Never below the floor.
        assert_eq!(s.capacity(), 50);
        let held: Vec<_> = (0..50).map(|_| s.admit().unwrap()).collect();
        assert!(s.admit().unwrap_err().contains("estimated capacity 50"));
        drop(held);
        assert!(s.admit().is_ok());
    }
}
