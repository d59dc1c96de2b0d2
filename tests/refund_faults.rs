//! The refund path's crash test (issue 17): the mesh on Postgres + Redis, every service a
//! separate `mesh serve <service>` process (`support/cluster.rs`). Twelve confirmed orders are
//! refunded by staff, half of them whole (restocked), half in part (a unit written off, a unit
//! restocked), while the refund's steps are cut in turn:
//!
//! - order aborts right after committing a refund, before `order.refund_requested` is published
//!   (`MESH_FAULT_ABORT_AFTER_COMMIT`) and before it answers: staff retry under the same key;
//! - payment aborts right after committing a refund's finish, before `payment.refunded` is
//!   published;
//! - inventory is SIGKILLed while refunds flow, and later aborts right after committing a
//!   restock, before its `inventory.adjusted` is published;
//! - notification is SIGKILLed while refunds flow.
//!
//! Then every refund has completed exactly once: COMPLETED at order (one per key); one refund
//! at payment under `order-refund:<id>` for the amount asked, one refund at the simulated
//! processor and one ledger entry; one stock adjustment per line (RETURN +units or DAMAGE 0) and
//! stock = stocked - sold + restocked; one `order.refunded` notice per channel the customer's
//! confirmation went to, sent. Without `MESH_TEST_DATABASE_URL` it is skipped, loudly.

#[path = "support/cluster.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::{Cluster, FreshDatabase, Redis, SAGA_SERVICES as SERVICES, retryable, sign_up};
use mesh_contracts::common::v1::Money;
use mesh_contracts::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_contracts::inventory::v1::{AdjustStockRequest, AdjustmentReason};
use mesh_contracts::order::v1::order_service_client::OrderServiceClient;
use mesh_contracts::order::v1::{
    LineItem, PlaceOrderRequest, RefundLine, RefundOrderRequest, StockDisposition,
};
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::{CreateProductRequest, Product};
use mesh_testkit::bearer;
use sqlx::Row as _;

const ORDERS: usize = 12;
const PRODUCTS: usize = 3;
const STOCK_EACH: i64 = 50;
const ADMIN: &str = "admin@example.com";

type Orders = OrderServiceClient<tonic::transport::Channel>;

/// Retries `call` while it fails with a retryable code (a process down or restarting), for up to
/// a minute.
async fn retrying<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Ok(r) => return r.into_inner(),
            Err(s) if retryable(s.code()) && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
}

fn order_request(products: &[String], n: usize) -> PlaceOrderRequest {
    PlaceOrderRequest {
        idempotency_key: format!("refund-fault-{n}"),
        lines: (0..2)
            .map(|i| LineItem {
                product_id: products[(n + i) % products.len()].clone(),
                quantity: 2,
            })
            .collect(),
        ..cluster::order_request("4242424242424242")
    }
}

/// Order `n`'s refund: even orders whole (restocked), odd ones a unit of each line, the first
/// written off, the second restocked.
fn refund_request(order: &str, lines: &[String], n: usize) -> RefundOrderRequest {
    let lines = if n.is_multiple_of(2) {
        Vec::new()
    } else {
        vec![
            RefundLine {
                product_id: lines[0].clone(),
                quantity: 1,
                disposition: StockDisposition::WriteOff as i32,
                amount: None,
            },
            RefundLine {
                product_id: lines[1].clone(),
                quantity: 1,
                disposition: StockDisposition::Restock as i32,
                amount: None,
            },
        ]
    };
    RefundOrderRequest {
        id: order.into(),
        idempotency_key: format!("crash-{n}"),
        lines,
        disposition: StockDisposition::Unspecified as i32,
        reason: "crash test".into(),
    }
}

/// Asks for refund `n` of `order` (retrying under the same key): the refund's id.
async fn refund(orders: &Orders, admin: &str, order: &(String, Vec<String>), n: usize) -> String {
    let req = refund_request(&order.0, &order.1, n);
    let answer = retrying("RefundOrder", || {
        let (mut orders, req) = (orders.clone(), req.clone());
        async move { orders.refund_order(bearer(admin, req)).await }
    })
    .await;
    answer.refund.expect("refund").id
}

