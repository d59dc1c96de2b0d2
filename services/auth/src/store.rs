//! The auth service's SQL: accounts, sessions (refresh-token families), refresh tokens and
//! device credentials. Portable SQL (Postgres and SQLite); rows read by `sqlx::FromRow`, times
//! in microseconds since the epoch (`mesh_runtime::domain::time`).

use mesh_runtime::auth::Role;
use mesh_runtime::outbox::Tx;
use sqlx::AnyPool;

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
    /// Creation time (microseconds since the epoch).
    pub created_us: i64,
}

/// Comma-separated role names.
pub fn roles_to_text(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// An `accounts` row as stored: roles as their comma-separated text.
#[derive(sqlx::FromRow)]
struct StoredAccount {
    id: String,
    email: String,
    password_hash: String,
    roles: String,
    created_us: i64,
}

impl From<StoredAccount> for AccountRow {
    fn from(a: StoredAccount) -> Self {
        Self {
            id: a.id,
            email: a.email,
            password_hash: a.password_hash,
            roles: a.roles.split(',').filter_map(Role::parse).collect(),
            created_us: a.created_us,
        }
    }
}

const ACCOUNT_COLUMNS: &str = "id, email, password_hash, roles, created_us";

/// The account with `email`.
pub async fn account_by_email(
    pool: &AnyPool,
    email: &str,
) -> Result<Option<AccountRow>, AuthServiceError> {
    let row: Option<StoredAccount> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE email = $1"
    )))
    .bind(email)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(AccountRow::from))
}

/// The account `id`, in `tx`.
pub async fn account_by_id(tx: &mut Tx, id: &str) -> Result<Option<AccountRow>, AuthServiceError> {
    let row: Option<StoredAccount> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(AccountRow::from))
}

/// Whether any account holds the admin role.
pub async fn any_admin(tx: &mut Tx) -> Result<bool, AuthServiceError> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT roles FROM accounts WHERE roles LIKE '%admin%'")
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows
        .iter()
        .any(|(roles,)| roles.split(',').any(|x| x == "admin")))
}

/// Inserts an account.
pub async fn insert_account(
    tx: &mut Tx,
    a: &AccountRow,
    display_name: &str,
) -> Result<(), AuthServiceError> {
    sqlx::query(
        "INSERT INTO accounts (id, email, password_hash, display_name, roles, created_us) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&a.id)
    .bind(&a.email)
    .bind(&a.password_hash)
    .bind(display_name)
    .bind(roles_to_text(&a.roles))
    .bind(a.created_us)
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
        "INSERT INTO sessions (id, account_id, created_us, expires_us) VALUES ($1, $2, $3, $4)",
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
        "INSERT INTO refresh_tokens (token_hash, session_id, created_us, expires_us) VALUES ($1, $2, $3, $4)",
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
#[derive(Debug, sqlx::FromRow)]
pub struct RefreshRow {
    /// The session (family).
    pub session_id: String,
    /// The account.
    pub account_id: String,
    /// Token expiry (microseconds).
    pub expires_us: i64,
    /// Set once rotated.
    pub used_us: Option<i64>,
    /// Set once the session ended.
    pub revoked_us: Option<i64>,
}

/// The refresh token with `hash`.
pub async fn refresh_by_hash(
    tx: &mut Tx,
    hash: &str,
) -> Result<Option<RefreshRow>, AuthServiceError> {
    Ok(sqlx::query_as(
        "SELECT r.session_id, s.account_id, r.expires_us, r.used_us, s.revoked_us \
         FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = $1",
    )
    .bind(hash)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Consumes the refresh token with `hash`; `false` if someone consumed it first.
pub async fn consume_refresh(tx: &mut Tx, hash: &str, now: i64) -> Result<bool, AuthServiceError> {
    let done = sqlx::query(
        "UPDATE refresh_tokens SET used_us = $1 WHERE token_hash = $2 AND used_us IS NULL",
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
        "UPDATE sessions SET revoked_us = $1, revoke_reason = $2 WHERE id = $3 AND revoked_us IS NULL",
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
        "INSERT INTO device_credentials (device_id, token_hash, issued_us, expires_us) VALUES ($1, $2, $3, $4)",
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
    Ok(
        sqlx::query_as(
            "SELECT token_hash, expires_us FROM device_credentials WHERE device_id = $1",
        )
        .bind(device_id)
        .fetch_optional(pool)
        .await?,
    )
}
