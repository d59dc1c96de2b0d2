//! A service on a real loopback socket, and channels to it.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_runtime::bus::EventBus;
use mesh_runtime::relay::{Relay, RelayOptions};
use mesh_runtime::{Database, GrpcServer, Metrics, RpcMetrics, ServiceRoutes};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

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

/// A gRPC channel to `addr`, connected.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}
