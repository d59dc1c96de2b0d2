//! The event bus behind one trait, [`EventBus`], with two implementations that share delivery
//! semantics: [`redis::RedisBus`] (Redis Streams, between processes) and
//! [`memory::MemoryBus`] (in one process, the embedded default).
//!
//! Semantics, both buses:
//! - one stream per domain (`order.created` goes to the `order` stream), events of a stream in
//!   publish order;
//! - one consumer group per consuming service: each event goes to one consumer of the group;
//! - at-least-once: an event stays pending until [`Subscription::ack`]; the events of a consumer
//!   that died (its heartbeat older than `dead_after`, or its subscription dropped) are taken
//!   over by another consumer of the group at once, and an event left unacknowledged by a live
//!   consumer is reclaimed by another once it has been idle for the claim time;
//!   [`Subscription::retry`] redelivers it to the same consumer after a delay;
//! - [`Subscription::dead_letter`] moves an event to the group's dead-letter stream with the
//!   reason and acknowledges it.
//!
//! Both also implement [`inspect::BusInspect`], the operator's view (`mesh events`).

pub mod inspect;
pub mod inspect_json;
pub mod memory;
pub mod redis;

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

/// An event on its way to the bus: its stream (domain), id and encoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEvent {
    /// The domain stream, e.g. `order`.
    pub domain: String,
    /// The envelope id.
    pub event_id: String,
    /// The encoded `events.v1.Envelope`.
    pub payload: Bytes,
}

/// One delivery of an event to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The domain stream it came from.
    pub domain: String,
    /// The bus's id of the entry (a Redis stream id, or a counter in memory).
    pub entry_id: String,
    /// The encoded envelope (possibly malformed: the bus does not look inside).
    pub payload: Bytes,
    /// Which delivery this is, from 1.
    pub attempt: u32,
}

/// An entry of a dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The domain stream the event came from.
    pub domain: String,
    /// Its entry id there.
    pub entry_id: String,
    /// The consumer group that gave up on it.
    pub group: String,
    /// Why.
    pub reason: String,
    /// How many times it was delivered.
    pub deliveries: u32,
    /// The encoded envelope, as received.
    pub payload: Bytes,
}

/// How far a consumer group is behind on one stream: what it has not handled yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    /// The domain stream.
    pub domain: String,
    /// The consumer group.
    pub group: String,
    /// Entries of the stream never delivered to the group.
    pub undelivered: u64,
    /// Entries delivered and not acknowledged yet (being handled, or waiting for a retry).
    pub pending: u64,
    /// How long the oldest entry the group has not handled (pending or undelivered) has been in
    /// the stream; `None` when the group is caught up.
    pub oldest_unhandled_age: Option<Duration>,
}

impl GroupLag {
    /// Entries the group has not handled: undelivered plus pending.
    pub fn behind(&self) -> u64 {
        self.undelivered + self.pending
    }
}

/// A failure of the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Redis could not be reached or refused a command.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Redis answered something unexpected.
    #[error("unexpected reply from redis to {command}: {detail}")]
    Reply {
        /// The command.
        command: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Delivery settings shared by both buses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryOptions {
    /// Idle time after which another consumer reclaims an unacknowledged event (a consumer
    /// that is alive but stuck, or an entry its consumer lost track of).
    pub claim_idle: Duration,
    /// A consumer whose heartbeat is this old is dead: the others of its group take over its
    /// pending events at once, without waiting for the claim time.
    pub dead_after: Duration,
    /// How long events stay in a stream.
    pub retention: Duration,
}

/// Default of [`DeliveryOptions::claim_idle`].
pub const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(10);
/// Default of [`DeliveryOptions::dead_after`].
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_millis(1500);

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            claim_idle: DEFAULT_CLAIM_IDLE,
            dead_after: DEFAULT_DEAD_AFTER,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A bus that carries events between services.
pub trait EventBus: Send + Sync + std::fmt::Debug {
    /// Appends `events` to their streams, in order; `Ok` only once the bus has stored every one.
    fn publish<'a>(&'a self, events: &'a [OutgoingEvent]) -> BoxFuture<'a, Result<(), BusError>>;

    /// Joins consumer group `group` (created at the start of each stream when new) as `consumer`,
    /// reading the streams of `domains`.
    fn subscribe<'a>(
        &'a self,
        group: &'a str,
        consumer: &'a str,
        domains: &'a [String],
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BusError>>;

    /// The dead-letter entries of `group`, oldest first (for operators and tests).
    fn dead_letters<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, BusError>>;

    /// How far `group` is behind on each stream of `domains` (a stream or group that does not
    /// exist yet counts as caught up).
    fn group_lag<'a>(
        &'a self,
        group: &'a str,
        domains: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<GroupLag>, BusError>>;
}

/// One consumer's membership in a group.
pub trait Subscription: Send + std::fmt::Debug {
    /// Up to `max` deliveries: retries that are due, events reclaimed from dead consumers, then
    /// new events; waits up to `wait` when there are none (and may return empty).
    fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, BusError>>;

    /// Acknowledges `delivery`: it is done and will not be delivered again.
    fn ack<'a>(&'a mut self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), BusError>>;

    /// Acknowledges every one of `deliveries` (a handled batch). The default acknowledges them
    /// one by one; a networked bus sends them in one round trip.
    fn ack_all<'a>(
        &'a mut self,
        deliveries: &'a [Delivery],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            for delivery in deliveries {
                self.ack(delivery).await?;
            }
            Ok(())
        })
    }

    /// Redelivers `delivery` to this consumer after `after` (its attempt then counts up).
    fn retry<'a>(
        &'a mut self,
        delivery: &'a Delivery,
        after: Duration,
    ) -> BoxFuture<'a, Result<(), BusError>>;

    /// Moves `delivery` to the group's dead-letter stream with `reason`, and acknowledges it.
    fn dead_letter<'a>(
        &'a mut self,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), BusError>>;
}
