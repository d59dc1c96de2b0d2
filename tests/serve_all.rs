//! End-to-end: the real `mesh` binary running every target in one process.
//!
//! Every port answers health and reflection, a not-yet-built RPC says so, the admin port serves
//! readiness and metrics, SIGTERM stops the process with exit code 0, and bad settings are all
//! named in one error. (CI also drives the same binary with the real `grpcurl`: see `.ci/run`.)

use mesh_runtime::config::env_prefix;
use mesh_testkit::process::{MeshProcess, http};
use std::process::Command;
use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const MESH: &str = env!("CARGO_BIN_EXE_mesh");

/// The module table, as `mesh modules --json` prints it.
fn module_names() -> Vec<String> {
    let out = Command::new(MESH)
        .args(["modules", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

/// A `mesh serve all` child on free ports (killed if the test fails), and its data folder.
fn start_mesh() -> (MeshProcess, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(MESH);
    cmd.args(["serve", "all"])
        .env("MESH_ADMIN_PORT", "0")
        .env("MESH_DATA_DIR", data.path())
        .env("MESH_LOG", "info");
    for name in module_names() {
        cmd.env(format!("{}_PORT", env_prefix(&name)), "0");
    }
    (MeshProcess::start(cmd), data)
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    http(addr, "GET", path, "")
}

async fn reflected_services(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match stream.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn serve_all_answers_on_every_port_and_stops_cleanly_on_sigterm() {
    let (mut mesh, _data) = start_mesh();
    let names = module_names();
    for name in &names {
        assert!(mesh.addrs().contains_key(name), "no ready line for {name}");
    }

    let mut domain_services = Vec::new();
    for name in &names {
        let channel = Channel::from_shared(format!("http://{}", mesh.addr(name)))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{name} health: {e}"))
            .into_inner()
            .status;
        assert_eq!(status, 1, "{name} is SERVING");
        let services = reflected_services(channel).await;
        for protocol in [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                services.iter().any(|s| s == protocol),
                "{name}: {services:?}"
            );
        }
        domain_services.extend(services.into_iter().filter(|s| !s.starts_with("grpc.")));
    }
    for expected in [
        "auth.v1.AuthService",
        "user.v1.UserService",
        "product.v1.ProductService",
        "inventory.v1.InventoryService",
        "order.v1.OrderService",
        "payment.v1.PaymentService",
        "shop.v1.ShopService",
        "notification.v1.NotificationService",
        "campaign.v1.CampaignService",
        "report.v1.ReportService",
        "iot.v1.GatewayService",
        "vm.v1.VendingMachineService",
    ] {
        assert!(
            domain_services.iter().any(|s| s == expected),
            "{expected} is served somewhere: {domain_services:?}"
        );
    }

    let (status, body) = http_get(mesh.addr("admin"), "/readyz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(mesh.addr("admin"), "/.well-known/jwks.json");
    assert_eq!(status, 200, "auth's JWKS on the admin port: {body}");
    assert!(body.contains(r#""kty":"OKP""#), "{body}");
    let (status, body) = http_get(mesh.addr("admin"), "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains(r#"grpc_server_handled_total{grpc_service="grpc.health.v1.Health",grpc_method="Check",grpc_code="OK"}"#),
        "{body}"
    );

    let pid = mesh.child().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = mesh.child().try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mesh did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "clean exit after SIGTERM");
}

#[test]
fn bad_settings_are_all_named_and_the_process_exits_non_zero() {
    let out = Command::new(MESH)
        .args(["serve", "ordr,payment"])
        .env("MESH_ADMIN_PORT", "ninety")
        .env("MESH_LOG_FORMAT", "xml")
        .env("MESH_PAYMENT_PORT", "99999")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in [
        "TARGETS",
        "ordr",
        "MESH_ADMIN_PORT",
        "MESH_LOG_FORMAT",
        "MESH_PAYMENT_PORT",
    ] {
        assert!(stderr.contains(name), "{name} is not named in: {stderr}");
    }
    assert!(stderr.contains("(4 problems)"), "{stderr}");
}

#[test]
fn help_documents_every_flag() {
    let out = Command::new(MESH)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--host",
        "--admin-port",
        "--log",
        "--log-format",
        "--shutdown-grace",
        "--max-message-bytes",
        "--default-deadline",
        "--database-pool-size",
        "MESH_<SERVICE>_PORT",
        "MESH_<SERVICE>_ADDR",
    ] {
        assert!(
            help.contains(flag),
            "{flag} missing from serve --help:\n{help}"
        );
    }
}
