//! The payment service's SQL (portable: Postgres and SQLite) and the mapping of rows to
//! `payment.v1` messages. Every state change of a payment or refund is a conditional `UPDATE`
//! (`WHERE status = 'PENDING'`, `refund_held + amount <= amount`), so concurrent workers, RPCs
//! and replicas finish each one once and never refund more than was charged.

use mesh_contracts::common::v1::Money;
use mesh_contracts::payment::v1::{
    DeclineReason, Payment, PaymentStatus, Refund, Transaction, TransactionKind, TransactionStatus,
};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

type Result<T> = std::result::Result<T, sqlx::Error>;

/// Microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A protobuf timestamp of Unix microseconds.
pub fn ts(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

/// Unix microseconds of a protobuf timestamp.
pub fn micros_of(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(t.nanos / 1000))
}

fn money(currency: &str, amount_minor: i64) -> Money {
    Money {
        currency_code: currency.into(),
        amount_minor,
    }
}

/// The stored name of a payment status.
pub fn payment_status_name(s: PaymentStatus) -> &'static str {
    match s {
        PaymentStatus::Pending => "PENDING",
        PaymentStatus::Succeeded => "SUCCEEDED",
        PaymentStatus::Failed => "FAILED",
        PaymentStatus::PartiallyRefunded => "PARTIALLY_REFUNDED",
        PaymentStatus::Refunded => "REFUNDED",
        PaymentStatus::Unspecified => "UNSPECIFIED",
    }
}

fn payment_status_of(name: &str) -> PaymentStatus {
    match name {
        "PENDING" => PaymentStatus::Pending,
        "SUCCEEDED" => PaymentStatus::Succeeded,
        "FAILED" => PaymentStatus::Failed,
        "PARTIALLY_REFUNDED" => PaymentStatus::PartiallyRefunded,
        "REFUNDED" => PaymentStatus::Refunded,
        _ => PaymentStatus::Unspecified,
    }
}

/// The stored name of a transaction (or refund) status.
pub fn tx_status_name(s: TransactionStatus) -> &'static str {
    match s {
        TransactionStatus::Pending => "PENDING",
        TransactionStatus::Succeeded => "SUCCEEDED",
        TransactionStatus::Failed => "FAILED",
        TransactionStatus::Unspecified => "UNSPECIFIED",
    }
}

fn tx_status_of(name: &str) -> TransactionStatus {
    match name {
        "PENDING" => TransactionStatus::Pending,
        "SUCCEEDED" => TransactionStatus::Succeeded,
        "FAILED" => TransactionStatus::Failed,
        _ => TransactionStatus::Unspecified,
    }
}

/// A stored card token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardRow {
    /// The token.
    pub token: String,
    /// The provider's reference of the card.
    pub provider_ref: String,
    /// Brand.
    pub brand: String,
    /// Last 4 digits.
    pub last4: String,
}

/// Stores a card token.
#[allow(clippy::too_many_arguments)]
pub async fn insert_card(
    c: &mut AnyConnection,
    card: &CardRow,
    exp_month: u32,
    exp_year: u32,
) -> Result<()> {
    sqlx::query("INSERT INTO cards (token, provider_ref, brand, last4, exp_month, exp_year, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(&card.token)
        .bind(&card.provider_ref)
        .bind(&card.brand)
        .bind(&card.last4)
        .bind(i64::from(exp_month))
        .bind(i64::from(exp_year))
        .bind(now_micros())
        .execute(c)
        .await?;
    Ok(())
}

/// The card of `token`, if known.
pub async fn card(c: &mut AnyConnection, token: &str) -> Result<Option<CardRow>> {
    let row = sqlx::query("SELECT token, provider_ref, brand, last4 FROM cards WHERE token = $1")
        .bind(token)
        .fetch_optional(c)
        .await?;
    row.map(|r| {
        Ok(CardRow {
            token: r.try_get("token")?,
            provider_ref: r.try_get("provider_ref")?,
            brand: r.try_get("brand")?,
            last4: r.try_get("last4")?,
        })
    })
    .transpose()
}

/// A payment row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    /// Id.
    pub id: String,
    /// Order (or vend) id.
    pub order_id: String,
    /// Customer.
    pub customer_id: String,
    /// Currency.
    pub currency: String,
    /// Amount.
    pub amount_minor: i64,
    /// Refunds pending or done.
    pub refund_held_minor: i64,
    /// Refunds done.
    pub refunded_minor: i64,
    /// Status.
    pub status: PaymentStatus,
    /// Decline reason (FAILED).
    pub decline_reason: DeclineReason,
    /// Decline message.
    pub decline_message: String,
    /// Card token, brand, last 4.
    pub card_token: String,
    /// Brand.
    pub card_brand: String,
    /// Last 4 digits.
    pub card_last4: String,
    /// Provider reference of the capture.
    pub provider_reference: String,
    /// Statement descriptor.
    pub description: String,
    /// Trace position of the request that created it.
    pub traceparent: String,
    /// Provider attempts made.
    pub attempts: i64,
    /// Created.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
}

