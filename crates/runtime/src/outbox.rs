//! The transactional outbox: a service writes its state change and the [`Envelope`] of the event
//! it causes in one transaction ([`Tx`]), so either both happen or neither does. Once the
//! transaction committed, its envelopes go to the bus at once from this process
//! ([`crate::publisher`]); the relay ([`crate::relay`]) sweeps up whatever that did not publish
//! within a short bound.

use std::ops::{Deref, DerefMut};

use mesh_contracts::events::v1::Envelope;
use prost::Message as _;
use sqlx::{Any, AnyConnection, Row as _, Transaction};

use crate::bus::OutgoingEvent;
use crate::call_context::CallContext;
use crate::publisher::{Row, Ticket};
use crate::storage::{Backend, Database, DatabaseError, now_micros};

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

/// The `VALUES` rows of a `mesh_handled_events` insert of `ids`: the consumer's name is parameter
/// `$first`, the ids the parameters after it, the time `at` (a parameter or literal). The ids
/// are padded to a power of two with copies of the last (skipped as conflicts), so the
/// statement has few shapes and stays in the connection's prepared-statement cache; the padded
/// ids, in parameter order, are returned with it.
pub(crate) fn handled_values(ids: &[String], first: usize, at: &str) -> (String, Vec<String>) {
    let rows = ids.len().max(1).next_power_of_two();
    let mut padded = ids.to_vec();
    let last = padded.last().cloned().unwrap_or_default();
    padded.resize(rows, last);
    let values = (0..rows)
        .map(|i| format!("(${first}, ${}, {at})", first + 1 + i))
        .collect::<Vec<_>>()
        .join(", ");
    (values, padded)
}

/// The event being handled, when a transaction runs inside a consumer: events emitted in it are
/// caused by it and share its correlation id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cause {
    pub(crate) event_id: String,
    pub(crate) correlation_id: String,
}

/// Event ids a consumer's transaction has yet to record as handled (`mesh_handled_events`), on
/// Postgres: the transaction's first [`Tx::emit`] writes them in its own statement (a
/// data-modifying `WITH`), so a handler that emits pays no statement of its own for the record.
/// The consumer writes them itself if no handler emitted, and checks `written`: fewer new ids
/// than `ids` means one was handled before, and the transaction is rolled back.
#[derive(Debug)]
pub(crate) struct HandledIds {
    pub(crate) consumer: String,
    /// Distinct ids.
    pub(crate) ids: Vec<String>,
    /// How many of `ids` were new when written; `None` until written.
    pub(crate) written: Option<usize>,
}

/// A database transaction that can also emit events. Dereferences to the connection, so
/// `sqlx::query(..).execute(&mut *tx)` runs in it. Dropped without [`Tx::commit`], it rolls back
/// (and its events are never published).
#[derive(Debug)]
pub struct Tx {
    inner: Transaction<'static, Any>,
    db: Database,
    pending: Pending,
    pub(crate) cause: Option<Cause>,
    pub(crate) handled: Option<HandledIds>,
    wake_on_commit: Vec<std::sync::Arc<tokio::sync::Notify>>,
    after_commit: Vec<AfterCommit>,
}

/// A hook registered with [`Tx::after_commit`].
struct AfterCommit(Box<dyn FnOnce() + Send + Sync>);

impl std::fmt::Debug for AfterCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterCommit")
    }
}

/// The rows a transaction registered with the direct publisher. Dropped without
/// [`Pending::committed`] (the transaction was dropped, rolled back or failed to commit), its
/// rows are discarded from the direct path: never published before a commit.
#[derive(Debug, Default)]
struct Pending {
    tickets: Vec<Ticket>,
    db: Option<Database>,
}

impl Pending {
    fn committed(mut self) {
        if let Some(db) = self.db.take() {
            db.publisher().committed(&std::mem::take(&mut self.tickets));
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(db) = &self.db {
            db.publisher().discard(&self.tickets);
        }
    }
}

impl Database {
    /// Begins a transaction (`BEGIN IMMEDIATE` on SQLite, so concurrent writers queue on the busy
    /// timeout instead of failing). Events emitted in it are published after it commits. (Defined
    /// here, beside [`Tx`], so the storage layer does not depend on the outbox above it.)
    pub async fn begin(&self) -> Result<Tx, DatabaseError> {
        let tx = match self.backend() {
            Backend::Postgres { .. } => self.pool().begin().await?,
            Backend::Sqlite => self.pool().begin_with("BEGIN IMMEDIATE").await?,
        };
        Ok(Tx::new(tx, self.clone()))
    }
}

impl Tx {
    pub(crate) fn new(inner: Transaction<'static, Any>, db: Database) -> Self {
        Self {
            inner,
            db,
            pending: Pending::default(),
            cause: None,
            handled: None,
            wake_on_commit: Vec::new(),
            after_commit: Vec::new(),
        }
    }

