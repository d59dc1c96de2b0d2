//! The transactional outbox: a service writes its state change and the [`Envelope`] of the event
//! it causes in one transaction ([`Tx`]), so either both happen or neither does. Once the
//! transaction committed, its envelopes go to the bus at once from this process
//! ([`crate::publisher`]); the relay ([`crate::relay`]) sweeps up whatever that did not publish
//! within a short bound.

use std::ops::{Deref, DerefMut};

use mesh_contracts::events::v1::Envelope;
use prost::Message as _;
use sqlx::any::AnyRow;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, Row as _, Transaction};

use crate::bus::OutgoingEvent;
use crate::call_context::CallContext;
use crate::publisher::{Row, Ticket};
use crate::sql_write::Write;
use crate::storage::error::UNMET_MARKER;
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

impl HandledIds {
    /// Whether there are ids still to be written (by the next statement that can carry them).
    fn to_write(&self) -> bool {
        self.written.is_none() && !self.ids.is_empty()
    }
}

/// A database transaction that can also emit events. Dereferences to the connection, so
/// `sqlx::query(..).execute(&mut *tx)` runs in it. Dropped without [`Tx::commit`], it rolls back
/// (and its events are never published).
#[derive(Debug)]
pub struct Tx {
    inner: Conn,
    db: Database,
    pending: Pending,
    pub(crate) cause: Option<Cause>,
    pub(crate) handled: Option<HandledIds>,
    /// Set when it runs a consumer's one-statement step in autocommit.
    pub(crate) autocommit: Option<Autocommit>,
    /// Whether a failed statement makes the consumer run the step again in another `Tx`
    /// ([`Tx::reruns_failed_step`]).
    pub(crate) reruns_failed_step: bool,
    wake_on_commit: Vec<std::sync::Arc<tokio::sync::Notify>>,
    after_commit: Vec<AfterCommit>,
}

/// What a [`Tx`] runs its statements on.
#[derive(Debug)]
enum Conn {
    /// A transaction, committed by [`Tx::commit`].
    Transaction(Transaction<'static, Any>),
    /// A pooled connection in autocommit: each statement commits when it returns (a consumer's
    /// one-statement or repeatable step, [`crate::consumer::Step`]).
    Autocommit(PoolConnection<Any>),
}

impl Deref for Conn {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            Self::Transaction(tx) => tx,
            Self::Autocommit(conn) => conn,
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Self::Transaction(tx) => &mut *tx,
            Self::Autocommit(conn) => &mut *conn,
        }
    }
}

/// How far a consumer's step run in autocommit got ([`Tx::fetch_recording`],
/// [`Tx::need_transaction`]).
#[derive(Debug, Default)]
pub(crate) struct Autocommit {
    /// A repeatable step ([`crate::consumer::Step::Repeatable`]): any number of statements, no
    /// handled record.
    pub(crate) repeatable: bool,
    /// Its statement ran (and committed, when it returned rows).
    pub(crate) ran: bool,
    /// It changed nothing and recorded nothing: the step needs a transaction.
    pub(crate) needs_transaction: bool,
    /// The handler tried a second statement after the first had committed (a handler that
    /// declared a one-statement step and is not one).
    pub(crate) overran: bool,
}

