//! Per-client rate limits over real sockets: keyed by the token's subject, else by client IP
//! (`X-Forwarded-For` only from trusted proxies); `429` with `Retry-After` on REST,
//! `RESOURCE_EXHAUSTED` on gRPC; and the Redis limiter shared by two edges (needs
//! `MESH_TEST_REDIS_URL`; says `SKIPPED` without it).

mod common;

use std::sync::Arc;

use common::*;
use mesh_auth::AuthSettings;
use mesh_contracts::product::v1::GetProductRequest;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_edge::auth::{EdgeAuth, JWKS_REFRESH_LIMIT, PublicRoutes, RefreshLimitedKeys};
use mesh_edge::config::{EdgeConfig, parse_net};
use mesh_edge::limiter::Limiter;
use mesh_edge::rate_limit::RateLimit;
use mesh_edge::redis_limit::RedisLimiter;
use mesh_runtime::auth::{JwksClient, ManualClock, VerifierSettings};
use mesh_runtime::client::{ClientOptions, connect};
use mesh_testkit::{self as testing, TestAuth, bearer};

/// Three requests, then one every 100 s: the fourth is refused, whatever the test's speed.
const LIMIT: RateLimit = RateLimit {
    per_second: 0.01,
    burst: 3,
};

async fn get(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> Reply {
    send(addr, "GET", "/v1/products/p1", "", headers, false).await
}

#[tokio::test]
async fn buckets_are_per_subject_when_there_is_a_token() {
    let auth = TestAuth::start(&testing::sqlite(), AuthSettings::default()).await;
    let upstream = start_upstream().await;
    let keys = Arc::new(RefreshLimitedKeys::new(
        Arc::new(JwksClient::new(connect(
            auth.uri(),
            ClientOptions::default(),
        ))),
        JWKS_REFRESH_LIMIT,
    ));
    let edge_auth = EdgeAuth::new(
        keys,
        VerifierSettings::default(),
        Arc::new(ManualClock::new()),
        PublicRoutes::parse(&["product.v1.ProductService/*".into()]).unwrap(),
    );
    let config = EdgeConfig {
        rate_limit: Some(LIMIT),
        ..EdgeConfig::default()
    };
    let e = serve_edge(edge_for(config, upstream).with_auth(edge_auth)).await;
    let ann = format!("Bearer {}", auth.customer_token().await);
    let bob = format!("Bearer {}", auth.customer_token().await);

    for _ in 0..3 {
        assert_eq!(get(e.addr, &[("authorization", &ann)]).await.status, 200);
    }
    let r = get(e.addr, &[("authorization", &ann)]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["code"], 8, "RESOURCE_EXHAUSTED");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=100).contains(&wait), "retry after {wait}s");
    // Another subject from the same address has its own bucket, and so has the address
    // itself (anonymous calls).
    assert_eq!(get(e.addr, &[("authorization", &bob)]).await.status, 200);
    assert_eq!(get(e.addr, &[]).await.status, 200);

    // gRPC passthrough shares the subject's bucket: RESOURCE_EXHAUSTED with retry-after.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", e.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = ProductServiceClient::new(channel);
    let token = ann.trim_start_matches("Bearer ");
    let status = grpc
        .get_product(bearer(token, GetProductRequest { id: "p1".into() }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.metadata().get("retry-after").is_some());
    auth.shutdown.cancel();
}