/// Asks for a refund while `service` is armed to abort after its next commit that emits events
/// (for order: this very refund; for payment and inventory: the refund's step there), waits for
/// the abort and restarts it. Whether it aborted.
async fn refund_through_abort(
    c: &mut Cluster,
    service: &'static str,
    admin: &str,
    order: &(String, Vec<String>),
    n: usize,
) -> (String, bool) {
    c.restart_with(
        service,
        &[("MESH_FAULT_ABORT_AFTER_COMMIT", &format!("{service}:1"))],
    )
    .await;
    let orders = OrderServiceClient::new(c.channel("order").await);
    let req = refund_request(&order.0, &order.1, n);
    let first = if service == "order" {
        // The process dies inside this call: its answer is lost, the refund committed.
        let lost = orders.clone().refund_order(bearer(admin, req)).await;
        assert!(
            lost.is_err(),
            "order answered although armed to abort: {lost:?}"
        );
        None
    } else {
        Some(refund(&orders, admin, order, n).await)
    };
    let aborted = c.wait_exit(service, Duration::from_secs(30)).await;
    eprintln!("refund fault test: {service} aborted after a commit: {aborted}");
    c.restart(service).await;
    let orders = OrderServiceClient::new(c.channel("order").await);
    let id = refund(&orders, admin, order, n).await;
    if let Some(first) = first {
        assert_eq!(first, id, "the same key, the same refund");
    }
    (id, aborted)
}

