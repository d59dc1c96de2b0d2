//! The edge's direct answer writer ([`mesh_edge::wire_json`]) against the general path
//! (decode into a `DynamicMessage`, serialize with prost-reflect), on every REST route of the
//! contracts: random answers, their concatenations (protobuf's merge), unknown fields, and
//! damaged bytes. Where the direct writer answers, the general path answers the same JSON;
//! where the general path refuses the bytes, the direct writer declines; a canonical encoding
//! of a covered type is never declined (so the fast path is really the one taken).

mod contracts;

use contracts::table;
use mesh_edge::routes::Route;
use mesh_edge::transcode::{AnswerPlan, response_json};
use mesh_edge::wire_json::{Declined, WireJson};
use prost::Message as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value};

/// A small deterministic generator (xorshift64*), so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn random_string(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => String::new(),
        1 => "p-1".to_string(),
        2 => "é \"quoted\" \\ back\nslash\u{1} </script> \u{2028} 🦀".to_string(),
        _ => (0..rng.below(12))
            .map(|_| char::from(b' ' + rng.below(95) as u8))
            .collect(),
    }
}

fn random_scalar(kind: &Kind, rng: &mut Rng, depth: u32) -> Value {
    let any = rng.next();
    match kind {
        Kind::Double => Value::F64(rng.pick(&[
            0.0,
            -0.0,
            1.5,
            -2.25e-7,
            1e300,
            5e-324,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::from_bits(0x4009_21FB_5444_2D18),
        ])),
        Kind::Float => Value::F32(rng.pick(&[
            0.0,
            -0.0,
            1.5,
            0.1,
            3.4e38,
            1e-45,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ])),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(rng.pick(&[0, 1, -1, i32::MIN, i32::MAX, 1234, any as i32]))
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(rng.pick(&[0, 1, -1, i64::MIN, i64::MAX, any as i64]))
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(rng.pick(&[0, 1, u32::MAX, any as u32])),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(rng.pick(&[0, 1, u64::MAX, any])),
        Kind::Bool => Value::Bool(rng.below(2) == 1),
        Kind::String => Value::String(random_string(rng)),
        Kind::Bytes => Value::Bytes(
            (0..rng.below(9))
                .map(|_| rng.next() as u8)
                .collect::<Vec<u8>>()
                .into(),
        ),
        Kind::Enum(e) => {
            let mut numbers: Vec<i32> = e.values().map(|v| v.number()).collect();
            numbers.push(0);
            numbers.push(4099); // a number the enum does not name
            Value::EnumNumber(rng.pick(&numbers))
        }
        Kind::Message(m) => Value::Message(random_message(m, rng, depth + 1)),
    }
}

fn random_key(kind: &Kind, rng: &mut Rng) -> MapKey {
    match random_scalar(kind, rng, 0) {
        Value::Bool(v) => MapKey::Bool(v),
        Value::I32(v) => MapKey::I32(v),
        Value::I64(v) => MapKey::I64(v),
        Value::U32(v) => MapKey::U32(v),
        Value::U64(v) => MapKey::U64(v),
        Value::String(v) => MapKey::String(v),
        other => panic!("not a map key: {other:?}"),
    }
}

fn random_field(field: &FieldDescriptor, rng: &mut Rng, depth: u32) -> Value {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            unreachable!("a map field's kind is its entry")
        };
        let key = entry.map_entry_key_field().kind();
        let value = entry.map_entry_value_field().kind();
        let entries = (0..rng.below(4))
            .map(|_| (random_key(&key, rng), random_scalar(&value, rng, depth)))
            .collect();
        Value::Map(entries)
    } else if field.is_list() {
        Value::List(
            (0..rng.below(4))
                .map(|_| random_scalar(&field.kind(), rng, depth))
                .collect(),
        )
    } else {
        random_scalar(&field.kind(), rng, depth)
    }
}

fn random_message(desc: &MessageDescriptor, rng: &mut Rng, depth: u32) -> DynamicMessage {
    let mut message = DynamicMessage::new(desc.clone());
    match desc.full_name() {
        "google.protobuf.Timestamp" => {
            let seconds = rng.pick(&[0, 1_764_806_400, -62_135_596_800, 253_402_300_799]);
            message.set_field_by_name("seconds", Value::I64(seconds));
            let nanos = rng.pick(&[0, 1_000_000, 123_456_789, 999_999_999, 500]);
            message.set_field_by_name("nanos", Value::I32(nanos));
            return message;
        }
        "google.protobuf.Duration" => {
            let (seconds, nanos) = rng.pick(&[(0, 0), (1, 500_000_000), (-3, -1), (86_400, 0)]);
            message.set_field_by_name("seconds", Value::I64(seconds));
            message.set_field_by_name("nanos", Value::I32(nanos));
            return message;
        }
        _ => {}
    }
    if depth > 4 {
        return message;
    }
    for field in desc.fields() {
        if rng.below(3) == 0 {
            continue;
        }
        message.set_field(&field, random_field(&field, rng, depth));
    }
    message
}

