//! Server protection over real sockets: at 3x the sustainable load the shedder refuses the excess
//! with RESOURCE_EXHAUSTED and the admitted calls all succeed with a bounded p99; the concurrency
//! limit refuses beyond its cap; fault switches add latency and errors, from the admin port too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::product_service_server::{ProductService, ProductServiceServer};
use mesh_contracts::product::v1::*;
use mesh_runtime::shed::ProtectOptions;
use mesh_runtime::{GrpcServer, Metrics, Readiness, RpcMetrics, ServiceRoutes};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tower::ServiceExt as _;

/// A service with a fixed capacity: `permits` workers, each call taking `work`.
#[derive(Clone)]
struct Bounded {
    workers: Arc<Semaphore>,
    work: Duration,
}

mesh_testkit::get_product_double! {
    impl ProductService for Bounded {
        async fn get_product(
            &self,
            request: Request<GetProductRequest>,
        ) -> Result<Response<GetProductResponse>, Status> {
            let _worker = self.workers.acquire().await.unwrap();
            tokio::time::sleep(self.work).await;
            Ok(Response::new(GetProductResponse {
                product: Some(Product {
                    id: request.into_inner().id,
                    ..Default::default()
                }),
            }))
        }
    }
}

async fn start(name: &str, service: Bounded, protect: ProtectOptions) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = ServiceRoutes::new().add_service(ProductServiceServer::new(service));
    let server = GrpcServer::new(name, routes, RpcMetrics::register(&Metrics::new()))
        .readiness(Readiness::new())
        .protection(protect);
    tokio::spawn(server.run(listener, std::future::pending()));
    addr
}

async fn client(addr: SocketAddr) -> ProductServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ProductServiceClient::new(channel)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_at_three_times_the_sustainable_load_refuses_the_excess_and_keeps_p99_bounded() {
    // Capacity: 2 workers x 10 ms = 200 calls/s. Offered: 600 calls/s for 2 s (open model).
    let service = Bounded {
        workers: Arc::new(Semaphore::new(2)),
        work: Duration::from_millis(10),
    };
    let addr = start(
        "shed-test",
        service,
        ProtectOptions {
            min_in_flight: 4,
            window: Duration::from_secs(1),
            buckets: 10,
            // Tighter than the default 1 s, so the admitted calls' latency shows the shedding.
            queue_target: Duration::from_millis(50),
            ..ProtectOptions::default()
        },
    )
    .await;
    let client = client(addr).await;
    let rate = 600u32;
    let total = rate * 2;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = Vec::new();
    for i in 0..total {
        ticker.tick().await;
        let mut c = client.clone();
        calls.push(tokio::spawn(async move {
            let start = Instant::now();
            let mut req = Request::new(GetProductRequest {
                id: format!("p-{i}"),
            });
            req.set_timeout(Duration::from_secs(3));
            let result = c.get_product(req).await;
            (result.map(|_| ()).map_err(|s| s.code()), start.elapsed())
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            (Ok(()), latency) => admitted.push(latency),
            (Err(tonic::Code::ResourceExhausted), _) => refused += 1,
            (Err(code), latency) => {
                panic!("an admitted call failed with {code:?} after {latency:?}")
            }
        }
    }
    admitted.sort();
    let p99 = percentile(&admitted, 0.99);
    eprintln!(
        "offered {total}, admitted {}, refused {refused}, admitted p50 {:?} p99 {:?}",
        admitted.len(),
        percentile(&admitted, 0.5),
        p99
    );
    assert!(refused > 0, "nothing was refused at 3x the capacity");
    // About a third (the sustainable part) is served; at least a fifth even on a busy machine.
    assert!(
        admitted.len() as u32 > total / 5,
        "only {} admitted",
        admitted.len()
    );
    // Unbounded queueing would reach ~4 s (1,200 calls / 200 per s at the end); shedding keeps the
    // admitted calls near the service time (p99 33-42 ms on an idle machine). The bound leaves
    // room for a machine busy with other builds (p99 295 ms seen once, under a load average of 5)
    // and still fails by far without shedding.
    assert!(p99 < Duration::from_secs(1), "admitted p99 {p99:?}");
}

#[tokio::test]
async fn shed_concurrency_limit_refuses_beyond_the_cap_and_exempts_health() {
    let service = Bounded {
        workers: Arc::new(Semaphore::new(100)),
        work: Duration::from_millis(300),
    };
    let addr = start(
        "limit-test",
        service,
        ProtectOptions {
            max_concurrency: 3,
            shed: false,
            ..ProtectOptions::default()
        },
    )
    .await;
    let client = client(addr).await;
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move { c.get_product(GetProductRequest::default()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = client
        .clone()
        .get_product(GetProductRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(
        err.message().contains("concurrency limit 3"),
        "{}",
        err.message()
    );
    // Health checks are exempt.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    for c in calls {
        c.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn faults_switches_add_errors_and_latency_at_runtime_via_the_admin_port() {
    let service = Bounded {
        workers: Arc::new(Semaphore::new(100)),
        work: Duration::ZERO,
    };
    let addr = start("fault-test", service, ProtectOptions::default()).await;
    let mut client = client(addr).await;
    let admin = mesh_runtime::admin::router(Metrics::new(), Readiness::new());
    let put = |body: &'static str| {
        http::Request::put("/faults/fault-test")
            .body(axum::body::Body::from(body))
            .unwrap()
    };

    client
        .get_product(GetProductRequest::default())
        .await
        .unwrap();

    let r = admin
        .clone()
        .oneshot(put("GetProduct:error=1,code=INTERNAL"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let err = client
        .get_product(GetProductRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(
        err.message().contains("fault injected"),
        "{}",
        err.message()
    );

    let r = admin.clone().oneshot(put("*:delay=80ms")).await.unwrap();
    assert_eq!(r.status(), 200);
    let start = Instant::now();
    client
        .get_product(GetProductRequest::default())
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(80));

    let r = admin
        .clone()
        .oneshot(
            http::Request::get("/faults")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"fault-test\":\"*:delay=80ms"));

    let r = admin
        .clone()
        .oneshot(put("GetProduct:error=7"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = admin
        .clone()
        .oneshot(
            http::Request::delete("/faults/fault-test")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let start = Instant::now();
    client
        .get_product(GetProductRequest::default())
        .await
        .unwrap();
    assert!(start.elapsed() < Duration::from_millis(80));
}
