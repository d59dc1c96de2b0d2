//! Clients for calling other mesh services over gRPC.
//!
//! [`connect`] gives a lazily connecting channel wrapped in [`Propagate`], which every generated
//! client accepts (`InventoryServiceClient::new(channel)`). A peer addressed by IP gets one
//! connection; a peer addressed by DNS name (a headless Kubernetes Service) is balanced across
//! every address the name resolves to, re-resolved periodically ([`crate::balance`]).
//! `Propagate` makes each outgoing call
//! - carry the current call's trace (`traceparent`, the serving span as parent), and
//! - carry a deadline: the earliest of the one set on the request, the one inherited from the call
//!   being served, and the configured default; a call whose deadline has already passed fails
//!   with `DEADLINE_EXCEEDED` without touching the network. No outgoing call is unbounded.
//!
//! With [`ClientOptions::tls`], every connection is mTLS and the peer must prove the module
//! table's identity for it ([`crate::tls`]).
//!
//! Under `Propagate`, the resilience layers of [`crate::resilience`]: retries of idempotent unary
//! calls within a budget, then the upstream's circuit breaker (adaptive throttling).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, Either, Ready, ready};
use http::Uri;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tower_service::Service;

use crate::balance::{BalanceOptions, Balanced};
use crate::call_context::CallContext;
use crate::dns::DnsResolver;
use crate::endpoint_slices::{KubeClient, service_and_namespace};
use crate::grpc_timeout::{self, GRPC_TIMEOUT_HEADER};
use crate::resilience::{
    Breaker, BreakerOptions, ClientMetrics, ResilienceOptions, Retry, RetryBudget, RetryOptions,
    RetryPolicy, Throttle,
};
use crate::tls::ClientTls;
use crate::trace_context::TRACEPARENT_HEADER;

/// The channel type service code holds for calling a peer.
pub type MeshChannel = Propagate<PeerChannel>;

/// Settings of an outgoing channel.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of a call that has none of its own and inherits none.
    pub default_deadline: Duration,
    /// Time allowed to open a TCP connection.
    pub connect_timeout: Duration,
    /// Re-resolution and ejection settings for peers addressed by DNS name.
    pub balance: BalanceOptions,
    /// The resolver for DNS names; `None` uses the system configuration.
    pub resolver: Option<DnsResolver>,
    /// A Kubernetes API client (`MESH_DISCOVERY=endpoints`): peers named
    /// `<service>.<namespace>.svc...` are then found by watching their EndpointSlices instead of
    /// re-resolving DNS.
    pub kube: Option<KubeClient>,
    /// The upstream's name in metrics, logs and errors (the module name); `None` uses the URI's
    /// authority.
    pub name: Option<String>,
    /// Retries, retry budget and circuit breaker.
    pub resilience: ResilienceOptions,
    /// Where retries and breaker state are counted; `None` counts nothing.
    pub metrics: Option<ClientMetrics>,
    /// mTLS toward the upstream ([`crate::tls`]); `None` speaks plaintext HTTP/2.
    pub tls: Option<ClientTls>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            default_deadline: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            balance: BalanceOptions::default(),
            resolver: None,
            kube: None,
            name: None,
            resilience: ResilienceOptions::default(),
            metrics: None,
            tls: None,
        }
    }
}

/// A channel to `uri` that connects on first use (so services can start in any order) and
/// reconnects after failures. Must be called inside a tokio runtime.
pub fn connect(uri: Uri, options: ClientOptions) -> MeshChannel {
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| uri.authority().map(|a| a.to_string()).unwrap_or_default());
    let host = uri.host().unwrap_or_default().to_string();
    let is_ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok();
    let balanced = if is_ip {
        None
    } else {
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let balance = BalanceOptions {
            connect_timeout: options.connect_timeout,
            tls: options.tls.clone(),
            ..options.balance.clone()
        };
        let watched = options.kube.as_ref().zip(service_and_namespace(&host)).map(
            |(kube, (service, namespace))| {
                Balanced::endpoint_slices(
                    uri.clone(),
                    kube.0.clone(),
                    service,
                    namespace,
                    port,
                    balance.clone(),
                )
            },
        );
        let resolver = match options.resolver.clone() {
            Some(r) => Ok(r),
            None => DnsResolver::system(options.balance.refresh),
        };
        match (watched, resolver) {
            (Some(watched), _) => Some(watched),
            (None, Ok(resolver)) => {
                Some(Balanced::dns(uri.clone(), &host, port, resolver, balance))
            }
            (None, Err(e)) => {
                tracing::warn!(peer = %uri, error = %e, "no DNS resolver; connecting without client-side balancing");
                None
            }
        }
    };
    let channel = match balanced {
        Some(balanced) => PeerChannel::Balanced(balanced),
        None => {
            let endpoint = Endpoint::from(uri)
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true);
            PeerChannel::Direct(match &options.tls {
                Some(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
                None => endpoint.connect_lazy(),
            })
        }
    };
    layered(
        channel,
        ClientOptions {
            name: Some(name),
            ..options
        },
    )
}

