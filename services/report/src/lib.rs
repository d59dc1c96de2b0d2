//! The report service: CQRS read models built only from events (sales by shop and day, top
//! products, stock per location with low stock and days of cover), each answer saying how fresh
//! it is, and rebuildable from report's own history of every event it handled
//! (`docs/report.md`).
//!
//! - [`record`]: the consumer's handler (history + active generation, one transaction with the
//!   handled-event record); [`apply`]: how each event changes the models; [`models`]: the models
//!   and their tables;
//! - [`rebuild`]: the shadow generation, replayed from the history and swapped in;
//! - [`timeline`]: an aggregate's events and its related aggregates' from the history, merged
//!   in time order ("what happened to order X");
//! - [`api`]: the RPCs; [`queries`]: the read side; [`freshness`]: newest event and lag;
//!   [`validate`], [`dates`], [`error`]. Page tokens, time and the error shape are the runtime's
//!   domain kit.

pub mod api;
pub mod apply;
pub mod dates;
pub mod error;
pub mod freshness;
pub mod models;
pub mod queries;
pub mod rebuild;
pub mod record;
pub mod timeline;
pub mod validate;

use futures::future::BoxFuture;
use mesh_contracts::report::v1::report_service_server::ReportServiceServer;
use mesh_runtime::auth::{Policy, Role, guard};
use mesh_runtime::{BuildError, Migrations, ServiceContext, ServiceRoutes};

pub use api::ReportApi;

/// Report's tables on Postgres.
pub static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
/// Report's tables on SQLite (the same, with `BLOB` for `BYTEA`).
pub static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
/// The module table's migrations for `report`.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES,
    sqlite: &SQLITE,
};

/// Who may call each RPC of `report.v1.ReportService`: the reports are for staff and other
/// services (admins pass every role check); a rebuild is for admins only; a timeline for any
/// valid token, then decided like the audit trail (`mesh_runtime::audit_access`).
pub fn policy() -> Policy {
    Policy::new("report.v1.ReportService")
        .authenticated(&["GetAggregateTimeline"])
        .roles(
            &["GetSalesByShopDay", "ListTopProducts", "GetStockSummary"],
            &[Role::Staff, Role::Service],
        )
        .roles(&["RebuildReadModels"], &[Role::Admin])
}

/// Builds the service's routes; the module table's constructor for `report`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(build_with(ctx))
}

/// Builds the service: its consumer (every type of [`record::EVENT_TYPES`], one transaction at a
/// time: each records its event under the `report_state` row lock) and the gRPC server.
pub async fn build_with(ctx: ServiceContext) -> Result<ServiceRoutes, BuildError> {
    let db = ctx.database()?.clone();
    let mut consumer = ctx.consumer()?.concurrency(1);
    for event_type in record::EVENT_TYPES {
        consumer = consumer.on(*event_type, record::Record);
    }
    let lag = freshness::LagSource {
        bus: ctx.bus()?.clone(),
        group: consumer.group().to_string(),
        domains: consumer.domains(),
    };
    ctx.start_consumer(consumer);
    let server = ReportServiceServer::new(ReportApi::new(db, lag))
        .max_decoding_message_size(ctx.max_message_bytes())
        .max_encoding_message_size(ctx.max_message_bytes());
    Ok(ServiceRoutes::new().add_service(guard(&ctx, policy(), server)?))
}
