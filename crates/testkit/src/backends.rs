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
