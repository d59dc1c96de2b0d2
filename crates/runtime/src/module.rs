//! What a service crate gives the `mesh` binary: a [`Module`] row of the module table, and, when
//! built, its [`ServiceRoutes`] from a [`ServiceContext`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use futures::future::BoxFuture;
use http::Uri;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::bus::EventBus;
use crate::client::{self, ClientOptions, MeshChannel};
use crate::config::MeshConfig;
use crate::consumer::{Consumer, ConsumerOptions};
use crate::endpoint_slices::KubeClient;
use crate::lifecycle::{Supervisor, Task, TaskError};
use crate::metrics::Metrics;
use crate::settings::ModuleSettings;
use crate::storage::{Database, Migrations};
use crate::tls::{ClientTls, MeshTls};

/// Why a service could not be built.
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// Builds a service's routes from its context.
pub type Constructor = fn(ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>>;

/// One row of the module table: everything the binary (and the Helm chart, which mirrors the
/// table) needs to know about a service.
#[derive(Clone, Copy)]
pub struct Module {
    /// The target name, e.g. `order` (`mesh serve order`).
    pub name: &'static str,
    /// Its gRPC port unless `MESH_<NAME>_PORT` says otherwise.
    pub default_port: u16,
    /// The services it calls over gRPC; [`ServiceContext::channel`] refuses any other, so the
    /// table (and the NetworkPolicies rendered from it) cannot drift from the code.
    pub dependencies: &'static [&'static str],
    /// Builds its routes.
    pub constructor: Constructor,
    /// Its own tables ([`Migrations::NONE`] when it has none): applied, after the runtime's
    /// outbox tables, before the constructor runs and by `mesh migrate`.
    pub migrations: Migrations,
    /// Its own `MESH_<NAME>_*` settings ([`ModuleSettings::NONE`] when it has none): listed by
    /// `mesh modules --settings`, and checked with the process configuration by `mesh serve`,
    /// `mesh migrate` and `mesh serve --check-config` before anything binds.
    pub settings: ModuleSettings,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("name", &self.name)
            .field("default_port", &self.default_port)
            .field("dependencies", &self.dependencies)
            .finish_non_exhaustive()
    }
}

/// A call to a peer that the module table does not allow, or cannot address.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service asked for a peer it does not declare as a dependency.
    #[error(
        "service `{caller}` asked for a channel to `{peer}`, which is not among its declared dependencies {declared:?}; add it to the module table"
    )]
    Undeclared {
        /// The calling service.
        caller: &'static str,
        /// The peer it asked for.
        peer: String,
        /// What the table declares.
        declared: &'static [&'static str],
    },
    /// No address is known for the peer.
    #[error("no address is known for service `{0}`; set MESH_<SERVICE>_ADDR")]
    NoAddress(String),
    /// The peer's mTLS identity is not a valid DNS name.
    #[error("service `{peer}` cannot be named in a TLS identity: {reason}")]
    Identity {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
}

/// The service was built without a database or bus (a context made by hand, e.g. in a test).
#[derive(Debug, thiserror::Error)]
#[error(
    "service `{0}` has no database and event bus in its context; the binary gives every service one (ServiceContext::with_data)"
)]
pub struct NoData(pub &'static str);

/// What a service is built with: its configuration, how to reach its peers, the metrics registry,
/// the process's shutdown token, and its database and the event bus.
#[derive(Clone, Debug)]
pub struct ServiceContext {
    name: &'static str,
    dependencies: &'static [&'static str],
    config: Arc<MeshConfig>,
    peers: Arc<BTreeMap<&'static str, Uri>>,
    metrics: Metrics,
    shutdown: CancellationToken,
    data: Option<(Database, Arc<dyn EventBus>)>,
    kube: Option<KubeClient>,
    supervisor: Supervisor,
    tls: Option<MeshTls>,
}

