//! Event handlers written as an `async fn` over the payload they read: a [`TypedHandler`]
//! names its payload type ([`TypedHandler::Event`]) and gets it decoded; every `TypedHandler`
//! is an [`EventHandler`], so it goes on a [`Consumer`](crate::consumer::Consumer) as it is.
//!
//! ```ignore
//! struct Reserved;
//!
//! impl TypedHandler for Reserved {
//!     type Event = InventoryReserved;
//!
//!     async fn handle(&self, e: InventoryReserved, event: &Envelope, tx: &mut Tx) -> Handled {
//!         transitions::reserved(tx, &e.reference_id, &e.reservation_id, &event.id).await?;
//!         Ok(())
//!     }
//! }
//!
//! consumer.on("inventory.reserved", Reserved)
//! ```
//!
//! A payload that does not decode is a permanent [`HandlerError`] naming the event
//! ([`crate::payload`]): the consumer dead-letters it at once. A handler of several event types
//! that reads the envelope itself takes [`Undecoded`]; one whose types share a meaning decodes
//! them into a type of its own ([`EventPayload`]).

use std::future::Future;

use futures::future::BoxFuture;
use mesh_contracts::events::v1::Envelope;

use crate::consumer::{EventHandler, HandlerError, Step};
use crate::outbox::Tx;
use crate::payload::DecodePayload as _;

/// What a [`TypedHandler`] reads from an event's envelope before it runs.
pub trait EventPayload: Sized + Send + 'static {
    /// The payload of `envelope`, or why it cannot be read (a permanent error for a payload that
    /// never will be).
    fn read(envelope: &Envelope) -> Result<Self, HandlerError>;
}

impl<M: prost::Message + Default + 'static> EventPayload for M {
    fn read(envelope: &Envelope) -> Result<Self, HandlerError> {
        Ok(envelope.decode_payload::<M>()?)
    }
}

/// Nothing decoded: the handler reads the envelope (its type, subject or payload) itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Undecoded;

impl EventPayload for Undecoded {
    fn read(_: &Envelope) -> Result<Self, HandlerError> {
        Ok(Self)
    }
}

/// What a handler's run comes to: done, or why not (retried or dead-lettered, see
/// [`HandlerError`]).
pub type Handled = Result<(), HandlerError>;

/// Handles events of one payload type; runs in the transaction that records the event as
/// handled (see [`EventHandler`]), and must not commit.
pub trait TypedHandler: Send + Sync + 'static {
    /// The payload it reads (a generated event message, usually).
    type Event: EventPayload;

    /// What its step runs ([`Step`]): a transaction unless it declares a one-statement step.
    const STEP: Step = Step::Transaction;

    /// Applies `event` (the decoded payload of `envelope`) in `tx`, and may emit events there.
    fn handle(
        &self,
        event: Self::Event,
        envelope: &Envelope,
        tx: &mut Tx,
    ) -> impl Future<Output = Handled> + Send;
}

impl<H: TypedHandler> EventHandler for H {
    fn handle<'a>(
        &'a self,
        envelope: &'a Envelope,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let event = H::Event::read(envelope)?;
            TypedHandler::handle(self, event, envelope, tx).await
        })
    }

    fn step(&self) -> Step {
        H::STEP
    }
}

#[cfg(test)]
mod tests {
    use mesh_contracts::events::v1::ProductDeleted;
    use prost::Message as _;

    use super::*;

    fn envelope_of(bytes: Vec<u8>) -> Envelope {
        Envelope {
            id: "e-1".into(),
            r#type: "product.deleted".into(),
            payload: Some(prost_types::Any {
                type_url: "type.googleapis.com/mesh.events.v1.ProductDeleted".into(),
                value: bytes,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_message_payload_is_decoded_and_a_bad_one_refused_naming_the_event() {
        let deleted = ProductDeleted {
            product_id: "p-1".into(),
            sku: "SKU".into(),
        };
        let read = ProductDeleted::read(&envelope_of(deleted.encode_to_vec())).unwrap();
        assert_eq!(read, deleted);
        let e = ProductDeleted::read(&envelope_of(b"\xff\xff".to_vec())).unwrap_err();
        assert!(e.to_string().contains("product.deleted e-1"), "{e}");
    }

    #[test]
    fn undecoded_reads_nothing_and_never_fails() {
        assert_eq!(
            Undecoded::read(&envelope_of(b"\xff\xff".to_vec())).unwrap(),
            Undecoded
        );
    }
}
