//! Scenario (b) of `mesh bench`: the real product service, started in this process by the same
//! code as `mesh serve product` (its database migrated, its guard, its cache, the runtime's
//! server layers), answering `GetProduct` for one product again and again, so every measured
//! call after the warm-up is a cache hit.
//!
//! The database and bus follow the usual settings: SQLite files in a scratch data folder and the
//! in-process bus by default; `MESH_DATABASE_URL` / `MESH_REDIS_URL` put it on Postgres and
//! Redis (the Redis cache tier then sits behind the in-process one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use mesh_contracts::common::v1::Money;
use mesh_contracts::product::v1::product_service_server::ProductService as _;
use mesh_contracts::product::v1::{CreateProductRequest, Product};
use mesh_runtime::RuntimeArgs;
use mesh_runtime::config::env_prefix;

use crate::serve::{self, Running};

/// The flags `mesh serve` would parse, parsed from a fixed list here.
#[derive(Debug, clap::Parser)]
struct Flags {
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// The product service running in this process, with one product in its catalog.
pub(crate) struct ProductUnderTest {
    /// Its gRPC address.
    pub(crate) addr: SocketAddr,
    /// The id of the product the benchmark reads.
    pub(crate) product_id: String,
    /// Where its data lives and which cache tiers answer, for the report.
    pub(crate) setup: String,
    mesh: Running,
    dir: PathBuf,
}

/// Migrates a scratch product database, adds one product through the service's own API, and
/// starts `product` on a free port.
pub(crate) async fn start() -> anyhow::Result<ProductUnderTest> {
    let dir = std::env::temp_dir().join(format!("mesh-bench-product-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let flags = Flags::try_parse_from([
        "mesh-bench".as_ref(),
        "--admin-port".as_ref(),
        "0".as_ref(),
        "--data-dir".as_ref(),
        dir.as_os_str(),
    ])?;
    let port_variable = format!("{}_PORT", env_prefix("product"));
    let (config, targets) =
        crate::targets::validate_with("product", &flags.runtime, |k| match k {
            k if k == port_variable => Some("0".into()),
            k => std::env::var(k).ok(),
        })?;
    let module = targets[0];
    let setup = format!(
        "{} database, cache: in-process{}",
        if matches!(
            config.databases["product"],
            mesh_runtime::config::DatabaseTarget::Postgres { .. }
        ) {
            "Postgres"
        } else {
            "SQLite"
        },
        if config.events.redis_url.is_some() {
            " + Redis"
        } else {
            ""
        }
    );

    let db = crate::migrate::open_and_migrate(&config, module).await?;
    let created = mesh_product::ProductApi::new(db, None)
        .create_product(tonic::Request::new(CreateProductRequest {
            product: Some(Product {
                sku: format!("BENCH-{}", std::process::id()),
                name: "Benchmark widget".into(),
                description: "Read by mesh bench".into(),
                price: Some(Money {
                    currency_code: "EUR".into(),
                    amount_minor: 1999,
                }),
                active: true,
                ..Product::default()
            }),
        }))
        .await
        .map_err(|s| anyhow::anyhow!("creating the benchmark product: {}", s.message()))?;
    let product_id = created.into_inner().product.context("created product")?.id;

    let mesh = serve::start(Arc::new(config), &targets).await?;
    let addr = mesh.addr("product").context("product is served")?;
    Ok(ProductUnderTest {
        addr,
        product_id,
        setup,
        mesh,
        dir,
    })
}

impl ProductUnderTest {
    /// Stops the service and removes its scratch data.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let result = self.mesh.wait(std::future::ready(())).await;
        let _ = std::fs::remove_dir_all(&self.dir);
        result
    }
}
