//! Publishing an event to a service's consumer as its producer's relay would.

use mesh_contracts::events::v1::Envelope;
use mesh_runtime::bus::{EventBus, OutgoingEvent};
use prost::Message;

/// An envelope of `event_type` (e.g. `order.created`) about `subject`, carrying `message`
/// (`name` is its type in `events.v1`, e.g. `OrderCreated`), from the type's domain, with a
/// fresh id, the subject as correlation id and sequence 1.
pub fn envelope(event_type: &str, subject: &str, name: &str, message: &impl Message) -> Envelope {
    Envelope {
        id: uuid::Uuid::now_v7().to_string(),
        r#type: event_type.into(),
        source: domain(event_type).into(),
        subject: subject.into(),
        payload: Some(prost_types::Any {
            type_url: format!("type.googleapis.com/events.v1.{name}"),
            value: message.encode_to_vec(),
        }),
        correlation_id: subject.into(),
        sequence: 1,
        ..Default::default()
    }
}

/// The domain (stream) of an event type: `order` for `order.created`.
fn domain(event_type: &str) -> &str {
    event_type.split('.').next().unwrap_or_default()
}

/// Publishes `envelope` to `bus` on its type's domain stream.
pub async fn publish(bus: &dyn EventBus, envelope: &Envelope) {
    bus.publish(&[OutgoingEvent {
        domain: domain(&envelope.r#type).into(),
        event_id: envelope.id.clone(),
        payload: envelope.encode_to_vec().into(),
    }])
    .await
    .expect("publish");
}
