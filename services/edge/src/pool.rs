//! A pool of HTTP/2 connections to one upstream, for the edge's REST calls.
//!
//! Every REST request becomes one unary gRPC call, so the REST path sends many small calls at
//! once. A tonic `Channel` carries them all over one connection, and hands each request to a
//! worker task through a queue (tower's `Buffer`) before it reaches the connection. The pool
//! instead holds up to `size` connections (hyper's HTTP/2 client, no queue in between): a call
//! takes the first connection with fewer than [`DEFAULT_STREAMS_BEFORE_SPREAD`] calls in flight
//! (else the one with the fewest), opening it on first use and again after it closed (the
//! upstream restarted). Calls are packed onto one connection until it carries that many, because
//! on one connection the HTTP/2 frames of concurrent calls share system calls at both ends
//! (measured on loopback at 16 concurrent REST clients: 4.0 system calls per call packed, 4.6
//! spread evenly over four connections); more connections take over only under a load that one
//! connection's task on each side would serialize. It is a tower service of the same shape as a channel, so the runtime's
//! layers (deadline and trace, retries, circuit breaker: [`mesh_runtime::client::layered`]) wrap
//! it as they wrap a channel.
//!
//! The pool is also the edge's shedder for its own overload: above `max_in_flight` calls in flight
//! to the upstream (`MESH_EDGE_UPSTREAM_MAX_IN_FLIGHT`, default [`DEFAULT_MAX_IN_FLIGHT`]) a call
//! is refused at once with `RESOURCE_EXHAUSTED` and `retry-after: 1` (REST: `429` with
//! `Retry-After`), marked [`LocalRejection`]: it is not the upstream's answer, so the circuit
//! breaker does not count it and the retry layer does not retry it.
//!
//! With mTLS on ([`ConnectionPool::with_tls`]), each pooled connection runs the same handshake as
//! the runtime's channels ([`mesh_runtime::tls::ClientTls`]): the upstream proves its identity,
//! the edge presents its certificate.
//!
//! Only upstreams addressed by IP get a pool: a DNS name is balanced over all of its addresses by
//! the runtime's channel (re-resolved, failing addresses ejected), which the pool does not do.

use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_runtime::resilience::LocalRejection;
use mesh_runtime::tls::ClientTls;
use tokio::net::TcpStream;
use tonic::Status;

/// REST calls in flight to one upstream before the pool refuses more, by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// Calls in flight on one connection before the next call goes to another, by default.
pub const DEFAULT_STREAMS_BEFORE_SPREAD: usize = 64;

/// A transport failure as a status with the cause as its source: `UNAVAILABLE` (so the edge
/// reports the upstream as down), or, unless `unavailable`, the status tonic maps the error to
/// (a reset stream's code).
fn transport_status(
    context: String,
    error: impl StdError + Send + Sync + 'static,
    unavailable: bool,
) -> Status {
    let error: Arc<dyn StdError + Send + Sync> = Arc::new(error);
    let mapped = match unavailable {
        true => None,
        false => Status::try_from_error(Box::new(ErrorChain(error.clone()))).ok(),
    };
    let mut status = match mapped {
        Some(status) if status.code() != tonic::Code::Unknown => status,
        // The cause is the source, which the edge's message appends.
        _ => Status::unavailable(context),
    };
    status.set_source(error);
    status
}

/// Lets an `Arc`ed error go through [`Status::try_from_error`], which wants a box.
#[derive(Debug)]
struct ErrorChain(Arc<dyn StdError + Send + Sync>);

impl std::fmt::Display for ErrorChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for ErrorChain {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// Up to `size` HTTP/2 connections to one upstream; cheap to clone (one shared pool).
#[derive(Clone)]
pub struct ConnectionPool {
    shared: Arc<Shared>,
}

struct Shared {
    scheme: Scheme,
    authority: Authority,
    /// The authority's IP address and port, to connect to.
    address: std::net::SocketAddr,
    connect_timeout: Duration,
    slots: Box<[Slot]>,
    /// Calls in flight over every slot, and the most allowed.
    in_flight: AtomicUsize,
    max_in_flight: usize,
    /// Calls one connection carries before the next call goes to another.
    spread_above: usize,
    /// mTLS toward the upstream, when on.
    tls: Option<ClientTls>,
}

#[derive(Default)]
struct Slot {
    /// The open connection, if any (a clone of the sender is taken per call).
    sender: std::sync::Mutex<Option<SendRequest<tonic::body::Body>>>,
    /// Held while (re)connecting, so one call connects and the others wait for it.
    connecting: tokio::sync::Mutex<()>,
    /// Calls in flight on this connection.
    in_flight: AtomicUsize,
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("authority", &self.shared.authority)
            .field("size", &self.shared.slots.len())
            .finish()
    }
}

impl ConnectionPool {
    /// A pool of up to `size` (at least 1) connections to `uri` when its host is an IP address
    /// (`http://10.0.0.7:50053`); `None` for a DNS name or a URI without an authority. Nothing
    /// connects until the first call.
    pub fn for_ip(uri: &Uri, size: usize, connect_timeout: Duration) -> Option<Self> {
        let authority = uri.authority()?.clone();
        let ip = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok()?;
        let address = std::net::SocketAddr::new(ip, authority.port_u16().unwrap_or(80));
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        if scheme != Scheme::HTTP {
            // The pool speaks cleartext HTTP/2 only.
            return None;
        }
        Some(Self {
            shared: Arc::new(Shared {
                scheme,
                authority,
                address,
                connect_timeout,
                slots: (0..size.max(1)).map(|_| Slot::default()).collect(),
                in_flight: AtomicUsize::new(0),
                max_in_flight: DEFAULT_MAX_IN_FLIGHT,
                spread_above: DEFAULT_STREAMS_BEFORE_SPREAD,
                tls: None,
            }),
        })
    }

