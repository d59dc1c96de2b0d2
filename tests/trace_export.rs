//! One order, one trace, proven on a real OTLP/gRPC receiver (issue 20, item 2).
//!
//! The test serves `opentelemetry.proto.collector.trace.v1.TraceService` itself (the OTLP
//! protobufs of the `opentelemetry-proto` crate) and points the real `mesh` binary at it with
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, then places the README's order and waits until it is
//! CONFIRMED and its spans arrived. It asserts that
//! - one trace covers PlaceOrder, the calls it makes, every publish of the saga's events, every
//!   consumer's handler, payment's charge and notification's delivery;
//! - the spans form one tree: one root (PlaceOrder), every other span's parent exported too;
//! - each span is exported under the `service.name` of the service it belongs to (never the
//!   process's `mesh`), in agreement with its `mesh.service` attribute;
//! - each call and each handled event logged JSON lines carrying the trace id and its span id.
//!
//! Twice: with every service a separate `mesh serve <service>` process on a Redis bus of the
//! test's own (skipped without `redis-server`, unless `MESH_TEST_REQUIRE_BACKENDS=1`), and with
//! `mesh serve all` on its in-process bus. SQLite files in a temporary folder either way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_contracts::auth::v1::SignUpRequest;
use mesh_contracts::auth::v1::auth_service_client::AuthServiceClient;
use mesh_contracts::order::v1::order_service_client::OrderServiceClient;
use mesh_contracts::order::v1::{GetOrderRequest, OrderStatus};
use mesh_runtime::config::env_prefix;
use mesh_testkit::process::MeshProcess;
use mesh_testkit::{bearer, walkthrough};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use tonic::transport::Channel;

const MESH: &str = env!("CARGO_BIN_EXE_mesh");
const ADMIN: &str = "trace-admin@example.com";
const PASSWORD: &str = "correct horse battery";
/// The services the README's order touches (report reads every event too).
const SERVICES: &[&str] = &[
    "auth",
    "user",
    "product",
    "inventory",
    "campaign",
    "payment",
    "order",
    "notification",
    "report",
];
/// Every call and every handled event logs a line (`rpc finished`, `event handler returned`).
const LOG_FILTER: &str = "info,mesh_runtime::observe=debug,mesh_runtime::consumer=debug";
const PLACE_ORDER: &str = "/order.v1.OrderService/PlaceOrder";

/// One exported span, as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    /// Its resource's `service.name`.
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent: String,
    /// Its `mesh.service` attribute.
    mesh_service: Option<String>,
}

/// The OTLP/gRPC receiver: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(Received {
                        service: service.clone(),
                        mesh_service: span
                            .attributes
                            .iter()
                            .find(|kv| kv.key == "mesh.service")
                            .and_then(|kv| text(kv.value.as_ref())),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Serves on a free loopback port; returns its address.
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("the OTLP receiver serves");
        });
        addr
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

/// The settings every process gets: export to the receiver, a short batch delay, logs of every
/// step, SQLite files in `data`.
fn common_env(cmd: &mut Command, receiver: SocketAddr, data: &std::path::Path) {
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{receiver}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_TRACES_SAMPLER")
        .env_remove("OTEL_TRACES_SAMPLER_ARG")
        .env("MESH_LOG", LOG_FILTER)
        .env("MESH_LOG_FORMAT", "json")
        .env("MESH_ADMIN_PORT", "0")
        .env("MESH_DATA_DIR", data)
        .env("MESH_SERVICE_CLIENT_SECRET", "trace-secret")
        .env("MESH_AUTH_BOOTSTRAP_ADMIN_EMAIL", ADMIN)
        .env_remove("MESH_DATABASE_URL");
}

/// The processes of one run and the gRPC address of each service.
struct Mesh {
    processes: Vec<(String, MeshProcess)>,
    addrs: BTreeMap<String, String>,
    _data: tempfile::TempDir,
}

impl Mesh {
    /// `mesh serve <service>` per service, on `redis`.
    fn separate(receiver: SocketAddr, redis: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let ports: BTreeMap<&str, u16> = SERVICES
            .iter()
            .map(|s| {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .unwrap()
                    .port();
                (*s, port)
            })
            .collect();
        let mut processes = Vec::new();
        for service in SERVICES {
            let mut cmd = Command::new(MESH);
            cmd.args(["serve", service]).env("MESH_REDIS_URL", redis);
            common_env(&mut cmd, receiver, data.path());
            for (peer, port) in &ports {
                cmd.env(
                    format!("{}_ADDR", env_prefix(peer)),
                    format!("http://127.0.0.1:{port}"),
                );
            }
            cmd.env(
                format!("{}_PORT", env_prefix(service)),
                ports[service].to_string(),
            );
            processes.push((service.to_string(), MeshProcess::start(cmd)));
        }
        let addrs = ports
            .iter()
            .map(|(s, p)| (s.to_string(), format!("127.0.0.1:{p}")))
            .collect();
        Self {
            processes,
            addrs,
            _data: data,
        }
    }

