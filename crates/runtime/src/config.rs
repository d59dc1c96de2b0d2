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

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use crate::client_config::ClientSettings;
pub use crate::settings::{ConfigError, Problem, env_prefix};

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

/// Where one service keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// An embedded SQLite file.
    Sqlite {
        /// The database file, `<data-dir>/<service>.db`.
        path: PathBuf,
    },
    /// A Postgres database, the service's tables in their own schema.
    Postgres {
        /// The connection URL.
        url: String,
        /// The schema: the service name with `-` as `_`.
        schema: String,
    },
}

impl DatabaseTarget {
    /// The Postgres schema of `service`: its name with `-` as `_` (`iot-gateway` -> `iot_gateway`).
    pub fn schema_name(service: &str) -> String {
        service.replace('-', "_")
    }
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

impl MeshConfig {
    /// Validates `args` and the per-service variables read through `env` (the process
    /// environment in production, a map in tests) for every service in `services`.
    pub fn from_args(
        args: &RuntimeArgs,
        services: &[ServiceSpec],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut check = |setting: &str, value: &str, reason: Option<String>| {
            if let Some(reason) = reason {
                problems.push(Problem {
                    setting: setting.to_string(),
                    value: value.to_string(),
                    reason,
                });
            }
        };

        let host = args.host.parse::<IpAddr>();
        check(
            "--host / MESH_HOST",
            &args.host,
            host.as_ref()
                .err()
                .map(|_| "expected an IP address such as 127.0.0.1 or 0.0.0.0".into()),
        );
        let admin_port = args
            .admin_port
            .as_deref()
            .map_or(Ok(DEFAULT_ADMIN_PORT), parse_port);
        check(
            "--admin-port / MESH_ADMIN_PORT",
            args.admin_port.as_deref().unwrap_or_default(),
            admin_port.as_ref().err().cloned(),
        );
        let filter = tracing_subscriber::EnvFilter::try_new(&args.log);
        check(
            "--log / MESH_LOG",
            &args.log,
            filter
                .as_ref()
                .err()
                .map(|e| format!("not a tracing filter ({e}); e.g. `info` or `warn,mesh=debug`")),
        );
        let format = match args.log_format.as_str() {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            _ => Err("expected `json` or `text`".to_string()),
        };
        check(
            "--log-format / MESH_LOG_FORMAT",
            &args.log_format,
            format.as_ref().err().cloned(),
        );
        let grace = parse_duration(&args.shutdown_grace);
        check(
            "--shutdown-grace / MESH_SHUTDOWN_GRACE",
            &args.shutdown_grace,
            grace.as_ref().err().cloned(),
        );
        let max_message = args
            .max_message_bytes
            .parse::<usize>()
            .map_err(|_| "expected a whole number of bytes".to_string())
            .and_then(|n| {
                if (1024..=1 << 30).contains(&n) {
                    Ok(n)
                } else {
                    Err("expected between 1024 and 1073741824 bytes".to_string())
                }
            });
        check(
            "--max-message-bytes / MESH_MAX_MESSAGE_BYTES",
            &args.max_message_bytes,
            max_message.as_ref().err().cloned(),
        );
        let deadline = parse_duration(&args.default_deadline).and_then(|d| {
            if d.is_zero() {
                Err("a deadline must be longer than zero".to_string())
            } else {
                Ok(d)
            }
        });
        check(
            "--default-deadline / MESH_DEFAULT_DEADLINE",
            &args.default_deadline,
            deadline.as_ref().err().cloned(),
        );
        let otlp = args.otlp_endpoint.as_deref().map(parse_url).transpose();
        check(
            "--otlp-endpoint / OTEL_EXPORTER_OTLP_ENDPOINT",
            args.otlp_endpoint.as_deref().unwrap_or_default(),
            otlp.as_ref().err().cloned(),
        );
        let mode = match args.discovery.as_str() {
            "dns" => Ok(DiscoveryMode::Dns),
            "endpoints" => Ok(DiscoveryMode::Endpoints),
            _ => Err("expected `dns` or `endpoints`".to_string()),
        };
        check(
            "--discovery / MESH_DISCOVERY",
            &args.discovery,
            mode.as_ref().err().cloned(),
        );
        let dns_refresh = parse_duration(&args.dns_refresh).and_then(|d| {
            if d < Duration::from_millis(10) {
                Err(
                    "re-resolving more often than every 10ms would flood the DNS server"
                        .to_string(),
                )
            } else {
                Ok(d)
            }
        });
        check(
            "--dns-refresh / MESH_DNS_REFRESH",
            &args.dns_refresh,
            dns_refresh.as_ref().err().cloned(),
        );
        let discovery = DiscoveryConfig {
            mode: mode.unwrap_or_default(),
            dns_refresh: dns_refresh.unwrap_or(Duration::from_secs(5)),
        };

        let database_url = args
            .database_url
            .as_deref()
            .map(parse_postgres_url)
            .transpose();
        check(
            "--database-url / MESH_DATABASE_URL",
            args.database_url.as_deref().unwrap_or_default(),
            database_url.as_ref().err().cloned(),
        );
        check(
            "--data-dir / MESH_DATA_DIR",
            &args.data_dir,
            args.data_dir
                .trim()
                .is_empty()
                .then(|| "expected a folder path, e.g. ./data".to_string()),
        );
        let pool_size = args
            .database_pool_size
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| "expected a whole number of connections from 1 to 1000".to_string());
        check(
            "--database-pool-size / MESH_DATABASE_POOL_SIZE",
            &args.database_pool_size,
            pool_size.as_ref().err().cloned(),
        );
        let redis_url = args.redis_url.as_deref().map(parse_redis_url).transpose();
        check(
            "--redis-url / MESH_REDIS_URL",
            args.redis_url.as_deref().unwrap_or_default(),
            redis_url.as_ref().err().cloned(),
        );
        let max_deliveries = args
            .event_max_deliveries
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| "expected a whole number from 1 to 1000".to_string());
        check(
            "--event-max-deliveries / MESH_EVENT_MAX_DELIVERIES",
            &args.event_max_deliveries,
            max_deliveries.as_ref().err().cloned(),
        );
        let nonzero = |raw: &str| {
            parse_duration(raw).and_then(|d| {
                if d.is_zero() {
                    Err("must be longer than zero".to_string())
                } else {
                    Ok(d)
                }
            })
        };
        let retry_backoff = nonzero(&args.event_retry_backoff);
        check(
            "--event-retry-backoff / MESH_EVENT_RETRY_BACKOFF",
            &args.event_retry_backoff,
            retry_backoff.as_ref().err().cloned(),
        );
        let claim_idle = nonzero(&args.event_claim_idle);
        check(
            "--event-claim-idle / MESH_EVENT_CLAIM_IDLE",
            &args.event_claim_idle,
            claim_idle.as_ref().err().cloned(),
        );
        let dead_after = nonzero(&args.event_dead_after);
        check(
            "--event-dead-after / MESH_EVENT_DEAD_AFTER",
            &args.event_dead_after,
            dead_after.as_ref().err().cloned(),
        );
        if let (Ok(claim), Ok(dead)) = (&claim_idle, &dead_after)
            && dead >= claim
        {
            check(
                "--event-dead-after / MESH_EVENT_DEAD_AFTER",
                &args.event_dead_after,
                Some(format!(
                    "must be shorter than --event-claim-idle / MESH_EVENT_CLAIM_IDLE ({}): a dead consumer is detected by its heartbeat before its events would be reclaimed by age",
                    args.event_claim_idle.trim()
                )),
            );
        }
        // The order saga gives up on an order after MESH_ORDER_SAGA_TIMEOUT: an event stuck with
        // a consumer must be reclaimed (and retried) well before that, or orders that would have
        // gone through are cancelled. (An unparsable value is the order service's to report.)
        if let (Ok(claim), Some(raw)) = (&claim_idle, env("MESH_ORDER_SAGA_TIMEOUT"))
            && let Ok(saga) = parse_duration(&raw)
            && !saga.is_zero()
            && saga < *claim * 2
        {
            check(
                "--event-claim-idle / MESH_EVENT_CLAIM_IDLE",
                &args.event_claim_idle,
                Some(format!(
                    "must be at most half of MESH_ORDER_SAGA_TIMEOUT ({}): an event reclaimed after the claim time must still have time to finish the saga before the timeout cancels the order; lower MESH_EVENT_CLAIM_IDLE or raise MESH_ORDER_SAGA_TIMEOUT",
                    raw.trim()
                )),
            );
        }
        let sweep_after = nonzero(&args.outbox_sweep_after);
        check(
            "--outbox-sweep-after / MESH_OUTBOX_SWEEP_AFTER",
            &args.outbox_sweep_after,
            sweep_after.as_ref().err().cloned(),
        );
        let retention = nonzero(&args.event_retention);
        check(
            "--event-retention / MESH_EVENT_RETENTION",
            &args.event_retention,
            retention.as_ref().err().cloned(),
        );
        let outbox_retention = match args.outbox_retention.trim() {
            "forever" => Ok(None),
            raw => nonzero(raw)
                .map(Some)
                .map_err(|e| format!("{e}; or `forever`")),
        };
        check(
            "--outbox-retention / MESH_OUTBOX_RETENTION",
            &args.outbox_retention,
            outbox_retention.as_ref().err().cloned(),
        );

