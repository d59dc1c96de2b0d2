//! The transactional outbox: a service writes its state change and the [`Envelope`] of the event
//! it causes in one transaction ([`Tx`]), so either both happen or neither does. The relay
//! ([`crate::relay`]) publishes committed rows to the bus afterwards.

use std::ops::{Deref, DerefMut};

use mesh_contracts::events::v1::Envelope;
use prost::Message as _;
use sqlx::{Any, AnyConnection, Row as _, Transaction};

use crate::call_context::CallContext;
use crate::storage::{Database, DatabaseError, now_micros};

/// Number of relay partitions (rows of `mesh_outbox_partitions` on Postgres).
pub const PARTITIONS: u64 = 16;

/// A domain event to emit: its type, the aggregate it is about and its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `<aggregate>.<past-tense verb>`, e.g. `order.created`; the part before the first `.` is
    /// the event's domain (its stream on the bus).
    pub event_type: String,
    /// The aggregate id (`Envelope.subject`).
    pub subject: String,
    /// The payload, e.g. `type.googleapis.com/events.v1.OrderCreated`.
    pub payload: prost_types::Any,
    /// Business correlation id; inherited from the event being handled when empty.
    pub correlation_id: String,
}

impl Event {
    /// An event whose payload is `message`, a message of the `events.v1` package named
    /// `message_name` (e.g. `OrderCreated`).
    pub fn new(
        event_type: impl Into<String>,
        subject: impl Into<String>,
        message_name: &str,
        message: &impl prost::Message,
    ) -> Self {
        Self {
            event_type: event_type.into(),
            subject: subject.into(),
            payload: prost_types::Any {
                type_url: format!("type.googleapis.com/events.v1.{message_name}"),
                value: message.encode_to_vec(),
            },
            correlation_id: String::new(),
        }
    }

    /// Sets the correlation id shared by every event of one business flow.
    pub fn correlation(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = id.into();
        self
    }
}

/// The domain of an event type: the part before the first `.` (`order.created` -> `order`).
pub fn domain_of(event_type: &str) -> &str {
    event_type.split('.').next().unwrap_or(event_type)
}

/// The relay partition of a subject (FNV-1a, stable across processes and versions).
pub(crate) fn partition_of(subject: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in subject.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::try_from(hash % PARTITIONS).unwrap_or(0)
}

/// The complete envelope of an outbox row: the stored bytes (written before the row's
/// `sequence` was known, so without it) with the `sequence` column appended as field 9. Protobuf
/// decoders take the last value of a field, so this is the envelope with its sequence set.
pub(crate) fn with_sequence(mut stored: Vec<u8>, sequence: i64) -> Vec<u8> {
    prost::encoding::int64::encode(9, &sequence, &mut stored);
    stored
}

/// The event being handled, when a transaction runs inside a consumer: events emitted in it are
/// caused by it and share its correlation id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cause {
    pub(crate) event_id: String,
    pub(crate) correlation_id: String,
}

/// A database transaction that can also emit events. Dereferences to the connection, so
/// `sqlx::query(..).execute(&mut *tx)` runs in it. Dropped without [`Tx::commit`], it rolls back
/// (and its events are never published).
#[derive(Debug)]
pub struct Tx {
    inner: Transaction<'static, Any>,
    db: Database,
    emitted: usize,
    pub(crate) cause: Option<Cause>,
    wake_on_commit: Vec<std::sync::Arc<tokio::sync::Notify>>,
}

impl Tx {
    pub(crate) fn new(inner: Transaction<'static, Any>, db: Database) -> Self {
        Self {
            inner,
            db,
            emitted: 0,
            cause: None,
            wake_on_commit: Vec::new(),
        }
    }

    /// The database this transaction runs on (for [`Database::backend`]).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Writes `event` to the outbox in this transaction and returns its envelope. Its
    /// `sequence` is the next of its subject; `traceparent` is the current call's (or the
    /// handled event's) trace position, so consumers continue the trace.
    pub async fn emit(&mut self, event: Event) -> Result<Envelope, DatabaseError> {
        let micros = now_micros();
        let cause = self.cause.clone().unwrap_or_default();
        let mut envelope = Envelope {
            id: uuid::Uuid::now_v7().to_string(),
            r#type: event.event_type,
            source: self.db.service().to_string(),
            subject: event.subject,
            time: Some(prost_types::Timestamp {
                seconds: micros.div_euclid(1_000_000),
                nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
            }),
            traceparent: CallContext::current()
                .map(|c| c.trace.to_string())
                .unwrap_or_default(),
            payload: Some(event.payload),
            tracestate: String::new(),
            // Assigned by the insert below; the stored bytes leave it out (see `with_sequence`).
            sequence: 0,
            correlation_id: if event.correlation_id.is_empty() {
                cause.correlation_id
            } else {
                event.correlation_id
            },
            causation_id: cause.event_id,
        };
        // One round trip: the subject's next sequence is computed by the insert itself.
        envelope.sequence = sqlx::query(
            "INSERT INTO mesh_outbox (event_id, event_type, subject, sequence, part, occurred_at_us, envelope) \
             SELECT $1, $2, $3, COALESCE(MAX(sequence), 0) + 1, $4, $5, $6 \
             FROM mesh_outbox WHERE subject = $3 RETURNING sequence",
        )
        .bind(&envelope.id)
        .bind(&envelope.r#type)
        .bind(&envelope.subject)
        .bind(partition_of(&envelope.subject))
        .bind(micros)
        .bind(envelope.encode_to_vec())
        .fetch_one(&mut *self.inner)
        .await?
        .try_get("sequence")?;
        self.emitted += 1;
        Ok(envelope)
    }

    /// Wakes `worker` (`notify_one`) once this transaction has committed: for background work
    /// that must only look for the rows this transaction writes after they are visible (e.g. a
    /// service's own work queue). Nothing is woken if it rolls back. Inside a consumer the whole
    /// batch's transaction commits at once, so a wake may also follow an event whose savepoint
    /// was rolled back: workers must treat a wake as a hint and re-read their queue.
    pub fn notify_on_commit(&mut self, worker: std::sync::Arc<tokio::sync::Notify>) {
        if !self
            .wake_on_commit
            .iter()
            .any(|w| std::sync::Arc::ptr_eq(w, &worker))
        {
            self.wake_on_commit.push(worker);
        }
    }

    /// Commits the state change and its events together, then wakes the relay (and any worker
    /// registered with [`Tx::notify_on_commit`]).
    pub async fn commit(self) -> Result<(), DatabaseError> {
        self.inner.commit().await?;
        if self.emitted > 0 {
            self.db.signal_outbox();
        }
        for worker in self.wake_on_commit {
            worker.notify_one();
        }
        Ok(())
    }

    /// Rolls back: neither the state change nor its events happen.
    pub async fn rollback(self) -> Result<(), DatabaseError> {
        self.inner.rollback().await?;
        Ok(())
    }
}

impl Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.inner
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_partitions_are_stable() {
        assert_eq!(domain_of("order.created"), "order");
        assert_eq!(domain_of("inventory.reservation_expired"), "inventory");
        assert_eq!(partition_of("order-1"), partition_of("order-1"));
        assert!((0..16).contains(&partition_of("anything")));
    }

    #[test]
    fn stored_envelopes_get_their_sequence_back() {
        let stored = Envelope {
            id: "e-1".into(),
            subject: "order-1".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let full = Envelope::decode(with_sequence(stored, 300).as_slice()).unwrap();
        assert_eq!(full.sequence, 300);
        assert_eq!(full.id, "e-1");
        assert_eq!(full.subject, "order-1");
    }
}
