//! What Postgres did during a `mesh bench-saga` run, and this machine's floor for it.
//!
//! - [`PgCounters`]: statements executed in the run's database (`pg_stat_statements`, when the
//!   server preloads it; its rows are filtered by database, so other databases' work on a shared
//!   server does not count, and nothing is reset) and transactions committed there
//!   (`pg_stat_database.xact_commit`). The bench's own queries carry the comment `bench-saga`
//!   and are left out.
//! - [`floor`]: `pgbench` running the saga's heaviest single transaction — inventory's
//!   `order.created` step: the handled-event record, the saga claim, the reservation, the stock
//!   hold on one of 50 hot rows, its line and the outbox row — on copies of inventory's tables
//!   in a scratch schema of the same database, 16 clients, prepared statements. Its tx/s is what
//!   this machine's Postgres can commit of that transaction in the same run.

use std::time::Duration;

use anyhow::{Context as _, bail};
use sqlx::{Connection as _, PgConnection, Row as _};

/// Statements and commits in one database at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PgCounters {
    /// Statements executed (`None` when `pg_stat_statements` is not loaded).
    pub(crate) statements: Option<i64>,
    /// Transactions committed.
    pub(crate) commits: i64,
}

/// One statement's share of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct StatementShare {
    /// Calls per confirmed order.
    pub(crate) per_order: f64,
    /// Mean execution time, ms.
    pub(crate) mean_ms: f64,
    /// The statement's text (shortened).
    pub(crate) query: String,
}

/// Makes `pg_stat_statements` readable in the run's database; `false` when the server does not
/// preload it (the counters then say `None`).
pub(crate) async fn enable_statements(conn: &mut PgConnection) -> bool {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements /* bench-saga */")
        .execute(&mut *conn)
        .await
        .is_ok()
        && sqlx::query("SELECT 1 FROM pg_stat_statements LIMIT 1 /* bench-saga */")
            .fetch_optional(&mut *conn)
            .await
            .is_ok()
}

/// The counters of the connection's database now.
pub(crate) async fn counters(
    conn: &mut PgConnection,
    statements: bool,
) -> anyhow::Result<PgCounters> {
    // Statistics reach the shared view when a backend goes idle (at most about a second late).
    sqlx::query("SELECT pg_stat_clear_snapshot() /* bench-saga */")
        .execute(&mut *conn)
        .await?;
    let commits: i64 = sqlx::query(
        "SELECT xact_commit AS n FROM pg_stat_database WHERE datname = current_database() /* bench-saga */",
    )
    .fetch_one(&mut *conn)
    .await?
    .try_get("n")?;
    let statements = if statements {
        let n: i64 = sqlx::query(
            "SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) AS n FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND query NOT LIKE '%bench-saga%' /* bench-saga */",
        )
        .fetch_one(&mut *conn)
        .await?
        .try_get("n")?;
        Some(n)
    } else {
        None
    };
    Ok(PgCounters {
        statements,
        commits,
    })
}

