//! The order saga end to end, every service real (auth, product, inventory, payment with its
//! simulated card processor, order), over gRPC, in one process: on SQLite + the in-process bus
//! and on Postgres + Redis. A good card confirms the order and sells the stock; a declined card
//! cancels it and restores the stock; an order short of stock is cancelled and never charged; a
//! payment slower than the saga timeout is cancelled, its stock released, and the late capture
//! refunded.

mod common;

use std::time::Duration;

use common::{Backend, Mesh, Payment, card, request, start_with};
use mesh_contracts::order::v1::*;
use sqlx::Row as _;

const GOOD: &str = "4242424242424242";
const DECLINED: &str = "4000000000000002";
const SLOW: &str = "4000000000000259";

async fn place(m: &Mesh, token: &str, lines: &[(&str, i64)], number: &str) -> Order {
    let mut req = request(lines);
    req.payment_method = card(number);
    m.place(token, req).await
}

/// Payment's record of `order`: (status, amount, refunded), polled until `want` (bounded).
async fn until_payment(m: &Mesh, order: &str, want: &str) -> (String, i64, i64) {
    m.until_payment(order, |p| p.0 == want).await
}

async fn charges(m: &Mesh, order: &str) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM payments WHERE order_id = $1")
        .bind(order)
        .fetch_one(m.payment_db.pool())
        .await
        .expect("payments")
        .get("n")
}

async fn paths(backend: Backend) {
    let m = start_with(
        &backend,
        Duration::from_secs(60),
        Payment::Real(Default::default()),
    )
    .await;
    let customer = m.auth.customer_token().await;
    let apple = m.product(250, "EUR", 5).await;
    let pear = m.product(100, "EUR", 1).await;

    // A good card: confirmed, charged once, stock sold.
    let order = place(&m, &customer, &[(&apple.id, 2)], GOOD).await;
    let confirmed = m.until(&customer, &order.id, OrderStatus::Confirmed).await;
    assert!(!confirmed.payment_id.is_empty() && !confirmed.reservation_id.is_empty());
    assert_eq!(confirmed.card_last4, "4242");
    assert_eq!(
        until_payment(&m, &order.id, "SUCCEEDED").await,
        ("SUCCEEDED".into(), 500, 0)
    );
    m.until_stock(&apple.id, (3, 0)).await;

    // A declined card: cancelled, stock restored, nothing captured.
    let declined = place(&m, &customer, &[(&apple.id, 1), (&pear.id, 1)], DECLINED).await;
    let declined = m
        .until(&customer, &declined.id, OrderStatus::Cancelled)
        .await;
    assert!(
        declined.cancel_reason.starts_with("PAYMENT_FAILED"),
        "{}",
        declined.cancel_reason
    );
    until_payment(&m, &declined.id, "FAILED").await;
    m.until_stock(&apple.id, (3, 0)).await;
    m.until_stock(&pear.id, (1, 0)).await;

    // Out of stock: cancelled, never charged.
    let short = place(&m, &customer, &[(&pear.id, 2)], GOOD).await;
    let short = m.until(&customer, &short.id, OrderStatus::Cancelled).await;
    assert!(
        short.cancel_reason.starts_with("OUT_OF_STOCK"),
        "{}",
        short.cancel_reason
    );
    // The next order is charged, so payment has seen the rejection by then.
    let next = place(&m, &customer, &[(&pear.id, 1)], GOOD).await;
    m.until(&customer, &next.id, OrderStatus::Confirmed).await;
    assert_eq!(charges(&m, &short.id).await, 0);
    m.until_stock(&pear.id, (0, 0)).await;
}

