//! Refunds of confirmed orders end to end, every service real (auth, product, inventory,
//! payment with its simulated processor, notification, order) over gRPC: on SQLite + the
//! in-process bus and on Postgres + Redis.
//!
//! A partial refund (one unit written off, one restocked) pays back the lines' share at payment,
//! takes the restocked unit back on hand and records the written-off one, tells the customer,
//! and leaves the order CONFIRMED with the refunded units and amount on it; the same request
//! again changes nothing, another request under its key is refused, more units than are left or
//! were bought are refused naming the field, a customer and staff of another store are refused.
//! Staff cancelling the confirmed order refund the rest (order REFUNDED, payment REFUNDED), and
//! a store order refunded whole comes back to its store's stock. A refund payment cannot pay
//! back FAILS and the goods follow the money: its units count as sold again (the order is
//! CONFIRMED again), inventory never takes them back and the customer is not told of a refund.

mod common;

use std::time::Duration;

use common::{Backend, Mesh, Payment, card, request, start_with};
use mesh_contracts::order::v1::*;
use mesh_testkit::bearer;
use sqlx::Row as _;
use tonic::Code;

const GOOD: &str = "4242424242424242";

async fn place(m: &Mesh, token: &str, mut req: PlaceOrderRequest) -> Order {
    req.payment_method = card(GOOD);
    m.place(token, req).await
}

/// A staff account without stores: its token.
async fn staff_token(m: &Mesh) -> String {
    m.auth.store_staff_token(&[]).await.1
}

fn refund_line(product: &str, quantity: i64, disposition: StockDisposition) -> RefundLine {
    RefundLine {
        product_id: product.into(),
        quantity,
        disposition: disposition as i32,
        amount: None,
    }
}

fn ask(order: &str, key: &str, lines: Vec<RefundLine>) -> RefundOrderRequest {
    RefundOrderRequest {
        id: order.into(),
        idempotency_key: key.into(),
        lines,
        disposition: StockDisposition::Unspecified as i32,
        reason: "damaged in transit".into(),
    }
}

async fn refund(m: &Mesh, token: &str, req: RefundOrderRequest) -> RefundOrderResponse {
    m.orders
        .clone()
        .refund_order(bearer(token, req))
        .await
        .expect("refund order")
        .into_inner()
}

fn assert_status<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    field: &str,
) {
    let s = r.expect_err("expected an error status");
    assert_eq!(s.code(), code, "{}", s.message());
    assert!(
        s.message().starts_with(field),
        "`{}` names `{field}`",
        s.message()
    );
}

fn minor(m: &Option<mesh_contracts::common::v1::Money>) -> i64 {
    m.as_ref().map_or(0, |m| m.amount_minor)
}

/// Polls order `id` until its refund `refund` is COMPLETED (bounded).
async fn until_completed(m: &Mesh, id: &str, refund: &str) -> Order {
    until_refund(m, id, refund, RefundStatus::Completed).await
}

/// Polls order `id` until its refund `refund` is `want` (bounded).
async fn until_refund(m: &Mesh, id: &str, refund: &str, want: RefundStatus) -> Order {
    m.until_order(
        &m.admin,
        id,
        &format!("refund {refund} to become {want:?}"),
        |o| {
            o.refunds
                .iter()
                .any(|r| r.id == refund && r.status == want as i32)
        },
    )
    .await
}

/// Payment's record of `order`: (status, refunded), polled until it is `want` (bounded).
async fn until_payment(m: &Mesh, order: &str, want: (&str, i64)) {
    m.until_payment(order, |p| p.0 == want.0 && p.2 == want.1)
        .await;
}

