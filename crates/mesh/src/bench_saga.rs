//! `mesh bench-saga`: the order saga's throughput and latency on Postgres + Redis.
//!
//! The services run as children of this binary: all of them in one `mesh serve
//! auth,user,product,inventory,payment,notification,order` process, and then each in its own
//! `mesh serve <service>` process. Each mode gets a fresh Postgres database and this run's own
//! `redis-server` (AOF, `appendfsync everysec`) on a free port. Clients place orders with
//! `PlaceOrder` (a card token, 1-2 lines of 50 well-stocked products, a good test card) for the
//! measured time, then wait until every order is final.
//!
//! Reported per mode: orders placed and confirmed, confirmed orders/s (confirmed orders over the
//! span from the first placement to the last confirmation), and PlaceOrder-to-confirmed latency
//! p50/p99: from the client's send time to the CONFIRMED entry of the order's status history
//! (same machine, same clock), read from order's database after the run.
//!
//! Beside them, per mode: SQL statements and committed transactions per confirmed order in the
//! run's database (`bench_saga_pg`), CPU per confirmed order by process (Postgres apart), and
//! the floor of this machine measured in the same run: `pgbench` running the saga's heaviest
//! single transaction, in tx/s, with the run's throughput as a ratio to it (confirmed orders/s x
//! transactions per order / floor tx/s).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use mesh_contracts::auth::v1::SignUpRequest;
use mesh_contracts::auth::v1::auth_service_client::AuthServiceClient;
use mesh_contracts::common::v1::{
    Money, PaymentCard, PaymentMethod, PostalAddress, payment_method,
};
use mesh_contracts::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_contracts::inventory::v1::{AdjustStockRequest, AdjustmentReason};
use mesh_contracts::order::v1::order_service_client::OrderServiceClient;
use mesh_contracts::order::v1::{LineItem, PlaceOrderRequest};
use mesh_contracts::payment::v1::TokenizeCardRequest;
use mesh_contracts::payment::v1::payment_service_client::PaymentServiceClient;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::{CreateProductRequest, Product};
use mesh_runtime::config::env_prefix;
use sqlx::{Connection as _, Row as _};
use tonic::transport::Channel;

use crate::bench_saga_pg::{self, StatementShare};
use crate::proc_cpu::CpuSampler;

/// The services the saga needs: PlaceOrder prices every order through campaign (automatic
/// promotions), so campaign runs too; without it each order would pay for a failed call and a
/// warning instead of the pricing a deployment does.
const SERVICES: &[&str] = &[
    "auth",
    "user",
    "product",
    "campaign",
    "inventory",
    "payment",
    "notification",
    "order",
];
const ADMIN: &str = "bench-admin@example.com";
const PASSWORD: &str = "correct horse battery";
const PRODUCTS: usize = 50;

/// Settings of `mesh bench-saga`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchSagaArgs {
    /// Postgres server URL (a fresh database is created on it per mode and dropped after).
    #[arg(long, env = "MESH_BENCH_DATABASE_URL")]
    database_url: String,
    /// Measured time of placing orders per mode, e.g. `15s`.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent clients placing orders.
    #[arg(short = 'c', long, default_value_t = 32)]
    concurrency: usize,
    /// Which layouts to run: `one` (one process), `separate` (a process per service) or `both`.
    #[arg(long, default_value = "both")]
    mode: String,
    /// Offered load in orders/s, spread over the clients (open loop: latency is measured at
    /// this rate, not at saturation). Without it each client places its next order as soon as
    /// the last one returned.
    #[arg(long)]
    rate: Option<f64>,
    /// Keep each mode's database after the run (its URL is printed) to look into the services'
    /// tables: outbox times, handled-event times, status history.
    #[arg(long)]
    keep_database: bool,
    /// Seconds of `pgbench` running the saga's heaviest transaction after each mode (this
    /// machine's floor in the same run); 0 skips it.
    #[arg(long, default_value_t = 8)]
    floor_seconds: u64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Children killed on drop.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn redis_server(dir: &Path, port: u16) -> anyhow::Result<Child> {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (is it installed?)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

async fn fresh_database(base: &str) -> anyhow::Result<(String, String)> {
    let name = format!("mesh_bench_{}", uuid::Uuid::now_v7().simple());
    let (prefix, _) = base.rsplit_once('/').context(
        "--database-url must name a database, e.g. postgres://postgres@127.0.0.1:5432/postgres",
    )?;
    let mut conn = sqlx::PgConnection::connect(base).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    Ok((format!("{prefix}/{name}"), name))
}

async fn drop_database(base: &str, name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(base).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}

/// Says how many warnings and errors the services logged during the run, and the most frequent
/// ones (retries and failures cost throughput; a clean run logs none).
fn report_log_warnings(dir: &Path) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("serve-") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        {
            total += 1;
            // The message without its timestamp and fields (the logs are JSON lines).
            let message = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| {
                    let target = v.get("target")?.as_str()?.to_string();
                    Some(format!("{target}: {}", v.get("message")?.as_str()?))
                })
                .unwrap_or_else(|| line.chars().take(120).collect());
            *counts.entry(message).or_default() += 1;
        }
    }
    if total == 0 {
        return;
    }
    let mut top: Vec<(String, usize)> = counts.into_iter().collect();
    top.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    eprintln!("bench-saga: the services logged {total} warnings or errors; most frequent:");
    for (message, n) in top.into_iter().take(5) {
        eprintln!("  {n:>6}  {message}");
    }
}