/// [`connect`]'s layers (deadline and trace, retries, circuit breaker; `options` as for
/// [`connect`], `name` naming the upstream) around another transport to the upstream: for a
/// caller that brings its own connections (the edge's pool for its REST calls).
pub fn layered<S>(inner: S, options: ClientOptions) -> Propagate<S> {
    let name = options.name.unwrap_or_default();
    let resilience = options.resilience;
    let throttle = Throttle::new(name.clone(), resilience.breaker, options.metrics.clone());
    let mut idempotent = crate::resilience::idempotent_methods();
    idempotent.extend(resilience.idempotent);
    let policy = RetryPolicy {
        upstream: name,
        options: resilience.retry,
        idempotent,
        budget: RetryBudget::new(resilience.budget),
        metrics: options.metrics,
    };
    Propagate {
        inner: Retry::new(Breaker::new(inner, Arc::new(throttle)), Arc::new(policy)),
        default_deadline: options.default_deadline,
    }
}

/// One connection to a peer addressed by IP, or a balanced pool for a peer addressed by name.
#[derive(Debug, Clone)]
pub enum PeerChannel {
    /// A single (reconnecting) connection.
    Direct(Channel),
    /// Every address of a DNS name.
    Balanced(Balanced),
}

impl PeerChannel {
    /// The addresses in rotation of a balanced channel; empty for a direct one (its single
    /// address is resolved inside the connection).
    pub fn addresses(&self) -> Vec<std::net::SocketAddr> {
        match self {
            Self::Direct(_) => Vec::new(),
            Self::Balanced(b) => b.addresses(),
        }
    }
}

impl Service<http::Request<tonic::body::Body>> for PeerChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = Either<
        tonic::transport::channel::ResponseFuture,
        BoxFuture<'static, Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::Direct(c) => c.poll_ready(cx),
            Self::Balanced(b) => b.poll_ready(cx),
        }
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        match self {
            Self::Direct(c) => Either::Left(c.call(req)),
            Self::Balanced(b) => Either::Right(b.call(req)),
        }
    }
}

/// Adds trace context and a bounded deadline to every outgoing request, then sends it through
/// the upstream's retry and circuit-breaker layers ([`crate::resilience`]).
#[derive(Debug, Clone)]
pub struct Propagate<S> {
    inner: Retry<Breaker<S>>,
    default_deadline: Duration,
}

impl<S> Propagate<S> {
    /// Wraps `inner` without retries or breaker; calls with no other deadline get
    /// `default_deadline`.
    pub fn new(inner: S, default_deadline: Duration) -> Self {
        let name = String::new();
        let resilience = ResilienceOptions {
            retry: RetryOptions {
                max_attempts: 1,
                ..RetryOptions::default()
            },
            breaker: BreakerOptions {
                k: 0.0,
                ..BreakerOptions::default()
            },
            ..ResilienceOptions::default()
        };
        let throttle = Throttle::new(name.clone(), resilience.breaker, None);
        let policy = RetryPolicy {
            upstream: name,
            options: resilience.retry,
            idempotent: Default::default(),
            budget: RetryBudget::new(resilience.budget),
            metrics: None,
        };
        Self {
            inner: Retry::new(Breaker::new(inner, Arc::new(throttle)), Arc::new(policy)),
            default_deadline,
        }
    }

    /// The upstream's circuit breaker.
    pub fn throttle(&self) -> &Arc<Throttle> {
        self.inner.get_ref().throttle()
    }
}

impl<S, E> Service<http::Request<tonic::body::Body>> for Propagate<S>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = E,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    E: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = E;
    type Future = Either<
        Ready<Result<Self::Response, E>>,
        <Retry<Breaker<S>> as Service<http::Request<tonic::body::Body>>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let now = Instant::now();
        let context = CallContext::current();
        let own = req
            .headers()
            .get(&GRPC_TIMEOUT_HEADER)
            .and_then(grpc_timeout::from_header)
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
        // Static names and a value written without `fmt`: this runs on every outgoing call.
        // Both values differ on every call, so they are sent as HPACK "never indexed"
        // literals: indexed, each would enter both ends' dynamic tables only to push out the
        // entries that do repeat (the path, content-type, te), which then cost a literal and an
        // insertion again on the next call.
        let headers = req.headers_mut();
        headers.insert(
            GRPC_TIMEOUT_HEADER,
            never_indexed(grpc_timeout::header_value(remaining)),
        );
        if let Some(context) = context {
            headers.insert(
                TRACEPARENT_HEADER,
                never_indexed(context.trace.header_value()),
            );
        }
        Either::Right(self.inner.call(req))
    }
}

/// `value` marked as an HPACK "never indexed" literal (a value that never repeats).
pub fn never_indexed(mut value: http::HeaderValue) -> http::HeaderValue {
    value.set_sensitive(true);
    value
}
