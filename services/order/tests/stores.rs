//! Orders name their store: inventory reserves at that store's location (not at the online
//! channel's `default`), a store without the stock rejects the order even when the online stock
//! has it, ListOrders filters by store, and a malformed store id is INVALID_ARGUMENT naming
//! `store_id` (SQLite, and Postgres + Redis).
//!
//! Store staff (real tokens whose `stores` claim auth took from a `user.updated` snapshot) read,
//! list and cancel only the orders of their stores and online ones; admins every order;
//! customers their own.

mod common;

use std::time::Duration;

use common::{Backend, Mesh, request, start};
use mesh_contracts::order::v1::*;
use mesh_testkit::bearer;
use tonic::Code;

async fn place(m: &Mesh, req: PlaceOrderRequest) -> Order {
    m.place(&m.admin, req).await
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

on_both_backends!(
    orders_reserve_at_their_store_on_sqlite,
    orders_reserve_at_their_store_on_postgres_and_redis,
    "order stores",
    stores
);

fn denied<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, field: &str) {
    let s = r.expect_err("expected PERMISSION_DENIED");
    assert_eq!(s.code(), Code::PermissionDenied, "{}", s.message());
    assert!(
        s.message().starts_with(field),
        "`{}` names `{field}`",
        s.message()
    );
}

/// Every order `token` lists (`store` filter), one per page, so the pages' bounds are checked.
async fn list_paged(m: &Mesh, token: &str, store: &str) -> Vec<String> {
    mesh_testkit::every_page(1, |page_token| async move {
        let page = m
            .orders
            .clone()
            .list_orders(bearer(
                token,
                ListOrdersRequest {
                    store_id: store.into(),
                    page_size: 1,
                    page_token,
                    ..Default::default()
                },
            ))
            .await
            .expect("list")
            .into_inner();
        let ids = page.orders.into_iter().map(|o| o.id).collect();
        (ids, page.next_page_token)
    })
    .await
}

async fn get(
    m: &Mesh,
    token: &str,
    id: &str,
) -> Result<tonic::Response<GetOrderResponse>, tonic::Status> {
    m.orders
        .clone()
        .get_order(bearer(token, GetOrderRequest { id: id.into() }))
        .await
}

async fn cancel(
    m: &Mesh,
    token: &str,
    id: &str,
) -> Result<tonic::Response<CancelOrderResponse>, tonic::Status> {
    m.orders
        .clone()
        .cancel_order(bearer(
            token,
            CancelOrderRequest {
                id: id.into(),
                reason: "out of hours".into(),
            },
        ))
        .await
}

async fn store_staff(backend: Backend) {
    let m = start(&backend, Duration::from_secs(60)).await;
    let cola = m.product(250, "EUR", 5).await;
    m.restock_at("berlin-hbf", &cola.id, 5).await;
    m.restock_at("munich", &cola.id, 5).await;
    let customer = m.auth.customer_token().await;
    let stranger = m.auth.customer_token().await;
    let (_, berlin_staff) = m.auth.store_staff_token(&["berlin-hbf"]).await;
    let (_, munich_staff) = m.auth.store_staff_token(&["munich", "hamburg"]).await;
    let (_, no_store) = m.auth.store_staff_token(&[]).await;
    let mut placed = Vec::new();
    for store in ["berlin-hbf", "munich", "", "berlin-hbf"] {
        let mut req = request(&[(&cola.id, 1)]);
        req.store_id = store.into();
        let order = m
            .orders
            .clone()
            .place_order(bearer(&customer, req))
            .await
            .expect("place")
            .into_inner()
            .order
            .expect("order");
        m.until(&customer, &order.id, OrderStatus::Reserved).await;
        placed.push(order.id);
    }
    let [berlin, munich, online, berlin2] = placed.as_slice() else {
        unreachable!()
    };
    let newest_first =
        |ids: &[&String]| ids.iter().rev().map(|s| s.to_string()).collect::<Vec<_>>();

    // Reading: their stores' orders and online ones; another store's is refused naming `id`.
    get(&m, &berlin_staff, berlin).await.expect("own store");
    get(&m, &berlin_staff, online).await.expect("online");
    denied(get(&m, &berlin_staff, munich).await, "id");
    denied(get(&m, &no_store, berlin).await, "id");
    get(&m, &m.admin, munich)
        .await
        .expect("admins read every order");
    let other = get(&m, &stranger, berlin)
        .await
        .expect_err("another customer's");
    assert_eq!(
        other.code(),
        Code::NotFound,
        "customers do not learn of others' orders"
    );

    // Listing: filtered in SQL, so every page is full and the last one ends the listing.
    assert_eq!(
        list_paged(&m, &berlin_staff, "").await,
        newest_first(&[berlin, online, berlin2])
    );
    assert_eq!(
        list_paged(&m, &munich_staff, "").await,
        newest_first(&[munich, online])
    );
    assert_eq!(list_paged(&m, &no_store, "").await, vec![online.clone()]);
    assert_eq!(
        list_paged(&m, &berlin_staff, "berlin-hbf").await,
        newest_first(&[berlin, berlin2])
    );
    denied(
        m.orders
            .clone()
            .list_orders(bearer(
                &berlin_staff,
                ListOrdersRequest {
                    store_id: "munich".into(),
                    ..Default::default()
                },
            ))
            .await,
        "store_id",
    );
    assert_eq!(list_paged(&m, &m.admin, "").await.len(), 4);
    assert_eq!(list_paged(&m, &customer, "").await.len(), 4);
    assert!(list_paged(&m, &stranger, "").await.is_empty());

    // Placing: at their stores and online; another store's is refused naming `store_id`.
    let mut elsewhere = request(&[(&cola.id, 1)]);
    elsewhere.customer_id = "walk-in".into();
    elsewhere.store_id = "munich".into();
    denied(
        m.orders
            .clone()
            .place_order(bearer(&berlin_staff, elsewhere.clone()))
            .await,
        "store_id",
    );
    elsewhere.store_id = "berlin-hbf".into();
    m.orders
        .clone()
        .place_order(bearer(&berlin_staff, elsewhere))
        .await
        .expect("staff place orders at their store");

    // Cancelling: another store's order is refused and stays as it was; their own is cancelled.
    denied(cancel(&m, &berlin_staff, munich).await, "id");
    let kept = get(&m, &m.admin, munich)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(kept.status, OrderStatus::Reserved as i32);
    let done = cancel(&m, &munich_staff, munich).await.expect("own store");
    assert_eq!(
        done.into_inner().order.unwrap().status,
        OrderStatus::Cancelled as i32
    );
    cancel(&m, &berlin_staff, online)
        .await
        .expect("online orders: any staff");
}

on_both_backends!(
    store_staff_see_only_their_stores_orders_on_sqlite,
    store_staff_see_only_their_stores_orders_on_postgres_and_redis,
    "order store staff",
    store_staff
);
