//! The migration to microseconds converts the rows a running vm already has.

use mesh_runtime::config::DatabaseTarget;
use mesh_testkit as testing;

async fn times_in_seconds_become_microseconds_on(target: DatabaseTarget) {
    let db = testing::database_before("vm", &target, &mesh_vm::MIGRATIONS, 20261203000001).await;
    let pool = db.pool().clone();
    sqlx::raw_sql(
        "INSERT INTO planograms VALUES ('vm-1', 'hbf', 3, 1767225600); \
         INSERT INTO restocks VALUES ('vm-1', 'k', 1767225601); \
         INSERT INTO vends VALUES ('v-1', 'vm-1', 'hbf', 'A1', 'p', 'EUR', 250, 'k', 'c', 't', 'DISPENSED', 'DONE', '', '', 'r', 'p', 'c', 1767225602, 1767225603);",
    )
    .execute(&pool)
    .await
    .expect("rows in seconds");
    db.migrate(&mesh_vm::MIGRATIONS)
        .await
        .expect("micros migration");
    let (planogram,): (i64,) = sqlx::query_as("SELECT updated_us FROM planograms")
        .fetch_one(&pool)
        .await
        .expect("planogram");
    assert_eq!(planogram, 1_767_225_600_000_000);
    let (restock,): (i64,) = sqlx::query_as("SELECT created_us FROM restocks")
        .fetch_one(&pool)
        .await
        .expect("restock");
    assert_eq!(restock, 1_767_225_601_000_000);
    let vend: (i64, i64) = sqlx::query_as("SELECT created_us, updated_us FROM vends")
        .fetch_one(&pool)
        .await
        .expect("vend");
    assert_eq!(vend, (1_767_225_602_000_000, 1_767_225_603_000_000));
}

#[tokio::test]
async fn times_in_seconds_become_microseconds_on_sqlite() {
    times_in_seconds_become_microseconds_on(testing::sqlite()).await;
}

#[tokio::test]
async fn times_in_seconds_become_microseconds_on_postgres() {
    let Some(target) = testing::postgres("vm seconds to microseconds on postgres") else {
        return;
    };
    times_in_seconds_become_microseconds_on(target).await;
}
