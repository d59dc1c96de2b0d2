//! The REST path's connection pool ([`mesh_edge::pool`]): calls spread over its connections,
//! an upstream that is down is `UNAVAILABLE` naming the cause (REST: 503), and the pool
//! reconnects once the upstream is back on its address; an upstream without a pool (a DNS name)
//! still serves REST over its channel.

mod common;

use std::time::Duration;

use common::*;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::{GetProductRequest, GetProductResponse};
use mesh_edge::config::EdgeConfig;
use mesh_edge::load_pool;
use mesh_edge::pool::ConnectionPool;
use mesh_edge::upstream::{Upstream, Upstreams};
use mesh_runtime::client::{ClientOptions, connect};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn pool_to(addr: std::net::SocketAddr, size: usize) -> ConnectionPool {
    let uri: http::Uri = format!("http://{addr}").parse().unwrap();
    ConnectionPool::for_ip(&uri, size, Duration::from_secs(1)).expect("an IP upstream")
}

/// `n` calls that stay in flight (the upstream sleeps 5 s on "slow"; their 300 ms deadline ends
/// them with an error).
fn slow_calls(
    client: &ProductServiceClient<ConnectionPool>,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<tonic::Response<GetProductResponse>, tonic::Status>>> {
    (0..n)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut req = tonic::Request::new(GetProductRequest { id: "slow".into() });
                req.set_timeout(Duration::from_millis(300));
                client.get_product(req).await
            })
        })
        .collect()
}

#[tokio::test]
async fn concurrent_calls_spread_over_the_pool_and_one_at_a_time_stays_on_one() {
    let upstream = start_upstream().await;
    // Two calls per connection before the next one is used.
    let pool = pool_to(upstream, 3).with_streams_before_spread(2);
    assert_eq!(
        pool.open_connections(),
        0,
        "nothing connects before the first call"
    );
    let client = ProductServiceClient::new(pool.clone());
    for i in 0..5 {
        let r = client
            .clone()
            .get_product(GetProductRequest {
                id: format!("p{i}"),
            })
            .await
            .unwrap();
        assert_eq!(r.into_inner().product.unwrap().id, format!("p{i}"));
    }
    assert_eq!(
        pool.open_connections(),
        1,
        "sequential calls reuse one connection"
    );
    // "slow" calls stay in flight (the upstream sleeps 5 s; the deadline ends them sooner), so
    // the next calls take the other connections.
    let slow = slow_calls(&client, 6);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        pool.open_connections(),
        3,
        "never more than the pool's size"
    );
    assert_eq!(pool.in_flight(), 6);
    for call in slow {
        assert!(call.await.unwrap().is_err());
    }
}

#[tokio::test]
async fn concurrent_calls_pack_onto_one_connection_below_the_spread_limit() {
    let upstream = start_upstream().await;
    let pool = pool_to(upstream, 4);
    let client = ProductServiceClient::new(pool.clone());
    let slow = slow_calls(&client, 8);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.in_flight(), 8);
    assert_eq!(
        pool.open_connections(),
        1,
        "8 calls in flight share one connection (the default spreads above {})",
        mesh_edge::pool::DEFAULT_STREAMS_BEFORE_SPREAD
    );
    for call in slow {
        assert!(call.await.unwrap().is_err());
    }
}

#[tokio::test]
async fn the_pool_reports_a_down_upstream_and_reconnects_when_it_is_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    serve_upstream(listener, stop.clone().cancelled_owned());

    let edge = start_edge(EdgeConfig::default(), addr).await;
    let get = || http(edge.addr, "GET", "/v1/products/p1", "");
    assert_eq!(get().await.status, 200);

    // Down: the server stops and its connections close.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = get().await;
    assert_eq!(r.status, 503, "{}", r.text());
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("product.v1.ProductService")
            && message.contains("unavailable")
            && message.contains(&addr.to_string()),
        "names the service, the upstream and the cause: {message}"
    );

    // Back on the same address: the next calls reconnect.
    let listener = TcpListener::bind(addr).await.unwrap();
    serve_upstream(listener, std::future::pending());
    let mut status = 0;
    for _ in 0..50 {
        status = get().await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "the pool reconnected after the restart");
}

#[tokio::test]
async fn a_down_upstream_is_unavailable_with_its_cause() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut client = ProductServiceClient::new(pool_to(dead, 2));
    let status = client
        .get_product(GetProductRequest { id: "p1".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        std::error::Error::source(&status).is_some(),
        "the transport error is the source"
    );
    assert!(status.message().contains(&dead.to_string()), "{status:?}");
}

#[tokio::test]
async fn an_upstream_without_a_pool_serves_rest_over_its_channel() {
    let upstream = start_upstream().await;
    let pool = mesh_edge::load_pool(&[("spec".into(), spec_descriptor_set())]).unwrap();
    let uri: http::Uri = format!("http://{upstream}").parse().unwrap();
    let channel_only = Upstream::new("channel only", connect(uri, ClientOptions::default()));
    assert!(channel_only.pooled.is_none());
    let mut upstreams = Upstreams::new();
    for service in upstreams_at(&pool, upstream).services() {
        upstreams.insert(service, channel_only.clone());
    }
    let edge = start_edge_with(pool, EdgeConfig::default(), upstreams).await;
    let r = send(
        edge.addr,
        "GET",
        "/v1/products/p7",
        "",
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
        false,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json()["description"].as_str().unwrap().to_string();
    assert!(
        seen.contains("tp=00-0af7651916cd43dd8448eb211c80319c-"),
        "{seen}"
    );
}

#[tokio::test]
async fn a_saturated_pool_answers_429_with_retry_after_and_never_trips_the_breaker() {
    let upstream = start_upstream().await;
    let pool = load_pool(&[("spec".into(), spec_descriptor_set())]).unwrap();
    let config = EdgeConfig {
        upstream_max_in_flight: 2,
        ..EdgeConfig::default()
    };
    let uri: http::Uri = format!("http://{upstream}").parse().unwrap();
    let product = Upstream::connect_limited(
        "product",
        uri,
        ClientOptions::default(),
        config.upstream_connections,
        config.upstream_max_in_flight,
    );
    let mut upstreams = upstreams_at(&pool, upstream);
    upstreams.insert("product.v1.ProductService", product.clone());
    let edge = start_edge_with(pool, config, upstreams).await;
    // Two calls the upstream holds (it sleeps 5 s on "slow") fill the pool.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let addr = edge.addr;
            tokio::spawn(async move {
                send(
                    addr,
                    "GET",
                    "/v1/products/slow",
                    "",
                    &[("grpc-timeout", "1500m")],
                    false,
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Every further call is the edge's own refusal, far more than the breaker's minimum.
    for _ in 0..100 {
        let r = http(edge.addr, "GET", "/v1/products/p1", "").await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.headers["retry-after"], "1");
        assert_eq!(r.json()["code"], 8);
        let message = r.json()["message"].as_str().unwrap().to_string();
        assert!(
            message.contains("MESH_EDGE_UPSTREAM_MAX_IN_FLIGHT"),
            "{message}"
        );
    }
    let throttle = product.pooled.as_ref().expect("an IP upstream").throttle();
    assert_eq!(
        throttle.reject_probability(),
        0.0,
        "local refusals counted as upstream failures"
    );
    for call in held {
        call.await.unwrap();
    }
    // The pool has room again.
    let r = http(edge.addr, "GET", "/v1/products/p1", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
}