/// Why a statement of a consumer's step run in autocommit was refused: the step is not the one
/// statement its handler declared, so the consumer runs it again in a transaction (nothing was
/// written) or, after the statement committed, reports the handler as wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AutocommitRefusal {
    /// The step's statement changed nothing (it returned no row), or a repeatable step asked
    /// for a transaction ([`Tx::need_transaction`]): the step runs again in a transaction.
    #[error("the step needs a transaction this time; it runs again in one")]
    Incomplete,
    /// The handler ran a second statement, or tried to emit an event, outside a transaction.
    #[error("a one-statement step tried a statement its autocommit run cannot take")]
    NotOneStatement,
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
        Self::over(Conn::Transaction(inner), db)
    }

    fn over(inner: Conn, db: Database) -> Self {
        Self {
            inner,
            db,
            pending: Pending::default(),
            cause: None,
            handled: None,
            autocommit: None,
            reruns_failed_step: false,
            wake_on_commit: Vec::new(),
            after_commit: Vec::new(),
        }
    }

    /// A `Tx` without a transaction, for a consumer's one-statement step on Postgres: its one
    /// [`Tx::fetch_recording`] statement commits when it returns, and records `handled` (one id)
    /// only if it returned a row. [`Tx::commit`] then only runs what waits for the commit.
    pub(crate) async fn one_statement(
        db: &Database,
        handled: HandledIds,
    ) -> Result<Self, DatabaseError> {
        let conn = db.acquire().await?;
        let mut tx = Self::over(Conn::Autocommit(conn), db.clone());
        tx.handled = Some(handled);
        tx.autocommit = Some(Autocommit::default());
        tx.reruns_failed_step = true;
        Ok(tx)
    }

    /// A `Tx` without a transaction and without a handled record, for a consumer's repeatable
    /// step on Postgres ([`crate::consumer::Step::Repeatable`]): each statement commits when it
    /// returns. [`Tx::commit`] then only runs what waits for the commit.
    pub(crate) async fn repeatable(db: &Database) -> Result<Self, DatabaseError> {
        let conn = db.acquire().await?;
        let mut tx = Self::over(Conn::Autocommit(conn), db.clone());
        tx.autocommit = Some(Autocommit {
            repeatable: true,
            ..Autocommit::default()
        });
        tx.reruns_failed_step = true;
        Ok(tx)
    }

    /// What this transaction registered to happen after its commit so far (a savepoint's mark
    /// for [`Tx::rolled_back_to`]).
    pub(crate) fn savepoint_mark(&self) -> (usize, usize) {
        (self.pending.tickets.len(), self.after_commit.len())
    }

    /// The savepoint taken at `mark` was rolled back: the rows emitted since are gone, so they
    /// must never be published, and the work handed over after the commit since (rows the
    /// rollback removed) is withdrawn.
    pub(crate) fn rolled_back_to(&mut self, (tickets, hooks): (usize, usize)) {
        if tickets < self.pending.tickets.len() {
            let gone = self.pending.tickets.split_off(tickets);
            self.db.publisher().discard(&gone);
        }
        self.after_commit.truncate(hooks);
    }

    /// Refuses a statement of an autocommit step (see [`AutocommitRefusal`]); `Ok` in a
    /// transaction.
    fn refuse_in_autocommit(&mut self) -> Result<(), AutocommitRefusal> {
        let Some(auto) = self.autocommit.as_mut() else {
            return Ok(());
        };
        // A repeatable step may always run again, from the start, in a transaction.
        if auto.ran && !auto.repeatable {
            auto.overran = true;
        } else {
            auto.needs_transaction = true;
        }
        Err(AutocommitRefusal::NotOneStatement)
    }

    /// Whether its statements run in a transaction: `false` only in a consumer's one-statement
    /// or repeatable step run without one ([`crate::consumer::Step`]), where a handler may pick
    /// the statement that completes its step only when it can (and otherwise runs again in a
    /// transaction), and in a transaction the one that always does.
    pub fn in_transaction(&self) -> bool {
        self.autocommit.is_none()
    }

    /// Whether a statement that fails here, having written nothing, makes the consumer run the
    /// step again in another `Tx`, where this is `false`: `true` in a consumer's step run in
    /// autocommit ([`crate::consumer::Step`]) and in a group's first transaction on Postgres
    /// (whose failure runs the group again, each event in a savepoint of one transaction).
    /// A handler may then try a statement that either completes the common case or fails
    /// whole ([`crate::sql_write::Write::required`]), and take its general path where this is
    /// `false` (a group run again, an RPC's transaction), where such a failure would only fail.
    pub fn reruns_failed_step(&self) -> bool {
        self.reruns_failed_step
    }

    /// Asks for a transaction: `Ok` in one; in a step run in autocommit
    /// ([`crate::consumer::Step::Repeatable`] or [`crate::consumer::Step::OneStatement`]) it
    /// fails with [`AutocommitRefusal::Incomplete`], the handler returns that error, and the
    /// consumer runs the step again in a transaction with the handled record. A repeatable step
    /// calls it before any write that must count once (or must not be cut short by a crash),
    /// having run only statements that may run again; a one-statement step before its
    /// statement, when it sees that this event needs more than that statement.
    pub fn need_transaction(&mut self) -> Result<(), sqlx::Error> {
        match self.autocommit.as_mut() {
            None => Ok(()),
            Some(auto) => {
                auto.needs_transaction = true;
                Err(refused_sqlx(AutocommitRefusal::Incomplete))
            }
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
        self.refuse_in_autocommit().map_err(refused)?;
        self.insert(&[], event, RecordGate::None)
            .await?
            .ok_or(DatabaseError::Query(sqlx::Error::RowNotFound))
    }

    /// Runs `writes` and emits `event` in this transaction, the event only if the first write
    /// changed a row (`None` otherwise; the other writes run either way, but for
    /// [`Write::gated`] ones, which run only with the event). On Postgres the writes and the
    /// outbox row are one statement (the writes as data-modifying `WITH`s of the outbox
    /// insert); elsewhere each write is a statement of its own before the outbox row's.
    ///
    /// In a one-statement step run in autocommit ([`crate::consumer::Step::OneStatement`]) it
    /// may be the step's one statement when every write after the first is [`Write::gated`]:
    /// the statement commits the writes, the event and the handled record together, the record
    /// gated on the first write like the rest. When the first write changes no row nothing is
    /// written, and the call fails with [`AutocommitRefusal::Incomplete`], so the step runs
    /// again in a transaction.
    pub async fn write_and_emit(
        &mut self,
        writes: &[Write],
        event: Event,
    ) -> Result<Option<Envelope>, DatabaseError> {
        if self.one_statement_pending()
            && !writes.is_empty()
            && writes.iter().skip(1).all(Write::is_gated)
        {
            return self.write_and_emit_autocommit(writes, event).await;
        }
        self.refuse_in_autocommit().map_err(refused)?;
        if writes.is_empty() || matches!(self.db.backend(), Backend::Postgres { .. }) {
            return self.insert(writes, event, RecordGate::None).await;
        }
        let mut changed = true;
        for (i, w) in writes.iter().enumerate() {
            let rows = if w.is_gated() && !changed {
                0
            } else {
                w.execute(&mut self.inner).await?
            };
            if i == 0 {
                changed = rows > 0;
            }
            if let Some(required) = w.required_rows()
                && usize::try_from(rows).ok() != Some(required)
            {
                return Err(DatabaseError::Unmet(format!(
                    "write {i} changed {rows} rows, {required} required"
                )));
            }
        }
        if changed {
            self.insert(&[], event, RecordGate::None).await
        } else {
            Ok(None)
        }
    }

    /// Whether this runs a one-statement step in autocommit whose statement has not run yet
    /// (with its record still to write).
    fn one_statement_pending(&self) -> bool {
        self.autocommit
            .as_ref()
            .is_some_and(|a| !a.repeatable && !a.ran)
            && self.handled.as_ref().is_some_and(HandledIds::to_write)
    }

    /// [`Tx::write_and_emit`] as a one-statement step's statement, in autocommit: the writes,
    /// the outbox row and the handled record, all gated on the first write.
    async fn write_and_emit_autocommit(
        &mut self,
        writes: &[Write],
        event: Event,
    ) -> Result<Option<Envelope>, DatabaseError> {
        let inserted = match self.insert(writes, event, RecordGate::FirstWrite).await {
            Err(DatabaseError::Unmet(_)) => {
                // A required write fell short: the statement wrote nothing.
                if let Some(auto) = self.autocommit.as_mut() {
                    auto.ran = true;
                    auto.needs_transaction = true;
                }
                return Err(refused(AutocommitRefusal::Incomplete));
            }
            other => other?,
        };
        let Some(auto) = self.autocommit.as_mut() else {
            return Ok(inserted);
        };
        auto.ran = true;
        if inserted.is_none() {
            // The first write changed nothing, so nothing was written or recorded.
            auto.needs_transaction = true;
            return Err(refused(AutocommitRefusal::Incomplete));
        }
        Ok(inserted)
    }

    /// Runs `statement` (one that returns rows: an upsert or update with `RETURNING`, or a
    /// [`Write::with`] whose final `SELECT` reads its writes) in this transaction and returns
    /// its rows. Inside a consumer on Postgres, the handled ids still to be written are recorded
    /// by the same statement (a data-modifying `WITH`), as [`Tx::emit`] does: a step whose only
    /// write emits nothing pays no statement for the record.
    ///
    /// In a one-statement step run in autocommit ([`crate::consumer::Step::OneStatement`]) the
    /// statement commits when it returns, and records the event only if it returned a row: a
    /// row means the step is complete. When it returns none it must have changed nothing (a
    /// conditional write whose condition failed); this call then fails with
    /// [`AutocommitRefusal::Incomplete`], so the handler stops, and the consumer runs the step
    /// again in a transaction.
    pub async fn fetch_recording(&mut self, statement: &Write) -> Result<Vec<AnyRow>, sqlx::Error> {
        if self.autocommit.as_ref().is_some_and(|a| a.repeatable) {
            // A repeatable step records nothing: the statement alone.
            return statement.fetch_all(&mut self.inner).await;
        }
        if self.autocommit.as_ref().is_some_and(|a| a.ran) {
            self.refuse_in_autocommit().map_err(refused_sqlx)?;
        }
        let autocommit = self.autocommit.is_some();
        let Some(h) = self.handled.as_mut().filter(|h| h.to_write()) else {
            return statement.fetch_all(&mut self.inner).await;
        };
        let n = statement.param_count();
        let (values, padded) = handled_values(&h.ids, n + 2, &format!("${}", n + 1));
        let ctes = statement.shifted_ctes(0);
        let record = if autocommit {
            // The record only with the step's effect: a statement that returned no row wrote
            // neither, and the step runs again in a transaction.
            format!(
                "m AS ({}), handled AS (INSERT INTO mesh_handled_events (consumer, event_id, handled_at_us) \
                 SELECT * FROM (VALUES {values}) AS r WHERE EXISTS (SELECT 1 FROM m) \
                 ON CONFLICT DO NOTHING RETURNING 1)",
                statement.shifted(0)
            )
        } else {
            format!(
                "handled AS (INSERT INTO mesh_handled_events (consumer, event_id, handled_at_us) \
                 VALUES {values} ON CONFLICT DO NOTHING RETURNING 1), m AS ({})",
                statement.shifted(0)
            )
        };
        // One row at least (the count's), so the record's count is known even when the
        // statement returns none.
        let sql = format!(
            "WITH {ctes}{record} \
             SELECT m.*, c.n AS mesh_handled_new, (SELECT CAST(COUNT(*) AS BIGINT) FROM m) AS mesh_rows \
             FROM (SELECT CAST(COUNT(*) AS BIGINT) AS n FROM handled) AS c LEFT JOIN m ON TRUE"
        );
        let mut query = statement
            .bind_to(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .bind(now_micros())
            .bind(h.consumer.clone());
        for id in padded {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&mut *self.inner).await?;
        if let Some(auto) = self.autocommit.as_mut() {
            auto.ran = true;
        }
        let Some(first) = rows.first() else {
            return Ok(rows);
        };
        let returned: i64 = first.try_get("mesh_rows")?;
        if returned == 0 && autocommit {
            if let Some(auto) = self.autocommit.as_mut() {
                auto.needs_transaction = true;
            }
            return Err(refused_sqlx(AutocommitRefusal::Incomplete));
        }
        let new: i64 = first.try_get("mesh_handled_new")?;
        h.written = Some(usize::try_from(new).unwrap_or(0));
        Ok(if returned == 0 { Vec::new() } else { rows })
    }

    /// Inserts `event`'s outbox row (joined to `writes`, on Postgres only, and to the
    /// consumer's handled ids when still to be written, gated by `record_gate`) and registers
    /// it with the direct publisher; `None` when the first write changed no row.
    async fn insert(
        &mut self,
        writes: &[Write],
        event: Event,
        record_gate: RecordGate,
    ) -> Result<Option<Envelope>, DatabaseError> {
        let mut envelope = envelope_of(&self.db, self.cause.as_ref(), event);
        let handled = self.handled.as_ref().filter(|h| h.to_write());
        let inserted = insert_row(&mut self.inner, &envelope, writes, handled, record_gate).await?;
        if let (Some(new), Some(h)) = (inserted.handled_new, self.handled.as_mut()) {
            h.written = Some(new);
        }
        let Some(row) = inserted.row else {
            return Ok(None);
        };
        envelope.sequence = row.sequence;
        if let Some(ticket) = register(&self.db, &envelope, &row) {
            self.pending.tickets.push(ticket);
            self.pending.db.get_or_insert_with(|| self.db.clone());
        }
        Ok(Some(envelope))
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
        if let Conn::Transaction(inner) = inner {
            inner.commit().await?;
        }
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
        if let Conn::Transaction(inner) = self.inner {
            inner.rollback().await?;
        }
        Ok(())
    }
}

/// `refusal` as the database error a handler's statement fails with.
fn refused(refusal: AutocommitRefusal) -> DatabaseError {
    DatabaseError::Query(refused_sqlx(refusal))
}

/// `refusal` as the driver error a handler's statement fails with.
fn refused_sqlx(refusal: AutocommitRefusal) -> sqlx::Error {
    sqlx::Error::AnyDriverError(Box::new(refusal))
}

/// The envelope of `event` emitted by `db`'s service now, caused by `cause` (if any): its
/// `sequence` is set by the insert.
fn envelope_of(db: &Database, cause: Option<&Cause>, event: Event) -> Envelope {
    let micros = now_micros();
    let cause = cause.cloned().unwrap_or_default();
    Envelope {
        id: uuid::Uuid::now_v7().to_string(),
        r#type: event.event_type,
        source: db.service().to_string(),
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
        // Assigned by the insert; the stored bytes leave it out (see `with_sequence`).
        sequence: 0,
        correlation_id: if event.correlation_id.is_empty() {
            cause.correlation_id
        } else {
            event.correlation_id
        },
        causation_id: cause.event_id,
    }
}

/// What an outbox insert returned.
struct Inserted {
    /// The row, if the gate let it in.
    row: Option<InsertedRow>,
    /// How many of the handled ids joined to the insert were new.
    handled_new: Option<usize>,
}

/// Whether an outbox insert's handled record is gated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordGate {
    /// Written whatever the writes did (in a transaction, which does the rest).
    None,
    /// Written only if the first write changed a row (a step committed by this statement).
    FirstWrite,
}

