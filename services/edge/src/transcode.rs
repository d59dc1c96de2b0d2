//! REST request -> protobuf request message, and protobuf response -> JSON, with the proto3 JSON
//! mapping of prost-reflect (well-known types, int64 as strings, enums by name, unknown fields
//! rejected).
//!
//! The request is assembled as one JSON object: the body (at the root for `body: "*"`, under
//! the body field otherwise), then the path variables and the query parameters, each converted
//! from text to the JSON form of its field (`"true"` -> `true` for a bool, a wrapper's inner
//! value, ...). The object is then decoded once, so every error names the field at fault.
//!
//! On the hot path neither side builds a message: a request whose only input is its path is
//! encoded straight to protobuf bytes ([`request_bytes`]), and an answer is written as JSON
//! straight from its bytes by [`WireJson`] ([`answer_json`]) when it covers the type; the rest
//! goes through a `DynamicMessage`, with the same result.

use bytes::Bytes;
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint};
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};

use crate::error::EdgeError;
use crate::path_template::{Binding, decode};
use crate::routes::{BodySpec, Route, is_scalar_like};
use crate::wire_json::{PlanId, WireJson};

/// The encoded request of `route`: [`request_message`]'s message as protobuf bytes, encoded
/// directly when the path is the only input and binds string fields.
pub fn request_bytes(
    route: &Route,
    bindings: &[Binding],
    query: Option<&str>,
    body: &[u8],
) -> Result<Bytes, EdgeError> {
    if matches!(route.body, BodySpec::None)
        && query.is_none_or(str::is_empty)
        && body.iter().all(u8::is_ascii_whitespace)
        && let Some(bytes) = path_only_bytes(route, bindings)
    {
        return Ok(bytes);
    }
    request_message(route, bindings, query, body).map(|m| Bytes::from(m.encode_to_vec()))
}

/// The protobuf encoding of a path-only request: each variable as its string field, nested in
/// its parent fields (two variables under one parent are two occurrences of the parent, which
/// protobuf merges into one message). `None`: take the general route.
fn path_only_bytes(route: &Route, bindings: &[Binding]) -> Option<Bytes> {
    let mut out = Vec::with_capacity(64);
    for binding in bindings {
        let (last, parents) = route.path_fields.get(binding.variable)?.split_last()?;
        if last.kind() != Kind::String || last.is_list() {
            return None;
        }
        if parents
            .iter()
            .any(|p| p.is_list() || p.is_map() || !matches!(p.kind(), Kind::Message(_)))
        {
            return None;
        }
        let value = binding.value.as_bytes();
        // Innermost first: the string field (left out when empty and without presence, as the
        // encoder of a message leaves out a default), then each parent around it.
        let mut inner = Vec::with_capacity(value.len() + 8);
        if !value.is_empty() || last.supports_presence() {
            encode_key(last.number(), WireType::LengthDelimited, &mut inner);
            encode_varint(value.len() as u64, &mut inner);
            inner.extend_from_slice(value);
        }
        for parent in parents.iter().rev() {
            let mut wrapped = Vec::with_capacity(inner.len() + 8);
            encode_key(parent.number(), WireType::LengthDelimited, &mut wrapped);
            encode_varint(inner.len() as u64, &mut wrapped);
            wrapped.extend_from_slice(&inner);
            inner = wrapped;
        }
        out.extend_from_slice(&inner);
    }
    Some(Bytes::from(out))
}

/// How a route's answers become JSON: straight from their bytes when [`WireJson`] covers the
/// type (the whole answer, or its `response_body` field), else through a `DynamicMessage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerPlan {
    /// The whole answer, by its plan.
    Whole(PlanId),
    /// The answer's message field of this number, by the answer's plan.
    Field(PlanId, u32),
    /// Decode, then serialize.
    General,
}

