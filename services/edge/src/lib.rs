//! The edge: the public entry point of the mesh, on one port (8080 by default).
//!
//! - REST/JSON: every RPC with a `google.api.http` rule in the descriptor set is a route
//!   ([`routes`]); the request becomes a protobuf message ([`transcode`]), goes to the owning
//!   service over gRPC ([`upstream`], [`codec`]; a [`pool`] of connections per upstream), and the answer or the error comes back as JSON
//!   ([`status_map`], [`error`]).
//! - gRPC: health and reflection are answered by the edge itself (from the descriptor set, so
//!   `grpcurl <edge> list` shows every public service); every other call is proxied, streaming
//!   included, to the owning service ([`grpc_proxy`]). gRPC-Web (browsers, HTTP/1.1) is
//!   translated to gRPC and back on the same port ([`grpc_web`]).
//! - Paths no rule owns go to the legacy upstream when one is configured ([`legacy`]).
//! - [`envoy`] writes an equivalent Envoy bootstrap (`mesh envoy-config`), for teams on Envoy.
//! - Bearer tokens are verified with auth's JWKS on every RPC not declared public ([`auth`]),
//!   and each client ([`client_key`]) has a token bucket, in process or in Redis
//!   ([`rate_limit`], [`redis_limit`]); both apply to REST and gRPC alike.
//! - Request ids, CORS and a body size limit apply to REST; settings come from [`config`].
//!
//! No code here is specific to one service: the routes, messages and upstreams all come from the
//! descriptor set (ours, embedded, plus any extra sets) and the configuration.

pub mod auth;
pub mod client_key;
pub mod codec;
pub mod config;
pub mod envoy;
pub mod error;
pub mod grpc_proxy;
pub mod grpc_web;
pub mod http_rule;
pub mod legacy;
pub mod openapi;
pub mod path_template;
pub mod pool;
pub mod rate_limit;
pub mod redis_limit;
pub mod routes;
pub mod status_map;
pub mod transcode;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use mesh_runtime::client::ClientOptions;
use mesh_runtime::{BuildError, ServiceContext, ServiceRoutes};
use prost_reflect::DescriptorPool;

use crate::auth::{EdgeAuth, PublicRoutes};
use crate::config::EdgeConfig;
use crate::error::{EdgeError, json_bytes_response};
use crate::legacy::Legacy;
use crate::rate_limit::{Limiter, RateLimiter};
use crate::routes::{Lookup, RouteTable};
use crate::upstream::{Upstream, Upstreams};

/// The request id header, set on every request (kept from the client when valid) and response.
pub const REQUEST_ID: &str = "x-request-id";

/// Why the edge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A descriptor set does not decode or clashes with the contracts.
    #[error("descriptor set {source_name}: {reason}")]
    DescriptorSet {
        /// Which set (`embedded` or a path).
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// The edge settings are invalid.
    #[error(transparent)]
    Config(#[from] mesh_runtime::config::ConfigError),
    /// The `google.api.http` rules are invalid.
    #[error(transparent)]
    Routes(#[from] routes::RoutesError),
    /// A service with REST rules has no upstream.
    #[error(
        "service {0} has google.api.http rules but no upstream; add `{0}=http://host:port` to MESH_EDGE_UPSTREAMS or `--upstream {0}=host:port`"
    )]
    NoUpstream(String),
}

/// Loads the embedded contracts plus the encoded descriptor sets in `extra`; files already
/// loaded (e.g. `google/api/http.proto` in a `buf build` image) are skipped.
pub fn load_pool(extra: &[(String, Vec<u8>)]) -> Result<DescriptorPool, SetupError> {
    let mut pool = DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET).map_err(|e| {
        SetupError::DescriptorSet {
            source_name: "embedded".into(),
            reason: e.to_string(),
        }
    })?;
    for (name, bytes) in extra {
        let err = |reason: String| SetupError::DescriptorSet {
            source_name: name.clone(),
            reason,
        };
        let set = DescriptorPool::decode(bytes.as_slice()).map_err(|e| err(e.to_string()))?;
        for file in set.files() {
            if pool.get_file_by_name(file.name()).is_some() {
                continue;
            }
            pool.decode_file_descriptor_proto(file.encode_to_vec().as_slice())
                .map_err(|e| err(format!("{}: {e}", file.name())))?;
        }
    }
    Ok(pool)
}

/// Everything a request needs: routes, upstreams, the descriptor pool and the settings.
#[derive(Debug)]
pub struct Edge {
    routes: RouteTable,
    upstreams: Upstreams,
    pool: DescriptorPool,
    config: EdgeConfig,
    legacy: Option<Legacy>,
    limiter: Option<Limiter>,
    auth: Option<EdgeAuth>,
    max_message_bytes: usize,
    openapi: Vec<u8>,
}

