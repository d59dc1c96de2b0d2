//! mTLS on a real `GrpcServer` and real channels over loopback TCP ([`mesh_runtime::tls`]): a
//! call with the right certificates works; a client without a certificate, with one from another
//! CA, or expecting another service's identity is refused; a reload of the files applies to new
//! connections while a call in flight and the connection it uses go on.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh_contracts::product::v1::GetProductRequest;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_runtime::client::{ClientOptions, MeshChannel, connect};
use mesh_runtime::tls::dev_ca::{DevCa, Issued};
use mesh_runtime::tls::{ClientTls, MeshTls, TlsSettings};
use mesh_runtime::{GrpcServer, Metrics, RpcMetrics};
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{Gate, TestProducts, product_routes};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Writes `issued` and the CA's certificate as a workload's three files under `dir/name.*`.
fn write_files(dir: &Path, name: &str, issued: &Issued, ca_pem: &str) -> TlsSettings {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let ca = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    std::fs::write(&ca, ca_pem).unwrap();
    TlsSettings {
        cert,
        key,
        ca,
        namespace: "default".into(),
        reload: Duration::from_secs(3600),
    }
}

fn identity(service: &str) -> Vec<String> {
    vec![format!("{service}.default.svc")]
}

/// A product server with mTLS on 127.0.0.1:0; its address and material.
async fn serve(products: TestProducts, tls: MeshTls) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = GrpcServer::new(
        "product",
        product_routes(products),
        RpcMetrics::register(&Metrics::new()),
    )
    .tls(tls);
    tokio::spawn(server.run(listener, std::future::pending()));
    addr
}

fn channel(addr: std::net::SocketAddr, tls: ClientTls) -> MeshChannel {
    connect(
        format!("http://{addr}").parse().unwrap(),
        ClientOptions {
            tls: Some(tls),
            default_deadline: Duration::from_secs(5),
            ..ClientOptions::default()
        },
    )
}

async fn get(channel: MeshChannel, id: &str) -> Result<String, tonic::Status> {
    ProductServiceClient::new(channel)
        .get_product(GetProductRequest { id: id.into() })
        .await
        .map(|r| r.into_inner().product.unwrap().id)
}

/// The certificate the server at `addr` presents on a new connection.
async fn presented(addr: std::net::SocketAddr, tls: &ClientTls) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = tls.handshake(tcp).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn the_right_certificates_call_and_every_wrong_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let server_files = write_files(
        dir.path(),
        "product",
        &ca.issue(&identity("product"), YEAR).unwrap(),
        ca.cert_pem(),
    );
    let order_files = write_files(
        dir.path(),
        "order",
        &ca.issue(&identity("order"), YEAR).unwrap(),
        ca.cert_pem(),
    );
    let addr = serve(
        TestProducts::default(),
        MeshTls::load(server_files).unwrap(),
    )
    .await;
    let order = MeshTls::load(order_files).unwrap();

    // order calls product: product proves `product.default.svc`, order presents its certificate.
    let right = ClientTls::for_service(order.clone(), "product").unwrap();
    assert_eq!(
        get(channel(addr, right.clone()), "p-1").await.unwrap(),
        "p-1"
    );

    // Expecting another service at that address: the client refuses product's certificate.
    let wrong_identity = ClientTls::for_service(order.clone(), "inventory").unwrap();
    let err = get(channel(addr, wrong_identity), "p-2").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");

    // A client whose certificate comes from another CA (trusting product's): the server refuses
    // it with a TLS alert, which the client reads as the connection failing.
    let other_ca = DevCa::generate().unwrap();
    let stranger_files = write_files(
        dir.path(),
        "stranger",
        &other_ca.issue(&identity("order"), YEAR).unwrap(),
        ca.cert_pem(),
    );
    let stranger = MeshTls::load(stranger_files).unwrap();
    let err = get(
        channel(addr, ClientTls::for_service(stranger, "product").unwrap()),
        "p-3",
    )
    .await
    .unwrap_err();
    assert!(format!("{err:?}").contains("alert"), "{err:?}");

    // A TLS client with no certificate at all: the server ends the connection with an alert
    // instead of answering.
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let refused = match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("product.default.svc".try_into().unwrap(), tcp)
        .await
    {
        Err(_) => true,
        Ok(mut stream) => {
            let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 64];
            !matches!(stream.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate was answered");

    // Plaintext HTTP/2 to the TLS port: no answer.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(c) => get_plain(c).await.is_err(),
    };
    assert!(refused, "a plaintext client was answered");

    // And the right client still works.
    assert_eq!(get(channel(addr, right), "p-4").await.unwrap(), "p-4");
}

async fn get_plain(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    ProductServiceClient::new(channel)
        .get_product(GetProductRequest { id: "x".into() })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_reload_applies_to_new_connections_while_open_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let first = ca.issue(&identity("product"), YEAR).unwrap();
    let files = write_files(dir.path(), "product", &first, ca.cert_pem());
    let server_tls = MeshTls::load(files.clone()).unwrap();
    let gate = Arc::new(Gate::default());
    let (started, mut calls) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve(
        TestProducts {
            started: Some(started),
            gate: Some(gate.clone()),
        },
        server_tls.clone(),
    )
    .await;
    let client_files = write_files(
        dir.path(),
        "order",
        &ca.issue(&identity("order"), YEAR).unwrap(),
        ca.cert_pem(),
    );
    let client = ClientTls::for_service(MeshTls::load(client_files).unwrap(), "product").unwrap();
    let before = presented(addr, &client).await;

    // A call in flight on an open connection.
    let open = channel(addr, client.clone());
    let in_flight = tokio::spawn(get(open.clone(), "slow"));
    assert_eq!(calls.recv().await.unwrap(), "slow");

    // Unchanged files: nothing to do.
    assert!(!server_tls.reload().unwrap());
    // A half-written rotation (the new certificate, the old key) is refused; the old set stays.
    let second = ca.issue(&identity("product"), YEAR).unwrap();
    std::fs::write(&files.cert, &second.cert_pem).unwrap();
    let err = server_tls.reload().unwrap_err();
    assert_eq!(err.variable, "MESH_TLS_KEY", "{err}");
    assert_eq!(presented(addr, &client).await, before);
    // The whole rotation: new connections get the new certificate.
    std::fs::write(&files.key, &second.key_pem).unwrap();
    assert!(server_tls.reload().unwrap());
    let after = presented(addr, &client).await;
    assert_ne!(after, before);
    assert_eq!(after, server_tls.current().certificate().to_vec());

    // The call in flight completes, and its connection serves the next call.
    gate.open().await;
    assert_eq!(in_flight.await.unwrap().unwrap(), "slow");
    assert_eq!(get(open, "again").await.unwrap(), "again");
}

#[tokio::test]
async fn the_watcher_picks_up_replaced_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let mut files = write_files(
        dir.path(),
        "product",
        &ca.issue(&identity("product"), YEAR).unwrap(),
        ca.cert_pem(),
    );
    files.reload = Duration::from_millis(20);
    let tls = MeshTls::load(files.clone()).unwrap();
    let before = tls.current().certificate().clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(tls.clone().watch(stop.clone()));
    let next = ca.issue(&identity("product"), YEAR).unwrap();
    std::fs::write(&files.key, &next.key_pem).unwrap();
    std::fs::write(&files.cert, &next.cert_pem).unwrap();
    let changed = async {
        while tls.current().certificate() == &before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), changed)
        .await
        .expect("the watcher loads the new files");
    stop.cancel();
    watcher.await.unwrap();
}
