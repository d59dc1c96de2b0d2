//! Typed event payloads: the one way a handler reads the message an [`Envelope`] carries.
//!
//! `event.decode_payload::<OrderPlaced>()?` in an [`EventHandler`](crate::consumer::EventHandler)
//! gives the message, or a [`PayloadError`] naming the event's type and id that `?` turns into
//! a permanent [`HandlerError`]: a payload that does not decode never will, so the consumer
//! dead-letters the event at once instead of retrying it. A missing payload decodes as the
//! message's defaults, as protobuf reads an empty buffer.

use mesh_contracts::events::v1::Envelope;
use prost::Message;

use crate::consumer::HandlerError;

/// An event's payload that does not decode as the message its handler expects.
#[derive(Debug, thiserror::Error)]
#[error("{event_type} {event_id}: payload is not a valid {message}: {source}")]
pub struct PayloadError {
    /// The event's type (e.g. `order.placed`).
    pub event_type: String,
    /// The event's id.
    pub event_id: String,
    /// The message type it was read as (its Rust name, without the module path).
    pub message: &'static str,
    /// What protobuf said.
    #[source]
    pub source: prost::DecodeError,
}

impl From<PayloadError> for HandlerError {
    fn from(e: PayloadError) -> Self {
        Self::permanent(e)
    }
}

/// Reads an envelope's payload as a typed message.
pub trait DecodePayload {
    /// The payload decoded as `M`, or an error naming the event.
    fn decode_payload<M: Message + Default>(&self) -> Result<M, PayloadError>;
}

impl DecodePayload for Envelope {
    fn decode_payload<M: Message + Default>(&self) -> Result<M, PayloadError> {
        let bytes = self
            .payload
            .as_ref()
            .map_or(&[][..], |a| a.value.as_slice());
        M::decode(bytes).map_err(|source| PayloadError {
            event_type: self.r#type.clone(),
            event_id: self.id.clone(),
            message: short_type_name::<M>(),
            source,
        })
    }
}

/// `M`'s type name without its module path (`OrderPlaced`, not `mesh_contracts::…::OrderPlaced`).
fn short_type_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}
