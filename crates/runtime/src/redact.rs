//! Erasure of personal data from a service's outbox: the outbox is also the audit trail, so the
//! events a service emitted about a person keep copies of what they carried (an email in
//! `user.registered`, say). [`redact_subject`] empties the payloads of an aggregate's events
//! while keeping each row's type, subject and time: the trail still says what happened and when,
//! no longer with what data.

use mesh_contracts::events::v1::Envelope;
use prost::Message as _;
use sqlx::Row as _;

use crate::outbox::Tx;
use crate::storage::DatabaseError;

/// Empties the payload (keeping its type URL) of every outbox row of `subject` written before
/// this call, in `tx`; returns how many rows changed. Rows not yet on the bus go out redacted:
/// their consumers see an empty message of the type, which they must treat as nothing to do.
pub async fn redact_subject(tx: &mut Tx, subject: &str) -> Result<u64, DatabaseError> {
    let rows = sqlx::query("SELECT seq, envelope FROM mesh_outbox WHERE subject = $1")
        .bind(subject)
        .fetch_all(&mut **tx)
        .await?;
    let mut changed = 0;
    for row in rows {
        let seq: i64 = row.try_get("seq")?;
        let bytes: Vec<u8> = row.try_get("envelope")?;
        let Ok(mut envelope) = Envelope::decode(bytes.as_slice()) else {
            continue;
        };
        match envelope.payload.as_mut() {
            Some(p) if !p.value.is_empty() => p.value.clear(),
            _ => continue,
        }
        sqlx::query("UPDATE mesh_outbox SET envelope = $1 WHERE seq = $2")
            .bind(envelope.encode_to_vec())
            .bind(seq)
            .execute(&mut **tx)
            .await?;
        changed += 1;
    }
    Ok(changed)
}
