//! Rejections that arrive on HTTP/1.1 keep-alive, as a gRPC-Web or REST client in a browser
//! sends them: the request headers first, the body a moment later. The edge refuses the call
//! itself (no token, an unknown route), and the client must still get that answer and then use
//! the same connection for its next call. A raw TCP client, so nothing hides a closed
//! connection by reconnecting. Also: the CORS preflight echoes the headers policy allows.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mesh_auth::AuthSettings;
use mesh_edge::auth::{EdgeAuth, JWKS_REFRESH_LIMIT, PublicRoutes, RefreshLimitedKeys};
use mesh_edge::config::{DEFAULT_PUBLIC_ROUTES, EdgeConfig};
use mesh_runtime::auth::{JwksClient, SystemClock, VerifierSettings};
use mesh_runtime::client::{ClientOptions, connect};
use mesh_testkit::{self as testing, TestAuth};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// An edge with token checks against `auth`, in front of the test upstream.
async fn edge(auth: &TestAuth, config: EdgeConfig) -> EdgeHandle {
    let upstream = start_upstream().await;
    let public: Vec<String> = DEFAULT_PUBLIC_ROUTES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let keys = Arc::new(RefreshLimitedKeys::new(
        Arc::new(JwksClient::new(connect(
            auth.uri(),
            ClientOptions::default(),
        ))),
        JWKS_REFRESH_LIMIT,
    ));
    let checks = EdgeAuth::new(
        keys,
        VerifierSettings::default(),
        Arc::new(SystemClock),
        PublicRoutes::parse(&public).expect("public routes"),
    );
    serve_edge(edge_for(config, upstream).with_auth(checks)).await
}

/// One HTTP/1.1 connection, read and written by hand.
struct Connection {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

/// An answer: status, lower-cased headers, body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Connection {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let (read, writer) = TcpStream::connect(addr)
            .await
            .expect("connect")
            .into_split();
        Self {
            reader: BufReader::new(read),
            writer,
        }
    }

    /// Sends the request line and headers of a request whose body is `length` bytes.
    async fn head(&mut self, method: &str, path: &str, headers: &[(&str, &str)], length: usize) {
        let mut text =
            format!("{method} {path} HTTP/1.1\r\nhost: edge\r\ncontent-length: {length}\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        self.writer
            .write_all(text.as_bytes())
            .await
            .expect("write head");
    }

    async fn body(&mut self, body: &[u8]) {
        self.writer.write_all(body).await.expect("write body");
    }

    /// Reads one answer (content-length or chunked).
    async fn answer(&mut self) -> Answer {
        let mut line = String::new();
        self.reader.read_line(&mut line).await.expect("status line");
        assert!(line.starts_with("HTTP/1.1 "), "status line {line:?}");
        let status = line[9..12].parse().expect("status");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(length) = answer.header("content-length") {
            let mut body = vec![0; length.parse().expect("length")];
            self.reader.read_exact(&mut body).await.expect("body");
            answer.body = body;
        } else if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).await.expect("chunk size");
                let size = usize::from_str_radix(size.trim(), 16).expect("hex size");
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).await.expect("chunk");
                if size == 0 {
                    break;
                }
                answer.body.extend_from_slice(&chunk[..size]);
            }
        }
        answer
    }

    /// A whole request, then its answer.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        self.head(method, path, headers, body.len()).await;
        self.body(body).await;
        self.answer().await
    }
}

/// A client's pause between its headers and its body.
const PAUSE: Duration = Duration::from_millis(150);

/// An empty `CreateProductRequest` in a gRPC-Web frame.
const EMPTY_FRAME: [u8; 5] = [0, 0, 0, 0, 0];

