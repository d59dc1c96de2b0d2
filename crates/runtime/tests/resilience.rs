//! Client resilience over real sockets: retries of idempotent calls stay within the budget,
//! non-idempotent calls are never retried, and the breaker opens on a failing upstream, fails
//! fast naming it, and closes when the upstream recovers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::product_service_server::{ProductService, ProductServiceServer};
use mesh_contracts::product::v1::*;
use mesh_runtime::Metrics;
use mesh_runtime::client::{ClientOptions, connect};
use mesh_runtime::resilience::{
    BreakerOptions, BudgetOptions, ClientMetrics, ResilienceOptions, RetryOptions,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Flaky {
    calls: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
}

mesh_testkit::test_double! {
    impl ProductService for Flaky {
        async fn get_product(
            &self,
            request: Request<GetProductRequest>,
        ) -> Result<Response<GetProductResponse>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                return Err(Status::unavailable("test upstream is failing"));
            }
            Ok(Response::new(GetProductResponse {
                product: Some(Product {
                    id: request.into_inner().id,
                    ..Default::default()
                }),
            }))
        }

        async fn create_product(
            &self,
            _request: Request<CreateProductRequest>,
        ) -> Result<Response<CreateProductResponse>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(Status::unavailable("test upstream is failing"))
        }
    }
    unused {
        batch_get_products(mesh_contracts::product::v1::BatchGetProductsRequest) -> mesh_contracts::product::v1::BatchGetProductsResponse;
        list_products(mesh_contracts::product::v1::ListProductsRequest) -> mesh_contracts::product::v1::ListProductsResponse;
        update_product(mesh_contracts::product::v1::UpdateProductRequest) -> mesh_contracts::product::v1::UpdateProductResponse;
        delete_product(mesh_contracts::product::v1::DeleteProductRequest) -> mesh_contracts::product::v1::DeleteProductResponse;
        create_category(mesh_contracts::product::v1::CreateCategoryRequest) -> mesh_contracts::product::v1::CreateCategoryResponse;
        list_categories(mesh_contracts::product::v1::ListCategoriesRequest) -> mesh_contracts::product::v1::ListCategoriesResponse;
    }
}

async fn serve(service: Flaky) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProductServiceServer::new(service))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr
}

const GET: &str = "/product.v1.ProductService/GetProduct";

fn options(metrics: &Metrics, resilience: ResilienceOptions) -> ClientOptions {
    ClientOptions {
        default_deadline: Duration::from_secs(2),
        name: Some("product".into()),
        resilience,
        metrics: Some(ClientMetrics::of(metrics)),
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn resilience_retries_stay_within_the_budget_and_only_for_idempotent_methods() {
    let upstream = Flaky::default();
    upstream.failing.store(true, Ordering::SeqCst);
    let addr = serve(upstream.clone()).await;
    let metrics = Metrics::new();
    let resilience = ResilienceOptions {
        retry: RetryOptions {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        },
        budget: BudgetOptions {
            ratio: 0.1,
            min_per_sec: 1.0,
            max_tokens: 5.0,
        },
        // Breaker off: this test is about the retries alone.
        breaker: BreakerOptions {
            k: 0.0,
            ..BreakerOptions::default()
        },
        idempotent: HashSet::from([GET.to_string()]),
    };
    let channel = connect(
        format!("http://{addr}").parse().unwrap(),
        options(&metrics, resilience),
    );
    let mut client = ProductServiceClient::new(channel);
    let start = std::time::Instant::now();
    let n = 300u64;
    for i in 0..n {
        let err = client
            .get_product(GetProductRequest {
                id: format!("p-{i}"),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let calls = upstream.calls.load(Ordering::SeqCst);
    let retries = calls - n;
    let bound = 5.0 + 0.1 * n as f64 + 1.0 * elapsed;
    assert!(
        retries as f64 <= bound,
        "{retries} retries > budget {bound}"
    );
    assert!(
        retries >= 30,
        "the budget allowed ~10%, got {retries} retries"
    );
    let text = metrics.encode();
    assert!(
        text.contains(&format!(
            "grpc_client_retries_total{{upstream=\"product\",path=\"{GET}\"}} {retries}"
        )),
        "{text}"
    );
    assert!(text.contains("grpc_client_retry_budget_exhausted_total{upstream=\"product\"}"));

    // CreateProduct is not idempotent: never retried.
    let before = upstream.calls.load(Ordering::SeqCst);
    for _ in 0..20 {
        client
            .create_product(CreateProductRequest::default())
            .await
            .unwrap_err();
    }
    assert_eq!(upstream.calls.load(Ordering::SeqCst) - before, 20);
}

#[tokio::test]
async fn resilience_retry_recovers_a_transient_failure_within_the_deadline() {
    let upstream = Flaky::default();
    let addr = serve(upstream.clone()).await;
    let metrics = Metrics::new();
    let resilience = ResilienceOptions {
        idempotent: HashSet::from([GET.to_string()]),
        ..ResilienceOptions::default()
    };
    let mut client = ProductServiceClient::new(connect(
        format!("http://{addr}").parse().unwrap(),
        options(&metrics, resilience),
    ));
    upstream.failing.store(true, Ordering::SeqCst);
    let healer = {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            while upstream.calls.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
            upstream.failing.store(false, Ordering::SeqCst);
        })
    };
    let reply = client
        .get_product(GetProductRequest { id: "p-1".into() })
        .await
        .expect("the retry succeeds");
    assert_eq!(reply.into_inner().product.unwrap().id, "p-1");
    assert!(upstream.calls.load(Ordering::SeqCst) >= 2);
    healer.await.unwrap();
}

#[tokio::test]
async fn resilience_breaker_opens_on_a_failing_upstream_and_recovers() {
    let upstream = Flaky::default();
    let addr = serve(upstream.clone()).await;
    let metrics = Metrics::new();
    let resilience = ResilienceOptions {
        retry: RetryOptions {
            max_attempts: 1,
            ..RetryOptions::default()
        },
        breaker: BreakerOptions {
            k: 2.0,
            window: Duration::from_millis(500),
            buckets: 10,
            min_requests: 10,
        },
        ..ResilienceOptions::default()
    };
    let channel = connect(
        format!("http://{addr}").parse().unwrap(),
        options(&metrics, resilience),
    );
    let throttle = channel.throttle().clone();
    let client = ProductServiceClient::new(channel);
    let call = |mut c: ProductServiceClient<_>| async move {
        c.get_product(GetProductRequest { id: "p".into() }).await
    };

    upstream.failing.store(true, Ordering::SeqCst);
    let mut local = 0;
    for _ in 0..200 {
        let err = call(client.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        if err
            .message()
            .contains("circuit breaker for upstream `product` is open")
        {
            local += 1;
        }
    }
    let reached = upstream.calls.load(Ordering::SeqCst);
    assert!(throttle.is_open());
    assert!(local > 100, "only {local} of 200 rejected locally");
    assert_eq!(reached + local, 200);
    let text = metrics.encode();
    assert!(
        text.contains("grpc_client_breaker_state{upstream=\"product\"} 1"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "grpc_client_breaker_rejections_total{{upstream=\"product\"}} {local}"
    )));

    // The upstream heals; after the window slides, every call goes through again.
    upstream.failing.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ok = call(client.clone()).await.is_ok();
        if ok && !throttle.is_open() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "breaker never closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..50 {
        call(client.clone())
            .await
            .expect("closed breaker lets calls through");
    }
    assert!(
        metrics
            .encode()
            .contains("grpc_client_breaker_state{upstream=\"product\"} 0")
    );
}