        let mut databases = BTreeMap::new();
        for spec in services {
            let var = format!("{}_DATABASE_URL", env_prefix(spec.name));
            let url = match env(&var) {
                Some(raw) => {
                    let url = parse_postgres_url(&raw);
                    check(&var, &raw, url.as_ref().err().cloned());
                    url.ok()
                }
                None => database_url.as_ref().ok().cloned().flatten(),
            };
            let target = match url {
                Some(url) => DatabaseTarget::Postgres {
                    url,
                    schema: DatabaseTarget::schema_name(spec.name),
                },
                None => DatabaseTarget::Sqlite {
                    path: PathBuf::from(args.data_dir.trim()).join(format!("{}.db", spec.name)),
                },
            };
            databases.insert(spec.name, target);
        }
        let events = match (
            redis_url,
            max_deliveries,
            retry_backoff,
            (claim_idle, dead_after),
            retention,
            (outbox_retention, sweep_after),
        ) {
            (
                Ok(redis_url),
                Ok(max),
                Ok(backoff),
                (Ok(claim), Ok(dead)),
                Ok(retention),
                (Ok(outbox), Ok(sweep)),
            ) => Some(EventConfig {
                redis_url,
                max_deliveries: max,
                retry_backoff: backoff,
                claim_idle: claim,
                dead_after: dead,
                retention,
                outbox_retention: outbox,
                outbox_sweep_after: sweep,
            }),
            _ => None,
        };

