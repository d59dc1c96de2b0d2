//! The card provider behind a trait: tokenizing cards, charging and refunding with an
//! idempotency key. The service never holds a card number after tokenizing it; it keeps the
//! provider's reference of the card.
//!
//! The contract every provider must keep, on which payment's crash safety rests: **a call
//! repeated with the same idempotency key has no second effect and answers the first result.**
//! Payment calls `charge` with key = the order id and `refund` with key = the refund id, as many
//! times as it needs (after timeouts, crashes, restarts).

use futures::future::BoxFuture;
use mesh_contracts::payment::v1::DeclineReason;

/// Raw card data, validated (see [`crate::validate::card`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardData {
    /// Digits only.
    pub number: String,
    /// Expiry month, 1..=12.
    pub exp_month: u32,
    /// Expiry year, four digits.
    pub exp_year: u32,
}

/// What the provider keeps of a tokenized card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderCard {
    /// The provider's reference of the card (what charges are made against).
    pub reference: String,
    /// Brand, e.g. `visa`.
    pub brand: String,
    /// Last 4 digits.
    pub last4: String,
}

/// A charge to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeCall {
    /// Idempotency key (the order id).
    pub idempotency_key: String,
    /// The card's provider reference.
    pub card: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Minor units, > 0.
    pub amount_minor: i64,
}

/// A refund to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundCall {
    /// Idempotency key (the refund id).
    pub idempotency_key: String,
    /// The provider reference of the captured charge.
    pub charge_reference: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Minor units, > 0.
    pub amount_minor: i64,
}

/// A definitive answer of the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Money moved; the provider's reference of the operation.
    Done {
        /// Provider reference.
        reference: String,
    },
    /// Refused; nothing moved.
    Declined {
        /// Why.
        reason: DeclineReason,
        /// The provider's message.
        message: String,
    },
}

/// The provider did not give a definitive answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused to process the call (e.g. a processor error); nothing moved, and
    /// trying again later may succeed.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// No answer in time: the operation may or may not have happened. Only the same
    /// idempotency key may be retried; never give up on it as failed.
    #[error("provider did not answer in time")]
    Timeout,
}

/// A card processor.
pub trait PaymentProvider: Send + Sync + std::fmt::Debug + 'static {
    /// Registers a card; returns what to charge it by.
    fn tokenize<'a>(
        &'a self,
        card: &'a CardData,
    ) -> BoxFuture<'a, Result<ProviderCard, ProviderError>>;

    /// Charges a card; idempotent per `call.idempotency_key`.
    fn charge<'a>(&'a self, call: &'a ChargeCall) -> BoxFuture<'a, Result<Outcome, ProviderError>>;

    /// Refunds (part of) a captured charge; idempotent per `call.idempotency_key`.
    fn refund<'a>(&'a self, call: &'a RefundCall) -> BoxFuture<'a, Result<Outcome, ProviderError>>;
}
