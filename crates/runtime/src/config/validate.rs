//! Text to [`MeshConfig`]: every flag and per-service variable checked, every problem kept, one
//! [`ConfigError`] naming them all.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::args::{DEFAULT_ADMIN_PORT, RuntimeArgs};
use super::parse::{
    parse_duration, parse_peer_addr, parse_port, parse_postgres_url, parse_redis_url, parse_url,
};
use super::{
    ConfigError, DatabaseTarget, DiscoveryConfig, DiscoveryMode, EventConfig, LogConfig, LogFormat,
    MeshConfig, Problem, ServiceEndpoint, ServiceSpec, env_prefix,
};
use crate::client_config::ClientSettings;
use crate::domain::page_token_key::PageTokenKey;

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
        let trace_sampler = crate::sampler::TraceSampler::from_env(&env).unwrap_or_else(|bad| {
            problems.extend(bad.0.into_iter().map(Problem::from));
            crate::sampler::TraceSampler::default()
        });
        let page_token_key = PageTokenKey::from_env(&env).unwrap_or_else(|bad| {
            problems.extend(bad.0.into_iter().map(Problem::from));
            None
        });
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
                    trace_sampler,
                    discovery,
                    services: endpoints,
                    databases,
                    database_pool_size: pool_size.unwrap_or(crate::storage::DEFAULT_POOL_SIZE),
                    events: events.unwrap_or_default(),
                    clients,
                    page_token_key,
                })
            }
            _ => Err(ConfigError { problems }),
        }
    }
}
