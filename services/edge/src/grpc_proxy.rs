//! Native gRPC passthrough: a call for `/pkg.Service/Method` goes, unchanged and streamed both
//! ways, to the upstream of `pkg.Service` (unary and every kind of streaming alike). The edge's
//! own health and reflection services never get here: the server answers them first.

use axum::body::Body;
use axum::response::Response;
use http::Request;
use tower::ServiceExt as _;

use crate::upstream::Upstreams;

/// Proxies the gRPC request `req` to its service's upstream.
pub async fn proxy(upstreams: &Upstreams, req: Request<Body>) -> Response {
    let path = req.uri().path();
    let service = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .map(|(s, _)| s.to_string())
        .unwrap_or_default();
    let Some(upstream) = upstreams.get(&service) else {
        let status = tonic::Status::unimplemented(format!(
            "the edge fronts no gRPC service {service:?} (from path {path:?}); `grpcurl <edge> list` shows the ones it does"
        ));
        return status.into_http::<Body>();
    };
    let mut req = req.map(tonic::body::Body::new);
    // gRPC-Web calls arrive over HTTP/1.1; upstreams speak HTTP/2.
    *req.version_mut() = http::Version::HTTP_2;
    match upstream.channel.clone().oneshot(req).await {
        Ok(response) => response.map(Body::new),
        Err(e) => tonic::Status::unavailable(format!(
            "upstream {} (serving {service}) is unavailable: {e}",
            upstream.name
        ))
        .into_http::<Body>(),
    }
}
