//! Native gRPC through the edge over real sockets: health and reflection answered by the edge,
//! unary and bidirectional-streaming calls proxied to the owning service.

mod common;

use common::*;
use mesh_contracts::iot::v1::gateway_service_client::GatewayServiceClient;
use mesh_contracts::iot::v1::{
    Hello, OpenChannelRequest, open_channel_request, open_channel_response,
};
use mesh_contracts::product::v1::GetProductRequest;
use mesh_contracts::product::v1::product_service_client::ProductServiceClient;
use mesh_edge::config::EdgeConfig;
use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn health_and_reflection_are_answered_by_the_edge() {
    let upstream = start_upstream().await;
    let e = start_edge(EdgeConfig::default(), upstream).await;
    let ch = channel(e.addr).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "product.v1.ProductService", "iot.v1.GatewayService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, 1, "{service:?} SERVING");
    }
    let mut reflection = ServerReflectionClient::new(ch);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "auth.v1.AuthService",
        "product.v1.ProductService",
        "iot.v1.GatewayService",
        "vm.v1.VendingMachineService",
        "spec.v1.EchoService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn unary_and_bidi_streaming_pass_through() {
    let upstream = start_upstream().await;
    let e = start_edge(EdgeConfig::default(), upstream).await;
    let ch = channel(e.addr).await;
    let mut products = ProductServiceClient::new(ch.clone());
    let p = products
        .get_product(GetProductRequest { id: "p9".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.product.unwrap().id, "p9");
    let err = products
        .get_product(GetProductRequest {
            id: "missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "product missing does not exist");

    let mut gateway = GatewayServiceClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut inbound = gateway
        .open_channel(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for device in ["d1", "d2", "d3"] {
        tx.send(OpenChannelRequest {
            frame: Some(open_channel_request::Frame::Hello(Hello {
                device_id: device.into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        // Each frame is answered before the next is sent: a real bidirectional stream.
        let reply = inbound.message().await.unwrap().unwrap();
        let Some(open_channel_response::Frame::Welcome(w)) = reply.frame else {
            panic!("not a welcome");
        };
        assert_eq!(w.session_id, format!("session-{device}"));
    }
    drop(tx);
    assert!(
        inbound.message().await.unwrap().is_none(),
        "the stream ends cleanly"
    );
}

#[tokio::test]
async fn unknown_services_and_dead_upstreams_are_clear() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = start_edge(EdgeConfig::default(), dead).await;
    let mut products = ProductServiceClient::new(channel(e.addr).await);
    let err = products
        .get_product(GetProductRequest { id: "p".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
}
