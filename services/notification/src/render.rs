//! Templates: `{{placeholder}}` over the fields of an event payload, as the proto3 JSON mapping
//! names them, nested fields by dots (`{{total.amount_minor}}`). Unknown placeholders render
//! empty; a template never fails to render.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes")
    })
}

/// The fields of `payload` (an `Any` of an `events.v1` message) by dotted path, as text. Empty
/// when the payload's type is unknown or it does not decode.
pub fn fields(payload: &prost_types::Any) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let name = payload.type_url.rsplit('/').next().unwrap_or_default();
    let Some(desc) = pool().get_message_by_name(name) else {
        return out;
    };
    let Ok(message) = DynamicMessage::decode(desc, payload.value.as_slice()) else {
        return out;
    };
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .skip_default_fields(false);
    let mut ser = serde_json::Serializer::new(Vec::new());
    if message.serialize_with_options(&mut ser, &options).is_err() {
        return out;
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&ser.into_inner()) {
        flatten("", &value, &mut out);
    }
    out
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten(&key(k), v, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&key(&i.to_string()), v, out);
            }
        }
        serde_json::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        serde_json::Value::Null => {}
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// `template` with every `{{name}}` replaced by `fields[name]` (proto JSON names, e.g.
/// `orderId`, and their snake_case spellings both work).
pub fn render(template: &str, fields: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        let value = fields
            .get(name)
            .or_else(|| fields.get(&camel(name)))
            .cloned()
            .unwrap_or_default();
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `order_id.amount_minor` -> `orderId.amountMinor` (the proto3 JSON names).
fn camel(path: &str) -> String {
    path.split('.')
        .map(|part| {
            let mut s = String::with_capacity(part.len());
            let mut upper = false;
            for c in part.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    s.extend(c.to_uppercase());
                    upper = false;
                } else {
                    s.push(c);
                }
            }
            s
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_contracts::common::v1::Money;
    use mesh_contracts::events::v1::OrderConfirmed;
    use prost::Message as _;

    #[test]
    fn placeholders_take_payload_fields_by_snake_or_json_names() {
        let payload = prost_types::Any {
            type_url: "type.googleapis.com/events.v1.OrderConfirmed".into(),
            value: OrderConfirmed {
                order_id: "o-1".into(),
                total: Some(Money {
                    currency_code: "EUR".into(),
                    amount_minor: 1234,
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        };
        let f = fields(&payload);
        assert_eq!(
            render(
                "Order {{order_id}}: {{ total.amount_minor }} {{total.currencyCode}}{{nope}}.",
                &f
            ),
            "Order o-1: 1234 EUR."
        );
        assert_eq!(render("unclosed {{order_id", &f), "unclosed {{order_id");
    }
}
