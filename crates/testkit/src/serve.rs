//! A service on a real loopback socket (served as built, or built and served by [`start`]), and
//! channels to it.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_runtime::bus::EventBus;
use mesh_runtime::relay::{Relay, RelayOptions};
use mesh_runtime::{Database, GrpcServer, Metrics, RpcMetrics, ServiceContext, ServiceRoutes};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::context::context;

/// Serves `routes` on a fresh `127.0.0.1` port until `shutdown`, and relays `db`'s outbox to
/// `bus`. (The service's own background tasks already run under its context's supervisor.)
pub async fn serve(
    name: &str,
    routes: ServiceRoutes,
    db: Database,
    bus: Arc<dyn EventBus>,
    shutdown: CancellationToken,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = GrpcServer::new(name, routes, RpcMetrics::register(&Metrics::new()));
    let stop = shutdown.clone().cancelled_owned();
    tokio::spawn(async move {
        let _ = server.run(listener, stop).await;
    });
    tokio::spawn(Relay::new(db, bus, RelayOptions::default()).run(shutdown));
    addr
}

/// A service started by [`start`]: where it answers and what stops it.
#[derive(Debug, Clone)]
pub struct Served {
    /// Its gRPC address on `127.0.0.1`.
    pub addr: SocketAddr,
    /// Stops it (its server, relay and background tasks).
    pub shutdown: CancellationToken,
}

/// Builds service `name` with `build` over a context (see [`crate::context()`]) with `peers`,
/// `db` and `bus`, and [`serve`]s it until its own shutdown token is cancelled.
pub async fn start<F, Fut, E>(
    name: &'static str,
    peers: BTreeMap<&'static str, http::Uri>,
    db: &Database,
    bus: &Arc<dyn EventBus>,
    build: F,
) -> Served
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: Future<Output = Result<ServiceRoutes, E>>,
    E: std::fmt::Debug,
{
    let shutdown = CancellationToken::new();
    let addr = start_until(name, peers, db, bus, &shutdown, build).await;
    Served { addr, shutdown }
}

/// As [`start`], until `shutdown` (shared with other services of the test); its address.
pub async fn start_until<F, Fut, E>(
    name: &'static str,
    peers: BTreeMap<&'static str, http::Uri>,
    db: &Database,
    bus: &Arc<dyn EventBus>,
    shutdown: &CancellationToken,
    build: F,
) -> SocketAddr
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: Future<Output = Result<ServiceRoutes, E>>,
    E: std::fmt::Debug,
{
    let ctx = context(name, peers, db.clone(), bus.clone(), shutdown.clone());
    let routes = build(ctx)
        .await
        .unwrap_or_else(|e| panic!("build {name}: {e:?}"));
    serve(name, routes, db.clone(), bus.clone(), shutdown.clone()).await
}

/// A gRPC channel to `addr`, connected.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}
