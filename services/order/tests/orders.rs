//! The order service over real gRPC with real auth, product and inventory (SQLite + in-process
//! bus; Postgres + Redis when configured). The tests play payment's part of the saga by
//! publishing its events: an order is priced at product and reserved by inventory, confirmed by
//! `payment.succeeded`, cancelled by `payment.failed` (stock restored), by inventory's rejection,
//! by the customer and by the saga timeout; idempotency keys; every bad input names its field and
//! writes nothing; customers see only their own orders; lists page.

mod common;

use std::time::Duration;

use common::{Backend, Mesh, card, request, start};
use mesh_contracts::order::v1::*;
use mesh_testkit::bearer;
use sqlx::Row as _;
use tonic::Code;

fn status<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("expected an error status");
    (s.code(), s.message().to_string())
}

fn assert_status<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    field: &str,
) {
    let (got, message) = status(r);
    assert_eq!(got, code, "{message}");
    assert!(message.starts_with(field), "`{message}` names `{field}`");
}

async fn count_rows(m: &Mesh, table: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) AS n FROM {table}"
    )))
    .fetch_one(m.order_db.pool())
    .await
    .expect("count")
    .get("n")
}

fn statuses(o: &Order) -> Vec<OrderStatus> {
    o.status_history
        .iter()
        .map(|c| OrderStatus::try_from(c.status).unwrap())
        .collect()
}

