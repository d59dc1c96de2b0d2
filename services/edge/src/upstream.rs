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

use http::HeaderMap;
use mesh_runtime::client::MeshChannel;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tonic::metadata::{MetadataKey, MetadataValue};

use crate::codec::DynamicCodec;
use crate::error::EdgeError;

/// Request headers the edge passes to upstreams as gRPC metadata.
pub const FORWARDED_HEADERS: &[&str] = &["authorization", "x-request-id", "accept-language"];

/// One upstream: a name for messages and a channel.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The module name (`product`) or the configured address.
    pub name: String,
    /// The channel.
    pub channel: MeshChannel,
}

/// Upstreams by fully qualified gRPC service name.
#[derive(Debug, Clone, Default)]
pub struct Upstreams {
    by_service: BTreeMap<String, Upstream>,
}

impl Upstreams {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `service` to `upstream`.
    pub fn insert(&mut self, service: impl Into<String>, upstream: Upstream) {
        self.by_service.insert(service.into(), upstream);
    }

    /// The upstream of `service`.
    pub fn get(&self, service: &str) -> Option<&Upstream> {
        self.by_service.get(service)
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

/// Calls the unary `path` on `upstream` with `message`, passing the forwarded `headers` as
/// metadata; decodes the response as `output`.
pub async fn unary(
    upstream: &Upstream,
    service: &str,
    path: http::uri::PathAndQuery,
    message: DynamicMessage,
    output: MessageDescriptor,
    headers: &HeaderMap,
    max_message_bytes: usize,
) -> Result<DynamicMessage, EdgeError> {
    let down = |detail: String| EdgeError::UpstreamDown {
        upstream: upstream.name.clone(),
        service: service.to_string(),
        detail,
    };
    let mut grpc = tonic::client::Grpc::new(upstream.channel.clone())
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    grpc.ready().await.map_err(|e| down(e.to_string()))?;
    let mut request = tonic::Request::new(message);
    for name in FORWARDED_HEADERS {
        if let Some(value) = headers.get(*name)
            && let (Ok(key), Ok(value)) = (
                MetadataKey::from_bytes(name.as_bytes()),
                MetadataValue::try_from(value.as_bytes()),
            )
        {
            request.metadata_mut().insert(key, value);
        }
    }
    let deadline = mesh_runtime::CallContext::current().and_then(|c| c.deadline);
    match grpc.unary(request, path, DynamicCodec::new(output)).await {
        Ok(response) => Ok(response.into_inner()),
        Err(status)
            if status.code() == tonic::Code::Cancelled
                && deadline.is_some_and(|d| tokio::time::Instant::now() >= d) =>
        {
            // tonic servers answer CANCELLED when the caller's grpc-timeout fires; to the
            // caller that is its deadline passing.
            Err(EdgeError::Upstream {
                status: tonic::Status::deadline_exceeded(format!(
                    "{service} did not answer within the request's deadline (grpc-timeout)"
                )),
                details: Vec::new(),
            })
        }
        Err(status) if status.code() == tonic::Code::Unavailable && status.source().is_some() => {
            // A transport failure (connection refused, reset), not an answer from the service.
            let mut detail = status.message().to_string();
            let mut source = status.source();
            while let Some(s) = source {
                detail = format!("{detail}: {s}");
                source = s.source();
            }
            Err(down(detail))
        }
        Err(status) => Err(EdgeError::Upstream {
            status,
            details: Vec::new(),
        }),
    }
}
