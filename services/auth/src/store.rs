//! The auth service's SQL: accounts, sessions (refresh-token families), refresh tokens and
//! device credentials. Portable SQL (Postgres and SQLite).

use mesh_runtime::auth::Role;
use mesh_runtime::outbox::Tx;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row as _};

use crate::error::AuthServiceError;

/// An account row.
#[derive(Debug, Clone)]
pub struct AccountRow {
    /// Account id.
    pub id: String,
    /// Lower-cased email.
    pub email: String,
    /// PHC Argon2id hash.
    pub password_hash: String,
    /// Granted roles.
    pub roles: Vec<Role>,
    /// Creation time (Unix seconds).
    pub created_at: i64,
}

/// Comma-separated role names.
pub fn roles_to_text(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn account(row: &AnyRow) -> Result<AccountRow, sqlx::Error> {
    let roles: String = row.try_get("roles")?;
    Ok(AccountRow {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        roles: roles.split(',').filter_map(Role::parse).collect(),
        created_at: row.try_get("created_at")?,
    })
}

const ACCOUNT_COLUMNS: &str = "id, email, password_hash, roles, created_at";

/// The account with `email`.
pub async fn account_by_email(
    pool: &AnyPool,
    email: &str,
) -> Result<Option<AccountRow>, AuthServiceError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE email = $1"
    )))
    .bind(email)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(account).transpose()?)
}

/// The account `id`, in `tx`.
pub async fn account_by_id(tx: &mut Tx, id: &str) -> Result<Option<AccountRow>, AuthServiceError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.as_ref().map(account).transpose()?)
}

/// Whether any account holds the admin role.
pub async fn any_admin(tx: &mut Tx) -> Result<bool, AuthServiceError> {
    let rows = sqlx::query("SELECT roles FROM accounts WHERE roles LIKE '%admin%'")
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows.iter().any(|r| {
        r.try_get::<String, _>("roles")
            .is_ok_and(|roles| roles.split(',').any(|x| x == "admin"))
    }))
}

/// Inserts an account.
pub async fn insert_account(
    tx: &mut Tx,
    a: &AccountRow,
    display_name: &str,
) -> Result<(), AuthServiceError> {
    sqlx::query(
        "INSERT INTO accounts (id, email, password_hash, display_name, roles, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&a.id)
    .bind(&a.email)
    .bind(&a.password_hash)
    .bind(display_name)
    .bind(roles_to_text(&a.roles))
    .bind(a.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replaces the roles of account `id`.
pub async fn set_roles(tx: &mut Tx, id: &str, roles: &[Role]) -> Result<(), AuthServiceError> {
    sqlx::query("UPDATE accounts SET roles = $1 WHERE id = $2")
        .bind(roles_to_text(roles))
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Starts a session (a refresh-token family).
pub async fn insert_session(
    tx: &mut Tx,
    id: &str,
    account_id: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), AuthServiceError> {
    sqlx::query(
        "INSERT INTO sessions (id, account_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(account_id)
    .bind(now)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Stores a refresh token of `session_id` by its hash.
pub async fn insert_refresh(
    tx: &mut Tx,
    hash: &str,
    session_id: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), AuthServiceError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash)
    .bind(session_id)
    .bind(now)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A refresh token and its session.
#[derive(Debug)]
pub struct RefreshRow {
    /// The session (family).
    pub session_id: String,
    /// The account.
    pub account_id: String,
    /// Token expiry.
    pub expires_at: i64,
    /// Set once rotated.
    pub used_at: Option<i64>,
    /// Set once the session ended.
    pub revoked_at: Option<i64>,
}

/// The refresh token with `hash`.
pub async fn refresh_by_hash(
    tx: &mut Tx,
    hash: &str,
) -> Result<Option<RefreshRow>, AuthServiceError> {
    let row = sqlx::query(
        "SELECT r.session_id, s.account_id, r.expires_at, r.used_at, s.revoked_at \
         FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = $1",
    )
    .bind(hash)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(RefreshRow {
        session_id: row.try_get("session_id")?,
        account_id: row.try_get("account_id")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    }))
}

/// Consumes the refresh token with `hash`; `false` if someone consumed it first.
pub async fn consume_refresh(tx: &mut Tx, hash: &str, now: i64) -> Result<bool, AuthServiceError> {
    let done = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
    )
    .bind(now)
    .bind(hash)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends session `id`; `false` if it had already ended.
pub async fn revoke_session(
    tx: &mut Tx,
    id: &str,
    now: i64,
    reason: &str,
) -> Result<bool, AuthServiceError> {
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = $1, revoke_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(reason)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Stores (replacing any previous) the credential hash of `device_id`.
pub async fn upsert_device_credential(
    tx: &mut Tx,
    device_id: &str,
    hash: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), AuthServiceError> {
    sqlx::query("DELETE FROM device_credentials WHERE device_id = $1")
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO device_credentials (device_id, token_hash, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(device_id)
    .bind(hash)
    .bind(now)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The stored credential hash of `device_id` and when it expires, if one was issued.
pub async fn device_credential(
    pool: &sqlx::AnyPool,
    device_id: &str,
) -> Result<Option<(String, i64)>, AuthServiceError> {
    let row =
        sqlx::query("SELECT token_hash, expires_at FROM device_credentials WHERE device_id = $1")
            .bind(device_id)
            .fetch_optional(pool)
            .await?;
    Ok(match row {
        Some(r) => Some((r.try_get("token_hash")?, r.try_get("expires_at")?)),
        None => None,
    })
}
