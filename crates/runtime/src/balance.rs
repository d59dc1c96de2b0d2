//! Client-side load balancing across every address of a peer, as Kubernetes headless Services
//! need. The addresses come from a source: the peer's DNS name re-resolved every `refresh`
//! ([`Balanced::dns`]), or its EndpointSlices watched through the Kubernetes API
//! ([`Balanced::endpoint_slices`], defined in [`crate::endpoint_slices`]). New addresses join the
//! rotation, vanished ones leave it, and an address whose connection fails is ejected for a while
//! (exponential backoff, like Envoy's outlier detection) so the next calls go elsewhere.
//!
//! Picks round-robin among the addresses not ejected. A call that fails to reach its address
//! fails (`UNAVAILABLE`); retrying it is the caller's decision (only idempotent methods should),
//! and the retry lands on another address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::Uri;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tower_service::Service;

use crate::dns::DnsResolver;
use crate::tls::ClientTls;

/// Settings of a balanced channel.
#[derive(Debug, Clone)]
pub struct BalanceOptions {
    /// How often the name is resolved again.
    pub refresh: Duration,
    /// First ejection of a failing address; doubles with each consecutive failure.
    pub eject_base: Duration,
    /// Longest ejection.
    pub eject_max: Duration,
    /// Time allowed to open a TCP connection to one address.
    pub connect_timeout: Duration,
    /// mTLS toward every address ([`crate::tls`]); `None` speaks plaintext HTTP/2.
    pub tls: Option<ClientTls>,
}

impl Default for BalanceOptions {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(5),
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// A channel to every address of a DNS name. Cheap to clone; clones share the pool, and the
/// background re-resolution stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Balanced {
    pool: Arc<Pool>,
}

#[derive(Debug)]
struct Pool {
    authority: String,
    origin: Uri,
    options: BalanceOptions,
    members: RwLock<Vec<Arc<Member>>>,
    next: AtomicUsize,
    resolved: watch::Sender<bool>,
    last_error: Mutex<Option<String>>,
}

#[derive(Debug)]
struct Member {
    addr: SocketAddr,
    channel: Channel,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    ejected_until: Option<Instant>,
    consecutive_failures: u32,
}

impl Balanced {
    /// Balances over the addresses `host` resolves to (with `port`), resolving now and then
    /// every `options.refresh`. `origin` is the peer's URL, kept as the `:authority` of calls.
    /// Must be called inside a tokio runtime.
    pub fn dns(
        origin: Uri,
        host: &str,
        port: u16,
        resolver: DnsResolver,
        options: BalanceOptions,
    ) -> Self {
        let every = options.refresh;
        let balanced = Self::empty(origin, format!("{host}:{port}"), options);
        let (source, host) = (balanced.source(), host.to_string());
        crate::helper_task::spawn("dns-refresh", move || {
            refresh(source.clone(), host.clone(), port, resolver.clone(), every)
        });
        balanced
    }

    /// A pool with no addresses yet, for a source to fill.
    pub(crate) fn empty(origin: Uri, authority: String, options: BalanceOptions) -> Self {
        let (resolved, _) = watch::channel(false);
        Self {
            pool: Arc::new(Pool {
                authority,
                origin,
                options,
                members: RwLock::new(Vec::new()),
                next: AtomicUsize::new(0),
                resolved,
                last_error: Mutex::new(None),
            }),
        }
    }

    /// What feeds this pool its addresses.
    pub(crate) fn source(&self) -> Source {
        Source(Arc::downgrade(&self.pool))
    }

    /// The addresses in rotation now (ejected ones included), sorted.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        read(&self.pool.members).iter().map(|m| m.addr).collect()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

/// What feeds a pool its addresses. Holds the pool weakly: when every clone of the [`Balanced`]
/// is dropped, the source's task sees it and stops.
#[derive(Debug, Clone)]
pub(crate) struct Source(Weak<Pool>);

impl Source {
    /// Whether anyone still uses the pool.
    pub(crate) fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }

    /// Makes `addrs` the rotation (sorted and deduplicated here).
    pub(crate) fn set(&self, mut addrs: Vec<SocketAddr>) {
        if let Some(pool) = self.0.upgrade() {
            addrs.sort();
            addrs.dedup();
            *lock(&pool.last_error) = None;
            pool.replace(addrs);
            pool.resolved.send_replace(true);
        }
    }