#[tokio::test]
async fn refused_calls_answer_and_keep_the_connection_usable() {
    let auth = TestAuth::start(&testing::sqlite(), AuthSettings::default()).await;
    let token = auth.customer_token().await;
    let bearer = format!("Bearer {token}");
    let e = edge(&auth, EdgeConfig::default()).await;
    let json = ("content-type", "application/json");
    let grpc_web = ("content-type", "application/grpc-web+proto");
    let product = br#"{"name":"Widget","sku":"W-1"}"#;

    for round in 0..3 {
        let mut c = Connection::open(e.addr).await;

        // REST without a token: headers, a pause, the body; then a valid call on the same
        // connection.
        c.head("POST", "/v1/products", &[json], product.len()).await;
        tokio::time::sleep(PAUSE).await;
        c.body(product).await;
        let refused = c.answer().await;
        assert_eq!(refused.status, 401, "round {round}");
        assert_ne!(refused.header("connection"), Some("close"), "round {round}");
        let ok = c
            .call(
                "POST",
                "/v1/products",
                &[json, ("authorization", &bearer)],
                product,
            )
            .await;
        assert_eq!(
            ok.status,
            200,
            "round {round}: {}",
            String::from_utf8_lossy(&ok.body)
        );

        // gRPC-Web without a token (trailers-only UNAUTHENTICATED), then a valid call.
        c.head(
            "POST",
            "/product.v1.ProductService/CreateProduct",
            &[grpc_web],
            EMPTY_FRAME.len(),
        )
        .await;
        tokio::time::sleep(PAUSE).await;
        c.body(&EMPTY_FRAME).await;
        let refused = c.answer().await;
        assert_eq!(refused.header("grpc-status"), Some("16"), "round {round}");
        let ok = c
            .call(
                "POST",
                "/product.v1.ProductService/CreateProduct",
                &[grpc_web, ("authorization", &bearer)],
                &EMPTY_FRAME,
            )
            .await;
        assert_eq!(ok.status, 200, "round {round}");
        assert!(
            ok.header("grpc-status").is_none() || ok.header("grpc-status") == Some("0"),
            "round {round}: the call went through ({:?})",
            ok.headers
        );

        // An unknown route with a body, then a public call.
        c.head("POST", "/v1/nowhere", &[json], 2).await;
        tokio::time::sleep(PAUSE).await;
        c.body(b"{}").await;
        assert_eq!(c.answer().await.status, 404, "round {round}");
        assert_eq!(c.call("GET", "/v1/products/p1", &[], b"").await.status, 200);
    }
    auth.shutdown.cancel();
}

#[tokio::test]
async fn a_body_that_never_arrives_is_answered_with_connection_close() {
    let auth = TestAuth::start(&testing::sqlite(), AuthSettings::default()).await;
    let e = edge(&auth, EdgeConfig::default()).await;
    let mut c = Connection::open(e.addr).await;
    // Announced, but never sent past the first bytes: the edge waits a bounded time for the
    // rest, then answers with `connection: close` instead of dropping the connection mid-call.
    c.head(
        "POST",
        "/v1/products",
        &[("content-type", "application/json")],
        1000,
    )
    .await;
    c.body(b"{").await;
    let answer = c.answer().await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.header("connection"), Some("close"));
    auth.shutdown.cancel();
}

#[tokio::test]
async fn the_cors_preflight_echoes_allowed_headers() {
    let auth = TestAuth::start(&testing::sqlite(), AuthSettings::default()).await;
    let config = EdgeConfig {
        cors_origins: vec!["https://shop.example".into()],
        ..EdgeConfig::default()
    };
    let e = edge(&auth, config).await;
    let mut c = Connection::open(e.addr).await;
    let answer = c
        .call(
            "OPTIONS",
            "/v1/products",
            &[
                ("origin", "https://shop.example"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "traceparent, x-tenant-id, x-forwarded-for, content-type",
                ),
            ],
            b"",
        )
        .await;
    assert_eq!(answer.status, 204);
    let allowed: Vec<&str> = answer
        .header("access-control-allow-headers")
        .expect("allow headers")
        .split(", ")
        .collect();
    for name in [
        "traceparent",
        "x-tenant-id",
        "content-type",
        "authorization",
    ] {
        assert!(allowed.contains(&name), "{name} in {allowed:?}");
    }
    assert!(!allowed.contains(&"x-forwarded-for"), "{allowed:?}");
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    auth.shutdown.cancel();
}
