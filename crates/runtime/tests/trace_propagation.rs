//! Trace context and deadlines cross service boundaries: a `traceparent` sent to service A shows
//! up as the same trace id in A's log lines and in the metadata of A's call to service B, with A's
//! server span as the parent; A's remaining deadline bounds the call to B.
//!
//! Runs the production JSON subscriber with a filter that asks for the per-call spans
//! (`info,mesh::span=debug`): each server call is then an `rpc` span, a child of its caller's.
//!
//! Installs a global log subscriber, so it lives in its own test binary.

mod common;

use common::logs::Captured;

use std::time::Duration;

use mesh_contracts::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_contracts::inventory::v1::inventory_service_server::{
    InventoryService, InventoryServiceServer,
};
use mesh_contracts::inventory::v1::{CheckStockRequest, CheckStockResponse};
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::product_service_server::{ProductService, ProductServiceServer};
use mesh_contracts::product::v1::{GetProductRequest, GetProductResponse, Product};
use mesh_runtime::client::{ClientOptions, MeshChannel, connect};
use mesh_runtime::config::{LogConfig, LogFormat};
use mesh_runtime::{ServiceRoutes, TraceContext};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

/// What service B saw of the call it received.
#[derive(Debug)]
struct Seen {
    traceparent: Option<String>,
    grpc_timeout: Option<String>,
}

#[derive(Clone)]
struct Inventory {
    seen: mpsc::UnboundedSender<Seen>,
}

mesh_testkit::test_double! {
    impl InventoryService for Inventory {
        async fn check_stock(
            &self,
            request: Request<CheckStockRequest>,
        ) -> Result<Response<CheckStockResponse>, Status> {
            let header = |k: &str| {
                request
                    .metadata()
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            };
            let _ = self.seen.send(Seen {
                traceparent: header("traceparent"),
                grpc_timeout: header("grpc-timeout"),
            });
            tracing::info!("stock checked");
            Ok(Response::new(CheckStockResponse {
                all_available: true,
                results: vec![],
            }))
        }
    }
    unused {
        get_stock(mesh_contracts::inventory::v1::GetStockRequest) -> mesh_contracts::inventory::v1::GetStockResponse;
        list_stock(mesh_contracts::inventory::v1::ListStockRequest) -> mesh_contracts::inventory::v1::ListStockResponse;
        reserve(mesh_contracts::inventory::v1::ReserveRequest) -> mesh_contracts::inventory::v1::ReserveResponse;
        commit_reservation(mesh_contracts::inventory::v1::CommitReservationRequest) -> mesh_contracts::inventory::v1::CommitReservationResponse;
        release_reservation(mesh_contracts::inventory::v1::ReleaseReservationRequest) -> mesh_contracts::inventory::v1::ReleaseReservationResponse;
        adjust_stock(mesh_contracts::inventory::v1::AdjustStockRequest) -> mesh_contracts::inventory::v1::AdjustStockResponse;
        get_reservation(mesh_contracts::inventory::v1::GetReservationRequest) -> mesh_contracts::inventory::v1::GetReservationResponse;
    }
}

/// Service A: answers GetProduct after asking B.
#[derive(Clone)]
struct Products {
    inventory: MeshChannel,
}

mesh_testkit::get_product_double! {
    impl ProductService for Products {
        async fn get_product(
            &self,
            request: Request<GetProductRequest>,
        ) -> Result<Response<GetProductResponse>, Status> {
            tracing::info!("asking inventory");
            InventoryServiceClient::new(self.inventory.clone())
                .check_stock(CheckStockRequest { lines: vec![] })
                .await?;
            Ok(Response::new(GetProductResponse {
                product: Some(Product {
                    id: request.into_inner().id,
                    ..Default::default()
                }),
            }))
        }
    }
}

#[tokio::test]
async fn traceparent_and_deadline_flow_through_logs_and_downstream_calls() {
    let captured = Captured::default();
    let writer = captured.clone();
    let spans_wanted = LogConfig {
        filter: "info,mesh::span=debug".into(),
        format: LogFormat::Json,
    };
    tracing::subscriber::set_global_default(mesh_runtime::telemetry::subscriber(
        &spans_wanted,
        None,
        move || writer.clone(),
        false,
    ))
    .unwrap();

    let (_stop_b, stopped_b) = oneshot::channel::<()>();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let b = common::start(
        "inventory",
        ServiceRoutes::new().add_service(InventoryServiceServer::new(Inventory { seen: seen_tx })),
        Duration::from_secs(5),
        async {
            let _ = stopped_b.await;
        },
    )
    .await;
    let (_stop_a, stopped_a) = oneshot::channel::<()>();
    let a = common::start(
        "product",
        ServiceRoutes::new().add_service(ProductServiceServer::new(Products {
            inventory: connect(
                format!("http://{}", b.addr).parse().unwrap(),
                ClientOptions::default(),
            ),
        })),
        Duration::from_secs(5),
        async {
            let _ = stopped_a.await;
        },
    )
    .await;

    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut request = Request::new(GetProductRequest { id: "p-7".into() });
    request
        .metadata_mut()
        .insert("traceparent", incoming.parse().unwrap());
    request.set_timeout(Duration::from_millis(1500));
    ProductServiceClient::new(a.channel().await)
        .get_product(request)
        .await
        .expect("A answers after calling B");

    let seen = seen.recv().await.expect("B was called");
    let downstream = TraceContext::parse(seen.traceparent.as_deref().expect("B got a traceparent"))
        .expect("a valid traceparent");
    assert_eq!(
        downstream.trace_id_hex(),
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "same trace"
    );
    assert_ne!(
        downstream.span_id_hex(),
        "00f067aa0ba902b7",
        "A's own span is B's parent, not A's caller"
    );
    let timeout =
        mesh_runtime::grpc_timeout::parse(seen.grpc_timeout.as_deref().expect("B got a deadline"))
            .expect("a valid grpc-timeout");
    assert!(
        timeout <= Duration::from_millis(1500) && timeout > Duration::from_millis(500),
        "B's deadline is what remained of A's: {timeout:?}"
    );

    let lines = captured.lines();
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {lines:#?}"))
            .clone()
    };
    let a_line = find("asking inventory");
    assert_eq!(a_line["span"], "rpc", "the filter asked for spans");
    assert_eq!(a_line["rpc.path"], "/product.v1.ProductService/GetProduct");
    assert_eq!(a_line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(a_line["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(
        a_line["span_id"],
        downstream.span_id_hex(),
        "the span id A logs is the parent id B receives"
    );
    let b_line = find("stock checked");
    assert_eq!(b_line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(b_line["parent_span_id"], downstream.span_id_hex());
}

#[tokio::test]
async fn an_expired_inherited_deadline_fails_fast_without_calling() {
    use mesh_runtime::CallContext;
    let context = CallContext {
        trace: TraceContext::new_root(),
        deadline: Some(tokio::time::Instant::now()),
    };
    // Nothing listens on this port: a call that went out would fail differently.
    let channel = connect(
        "http://127.0.0.1:9".parse().unwrap(),
        ClientOptions::default(),
    );
    let status = context
        .scope(async move {
            InventoryServiceClient::new(channel)
                .check_stock(CheckStockRequest { lines: vec![] })
                .await
        })
        .await
        .expect_err("deadline already passed");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert!(status.message().contains("deadline had already passed"));
}