impl AnswerPlan {
    /// The plan of `route`'s answers, compiling its types into `plans`.
    pub fn compile(plans: &mut WireJson, route: &Route) -> Self {
        let Some(plan) = plans.compile(&route.rpc.output()) else {
            return Self::General;
        };
        match &route.response_body {
            None => Self::Whole(plan),
            Some(field)
                if !field.is_list()
                    && !field.is_map()
                    && matches!(field.kind(), Kind::Message(_)) =>
            {
                Self::Field(plan, field.number())
            }
            Some(_) => Self::General,
        }
    }
}

/// The JSON of `route`'s answer `bytes`, by `plan`: the same as [`response_json`] of the
/// decoded message; an answer that is not a valid message of the RPC's output is the
/// upstream's fault (an internal error naming the type).
pub fn answer_json(
    plans: &WireJson,
    plan: AnswerPlan,
    route: &Route,
    bytes: &[u8],
) -> Result<Vec<u8>, EdgeError> {
    let mut out = Vec::with_capacity(bytes.len() * 2 + 32);
    let direct = match plan {
        AnswerPlan::Whole(id) => plans.write(id, bytes, &mut out),
        AnswerPlan::Field(id, number) => plans.write_field(id, number, bytes, &mut out),
        AnswerPlan::General => Err(crate::wire_json::Declined),
    };
    if direct.is_ok() {
        return Ok(out);
    }
    let output = route.rpc.output();
    let message =
        DynamicMessage::decode(output.clone(), bytes).map_err(|e| EdgeError::Upstream {
            status: tonic::Status::internal(format!(
                "the upstream's response is not a valid {}: {e}",
                output.full_name()
            )),
            details: Vec::new(),
        })?;
    response_json(route, &message)
}

