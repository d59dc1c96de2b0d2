//! Test upstreams and an edge over real sockets on 127.0.0.1.
//!
//! The upstream serves a test `product.v1.ProductService`, a bidirectional-streaming
//! `iot.v1.GatewayService` echo, and `spec.v1.EchoService` (test-only contracts compiled here
//! with protox) as a raw echo: its responses are its requests. Every other service answers the
//! generated default, `UNIMPLEMENTED`.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_contracts::iot::v1::gateway_service_server::{GatewayService, GatewayServiceServer};
use mesh_contracts::iot::v1::{
    OpenChannelRequest, OpenChannelResponse, Welcome, open_channel_request, open_channel_response,
};
use mesh_contracts::product::v1::product_service_server::{ProductService, ProductServiceServer};
use mesh_contracts::product::v1::*;
use mesh_edge::config::EdgeConfig;
use mesh_edge::upstream::{Upstream, Upstreams};
use mesh_edge::{Edge, load_pool};
use mesh_runtime::client::ClientOptions;
use mesh_runtime::{GrpcServer, Metrics, RpcMetrics};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

#[derive(Default)]
struct Products;

mesh_testkit::test_double! {
    impl ProductService for Products {
        async fn get_product(
            &self,
            request: Request<GetProductRequest>,
        ) -> Result<Response<GetProductResponse>, Status> {
            let md = request.metadata();
            let seen = |k: &str| {
                md.get(k)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let (auth, rid, tp, timeout) = (
                seen("authorization"),
                seen("x-request-id"),
                seen("traceparent"),
                seen("grpc-timeout"),
            );
            let id = request.into_inner().id;
            match id.as_str() {
                "missing" => Err(Status::not_found("product missing does not exist")),
                "slow" => {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    Err(Status::internal("too late"))
                }
                "conflict" => Err(Status::already_exists("dup")),
                "denied" => Err(Status::permission_denied("no")),
                "busy" => Err(Status::unavailable("try later")),
                _ => Ok(Response::new(GetProductResponse {
                    product: Some(Product {
                        id,
                        name: "Widget".into(),
                        description: format!("auth={auth};rid={rid};tp={tp};timeout={timeout}"),
                        active: true,
                        ..Default::default()
                    }),
                })),
            }
        }

        async fn create_product(
            &self,
            request: Request<CreateProductRequest>,
        ) -> Result<Response<CreateProductResponse>, Status> {
            let mut product = request.into_inner().product.unwrap_or_default();
            product.id = "p-new".into();
            Ok(Response::new(CreateProductResponse {
                product: Some(product),
            }))
        }

        async fn batch_get_products(
            &self,
            request: Request<BatchGetProductsRequest>,
        ) -> Result<Response<BatchGetProductsResponse>, Status> {
            let products = request
                .into_inner()
                .ids
                .into_iter()
                .map(|id| Product {
                    id,
                    ..Default::default()
                })
                .collect();
            Ok(Response::new(BatchGetProductsResponse { products }))
        }
    }
    unused {
        list_products(mesh_contracts::product::v1::ListProductsRequest) -> mesh_contracts::product::v1::ListProductsResponse;
        update_product(mesh_contracts::product::v1::UpdateProductRequest) -> mesh_contracts::product::v1::UpdateProductResponse;
        delete_product(mesh_contracts::product::v1::DeleteProductRequest) -> mesh_contracts::product::v1::DeleteProductResponse;
        create_category(mesh_contracts::product::v1::CreateCategoryRequest) -> mesh_contracts::product::v1::CreateCategoryResponse;
        list_categories(mesh_contracts::product::v1::ListCategoriesRequest) -> mesh_contracts::product::v1::ListCategoriesResponse;
    }
}

#[derive(Default)]
struct Gateway;

mesh_testkit::test_double! {
    impl GatewayService for Gateway {
        type OpenChannelStream =
            Pin<Box<dyn Stream<Item = Result<OpenChannelResponse, Status>> + Send + 'static>>;

        async fn open_channel(
            &self,
            request: Request<Streaming<OpenChannelRequest>>,
        ) -> Result<Response<Self::OpenChannelStream>, Status> {
            let mut inbound = request.into_inner();
            let out = async_stream(move |tx| async move {
                while let Ok(Some(frame)) = inbound.message().await {
                    if let Some(open_channel_request::Frame::Hello(h)) = frame.frame {
                        let reply = OpenChannelResponse {
                            frame: Some(open_channel_response::Frame::Welcome(Welcome {
                                session_id: format!("session-{}", h.device_id),
                                ..Default::default()
                            })),
                        };
                        if tx.send(Ok(reply)).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Ok(Response::new(out))
        }
    }
    unused {
        send_command(mesh_contracts::iot::v1::SendCommandRequest) -> mesh_contracts::iot::v1::SendCommandResponse;
        get_device_session(mesh_contracts::iot::v1::GetDeviceSessionRequest) -> mesh_contracts::iot::v1::GetDeviceSessionResponse;
        list_device_sessions(mesh_contracts::iot::v1::ListDeviceSessionsRequest) -> mesh_contracts::iot::v1::ListDeviceSessionsResponse;
    }
}

fn async_stream<F, Fut>(
    f: F,
) -> Pin<Box<dyn Stream<Item = Result<OpenChannelResponse, Status>> + Send + 'static>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<OpenChannelResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The raw echo of `spec.v1.EchoService`: the gRPC-framed request body comes back as the
/// response body, with `grpc-status: 0` in the trailers.
async fn echo(req: http::Request<axum::body::Body>) -> http::Response<axum::body::Body> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = futures::stream::iter(vec![
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(body)),
        Ok(http_body::Frame::trailers(trailers)),
    ]);
    let mut response = http::Response::new(axum::body::Body::new(http_body_util::StreamBody::new(
        frames,
    )));
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The raw server stream of `spec.v1.EchoService/Watch`: the gRPC-framed request three times,
/// each in its own HTTP/2 data frame, then `grpc-status: 0`.
async fn watch(req: http::Request<axum::body::Body>) -> http::Response<axum::body::Body> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut frames: Vec<Result<_, std::convert::Infallible>> = (0..3)
        .map(|_| Ok(http_body::Frame::data(body.clone())))
        .collect();
    frames.push(Ok(http_body::Frame::trailers(trailers)));
    let mut response = http::Response::new(axum::body::Body::new(http_body_util::StreamBody::new(
        futures::stream::iter(frames),
    )));
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// Starts the test upstream; returns its address.
pub async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_upstream(listener, std::future::pending());
    addr
}

/// Serves the test upstream on `listener` until `stop` resolves (its connections then close).
pub fn serve_upstream(listener: TcpListener, stop: impl Future<Output = ()> + Send + 'static) {
    let routes = tonic::service::Routes::new(ProductServiceServer::new(Products))
        .add_service(GatewayServiceServer::new(Gateway));
    let router = routes
        .into_axum_router()
        .route("/spec.v1.EchoService/Watch", axum::routing::post(watch))
        .route("/spec.v1.EchoService/{method}", axum::routing::post(echo));
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::from(router))
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .unwrap();
    });
}

