//! gRPC-Web through the edge, with hand-built requests over HTTP/1.1 (as a browser's
//! grpc-web client sends them): binary and base64 text, unary and server streaming, errors,
//! and the trailers frame (flag 0x80) at the end of the body.

mod common;

use base64::Engine as _;
use bytes::{Buf as _, Bytes};
use common::*;
use mesh_contracts::product::v1::{GetProductRequest, GetProductResponse};
use mesh_edge::config::EdgeConfig;
use prost::Message as _;

/// `message` in one gRPC(-Web) frame.
fn frame(message: &impl prost::Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&bytes);
    out
}

/// The data frames and the trailers of a gRPC-Web body.
fn unframe(mut body: Bytes) -> (Vec<Bytes>, Option<String>) {
    let mut data = Vec::new();
    let mut trailers = None;
    while body.has_remaining() {
        assert!(body.len() >= 5, "a truncated frame header: {body:?}");
        let flag = body.get_u8();
        let len = body.get_u32() as usize;
        assert!(body.len() >= len, "a truncated frame");
        let payload = body.split_to(len);
        if flag & 0x80 != 0 {
            assert!(trailers.is_none(), "one trailers frame");
            trailers = Some(String::from_utf8(payload.to_vec()).unwrap());
        } else {
            assert!(trailers.is_none(), "data after the trailers");
            data.push(payload);
        }
    }
    (data, trailers)
}

/// base64 as grpc-web-text sends it: possibly several padded chunks back to back.
fn unbase64(text: &[u8]) -> Bytes {
    let mut out = Vec::new();
    for group in text.chunks(4) {
        out.extend(
            base64::engine::general_purpose::STANDARD
                .decode(group)
                .unwrap(),
        );
    }
    Bytes::from(out)
}

/// The grpc-status of a reply: from the trailers frame, else from the headers (trailers-only).
fn grpc_status(r: &Reply, trailers: &Option<String>) -> String {
    if let Some(t) = trailers {
        for line in t.split("\r\n") {
            if let Some(v) = line.strip_prefix("grpc-status:") {
                return v.trim().to_string();
            }
        }
    }
    r.headers
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn post(addr: std::net::SocketAddr, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
    send(
        addr,
        "POST",
        path,
        body,
        &[
            ("content-type", content_type),
            // As grpc-web clients do: text mode asks for a text answer.
            ("accept", content_type),
            ("x-grpc-web", "1"),
            ("origin", "https://shop.example"),
        ],
        false,
    )
    .await
}

#[tokio::test]
async fn unary_binary_and_text() {
    let upstream = start_upstream().await;
    let e = start_edge(
        EdgeConfig {
            cors_origins: vec!["https://shop.example".into()],
            ..EdgeConfig::default()
        },
        upstream,
    )
    .await;
    let request = frame(&GetProductRequest { id: "p1".into() });
    let path = "/product.v1.ProductService/GetProduct";

    let r = post(e.addr, path, "application/grpc-web+proto", request.clone()).await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc-web"),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://shop.example"
    );
    let (data, trailers) = unframe(r.body.clone());
    assert_eq!(data.len(), 1);
    let product = GetProductResponse::decode(data[0].clone())
        .unwrap()
        .product
        .unwrap();
    assert_eq!(product.id, "p1");
    assert_eq!(grpc_status(&r, &trailers), "0", "{trailers:?}");
    assert!(trailers.is_some(), "the status comes in a trailers frame");

    let text = base64::engine::general_purpose::STANDARD.encode(&request);
    let r = post(e.addr, path, "application/grpc-web-text", text.into_bytes()).await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc-web-text")
    );
    let (data, trailers) = unframe(unbase64(&r.body));
    let product = GetProductResponse::decode(data[0].clone())
        .unwrap()
        .product
        .unwrap();
    assert_eq!(product.id, "p1");
    assert_eq!(grpc_status(&r, &trailers), "0");

    // Errors keep their codes.
    let missing = frame(&GetProductRequest {
        id: "missing".into(),
    });
    let r = post(e.addr, path, "application/grpc-web+proto", missing).await;
    let (data, trailers) = unframe(r.body.clone());
    assert!(data.is_empty());
    assert_eq!(grpc_status(&r, &trailers), "5", "NOT_FOUND");
    let r = post(
        e.addr,
        "/nope.v1.Nothing/Call",
        "application/grpc-web+proto",
        request,
    )
    .await;
    let (_, trailers) = unframe(r.body.clone());
    assert_eq!(grpc_status(&r, &trailers), "12", "UNIMPLEMENTED");
}

#[tokio::test]
async fn server_streaming() {
    let upstream = start_upstream().await;
    let e = start_edge(EdgeConfig::default(), upstream).await;
    // spec.v1.Message { message_id = "m1" } (field 1, a string), framed by hand: the edge needs
    // no generated code for it.
    let message = [0x0a, 0x02, b'm', b'1'];
    let mut request = vec![0u8, 0, 0, 0, message.len() as u8];
    request.extend_from_slice(&message);
    for content_type in ["application/grpc-web", "application/grpc-web-text+proto"] {
        let body = if content_type.contains("text") {
            base64::engine::general_purpose::STANDARD
                .encode(&request)
                .into_bytes()
        } else {
            request.clone()
        };
        let r = post(e.addr, "/spec.v1.EchoService/Watch", content_type, body).await;
        assert_eq!(r.status, 200, "{content_type}");
        let body = if content_type.contains("text") {
            unbase64(&r.body)
        } else {
            r.body.clone()
        };
        let (data, trailers) = unframe(body);
        assert_eq!(data.len(), 3, "{content_type}: three messages");
        for d in &data {
            assert_eq!(&d[..], &message[..]);
        }
        assert_eq!(grpc_status(&r, &trailers), "0", "{content_type}");
    }
}
