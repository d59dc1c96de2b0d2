//! The edge: the public entry point of the mesh, on one port (8080 by default).
//!
//! - REST/JSON: every RPC with a `google.api.http` rule in the descriptor set is a route
//!   ([`routes`], looked up through [`route_index`]); the request becomes a protobuf message ([`transcode`]), goes to the owning
//!   service over gRPC ([`upstream`], [`codec`]; a [`pool`] of connections per upstream), and the answer or the error comes back as JSON
//!   ([`wire_json`] straight from the answer's bytes; [`status_map`], [`error`]).
//! - gRPC: health and reflection are answered by the edge itself (from the descriptor set, so
//!   `grpcurl <edge> list` shows every public service); every other call is proxied, streaming
//!   included, to the owning service ([`grpc_proxy`]). gRPC-Web (browsers, HTTP/1.1) is
//!   translated to gRPC and back on the same port ([`grpc_web`]).
//! - Paths no rule owns go to the legacy upstream when one is configured ([`legacy`]).
//! - [`envoy`] writes an equivalent Envoy bootstrap (`mesh envoy-config`), for teams on Envoy.
//! - Bearer tokens are verified with auth's JWKS on every RPC not declared public ([`auth`]),
//!   and each client ([`client_key`]) has a token bucket, in process or in Redis
//!   ([`rate_limit`], [`redis_limit`]); both apply to REST and gRPC alike.
//! - Request ids, CORS ([`cors`]: the preflight echoes the headers policy allows) and a body
//!   size limit apply to REST; settings come from [`config`].
//! - On HTTP/1.1, a request body the edge did not read (it answered first) is discarded before
//!   the answer goes out, so the connection stays usable ([`drain`]).
//!
//! The request path: [`dispatch`] (by content type) -> [`edge`] (admission) -> [`rest`],
//! [`grpc_proxy`] or [`grpc_web`]; [`setup`] builds it all from the process context.
//!
//! No code here is specific to one service: the routes, messages and upstreams all come from the
//! descriptor set (ours, embedded, plus any extra sets) and the configuration.

pub mod auth;
pub mod client_key;
pub mod codec;
pub mod config;
pub mod cors;
pub mod descriptors;
pub mod dispatch;
pub mod drain;
pub mod edge;
pub mod envoy;
pub mod error;
pub mod grpc_proxy;
pub mod grpc_web;
pub mod http_rule;
pub mod legacy;
pub mod limiter;
pub mod openapi;
pub mod path_template;
pub mod pool;
pub mod rate_limit;
pub mod redis_limit;
pub mod rest;
pub mod route_index;
pub mod routes;
pub mod setup;
pub mod status_map;
pub mod transcode;
pub mod upstream;
pub mod wire_json;

pub use descriptors::{SetupError, load_pool};
pub use dispatch::REQUEST_ID;
pub use edge::Edge;
pub use setup::{build, from_context};
