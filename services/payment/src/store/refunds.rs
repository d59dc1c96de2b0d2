//! Refunds: PENDING until the worker finishes them, each holding its amount of the payment.

use mesh_contracts::payment::v1::{Refund, TransactionStatus};
use sqlx::AnyConnection;

use super::{Result, money, ts, tx_status_name, tx_status_of};

/// A refund row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRow {
    /// Id (also its ledger transaction id once finished).
    pub id: String,
    /// Payment.
    pub payment_id: String,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Currency.
    pub currency: String,
    /// Amount (positive).
    pub amount_minor: i64,
    /// Why.
    pub reason: String,
    /// Status.
    pub status: TransactionStatus,
    /// Provider reference.
    pub provider_reference: String,
    /// Trace position of the request that created it.
    pub traceparent: String,
    /// Created.
    pub created_at: i64,
}

impl RefundRow {
    /// The `payment.v1.Refund` of this row.
    pub fn to_proto(&self) -> Refund {
        Refund {
            id: self.id.clone(),
            payment_id: self.payment_id.clone(),
            amount: Some(money(&self.currency, self.amount_minor)),
            reason: self.reason.clone(),
            status: self.status as i32,
            create_time: Some(ts(self.created_at)),
        }
    }
}

const REFUND_COLUMNS: &str = "id, payment_id, idempotency_key, currency, amount_minor, reason, status, provider_reference, traceparent, created_at";

/// A `refunds` row as stored ([`REFUND_COLUMNS`]).
#[derive(sqlx::FromRow)]
struct StoredRefund {
    id: String,
    payment_id: String,
    idempotency_key: String,
    currency: String,
    amount_minor: i64,
    reason: String,
    status: String,
    provider_reference: String,
    traceparent: String,
    created_at: i64,
}

impl From<StoredRefund> for RefundRow {
    fn from(r: StoredRefund) -> Self {
        RefundRow {
            id: r.id,
            payment_id: r.payment_id,
            idempotency_key: r.idempotency_key,
            currency: r.currency,
            amount_minor: r.amount_minor,
            reason: r.reason,
            status: tx_status_of(&r.status),
            provider_reference: r.provider_reference,
            traceparent: r.traceparent,
            created_at: r.created_at,
        }
    }
}

/// The refund `id`.
pub async fn refund(c: &mut AnyConnection, id: &str) -> Result<Option<RefundRow>> {
    let sql = format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1");
    let row: Option<StoredRefund> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(c)
        .await?;
    Ok(row.map(RefundRow::from))
}

/// The refund of `payment_id` made with `key`.
pub async fn refund_by_key(
    c: &mut AnyConnection,
    payment_id: &str,
    key: &str,
) -> Result<Option<RefundRow>> {
    let sql = format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 AND idempotency_key = $2"
    );
    let row: Option<StoredRefund> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(payment_id)
        .bind(key)
        .fetch_optional(c)
        .await?;
    Ok(row.map(RefundRow::from))
}

/// Inserts a PENDING refund due at `next_attempt_at`.
pub async fn insert_refund(
    c: &mut AnyConnection,
    r: &RefundRow,
    next_attempt_at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO refunds (id, payment_id, idempotency_key, currency, amount_minor, reason, status, traceparent, next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'PENDING', $7, $8, $9, $9)",
    )
    .bind(&r.id)
    .bind(&r.payment_id)
    .bind(&r.idempotency_key)
    .bind(&r.currency)
    .bind(r.amount_minor)
    .bind(&r.reason)
    .bind(&r.traceparent)
    .bind(next_attempt_at)
    .bind(r.created_at)
    .execute(c)
    .await?;
    Ok(())
}

/// Like [`claim_payment`], for refunds.
pub async fn claim_refund(
    c: &mut AnyConnection,
    id: &str,
    now: i64,
    lease_until: i64,
    due_only: bool,
) -> Result<Option<i64>> {
    let sql = if due_only {
        "UPDATE refunds SET attempts = attempts + 1, next_attempt_at = $1, updated_at = $2 WHERE id = $3 AND status = 'PENDING' AND next_attempt_at <= $2 RETURNING attempts"
    } else {
        "UPDATE refunds SET attempts = attempts + 1, next_attempt_at = $1, updated_at = $2 WHERE id = $3 AND status = 'PENDING' RETURNING attempts"
    };
    let row: Option<(i64,)> = sqlx::query_as(sql)
        .bind(lease_until)
        .bind(now)
        .bind(id)
        .fetch_optional(c)
        .await?;
    Ok(row.map(|(attempts,)| attempts))
}

/// Sets when the PENDING refund `id` is next due.
pub async fn defer_refund(c: &mut AnyConnection, id: &str, at: i64) -> Result<()> {
    sqlx::query("UPDATE refunds SET next_attempt_at = $1 WHERE id = $2 AND status = 'PENDING'")
        .bind(at)
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

/// Moves the PENDING refund `id` to `status`; `false` if it was not PENDING.
pub async fn finish_refund(
    c: &mut AnyConnection,
    id: &str,
    status: TransactionStatus,
    reference: &str,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE refunds SET status = $1, provider_reference = $2, updated_at = $3 WHERE id = $4 AND status = 'PENDING'",
    )
    .bind(tx_status_name(status))
    .bind(reference)
    .bind(now)
    .bind(id)
    .execute(c)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Books a finished refund on its payment: refunded, or (failed) its hold returned.
pub async fn book_refund(
    c: &mut AnyConnection,
    payment_id: &str,
    amount: i64,
    succeeded: bool,
    now: i64,
) -> Result<()> {
    let sql = if succeeded {
        "UPDATE payments SET refunded_minor = refunded_minor + $1, status = CASE WHEN refunded_minor + $1 >= amount_minor THEN 'REFUNDED' ELSE 'PARTIALLY_REFUNDED' END, updated_at = $2 WHERE id = $3"
    } else {
        "UPDATE payments SET refund_held_minor = refund_held_minor - $1, updated_at = $2 WHERE id = $3"
    };
    sqlx::query(sql)
        .bind(amount)
        .bind(now)
        .bind(payment_id)
        .execute(c)
        .await?;
    Ok(())
}

/// Ids of up to `limit` PENDING refunds due at `now`.
pub async fn due_refunds(c: &mut AnyConnection, now: i64, limit: i64) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM refunds WHERE status = 'PENDING' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2")
        .bind(now)
        .bind(limit)
        .fetch_all(c)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
