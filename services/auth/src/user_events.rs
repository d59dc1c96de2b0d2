//! Auth's consumers of the user service's events: `user.updated` keeps each staff member's
//! store assignments (the `stores` claim of their tokens, `docs/identity.md`), and
//! `user.deleted` disables the account (right to erasure, `docs/events.md`): its email is
//! replaced, its display name and password hash emptied, its sessions ended, its store
//! assignments dropped and its earlier events' payloads (`user.registered` carries the email)
//! redacted from the outbox. Both are idempotent: snapshots are applied by version, and an
//! account erased once is left alone.

use mesh_contracts::events::v1::{Envelope, UserDeleted, UserUpdated};
use mesh_runtime::consumer::HandlerError;
use mesh_runtime::outbox::Tx;
use mesh_runtime::typed_handler::{Handled, TypedHandler};

use crate::error::AuthServiceError;

/// The email an erased account is left with: unique, and never deliverable.
pub fn erased_email(account_id: &str) -> String {
    format!("erased-{account_id}@erased.invalid")
}

/// The stores `account_id` works at (none when unknown).
pub async fn stores_of(tx: &mut Tx, account_id: &str) -> Result<Vec<String>, AuthServiceError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT store_ids FROM account_stores WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(row.map_or_else(Vec::new, |(ids,)| {
        ids.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }))
}

async fn is_erased(tx: &mut Tx, account_id: &str) -> Result<bool, sqlx::Error> {
    let row: Option<(Option<i64>,)> =
        sqlx::query_as("SELECT disabled_us FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(row.is_some_and(|(disabled,)| disabled.is_some()))
}

/// `user.updated`: stores the snapshot's store ids unless a newer snapshot was stored already
/// or the account is erased.
#[derive(Debug, Clone, Copy)]
pub struct OnUserUpdated;

impl TypedHandler for OnUserUpdated {
    type Event = UserUpdated;

    async fn handle(&self, e: UserUpdated, _: &Envelope, tx: &mut Tx) -> Handled {
        // An empty payload is a redacted event: nothing to keep.
        if e.user_id.is_empty()
            || is_erased(tx, &e.user_id)
                .await
                .map_err(HandlerError::retry)?
        {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO account_stores (account_id, store_ids, version) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id) DO UPDATE SET store_ids = excluded.store_ids, \
             version = excluded.version WHERE account_stores.version < excluded.version",
        )
        .bind(&e.user_id)
        .bind(e.store_ids.join(","))
        .bind(e.version)
        .execute(&mut **tx)
        .await
        .map_err(HandlerError::retry)?;
        Ok(())
    }
}

/// `user.deleted`: disables and anonymises the account.
#[derive(Debug, Clone)]
pub struct OnUserDeleted {
    /// The clock of the service.
    pub clock: std::sync::Arc<dyn mesh_runtime::auth::Clock>,
}

impl TypedHandler for OnUserDeleted {
    type Event = UserDeleted;

    async fn handle(&self, e: UserDeleted, _: &Envelope, tx: &mut Tx) -> Handled {
        if e.user_id.is_empty() {
            return Ok(());
        }
        let id = e.user_id;
        let now = self.clock.now_us();
        let done = sqlx::query(
            "UPDATE accounts SET email = $2, display_name = '', password_hash = '', \
             disabled_us = $3 WHERE id = $1 AND disabled_us IS NULL",
        )
        .bind(&id)
        .bind(erased_email(&id))
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(HandlerError::retry)?;
        if done.rows_affected() == 0 {
            return Ok(());
        }
        sqlx::query(
            "UPDATE sessions SET revoked_us = $2, revoke_reason = 'erased' \
             WHERE account_id = $1 AND revoked_us IS NULL",
        )
        .bind(&id)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(HandlerError::retry)?;
        sqlx::query("DELETE FROM account_stores WHERE account_id = $1")
            .bind(&id)
            .execute(&mut **tx)
            .await
            .map_err(HandlerError::retry)?;
        mesh_runtime::redact::redact_subject(tx, &id)
            .await
            .map_err(HandlerError::retry)?;
        tracing::info!(account = %id, "account disabled and anonymised (user.deleted)");
        Ok(())
    }
}
