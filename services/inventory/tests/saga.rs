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
