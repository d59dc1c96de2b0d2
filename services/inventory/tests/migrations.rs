//! The migration to microseconds converts the rows a running inventory already has: stock,
//! reservations, adjustments and saga memory written in the old shape (Unix seconds) are
//! served, swept and committed correctly through the API after the upgrade, on SQLite and
//! Postgres.

mod common;

use common::{client, start};
use mesh_contracts::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_contracts::inventory::v1::*;
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::{self as testing, bearer};
use tonic::transport::Channel;

/// The version of `20261204000000_micros.sql`.
const MICROS: i64 = 20261204000000;
/// 2026-01-01T00:00:00Z and 2100-01-01T00:00:00Z, in seconds.
const CREATED: i64 = 1_767_225_600;
const EXPIRES: i64 = 4_102_444_800;
const APPLE: &str = "01890a5d-ac96-774b-bcce-b302099a8057";
const PEAR: &str = "01890a5d-ac96-774b-bcce-b302099a8058";

/// Reservation `id` read through GetReservation with `token`.
async fn reservation(mut c: InventoryServiceClient<Channel>, token: &str, id: &str) -> Reservation {
    c.get_reservation(bearer(token, GetReservationRequest { id: id.into() }))
        .await
        .expect("get reservation")
        .into_inner()
        .reservation
        .expect("reservation")
}

async fn upgrade(target: DatabaseTarget) {
    let db =
        testing::database_before("inventory", &target, &mesh_inventory::MIGRATIONS, MICROS).await;
    // Apple: 10 on hand, 3 held by a reservation that is still live (2) and one that expired
    // long ago (1). Pear: untouched since the old release wrote it.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO stock (product_id, location_id, on_hand, reserved, updated_at) \
             VALUES ('{APPLE}', 'default', 10, 3, {CREATED}), ('{PEAR}', 'default', 4, 0, {CREATED}); \
         INSERT INTO reservations (id, reference_id, status, created_at, expires_at, updated_at) \
             VALUES ('r-live', 'o-live', 'ACTIVE', {CREATED}, {EXPIRES}, {CREATED}), \
                    ('r-old', 'o-old', 'ACTIVE', {CREATED}, {CREATED} + 900, {CREATED}); \
         INSERT INTO reservation_lines (reservation_id, line_no, product_id, location_id, quantity) \
             VALUES ('r-live', 0, '{APPLE}', 'default', 2), ('r-old', 0, '{APPLE}', 'default', 1); \
         INSERT INTO adjustments (id, request_id, product_id, location_id, delta, reason, note, \
                                  actor_id, on_hand, reserved, created_at) \
             VALUES ('a-old', 'adj-old', '{APPLE}', 'default', 10, 1, '', 'admin', 10, 0, {CREATED}); \
         INSERT INTO saga_orders (order_id, state, reservation_id, updated_at) \
             VALUES ('o-live', 'RESERVED', 'r-live', {CREATED});"
    )))
    .execute(db.pool())
    .await
    .expect("rows in seconds");
    db.close().await;

    // The service migrates the rest at start, then serves and sweeps the converted rows.
    let m = start(target).await;
    let mut c = client(m.addr).await;
    let stock = |product: &str| GetStockRequest {
        location_id: "default".into(),
        product_id: product.into(),
    };
    let pear = c
        .get_stock(bearer(&m.customer, stock(PEAR)))
        .await
        .expect("get stock")
        .into_inner()
        .stock
        .expect("stock");
    let update = pear.update_time.expect("update time");
    assert_eq!((update.seconds, update.nanos), (CREATED, 0));

    // The reservation that expired in 2026 is swept; read in seconds as microseconds, the live
    // one would have expired in 1970 and been swept too.
    testing::eventually("the old reservation expires", || {
        let r = reservation(c.clone(), &m.service, "r-old");
        async move { r.await.status == ReservationStatus::Expired as i32 }
    })
    .await;
    let old = reservation(c.clone(), &m.service, "r-old").await;
    assert_eq!(old.expire_time.expect("expiry").seconds, CREATED + 900);
    let live = reservation(c.clone(), &m.service, "r-live").await;
    assert_eq!(live.status, ReservationStatus::Active as i32, "{live:?}");
    assert_eq!(live.create_time.expect("created").seconds, CREATED);
    assert_eq!(live.expire_time.expect("expiry").seconds, EXPIRES);

    let committed = c
        .commit_reservation(bearer(
            &m.service,
            CommitReservationRequest {
                reservation_id: "r-live".into(),
            },
        ))
        .await
        .expect("the live reservation commits")
        .into_inner()
        .reservation
        .expect("reservation");
    assert_eq!(committed.status, ReservationStatus::Committed as i32);
    let apple = c
        .get_stock(bearer(&m.customer, stock(APPLE)))
        .await
        .expect("get stock")
        .into_inner()
        .stock
        .expect("stock");
    assert_eq!((apple.on_hand, apple.reserved), (8, 0), "{apple:?}");

    // Columns no RPC shows, read back.
    let (adjusted,): (i64,) =
        sqlx::query_as("SELECT created_us FROM adjustments WHERE request_id = 'adj-old'")
            .fetch_one(m.db.pool())
            .await
            .expect("adjustment");
    let (saga,): (i64,) =
        sqlx::query_as("SELECT updated_us FROM saga_orders WHERE order_id = 'o-live'")
            .fetch_one(m.db.pool())
            .await
            .expect("saga memory");
    assert_eq!((adjusted, saga), (CREATED * 1_000_000, CREATED * 1_000_000));
    m.shutdown.cancel();
    m.auth.shutdown.cancel();
}

#[tokio::test]
async fn rows_in_seconds_are_served_after_the_upgrade_on_sqlite() {
    upgrade(testing::sqlite()).await;
}

#[tokio::test]
async fn rows_in_seconds_are_served_after_the_upgrade_on_postgres() {
    let Some(target) = testing::postgres("inventory rows in seconds on postgres") else {
        return;
    };
    upgrade(target).await;
}