    /// One `mesh serve all` process on its in-process bus.
    fn all(receiver: SocketAddr) -> Self {
        let data = tempfile::tempdir().unwrap();
        let out = Command::new(MESH)
            .args(["modules", "--json"])
            .output()
            .unwrap();
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut cmd = Command::new(MESH);
        cmd.args(["serve", "all"]).env_remove("MESH_REDIS_URL");
        common_env(&mut cmd, receiver, data.path());
        for row in rows.as_array().unwrap() {
            let name = row["name"].as_str().unwrap();
            cmd.env(format!("{}_PORT", env_prefix(name)), "0");
        }
        let process = MeshProcess::start(cmd);
        let addrs = process.addrs().clone();
        Self {
            processes: vec![("all".into(), process)],
            addrs,
            _data: data,
        }
    }

    fn channel(&self, service: &str) -> Channel {
        Channel::from_shared(format!("http://{}", self.addrs[service]))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect_lazy()
    }

    /// Every JSON line any process logged that carries `trace_id`, parsed.
    fn log_lines_of(&self, trace_id: &str) -> Vec<serde_json::Value> {
        self.processes
            .iter()
            .flat_map(|(_, p)| p.log_lines(&[trace_id]))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .filter(|v| v["trace_id"] == trace_id)
            .collect()
    }
}

