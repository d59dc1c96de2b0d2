//! Idempotent event consumers: a service's [`EventHandler`]s run in a transaction that also
//! records the event id in `mesh_handled_events` (on Postgres in the statement of the first event
//! a handler emits, so the record costs no statement of its own), and the event is acknowledged
//! on the bus only after that transaction commits. A batch below saturation is one transaction.
//!
//! A handler whose step is one statement that carries the record ([`Step::OneStatement`]) runs
//! without a transaction when its event is alone in its group, on Postgres: the statement
//! commits the effect and the record together, or, when it returns no row, neither (the step
//! then runs in a transaction). A handler whose step may run again whole or from any point it
//! stopped at ([`Step::Repeatable`]) runs, alone in its group on Postgres, without a transaction
//! and without the record; it asks for a transaction ([`Tx::need_transaction`]) when this event
//! needs a write that must count once. Elsewhere, and for every other handler, the group's
//! transaction stays.
//!
//! - A redelivered event (the consumer crashed before acknowledging, or the relay published it
//!   twice) finds its id recorded and is acknowledged without a second effect.
//! - A handler failure rolls the transaction back; the event is retried after a backoff that
//!   doubles per delivery, and after `max_deliveries` goes to the dead-letter stream with the
//!   reason.
//! - A malformed envelope or an unknown event type goes to the dead-letter stream at once; the
//!   consumer keeps going. Events of known types the service has no handler for are acknowledged.
//! - The handler runs in a span whose parent is the envelope's `traceparent`, so the producer's
//!   and consumer's spans are one trace; events it emits carry the trace on.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mesh_contracts::events::v1::Envelope;
use prost::Message as _;
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::bus::{BusError, Delivery, EventBus, Subscription};
use crate::call_context::CallContext;
use crate::outbox::{Autocommit, Cause, HandledIds, Tx, domain_of, handled_values};
use crate::storage::{Backend, Database, DatabaseError, now_micros};
use crate::trace_context::TraceContext;

/// Why a handler did not handle an event.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    message: String,
    permanent: bool,
}

impl HandlerError {
    /// A failure worth retrying (a peer or the database was down).
    pub fn retry(reason: impl std::fmt::Display) -> Self {
        Self {
            message: reason.to_string(),
            permanent: false,
        }
    }

    /// A failure no retry can fix (e.g. an undecodable payload): dead-letter at once.
    pub fn permanent(reason: impl std::fmt::Display) -> Self {
        Self {
            message: reason.to_string(),
            permanent: true,
        }
    }
}

impl From<DatabaseError> for HandlerError {
    fn from(e: DatabaseError) -> Self {
        Self::retry(e)
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        Self::retry(DatabaseError::from(e))
    }
}

/// How a handler's step runs: what it declares of the statements it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Step {
    /// Any statements, in the group's transaction (the default).
    #[default]
    Transaction,
    /// One statement carries the whole step: the handler's first statement that writes is a
    /// [`Tx::fetch_recording`] (reads may come before it) that, when it returns a row, has done
    /// everything the step does
    /// (the handler then runs no other statement), and when it returns none has changed nothing
    /// (a conditional write whose condition failed) or only what the step's run in a
    /// transaction writes again the same way (a flag set to the value that run sets). Alone
    /// in its group on Postgres, the step
    /// then runs without a transaction: the statement commits the effect with the handled
    /// record, or neither, and the step runs again in a transaction when it wrote nothing (the
    /// handler's call fails with [`crate::outbox::AutocommitRefusal::Incomplete`] and must
    /// return the error). The statement must also change nothing the saga relies on when run
    /// again after it completed (a conditional update, an upsert of the same facts): a
    /// redelivery that finds the record is acknowledged as a duplicate, but its statement ran.
    /// A handler that emits, or writes with a statement of its own on the connection, is not
    /// one.
    OneStatement,
    /// The step may run again, whole or from any point where it stopped, without changing
    /// what it did before: its statements are reads, and writes whose condition their own
    /// effect makes false (`UPDATE .. SET status = 'CONSUMED' WHERE status IN ('HELD',
    /// 'RESERVED')`). Alone in its group on Postgres it runs in autocommit and records no
    /// handled event: a redelivery runs it again, harmlessly. Before a write that must count
    /// once, or an emit, the handler calls [`Tx::need_transaction`] and returns its error; the
    /// step then runs again from the start in a transaction with the record (so what it read
    /// or wrote in autocommit must be fine to run twice). In a group's transaction it runs as
    /// any step does.
    Repeatable,
}

