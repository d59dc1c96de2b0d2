//! The JSON log line format: one object per event, with the `trace_id` and `span_id` of the call
//! or event being handled, and the fields of every enclosing span merged in.
//!
//! The ids come from the task's [`CallContext`] (set by the server layer for each RPC and by the
//! consumer for each event), so a line logged during a call carries them whether or not a span
//! exists; per-call spans are created only when something consumes them
//! ([`crate::observe::SPAN_TARGET`]). When a span is there, its fields (the same ids, the parent
//! span, the path...) are merged in after.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::call_context::CallContext;

/// Formats events as single-line JSON objects:
/// `{"timestamp", "level", "target", "trace_id", "span_id", "span", <span fields, outermost
/// first>, <event fields>}` (`trace_id` and `span_id` when the line is logged during a call).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(call) = CallContext::current() {
            line.insert("trace_id".into(), call.trace.trace_id_hex().into());
            line.insert("span_id".into(), call.trace.span_id_hex().into());
        }
        if let Some(scope) = ctx.event_scope() {
            let mut leaf = None;
            for span in scope.from_root() {
                leaf = Some(span.name());
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields)
                {
                    line.extend(map);
                }
            }
            if let Some(name) = leaf {
                line.insert("span".into(), name.into());
            }
        }
        let mut visitor = FieldVisitor(&mut line);
        event.record(&mut visitor);
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

struct FieldVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
}