impl PaymentRow {
    /// The `payment.v1.Payment` of this row.
    pub fn to_proto(&self) -> Payment {
        Payment {
            id: self.id.clone(),
            order_id: self.order_id.clone(),
            customer_id: self.customer_id.clone(),
            amount: Some(money(&self.currency, self.amount_minor)),
            refunded_amount: Some(money(&self.currency, self.refunded_minor)),
            status: self.status as i32,
            decline_reason: self.decline_reason as i32,
            decline_message: self.decline_message.clone(),
            card_token: self.card_token.clone(),
            card_brand: self.card_brand.clone(),
            card_last4: self.card_last4.clone(),
            provider_reference: self.provider_reference.clone(),
            create_time: Some(ts(self.created_at)),
            update_time: Some(ts(self.updated_at)),
        }
    }

    /// What may still be refunded (not held by a pending or finished refund).
    pub fn refundable(&self) -> i64 {
        match self.status {
            PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded => {
                (self.amount_minor - self.refund_held_minor).max(0)
            }
            _ => 0,
        }
    }
}

const PAYMENT_COLUMNS: &str = "id, order_id, customer_id, currency, amount_minor, refund_held_minor, refunded_minor, status, decline_reason, decline_message, card_token, card_brand, card_last4, provider_reference, description, traceparent, attempts, created_at, updated_at";

