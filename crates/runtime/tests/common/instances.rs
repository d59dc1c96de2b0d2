//! Instances of a test `ProductService` at several loopback addresses on one port, as the pods
//! behind a headless Service, and a client call that retries once.

use std::time::Duration;

use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::product_service_server::{ProductService, ProductServiceServer};
use mesh_contracts::product::v1::{GetProductRequest, GetProductResponse, Product};
use mesh_runtime::client::MeshChannel;
use mesh_runtime::{GrpcServer, Metrics, RpcMetrics, ServiceRoutes};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

/// A product service instance that says which instance answered.
#[derive(Clone)]
pub struct Instance(pub String);

mesh_testkit::get_product_double! {
    impl ProductService for Instance {
        async fn get_product(
            &self,
            request: Request<GetProductRequest>,
        ) -> Result<Response<GetProductResponse>, Status> {
            Ok(Response::new(GetProductResponse {
                product: Some(Product {
                    id: request.into_inner().id,
                    name: self.0.clone(),
                    ..Default::default()
                }),
            }))
        }
    }
}

pub struct Running {
    pub stop: oneshot::Sender<()>,
    pub task: JoinHandle<Result<(), mesh_runtime::server::ServeError>>,
}

pub async fn start_instance(listener: TcpListener) -> Running {
    let label = listener.local_addr().unwrap().ip().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = GrpcServer::new(
        "product",
        ServiceRoutes::new().add_service(ProductServiceServer::new(Instance(label))),
        RpcMetrics::register(&Metrics::new()),
    )
    .grace(Duration::from_secs(5));
    let task = tokio::spawn(server.run(listener, async {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

/// One call, retried once on failure; returns the instance that answered and how many tries.
pub async fn call(channel: &MeshChannel) -> (String, u32) {
    let mut client = ProductServiceClient::new(channel.clone());
    for attempt in 1..=2 {
        match client
            .get_product(GetProductRequest { id: "p".into() })
            .await
        {
            Ok(r) => return (r.into_inner().product.unwrap().name, attempt),
            Err(status) if attempt == 1 => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
            }
            Err(status) => panic!("the retry failed too: {status}"),
        }
    }
    unreachable!()
}
