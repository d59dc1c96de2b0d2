//! The server-side tower layer every gRPC port runs behind: for each call it
//! - reads the caller's W3C `traceparent` (or starts a trace) and, only when something consumes
//!   spans (OTLP export on, or a filter enabling [`SPAN_TARGET`] at `debug`), opens an `rpc` span
//!   carrying `trace_id` and `span_id`; otherwise no span exists and log lines take the ids from
//!   the [`CallContext`] (see [`crate::json_log`]);
//! - reads `grpc-timeout` and, with the trace, makes it the handler's [`CallContext`];
//! - records the RED metrics ([`RpcMetrics`]) when the response ends, by its `grpc-status`
//!   (trailers-only errors are read from the headers, others from the trailers).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::call_context::CallContext;
use crate::grpc_timeout::{self, GRPC_TIMEOUT_HEADER};
use crate::metrics::{MethodLabels, MethodMetrics, RpcMetrics, code_name};
use crate::trace_context::{TRACEPARENT_HEADER, TraceContext};

/// The target of the per-call `rpc` and per-event `event` spans. They are `debug` spans, so the
/// production filter (`info`) leaves them off; `MESH_LOG=info,mesh::span=debug` (or any filter
/// enabling debug here) turns them on, and so does OTLP export ([`crate::telemetry`]).
pub const SPAN_TARGET: &str = "mesh::span";

/// Adds [`Observe`] to a server stack.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The service the port serves (the spans' [`crate::otlp_export::SERVICE_ATTRIBUTE`]).
    service: Option<String>,
    /// The series of each request path that gets its own labels, by path.
    known: HashMap<String, Arc<MethodMetrics>>,
    /// Any other path is labelled `unknown`, so a client cannot grow the series without bound.
    unknown: Arc<MethodMetrics>,
}

impl ObserveLayer {
    /// Observes calls into `metrics`, labelling the methods in `known_paths` by name.
    pub fn new(metrics: RpcMetrics, known_paths: impl IntoIterator<Item = String>) -> Self {
        let known = known_paths
            .into_iter()
            .map(|path| {
                let trimmed = path.strip_prefix('/').unwrap_or(&path);
                let (service, method) = trimmed.split_once('/').unwrap_or((trimmed, ""));
                let labels = MethodLabels {
                    grpc_service: service.to_string(),
                    grpc_method: method.to_string(),
                };
                let series = Arc::new(metrics.method(labels));
                (path, series)
            })
            .collect();
        let unknown = Arc::new(metrics.method(MethodLabels {
            grpc_service: "unknown".into(),
            grpc_method: "unknown".into(),
        }));
        Self {
            shared: Arc::new(Shared {
                service: None,
                known,
                unknown,
            }),
        }
    }

    /// Names the service the observed port serves on its spans, so that they are exported under
    /// that service's name ([`crate::otlp_export`]).
    pub fn for_service(mut self, service: impl Into<String>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.service = Some(service.into());
        }
        self
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`ObserveLayer`] produces.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observe<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ObservedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        let path = req.uri().path();
        let metrics = self
            .shared
            .known
            .get(path)
            .unwrap_or(&self.shared.unknown)
            .clone();
        // Static header names: no name parsed per call.
        let parent = req
            .headers()
            .get(&TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        let deadline = req
            .headers()
            .get(&GRPC_TIMEOUT_HEADER)
            .and_then(grpc_timeout::from_header)
            .map(|d| tokio::time::Instant::now() + d);
        let mut trace = parent.map_or_else(TraceContext::new_root, |p| p.child());

        // Disabled unless something consumes spans: then no field below is evaluated. The ids are
        // fields from the start: each later `record` makes the JSON log layer parse and rewrite
        // the span's fields.
        let span = tracing::debug_span!(
            target: SPAN_TARGET,
            "rpc",
            rpc.path = %path,
            trace_id = %trace.trace_id_hex(),
            span_id = %trace.span_id_hex(),
            parent_span_id = parent.map(|p| field::display(p.span_id_hex())),
            otel.name = %path,
            otel.kind = "server",
            mesh.service = self.shared.service.as_deref(),
            rpc.grpc.status_code = field::Empty,
        );
        adopt_otel_ids(&span, parent, &mut trace);

        metrics.start();
        let call = Call {
            metrics,
            start,
            span: span.clone(),
            context: CallContext { trace, deadline },
            done: false,
        };
        ObservedFuture {
            inner: call.context.scope(self.inner.call(req)),
            span,
            call: Some(call),
        }
    }
}

