//! The SQL of refunds (portable: Postgres and SQLite): the `order_refunds` rows and their lines,
//! the units refunded per order line and the order's refunded sum. Every change of a refund's
//! status is conditional on `REQUESTED`, so a redelivered payment event changes nothing.

use mesh_contracts::order::v1::{OrderRefund, RefundLine, RefundStatus, StockDisposition};
use mesh_runtime::domain::money::to_money;
use mesh_runtime::domain::time::to_timestamp;
use sqlx::AnyConnection;

use crate::error::OrderError;
use crate::refund_plan::{BoughtLine, Plan};

type Result<T> = std::result::Result<T, OrderError>;

/// The stored name of a refund status (`REQUESTED`).
pub fn status_name(s: RefundStatus) -> &'static str {
    s.as_str_name()
        .strip_prefix("REFUND_STATUS_")
        .unwrap_or("UNSPECIFIED")
}

fn status_of(name: &str) -> RefundStatus {
    RefundStatus::from_str_name(&format!("REFUND_STATUS_{name}")).unwrap_or_default()
}

/// The stored name of a disposition (`RESTOCK`).
pub fn disposition_name(d: StockDisposition) -> &'static str {
    d.as_str_name()
        .strip_prefix("STOCK_DISPOSITION_")
        .unwrap_or("UNSPECIFIED")
}

fn disposition_of(name: &str) -> StockDisposition {
    StockDisposition::from_str_name(&format!("STOCK_DISPOSITION_{name}")).unwrap_or_default()
}

/// The lines of order `id` with their units refunded so far and their totals.
pub async fn bought(conn: &mut AnyConnection, id: &str) -> Result<Vec<BoughtLine>> {
    let rows: Vec<(i64, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT line_no, product_id, quantity, refunded_quantity, unit_price_minor, discount_minor \
         FROM order_lines WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(line_no, product_id, quantity, refunded, unit, discount)| BoughtLine {
                line_no,
                product_id,
                quantity,
                refunded,
                total_minor: unit.saturating_mul(quantity) - discount,
            },
        )
        .collect())
}

/// The refund of order `order` under `key`: its id and request fingerprint.
pub async fn by_key(
    conn: &mut AnyConnection,
    order: &str,
    key: &str,
) -> Result<Option<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT id, request_hash FROM order_refunds WHERE order_id = $1 AND idempotency_key = $2",
    )
    .bind(order)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?)
}

/// A refund to record.
#[derive(Debug, Clone)]
pub struct NewRefund<'a> {
    /// Refund id.
    pub id: &'a str,
    /// Order id.
    pub order_id: &'a str,
    /// Idempotency key.
    pub key: &'a str,
    /// The request's fingerprint.
    pub request_hash: &'a str,
    /// Why.
    pub reason: &'a str,
    /// What it refunds.
    pub plan: &'a Plan,
    /// Its status (COMPLETED at once when nothing is to be paid back).
    pub status: RefundStatus,
    /// Now, Unix µs.
    pub now: i64,
}

