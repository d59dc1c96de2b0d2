//! The spans of work outside a call's server span, so that a saga's trace has no gap:
//! - [`publish_spans`]: one `publish` span per event the publisher or the relay's sweep sends to
//!   the bus, a child of the span that emitted the event (its envelope's `traceparent`);
//! - [`TracedWork`]: background work that continues a stored trace (a queued charge, a
//!   notification's delivery): one `work` span, a child of the stored `traceparent`, whose ids
//!   are the work's [`CallContext`], so the events it emits and the calls it makes hang under a
//!   span that is exported.
//!
//! Like the `rpc` and `event` spans they are `debug` spans of [`SPAN_TARGET`], created only when
//! something consumes spans, and they carry the service they belong to
//! ([`crate::otlp_export::SERVICE_ATTRIBUTE`]).

use std::future::Future;

use mesh_contracts::events::v1::Envelope;
use prost::Message as _;
use tracing::{Instrument as _, Span, field};

use crate::bus::OutgoingEvent;
use crate::call_context::CallContext;
use crate::observe::{SPAN_TARGET, adopt_otel_ids};
use crate::trace_context::TraceContext;

/// Whether the per-call spans are on (OTLP export, or a filter asking for them).
fn spans_on() -> bool {
    tracing::span_enabled!(target: SPAN_TARGET, tracing::Level::DEBUG)
}

/// The `publish` spans of `events` about to be sent to the bus by `service`, one per event whose
/// envelope carries a trace; none (and no decoding) when spans are off. Each ends when it is
/// dropped: keep them until the bus answered, and mark them with [`publish_failed`] if it
/// refused.
pub(crate) fn publish_spans(service: &str, events: &[OutgoingEvent]) -> Vec<Span> {
    if !spans_on() {
        return Vec::new();
    }
    events
        .iter()
        .filter_map(|event| {
            let envelope = Envelope::decode(event.payload.as_ref()).ok()?;
            let parent = TraceContext::parse(&envelope.traceparent)?;
            let mut trace = parent.child();
            let span = tracing::debug_span!(
                target: SPAN_TARGET,
                "publish",
                otel.name = %format_args!("publish {}", envelope.r#type),
                otel.kind = "producer",
                otel.status_code = field::Empty,
                mesh.service = %service,
                messaging.system = "mesh",
                messaging.destination.name = %event.domain,
                event.r#type = %envelope.r#type,
                event.id = %envelope.id,
                trace_id = %trace.trace_id_hex(),
                span_id = %trace.span_id_hex(),
                parent_span_id = %parent.span_id_hex(),
            );
            adopt_otel_ids(&span, Some(parent), &mut trace);
            Some(span)
        })
        .collect()
}

/// Marks `spans` (from [`publish_spans`]) as failed: the bus refused their batch.
pub(crate) fn publish_failed(spans: &[Span]) {
    for span in spans {
        span.record("otel.status_code", "error");
    }
}

/// Background work continuing a stored trace: a `work` span named after the operation, a child of
/// the stored `traceparent`, and the [`CallContext`] matching it. Every [`TracedWork::run`] of
/// one value runs in the same span, so an operation done in steps (a provider call, then the
/// transaction recording its outcome) is one span; it ends when the value is dropped.
#[derive(Debug, Clone)]
pub struct TracedWork {
    span: Span,
    context: Option<CallContext>,
}

impl TracedWork {
    /// The work `operation` (e.g. `charge`) of `service`, continuing `traceparent` (as stored
    /// with the work when it was queued). Without a valid `traceparent` the work runs outside
    /// any trace, as before.
    pub fn continuing(service: &str, operation: &str, traceparent: &str) -> Self {
        let Some(parent) = TraceContext::parse(traceparent) else {
            return Self {
                span: Span::none(),
                context: None,
            };
        };
        let mut trace = parent.child();
        let span = tracing::debug_span!(
            target: SPAN_TARGET,
            "work",
            otel.name = %operation,
            otel.kind = "internal",
            mesh.service = %service,
            trace_id = %trace.trace_id_hex(),
            span_id = %trace.span_id_hex(),
            parent_span_id = %parent.span_id_hex(),
        );
        adopt_otel_ids(&span, Some(parent), &mut trace);
        Self {
            span,
            context: Some(CallContext {
                trace,
                deadline: None,
            }),
        }
    }

    /// The trace position of the work (`None` without a stored trace).
    pub fn context(&self) -> Option<CallContext> {
        self.context
    }

    /// Runs `fut` in the work's span and [`CallContext`].
    pub async fn run<F: Future>(&self, fut: F) -> F::Output {
        let fut = fut.instrument(self.span.clone());
        match self.context {
            Some(context) => context.scope(fut).await,
            None => fut.await,
        }
    }
}
