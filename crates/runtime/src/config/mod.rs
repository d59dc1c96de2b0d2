//! Process configuration from flags and `MESH_*` environment variables, validated at start.
//!
//! Every setting is read as text first and validated here, so that one error lists every bad
//! setting by its flag and variable name instead of stopping at the first.
//!
//! Per-service settings are environment variables only, since their names depend on the module
//! table: `MESH_<SERVICE>_PORT` (the service's gRPC port) and `MESH_<SERVICE>_ADDR` (the URL other
//! services use to reach it, e.g. `http://inventory.mesh.svc.cluster.local:50054`), with
//! `<SERVICE>` the service name in upper snake case (`iot-gateway` -> `IOT_GATEWAY`).
//! `MESH_<SERVICE>_DATABASE_URL` gives one service its own Postgres database, overriding
//! `--database-url` for it.
//!
//! - [`args`]: the flags and their variables, as text ([`RuntimeArgs`]);
//! - this module: the validated configuration ([`MeshConfig`] and its parts);
//! - [`validate`](MeshConfig::from_args): text to [`MeshConfig`], every problem kept;
//!   `parse`: the value parsers it uses.

mod args;
mod parse;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use http::Uri;

pub use self::args::{DEFAULT_ADMIN_PORT, RuntimeArgs, admin_port_following};
use crate::client_config::ClientSettings;
pub use crate::settings::{ConfigError, Problem, env_prefix};
pub use crate::storage::DatabaseTarget;

/// A service the process knows about: its name and default gRPC port, from the module table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The module name, e.g. `iot-gateway`.
    pub name: &'static str,
    /// The gRPC port used when `MESH_<SERVICE>_PORT` is not set.
    pub default_port: u16,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, with the trace and span ids of the call being served.
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// EnvFilter directives.
    pub filter: String,
    /// Output format.
    pub format: LogFormat,
}

/// Where one service listens and how others reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoint {
    /// The gRPC port it listens on (0 = any free port, for tests).
    pub port: u16,
    /// The URL other services use to call it; `None` means "this host, its port".
    pub addr: Option<Uri>,
}

/// Settings of the event bus and of event delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventConfig {
    /// Redis URL of the Redis Streams bus; `None` selects the in-process bus.
    pub redis_url: Option<String>,
    /// Deliveries before an event is dead-lettered (at least 1).
    pub max_deliveries: u32,
    /// First retry delay after a handler failure; doubles per retry.
    pub retry_backoff: Duration,
    /// Idle time after which another consumer reclaims an unacknowledged event.
    pub claim_idle: Duration,
    /// Heartbeat age after which a consumer is dead and its events are taken over.
    pub dead_after: Duration,
    /// How long events stay in the streams.
    pub retention: Duration,
    /// How long published outbox rows are kept; `None` keeps them forever.
    pub outbox_retention: Option<Duration>,
    /// Rows unsent this long after their commit are published by the relay's sweep.
    pub outbox_sweep_after: Duration,
}

impl Default for EventConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            max_deliveries: 5,
            retry_backoff: Duration::from_millis(200),
            claim_idle: crate::bus::DEFAULT_CLAIM_IDLE,
            dead_after: crate::bus::DEFAULT_DEAD_AFTER,
            retention: Duration::from_secs(7 * 24 * 3600),
            outbox_retention: None,
            outbox_sweep_after: Duration::from_secs(1),
        }
    }
}

/// The validated configuration of one `mesh` process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// Bind address of every listener.
    pub host: IpAddr,
    /// Admin HTTP port.
    pub admin_port: u16,
    /// Logging.
    pub log: LogConfig,
    /// Drain time after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Largest gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// Deadline of outgoing calls that inherit none.
    pub default_deadline: Duration,
    /// OTLP endpoint, when trace export is on.
    pub otlp_endpoint: Option<Uri>,
    /// Which traces are exported (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
    pub trace_sampler: crate::sampler::TraceSampler,
    /// How peers are found.
    pub discovery: DiscoveryConfig,
    /// Every service of the module table, by name.
    pub services: BTreeMap<&'static str, ServiceEndpoint>,
    /// Where each service of the module table keeps its data, by name.
    pub databases: BTreeMap<&'static str, DatabaseTarget>,
    /// Most Postgres connections per service.
    pub database_pool_size: u32,
    /// The event bus and delivery settings.
    pub events: EventConfig,
    /// Client resilience settings per upstream (`MESH_CLIENT_*`, `MESH_<UPSTREAM>_CLIENT_*`).
    pub clients: ClientSettings,
    /// The checked `MESH_PAGE_TOKEN_KEY`; `None`: the built-in public key. The binary installs
    /// it before any service starts.
    pub page_token_key: Option<crate::domain::page_token_key::PageTokenKey>,
}

/// Where the addresses of a peer addressed by DNS name come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscoveryMode {
    /// Resolve the name again every `dns_refresh`.
    #[default]
    Dns,
    /// Watch the Service's EndpointSlices through the Kubernetes API.
    Endpoints,
}

/// Peer discovery settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The source of addresses.
    pub mode: DiscoveryMode,
    /// Re-resolution interval in `Dns` mode.
    pub dns_refresh: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            mode: DiscoveryMode::Dns,
            dns_refresh: Duration::from_secs(5),
        }
    }
}
