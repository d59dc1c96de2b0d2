//! The edge's direct answer writer (`mesh_edge::wire_json`) against the general path (decode
//! into a `DynamicMessage`, serialize with prost-reflect) on the contracts' real routes.
//!
//! Input: a byte choosing the route (among those whose answers the writer covers), then the
//! upstream's answer bytes. Invariants:
//! - when the writer answers, its JSON is valid and equal (as JSON values) to the general
//!   path's, which accepts the same bytes;
//! - when the general path refuses the bytes (they do not decode, or the message does not
//!   serialize: a timestamp out of range), the writer declines them (never a JSON answer for
//!   bytes the general path would not answer).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mesh_edge::routes::Route;
use mesh_edge::transcode::{AnswerPlan, response_json};
use mesh_edge::wire_json::WireJson;
use prost_reflect::DynamicMessage;

fn plans() -> &'static (WireJson, Vec<(AnswerPlan, &'static Route)>) {
    static PLANS: OnceLock<(WireJson, Vec<(AnswerPlan, &'static Route)>)> = OnceLock::new();
    PLANS.get_or_init(|| {
        let mut plans = WireJson::new();
        let mut routes: Vec<(AnswerPlan, &'static Route)> = mesh_fuzz::routes()
            .routes()
            .map(|route| (AnswerPlan::compile(&mut plans, route), route.as_ref()))
            .filter(|(plan, _)| *plan != AnswerPlan::General)
            .collect();
        // The table's order is not fixed; the input's first byte must mean the same route.
        routes.sort_by(|a, b| a.1.label.cmp(&b.1.label));
        (plans, routes)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let (plans, routes) = plans();
    let (plan, route) = routes[usize::from(choice) % routes.len()];
    let mut out = Vec::new();
    let direct = match plan {
        AnswerPlan::Whole(id) => plans.write(id, bytes, &mut out),
        AnswerPlan::Field(id, number) => plans.write_field(id, number, bytes, &mut out),
        AnswerPlan::General => unreachable!("filtered out"),
    };
    // The general path refuses bytes it cannot decode, and answers it cannot serialize (a
    // timestamp out of range: the edge's 500).
    let general = DynamicMessage::decode(route.rpc.output(), bytes)
        .ok()
        .and_then(|message| response_json(route, &message).ok());
    match (direct, general) {
        (Ok(()), Some(general)) => {
            let fast: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
                panic!("{}: invalid JSON ({e}): {}", route.label, String::from_utf8_lossy(&out))
            });
            let slow: serde_json::Value = serde_json::from_slice(&general).expect("valid JSON");
            assert_eq!(fast, slow, "{}", route.label);
        }
        (Ok(()), None) => panic!(
            "{}: the writer answered bytes the general path refuses",
            route.label
        ),
        (Err(_), _) => {}
    }
});
