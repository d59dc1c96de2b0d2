//! The inventory service: stock per product per location, and reservations that hold it for
//! orders and vends until they are committed, released or expire.
//!
//! Stock never goes negative: every change is one conditional `UPDATE` that keeps
//! `0 <= reserved <= on_hand` (see [`store`]), so concurrent reservations of the last unit get
//! it once. A [`sweeper`] expires overdue reservations and returns their stock. Every change
//! emits its event through the outbox. The order saga's events reserve, commit and release
//! stock ([`saga`]). See `docs/identity.md` and `docs/saga.md`.
//!
//! - [`api`]: the RPCs; [`reservations`]: ending a reservation; [`saga`]: the order saga's
//!   consumers; [`refunds`]: refunded units restocked or written off; [`store`]: SQL;
//!   [`validate`]: input checks; [`error`]: errors to statuses; [`scope`]: store staff act at
//!   their stores' locations only; [`locations`]: which store a machine's location belongs to;
//!   [`events`]: the stock events it emits.

pub mod api;
pub mod error;
pub mod events;
pub mod locations;
pub mod refunds;
pub mod reservations;
pub mod saga;
pub mod scope;
pub mod store;
pub mod sweeper;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mesh_contracts::inventory::v1::inventory_service_server::InventoryServiceServer;
use mesh_runtime::auth::{Clock, Policy, Role, SystemClock, guard};
use mesh_runtime::settings::{ModuleSettings, Setting, SettingErrors, Settings, process_env};
use mesh_runtime::{BuildError, Migrations, ServiceContext, ServiceRoutes};

pub use api::InventoryApi;

/// The inventory's tables (portable SQL, the same on Postgres and SQLite).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The module table's migrations for `inventory`.
pub const MIGRATIONS: Migrations = Migrations::same(&MIGRATOR);

/// Who may call each RPC of `inventory.v1.InventoryService`: reads take any caller with a
/// token; reservations are internal (service tokens); adjustments take staff (admins pass all).
/// Store staff are further confined to their stores' locations in the handlers ([`scope`]).
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
    /// Lifetime of the reservations the order saga makes (`MESH_INVENTORY_SAGA_RESERVATION_TTL`,
    /// default 15 minutes); must exceed the saga timeout (`MESH_ORDER_SAGA_TIMEOUT`).
    pub saga_reservation_ttl: Duration,
}

impl Default for InventoryOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            sweep_every: Duration::from_secs(5),
            saga_reservation_ttl: api::DEFAULT_TTL,
        }
    }
}

/// Builds the service's routes; the module table's constructor for `inventory`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let options = InventoryOptions {
            saga_reservation_ttl: saga_ttl_from_env()?,
            ..InventoryOptions::default()
        };
        build_with(ctx, options).await
    })
}

/// The default order saga timeout (`MESH_ORDER_SAGA_TIMEOUT`), mirrored here to check the TTL.
const DEFAULT_SAGA_TIMEOUT: Duration = Duration::from_secs(30);

const SAGA_RESERVATION_TTL: Setting = Setting::duration(
    "MESH_INVENTORY_SAGA_RESERVATION_TTL",
    "15m",
    "Lifetime of the reservations the order saga makes: longer than MESH_ORDER_SAGA_TIMEOUT, at most 24h.",
);

/// The inventory module's settings, for its module row.
pub const SETTINGS: ModuleSettings = ModuleSettings {
    declared: &[SAGA_RESERVATION_TTL],
    check: |env| saga_ttl_from_lookup(env).map(drop),
};

/// The saga reservation TTL from `MESH_INVENTORY_SAGA_RESERVATION_TTL`, checked to exceed the
/// saga timeout `MESH_ORDER_SAGA_TIMEOUT` (both default when unset).
pub fn saga_ttl_from_env() -> Result<Duration, SettingErrors> {
    saga_ttl_from_lookup(process_env)
}

/// [`saga_ttl_from_env`] through `env`.
pub fn saga_ttl_from_lookup(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Duration, SettingErrors> {
    let mut s = Settings::new(env);
    let ttl = s.duration(&SAGA_RESERVATION_TTL);
    // Order's setting, read here only to agree with it (order reports a bad value itself).
    let timeout = s
        .raw_variable("MESH_ORDER_SAGA_TIMEOUT")
        .and_then(|raw| humantime::parse_duration(raw.trim()).ok())
        .unwrap_or(DEFAULT_SAGA_TIMEOUT);
    if ttl <= timeout || ttl > api::MAX_TTL {
        let value = s.raw(&SAGA_RESERVATION_TTL).unwrap_or_default();
        s.refuse(
            &SAGA_RESERVATION_TTL,
            &value,
            format!(
                "{ttl:?} must be longer than MESH_ORDER_SAGA_TIMEOUT ({timeout:?}) and at most 24h, or a reservation can lapse under an order being confirmed"
            ),
        );
    }
    s.finish(ttl)
}

/// Builds the service's routes with explicit `options` (tests inject a clock).
pub async fn build_with(
    ctx: ServiceContext,
    options: InventoryOptions,
) -> Result<ServiceRoutes, BuildError> {
    let db = ctx.database()?.clone();
    let saga = saga::SagaOptions {
        clock: options.clock.clone(),
        reservation_ttl: options.saga_reservation_ttl,
    };
    // One transaction per batch: reservations of many orders lock the same stock rows, and
    // concurrent batch transactions would deadlock on them (docs/saga.md).
    ctx.start_consumer(
        saga::handlers(ctx.consumer()?.concurrency(1), &saga)
            .on(refunds::ORDER_REFUNDED, refunds::Return(saga.clone()))
            .on(
                locations::MACHINE_REGISTERED,
                locations::OnMachineRegistered,
            ),
    );
    let sweeper = sweeper::Sweeper::new(db.clone(), options.clock.clone());
    ctx.background_task(sweeper.queue(options.sweep_every).task());
    let server = InventoryServiceServer::new(InventoryApi::new(db, options.clock))
        .max_decoding_message_size(ctx.max_message_bytes())
        .max_encoding_message_size(ctx.max_message_bytes());
    Ok(ServiceRoutes::new().add_service(guard(&ctx, policy(), server)?))
}