/// Handles one event type; runs in the transaction that records the event as handled.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `event`'s effect in `tx` (and may emit events there). Must not commit.
    fn handle<'a>(
        &'a self,
        event: &'a Envelope,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;

    /// What its step runs (see [`Step`]); a transaction unless it says otherwise.
    fn step(&self) -> Step {
        Step::Transaction
    }
}

pub use crate::event_metrics::Outcome;

/// Events of a batch per transaction before the batch is spread over one more (up to
/// [`ConsumerOptions::concurrency`]).
const GROUP_MIN: usize = 8;

/// How often a running consumer samples its group's lag for the metrics.
const LAG_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Delivery settings of a consumer.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerOptions {
    /// Deliveries before dead-lettering.
    pub max_deliveries: u32,
    /// Delay before the first retry; doubles per delivery, capped at `max_backoff`.
    pub retry_backoff: Duration,
    /// The longest retry delay.
    pub max_backoff: Duration,
    /// Deliveries fetched at once.
    pub batch: usize,
    /// Transactions run at once within a batch (events of one subject always in one of them,
    /// one at a time, in order); a batch gets one transaction per 8 events, up to this many.
    pub concurrency: usize,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            max_deliveries: 5,
            retry_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            batch: 64,
            concurrency: 8,
        }
    }
}

