//! Logging and trace export for a `mesh` process.
//!
//! [`init`] installs the global `tracing` subscriber: an EnvFilter, JSON or text lines on stderr,
//! and, when an OTLP endpoint is configured, an OpenTelemetry layer exporting spans over OTLP/gRPC.
//! Standard output stays free for the lines a command prints for people (e.g. `ready ...`).

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat, MeshConfig};
use crate::json_log::JsonLines;

/// Failure to set up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built from the configured endpoint.
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter: {0}")]
    Exporter(String),
    /// A global subscriber was already installed (telemetry initialised twice).
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps trace export running; flushes and shuts it down when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("trace export did not shut down cleanly: {e}");
        }
    }
}

/// Installs the global subscriber for a process named `service_name` (e.g. `mesh` or `order`).
pub fn init(config: &MeshConfig, service_name: &str) -> Result<TelemetryGuard, TelemetryError> {
    init_with(&config.log, config.otlp_endpoint.as_ref(), service_name)
}

/// [`init`] from the logging settings and the OTLP endpoint alone (benchmarks install the same
/// subscriber as `mesh serve` without a whole [`MeshConfig`]).
pub fn init_with(
    log: &LogConfig,
    otlp_endpoint: Option<&http::Uri>,
    service_name: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.to_string())
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        Resource::builder()
                            .with_service_name(service_name.to_string())
                            .build(),
                    )
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("mesh")));
    let registry = tracing_subscriber::registry().with(filter(log)).with(otel);
    let installed = match log.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonLines)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    installed.map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

fn filter(log: &LogConfig) -> EnvFilter {
    // Validated by `MeshConfig::from_args`; fall back to `info` rather than fail twice.
    EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new("info"))
}
