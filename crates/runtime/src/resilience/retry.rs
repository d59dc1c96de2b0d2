//! Retries of idempotent unary calls, with exponential backoff, full jitter, a budget, and never
//! beyond the call's deadline.
//!
//! Only methods in the upstream's idempotent set are retried (see [`super::idempotent_methods`]):
//! their request body (one unary message) is buffered so it can be sent again; no other call's
//! body is touched, and streams are never retried. A call is retried when the attempt failed at
//! the transport (no answer) or answered `UNAVAILABLE` in a trailers-only response, unless the
//! circuit breaker rejected it locally. Before each retry the budget must give a token, and the
//! backoff must end before the deadline (read from `grpc-timeout`, which [`crate::client::Propagate`]
//! always sets); each attempt carries what remains of the deadline.

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use http_body_util::BodyExt as _;
use tokio::time::Instant;
use tower::ServiceExt as _;
use tower_service::Service;

use super::budget::RetryBudget;
use super::{ClientMetrics, GRPC_STATUS, LocalRejection, UpstreamLabels};
use crate::grpc_timeout::{self, GRPC_TIMEOUT_HEADER};

/// Settings of [`Retry`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryOptions {
    /// Attempts in all, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Backoff cap before the first retry; doubles per retry (full jitter: a random wait up to it).
    pub initial_backoff: Duration,
    /// The largest backoff cap.
    pub max_backoff: Duration,
}

impl Default for RetryOptions {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// What the retry layer of one upstream shares between its clones.
#[derive(Debug)]
pub struct RetryPolicy {
    /// Upstream name, for metrics and logs.
    pub upstream: String,
    /// Settings.
    pub options: RetryOptions,
    /// Request paths that may be retried (`/pkg.Service/Method`).
    pub idempotent: HashSet<String>,
    /// The budget.
    pub budget: RetryBudget,
    /// Where retries are counted.
    pub metrics: Option<ClientMetrics>,
}

/// The retry layer as a tower service around a channel.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<RetryPolicy>,
}

impl<S> Retry<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, policy: Arc<RetryPolicy>) -> Self {
        Self { inner, policy }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

fn retryable<E>(result: &Result<http::Response<tonic::body::Body>, E>) -> bool {
    match result {
        Err(_) => true,
        Ok(r) => {
            r.extensions().get::<LocalRejection>().is_none()
                && r.headers()
                    .get(&GRPC_STATUS)
                    .is_some_and(|v| v.as_bytes() == b"14")
        }
    }
}

impl<S> Service<http::Request<tonic::body::Body>> for Retry<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let policy = self.policy.clone();
        policy.budget.deposit();
        if policy.options.max_attempts <= 1 || !policy.idempotent.contains(req.uri().path()) {
            return Either::Left(self.inner.call(req));
        }
        // The ready service takes this call; the clone serves later calls.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            let start = Instant::now();
            let (parts, body) = req.into_parts();
            let body: Bytes = match body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(status) => return Ok(status.into_http()),
            };
            let deadline = parts
                .headers
                .get(&GRPC_TIMEOUT_HEADER)
                .and_then(grpc_timeout::from_header)
                .map(|d| start + d);
            let build = |remaining: Option<Duration>| {
                let mut req = http::Request::new(tonic::body::Body::new(
                    http_body_util::Full::new(body.clone())
                        .map_err(|never: std::convert::Infallible| match never {}),
                ));
                *req.method_mut() = parts.method.clone();
                *req.uri_mut() = parts.uri.clone();
                *req.version_mut() = parts.version;
                *req.headers_mut() = parts.headers.clone();
                if let Some(remaining) = remaining {
                    req.headers_mut()
                        .insert(GRPC_TIMEOUT_HEADER, grpc_timeout::header_value(remaining));
                }
                req
            };
            // Borrowed: only a retry needs it (metrics, logs).
            let path = parts.uri.path();
            let mut result = inner.call(build(None)).await;
            let mut attempt = 1;
            while attempt < policy.options.max_attempts && retryable(&result) {
                let cap = policy
                    .options
                    .initial_backoff
                    .saturating_mul(1 << (attempt - 1).min(16))
                    .min(policy.options.max_backoff);
                let backoff = cap.mul_f64(rand::random::<f64>());
                let resume = Instant::now() + backoff;
                // A retry must have time left to be worth sending.
                if deadline.is_some_and(|d| resume + Duration::from_millis(1) >= d) {
                    break;
                }
                if !policy.budget.withdraw() {
                    if let Some(m) = &policy.metrics {
                        m.budget_exhausted
                            .get_or_create(&UpstreamLabels::new(&policy.upstream))
                            .inc();
                    }
                    tracing::debug!(upstream = %policy.upstream, path = %path, "retry budget spent; not retrying");
                    break;
                }
                if let Some(m) = &policy.metrics {
                    m.retries
                        .get_or_create(&super::RetryLabels {
                            upstream: policy.upstream.clone(),
                            path: path.to_owned(),
                        })
                        .inc();
                }
                tracing::debug!(upstream = %policy.upstream, path = %path, attempt, backoff_us = backoff.as_micros() as u64, "retrying");
                tokio::time::sleep_until(resume).await;
                let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if remaining.is_some_and(|r| r.is_zero()) {
                    break;
                }
                result = match inner.ready().await {
                    Ok(svc) => svc.call(build(remaining)).await,
                    Err(e) => Err(e),
                };
                attempt += 1;
            }
            result
        }))
    }
}