/// Starts the services as `groups` of processes; returns them and every service's port.
fn spawn(
    groups: &[Vec<&'static str>],
    db_url: &str,
    redis_url: &str,
    logs: &Path,
) -> anyhow::Result<(Children, BTreeMap<&'static str, u16>)> {
    let mut ports = BTreeMap::new();
    for s in SERVICES {
        ports.insert(*s, free_port()?);
    }
    let exe = std::env::current_exe()?;
    let mut children = Children(Vec::new());
    for (i, group) in groups.iter().enumerate() {
        let log = std::fs::File::create(logs.join(format!("serve-{i}.log")))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .arg(group.join(","))
            .env("MESH_DATABASE_URL", db_url)
            .env("MESH_REDIS_URL", redis_url)
            .env("MESH_ADMIN_PORT", "0")
            .env("MESH_SERVICE_CLIENT_SECRET", "bench-secret")
            .env("MESH_AUTH_BOOTSTRAP_ADMIN_EMAIL", ADMIN)
            .env("MESH_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        for (name, port) in &ports {
            cmd.env(format!("{}_PORT", env_prefix(name)), port.to_string());
            cmd.env(
                format!("{}_ADDR", env_prefix(name)),
                format!("http://127.0.0.1:{port}"),
            );
        }
        children.0.push(cmd.spawn().context("starting mesh serve")?);
    }
    Ok((children, ports))
}

async fn channel(port: u16) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .timeout(Duration::from_secs(30))
        .connect_lazy())
}