/// A consumer group of one service: its handlers by event type.
#[derive(Clone)]
pub struct Consumer {
    db: Database,
    bus: Arc<dyn EventBus>,
    group: String,
    handlers: HashMap<String, Arc<dyn EventHandler>>,
    options: ConsumerOptions,
    metrics: Option<crate::Metrics>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.group)
            .field("types", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer group named `group` (by convention the service name) over `db` and `bus`.
    pub fn new(db: Database, bus: Arc<dyn EventBus>, group: impl Into<String>) -> Self {
        Self {
            db,
            bus,
            group: group.into(),
            handlers: HashMap::new(),
            options: ConsumerOptions::default(),
            metrics: None,
        }
    }

    /// Records outcomes, batch times and the group's lag in `metrics`
    /// ([`crate::event_metrics`]).
    pub fn metrics(mut self, metrics: &crate::Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Handles events of `event_type` (e.g. `payment.failed`) with `handler`; the consumer reads
    /// the streams of the domains of its types.
    pub fn on(mut self, event_type: impl Into<String>, handler: impl EventHandler) -> Self {
        self.handlers.insert(event_type.into(), Arc::new(handler));
        self
    }

    /// Sets the delivery settings.
    pub fn options(mut self, options: ConsumerOptions) -> Self {
        self.options = options;
        self
    }

    /// Spreads each batch over at most `n` transactions (at least 1). Handlers that lock rows
    /// shared by many events (stock levels) use 1: one transaction per batch, so the events of a
    /// batch never wait for (or deadlock with) each other's row locks.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.options.concurrency = n.max(1);
        self
    }

    /// The group name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The domain streams this consumer reads.
    pub fn domains(&self) -> Vec<String> {
        self.handlers
            .keys()
            .map(|t| domain_of(t).to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Joins the group as consumer `instance` (unique per process).
    pub async fn subscribe(&self, instance: &str) -> Result<Box<dyn Subscription>, BusError> {
        self.bus
            .subscribe(&self.group, instance, &self.domains())
            .await
    }

    /// Consumes until `shutdown`, as a fresh consumer instance of the group. Bus failures are
    /// logged once per change of state and retried with backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let instance = format!("{}-{}", self.group, uuid::Uuid::now_v7().simple());
        let mut sub: Option<Box<dyn Subscription>> = None;
        let mut failing = false;
        let mut backoff = Duration::from_millis(100);
        let domains = self.domains();
        let series = self
            .metrics
            .as_ref()
            .map(|m| crate::event_metrics::EventMetrics::of(m).consumer(&self.group, &domains));
        let mut lag_sampled: Option<tokio::time::Instant> = None;
        while !shutdown.is_cancelled() {
            if let Some(series) = &series
                && lag_sampled.is_none_or(|at| at.elapsed() >= LAG_SAMPLE_EVERY)
            {
                lag_sampled = Some(tokio::time::Instant::now());
                let lag = self.bus.group_lag(&self.group, &domains);
                if let Ok(Ok(lags)) = tokio::time::timeout(Duration::from_secs(1), lag).await {
                    series.lag(&lags);
                }
            }
            let step = async {
                if sub.is_none() {
                    sub = Some(self.subscribe(&instance).await?);
                }
                let s = sub.as_mut().expect("subscribed above");
                let batch = s
                    .next_batch(self.options.batch, Duration::from_secs(1))
                    .await?;
                let mut acks = Vec::new();
                let started = std::time::Instant::now();
                let handled = self.handle_batch(batch).await;
                if let Some(series) = &series
                    && !handled.is_empty()
                {
                    series.batch(started.elapsed().as_secs_f64());
                    for (_, outcome) in &handled {
                        series.outcome(outcome);
                    }
                }
                for (delivery, outcome) in handled {
                    match outcome {
                        Outcome::Handled | Outcome::Duplicate | Outcome::Skipped => {
                            acks.push(delivery);
                        }
                        other => self.settle(s.as_mut(), &delivery, other).await?,
                    }
                }
                s.ack_all(&acks).await?;
                Ok::<_, BusError>(())
            };
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = step => r,
            };
            match result {
                Ok(()) => {
                    if failing {
                        failing = false;
                        tracing::info!(group = %self.group, "event consumer recovered");
                    }
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(group = %self.group, error = %e, "event consumer failing; retrying with backoff");
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Acts on `outcome` at the bus: acknowledge, retry later or dead-letter.
    pub async fn settle(
        &self,
        sub: &mut dyn Subscription,
        delivery: &Delivery,
        outcome: Outcome,
    ) -> Result<(), BusError> {
        match outcome {
            Outcome::Handled | Outcome::Duplicate | Outcome::Skipped => sub.ack(delivery).await,
            Outcome::Retry { reason, after } => {
                tracing::warn!(group = %self.group, attempt = delivery.attempt, %reason, retry_in = ?after, "event handler failed; will retry");
                sub.retry(delivery, after).await
            }
            Outcome::DeadLetter { reason } => {
                tracing::error!(group = %self.group, entry = %delivery.entry_id, domain = %delivery.domain, %reason, "event dead-lettered");
                sub.dead_letter(delivery, &reason).await
            }
        }
    }

    /// Handles a batch: events of one subject in order, different subjects spread over up to
    /// `concurrency` transactions run at once (one per 8 events: a small batch is one). Each transaction handles its events one after
    /// another, each inside a savepoint (a failing event is rolled back alone), and commits once,
    /// so a batch costs one commit per group instead of one per event. Returns each delivery with
    /// its outcome; nothing is `Handled` before its transaction committed.
    pub async fn handle_batch(&self, batch: Vec<Delivery>) -> Vec<(Delivery, Outcome)> {
        use futures::StreamExt as _;
        let mut chains: Vec<(String, Vec<Delivery>)> = Vec::new();
        for delivery in batch {
            // Undecodable payloads get a chain of their own (and a dead letter in `prepare`).
            let subject = Envelope::decode(delivery.payload.clone())
                .map_or_else(|_| format!("\0{}", delivery.entry_id), |e| e.subject);
            match chains.iter_mut().find(|(s, _)| *s == subject) {
                Some((_, chain)) => chain.push(delivery),
                None => chains.push((subject, vec![delivery])),
            }
        }
        // A small batch (the usual one below saturation) is one transaction: a transaction
        // costs a BEGIN and a COMMIT whatever it holds, so a batch is spread over another one
        // only for every GROUP_MIN events.
        let events: usize = chains.iter().map(|(_, chain)| chain.len()).sum();
        let groups_n = self
            .options
            .concurrency
            .max(1)
            .min(chains.len().max(1))
            .min(events.div_ceil(GROUP_MIN).max(1));
        let mut groups: Vec<Vec<Delivery>> = vec![Vec::new(); groups_n];
        for (i, (_, chain)) in chains.into_iter().enumerate() {
            groups[i % groups_n].extend(chain);
        }
        futures::stream::iter(groups)
            .map(|group| self.handle_group(group))
            .buffer_unordered(groups_n)
            .flat_map(futures::stream::iter)
            .collect()
            .await
    }

    /// Handles one delivery and says what to do with it at the bus (it does not touch the bus).
    pub async fn handle(&self, delivery: &Delivery) -> Outcome {
        self.handle_group(vec![delivery.clone()])
            .await
            .pop()
            .map_or_else(
                || Outcome::Retry {
                    reason: "not handled".into(),
                    after: self.backoff(delivery.attempt),
                },
                |(_, o)| o,
            )
    }

    /// Decodes and routes a delivery, or says at once what to do with it.
    fn prepare(&self, delivery: &Delivery) -> Result<(Envelope, Arc<dyn EventHandler>), Outcome> {
        let envelope =
            read_envelope(&delivery.payload).map_err(|reason| Outcome::DeadLetter { reason })?;
        let Some(handler) = self.handlers.get(&envelope.r#type).cloned() else {
            return Err(if known_type(&envelope) {
                Outcome::Skipped
            } else {
                Outcome::DeadLetter {
                    reason: format!(
                        "unknown event type `{}` (payload {})",
                        envelope.r#type,
                        envelope.payload.as_ref().map_or("none", |p| &p.type_url)
                    ),
                }
            });
        };
        if delivery.attempt > self.options.max_deliveries {
            return Err(Outcome::DeadLetter {
                reason: format!(
                    "delivered {} times (max {}) without being handled",
                    delivery.attempt, self.options.max_deliveries
                ),
            });
        }
        Ok((envelope, handler))
    }

    /// What a failed attempt leads to.
    fn failed(&self, delivery: &Delivery, e: &HandlerError) -> Outcome {
        if e.permanent {
            Outcome::DeadLetter {
                reason: format!("handler refused the event: {e}"),
            }
        } else if delivery.attempt >= self.options.max_deliveries {
            Outcome::DeadLetter {
                reason: format!("failed {} times; last error: {e}", delivery.attempt),
            }
        } else {
            Outcome::Retry {
                reason: e.to_string(),
                after: self.backoff(delivery.attempt),
            }
        }
    }

    /// Handles `group` in one transaction: its event ids are recorded as handled (ids recorded
    /// before are duplicates) and the handlers of the new events run one after another; on
    /// Postgres the record is joined to the effect ([`Consumer::try_group_joined`]), elsewhere
    /// (and when that finds a redelivery) it comes first ([`Consumer::try_group`]). If a handler fails, or the transaction does, it is rolled back and the group is
    /// handled again by [`Consumer::handle_group_isolated`], so that only the failing event is
    /// retried. Handlers therefore may run twice for one delivery; their effects count once.
    async fn handle_group(&self, group: Vec<Delivery>) -> Vec<(Delivery, Outcome)> {
        let (mut done, work) = self.prepare_group(group);
        if work.is_empty() {
            return finish(done);
        }
        // A first delivery only: a redelivery (its consumer died, or it failed before) may find
        // its effect committed, which the transaction's record check sorts out.
        if let [w] = work.as_slice()
            && w.attempt == 1
            && w.handler.step() == Step::OneStatement
            && matches!(self.db.backend(), Backend::Postgres { .. })
            && let Some(outcome) = self.try_autocommit(w).await
        {
            done[w.index].1 = Some(outcome);
            return finish(done);
        }
        if let [w] = work.as_slice()
            && w.handler.step() == Step::Repeatable
            && matches!(self.db.backend(), Backend::Postgres { .. })
            && let Some(outcome) = self.try_repeatable(w).await
        {
            done[w.index].1 = Some(outcome);
            return finish(done);
        }
        let first_try = match self.db.backend() {
            Backend::Postgres { .. } => self.try_group_joined(&work).await,
            Backend::Sqlite => self.try_group(&work).await.map(Some),
        };
        // `None`: an event of the group was handled before; its duplicate effects were rolled
        // back, and the record-first path sorts the group out.
        let first_try = match first_try {
            Ok(None) => self.try_group(&work).await,
            other => other.map(|h| h.unwrap_or_default()),
        };
        match first_try {
            Ok(handled) => {
                for (w, first) in work.iter().zip(handled) {
                    done[w.index].1 = Some(if first {
                        Outcome::Handled
                    } else {
                        Outcome::Duplicate
                    });
                }
                finish(done)
            }
            Err(e) => {
                tracing::warn!(group = %self.group, events = work.len(), error = %e, "a handler failed in a batch; handling the batch again one event at a time");
                self.handle_group_isolated(done, work).await
            }
        }
    }

    /// The fast path of [`Consumer::handle_group`] on Postgres: runs the handlers of the group's
    /// events (each id once) in one transaction and records their ids as handled in the same
    /// transaction, joined to the first event any handler emits (one statement writes the outbox
    /// row and the records, [`Tx::emit`]), or in one statement after the handlers when none
    /// emitted. Handlers run before the record is checked: if any id was recorded before (a
    /// redelivery), the transaction is rolled back and `None` returned, so a duplicate's effect
    /// never commits. Redeliveries are rare; the common case saves the record's own statement.
    async fn try_group_joined(&self, work: &[Work]) -> Result<Option<Vec<bool>>, HandlerError> {
        let ids = distinct_ids(work);
        let mut tx = self.db.begin().await?;
        // A handler's failure here runs the group again event by event (`handle_group`).
        tx.reruns_failed_step = true;
        tx.handled = Some(HandledIds {
            consumer: self.group.clone(),
            ids: ids.clone(),
            written: None,
        });
        let mut first: HashSet<&str> = HashSet::with_capacity(ids.len());
        let mut handled = Vec::with_capacity(work.len());
        for w in work {
            // A second copy of an id in the group is a duplicate of the first.
            if !first.insert(w.envelope.id.as_str()) {
                handled.push(false);
                continue;
            }
            self.run_handler(w, &mut tx).await?;
            if tx
                .handled
                .as_ref()
                .and_then(|h| h.written)
                .is_some_and(|new| new < ids.len())
            {
                return Ok(None);
            }
            handled.push(true);
        }
        let written = tx.handled.take().and_then(|h| h.written);
        let all_new = match written {
            Some(new) => new == ids.len(),
            None => self.record_handled(&mut tx, &ids).await?.len() == ids.len(),
        };
        if !all_new {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(handled))
    }

    /// A one-statement step ([`Step::OneStatement`]) alone in its group, without a
    /// transaction: the handler's statement commits its effect and the event's record together
    /// ([`Tx::fetch_recording`]). `None` when nothing was written and the step is to run in a
    /// transaction: its statement changed nothing (the step needs more this time), the handler
    /// failed before it ran, or the database could not be reached.
    async fn try_autocommit(&self, w: &Work) -> Option<Outcome> {
        let ids = vec![w.envelope.id.clone()];
        let handled = HandledIds {
            consumer: self.group.clone(),
            ids: ids.clone(),
            written: None,
        };
        let mut tx = Tx::one_statement(&self.db, handled).await.ok()?;
        let result = self.run_handler(w, &mut tx).await;
        let Autocommit {
            needs_transaction,
            overran,
            ..
        } = tx.autocommit.take().unwrap_or_default();
        if needs_transaction {
            return None;
        }
        let new = match (tx.handled.as_ref().and_then(|h| h.written), &result) {
            (Some(new), _) => new,
            // The handler ran no statement (nothing to do): the record alone.
            (None, Ok(())) => self.record_handled(&mut tx, &ids).await.ok()?.len(),
            (None, Err(_)) => return None,
        };
        if overran {
            tracing::error!(group = %self.group, event_type = %w.envelope.r#type, event = %w.envelope.id, "a handler declared a one-statement step and tried a second statement after the first committed; fix the handler's step");
        }
        // Nothing left to commit: this runs what waits for the commit (work handed over).
        tx.commit().await.ok()?;
        Some(if new == ids.len() {
            Outcome::Handled
        } else {
            Outcome::Duplicate
        })
    }

    /// A repeatable step ([`Step::Repeatable`]) alone in its group, in autocommit and without
    /// the handled record. `None` when the step is to run in a transaction: the handler asked
    /// for one, or failed (a failure runs it again there, where a retry is counted and
    /// dead-lettering applies), or the database could not be reached.
    async fn try_repeatable(&self, w: &Work) -> Option<Outcome> {
        let mut tx = Tx::repeatable(&self.db).await.ok()?;
        self.run_handler(w, &mut tx).await.ok()?;
        // Nothing left to commit: this runs what waits for the commit (work handed over).
        tx.commit().await.ok()?;
        Some(Outcome::Handled)
    }

    /// Runs `w`'s handler in `tx`, in its `event` span, with the event as the cause of what it
    /// emits.
    async fn run_handler(&self, w: &Work, tx: &mut Tx) -> Result<(), HandlerError> {
        tx.cause = Some(Cause {
            event_id: w.envelope.id.clone(),
            correlation_id: w.envelope.correlation_id.clone(),
        });
        let result = self
            .in_span(&w.envelope, w.attempt, w.handler.handle(&w.envelope, tx))
            .await;
        tx.cause = None;
        result
    }

    /// The record-first path of [`Consumer::handle_group`]: records the ids and runs the handlers in one
    /// transaction without savepoints, and commits. Says for each of `work` whether it was
    /// handled for the first time (`false`: a duplicate); `Err` means nothing was committed.
    async fn try_group(&self, work: &[Work]) -> Result<Vec<bool>, HandlerError> {
        let mut tx = self.db.begin().await?;
        let mut new_ids = self.record_handled(&mut tx, &distinct_ids(work)).await?;
        let mut handled = Vec::with_capacity(work.len());
        for w in work {
            // Only the first delivery of a newly recorded id runs; `remove` makes later copies
            // in this group duplicates.
            if !new_ids.remove(w.envelope.id.as_str()) {
                handled.push(false);
                continue;
            }
            self.run_handler(w, &mut tx).await?;
            handled.push(true);
        }
        tx.commit().await?;
        Ok(handled)
    }

    /// Records `ids` (distinct) in `mesh_handled_events` with one statement; returns the ids
    /// that were not recorded before.
    async fn record_handled(
        &self,
        tx: &mut Tx,
        ids: &[String],
    ) -> Result<HashSet<String>, HandlerError> {
        let (values, padded) = handled_values(ids, 2, "$1");
        let sql = format!(
            "INSERT INTO mesh_handled_events (consumer, event_id, handled_at_us) VALUES {values} \
             ON CONFLICT DO NOTHING RETURNING event_id"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_micros())
            .bind(&self.group);
        for id in padded {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&mut **tx).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(HandlerError::from))
            .collect()
    }

    /// Splits `group` into deliveries settled at once (malformed, unknown type, too many
    /// attempts: their outcome is set) and the work for handlers (indexes into the first).
    fn prepare_group(&self, group: Vec<Delivery>) -> (Vec<(Delivery, Option<Outcome>)>, Vec<Work>) {
        let mut done: Vec<(Delivery, Option<Outcome>)> = Vec::with_capacity(group.len());
        let mut work = Vec::new();
        for delivery in group {
            match self.prepare(&delivery) {
                Ok((envelope, handler)) => {
                    work.push(Work {
                        index: done.len(),
                        attempt: delivery.attempt,
                        envelope,
                        handler,
                    });
                    done.push((delivery, None));
                }
                Err(outcome) => done.push((delivery, Some(outcome))),
            }
        }
        (done, work)
    }

    /// Handles prepared `work` in one transaction, each event in a savepoint.
    async fn handle_group_isolated(
        &self,
        mut done: Vec<(Delivery, Option<Outcome>)>,
        work: Vec<Work>,
    ) -> Vec<(Delivery, Outcome)> {
        let mut tx = match self.db.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                let e = HandlerError::from(e);
                for (delivery, outcome) in &mut done {
                    if outcome.is_none() {
                        *outcome = Some(self.failed(delivery, &e));
                    }
                }
                return finish(done);
            }
        };
        // Outcomes of events whose savepoint was released: `Handled` only if the commit succeeds.
        let mut committed_pending = Vec::new();
        let mut duplicates = Vec::new();
        let mut broken: Option<HandlerError> = None;
        for Work {
            index,
            attempt,
            envelope,
            handler,
        } in work
        {
            if let Some(e) = &broken {
                let outcome = self.failed(&done[index].0, e);
                done[index].1 = Some(outcome);
                continue;
            }
            let result = self
                .in_span(
                    &envelope,
                    attempt,
                    self.apply(&mut tx, &envelope, handler.as_ref()),
                )
                .await;
            match result {
                Ok(Applied::Done) => committed_pending.push(index),
                // Also provisional: the first copy may be in this very transaction.
                Ok(Applied::Duplicate) => duplicates.push(index),
                Ok(Applied::Failed(e)) => {
                    let outcome = self.failed(&done[index].0, &e);
                    done[index].1 = Some(outcome);
                }
                Err(e) => {
                    // The transaction itself failed: nothing in it counts.
                    let outcome = self.failed(&done[index].0, &e);
                    done[index].1 = Some(outcome);
                    broken = Some(e);
                }
            }
        }
        let commit = match broken {
            Some(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
            None => tx.commit().await.map_err(HandlerError::from),
        };
        for (index, ok) in committed_pending
            .into_iter()
            .map(|i| (i, Outcome::Handled))
            .chain(duplicates.into_iter().map(|i| (i, Outcome::Duplicate)))
        {
            done[index].1 = Some(match &commit {
                Ok(()) => ok,
                Err(e) => self.failed(&done[index].0, e),
            });
        }
        finish(done)
    }

    /// Runs `fut` in the event's span, a child of the envelope's `traceparent`, with the matching
    /// [`CallContext`] (so emitted events and outgoing calls continue the trace).
    async fn in_span<F: std::future::Future>(
        &self,
        envelope: &Envelope,
        attempt: u32,
        fut: F,
    ) -> F::Output {
        let parent = TraceContext::parse(&envelope.traceparent);
        let mut trace = parent.map_or_else(TraceContext::new_root, |p| p.child());
        // Only when spans are consumed (`crate::observe::SPAN_TARGET`); the handler's log lines
        // take their ids from the `CallContext` either way.
        let span = tracing::debug_span!(
            target: crate::observe::SPAN_TARGET,
            "event",
            otel.name = %format_args!("handle {}", envelope.r#type),
            otel.kind = "consumer",
            event.r#type = %envelope.r#type,
            event.id = %envelope.id,
            consumer = %self.group,
            mesh.service = %self.db.service(),
            attempt,
            trace_id = %trace.trace_id_hex(),
            span_id = %trace.span_id_hex(),
            parent_span_id = parent.map(|p| tracing::field::display(p.span_id_hex())),
        );
        crate::observe::adopt_otel_ids(&span, parent, &mut trace);
        let event_type = envelope.r#type.as_str();
        CallContext {
            trace,
            deadline: None,
        }
        .scope(async move {
            let output = fut.await;
            // In the event's context, so the line carries its trace (`mesh_runtime=debug`).
            tracing::debug!(event_type, attempt, "event handler returned");
            output
        })
        .instrument(span)
        .await
    }

    /// Records the event as handled and runs its handler, inside a savepoint of `tx`. `Err` means
    /// the transaction itself is unusable.
    async fn apply(
        &self,
        tx: &mut Tx,
        envelope: &Envelope,
        handler: &dyn EventHandler,
    ) -> Result<Applied, HandlerError> {
        sqlx::query("SAVEPOINT mesh_event")
            .execute(&mut **tx)
            .await?;
        let mark = tx.savepoint_mark();
        let inserted = sqlx::query(
            "INSERT INTO mesh_handled_events (consumer, event_id, handled_at_us) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.group)
        .bind(&envelope.id)
        .bind(now_micros())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            sqlx::query("RELEASE SAVEPOINT mesh_event")
                .execute(&mut **tx)
                .await?;
            return Ok(Applied::Duplicate);
        }
        tx.cause = Some(Cause {
            event_id: envelope.id.clone(),
            correlation_id: envelope.correlation_id.clone(),
        });
        let result = handler.handle(envelope, tx).await;
        tx.cause = None;
        match result {
            Ok(()) => {
                sqlx::query("RELEASE SAVEPOINT mesh_event")
                    .execute(&mut **tx)
                    .await?;
                Ok(Applied::Done)
            }
            Err(e) => {
                sqlx::query("ROLLBACK TO SAVEPOINT mesh_event")
                    .execute(&mut **tx)
                    .await?;
                // Its events were rolled back with it: they must never be published.
                tx.rolled_back_to(mark);
                sqlx::query("RELEASE SAVEPOINT mesh_event")
                    .execute(&mut **tx)
                    .await?;
                Ok(Applied::Failed(e))
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        (self.options.retry_backoff * factor).min(self.options.max_backoff)
    }
}

/// An event of a group that has a handler: its place in the group, its delivery attempt.
struct Work {
    index: usize,
    attempt: u32,
    envelope: Envelope,
    handler: Arc<dyn EventHandler>,
}

/// What applying one event in a savepoint came to.
enum Applied {
    Done,
    Duplicate,
    Failed(HandlerError),
}

/// The distinct event ids of `work`, in order.
fn distinct_ids(work: &[Work]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::with_capacity(work.len());
    for w in work {
        if !ids.contains(&w.envelope.id) {
            ids.push(w.envelope.id.clone());
        }
    }
    ids
}

fn finish(done: Vec<(Delivery, Option<Outcome>)>) -> Vec<(Delivery, Outcome)> {
    done.into_iter()
        .map(|(d, o)| {
            let o = o.unwrap_or(Outcome::Retry {
                reason: "not handled".into(),
                after: Duration::from_millis(100),
            });
            (d, o)
        })
        .collect()
}

/// Decodes a delivery's payload as the consumer does before any handler runs: an
/// `events.v1.Envelope` with an id and a type, the id fit to be recorded as handled (no NUL
/// character, which a Postgres `TEXT` cannot hold, so such an event would fail its transaction
/// on every delivery). `Err` is the dead-letter reason. This is also the parsing entry point the
/// `event_envelope` fuzz target drives.
pub fn read_envelope(payload: &[u8]) -> Result<Envelope, String> {
    let envelope = Envelope::decode(payload).map_err(|e| format!("malformed envelope: {e}"))?;
    if envelope.id.is_empty() || envelope.r#type.is_empty() {
        return Err("malformed envelope: missing id or type".into());
    }
    if envelope.id.contains('\0') {
        return Err("malformed envelope: the id contains a NUL character".into());
    }
    Ok(envelope)
}

/// Whether the envelope's type is one the mesh defines: its payload is an `events.v1` message of
/// the contracts and its type has the `<domain>.<verb>` form. Envelopes of other types are
/// dead-lettered; known types without a handler are acknowledged.
pub fn known_type(envelope: &Envelope) -> bool {
    let Some(payload) = &envelope.payload else {
        return false;
    };
    let name = payload.type_url.rsplit('/').next().unwrap_or_default();
    envelope.r#type.contains('.')
        && name.starts_with("events.v1.")
        && crate::descriptors::message_exists(name)
}