/// The general path's JSON, or `None` when it refuses the bytes.
fn general(route: &Route, bytes: &[u8]) -> Option<Vec<u8>> {
    let message = DynamicMessage::decode(route.rpc.output(), bytes).ok()?;
    response_json(route, &message).ok()
}

/// Whether `desc` reaches a map field (whose keys prost-reflect writes in hash order, so two
/// equal answers may differ in their bytes).
fn reaches_map(desc: &MessageDescriptor, seen: &mut Vec<String>) -> bool {
    if seen.iter().any(|s| s == desc.full_name()) {
        return false;
    }
    seen.push(desc.full_name().to_string());
    desc.fields()
        .any(|f| f.is_map() || matches!(f.kind(), Kind::Message(m) if reaches_map(&m, seen)))
}

fn direct(plans: &WireJson, plan: AnswerPlan, bytes: &[u8]) -> Result<Vec<u8>, Declined> {
    let mut out = Vec::new();
    match plan {
        AnswerPlan::Whole(id) => plans.write(id, bytes, &mut out)?,
        AnswerPlan::Field(id, number) => plans.write_field(id, number, bytes, &mut out)?,
        AnswerPlan::General => return Err(Declined),
    }
    Ok(out)
}

/// Checks one input; `true` when the direct writer answered.
fn check(plans: &WireJson, plan: AnswerPlan, route: &Route, bytes: &[u8], what: &str) -> bool {
    let slow = general(route, bytes);
    match direct(plans, plan, bytes) {
        Ok(json) => {
            let fast: serde_json::Value = serde_json::from_slice(&json).unwrap_or_else(|e| {
                panic!(
                    "{} ({what}): the direct writer wrote invalid JSON ({e}): {}",
                    route.label,
                    String::from_utf8_lossy(&json)
                )
            });
            let slow_bytes = slow.unwrap_or_else(|| {
                panic!(
                    "{} ({what}): the direct writer answered bytes the general path refuses: {bytes:?}",
                    route.label
                )
            });
            let slow: serde_json::Value =
                serde_json::from_slice(&slow_bytes).expect("the general path writes JSON");
            assert_eq!(fast, slow, "{} ({what}): bytes {bytes:?}", route.label);
            if json != slow_bytes {
                // Same values, other bytes: only a map's key order may differ.
                assert!(
                    reaches_map(&route.rpc.output(), &mut Vec::new()),
                    "{} ({what}): same JSON values, other text: {} vs {}",
                    route.label,
                    String::from_utf8_lossy(&json),
                    String::from_utf8_lossy(&slow_bytes)
                );
            }
            true
        }
        Err(Declined) => false,
    }
}