/// The `limit` most frequent statements of the run's database, per confirmed order (`orders`).
/// These are totals over the database's life, seeding included (a small share): nothing is
/// reset, so other databases' figures on a shared server stay intact.
pub(crate) async fn top_statements(
    conn: &mut PgConnection,
    orders: usize,
    limit: i64,
) -> anyhow::Result<Vec<StatementShare>> {
    let rows = sqlx::query(
        "SELECT CAST(calls AS BIGINT) AS calls, mean_exec_time, query FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND query NOT LIKE '%bench-saga%' ORDER BY calls DESC LIMIT $1 /* bench-saga */",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let orders = orders.max(1) as f64;
    rows.iter()
        .map(|r| {
            let query: String = r.try_get("query")?;
            let query = query.split_whitespace().collect::<Vec<_>>().join(" ");
            Ok(StatementShare {
                per_order: r.try_get::<i64, _>("calls")? as f64 / orders,
                mean_ms: r.try_get("mean_exec_time")?,
                query: query.chars().take(110).collect(),
            })
        })
        .collect()
}

/// The pgbench script: inventory's `order.created` transaction on the `floor` schema's copies.
const SCRIPT: &str = r"\set p random(0, 49)
\set n random(1, 2000000000)
BEGIN;
INSERT INTO floor.mesh_handled_events (consumer, event_id, handled_at_us) VALUES ('inventory', 'e' || :client_id || '-' || :n, 0) ON CONFLICT DO NOTHING;
INSERT INTO floor.saga_orders (order_id, state, reservation_id, updated_us) VALUES ('o' || :client_id || '-' || :n, 'RESERVED', 'r' || :client_id || '-' || :n, 0) ON CONFLICT (order_id) DO NOTHING;
INSERT INTO floor.reservations (id, reference_id, status, created_us, expires_us, updated_us) VALUES ('r' || :client_id || '-' || :n, 'o' || :client_id || '-' || :n, 'ACTIVE', 0, 900000000, 0) ON CONFLICT DO NOTHING;
UPDATE floor.stock SET reserved = stock.reserved + v.column3, updated_us = 0 FROM (VALUES ('p' || :p, 'default', CAST(1 AS BIGINT))) AS v WHERE stock.product_id = v.column1 AND stock.location_id = v.column2 AND stock.on_hand - stock.reserved >= v.column3 RETURNING stock.product_id;
INSERT INTO floor.reservation_lines (reservation_id, line_no, product_id, location_id, quantity) VALUES ('r' || :client_id || '-' || :n, 0, 'p' || :p, 'default', 1) ON CONFLICT DO NOTHING;
INSERT INTO floor.mesh_outbox (event_id, event_type, subject, sequence, part, occurred_at_us, envelope) SELECT 'x' || :client_id || '-' || :n, 'inventory.reserved', 'r' || :client_id || '-' || :n, COALESCE(MAX(sequence), 0) + 1, 3, 0, '\x0a24' FROM floor.mesh_outbox WHERE subject = 'r' || :client_id || '-' || :n RETURNING sequence;
COMMIT;
";

/// Copies inventory's tables into the scratch schema `floor` of the run's database, stocks 50
/// products, runs `pgbench` with [`SCRIPT`] for `seconds`, drops the schema; returns tx/s.
pub(crate) async fn floor(db_url: &str, seconds: u64) -> anyhow::Result<f64> {
    let mut conn = PgConnection::connect(db_url).await?;
    let setup = [
        "DROP SCHEMA IF EXISTS floor CASCADE",
        "CREATE SCHEMA floor",
        "CREATE TABLE floor.mesh_handled_events (LIKE inventory.mesh_handled_events INCLUDING ALL)",
        "CREATE TABLE floor.saga_orders (LIKE inventory.saga_orders INCLUDING ALL)",
        "CREATE TABLE floor.reservations (LIKE inventory.reservations INCLUDING ALL)",
        "CREATE TABLE floor.reservation_lines (LIKE inventory.reservation_lines INCLUDING ALL)",
        "CREATE TABLE floor.stock (LIKE inventory.stock INCLUDING ALL)",
        "CREATE TABLE floor.mesh_outbox (LIKE inventory.mesh_outbox INCLUDING ALL)",
        "INSERT INTO floor.stock (product_id, location_id, on_hand, reserved, updated_us) \
         SELECT 'p' || i, 'default', 1000000000, 0, 0 FROM generate_series(0, 49) AS i",
    ];
    for sql in setup {
        sqlx::query(sqlx::AssertSqlSafe(format!("{sql} /* bench-saga */")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("preparing the floor: {sql}"))?;
    }
    let dir = std::env::temp_dir().join(format!("mesh-floor-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("saga-step.sql");
    std::fs::write(&script, SCRIPT)?;
    let out = tokio::process::Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c", "16", "-j", "2", "-T"])
        .arg(seconds.to_string())
        .arg("-f")
        .arg(&script)
        .arg(db_url)
        .output()
        .await
        .context("running pgbench (is it installed?)");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = sqlx::query("DROP SCHEMA IF EXISTS floor CASCADE /* bench-saga */")
        .execute(&mut conn)
        .await;
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "tps = 2841.123456 (without initial connection time)"
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
        })
        .with_context(|| format!("no tps in pgbench's output: {text}"))
}

/// How long to wait for the statistics of backends that just went idle to be visible.
pub(crate) const STATS_DELAY: Duration = Duration::from_millis(1200);
