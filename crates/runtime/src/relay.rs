//! The outbox relay: runs the direct publisher of a service's outbox ([`crate::publisher`]:
//! committed rows go to the bus at once from the committing process, and are marked sent in
//! batches afterwards) and sweeps up every row that path did not publish within a short bound
//! (`sweep_after`): a crash between commit and publish, a bus outage, a row deferred to keep its
//! subject's order. The sweep publishes in order per subject and marks rows sent only after the
//! bus has stored them.
//!
//! Ordering between the two paths: the sweep takes only rows older than the bound, and never a
//! row of a subject that has an earlier unsent row younger than the bound (clocks of two
//! processes may disagree); a batch is in `seq` order, which is `sequence` order per subject.
//! The direct path publishes row `n` of a subject only when row `n - 1` is known to be on the
//! bus. Either path may publish a row the other published too (a duplicate, dropped by
//! consumers by event id), but no path publishes a row before an earlier row of its subject was
//! first published.
//!
//! Crash safety: a row is marked sent in a transaction that commits after the bus acknowledged
//! the publish; a crash in between publishes it again on restart (consumers deduplicate by event
//! id), so nothing is lost and duplicates are harmless. For the same reason the batched mark of
//! directly published rows does not wait for the disk (it runs on a connection of its own with
//! `synchronous_commit = off` set once for the session, so each mark is one statement): a mark
//! lost in a database crash is one more duplicate, never a lost event.
//!
//! A sweep pass that finds nothing (the usual case) is one autocommit probe; only a pass with
//! old unsent rows opens a transaction and locks partitions.
//!
//! Several replicas (Postgres): each batch locks some of the 16 rows of `mesh_outbox_partitions`
//! with `FOR UPDATE SKIP LOCKED` and relays only the subjects hashed to them, so replicas work at
//! once on disjoint subjects and one subject's events are never relayed by two at a time.
//! SQLite has one process, hence one relay, and needs no lock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;

use crate::bus::{BusError, EventBus, OutgoingEvent};
use crate::outbox::{domain_of, with_sequence};
use crate::publisher::Marker;
use crate::storage::{Backend, Database, DatabaseError, now_micros};

/// Why one relay pass failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or marking outbox rows failed.
    #[error("outbox: {0}")]
    Database(#[from] DatabaseError),
    /// The bus refused the batch.
    #[error("publishing to the bus: {0}")]
    Bus(#[from] BusError),
}

impl From<sqlx::Error> for RelayError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e.into())
    }
}

/// Relay settings.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    /// Rows per batch.
    pub batch: usize,
    /// How often the sweep looks for rows the direct path left unpublished.
    pub poll: Duration,
    /// Rows unsent this long after they were written are the sweep's (the direct publisher
    /// gets them to the bus within milliseconds; a row still unsent after this was missed).
    /// Zero sweeps every unsent row (tests, tools).
    pub sweep_after: Duration,
    /// How long the batched mark of directly published rows waits to gather more rows (well
    /// under `sweep_after`, or the sweep publishes rows again that were published and not yet
    /// marked).
    pub mark_gather: Duration,
    /// Longest wait between retries while the bus or database is down.
    pub max_backoff: Duration,
    /// Sent rows older than this are deleted; `None` keeps them (the audit trail) forever.
    pub retention: Option<Duration>,
    /// Records of handled events (consumers' deduplication) older than this are deleted. It
    /// must outlive any redelivery: the bus's retention of its streams, plus a margin.
    pub handled_retention: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch: 256,
            poll: Duration::from_millis(250),
            sweep_after: Duration::from_secs(1),
            mark_gather: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            retention: None,
            handled_retention: Duration::from_secs(8 * 24 * 3600),
        }
    }
}

/// Publishes one service's outbox.
#[derive(Debug, Clone)]
pub struct Relay {
    db: Database,
    bus: Arc<dyn EventBus>,
    options: RelayOptions,
    series: Option<crate::event_metrics::RelaySeries>,
}

impl Relay {
    /// A relay of `db`'s outbox to `bus`.
    pub fn new(db: Database, bus: Arc<dyn EventBus>, options: RelayOptions) -> Self {
        Self {
            db,
            bus,
            options,
            series: None,
        }
    }

