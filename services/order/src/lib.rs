//! The order service: orders, their lines, status and status history, and the order saga's
//! state (`docs/saga.md`).
//!
//! `PlaceOrder` prices the lines at product, tokenizes a raw card at payment, stores the order
//! as PENDING and emits `order.created`; idempotent per (customer, idempotency key). From there
//! the saga runs by events: inventory reserves or rejects, payment charges, and order's
//! consumers ([`saga`]) confirm or cancel. A [`sweeper`] cancels orders with no outcome after
//! the saga timeout; while the saga is too far behind, PlaceOrder refuses new orders
//! ([`admission`]). Every transition writes the status, a history entry and its event in one
//! transaction.
//!
//! - [`api`]: the RPCs and who may act for whom; [`place`]: PlaceOrder; [`peers`]: product and
//!   payment clients; [`transitions`]: status changes and their events; [`refund`],
//!   [`refund_plan`], [`refund_store`]: refunds of confirmed orders; [`saga`]: consumers;
//!   [`sweeper`]: the timeout; [`store`]: SQL; [`validate`]: input checks; [`error`]: errors to
//!   statuses.

pub mod admission;
pub mod api;
pub mod erasure;
pub mod error;
pub mod peers;
pub mod place;
pub mod refund;
pub mod refund_plan;
pub mod refund_store;
pub mod saga;
pub mod store;
pub mod sweeper;
pub mod transitions;
pub mod validate;

use std::time::Duration;

use futures::future::BoxFuture;
use mesh_contracts::order::v1::order_service_server::OrderServiceServer;
use mesh_runtime::auth::{Policy, Role, guard};
use mesh_runtime::settings::{ModuleSettings, Setting, SettingErrors, Settings, process_env};
use mesh_runtime::{BuildError, Migrations, ServiceContext, ServiceRoutes};

pub use api::OrderApi;

/// The order's tables (portable SQL, the same on Postgres and SQLite).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The module table's migrations for `order`.
pub const MIGRATIONS: Migrations = Migrations::same(&MIGRATOR);

/// The saga timeout when `MESH_ORDER_SAGA_TIMEOUT` is unset.
pub const DEFAULT_SAGA_TIMEOUT: Duration = Duration::from_secs(30);

/// Who may call each RPC of `order.v1.OrderService`: customers (for themselves), staff and
/// services (for anyone); RefundOrder staff and services only; admins pass every check.
pub fn policy() -> Policy {
    Policy::new("order.v1.OrderService")
        .roles(
            &["PlaceOrder", "GetOrder", "ListOrders", "CancelOrder"],
            &[Role::Customer, Role::Staff, Role::Service],
        )
        .roles(&["RefundOrder"], &[Role::Staff, Role::Service])
}

/// How long PlaceOrder waits for campaign when `MESH_ORDER_CAMPAIGN_TIMEOUT` is unset.
pub const DEFAULT_CAMPAIGN_TIMEOUT: Duration = Duration::from_secs(1);

/// Saga settings.
#[derive(Debug, Clone)]
pub struct OrderOptions {
    /// An order with no outcome after this long is cancelled (`MESH_ORDER_SAGA_TIMEOUT`).
    pub saga_timeout: Duration,
    /// How often the sweeper looks for overdue orders.
    pub sweep_every: Duration,
    /// Longest wait for campaign's PriceCart; past it the order goes at list price
    /// (`MESH_ORDER_CAMPAIGN_TIMEOUT`).
    pub campaign_timeout: Duration,
    /// PlaceOrder refuses new orders while the saga's backlog is older than this
    /// (`MESH_ORDER_MAX_SAGA_BACKLOG`; zero: never).
    pub max_saga_backlog: Duration,
    /// How many of the oldest open orders the backlog leaves out, so that a few stuck orders
    /// never refuse everyone ([`admission::DEFAULT_STRAGGLERS`]).
    pub saga_backlog_stragglers: u32,
}

