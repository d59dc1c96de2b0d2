//! gRPC-Web framing at the edge (`mesh_edge::grpc_web::translate`): the translation of a
//! browser's call to native gRPC and of the answer back, with an echo handler in place of the
//! upstream (it answers the request body it received as the response body).
//!
//! Input: one byte choosing the content type (binary or base64 text, with or without `+proto`),
//! then the request body. Invariants:
//! - the handler sees a native gRPC request (`application/grpc`);
//! - binary bodies reach it unchanged, canonical base64 text bodies decoded;
//! - the answer is well-formed gRPC-Web: complete frames (base64 decoded for text), the echoed
//!   bytes first, then exactly one trailers frame (flag `0x80`) carrying `grpc-status`, or a
//!   trailers-only answer with `grpc-status` in the headers.

#![no_main]

use axum::body::Body;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};

const CONTENT_TYPES: [&str; 4] = [
    "application/grpc-web",
    "application/grpc-web+proto",
    "application/grpc-web-text",
    "application/grpc-web-text+proto",
];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(choice) % CONTENT_TYPES.len()];
    let text = content_type.starts_with("application/grpc-web-text");
    let request = Request::post("/product.v1.ProductService/GetProduct")
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT, content_type)
        .header("x-grpc-web", "1")
        .body(Body::from(body.to_vec()))
        .expect("a request");
    // What the echo handler received: `Some(Ok(bytes))`, or `Some(Err(_))` if the body could not
    // be read (bad base64).
    let seen: Arc<Mutex<Option<Result<Bytes, String>>>> = Arc::default();
    let handler_seen = seen.clone();
    let response = mesh_fuzz::block_on(async move {
        let response = mesh_edge::grpc_web::translate(request, move |req: Request<Body>| {
            let seen = handler_seen.clone();
            async move { echo(req, &seen).await }
        })
        .await;
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("the edge's answer body reads");
        (parts, bytes)
    });
    let (parts, answer) = response;
    let seen = seen.lock().expect("not poisoned").take();
    let echoed = match &seen {
        Some(Ok(bytes)) => {
            if !text {
                assert_eq!(bytes.as_ref(), body, "a binary body reaches gRPC unchanged");
            } else if let Ok(decoded) = STANDARD.decode(body)
                && STANDARD.encode(&decoded).as_bytes() == body
            {
                assert_eq!(
                    bytes.as_ref(),
                    decoded,
                    "a base64 body reaches gRPC decoded"
                );
            }
            Some(bytes.clone())
        }
        _ => None,
    };
    assert_eq!(parts.status, StatusCode::OK, "gRPC-Web answers 200");
    let answer = if text {
        decode_text(&answer)
    } else {
        answer.to_vec()
    };
    let (data, trailers) = unframe(&answer);
    match trailers {
        Some(trailers) => {
            assert!(
                trailers.lines().any(|l| l.starts_with("grpc-status:")),
                "the trailers frame carries grpc-status: {trailers:?}"
            );
            if let Some(echoed) = echoed {
                assert_eq!(
                    data,
                    echoed.as_ref(),
                    "the handler's body comes back framed"
                );
            }
        }
        None => {
            assert!(data.is_empty(), "data without a trailers frame");
            assert!(
                parts.headers.contains_key("grpc-status"),
                "no trailers frame and no grpc-status header: {:?}",
                parts.headers
            );
        }
    }
});

/// The echo handler: checks the request is native gRPC, reads its body and answers it back
/// in one frame with `grpc-status: 0` in the trailers, or `INVALID_ARGUMENT` (trailers-only) if it cannot be
/// read.
async fn echo(req: Request<Body>, seen: &Mutex<Option<Result<Bytes, String>>>) -> Response {
    assert_eq!(
        req.headers().get(header::CONTENT_TYPE),
        Some(&HeaderValue::from_static("application/grpc")),
        "the handler gets native gRPC"
    );
    let read = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .map_err(|e| e.to_string());
    *seen.lock().expect("not poisoned") = Some(read.clone());
    match read {
        Ok(bytes) => {
            // One gRPC frame (uncompressed) holding what it read.
            let mut framed = vec![0u8];
            framed.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
            framed.extend_from_slice(&bytes);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let body = http_body_util::StreamBody::new(futures_util::stream::iter([
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(framed))),
                Ok(http_body::Frame::trailers(trailers)),
            ]));
            let mut response = Response::new(Body::new(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            response
        }
        Err(_) => tonic::Status::invalid_argument("unreadable body").into_http(),
    }
}

/// A gRPC-Web text answer decoded: base64 possibly in several padded chunks back to back.
fn decode_text(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for group in text.chunks(4) {
        out.extend(STANDARD.decode(group).expect("the answer is base64"));
    }
    out
}

/// The data of the data frames, and the text of the trailers frame, of a gRPC-Web body.
fn unframe(mut body: &[u8]) -> (Vec<u8>, Option<String>) {
    let mut data = Vec::new();
    let mut trailers = None;
    while !body.is_empty() {
        assert!(body.len() >= 5, "a truncated frame header");
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert!(body.len() >= 5 + len, "a truncated frame");
        let payload = &body[5..5 + len];
        assert!(trailers.is_none(), "nothing after the trailers frame");
        if flag & 0x80 != 0 {
            trailers = Some(String::from_utf8_lossy(payload).into_owned());
        } else {
            data.extend_from_slice(payload);
        }
        body = &body[5 + len..];
    }
    (data, trailers)
}
