//! The cost of one REST call through the edge (`mesh bench`'s scenario (c)) and through a bare
//! hyper-to-tonic hop (scenario (c0), the floor of a hop), for A/B comparisons of the edge's code
//! under `valgrind --tool=callgrind` (instruction counts do not move with the machine's load,
//! wall times do). Both run with the production subscriber, built as `mesh serve` builds it
//! (JSON lines, filter `info`; `MESH_HOP_LOG` overrides the filter), the same test upstream and
//! the same client. Ignored by default; see `docs/BENCHMARKS.md`, "Session 8: the edge's own path
//! in instructions":
//!
//! ```sh
//! cargo test --release -p mesh-edge --test hop_cost --no-run   # prints the test binary
//! MESH_HOP_REQUESTS=500  valgrind --tool=callgrind <binary> --ignored --exact rest_call_cost
//! MESH_HOP_REQUESTS=2500 valgrind --tool=callgrind <binary> --ignored --exact rest_call_cost
//! # the same two with bare_hop_cost for (c0)
//! ```
//!
//! The difference of the two totals over 2,000 is the instructions per call (the test upstream,
//! the edge or the bare hop, and this client, all in the process), start-up cancelled out; (c)
//! minus (c0) is the edge's own cost.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use mesh_contracts::auth::v1::Jwk;
use mesh_contracts::product::v1::GetProductRequest;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_edge::auth::{EdgeAuth, PublicRoutes};
use mesh_edge::config::EdgeConfig;
use mesh_edge::rate_limit::RateLimit;
use mesh_runtime::auth::{Claims, Clock as _, StaticKeys, SystemClock, VerifierSettings};
use mesh_runtime::config::{LogConfig, LogFormat};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

/// One keep-alive HTTP/1.1 GET with `extra` header lines; returns the status code.
async fn get(stream: &mut TcpStream, buf: &mut Vec<u8>, path: &str, extra: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nhost: edge\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    buf.clear();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a content-length");
            if buf.len() >= end + 4 + length {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

/// Installs `mesh serve`'s subscriber, its lines thrown away.
fn production_subscriber() {
    let log = LogConfig {
        filter: std::env::var("MESH_HOP_LOG").unwrap_or_else(|_| "info".into()),
        format: LogFormat::Json,
    };
    // A second test in the same process keeps the first one's subscriber.
    let _ = tracing::subscriber::set_global_default(mesh_runtime::telemetry::subscriber(
        &log,
        None,
        std::io::sink,
        false,
    ));
}

/// `MESH_HOP_REQUESTS` GETs of `/v1/products/p<i>`, one at a time on one connection to `addr`,
/// each with the header lines `extra` (`name: value\r\n` each).
async fn drive(addr: SocketAddr, what: &str, extra: &str) {
    let requests: usize = std::env::var("MESH_HOP_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::with_capacity(4096);
    let start = Instant::now();
    for i in 0..requests {
        assert_eq!(
            get(&mut stream, &mut buf, &format!("/v1/products/p{i}"), extra).await,
            200
        );
    }
    let elapsed = start.elapsed();
    println!(
        "{requests} REST calls through {what}, one at a time: {:.1} us each",
        elapsed.as_secs_f64() * 1e6 / requests as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand (see the module docs)"]
async fn rest_call_cost() {
    production_subscriber();
    let upstream = start_upstream().await;
    let edge = start_edge(EdgeConfig::default(), upstream).await;
    drive(edge.addr, "the edge", "").await;
}

/// (c) with the edge's admission at work: every route guarded (no public RPC), each request
/// carrying a valid bearer token (verified once, then found in the edge's cache of verified
/// tokens), and the in-process rate limit on (a limit no request reaches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand (see the module docs)"]
async fn guarded_rest_call_cost() {
    production_subscriber();
    let upstream = start_upstream().await;
    let (keys, token) = signed_token();
    let auth = EdgeAuth::new(
        Arc::new(keys),
        VerifierSettings::default(),
        Arc::new(SystemClock),
        PublicRoutes::parse(&[]).unwrap(),
    );
    let config = EdgeConfig {
        rate_limit: Some(RateLimit {
            per_second: 1e9,
            burst: u32::MAX,
        }),
        ..EdgeConfig::default()
    };
    let edge = serve_edge(edge_for(config, upstream).with_auth(auth)).await;
    drive(
        edge.addr,
        "the edge with a token and a rate limit",
        &format!("authorization: Bearer {token}\r\n"),
    )
    .await;
}

/// A key set of one Ed25519 key, and a token it verifies (an hour long).
fn signed_token() -> (StaticKeys, String) {
    use base64::Engine as _;
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let jwk = Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        kid: "k1".into(),
        x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
        ..Default::default()
    };
    let now = SystemClock.now_unix();
    let claims = Claims {
        iss: "mesh-auth".into(),
        sub: "customer-1".into(),
        aud: "mesh".into(),
        exp: now + 3600,
        iat: now,
        nbf: now,
        jti: "j1".into(),
        roles: vec!["customer".into()],
        stores: vec![],
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let der = key.to_pkcs8_der().unwrap();
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
    )
    .unwrap();
    (StaticKeys::new(&[jwk]), token)
}

/// The bare hop's answer to `GET /v1/products/{id}`: `GetProduct` upstream, the product's id and
/// name as JSON (as `mesh bench`'s (c0), `crates/mesh/src/bench_hop.rs`, answers it).
async fn bare_answer(
    mut client: ProductServiceClient<Channel>,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let id = request.uri().path().trim_start_matches("/v1/products/");
    let product = client
        .get_product(GetProductRequest { id: id.into() })
        .await
        .expect("the test upstream answers")
        .into_inner()
        .product
        .unwrap_or_default();
    let body = serde_json::json!({"product": {"id": product.id, "name": product.name}});
    let mut response = http::Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand (see the module docs)"]
async fn bare_hop_cost() {
    production_subscriber();
    let upstream = start_upstream().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{upstream}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let client = ProductServiceClient::new(channel);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let service = hyper::service::service_fn(move |request| {
            let client = client.clone();
            async move { Ok::<_, Infallible>(bare_answer(client, request).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    drive(addr, "the bare hop", "").await;
}