    /// Records publish latency and the outbox backlog in `metrics` ([`crate::event_metrics`]).
    pub fn with_metrics(mut self, metrics: &crate::Metrics) -> Self {
        self.series =
            Some(crate::event_metrics::EventMetrics::of(metrics).relay(self.db.service()));
        self
    }

    /// Publishes `events` to the bus, timing it as a sweep publish, each in its `publish` span
    /// ([`crate::spans`]).
    async fn publish(&self, events: &[OutgoingEvent]) -> Result<(), crate::bus::BusError> {
        let spans = crate::spans::publish_spans(self.db.service(), events);
        let started = std::time::Instant::now();
        let result = self.bus.publish(events).await;
        if result.is_err() {
            crate::spans::publish_failed(&spans);
        }
        if let (Some(series), Ok(())) = (&self.series, &result) {
            series.sweep.observe(started.elapsed().as_secs_f64());
        }
        result
    }

    /// Samples the outbox's unsent rows and the age of the oldest into the metrics.
    async fn sample_backlog(&self) -> Result<(), RelayError> {
        let Some(series) = &self.series else {
            return Ok(());
        };
        let row = sqlx::query(
            "SELECT COUNT(*), MIN(occurred_at_us) FROM mesh_outbox WHERE sent_at_us IS NULL",
        )
        .fetch_one(self.db.pool())
        .await?;
        let rows: i64 = row.try_get(0)?;
        let oldest: Option<i64> = row.try_get(1)?;
        #[allow(clippy::cast_precision_loss)]
        let age = oldest.map_or(0.0, |at| (now_micros() - at).max(0) as f64 / 1e6);
        series.backlog(rows, age);
        Ok(())
    }

