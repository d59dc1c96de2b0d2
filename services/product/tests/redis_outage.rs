//! The product cache never stalls a read: under a steady load of GetProduct and
//! BatchGetProducts, the test's own Redis is killed and restarted; p99 stays under 50 ms (or
//! twice the same run's healthy p99 on a machine too busy for that), every call succeeds, and
//! once Redis is back the cache is filled and used again.
//!
//! Starts a redis-server of its own on a free port (never the shared one): skipped, loudly, when
//! `redis-server` is not installed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mesh_auth::AuthSettings;
use mesh_contracts::common::v1::Money;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::*;
use mesh_product::ProductOptions;
use mesh_testkit::{self as testing, OwnRedis, TestAuth, bearer};
use tokio_util::sync::CancellationToken;

fn p99(mut micros: Vec<u64>) -> u64 {
    micros.sort_unstable();
    micros[(micros.len() * 99 / 100).min(micros.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_mid_load_never_stalls_a_read_and_the_cache_comes_back() {
    let Some(mut redis) = OwnRedis::start() else {
        eprintln!("SKIPPED: the Redis outage test needs redis-server on PATH");
        return;
    };
    let shutdown = CancellationToken::new();
    let auth = TestAuth::start(&testing::sqlite(), AuthSettings::default()).await;
    let admin = auth.admin_token().await;
    let target = testing::sqlite();
    let db = testing::database("product", &target, &mesh_product::MIGRATIONS).await;
    let ctx = testing::context(
        "product",
        BTreeMap::from([("auth", auth.uri())]),
        db.clone(),
        testing::memory_bus(),
        shutdown.clone(),
    );
    // No in-process tier: every read goes to Redis while it is up.
    let options = ProductOptions {
        redis_url: Some(redis.url()),
        local_ttl: Duration::ZERO,
        local_entries: 0,
        ..ProductOptions::default()
    };
    let routes = mesh_product::build_with(ctx, options.clone())
        .await
        .expect("build product");
    let addr = testing::serve(
        "product",
        routes,
        db.clone(),
        testing::memory_bus(),
        shutdown.clone(),
    )
    .await;
    let mut client = ProductServiceClient::new(testing::channel(addr).await);
    let mut ids = Vec::new();
    for i in 0..20 {
        let p = client
            .create_product(bearer(
                &admin,
                CreateProductRequest {
                    product: Some(Product {
                        sku: format!("OUT-{i}"),
                        name: format!("Product {i}"),
                        price: Some(Money {
                            currency_code: "EUR".into(),
                            amount_minor: 100 + i,
                        }),
                        active: true,
                        ..Default::default()
                    }),
                },
            ))
            .await
            .expect("create")
            .into_inner()
            .product
            .expect("product");
        ids.push(p.id);
    }

    // Load: 2 clients (a debug build on 2 shared cores), each alternating GetProduct and
    // BatchGetProducts of all 20.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for n in 0..2 {
        let mut client = client.clone();
        let ids = ids.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            let mut i = n;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = if i % 2 == 0 {
                    client
                        .get_product(GetProductRequest {
                            id: ids[i % ids.len()].clone(),
                        })
                        .await
                        .map(|_| ())
                } else {
                    client
                        .batch_get_products(BatchGetProductsRequest { ids: ids.clone() })
                        .await
                        .map(|_| ())
                };
                latencies.push((started, started.elapsed().as_micros() as u64));
                if let Err(status) = result {
                    failures.push(status);
                }
                i += 1;
            }
            (latencies, failures)
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted = Instant::now();
    redis.spawn().expect("restart redis-server");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut timed = Vec::new();
    for c in clients {
        let (l, failures) = c.await.unwrap();
        assert!(failures.is_empty(), "calls failed: {failures:?}");
        timed.extend(l);
    }
    let mut healthy_p99 = 0;
    for (phase, from, to) in [
        ("Redis up", None, Some(killed)),
        ("Redis killed", Some(killed), Some(restarted)),
        ("Redis restarted", Some(restarted), None),
    ] {
        let phase_latencies: Vec<u64> = timed
            .iter()
            .filter(|(at, _)| from.is_none_or(|f| *at >= f) && to.is_none_or(|t| *at < t))
            .map(|(_, l)| *l)
            .collect();
        assert!(!phase_latencies.is_empty(), "calls while {phase}");
        let phase_p99 = p99(phase_latencies.clone());
        eprintln!(
            "{phase}: {} calls, p99 {phase_p99} us",
            phase_latencies.len()
        );
        if from.is_none() {
            healthy_p99 = phase_p99;
        }
    }
    let latencies: Vec<u64> = timed.iter().map(|(_, l)| *l).collect();
    let p99 = p99(latencies.clone());
    let max = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{} calls through a Redis kill and restart: p99 {p99} us, max {max} us",
        latencies.len()
    );
    assert!(
        latencies.len() > 100,
        "the load ran: {} calls",
        latencies.len()
    );
    // 50 ms on a machine that serves the healthy phase quickly; on one so busy (a debug build
    // beside other tests on 2 cores) that even the healthy phase's p99 passes 25 ms, twice that
    // run's own healthy p99. A read that waited on the dead Redis took seconds.
    let bound = 50_000.max(2 * healthy_p99);
    assert!(
        p99 < bound,
        "p99 {p99} us with Redis killed and restarted (bound {bound} us; healthy p99 {healthy_p99} us)"
    );

    // The cache is used again: a read fills the new Redis, and a later change behind the
    // service's back is not seen (the answer comes from Redis).
    let key = format!("{}product:{}", options.cache_prefix, ids[0]);
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the restarted redis");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        client
            .get_product(GetProductRequest { id: ids[0].clone() })
            .await
            .expect("read");
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if exists == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache was not filled again within 10 s of Redis coming back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query("UPDATE products SET name = 'Changed behind its back' WHERE id = $1")
        .bind(&ids[0])
        .execute(db.pool())
        .await
        .unwrap();
    let read = client
        .get_product(GetProductRequest { id: ids[0].clone() })
        .await
        .expect("read")
        .into_inner()
        .product
        .expect("product");
    assert_eq!(read.name, "Product 0", "served from the cache again");
    shutdown.cancel();
    auth.shutdown.cancel();
}
