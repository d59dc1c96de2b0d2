//! The edge's one error type, and the one place it becomes an HTTP response: a status from the
//! standard mapping and a JSON body in `google.rpc.Status` shape.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::Value;
use tonic::Code;

use crate::status_map;

/// Why a request failed at the edge or upstream.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// No route owns the path and no legacy upstream is configured.
    #[error("no route for {method} {path}")]
    NotFound {
        /// The request method.
        method: Method,
        /// The request path.
        path: String,
    },
    /// Routes own the path, but not for this method.
    #[error("{method} is not allowed on {path}; allowed: {}", allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", "))]
    MethodNotAllowed {
        /// The request method.
        method: Method,
        /// The request path.
        path: String,
        /// Methods routes accept there.
        allowed: Vec<Method>,
    },
    /// The request is malformed: the message names the field, parameter or header at fault.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the configured limit.
    #[error("request body is larger than the limit of {limit} bytes (MESH_EDGE_MAX_BODY_BYTES)")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The media type of the body is not JSON.
    #[error("unsupported content type {0:?}; send application/json")]
    UnsupportedMediaType(String),
    /// Missing or invalid credentials.
    #[error("{0}")]
    Unauthenticated(mesh_runtime::auth::AuthError),
    /// The keys to check tokens with cannot be obtained (the auth service is down).
    #[error("{0}")]
    AuthUnavailable(mesh_runtime::auth::AuthError),
    /// The client went over its rate limit.
    #[error("rate limit exceeded for this client; retry after {retry_after_secs}s")]
    RateLimited {
        /// Seconds until a token is available.
        retry_after_secs: u64,
    },
    /// The upstream answered with an error status.
    #[error("{}", .status.message())]
    Upstream {
        /// The status.
        status: tonic::Status,
        /// The status details, rendered.
        details: Vec<Value>,
    },
    /// The upstream could not be reached.
    #[error("upstream {upstream} (serving {service}) is unavailable: {detail}")]
    UpstreamDown {
        /// The upstream's name.
        upstream: String,
        /// The gRPC service called.
        service: String,
        /// The transport error.
        detail: String,
    },
    /// The legacy upstream could not be reached.
    #[error("legacy upstream {url} is unavailable: {detail}")]
    LegacyDown {
        /// Its URL.
        url: String,
        /// The transport error.
        detail: String,
    },
    /// A bug or an impossible state at the edge.
    #[error("internal error at the edge: {0}")]
    Internal(String),
}

impl EdgeError {
    /// The gRPC code and HTTP status of this error.
    pub fn codes(&self) -> (Code, StatusCode) {
        match self {
            Self::NotFound { .. } => (Code::NotFound, StatusCode::NOT_FOUND),
            Self::MethodNotAllowed { .. } => (Code::Unimplemented, StatusCode::METHOD_NOT_ALLOWED),
            Self::BadRequest(_) => (Code::InvalidArgument, StatusCode::BAD_REQUEST),
            Self::PayloadTooLarge { .. } => {
                (Code::ResourceExhausted, StatusCode::PAYLOAD_TOO_LARGE)
            }
            Self::UnsupportedMediaType(_) => {
                (Code::InvalidArgument, StatusCode::UNSUPPORTED_MEDIA_TYPE)
            }
            Self::Unauthenticated(_) => (Code::Unauthenticated, StatusCode::UNAUTHORIZED),
            Self::RateLimited { .. } => (Code::ResourceExhausted, StatusCode::TOO_MANY_REQUESTS),
            Self::Upstream { status, .. } => {
                (status.code(), status_map::http_status(status.code()))
            }
            Self::UpstreamDown { .. } | Self::LegacyDown { .. } | Self::AuthUnavailable(_) => {
                (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE)
            }
            Self::Internal(_) => (Code::Internal, StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// The HTTP response for this error.
    pub fn into_response(self) -> Response {
        let (code, status) = self.codes();
        let message = self.to_string();
        let mut extra = Vec::new();
        let details = match self {
            Self::Upstream { details, status } => {
                // An overloaded upstream (or the edge's own pool) says when to come back.
                if status.code() == Code::ResourceExhausted {
                    let after = status
                        .metadata()
                        .get("retry-after")
                        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
                        .unwrap_or(HeaderValue::from_static("1"));
                    extra.push((header::RETRY_AFTER, after));
                }
                details
            }
            Self::RateLimited { retry_after_secs } => {
                extra.push((header::RETRY_AFTER, HeaderValue::from(retry_after_secs)));
                Vec::new()
            }
            Self::Unauthenticated(ref e) => {
                extra.push((header::WWW_AUTHENTICATE, www_authenticate(e)));
                Vec::new()
            }
            Self::MethodNotAllowed { ref allowed, .. } => {
                let list = allowed
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                if let Ok(v) = HeaderValue::from_str(&list) {
                    extra.push((header::ALLOW, v));
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        let body = status_map::error_body(code, &message, details);
        let mut response = json_response(status, &body);
        response.headers_mut().extend(extra);
        response
    }
}

impl From<mesh_runtime::auth::AuthError> for EdgeError {
    fn from(e: mesh_runtime::auth::AuthError) -> Self {
        match e {
            mesh_runtime::auth::AuthError::KeysUnavailable(_) => Self::AuthUnavailable(e),
            _ => Self::Unauthenticated(e),
        }
    }
}

impl EdgeError {
    /// The gRPC status of this error, for gRPC and gRPC-Web callers (with `retry-after` for a
    /// rate limit).
    pub fn into_status(self) -> tonic::Status {
        let (code, _) = self.codes();
        let mut status = tonic::Status::new(code, self.to_string());
        if let Self::RateLimited { retry_after_secs } = self {
            status
                .metadata_mut()
                .insert("retry-after", retry_after_secs.into());
        }
        status
    }
}

/// The `WWW-Authenticate` challenge for a refused token (RFC 6750): bare `Bearer` when there
/// was none, `error="invalid_token"` when it was bad.
pub fn www_authenticate(e: &mesh_runtime::auth::AuthError) -> HeaderValue {
    match e {
        mesh_runtime::auth::AuthError::Missing => HeaderValue::from_static("Bearer realm=\"mesh\""),
        _ => HeaderValue::from_static("Bearer realm=\"mesh\", error=\"invalid_token\""),
    }
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    json_bytes_response(status, bytes)
}

/// A response of already-serialized JSON.
pub fn json_bytes_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