    /// Publishes up to one batch of rows left unsent for longer than `sweep_after`; returns how
    /// many were published.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let limit = i64::try_from(self.options.batch).unwrap_or(i64::MAX);
        let cutoff =
            now_micros() - i64::try_from(self.options.sweep_after.as_micros()).unwrap_or(0);
        match self.db.backend() {
            Backend::Postgres { .. } => {
                // Most passes find nothing (the direct path published everything): one
                // autocommit probe says so, without a transaction (no BEGIN, partition lock or
                // ROLLBACK for an empty pass).
                if !has_old_unsent(self.db.pool(), cutoff).await? {
                    return Ok(0);
                }
                let mut tx = self.db.pool().begin().await?;
                // One statement: lock partitions with work that no other relay holds (up to
                // half of them, so a second replica finds work too), then read their oldest
                // unsent rows.
                let rows = sqlx::query(
                    "WITH parts AS MATERIALIZED (\
                       SELECT p.part FROM mesh_outbox_partitions p WHERE EXISTS \
                       (SELECT 1 FROM mesh_outbox o WHERE o.part = p.part AND o.sent_at_us IS NULL \
                        AND o.occurred_at_us <= $2) \
                       ORDER BY random() LIMIT 8 FOR UPDATE OF p SKIP LOCKED) \
                     SELECT seq, sequence, event_type, envelope FROM mesh_outbox o \
                     WHERE sent_at_us IS NULL AND part IN (SELECT part FROM parts) \
                     AND occurred_at_us <= $2 AND NOT EXISTS (SELECT 1 FROM mesh_outbox e \
                       WHERE e.subject = o.subject AND e.sequence < o.sequence \
                       AND e.sent_at_us IS NULL AND e.occurred_at_us > $2) \
                     ORDER BY seq LIMIT $1",
                )
                .bind(limit)
                .bind(cutoff)
                .fetch_all(&mut *tx)
                .await?;
                let (seqs, events) = decode_rows(&rows)?;
                if seqs.is_empty() {
                    return Ok(0);
                }
                if let Err(e) = self.publish(&events).await {
                    // Release the partitions now, not whenever the dropped transaction's
                    // rollback gets to run.
                    let _ = tx.rollback().await;
                    return Err(e.into());
                }
                mark_sent(&mut tx, &seqs).await?;
                tx.commit().await?;
                Ok(seqs.len())
            }
            Backend::Sqlite => {
                let rows = sqlx::query(
                    "SELECT seq, sequence, event_type, envelope FROM mesh_outbox o \
                     WHERE sent_at_us IS NULL AND occurred_at_us <= $2 \
                     AND NOT EXISTS (SELECT 1 FROM mesh_outbox e \
                       WHERE e.subject = o.subject AND e.sequence < o.sequence \
                       AND e.sent_at_us IS NULL AND e.occurred_at_us > $2) \
                     ORDER BY seq LIMIT $1",
                )
                .bind(limit)
                .bind(cutoff)
                .fetch_all(self.db.pool())
                .await?;
                let (seqs, events) = decode_rows(&rows)?;
                if seqs.is_empty() {
                    return Ok(0);
                }
                self.publish(&events).await?;
                let mut conn = self.db.pool().acquire().await?;
                mark_sent(&mut conn, &seqs).await?;
                Ok(seqs.len())
            }
        }
    }

    /// Deletes sent outbox rows older than the retention and handled-event records older than
    /// the handled retention; returns how many rows in all.
    pub async fn clean_up(&self) -> Result<u64, RelayError> {
        let cutoff =
            |age: Duration| now_micros() - i64::try_from(age.as_micros()).unwrap_or(i64::MAX / 2);
        let handled = sqlx::query("DELETE FROM mesh_handled_events WHERE handled_at_us < $1")
            .bind(cutoff(self.options.handled_retention))
            .execute(self.db.pool())
            .await?
            .rows_affected();
        let Some(retention) = self.options.retention else {
            return Ok(handled);
        };
        let sent =
            sqlx::query("DELETE FROM mesh_outbox WHERE sent_at_us IS NOT NULL AND sent_at_us < $1")
                .bind(cutoff(retention))
                .execute(self.db.pool())
                .await?
                .rows_affected();
        Ok(handled + sent)
    }

    /// Runs until `shutdown`: the direct publisher of this database's commits and the batched
    /// marking of what it published, and the sweep of rows left unsent past `sweep_after`
    /// every poll interval; while the bus or database fails, each retries with exponential
    /// backoff and logs once per change of state (failing / recovered), not per attempt.
    pub async fn run(self, shutdown: CancellationToken) {
        let service = self.db.service().to_string();
        let marker = Arc::new(Marker::default());
        let publisher = self.db.publisher().clone();
        let direct = publisher.run(
            self.bus.clone(),
            self.series.as_ref().map(|s| s.direct.clone()),
            marker.clone(),
            service.clone(),
            shutdown.clone(),
        );
        let marks = Arc::new(MarkConnection::new(self.db.clone()));
        let marking = marker.run(
            self.options.mark_gather,
            service.clone(),
            shutdown.clone(),
            move |seqs| {
                let marks = marks.clone();
                async move { marks.mark(&seqs).await }
            },
        );
        tokio::join!(direct, marking, self.sweep(service, shutdown.clone()));
    }

    /// The sweep loop of [`Relay::run`].
    async fn sweep(&self, service: String, shutdown: CancellationToken) {
        let mut failing: Option<String> = None;
        let mut backoff = Duration::from_millis(100);
        let mut last_cleanup = tokio::time::Instant::now();
        let mut last_sample: Option<tokio::time::Instant> = None;
        loop {
            if last_sample.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                last_sample = Some(tokio::time::Instant::now());
                if let Err(e) = self.sample_backlog().await {
                    tracing::debug!(%service, error = %e, "outbox backlog not sampled");
                }
            }
            let result = async {
                let mut total = 0;
                loop {
                    let n = self.relay_once().await?;
                    total += n;
                    if n == 0 {
                        break Ok::<_, RelayError>(total);
                    }
                }
            }
            .await;
            match result {
                Ok(_) => {
                    if let Some(error) = failing.take() {
                        tracing::info!(%service, previous_error = %error, "outbox relay recovered; delivery resumed");
                    }
                    backoff = Duration::from_millis(100);
                    if last_cleanup.elapsed() > Duration::from_secs(60) {
                        last_cleanup = tokio::time::Instant::now();
                        match self.clean_up().await {
                            Ok(0) => {}
                            Ok(n) => {
                                tracing::info!(%service, deleted = n, "outbox retention: deleted old sent rows")
                            }
                            Err(e) => {
                                tracing::warn!(%service, error = %e, "outbox retention clean-up failed")
                            }
                        }
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(self.options.poll) => {}
                    }
                }
                Err(e) => {
                    let kind = match &e {
                        RelayError::Database(_) => "database",
                        RelayError::Bus(_) => "bus",
                    };
                    if failing.as_deref() != Some(kind) {
                        tracing::warn!(%service, error = %e, "outbox relay failing; events stay in the outbox and are retried with backoff");
                        failing = Some(kind.to_string());
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
            }
        }
    }
}

