//! gRPC-Web on the edge's port, for browsers: `application/grpc-web[+proto]` and
//! `application/grpc-web-text[+proto]` (base64) calls, over HTTP/1.1 or HTTP/2, unary and server
//! streaming. `tonic-web` translates each call to native gRPC (the body unframed from base64
//! when needed, `content-type: application/grpc`, `te: trailers`), the edge admits and proxies it
//! like any gRPC call, and the answer comes back with the trailers as the last body frame
//! (flag `0x80`), as the gRPC-Web protocol has it. Client and bidirectional streaming are not
//! part of gRPC-Web.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use http::Request;
use tower::{Layer as _, ServiceExt as _};

use crate::edge::Edge;

/// Serves the gRPC-Web call `req` from `peer` through `edge`'s gRPC path.
pub async fn call(edge: Arc<Edge>, req: Request<Body>, peer: Option<SocketAddr>) -> Response {
    translate(req, move |req| {
        let edge = edge.clone();
        async move { edge.grpc(req, peer).await }
    })
    .await
}

/// Serves the gRPC-Web call `req` with `grpc`, a handler of native gRPC calls: the request is
/// translated to gRPC for it (base64 text decoded, headers rewritten) and its answer back to
/// gRPC-Web (trailers as the last body frame, base64 again for text). [`call`] passes the edge's
/// gRPC path; this is also the parsing entry point the `grpc_web` fuzz target drives with an
/// echo handler.
pub async fn translate<F, Fut>(req: Request<Body>, grpc: F) -> Response
where
    F: Fn(Request<Body>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let inner = tower::service_fn(move |req: Request<tonic::body::Body>| {
        let grpc = grpc.clone();
        // The translated body reports the size of the *encoded* one (base64 is longer than
        // what it decodes to), which would become a wrong content-length upstream: forget it.
        let req = req.map(|body| {
            Body::new(http_body_util::StreamBody::new(
                http_body_util::BodyStream::new(body),
            ))
        });
        async move { Ok::<_, Infallible>(grpc(req).await) }
    });
    match tonic_web::GrpcWebLayer::new()
        .layer(inner)
        .oneshot(req)
        .await
    {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}
