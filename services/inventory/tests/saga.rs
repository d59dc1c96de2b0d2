//! Inventory's saga consumers, driven by order events the test publishes on the bus itself
//! (SQLite + in-process bus, and Postgres + Redis when configured): reserve on `order.created`
//! (all or nothing, or `inventory.rejected`), commit on `order.confirmed`, release on
//! `order.cancelled`, a tombstone for a cancellation that overtakes its creation, and one effect
//! per order id even when one fact arrives twice under two event ids.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_auth::AuthSettings;
use mesh_contracts::events::v1::{
    Envelope, InventoryCommitted, InventoryRejected, InventoryReleased, InventoryReserved,
    OrderCancelled, OrderConfirmed, OrderCreated, OrderLineSnapshot, ReservedLine,
};
use mesh_contracts::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_contracts::inventory::v1::*;
use mesh_inventory::InventoryOptions;
use mesh_runtime::Database;
use mesh_runtime::bus::EventBus;
use mesh_runtime::config::DatabaseTarget;
use mesh_testkit::{self as testing, TestAuth, bearer};
use prost::Message;
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

struct Mesh {
    _auth: TestAuth,
    db: Database,
    bus: Arc<dyn EventBus>,
    client: InventoryServiceClient<Channel>,
    admin: String,
    shutdown: CancellationToken,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(target: DatabaseTarget, bus: Arc<dyn EventBus>) -> Mesh {
    let auth = TestAuth::start(&testing::sqlite(), AuthSettings::default()).await;
    let db = testing::database("inventory", &target, &mesh_inventory::MIGRATIONS).await;
    let testing::Served { addr, shutdown } = testing::start(
        "inventory",
        BTreeMap::from([("auth", auth.uri())]),
        &db,
        &bus,
        |ctx| mesh_inventory::build_with(ctx, InventoryOptions::default()),
    )
    .await;
    let admin = auth.admin_token().await;
    Mesh {
        _auth: auth,
        db,
        bus,
        client: InventoryServiceClient::new(testing::channel(addr).await),
        admin,
        shutdown,
    }
}

fn created(order: &str, lines: &[(&str, i64)]) -> Envelope {
    testing::envelope(
        "order.created",
        order,
        "OrderCreated",
        &OrderCreated {
            order_id: order.into(),
            customer_id: "c-1".into(),
            lines: lines
                .iter()
                .map(|(p, q)| OrderLineSnapshot {
                    product_id: (*p).into(),
                    quantity: *q,
                    ..Default::default()
                })
                .collect(),
            location_id: "default".into(),
            card_token: "tok_test".into(),
            ..Default::default()
        },
    )
}

fn confirmed(order: &str) -> Envelope {
    testing::envelope(
        "order.confirmed",
        order,
        "OrderConfirmed",
        &OrderConfirmed {
            order_id: order.into(),
            ..Default::default()
        },
    )
}

fn cancelled(order: &str) -> Envelope {
    testing::envelope(
        "order.cancelled",
        order,
        "OrderCancelled",
        &OrderCancelled {
            order_id: order.into(),
            detail: "test".into(),
            ..Default::default()
        },
    )
}

async fn restock(m: &Mesh, product: &str, delta: i64) {
    m.client
        .clone()
        .adjust_stock(bearer(
            &m.admin,
            AdjustStockRequest {
                location_id: "default".into(),
                product_id: product.into(),
                delta,
                reason: AdjustmentReason::Restock as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("restock");
}

async fn level(m: &Mesh, product: &str) -> (i64, i64) {
    let s = m
        .client
        .clone()
        .get_stock(bearer(
            &m.admin,
            GetStockRequest {
                location_id: "default".into(),
                product_id: product.into(),
            },
        ))
        .await
        .expect("stock")
        .into_inner()
        .stock
        .expect("stock");
    (s.on_hand, s.reserved)
}

/// Events of `event_type` inventory emitted (its outbox), decoded.
async fn emitted(m: &Mesh, event_type: &str) -> Vec<Envelope> {
    testing::outbox::envelopes(&m.db, event_type).await
}

/// The saga state inventory keeps for `order`.
async fn saga_state(m: &Mesh, order: &str) -> Option<String> {
    sqlx::query("SELECT state FROM saga_orders WHERE order_id = $1")
        .bind(order)
        .fetch_optional(m.db.pool())
        .await
        .expect("saga state")
        .map(|r| r.get("state"))
}

/// The reservation inventory's saga row names for `order` ("" for none).
async fn saga_reservation(m: &Mesh, order: &str) -> String {
    sqlx::query("SELECT reservation_id FROM saga_orders WHERE order_id = $1")
        .bind(order)
        .fetch_one(m.db.pool())
        .await
        .expect("saga row")
        .get("reservation_id")
}

/// `(product, quantity)` of event lines.
fn pairs(lines: &[ReservedLine]) -> Vec<(String, i64)> {
    lines
        .iter()
        .map(|l| (l.product_id.clone(), l.quantity))
        .collect()
}

/// Publishes `e` and waits (bounded) until inventory's consumer recorded it as handled.
async fn deliver(m: &Mesh, e: &Envelope) {
    testing::deliver(m.bus.as_ref(), &m.db, "inventory", e).await;
}

async fn saga(target: DatabaseTarget, bus: Arc<dyn EventBus>) {
    let m = start(target, bus).await;
    let apple = uuid::Uuid::now_v7().to_string();
    let pear = uuid::Uuid::now_v7().to_string();
    restock(&m, &apple, 5).await;
    restock(&m, &pear, 1).await;

    // Reserve, then commit: one reservation per order even when the fact comes twice.
    let o1 = uuid::Uuid::now_v7().to_string();
    deliver(&m, &created(&o1, &[(&apple, 2), (&pear, 1)])).await;
    assert_eq!(saga_state(&m, &o1).await.as_deref(), Some("RESERVED"));
    deliver(&m, &created(&o1, &[(&apple, 2), (&pear, 1)])).await;
    assert_eq!(level(&m, &apple).await, (5, 2));
    assert_eq!(level(&m, &pear).await, (1, 1));
    let reserved = emitted(&m, "inventory.reserved").await;
    assert_eq!(reserved.len(), 1);
    assert_eq!(reserved[0].correlation_id, o1, "correlated by order id");
    let payload =
        InventoryReserved::decode(reserved[0].payload.as_ref().unwrap().value.as_slice()).unwrap();
    assert_eq!(payload.reference_id, o1);
    assert!(
        payload.expire_time.unwrap().seconds
            >= std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                + 600,
        "saga reservations outlive the saga timeout by far"
    );
    assert_eq!(
        saga_reservation(&m, &o1).await,
        payload.reservation_id,
        "the saga row names the reservation it announced"
    );
    // The reservation as the RPC reads it back: both lines, in order.
    let held = m
        .client
        .clone()
        .get_reservation(bearer(
            &m.admin,
            GetReservationRequest {
                id: payload.reservation_id.clone(),
            },
        ))
        .await
        .expect("GetReservation")
        .into_inner()
        .reservation
        .expect("reservation");
    assert_eq!(held.status, ReservationStatus::Active as i32);
    assert_eq!(
        held.lines
            .iter()
            .map(|l| (l.product_id.clone(), l.quantity))
            .collect::<Vec<_>>(),
        vec![(apple.clone(), 2), (pear.clone(), 1)]
    );
    deliver(&m, &confirmed(&o1)).await;
    let committed = m
        .client
        .clone()
        .get_reservation(bearer(
            &m.admin,
            GetReservationRequest {
                id: payload.reservation_id.clone(),
            },
        ))
        .await
        .expect("GetReservation")
        .into_inner()
        .reservation
        .expect("reservation");
    assert_eq!(committed.status, ReservationStatus::Committed as i32);
    deliver(&m, &confirmed(&o1)).await;
    // A cancellation arriving after the commit changes nothing.
    deliver(&m, &cancelled(&o1)).await;
    assert_eq!(level(&m, &apple).await, (3, 0));
    assert_eq!(level(&m, &pear).await, (0, 0));
    let committed = emitted(&m, "inventory.committed").await;
    assert_eq!(committed.len(), 1);
    let payload =
        InventoryCommitted::decode(committed[0].payload.as_ref().unwrap().value.as_slice())
            .unwrap();
    assert_eq!(
        pairs(&payload.lines),
        vec![(apple.clone(), 2), (pear.clone(), 1)],
        "the commit takes the reserved lines"
    );

    // Out of stock: all or nothing, rejected once; a later restock does not revive it.
    let o2 = uuid::Uuid::now_v7().to_string();
    deliver(&m, &created(&o2, &[(&apple, 1), (&pear, 1)])).await;
    assert_eq!(saga_state(&m, &o2).await.as_deref(), Some("REJECTED"));
    assert_eq!(
        saga_reservation(&m, &o2).await,
        "",
        "a rejected order names no reservation"
    );
    assert_eq!(
        level(&m, &apple).await,
        (3, 0),
        "the apple held a moment is given back"
    );
    let rejected = emitted(&m, "inventory.rejected").await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].subject, o2);
    let payload =
        InventoryRejected::decode(rejected[0].payload.as_ref().unwrap().value.as_slice()).unwrap();
    assert_eq!(payload.short_lines.len(), 1);
    assert_eq!(payload.short_lines[0].product_id, pear);
    restock(&m, &pear, 10).await;
    deliver(&m, &created(&o2, &[(&apple, 1), (&pear, 1)])).await;
    assert_eq!(
        level(&m, &pear).await,
        (10, 0),
        "a rejected order is not revived"
    );

    // Reserve, then cancel: released once.
    let o3 = uuid::Uuid::now_v7().to_string();
    deliver(&m, &created(&o3, &[(&apple, 3)])).await;
    assert_eq!(level(&m, &apple).await, (3, 3));
    deliver(&m, &cancelled(&o3)).await;
    assert_eq!(saga_state(&m, &o3).await.as_deref(), Some("CANCELLED"));
    deliver(&m, &cancelled(&o3)).await;
    assert_eq!(level(&m, &apple).await, (3, 0));
    let released = emitted(&m, "inventory.released").await;
    assert_eq!(released.len(), 1);
    let payload =
        InventoryReleased::decode(released[0].payload.as_ref().unwrap().value.as_slice()).unwrap();
    assert_eq!(pairs(&payload.lines), vec![(apple.clone(), 3)]);

    // A cancellation that overtakes its creation leaves a tombstone: nothing is reserved later.
    let o4 = uuid::Uuid::now_v7().to_string();
    deliver(&m, &cancelled(&o4)).await;
    assert_eq!(saga_state(&m, &o4).await.as_deref(), Some("CANCELLED"));
    deliver(&m, &created(&o4, &[(&apple, 1)])).await;
    assert_eq!(saga_state(&m, &o4).await.as_deref(), Some("CANCELLED"));
    assert_eq!(level(&m, &apple).await, (3, 0));
    assert_eq!(
        emitted(&m, "inventory.reserved").await.len(),
        2,
        "only o1 and o3 were ever reserved"
    );
}

#[tokio::test]
async fn saga_events_reserve_commit_and_release_on_sqlite() {
    saga(testing::sqlite(), testing::memory_bus()).await;
}

#[tokio::test]
async fn saga_events_reserve_commit_and_release_on_postgres_and_redis() {
    let (Some(target), Some(url)) = (
        testing::postgres("inventory saga"),
        testing::redis("inventory saga"),
    ) else {
        return;
    };
    saga(target, testing::bus("inv-saga", Some(&url))).await;
}

/// Rows of `table` whose `column` is `value`.
async fn count(m: &Mesh, table: &str, column: &str, value: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {table} WHERE {column} = $1"
    )))
    .bind(value)
    .fetch_one(m.db.pool())
    .await
    .expect("count")
    .get("n")
}

