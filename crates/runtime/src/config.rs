//! Process configuration from flags and `MESH_*` environment variables, validated at start.
//!
//! Every setting is read as text first and validated here, so that one error lists every bad
//! setting by its flag and variable name instead of stopping at the first.
//!
//! Per-service settings are environment variables only, since their names depend on the module
//! table: `MESH_<SERVICE>_PORT` (the service's gRPC port) and `MESH_<SERVICE>_ADDR` (the URL other
//! services use to reach it, e.g. `http://inventory.mesh.svc.cluster.local:50054`), with
//! `<SERVICE>` the service name in upper snake case (`iot-gateway` -> `IOT_GATEWAY`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use http::Uri;

/// The flags (and their environment variables) every `mesh serve` target shares.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Address every gRPC and admin listener binds to (0.0.0.0 in Kubernetes).
    #[arg(long, env = "MESH_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port of the admin HTTP server (/metrics, /healthz, /readyz); 0 picks a free port.
    #[arg(long, env = "MESH_ADMIN_PORT", default_value = "9090")]
    pub admin_port: String,

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
    /// Every service of the module table, by name.
    pub services: BTreeMap<&'static str, ServiceEndpoint>,
}

/// One setting that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The setting's names, e.g. `--admin-port / MESH_ADMIN_PORT`.
    pub setting: String,
    /// The value given.
    pub value: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

/// Every problem found in the configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in the order the settings were checked.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {} = {:?}: {}", p.setting, p.value, p.reason)?;
        }
        Ok(())
    }
}

/// The environment variable prefix of a service's settings: `iot-gateway` -> `MESH_IOT_GATEWAY`.
pub fn env_prefix(service: &str) -> String {
    format!("MESH_{}", service.to_ascii_uppercase().replace('-', "_"))
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
        let admin_port = parse_port(&args.admin_port);
        check(
            "--admin-port / MESH_ADMIN_PORT",
            &args.admin_port,
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
                    let addr = parse_url(&raw);
                    check(&addr_var, &raw, addr.as_ref().err().cloned());
                    addr.ok()
                }
                None => None,
            };
            endpoints.insert(spec.name, ServiceEndpoint { port, addr });
        }

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
                if problems.is_empty() =>
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
                    services: endpoints,
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
                ("MESH_IOT_GATEWAY_ADDR", "gateway:50061"),
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
