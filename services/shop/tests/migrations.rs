//! The migration to microseconds converts the rows a running shop already has.

use mesh_runtime::config::DatabaseTarget;
use mesh_testkit as testing;

async fn registration_times_in_seconds_become_microseconds_on(target: DatabaseTarget) {
    let db =
        testing::database_before("shop", &target, &mesh_shop::MIGRATIONS, 20261203000000).await;
    let pool = db.pool().clone();
    sqlx::raw_sql(
        "INSERT INTO stores VALUES ('hbf', 'Hbf', '', 'Berlin', 'DE', 'Europe/Berlin', 1767225600, 1767225601); \
         INSERT INTO machines VALUES ('vm-1', 'hbf', 'm', 8, 0, 0, '', '', 'ONLINE', 1767225602000000, '', 4.5, 0, 's', 1767225602000000, 1767225600, 1767225603);",
    )
    .execute(&pool)
    .await
    .expect("rows in seconds");
    db.migrate(&mesh_shop::MIGRATIONS)
        .await
        .expect("micros migration");
    let store: (i64, i64) = sqlx::query_as("SELECT created_us, updated_us FROM stores")
        .fetch_one(&pool)
        .await
        .expect("store");
    assert_eq!(store, (1_767_225_600_000_000, 1_767_225_601_000_000));
    let machine: (i64, i64, i64) =
        sqlx::query_as("SELECT created_us, updated_us, last_heartbeat_us FROM machines")
            .fetch_one(&pool)
            .await
            .expect("machine");
    // Registration times converted; status times were microseconds already and stay.
    assert_eq!(
        machine,
        (
            1_767_225_600_000_000,
            1_767_225_603_000_000,
            1_767_225_602_000_000
        )
    );
}

#[tokio::test]
async fn registration_times_in_seconds_become_microseconds_on_sqlite() {
    registration_times_in_seconds_become_microseconds_on(testing::sqlite()).await;
}

#[tokio::test]
async fn registration_times_in_seconds_become_microseconds_on_postgres() {
    let Some(target) = testing::postgres("shop seconds to microseconds on postgres") else {
        return;
    };
    registration_times_in_seconds_become_microseconds_on(target).await;
}
