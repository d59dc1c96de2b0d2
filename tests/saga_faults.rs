//! The order saga's fault test (issues 5 and 15): the mesh on Postgres + Redis with every service
//! a separate `mesh serve <service>` process, with the event settings' defaults (claim time
//! 10 s, dead consumers taken over after 1.5 s, saga timeout 30 s).
//!
//! 1. Inventory is SIGKILLed and restarted while good-card orders flow: every one of them is
//!    CONFIRMED (none cancelled by the saga timeout), soon after the restart: the dead consumer's
//!    events are taken over by its heartbeat, not after the claim time.
//! 2. 500 orders from concurrent clients while inventory, payment, Redis, order and notification
//!    are SIGKILLed and restarted in turn, and inventory and order are restarted with a fault
//!    switch that aborts them right after a commit, before its events are published
//!    (`MESH_FAULT_ABORT_AFTER_COMMIT`). Then every invariant of `/docs/saga.md` is checked in the
//!    services' databases:
//!
//! - every order ends CONFIRMED or CANCELLED, one order per idempotency key;
//! - no order is charged twice; a confirmed order has one captured, unrefunded charge; a
//!   cancelled one none left (declined, never charged, or refunded);
//! - stock is conserved: per product, on hand + sold = what was stocked, nothing left reserved,
//!   and what was sold is exactly the confirmed orders' lines;
//! - every cancelled order's reservation is released (or was never made);
//! - every confirmed order is notified exactly once per channel.
//!
//! Redis is the test's own `redis-server` (AOF, fsync always) on a free port, so restarting it
//! loses nothing; the database is a fresh one per run. Bounded to 4 minutes. Without
//! `MESH_TEST_DATABASE_URL` it is skipped, loudly.

#[path = "support/cluster.rs"]
mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::{Cluster, FreshDatabase, Redis, SAGA_SERVICES as SERVICES, retryable, sign_up};
use mesh_contracts::common::v1::{Money, payment_method};
use mesh_contracts::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_contracts::inventory::v1::{AdjustStockRequest, AdjustmentReason};
use mesh_contracts::order::v1::order_service_client::OrderServiceClient;
use mesh_contracts::order::v1::{LineItem, PlaceOrderRequest};
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::{CreateProductRequest, Product};
use mesh_testkit::bearer;
use sqlx::Row as _;
use tokio::sync::Mutex;
use tonic::Code;

const ORDERS: usize = 500;
/// Good-card orders placed while inventory is killed (phase 1).
const KILL_ORDERS: usize = 60;
const CLIENTS: usize = 25;
const PRODUCTS: usize = 12;
const STOCK_EACH: i64 = 100;
const ADMIN: &str = "admin@example.com";
const GOOD_CARD: &str = "4242424242424242";
const DECLINED_CARD: &str = "4000000000000002";

/// Places one order, retrying transient failures with the same idempotency key.
async fn place(
    orders: &mut OrderServiceClient<tonic::transport::Channel>,
    token: &str,
    req: PlaceOrderRequest,
    until: Instant,
) -> String {
    loop {
        match orders.place_order(bearer(token, req.clone())).await {
            Ok(r) => return r.into_inner().order.expect("order").id,
            Err(s) if retryable(s.code()) && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("PlaceOrder {}: {s:?}", req.idempotency_key),
        }
    }
}

fn order_request(products: &[String], n: usize) -> PlaceOrderRequest {
    let lines = 1 + n % 3;
    let card = if n % 7 == 3 { DECLINED_CARD } else { GOOD_CARD };
    PlaceOrderRequest {
        idempotency_key: format!("fault-{n}"),
        customer_id: String::new(),
        lines: (0..lines)
            .map(|i| LineItem {
                product_id: products[(n * 5 + i * 3) % products.len()].clone(),
                quantity: 1 + ((n + i) % 3) as i64,
            })
            .collect(),
        ..cluster::order_request(card)
    }
}