async fn wait_serving(port: u16) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ch = Channel::from_shared(format!("http://127.0.0.1:{port}"))?;
        if let Ok(c) = ch.connect().await
            && let Ok(r) = HealthClient::new(c)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            && r.into_inner().status == 1
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("port {port} is not serving after 60s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

async fn sign_up(auth: Channel, email: &str) -> anyhow::Result<String> {
    let r = AuthServiceClient::new(auth)
        .sign_up(SignUpRequest {
            email: email.into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.tokens.context("tokens")?.access_token)
}

/// Products, a customer token and a card token.
struct Seed {
    products: Vec<String>,
    customer: String,
    card_token: String,
}

async fn seed(ports: &BTreeMap<&'static str, u16>) -> anyhow::Result<Seed> {
    let admin = sign_up(channel(ports["auth"]).await?, ADMIN).await?;
    let customer = sign_up(channel(ports["auth"]).await?, "bench-customer@example.com").await?;
    let mut catalog = ProductServiceClient::new(channel(ports["product"]).await?);
    let mut stock = InventoryServiceClient::new(channel(ports["inventory"]).await?);
    let mut products = Vec::new();
    for i in 0..PRODUCTS {
        let p = catalog
            .create_product(bearer(
                &admin,
                CreateProductRequest {
                    product: Some(Product {
                        sku: format!("SAGA-BENCH-{i}"),
                        name: format!("Saga bench product {i}"),
                        price: Some(Money {
                            currency_code: "EUR".into(),
                            amount_minor: 199 + i as i64,
                        }),
                        active: true,
                        ..Default::default()
                    }),
                },
            ))
            .await?
            .into_inner()
            .product
            .context("product")?;
        stock
            .adjust_stock(bearer(
                &admin,
                AdjustStockRequest {
                    location_id: "default".into(),
                    product_id: p.id.clone(),
                    delta: 10_000_000,
                    reason: AdjustmentReason::Restock as i32,
                    ..Default::default()
                },
            ))
            .await?;
        products.push(p.id);
    }
    let card_token = PaymentServiceClient::new(channel(ports["payment"]).await?)
        .tokenize_card(bearer(
            &customer,
            TokenizeCardRequest {
                card: Some(PaymentCard {
                    number: "4242424242424242".into(),
                    expiry: "12/39".into(),
                    cvc: "123".into(),
                    holder_name: "Bench".into(),
                }),
            },
        ))
        .await?
        .into_inner()
        .card_token;
    Ok(Seed {
        products,
        customer,
        card_token,
    })
}

fn request(seed: &Seed, n: u64) -> PlaceOrderRequest {
    let lines = 1 + (n % 2) as usize;
    PlaceOrderRequest {
        idempotency_key: uuid::Uuid::now_v7().to_string(),
        customer_id: String::new(),
        lines: (0..lines)
            .map(|i| LineItem {
                product_id: seed.products[(n as usize * 7 + i * 13) % seed.products.len()].clone(),
                quantity: 1,
            })
            .collect(),
        shipping_address: Some(PostalAddress {
            recipient_name: "Bench".into(),
            address_lines: vec!["1 Load Street".into()],
            region_code: "DE".into(),
            ..Default::default()
        }),
        payment_method: Some(PaymentMethod {
            method: Some(payment_method::Method::CardToken(seed.card_token.clone())),
        }),
        promo_code: String::new(),
        currency_code: String::new(),
        store_id: String::new(),
    }
}

/// What one mode measured.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Figures {
    mode: String,
    placed: usize,
    failed_calls: u64,
    /// PlaceOrder calls refused because the saga was behind (`RESOURCE_EXHAUSTED`); the client
    /// waited the `retry-after` they carried before its next order.
    refused_calls: u64,
    confirmed: usize,
    cancelled: usize,
    not_final: usize,
    place_rps: f64,
    /// Confirmed orders over the span from the first placement to the last confirmation.
    pub(crate) confirmed_per_s: f64,
    /// PlaceOrder-to-confirmed latency, median, ms.
    pub(crate) latency_ms_p50: f64,
    /// PlaceOrder-to-confirmed latency, 99th percentile, ms.
    pub(crate) latency_ms_p99: f64,
    place_rpc_ms_p50: f64,
    place_rpc_ms_p99: f64,
    /// Where the time went, stage by stage.
    stages: Vec<Stage>,
    /// CPU milliseconds per confirmed order by process group, from the first order to the last
    /// one final (empty where `/proc` is missing).
    cpu_ms_per_order: Vec<CpuShare>,
    /// SQL statements per confirmed order in the run's database (`pg_stat_statements`; `None`
    /// when the server does not load it).
    statements_per_order: Option<f64>,
    /// Transactions committed per confirmed order in the run's database.
    transactions_per_order: f64,
    /// The statements run most often, per confirmed order.
    top_statements: Vec<StatementShare>,
    /// `pgbench` tx/s of the saga's heaviest transaction, measured after this mode.
    floor_tx_per_s: Option<f64>,
    /// confirmed orders/s x transactions per order / floor tx/s.
    floor_ratio: Option<f64>,
}

/// One process group's CPU time per confirmed order.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct CpuShare {
    process: String,
    ms: f64,
}

