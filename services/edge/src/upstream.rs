//! Upstreams by gRPC service: each service the edge fronts maps to one channel (one pooled,
//! multiplexed HTTP/2 connection that reconnects on failure), and the unary call the REST side
//! makes over it.
//!
//! Our own services are found by package: `product.v1.ProductService` belongs to the `product`
//! module, `iot.v1.GatewayService` to `iot-gateway` (the module whose first word is the package's);
//! their channels come from [`ServiceContext::channel`], so they propagate trace context and
//! deadlines. Other services get a channel to the address given with `MESH_EDGE_UPSTREAMS`.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Uri, header};
use mesh_runtime::client::{self, ClientOptions, MeshChannel, Propagate};
use prost_reflect::DescriptorPool;
use tonic::metadata::MetadataMap;

use crate::codec::BytesCodec;
use crate::error::EdgeError;
use crate::pool::ConnectionPool;

/// The request id header, set on every request (kept from the client when valid) and response
/// by the dispatch, and forwarded upstream. Defined here, below the dispatch, so both use one.
pub const REQUEST_ID: &str = "x-request-id";

/// [`REQUEST_ID`] as a header name: used per request without parsing the name each time.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);

/// Request headers the edge passes to upstreams as gRPC metadata.
pub const FORWARDED_HEADERS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    REQUEST_ID_HEADER,
    header::ACCEPT_LANGUAGE,
];

/// How many HTTP/2 connections the REST path opens to each upstream, by default
/// (`MESH_EDGE_UPSTREAM_CONNECTIONS`).
pub const DEFAULT_POOL_SIZE: usize = 4;

/// The REST path's client of one upstream: a [`ConnectionPool`] under the runtime's client
/// layers (deadline and trace, retries, circuit breaker).
pub type PooledChannel = Propagate<ConnectionPool>;

/// One upstream: a name for messages, a channel, and for upstreams addressed by IP a pool of
/// connections for the REST calls.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The module name (`product`) or the configured address.
    pub name: String,
    /// The channel: gRPC and gRPC-Web passthrough, and REST calls when there is no pool.
    pub channel: MeshChannel,
    /// The REST calls' connections ([`crate::pool`]); `None` for a DNS name, which the channel
    /// balances over its addresses.
    pub pooled: Option<PooledChannel>,
}

impl Upstream {
    /// An upstream whose calls all go over `channel`.
    pub fn new(name: impl Into<String>, channel: MeshChannel) -> Self {
        Self {
            name: name.into(),
            channel,
            pooled: None,
        }
    }

    /// An upstream at `uri`: a channel ([`client::connect`]) for the passthrough and, when `uri`'s host
    /// is an IP address, a pool of up to `pool_size` connections for REST calls, under the same
    /// client layers and `options`.
    pub fn connect(
        name: impl Into<String>,
        uri: Uri,
        options: ClientOptions,
        pool_size: usize,
    ) -> Self {
        Self::connect_limited(
            name,
            uri,
            options,
            pool_size,
            crate::pool::DEFAULT_MAX_IN_FLIGHT,
        )
    }

    /// As [`connect`](Self::connect), the pool refusing REST calls beyond `max_in_flight` in
    /// flight (`MESH_EDGE_UPSTREAM_MAX_IN_FLIGHT`).
    pub fn connect_limited(
        name: impl Into<String>,
        uri: Uri,
        options: ClientOptions,
        pool_size: usize,
        max_in_flight: usize,
    ) -> Self {
        let pooled = ConnectionPool::for_ip(&uri, pool_size, options.connect_timeout).map(|pool| {
            client::layered(
                pool.with_max_in_flight(max_in_flight)
                    .with_tls(options.tls.clone()),
                options.clone(),
            )
        });
        Self {
            name: name.into(),
            channel: client::connect(uri, options),
            pooled,
        }
    }
}

/// Upstreams by fully qualified gRPC service name.
#[derive(Debug, Clone, Default)]
pub struct Upstreams {
    by_service: BTreeMap<String, Arc<Upstream>>,
}

impl Upstreams {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `service` to `upstream`.
    pub fn insert(&mut self, service: impl Into<String>, upstream: Upstream) {
        self.by_service.insert(service.into(), Arc::new(upstream));
    }

    /// The upstream of `service`.
    pub fn get(&self, service: &str) -> Option<&Upstream> {
        self.by_service.get(service).map(Arc::as_ref)
    }

    /// The upstream of `service`, shared (the edge holds it on each route of the service).
    pub fn shared(&self, service: &str) -> Option<Arc<Upstream>> {
        self.by_service.get(service).cloned()
    }

