//! The gRPC server of one mesh service: its routes plus `grpc.health.v1`, server reflection (v1
//! and v1alpha, since grpcurl 1.8 asks v1alpha; [`crate::reflection`]), the [`ObserveLayer`] (traces, call context,
//! metrics), graceful shutdown, and mTLS when given the process's material ([`GrpcServer::tls`]).
//!
//! Shutdown: when the `shutdown` future resolves, health turns `NOT_SERVING` (and `/readyz` 503),
//! the listener closes, in-flight calls run to completion, and [`GrpcServer::run`] returns. If they
//! take longer than the grace period, they are dropped and `run` returns anyway.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::metrics::RpcMetrics;
use crate::module::ServiceRoutes;
use crate::observe::ObserveLayer;
use crate::readiness::Readiness;
use crate::reflection::{Reflection, ReflectionIndex};
use crate::shed::{ProtectLayer, ProtectOptions};
use crate::tls::MeshTls;

/// Service names of the protocol services every port serves besides its own.
const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Why a gRPC server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptor sets.
    #[error("building server reflection for {server}: {source}")]
    Reflection {
        /// The server being started.
        server: String,
        /// The cause.
        source: crate::reflection::ReflectionError,
    },
    /// A protection or fault setting of the environment is invalid.
    #[error("gRPC server {server}: {problem}")]
    Config {
        /// The server.
        server: String,
        /// The setting and what is wrong with it.
        problem: String,
    },
    /// The transport failed.
    #[error("gRPC server {server}: {source}")]
    Transport {
        /// The server.
        server: String,
        /// The cause.
        source: tonic::transport::Error,
    },
}

/// One gRPC port of the process.
#[derive(Debug)]
pub struct GrpcServer {
    name: String,
    routes: ServiceRoutes,
    metrics: RpcMetrics,
    readiness: Readiness,
    grace: Duration,
    protect: Option<ProtectOptions>,
    tls: Option<MeshTls>,
}

impl GrpcServer {
    /// A server named `name` (the module name, for logs and `/readyz`) serving `routes`.
    pub fn new(name: impl Into<String>, routes: ServiceRoutes, metrics: RpcMetrics) -> Self {
        Self {
            name: name.into(),
            routes,
            metrics,
            readiness: Readiness::new(),
            grace: Duration::from_secs(25),
            protect: None,
            tls: None,
        }
    }

    /// Reports this server's state into `readiness` (shared with the admin server).
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// How long in-flight calls may run after shutdown begins.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Concurrency limit and load shedding of this port ([`crate::shed`]); unset, they come
    /// from the environment (`MESH_<SERVICE>_MAX_CONCURRENCY`, `MESH_SHED`,
    /// `MESH_SHED_MIN_IN_FLIGHT`).
    pub fn protection(mut self, options: ProtectOptions) -> Self {
        self.protect = Some(options);
        self
    }

