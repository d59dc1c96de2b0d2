//! A REST call at the edge: CORS preflight, `/openapi.json`, the route lookup (or the legacy
//! upstream), admission, the JSON body (size and media type checked) transcoded to the RPC's
//! request, the unary call upstream and its answer as JSON.

use std::net::SocketAddr;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body::Body as _;

use crate::edge::Edge;
use crate::error::{EdgeError, json_bytes_response};
use crate::routes::Lookup;
use crate::{status_map, transcode, upstream};

impl Edge {
    pub(crate) async fn rest(
        &self,
        req: Request<Body>,
        peer: Option<SocketAddr>,
    ) -> Result<Response, EdgeError> {
        let method = req.method().clone();
        if method == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
            && !self.config.cors_origins.is_empty()
        {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            let h = response.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                crate::cors::allow_headers(req.headers()),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            return Ok(response);
        }
        // A clone of the parsed URI shares its bytes: no copy of the path per request.
        let uri = req.uri().clone();
        let path = uri.path();
        if method == Method::GET && path == "/openapi.json" {
            self.admit(None, req.headers(), peer).await?;
            return Ok(json_bytes_response(StatusCode::OK, self.openapi.clone()));
        }
        let (route, bindings) = match self.routes.lookup(&method, path) {
            Lookup::Found(route, bindings) => (route.clone(), bindings),
            Lookup::MethodNotAllowed(allowed) => {
                self.admit(None, req.headers(), peer).await?;
                return Err(EdgeError::MethodNotAllowed {
                    method,
                    path: path.to_owned(),
                    allowed,
                });
            }
            Lookup::NotFound => {
                self.admit(None, req.headers(), peer).await?;
                return match &self.legacy {
                    Some(legacy) => legacy.forward(req).await,
                    None => Err(EdgeError::NotFound {
                        method,
                        path: path.to_owned(),
                    }),
                };
            }
        };
        self.admit(Some(&route.grpc_path.as_str()[1..]), req.headers(), peer)
            .await?;
        let (parts, body) = req.into_parts();
        let body = self.read_body(&parts.headers, body).await?;
        let message = transcode::request_bytes(&route, &bindings, parts.uri.query(), &body)?;
        let upstream = self
            .route_upstreams
            .get(route.index)
            .and_then(Option::as_deref)
            .ok_or_else(|| EdgeError::Internal(format!("no upstream for {}", route.service())))?;
        let answer = upstream::unary(
            upstream,
            route.service(),
            route.grpc_path.clone(),
            message,
            &parts.headers,
            self.max_message_bytes,
        )
        .await
        .map_err(|e| match e {
            EdgeError::Upstream { status, .. } => EdgeError::Upstream {
                details: status_map::details_json(&status, &self.pool),
                status,
            },
            other => other,
        })?;
        let plan = self.answer_plan(route.index);
        let json = transcode::answer_json(&self.wire_json, plan, &route, &answer)?;
        Ok(json_bytes_response(StatusCode::OK, json))
    }

    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, EdgeError> {
        let limit = self.config.max_body_bytes;
        if let Some(len) = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            && len > limit
        {
            return Err(EdgeError::PayloadTooLarge { limit });
        }
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or_default().trim();
            if !(essence == "application/json" || essence.ends_with("+json") || essence.is_empty())
            {
                return Err(EdgeError::UnsupportedMediaType(essence.to_string()));
            }
        }
        if body.is_end_stream() {
            // Nothing to read (a GET): no collecting future, no buffer.
            return Ok(bytes::Bytes::new());
        }
        axum::body::to_bytes(body, limit).await.map_err(|e| {
            let text = format!("{e}");
            let mut source = std::error::Error::source(&e);
            let mut too_large = text.contains("length limit");
            while let Some(s) = source {
                too_large |= s.to_string().contains("length limit");
                source = s.source();
            }
            if too_large {
                EdgeError::PayloadTooLarge { limit }
            } else {
                EdgeError::BadRequest(format!("reading the request body: {text}"))
            }
        })
    }
}