/// What went wrong, read from the services' schemas; empty when every refund completed once.
async fn problems(db: &sqlx::PgPool, refunds: &BTreeMap<String, (String, usize)>) -> Vec<String> {
    let mut problems = Vec::new();
    // Order: every refund COMPLETED, one per (order, key).
    let rows = sqlx::query(
        r#"SELECT r.id, r.order_id, r.status, r.amount_minor FROM "order".order_refunds r"#,
    )
    .fetch_all(db)
    .await
    .expect("order refunds");
    let mut amounts = BTreeMap::new();
    for r in &rows {
        let (id, status): (String, String) = (r.get("id"), r.get("status"));
        if !refunds.contains_key(&id) {
            problems.push(format!("an order refund nobody asked for: {id}"));
        }
        if status != "COMPLETED" {
            problems.push(format!("refund {id} is {status}"));
        }
        amounts.insert(id, r.get::<i64, _>("amount_minor"));
    }
    if rows.len() != refunds.len() {
        problems.push(format!(
            "{} order refunds for {} asked",
            rows.len(),
            refunds.len()
        ));
    }
    // Payment: one refund per order refund, SUCCEEDED, the amount asked; one at the processor;
    // one ledger entry.
    let rows = sqlx::query(
        "SELECT r.id, r.idempotency_key, r.status, r.amount_minor, \
         (SELECT COUNT(*) FROM payment.sim_processor_ops o WHERE o.idempotency_key = r.id AND o.kind = 'refund')::BIGINT AS at_processor, \
         (SELECT COUNT(*) FROM payment.transactions t WHERE t.kind = 'REFUND' AND t.status = 'SUCCEEDED' \
            AND t.payment_id = r.payment_id)::BIGINT AS ledger \
         FROM payment.refunds r WHERE r.idempotency_key LIKE 'order-refund:%'",
    )
    .fetch_all(db)
    .await
    .expect("payment refunds");
    let mut paid: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        let key: String = r.get("idempotency_key");
        let id = key.trim_start_matches("order-refund:").to_string();
        *paid.entry(id.clone()).or_default() += 1;
        let (status, amount, at_processor, ledger): (String, i64, i64, i64) = (
            r.get("status"),
            r.get("amount_minor"),
            r.get("at_processor"),
            r.get("ledger"),
        );
        if status != "SUCCEEDED" || Some(&amount) != amounts.get(&id) {
            problems.push(format!(
                "payment refund of {id}: {status} {amount}, asked {:?}",
                amounts.get(&id)
            ));
        }
        if at_processor != 1 || ledger != 1 {
            problems.push(format!(
                "refund {id}: {at_processor} refunds at the processor, {ledger} ledger entries"
            ));
        }
    }
    for id in refunds.keys() {
        if paid.get(id) != Some(&1) {
            problems.push(format!("refund {id} paid {:?} times", paid.get(id)));
        }
    }
    // Inventory: one adjustment per line (the request id is unique: counted by line here).
    let rows = sqlx::query(
        "SELECT request_id, delta, reason FROM inventory.adjustments WHERE request_id LIKE 'refund:%'",
    )
    .fetch_all(db)
    .await
    .expect("adjustments");
    let mut adjusted: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for r in &rows {
        let request: String = r.get("request_id");
        let refund = request.split(':').nth(1).unwrap_or_default().to_string();
        adjusted
            .entry(refund)
            .or_default()
            .push((r.get("delta"), r.get("reason")));
    }
    for (id, (_, n)) in refunds {
        let got = adjusted.get(id).cloned().unwrap_or_default();
        let want_lines = 2;
        let restocked: i64 = got.iter().map(|(d, _)| d).sum();
        let want_restocked = if n.is_multiple_of(2) { 4 } else { 1 };
        if got.len() != want_lines || restocked != want_restocked {
            problems.push(format!(
                "refund {id}: adjustments {got:?}, want {want_lines} restocking {want_restocked}"
            ));
        }
    }
    // Stock: on hand = stocked - sold + restocked by refunds; nothing reserved.
    let rows = sqlx::query(
        "SELECT s.product_id, s.on_hand, s.reserved, \
         COALESCE((SELECT SUM(l.quantity) FROM inventory.reservation_lines l JOIN inventory.reservations r ON r.id = l.reservation_id \
                   WHERE r.status = 'COMMITTED' AND l.product_id = s.product_id), 0)::BIGINT AS sold, \
         COALESCE((SELECT SUM(a.delta) FROM inventory.adjustments a \
                   WHERE a.product_id = s.product_id AND a.request_id LIKE 'refund:%'), 0)::BIGINT AS back \
         FROM inventory.stock s",
    )
    .fetch_all(db)
    .await
    .expect("stock");
    for r in &rows {
        let product: String = r.get("product_id");
        let (on_hand, reserved, sold, back): (i64, i64, i64, i64) = (
            r.get("on_hand"),
            r.get("reserved"),
            r.get("sold"),
            r.get("back"),
        );
        if on_hand != STOCK_EACH - sold + back || reserved != 0 {
            problems.push(format!(
                "product {product}: on hand {on_hand}, reserved {reserved}; stocked {STOCK_EACH}, sold {sold}, back {back}"
            ));
        }
    }
    // Notification: per refund one notice per channel the order's confirmation went to, sent.
    let rows = sqlx::query(
        "SELECT dedupe_key, status FROM notification.deliveries WHERE event_type IN ('order.confirmed', 'order.refunded')",
    )
    .fetch_all(db)
    .await
    .expect("deliveries");
    let mut confirmed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut refunded: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for r in &rows {
        let key: String = r.get("dedupe_key");
        let parts: Vec<&str> = key.split(':').collect();
        match parts.as_slice() {
            ["order.confirmed", order, channel] => confirmed
                .entry(order.to_string())
                .or_default()
                .push(channel.to_string()),
            ["order.refunded", _, refund, channel] => refunded
                .entry(refund.to_string())
                .or_default()
                .push((channel.to_string(), r.get("status"))),
            _ => {}
        }
    }
    for (id, (order, _)) in refunds {
        let mut want = confirmed.get(order).cloned().unwrap_or_default();
        want.sort();
        let got = refunded.get(id).cloned().unwrap_or_default();
        let mut channels: Vec<String> = got.iter().map(|(c, _)| c.clone()).collect();
        channels.sort();
        if want.is_empty() || channels != want || got.iter().any(|(_, s)| s != "SENT") {
            problems.push(format!(
                "refund {id}: notices {got:?}, confirmation channels {want:?}"
            ));
        }
    }
    problems
}