/// The test-only descriptor set (spec.v1), encoded with extension options kept.
pub fn spec_descriptor_set() -> Vec<u8> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut compiler = protox::Compiler::new([
        format!("{root}/tests/protos"),
        format!("{root}/../../proto"),
    ])
    .unwrap();
    compiler.include_imports(true);
    compiler.open_files(["spec/v1/spec.proto"]).unwrap();
    compiler.encode_file_descriptor_set()
}

/// A running edge.
pub struct EdgeHandle {
    pub addr: SocketAddr,
    pub edge: Arc<Edge>,
    stop: CancellationToken,
}

impl Drop for EdgeHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts an edge with `config` in front of `upstream` (every service, ours and spec.v1).
pub async fn start_edge(config: EdgeConfig, upstream: SocketAddr) -> EdgeHandle {
    serve_edge(edge_for(config, upstream)).await
}

/// Every service module behind the edge (the edge's dependencies in the binary's module table).
pub const MODULES: [&str; 12] = [
    "auth",
    "user",
    "product",
    "inventory",
    "order",
    "payment",
    "shop",
    "notification",
    "campaign",
    "report",
    "iot-gateway",
    "vm",
];

/// The upstreams of every service (ours and spec.v1) at `upstream`.
pub fn upstreams_at(pool: &prost_reflect::DescriptorPool, upstream: SocketAddr) -> Upstreams {
    let uri: http::Uri = format!("http://{upstream}").parse().unwrap();
    let options = || ClientOptions {
        default_deadline: std::time::Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let mut upstreams = Upstreams::new();
    let mut services: Vec<String> = Upstreams::owned_services(pool, &MODULES)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    services.push("spec.v1.EchoService".into());
    let shared = Upstream::connect(
        format!("test upstream {upstream}"),
        uri,
        options(),
        EdgeConfig::default().upstream_connections,
    );
    for service in services {
        upstreams.insert(service, shared.clone());
    }
    upstreams
}

/// An edge (not started) with `config` in front of `upstream`.
pub fn edge_for(config: EdgeConfig, upstream: SocketAddr) -> Edge {
    let pool = load_pool(&[("spec".into(), spec_descriptor_set())]).unwrap();
    let upstreams = upstreams_at(&pool, upstream);
    Edge::new(pool, config, upstreams, 4 << 20).unwrap()
}

/// Starts an edge over `pool` with explicit upstreams.
pub async fn start_edge_with(
    pool: prost_reflect::DescriptorPool,
    config: EdgeConfig,
    upstreams: Upstreams,
) -> EdgeHandle {
    serve_edge(Edge::new(pool, config, upstreams, 4 << 20).unwrap()).await
}

/// Serves `edge` on a fresh loopback port.
pub async fn serve_edge(edge: Edge) -> EdgeHandle {
    let edge = Arc::new(edge);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = GrpcServer::new(
        "edge",
        edge.clone().service_routes(),
        RpcMetrics::register(&Metrics::new()),
    );
    let signal = stop.clone();
    tokio::spawn(async move {
        server
            .run(listener, signal.cancelled_owned())
            .await
            .unwrap();
    });
    EdgeHandle { addr, edge, stop }
}

/// An HTTP/1.1 response: status, headers, body text.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one HTTP request (HTTP/1.1 unless `h2`).
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
    h2: bool,
) -> Reply {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body: Bytes = body.into();
    let response = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// `send` over HTTP/1.1 with a JSON content type when there is a body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    let headers: &[(&str, &str)] = if body.is_empty() {
        &[]
    } else {
        &[("content-type", "application/json")]
    };
    send(addr, method, path, body.to_string(), headers, false).await
}
