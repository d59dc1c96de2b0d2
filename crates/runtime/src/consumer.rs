//! Idempotent event consumers: a service's [`EventHandler`]s run in a transaction that also
//! records the event id in `mesh_handled_events`, and the event is acknowledged on the bus only
//! after that transaction commits.
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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mesh_contracts::events::v1::Envelope;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::bus::{BusError, Delivery, EventBus, Subscription};
use crate::call_context::CallContext;
use crate::outbox::{Cause, Tx, domain_of};
use crate::storage::{Database, DatabaseError, now_micros};
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

/// Handles one event type; runs in the transaction that records the event as handled.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `event`'s effect in `tx` (and may emit events there). Must not commit.
    fn handle<'a>(
        &'a self,
        event: &'a Envelope,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler's effect committed.
    Handled,
    /// Already handled before (a redelivery): no second effect.
    Duplicate,
    /// A known type this consumer has no handler for.
    Skipped,
    /// Failed; deliver again after the delay.
    Retry {
        /// Why it failed.
        reason: String,
        /// The backoff.
        after: Duration,
    },
    /// Give up: move to the dead-letter stream.
    DeadLetter {
        /// Why.
        reason: String,
    },
}

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
    /// Subjects handled at once within a batch (events of one subject always one at a time,
    /// in order).
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
        }
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
        while !shutdown.is_cancelled() {
            let step = async {
                if sub.is_none() {
                    sub = Some(self.subscribe(&instance).await?);
                }
                let s = sub.as_mut().expect("subscribed above");
                let batch = s
                    .next_batch(self.options.batch, Duration::from_secs(1))
                    .await?;
                for (delivery, outcome) in self.handle_batch(batch).await {
                    self.settle(s.as_mut(), &delivery, outcome).await?;
                }
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

    /// Handles a batch: events of one subject in order, different subjects concurrently (up to
    /// `concurrency`). Returns each delivery with its outcome, in the batch's order per subject.
    pub async fn handle_batch(&self, batch: Vec<Delivery>) -> Vec<(Delivery, Outcome)> {
        use futures::StreamExt as _;
        let mut chains: Vec<(String, Vec<Delivery>)> = Vec::new();
        for delivery in batch {
            // Undecodable payloads get a chain of their own (and a dead letter in `handle`).
            let subject = Envelope::decode(delivery.payload.clone())
                .map_or_else(|_| format!("\0{}", delivery.entry_id), |e| e.subject);
            match chains.iter_mut().find(|(s, _)| *s == subject) {
                Some((_, chain)) => chain.push(delivery),
                None => chains.push((subject, vec![delivery])),
            }
        }
        futures::stream::iter(chains)
            .map(|(_, chain)| async move {
                let mut out = Vec::with_capacity(chain.len());
                for delivery in chain {
                    let outcome = self.handle(&delivery).await;
                    out.push((delivery, outcome));
                }
                out
            })
            .buffer_unordered(self.options.concurrency.max(1))
            .flat_map(futures::stream::iter)
            .collect()
            .await
    }

    /// Handles one delivery and says what to do with it at the bus (it does not touch the bus).
    pub async fn handle(&self, delivery: &Delivery) -> Outcome {
        let envelope = match Envelope::decode(delivery.payload.clone()) {
            Ok(e) if !e.id.is_empty() && !e.r#type.is_empty() => e,
            Ok(_) => {
                return Outcome::DeadLetter {
                    reason: "malformed envelope: missing id or type".into(),
                };
            }
            Err(e) => {
                return Outcome::DeadLetter {
                    reason: format!("malformed envelope: {e}"),
                };
            }
        };
        let Some(handler) = self.handlers.get(&envelope.r#type).cloned() else {
            return if known_type(&envelope) {
                Outcome::Skipped
            } else {
                Outcome::DeadLetter {
                    reason: format!(
                        "unknown event type `{}` (payload {})",
                        envelope.r#type,
                        envelope.payload.as_ref().map_or("none", |p| &p.type_url)
                    ),
                }
            };
        };
        if delivery.attempt > self.options.max_deliveries {
            return Outcome::DeadLetter {
                reason: format!(
                    "delivered {} times (max {}) without being handled",
                    delivery.attempt, self.options.max_deliveries
                ),
            };
        }

        let parent = TraceContext::parse(&envelope.traceparent);
        let mut trace = parent.map_or_else(TraceContext::new_root, |p| p.child());
        let span = tracing::info_span!(
            "event",
            otel.kind = "consumer",
            event.r#type = %envelope.r#type,
            event.id = %envelope.id,
            consumer = %self.group,
            attempt = delivery.attempt,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        crate::observe::adopt_otel_ids(&span, parent, &mut trace);
        span.record("trace_id", trace.trace_id_hex());
        span.record("span_id", trace.span_id_hex());
        if let Some(parent) = parent {
            span.record("parent_span_id", parent.span_id_hex());
        }
        let context = CallContext {
            trace,
            deadline: None,
        };
        let result = context
            .scope(self.apply(&envelope, handler.as_ref()))
            .instrument(span)
            .await;
        match result {
            Ok(true) => Outcome::Handled,
            Ok(false) => Outcome::Duplicate,
            Err(e) if e.permanent => Outcome::DeadLetter {
                reason: format!("handler refused the event: {e}"),
            },
            Err(e) if delivery.attempt >= self.options.max_deliveries => Outcome::DeadLetter {
                reason: format!("failed {} times; last error: {e}", delivery.attempt),
            },
            Err(e) => Outcome::Retry {
                reason: e.to_string(),
                after: self.backoff(delivery.attempt),
            },
        }
    }

    /// Runs the handler in a transaction that records the event as handled; `Ok(false)` when it
    /// was handled before.
    async fn apply(
        &self,
        envelope: &Envelope,
        handler: &dyn EventHandler,
    ) -> Result<bool, HandlerError> {
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO mesh_handled_events (consumer, event_id, handled_at_us) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.group)
        .bind(&envelope.id)
        .bind(now_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.cause = Some(Cause {
            event_id: envelope.id.clone(),
            correlation_id: envelope.correlation_id.clone(),
        });
        handler.handle(envelope, &mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        (self.options.retry_backoff * factor).min(self.options.max_backoff)
    }
}

/// Whether the envelope's type is one the mesh defines: its payload is an `events.v1` message of
/// the contracts and its type has the `<domain>.<verb>` form.
fn known_type(envelope: &Envelope) -> bool {
    let Some(payload) = &envelope.payload else {
        return false;
    };
    let name = payload.type_url.rsplit('/').next().unwrap_or_default();
    envelope.r#type.contains('.')
        && name.starts_with("events.v1.")
        && crate::descriptors::message_exists(name)
}
