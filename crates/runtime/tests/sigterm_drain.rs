//! SIGTERM during an in-flight call: the call finishes, then the server stops cleanly.
//!
//! Alone in its own test binary because it signals its own process.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Gate, TestProducts, product_routes, start};
use mesh_contracts::product::v1::GetProductRequest;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use tokio::sync::mpsc;

#[tokio::test]
async fn sigterm_drains_in_flight_calls_then_stops() {
    let signal = mesh_runtime::shutdown::signal().expect("signal handlers install");
    let gate = Arc::new(Gate::default());
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let server = start(
        "product",
        product_routes(TestProducts {
            started: Some(started_tx),
            gate: Some(gate.clone()),
        }),
        Duration::from_secs(30),
        signal,
    )
    .await;
    let mut client = ProductServiceClient::new(server.channel().await);
    let call = tokio::spawn(async move {
        client
            .get_product(GetProductRequest {
                id: "in-flight".into(),
            })
            .await
    });
    assert_eq!(started.recv().await.as_deref(), Some("in-flight"));

    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    while server.readiness.is_ready() {
        tokio::task::yield_now().await;
    }
    gate.open().await;

    let response = call
        .await
        .unwrap()
        .expect("the in-flight call completes after SIGTERM");
    assert_eq!(response.into_inner().product.unwrap().id, "in-flight");
    server.task.await.unwrap().expect("clean stop");
}