/// Kills and restarts inventory, payment, Redis, order and notification in turn, and aborts
/// inventory and order right after a commit, until `done`, at least once each.
async fn chaos(
    cluster: Arc<Mutex<Cluster>>,
    redis: Arc<Mutex<Redis>>,
    done: Arc<AtomicBool>,
) -> (usize, usize) {
    let mut rounds = 0;
    let mut aborts = 0;
    loop {
        // The aborts first: they need orders still flowing (commits that emit events).
        for victim in [
            "abort order",
            "inventory",
            "abort inventory",
            "payment",
            "redis",
            "order",
            "notification",
        ] {
            tokio::time::sleep(Duration::from_millis(700)).await;
            if let Some(service) = victim.strip_prefix("abort ") {
                let service: &'static str = if service == "order" {
                    "order"
                } else {
                    "inventory"
                };
                let mut c = cluster.lock().await;
                // Its second commit that emits events is its last: the process aborts before
                // publishing them, and the restarted process's sweep must.
                let switch = format!("{service}:2");
                c.restart_with(service, &[("MESH_FAULT_ABORT_AFTER_COMMIT", &switch)])
                    .await;
                let aborted = c.wait_exit(service, Duration::from_secs(15)).await;
                eprintln!("fault test: {service} aborted after a commit: {aborted}");
                if aborted {
                    aborts += 1;
                }
                c.restart(service).await;
            } else if victim == "redis" {
                let mut r = redis.lock().await;
                r.kill();
                tokio::time::sleep(Duration::from_millis(700)).await;
                r.restart();
            } else {
                let mut c = cluster.lock().await;
                c.kill(victim);
                tokio::time::sleep(Duration::from_millis(700)).await;
                c.restart(victim).await;
            }
        }
        rounds += 1;
        if done.load(Ordering::SeqCst) {
            return (rounds, aborts);
        }
    }
}

/// Everything the invariants are checked on, read from the services' schemas.
struct Snapshot {
    orders: BTreeMap<String, (String, String)>, // id -> (status, idempotency key)
    open: usize,
    problems: Vec<String>,
}

