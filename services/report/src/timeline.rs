//! "What happened to order X": an aggregate's timeline from report's own copy of every event it
//! received (`report_event_log`), across services.
//!
//! The events of the aggregate (its subject) and those carrying its id as correlation id (the
//! saga sets the order id on inventory's, payment's and, through causation, notification's
//! events) are read first; their subjects are the related aggregates (the reservation, the
//! payment, the deliveries), whose other events are read too. All of it is merged by event time,
//! then by arrival at report.

use std::collections::BTreeMap;

use mesh_contracts::events::v1::Envelope;
use mesh_runtime::Database;
use prost::Message as _;

use crate::error::ReportError;

/// At most this many related aggregates are followed.
const MAX_RELATED: usize = 100;

/// An aggregate's merged events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    /// The events, ordered by event time, then by arrival.
    pub events: Vec<Envelope>,
    /// The aggregates they belong to, `aggregate_id` first, then by their first event.
    pub subjects: Vec<String>,
    /// Whether `max_events` cut it short.
    pub truncated: bool,
}

/// One history row: (arrival, subject, event time, encoded envelope).
type Row = (i64, String, i64, Vec<u8>);

/// Reads the timeline of `aggregate_id`, at most `max_events` events.
pub async fn timeline(
    db: &Database,
    aggregate_id: &str,
    max_events: usize,
) -> Result<Timeline, ReportError> {
    // Keyed by arrival: an event found both by subject and correlation is listed once.
    let mut rows: BTreeMap<i64, (String, i64, Vec<u8>)> = BTreeMap::new();
    let direct: Vec<Row> = sqlx::query_as(
        "SELECT seq, subject, event_time_us, envelope FROM report_event_log \
         WHERE subject = $1 OR correlation_id = $1",
    )
    .bind(aggregate_id)
    .fetch_all(db.pool())
    .await?;
    let mut related: Vec<String> = Vec::new();
    for (seq, subject, time_us, envelope) in direct {
        if subject != aggregate_id && !related.contains(&subject) {
            related.push(subject.clone());
        }
        rows.insert(seq, (subject, time_us, envelope));
    }
    for subject in related.iter().take(MAX_RELATED) {
        let more: Vec<Row> = sqlx::query_as(
            "SELECT seq, subject, event_time_us, envelope FROM report_event_log \
             WHERE subject = $1",
        )
        .bind(subject)
        .fetch_all(db.pool())
        .await?;
        for (seq, subject, time_us, envelope) in more {
            rows.insert(seq, (subject, time_us, envelope));
        }
    }
    let mut ordered: Vec<(i64, i64, String, Vec<u8>)> = rows
        .into_iter()
        .map(|(seq, (subject, time_us, envelope))| (time_us, seq, subject, envelope))
        .collect();
    ordered.sort_by_key(|(time_us, seq, _, _)| (*time_us, *seq));
    let truncated = ordered.len() > max_events;
    ordered.truncate(max_events);
    let mut subjects = vec![aggregate_id.to_string()];
    let mut events = Vec::with_capacity(ordered.len());
    for (_, seq, subject, bytes) in ordered {
        if !subjects.contains(&subject) {
            subjects.push(subject);
        }
        let envelope = Envelope::decode(bytes.as_slice()).map_err(|e| {
            ReportError::Corrupt(format!("report_event_log row {seq} does not decode: {e}"))
        })?;
        events.push(envelope);
    }
    Ok(Timeline {
        events,
        subjects,
        truncated,
    })
}
