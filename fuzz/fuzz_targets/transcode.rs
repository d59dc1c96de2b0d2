//! REST-to-protobuf transcoding at the edge (`mesh_edge::transcode`) on the contracts' real
//! routes: the path variables, the query string and the JSON body into the RPC's request.
//!
//! Input: `<METHOD> <path>[?<query>]\n<body bytes>`. Invariants:
//! - a request the edge cannot transcode is a client error (`BadRequest`, a 400), never
//!   anything else (an internal error would be a 500 for bad input);
//! - a transcoded message is of the RPC's input type, and survives the protobuf wire format and
//!   the proto3 JSON mapping unchanged (what the edge sends upstream is what it understood).

#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use mesh_edge::error::EdgeError;
use mesh_edge::routes::Lookup;
use mesh_edge::transcode;
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage as _, SerializeOptions};

fuzz_target!(|data: &[u8]| {
    let (line, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    let Some((method, target)) = line.split_once(' ') else {
        return;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let Lookup::Found(route, bindings) = mesh_fuzz::routes().lookup(&method, path) else {
        return;
    };
    match transcode::request_message(route, &bindings, query, body) {
        Ok(message) => {
            let input = route.rpc.input();
            assert_eq!(message.descriptor(), input, "{}", route.label);
            let json = to_json(&message);
            let wire = DynamicMessage::decode(input.clone(), message.encode_to_vec().as_slice())
                .expect("our own encoding decodes");
            assert_eq!(
                to_json(&wire),
                json,
                "{}: through the wire format",
                route.label
            );
            let back = transcode::decode_json(&input, json.clone()).unwrap_or_else(|e| {
                panic!(
                    "{}: the JSON of a transcoded message is refused: {e:?}: {json}",
                    route.label
                )
            });
            assert_eq!(to_json(&back), json, "{}: through JSON", route.label);
        }
        Err(EdgeError::BadRequest(_)) => {}
        Err(other) => panic!(
            "{} {path:?}: bad input must be a 400, got {other:?}",
            route.label
        ),
    }
});

fn to_json(message: &DynamicMessage) -> serde_json::Value {
    message
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .expect("a message of the contracts serializes to JSON")
}