    /// Serves mTLS with `tls`'s current material ([`crate::tls`]): every connection completes a
    /// TLS handshake with a client certificate from the CA before it is served.
    pub fn tls(mut self, tls: MeshTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves on `listener` until `shutdown` resolves, then drains (see the module docs).
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let Self {
            name,
            routes,
            metrics,
            readiness,
            grace,
            protect,
            tls,
        } = self;
        let env = |k: &str| std::env::var(k).ok();
        let config_err = |problem| ServeError::Config {
            server: name.clone(),
            problem,
        };
        let protect = match protect {
            Some(p) => p,
            None => ProtectOptions::from_env(&name, env).map_err(|problems| {
                config_err(
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?,
        };
        let fault_var = crate::faults::env_var(&name);
        if let Some(spec) = env(&fault_var) {
            let rules =
                crate::faults::parse(&spec).map_err(|e| config_err(format!("{fault_var}: {e}")))?;
            if !rules.is_empty() {
                tracing::warn!(server = %name, faults = %spec, "fault switches on from {fault_var}");
            }
            crate::faults::global().set(&name, rules);
        }
        let mut routes = routes;
        let (fallback, descriptor_set) = routes.take_extras();
        let (routes, names) = routes.into_parts();

        let (reporter, health) = tonic_health::server::health_reporter();
        for service in names.iter().copied().chain([""]) {
            reporter
                .set_service_status(service, ServingStatus::Serving)
                .await;
        }
        let reflection = ReflectionIndex::new(
            [
                descriptor_set
                    .as_deref()
                    .unwrap_or(mesh_contracts::FILE_DESCRIPTOR_SET),
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
            names.iter().copied().chain([HEALTH]),
        )
        .map(Reflection::new)
        .map_err(|source| ServeError::Reflection {
            server: name.clone(),
            source,
        })?;
        let routes = routes
            .add_service(health)
            .add_service(reflection.v1())
            .add_service(reflection.v1alpha());
        // A port with an HTTP fallback (the edge) answers plain HTTP/1.1 as well as HTTP/2.
        let accept_http1 = fallback.is_some();
        let routes = match fallback {
            Some(fallback) => {
                tonic::service::Routes::from(routes.into_axum_router().fallback_service(fallback))
            }
            None => routes,
        };

        let known_paths = names
            .iter()
            .flat_map(|s| crate::descriptors::method_paths(s))
            .chain([
                format!("/{HEALTH}/Check"),
                format!("/{HEALTH}/Watch"),
                format!("/{REFLECTION_V1}/ServerReflectionInfo"),
                format!("/{REFLECTION_V1ALPHA}/ServerReflectionInfo"),
            ]);

        // Health follows the service's readiness problems (a background task that keeps
        // failing, an unreachable database) until shutdown begins; then it stays NOT_SERVING.
        let mirror = {
            let mut changes = readiness.changes();
            let readiness = readiness.clone();
            let reporter = reporter.clone();
            let name = name.clone();
            let names = names.clone();
            async move {
                let mut serving = true;
                loop {
                    if changes.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                    let ok = readiness.service_ok(&name)
                        && readiness.snapshot().get(&name).copied().unwrap_or(false);
                    if ok == serving {
                        continue;
                    }
                    serving = ok;
                    let status = if ok {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    for service in names.iter().copied().chain([""]) {
                        reporter.set_service_status(service, status).await;
                    }
                }
            }
        };

        let draining = Arc::new(Notify::new());
        let signal = {
            let draining = draining.clone();
            let readiness = readiness.clone();
            let name = name.clone();
            let names = names.clone();
            async move {
                shutdown.await;
                readiness.set(&name, false);
                for service in names.iter().copied().chain([""]) {
                    reporter
                        .set_service_status(service, ServingStatus::NotServing)
                        .await;
                }
                tracing::info!(server = %name, "draining in-flight calls");
                draining.notify_one();
            }
        };

        readiness.set(&name, true);
        let router = tonic::transport::Server::builder()
            .accept_http1(accept_http1)
            .layer(ObserveLayer::new(metrics, known_paths).for_service(name.clone()))
            .layer(ProtectLayer::new(&name, protect))
            .add_routes(routes);
        let serve = match tls {
            Some(tls) => router
                .serve_with_incoming_shutdown(
                    crate::tls::incoming(listener, tls, accept_http1, name.clone()),
                    signal,
                )
                .left_future(),
            None => router
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    signal,
                )
                .right_future(),
        };
        tokio::pin!(serve);
        let deadline = async {
            draining.notified().await;
            tokio::time::sleep(grace).await;
        };
        tokio::pin!(mirror);
        tokio::select! {
            () = &mut mirror => unreachable!("the health mirror never ends"),
            result = &mut serve => result.map_err(|source| ServeError::Transport { server: name.clone(), source })?,
            () = deadline => {
                tracing::warn!(server = %name, grace = ?grace, "grace period over; dropping calls still in flight");
            }
        }
        tracing::info!(server = %name, "stopped");
        Ok(())
    }
}