/// Payment's refunds of `order`: (amount, status, key).
async fn payment_refunds(m: &Mesh, order: &str) -> Vec<(i64, String, String)> {
    sqlx::query(
        "SELECT r.amount_minor, r.status, r.idempotency_key FROM refunds r JOIN payments p ON p.id = r.payment_id \
         WHERE p.order_id = $1 ORDER BY r.created_at",
    )
    .bind(order)
    .fetch_all(m.payment_db.pool())
    .await
    .expect("refunds")
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Notification's SENT deliveries of `order.refunded` to `customer`, polled until there are
/// `want` (bounded); their bodies.
async fn until_notified(m: &Mesh, customer: &str, want: usize) -> Vec<String> {
    let (_, sent) = mesh_testkit::until_value(
        Duration::from_secs(30),
        &format!("{want} refund notices sent"),
        || async {
            let rows = sqlx::query(
                "SELECT body, status FROM deliveries WHERE user_id = $1 AND event_type = 'order.refunded' ORDER BY created_at",
            )
            .bind(customer)
            .fetch_all(m.notification_db.pool())
            .await
            .expect("deliveries");
            assert!(
                rows.len() <= want,
                "more refund notices than refunds: {}",
                rows.len()
            );
            let sent: Vec<String> = rows
                .iter()
                .filter(|r| r.get::<String, _>(1) == "SENT")
                .map(|r| r.get(0))
                .collect();
            (rows.len(), sent)
        },
        |(rows, sent)| *rows == want && sent.len() == want,
    )
    .await;
    sent
}

/// Inventory's adjustment of `product` for order refund `refund`: (delta, reason, location).
async fn adjustment(m: &Mesh, refund: &str, product: &str) -> Option<(i64, i64, String)> {
    sqlx::query("SELECT delta, reason, location_id FROM adjustments WHERE request_id = $1")
        .bind(format!("refund:{refund}:{product}"))
        .fetch_optional(m.inventory_db.pool())
        .await
        .expect("adjustments")
        .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// A mesh with the real payment and a CONFIRMED order of 3 apples (250 each) and a pear (100),
/// paid (850), its stock taken: 7 apples and 4 pears left.
struct Confirmed {
    m: Mesh,
    customer: String,
    staff: String,
    apple: mesh_contracts::product::v1::Product,
    pear: mesh_contracts::product::v1::Product,
    order: Order,
}

async fn confirmed(backend: Backend) -> Confirmed {
    let m = start_with(
        &backend,
        Duration::from_secs(60),
        Payment::Real(Default::default()),
    )
    .await;
    let customer = m.auth.customer_token().await;
    let staff = staff_token(&m).await;
    let apple = m.product(250, "EUR", 10).await;
    let pear = m.product(100, "EUR", 5).await;
    let order = place(&m, &customer, request(&[(&apple.id, 3), (&pear.id, 1)])).await;
    let order = m.until(&customer, &order.id, OrderStatus::Confirmed).await;
    assert_eq!(minor(&order.total), 850);
    m.until_stock(&apple.id, (7, 0)).await;
    m.until_stock(&pear.id, (4, 0)).await;
    until_payment(&m, &order.id, ("SUCCEEDED", 0)).await;
    Confirmed {
        m,
        customer,
        staff,
        apple,
        pear,
        order,
    }
}

async fn refunds(backend: Backend) {
    let Confirmed {
        m,
        customer,
        staff,
        apple,
        pear,
        order,
    } = confirmed(backend).await;

    // Refused before anything is written: a customer, a bad key or reason, units not bought.
    let partial = ask(
        &order.id,
        "r1",
        vec![
            refund_line(&apple.id, 1, StockDisposition::WriteOff),
            refund_line(&pear.id, 1, StockDisposition::Unspecified),
        ],
    );
    assert_status(
        m.orders
            .clone()
            .refund_order(bearer(&customer, partial.clone()))
            .await,
        Code::PermissionDenied,
        "",
    );
    let mut no_reason = partial.clone();
    no_reason.reason = " ".into();
    assert_status(
        m.orders
            .clone()
            .refund_order(bearer(&staff, no_reason))
            .await,
        Code::InvalidArgument,
        "reason",
    );
    assert_status(
        m.orders
            .clone()
            .refund_order(bearer(&staff, ask(&order.id, "cancel", Vec::new())))
            .await,
        Code::InvalidArgument,
        "idempotency_key",
    );
    assert_status(
        m.orders
            .clone()
            .refund_order(bearer(
                &staff,
                ask(
                    &order.id,
                    "r0",
                    vec![refund_line(&apple.id, 4, StockDisposition::Restock)],
                ),
            ))
            .await,
        Code::InvalidArgument,
        "lines[0].quantity",
    );

    // Partial: one apple written off, the pear restocked. 250 + 100 back.
    let first = refund(&m, &staff, partial.clone()).await;
    let r1 = first.refund.expect("refund");
    assert_eq!(minor(&r1.amount), 350);
    assert_eq!(r1.lines.len(), 2);
    assert_eq!(
        first.order.as_ref().unwrap().status,
        OrderStatus::Confirmed as i32
    );
    let done = until_completed(&m, &order.id, &r1.id).await;
    assert_eq!(done.status, OrderStatus::Confirmed as i32, "partial");
    assert_eq!(minor(&done.refunded_total), 350);
    assert_eq!(
        done.lines
            .iter()
            .map(|l| l.refunded_quantity)
            .collect::<Vec<_>>(),
        [1, 1]
    );
    let completed = &done.refunds[0];
    assert!(!completed.payment_refund_id.is_empty());
    until_payment(&m, &order.id, ("PARTIALLY_REFUNDED", 350)).await;
    m.until_stock(&pear.id, (5, 0)).await;
    assert_eq!(
        m.stock(&apple.id).await,
        (7, 0),
        "written off, not restocked"
    );
    assert_eq!(
        adjustment(&m, &r1.id, &apple.id).await,
        Some((0, 3, "default".into())),
        "the write-off is recorded (DAMAGE)"
    );
    assert_eq!(
        adjustment(&m, &r1.id, &pear.id).await,
        Some((1, 5, "default".into())),
        "the restock is recorded (RETURN)"
    );
    let notices = until_notified(&m, &order.customer_id, 1).await;
    assert!(notices[0].contains("350"), "{}", notices[0]);

    // The same request again: the same refund, nothing moves twice.
    let again = refund(&m, &staff, partial.clone()).await;
    assert_eq!(again.refund.unwrap().id, r1.id);
    let mut other = partial.clone();
    other.lines.pop();
    assert_status(
        m.orders.clone().refund_order(bearer(&staff, other)).await,
        Code::AlreadyExists,
        "idempotency_key",
    );
    // 2 apples are left: 3 is more than that (but not more than bought).
    assert_status(
        m.orders
            .clone()
            .refund_order(bearer(
                &staff,
                ask(
                    &order.id,
                    "r2",
                    vec![refund_line(&apple.id, 3, StockDisposition::Restock)],
                ),
            ))
            .await,
        Code::FailedPrecondition,
        "lines[0].quantity",
    );
    assert_status(
        m.orders
            .clone()
            .refund_order(bearer(
                &staff,
                ask(
                    &order.id,
                    "r2",
                    vec![refund_line(&pear.id, 1, StockDisposition::Restock)],
                ),
            ))
            .await,
        Code::FailedPrecondition,
        "lines[0].quantity",
    );
    assert_eq!(payment_refunds(&m, &order.id).await.len(), 1);

    // Staff cancel the confirmed order: the rest (2 apples, 500) refunded and restocked.
    let cancelled = m
        .orders
        .clone()
        .cancel_order(bearer(
            &staff,
            CancelOrderRequest {
                id: order.id.clone(),
                reason: "customer changed their mind".into(),
            },
        ))
        .await
        .expect("staff cancel")
        .into_inner()
        .order
        .unwrap();
    assert_eq!(cancelled.status, OrderStatus::Refunded as i32);
    assert_eq!(cancelled.refunds.len(), 2);
    let r2 = cancelled.refunds[1].clone();
    assert_eq!(r2.idempotency_key, "cancel");
    assert_eq!(minor(&r2.amount), 500);
    until_completed(&m, &order.id, &r2.id).await;
    until_payment(&m, &order.id, ("REFUNDED", 850)).await;
    m.until_stock(&apple.id, (9, 0)).await;
    until_notified(&m, &order.customer_id, 2).await;
    let keys: Vec<String> = payment_refunds(&m, &order.id)
        .await
        .into_iter()
        .map(|(_, status, key)| {
            assert_eq!(status, "SUCCEEDED");
            key
        })
        .collect();
    assert_eq!(
        keys,
        [
            format!("order-refund:{}", r1.id),
            format!("order-refund:{}", r2.id)
        ]
    );
    // Cancelling again changes nothing; nothing is left to refund.
    let twice = m
        .orders
        .clone()
        .cancel_order(bearer(
            &staff,
            CancelOrderRequest {
                id: order.id.clone(),
                reason: String::new(),
            },
        ))
        .await
        .expect("cancel again")
        .into_inner()
        .order
        .unwrap();
    assert_eq!(twice.refunds.len(), 2);
    assert_status(
        m.orders
            .clone()
            .refund_order(bearer(&staff, ask(&order.id, "r3", Vec::new())))
            .await,
        Code::FailedPrecondition,
        "id",
    );

    // A store order: staff without that store are refused; the whole order (empty lines)
    // comes back to the store's stock.
    m.restock_at("berlin-hbf", &apple.id, 2).await;
    let mut at_store = request(&[(&apple.id, 2)]);
    at_store.store_id = "berlin-hbf".into();
    let store_order = place(&m, &customer, at_store).await;
    let store_order = m
        .until(&customer, &store_order.id, OrderStatus::Confirmed)
        .await;
    // Inventory commits the reservation when it sees `order.confirmed`, just after.
    m.until_stock_at("berlin-hbf", &apple.id, (0, 0)).await;
    assert_status(
        m.orders
            .clone()
            .refund_order(bearer(&staff, ask(&store_order.id, "w", Vec::new())))
            .await,
        Code::PermissionDenied,
        "id",
    );
    let whole = refund(&m, &m.admin, ask(&store_order.id, "w", Vec::new())).await;
    let rw = whole.refund.unwrap();
    assert_eq!(minor(&rw.amount), 500);
    assert_eq!(whole.order.unwrap().status, OrderStatus::Refunded as i32);
    until_completed(&m, &store_order.id, &rw.id).await;
    until_payment(&m, &store_order.id, ("REFUNDED", 500)).await;
    m.until_stock_at("berlin-hbf", &apple.id, (2, 0)).await;
    assert_eq!(m.stock(&apple.id).await, (9, 0), "not the online stock");
    until_notified(&m, &order.customer_id, 3).await;
}

on_both_backends!(
    staff_refund_orders_whole_and_partly_on_sqlite,
    staff_refund_orders_whole_and_partly_on_postgres_and_redis,
    "order refunds",
    refunds
);

/// A refund payment cannot pay back: staff paid most of the payment back by hand, so the
/// order's whole refund is refused at payment and FAILS.
async fn failed_refund(backend: Backend) {
    let Confirmed {
        m,
        staff,
        apple,
        pear,
        order,
        ..
    } = confirmed(backend).await;
    m.payments
        .clone()
        .refund(bearer(
            &m.admin,
            mesh_contracts::payment::v1::RefundRequest {
                payment_id: order.payment_id.clone(),
                amount: Some(mesh_contracts::common::v1::Money {
                    currency_code: "EUR".into(),
                    amount_minor: 600,
                }),
                reason: "goodwill, by hand".into(),
                idempotency_key: "by-hand".into(),
            },
        ))
        .await
        .expect("a refund by hand at payment");
    until_payment(&m, &order.id, ("PARTIALLY_REFUNDED", 600)).await;

    // The whole order (850) is more than the 250 left: REFUNDED at first (the answer may
    // already show the outcome, payment refuses at once), then FAILED, and the sale stands again.
    let whole = refund(&m, &staff, ask(&order.id, "all", Vec::new()))
        .await
        .refund;
    let whole = whole.expect("refund");
    assert_eq!(minor(&whole.amount), 850);
    let failed = whole.id;
    until_refund(&m, &order.id, &failed, RefundStatus::Failed).await;
    // Sold again: CONFIRMED (written with the FAILED status; polled, since GetOrder reads the
    // order and its refunds in two statements).
    let after = m.until(&m.admin, &order.id, OrderStatus::Confirmed).await;
    assert_eq!(minor(&after.refunded_total), 0);
    assert_eq!(
        after
            .lines
            .iter()
            .map(|l| l.refunded_quantity)
            .collect::<Vec<_>>(),
        [0, 0],
        "the units can be refunded anew"
    );
    assert!(
        after
            .status_history
            .last()
            .is_some_and(|h| h.reason.contains(&failed)),
        "{:?}",
        after.status_history
    );

    // A pear (100 of the 250 left) goes through and comes back to stock.
    let pear_refund = refund(
        &m,
        &staff,
        ask(
            &order.id,
            "pear",
            vec![refund_line(&pear.id, 1, StockDisposition::Restock)],
        ),
    )
    .await
    .refund
    .unwrap()
    .id;
    until_completed(&m, &order.id, &pear_refund).await;
    m.until_stock(&pear.id, (5, 0)).await;
    // Inventory handles order's events in order: the pear's restock is in, so the failed
    // refund's would be by now. Nothing of it came back.
    for product in [&apple.id, &pear.id] {
        assert_eq!(adjustment(&m, &failed, product).await, None);
    }
    assert_eq!(m.stock(&apple.id).await, (7, 0), "the apples stay sold");
    let notices = until_notified(&m, &order.customer_id, 1).await;
    assert!(
        notices[0].contains("100"),
        "only the pear's refund: {}",
        notices[0]
    );
}

on_both_backends!(
    failed_refund_leaves_the_goods_sold_on_sqlite,
    failed_refund_leaves_the_goods_sold_on_postgres_and_redis,
    "order failed refund",
    failed_refund
);
