//! gRPC status codes to HTTP status codes (the standard mapping of `google/rpc/code.proto`, as
//! used by Google APIs and grpc-gateway), and the JSON error body in `google.rpc.Status` shape:
//! `{"code": <gRPC code number>, "message": "...", "details": [...]}`.

use http::StatusCode;
use prost::Message as _;
use prost_reflect::DescriptorPool;
use serde_json::{Value, json};
use tonic::Code;

/// The HTTP status that stands for `code`.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The JSON error body.
pub fn error_body(code: Code, message: &str, details: Vec<Value>) -> Value {
    json!({ "code": code as i32, "message": message, "details": details })
}

/// `google.rpc.Status`, to read the details a service attached to its error.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// The details of `status` as JSON: each `Any` with its `@type`, its fields rendered when the
/// type is in `pool`, else its bytes in base64 under `value`.
pub fn details_json(status: &tonic::Status, pool: &DescriptorPool) -> Vec<Value> {
    use base64::Engine as _;
    if status.details().is_empty() {
        return Vec::new();
    }
    let Ok(decoded) = RpcStatus::decode(status.details()) else {
        return Vec::new();
    };
    decoded
        .details
        .into_iter()
        .map(|any| {
            let name = any.type_url.rsplit('/').next().unwrap_or_default();
            let rendered = pool.get_message_by_name(name).and_then(|desc| {
                let msg = prost_reflect::DynamicMessage::decode(desc, any.value.as_slice()).ok()?;
                serde_json::to_value(&msg).ok()
            });
            match rendered {
                Some(Value::Object(mut fields)) => {
                    fields.insert("@type".into(), Value::String(any.type_url));
                    Value::Object(fields)
                }
                _ => json!({
                    "@type": any.type_url,
                    "value": base64::engine::general_purpose::STANDARD.encode(&any.value),
                }),
            }
        })
        .collect()
}
