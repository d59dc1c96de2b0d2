//! Payments: one per order, PENDING until the charge worker finishes it, then refund holds.

use mesh_contracts::payment::v1::{DeclineReason, Payment, PaymentStatus};
use mesh_runtime::outbox::Tx;
use mesh_runtime::sql_write::Write;
use sqlx::{AnyConnection, FromRow as _, Row as _};

use super::{Result, money, payment_status_name, payment_status_of, ts};

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

/// A `payments` row as stored ([`PAYMENT_COLUMNS`]).
#[derive(sqlx::FromRow)]
struct StoredPayment {
    id: String,
    order_id: String,
    customer_id: String,
    currency: String,
    amount_minor: i64,
    refund_held_minor: i64,
    refunded_minor: i64,
    status: String,
    decline_reason: i64,
    decline_message: String,
    card_token: String,
    card_brand: String,
    card_last4: String,
    provider_reference: String,
    description: String,
    traceparent: String,
    attempts: i64,
    created_at: i64,
    updated_at: i64,
}

impl From<StoredPayment> for PaymentRow {
    fn from(r: StoredPayment) -> Self {
        PaymentRow {
            id: r.id,
            order_id: r.order_id,
            customer_id: r.customer_id,
            currency: r.currency,
            amount_minor: r.amount_minor,
            refund_held_minor: r.refund_held_minor,
            refunded_minor: r.refunded_minor,
            status: payment_status_of(&r.status),
            decline_reason: i32::try_from(r.decline_reason)
                .ok()
                .and_then(|r| DeclineReason::try_from(r).ok())
                .unwrap_or_default(),
            decline_message: r.decline_message,
            card_token: r.card_token,
            card_brand: r.card_brand,
            card_last4: r.card_last4,
            provider_reference: r.provider_reference,
            description: r.description,
            traceparent: r.traceparent,
            attempts: r.attempts,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A claimed payment and its card's provider reference.
#[derive(sqlx::FromRow)]
struct Claimed {
    #[sqlx(flatten)]
    payment: StoredPayment,
    card_ref: String,
}

/// The payment `id`.
pub async fn payment(c: &mut AnyConnection, id: &str) -> Result<Option<PaymentRow>> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1");
    let row: Option<StoredPayment> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(c)
        .await?;
    Ok(row.map(PaymentRow::from))
}

/// The payment of order `order_id`.
pub async fn payment_of_order(c: &mut AnyConnection, order_id: &str) -> Result<Option<PaymentRow>> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1");
    let row: Option<StoredPayment> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(order_id)
        .fetch_optional(c)
        .await?;
    Ok(row.map(PaymentRow::from))
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

/// Inserts the PENDING payment `p` already claimed, as [`claim_payment`] would leave it: its
/// first attempt counted and leased until `lease_until` (so no scan takes it meanwhile, and
/// once the lease ran out one does), with the brand and last 4 digits of its card copied from
/// `cards` by token in the same statement. Returns the payment as inserted and the card's
/// provider reference, what a claim returns, so the worker starts from it without claiming;
/// `None` when nothing was inserted: the token is unknown or the order has a payment already.
pub async fn insert_leased_payment(
    c: &mut AnyConnection,
    p: &PaymentRow,
    now: i64,
    lease_until: i64,
) -> Result<Option<(PaymentRow, String)>> {
    let sql = format!(
        "{LEASED_INSERT} SELECT $1, $2, $3, $4, $5, 'PENDING', 0, '', token, brand, last4, '', $6, $7, 1, $8, $9, $9 FROM cards WHERE token = $10 \
         ON CONFLICT (order_id) DO NOTHING RETURNING {PAYMENT_COLUMNS}, {CARD_REF}"
    );
    let row: Option<Claimed> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&p.id)
        .bind(&p.order_id)
        .bind(&p.customer_id)
        .bind(&p.currency)
        .bind(p.amount_minor)
        .bind(&p.description)
        .bind(&p.traceparent)
        .bind(lease_until)
        .bind(now)
        .bind(&p.card_token)
        .fetch_optional(c)
        .await?;
    Ok(row.map(|r| (PaymentRow::from(r.payment), r.card_ref)))
}

/// The insert of a payment already leased (its columns; the values follow).
const LEASED_INSERT: &str = "INSERT INTO payments (id, order_id, customer_id, currency, amount_minor, status, decline_reason, decline_message, card_token, card_brand, card_last4, provider_reference, description, traceparent, attempts, next_attempt_at, created_at, updated_at)";

/// The card's provider reference of a returned payment row, as `card_ref`.
const CARD_REF: &str = "COALESCE((SELECT provider_ref FROM cards WHERE cards.token = payments.card_token), '') AS card_ref";

/// What [`reserved_and_charge`] did.
#[derive(Debug)]
pub enum ReservedCharge {
    /// The flag is set and the step is complete: the charge was inserted leased (the payment
    /// and its card's provider reference, for the worker), or there is none to make yet (the
    /// order is not known yet, or it is cancelled).
    Done(Option<Box<(PaymentRow, String)>>),
    /// The order can be charged, but not by the leased insert (its amount is zero, its token
    /// unknown, or it has a payment already): the general path decides (in a consumer's step
    /// run without a transaction the call fails instead, and the step runs again in one).
    General,
}

/// Payment's `inventory.reserved` on Postgres in one statement, which also records the
/// handled event ([`Tx::fetch_recording`]): the saga row's `reserved` flag upserted, and, if the
/// row then shows a known, uncancelled order with an amount to charge, its PENDING payment
/// inserted leased from the upserted row and the card's row, as [`insert_leased_payment`] does
/// (`id`, `traceparent`, lease until `lease_until`). The statement returns a row only when the
/// step is complete; when it returns none it has set the flag, which the general path sets
/// again.
pub async fn reserved_and_charge(
    tx: &mut Tx,
    order_id: &str,
    id: &str,
    traceparent: &str,
    now: i64,
    lease_until: i64,
) -> Result<ReservedCharge> {
    let statement = Write::with(
        format!(
            "s AS (INSERT INTO saga_orders (order_id, reserved, updated_at) VALUES ($1, 1, $2) \
             ON CONFLICT (order_id) DO UPDATE SET reserved = 1, updated_at = $2 \
             RETURNING order_id, known, customer_id, currency, amount_minor, card_token, cancelled), \
             p AS ({LEASED_INSERT} SELECT $3, s.order_id, s.customer_id, s.currency, s.amount_minor, 'PENDING', 0, '', \
             c.token, c.brand, c.last4, '', '', $4, 1, $5, $2, $2 FROM s JOIN cards c ON c.token = s.card_token \
             WHERE s.known = 1 AND s.cancelled = 0 AND s.amount_minor > 0 \
             ON CONFLICT (order_id) DO NOTHING RETURNING {PAYMENT_COLUMNS}, {CARD_REF})"
        ),
        "SELECT p.* FROM s LEFT JOIN p ON TRUE WHERE p.id IS NOT NULL OR s.known = 0 OR s.cancelled = 1",
    )
    .text(order_id)
    .int(now)
    .text(id)
    .text(traceparent)
    .int(lease_until);
    let rows = tx.fetch_recording(&statement).await?;
    let Some(row) = rows.first() else {
        return Ok(ReservedCharge::General);
    };
    if row.try_get::<Option<String>, _>("id")?.is_none() {
        return Ok(ReservedCharge::Done(None));
    }
    let claimed = Claimed::from_row(row)?;
    Ok(ReservedCharge::Done(Some(Box::new((
        PaymentRow::from(claimed.payment),
        claimed.card_ref,
    )))))
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
         RETURNING {PAYMENT_COLUMNS}, {CARD_REF}"
    );
    let row: Option<Claimed> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(lease_until)
        .bind(now)
        .bind(id)
        .fetch_optional(c)
        .await?;
    Ok(row.map(|r| (PaymentRow::from(r.payment), r.card_ref)))
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

/// The write that finishes the PENDING payment `p` (it changes no row if the payment is no
/// longer PENDING), to be the gate of a [`mesh_runtime::outbox::Tx::write_and_emit`]. With
/// `saga_open` (a saga's charge, on Postgres only) it is also done only while the order's saga
/// row says it is not cancelled, that row locked by the statement first (`FOR UPDATE`), so that
/// a concurrent `order.cancelled` either ran before (and the finish changes nothing) or waits
/// for it and finds the payment finished; without a saga row (a `Charge` call's payment) it
/// changes nothing either.
pub fn finish_payment(
    p: &PaymentRow,
    saga_open: bool,
    status: PaymentStatus,
    reason: DeclineReason,
    message: &str,
    reference: &str,
    now: i64,
) -> Write {
    let open = if saga_open {
        " AND EXISTS (SELECT 1 FROM saga_orders s WHERE s.order_id = $7 AND s.cancelled = 0 FOR UPDATE)"
    } else {
        ""
    };
    let finish = Write::new(format!(
        "UPDATE payments SET status = $1, decline_reason = $2, decline_message = $3, provider_reference = $4, updated_at = $5 \
         WHERE id = $6 AND status = 'PENDING'{open}"
    ))
    .text(payment_status_name(status))
    .int(i64::from(reason as i32))
    .text(message)
    .text(reference)
    .int(now)
    .text(&p.id);
    if saga_open {
        finish.text(&p.order_id)
    } else {
        finish
    }
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
    let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM payments WHERE status = 'PENDING' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2")
        .bind(now)
        .bind(limit)
        .fetch_all(c)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
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
