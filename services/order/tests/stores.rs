//! Orders name their store: inventory reserves at that store's location (not at the online
//! channel's `default`), a store without the stock rejects the order even when the online stock
//! has it, ListOrders filters by store, and a malformed store id is INVALID_ARGUMENT naming
//! `store_id` (SQLite, and Postgres + Redis).

mod common;

use std::time::Duration;

use common::{Backend, Mesh, request, start};
use mesh_contracts::order::v1::*;
use mesh_testkit::bearer;
use tonic::Code;

async fn place(m: &Mesh, req: PlaceOrderRequest) -> Order {
    m.orders
        .clone()
        .place_order(bearer(&m.admin, req))
        .await
        .expect("place order")
        .into_inner()
        .order
        .expect("order")
}

async fn list(m: &Mesh, store: &str) -> Vec<String> {
    m.orders
        .clone()
        .list_orders(bearer(
            &m.admin,
            ListOrdersRequest {
                store_id: store.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner()
        .orders
        .into_iter()
        .map(|o| o.id)
        .collect()
}

async fn stores(backend: Backend) {
    let m = start(&backend, Duration::from_secs(60)).await;
    // 5 online, 2 in Berlin, none in Munich.
    let cola = m.product(250, "EUR", 5).await;
    m.restock_at("berlin-hbf", &cola.id, 2).await;
    let order_for = |store: &str| {
        let mut req = request(&[(&cola.id, 1)]);
        req.customer_id = "walk-in".into();
        req.store_id = store.into();
        req
    };

    let berlin = place(&m, order_for("berlin-hbf")).await;
    assert_eq!(berlin.store_id, "berlin-hbf");
    m.until(&m.admin, &berlin.id, OrderStatus::Reserved).await;
    assert_eq!(m.stock_at("berlin-hbf", &cola.id).await, (2, 1));
    assert_eq!(
        m.stock(&cola.id).await,
        (5, 0),
        "the online stock is untouched"
    );

    let munich = place(&m, order_for("munich")).await;
    let cancelled = m.until(&m.admin, &munich.id, OrderStatus::Cancelled).await;
    assert!(
        cancelled.cancel_reason.starts_with("OUT_OF_STOCK"),
        "{cancelled:?}"
    );
    assert_eq!(m.stock(&cola.id).await, (5, 0));

    let online = place(&m, order_for("")).await;
    m.until(&m.admin, &online.id, OrderStatus::Reserved).await;
    assert_eq!(m.stock(&cola.id).await, (5, 1));

    assert_eq!(list(&m, "berlin-hbf").await, vec![berlin.id.clone()]);
    assert_eq!(list(&m, "munich").await, vec![munich.id.clone()]);
    assert_eq!(list(&m, "").await.len(), 3, "no filter: every order");

    let bad = m
        .orders
        .clone()
        .place_order(bearer(&m.admin, order_for("Berlin HBF")))
        .await
        .expect_err("bad store id");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("store_id"), "{}", bad.message());
    let bad = m
        .orders
        .clone()
        .list_orders(bearer(
            &m.admin,
            ListOrdersRequest {
                store_id: "no/slash".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("bad store filter");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("store_id"), "{}", bad.message());
}

#[tokio::test]
async fn orders_reserve_at_their_store_on_sqlite() {
    stores(Backend::Embedded).await;
}

#[tokio::test]
async fn orders_reserve_at_their_store_on_postgres_and_redis() {
    if let Some(backend) = Backend::real("order stores") {
        stores(backend).await;
    }
}
