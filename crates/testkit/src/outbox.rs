//! What a service emitted: its outbox (`mesh_outbox`), read in the order it was written.

use mesh_contracts::events::v1::Envelope;
use mesh_runtime::Database;
use prost::Message as _;

/// The types of every event in `db`'s outbox, in the order they were written.
pub async fn types(db: &Database) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM mesh_outbox ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .expect("outbox")
}

/// The types of the events in `db`'s outbox about `subject`, in their sequence.
pub async fn types_about(db: &Database, subject: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM mesh_outbox WHERE subject = $1 ORDER BY sequence")
        .bind(subject)
        .fetch_all(db.pool())
        .await
        .expect("outbox")
}

/// The events of `event_type` in `db`'s outbox, decoded, in the order they were written.
pub async fn envelopes(db: &Database, event_type: &str) -> Vec<Envelope> {
    let rows: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT envelope FROM mesh_outbox WHERE event_type = $1 ORDER BY seq")
            .bind(event_type)
            .fetch_all(db.pool())
            .await
            .expect("outbox");
    rows.iter()
        .map(|bytes| Envelope::decode(bytes.as_slice()).expect("envelope"))
        .collect()
}
