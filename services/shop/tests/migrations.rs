//! The migration to microseconds converts the rows a running shop already has.

use sqlx::any::AnyPoolOptions;

#[tokio::test]
async fn registration_times_in_seconds_become_microseconds() {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .expect("sqlite");
    sqlx::raw_sql(include_str!("../migrations/20260301000000_shop.sql"))
        .execute(&pool)
        .await
        .expect("first migration");
    sqlx::raw_sql(
        "INSERT INTO stores VALUES ('hbf', 'Hbf', '', 'Berlin', 'DE', 'Europe/Berlin', 1767225600, 1767225601); \
         INSERT INTO machines VALUES ('vm-1', 'hbf', 'm', 8, 0, 0, '', '', 'ONLINE', 1767225602000000, '', 4.5, 0, 's', 1767225602000000, 1767225600, 1767225603);",
    )
    .execute(&pool)
    .await
    .expect("rows in seconds");
    sqlx::raw_sql(include_str!("../migrations/20261203000000_micros.sql"))
        .execute(&pool)
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
