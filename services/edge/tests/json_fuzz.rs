//! Property tests of the JSON decoding path: arbitrary JSON documents, arbitrary bytes, and
//! arbitrary query strings sent to every REST route of the contracts either transcode or fail
//! with a request error (`400`, never an internal one); none panics.
//!
//! Runs in the normal test suite (`cargo nextest run`), so CI exercises it on every change.

mod contracts;

use contracts::table;
use http::Method;
use mesh_edge::error::EdgeError;
use mesh_edge::routes::Lookup;
use mesh_edge::transcode::{decode_json, request_message};
use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value, nested a few levels, with keys that sometimes are real field names.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("id".to_string()),
        Just("product".to_string()),
        Just("price".to_string()),
        Just("amountMinor".to_string()),
        Just("currencyCode".to_string()),
        Just("lines".to_string()),
        Just("quantity".to_string()),
        Just("updateMask".to_string()),
        Just("createTime".to_string()),
        Just("status".to_string()),
        Just("attributes".to_string()),
        Just("@type".to_string()),
        "[a-zA-Z_]{1,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,24}".prop_map(Value::String),
        Just(Value::String("2026-11-25T10:00:00Z".into())),
        Just(Value::String("9223372036854775808".into())),
        Just(Value::String("ORDER_STATUS_CONFIRMED".into())),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn is_request_error(result: &Result<prost_reflect::DynamicMessage, EdgeError>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => matches!(e, EdgeError::BadRequest(_)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_json_into_any_request_type_never_panics(value in json(), pick in any::<prop::sample::Index>()) {
        let inputs: Vec<_> = table().routes().map(|r| r.rpc.input()).collect();
        let desc = pick.get(&inputs);
        let result = decode_json(desc, value);
        prop_assert!(is_request_error(&result), "{result:?}");
    }

    #[test]
    fn any_body_bytes_on_any_route_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), pick in any::<prop::sample::Index>()) {
        let routes: Vec<_> = table().routes().collect();
        let route = pick.get(&routes);
        let result = request_message(route, &[], None, &body);
        prop_assert!(is_request_error(&result), "{result:?}");
    }

    #[test]
    fn any_query_string_never_panics(query in "[a-zA-Z0-9_.=&%+\\-\\[\\]]{0,64}", pick in any::<prop::sample::Index>()) {
        let routes: Vec<_> = table().routes().collect();
        let route = pick.get(&routes);
        let result = request_message(route, &[], Some(&query), b"");
        prop_assert!(is_request_error(&result), "{result:?}");
    }

    #[test]
    fn any_path_under_v1_never_panics(path in "/v1/[a-zA-Z0-9/:._%\\-*]{0,48}", method in prop::sample::select(vec![Method::GET, Method::POST, Method::PATCH, Method::PUT, Method::DELETE])) {
        if let Lookup::Found(route, bindings) = table().lookup(&method, &path) {
            let result = request_message(route, &bindings, None, b"{}");
            prop_assert!(is_request_error(&result), "{result:?}");
        }
    }
}
