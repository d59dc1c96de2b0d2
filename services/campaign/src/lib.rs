//! The campaign service: promotions and their discount rules, carts priced synchronously for
//! orders, and redemptions counted exactly once through the order saga (`docs/campaign.md`).
//!
//! - [`api`]: the RPCs and who may call them; [`pricing`]: which campaigns apply to a cart and
//!   how they stack; [`rules`]: one rule on a cart's lines; [`redemption`]: holds,
//!   reservations, consumption and release, and the counters behind the limits; [`events`]:
//!   consumers of order's and product's events; [`store`]: SQL; [`validate`], [`error`],
//!   [`settings`]. Times, page tokens, currencies and the error shape are the runtime's domain
//!   kit (`mesh_runtime::domain`).

/// `format!` for SQL built from this crate's own fragments (column lists, status lists,
/// placeholders), never from input: values are always bound.
macro_rules! dyn_sql {
    ($($t:tt)*) => {
        sqlx::AssertSqlSafe(format!($($t)*))
    };
}

pub mod api;
pub mod error;
pub mod events;
pub mod pricing;
pub mod redemption;
pub mod rules;
pub mod settings;
pub mod store;
pub mod validate;

use futures::future::BoxFuture;
use mesh_contracts::campaign::v1::campaign_service_server::CampaignServiceServer;
use mesh_runtime::auth::{Policy, Role, guard};
use mesh_runtime::{BuildError, Database, Migrations, ServiceContext, ServiceRoutes};

pub use api::CampaignApi;
pub use settings::CampaignSettings;

/// Campaign's tables (portable SQL, the same on Postgres and SQLite).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The module table's migrations for `campaign`.
pub const MIGRATIONS: Migrations = Migrations::same(&MIGRATOR);

/// Who may call each RPC of `campaign.v1.CampaignService`: staff create and end campaigns
/// (admins pass every check); customers, staff and services read them and price carts (a
/// customer for themselves, without reserving: see [`api`]).
pub fn policy() -> Policy {
    Policy::new("campaign.v1.CampaignService")
        .roles(&["CreateCampaign", "EndCampaign"], &[Role::Staff])
        .roles(
            &["GetCampaign", "ListCampaigns", "PriceCart"],
            &[Role::Customer, Role::Staff, Role::Service],
        )
        .roles(&["ReleaseHolds"], &[Role::Service])
}

/// Builds the service's routes; the module table's constructor for `campaign`. Settings come
/// from `MESH_CAMPAIGN_*` (see [`CampaignSettings`]).
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let settings = CampaignSettings::from_env()?;
        build_with(ctx, settings).await
    })
}

/// Releases expired holds in small batches, each release its own transaction.
async fn release_expired(db: &Database) -> Result<usize, error::CampaignError> {
    let now = mesh_runtime::domain::time::now_us();
    let due = {
        let mut conn = db.acquire().await?;
        redemption::expired(&mut conn, now, 100).await?
    };
    let mut released = 0;
    for (campaign, order) in due {
        let mut tx = db.begin().await?;
        if redemption::expire(&mut tx, &campaign, &order, now).await? {
            released += 1;
        }
        tx.commit().await?;
    }
    Ok(released)
}

/// Builds the service with explicit `settings` (tests): the gRPC server, the consumer of
/// order's and product's events and the hold expiry loop.
pub async fn build_with(
    ctx: ServiceContext,
    settings: CampaignSettings,
) -> Result<ServiceRoutes, BuildError> {
    let db = ctx.database()?.clone();
    ctx.start_consumer(events::handlers(ctx.consumer()?));
    let every = settings.sweep_every;
    let sweep_db = db.clone();
    ctx.background("hold-expiry", move |stop| {
        let db = sweep_db.clone();
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(every) => {}
                }
                let released = release_expired(&db).await?;
                if released > 0 {
                    tracing::info!(released, "expired redemption holds released");
                }
            }
        }
    });
    let server = CampaignServiceServer::new(CampaignApi::new(db, settings.hold_ttl))
        .max_decoding_message_size(ctx.max_message_bytes())
        .max_encoding_message_size(ctx.max_message_bytes());
    Ok(ServiceRoutes::new().add_service(guard(&ctx, policy(), server)?))
}
