//! Backends for one test: a fresh SQLite file always; a fresh Postgres schema and the Redis URL
//! when `MESH_TEST_DATABASE_URL` / `MESH_TEST_REDIS_URL` are set. Without them a test skips
//! with a loud `SKIPPED:` line, unless `MESH_TEST_REQUIRE_BACKENDS=1`: then it fails, so a CI
//! run whose backends went missing cannot pass by skipping.

use mesh_runtime::config::DatabaseTarget;

/// A name unique to this test run, e.g. for a schema or key prefix.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Whether a missing backend fails the test instead of skipping it
/// (`MESH_TEST_REQUIRE_BACKENDS=1`, set by `.ci/run`).
pub fn require_backends() -> bool {
    std::env::var("MESH_TEST_REQUIRE_BACKENDS").is_ok_and(|v| v == "1" || v == "true")
}

/// Skips (prints `SKIPPED:`) or, when backends are required, fails.
fn missing(test: &str, backend: &str, variable: &str, example: &str) {
    if require_backends() {
        panic!(
            "{test} needs {backend}: set {variable} (e.g. {example}); MESH_TEST_REQUIRE_BACKENDS=1 makes a missing backend a failure"
        );
    }
    eprintln!("SKIPPED: {test} on {backend}: set {variable} (e.g. {example})");
}

/// A fresh SQLite file, and a fresh Postgres schema when `MESH_TEST_DATABASE_URL` is set (see
/// [`postgres`]), each named (`sqlite`, `postgres`): the databases a storage test runs on.
pub fn databases(test: &str) -> Vec<(&'static str, DatabaseTarget)> {
    let mut out = vec![("sqlite", sqlite())];
    if let Some(pg) = postgres(test) {
        out.push(("postgres", pg));
    }
    out
}

/// A fresh SQLite file under the temporary directory.
pub fn sqlite() -> DatabaseTarget {
    DatabaseTarget::Sqlite {
        path: std::env::temp_dir()
            .join(unique("mesh-test"))
            .join("svc.db"),
    }
}

/// A fresh Postgres schema, or `None` without `MESH_TEST_DATABASE_URL` (see the module docs).
pub fn postgres(test: &str) -> Option<DatabaseTarget> {
    postgres_url(test).map(|url| DatabaseTarget::Postgres {
        url,
        schema: unique("t"),
    })
}

/// The Postgres URL for tests, or `None` without `MESH_TEST_DATABASE_URL` (see the module docs).
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("MESH_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            missing(
                test,
                "Postgres",
                "MESH_TEST_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            );
            None
        }
    }
}

/// The backends of a test run on SQLite + the in-process bus (`postgres` false: always) or on
/// Postgres + Redis (`None` when either is not set, see the module docs): the database and,
/// with Redis, its URL.
pub fn backends_for(postgres: bool, test: &str) -> Option<(DatabaseTarget, Option<String>)> {
    if !postgres {
        return Some((sqlite(), None));
    }
    let target = self::postgres(test)?;
    let redis = redis(test)?;
    Some((target, Some(redis)))
}

/// The Redis URL for tests, or `None` without `MESH_TEST_REDIS_URL` (see the module docs).
pub fn redis(test: &str) -> Option<String> {
    match std::env::var("MESH_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            missing(
                test,
                "Redis",
                "MESH_TEST_REDIS_URL",
                "redis://127.0.0.1:6379",
            );
            None
        }
    }
}

/// Two tests of the scenario `$scenario(target)`, each with the test attribute given first:
/// `$sqlite` on a fresh SQLite file ([`sqlite`]), and `$postgres` on a fresh Postgres schema
/// ([`postgres`] with the label `$label`: skipped when `MESH_TEST_DATABASE_URL` is not set, a
/// failure when `MESH_TEST_REQUIRE_BACKENDS=1`).
#[macro_export]
macro_rules! on_sqlite_and_postgres {
    (#[$attr:meta] $sqlite:ident, $postgres:ident, $label:literal, $scenario:path) => {
        #[$attr]
        async fn $sqlite() {
            $scenario($crate::sqlite()).await;
        }

        #[$attr]
        async fn $postgres() {
            if let Some(target) = $crate::postgres($label) {
                $scenario(target).await;
            }
        }
    };
}
