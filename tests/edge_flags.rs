//! End-to-end: `mesh serve edge --descriptor-set FILE --upstream pkg.Service=host:port` fronts a
//! gRPC service that is not part of the mesh, with the same REST transcoding and auth as ours.
//!
//! The service, `greet.v1.Greeter`, exists only in this test: its proto is compiled here with
//! protox into a descriptor set file, and a raw HTTP/2 handler answers it with dynamic messages.

use std::net::SocketAddr;
use std::process::Command;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http_body_util::BodyExt as _;
use mesh_testkit::process::{MeshProcess, http};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Value};

const MESH: &str = env!("CARGO_BIN_EXE_mesh");

const GREET_PROTO: &str = r#"
syntax = "proto3";
package greet.v1;
import "google/api/annotations.proto";
service Greeter {
  rpc SayHello(HelloRequest) returns (HelloReply) {
    option (google.api.http) = {get: "/v1/greet/{name}"};
  }
  rpc SayBye(HelloRequest) returns (HelloReply) {
    option (google.api.http) = {post: "/v1/greet/{name}:bye" body: "*"};
  }
}
message HelloRequest { string name = 1; }
message HelloReply { string message = 1; }
"#;

/// The encoded descriptor set of `greet.v1` (with `google.api.http` kept), written under `dir`.
fn descriptor_set(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    std::fs::create_dir_all(dir.join("greet/v1")).unwrap();
    std::fs::write(dir.join("greet/v1/greet.proto"), GREET_PROTO).unwrap();
    let protos = format!("{}/../../proto", env!("CARGO_MANIFEST_DIR"));
    let mut compiler = protox::Compiler::new([dir.to_str().unwrap(), protos.as_str()]).unwrap();
    compiler.include_imports(true);
    compiler.open_files(["greet/v1/greet.proto"]).unwrap();
    let bytes = compiler.encode_file_descriptor_set();
    let file = dir.join("greet.binpb");
    std::fs::write(&file, &bytes).unwrap();
    (file, bytes)
}

/// Answers `/greet.v1.Greeter/<Method>` with `HelloReply { message: "<method> <name>" }`.
async fn greeter(pool: DescriptorPool) -> SocketAddr {
    let handler = move |axum::extract::Path(method): axum::extract::Path<String>,
                        req: http::Request<axum::body::Body>| {
        let pool = pool.clone();
        async move {
            let mut body = req.into_body().collect().await.unwrap().to_bytes();
            body.advance(5);
            let input = pool.get_message_by_name("greet.v1.HelloRequest").unwrap();
            let output = pool.get_message_by_name("greet.v1.HelloReply").unwrap();
            let request = DynamicMessage::decode(input, body).unwrap();
            let name = request
                .get_field_by_name("name")
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            let mut reply = DynamicMessage::new(output);
            reply.set_field_by_name("message", Value::String(format!("{method} {name}")));
            let encoded = reply.encode_to_vec();
            let mut framed = BytesMut::new();
            framed.put_u8(0);
            framed.put_u32(u32::try_from(encoded.len()).unwrap());
            framed.put_slice(&encoded);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let frames = futures::stream::iter([
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(framed))),
                Ok(http_body::Frame::trailers(trailers)),
            ]);
            let mut response = http::Response::new(axum::body::Body::new(
                http_body_util::StreamBody::new(frames),
            ));
            response.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/grpc"),
            );
            response
        }
    };
    let router =
        axum::Router::new().route("/greet.v1.Greeter/{method}", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::from(router))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    addr
}

#[tokio::test]
async fn the_edge_fronts_a_foreign_grpc_service_from_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (file, bytes) = descriptor_set(dir.path());
    let pool = DescriptorPool::decode(bytes.as_slice()).unwrap();
    let upstream = greeter(pool).await;

    let mut command = Command::new(MESH);
    command
        .args(["serve", "edge", "--descriptor-set"])
        .arg(&file)
        .arg("--upstream")
        .arg(format!("greet.v1.Greeter={upstream}"))
        .env("MESH_EDGE_PORT", "0")
        .env("MESH_ADMIN_PORT", "0")
        .env("MESH_DATA_DIR", dir.path())
        // Only SayHello is public; SayBye needs a token, as any RPC not declared public.
        .env("MESH_EDGE_PUBLIC_ROUTES", "greet.v1.Greeter/SayHello");
    let mesh = MeshProcess::start(command);
    let edge_addr = mesh.addr("edge").to_string();

    let (status, body) = tokio::task::spawn_blocking({
        let addr = edge_addr.clone();
        move || http(&addr, "GET", "/v1/greet/ann", "")
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["message"], "SayHello ann");

    let (status, body) = tokio::task::spawn_blocking({
        let addr = edge_addr.clone();
        move || http(&addr, "POST", "/v1/greet/ann:bye", "{}")
    })
    .await
    .unwrap();
    assert_eq!(status, 401, "not public: {body}");

    // A flag for the edge without the edge is refused, naming the flag.
    let out = Command::new(MESH)
        .args([
            "serve",
            "product",
            "--upstream",
            "greet.v1.Greeter=127.0.0.1:1",
        ])
        .env("MESH_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--upstream"), "{err}");
}