async fn timeout(backend: Backend) {
    let settings = mesh_payment::PaymentSettings {
        slow_card_delay: Duration::from_secs(4),
        ..Default::default()
    };
    let m = start_with(&backend, Duration::from_secs(1), Payment::Real(settings)).await;
    let customer = m.auth.customer_token().await;
    let apple = m.product(250, "EUR", 5).await;
    // The processor answers after the saga timeout: cancelled, released, the capture refunded.
    let order = place(&m, &customer, &[(&apple.id, 2)], SLOW).await;
    let cancelled = m.until(&customer, &order.id, OrderStatus::Cancelled).await;
    assert!(
        cancelled.cancel_reason.starts_with("TIMEOUT"),
        "{}",
        cancelled.cancel_reason
    );
    m.until_stock(&apple.id, (5, 0)).await;
    let (status, amount, refunded) = until_payment(&m, &order.id, "REFUNDED").await;
    assert_eq!((status.as_str(), amount, refunded), ("REFUNDED", 500, 500));
    let after = m.until(&customer, &order.id, OrderStatus::Cancelled).await;
    assert!(
        after.payment_id.is_empty(),
        "a late capture does not revive the order"
    );
}

on_both_backends!(
    saga_confirms_declines_and_rejects_on_sqlite,
    saga_confirms_declines_and_rejects_on_postgres_and_redis,
    "saga paths",
    paths
);

on_both_backends!(
    saga_timeout_refunds_a_late_capture_on_sqlite,
    saga_timeout_refunds_a_late_capture_on_postgres_and_redis,
    "saga timeout with payment",
    timeout
);

/// On Postgres order confirms a paid order with a read and one statement. When the order's
/// reservation id changes between the two (inventory's `inventory.reserved` landing late), that
/// statement writes nothing (no status, no history entry, no event) and reports the race; the
/// confirmation run again then confirms the order as it is now, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_raced_by_a_new_reservation_id_writes_nothing_and_confirms_once_on_postgres()
{
    use mesh_contracts::events::v1::OrderConfirmed;
    use mesh_order::{store, transitions};
    use mesh_runtime::outbox::Event;

    let Some(backend) = Backend::real("confirmation race") else {
        return;
    };
    let m = start_with(&backend, Duration::from_secs(60), Payment::Fake).await;
    let customer = m.auth.customer_token().await;
    let apple = m.product(250, "EUR", 5).await;
    let order = m.place(&customer, request(&[(&apple.id, 1)])).await;
    m.until(&customer, &order.id, OrderStatus::Reserved).await;

    let changes = store::Changes {
        payment_id: Some("pay-race"),
        ..Default::default()
    };
    let step = store::Transition {
        id: &order.id,
        from: store::OPEN,
        to: OrderStatus::Confirmed,
        changes: &changes,
        reason: "payment.succeeded",
        event_id: "ev-race",
        now: store::now_us(),
    };
    let db = m.order_db.clone();
    let mut tx = m.order_db.begin().await.expect("begin");
    let emitted = step
        .emitting(&mut tx, |o| {
            // Between the read and the statement: a new reservation id, committed elsewhere.
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    sqlx::query("UPDATE orders SET reservation_id = 'res-late' WHERE id = $1")
                        .bind(&o.id)
                        .execute(db.pool())
                        .await
                        .expect("late reservation id");
                })
            });
            let payload = OrderConfirmed {
                order_id: o.id.clone(),
                reservation_id: o.reservation_id.clone(),
                ..Default::default()
            };
            Event::new("order.confirmed", &o.id, "OrderConfirmed", &payload)
        })
        .await
        .expect("emitting");
    assert!(matches!(emitted, store::Emitted::Raced), "{emitted:?}");
    let confirmed = transitions::confirm(&mut tx, &order.id, "pay-race", "ev-race")
        .await
        .expect("confirm")
        .expect("the order is open");
    tx.commit().await.expect("commit");
    assert_eq!(confirmed.reservation_id, "res-late");
    assert_eq!(confirmed.payment_id, "pay-race");

    let count = |sql: &'static str| {
        let pool = m.order_db.pool().clone();
        let id = order.id.clone();
        async move {
            sqlx::query(sql)
                .bind(id)
                .fetch_one(&pool)
                .await
                .expect("count")
                .get::<i64, _>("n")
        }
    };
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM order_status_history WHERE order_id = $1 AND event_id = 'ev-race'").await,
        1,
        "one history entry for the confirmation"
    );
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM mesh_outbox WHERE subject = $1 AND event_type = 'order.confirmed'").await,
        1,
        "one order.confirmed"
    );
    let now = m.until(&customer, &order.id, OrderStatus::Confirmed).await;
    assert_eq!(now.reservation_id, "res-late");
}
