//! The product service: the catalog of products, categories and prices.
//!
//! Prices are integer minor units of an ISO 4217 currency; SKUs are unique; lists are ordered by
//! name and paged with opaque tokens. Reads go through a Redis cache-aside when `MESH_REDIS_URL`
//! is set ([`cache`]), invalidated by the service's own `product.updated` / `product.deleted`
//! events; without Redis there is no cache and the answers are the same. Every change emits its
//! event through the outbox. See `docs/identity.md`.
//!
//! - [`api`]: the RPCs; [`store`]: SQL; [`validate`] and [`currency`]: input checks;
//!   [`page_token`]: paging; [`cache`] and [`events`]: the cache and its invalidation;
//!   [`error`]: errors to statuses.

pub mod api;
pub mod cache;
pub mod currency;
pub mod error;
pub mod events;
pub mod page_token;
pub mod store;
pub mod validate;

use std::time::Duration;

use futures::future::BoxFuture;
use mesh_contracts::product::v1::product_service_server::ProductServiceServer;
use mesh_runtime::auth::{Policy, Role, guard};
use mesh_runtime::{BuildError, Migrations, ServiceContext, ServiceRoutes};

pub use api::ProductApi;

/// The catalog's tables (portable SQL, the same on Postgres and SQLite).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The module table's migrations for `product`.
pub const MIGRATIONS: Migrations = Migrations::same(&MIGRATOR);

/// Who may call each RPC of `product.v1.ProductService`: reading the catalog is public, changing
/// it takes staff (or admin).
pub fn policy() -> Policy {
    Policy::new("product.v1.ProductService")
        .public(&[
            "GetProduct",
            "BatchGetProducts",
            "ListProducts",
            "ListCategories",
        ])
        .roles(
            &[
                "CreateProduct",
                "UpdateProduct",
                "DeleteProduct",
                "CreateCategory",
            ],
            &[Role::Staff],
        )
}

/// Cache settings.
#[derive(Debug, Clone)]
pub struct ProductOptions {
    /// The Redis of the cache; `None` disables caching.
    pub redis_url: Option<String>,
    /// Prefix of the cache's keys.
    pub cache_prefix: String,
    /// How long an entry lives if no event drops it first.
    pub cache_ttl: Duration,
}

impl ProductOptions {
    /// The cache on the process's Redis (`MESH_REDIS_URL`), keys under `mesh:cache:`, 5 minutes.
    pub fn from_context(ctx: &ServiceContext) -> Self {
        Self {
            redis_url: ctx.config().events.redis_url.clone(),
            cache_prefix: "mesh:cache:".into(),
            cache_ttl: Duration::from_secs(300),
        }
    }
}

/// Builds the service's routes; the module table's constructor for `product`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let options = ProductOptions::from_context(&ctx);
        build_with(ctx, options).await
    })
}

/// Builds the service's routes with explicit cache `options`.
pub async fn build_with(
    ctx: ServiceContext,
    options: ProductOptions,
) -> Result<ServiceRoutes, BuildError> {
    let db = ctx.database()?.clone();
    let cache = match &options.redis_url {
        Some(url) => Some(cache::ProductCache::connect(
            url,
            options.cache_prefix.clone(),
            options.cache_ttl,
        )?),
        None => None,
    };
    if let Some(cache) = &cache {
        let invalidate = events::Invalidate {
            cache: cache.clone(),
        };
        ctx.start_consumer(
            ctx.consumer()?
                .on(events::UPDATED, invalidate.clone())
                .on(events::DELETED, invalidate),
        );
    }
    let server = ProductServiceServer::new(ProductApi::new(db, cache))
        .max_decoding_message_size(ctx.max_message_bytes())
        .max_encoding_message_size(ctx.max_message_bytes());
    Ok(ServiceRoutes::new().add_service(guard(&ctx, policy(), server)?))
}
