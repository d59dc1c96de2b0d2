//! Span export with one OpenTelemetry resource per service: a process serving several services
//! (`mesh serve all`) exports each service's spans under its own `service.name`, as separate
//! processes do, so a trace viewer tells order from payment.
//!
//! Every span the runtime opens (`rpc`, `event`, `publish`, `work`) carries the service it
//! belongs to in its [`SERVICE_ATTRIBUTE`] field. [`ServiceRoutedExporter`] wraps one exporter
//! per service, each given that service's resource, and hands each span to the exporter of its
//! service; a span of no listed service goes to the process's own exporter.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// The span attribute naming the service (the module table's name) a span belongs to. The
/// span macros spell it out as `mesh.service`.
pub const SERVICE_ATTRIBUTE: &str = "mesh.service";

/// An exporter that routes each span to its service's exporter (see the module doc).
#[derive(Debug)]
pub struct ServiceRoutedExporter<E> {
    /// Index into `exporters` by service name.
    by_service: HashMap<String, usize>,
    /// The services' exporters, then the process's own last.
    exporters: Vec<E>,
    /// The service names, in the order of `exporters` (without the process's).
    names: Vec<String>,
}

impl<E: SpanExporter> ServiceRoutedExporter<E> {
    /// Routes spans of each `(service, exporter)` to that exporter and every other span to
    /// `process`.
    pub fn new(process: E, services: impl IntoIterator<Item = (String, E)>) -> Self {
        let mut by_service = HashMap::new();
        let mut exporters = Vec::new();
        let mut names = Vec::new();
        for (name, exporter) in services {
            by_service.insert(name.clone(), exporters.len());
            names.push(name);
            exporters.push(exporter);
        }
        exporters.push(process);
        Self {
            by_service,
            exporters,
            names,
        }
    }

    fn route(&self, span: &SpanData) -> usize {
        let key = Key::from_static_str(SERVICE_ATTRIBUTE);
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| self.by_service.get(kv.value.as_str().as_ref()).copied())
            .unwrap_or(self.exporters.len() - 1)
    }

    fn each(&self, f: impl Fn(&E) -> OTelSdkResult) -> OTelSdkResult {
        let mut result = Ok(());
        for exporter in &self.exporters {
            if let Err(e) = f(exporter) {
                result = Err(e);
            }
        }
        result
    }
}

impl<E: SpanExporter> SpanExporter for ServiceRoutedExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut groups: Vec<Vec<SpanData>> = self.exporters.iter().map(|_| Vec::new()).collect();
        for span in batch {
            let index = self.route(&span);
            groups[index].push(span);
        }
        let mut result = Ok(());
        for (exporter, spans) in self.exporters.iter().zip(groups) {
            if spans.is_empty() {
                continue;
            }
            // One service's failed export does not keep the others' spans back.
            if let Err(e) = exporter.export(spans).await {
                result = Err(e);
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.each(|e| e.shutdown_with_timeout(timeout))
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.each(E::force_flush)
    }

    /// The process's exporter gets the provider's resource; each service's the same with its own
    /// `service.name`.
    fn set_resource(&mut self, resource: &Resource) {
        let last = self.exporters.len() - 1;
        for (index, exporter) in self.exporters.iter_mut().enumerate() {
            if index == last {
                exporter.set_resource(resource);
                continue;
            }
            let own = Resource::builder_empty()
                .with_attributes(
                    resource
                        .iter()
                        .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
                )
                .with_service_name(self.names[index].clone())
                .build();
            exporter.set_resource(&own);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{InstrumentationScope, Value};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;

    /// One export: the exporter's resource's service.name and the names of the spans.
    type Export = (String, Vec<String>);

    /// Records what it is given.
    #[derive(Debug, Default, Clone)]
    struct Recording {
        service: Option<String>,
        exported: Arc<Mutex<Vec<Export>>>,
    }

    impl SpanExporter for Recording {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let names = batch.iter().map(|s| s.name.to_string()).collect();
            self.exported
                .lock()
                .unwrap()
                .push((self.service.clone().unwrap_or_default(), names));
            Ok(())
        }

        fn set_resource(&mut self, resource: &Resource) {
            self.service = resource
                .get(&Key::from_static_str("service.name"))
                .map(|v: Value| v.as_str().into_owned());
        }
    }

    fn span(name: &'static str, service: Option<&'static str>) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(1),
                SpanId::from(2),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: service
                .map(|s| KeyValue::new(SERVICE_ATTRIBUTE, s))
                .into_iter()
                .collect(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("test").build(),
        }
    }

    #[tokio::test]
    async fn each_span_is_exported_under_its_services_name() {
        let exported = Arc::new(Mutex::new(Vec::new()));
        let recording = || Recording {
            service: None,
            exported: exported.clone(),
        };
        let mut routed = ServiceRoutedExporter::new(
            recording(),
            ["order", "payment"].map(|s| (s.to_string(), recording())),
        );
        routed.set_resource(
            &Resource::builder_empty()
                .with_service_name("mesh")
                .with_attribute(KeyValue::new("deployment.environment", "test"))
                .build(),
        );
        routed
            .export(vec![
                span("PlaceOrder", Some("order")),
                span("charge", Some("payment")),
                span("publish", Some("order")),
                span("loose", None),
                span("stranger", Some("not-served-here")),
            ])
            .await
            .unwrap();
        let mut got = exported.lock().unwrap().clone();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("mesh".to_string(), vec!["loose".into(), "stranger".into()]),
                (
                    "order".to_string(),
                    vec!["PlaceOrder".into(), "publish".into()]
                ),
                ("payment".to_string(), vec!["charge".into()]),
            ]
        );
    }
}