/// Scenario (d) of `mesh bench`: the saga's services in one child process on a fresh database
/// of the Postgres at `database_url`, `concurrency` clients placing orders for `duration`.
pub(crate) async fn one_process(
    database_url: &str,
    duration: Duration,
    concurrency: usize,
) -> anyhow::Result<Figures> {
    let args = BenchSagaArgs {
        database_url: database_url.to_string(),
        duration,
        concurrency,
        mode: "one".into(),
        rate: None,
        keep_database: false,
        floor_seconds: 0,
    };
    measure("one process", vec![SERVICES.to_vec()], &args).await
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn measure(
    mode: &str,
    groups: Vec<Vec<&'static str>>,
    args: &BenchSagaArgs,
) -> anyhow::Result<Figures> {
    let dir =
        std::env::temp_dir().join(format!("mesh-bench-saga-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    let redis_port = free_port()?;
    let redis = Children(vec![redis_server(&dir, redis_port)?]);
    let (db_url, db_name) = fresh_database(&args.database_url).await?;
    let result = async {
        let (children, ports) = spawn(
            &groups,
            &db_url,
            &format!("redis://127.0.0.1:{redis_port}"),
            &dir,
        )?;
        for p in ports.values() {
            wait_serving(*p).await?;
        }
        let seed = Arc::new(seed(&ports).await?);
        let named = children
            .0
            .iter()
            .zip(&groups)
            .map(|(child, group)| {
                let name = match group.as_slice() {
                    [one] => format!("mesh serve {one}"),
                    _ => "mesh serve (all services)".to_string(),
                };
                (child.id(), name)
            })
            .collect();
        let mut stats = sqlx::PgConnection::connect(&db_url).await?;
        let with_statements = bench_saga_pg::enable_statements(&mut stats).await;
        let before = bench_saga_pg::counters(&mut stats, with_statements).await?;
        let cpu = CpuSampler::start(named, db_name.clone());
        let figures = load(mode, &ports, seed, args, &db_url).await;
        let cpu = cpu.finish().await;
        tokio::time::sleep(bench_saga_pg::STATS_DELAY).await;
        let after = bench_saga_pg::counters(&mut stats, with_statements).await?;
        let top = if with_statements {
            let orders = figures.as_ref().map_or(1, |f| f.confirmed);
            bench_saga_pg::top_statements(&mut stats, orders, 15).await?
        } else {
            Vec::new()
        };
        let figures = figures.map(|mut f| {
            let orders = f.confirmed.max(1) as f64;
            f.statements_per_order = after
                .statements
                .zip(before.statements)
                .map(|(a, b)| (a - b) as f64 / orders);
            f.transactions_per_order = (after.commits - before.commits) as f64 / orders;
            f.top_statements = top;
            f
        });
        let figures = figures.map(|mut f| {
            let orders = f.confirmed.max(1) as f64;
            f.cpu_ms_per_order = cpu
                .into_iter()
                .map(|(process, seconds)| CpuShare {
                    process,
                    ms: seconds * 1000.0 / orders,
                })
                .collect();
            f
        });
        drop(children);
        report_log_warnings(&dir);
        let mut figures = figures?;
        if args.floor_seconds > 0 {
            // The services are stopped: the floor has the machine to itself, as they had.
            match bench_saga_pg::floor(&db_url, args.floor_seconds).await {
                Ok(tps) => {
                    figures.floor_tx_per_s = Some(tps);
                    figures.floor_ratio =
                        Some(figures.confirmed_per_s * figures.transactions_per_order / tps);
                }
                Err(e) => eprintln!("bench-saga: no floor measured: {e:#}"),
            }
        }
        Ok(figures)
    }
    .await;
    drop(redis);
    if args.keep_database {
        eprintln!("bench-saga: kept the database {db_url}");
    } else {
        drop_database(&args.database_url, &db_name).await;
    }
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("bench-saga: logs kept in {}", dir.display());
    }
    result
}

async fn load(
    mode: &str,
    ports: &BTreeMap<&'static str, u16>,
    seed: Arc<Seed>,
    args: &BenchSagaArgs,
    db_url: &str,
) -> anyhow::Result<Figures> {
    // A few HTTP/2 connections shared by the clients.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(
            Channel::from_shared(format!("http://127.0.0.1:{}", ports["order"]))?
                .timeout(Duration::from_secs(30))
                .connect()
                .await?,
        );
    }
    let start = Instant::now();
    let end = start + args.duration;
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let mut client = OrderServiceClient::new(conns[w % conns.len()].clone());
        let seed = seed.clone();
        let mut tick = args.rate.filter(|r| *r > 0.0).map(|r| {
            let mut i = tokio::time::interval_at(
                tokio::time::Instant::from_std(start) + Duration::from_secs_f64(w as f64 / r),
                Duration::from_secs_f64(args.concurrency as f64 / r),
            );
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            i
        });
        workers.push(tokio::spawn(async move {
            let mut placed: Vec<(String, i64, i64)> = Vec::new();
            let mut failed = 0u64;
            let mut refused = 0u64;
            let mut n = w as u64 * 1_000_000;
            while Instant::now() < end {
                // Latency counts from when the order was due, not when a busy client got to
                // send it (no coordinated omission).
                let late_us = match tick.as_mut() {
                    Some(t) => t.tick().await.elapsed().as_micros() as i64,
                    None => 0,
                };
                n += 1;
                let t0 = now_us() - late_us;
                let sent = Instant::now();
                match client
                    .place_order(bearer(&seed.customer, request(&seed, n)))
                    .await
                {
                    Ok(r) => {
                        if let Some(o) = r.into_inner().order {
                            placed.push((o.id, t0, sent.elapsed().as_micros() as i64));
                        }
                    }
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                        // Refused at the door (the saga is behind, or the server sheds): a
                        // well-behaved client waits as told before its next order.
                        refused += 1;
                        let after = status
                            .metadata()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                            .unwrap_or(1);
                        let wake = (Instant::now() + Duration::from_secs(after)).min(end);
                        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
                    }
                    Err(_) => failed += 1,
                }
            }
            (placed, failed, refused)
        }));
    }
    let mut placed = Vec::new();
    let mut failed_calls = 0;
    let mut refused_calls = 0;
    for w in workers {
        let (p, f, r) = w.await?;
        placed.extend(p);
        failed_calls += f;
        refused_calls += r;
    }
    let place_secs = start.elapsed().as_secs_f64();

    // Wait (bounded) until every order is final, then read the confirmation times.
    let pool = sqlx::PgPool::connect(db_url).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open: i64 = sqlx::query(
            r#"SELECT COUNT(*) AS n FROM "order".orders WHERE status NOT IN ('ORDER_STATUS_CONFIRMED', 'ORDER_STATUS_CANCELLED') /* bench-saga */"#,
        )
        .fetch_one(&pool)
        .await?
        .get("n");
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = sqlx::query(
        r#"SELECT o.id, o.status, h.at_us FROM "order".orders o
           LEFT JOIN "order".order_status_history h ON h.order_id = o.id AND h.status = 'ORDER_STATUS_CONFIRMED' /* bench-saga */"#,
    )
    .fetch_all(&pool)
    .await?;
    let stages = stages(&pool).await?;
    pool.close().await;
    let mut final_state: BTreeMap<String, (String, Option<i64>)> = BTreeMap::new();
    for r in &rows {
        final_state.insert(r.get("id"), (r.get("status"), r.get("at_us")));
    }
    let mut latencies = Vec::new();
    let mut rpc = Vec::new();
    let (mut confirmed, mut cancelled, mut not_final) = (0, 0, 0);
    let first = placed.iter().map(|p| p.1).min().unwrap_or_default();
    let mut last_confirmed = first;
    for (id, t0, rpc_us) in &placed {
        rpc.push(*rpc_us);
        match final_state.get(id) {
            Some((s, Some(at))) if s == "ORDER_STATUS_CONFIRMED" => {
                confirmed += 1;
                latencies.push(at - t0);
                last_confirmed = last_confirmed.max(*at);
            }
            Some((s, _)) if s == "ORDER_STATUS_CANCELLED" => cancelled += 1,
            _ => not_final += 1,
        }
    }
    latencies.sort_unstable();
    rpc.sort_unstable();
    let span = (last_confirmed - first).max(1) as f64 / 1e6;
    Ok(Figures {
        mode: mode.to_string(),
        placed: placed.len(),
        failed_calls,
        refused_calls,
        confirmed,
        cancelled,
        not_final,
        place_rps: placed.len() as f64 / place_secs,
        confirmed_per_s: confirmed as f64 / span,
        latency_ms_p50: percentile(&latencies, 0.50),
        latency_ms_p99: percentile(&latencies, 0.99),
        place_rpc_ms_p50: percentile(&rpc, 0.50),
        place_rpc_ms_p99: percentile(&rpc, 0.99),
        stages,
        cpu_ms_per_order: Vec::new(),
        statements_per_order: None,
        transactions_per_order: 0.0,
        top_statements: Vec::new(),
        floor_tx_per_s: None,
        floor_ratio: None,
    })
}

