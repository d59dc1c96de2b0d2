//! The consumer's decoding of a bus entry (`mesh_runtime::consumer::read_envelope`,
//! `known_type`), the envelope's `traceparent`, and the payload as the handlers decode it.
//!
//! Input: the bytes of a bus entry (an encoded `events.v1.Envelope`, or anything). Invariants:
//! - a refusal is a dead-letter reason naming a malformed envelope;
//! - an accepted envelope has an id and a type, an id the consumer can record (no NUL), and
//!   survives re-encoding unchanged;
//! - a `traceparent` that parses formats back to a value that parses to the same position;
//! - a known type's payload names a message of the contracts; when it decodes (dynamically,
//!   and typed for the order saga's events), it survives re-encoding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_contracts::events::v1::{
    Envelope, InventoryRejected, InventoryReserved, OrderCreated, PaymentFailed, PaymentSucceeded,
};
use mesh_runtime::TraceContext;
use mesh_runtime::consumer::{known_type, read_envelope};
use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};

fuzz_target!(|data: &[u8]| {
    let envelope = match read_envelope(data) {
        Ok(envelope) => envelope,
        Err(reason) => {
            assert!(reason.starts_with("malformed envelope"), "{reason}");
            return;
        }
    };
    assert!(!envelope.id.is_empty() && !envelope.r#type.is_empty());
    assert!(!envelope.id.contains('\0'), "{:?}", envelope.id);
    let again = Envelope::decode(envelope.encode_to_vec().as_slice()).expect("re-decodes");
    assert_eq!(again, envelope);

    if let Some(trace) = TraceContext::parse(&envelope.traceparent) {
        assert_eq!(
            TraceContext::parse(&trace.to_string()),
            Some(trace),
            "{:?}",
            envelope.traceparent
        );
    }

    if !known_type(&envelope) {
        return;
    }
    let payload = envelope
        .payload
        .as_ref()
        .expect("a known type has a payload");
    let name = payload.type_url.rsplit('/').next().unwrap_or_default();
    let descriptor = mesh_fuzz::pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("known type {name:?} is a message of the contracts"));
    if let Ok(message) = DynamicMessage::decode(descriptor.clone(), payload.value.as_slice()) {
        let json = to_json(&message);
        let back = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
            .expect("our own encoding decodes");
        assert_eq!(to_json(&back), json, "{name}");
    }
    let value = payload.value.as_slice();
    match name {
        "events.v1.OrderCreated" => typed::<OrderCreated>(value),
        "events.v1.InventoryReserved" => typed::<InventoryReserved>(value),
        "events.v1.InventoryRejected" => typed::<InventoryRejected>(value),
        "events.v1.PaymentSucceeded" => typed::<PaymentSucceeded>(value),
        "events.v1.PaymentFailed" => typed::<PaymentFailed>(value),
        _ => {}
    }
});

/// A handler's typed decode of `value` (as `M::decode` in the services' event handlers).
fn typed<M: Message + Default + PartialEq + std::fmt::Debug>(value: &[u8]) {
    if let Ok(message) = M::decode(value) {
        let again = M::decode(message.encode_to_vec().as_slice()).expect("re-decodes");
        assert_eq!(again, message);
    }
}

fn to_json(message: &DynamicMessage) -> serde_json::Value {
    message
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .expect("an event of the contracts serializes to JSON")
}