impl ServiceContext {
    /// A context for `module`, with `peers` the address of every service by name.
    pub fn new(
        module: &Module,
        config: Arc<MeshConfig>,
        peers: Arc<BTreeMap<&'static str, Uri>>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            name: module.name,
            dependencies: module.dependencies,
            config,
            peers,
            metrics,
            supervisor: Supervisor::new(crate::readiness::Readiness::new(), shutdown.clone()),
            shutdown,
            data: None,
            kube: None,
            tls: None,
        }
    }

    /// Calls peers over mTLS with the process's material ([`crate::tls`]): each channel checks
    /// that its peer proves the module table's identity for it.
    pub fn with_tls(mut self, tls: MeshTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Runs the service's background tasks under `supervisor` (the process's: its readiness is
    /// the one `/readyz` and the ports' health report). Without it, a context supervises its
    /// tasks with a readiness of its own.
    pub fn with_supervisor(mut self, supervisor: Supervisor) -> Self {
        self.supervisor = supervisor;
        self
    }

    /// Declares a long-lived background task (a loop of the service's own): it runs under
    /// supervision (see [`crate::lifecycle`]), restarted with backoff when it fails, the service
    /// not ready while it keeps failing, stopped through `stop` and drained on shutdown. For
    /// a work queue use [`background_task`](Self::background_task) with
    /// [`crate::work_queue::WorkQueue::task`].
    pub fn background<F, Fut>(&self, name: &str, start: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        self.background_task(Task::new(name, start));
    }

    /// A tracker for short-lived tasks of the service that may outlive the call that started
    /// them (never `tokio::spawn`): drained at shutdown within the grace period, aborted after it
    /// ([`Supervisor::tracker`](crate::lifecycle::Supervisor::tracker)).
    pub fn tracker(&self, name: &str) -> crate::tracker::Tracker {
        self.supervisor.tracker(self.name, name)
    }

    /// Declares `task` (see [`background`](Self::background)).
    pub fn background_task(&self, task: Task) {
        self.supervisor.start(self.name, task);
    }

    /// Discovers peers by watching their EndpointSlices with `kube` (`MESH_DISCOVERY=endpoints`)
    /// instead of re-resolving their DNS names.
    pub fn with_kube(mut self, kube: KubeClient) -> Self {
        self.kube = Some(kube);
        self
    }

    /// Gives the service its (migrated) database and the process's event bus.
    pub fn with_data(mut self, database: Database, bus: Arc<dyn EventBus>) -> Self {
        self.data = Some((database, bus));
        self
    }

    /// The service's database: its schema (Postgres) or file (SQLite), migrated. Write state
    /// changes and their events in one [`Database::begin`] transaction.
    pub fn database(&self) -> Result<&Database, NoData> {
        self.data.as_ref().map(|d| &d.0).ok_or(NoData(self.name))
    }

    /// The process's event bus.
    pub fn bus(&self) -> Result<&Arc<dyn EventBus>, NoData> {
        self.data.as_ref().map(|d| &d.1).ok_or(NoData(self.name))
    }

    /// A consumer group named after the service, with the configured delivery settings; add
    /// handlers with [`Consumer::on`], then [`ServiceContext::start_consumer`].
    pub fn consumer(&self) -> Result<Consumer, NoData> {
        let (db, bus) = self.data.clone().ok_or(NoData(self.name))?;
        let events = &self.config.events;
        Ok(Consumer::new(db, bus, self.name)
            .metrics(&self.metrics)
            .options(ConsumerOptions {
                max_deliveries: events.max_deliveries,
                retry_backoff: events.retry_backoff,
                max_backoff: (events.claim_idle / 2).min(std::time::Duration::from_secs(30)),
                ..ConsumerOptions::default()
            }))
    }

    /// Runs `consumer` as a supervised background task (named `consumer`) until the process
    /// shuts down.
    pub fn start_consumer(&self, consumer: Consumer) {
        self.background("consumer", move |stop| {
            let consumer = consumer.clone();
            async move {
                consumer.run(stop).await;
                Ok(())
            }
        });
    }

    /// The service's module name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The process configuration.
    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    /// The process metrics registry, for the service's own metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Cancelled when the process begins shutting down; background tasks stop on it.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Largest gRPC message the service's servers should accept and send.
    pub fn max_message_bytes(&self) -> usize {
        self.config.max_message_bytes
    }

    /// A lazily connecting channel to `peer`, which must be a declared dependency.
    pub fn channel(&self, peer: &str) -> Result<MeshChannel, ClientError> {
        let (uri, options) = self.peer(peer)?;
        Ok(client::connect(uri, options))
    }

    /// The address of `peer` (a declared dependency) and the client settings
    /// [`channel`](Self::channel) connects with, for a caller with its own transport to it (the
    /// edge's connection pool, under [`client::layered`]).
    pub fn peer(&self, peer: &str) -> Result<(Uri, ClientOptions), ClientError> {
        if !self.dependencies.contains(&peer) {
            return Err(ClientError::Undeclared {
                caller: self.name,
                peer: peer.to_string(),
                declared: self.dependencies,
            });
        }
        self.peer_unchecked(peer)
    }

    /// A lazily connecting channel to the auth service, whose JWKS verifies callers' tokens.
    /// Every port verifies some callers (the runtime's audit trail at least), so this needs no
    /// declared dependency; auth's own port reaches its own public `GetJwks`.
    pub fn auth_channel(&self) -> Result<MeshChannel, ClientError> {
        let (uri, options) = self.peer_unchecked("auth")?;
        Ok(client::connect(uri, options))
    }

    /// [`peer`](Self::peer) without the dependency check.
    fn peer_unchecked(&self, peer: &str) -> Result<(Uri, ClientOptions), ClientError> {
        let uri = self
            .peers
            .get(peer)
            .cloned()
            .ok_or_else(|| ClientError::NoAddress(peer.to_string()))?;
        let tls = match &self.tls {
            Some(tls) => Some(ClientTls::for_service(tls.clone(), peer).map_err(|e| {
                ClientError::Identity {
                    peer: peer.to_string(),
                    reason: e.to_string(),
                }
            })?),
            None => None,
        };
        Ok((
            uri,
            ClientOptions {
                default_deadline: self.config.default_deadline,
                balance: crate::balance::BalanceOptions {
                    refresh: self.config.discovery.dns_refresh,
                    ..Default::default()
                },
                kube: self.kube.clone(),
                name: Some(peer.to_string()),
                metrics: Some(crate::resilience::ClientMetrics::of(&self.metrics)),
                resilience: self.config.clients.for_upstream(peer),
                tls,
                ..ClientOptions::default()
            },
        ))
    }
}