/// Where a confirmed order's time went, from order's status history: p50 and p99 (ms) of
/// PENDING -> RESERVED (inventory's reservation and its event back) and RESERVED -> CONFIRMED
/// (payment's charge and its event back).
async fn stages(pool: &sqlx::PgPool) -> anyhow::Result<Vec<Stage>> {
    let rows = sqlx::query(
        r#"SELECT p.at_us AS pending, r.at_us AS reserved, c.at_us AS confirmed
           FROM "order".order_status_history c
           JOIN "order".order_status_history p ON p.order_id = c.order_id AND p.status = 'ORDER_STATUS_PENDING'
           JOIN "order".order_status_history r ON r.order_id = c.order_id AND r.status = 'ORDER_STATUS_RESERVED'
           WHERE c.status = 'ORDER_STATUS_CONFIRMED' /* bench-saga */"#,
    )
    .fetch_all(pool)
    .await?;
    let mut reserve = Vec::with_capacity(rows.len());
    let mut charge = Vec::with_capacity(rows.len());
    for r in &rows {
        let (p, res, c): (i64, i64, i64) =
            (r.get("pending"), r.get("reserved"), r.get("confirmed"));
        reserve.push(res - p);
        charge.push(c - res);
    }
    reserve.sort_unstable();
    charge.sort_unstable();
    Ok(vec![
        Stage {
            name: "PENDING -> RESERVED",
            ms_p50: percentile(&reserve, 0.5),
            ms_p99: percentile(&reserve, 0.99),
        },
        Stage {
            name: "RESERVED -> CONFIRMED",
            ms_p50: percentile(&charge, 0.5),
            ms_p99: percentile(&charge, 0.99),
        },
    ])
}