/// Builds the request message of `route` from the path `bindings`, the raw `query` string and
/// the raw `body`, through one JSON document (the hot path's path-only requests never come here:
/// [`request_bytes`] encodes them directly).
pub fn request_message(
    route: &Route,
    bindings: &[Binding],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, EdgeError> {
    let input = route.rpc.input();
    let mut root = Map::new();
    match &route.body {
        BodySpec::All => {
            if let Some(value) = parse_body(body)? {
                match value {
                    Value::Object(map) => root = map,
                    other => {
                        return Err(EdgeError::BadRequest(format!(
                            "request body must be a JSON object ({}), not {}",
                            input.full_name(),
                            json_kind(&other)
                        )));
                    }
                }
            }
        }
        BodySpec::Field(field) => {
            if let Some(value) = parse_body(body)? {
                root.insert(field.json_name().to_string(), value);
            }
        }
        BodySpec::None => {
            if !body.iter().all(u8::is_ascii_whitespace) {
                return Err(EdgeError::BadRequest(format!(
                    "{} {} takes no request body",
                    route.method, route.template
                )));
            }
        }
    }

    for binding in bindings {
        let chain = &route.path_fields[binding.variable];
        let name = route.template.variables[binding.variable].name();
        let value = text_value(
            chain.last().expect("path chains are never empty"),
            &binding.value,
        )
        .map_err(|e| EdgeError::BadRequest(format!("path variable {name:?}: {e}")))?;
        set(&mut root, chain, value, false)
            .map_err(|e| EdgeError::BadRequest(format!("path variable {name:?}: {e}")))?;
    }

    if let Some(query) = query.filter(|q| !q.is_empty()) {
        let mut seen = std::collections::HashSet::new();
        for (key, raw) in query_pairs(query) {
            if key.is_empty() {
                continue;
            }
            if matches!(route.body, BodySpec::All) {
                return Err(EdgeError::BadRequest(format!(
                    "query parameter {key:?}: this route takes every field from the body (body: \"*\"), so it accepts no query parameters"
                )));
            }
            let chain = query_chain(&input, &key)
                .map_err(|e| EdgeError::BadRequest(format!("query parameter {key:?}: {e}")))?;
            if let BodySpec::Field(f) = &route.body
                && chain[0] == *f
            {
                return Err(EdgeError::BadRequest(format!(
                    "query parameter {key:?}: field {:?} comes from the request body",
                    f.name()
                )));
            }
            if route
                .path_fields
                .iter()
                .any(|p| p.len() <= chain.len() && chain[..p.len()] == p[..])
            {
                return Err(EdgeError::BadRequest(format!(
                    "query parameter {key:?}: that field is bound by the path"
                )));
            }
            let last = chain.last().expect("query chains are never empty");
            if !last.is_list() && !seen.insert(key.clone()) {
                return Err(EdgeError::BadRequest(format!(
                    "query parameter {key:?} is given more than once, but its field is not repeated"
                )));
            }
            let value = text_value(last, &raw)
                .map_err(|e| EdgeError::BadRequest(format!("query parameter {key:?}: {e}")))?;
            set(&mut root, &chain, value, last.is_list())
                .map_err(|e| EdgeError::BadRequest(format!("query parameter {key:?}: {e}")))?;
        }
    }

    decode_json(&input, Value::Object(root))
}

/// Decodes a JSON value into a message of type `desc`; errors name the field path.
pub fn decode_json(desc: &MessageDescriptor, value: Value) -> Result<DynamicMessage, EdgeError> {
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    DynamicMessage::deserialize_with_options(desc.clone(), de, &options).map_err(|e| {
        let path = track.path().to_string();
        if path.is_empty() || path == "." {
            EdgeError::BadRequest(format!("invalid {}: {e}", desc.full_name()))
        } else {
            EdgeError::BadRequest(format!(
                "invalid field {path:?} of {}: {e}",
                desc.full_name()
            ))
        }
    })
}

/// The JSON of a response: the whole message, or its `response_body` field.
pub fn response_json(route: &Route, message: &DynamicMessage) -> Result<Vec<u8>, EdgeError> {
    let options = SerializeOptions::new();
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::new(&mut out);
    let result = match &route.response_body {
        None => message.serialize_with_options(&mut ser, &options),
        Some(field)
            if !field.is_list() && !field.is_map() && matches!(field.kind(), Kind::Message(_)) =>
        {
            match message.get_field(field).as_message() {
                Some(inner) => inner.serialize_with_options(&mut ser, &options),
                None => {
                    return Err(EdgeError::Internal(
                        "response_body field is not a message".into(),
                    ));
                }
            }
        }
        Some(field) => {
            let whole = serde_json::to_value(message.clone())
                .map_err(|e| EdgeError::Internal(format!("encoding the response: {e}")))?;
            let part = whole
                .get(field.json_name())
                .cloned()
                .unwrap_or(if field.is_list() {
                    Value::Array(Vec::new())
                } else if field.is_map() {
                    Value::Object(Map::new())
                } else {
                    Value::Null
                });
            return serde_json::to_vec(&part)
                .map_err(|e| EdgeError::Internal(format!("encoding the response: {e}")));
        }
    };
    result.map_err(|e| EdgeError::Internal(format!("encoding the response: {e}")))?;
    Ok(out)
}

fn parse_body(body: &[u8]) -> Result<Option<Value>, EdgeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if std::str::from_utf8(body).is_err() {
        return Err(EdgeError::BadRequest(
            "request body is not valid UTF-8".into(),
        ));
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| EdgeError::BadRequest(format!("request body is not valid JSON: {e}")))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `a=1&b=x+y` -> `[("a", "1"), ("b", "x y")]`, percent-decoded.
fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(&k.replace('+', " ")), decode(&v.replace('+', " ")))
    })
}

