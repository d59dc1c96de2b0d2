//! The admin HTTP server: `/metrics` (Prometheus), `/healthz` (liveness) and `/readyz`
//! (readiness, with each gRPC server's state and each service's problems, such as a failing
//! background task or an unreachable database, as JSON), the fault switches (`/faults`, see
//! [`crate::faults`]), and routes services add (`ServiceRoutes::admin_routes`).

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::readiness::Readiness;

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    readiness: Readiness,
}

/// The admin routes, for embedding or testing.
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(crate::faults::router())
        .with_state(AdminState { metrics, readiness })
}

/// Serves `router` (the [`router`] routes, plus any the services added) on `listener` until
/// `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let ready = state.readiness.is_ready();
    let body = serde_json::json!({
        "ready": ready,
        "servers": state.readiness.snapshot(),
        "problems": state.readiness.problems(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
