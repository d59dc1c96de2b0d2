//! End-to-end mTLS with the real `mesh` binary in separate processes (docs/security.md): the
//! certificates come from `mesh certs`; product serves mTLS; a client with the right
//! certificates calls it, one expecting another service refuses it, the edge (another process)
//! reaches it over mTLS while an edge whose certificate comes from another CA is refused; and
//! when `mesh certs` rotates the files, new connections get the new certificate while an open
//! connection keeps working.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_runtime::config::env_prefix;
use mesh_runtime::tls::{ClientTls, MeshTls, TlsSettings};
use mesh_testkit::process::{MeshProcess, http};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const MESH: &str = env!("CARGO_BIN_EXE_mesh");

/// `mesh certs --out dir`.
fn certs(dir: &Path) {
    let out = Command::new(MESH)
        .args(["certs", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mesh certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mesh serve target` on free ports, presenting `dir/<cert>.pem`, `env` added.
fn serve(target: &str, dir: &Path, cert: &str, data: &Path, env: &[(&str, String)]) -> MeshProcess {
    let mut cmd = Command::new(MESH);
    cmd.args(["serve", target])
        .env(format!("{}_PORT", env_prefix(target)), "0")
        .env("MESH_ADMIN_PORT", "0")
        .env("MESH_DATA_DIR", data)
        .env("MESH_LOG", "info")
        .env("MESH_TLS_CERT", dir.join(format!("{cert}.pem")))
        .env("MESH_TLS_KEY", dir.join(format!("{cert}.key")))
        .env("MESH_TLS_CA", dir.join("ca.pem"))
        .env("MESH_TLS_RELOAD", "100ms");
    for (k, v) in env {
        cmd.env(k, v);
    }
    MeshProcess::start(cmd)
}

/// A client presenting `dir/<cert>.pem` and expecting `service`'s identity.
fn client(dir: &Path, cert: &str, service: &str) -> ClientTls {
    let tls = MeshTls::load(TlsSettings {
        cert: dir.join(format!("{cert}.pem")),
        key: dir.join(format!("{cert}.key")),
        ca: dir.join("ca.pem"),
        namespace: "default".into(),
        reload: Duration::from_secs(3600),
    })
    .unwrap();
    ClientTls::for_service(tls, service).unwrap()
}

/// A channel through `tls` to `addr`, counting the connections it opens.
fn channel(addr: &str, tls: &ClientTls, opened: Arc<AtomicUsize>) -> Channel {
    let connector = tls.connector();
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |uri| {
            opened.fetch_add(1, Ordering::SeqCst);
            let mut connector = connector.clone();
            tower::Service::call(&mut connector, uri)
        }))
}

async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// The certificate (DER) `addr` presents on a new connection.
async fn presented(addr: &str, tls: &ClientTls) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tls.handshake(tcp).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn mtls_between_processes_refuses_strangers_and_rotates_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    let foreign = dir.path().join("foreign");
    certs(&certs_dir);
    certs(&foreign);
    for file in [
        "ca.pem",
        "ca.key",
        "all.pem",
        "all.key",
        "product.pem",
        "edge.key",
    ] {
        assert!(certs_dir.join(file).exists(), "mesh certs wrote no {file}");
    }
    let data = tempfile::tempdir().unwrap();
    let product = serve("product", &certs_dir, "product", data.path(), &[]);
    let addr = product.addr("product").to_string();

    // The right certificates: order's, expecting product's identity.
    let right = client(&certs_dir, "order", "product");
    let opened = Arc::new(AtomicUsize::new(0));
    let open = channel(&addr, &right, opened.clone());
    assert_eq!(health(open.clone()).await.unwrap(), 1, "SERVING");

    // Expecting inventory at product's address: the client refuses product's certificate.
    let wrong = client(&certs_dir, "order", "inventory");
    let err = health(channel(&addr, &wrong, Arc::default()))
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("inventory.default.svc"),
        "{err:?}"
    );

    // The edge calls product over mTLS: product answers (an unknown id: 404, not 503).
    let edge_env = [
        ("MESH_PRODUCT_ADDR", addr.clone()),
        ("MESH_EDGE_AUTH", "off".to_string()),
    ];
    let edge_data = tempfile::tempdir().unwrap();
    let edge = serve("edge", &certs_dir, "edge", edge_data.path(), &edge_env);
    let unknown = "/v1/products/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let (status, body) = http(edge.addr("edge"), "GET", unknown, "");
    assert_eq!(status, 404, "{body}");
    // An edge whose certificate comes from another CA: product refuses it, the REST call fails.
    let stranger_data = tempfile::tempdir().unwrap();
    let stranger = serve("edge", &foreign, "edge", stranger_data.path(), &edge_env);
    let (status, body) = http(stranger.addr("edge"), "GET", unknown, "");
    assert!(
        status >= 500,
        "a stranger's call was answered {status}: {body}"
    );
    drop(stranger);

    // Rotation: `mesh certs` again issues new certificates from the same CA; product reloads
    // them within MESH_TLS_RELOAD. New connections get the new certificate ...
    let before = presented(&addr, &right).await;
    certs(&certs_dir);
    let rotated = std::fs::read(certs_dir.join("product.pem")).unwrap();
    let after = async {
        loop {
            let now = presented(&addr, &right).await;
            if now != before {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let after = tokio::time::timeout(Duration::from_secs(20), after)
        .await
        .expect("product presents the rotated certificate");
    let rotated_der = {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(&rotated).unwrap().to_vec()
    };
    assert_eq!(after, rotated_der);
    // ... and the connection opened before the rotation still serves calls, not reopened.
    assert_eq!(health(open).await.unwrap(), 1);
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "the open connection was replaced"
    );
    // The edge's pooled connection to product also keeps working.
    let (status, _) = http(edge.addr("edge"), "GET", unknown, "");
    assert_eq!(status, 404);
    drop(edge);
    drop(product);
}
