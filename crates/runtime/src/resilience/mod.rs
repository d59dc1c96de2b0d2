//! Client resilience: the layers every outgoing call of a [`crate::client::MeshChannel`] passes
//! through, per upstream (see `docs/resilience.md`):
//!
//! ```text
//! Propagate (deadline, trace) -> Retry (idempotent unary only, budget) -> Breaker (adaptive throttling) -> channel
//! ```
//!
//! The deadline is fixed first, so retries share one deadline rather than each getting a fresh
//! one; the breaker sits under the retries, so every attempt is counted and a retry storm against
//! a failing upstream is throttled like any other traffic.

pub mod breaker;
pub mod budget;
pub mod retry;

use std::collections::HashSet;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

pub use breaker::{Breaker, BreakerOptions, Throttle};
pub use budget::{BudgetOptions, RetryBudget};
pub use retry::{Retry, RetryOptions, RetryPolicy};

use crate::metrics::Metrics;

/// The `grpc-status` header, read from every answer by the retry and breaker layers (a static
/// name: no name parsed per call).
pub(crate) const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// Marks a response the breaker made locally (never retried).
#[derive(Debug, Clone, Copy)]
pub struct LocalRejection;

/// Per-upstream client settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResilienceOptions {
    /// Retries.
    pub retry: RetryOptions,
    /// The retry budget.
    pub budget: BudgetOptions,
    /// The breaker.
    pub breaker: BreakerOptions,
    /// Request paths (`/pkg.Service/Method`) that may be retried, besides the unary methods the
    /// contracts declare idempotent ([`idempotent_methods`]).
    pub idempotent: HashSet<String>,
}

impl Eq for ResilienceOptions {}

/// The paths of every unary method of the contracts whose proto declares
/// `option idempotency_level = IDEMPOTENT;` or `NO_SIDE_EFFECTS` (the protobuf standard option,
/// `google.protobuf.MethodOptions.idempotency_level`): the methods retried by default.
pub fn idempotent_methods() -> HashSet<String> {
    crate::descriptors::idempotent_method_paths()
}

/// Labels of per-upstream client series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// The upstream (module name or address).
    pub upstream: String,
}

impl UpstreamLabels {
    pub(crate) fn new(upstream: &str) -> Self {
        Self {
            upstream: upstream.to_string(),
        }
    }
}

/// Labels of the retry counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// The upstream.
    pub upstream: String,
    /// The request path.
    pub path: String,
}

/// Client-side resilience metrics, registered once per registry.
#[derive(Clone, Debug)]
pub struct ClientMetrics {
    /// `grpc_client_retries_total{upstream,path}`.
    pub retries: Family<RetryLabels, Counter>,
    /// `grpc_client_retry_budget_exhausted_total{upstream}`.
    pub budget_exhausted: Family<UpstreamLabels, Counter>,
    /// `grpc_client_breaker_rejections_total{upstream}`.
    pub breaker_rejections: Family<UpstreamLabels, Counter>,
    /// `grpc_client_breaker_state{upstream}`: 0 closed, 1 open (rejecting a fraction).
    pub breaker_state: Family<UpstreamLabels, Gauge>,
}

impl ClientMetrics {
    /// The client metrics of `metrics`' registry (registered on first use).
    pub fn of(metrics: &Metrics) -> Self {
        metrics.once(|metrics| {
                let m = Self {
                    retries: Family::default(),
                    budget_exhausted: Family::default(),
                    breaker_rejections: Family::default(),
                    breaker_state: Family::default(),
                };
                metrics.register(
                    "grpc_client_retries",
                    "Retries sent, by upstream and method",
                    m.retries.clone(),
                );
                metrics.register(
                    "grpc_client_retry_budget_exhausted",
                    "Retries not sent because the upstream's retry budget was spent",
                    m.budget_exhausted.clone(),
                );
                metrics.register(
                    "grpc_client_breaker_rejections",
                    "Calls rejected locally by the upstream's circuit breaker",
                    m.breaker_rejections.clone(),
                );
                metrics.register(
                    "grpc_client_breaker_state",
                    "Circuit breaker state per upstream: 0 closed, 1 open (rejecting a fraction of calls)",
                    m.breaker_state.clone(),
                );
                m
            })
    }
}
