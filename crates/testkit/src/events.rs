//! Publishing an event to a service's consumer as its producer's relay would, and waiting until
//! the consumer has handled it.

use mesh_contracts::events::v1::Envelope;
use mesh_runtime::bus::{Delivery, EventBus, OutgoingEvent};
use prost::Message;

use std::time::Duration;

use mesh_runtime::Database;

use crate::poll::eventually_within;

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

/// `envelope` as a bus hands it to a consumer (`Consumer::handle`): the `attempt`-th delivery
/// of entry `entry` of its type's domain stream.
pub fn delivery(envelope: &Envelope, entry: &str, attempt: u32) -> Delivery {
    Delivery {
        domain: domain(&envelope.r#type).into(),
        entry_id: entry.into(),
        payload: envelope.encode_to_vec().into(),
        attempt,
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

/// Publishes an [`envelope`] with the id `id` (a redelivery, or an id the test chose) to `bus`.
pub async fn publish_with_id(
    bus: &dyn EventBus,
    id: &str,
    event_type: &str,
    subject: &str,
    name: &str,
    message: &impl Message,
) {
    let mut envelope = envelope(event_type, subject, name, message);
    envelope.id = id.into();
    publish(bus, &envelope).await;
}

/// Publishes `envelope` to `bus` and waits (at most 20 s) until the consumer `consumer` of the
/// service whose database is `db` has recorded it as handled.
pub async fn deliver(bus: &dyn EventBus, db: &Database, consumer: &str, envelope: &Envelope) {
    publish(bus, envelope).await;
    let what = format!("{} {} handled by {consumer}", envelope.r#type, envelope.id);
    eventually_within(Duration::from_secs(20), &what, || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM mesh_handled_events WHERE consumer = $1 AND event_id = $2",
        )
        .bind(consumer)
        .bind(&envelope.id)
        .fetch_one(db.pool())
        .await
        .expect("handled events")
            > 0
    })
    .await;
}