#[tokio::test]
async fn forwarded_for_counts_only_behind_a_trusted_proxy() {
    let upstream = start_upstream().await;
    // Not trusted: every request from 127.0.0.1 is one client, whatever it claims.
    let e = start_edge(
        EdgeConfig {
            rate_limit: Some(LIMIT),
            ..EdgeConfig::default()
        },
        upstream,
    )
    .await;
    for i in 0..3 {
        let xff = format!("198.51.100.{i}");
        assert_eq!(get(e.addr, &[("x-forwarded-for", &xff)]).await.status, 200);
    }
    let r = get(e.addr, &[("x-forwarded-for", "198.51.100.99")]).await;
    assert_eq!(
        r.status, 429,
        "a spoofed X-Forwarded-For is not a new client"
    );

    // 127.0.0.1 trusted as a proxy: each forwarded client has its own bucket.
    let e = start_edge(
        EdgeConfig {
            rate_limit: Some(LIMIT),
            trusted_proxies: vec![parse_net("127.0.0.1").unwrap()],
            ..EdgeConfig::default()
        },
        upstream,
    )
    .await;
    for _ in 0..3 {
        let r = get(e.addr, &[("x-forwarded-for", "198.51.100.1")]).await;
        assert_eq!(r.status, 200);
    }
    let r = get(e.addr, &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(r.status, 429);
    let r = get(e.addr, &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!(r.status, 200, "another client behind the same proxy");
    // The client cannot pick its key by prepending addresses: the proxy appended the real one.
    let r = get(e.addr, &[("x-forwarded-for", "203.0.113.5, 198.51.100.1")]).await;
    assert_eq!(r.status, 429);
}

#[tokio::test]
async fn two_edges_share_one_budget_in_redis() {
    let Some(url) = testing::redis("two_edges_share_one_budget_in_redis") else {
        return;
    };
    let prefix = format!("{}:", testing::unique("mesh-test-edge-rl"));
    let upstream = start_upstream().await;
    let edge = || {
        let limiter = RedisLimiter::connect(&url, prefix.clone(), LIMIT).unwrap();
        edge_for(EdgeConfig::default(), upstream).with_limiter(Limiter::Redis(limiter))
    };
    let a = serve_edge(edge()).await;
    let b = serve_edge(edge()).await;
    assert_eq!(get(a.addr, &[]).await.status, 200);
    assert_eq!(get(b.addr, &[]).await.status, 200);
    assert_eq!(get(a.addr, &[]).await.status, 200);
    for addr in [a.addr, b.addr] {
        let r = get(addr, &[]).await;
        assert_eq!(
            r.status,
            429,
            "the shared bucket of 3 is spent: {}",
            r.text()
        );
        let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=100).contains(&wait), "retry after {wait}s");
    }

    // Redis gone: the edge keeps limiting, in process.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("redis://{}", dead.local_addr().unwrap());
    drop(dead);
    let limiter = RedisLimiter::connect(&dead_url, prefix.clone(), LIMIT).unwrap();
    let c =
        serve_edge(edge_for(EdgeConfig::default(), upstream).with_limiter(Limiter::Redis(limiter)))
            .await;
    for _ in 0..3 {
        assert_eq!(get(c.addr, &[]).await.status, 200);
    }
    assert_eq!(get(c.addr, &[]).await.status, 429);
}

#[tokio::test]
async fn a_dead_redis_costs_one_bounded_call_then_buckets_count_in_process_at_once() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let limiter = RedisLimiter::connect(&format!("redis://127.0.0.1:{port}"), "t:", LIMIT)
        .expect("a lazy connection");
    let started = std::time::Instant::now();
    assert!(
        limiter.check("a").await.is_ok(),
        "the fallback bucket admits"
    );
    assert!(
        started.elapsed() <= mesh_edge::redis_limit::CALL_TIMEOUT * 2,
        "bounded by the call timeout: {:?}",
        started.elapsed()
    );
    assert!(!limiter.redis().is_up(), "Redis is marked down");
    let started = std::time::Instant::now();
    assert!(limiter.check("a").await.is_ok());
    assert!(limiter.check("a").await.is_ok());
    assert!(
        limiter.check("a").await.is_err(),
        "the in-process bucket of 3 is spent"
    );
    assert_eq!(
        limiter.redis().skipped(),
        3,
        "Redis was not tried while down"
    );
    assert!(started.elapsed() < std::time::Duration::from_millis(50));
}
