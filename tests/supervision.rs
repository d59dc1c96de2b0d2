//! End-to-end: a service's background task is supervised. A fault switch makes payment's
//! charge worker fail; the real `mesh` binary restarts it (logged with its cause, counted in
//! `mesh_task_restarts_total`), turns the service's readiness off (`/readyz` 503 naming the
//! task, the port's gRPC health `NOT_SERVING`), and turns it back on once the switch is cleared
//! and the task runs again. The runtime's helper tasks (here a peer's DNS refresh) follow the
//! same rule under the service `mesh`.

use std::process::Command;
use std::time::Duration;

use mesh_testkit::process::{MeshProcess, http};
use mesh_testkit::{channel, eventually_within};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const MESH: &str = env!("CARGO_BIN_EXE_mesh");

async fn health(addr: &str) -> ServingStatus {
    let mut client = HealthClient::new(channel(addr.parse().unwrap()).await);
    let status = client
        .check(HealthCheckRequest {
            service: "payment.v1.PaymentService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

/// Waits until `/readyz` answers `status`.
async fn readyz_becomes(admin: &str, status: u16, within: Duration) {
    eventually_within(within, &format!("/readyz {status}"), || {
        let now = http(admin, "GET", "/readyz", "").0;
        async move { now == status }
    })
    .await;
}

/// `mesh serve payment` on SQLite in `data`, with `extra` settings.
fn serve_payment(data: &std::path::Path, extra: &[(&str, &str)]) -> MeshProcess {
    let mut command = Command::new(MESH);
    command
        .args(["serve", "payment"])
        .env("MESH_ADMIN_PORT", "0")
        .env("MESH_PAYMENT_PORT", "0")
        .env("MESH_DATA_DIR", data)
        .env("MESH_LOG", "info")
        .env("MESH_LOG_FORMAT", "json")
        .env_remove("MESH_DATABASE_URL")
        .env_remove("MESH_REDIS_URL");
    command.envs(extra.iter().copied());
    MeshProcess::start(command)
}

/// The value of the series `mesh_task_restarts_total{service="<service>",task="<task>"}`.
fn restarts_of(admin: &str, service: &str, task: &str) -> u64 {
    let (_, metrics) = http(admin, "GET", "/metrics", "");
    let series = format!(r#"mesh_task_restarts_total{{service="{service}",task="{task}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_failing_background_task_is_restarted_and_turns_readiness_off_until_it_recovers() {
    let data = tempfile::tempdir().unwrap();
    let mesh = serve_payment(data.path(), &[]);
    let (admin, grpc) = (mesh.addr("admin"), mesh.addr("payment"));
    readyz_becomes(admin, 200, Duration::from_secs(10)).await;
    assert_eq!(health(grpc).await, ServingStatus::Serving);

    let (status, body) = http(
        admin,
        "PUT",
        "/faults/payment",
        "task/charge-worker:error=1",
    );
    assert!(status < 300, "{status} {body}");
    readyz_becomes(admin, 503, Duration::from_secs(10)).await;
    let (_, body) = http(admin, "GET", "/readyz", "");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cause = ready["problems"]["payment"]["task:charge-worker"]
        .as_str()
        .unwrap_or_else(|| panic!("the task is named as the cause: {body}"));
    assert!(cause.contains("fault injected"), "{cause}");
    assert_eq!(health(grpc).await, ServingStatus::NotServing);
    let restarts = mesh.log_lines(&["charge-worker", "restarting"]).len();
    assert!(restarts >= 3, "each failure logged: {restarts}");
    let counted = restarts_of(admin, "payment", "charge-worker");
    assert!(counted >= 3, "each failure counted: {counted}");

    let (status, _) = http(admin, "DELETE", "/faults/payment", "");
    assert!(status < 300);
    readyz_becomes(admin, 200, Duration::from_secs(30)).await;
    assert_eq!(health(grpc).await, ServingStatus::Serving);
    assert!(
        !mesh.log_lines(&["background task recovered"]).is_empty(),
        "recovery logged"
    );
}

#[tokio::test]
async fn a_failing_helper_task_is_counted_and_turns_readiness_off_until_it_recovers() {
    let data = tempfile::tempdir().unwrap();
    // A peer named by a host name gets a balanced pool, refreshed by a `dns-refresh` helper.
    let mesh = serve_payment(data.path(), &[("MESH_AUTH_ADDR", "http://localhost:1")]);
    let admin = mesh.addr("admin");
    readyz_becomes(admin, 200, Duration::from_secs(10)).await;

    let (status, body) = http(admin, "PUT", "/faults/mesh", "task/dns-refresh:error=1");
    assert!(status < 300, "{status} {body}");
    readyz_becomes(admin, 503, Duration::from_secs(10)).await;
    let (_, body) = http(admin, "GET", "/readyz", "");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cause = ready["problems"]["mesh"]["task:dns-refresh"]
        .as_str()
        .unwrap_or_else(|| panic!("the helper is named as the cause: {body}"));
    assert!(cause.contains("fault injected"), "{cause}");
    let counted = restarts_of(admin, "mesh", "dns-refresh");
    assert!(counted >= 3, "each failure counted: {counted}");

    let (status, _) = http(admin, "DELETE", "/faults/mesh", "");
    assert!(status < 300);
    readyz_becomes(admin, 200, Duration::from_secs(30)).await;
}