/// On Postgres the whole reservation of `order.created` is one statement (the consumer runs it
/// without a transaction): it writes everything, or nothing at all when a line is short, the
/// order is known or its reference is taken, so that the step's run in a transaction (which
/// tells those apart) starts from what was there. Without the holds' required row count the
/// short order would keep its saga row, reservation and event, and the taken reference its saga
/// row.
#[tokio::test]
async fn the_reservation_statement_writes_all_or_nothing_on_postgres() {
    use mesh_inventory::{events, store, validate};
    use mesh_runtime::DatabaseError;
    let Some(target) = testing::postgres("inventory reservation statement") else {
        return;
    };
    let m = start(target, testing::memory_bus()).await;
    let apple = uuid::Uuid::now_v7().to_string();
    let pear = uuid::Uuid::now_v7().to_string();
    restock(&m, &apple, 5).await;
    restock(&m, &pear, 1).await;
    let line = |product: &str, quantity: i64| validate::Line {
        product_id: product.into(),
        location_id: "default".into(),
        quantity,
    };
    let now = 1_000_000;
    let expires = now + 3_600_000_000;
    let reserve = |order: &str, lines: Vec<validate::Line>| {
        let id = uuid::Uuid::now_v7().to_string();
        let merged = validate::merged(&lines);
        let writes = store::reserve_writes(order, &id, &lines, &merged, now, expires);
        let event = events::reserved(&id, order, &lines, expires);
        let db = m.db.clone();
        async move { (id.clone(), db.write_and_emit(&writes, event).await) }
    };

    // Every line held: the saga row, the reservation, its lines, the holds and the event.
    let o1 = uuid::Uuid::now_v7().to_string();
    let (r1, done) = reserve(&o1, vec![line(&apple, 1), line(&pear, 1), line(&apple, 1)]).await;
    done.expect("reserved").expect("the event");
    assert_eq!(saga_state(&m, &o1).await.as_deref(), Some("RESERVED"));
    assert_eq!(saga_reservation(&m, &o1).await, r1);
    assert_eq!(
        level(&m, &apple).await,
        (5, 2),
        "two lines of one product, merged"
    );
    assert_eq!(level(&m, &pear).await, (1, 1));
    assert_eq!(
        count(&m, "reservation_lines", "reservation_id", &r1).await,
        3
    );
    assert_eq!(emitted(&m, "inventory.reserved").await.len(), 1);

    // Short (no pear left), known, and a reference with a reservation of its own: nothing.
    let o2 = uuid::Uuid::now_v7().to_string();
    let o3 = uuid::Uuid::now_v7().to_string();
    m.client
        .clone()
        .reserve(bearer(
            &m.admin,
            ReserveRequest {
                reference_id: o3.clone(),
                lines: vec![StockLine {
                    product_id: apple.clone(),
                    location_id: "default".into(),
                    quantity: 1,
                }],
                ..Default::default()
            },
        ))
        .await
        .expect("Reserve by RPC");
    for (order, lines) in [
        (&o2, vec![line(&apple, 1), line(&pear, 1)]),
        (&o1, vec![line(&apple, 1)]),
        (&o3, vec![line(&apple, 1)]),
    ] {
        let (id, done) = reserve(order, lines).await;
        assert!(
            matches!(done, Err(DatabaseError::Unmet(_))),
            "{order}: {done:?}"
        );
        assert_eq!(count(&m, "reservations", "id", &id).await, 0, "{order}");
    }
    assert_eq!(
        saga_state(&m, &o2).await,
        None,
        "the short order is not claimed"
    );
    assert_eq!(saga_state(&m, &o3).await, None, "nor the taken reference");
    assert_eq!(
        saga_reservation(&m, &o1).await,
        r1,
        "the known order keeps its own"
    );
    assert_eq!(
        level(&m, &apple).await,
        (5, 3),
        "o1's two and the RPC's one"
    );
    assert_eq!(level(&m, &pear).await, (1, 1));
    assert_eq!(
        emitted(&m, "inventory.reserved").await.len(),
        2,
        "o1's and the RPC's"
    );

    // The consumer's step: the short order is rejected (in a transaction), and the known one
    // changes nothing.
    deliver(&m, &created(&o2, &[(&apple, 1), (&pear, 1)])).await;
    assert_eq!(saga_state(&m, &o2).await.as_deref(), Some("REJECTED"));
    deliver(&m, &created(&o3, &[(&apple, 1)])).await;
    assert_eq!(saga_state(&m, &o3).await.as_deref(), Some("RESERVED"));
    assert_eq!(level(&m, &apple).await, (5, 3));
    assert_eq!(emitted(&m, "inventory.rejected").await.len(), 1);
}