/// When OpenTelemetry export is on, makes the exported span a child of the caller's and uses the
/// exported span's ids in logs and propagation, so both tell one story: `trace` takes the exported
/// ids and sampling decision, and the span's `trace_id` and `span_id` fields the ids. A no-op otherwise, and when no
/// subscriber wants the span (this runs on every call and every handled event).
pub(crate) fn adopt_otel_ids(span: &Span, parent: Option<TraceContext>, trace: &mut TraceContext) {
    if span.is_disabled() {
        return;
    }
    if let Some(parent) = parent {
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.span_id),
            TraceFlags::new(parent.flags),
            true,
            TraceState::default(),
        );
        if span
            .set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
            .is_err()
        {
            return;
        }
    }
    let cx = span.context();
    let otel = cx.span().span_context().clone();
    if otel.is_valid() {
        trace.trace_id = otel.trace_id().to_bytes();
        trace.span_id = otel.span_id().to_bytes();
        // The sampler's decision travels on with the trace, so the next process's
        // parent-based sampler follows it.
        trace.flags = otel.trace_flags().to_u8();
        span.record("trace_id", trace.trace_id_hex());
        span.record("span_id", trace.span_id_hex());
    }
}

/// One call being observed; records its metrics exactly once, when it ends or is dropped.
struct Call {
    metrics: Arc<MethodMetrics>,
    start: Instant,
    span: Span,
    /// The call's context, so that the lines logged when it ends (outside the handler's task
    /// scope) carry its trace ids too.
    context: CallContext,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.start.elapsed();
        self.metrics.finish(code, elapsed.as_secs_f64());
        if !self.span.is_disabled() {
            self.span.record("rpc.grpc.status_code", code as i32);
        }
        let micros = elapsed.as_micros() as u64;
        let code = code_name(code);
        let span = &self.span;
        self.context.in_scope(|| match code {
            "UNKNOWN" | "INTERNAL" | "DATA_LOSS" => {
                tracing::warn!(parent: span, code, micros, "rpc failed")
            }
            _ => tracing::debug!(parent: span, code, micros, "rpc finished"),
        });
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The response (or its body) was dropped before a status was seen: the caller went away.
        self.finish(tonic::Code::Cancelled);
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get(&crate::resilience::GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC code a plain HTTP response stands for, for the RED metrics of REST calls.
fn code_of_http(status: http::StatusCode) -> tonic::Code {
    use tonic::Code;
    match status.as_u16() {
        100..=399 => Code::Ok,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Aborted,
        413 | 429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        400..=499 => Code::InvalidArgument,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

pin_project! {
    /// The response future of [`Observe`]: the handler's future in its [`CallContext`], entering
    /// the call's span while it runs when there is one.
    pub struct ObservedFuture<F> {
        #[pin]
        inner: TaskLocalFuture<CallContext, F>,
        span: Span,
        call: Option<Call>,
    }
}

impl<F, B, E> Future for ObservedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<ObservedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            // A disabled span is not entered at all (without a subscriber, entering one would
            // still go through `log`).
            let _entered = (!this.span.is_disabled()).then(|| this.span.enter());
            ready!(this.inner.poll(cx))
        };
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let (Some(code), Some(c)) = (status_of(response.headers()), call.as_mut()) {
                    // Trailers-only response: the status is already known.
                    c.finish(code);
                } else if let (false, Some(c)) = (is_grpc(response.headers()), call.as_mut()) {
                    // A plain HTTP response (the edge's REST side): no trailers will come.
                    c.finish(code_of_http(response.status()));
                }
                Ok(response.map(|inner| ObservedBody { inner, call }))
            }
            Err(e) => {
                if let Some(c) = call.as_mut() {
                    c.finish(tonic::Code::Internal);
                }
                Err(e)
            }
        })
    }
}

pin_project! {
    /// A response body that records the call's status when its trailers go by.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(call) = this.call.as_mut() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(code) = f.trailers_ref().and_then(status_of) {
                        call.finish(code);
                    }
                }
                Some(Err(_)) => call.finish(tonic::Code::Internal),
                None => call.finish(tonic::Code::Unknown),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