        let mut endpoints = BTreeMap::new();
        for spec in services {
            let prefix = env_prefix(spec.name);
            let port_var = format!("{prefix}_PORT");
            let port = match env(&port_var) {
                Some(raw) => {
                    let port = parse_port(&raw);
                    check(&port_var, &raw, port.as_ref().err().cloned());
                    port.unwrap_or(spec.default_port)
                }
                None => spec.default_port,
            };
            let addr_var = format!("{prefix}_ADDR");
            let addr = match env(&addr_var) {
                Some(raw) => {
                    let addr = parse_peer_addr(&raw);
                    check(&addr_var, &raw, addr.as_ref().err().cloned());
                    addr.ok()
                }
                None => None,
            };
            endpoints.insert(spec.name, ServiceEndpoint { port, addr });
        }
        let names: Vec<&'static str> = services.iter().map(|s| s.name).collect();
        let clients = ClientSettings::from_env(&names, &env).unwrap_or_else(|bad| {
            problems.extend(bad);
            ClientSettings::default()
        });

        match (
            host,
            admin_port,
            filter,
            format,
            grace,
            max_message,
            deadline,
            otlp,
        ) {
            (Ok(host), Ok(admin_port), Ok(_), Ok(format), Ok(grace), Ok(max), Ok(dl), Ok(otlp))
                if problems.is_empty() && events.is_some() =>
            {
                Ok(Self {
                    host,
                    admin_port,
                    log: LogConfig {
                        filter: args.log.clone(),
                        format,
                    },
                    shutdown_grace: grace,
                    max_message_bytes: max,
                    default_deadline: dl,
                    otlp_endpoint: otlp,
                    discovery,
                    services: endpoints,
                    databases,
                    database_pool_size: pool_size.unwrap_or(crate::storage::DEFAULT_POOL_SIZE),
                    events: events.unwrap_or_default(),
                    clients,
                })
            }
            _ => Err(ConfigError { problems }),
        }
    }
}

