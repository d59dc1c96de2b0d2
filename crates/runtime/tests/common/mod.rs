//! Shared helpers of the runtime's integration tests: a configurable test `ProductService`, and
//! starting a `GrpcServer` on 127.0.0.1:0.

#![allow(dead_code, unreachable_pub)]

pub mod instances;
pub mod logs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_contracts::product::v1::product_service_server::{ProductService, ProductServiceServer};
use mesh_contracts::product::v1::{GetProductRequest, GetProductResponse, Product};
use mesh_runtime::{GrpcServer, Metrics, Readiness, RpcMetrics, ServiceRoutes};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify, mpsc};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// A `ProductService` whose `GetProduct` reports each call on `started` and, when `gate` is set,
/// waits for it to be opened before answering: a slow RPC the test controls without sleeping.
#[derive(Clone, Default)]
pub struct TestProducts {
    pub started: Option<mpsc::UnboundedSender<String>>,
    pub gate: Option<Arc<Gate>>,
}

/// A latch a handler waits on until the test opens it.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    notify: Notify,
}

impl Gate {
    pub async fn open(&self) {
        *self.open.lock().await = true;
        self.notify.notify_waiters();
    }

    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if *self.open.lock().await {
                return;
            }
            notified.await;
        }
    }
}

mesh_testkit::get_product_double! {
    impl ProductService for TestProducts {
        async fn get_product(
            &self,
            request: Request<GetProductRequest>,
        ) -> Result<Response<GetProductResponse>, Status> {
            let id = request.into_inner().id;
            if let Some(started) = &self.started {
                let _ = started.send(id.clone());
            }
            if let Some(gate) = &self.gate {
                gate.wait().await;
            }
            tracing::info!(product_id = %id, "product looked up");
            Ok(Response::new(GetProductResponse {
                product: Some(Product {
                    id,
                    name: "Sparkling water 0.5 l".into(),
                    ..Default::default()
                }),
            }))
        }
    }
}

/// A running test server.
pub struct Running {
    pub addr: SocketAddr,
    pub readiness: Readiness,
    pub metrics: Metrics,
    pub task: JoinHandle<Result<(), mesh_runtime::server::ServeError>>,
}

impl Running {
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connects to the test server")
    }
}

/// Serves `routes` as server `name` on 127.0.0.1:0 until `shutdown` resolves.
pub async fn start(
    name: &str,
    routes: ServiceRoutes,
    grace: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Metrics::new();
    let readiness = Readiness::new();
    let server = GrpcServer::new(name, routes, RpcMetrics::register(&metrics))
        .readiness(readiness.clone())
        .grace(grace);
    let task = tokio::spawn(server.run(listener, shutdown));
    Running {
        addr,
        readiness,
        metrics,
        task,
    }
}

/// Routes holding one `TestProducts`.
pub fn product_routes(products: TestProducts) -> ServiceRoutes {
    ServiceRoutes::new().add_service(ProductServiceServer::new(products))
}