    /// The same pool refusing calls beyond `max` in flight (at least 1); call before cloning.
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.max_in_flight = max.max(1);
        }
        self
    }

    /// The same pool putting a call on another connection once the first carries `streams`
    /// calls (at least 1; 1 spreads every concurrent call); call before cloning.
    pub fn with_streams_before_spread(mut self, streams: usize) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.spread_above = streams.max(1);
        }
        self
    }

    /// The same pool speaking mTLS with `tls` (none: plaintext); call before cloning.
    pub fn with_tls(mut self, tls: Option<ClientTls>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.tls = tls;
        }
        self
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// How many connections are open now.
    pub fn open_connections(&self) -> usize {
        self.shared
            .slots
            .iter()
            .filter(|s| s.live().is_some())
            .count()
    }
}

impl Shared {
    /// The first slot carrying fewer than `spread_above` calls, else the one with the fewest
    /// calls in flight (the first on a tie).
    fn pick(&self) -> &Slot {
        let mut best = &self.slots[0];
        let mut least = usize::MAX;
        for slot in self.slots.iter() {
            let n = slot.in_flight.load(Ordering::Relaxed);
            if n < self.spread_above {
                return slot;
            }
            if n < least {
                best = slot;
                least = n;
            }
        }
        best
    }

    async fn open(&self) -> Result<SendRequest<tonic::body::Body>, Status> {
        let connecting = format!("connecting to {}", self.authority);
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.address))
            .await
            .map_err(|e| {
                transport_status(
                    format!("{connecting}: no answer within {:?}", self.connect_timeout),
                    e,
                    true,
                )
            })?
            .map_err(|e| transport_status(connecting.clone(), e, true))?;
        stream
            .set_nodelay(true)
            .map_err(|e| transport_status(connecting.clone(), e, true))?;
        match &self.tls {
            Some(tls) => {
                let stream = tls.handshake(stream).await.map_err(|e| {
                    transport_status(format!("TLS handshake with {}", self.authority), e, true)
                })?;
                self.handshake(stream).await
            }
            None => self.handshake(stream).await,
        }
    }

    /// The HTTP/2 handshake on an open stream; the connection then runs in its own task.
    async fn handshake<T>(&self, stream: T) -> Result<SendRequest<tonic::body::Body>, Status>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        // The keep-alive settings of the runtime's channels.
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                transport_status(format!("HTTP/2 handshake with {}", self.authority), e, true)
            })?;
        let authority = self.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream = %authority, error = %e, "pooled upstream connection closed");
            }
        });
        Ok(sender)
    }
}

impl Slot {
    /// The slot's connection if it is open.
    fn live(&self) -> Option<SendRequest<tonic::body::Body>> {
        self.sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }

    /// The slot's connection, opened if it has none or it closed.
    async fn sender(&self, shared: &Shared) -> Result<SendRequest<tonic::body::Body>, Status> {
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let sender = shared.open().await?;
        *self.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
        Ok(sender)
    }
}

/// Counts a call in flight on a slot and in the pool until dropped.
struct InFlight<'a>(&'a AtomicUsize, &'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pool's own refusal: `RESOURCE_EXHAUSTED` with `retry-after: 1`, marked as made locally.
fn overloaded(shared: &Shared, in_flight: usize) -> Response<tonic::body::Body> {
    let status = Status::resource_exhausted(format!(
        "the edge is overloaded: {in_flight} calls in flight to {} reach its limit of {} (MESH_EDGE_UPSTREAM_MAX_IN_FLIGHT); retry later",
        shared.authority, shared.max_in_flight
    ));
    let mut response = status.into_http::<tonic::body::Body>();
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response.extensions_mut().insert(LocalRejection);
    response
}

impl tower_service::Service<Request<tonic::body::Body>> for ConnectionPool {
    type Response = Response<tonic::body::Body>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Connections open inside the call, so a call to a down upstream fails with its reason.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let in_flight = shared.in_flight.fetch_add(1, Ordering::Relaxed);
            if in_flight >= shared.max_in_flight {
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                return Ok(overloaded(&shared, in_flight));
            }
            let slot = shared.pick();
            slot.in_flight.fetch_add(1, Ordering::Relaxed);
            let _in_flight = InFlight(&slot.in_flight, &shared.in_flight);
            let mut sender = slot.sender(&shared).await?;
            let (mut parts, body) = req.into_parts();
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(shared.scheme.clone());
            uri.authority = Some(shared.authority.clone());
            uri.path_and_query = parts.uri.path_and_query().cloned();
            parts.uri =
                Uri::from_parts(uri).map_err(|e| Status::internal(format!("request URI: {e}")))?;
            parts.version = http::Version::HTTP_2;
            let response = sender
                .send_request(Request::from_parts(parts, body))
                .await
                .map_err(|e| {
                    // Canceled: the connection went away under the call (the edge itself never
                    // cancels a call it still waits for), so the upstream is unavailable.
                    let gone = e.is_canceled();
                    transport_status(format!("calling {}", shared.authority), e, gone)
                })?;
            Ok(response.map(tonic::body::Body::new))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_upstreams_get_a_pool() {
        let pool = |u: &str| ConnectionPool::for_ip(&u.parse().unwrap(), 4, Duration::from_secs(1));
        assert!(pool("http://127.0.0.1:50053").is_some());
        assert!(pool("http://[::1]:50053").is_some());
        assert!(pool("http://product.mesh.svc.cluster.local:50053").is_none());
        assert!(pool("https://10.0.0.1:443").is_none());
        assert_eq!(
            pool("http://127.0.0.1:1").unwrap().shared.slots.len(),
            4,
            "one slot per connection"
        );
    }
}