/// Records `r`: the refund, its lines, the units on the order's lines and the order's refunded
/// sum (the order's row is locked by the caller).
pub async fn insert(conn: &mut AnyConnection, r: &NewRefund<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO order_refunds (id, order_id, idempotency_key, request_hash, amount_minor, reason, status, \
         payment_refund_id, created_at_us, updated_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, '', $8, $8)",
    )
    .bind(r.id)
    .bind(r.order_id)
    .bind(r.key)
    .bind(r.request_hash)
    .bind(r.plan.amount_minor)
    .bind(r.reason)
    .bind(status_name(r.status))
    .bind(r.now)
    .execute(&mut *conn)
    .await?;
    for l in &r.plan.lines {
        sqlx::query(
            "INSERT INTO order_refund_lines (refund_id, line_no, product_id, quantity, amount_minor, disposition) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(r.id)
        .bind(l.line_no)
        .bind(&l.product_id)
        .bind(l.quantity)
        .bind(l.amount_minor)
        .bind(disposition_name(l.disposition))
        .execute(&mut *conn)
        .await?;
        // Conditional, so no line is ever refunded past what was bought, whatever the caller
        // checked before.
        let done = sqlx::query(
            "UPDATE order_lines SET refunded_quantity = refunded_quantity + $1 \
             WHERE order_id = $2 AND line_no = $3 AND refunded_quantity + $1 <= quantity",
        )
        .bind(l.quantity)
        .bind(r.order_id)
        .bind(l.line_no)
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() != 1 {
            return Err(OrderError::precondition(
                "lines",
                format!(
                    "product `{}`: more units than are left to refund",
                    l.product_id
                ),
            ));
        }
    }
    sqlx::query(
        "UPDATE orders SET refunded_minor = refunded_minor + $1, updated_at_us = $2 WHERE id = $3",
    )
    .bind(r.plan.amount_minor)
    .bind(r.now)
    .bind(r.order_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What a refund's finish needs of it and its order.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The order's customer.
    pub customer_id: String,
    /// The order's currency.
    pub currency_code: String,
    /// The order's status name.
    pub order_status: String,
    /// The order's store (empty: online).
    pub store_id: String,
    /// The order's refunded sum after the finish.
    pub refunded_minor: i64,
    /// The refund's amount.
    pub amount_minor: i64,
    /// The refund's reason.
    pub reason: String,
}

/// Moves refund `id` of order `order` from REQUESTED to `to` (COMPLETED or FAILED) with payment's
/// refund id; a FAILED one no longer counts in the order's refunded sum nor its units in the
/// lines' refunded counts. `None` when it is not REQUESTED (finished before, or not this
/// order's): nothing changes.
pub async fn finish(
    conn: &mut AnyConnection,
    id: &str,
    order: &str,
    to: RefundStatus,
    payment_refund_id: &str,
    now: i64,
) -> Result<Option<Finished>> {
    let done: Option<(i64, String)> = sqlx::query_as(
        "UPDATE order_refunds SET status = $1, payment_refund_id = $2, updated_at_us = $3 \
         WHERE id = $4 AND order_id = $5 AND status = 'REQUESTED' RETURNING amount_minor, reason",
    )
    .bind(status_name(to))
    .bind(payment_refund_id)
    .bind(now)
    .bind(id)
    .bind(order)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((amount_minor, reason)) = done else {
        return Ok(None);
    };
    let returned = if to == RefundStatus::Failed {
        // The units were not refunded after all: they count as sold again (one statement).
        sqlx::query(
            "UPDATE order_lines SET refunded_quantity = refunded_quantity - \
             (SELECT l.quantity FROM order_refund_lines l WHERE l.refund_id = $1 AND l.line_no = order_lines.line_no) \
             WHERE order_id = $2 AND line_no IN (SELECT line_no FROM order_refund_lines WHERE refund_id = $1)",
        )
        .bind(id)
        .bind(order)
        .execute(&mut *conn)
        .await?;
        amount_minor
    } else {
        0
    };
    let (customer_id, currency_code, order_status, store_id, refunded_minor): (
        String,
        String,
        String,
        String,
        i64,
    ) = sqlx::query_as(
        "UPDATE orders SET refunded_minor = refunded_minor - $1, updated_at_us = $2 WHERE id = $3 \
             RETURNING customer_id, currency_code, status, store_id, refunded_minor",
    )
    .bind(returned)
    .bind(now)
    .bind(order)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some(Finished {
        customer_id,
        currency_code,
        order_status,
        store_id,
        refunded_minor,
        amount_minor,
        reason,
    }))
}

/// The refunds of order `order` in `currency`, oldest first, with their lines: one statement.
pub async fn of_order(
    conn: &mut AnyConnection,
    order: &str,
    currency: &str,
) -> Result<Vec<OrderRefund>> {
    type Row = (
        String,
        String,
        i64,
        String,
        String,
        String,
        i64,
        i64,
        String,
        i64,
        i64,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.id, r.idempotency_key, r.amount_minor, r.reason, r.status, r.payment_refund_id, \
         r.created_at_us, r.updated_at_us, l.product_id, l.quantity, l.amount_minor, l.disposition \
         FROM order_refunds r JOIN order_refund_lines l ON l.refund_id = r.id \
         WHERE r.order_id = $1 ORDER BY r.created_at_us, r.id, l.line_no",
    )
    .bind(order)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: Vec<OrderRefund> = Vec::new();
    for (id, key, amount, reason, status, pay_id, created, updated, product, q, la, d) in rows {
        if out.last().is_none_or(|r| r.id != id) {
            out.push(OrderRefund {
                id,
                idempotency_key: key,
                lines: Vec::new(),
                amount: Some(to_money(currency, amount)),
                reason,
                status: status_of(&status) as i32,
                payment_refund_id: pay_id,
                create_time: Some(to_timestamp(created)),
                update_time: Some(to_timestamp(updated)),
            });
        }
        if let Some(r) = out.last_mut() {
            r.lines.push(RefundLine {
                product_id: product,
                quantity: q,
                disposition: disposition_of(&d) as i32,
                amount: Some(to_money(currency, la)),
            });
        }
    }
    Ok(out)
}
