//! Every request on the edge's port: a request id, then by content type native gRPC (admitted
//! and proxied), gRPC-Web (translated, then the same), or REST ([`crate::rest`]); CORS headers
//! and the request id on the answer. [`Edge::service_routes`] mounts it on a runtime server.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, Request, header};
use mesh_runtime::ServiceRoutes;

use crate::edge::Edge;
use crate::error::EdgeError;
use crate::grpc_web;

pub use crate::upstream::{REQUEST_ID, REQUEST_ID_HEADER};

impl Edge {
    /// The edge as the routes of a runtime server: health and reflection for every fronted
    /// service, and everything else handled by the edge.
    pub fn service_routes(self: Arc<Self>) -> ServiceRoutes {
        let mut routes = ServiceRoutes::new();
        for service in self.upstreams.services() {
            // Leaked once at start: the server wants `'static` names, and there are a handful.
            routes = routes.advertise(Box::leak(service.to_string().into_boxed_str()));
        }
        let descriptor_set = self.pool.encode_to_vec();
        // The handler itself as the port's fallback: the server's router calls it directly,
        // with no second router (and handler extraction) per request.
        routes
            .reflection_descriptor_set(descriptor_set)
            .fallback(tower::service_fn(move |req: Request<Body>| {
                let edge = self.clone();
                async move { Ok::<_, Infallible>(handle(edge, req).await) }
            }))
    }

    /// The HTTP side of the edge as an axum router (one fallback handler).
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .fallback(|State(edge): State<Arc<Edge>>, req: Request<Body>| handle(edge, req))
            .with_state(self)
    }
}

/// What kind of call a request is, by its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    /// `application/grpc[+proto]`.
    Grpc,
    /// `application/grpc-web[+proto]` or `application/grpc-web-text[+proto]`.
    GrpcWeb,
    /// Anything else: REST (or the legacy upstream).
    Rest,
}

fn call_kind(headers: &HeaderMap) -> CallKind {
    match headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes) {
        Some(v) if v == b"application/grpc" || v.starts_with(b"application/grpc+") => {
            CallKind::Grpc
        }
        Some(v) if v.starts_with(b"application/grpc-web") => CallKind::GrpcWeb,
        _ => CallKind::Rest,
    }
}

/// A client's request id if it is sane (visible ASCII, at most 128 bytes), else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&REQUEST_ID_HEADER)
        && !v.is_empty()
        && v.len() <= 128
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    // 32 hex digits of a random u128, written without `fmt` (this runs on most requests).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id: u128 = rand::random();
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("unknown"))
}

async fn handle(edge: Arc<Edge>, mut req: Request<Body>) -> Response {
    let id = request_id(req.headers());
    req.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
    let peer = req
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|i| i.remote_addr());
    let origin = req.headers().get(header::ORIGIN).cloned();
    let (req, body) = crate::drain::share(req);
    let mut response = match call_kind(req.headers()) {
        CallKind::Grpc => edge.grpc(req, peer).await,
        CallKind::GrpcWeb => grpc_web::call(edge.clone(), req, peer).await,
        CallKind::Rest => edge
            .rest(req, peer)
            .await
            .unwrap_or_else(EdgeError::into_response),
    };
    if let Some(body) = body {
        crate::drain::settle(body, &mut response).await;
    }
    cors(&edge, origin.as_ref(), response.headers_mut());
    response.headers_mut().insert(REQUEST_ID_HEADER, id);
    response
}

fn cors(edge: &Edge, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    let Some(origin) = origin else { return };
    let allowed = edge
        .config
        .cors_origins
        .iter()
        .any(|o| o == "*" || o.as_bytes() == origin.as_bytes());
    if allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after, grpc-status, grpc-message"),
        );
    }
}