/// An outbox row as inserted.
struct InsertedRow {
    seq: i64,
    sequence: i64,
    prev_sent: bool,
}

/// Inserts `envelope`'s outbox row, after `writes` and with `handled`'s record when given, in
/// one statement: the subject's next sequence is computed by the insert itself, which also says
/// whether the subject's previous row is on the bus already (the direct publisher keeps per-subject
/// order with it). With `writes` (Postgres only), the row is written only if the first write
/// changed a row (`row` is `None` otherwise). With `writes` or `handled` (Postgres only) the
/// statement is a `WITH` returning one row either way.
async fn insert_row(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    writes: &[Write],
    handled: Option<&HandledIds>,
    record_gate: RecordGate,
) -> Result<Inserted, DatabaseError> {
    let micros = envelope
        .time
        .as_ref()
        .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000);
    let mut ctes = Vec::with_capacity(writes.len() + 1);
    let mut n = 0;
    for (i, w) in writes.iter().enumerate() {
        let gate = if i > 0 && w.is_gated() {
            " AND EXISTS (SELECT 1 FROM w0)"
        } else {
            ""
        };
        ctes.push(format!(
            "{}w{i} AS ({}{gate} RETURNING {})",
            w.shifted_ctes(n),
            w.shifted(n),
            w.returned()
        ));
        n += w.param_count();
    }
    let mut padded = Vec::new();
    if let Some(h) = handled {
        let (values, ids) = handled_values(&h.ids, n + 7, &format!("${}", n + 5));
        let rows = if record_gate == RecordGate::FirstWrite && !writes.is_empty() {
            format!("SELECT * FROM (VALUES {values}) AS r WHERE EXISTS (SELECT 1 FROM w0)")
        } else {
            format!("VALUES {values}")
        };
        ctes.push(format!(
            "handled AS (INSERT INTO mesh_handled_events (consumer, event_id, handled_at_us) \
             {rows} ON CONFLICT DO NOTHING RETURNING 1)"
        ));
        padded = ids;
    }
    let gate = if writes.is_empty() {
        ""
    } else {
        " HAVING EXISTS (SELECT 1 FROM w0)"
    };
    let p = |k: usize| format!("${}", n + k);
    let insert = format!(
        "INSERT INTO mesh_outbox (event_id, event_type, subject, sequence, part, occurred_at_us, envelope) \
         SELECT {}, {}, {}, COALESCE(MAX(sequence), 0) + 1, {}, {}, {} \
         FROM mesh_outbox WHERE subject = {}{gate} \
         RETURNING seq, sequence, (SELECT p.sent_at_us FROM mesh_outbox p \
           WHERE p.subject = mesh_outbox.subject AND p.sequence = mesh_outbox.sequence - 1) AS prev_sent_at_us",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(3),
    );
    let sql = if ctes.is_empty() {
        // Alone (both databases): always one row, the aggregate's.
        format!("{insert}, CAST(NULL AS BIGINT) AS handled_new")
    } else {
        // Joined (Postgres): one row whether or not the gate let the outbox row in, so the
        // handled ids' count is known either way.
        format!(
            "WITH {}, o AS ({insert}) SELECT o.seq, o.sequence, o.prev_sent_at_us, {} AS handled_new{} \
             FROM (SELECT 1) AS one LEFT JOIN o ON TRUE",
            ctes.join(", "),
            if handled.is_some() {
                "(SELECT CAST(COUNT(*) AS BIGINT) FROM handled)"
            } else {
                "CAST(NULL AS BIGINT)"
            },
            required_check(writes),
        )
    };
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for w in writes {
        query = w.bind_to(query);
    }
    query = query
        .bind(envelope.id.clone())
        .bind(envelope.r#type.clone())
        .bind(envelope.subject.clone())
        .bind(partition_of(&envelope.subject))
        .bind(micros)
        .bind(envelope.encode_to_vec());
    if let Some(h) = handled {
        query = query.bind(h.consumer.clone());
        for id in padded {
            query = query.bind(id);
        }
    }
    let row = query.fetch_one(&mut *conn).await?;
    let handled_new = row
        .try_get::<Option<i64>, _>("handled_new")?
        .map(|new| usize::try_from(new).unwrap_or(0));
    let Some(seq) = row.try_get::<Option<i64>, _>("seq")? else {
        return Ok(Inserted {
            row: None,
            handled_new,
        });
    };
    Ok(Inserted {
        row: Some(InsertedRow {
            seq,
            sequence: row.try_get("sequence")?,
            prev_sent: row.try_get::<Option<i64>, _>("prev_sent_at_us")?.is_some(),
        }),
        handled_new,
    })
}