    /// How many rows this transaction registered for direct publishing so far (a savepoint's
    /// mark for [`Tx::rolled_back_to`]).
    pub(crate) fn savepoint_mark(&self) -> usize {
        self.pending.tickets.len()
    }

    /// The savepoint taken at `mark` was rolled back: the rows emitted since are gone, so they
    /// must never be published.
    pub(crate) fn rolled_back_to(&mut self, mark: usize) {
        if mark < self.pending.tickets.len() {
            let gone = self.pending.tickets.split_off(mark);
            self.db.publisher().discard(&gone);
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
        // One round trip: the subject's next sequence is computed by the insert itself, which
        // also says whether the subject's previous row is on the bus already (the direct
        // publisher keeps per-subject order with it), and records the consumer's handled ids
        // when they are still to be written.
        let handled = self
            .handled
            .as_ref()
            .filter(|h| h.written.is_none() && !h.ids.is_empty());
        let (record, padded) = match handled {
            Some(h) => {
                let (values, padded) = handled_values(&h.ids, 7, "$5");
                (
                    format!(
                        "WITH handled AS (INSERT INTO mesh_handled_events (consumer, event_id, handled_at_us) \
                         VALUES {values} ON CONFLICT DO NOTHING RETURNING 1) "
                    ),
                    padded,
                )
            }
            None => (String::new(), Vec::new()),
        };
        let sql = format!(
            "{record}INSERT INTO mesh_outbox (event_id, event_type, subject, sequence, part, occurred_at_us, envelope) \
             SELECT $1, $2, $3, COALESCE(MAX(sequence), 0) + 1, $4, $5, $6 \
             FROM mesh_outbox WHERE subject = $3 \
             RETURNING seq, sequence, (SELECT p.sent_at_us FROM mesh_outbox p \
               WHERE p.subject = mesh_outbox.subject AND p.sequence = mesh_outbox.sequence - 1) AS prev_sent_at_us{}",
            if record.is_empty() {
                ""
            } else {
                ", (SELECT CAST(COUNT(*) AS BIGINT) FROM handled) AS handled_new"
            }
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&envelope.id)
            .bind(&envelope.r#type)
            .bind(&envelope.subject)
            .bind(partition_of(&envelope.subject))
            .bind(micros)
            .bind(envelope.encode_to_vec());
        if let Some(h) = handled {
            query = query.bind(&h.consumer);
            for id in &padded {
                query = query.bind(id.clone());
            }
        }
        let row = query.fetch_one(&mut *self.inner).await?;
        if !record.is_empty()
            && let Some(h) = self.handled.as_mut()
        {
            let new: i64 = row.try_get("handled_new")?;
            h.written = Some(usize::try_from(new).unwrap_or(0));
        }
        envelope.sequence = row.try_get("sequence")?;
        let publisher = self.db.publisher();
        if publisher.is_running() {
            let seq: i64 = row.try_get("seq")?;
            let prev_sent = row.try_get::<Option<i64>, _>("prev_sent_at_us")?.is_some();
            let direct = Row {
                seq,
                sequence: envelope.sequence,
                prev_sent,
                event: OutgoingEvent {
                    domain: domain_of(&envelope.r#type).to_string(),
                    event_id: seq.to_string(),
                    payload: envelope.encode_to_vec().into(),
                },
            };
            if let Some(ticket) = publisher.register(&envelope.subject, direct) {
                self.pending.tickets.push(ticket);
                self.pending.db.get_or_insert_with(|| self.db.clone());
            }
        }
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

    /// Runs `hook` once this transaction has committed (never if it rolls back): e.g. handing
    /// the work it created to the service's work queue in process
    /// ([`crate::work_queue::WorkHandle::push_after_commit`]). The same caveat as
    /// [`Tx::notify_on_commit`] applies inside a consumer's batch: treat it as a hint.
    pub fn after_commit(&mut self, hook: impl FnOnce() + Send + Sync + 'static) {
        self.after_commit.push(AfterCommit(Box::new(hook)));
    }

    /// Commits the state change and its events together, then hands the events to the direct
    /// publisher (they go to the bus at once, in order per subject), wakes any worker
    /// registered with [`Tx::notify_on_commit`] and runs the [`Tx::after_commit`] hooks. If the
    /// commit fails its events are left to the relay's sweep (the commit may have happened
    /// after all).
    pub async fn commit(self) -> Result<(), DatabaseError> {
        let Tx {
            inner,
            db,
            pending,
            wake_on_commit,
            after_commit,
            ..
        } = self;
        inner.commit().await?;
        if !pending.tickets.is_empty() {
            crate::publisher::abort_after_commit_if_armed(db.service());
        }
        pending.committed();
        for worker in wake_on_commit {
            worker.notify_one();
        }
        for hook in after_commit {
            (hook.0)();
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
