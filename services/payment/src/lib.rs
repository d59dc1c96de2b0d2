//! The payment service: charges and refunds through a provider trait, card tokens, the
//! transaction ledger, and payment's part of the order saga.
//!
//! The charge is a side effect outside the database, so it is made in three steps that converge
//! whatever crashes: a PENDING payment row (one per order, committed), the provider call with the
//! order id as idempotency key, and a conditional finish that writes the ledger and the event in
//! one transaction (see [`engine`]). The built-in provider is a simulated card processor whose
//! outcome is chosen by the card number ([`cards`], `docs/saga.md`).
//!
//! - [`api`]: the RPCs; [`engine`]: charges and refunds; [`saga`]: event handlers;
//!   [`work`]: what the engine hands the worker; [`worker`]: background retries;
//!   [`provider`]: the provider trait; [`simulated`]: the simulated processor; [`store`]: SQL;
//!   [`validate`], [`error`], [`settings`].

pub mod api;
pub mod cards;
pub mod engine;
pub mod error;
pub mod provider;
pub mod saga;
pub mod settings;
pub mod simulated;
pub mod store;
pub mod validate;
pub mod work;
pub mod worker;

use std::sync::Arc;

use futures::future::BoxFuture;
use mesh_contracts::payment::v1::payment_service_server::PaymentServiceServer;
use mesh_runtime::auth::{Policy, Role, guard};
use mesh_runtime::consumer::ConsumerOptions;
use mesh_runtime::{BuildError, Migrations, ServiceContext, ServiceRoutes};

pub use api::PaymentApi;
pub use settings::PaymentSettings;

/// Payment's tables (portable SQL, the same on Postgres and SQLite).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The module table's migrations for `payment`.
pub const MIGRATIONS: Migrations = Migrations::same(&MIGRATOR);

/// Who may call each RPC of `payment.v1.PaymentService`: charges, refunds and reads are for
/// other services (order's saga runs on events; vm charges vends over gRPC) and staff (admins
/// pass every role check); any caller with a token may tokenize a card.
pub fn policy() -> Policy {
    Policy::new("payment.v1.PaymentService")
        .authenticated(&["TokenizeCard"])
        .roles(
            &["Charge", "Refund", "GetPayment", "ListTransactions"],
            &[Role::Service, Role::Staff],
        )
}

/// Settings and the provider.
#[derive(Debug, Clone, Default)]
pub struct PaymentOptions {
    /// Timeouts, retries, the slow card's delay.
    pub settings: PaymentSettings,
    /// The card provider; `None` is the simulated processor over the service's database.
    pub provider: Option<Arc<dyn provider::PaymentProvider>>,
}

/// Builds the service's routes; the module table's constructor for `payment`. Settings come
/// from `MESH_PAYMENT_*` (see [`PaymentSettings`]).
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let settings = PaymentSettings::from_env()?;
        build_with(
            ctx,
            PaymentOptions {
                settings,
                provider: None,
            },
        )
        .await
    })
}

/// Builds the service with explicit `options` (tests inject settings and providers): the gRPC
/// server, the saga consumer and the worker.
pub async fn build_with(
    ctx: ServiceContext,
    options: PaymentOptions,
) -> Result<ServiceRoutes, BuildError> {
    let db = ctx.database()?.clone();
    let provider = options.provider.unwrap_or_else(|| {
        Arc::new(simulated::SimulatedProcessor::new(
            db.clone(),
            options.settings.slow_card_delay,
        ))
    });
    let work = mesh_runtime::work_queue::WorkHandle::new();
    let engine = engine::Engine::new(db, provider, options.settings, work.clone());
    // One transaction at a time: the handlers lock an order's saga row, and transactions that
    // each hold several orders' rows (a batch's events in any order) could otherwise deadlock.
    let events = &ctx.config().events;
    let options = ConsumerOptions {
        max_deliveries: events.max_deliveries,
        retry_backoff: events.retry_backoff,
        max_backoff: (events.claim_idle / 2).min(std::time::Duration::from_secs(30)),
        concurrency: 1,
        ..ConsumerOptions::default()
    };
    ctx.start_consumer(
        ctx.consumer()?
            .options(options)
            .on("order.created", saga::OnOrderCreated(engine.clone()))
            .on(
                "inventory.reserved",
                saga::OnInventoryReserved(engine.clone()),
            )
            .on("order.cancelled", saga::OnOrderCancelled(engine.clone()))
            .on(
                "order.refund_requested",
                saga::OnOrderRefundRequested(engine.clone()),
            ),
    );
    ctx.background_task(worker::queue(engine.clone(), work).task());
    let server = PaymentServiceServer::new(PaymentApi::new(engine))
        .max_decoding_message_size(ctx.max_message_bytes())
        .max_encoding_message_size(ctx.max_message_bytes());
    Ok(ServiceRoutes::new().add_service(guard(&ctx, policy(), server)?))
}
