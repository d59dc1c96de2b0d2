//! The floor of a REST-to-gRPC hop, `mesh bench`'s scenario (c0): a minimal HTTP/1.1 server
//! (hyper) that answers `GET /v1/products/{id}` by calling `GetProduct` upstream with a tonic
//! client and writing the product's id and name as JSON.
//!
//! It has no routing table, transcoding, auth, limits, metrics or tracing. It is what any
//! REST-to-gRPC proxy built on hyper and tonic pays at least for its second hop, so the edge's own
//! cost is scenario (c) minus (c0), and (c0) minus the direct call is the cost of the hop itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use mesh_contracts::product::v1::GetProductRequest;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

/// Upstream clients, one HTTP/2 connection each, used in turn.
struct Clients {
    clients: Vec<ProductServiceClient<Channel>>,
    next: AtomicUsize,
}

impl Clients {
    fn pick(&self) -> ProductServiceClient<Channel> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }
}

/// Starts the hop on a free loopback port, calling `upstream` over `connections` HTTP/2
/// connections (as the edge's pool does); returns its address. It runs until the process ends.
pub(crate) async fn start(upstream: SocketAddr, connections: usize) -> anyhow::Result<SocketAddr> {
    let mut clients = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        let channel = Endpoint::from_shared(format!("http://{upstream}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        clients.push(ProductServiceClient::new(channel));
    }
    let clients = Arc::new(Clients {
        clients,
        next: AtomicUsize::new(0),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let clients = clients.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let clients = clients.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&clients, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Answers one request: the product as JSON, 404 off the route, 502 when the upstream fails.
async fn answer(
    clients: &Clients,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let reply = |status: http::StatusCode, body: Vec<u8>| {
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    };
    let Some(id) = request.uri().path().strip_prefix("/v1/products/") else {
        return reply(http::StatusCode::NOT_FOUND, b"{}".to_vec());
    };
    let call = clients
        .pick()
        .get_product(GetProductRequest { id: id.into() })
        .await;
    match call {
        Ok(response) => {
            let product = response.into_inner().product.unwrap_or_default();
            let body = serde_json::json!({"product": {"id": product.id, "name": product.name}});
            reply(http::StatusCode::OK, body.to_string().into_bytes())
        }
        Err(status) => reply(
            http::StatusCode::BAD_GATEWAY,
            serde_json::json!({"message": status.message()})
                .to_string()
                .into_bytes(),
        ),
    }
}