/// One stage of the saga, measured between two status-history entries.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Stage {
    name: &'static str,
    ms_p50: f64,
    ms_p99: f64,
}

/// Runs the saga benchmark and prints one line per mode (and the figures as JSON).
pub(crate) async fn run(args: &BenchSagaArgs) -> anyhow::Result<()> {
    let mut modes: Vec<(&str, Vec<Vec<&'static str>>)> = Vec::new();
    if matches!(args.mode.as_str(), "one" | "both") {
        modes.push(("one process", vec![SERVICES.to_vec()]));
    }
    if matches!(args.mode.as_str(), "separate" | "both") {
        modes.push((
            "separate processes",
            SERVICES.iter().map(|s| vec![*s]).collect(),
        ));
    }
    if modes.is_empty() {
        bail!(
            "--mode: expected one, separate or both, got `{}`",
            args.mode
        );
    }
    println!(
        "order saga on Postgres + Redis: {} clients, {:?} of PlaceOrder per mode, offered {}",
        args.concurrency,
        args.duration,
        args.rate.map_or_else(
            || "as fast as they can".to_string(),
            |r| format!("{r} orders/s")
        )
    );
    for (mode, groups) in modes {
        let f = measure(mode, groups, args).await?;
        println!(
            "{:<19} placed {:>6} ({:>7.1}/s, PlaceOrder p50 {:.1} ms p99 {:.1} ms, {} failed, {} refused)  confirmed {:>6} cancelled {} open {}  => {:>7.1} confirmed orders/s, PlaceOrder-to-confirmed p50 {:.1} ms p99 {:.1} ms",
            f.mode,
            f.placed,
            f.place_rps,
            f.place_rpc_ms_p50,
            f.place_rpc_ms_p99,
            f.failed_calls,
            f.refused_calls,
            f.confirmed,
            f.cancelled,
            f.not_final,
            f.confirmed_per_s,
            f.latency_ms_p50,
            f.latency_ms_p99
        );
        for st in &f.stages {
            println!(
                "{:<19}   {:<24} p50 {:.1} ms p99 {:.1} ms",
                "", st.name, st.ms_p50, st.ms_p99
            );
        }
        if !f.cpu_ms_per_order.is_empty() {
            let total: f64 = f.cpu_ms_per_order.iter().map(|c| c.ms).sum();
            let parts: Vec<String> = f
                .cpu_ms_per_order
                .iter()
                .map(|c| format!("{} {:.2}", c.process, c.ms))
                .collect();
            println!(
                "{:<19}   CPU ms per confirmed order: {} (these processes: {total:.2})",
                "",
                parts.join(", ")
            );
        }
        let postgres: f64 = f
            .cpu_ms_per_order
            .iter()
            .filter(|c| c.process.starts_with("postgres"))
            .map(|c| c.ms)
            .sum();
        println!(
            "{:<19}   per confirmed order: {} SQL statements, {:.2} transactions, Postgres CPU {postgres:.2} ms",
            "",
            f.statements_per_order.map_or_else(
                || "n/a (pg_stat_statements not loaded)".to_string(),
                |n| format!("{n:.1}")
            ),
            f.transactions_per_order,
        );
        for st in f.top_statements.iter().take(12) {
            println!(
                "{:<19}     {:>5.2}/order {:>6.3} ms  {}",
                "", st.per_order, st.mean_ms, st.query
            );
        }
        if let (Some(tps), Some(ratio)) = (f.floor_tx_per_s, f.floor_ratio) {
            println!(
                "{:<19}   floor: pgbench of the saga's heaviest transaction {tps:.0} tx/s; this run {:.1} orders/s x {:.2} tx/order = {:.0} tx/s = {ratio:.2} x floor",
                "",
                f.confirmed_per_s,
                f.transactions_per_order,
                f.confirmed_per_s * f.transactions_per_order
            );
        }
        println!("{}", serde_json::to_string(&f)?);
    }
    Ok(())
}
