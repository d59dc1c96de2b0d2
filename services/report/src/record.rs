//! The consumer's handler: every event report receives is appended to its own history
//! (`report_event_log`, the source of every rebuild) and applied to the active generation of the
//! read models, in the consumer's transaction with the handled-event record.
//!
//! The append takes the next history position from `report_state` with an `UPDATE`, which also
//! locks that row until the commit: history positions are therefore committed in order (a
//! rebuild reading the history never skips a position that commits later), and a rebuild's
//! swap, which takes the same lock, cannot interleave with an event being applied.

use mesh_contracts::events::v1::Envelope;
use mesh_runtime::consumer::HandlerError;
use mesh_runtime::domain::time;
use mesh_runtime::outbox::Tx;
use mesh_runtime::typed_handler::{Handled, TypedHandler, Undecoded};
use prost::Message;
use sqlx::Row as _;

use crate::apply::{self, ApplyError, Gens};

/// Every event type report records (its consumer subscribes to these types' streams).
pub const EVENT_TYPES: &[&str] = &[
    "order.created",
    "order.confirmed",
    "order.cancelled",
    "payment.succeeded",
    "payment.failed",
    "payment.refunded",
    "vend.completed",
    "vend.failed",
    "product.created",
    "product.updated",
    "product.deleted",
    "inventory.adjusted",
    "inventory.reserved",
    "inventory.rejected",
    "inventory.committed",
    "inventory.released",
    "inventory.reservation_expired",
    "notification.sent",
    "notification.failed",
];

/// The event's time in microseconds since the epoch; its receipt time when it carries none (the
/// history keeps the time used, so a rebuild files the event under the same day).
pub fn event_time_us(event: &Envelope) -> i64 {
    event
        .time
        .as_ref()
        .and_then(|t| time::from_timestamp("time", t).ok())
        .unwrap_or_else(time::now_us)
}

/// Records each event and applies it to the read models.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record;

impl TypedHandler for Record {
    type Event = Undecoded;

    async fn handle(&self, _: Undecoded, event: &Envelope, tx: &mut Tx) -> Handled {
        let time_us = event_time_us(event);
        let state = sqlx::query(
            "UPDATE report_state SET log_seq = log_seq + 1, newest_event_us = CASE \
             WHEN newest_event_us IS NULL OR newest_event_us < $1 THEN $1 \
             ELSE newest_event_us END WHERE id = 1 RETURNING log_seq, active_gen",
        )
        .bind(time_us)
        .fetch_one(&mut **tx)
        .await
        .map_err(HandlerError::retry)?;
        let (seq, active): (i64, i64) = (state.get(0), state.get(1));
        // A copy delivered after its handled-id record was pruned is not recorded twice.
        let inserted = sqlx::query(
            "INSERT INTO report_event_log (seq, event_id, event_type, source, subject, \
             correlation_id, event_time_us, envelope) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(seq)
        .bind(&event.id)
        .bind(&event.r#type)
        .bind(&event.source)
        .bind(&event.subject)
        .bind(&event.correlation_id)
        .bind(time_us)
        .bind(event.encode_to_vec())
        .execute(&mut **tx)
        .await
        .map_err(HandlerError::retry)?;
        if inserted.rows_affected() == 0 {
            return Ok(());
        }
        apply::apply(tx, Gens::all(active), event, time_us)
            .await
            .map_err(|e| match e {
                ApplyError::Permanent(reason) => HandlerError::permanent(reason),
                ApplyError::Database(d) => HandlerError::retry(d),
            })
    }
}