async fn snapshot(
    db: &sqlx::PgPool,
    stocked: &BTreeMap<String, i64>,
    notifications: bool,
    placed: usize,
) -> Snapshot {
    let mut problems = Vec::new();
    let rows = sqlx::query(r#"SELECT id, status, idempotency_key FROM "order".orders"#)
        .fetch_all(db)
        .await
        .expect("orders");
    let orders: BTreeMap<String, (String, String)> = rows
        .iter()
        .map(|r| (r.get("id"), (r.get("status"), r.get("idempotency_key"))))
        .collect();
    let open = orders
        .values()
        .filter(|(s, _)| s != "ORDER_STATUS_CONFIRMED" && s != "ORDER_STATUS_CANCELLED")
        .count();
    if open > 0 {
        problems.push(format!("{open} orders are not final"));
    }
    let keys: BTreeSet<&String> = orders.values().map(|(_, k)| k).collect();
    if keys.len() != orders.len() || orders.len() != placed {
        problems.push(format!(
            "{} orders for {} keys; {placed} were placed",
            orders.len(),
            keys.len()
        ));
    }
    let status_of = |id: &str| orders.get(id).map(|(s, _)| s.as_str()).unwrap_or("UNKNOWN");

    // Reservations: released for cancelled orders, committed for confirmed ones.
    let rows = sqlx::query("SELECT reference_id, status FROM inventory.reservations")
        .fetch_all(db)
        .await
        .expect("reservations");
    let mut reservation: BTreeMap<String, String> = BTreeMap::new();
    for r in &rows {
        reservation.insert(r.get("reference_id"), r.get("status"));
    }
    for (id, (status, _)) in &orders {
        let held = reservation.get(id).map(String::as_str);
        match status.as_str() {
            "ORDER_STATUS_CONFIRMED" if held != Some("COMMITTED") => {
                problems.push(format!("confirmed order {id} has reservation {held:?}"))
            }
            "ORDER_STATUS_CANCELLED" if matches!(held, Some("ACTIVE") | Some("COMMITTED")) => {
                problems.push(format!(
                    "cancelled order {id} still has reservation {held:?}"
                ))
            }
            _ => {}
        }
    }

    // Stock conservation: on hand + sold = stocked; nothing reserved; sold = confirmed lines.
    let rows = sqlx::query(
        "SELECT s.product_id, s.on_hand, s.reserved, \
         COALESCE((SELECT SUM(l.quantity) FROM inventory.reservation_lines l JOIN inventory.reservations r ON r.id = l.reservation_id \
                   WHERE r.status = 'COMMITTED' AND l.product_id = s.product_id), 0)::BIGINT AS sold \
         FROM inventory.stock s",
    )
    .fetch_all(db)
    .await
    .expect("stock");
    let confirmed_lines = sqlx::query(
        r#"SELECT l.product_id, SUM(l.quantity)::BIGINT AS units FROM "order".order_lines l JOIN "order".orders o ON o.id = l.order_id
           WHERE o.status = 'ORDER_STATUS_CONFIRMED' GROUP BY l.product_id"#,
    )
    .fetch_all(db)
    .await
    .expect("confirmed lines");
    let confirmed_units: BTreeMap<String, i64> = confirmed_lines
        .iter()
        .map(|r| (r.get("product_id"), r.get("units")))
        .collect();
    for r in &rows {
        let product: String = r.get("product_id");
        let (on_hand, reserved, sold): (i64, i64, i64) =
            (r.get("on_hand"), r.get("reserved"), r.get("sold"));
        let initial = stocked.get(&product).copied().unwrap_or_default();
        if on_hand + sold != initial {
            problems.push(format!(
                "product {product}: on hand {on_hand} + sold {sold} != stocked {initial}"
            ));
        }
        if reserved != 0 {
            problems.push(format!(
                "product {product}: {reserved} units still reserved"
            ));
        }
        let want = confirmed_units.get(&product).copied().unwrap_or_default();
        if sold != want {
            problems.push(format!(
                "product {product}: {sold} units sold but confirmed orders hold {want}"
            ));
        }
    }

    // Charges: at most one per order; confirmed = captured and not refunded; cancelled = none
    // left captured.
    let rows =
        sqlx::query("SELECT order_id, status, amount_minor, refunded_minor FROM payment.payments")
            .fetch_all(db)
            .await
            .expect("payments");
    let mut payments: BTreeMap<String, Vec<(String, i64, i64)>> = BTreeMap::new();
    for r in &rows {
        payments.entry(r.get("order_id")).or_default().push((
            r.get("status"),
            r.get("amount_minor"),
            r.get("refunded_minor"),
        ));
    }
    let ledger = sqlx::query(
        "SELECT order_id, COALESCE(SUM(CASE WHEN status = 'SUCCEEDED' THEN amount_minor ELSE 0 END), 0)::BIGINT AS net, \
         SUM(CASE WHEN kind = 'CHARGE' AND status = 'SUCCEEDED' THEN 1 ELSE 0 END)::BIGINT AS captures \
         FROM payment.transactions GROUP BY order_id",
    )
    .fetch_all(db)
    .await
    .expect("ledger");
    let net: BTreeMap<String, (i64, i64)> = ledger
        .iter()
        .map(|r| {
            (
                r.get("order_id"),
                (r.get::<i64, _>("net"), r.get::<i64, _>("captures")),
            )
        })
        .collect();
    let totals: BTreeMap<String, i64> =
        sqlx::query(r#"SELECT id, total_minor FROM "order".orders"#)
            .fetch_all(db)
            .await
            .expect("totals")
            .iter()
            .map(|r| (r.get("id"), r.get("total_minor")))
            .collect();
    for (id, (status, _)) in &orders {
        let p = payments.get(id).cloned().unwrap_or_default();
        let (net_minor, captures) = net.get(id).copied().unwrap_or((0, 0));
        if p.len() > 1 || captures > 1 {
            problems.push(format!(
                "order {id} charged {} times ({captures} captures)",
                p.len()
            ));
        }
        match status.as_str() {
            "ORDER_STATUS_CONFIRMED" => {
                let ok = p.len() == 1 && p[0].0 == "SUCCEEDED" && p[0].2 == 0;
                if !ok || net_minor != totals[id] {
                    problems.push(format!(
                        "confirmed order {id}: payment {p:?}, ledger net {net_minor}, total {}",
                        totals[id]
                    ));
                }
            }
            "ORDER_STATUS_CANCELLED" => {
                let captured = p.iter().any(|(s, amount, refunded)| {
                    matches!(s.as_str(), "SUCCEEDED" | "PARTIALLY_REFUNDED" | "PENDING")
                        || (s == "REFUNDED" && refunded != amount)
                });
                if captured || net_minor != 0 {
                    problems.push(format!(
                        "cancelled order {id}: payment {p:?}, ledger net {net_minor}"
                    ));
                }
            }
            _ => {}
        }
    }
    for id in payments.keys() {
        if !orders.contains_key(id) {
            problems.push(format!("payment for unknown order {id}"));
        }
    }

    // Notifications: every confirmed order once per channel, sent.
    if !notifications {
        return Snapshot {
            orders,
            open,
            problems,
        };
    }
    let rows = match sqlx::query(
        "SELECT dedupe_key, status FROM notification.deliveries WHERE event_type = 'order.confirmed'",
    )
    .fetch_all(db)
    .await
    {
        Ok(rows) => rows,
        Err(e) => {
            problems.push(format!("reading notification.deliveries: {e}"));
            Vec::new()
        }
    };
    let mut notified: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for r in &rows {
        let key: String = r.get("dedupe_key");
        let mut parts = key.splitn(3, ':');
        let (_, order, channel) = (parts.next(), parts.next(), parts.next());
        if let (Some(order), Some(channel)) = (order, channel) {
            notified
                .entry(order.to_string())
                .or_default()
                .push((channel.to_string(), r.get("status")));
        }
    }
    for (id, (status, _)) in &orders {
        let n = notified.get(id).cloned().unwrap_or_default();
        let channels: BTreeSet<&String> = n.iter().map(|(c, _)| c).collect();
        if status == "ORDER_STATUS_CONFIRMED" {
            if n.is_empty() || channels.len() != n.len() || n.iter().any(|(_, s)| s != "SENT") {
                problems.push(format!("confirmed order {id} notifications: {n:?}"));
            }
        } else if !n.is_empty() {
            problems.push(format!(
                "{} order {id} has confirmation notices {n:?}",
                status_of(id)
            ));
        }
    }
    Snapshot {
        orders,
        open,
        problems,
    }
}

/// Phase 1: good-card orders of one line each from five clients; inventory is SIGKILLed and
/// restarted while they flow. Every one must be CONFIRMED, and soon: the restarted inventory
/// takes the dead consumer's events over within about 2 s of its death, long before the claim
/// time (10 s) would hand them over, and the saga timeout (30 s) never fires.
async fn inventory_killed_while_orders_flow(
    cluster: &mut Cluster,
    pool: &sqlx::PgPool,
    products: &[String],
    customers: &[String],
) {
    let order_channel = cluster.channel("order").await;
    let until = Instant::now() + Duration::from_secs(60);
    let mut clients = Vec::new();
    for (c, token) in customers.iter().take(5).enumerate() {
        let mut orders = OrderServiceClient::new(order_channel.clone());
        let token = token.clone();
        let products = products.to_vec();
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for k in 0..KILL_ORDERS / 5 {
                let n = c * (KILL_ORDERS / 5) + k;
                let mut req = order_request(&products, n);
                req.idempotency_key = format!("inventory-kill-{n}");
                req.lines.truncate(1);
                req.lines[0].quantity = 1;
                if let Some(payment_method::Method::Card(card)) =
                    req.payment_method.as_mut().and_then(|m| m.method.as_mut())
                {
                    card.number = GOOD_CARD.into();
                }
                ids.push(place(&mut orders, &token, req, until).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ids
        }));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.kill("inventory");
    let killed = Instant::now();
    cluster.restart("inventory").await;
    let mut ids = Vec::new();
    for c in clients {
        ids.extend(c.await.expect("client"));
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let statuses = loop {
        let rows = sqlx::query(r#"SELECT id, status FROM "order".orders WHERE idempotency_key LIKE 'inventory-kill-%'"#)
            .fetch_all(pool)
            .await
            .expect("orders");
        let statuses: BTreeMap<String, String> = rows
            .iter()
            .map(|r| (r.get("id"), r.get("status")))
            .collect();
        let open = statuses
            .values()
            .filter(|s| *s != "ORDER_STATUS_CONFIRMED" && *s != "ORDER_STATUS_CANCELLED")
            .count();
        if (open == 0 && statuses.len() == ids.len()) || Instant::now() > deadline {
            break statuses;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let settled = killed.elapsed();
    let not_confirmed: Vec<_> = statuses
        .iter()
        .filter(|(_, s)| *s != "ORDER_STATUS_CONFIRMED")
        .collect();
    eprintln!(
        "fault test: inventory killed while {} orders flowed; all final {:.1} s after the kill; not confirmed: {}",
        ids.len(),
        settled.as_secs_f64(),
        not_confirmed.len()
    );
    assert_eq!(statuses.len(), KILL_ORDERS, "every order placed once");
    assert!(
        not_confirmed.is_empty(),
        "good-card orders not CONFIRMED after inventory's kill: {not_confirmed:?}"
    );
    assert!(
        settled < Duration::from_secs(9),
        "the orders waited {settled:?} after inventory's kill: its events were not taken over before the claim time (10 s)"
    );
}

async fn run(base_url: String) {
    // Kept on failure for the processes' logs; removed after a pass.
    let (work, logs, redis_dir) = cluster::work_folders();
    let db = FreshDatabase::create(&base_url, "faults").await;
    let redis = Arc::new(Mutex::new(Redis::start(&redis_dir)));
    let redis_url = redis.lock().await.url();
    let env = cluster::fault_env(&db.url, redis_url, ADMIN);
    let cluster = Cluster::start(SERVICES, env, &logs).await;
    eprintln!("fault test: logs in {}", logs.display());
    let probe = mesh_contracts::payment::v1::payment_service_client::PaymentServiceClient::new(
        cluster.channel("payment").await,
    )
    .tokenize_card(mesh_contracts::payment::v1::TokenizeCardRequest::default())
    .await;
    if matches!(&probe, Err(s) if s.code() == Code::Unimplemented) {
        eprintln!(
            "SKIPPED: the saga fault test needs the payment service, which is not built in this tree"
        );
        drop(cluster);
        db.drop_now().await;
        return;
    }
    let notifications = !matches!(
        mesh_contracts::notification::v1::notification_service_client::NotificationServiceClient::new(
            cluster.channel("notification").await,
        )
        .list_templates(bearer("no-token", mesh_contracts::notification::v1::ListTemplatesRequest::default()))
        .await,
        Err(s) if s.code() == Code::Unimplemented
    );
    if !notifications {
        eprintln!(
            "SKIPPED (in part): notification is not built in this tree; the invariant \"every confirmed order notified once\" is not checked"
        );
    }

    // Catalog and stock.
    let (admin, _) = sign_up(&cluster, ADMIN).await;
    let mut products = Vec::new();
    let mut stocked = BTreeMap::new();
    let mut catalog = ProductServiceClient::new(cluster.channel("product").await);
    let mut inventory = InventoryServiceClient::new(cluster.channel("inventory").await);
    for i in 0..PRODUCTS {
        let p = catalog
            .create_product(bearer(
                &admin,
                CreateProductRequest {
                    product: Some(Product {
                        sku: format!("FAULT-{i}"),
                        name: format!("Fault product {i}"),
                        price: Some(Money {
                            currency_code: "EUR".into(),
                            amount_minor: 100 + i as i64 * 10,
                        }),
                        active: true,
                        ..Default::default()
                    }),
                },
            ))
            .await
            .expect("create product")
            .into_inner()
            .product
            .expect("product");
        inventory
            .adjust_stock(bearer(
                &admin,
                AdjustStockRequest {
                    location_id: "default".into(),
                    product_id: p.id.clone(),
                    delta: STOCK_EACH,
                    reason: AdjustmentReason::Restock as i32,
                    ..Default::default()
                },
            ))
            .await
            .expect("stock");
        stocked.insert(p.id.clone(), STOCK_EACH);
        products.push(p.id);
    }
    let mut customers = Vec::new();
    for i in 0..CLIENTS {
        customers.push(sign_up(&cluster, &format!("fault-{i}@example.com")).await.0);
    }

    // Phase 1: inventory killed while good-card orders flow.
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    let mut cluster = cluster;
    inventory_killed_while_orders_flow(&mut cluster, &pool, &products, &customers).await;

    // Phase 2: 500 orders from 25 clients while the chaos runs.
    let cluster = Arc::new(Mutex::new(cluster));
    let done = Arc::new(AtomicBool::new(false));
    let chaos_task = tokio::spawn(chaos(cluster.clone(), redis.clone(), done.clone()));
    let order_channel = cluster.lock().await.channel("order").await;
    let until = Instant::now() + Duration::from_secs(120);
    let products = Arc::new(products);
    let mut clients = Vec::new();
    for (c, token) in customers.into_iter().enumerate() {
        let products = products.clone();
        let mut orders = OrderServiceClient::new(order_channel.clone());
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for k in 0..ORDERS / CLIENTS {
                let n = c * (ORDERS / CLIENTS) + k;
                ids.push(place(&mut orders, &token, order_request(&products, n), until).await);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            ids
        }));
    }
    let mut placed = BTreeSet::new();
    for c in clients {
        placed.extend(c.await.expect("client"));
    }
    done.store(true, Ordering::SeqCst);
    let (rounds, aborts) = chaos_task.await.expect("chaos");
    assert_eq!(placed.len(), ORDERS, "one order per key");
    eprintln!(
        "fault test: {ORDERS} orders placed during {rounds} rounds of kills, {aborts} aborts right after a commit"
    );
    assert!(
        aborts > 0,
        "no service aborted between a commit and its publish: the fault switch never fired"
    );

    // Converge, then check.
    let deadline = Instant::now() + Duration::from_secs(90);
    let snap = loop {
        let snap = snapshot(&pool, &stocked, notifications, ORDERS + KILL_ORDERS).await;
        if snap.problems.is_empty() || Instant::now() > deadline {
            break snap;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let dead = cluster.lock().await.all_running();
    let confirmed = snap
        .orders
        .values()
        .filter(|(s, _)| s == "ORDER_STATUS_CONFIRMED")
        .count();
    eprintln!(
        "fault test: {confirmed} confirmed, {} cancelled, {} open",
        snap.orders.len() - confirmed - snap.open,
        snap.open
    );
    pool.close().await;
    drop(cluster);
    db.drop_now().await;
    let _ = std::fs::write(logs.join("violations.txt"), snap.problems.join("\n"));
    assert!(dead.is_empty(), "processes died on their own: {dead:?}");
    assert!(
        snap.problems.is_empty(),
        "{} invariant violations, first: {:#?}",
        snap.problems.len(),
        &snap.problems[..snap.problems.len().min(20)]
    );
    assert!(confirmed > 0, "some orders were confirmed");
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        confirmed < ORDERS,
        "some orders were cancelled (declined cards, out of stock)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_survives_kills_of_inventory_payment_and_redis() {
    let Some(url) = mesh_testkit::postgres_url("the saga fault test") else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(240), run(url))
        .await
        .expect("the fault test finishes within 4 minutes");
}
