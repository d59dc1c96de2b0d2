//! The product service: the catalog of products, categories and prices.
//!
//! Prices are integer minor units of an ISO 4217 currency; SKUs are unique; lists are ordered by
//! name and paged with opaque tokens. Reads go through two cache tiers: an in-process one
//! ([`local_cache`], a short time to live bounds what another replica may serve stale) and a
//! Redis cache-aside when `MESH_REDIS_URL` is set ([`cache`]); both are invalidated by writes and
//! by the service's own `product.updated` / `product.deleted` events. Every change emits its
//! event through the outbox. See `docs/identity.md`.
//!
//! - [`api`]: the RPCs; [`store`]: SQL; [`validate`]: input checks (ids, currencies and page
//!   tokens come from the runtime's domain kit); [`local_cache`], [`cache`] and [`events`]: the cache tiers and
//!   their invalidation;
//!   [`error`]: errors to statuses.

pub mod api;
pub mod cache;
pub mod error;
pub mod events;
pub mod local_cache;
pub mod store;
pub mod validate;

use std::time::Duration;

use futures::future::BoxFuture;
use mesh_contracts::product::v1::product_service_server::ProductServiceServer;
use mesh_runtime::auth::{Policy, Role, guard};
use mesh_runtime::redis_guard::GuardOptions;
use mesh_runtime::settings::{ModuleSettings, Setting, SettingErrors, Settings, process_env};
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
    /// The Redis of the cache; `None` disables the Redis tier.
    pub redis_url: Option<String>,
    /// Prefix of the cache's keys.
    pub cache_prefix: String,
    /// How long a Redis entry lives if no event drops it first.
    pub cache_ttl: Duration,
    /// The longest a request waits for Redis; after a failure Redis is skipped until it answers
    /// a background ping again (`mesh_runtime::redis_guard`).
    pub cache_timeout: Duration,
    /// How long an in-process entry lives: the staleness bound across replicas; zero turns the
    /// in-process tier off.
    pub local_ttl: Duration,
    /// How many products the in-process tier holds at most.
    pub local_entries: u64,
}

impl Default for ProductOptions {
    /// No Redis tier; the in-process tier with its defaults (2 s, 10,000 products).
    fn default() -> Self {
        Self {
            redis_url: None,
            cache_prefix: "mesh:cache:".into(),
            cache_ttl: Duration::from_secs(300),
            cache_timeout: GuardOptions::default().timeout,
            local_ttl: Duration::from_secs(2),
            local_entries: 10_000,
        }
    }
}

const CACHE_TIMEOUT: Setting = Setting::duration(
    "MESH_PRODUCT_CACHE_TIMEOUT",
    "250ms",
    "The longest a request waits for the Redis cache; after a failure Redis is skipped until a background ping answers again.",
);
const LOCAL_CACHE_TTL: Setting = Setting::duration_or_off(
    "MESH_PRODUCT_LOCAL_CACHE_TTL",
    "2s",
    "How long an in-process cache entry lives (the staleness bound across replicas); 0 turns the in-process tier off.",
);
const LOCAL_CACHE_ENTRIES: Setting = Setting::number(
    "MESH_PRODUCT_LOCAL_CACHE_ENTRIES",
    0..=10_000_000,
    "10000",
    "How many products the in-process cache holds at most.",
);

/// The product module's settings, for its module row.
pub const SETTINGS: ModuleSettings = ModuleSettings {
    declared: &[CACHE_TIMEOUT, LOCAL_CACHE_TTL, LOCAL_CACHE_ENTRIES],
    check: |env| ProductOptions::from_lookup(None, env).map(drop),
};

impl ProductOptions {
    /// The Redis tier on the process's Redis (`MESH_REDIS_URL`, keys under `mesh:cache:`,
    /// 5 minutes, each command bounded by `MESH_PRODUCT_CACHE_TIMEOUT`, default 250 ms) and the
    /// in-process tier from `MESH_PRODUCT_LOCAL_CACHE_TTL` (a duration, `0` for off) and
    /// `MESH_PRODUCT_LOCAL_CACHE_ENTRIES`, read through `env`.
    pub fn from_context(
        ctx: &ServiceContext,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingErrors> {
        Self::from_lookup(ctx.config().events.redis_url.clone(), env)
    }

    /// [`from_context`](Self::from_context) with the Redis URL given; every bad setting named.
    pub fn from_lookup(
        redis_url: Option<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingErrors> {
        let mut s = Settings::new(env);
        let options = Self {
            redis_url,
            cache_timeout: s.duration(&CACHE_TIMEOUT),
            local_ttl: s.duration(&LOCAL_CACHE_TTL),
            local_entries: s.number(&LOCAL_CACHE_ENTRIES),
            ..Self::default()
        };
        s.finish(options)
    }
}

/// Builds the service's routes; the module table's constructor for `product`.
pub fn build(ctx: ServiceContext) -> BoxFuture<'static, Result<ServiceRoutes, BuildError>> {
    Box::pin(async move {
        let options = ProductOptions::from_context(&ctx, process_env)?;
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
            GuardOptions {
                timeout: options.cache_timeout,
                ..GuardOptions::default()
            },
        )?),
        None => None,
    };
    let local = (!options.local_ttl.is_zero() && options.local_entries > 0)
        .then(|| local_cache::LocalCache::new(options.local_entries, options.local_ttl));
    if cache.is_some() || local.is_some() {
        let invalidate = events::Invalidate {
            local: local.clone(),
            cache: cache.clone(),
        };
        ctx.start_consumer(
            ctx.consumer()?
                .on(events::UPDATED, invalidate.clone())
                .on(events::DELETED, invalidate),
        );
    }
    let mut api = ProductApi::new(db, cache);
    if let Some(local) = local {
        api = api.with_local_cache(local);
    }
    let server = ProductServiceServer::new(api)
        .max_decoding_message_size(ctx.max_message_bytes())
        .max_encoding_message_size(ctx.max_message_bytes());
    Ok(ServiceRoutes::new().add_service(guard(&ctx, policy(), server)?))
}
