//! The shared runtime of every mesh service, written once and used by all of them.
//!
//! - [`config`]: flags and `MESH_*` variables, validated at start with one error naming every bad
//!   setting;
//! - [`telemetry`] and [`json_log`]: `tracing` logs (JSON with trace ids) and OTLP export;
//! - [`server`]: a service's gRPC port ([`route`]: the shape of what it serves) with health, reflection, [`observe`]ability and graceful
//!   shutdown; [`admin`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`client`]: channels to peers that propagate trace context and deadlines;
//! - [`module`]: the module-table row and build context a service crate provides and receives;
//!   [`settings`]: a module's own settings, declared once, read and checked all together;
//! - [`lifecycle`]: a service's background tasks, supervised (restarted with backoff, readiness
//!   off while one keeps failing or the database is unreachable, drained on shutdown, aborted
//!   after the grace period) by the rule of [`restart`], which the runtime's [`helper_task`]s
//!   follow too; [`tracker`]: its short-lived tasks; [`task_restarts`]: the restart counter;
//!   [`work_queue`]: the durable work queue they run on (hand-off in process, due scans,
//!   retries after transient errors); [`retry_policy`]: the declared attempts, backoff and pace
//!   of a queue whose items the service retries itself;
//! - data and events (see `docs/events.md`): [`storage`] (a database per service, migrations),
//!   [`outbox`] (state change and event in one transaction), [`relay`] (outbox to bus), [`bus`]
//!   (Redis Streams or in-process), [`consumer`] (idempotent handlers, written as
//!   [`typed_handler`]s), [`audit`] (the trail),
//!   [`payload`] (a handler's typed read of an event's payload), [`event_metrics`] (lag,
//!   outcomes, dead letters, outbox backlog, publish latency);
//! - [`domain`]: the domain kit (the service error shape, page tokens, timestamps, id, currency
//!   and money rules);
//! - [`auth`]: token verification and per-RPC access policies (see `docs/identity.md`);
//! - [`tls`]: mTLS on every gRPC port and channel, reloaded when the files change
//!   (see `docs/security.md`).

pub mod admin;
pub mod audit;
pub mod audit_access;
pub mod auth;
pub mod balance;
pub mod bus;
pub mod bus_admin;
pub mod call_context;
pub mod client;
pub mod client_config;
pub mod config;
pub mod consumer;
pub mod descriptors;
pub mod dns;
pub mod domain;
pub mod endpoint_slices;
pub mod event_metrics;
pub mod faults;
pub mod grpc_timeout;
pub mod helper_task;
pub mod json_log;
pub mod lifecycle;
pub mod metrics;
pub mod module;
pub mod observe;
pub mod otlp_export;
pub mod outbox;
pub mod paging;
pub mod payload;
pub(crate) mod publisher;
pub mod readiness;
pub mod redact;
pub mod redis_guard;
pub mod reflection;
pub mod relay;
pub mod resilience;
pub mod restart;
pub mod retry_policy;
pub mod route;
pub mod sampler;
pub mod server;
pub mod settings;
pub mod shed;
pub mod shutdown;
pub mod spans;
pub mod sql_write;
pub mod storage;
pub mod task_restarts;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod tracker;
pub mod typed_handler;
pub mod work_queue;

pub use call_context::CallContext;
pub use config::{MeshConfig, RuntimeArgs, ServiceSpec};
pub use metrics::{Metrics, RpcMetrics};
pub use module::{BuildError, ClientError, Module, NoData, ServiceContext, ServiceRoutes};
pub use readiness::Readiness;
pub use server::GrpcServer;
pub use settings::{ModuleSettings, Setting};
pub use storage::{Database, DatabaseError, Migrations};
pub use trace_context::TraceContext;