async fn run(base_url: String) {
    let (work, logs, redis_dir) = cluster::work_folders();
    let db = FreshDatabase::create(&base_url, "refunds").await;
    let redis = Redis::start(&redis_dir);
    let env = cluster::fault_env(&db.url, redis.url(), ADMIN);
    let mut c = Cluster::start(SERVICES, env, &logs).await;
    eprintln!("refund fault test: logs in {}", logs.display());

    // Catalog, stock, and twelve confirmed orders.
    let (admin, _) = sign_up(&c, ADMIN).await;
    let mut products = Vec::new();
    let catalog = ProductServiceClient::new(c.channel("product").await);
    let inventory = InventoryServiceClient::new(c.channel("inventory").await);
    for i in 0..PRODUCTS {
        let product = Product {
            sku: format!("REFUND-{i}"),
            name: format!("Refund product {i}"),
            price: Some(Money {
                currency_code: "EUR".into(),
                amount_minor: 100 + i as i64 * 10,
            }),
            active: true,
            ..Default::default()
        };
        let p = retrying("create product", || {
            let (mut catalog, product) = (catalog.clone(), product.clone());
            let admin = admin.clone();
            async move {
                catalog
                    .create_product(bearer(
                        &admin,
                        CreateProductRequest {
                            product: Some(product),
                        },
                    ))
                    .await
            }
        })
        .await
        .product
        .expect("product");
        let stock = AdjustStockRequest {
            location_id: "default".into(),
            product_id: p.id.clone(),
            delta: STOCK_EACH,
            reason: AdjustmentReason::Restock as i32,
            request_id: format!("stock-{i}"),
            ..Default::default()
        };
        retrying("stock", || {
            let (mut inventory, stock) = (inventory.clone(), stock.clone());
            let admin = admin.clone();
            async move { inventory.adjust_stock(bearer(&admin, stock)).await }
        })
        .await;
        products.push(p.id);
    }
    let (customer, _) = sign_up(&c, "refund-fault@example.com").await;
    let orders = OrderServiceClient::new(c.channel("order").await);
    let mut placed = Vec::new();
    for n in 0..ORDERS {
        let req = order_request(&products, n);
        let lines: Vec<String> = req.lines.iter().map(|l| l.product_id.clone()).collect();
        let order = retrying("PlaceOrder", || {
            let (mut orders, req) = (orders.clone(), req.clone());
            let customer = customer.clone();
            async move { orders.place_order(bearer(&customer, req)).await }
        })
        .await
        .order
        .expect("order");
        placed.push((order.id, lines));
    }
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let confirmed: i64 = sqlx::query_scalar(
            r#"SELECT COUNT(*) FROM "order".orders WHERE status = 'ORDER_STATUS_CONFIRMED'"#,
        )
        .fetch_one(&pool)
        .await
        .expect("orders");
        if confirmed == ORDERS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{confirmed} of {ORDERS} orders confirmed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The refunds, each step cut in turn.
    let mut refunds: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let mut aborts = Vec::new();
    for (n, service) in [(0, "order"), (1, "payment"), (2, "inventory")] {
        let (id, aborted) = refund_through_abort(&mut c, service, &admin, &placed[n], n).await;
        refunds.insert(id, (placed[n].0.clone(), n));
        aborts.push((service, aborted));
    }
    for (victim, range) in [
        ("inventory", 3..6),
        ("notification", 6..9),
        ("payment", 9..11),
    ] {
        c.kill(victim);
        let orders = OrderServiceClient::new(c.channel("order").await);
        for n in range {
            let id = refund(&orders, &admin, &placed[n], n).await;
            refunds.insert(id, (placed[n].0.clone(), n));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.restart(victim).await;
    }
    let orders = OrderServiceClient::new(c.channel("order").await);
    let last = ORDERS - 1;
    let id = refund(&orders, &admin, &placed[last], last).await;
    refunds.insert(id, (placed[last].0.clone(), last));
    // Every request again, under its key: the same refunds, nothing more.
    for (n, order) in placed.iter().enumerate() {
        let again = refund(&orders, &admin, order, n).await;
        assert_eq!(refunds.get(&again).map(|(_, k)| *k), Some(n));
    }

    // Converge, then check.
    let deadline = Instant::now() + Duration::from_secs(90);
    let found = loop {
        let found = problems(&pool, &refunds).await;
        if found.is_empty() || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let dead = c.all_running();
    eprintln!(
        "refund fault test: {} refunds, aborts after a commit {aborts:?}, problems: {}",
        refunds.len(),
        found.len()
    );
    pool.close().await;
    drop(c);
    db.drop_now().await;
    assert!(dead.is_empty(), "processes died on their own: {dead:?}");
    assert!(
        found.is_empty(),
        "{} violations, first: {:#?}",
        found.len(),
        &found[..found.len().min(20)]
    );
    assert!(
        aborts.iter().all(|(_, aborted)| *aborted),
        "a fault switch never fired: {aborts:?}"
    );
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_complete_once_through_crashes() {
    let Some(url) = mesh_testkit::postgres_url("the refund fault test") else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(240), run(url))
        .await
        .expect("the refund fault test finishes within 4 minutes");
}
