//! Erasure of personal data from a service's outbox: the outbox is also the audit trail, so the
//! events a service emitted about a person keep copies of what they carried (an email in
//! `user.registered`, an address in `order.created`). [`redact_subject`] empties the payloads of
//! an aggregate's events and [`rewrite_subject`] edits them (clearing one field), keeping each
//! row's type, subject and time: the trail still says what happened and when, without the data.

use mesh_contracts::events::v1::Envelope;
use prost::Message as _;
use sqlx::Row as _;

use crate::outbox::Tx;
use crate::storage::DatabaseError;

/// Passes the envelope of every outbox row of `subject` written so far to `edit`, in `tx`, and
/// stores the envelopes `edit` changed (it returns `true` for those); returns how many changed.
/// Rows not yet on the bus go out as edited.
pub async fn rewrite_subject(
    tx: &mut Tx,
    subject: &str,
    mut edit: impl FnMut(&mut Envelope) -> bool + Send,
) -> Result<u64, DatabaseError> {
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
        if !edit(&mut envelope) {
            continue;
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

/// Empties the payload (keeping its type URL) of every outbox row of `subject` written before
/// this call, in `tx`; returns how many rows changed. Rows not yet on the bus go out redacted:
/// their consumers see an empty message of the type, which they must treat as nothing to do.
pub async fn redact_subject(tx: &mut Tx, subject: &str) -> Result<u64, DatabaseError> {
    rewrite_subject(tx, subject, |envelope| match envelope.payload.as_mut() {
        Some(p) if !p.value.is_empty() => {
            p.value.clear();
            true
        }
        _ => false,
    })
    .await
}
