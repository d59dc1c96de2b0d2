//! Prometheus metrics: one registry per process, served by the admin server at `/metrics`.
//!
//! RPC metrics follow the grpc-prometheus names so existing dashboards work:
//! `grpc_server_started_total`, `grpc_server_handled_total{grpc_code}`,
//! `grpc_server_handling_seconds` (histogram) and `grpc_server_in_flight`, each labelled with
//! `grpc_service` and `grpc_method`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The process's metrics registry. Cheap to clone; every clone is the same registry.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<RwLock<Registry>>,
    /// Sets of series registered once per registry, by type (e.g. the client resilience series
    /// of [`crate::resilience::ClientMetrics::of`], the token refusals of
    /// [`crate::auth::AuthRejections`], the event series of
    /// [`crate::event_metrics::EventMetrics::of`]), see [`Metrics::once`].
    sets: Arc<Mutex<HashMap<TypeId, Box<dyn Any + Send + Sync>>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The set of series of type `T` of this registry: built (and registered) by `init` on the
    /// first call, a clone of it afterwards. Lets a layer above keep its series here without
    /// this module knowing its type.
    pub fn once<T>(&self, init: impl FnOnce(&Self) -> T) -> T
    where
        T: Clone + Send + Sync + 'static,
    {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = sets
            .get(&TypeId::of::<T>())
            .and_then(|s| s.downcast_ref::<T>())
        {
            return set.clone();
        }
        let set = init(self);
        sets.insert(TypeId::of::<T>(), Box::new(set.clone()));
        set
    }

    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a metric under `name` (without the `_total` suffix for counters).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric);
    }

    /// The registry in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.read().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Labels of per-method series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// Fully qualified service, e.g. `product.v1.ProductService` (`unknown` for unrouted paths).
    pub grpc_service: String,
    /// Method name, e.g. `GetProduct`.
    pub grpc_method: String,
}

/// Labels of the handled counter: the method and its status code name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    /// Fully qualified service.
    pub grpc_service: String,
    /// Method name.
    pub grpc_method: String,
    /// Status code name, e.g. `OK`, `NOT_FOUND`.
    pub grpc_code: String,
}

/// The RED metrics of the gRPC servers in this process.
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    in_flight: Family<MethodLabels, Gauge>,
}

impl RpcMetrics {
    /// Creates the RPC series and registers them in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let rpc = Self {
            started: Family::default(),
            handled: Family::default(),
            // 100 us .. ~6.5 s
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 17))
            }),
            in_flight: Family::default(),
        };
        metrics.register(
            "grpc_server_started",
            "RPCs started on the server",
            rpc.started.clone(),
        );
        metrics.register(
            "grpc_server_handled",
            "RPCs completed on the server, by status code",
            rpc.handled.clone(),
        );
        metrics.register(
            "grpc_server_handling_seconds",
            "Time from request headers to the end of the response, in seconds",
            rpc.latency.clone(),
        );
        metrics.register(
            "grpc_server_in_flight",
            "RPCs being handled right now",
            rpc.in_flight.clone(),
        );
        rpc
    }

    /// The series of one method, for a server layer that records many calls of it: looked up
    /// in the families on its first call, then updated without a lock or an allocation.
    pub fn method(&self, labels: MethodLabels) -> MethodMetrics {
        MethodMetrics {
            rpc: self.clone(),
            labels,
            series: OnceLock::new(),
            handled: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Records the start of a call.
    pub fn start(&self, labels: &MethodLabels) {
        self.started.get_or_create(labels).inc();
        self.in_flight.get_or_create(labels).inc();
    }

    /// Records the end of a call with its status code and duration.
    pub fn finish(&self, labels: &MethodLabels, code: tonic::Code, seconds: f64) {
        self.in_flight.get_or_create(labels).dec();
        self.latency.get_or_create(labels).observe(seconds);
        self.handled
            .get_or_create(&HandledLabels {
                grpc_service: labels.grpc_service.clone(),
                grpc_method: labels.grpc_method.clone(),
                grpc_code: code_name(code).to_string(),
            })
            .inc();
    }
}

/// Handles on the series of one method (see [`RpcMetrics::method`]). The series appear in the
/// families (and `/metrics`) on the method's first call, exactly as with [`RpcMetrics::start`].
#[derive(Debug)]
pub struct MethodMetrics {
    rpc: RpcMetrics,
    labels: MethodLabels,
    series: OnceLock<MethodSeries>,
    /// The handled counter of each status code (0..=16), fetched on its first use.
    handled: [OnceLock<Counter>; 17],
}

#[derive(Debug)]
struct MethodSeries {
    started: Counter,
    in_flight: Gauge,
    latency: Histogram,
}

impl MethodMetrics {
    fn series(&self) -> &MethodSeries {
        self.series.get_or_init(|| MethodSeries {
            started: self.rpc.started.get_or_create(&self.labels).clone(),
            in_flight: self.rpc.in_flight.get_or_create(&self.labels).clone(),
            latency: self.rpc.latency.get_or_create(&self.labels).clone(),
        })
    }

    /// Records the start of a call.
    pub fn start(&self) {
        let series = self.series();
        series.started.inc();
        series.in_flight.inc();
    }

    /// Records the end of a call with its status code and duration.
    pub fn finish(&self, code: tonic::Code, seconds: f64) {
        let series = self.series();
        series.in_flight.dec();
        series.latency.observe(seconds);
        let index = usize::try_from(code as i32).unwrap_or(0).min(16);
        self.handled[index]
            .get_or_init(|| {
                self.rpc
                    .handled
                    .get_or_create(&HandledLabels {
                        grpc_service: self.labels.grpc_service.clone(),
                        grpc_method: self.labels.grpc_method.clone(),
                        grpc_code: code_name(code).to_string(),
                    })
                    .clone()
            })
            .inc();
    }
}

/// The canonical upper-snake name of a status code (`OK`, `DEADLINE_EXCEEDED`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
