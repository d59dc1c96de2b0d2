//! The cost of one gRPC call to a `GrpcServer` with the production subscriber (JSON lines,
//! filter `info`; `MESH_CALL_LOG` overrides the filter, e.g. `info,mesh::span=debug` to turn the
//! per-call spans on), for A/B comparisons under `valgrind --tool=callgrind` (instruction counts do
//! not move with the machine's load, wall times do). Ignored by default; see
//! `docs/BENCHMARKS.md`, "Session 5: spans only when wanted":
//!
//! ```sh
//! cargo test --release -p mesh-runtime --test call_cost --no-run   # prints the test binary
//! MESH_CALLS=300 valgrind --tool=callgrind <binary> --ignored --test-threads 1
//! MESH_CALLS=1300 valgrind --tool=callgrind <binary> --ignored --test-threads 1
//! ```
//!
//! The difference of the two totals over 1,000 is the instructions per call (server, client and
//! subscriber, all in this process), start-up cancelled out. The subscriber is built here as
//! `mesh serve` builds it (registry, `EnvFilter`, the JSON layer), so the same file measures
//! older versions of the runtime too.

mod common;

use std::time::{Duration, Instant};

use common::start;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::product_service_server::{ProductService, ProductServiceServer};
use mesh_contracts::product::v1::{GetProductRequest, GetProductResponse, Product};
use mesh_runtime::ServiceRoutes;
use mesh_runtime::json_log::JsonLines;
use tokio::sync::oneshot;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt as _;

/// Answers at once and logs nothing at `info`: what a cache hit costs.
struct Quiet;

mesh_testkit::get_product_double! {
    impl ProductService for Quiet {
        async fn get_product(
            &self,
            request: tonic::Request<GetProductRequest>,
        ) -> Result<tonic::Response<GetProductResponse>, tonic::Status> {
            Ok(tonic::Response::new(GetProductResponse {
                product: Some(Product {
                    id: request.into_inner().id,
                    ..Default::default()
                }),
            }))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand (see the module docs)"]
async fn grpc_call_cost_with_the_production_subscriber() {
    let calls: usize = std::env::var("MESH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let filter = std::env::var("MESH_CALL_LOG").unwrap_or_else(|_| "info".into());
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(EnvFilter::new(&filter))
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonLines)
                    .with_writer(std::io::sink),
            ),
    )
    .unwrap();
    let (_stop, stopped) = oneshot::channel::<()>();
    let server = start(
        "product",
        ServiceRoutes::new().add_service(ProductServiceServer::new(Quiet)),
        Duration::from_secs(5),
        async {
            let _ = stopped.await;
        },
    )
    .await;
    let mut client = ProductServiceClient::new(server.channel().await);
    let start = Instant::now();
    for i in 0..calls {
        client
            .get_product(GetProductRequest {
                id: format!("p{i}"),
            })
            .await
            .expect("answered");
    }
    println!(
        "{calls} calls, one at a time, filter {filter:?}: {:.1} us each",
        start.elapsed().as_secs_f64() * 1e6 / calls as f64
    );
}
