//! A user's contact data, the user service's (`docs/events.md`): `user.updated` snapshots keep
//! the email and marketing consent notification sends with (by profile version, so an older
//! snapshot never overwrites a newer one), and `user.deleted` erases what notification holds of
//! the user: the contact, the preferences (webhook URL), the recipients, subjects and bodies of
//! the delivery log (queued ones are suppressed, never sent), and the payloads of the
//! deliveries' events in the outbox. Both are idempotent.

use mesh_contracts::events::v1::{Envelope, UserDeleted, UserUpdated};
use mesh_runtime::consumer::HandlerError;
use mesh_runtime::domain::time::now_us;
use mesh_runtime::outbox::Tx;
use mesh_runtime::typed_handler::{Handled, TypedHandler};
use sqlx::{AnyConnection, Row as _};

/// The email the user service holds for `user_id` (empty when unknown or erased).
pub async fn email_of(c: &mut AnyConnection, user_id: &str) -> Result<String, sqlx::Error> {
    let row = sqlx::query("SELECT email FROM contacts WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(c)
        .await?;
    row.map_or(Ok(String::new()), |r| r.try_get("email"))
}

/// `user.updated`: stores the snapshot's email, consent and locale.
#[derive(Debug, Clone, Copy)]
pub struct OnUserUpdated;

impl TypedHandler for OnUserUpdated {
    type Event = UserUpdated;

    async fn handle(&self, e: UserUpdated, _: &Envelope, tx: &mut Tx) -> Handled {
        if e.user_id.is_empty() {
            // A redacted event: nothing to keep.
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO contacts (user_id, email, marketing_email, marketing_sms, marketing_push, locale, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, \
             marketing_email = excluded.marketing_email, marketing_sms = excluded.marketing_sms, \
             marketing_push = excluded.marketing_push, locale = excluded.locale, version = excluded.version \
             WHERE contacts.version < excluded.version AND contacts.erased_at_us IS NULL",
        )
        .bind(&e.user_id)
        .bind(&e.email)
        .bind(i64::from(e.marketing_email))
        .bind(i64::from(e.marketing_sms))
        .bind(i64::from(e.marketing_push))
        .bind(&e.locale)
        .bind(e.version)
        .execute(&mut **tx)
        .await
        .map_err(HandlerError::retry)?;
        Ok(())
    }
}

/// `user.deleted`: erases the user's contact data, preferences and delivery log contents.
#[derive(Debug, Clone, Copy)]
pub struct OnUserDeleted;

impl TypedHandler for OnUserDeleted {
    type Event = UserDeleted;

    async fn handle(&self, e: UserDeleted, _: &Envelope, tx: &mut Tx) -> Handled {
        if e.user_id.is_empty() {
            return Ok(());
        }
        let id = e.user_id;
        let now = now_us();
        // The tombstone: a late snapshot finds it erased and changes nothing.
        sqlx::query(
            "INSERT INTO contacts (user_id, email, marketing_email, marketing_sms, marketing_push, locale, version, erased_at_us) \
             VALUES ($1, '', 0, 0, 0, '', 0, $2) \
             ON CONFLICT (user_id) DO UPDATE SET email = '', marketing_email = 0, marketing_sms = 0, \
             marketing_push = 0, locale = '', erased_at_us = $2",
        )
        .bind(&id)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(HandlerError::retry)?;
        // Queued deliveries are never sent; every delivery forgets where it went and what
        // it said.
        for sql in [
            "DELETE FROM preferences WHERE user_id = $1",
            "UPDATE deliveries SET status = 'SUPPRESSED' WHERE user_id = $1 AND status = 'QUEUED'",
            "UPDATE deliveries SET recipient = '', subject = '', body = '', last_error = '' WHERE user_id = $1",
        ] {
            sqlx::query(sql)
                .bind(&id)
                .execute(&mut **tx)
                .await
                .map_err(HandlerError::retry)?;
        }
        let deliveries: Vec<String> =
            sqlx::query_scalar("SELECT id FROM deliveries WHERE user_id = $1")
                .bind(&id)
                .fetch_all(&mut **tx)
                .await
                .map_err(HandlerError::retry)?;
        for d in &deliveries {
            mesh_runtime::redact::redact_subject(tx, d)
                .await
                .map_err(HandlerError::retry)?;
        }
        tracing::info!(user = %id, deliveries = deliveries.len(), "contact data erased (user.deleted)");
        Ok(())
    }
}