/// Resolves a dotted query key (proto or JSON field names) to a chain of fields.
fn query_chain(message: &MessageDescriptor, key: &str) -> Result<Vec<FieldDescriptor>, String> {
    let mut chain = Vec::new();
    let mut current = message.clone();
    let parts: Vec<&str> = key.split('.').collect();
    for (i, name) in parts.iter().enumerate() {
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(|| format!("{} has no field {name:?}", current.full_name()))?;
        let last = i + 1 == parts.len();
        if field.is_map() {
            return Err(format!(
                "map field {name:?} cannot be set from a query parameter"
            ));
        }
        match field.kind() {
            Kind::Message(m) if !last => {
                if field.is_list() {
                    return Err(format!(
                        "repeated message field {name:?} cannot be set from a query parameter"
                    ));
                }
                current = m;
            }
            Kind::Message(m) if !is_scalar_like(&m) => {
                return Err(format!(
                    "field {name:?} is a message ({}); name one of its fields, e.g. {key}.<field>",
                    m.full_name()
                ));
            }
            _ if !last => return Err(format!("field {name:?} has no fields")),
            _ => {}
        }
        chain.push(field);
    }
    Ok(chain)
}

/// The JSON form of the text `raw` for one value of `field`.
fn text_value(field: &FieldDescriptor, raw: &str) -> Result<Value, String> {
    scalar_value(&field.kind(), raw)
}

fn scalar_value(kind: &Kind, raw: &str) -> Result<Value, String> {
    Ok(match kind {
        Kind::Bool => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("expected true or false, got {raw:?}")),
        },
        Kind::Enum(_) => match raw.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(raw.to_string()),
        },
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.BoolValue" => scalar_value(&Kind::Bool, raw)?,
            "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => number_text(raw),
            "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => number_text(raw),
            _ => Value::String(raw.to_string()),
        },
        Kind::Double | Kind::Float => number_text(raw),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => {
            number_text(raw)
        }
        _ => Value::String(raw.to_string()),
    })
}

/// A number if `raw` is one, else the text itself (so the decoder names the bad value).
fn number_text(raw: &str) -> Value {
    if let Ok(n) = raw.parse::<i64>() {
        return Value::from(n);
    }
    match raw.parse::<f64>() {
        Ok(f) if f.is_finite() => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(raw.to_string())),
        _ => Value::String(raw.to_string()),
    }
}

/// Sets `value` at the field chain in `root`, creating objects on the way; a repeated last field
/// collects values into an array when `append`.
fn set(
    root: &mut Map<String, Value>,
    chain: &[FieldDescriptor],
    value: Value,
    append: bool,
) -> Result<(), String> {
    let mut map = root;
    for (i, field) in chain.iter().enumerate() {
        let key = field.json_name().to_string();
        // Accept a body that used the proto name: move it under the JSON name.
        if field.name() != key
            && let Some(v) = map.remove(field.name())
        {
            map.insert(key.clone(), v);
        }
        if i + 1 == chain.len() {
            if append {
                match map.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
                    Value::Array(items) => items.push(value),
                    _ => return Err(format!("field {:?} is already set", field.name())),
                }
            } else {
                // Path variables and query parameters win over the body.
                map.insert(key, value);
            }
            return Ok(());
        }
        let next = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
        if next.is_null() {
            *next = Value::Object(Map::new());
        }
        map = match next {
            Value::Object(m) => m,
            other => {
                return Err(format!(
                    "field {:?} must be an object, not {}",
                    field.name(),
                    json_kind(other)
                ));
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RouteTable;

    #[test]
    fn the_path_only_shortcut_builds_the_same_messages() {
        let pool = prost_reflect::DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET)
            .expect("contracts");
        let table = RouteTable::build(&pool, |_| true).expect("routes");
        let mut shortcut = 0;
        for route in table.routes() {
            let bindings: Vec<Binding> = (0..route.template.variables.len())
                .map(|variable| Binding {
                    variable,
                    value: format!("v{variable}/x y"),
                })
                .collect();
            let Some(bytes) = path_only_bytes(route, &bindings) else {
                continue;
            };
            shortcut += 1;
            let slow = request_message(route, &bindings, None, b"").expect("json");
            let decoded =
                DynamicMessage::decode(route.rpc.input(), bytes.as_ref()).expect("decodes");
            assert_eq!(decoded, slow, "{}: encoded directly", route.label);
        }
        assert!(shortcut >= 20, "{shortcut} routes take the shortcut");
    }
}
