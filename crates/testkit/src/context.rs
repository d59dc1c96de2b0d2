//! What a service is built with in a test: the default configuration, a migrated database, a
//! [`ServiceContext`] and a bus (in-process, or Redis under a namespace of its own).

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Parser;
use mesh_runtime::bus::EventBus;
use mesh_runtime::bus::memory::MemoryBus;
use mesh_runtime::bus::redis::RedisBus;
use mesh_runtime::config::DatabaseTarget;
use mesh_runtime::{
    Database, MeshConfig, Metrics, Migrations, Module, ModuleSettings, RuntimeArgs, ServiceContext,
    ServiceRoutes, ServiceSpec,
};
use tokio_util::sync::CancellationToken;

use crate::backends::unique;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: RuntimeArgs,
}

/// The default process configuration (as with no flags and no environment).
pub fn config() -> MeshConfig {
    let cli = Cli::parse_from(["mesh"]);
    let specs: Vec<ServiceSpec> = Vec::new();
    MeshConfig::from_args(&cli.args, &specs, |_| None).expect("default config is valid")
}

/// A service's database at `target`, migrated.
pub async fn database(name: &str, target: &DatabaseTarget, migrations: &Migrations) -> Database {
    let db = Database::connect(name, target).await.expect("connect");
    db.migrate(migrations).await.expect("migrate");
    db
}

/// A service's database at `target` migrated only up to (not including) migration `version`:
/// the schema an older release left, for writing rows in their old shape before
/// [`database`] (or the service's start) applies the rest.
pub async fn database_before(
    name: &str,
    target: &DatabaseTarget,
    migrations: &Migrations,
    version: i64,
) -> Database {
    let db = Database::connect(name, target).await.expect("connect");
    db.migrate_before(migrations, version)
        .await
        .expect("migrate the older schema");
    db
}

/// A context for service `name` (depending on `auth`), with `peers` and its data. Its
/// background tasks run under a supervisor of its own until `shutdown`.
pub fn context(
    name: &'static str,
    peers: BTreeMap<&'static str, http::Uri>,
    db: Database,
    bus: Arc<dyn EventBus>,
    shutdown: CancellationToken,
) -> ServiceContext {
    context_with(name, &["auth"], config(), peers, db, bus, shutdown)
}

/// A context for service `name` with its declared `dependencies`, `config`, `peers` and data.
pub fn context_with(
    name: &'static str,
    dependencies: &'static [&'static str],
    config: MeshConfig,
    peers: BTreeMap<&'static str, http::Uri>,
    db: Database,
    bus: Arc<dyn EventBus>,
    shutdown: CancellationToken,
) -> ServiceContext {
    fn never(
        _: ServiceContext,
    ) -> futures::future::BoxFuture<'static, Result<ServiceRoutes, mesh_runtime::BuildError>> {
        Box::pin(async { Err("not used".into()) })
    }
    let module = Module {
        name,
        default_port: 0,
        dependencies,
        constructor: never,
        migrations: Migrations::NONE,
        settings: ModuleSettings::NONE,
    };
    ServiceContext::new(
        &module,
        Arc::new(config),
        Arc::new(peers),
        Metrics::new(),
        shutdown,
    )
    .with_data(db, bus)
}

/// The bus of one test: Redis under a fresh key namespace starting with `prefix` when
/// `redis_url` is given, else in-process.
pub fn bus(prefix: &str, redis_url: Option<&str>) -> Arc<dyn EventBus> {
    match redis_url {
        Some(url) => Arc::new(
            RedisBus::connect(url, format!("{}:", unique(prefix)), Default::default())
                .expect("redis bus"),
        ),
        None => memory_bus(),
    }
}

/// An in-process bus for one test.
pub fn memory_bus() -> Arc<dyn EventBus> {
    Arc::new(MemoryBus::new(Default::default()))
}