fn parse_port(raw: &str) -> Result<u16, String> {
    raw.trim()
        .parse::<u16>()
        .map_err(|_| "expected a port number from 0 to 65535".to_string())
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim())
        .map_err(|e| format!("expected a duration such as `500ms`, `25s` or `1m` ({e})"))
}

fn parse_postgres_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    match raw.split_once("://") {
        Some(("postgres" | "postgresql", rest)) if !rest.is_empty() => Ok(raw.to_string()),
        _ => Err(
            "expected a Postgres URL such as postgres://user:password@host:5432/mesh".to_string(),
        ),
    }
}

fn parse_redis_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    match raw.split_once("://") {
        Some(("redis" | "rediss", rest)) if !rest.is_empty() => Ok(raw.to_string()),
        _ => Err("expected a Redis URL such as redis://host:6379".to_string()),
    }
}

fn parse_url(raw: &str) -> Result<Uri, String> {
    let uri: Uri = raw
        .trim()
        .parse()
        .map_err(|e| format!("expected a URL such as http://host:port ({e})"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err("expected an http:// or https:// URL with a host, e.g. http://host:port".into()),
    }
}

/// A peer's address: a URL (`http://host:port`, `https://...`) or a bare `host:port`, which
/// means plain HTTP/2 (`http://host:port`).
fn parse_peer_addr(raw: &str) -> Result<Uri, String> {
    let raw = raw.trim();
    if raw.contains("://") {
        return parse_url(raw);
    }
    match raw.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            parse_url(&format!("http://{raw}"))
        }
        _ => Err(
            "expected host:port (e.g. inventory:50054) or a URL such as http://host:port".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RuntimeArgs,
    }

    const SERVICES: &[ServiceSpec] = &[
        ServiceSpec {
            name: "product",
            default_port: 50053,
        },
        ServiceSpec {
            name: "iot-gateway",
            default_port: 50061,
        },
    ];

    fn parse(argv: &[&str], env: &[(&str, &str)]) -> Result<MeshConfig, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("mesh").chain(argv.iter().copied()))
            .expect("flags parse as text");
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        MeshConfig::from_args(&cli.args, SERVICES, |k| env.get(k).cloned())
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(&[], &[]).expect("defaults validate");
        assert_eq!(config.admin_port, 9090);
        assert_eq!(config.services["iot-gateway"].port, 50061);
        assert_eq!(config.shutdown_grace, Duration::from_secs(25));
        assert_eq!(config.database_pool_size, 10);
    }

    #[test]
    fn the_pool_size_is_bounded_and_client_settings_join_the_one_error() {
        let config = parse(&["--database-pool-size", "4"], &[]).expect("valid");
        assert_eq!(config.database_pool_size, 4);
        let err = parse(
            &["--database-pool-size", "0"],
            &[("MESH_PRODUCT_CLIENT_BREAKER_K", "0")],
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("MESH_DATABASE_POOL_SIZE"), "{text}");
        assert!(text.contains("MESH_PRODUCT_CLIENT_BREAKER_K"), "{text}");
    }

    #[test]
    fn per_service_variables_use_upper_snake_names() {
        let config = parse(
            &[],
            &[
                ("MESH_IOT_GATEWAY_PORT", "6001"),
                (
                    "MESH_PRODUCT_ADDR",
                    "http://product.mesh.svc.cluster.local:50053",
                ),
            ],
        )
        .expect("valid");
        assert_eq!(config.services["iot-gateway"].port, 6001);
        assert_eq!(
            config.services["product"].addr.as_ref().unwrap().host(),
            Some("product.mesh.svc.cluster.local")
        );
    }

    #[test]
    fn a_peer_address_is_a_url_or_a_bare_host_and_port() {
        let config = parse(
            &[],
            &[
                ("MESH_PRODUCT_ADDR", "product.mesh:50053"),
                ("MESH_IOT_GATEWAY_ADDR", "https://gw.example.com"),
            ],
        )
        .expect("valid");
        assert_eq!(
            config.services["product"]
                .addr
                .as_ref()
                .unwrap()
                .to_string(),
            "http://product.mesh:50053/"
        );
        assert_eq!(
            config.services["iot-gateway"]
                .addr
                .as_ref()
                .unwrap()
                .scheme_str(),
            Some("https")
        );
        for bad in ["product", "product:http", ":50053", "ftp://x:1"] {
            let err = parse(&[], &[("MESH_PRODUCT_ADDR", bad)]).expect_err(bad);
            assert_eq!(err.problems[0].setting, "MESH_PRODUCT_ADDR", "{bad}");
        }
    }

    #[test]
    fn the_admin_port_defaults_to_9090_and_a_served_service_moves_it() {
        assert_eq!(parse(&[], &[]).unwrap().admin_port, DEFAULT_ADMIN_PORT);
        assert_eq!(admin_port_following(50053), 51053);
        assert_eq!(admin_port_following(8080), 9080);
        assert_eq!(admin_port_following(0), 0);
        assert_eq!(admin_port_following(65000), 0);
    }

    #[test]
    fn every_bad_setting_is_named_in_one_error() {
        let err = parse(
            &[
                "--admin-port",
                "http",
                "--log-format",
                "xml",
                "--shutdown-grace",
                "soon",
            ],
            &[
                ("MESH_PRODUCT_PORT", "70000"),
                ("MESH_IOT_GATEWAY_ADDR", "gateway"),
            ],
        )
        .expect_err("invalid");
        let text = err.to_string();
        for name in [
            "MESH_ADMIN_PORT",
            "MESH_LOG_FORMAT",
            "MESH_SHUTDOWN_GRACE",
            "MESH_PRODUCT_PORT",
            "MESH_IOT_GATEWAY_ADDR",
        ] {
            assert!(text.contains(name), "{name} missing from: {text}");
        }
        assert_eq!(err.problems.len(), 5, "{text}");
        assert!(text.starts_with("invalid configuration (5 problems)"));
    }

    #[test]
    fn a_claim_time_too_close_to_the_saga_timeout_is_refused_naming_both() {
        // The defaults are consistent with the order saga's default timeout (30s).
        let config = parse(&[], &[("MESH_ORDER_SAGA_TIMEOUT", "30s")]).expect("valid");
        assert!(config.events.claim_idle * 2 <= Duration::from_secs(30));
        assert!(config.events.dead_after < config.events.claim_idle);
        let err = parse(
            &["--event-claim-idle", "30s"],
            &[("MESH_ORDER_SAGA_TIMEOUT", "30s")],
        )
        .expect_err("inconsistent");
        let text = err.to_string();
        assert!(
            text.contains("MESH_EVENT_CLAIM_IDLE") && text.contains("MESH_ORDER_SAGA_TIMEOUT"),
            "{text}"
        );
        let err = parse(&["--event-dead-after", "20s"], &[]).expect_err("inconsistent");
        let text = err.to_string();
        assert!(
            text.contains("MESH_EVENT_DEAD_AFTER") && text.contains("MESH_EVENT_CLAIM_IDLE"),
            "{text}"
        );
    }

    #[test]
    fn data_defaults_to_sqlite_files_and_the_in_process_bus() {
        let config = parse(&["--data-dir", "/tmp/d"], &[]).expect("valid");
        assert_eq!(
            config.databases["iot-gateway"],
            DatabaseTarget::Sqlite {
                path: PathBuf::from("/tmp/d/iot-gateway.db")
            }
        );
        assert_eq!(config.events.redis_url, None);
        assert_eq!(config.events.max_deliveries, 5);
        assert_eq!(config.events.outbox_retention, None);
    }

    #[test]
    fn shared_postgres_url_gives_a_schema_per_service_and_per_service_urls_override() {
        let config = parse(
            &[
                "--database-url",
                "postgres://mesh@db/mesh",
                "--redis-url",
                "redis://r:6379",
                "--event-max-deliveries",
                "3",
                "--outbox-retention",
                "90d",
            ],
            &[("MESH_PRODUCT_DATABASE_URL", "postgresql://p@other/catalog")],
        )
        .expect("valid");
        assert_eq!(
            config.databases["iot-gateway"],
            DatabaseTarget::Postgres {
                url: "postgres://mesh@db/mesh".into(),
                schema: "iot_gateway".into()
            }
        );
        assert_eq!(
            config.databases["product"],
            DatabaseTarget::Postgres {
                url: "postgresql://p@other/catalog".into(),
                schema: "product".into()
            }
        );
        assert_eq!(config.events.redis_url.as_deref(), Some("redis://r:6379"));
        assert_eq!(config.events.max_deliveries, 3);
        assert_eq!(
            config.events.outbox_retention,
            Some(Duration::from_secs(90 * 24 * 3600))
        );
    }

    #[test]
    fn bad_data_and_event_settings_are_named() {
        let err = parse(
            &[
                "--database-url",
                "mysql://x",
                "--redis-url",
                "localhost:6379",
                "--event-max-deliveries",
                "0",
                "--event-claim-idle",
                "0s",
                "--outbox-retention",
                "never",
            ],
            &[("MESH_IOT_GATEWAY_DATABASE_URL", "sqlite://x.db")],
        )
        .expect_err("invalid");
        let settings: Vec<_> = err.problems.iter().map(|p| p.setting.as_str()).collect();
        assert_eq!(
            settings,
            [
                "--database-url / MESH_DATABASE_URL",
                "--redis-url / MESH_REDIS_URL",
                "--event-max-deliveries / MESH_EVENT_MAX_DELIVERIES",
                "--event-claim-idle / MESH_EVENT_CLAIM_IDLE",
                "--outbox-retention / MESH_OUTBOX_RETENTION",
                "MESH_IOT_GATEWAY_DATABASE_URL",
            ]
        );
    }

    #[test]
    fn discovery_settings_are_validated() {
        let config = parse(&["--discovery", "endpoints", "--dns-refresh", "1s"], &[]).unwrap();
        assert_eq!(config.discovery.mode, DiscoveryMode::Endpoints);
        assert_eq!(config.discovery.dns_refresh, Duration::from_secs(1));
        let err = parse(&["--discovery", "consul", "--dns-refresh", "1ms"], &[]).unwrap_err();
        let settings: Vec<_> = err.problems.iter().map(|p| p.setting.as_str()).collect();
        assert_eq!(
            settings,
            [
                "--discovery / MESH_DISCOVERY",
                "--dns-refresh / MESH_DNS_REFRESH"
            ]
        );
    }

    #[test]
    fn zero_deadline_and_bad_host_are_rejected() {
        let err =
            parse(&["--default-deadline", "0s", "--host", "localhost"], &[]).expect_err("invalid");
        let settings: Vec<_> = err.problems.iter().map(|p| p.setting.as_str()).collect();
        assert_eq!(
            settings,
            [
                "--host / MESH_HOST",
                "--default-deadline / MESH_DEFAULT_DEADLINE"
            ]
        );
    }
}