    /// Reports a failure of the source; logged once per distinct error, and the last known
    /// addresses stay in rotation.
    pub(crate) fn failed(&self, error: &str) {
        if let Some(pool) = self.0.upgrade() {
            let mut last = lock(&pool.last_error);
            if last.as_deref() != Some(error) {
                tracing::warn!(peer = %pool.authority, error, "peer discovery failed; keeping the last known addresses");
                *last = Some(error.to_string());
            }
            drop(last);
            pool.resolved.send_replace(true);
        }
    }
}

/// Re-resolves `host` every `every` until the pool is dropped.
async fn refresh(source: Source, host: String, port: u16, resolver: DnsResolver, every: Duration) {
    while source.alive() {
        match resolver.resolve(&host, port).await {
            Ok(addrs) => source.set(addrs),
            Err(e) => source.failed(&e.to_string()),
        }
        tokio::time::sleep(every).await;
    }
}

impl Pool {
    /// Makes `addrs` the rotation, keeping the connections of addresses that stay.
    fn replace(&self, addrs: Vec<SocketAddr>) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let current: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
        if current == addrs {
            return;
        }
        let mut next = Vec::with_capacity(addrs.len());
        for addr in &addrs {
            match members.iter().find(|m| m.addr == *addr) {
                Some(kept) => next.push(kept.clone()),
                None => next.push(Arc::new(Member {
                    addr: *addr,
                    channel: self.channel_to(*addr),
                    health: Mutex::new(Health::default()),
                })),
            }
        }
        tracing::info!(peer = %self.authority, addresses = ?addrs, "peer addresses changed");
        *members = next;
    }

    fn channel_to(&self, addr: SocketAddr) -> Channel {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .expect("a socket address makes a valid URI")
            .origin(self.origin.clone())
            .connect_timeout(self.options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        match &self.options.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
            None => endpoint.connect_lazy(),
        }
    }

    /// The next address in rotation that is not ejected; when all are, the one back soonest.
    fn pick(&self) -> Option<Arc<Member>> {
        let members = read(&self.members);
        if members.is_empty() {
            return None;
        }
        let now = Instant::now();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = members.len();
        (0..n)
            .map(|i| &members[(start + i) % n])
            .find(|m| !m.ejected(now))
            .or_else(|| members.iter().min_by_key(|m| lock(&m.health).ejected_until))
            .cloned()
    }
}

impl Member {
    fn ejected(&self, now: Instant) -> bool {
        lock(&self.health)
            .ejected_until
            .is_some_and(|until| until > now)
    }

    fn succeeded(&self) {
        let mut health = lock(&self.health);
        health.consecutive_failures = 0;
        health.ejected_until = None;
    }

    fn failed(&self, options: &BalanceOptions) -> Duration {
        let mut health = lock(&self.health);
        let exponent = health.consecutive_failures.min(16);
        health.consecutive_failures += 1;
        let ejection = options
            .eject_base
            .saturating_mul(1 << exponent)
            .min(options.eject_max);
        health.ejected_until = Some(Instant::now() + ejection);
        ejection
    }
}

impl Service<http::Request<tonic::body::Body>> for Balanced {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per address; it is awaited in `call` once an address is picked.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let pool = self.pool.clone();
        Box::pin(async move {
            let mut resolved = pool.resolved.subscribe();
            if !*resolved.borrow() {
                let wait = pool.options.connect_timeout;
                let _ = tokio::time::timeout(wait, resolved.wait_for(|r| *r)).await;
            }
            let Some(member) = pool.pick() else {
                let reason = lock(&pool.last_error)
                    .clone()
                    .unwrap_or_else(|| "it resolves to no address".into());
                let status = tonic::Status::unavailable(format!(
                    "no address to call {} at: {reason}",
                    pool.authority
                ));
                return Ok(status.into_http());
            };
            let mut channel = member.channel.clone();
            futures::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
            match channel.call(req).await {
                Ok(response) => {
                    member.succeeded();
                    Ok(response)
                }
                Err(e) => {
                    let ejected_for = member.failed(&pool.options);
                    tracing::warn!(peer = %pool.authority, addr = %member.addr, error = %e, ejected_for = ?ejected_for, "call to peer address failed; ejecting it");
                    Err(e)
                }
            }
        })
    }
}