/// The gRPC services one mesh service serves on its port, with their names for health checks
/// and reflection.
///
/// A service that also answers plain HTTP on its port (the edge: REST over HTTP/1.1 and h2c,
/// and gRPC it proxies) adds a [`fallback`](Self::fallback) service: every request no gRPC route
/// owns goes there, and the port then accepts HTTP/1.1 as well as HTTP/2.
#[derive(Debug, Clone, Default)]
pub struct ServiceRoutes {
    routes: Routes,
    names: Vec<&'static str>,
    fallback: Option<Fallback>,
    descriptor_set: Option<Arc<[u8]>>,
    admin: Option<axum::Router>,
    extensions: http::Extensions,
}

impl ServiceRoutes {
    /// No services yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a generated tonic server (or a wrapper that keeps its name).
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: crate::route::GrpcRoute + NamedService + Sync,
    {
        self.names.push(S::NAME);
        self.routes = self.routes.add_service(svc);
        self
    }

    /// Advertises `name` in health checks and reflection without a route of its own: a service
    /// whose calls the [`fallback`](Self::fallback) answers (the edge's proxied services).
    pub fn advertise(mut self, name: &'static str) -> Self {
        self.names.push(name);
        self
    }

    /// Sends every request no gRPC route owns to `service` (instead of `UNIMPLEMENTED`), and
    /// makes the port accept HTTP/1.1 too. Health, reflection and the observe layer still apply.
    ///
    /// `service` may be an [`axum::Router`], or a plain service (the edge's handler), which the
    /// port's router calls directly: no second router pass per request.
    pub fn fallback<S>(mut self, service: S) -> Self
    where
        S: tower_service::Service<
                http::Request<axum::body::Body>,
                Response = axum::response::Response,
                Error = Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.fallback = Some(Fallback::new(service));
        self
    }

    /// Adds HTTP routes to the process's admin server (port 9090), beside `/metrics`, `/healthz`
    /// and `/readyz`; e.g. auth's `/.well-known/jwks.json`. Paths must not collide with another
    /// service's admin routes in the same process.
    pub fn admin_routes(mut self, router: axum::Router) -> Self {
        self.admin = Some(match self.admin.take() {
            Some(existing) => existing.merge(router),
            None => router,
        });
        self
    }

    /// Hands `value` to what the binary adds to this port after the service is built, one value
    /// per type: the auth service's own token verifier (`auth::Verifier`), which the runtime's
    /// audit trail then uses instead of the JWKS over gRPC, so auth never calls itself.
    pub fn extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// Takes the value of type `T` set with [`extension`](Self::extension), if any.
    pub fn take_extension<T: Clone + Send + Sync + 'static>(&mut self) -> Option<T> {
        self.extensions.remove::<T>()
    }

    /// Takes the admin routes added with [`admin_routes`](Self::admin_routes), for the binary to
    /// serve on the admin port.
    pub fn take_admin_routes(&mut self) -> Option<axum::Router> {
        self.admin.take()
    }

    /// Serves reflection from this encoded `FileDescriptorSet` instead of the embedded
    /// contracts (the edge's set: the contracts plus any extra sets it loaded).
    pub fn reflection_descriptor_set(mut self, encoded: impl Into<Arc<[u8]>>) -> Self {
        self.descriptor_set = Some(encoded.into());
        self
    }

    /// The fully qualified names of the services added.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// Splits into tonic routes and names.
    pub(crate) fn into_parts(self) -> (Routes, Vec<&'static str>) {
        (self.routes, self.names)
    }

    /// Takes the HTTP fallback and the reflection descriptor set out, if set.
    pub(crate) fn take_extras(&mut self) -> (Option<Fallback>, Option<Arc<[u8]>>) {
        (self.fallback.take(), self.descriptor_set.take())
    }
}

/// The HTTP fallback of a port ([`ServiceRoutes::fallback`]), type-erased.
pub(crate) type Fallback = tower::util::BoxCloneSyncService<
    http::Request<axum::body::Body>,
    axum::response::Response,
    Infallible,
>;
