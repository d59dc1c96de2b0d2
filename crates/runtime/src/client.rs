//! Clients for calling other mesh services over gRPC.
//!
//! [`connect`] gives a lazily connecting channel wrapped in [`Propagate`], which every generated
//! client accepts (`InventoryServiceClient::new(channel)`). `Propagate` makes each outgoing call
//! - carry the current call's trace (`traceparent`, the serving span as parent), and
//! - carry a deadline: the earliest of the one set on the request, the one inherited from the call
//!   being served, and the configured default; a call whose deadline has already passed fails
//!   with `DEADLINE_EXCEEDED` without touching the network. No outgoing call is unbounded.

use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Either, Ready, ready};
use http::{HeaderValue, Uri};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tower_service::Service;

use crate::call_context::CallContext;
use crate::grpc_timeout::{self, GRPC_TIMEOUT};
use crate::trace_context::TRACEPARENT;

/// The channel type service code holds for calling a peer.
pub type MeshChannel = Propagate<Channel>;

/// Settings of an outgoing channel.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Deadline of a call that has none of its own and inherits none.
    pub default_deadline: Duration,
    /// Time allowed to open a TCP connection.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            default_deadline: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// A channel to `uri` that connects on first use (so services can start in any order) and
/// reconnects after failures.
pub fn connect(uri: Uri, options: ClientOptions) -> MeshChannel {
    let channel = Endpoint::from(uri)
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy();
    Propagate::new(channel, options.default_deadline)
}

/// Adds trace context and a bounded deadline to every outgoing request.
#[derive(Debug, Clone)]
pub struct Propagate<S> {
    inner: S,
    default_deadline: Duration,
}

impl<S> Propagate<S> {
    /// Wraps `inner`; calls with no other deadline get `default_deadline`.
    pub fn new(inner: S, default_deadline: Duration) -> Self {
        Self {
            inner,
            default_deadline,
        }
    }
}

impl<S, E> Service<http::Request<tonic::body::Body>> for Propagate<S>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = E,
        >,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = E;
    type Future = Either<Ready<Result<Self::Response, E>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let now = Instant::now();
        let context = CallContext::current();
        let own = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout::parse)
            .map(|d| now + d);
        let inherited = context.and_then(|c| c.deadline);
        let deadline = match (own, inherited) {
            (Some(a), Some(b)) => a.min(b),
            (Some(d), None) | (None, Some(d)) => d,
            (None, None) => now + self.default_deadline,
        };
        let Some(remaining) = deadline
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
        else {
            let status = tonic::Status::deadline_exceeded(format!(
                "{}: the caller's deadline had already passed before this call was sent",
                req.uri().path()
            ));
            return Either::Left(ready(Ok(status.into_http())));
        };
        let headers = req.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&grpc_timeout::format(remaining)) {
            headers.insert(GRPC_TIMEOUT, v);
        }
        if let Some(context) = context
            && let Ok(v) = HeaderValue::from_str(&context.trace.to_string())
        {
            headers.insert(TRACEPARENT, v);
        }
        Either::Right(self.inner.call(req))
    }
}