/// A batch of `order.created` events handled in one transaction (what the consumer does under
/// load; on Postgres each reservation is then its one statement in that transaction): a short
/// order in the batch fails its statement, and the batch runs again event by event, so the
/// good orders reserve once and the short one is rejected, holding nothing.
async fn batch_with_a_short_order(target: DatabaseTarget) {
    use mesh_runtime::consumer::{Consumer, Outcome};
    let m = start(target, testing::memory_bus()).await;
    let apple = uuid::Uuid::now_v7().to_string();
    let pear = uuid::Uuid::now_v7().to_string();
    restock(&m, &apple, 10).await;
    restock(&m, &pear, 1).await;
    let options = mesh_inventory::saga::SagaOptions {
        clock: Arc::new(mesh_runtime::auth::SystemClock),
        reservation_ttl: std::time::Duration::from_secs(900),
    };
    let consumer = mesh_inventory::saga::handlers(
        Consumer::new(m.db.clone(), testing::memory_bus(), "inventory-batch").concurrency(1),
        &options,
    );
    let orders: Vec<String> = (0..4).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let batch = |events: Vec<Envelope>| {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| testing::delivery(e, &format!("1-{i}"), 1))
            .collect::<Vec<_>>()
    };
    // All good: one transaction, every order reserved.
    let outcomes = consumer
        .handle_batch(batch(vec![
            created(&orders[0], &[(&apple, 1)]),
            created(&orders[1], &[(&apple, 1), (&pear, 1)]),
        ]))
        .await;
    assert!(
        outcomes.iter().all(|(_, o)| matches!(o, Outcome::Handled)),
        "{outcomes:?}"
    );
    // No pear left: the third order is short, the fourth is fine.
    let outcomes = consumer
        .handle_batch(batch(vec![
            created(&orders[2], &[(&apple, 2), (&pear, 1)]),
            created(&orders[3], &[(&apple, 3)]),
        ]))
        .await;
    assert!(
        outcomes.iter().all(|(_, o)| matches!(o, Outcome::Handled)),
        "{outcomes:?}"
    );
    let states = futures::future::join_all(orders.iter().map(|o| saga_state(&m, o))).await;
    assert_eq!(
        states,
        ["RESERVED", "RESERVED", "REJECTED", "RESERVED"].map(|s| Some(s.to_string()))
    );
    assert_eq!(
        level(&m, &apple).await,
        (10, 5),
        "1 + 1 + 3 held, the short order's 2 not"
    );
    assert_eq!(level(&m, &pear).await, (1, 1));
    assert_eq!(emitted(&m, "inventory.reserved").await.len(), 3);
    assert_eq!(emitted(&m, "inventory.rejected").await.len(), 1);
}

#[tokio::test]
async fn a_batch_with_a_short_order_reserves_the_others_once_on_sqlite() {
    batch_with_a_short_order(testing::sqlite()).await;
}

#[tokio::test]
async fn a_batch_with_a_short_order_reserves_the_others_once_on_postgres() {
    let Some(target) = testing::postgres("inventory saga batch") else {
        return;
    };
    batch_with_a_short_order(target).await;
}
