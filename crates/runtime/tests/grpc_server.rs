//! The gRPC server bootstrap over a real socket: health, reflection (v1 and v1alpha), an
//! unknown method, metrics, readiness, and graceful draining bounded by the grace period.

mod common;

use std::time::Duration;

use common::{Gate, TestProducts, product_routes, start};
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_contracts::product::v1::{GetProductRequest, GetProductResponse};
use tokio::sync::{mpsc, oneshot};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn health_answers_serving_for_the_port_and_each_service() {
    let (_stop, stopped) = oneshot::channel::<()>();
    let server = start(
        "product",
        product_routes(TestProducts::default()),
        Duration::from_secs(5),
        async {
            let _ = stopped.await;
        },
    )
    .await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "product.v1.ProductService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.v1.Nope".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(server.readiness.is_ready());
}

async fn list_services_v1alpha(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn describe_symbol_v1(channel: tonic::transport::Channel, symbol: &str) -> usize {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1 answers")
        .into_inner();
    match responses.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto.len(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn reflection_lists_only_this_port_services_in_both_versions() {
    let (_stop, stopped) = oneshot::channel::<()>();
    let server = start(
        "product",
        product_routes(TestProducts::default()),
        Duration::from_secs(5),
        async {
            let _ = stopped.await;
        },
    )
    .await;
    let names = list_services_v1alpha(server.channel().await).await;
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "product.v1.ProductService",
        ]
    );
    let files = describe_symbol_v1(server.channel().await, "product.v1.ProductService").await;
    assert!(files >= 1, "v1 reflection returns the file and its imports");
}

#[tokio::test]
async fn an_unknown_method_answers_unimplemented_and_metrics_count_it_as_unknown() {
    let (_stop, stopped) = oneshot::channel::<()>();
    let server = start(
        "product",
        product_routes(TestProducts::default()),
        Duration::from_secs(5),
        async {
            let _ = stopped.await;
        },
    )
    .await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.expect("channel ready");
    let status = grpc
        .unary::<GetProductRequest, GetProductResponse, _>(
            tonic::Request::new(GetProductRequest { id: "p-1".into() }),
            "/product.v1.ProductService/NoSuchMethod".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("no such method");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let text = server.metrics.encode();
    assert!(
        text.contains(r#"grpc_server_handled_total{grpc_service="unknown",grpc_method="unknown",grpc_code="UNIMPLEMENTED"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn shutdown_turns_unready_lets_in_flight_calls_finish_then_returns() {
    let gate = std::sync::Arc::new(Gate::default());
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = start(
        "product",
        product_routes(TestProducts {
            started: Some(started_tx),
            gate: Some(gate.clone()),
        }),
        Duration::from_secs(30),
        async {
            let _ = stopped.await;
        },
    )
    .await;
    let mut client = ProductServiceClient::new(server.channel().await);
    let call = tokio::spawn(async move {
        client
            .get_product(GetProductRequest { id: "slow".into() })
            .await
    });
    assert_eq!(started.recv().await.as_deref(), Some("slow"));

    stop.send(()).unwrap();
    // Shutdown has begun: readiness drops while the call is still in flight.
    while server.readiness.is_ready() {
        tokio::task::yield_now().await;
    }
    assert!(!server.task.is_finished(), "the server waits for the call");

    gate.open().await;
    let response = call.await.unwrap().expect("the in-flight call completes");
    assert_eq!(response.into_inner().product.unwrap().id, "slow");
    server
        .task
        .await
        .unwrap()
        .expect("the server stops cleanly after draining");
}

#[tokio::test(start_paused = true)]
async fn the_grace_period_bounds_the_drain() {
    let gate = std::sync::Arc::new(Gate::default());
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = start(
        "product",
        product_routes(TestProducts {
            started: Some(started_tx),
            gate: Some(gate),
        }),
        Duration::from_secs(25),
        async {
            let _ = stopped.await;
        },
    )
    .await;
    let mut client = ProductServiceClient::new(server.channel().await);
    let _call = tokio::spawn(async move {
        client
            .get_product(GetProductRequest { id: "stuck".into() })
            .await
    });
    assert_eq!(started.recv().await.as_deref(), Some("stuck"));
    let before = tokio::time::Instant::now();
    stop.send(()).unwrap();
    server
        .task
        .await
        .unwrap()
        .expect("the server gives up on the stuck call and returns");
    assert!(
        before.elapsed() >= Duration::from_secs(25),
        "it waited the whole grace period (virtual time): {:?}",
        before.elapsed()
    );
}

/// What a reflection client such as Python's `grpcio-reflection`, Postman or grpcui does, on one
/// stream: list the services, ask for the file of each, with an unknown symbol in between. Every
/// listed service resolves (the file that defines it comes back), and the unknown symbol gets an
/// in-stream NOT_FOUND `error_response` after which the stream keeps answering.
macro_rules! describe_everything_listed {
    ($version:ident, $channel:expr) => {{
        use prost::Message as _;
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let (questions, rx) = mpsc::unbounded_channel();
        let ask = |q: MessageRequest| {
            questions
                .send(ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(q),
                })
                .unwrap()
        };
        let mut answers = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .expect("reflection answers")
            .into_inner();
        let mut next = async || {
            answers
                .message()
                .await
                .expect("the stream stays open")
                .expect("one answer per question")
                .message_response
                .expect("an answer")
        };
        ask(MessageRequest::ListServices(String::new()));
        let services: Vec<String> = match next().await {
            MessageResponse::ListServicesResponse(l) => {
                l.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected answer {other:?}"),
        };
        assert!(services.len() >= 4, "{services:?}");
        ask(MessageRequest::FileContainingSymbol("nope.v1.Nope".into()));
        match next().await {
            MessageResponse::ErrorResponse(e) => {
                assert_eq!(e.error_code, tonic::Code::NotFound as i32, "{e:?}");
                assert!(e.error_message.contains("nope.v1.Nope"), "{e:?}");
            }
            other => panic!("an unknown symbol is an in-stream error, got {other:?}"),
        }
        for service in &services {
            ask(MessageRequest::FileContainingSymbol(service.clone()));
            let files = match next().await {
                MessageResponse::FileDescriptorResponse(f) => f.file_descriptor_proto,
                other => panic!("{service} is listed but not described: {other:?}"),
            };
            let first = prost_types::FileDescriptorProto::decode(files[0].as_slice()).unwrap();
            let (package, name) = service.rsplit_once('.').unwrap();
            assert_eq!(first.package(), package, "{service}");
            assert!(
                first.service.iter().any(|s| s.name() == name),
                "the first file defines {service}"
            );
            ask(MessageRequest::FileByFilename(first.name().to_string()));
            match next().await {
                MessageResponse::FileDescriptorResponse(f) => {
                    assert_eq!(f.file_descriptor_proto[0], files[0], "{service}")
                }
                other => panic!("file {} not found: {other:?}", first.name()),
            }
        }
        ask(MessageRequest::FileByFilename("nope.proto".into()));
        assert!(matches!(next().await, MessageResponse::ErrorResponse(_)));
        services
    }};
}

#[tokio::test]
async fn reflection_describes_every_listed_service_and_answers_errors_in_stream() {
    let (_stop, stopped) = oneshot::channel::<()>();
    let server = start(
        "product",
        product_routes(TestProducts::default()),
        Duration::from_secs(5),
        async {
            let _ = stopped.await;
        },
    )
    .await;
    let v1 = describe_everything_listed!(v1, server.channel().await);
    let v1alpha = describe_everything_listed!(v1alpha, server.channel().await);
    assert_eq!(v1, v1alpha);
    assert!(v1.contains(&"grpc.reflection.v1.ServerReflection".to_string()));
}
