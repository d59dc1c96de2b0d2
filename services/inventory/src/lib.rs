//! The inventory service: stock per product per location, and reservations that hold it for
//! orders and vends until they are committed, released or expire.
//!
//! Stock never goes negative: every change is one conditional `UPDATE` that keeps
//! `0 <= reserved <= on_hand` (see [`store`]), so concurrent reservations of the last unit get
//! it once. A [`sweeper`] expires overdue reservations and returns their stock. Every change
//! emits its event through the outbox. See `docs/identity.md`.
//!
//! - [`api`]: the RPCs; [`reservations`]: ending a reservation; [`store`]: SQL;
//!   [`validate`]: input checks; [`error`]: errors to statuses.

pub mod api;
pub mod error;
pub mod reservations;
pub mod store;
pub mod sweeper;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mesh_contracts::inventory::v1::inventory_service_server::InventoryServiceServer;
use mesh_runtime::auth::{Clock, Policy, Role, SystemClock, guard};
use mesh_runtime::{BuildError, Migrations, ServiceContext, ServiceRoutes};

pub use api::InventoryApi;

/// The inventory's tables (portable SQL, the same on Postgres and SQLite).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The module table's migrations for `inventory`.
pub const MIGRATIONS: Migrations = Migrations::same(&MIGRATOR);

/// Who may call each RPC of `inventory.v1.InventoryService`: reads take any caller with a
/// token; reservations are internal (service tokens); adjustments take staff (admins pass all).
pub fn policy() -> Policy {
    Policy::new("inventory.v1.InventoryService")
        .authenticated(&["CheckStock", "GetStock", "ListStock"])
        .roles(
            &["Reserve", "CommitReservation", "ReleaseReservation"],
            &[Role::Service],
        )
        .roles(&["GetReservation"], &[Role::Service, Role::Staff])
        .roles(&["AdjustStock"], &[Role::Staff])
}

/// Clock and sweeper settings.
#[derive(Debug, Clone)]
pub struct InventoryOptions {
    /// The clock reservations expire by.
    pub clock: Arc<dyn Clock>,
    /// How often the sweeper looks for expired reservations.
    pub sweep_every: Duration,
}

impl Default for InventoryOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            sweep_every: Duration::from_secs(5),
        }
    }
}

/// Builds the service's routes; the module table's constructor for `inventory`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(build_with(ctx, InventoryOptions::default()))
}

/// Builds the service's routes with explicit `options` (tests inject a clock).
pub async fn build_with(
    ctx: ServiceContext,
    options: InventoryOptions,
) -> Result<ServiceRoutes, BuildError> {
    let db = ctx.database()?.clone();
    let sweeper = sweeper::Sweeper::new(db.clone(), options.clock.clone());
    tokio::spawn(sweeper.run(options.sweep_every, ctx.shutdown().clone()));
    let server = InventoryServiceServer::new(InventoryApi::new(db, options.clock))
        .max_decoding_message_size(ctx.max_message_bytes())
        .max_encoding_message_size(ctx.max_message_bytes());
    Ok(ServiceRoutes::new().add_service(guard(&ctx, policy(), server)?))
}