async fn lifecycle(backend: Backend) {
    let m = start(&backend, Duration::from_secs(60)).await;
    let customer = m.auth.customer_token().await;
    let other = m.auth.customer_token().await;
    let apple = m.product(250, "EUR", 10).await;
    let pear = m.product(100, "EUR", 2).await;

    // Placed, priced from the catalog, reserved, then confirmed by payment.succeeded.
    let mut req = request(&[(&apple.id, 2), (&pear.id, 1)]);
    req.promo_code = "WELCOME10".into();
    let order = m.place(&customer, req.clone()).await;
    assert_eq!(order.status, OrderStatus::Pending as i32);
    assert_eq!(order.lines.len(), 2);
    assert_eq!(order.lines[0].sku, apple.sku);
    assert_eq!(
        order.lines[0].unit_price.as_ref().unwrap().amount_minor,
        250
    );
    assert_eq!(order.lines[0].subtotal.as_ref().unwrap().amount_minor, 500);
    let total = order.total.clone().unwrap();
    assert_eq!(
        (total.currency_code.as_str(), total.amount_minor),
        ("EUR", 600)
    );
    assert_eq!(order.promo_code, "WELCOME10", "recorded");
    assert_eq!(
        order.discount_total.as_ref().unwrap().amount_minor,
        0,
        "not applied: campaign is not built"
    );
    assert!(!order.customer_id.is_empty());
    let reserved = m.until(&customer, &order.id, OrderStatus::Reserved).await;
    assert!(!reserved.reservation_id.is_empty());
    assert_eq!(m.stock(&apple.id).await, (10, 2));

    // The same key and body: the same order, never a second one; another body: refused.
    let again = m.place(&customer, req.clone()).await;
    assert_eq!(again.id, order.id);
    let mut changed = req.clone();
    changed.lines[0].quantity = 3;
    assert_status(
        m.orders
            .clone()
            .place_order(bearer(&customer, changed))
            .await,
        Code::AlreadyExists,
        "idempotency_key",
    );
    // Keys are per customer: another customer's same key is a new order.
    let theirs = m.place(&other, req.clone()).await;
    assert_ne!(theirs.id, order.id);

    m.payment_event(&reserved, true).await;
    let confirmed = m.until(&customer, &order.id, OrderStatus::Confirmed).await;
    assert!(!confirmed.payment_id.is_empty());
    assert_eq!(
        statuses(&confirmed),
        [
            OrderStatus::Pending,
            OrderStatus::Reserved,
            OrderStatus::Confirmed
        ]
    );
    m.until_stock(&apple.id, (8, 2)).await; // 2 sold; `other`'s order holds 2 more
    // A late failure changes nothing; a confirmed order cannot be cancelled.
    m.payment_event(&reserved, false).await;
    assert_status(
        m.orders
            .clone()
            .cancel_order(bearer(
                &customer,
                CancelOrderRequest {
                    id: order.id.clone(),
                    reason: String::new(),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "id",
    );

    // Payment declined: cancelled and the stock restored.
    let theirs = m.until(&other, &theirs.id, OrderStatus::Reserved).await;
    m.payment_event(&theirs, false).await;
    let declined = m.until(&other, &theirs.id, OrderStatus::Cancelled).await;
    assert!(
        declined.cancel_reason.starts_with("PAYMENT_FAILED"),
        "{}",
        declined.cancel_reason
    );
    m.until_stock(&apple.id, (8, 0)).await;
    m.until_stock(&pear.id, (1, 0)).await;

    // Out of stock (one pear left): cancelled by inventory's rejection, nothing held.
    let short = m
        .place(&customer, request(&[(&apple.id, 1), (&pear.id, 2)]))
        .await;
    let short = m.until(&customer, &short.id, OrderStatus::Cancelled).await;
    assert!(
        short.cancel_reason.starts_with("OUT_OF_STOCK"),
        "{}",
        short.cancel_reason
    );
    m.until_stock(&apple.id, (8, 0)).await;

    // The customer cancels before payment: released; cancelling again returns it unchanged.
    let mine = m.place(&customer, request(&[(&apple.id, 3)])).await;
    m.until(&customer, &mine.id, OrderStatus::Reserved).await;
    let cancel = |token: &str, id: &str| {
        let mut c = m.orders.clone();
        let r = bearer(
            token,
            CancelOrderRequest {
                id: id.into(),
                reason: "changed my mind".into(),
            },
        );
        async move { c.cancel_order(r).await }
    };
    // Another customer cannot see or cancel it.
    assert_status(cancel(&other, &mine.id).await, Code::NotFound, "id");
    assert_status(
        m.orders
            .clone()
            .get_order(bearer(
                &other,
                GetOrderRequest {
                    id: mine.id.clone(),
                },
            ))
            .await,
        Code::NotFound,
        "id",
    );
    let gone = cancel(&customer, &mine.id)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(gone.status, OrderStatus::Cancelled as i32);
    assert!(
        gone.cancel_reason.starts_with("CUSTOMER_REQUEST"),
        "{}",
        gone.cancel_reason
    );
    let twice = cancel(&customer, &mine.id)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(twice.status_history.len(), gone.status_history.len());
    m.until_stock(&apple.id, (8, 0)).await;
    // A payment success arriving after the cancellation does not revive it.
    m.payment_event(&gone, true).await;
    let marker = m.place(&customer, request(&[(&apple.id, 1)])).await;
    m.until(&customer, &marker.id, OrderStatus::Reserved).await;
    m.payment_event(&marker, true).await;
    m.until(&customer, &marker.id, OrderStatus::Confirmed).await;
    let still = m.until(&customer, &mine.id, OrderStatus::Cancelled).await;
    assert!(still.payment_id.is_empty());

    // A raw card is tokenized at payment; only the token and last 4 digits are kept.
    let mut by_card = request(&[(&apple.id, 1)]);
    by_card.payment_method = card("4242 4242 4242 4242");
    let paid_by_card = m.place(&customer, by_card).await;
    assert_eq!(paid_by_card.card_last4, "4242");
    assert!(paid_by_card.card_token.starts_with("tok_"));
    let mut bad_card = request(&[(&apple.id, 1)]);
    bad_card.payment_method = card("4242");
    assert_status(
        m.orders
            .clone()
            .place_order(bearer(&customer, bad_card))
            .await,
        Code::InvalidArgument,
        "payment_method.card",
    );

    bad_input(&m, &customer, &apple.id).await;
    listing(&m).await;
}

async fn bad_input(m: &Mesh, customer: &str, apple: &str) {
    let orders = count_rows(m, "orders").await;
    let lines = count_rows(m, "order_lines").await;
    let events = count_rows(m, "mesh_outbox").await;
    let try_place = |req: PlaceOrderRequest| {
        let mut c = m.orders.clone();
        let r = bearer(customer, req);
        async move { c.place_order(r).await }
    };
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_status(
        try_place(request(&[(apple, 1), (&unknown, 1)])).await,
        Code::NotFound,
        "lines[1].product_id",
    );
    assert_status(
        try_place(request(&[(apple, 0)])).await,
        Code::InvalidArgument,
        "lines[0].quantity",
    );
    assert_status(
        try_place(request(&[(apple, -1)])).await,
        Code::InvalidArgument,
        "lines[0].quantity",
    );
    assert_status(
        try_place(request(&[])).await,
        Code::InvalidArgument,
        "lines",
    );
    let ids: Vec<String> = (0..101).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let many: Vec<(&str, i64)> = ids.iter().map(|i| (i.as_str(), 1)).collect();
    assert_status(
        try_place(request(&many)).await,
        Code::InvalidArgument,
        "lines",
    );
    assert_status(
        try_place(request(&[(apple, 1), (apple, 2)])).await,
        Code::InvalidArgument,
        "lines[1].product_id",
    );
    assert_status(
        try_place(request(&[("not-a-uuid", 1)])).await,
        Code::InvalidArgument,
        "lines[0].product_id",
    );
    let inactive = m.product(100, "EUR", 0).await;
    m.products
        .clone()
        .delete_product(bearer(
            &m.admin,
            mesh_contracts::product::v1::DeleteProductRequest {
                id: inactive.id.clone(),
            },
        ))
        .await
        .expect("delete");
    let (code, message) = status(try_place(request(&[(&inactive.id, 1)])).await);
    assert!(
        matches!(code, Code::NotFound | Code::FailedPrecondition)
            && message.starts_with("lines[0].product_id"),
        "{code:?} {message}"
    );
    let dollars = m.product(100, "USD", 5).await;
    assert_status(
        try_place(request(&[(apple, 1), (&dollars.id, 1)])).await,
        Code::FailedPrecondition,
        "lines[1].product_id",
    );
    let mut r = request(&[(apple, 1)]);
    r.currency_code = "USD".into();
    assert_status(
        try_place(r).await,
        Code::FailedPrecondition,
        "currency_code",
    );
    let mut r = request(&[(apple, 1)]);
    r.currency_code = "dollars".into();
    assert_status(try_place(r).await, Code::InvalidArgument, "currency_code");
    let mut r = request(&[(apple, 1)]);
    r.shipping_address = None;
    assert_status(
        try_place(r).await,
        Code::InvalidArgument,
        "shipping_address",
    );
    let mut r = request(&[(apple, 1)]);
    r.shipping_address.as_mut().unwrap().region_code = String::new();
    assert_status(
        try_place(r).await,
        Code::InvalidArgument,
        "shipping_address.region_code",
    );
    let mut r = request(&[(apple, 1)]);
    r.payment_method = None;
    assert_status(try_place(r).await, Code::InvalidArgument, "payment_method");
    let mut r = request(&[(apple, 1)]);
    r.idempotency_key = String::new();
    assert_status(try_place(r).await, Code::InvalidArgument, "idempotency_key");
    let mut r = request(&[(apple, 1)]);
    r.customer_id = "someone-else".into();
    assert_status(try_place(r).await, Code::PermissionDenied, "customer_id");
    // Staff must say whom the order is for.
    assert_status(
        m.orders
            .clone()
            .place_order(bearer(&m.admin, request(&[(apple, 1)])))
            .await,
        Code::InvalidArgument,
        "customer_id",
    );
    // No token at all.
    let (code, _) = status(m.orders.clone().place_order(request(&[(apple, 1)])).await);
    assert_eq!(code, Code::Unauthenticated);
    // Nothing half-written.
    assert_eq!(count_rows(m, "orders").await, orders);
    assert_eq!(count_rows(m, "order_lines").await, lines);
    assert_eq!(count_rows(m, "mesh_outbox").await, events);
}

async fn listing(m: &Mesh) {
    let customer = m.auth.customer_token().await;
    let apple = m.product(10, "EUR", 100).await;
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(m.place(&customer, request(&[(&apple.id, 1)])).await.id);
    }
    placed.reverse(); // newest first
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = m
            .orders
            .clone()
            .list_orders(bearer(
                &customer,
                ListOrdersRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("list")
            .into_inner();
        assert!(page.orders.len() <= 2);
        seen.extend(page.orders.into_iter().map(|o| o.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, placed, "own orders only, newest first, each once");
    // Staff may list one customer's; a customer may not list another's.
    let someone = m.auth.customer_token().await;
    assert_status(
        m.orders
            .clone()
            .list_orders(bearer(
                &someone,
                ListOrdersRequest {
                    customer_id: "x".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
        "customer_id",
    );
    let empty = m
        .orders
        .clone()
        .list_orders(bearer(&someone, ListOrdersRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert!(empty.orders.is_empty());
    for (req, field) in [
        (
            ListOrdersRequest {
                page_token: "???".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            ListOrdersRequest {
                page_size: 201,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListOrdersRequest {
                status: 99,
                ..Default::default()
            },
            "status",
        ),
    ] {
        assert_status(
            m.orders.clone().list_orders(bearer(&customer, req)).await,
            Code::InvalidArgument,
            field,
        );
    }
    let pending = m
        .orders
        .clone()
        .list_orders(bearer(
            &m.admin,
            ListOrdersRequest {
                status: OrderStatus::Confirmed as i32,
                page_size: 200,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert!(
        pending
            .orders
            .iter()
            .all(|o| o.status == OrderStatus::Confirmed as i32)
    );
}

async fn timeout(backend: Backend) {
    let m = start(&backend, Duration::from_secs(2)).await;
    let customer = m.auth.customer_token().await;
    let apple = m.product(250, "EUR", 5).await;
    let order = m.place(&customer, request(&[(&apple.id, 2)])).await;
    let reserved = m.until(&customer, &order.id, OrderStatus::Reserved).await;
    // No payment comes: the sweeper cancels it, and inventory releases the stock.
    let timed_out = m.until(&customer, &order.id, OrderStatus::Cancelled).await;
    assert!(
        timed_out.cancel_reason.starts_with("TIMEOUT"),
        "{}",
        timed_out.cancel_reason
    );
    // The chart's MeshSagaTimeouts alert counts these.
    let metrics = m.order_metrics.encode();
    assert!(
        metrics.lines().any(|l| l == "order_saga_timeouts_total 1"),
        "{metrics}"
    );
    m.until_stock(&apple.id, (5, 0)).await;
    // A late success is ignored (payment refunds it on order.cancelled).
    m.payment_event(&reserved, true).await;
    let marker = m.place(&customer, request(&[(&apple.id, 1)])).await;
    m.until(&customer, &marker.id, OrderStatus::Reserved).await;
    m.payment_event(&marker, true).await;
    m.until(&customer, &marker.id, OrderStatus::Confirmed).await;
    let after = m.until(&customer, &order.id, OrderStatus::Cancelled).await;
    assert_eq!(after.status_history.len(), timed_out.status_history.len());
    m.until_stock(&apple.id, (4, 0)).await;
}

/// The mesh with the fake payment (an order waits RESERVED until the test publishes its
/// payment), the saga's backlog sampled every 50 ms against a 300 ms bound leaving the
/// `stragglers` oldest open orders out; a customer's token and a product with 10 in stock.
async fn start_admission(
    backend: &Backend,
    stragglers: u32,
) -> (Mesh, String, mesh_contracts::product::v1::Product) {
    let mut options = mesh_order::OrderOptions::with_timeout(Duration::from_secs(60));
    options.sweep_every = Duration::from_millis(50);
    options.max_saga_backlog = Duration::from_millis(300);
    options.saga_backlog_stragglers = stragglers;
    let m = common::start_options(
        backend,
        options,
        common::Payment::Fake,
        common::CampaignPeer::Real,
    )
    .await;
    let customer = m.auth.customer_token().await;
    let apple = m.product(250, "EUR", 10).await;
    (m, customer, apple)
}

/// PlaceOrder refuses new orders while the saga's backlog is older than the bound, and
/// admits them again once the saga caught up. With the fake payment an order waits RESERVED
/// until the test publishes its payment: that is the backlog.
async fn admission(backend: Backend) {
    // One waiting order is the backlog here; `stragglers` tests leaving the oldest out (the
    // default leaves the 100 oldest out).
    let (m, customer, apple) = start_admission(&backend, 0).await;
    let waiting = m.place(&customer, request(&[(&apple.id, 1)])).await;
    let waiting = m.until(&customer, &waiting.id, OrderStatus::Reserved).await;

    // One idempotency key for every probe: at most one more order (the first probe, if it
    // comes before the backlog shows), then its order or a refusal.
    let mut probe = request(&[(&apple.id, 1)]);
    probe.idempotency_key = "admission-probe".into();
    let place = |req: PlaceOrderRequest| {
        let mut client = m.orders.clone();
        let customer = customer.clone();
        async move { client.place_order(bearer(&customer, req)).await }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let refused = loop {
        match place(probe.clone()).await {
            Err(status) => break status,
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "PlaceOrder never refused with an order open for seconds"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(
        refused.message().contains("MESH_ORDER_MAX_SAGA_BACKLOG")
            && refused.message().contains("behind"),
        "{}",
        refused.message()
    );
    // A refusal writes nothing.
    let before = count_rows(&m, "orders").await;
    assert!(place(request(&[(&apple.id, 1)])).await.is_err());
    assert_eq!(count_rows(&m, "orders").await, before);
    let metrics = m.order_metrics.encode();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("order_admission_refusals_total ")
                && l != "order_admission_refusals_total 0"),
        "{metrics}"
    );

    // The saga catches up: every open order gets its payment, and the probe's key is answered.
    m.payment_event(&waiting, true).await;
    m.until(&customer, &waiting.id, OrderStatus::Confirmed)
        .await;
    let probed: Vec<Order> = m
        .orders
        .clone()
        .list_orders(bearer(&customer, ListOrdersRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .orders
        .into_iter()
        .filter(|o| o.id != waiting.id)
        .collect();
    for o in &probed {
        let reserved = m.until(&customer, &o.id, OrderStatus::Reserved).await;
        m.payment_event(&reserved, true).await;
        m.until(&customer, &o.id, OrderStatus::Confirmed).await;
    }
    let admitted = loop {
        match place(probe.clone()).await {
            Ok(answer) => break answer.into_inner().order.expect("order"),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "PlaceOrder still refused after the saga caught up: {}",
                    status.message()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(admitted.lines.len(), 1);
    assert!(probed.len() <= 1, "{probed:?}");
}

/// The oldest open orders left out of the backlog (one here) do not refuse anyone however
/// long they wait; the order behind them does once it is older than the bound.
async fn stragglers(backend: Backend) {
    let (m, customer, apple) = start_admission(&backend, 1).await;
    let stuck = m.place(&customer, request(&[(&apple.id, 1)])).await;
    m.until(&customer, &stuck.id, OrderStatus::Reserved).await;
    // The stuck order is well past the bound, and the sweeper scanned meanwhile (every 50 ms):
    // its age alone refuses nothing.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let behind = m.place(&customer, request(&[(&apple.id, 1)])).await;
    m.until(&customer, &behind.id, OrderStatus::Reserved).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut client = m.orders.clone();
        match client
            .place_order(bearer(&customer, request(&[(&apple.id, 1)])))
            .await
        {
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                break;
            }
            Ok(placed) => {
                // Each order placed here is newer than `behind`: it stays the backlog's head.
                let placed = placed.into_inner().order.expect("order");
                assert!(placed.id > behind.id);
                assert!(
                    std::time::Instant::now() < deadline,
                    "the order behind the straggler never refused"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

on_both_backends!(
    stragglers_do_not_refuse_everyone_on_sqlite,
    stragglers_do_not_refuse_everyone_on_postgres_and_redis,
    "admission stragglers",
    stragglers
);

on_both_backends!(
    admission_refuses_while_the_saga_is_behind_on_sqlite,
    admission_refuses_while_the_saga_is_behind_on_postgres_and_redis,
    "admission",
    admission
);

on_both_backends!(
    orders_on_sqlite,
    orders_on_postgres_and_redis,
    "orders",
    lifecycle
);

on_both_backends!(
    saga_timeout_cancels_and_releases_on_sqlite,
    saga_timeout_cancels_and_releases_on_postgres_and_redis,
    "saga timeout",
    timeout
);