async fn sign_up(mesh: &Mesh, email: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Right after start the first call may race a service's readiness.
        match AuthServiceClient::new(mesh.channel("auth"))
            .sign_up(SignUpRequest {
                email: email.into(),
                password: PASSWORD.into(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => return r.into_inner().tokens.expect("tokens").access_token,
            Err(s) if Instant::now() < deadline && s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("sign up {email}: {s:?}"),
        }
    }
}

/// The README's order, placed and confirmed.
async fn place_the_readme_order(mesh: &Mesh) {
    let admin = sign_up(mesh, ADMIN).await;
    let product = walkthrough::create_cola(mesh.channel("product"), &admin).await;
    walkthrough::restock(mesh.channel("inventory"), &admin, &product, 10).await;
    let customer = sign_up(mesh, "ada@example.com").await;
    let mut orders = OrderServiceClient::new(mesh.channel("order"));
    let placed = orders
        .place_order(bearer(
            &customer,
            walkthrough::order("trace-1", &product, 2),
        ))
        .await
        .expect("PlaceOrder")
        .into_inner()
        .order
        .expect("order");
    mesh_testkit::eventually_within(Duration::from_secs(30), "the order CONFIRMED", || {
        let mut orders = orders.clone();
        let request = bearer(
            &customer,
            GetOrderRequest {
                id: placed.id.clone(),
            },
        );
        async move {
            let order = orders
                .get_order(request)
                .await
                .expect("GetOrder")
                .into_inner()
                .order
                .expect("order");
            assert_ne!(
                order.status,
                OrderStatus::Cancelled as i32,
                "cancelled: {}",
                order.cancel_reason
            );
            order.status == OrderStatus::Confirmed as i32
        }
    })
    .await;
}

/// The spans the order's trace must hold, as (service, span name).
const EXPECTED: &[(&str, &str)] = &[
    ("order", PLACE_ORDER),
    ("order", "publish order.created"),
    ("inventory", "handle order.created"),
    ("payment", "handle order.created"),
    ("campaign", "handle order.created"),
    ("inventory", "publish inventory.reserved"),
    ("order", "handle inventory.reserved"),
    ("payment", "handle inventory.reserved"),
    ("payment", "charge"),
    ("payment", "publish payment.succeeded"),
    ("order", "handle payment.succeeded"),
    ("order", "publish order.confirmed"),
    ("inventory", "handle order.confirmed"),
    ("inventory", "publish inventory.committed"),
    ("campaign", "handle order.confirmed"),
    ("notification", "handle order.confirmed"),
    ("notification", "delivery"),
    ("notification", "publish notification.sent"),
    ("report", "handle order.confirmed"),
    ("report", "handle payment.succeeded"),
    ("report", "handle notification.sent"),
];

/// The order's trace, if the PlaceOrder span arrived: all its spans received so far.
fn the_trace(spans: &[Received]) -> Option<(String, Vec<Received>)> {
    let root = spans.iter().find(|s| s.name == PLACE_ORDER)?;
    let trace: Vec<Received> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .cloned()
        .collect();
    Some((root.trace_id.clone(), trace))
}

/// Whether `trace` is complete and one tree, each span under its own service's name; the
/// first thing wrong otherwise.
fn check_trace(trace: &[Received]) -> Result<(), String> {
    let present: BTreeSet<(&str, &str)> = trace
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    let missing: Vec<_> = EXPECTED.iter().filter(|e| !present.contains(e)).collect();
    if !missing.is_empty() {
        return Err(format!("missing spans {missing:?}; have {present:?}"));
    }
    let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<&Received> = trace.iter().filter(|s| s.parent.is_empty()).collect();
    if roots.len() != 1 || roots[0].name != PLACE_ORDER {
        return Err(format!(
            "expected PlaceOrder as the one root, got {roots:?}"
        ));
    }
    let orphans: Vec<&Received> = trace
        .iter()
        .filter(|s| !s.parent.is_empty() && !ids.contains(s.parent.as_str()))
        .collect();
    if !orphans.is_empty() {
        return Err(format!(
            "spans whose parent was never exported: {orphans:?}"
        ));
    }
    Ok(())
}

async fn one_order_is_one_trace(mesh: &Mesh, receiver: &Receiver) {
    place_the_readme_order(mesh).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let (trace_id, trace) = loop {
        let spans = receiver.spans();
        let last = match the_trace(&spans) {
            Some((id, trace)) => match check_trace(&trace) {
                Ok(()) => break (id, trace),
                Err(e) => e,
            },
            None => format!("no PlaceOrder span among {} received spans", spans.len()),
        };
        assert!(Instant::now() < deadline, "after 30 s: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Each span under its own service's name, never the process's.
    for span in &trace {
        assert!(
            SERVICES.contains(&span.service.as_str()),
            "{span:?} is exported under {:?}, not a service's name",
            span.service
        );
        assert_eq!(
            span.mesh_service.as_deref(),
            Some(span.service.as_str()),
            "{span:?}: resource and mesh.service disagree"
        );
    }

    // The logs of each step carry the trace id, with the span id of their step's span.
    let lines = mesh.log_lines_of(&trace_id);
    let logged: BTreeSet<&str> = lines.iter().filter_map(|l| l["span_id"].as_str()).collect();
    let spans: BTreeMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for line in &lines {
        let span_id = line["span_id"].as_str().unwrap_or_default();
        assert!(
            spans.contains_key(span_id),
            "a line of the trace names span {span_id}, which was not exported: {line}"
        );
    }
    for span in &trace {
        let step = span.name.starts_with('/') || span.name.starts_with("handle ");
        if step {
            assert!(
                logged.contains(span.span_id.as_str()),
                "no log line of {} in {} carries trace {trace_id} and span {}",
                span.name,
                span.service,
                span.span_id
            );
        }
    }
    println!(
        "one trace {trace_id}: {} spans from {:?}; {} log lines",
        trace.len(),
        trace
            .iter()
            .map(|s| s.service.as_str())
            .collect::<BTreeSet<_>>(),
        lines.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_is_one_trace_across_separate_processes() {
    let Some(redis) = mesh_testkit::OwnRedis::start() else {
        assert!(
            !mesh_testkit::require_backends(),
            "redis-server cannot be started; MESH_TEST_REQUIRE_BACKENDS=1 makes that a failure"
        );
        eprintln!("SKIPPED: separate processes need redis-server for their bus");
        return;
    };
    let receiver = Receiver::default();
    let addr = receiver.start().await;
    let mesh = Mesh::separate(addr, &redis.url());
    one_order_is_one_trace(&mesh, &receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_all_exports_each_services_spans_under_its_own_name() {
    let receiver = Receiver::default();
    let addr = receiver.start().await;
    let mesh = Mesh::all(addr);
    one_order_is_one_trace(&mesh, &receiver).await;
    // Nothing the process did is exported under its own name either.
    let stray: Vec<Received> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.service == "mesh")
        .collect();
    assert!(stray.is_empty(), "spans exported as `mesh`: {stray:?}");
}