fn plans() -> (WireJson, Vec<(AnswerPlan, &'static Route)>) {
    let mut plans = WireJson::new();
    let routes = table()
        .routes()
        .map(|route| (AnswerPlan::compile(&mut plans, route), route.as_ref()))
        .collect();
    (plans, routes)
}

#[test]
fn almost_every_route_answers_directly() {
    let (_, routes) = plans();
    let general: Vec<&str> = routes
        .iter()
        .filter(|(plan, _)| *plan == AnswerPlan::General)
        .map(|(_, route)| route.label.as_str())
        .collect();
    // The routes whose answers reach a type the writer leaves to the general path (a
    // `FieldMask` or an `Any` in the answer); each is still answered, through a message.
    assert!(
        general.len() * 10 <= routes.len(),
        "{} of {} routes take the general path: {general:?}",
        general.len(),
        routes.len()
    );
}

#[test]
fn direct_answers_equal_the_general_path() {
    let (plans, routes) = plans();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let (mut direct_answers, mut declined_damaged) = (0usize, 0usize);
    for (plan, route) in routes.iter().filter(|(p, _)| *p != AnswerPlan::General) {
        let output = route.rpc.output();
        for round in 0..60 {
            let message = random_message(&output, &mut rng, 0);
            let bytes = message.encode_to_vec();
            assert!(
                check(&plans, *plan, route, &bytes, "canonical"),
                "{}: declined a canonical answer {message:?}",
                route.label
            );
            direct_answers += 1;

            // Two answers concatenated: the second's scalars win, messages merge, lists and
            // maps join, and a oneof may hold two members (declined, or the same answer).
            let other = random_message(&output, &mut rng, 0).encode_to_vec();
            let merged = [bytes.as_slice(), other.as_slice()].concat();
            check(&plans, *plan, route, &merged, "merged");

            // Unknown fields of every wire type are skipped.
            let mut unknown = bytes.clone();
            unknown.extend_from_slice(&[0xF8, 0x3F, 0x05]); // field 1023, varint
            unknown.extend_from_slice(&[0xFA, 0x3F, 0x02, b'h', b'i']); // field 1023, bytes
            unknown.extend_from_slice(&[0xFD, 0x3F, 1, 2, 3, 4]); // field 1023, fixed32
            assert!(
                check(&plans, *plan, route, &unknown, "unknown fields"),
                "{}: declined unknown fields",
                route.label
            );

            // Damage: a cut, a flipped byte; both paths agree or the writer declines.
            if !bytes.is_empty() {
                let cut = rng.below(bytes.len() as u64) as usize;
                if !check(&plans, *plan, route, &bytes[..cut], "truncated") {
                    declined_damaged += 1;
                }
                let mut flipped = bytes.clone();
                let at = rng.below(bytes.len() as u64) as usize;
                flipped[at] ^= 1 << (round % 8);
                if !check(&plans, *plan, route, &flipped, "flipped") {
                    declined_damaged += 1;
                }
            }
        }
    }
    assert!(direct_answers > 1000, "{direct_answers} direct answers");
    assert!(declined_damaged > 0, "no damaged input was declined");
}

/// The cases the general path treats specially, one by one, on `product.v1.Product`-like
/// answers built by hand.
#[test]
fn edge_cases_match_the_general_path() {
    let (plans, routes) = plans();
    for (plan, route) in routes.iter().filter(|(p, _)| *p != AnswerPlan::General) {
        let output = route.rpc.output();
        for field in output.fields() {
            let number = field.number();
            let mut inputs: Vec<Vec<u8>> = Vec::new();
            // A default value written explicitly (left out unless the field has presence).
            inputs.push(key(number, 0).into_iter().chain([0]).collect());
            // A value with the wrong wire type.
            inputs.push(key(number, 5).into_iter().chain([0, 0, 0, 0]).collect());
            // Invalid UTF-8 in a length-delimited value.
            inputs.push(key(number, 2).into_iter().chain([2, 0xC3, 0x28]).collect());
            // An empty length-delimited value (an empty message, string or packed list).
            inputs.push(key(number, 2).into_iter().chain([0]).collect());
            // -0.0 as a double, NaN as a float.
            inputs.push(
                key(number, 1)
                    .into_iter()
                    .chain((-0.0f64).to_le_bytes())
                    .collect(),
            );
            inputs.push(
                key(number, 5)
                    .into_iter()
                    .chain(f32::NAN.to_le_bytes())
                    .collect(),
            );
            // An overlong varint, and a ten-byte one whose last byte is too big.
            inputs.push(
                key(number, 0)
                    .into_iter()
                    .chain([0x81, 0x80, 0x00])
                    .collect(),
            );
            inputs.push(
                key(number, 0)
                    .into_iter()
                    .chain([0xFF; 9])
                    .chain([0x02])
                    .collect(),
            );
            for input in inputs {
                check(
                    &plans,
                    *plan,
                    route,
                    &input,
                    &format!("field {}", field.name()),
                );
            }
        }
        // A message field given twice, the first cut inside a field that the second's bytes
        // would complete: refused (each occurrence is decoded by itself), so never answered.
        // (Found by the wire_json fuzz target.)
        for field in output.fields() {
            if field.is_list() || !matches!(field.kind(), Kind::Message(_)) {
                continue;
            }
            let mut split = key(field.number(), 2);
            split.extend_from_slice(&[2, 0x0A, 0x01]);
            split.extend(key(field.number(), 2));
            split.extend_from_slice(&[1, b'A']);
            check(&plans, *plan, route, &split, "split field");
        }
        // A group and a wire type that does not exist: refused by both.
        assert!(!check(&plans, *plan, route, &[0x0B, 0x0C], "group"));
        assert!(!check(&plans, *plan, route, &[0x0E], "wire type 6"));
    }
}

fn key(number: u32, wire_type: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut key = (u64::from(number) << 3) | u64::from(wire_type);
    loop {
        if key < 0x80 {
            out.push(key as u8);
            return out;
        }
        out.push((key as u8 & 0x7F) | 0x80);
        key >>= 7;
    }
}
