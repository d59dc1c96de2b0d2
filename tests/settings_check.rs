//! End-to-end: settings are checked before anything binds, and one service per process works on
//! one host.
//!
//! - `mesh serve --check-config` names every bad setting of every target (process flags, each
//!   service's own declared settings, server protection, fault switches) in one error and exits 1,
//!   or exits 0, without binding a port or opening a database.
//! - `mesh serve` refuses a bad service setting before it binds or migrates anything.
//! - The README's multi-process example: `mesh serve auth` and `mesh serve product` side by side
//!   with no admin port given (each admin port follows its service), product reaching auth at a
//!   bare `host:port`, and a token auth issued accepted by product.

use std::net::TcpListener;
use std::process::Command;

use mesh_contracts::auth::v1::SignUpRequest;
use mesh_contracts::auth::v1::auth_service_client::AuthServiceClient;
use mesh_contracts::common::v1::Money;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::{CreateProductRequest, Product};
use mesh_testkit::process::{MeshProcess, http};
use mesh_testkit::{bearer, eventually};

const MESH: &str = env!("CARGO_BIN_EXE_mesh");

/// `mesh <args>` with none of the caller's mesh settings, on a data folder of its own.
fn mesh(args: &[&str], data: &std::path::Path) -> Command {
    let mut cmd = Command::new(MESH);
    cmd.args(args)
        .env("MESH_DATA_DIR", data)
        .env("MESH_LOG", "warn")
        .env_remove("MESH_ADMIN_PORT")
        .env_remove("MESH_DATABASE_URL")
        .env_remove("MESH_REDIS_URL");
    cmd
}

fn is_empty(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn check_config_names_every_bad_setting_without_binding_or_opening_a_database() {
    let data = tempfile::tempdir().unwrap();
    // A port that is taken: serving would fail to bind it, checking must not try.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let out = mesh(&["serve", "payment,vm,edge", "--check-config"], data.path())
        .env("MESH_PAYMENT_PORT", &taken_port)
        .env("MESH_PRODUCT_ADDR", "product.mesh:50053")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("payment, vm, edge"), "{stdout}");

    let out = mesh(&["serve", "payment,vm,edge", "--check-config"], data.path())
        .env("MESH_PAYMENT_PORT", &taken_port)
        .env("MESH_PAYMENT_MAX_ATTEMPTS", "0")
        .env("MESH_PAYMENT_RETRY_BACKOFF", "soon")
        .env("MESH_VM_DISPENSE_TIMEOUT", "0s")
        .env("MESH_EDGE_RATE_LIMIT", "fast")
        .env("MESH_SHED", "maybe")
        .env("MESH_FAULT_VM", "Vend:explode")
        .env("MESH_PRODUCT_ADDR", "product")
        .env("MESH_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = [
        "MESH_LOG_FORMAT",
        "MESH_PRODUCT_ADDR",
        "MESH_PAYMENT_MAX_ATTEMPTS",
        "MESH_PAYMENT_RETRY_BACKOFF",
        "MESH_SHED",
        "MESH_VM_DISPENSE_TIMEOUT",
        "MESH_FAULT_VM",
        "MESH_EDGE_RATE_LIMIT",
    ];
    for name in expected {
        assert!(stderr.contains(name), "{name} is not named in: {stderr}");
    }
    assert!(
        stderr.contains(&format!("({} problems)", expected.len())),
        "each problem once (MESH_SHED is read by three targets): {stderr}"
    );
    assert!(is_empty(data.path()), "no database was opened");
    drop(taken);
}

#[test]
fn serve_refuses_a_bad_service_setting_before_binding_or_migrating() {
    let data = tempfile::tempdir().unwrap();
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let out = mesh(&["serve", "order"], data.path())
        .env("MESH_ORDER_PORT", port.to_string())
        .env("MESH_ORDER_SAGA_TIMEOUT", "never")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MESH_ORDER_SAGA_TIMEOUT"), "{stderr}");
    assert!(is_empty(data.path()), "nothing was migrated");
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the port was never taken"
    );
}

/// A free port whose admin port (+1000) is free too, found by binding both (and letting go).
fn free_port_with_its_admin_port() -> u16 {
    loop {
        let grpc = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = grpc.local_addr().unwrap().port();
        if port <= 64535 && TcpListener::bind(("127.0.0.1", port + 1000)).is_ok() {
            return port;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_service_per_process_on_one_host_without_admin_ports() {
    const ADMIN: &str = "ops@example.com";
    let (auth_data, product_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let auth_port = free_port_with_its_admin_port();
    let mut auth = mesh(&["serve", "auth"], auth_data.path());
    auth.env("MESH_AUTH_PORT", auth_port.to_string())
        .env("MESH_AUTH_BOOTSTRAP_ADMIN_EMAIL", ADMIN);
    let auth = MeshProcess::start(auth);
    assert_eq!(
        auth.addr("admin"),
        format!("127.0.0.1:{}", auth_port + 1000),
        "the admin port follows the service"
    );

    // Product on any free port (its admin port then too), auth at a bare host:port.
    let mut product = mesh(&["serve", "product"], product_data.path());
    product
        .env("MESH_PRODUCT_PORT", "0")
        .env("MESH_AUTH_ADDR", format!("127.0.0.1:{auth_port}"));
    let product = MeshProcess::start(product);
    for process in [&auth, &product] {
        let admin = process.addr("admin").to_string();
        eventually("each process's own admin port says ready", || {
            let admin = admin.clone();
            async move { http(&admin, "GET", "/readyz", "").0 == 200 }
        })
        .await;
    }

    let channel = |addr: &str| {
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };
    let token = AuthServiceClient::new(channel(auth.addr("auth")))
        .sign_up(SignUpRequest {
            email: ADMIN.into(),
            password: "correct horse battery".into(),
            ..Default::default()
        })
        .await
        .expect("sign up at auth")
        .into_inner()
        .tokens
        .expect("tokens")
        .access_token;
    // Product checks the token with the keys of auth, the other process.
    let created = ProductServiceClient::new(channel(product.addr("product")))
        .create_product(bearer(
            &token,
            CreateProductRequest {
                product: Some(Product {
                    sku: "TWO-PROC".into(),
                    name: "Two processes".into(),
                    price: Some(Money {
                        currency_code: "EUR".into(),
                        amount_minor: 100,
                    }),
                    active: true,
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("CreateProduct with auth's token, verified across processes");
    assert!(!created.into_inner().product.expect("product").id.is_empty());
}