/// The column of a joined statement that fails it, so that it writes nothing, unless every
/// [`Write::required`] write changed its number of rows: the one row's value is computed after
/// every write ran, and a text that is not a number cast to one is an error Postgres raises
/// only then (a constant would fail at planning). Empty when no write is required.
fn required_check(writes: &[Write]) -> String {
    let conditions: Vec<String> = writes
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            w.required_rows()
                .map(|rows| format!("(SELECT COUNT(*) FROM w{i}) = {rows}"))
        })
        .collect();
    if conditions.is_empty() {
        return String::new();
    }
    format!(
        ", CAST(CASE WHEN {} THEN '1' ELSE '{UNMET_MARKER}' END AS INTEGER) AS required",
        conditions.join(" AND ")
    )
}

/// Registers the inserted row of `envelope` (its `sequence` set) with `db`'s direct publisher,
/// when one runs; `None` when none runs or its queue is full (the row is then the sweeper's).
fn register(db: &Database, envelope: &Envelope, inserted: &InsertedRow) -> Option<Ticket> {
    let publisher = db.publisher();
    if !publisher.is_running() {
        return None;
    }
    let direct = Row {
        seq: inserted.seq,
        sequence: inserted.sequence,
        prev_sent: inserted.prev_sent,
        event: OutgoingEvent {
            domain: domain_of(&envelope.r#type).to_string(),
            event_id: inserted.seq.to_string(),
            payload: envelope.encode_to_vec().into(),
        },
    };
    publisher.register(&envelope.subject, direct)
}

impl Database {
    /// Runs `writes` and emits `event` as one statement on its own, outside any transaction
    /// (Postgres; elsewhere a transaction of [`Tx::write_and_emit`]): a step whose writes and
    /// event are all it does pays no `BEGIN` and `COMMIT`. The event is written only if the
    /// first write changed a row (`None` otherwise) and goes to the bus once the statement
    /// returned, committed. A later event of the same subject written before this one is
    /// registered with the direct publisher is left to the sweeper (it cannot overtake it).
    pub async fn write_and_emit(
        &self,
        writes: &[Write],
        event: Event,
    ) -> Result<Option<Envelope>, DatabaseError> {
        if !matches!(self.backend(), Backend::Postgres { .. }) || writes.is_empty() {
            let mut tx = self.begin().await?;
            let envelope = tx.write_and_emit(writes, event).await?;
            tx.commit().await?;
            return Ok(envelope);
        }
        let mut envelope = envelope_of(self, None, event);
        let mut conn = self.acquire().await?;
        let Some(row) = insert_row(&mut conn, &envelope, writes, None, RecordGate::None)
            .await?
            .row
        else {
            return Ok(None);
        };
        drop(conn);
        envelope.sequence = row.sequence;
        // The statement committed when it returned.
        if let Some(ticket) = register(self, &envelope, &row) {
            crate::publisher::abort_after_commit_if_armed(self.service());
            self.publisher().committed(std::slice::from_ref(&ticket));
        }
        Ok(Some(envelope))
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
