//! Storage per service: a [`Database`] opened from the service's [`DatabaseTarget`] (a Postgres
//! schema of its own, or an embedded SQLite file), with the runtime's tables and the service's
//! own [`Migrations`] applied.
//!
//! Queries go through sqlx's `Any` driver, so one repository's code runs on both backends; write
//! portable SQL with `$1`-style parameters (SQLite accepts them) and branch on
//! [`Database::backend`] only where the dialects differ (e.g. `FOR UPDATE SKIP LOCKED`).

pub(crate) mod error;

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor as _};
use std::str::FromStr as _;
use std::sync::Arc;

pub use error::DatabaseError;

/// Migration versions up to this one belong to the runtime (its outbox and handled-events
/// tables); a service's own migrations must use larger versions (`sqlx migrate add` uses
/// timestamps such as 20260101120000).
pub const RUNTIME_MIGRATION_VERSIONS: i64 = 999;

static RUNTIME_POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");
static RUNTIME_SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");

/// A service's migrations, one set per dialect (embed them with `sqlx::migrate!`). Use
/// [`Migrations::same`] when one set of portable SQL serves both.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Applied on Postgres, in the service's schema.
    pub postgres: &'static Migrator,
    /// Applied on SQLite.
    pub sqlite: &'static Migrator,
}

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

impl Migrations {
    /// No tables of the service's own (the runtime's are applied anyway).
    pub const NONE: Migrations = Migrations {
        postgres: &NO_MIGRATIONS,
        sqlite: &NO_MIGRATIONS,
    };

    /// The same portable migrations on both backends.
    pub const fn same(migrator: &'static Migrator) -> Self {
        Self {
            postgres: migrator,
            sqlite: migrator,
        }
    }
}

/// Postgres connections per service unless `--database-pool-size` says otherwise.
pub const DEFAULT_POOL_SIZE: u32 = 10;

/// Where one service keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// An embedded SQLite file.
    Sqlite {
        /// The database file, `<data-dir>/<service>.db`.
        path: PathBuf,
    },
    /// A Postgres database, the service's tables in their own schema.
    Postgres {
        /// The connection URL.
        url: String,
        /// The schema: the service name with `-` as `_`.
        schema: String,
    },
}

impl DatabaseTarget {
    /// The Postgres schema of `service`: its name with `-` as `_` (`iot-gateway` -> `iot_gateway`).
    pub fn schema_name(service: &str) -> String {
        service.replace('-', "_")
    }
}

/// Which database a [`Database`] talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Postgres, the service's tables in `schema`.
    Postgres {
        /// The service's schema (also the connection's `search_path`).
        schema: String,
    },
    /// An embedded SQLite file.
    Sqlite,
}

/// A service's database: a connection pool and the backend it points at. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    service: Arc<str>,
    publisher: Arc<crate::publisher::Publisher>,
}

impl Database {
    /// Opens (and, for SQLite, creates) the database of `service` at `target`. Postgres: creates
    /// the service's schema when missing and sets every connection's `search_path` to it; the pool
    /// holds at most [`DEFAULT_POOL_SIZE`] connections.
    pub async fn connect(service: &str, target: &DatabaseTarget) -> Result<Self, DatabaseError> {
        Self::connect_pooled(service, target, DEFAULT_POOL_SIZE).await
    }