impl OrderOptions {
    /// Options for `saga_timeout`, sweeping four times per timeout (at most every second),
    /// refusing new orders while the saga is behind by more than a third of it.
    pub fn with_timeout(saga_timeout: Duration) -> Self {
        Self {
            saga_timeout,
            sweep_every: (saga_timeout / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(1)),
            campaign_timeout: DEFAULT_CAMPAIGN_TIMEOUT,
            max_saga_backlog: saga_timeout / 3,
            saga_backlog_stragglers: admission::DEFAULT_STRAGGLERS,
        }
    }

    /// From the environment: `MESH_ORDER_SAGA_TIMEOUT` (a duration such as `30s`; default 30s)
    /// and `MESH_ORDER_CAMPAIGN_TIMEOUT` (default 1s).
    pub fn from_env() -> Result<Self, SettingErrors> {
        Self::from_lookup(process_env)
    }

    /// From `env` (the environment, or a map in tests); every bad one named.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingErrors> {
        let mut s = Settings::new(env);
        let mut options = Self::with_timeout(s.duration(&SAGA_TIMEOUT));
        options.campaign_timeout = s.duration(&CAMPAIGN_TIMEOUT);
        if let Some(raw) = s.raw(&MAX_SAGA_BACKLOG) {
            let backlog = s.duration(&MAX_SAGA_BACKLOG);
            if !backlog.is_zero() && backlog >= options.saga_timeout {
                s.refuse(
                    &MAX_SAGA_BACKLOG,
                    &raw,
                    format!(
                        "must be below MESH_ORDER_SAGA_TIMEOUT ({}): a backlog that old is already being cancelled by the timeout; 0 turns the check off",
                        humantime::format_duration(options.saga_timeout)
                    ),
                );
            } else {
                options.max_saga_backlog = backlog;
            }
        }
        s.finish(options)
    }
}

const SAGA_TIMEOUT: Setting = Setting::duration(
    "MESH_ORDER_SAGA_TIMEOUT",
    "30s",
    "An order with no outcome after this long is cancelled (and its stock released); at least twice MESH_EVENT_CLAIM_IDLE, below MESH_INVENTORY_SAGA_RESERVATION_TTL.",
);

const CAMPAIGN_TIMEOUT: Setting = Setting::duration(
    "MESH_ORDER_CAMPAIGN_TIMEOUT",
    "1s",
    "Longest wait for campaign's price of a cart; past it (or with campaign down) the order goes on at list price, marked discounts_unavailable.",
);

const MAX_SAGA_BACKLOG: Setting = Setting::duration_or_off(
    "MESH_ORDER_MAX_SAGA_BACKLOG",
    "10s",
    "PlaceOrder refuses new orders (RESOURCE_EXHAUSTED, retry-after 1) while the open orders behind the 100 oldest are older than this, so an overload cannot grow a backlog that the saga timeout then cancels; default a third of MESH_ORDER_SAGA_TIMEOUT, below it; 0 turns it off.",
);

/// The order module's settings, for its module row.
pub const SETTINGS: ModuleSettings = ModuleSettings {
    declared: &[SAGA_TIMEOUT, CAMPAIGN_TIMEOUT, MAX_SAGA_BACKLOG],
    check: |env| OrderOptions::from_lookup(env).map(drop),
};

impl Default for OrderOptions {
    fn default() -> Self {
        Self::with_timeout(DEFAULT_SAGA_TIMEOUT)
    }
}

/// Builds the service's routes; the module table's constructor for `order`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let options = OrderOptions::from_env()?;
        let peers = peers::Peers::connect(&ctx)?;
        build_with(ctx, options, peers).await
    })
}