fn payment_row(r: &AnyRow) -> Result<PaymentRow> {
    let status: String = r.try_get("status")?;
    let reason: i64 = r.try_get("decline_reason")?;
    Ok(PaymentRow {
        id: r.try_get("id")?,
        order_id: r.try_get("order_id")?,
        customer_id: r.try_get("customer_id")?,
        currency: r.try_get("currency")?,
        amount_minor: r.try_get("amount_minor")?,
        refund_held_minor: r.try_get("refund_held_minor")?,
        refunded_minor: r.try_get("refunded_minor")?,
        status: payment_status_of(&status),
        decline_reason: i32::try_from(reason)
            .ok()
            .and_then(|r| DeclineReason::try_from(r).ok())
            .unwrap_or_default(),
        decline_message: r.try_get("decline_message")?,
        card_token: r.try_get("card_token")?,
        card_brand: r.try_get("card_brand")?,
        card_last4: r.try_get("card_last4")?,
        provider_reference: r.try_get("provider_reference")?,
        description: r.try_get("description")?,
        traceparent: r.try_get("traceparent")?,
        attempts: r.try_get("attempts")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// The payment `id`.
pub async fn payment(c: &mut AnyConnection, id: &str) -> Result<Option<PaymentRow>> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(payment_row)
        .transpose()
}

/// The payment of order `order_id`.
pub async fn payment_of_order(c: &mut AnyConnection, order_id: &str) -> Result<Option<PaymentRow>> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(order_id)
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(payment_row)
        .transpose()
}

/// Inserts `p` unless its order already has a payment; `true` if inserted.
pub async fn insert_payment(
    c: &mut AnyConnection,
    p: &PaymentRow,
    next_attempt_at: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO payments (id, order_id, customer_id, currency, amount_minor, status, decline_reason, decline_message, card_token, card_brand, card_last4, provider_reference, description, traceparent, next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(&p.id)
    .bind(&p.order_id)
    .bind(&p.customer_id)
    .bind(&p.currency)
    .bind(p.amount_minor)
    .bind(payment_status_name(p.status))
    .bind(i64::from(p.decline_reason as i32))
    .bind(&p.decline_message)
    .bind(&p.card_token)
    .bind(&p.card_brand)
    .bind(&p.card_last4)
    .bind(&p.provider_reference)
    .bind(&p.description)
    .bind(&p.traceparent)
    .bind(next_attempt_at)
    .bind(p.created_at)
    .execute(c)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Inserts the PENDING payment `p` (due at `now`) with the brand and last 4 digits of its card,
/// copied from `cards` by token in the same statement; returns them, or `None` when nothing was
/// inserted: the token is unknown or the order has a payment already.
pub async fn insert_payment_with_card(
    c: &mut AnyConnection,
    p: &PaymentRow,
    now: i64,
) -> Result<Option<(String, String)>> {
    let row = sqlx::query(
        "INSERT INTO payments (id, order_id, customer_id, currency, amount_minor, status, decline_reason, decline_message, card_token, card_brand, card_last4, provider_reference, description, traceparent, next_attempt_at, created_at, updated_at) \
         SELECT $1, $2, $3, $4, $5, 'PENDING', 0, '', token, brand, last4, '', $6, $7, $8, $8, $8 FROM cards WHERE token = $9 \
         ON CONFLICT (order_id) DO NOTHING RETURNING card_brand, card_last4",
    )
    .bind(&p.id)
    .bind(&p.order_id)
    .bind(&p.customer_id)
    .bind(&p.currency)
    .bind(p.amount_minor)
    .bind(&p.description)
    .bind(&p.traceparent)
    .bind(now)
    .bind(&p.card_token)
    .fetch_optional(c)
    .await?;
    row.map(|r| Ok((r.try_get("card_brand")?, r.try_get("card_last4")?)))
        .transpose()
}

/// Counts an attempt at the PENDING payment `id` and leases it until `lease_until`; with
/// `due_only`, only if it is due (a worker taking it over). Returns the payment as claimed
/// (`attempts` is this attempt's number), or `None` if it is not PENDING (or not due).
pub async fn claim_payment(
    c: &mut AnyConnection,
    id: &str,
    now: i64,
    lease_until: i64,
    due_only: bool,
) -> Result<Option<(PaymentRow, String)>> {
    let due = if due_only {
        " AND next_attempt_at <= $2"
    } else {
        ""
    };
    // The card's provider reference comes with the claim (a subquery in RETURNING), so the
    // attempt needs no second statement to read the card.
    let sql = format!(
        "UPDATE payments SET attempts = attempts + 1, next_attempt_at = $1, updated_at = $2 WHERE id = $3 AND status = 'PENDING'{due} \
         RETURNING {PAYMENT_COLUMNS}, COALESCE((SELECT provider_ref FROM cards WHERE cards.token = payments.card_token), '') AS card_ref"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(lease_until)
        .bind(now)
        .bind(id)
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(|r| Ok((payment_row(r)?, r.try_get("card_ref")?)))
        .transpose()
}

/// Sets when the PENDING payment `id` is next due.
pub async fn defer_payment(c: &mut AnyConnection, id: &str, at: i64) -> Result<()> {
    sqlx::query("UPDATE payments SET next_attempt_at = $1 WHERE id = $2 AND status = 'PENDING'")
        .bind(at)
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

/// Moves the PENDING payment `id` to SUCCEEDED or FAILED; `false` if it was not PENDING.
pub async fn finish_payment(
    c: &mut AnyConnection,
    id: &str,
    status: PaymentStatus,
    reason: DeclineReason,
    message: &str,
    reference: &str,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE payments SET status = $1, decline_reason = $2, decline_message = $3, provider_reference = $4, updated_at = $5 WHERE id = $6 AND status = 'PENDING'",
    )
    .bind(payment_status_name(status))
    .bind(i64::from(reason as i32))
    .bind(message)
    .bind(reference)
    .bind(now)
    .bind(id)
    .execute(c)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes the PENDING payment `id` if no attempt at it was ever claimed (so the provider was
/// never called, and no claim can follow); `true` if deleted. Voids a charge whose order was
/// cancelled before the worker got to it.
pub async fn void_unattempted(c: &mut AnyConnection, id: &str) -> Result<bool> {
    let done =
        sqlx::query("DELETE FROM payments WHERE id = $1 AND status = 'PENDING' AND attempts = 0")
            .bind(id)
            .execute(c)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Ids of up to `limit` PENDING payments due at `now`.
pub async fn due_payments(c: &mut AnyConnection, now: i64, limit: i64) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT id FROM payments WHERE status = 'PENDING' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2")
        .bind(now)
        .bind(limit)
        .fetch_all(c)
        .await?;
    rows.iter().map(|r| r.try_get("id")).collect()
}

/// Holds `amount` of payment `id` for a refund; `false` when less than that is refundable.
pub async fn hold_refund(c: &mut AnyConnection, id: &str, amount: i64, now: i64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE payments SET refund_held_minor = refund_held_minor + $1, updated_at = $2 WHERE id = $3 AND status IN ('SUCCEEDED', 'PARTIALLY_REFUNDED') AND refund_held_minor + $1 <= amount_minor",
    )
    .bind(amount)
    .bind(now)
    .bind(id)
    .execute(c)
    .await?;
    Ok(done.rows_affected() == 1)
}

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

fn refund_row(r: &AnyRow) -> Result<RefundRow> {
    let status: String = r.try_get("status")?;
    Ok(RefundRow {
        id: r.try_get("id")?,
        payment_id: r.try_get("payment_id")?,
        idempotency_key: r.try_get("idempotency_key")?,
        currency: r.try_get("currency")?,
        amount_minor: r.try_get("amount_minor")?,
        reason: r.try_get("reason")?,
        status: tx_status_of(&status),
        provider_reference: r.try_get("provider_reference")?,
        traceparent: r.try_get("traceparent")?,
        created_at: r.try_get("created_at")?,
    })
}

/// The refund `id`.
pub async fn refund(c: &mut AnyConnection, id: &str) -> Result<Option<RefundRow>> {
    let sql = format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(refund_row)
        .transpose()
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
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(payment_id)
        .bind(key)
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(refund_row)
        .transpose()
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
    sqlx::query(sql)
        .bind(lease_until)
        .bind(now)
        .bind(id)
        .fetch_optional(c)
        .await?
        .map(|r| r.try_get("attempts"))
        .transpose()
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
    let rows = sqlx::query("SELECT id FROM refunds WHERE status = 'PENDING' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2")
        .bind(now)
        .bind(limit)
        .fetch_all(c)
        .await?;
    rows.iter().map(|r| r.try_get("id")).collect()
}

/// Appends a ledger entry.
#[allow(clippy::too_many_arguments)]
pub async fn append_transaction(
    c: &mut AnyConnection,
    id: &str,
    p: &PaymentRow,
    kind: TransactionKind,
    amount_minor: i64,
    status: TransactionStatus,
    reason: &str,
    reference: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO transactions (id, payment_id, order_id, customer_id, kind, currency, amount_minor, status, reason, provider_reference, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(id)
    .bind(&p.id)
    .bind(&p.order_id)
    .bind(&p.customer_id)
    .bind(match kind {
        TransactionKind::Refund => "REFUND",
        _ => "CHARGE",
    })
    .bind(&p.currency)
    .bind(amount_minor)
    .bind(tx_status_name(status))
    .bind(reason)
    .bind(reference)
    .bind(now)
    .execute(c)
    .await?;
    Ok(())
}

/// Filters and position of a ledger listing.
#[derive(Debug, Default, Clone)]
pub struct TransactionFilter {
    /// Only this payment.
    pub payment_id: Option<String>,
    /// Only this order.
    pub order_id: Option<String>,
    /// Only this customer.
    pub customer_id: Option<String>,
    /// Created at or after (µs).
    pub start: Option<i64>,
    /// Created before (µs).
    pub end: Option<i64>,
    /// Before this (created_at, id), newest first.
    pub before: Option<(i64, String)>,
}

/// Up to `limit` ledger entries, newest first.
pub async fn transactions(
    c: &mut AnyConnection,
    f: &TransactionFilter,
    limit: i64,
) -> Result<Vec<(i64, Transaction)>> {
    let mut sql = "SELECT id, payment_id, order_id, kind, currency, amount_minor, status, reason, provider_reference, created_at FROM transactions WHERE 1 = 1".to_string();
    let mut n = 0;
    let mut p = || {
        n += 1;
        format!("${n}")
    };
    for (set, col) in [
        (f.payment_id.is_some(), "payment_id"),
        (f.order_id.is_some(), "order_id"),
        (f.customer_id.is_some(), "customer_id"),
    ] {
        if set {
            sql += &format!(" AND {col} = {}", p());
        }
    }
    if f.start.is_some() {
        sql += &format!(" AND created_at >= {}", p());
    }
    if f.end.is_some() {
        sql += &format!(" AND created_at < {}", p());
    }
    if f.before.is_some() {
        let (a, b) = (p(), p());
        sql += &format!(" AND (created_at < {a} OR (created_at = {a} AND id < {b}))");
    }
    sql += &format!(" ORDER BY created_at DESC, id DESC LIMIT {}", p());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for v in [&f.payment_id, &f.order_id, &f.customer_id]
        .into_iter()
        .flatten()
    {
        q = q.bind(v.clone());
    }
    for v in [f.start, f.end].into_iter().flatten() {
        q = q.bind(v);
    }
    if let Some((a, b)) = &f.before {
        q = q.bind(*a).bind(b.clone());
    }
    let rows = q.bind(limit).fetch_all(c).await?;
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get("kind")?;
            let status: String = r.try_get("status")?;
            let currency: String = r.try_get("currency")?;
            let created: i64 = r.try_get("created_at")?;
            Ok((
                created,
                Transaction {
                    id: r.try_get("id")?,
                    payment_id: r.try_get("payment_id")?,
                    order_id: r.try_get("order_id")?,
                    kind: if kind == "REFUND" {
                        TransactionKind::Refund
                    } else {
                        TransactionKind::Charge
                    } as i32,
                    amount: Some(money(&currency, r.try_get("amount_minor")?)),
                    status: tx_status_of(&status) as i32,
                    reason: r.try_get("reason")?,
                    provider_reference: r.try_get("provider_reference")?,
                    create_time: Some(ts(created)),
                },
            ))
        })
        .collect()
}

/// What the saga told payment about an order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SagaOrder {
    /// Order id.
    pub order_id: String,
    /// order.created arrived.
    pub known: bool,
    /// Customer.
    pub customer_id: String,
    /// Currency of the total.
    pub currency: String,
    /// Total to charge.
    pub amount_minor: i64,
    /// Card token.
    pub card_token: String,
    /// inventory.reserved arrived.
    pub reserved: bool,
    /// order.cancelled arrived.
    pub cancelled: bool,
}

/// The columns of a saga row, as [`saga_row`] reads them.
const SAGA_COLUMNS: &str =
    "order_id, known, customer_id, currency, amount_minor, card_token, reserved, cancelled";

fn saga_row(r: &AnyRow) -> Result<SagaOrder> {
    Ok(SagaOrder {
        order_id: r.try_get("order_id")?,
        known: r.try_get::<i64, _>("known")? != 0,
        customer_id: r.try_get("customer_id")?,
        currency: r.try_get("currency")?,
        amount_minor: r.try_get("amount_minor")?,
        card_token: r.try_get("card_token")?,
        reserved: r.try_get::<i64, _>("reserved")? != 0,
        cancelled: r.try_get::<i64, _>("cancelled")? != 0,
    })
}

/// Records what `order.created` says of the order (`known`, customer, amount, card) and returns
/// the saga row as it is now, flags learnt earlier included: one upsert with `RETURNING`, no
/// second read.
pub async fn saga_created(c: &mut AnyConnection, o: &SagaOrder) -> Result<SagaOrder> {
    let sql = format!(
        "INSERT INTO saga_orders (order_id, known, customer_id, currency, amount_minor, card_token, updated_at) VALUES ($1, 1, $2, $3, $4, $5, $6) \
         ON CONFLICT (order_id) DO UPDATE SET known = 1, customer_id = $2, currency = $3, amount_minor = $4, card_token = $5, updated_at = $6 \
         RETURNING {SAGA_COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&o.order_id)
        .bind(&o.customer_id)
        .bind(&o.currency)
        .bind(o.amount_minor)
        .bind(&o.card_token)
        .bind(now_micros())
        .fetch_one(c)
        .await?;
    saga_row(&row)
}

/// Sets the `reserved` (or, with `reserved = false`, the `cancelled`) flag of `order_id` and
/// returns the saga row as it is now: one upsert with `RETURNING`.
pub async fn saga_flag(c: &mut AnyConnection, order_id: &str, reserved: bool) -> Result<SagaOrder> {
    let sql = if reserved {
        format!(
            "INSERT INTO saga_orders (order_id, reserved, updated_at) VALUES ($1, 1, $2) ON CONFLICT (order_id) DO UPDATE SET reserved = 1, updated_at = $2 RETURNING {SAGA_COLUMNS}"
        )
    } else {
        format!(
            "INSERT INTO saga_orders (order_id, cancelled, updated_at) VALUES ($1, 1, $2) ON CONFLICT (order_id) DO UPDATE SET cancelled = 1, updated_at = $2 RETURNING {SAGA_COLUMNS}"
        )
    };
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(order_id)
        .bind(now_micros())
        .fetch_one(c)
        .await?;
    saga_row(&row)
}

/// Locks the saga row of `order_id` (if any) until the transaction ends and returns it: taken
/// first by every transaction that decides on an order's charge or refund (the saga handlers by
/// their upserts, the charge's finish by this), so a cancellation and a capture finishing at the
/// same time are serialized and one of them sees the other (on SQLite `BEGIN IMMEDIATE`
/// serializes anyway). The lock and the read are one statement.
pub async fn lock_saga_order(c: &mut AnyConnection, order_id: &str) -> Result<Option<SagaOrder>> {
    let sql = format!(
        "UPDATE saga_orders SET updated_at = updated_at WHERE order_id = $1 RETURNING {SAGA_COLUMNS}"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(order_id)
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(saga_row)
        .transpose()
}