    /// [`Database::connect`] with at most `pool_size` Postgres connections (SQLite keeps its
    /// own small pool: one writer at a time).
    pub async fn connect_pooled(
        service: &str,
        target: &DatabaseTarget,
        pool_size: u32,
    ) -> Result<Self, DatabaseError> {
        sqlx::any::install_default_drivers();
        let (pool, backend) = match target {
            DatabaseTarget::Postgres { url, schema } => {
                let schema = schema.clone();
                let quoted = quote_ident(&schema);
                let set_path = format!("SET search_path TO {quoted}");
                let options = AnyConnectOptions::from_str(url)?;
                // Create the schema once, on a connection of its own, before the pool's
                // connections point their search_path at it.
                let bootstrap = AnyPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options.clone())
                    .await?;
                let create = format!("CREATE SCHEMA IF NOT EXISTS {quoted}");
                if let Err(e) = bootstrap.execute(sqlx::AssertSqlSafe(create.clone())).await {
                    // Two processes creating it at once: the loser sees a unique violation.
                    tracing::debug!(error = %e, "creating schema raced; retrying once");
                    bootstrap.execute(sqlx::AssertSqlSafe(create)).await?;
                }
                bootstrap.close().await;
                // No ping before every acquire: a connection that broke fails its first statement
                // (the driver sees the closed socket), the caller gets UNAVAILABLE and retries,
                // and the pool drops that connection; the ping cost a round trip on every call.
                let pool = AnyPoolOptions::new()
                    .max_connections(pool_size.max(1))
                    .min_connections(0)
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(3))
                    .after_connect(move |conn, _| {
                        let set_path = set_path.clone();
                        Box::pin(async move {
                            conn.execute(sqlx::AssertSqlSafe(set_path)).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?;
                (pool, Backend::Postgres { schema })
            }
            DatabaseTarget::Sqlite { path } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| DatabaseError::DataDir {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                let url = format!("sqlite://{}?mode=rwc", path.display());
                let pool = AnyPoolOptions::new()
                    .max_connections(4)
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(3))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(AnyConnectOptions::from_str(&url)?)
                    .await?;
                (pool, Backend::Sqlite)
            }
        };
        Ok(Self {
            pool,
            backend,
            service: service.into(),
            publisher: Arc::default(),
        })
    }

    /// Applies the runtime's migrations and then `service`'s, each once (recorded in
    /// `_sqlx_migrations` of the service's schema or file).
    pub async fn migrate(&self, service: &Migrations) -> Result<(), DatabaseError> {
        self.migrate_until(service, i64::MAX).await
    }

    /// Applies the runtime's and `service`'s migrations older than `version` only: the schema
    /// a running service had before that migration, so a test can write rows in their old shape
    /// and then [`Database::migrate`] to see them converted.
    pub async fn migrate_before(
        &self,
        service: &Migrations,
        version: i64,
    ) -> Result<(), DatabaseError> {
        self.migrate_until(service, version).await
    }

    async fn migrate_until(&self, service: &Migrations, before: i64) -> Result<(), DatabaseError> {
        let (runtime, own) = match self.backend {
            Backend::Postgres { .. } => (&RUNTIME_POSTGRES, service.postgres),
            Backend::Sqlite => (&RUNTIME_SQLITE, service.sqlite),
        };
        if let Some(m) = own
            .migrations
            .iter()
            .find(|m| m.version <= RUNTIME_MIGRATION_VERSIONS)
        {
            return Err(DatabaseError::InvalidMigrations(format!(
                "migration {} ({}) of {} uses a version reserved for the runtime (<= {RUNTIME_MIGRATION_VERSIONS}); use a timestamp version",
                m.version, m.description, self.service
            )));
        }
        let mut all: Vec<_> = runtime.migrations.iter().cloned().collect();
        all.extend(own.migrations.iter().cloned());
        all.retain(|m| m.version < before);
        all.sort_by_key(|m| m.version);
        let migrator = Migrator {
            migrations: Cow::Owned(all),
            ..Migrator::DEFAULT
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// The connection pool, for reads outside a transaction.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which backend this is.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The owning service's name (the `source` of the events it emits).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// A connection from the pool, for work outside a transaction; a pool that cannot hand one
    /// out (the database is down, or every connection stayed busy past the acquire timeout) is a
    /// [`DatabaseError`], which services answer as `UNAVAILABLE`.
    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, DatabaseError> {
        Ok(self.pool.acquire().await?)
    }

    /// The direct publisher of this database's outbox (run by its relay).
    pub(crate) fn publisher(&self) -> &Arc<crate::publisher::Publisher> {
        &self.publisher
    }

    /// Closes the pool (waits for connections in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Quotes a SQL identifier: `order` -> `"order"`.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Microseconds since the Unix epoch, as stored in the runtime's `*_us` columns.
pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
