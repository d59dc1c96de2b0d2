//! `mesh migrate <TARGETS>`: opens each target's database (its Postgres schema or SQLite file),
//! applies the runtime's and the service's migrations, and exits. The Helm chart's migration Job
//! runs `mesh migrate all`; `mesh serve` applies the same migrations at start.

use std::sync::Arc;

use anyhow::Context as _;
use mesh_runtime::bus::inspect::BusInspect;
use mesh_runtime::bus::memory::MemoryBus;
use mesh_runtime::bus::redis::RedisBus;
use mesh_runtime::bus::{DeliveryOptions, EventBus};
use mesh_runtime::config::{DatabaseTarget, env_prefix};
use mesh_runtime::{Database, MeshConfig, Module, RuntimeArgs};

use crate::targets;

/// The key prefix of the mesh's Redis streams.
pub(crate) const REDIS_NAMESPACE: &str = "mesh:";

/// Applies the migrations of the targets named by `targets_spec`.
pub(crate) async fn run(targets_spec: &str, args: &RuntimeArgs) -> anyhow::Result<()> {
    let (config, targets) = targets::validate(targets_spec, args)?;
    for module in targets {
        let db = open_and_migrate(&config, module).await?;
        println!(
            "migrated  {:<13} {}",
            module.name,
            describe(&config.databases[module.name])
        );
        db.close().await;
    }
    Ok(())
}

/// Opens `module`'s database and applies its migrations, with an error naming the setting.
pub(crate) async fn open_and_migrate(
    config: &MeshConfig,
    module: &Module,
) -> anyhow::Result<Database> {
    let target = &config.databases[module.name];
    let db = Database::connect_pooled(module.name, target, config.database_pool_size)
        .await
        .with_context(|| {
            format!(
                "opening the {} database ({}; set by {}_DATABASE_URL, --database-url / MESH_DATABASE_URL or --data-dir / MESH_DATA_DIR)",
                module.name,
                describe(target),
                env_prefix(module.name)
            )
        })?;
    db.migrate(&module.migrations).await.with_context(|| {
        format!(
            "migrating the {} database ({})",
            module.name,
            describe(target)
        )
    })?;
    Ok(db)
}

/// The process's event bus: Redis Streams when `--redis-url` is set, else in-process; and the
/// same bus's operator view, for the admin port's `/bus` routes.
pub(crate) fn bus(config: &MeshConfig) -> anyhow::Result<(Arc<dyn EventBus>, Arc<dyn BusInspect>)> {
    let options = DeliveryOptions {
        claim_idle: config.events.claim_idle,
        dead_after: config.events.dead_after,
        retention: config.events.retention,
    };
    Ok(match &config.events.redis_url {
        Some(url) => {
            let bus = RedisBus::connect(url, REDIS_NAMESPACE, options)
                .context("--redis-url / MESH_REDIS_URL")?;
            (Arc::new(bus.clone()), Arc::new(bus))
        }
        None => {
            let bus = MemoryBus::new(options);
            (Arc::new(bus.clone()), Arc::new(bus))
        }
    })
}

/// Where a database is, without credentials.
fn describe(target: &DatabaseTarget) -> String {
    match target {
        DatabaseTarget::Sqlite { path } => format!("sqlite {}", path.display()),
        DatabaseTarget::Postgres { url, schema } => {
            let host = url
                .split_once('@')
                .map_or_else(|| url.split_once("://").map_or("", |p| p.1), |p| p.1);
            format!("postgres {host}, schema {schema}")
        }
    }
}
