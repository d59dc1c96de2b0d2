//! Logging and trace export for a `mesh` process.
//!
//! [`init`] installs the global `tracing` subscriber: an EnvFilter, JSON or text lines on stderr,
//! and, when an OTLP endpoint is configured, an OpenTelemetry layer exporting spans over OTLP/gRPC.
//! Standard output stays free for the lines a command prints for people (e.g. `ready ...`).
//!
//! Per-call spans (`rpc`, `event`) are `debug` spans of [`SPAN_TARGET`]: with the production
//! filter (`info`) they are never created, and log lines take the call's trace ids from its
//! [`crate::CallContext`]. OTLP export adds `mesh::span=debug` to the filter, so every call is
//! exported as a span (and logs then also carry the span's fields). Each span is exported under
//! the `service.name` of the service it belongs to ([`crate::otlp_export`]), and the standard
//! `OTEL_TRACES_SAMPLER` variables choose which traces are kept ([`crate::sampler`]).

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithTonicConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat, MeshConfig};
use crate::json_log::JsonLines;
use crate::observe::SPAN_TARGET;
use crate::otlp_export::ServiceRoutedExporter;
use crate::sampler::TraceSampler;

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

/// What [`init_with`] exports spans to, and which.
#[derive(Debug, Clone, Copy)]
pub struct Export<'a> {
    /// The OTLP/gRPC endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub endpoint: &'a http::Uri,
    /// Which traces are exported.
    pub sampler: TraceSampler,
    /// The services this process serves: each one's spans are exported under its own
    /// `service.name` ([`crate::otlp_export`]).
    pub services: &'a [&'a str],
}

/// Installs the global subscriber for a process named `process_name` (e.g. `mesh` or `order`)
/// serving `services`; spans are exported when `config` has an OTLP endpoint.
pub fn init(
    config: &MeshConfig,
    process_name: &str,
    services: &[&str],
) -> Result<TelemetryGuard, TelemetryError> {
    let export = config.otlp_endpoint.as_ref().map(|endpoint| Export {
        endpoint,
        sampler: config.trace_sampler,
        services,
    });
    init_with(&config.log, export, process_name)
}

/// [`init`] from the logging settings and the export alone (benchmarks install the same
/// subscriber as `mesh serve` without a whole [`MeshConfig`]). Must run inside a tokio runtime
/// when exporting (the exporters' channel is made here).
pub fn init_with(
    log: &LogConfig,
    export: Option<Export<'_>>,
    process_name: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    let provider = export
        .map(|export| provider(export, process_name))
        .transpose()?;
    let ansi = std::io::stderr().is_terminal();
    subscriber(log, provider.as_ref(), std::io::stderr, ansi)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

/// The tracer provider of [`init_with`]: batches of spans go over one lazily connected channel
/// to the endpoint, through one OTLP exporter per service (its own `service.name`) and one for
/// the process's other spans.
fn provider(export: Export<'_>, process_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let channel = tonic::transport::Endpoint::from(export.endpoint.clone()).connect_lazy();
    let exporter = || {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_channel(channel.clone())
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))
    };
    let services = export
        .services
        .iter()
        .map(|s| Ok((s.to_string(), exporter()?)))
        .collect::<Result<Vec<_>, TelemetryError>>()?;
    let routed = ServiceRoutedExporter::new(exporter()?, services);
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(routed)
        .with_sampler(export.sampler.sdk())
        .with_resource(
            Resource::builder()
                .with_service_name(process_name.to_string())
                .build(),
        )
        .build())
}

/// The subscriber [`init_with`] installs, writing lines to `writer` (tests capture them):
/// the filter of `log`, an OpenTelemetry layer when `provider` is given, then JSON or text lines.
pub fn subscriber<W>(
    log: &LogConfig,
    provider: Option<&SdkTracerProvider>,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let otel = provider.map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("mesh")));
    let registry = tracing_subscriber::registry()
        .with(filter(log, provider.is_some()))
        .with(otel);
    match log.format {
        LogFormat::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonLines)
                    .with_writer(writer),
            ),
        ),
        LogFormat::Text => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer),
            ),
        ),
    }
}

/// The configured filter; with export on, the per-call spans are turned on as well.
fn filter(log: &LogConfig, exporting: bool) -> EnvFilter {
    // Validated by `MeshConfig::from_args`; fall back to `info` rather than fail twice.
    let filter = EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    if exporting {
        match format!("{SPAN_TARGET}=debug").parse() {
            Ok(directive) => filter.add_directive(directive),
            Err(_) => filter,
        }
    } else {
        filter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn production() -> LogConfig {
        LogConfig {
            filter: "info".into(),
            format: LogFormat::Json,
        }
    }

    fn rpc_span_enabled(provider: Option<&SdkTracerProvider>, log: &LogConfig) -> bool {
        let subscriber = subscriber(log, provider, std::io::sink, false);
        tracing::subscriber::with_default(subscriber, || {
            !tracing::debug_span!(target: "mesh::span", "rpc").is_disabled()
        })
    }

    #[test]
    fn per_call_spans_exist_only_when_exported_or_asked_for() {
        assert!(
            !rpc_span_enabled(None, &production()),
            "no span at info without export"
        );
        let provider = SdkTracerProvider::builder().build();
        assert!(
            rpc_span_enabled(Some(&provider), &production()),
            "export turns the spans on"
        );
        let asked = LogConfig {
            filter: "info,mesh::span=debug".into(),
            format: LogFormat::Json,
        };
        assert!(rpc_span_enabled(None, &asked), "a filter turns them on");
        let _ = provider.shutdown();
    }
}
