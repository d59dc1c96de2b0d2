//! The strangler fig: every request no rule owns goes, unchanged, to the legacy upstream
//! (`MESH_EDGE_LEGACY_URL`), so a monolith's routes keep working while services take them over.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Request, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::EdgeError;

/// A pooled HTTP/1.1 client to the legacy upstream.
#[derive(Debug, Clone)]
pub struct Legacy {
    base: Uri,
    client: Client<HttpConnector, Body>,
}

impl Legacy {
    /// A client for the upstream at `base` (`http://host:port`, optionally with a path prefix).
    pub fn new(base: Uri) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { base, client }
    }

    /// Forwards `req` (already given its `x-request-id`) and returns the upstream's answer.
    pub async fn forward(&self, req: Request<Body>) -> Result<Response, EdgeError> {
        let (mut parts, body) = req.into_parts();
        let prefix = self.base.path().trim_end_matches('/');
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = format!(
            "{}://{}{prefix}{path}",
            self.base.scheme_str().unwrap_or("http"),
            self.base.authority().map_or("", |a| a.as_str())
        );
        let down = |detail: String| EdgeError::LegacyDown {
            url: self.base.to_string(),
            detail,
        };
        parts.uri = uri
            .parse()
            .map_err(|e| down(format!("bad URL {uri}: {e}")))?;
        if let Some(host) = parts.headers.remove(header::HOST) {
            parts.headers.insert("x-forwarded-host", host);
        }
        parts
            .headers
            .insert("via", HeaderValue::from_static("1.1 mesh-edge"));
        parts.version = http::Version::HTTP_11;
        let response = self
            .client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| {
                let mut detail = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    detail = format!("{detail}: {s}");
                    source = s.source();
                }
                down(detail)
            })?;
        Ok(response.map(Body::new))
    }
}
