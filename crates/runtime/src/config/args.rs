//! The flags (and their `MESH_*` variables) every `mesh serve` target shares, read as text:
//! [`MeshConfig::from_args`](super::MeshConfig::from_args) validates them all at once.

/// The admin port of a process serving every service, when `--admin-port` / `MESH_ADMIN_PORT`
/// is not given.
pub const DEFAULT_ADMIN_PORT: u16 = 9090;

/// The admin port of a process serving some of the services (its first one on `service_port`)
/// when `--admin-port` / `MESH_ADMIN_PORT` is not given: the service's port + 1000, or 0 (any
/// free port) when the service's port is 0 or the sum is not a port.
pub fn admin_port_following(service_port: u16) -> u16 {
    match service_port {
        0 => 0,
        port => port.checked_add(1000).unwrap_or(0),
    }
}

/// The flags (and their environment variables) every `mesh serve` target shares.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Address every gRPC and admin listener binds to (0.0.0.0 in Kubernetes).
    #[arg(long, env = "MESH_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port of the admin HTTP server (/metrics, /healthz, /readyz); 0 picks a free port.
    /// Default: 9090 when the process serves every service (`all`); otherwise its first
    /// target's gRPC port + 1000 (product 50053 -> 51053, edge 8080 -> 9080), so processes of
    /// one service each can share a host.
    #[arg(long, env = "MESH_ADMIN_PORT")]
    pub admin_port: Option<String>,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `info,mesh_runtime=debug`.
    #[arg(long, env = "MESH_LOG", default_value = "info")]
    pub log: String,

    /// Log format: `json` (one object per line, with trace ids) or `text`.
    #[arg(long, env = "MESH_LOG_FORMAT", default_value = "json")]
    pub log_format: String,

    /// How long in-flight calls may take to finish after SIGTERM/SIGINT, e.g. `25s`.
    #[arg(long, env = "MESH_SHUTDOWN_GRACE", default_value = "25s")]
    pub shutdown_grace: String,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "MESH_MAX_MESSAGE_BYTES", default_value = "4194304")]
    pub max_message_bytes: String,

    /// Deadline of an outgoing call that inherits none from the call it serves, e.g. `10s`.
    #[arg(long, env = "MESH_DEFAULT_DEADLINE", default_value = "10s")]
    pub default_deadline: String,

    /// OTLP/gRPC endpoint for trace export (e.g. `http://otel-collector:4317`); off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// How peers addressed by DNS name are found: `dns` (re-resolve the name, e.g. a headless
    /// Service) or `endpoints` (watch the Service's EndpointSlices through the Kubernetes API).
    #[arg(long, env = "MESH_DISCOVERY", default_value = "dns")]
    pub discovery: String,

    /// How often peers' DNS names are resolved again (with `--discovery dns`), e.g. `5s`.
    #[arg(long, env = "MESH_DNS_REFRESH", default_value = "5s")]
    pub dns_refresh: String,

    /// Folder of the embedded SQLite databases (`<data-dir>/<service>.db`), used by every service
    /// without a Postgres URL.
    #[arg(long, env = "MESH_DATA_DIR", default_value = "./data")]
    pub data_dir: String,

    /// Postgres URL shared by every service, each in its own schema (the service name with `-`
    /// as `_`); `MESH_<SERVICE>_DATABASE_URL` overrides it per service. Unset: SQLite files.
    #[arg(long, env = "MESH_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Most Postgres connections each service's pool holds; with every service in one process
    /// (`mesh serve all`), the services together may open this many times their number.
    #[arg(long, env = "MESH_DATABASE_POOL_SIZE", default_value = "10")]
    pub database_pool_size: String,

    /// Redis URL of the event bus (Redis Streams), e.g. `redis://redis:6379`. Unset: the
    /// in-process bus, which only connects services running in this process.
    #[arg(long, env = "MESH_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Deliveries of one event to a consumer before it goes to the dead-letter stream.
    #[arg(long, env = "MESH_EVENT_MAX_DELIVERIES", default_value = "5")]
    pub event_max_deliveries: String,

    /// First retry delay of a failed event handler; doubles per retry (capped at 30s), e.g. `200ms`.
    #[arg(long, env = "MESH_EVENT_RETRY_BACKOFF", default_value = "200ms")]
    pub event_retry_backoff: String,

    /// How long an event may stay unacknowledged by a live consumer (alive but stuck) before
    /// another consumer of the same service reclaims it, e.g. `10s`. Must stay well below the
    /// order saga's timeout (`MESH_ORDER_SAGA_TIMEOUT`, at most half of it).
    #[arg(long, env = "MESH_EVENT_CLAIM_IDLE", default_value = "10s")]
    pub event_claim_idle: String,

    /// A consumer whose heartbeat is this old is dead, and the others of its group take its
    /// unacknowledged events over at once, e.g. `1500ms`. Shorter than the claim time.
    #[arg(long, env = "MESH_EVENT_DEAD_AFTER", default_value = "1500ms")]
    pub event_dead_after: String,

    /// Outbox rows that the committing process did not publish within this bound (it crashed
    /// right after its commit, or the bus was down) are published by the relay's sweep, e.g. `1s`.
    #[arg(long, env = "MESH_OUTBOX_SWEEP_AFTER", default_value = "1s")]
    pub outbox_sweep_after: String,

    /// How long events stay in the bus's streams before trimming, e.g. `7d`.
    #[arg(long, env = "MESH_EVENT_RETENTION", default_value = "7d")]
    pub event_retention: String,

    /// How long published outbox rows are kept for the audit trail, e.g. `90d`, or `forever`.
    #[arg(long, env = "MESH_OUTBOX_RETENTION", default_value = "forever")]
    pub outbox_retention: String,
}