    /// The services with an upstream, sorted.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.by_service.keys().map(String::as_str)
    }

    /// The module of `modules` that owns the fully qualified `service`, by its package's first
    /// word.
    pub fn owner<'m>(service: &str, modules: &[&'m str]) -> Option<&'m str> {
        let package = service.split('.').next()?;
        modules
            .iter()
            .copied()
            .find(|m| *m == package || m.split('-').next() == Some(package))
    }

    /// Every service of `pool` whose package a module of `modules` owns.
    pub fn owned_services(pool: &DescriptorPool, modules: &[&str]) -> Vec<(String, String)> {
        pool.services()
            .filter_map(|s| {
                let module = Self::owner(s.full_name(), modules)?;
                Some((s.full_name().to_string(), module.to_string()))
            })
            .collect()
    }
}

/// Calls the unary `path` on `upstream` with the encoded request `message`, passing the
/// forwarded `headers` as metadata; the answer's encoded bytes.
pub async fn unary(
    upstream: &Upstream,
    service: &str,
    path: http::uri::PathAndQuery,
    message: Bytes,
    headers: &HeaderMap,
    max_message_bytes: usize,
) -> Result<Bytes, EdgeError> {
    let down = |detail: String| EdgeError::UpstreamDown {
        upstream: upstream.name.clone(),
        service: service.to_string(),
        detail,
    };
    // Static names and shared values: no name parsed, no value validated or copied per request
    // (a header value the edge received is a valid metadata value as it is).
    let mut forwarded = HeaderMap::new();
    for name in FORWARDED_HEADERS {
        if let Some(value) = headers.get(&name) {
            forwarded.insert(name, value.clone());
        }
    }
    // A request id differs on every call: never indexed in HPACK (`client::never_indexed`).
    if let Some(id) = forwarded.get_mut(&REQUEST_ID_HEADER) {
        id.set_sensitive(true);
    }
    let request = tonic::Request::from_parts(
        MetadataMap::from_headers(forwarded),
        Default::default(),
        message,
    );
    let deadline = mesh_runtime::CallContext::current().and_then(|c| c.deadline);
    let codec = BytesCodec;
    let attempt = async {
        match &upstream.pooled {
            Some(pooled) => call(pooled.clone(), request, path, codec, max_message_bytes).await,
            None => {
                call(
                    upstream.channel.clone(),
                    request,
                    path,
                    codec,
                    max_message_bytes,
                )
                .await
            }
        }
    };
    let result = match deadline {
        // The edge's own server ends the request when the client's grpc-timeout passes, with an
        // empty gRPC answer; a REST client must get its 504 first, so the call ends 1 ms early.
        Some(deadline) => {
            let early = deadline
                .checked_sub(Duration::from_millis(1))
                .unwrap_or(deadline);
            match tokio::time::timeout_at(early, attempt).await {
                Ok(result) => result,
                Err(_) => return Err(deadline_exceeded(service)),
            }
        }
        None => attempt.await,
    };
    match result {
        Ok(response) => Ok(response),
        Err(CallError::NotReady(detail)) => Err(down(detail)),
        Err(CallError::Status(status))
            if status.code() == tonic::Code::Cancelled
                && deadline.is_some_and(|d| tokio::time::Instant::now() >= d) =>
        {
            // tonic servers answer CANCELLED when the caller's grpc-timeout fires; to the
            // caller that is its deadline passing.
            Err(deadline_exceeded(service))
        }
        Err(CallError::Status(status))
            if status.code() == tonic::Code::Unavailable && status.source().is_some() =>
        {
            // A transport failure (connection refused, reset), not an answer from the service.
            let mut detail = status.message().to_string();
            let mut source = status.source();
            while let Some(s) = source {
                detail = format!("{detail}: {s}");
                source = s.source();
            }
            Err(down(detail))
        }
        Err(CallError::Status(status)) => Err(EdgeError::Upstream {
            status,
            details: Vec::new(),
        }),
    }
}

/// The answer when the request's deadline passes before `service` answered.
fn deadline_exceeded(service: &str) -> EdgeError {
    EdgeError::Upstream {
        status: tonic::Status::deadline_exceeded(format!(
            "{service} did not answer within the request's deadline (grpc-timeout)"
        )),
        details: Vec::new(),
    }
}

/// Why a unary call over a transport failed.
enum CallError {
    /// The transport was not ready (its reason).
    NotReady(String),
    /// The call's status.
    Status(tonic::Status),
}

/// One unary call of `path` over `transport` (a channel or the pool).
async fn call<T>(
    transport: T,
    request: tonic::Request<Bytes>,
    path: http::uri::PathAndQuery,
    codec: BytesCodec,
    max_message_bytes: usize,
) -> Result<Bytes, CallError>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError>,
{
    let mut grpc = tonic::client::Grpc::new(transport)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    grpc.ready()
        .await
        .map_err(|e| CallError::NotReady(e.into().to_string()))?;
    grpc.unary(request, path, codec)
        .await
        .map(tonic::Response::into_inner)
        .map_err(CallError::Status)
}
