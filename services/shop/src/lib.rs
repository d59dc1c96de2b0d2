//! The shop service: stores, the vending machine registry, and each machine's last known
//! status as the IoT gateway reports it.
//!
//! Status arrives by `ReportMachineStatus` (service role; the gateway calls it on connect,
//! disconnect, status and fault changes, and with coalesced heartbeats), not by consuming
//! `device.*` events: the gateway knows the full status at each moment, so a report is a
//! snapshot that replaces the stored one, ordered by its `update_time` (older reports are
//! ignored). A change of connectivity or faults emits `machine.status_changed` through the
//! outbox, in the transaction of the change. See `docs/devices.md`.
//!
//! - [`api`]: the RPCs; [`store`]: SQL; [`validate`]: input checks and resource names;
//!   [`error`]: errors to statuses.

pub mod api;
pub mod error;
pub mod store;
pub mod validate;

use futures::future::BoxFuture;
use mesh_contracts::shop::v1::shop_service_server::ShopServiceServer;
use mesh_runtime::auth::{Policy, Role, guard};
use mesh_runtime::{BuildError, Migrations, ServiceContext, ServiceRoutes};

pub use api::ShopApi;

/// The shop's tables (portable SQL, the same on Postgres and SQLite).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The module table's migrations for `shop`.
pub const MIGRATIONS: Migrations = Migrations::same(&MIGRATOR);

/// Who may call each RPC of `shop.v1.ShopService`: reads take any caller with a token (services
/// and devices included); stores and machines are created by staff; status reports come from
/// the gateway (service role).
pub fn policy() -> Policy {
    Policy::new("shop.v1.ShopService")
        .authenticated(&["GetStore", "ListStores", "GetMachine", "ListMachines"])
        .roles(&["CreateStore", "RegisterMachine"], &[Role::Staff])
        .roles(&["ReportMachineStatus"], &[Role::Service])
}

/// Builds the service's routes; the module table's constructor for `shop`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let db = ctx.database()?.clone();
        let server = ShopServiceServer::new(ShopApi::new(db))
            .max_decoding_message_size(ctx.max_message_bytes())
            .max_encoding_message_size(ctx.max_message_bytes());
        Ok(ServiceRoutes::new().add_service(guard(&ctx, policy(), server)?))
    })
}
