//! Background work continuing a stored trace ([`mesh_runtime::spans::TracedWork`]) under the
//! subscriber `mesh serve` installs with export on: its own span in the stored trace, and the
//! sampler's decision in its context (so the events it emits carry it on).

use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use mesh_runtime::CallContext;
use mesh_runtime::config::{LogConfig, LogFormat};
use mesh_runtime::spans::TracedWork;

const STORED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The work's context under a subscriber exporting through a provider with `sampler`.
fn work_context(sampler: Sampler) -> CallContext {
    let provider = SdkTracerProvider::builder().with_sampler(sampler).build();
    let log = LogConfig {
        filter: "info".into(),
        format: LogFormat::Json,
    };
    let subscriber =
        mesh_runtime::telemetry::subscriber(&log, Some(&provider), std::io::sink, false);
    let context = tracing::subscriber::with_default(subscriber, || {
        TracedWork::continuing("payment", "charge", STORED)
            .context()
            .expect("a stored trace")
    });
    let _ = provider.shutdown();
    context
}

#[test]
fn work_continues_the_stored_trace_in_a_span_of_its_own() {
    let context = work_context(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    assert_eq!(
        context.trace.trace_id_hex(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_ne!(context.trace.span_id_hex(), "00f067aa0ba902b7");
    assert_eq!(context.trace.flags & 1, 1, "sampled, as its parent");
}

#[test]
fn the_samplers_decision_travels_with_the_work() {
    let context = work_context(Sampler::AlwaysOff);
    assert_eq!(
        context.trace.trace_id_hex(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(context.trace.flags & 1, 0, "not sampled: {context:?}");
}

#[test]
fn work_without_a_stored_trace_runs_outside_any() {
    assert!(
        TracedWork::continuing("payment", "charge", "")
            .context()
            .is_none()
    );
}