type Decoded = (Vec<i64>, Vec<OutgoingEvent>);

fn decode_rows(rows: &[sqlx::any::AnyRow]) -> Result<Decoded, sqlx::Error> {
    let mut seqs = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = row.try_get("seq")?;
        let event_type: String = row.try_get("event_type")?;
        let sequence: i64 = row.try_get("sequence")?;
        let envelope: Vec<u8> = row.try_get("envelope")?;
        seqs.push(seq);
        events.push(OutgoingEvent {
            domain: domain_of(&event_type).to_string(),
            event_id: seq.to_string(),
            payload: Bytes::from(with_sequence(envelope, sequence)),
        });
    }
    Ok((seqs, events))
}

/// Whether the outbox holds a row unsent since before `cutoff` (one autocommit statement on
/// the `mesh_outbox_unsent` partial index, which holds only the few rows not yet marked).
async fn has_old_unsent(pool: &sqlx::AnyPool, cutoff: i64) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM (SELECT 1 FROM mesh_outbox \
         WHERE sent_at_us IS NULL AND occurred_at_us <= $1 LIMIT 1) AS old",
    )
    .bind(cutoff)
    .fetch_one(pool)
    .await?;
    Ok(row.try_get::<i64, _>("n")? > 0)
}

/// The marker's way to the database. On Postgres it keeps a connection of its own, detached
/// from the service's pool, whose session has `synchronous_commit = off`: each mark is then
/// one autocommit `UPDATE` (no `BEGIN`, `SET LOCAL`, `COMMIT` around it) that does not wait for
/// the disk, and the setting never reaches a connection the service's transactions use. A
/// failed statement drops the connection; the next mark opens another.
#[derive(Debug)]
struct MarkConnection {
    db: Database,
    conn: tokio::sync::Mutex<Option<sqlx::AnyConnection>>,
}

impl MarkConnection {
    fn new(db: Database) -> Self {
        Self {
            db,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Marks rows the direct publisher published, in chunks of one statement each.
    async fn mark(&self, seqs: &[i64]) -> Result<(), DatabaseError> {
        let mut held = self.conn.lock().await;
        for chunk in seqs.chunks(2000) {
            let update = format!(
                "UPDATE mesh_outbox SET sent_at_us = {} WHERE seq IN ({}) AND sent_at_us IS NULL",
                now_micros(),
                join(chunk)
            );
            match self.db.backend() {
                Backend::Postgres { .. } => {
                    let conn = match held.as_mut() {
                        Some(conn) => conn,
                        None => {
                            let mut conn = self.db.acquire().await?.detach();
                            sqlx::raw_sql("SET synchronous_commit = off")
                                .execute(&mut conn)
                                .await?;
                            held.insert(conn)
                        }
                    };
                    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(update))
                        .execute(&mut *conn)
                        .await
                    {
                        *held = None;
                        return Err(e.into());
                    }
                }
                Backend::Sqlite => {
                    let mut conn = self.db.acquire().await?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(update))
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

async fn mark_sent(conn: &mut sqlx::AnyConnection, seqs: &[i64]) -> Result<(), sqlx::Error> {
    // Only integers go into the text, so it runs as one plain statement: no prepare round trip
    // and no prepared statement cached per batch size.
    let sql = format!(
        "UPDATE mesh_outbox SET sent_at_us = {} WHERE seq IN ({})",
        now_micros(),
        join(seqs)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(conn)
        .await?;
    Ok(())
}

/// Integers from the database, joined for an `IN (...)` list (no user text reaches the SQL).
fn join(values: &[i64]) -> String {
    values
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
