//! Name resolution for peers addressed by DNS name, e.g. the headless Kubernetes Service
//! `inventory.mesh.svc.cluster.local`, whose A/AAAA records list every ready pod.
//!
//! The resolver bypasses the OS cache (no nscd-style staleness): every lookup asks the configured
//! name servers, and answers are cached no longer than the refresh interval of the balancer.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// A failed lookup.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The system resolver configuration (`/etc/resolv.conf`) could not be read.
    #[error("reading the system DNS configuration: {0}")]
    SystemConfig(String),
    /// The name did not resolve.
    #[error("resolving {name}: {reason}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// Why it failed.
        reason: String,
    },
}

/// Resolves host names to socket addresses.
#[derive(Clone)]
pub struct DnsResolver {
    resolver: TokioResolver,
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsResolver").finish_non_exhaustive()
    }
}

impl DnsResolver {
    /// Uses the system configuration (`/etc/resolv.conf`: the cluster DNS in a pod). Answers are
    /// kept at most `max_ttl`.
    pub fn system(max_ttl: Duration) -> Result<Self, DnsError> {
        let mut builder =
            TokioResolver::builder_tokio().map_err(|e| DnsError::SystemConfig(e.to_string()))?;
        tune(builder.options_mut(), max_ttl);
        Ok(Self {
            resolver: builder
                .build()
                .map_err(|e| DnsError::SystemConfig(e.to_string()))?,
        })
    }

    /// Asks only the name server at `server` over UDP (tests run one on loopback).
    pub fn with_server(server: SocketAddr, max_ttl: Duration) -> Result<Self, DnsError> {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
            server.ip(),
            true,
            vec![udp],
        )]);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        tune(builder.options_mut(), max_ttl);
        Ok(Self {
            resolver: builder
                .build()
                .map_err(|e| DnsError::SystemConfig(e.to_string()))?,
        })
    }

    /// Every address `host` resolves to, with `port`, sorted. An IP literal resolves to itself.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let lookup = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| DnsError::Lookup {
                name: host.to_string(),
                reason: e.to_string(),
            })?;
        let mut addrs: Vec<SocketAddr> =
            lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        addrs.sort();
        addrs.dedup();
        Ok(addrs)
    }
}

fn tune(options: &mut ResolverOpts, max_ttl: Duration) {
    options.positive_max_ttl = Some(max_ttl);
    options.negative_max_ttl = Some(max_ttl);
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
}