impl Edge {
    /// Builds the edge over `pool`, with `upstreams` for the services it fronts.
    pub fn new(
        pool: DescriptorPool,
        config: EdgeConfig,
        upstreams: Upstreams,
        max_message_bytes: usize,
    ) -> Result<Self, SetupError> {
        let routes = RouteTable::build(&pool, |s| upstreams.get(s).is_some())?;
        let extension = pool.get_extension_by_name(http_rule::HTTP_EXTENSION);
        for service in pool.services() {
            if upstreams.get(service.full_name()).is_none()
                && service.methods().any(|m| {
                    http_rule::bindings(&m, extension.as_ref()).is_ok_and(|b| !b.is_empty())
                })
            {
                return Err(SetupError::NoUpstream(service.full_name().to_string()));
            }
        }
        let openapi = serde_json::to_vec_pretty(&openapi::document(&routes)).unwrap_or_default();
        Ok(Self {
            legacy: config.legacy_url.clone().map(Legacy::new),
            limiter: config
                .rate_limit
                .map(|l| Limiter::Memory(RateLimiter::new(l))),
            auth: None,
            routes,
            upstreams,
            pool,
            config,
            max_message_bytes,
            openapi,
        })
    }

    /// Verifies tokens with `auth` (without it, the edge checks none).
    pub fn with_auth(mut self, auth: EdgeAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Limits clients with `limiter` instead of the in-process bucket of the settings.
    pub fn with_limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Auth and the rate limit for a call of `rpc` (`pkg.Service/Method`; `None` for a path no
    /// RPC owns, which is limited but not guarded).
    async fn admit(
        &self,
        rpc: Option<&str>,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<(), EdgeError> {
        let guarded = rpc.is_some_and(|r| self.auth.as_ref().is_some_and(|a| !a.is_public(r)));
        let token = match &self.auth {
            Some(auth) if guarded || self.limiter.is_some() => auth.identify(headers).await,
            _ => None,
        };
        if let Some(limiter) = &self.limiter {
            let subject = match &token {
                Some(Ok(identity)) => Some(identity.subject.as_str()),
                _ => None,
            };
            let ip = client_key::client_ip(peer, headers, &self.config.trusted_proxies);
            limiter
                .check(&client_key::key(subject, ip))
                .await
                .map_err(|retry_after_secs| EdgeError::RateLimited { retry_after_secs })?;
        }
        if let Some(auth) = &self.auth {
            auth.decide(rpc, token)?;
        }
        Ok(())
    }

    /// A native gRPC call: admitted, then proxied.
    pub(crate) async fn grpc(&self, req: Request<Body>, peer: Option<SocketAddr>) -> Response {
        let rpc = req.uri().path().trim_start_matches('/');
        if let Err(e) = self.admit(Some(rpc), req.headers(), peer).await {
            return e.into_status().into_http::<Body>();
        }
        grpc_proxy::proxy(&self.upstreams, req).await
    }

    /// The route table.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The OpenAPI document, as served at `/openapi.json`.
    pub fn openapi_json(&self) -> &[u8] {
        &self.openapi
    }

    /// The edge as the routes of a runtime server: health and reflection for every fronted
    /// service, and everything else handled by the edge.
    pub fn service_routes(self: Arc<Self>) -> ServiceRoutes {
        let mut routes = ServiceRoutes::new();
        for service in self.upstreams.services() {
            // Leaked once at start: the server wants `'static` names, and there are a handful.
            routes = routes.advertise(Box::leak(service.to_string().into_boxed_str()));
        }
        routes
            .reflection_descriptor_set(self.pool.encode_to_vec())
            .fallback(self.router())
    }

    /// The HTTP side of the edge as an axum router (one fallback handler).
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(handle).with_state(self)
    }

    async fn rest(
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
                HeaderValue::from_static(
                    "authorization, content-type, x-request-id, grpc-timeout, x-grpc-web, x-user-agent",
                ),
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
        let message = transcode::request_message(&route, &bindings, parts.uri.query(), &body)?;
        let upstream = self
            .upstreams
            .get(route.service())
            .ok_or_else(|| EdgeError::Internal(format!("no upstream for {}", route.service())))?;
        let response = upstream::unary(
            upstream,
            route.service(),
            route.grpc_path.clone(),
            message,
            route.rpc.output(),
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
        let json = transcode::response_json(&route, &response)?;
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

    fn cors(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        let Some(origin) = origin else { return };
        let allowed = self
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
    if let Some(v) = headers.get(REQUEST_ID)
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

async fn handle(State(edge): State<Arc<Edge>>, mut req: Request<Body>) -> Response {
    let id = request_id(req.headers());
    req.headers_mut().insert(REQUEST_ID, id.clone());
    let peer = req
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|i| i.remote_addr());
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut response = match call_kind(req.headers()) {
        CallKind::Grpc => edge.grpc(req, peer).await,
        CallKind::GrpcWeb => grpc_web::call(edge.clone(), req, peer).await,
        CallKind::Rest => edge
            .rest(req, peer)
            .await
            .unwrap_or_else(EdgeError::into_response),
    };
    edge.cors(origin.as_ref(), response.headers_mut());
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

/// Builds the edge from the process context: the module table's constructor for `edge`.
///
/// Settings come from `MESH_EDGE_*` ([`config`]) and `mesh serve`'s `--descriptor-set` /
/// `--upstream` flags ([`config::set_flags`]); our services' upstreams from the context
/// (`MESH_<SERVICE>_ADDR`), others' from `MESH_EDGE_UPSTREAMS` and `--upstream`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let config = EdgeConfig::from_env(|k| std::env::var(k).ok())?.with_flags();
        let edge = from_context(&ctx, config)?;
        Ok(Arc::new(edge).service_routes())
    })
}

/// The edge for `ctx` with `config`.
pub fn from_context(ctx: &ServiceContext, config: EdgeConfig) -> Result<Edge, BuildError> {
    let mut extra = Vec::new();
    for path in &config.descriptor_sets {
        let bytes = std::fs::read(path).map_err(|e| SetupError::DescriptorSet {
            source_name: path.display().to_string(),
            reason: format!("reading it (MESH_EDGE_DESCRIPTOR_SETS): {e}"),
        })?;
        extra.push((path.display().to_string(), bytes));
    }
    let pool = load_pool(&extra)?;
    let modules: Vec<&str> = ctx
        .config()
        .services
        .keys()
        .copied()
        .filter(|m| *m != ctx.name())
        .collect();
    let mut upstreams = Upstreams::new();
    let mut by_module = std::collections::HashMap::new();
    for (service, module) in Upstreams::owned_services(&pool, &modules) {
        // `audit.v1.AuditService` is served by every service, so no one module owns it.
        if service.starts_with("audit.") {
            continue;
        }
        // One upstream (channel and pool) per module, shared by the services it owns.
        let upstream = match by_module.get(&module) {
            Some(upstream) => Upstream::clone(upstream),
            None => {
                let (uri, options) = ctx.peer(&module)?;
                let upstream = Upstream::connect_limited(
                    &module,
                    uri,
                    options,
                    config.upstream_connections,
                    config.upstream_max_in_flight,
                );
                by_module.insert(module, upstream.clone());
                upstream
            }
        };
        upstreams.insert(service, upstream);
    }
    let options = || ClientOptions {
        default_deadline: ctx.config().default_deadline,
        ..ClientOptions::default()
    };
    for (service, uri) in &config.upstreams {
        upstreams.insert(
            service.clone(),
            Upstream::connect_limited(
                uri.to_string(),
                uri.clone(),
                options(),
                config.upstream_connections,
                config.upstream_max_in_flight,
            ),
        );
    }
    let public = PublicRoutes::parse(&config.public_routes).map_err(|reason| {
        mesh_runtime::config::ConfigError {
            problems: vec![mesh_runtime::config::Problem {
                setting: "MESH_EDGE_PUBLIC_ROUTES".into(),
                value: config.public_routes.join(","),
                reason,
            }],
        }
    })?;
    let redis_url = config
        .rate_limit_redis_url
        .clone()
        .or_else(|| ctx.config().events.redis_url.clone());
    let limiter = match (config.rate_limit, redis_url) {
        (Some(limit), Some(url)) => Some(Limiter::Redis(
            redis_limit::RedisLimiter::connect(&url, redis_limit::DEFAULT_PREFIX, limit)
                .map_err(|e| format!("rate limit store {url} (MESH_EDGE_RATE_LIMIT_REDIS_URL or MESH_REDIS_URL): {e}"))?,
        )),
        _ => None,
    };
    let jwt = config.jwt;
    let mut edge = Edge::new(pool, config, upstreams, ctx.max_message_bytes())?;
    if jwt {
        edge = edge.with_auth(EdgeAuth::from_auth(ctx.channel("auth")?, public));
    }
    if let Some(limiter) = limiter {
        edge = edge.with_limiter(limiter);
    }
    Ok(edge)
}