/// Builds the service's routes with explicit `options` and `peers` (tests).
pub async fn build_with(
    ctx: ServiceContext,
    options: OrderOptions,
    peers: peers::Peers,
) -> Result<ServiceRoutes, BuildError> {
    let db = ctx.database()?.clone();
    // One transaction per batch: events of two orders in two concurrent batch transactions, in
    // opposite order, would deadlock on the order rows (docs/saga.md).
    ctx.start_consumer(
        saga::handlers(ctx.consumer()?.concurrency(1)).on("user.deleted", erasure::OnUserDeleted),
    );
    let timeouts = prometheus_client::metrics::counter::Counter::default();
    ctx.metrics().register(
        "order_saga_timeouts",
        "Orders cancelled by the saga timeout (no outcome within MESH_ORDER_SAGA_TIMEOUT)",
        timeouts.clone(),
    );
    let refusals = prometheus_client::metrics::counter::Counter::default();
    ctx.metrics().register(
        "order_admission_refusals",
        "PlaceOrder calls refused because the saga was further behind than MESH_ORDER_MAX_SAGA_BACKLOG",
        refusals.clone(),
    );
    let backlog =
        prometheus_client::metrics::gauge::Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    ctx.metrics().register(
        "order_saga_backlog_seconds",
        "Age of the saga's backlog at the sweeper's last scan: the oldest open order (PENDING, RESERVED, PAID) once the 100 oldest are left out",
        backlog.clone(),
    );
    let admission = std::sync::Arc::new(
        admission::Admission::new(options.max_saga_backlog, refusals, backlog)
            .stragglers(options.saga_backlog_stragglers),
    );
    let sweeper = sweeper::Sweeper::new(db.clone(), options.saga_timeout)
        .counted(timeouts)
        .sampling(admission.clone());
    ctx.background_task(sweeper.queue(options.sweep_every).task());
    let fallbacks = prometheus_client::metrics::counter::Counter::default();
    ctx.metrics().register(
        "order_campaign_fallbacks",
        "Orders placed at list price because campaign could not price them",
        fallbacks.clone(),
    );
    let placer = place::Placer::new(db.clone(), peers)
        .with_campaign(options.campaign_timeout, fallbacks)
        .with_admission(admission);
    let api = OrderApi::new(db, placer);
    let server = OrderServiceServer::new(api)
        .max_decoding_message_size(ctx.max_message_bytes())
        .max_encoding_message_size(ctx.max_message_bytes());
    Ok(ServiceRoutes::new().add_service(guard(&ctx, policy(), server)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_runtime::settings::lookup_in;

    #[test]
    fn the_saga_backlog_bound_defaults_to_a_third_of_the_timeout_and_stays_below_it() {
        let o = OrderOptions::from_lookup(lookup_in(&[])).unwrap();
        assert_eq!(o.max_saga_backlog, Duration::from_secs(10));
        let o =
            OrderOptions::from_lookup(lookup_in(&[("MESH_ORDER_SAGA_TIMEOUT", "90s")])).unwrap();
        assert_eq!(o.max_saga_backlog, Duration::from_secs(30));
        let o =
            OrderOptions::from_lookup(lookup_in(&[("MESH_ORDER_MAX_SAGA_BACKLOG", "0")])).unwrap();
        assert_eq!(o.max_saga_backlog, Duration::ZERO);
        let o =
            OrderOptions::from_lookup(lookup_in(&[("MESH_ORDER_MAX_SAGA_BACKLOG", "5s")])).unwrap();
        assert_eq!(o.max_saga_backlog, Duration::from_secs(5));
        let refused = OrderOptions::from_lookup(lookup_in(&[
            ("MESH_ORDER_SAGA_TIMEOUT", "20s"),
            ("MESH_ORDER_MAX_SAGA_BACKLOG", "20s"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            refused.contains("MESH_ORDER_MAX_SAGA_BACKLOG")
                && refused.contains("below MESH_ORDER_SAGA_TIMEOUT"),
            "{refused}"
        );
        let refused =
            OrderOptions::from_lookup(lookup_in(&[("MESH_ORDER_MAX_SAGA_BACKLOG", "soon")]))
                .unwrap_err()
                .to_string();
        assert!(refused.contains("MESH_ORDER_MAX_SAGA_BACKLOG"), "{refused}");
    }
}
