//! What the saga's events told payment about each order, one row per order.

use mesh_runtime::outbox::Tx;
use mesh_runtime::sql_write::Write;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, FromRow as _};

use super::{Result, now_micros};

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

/// A `saga_orders` row as stored (flags as 0/1).
#[derive(sqlx::FromRow)]
struct StoredSaga {
    order_id: String,
    known: i64,
    customer_id: String,
    currency: String,
    amount_minor: i64,
    card_token: String,
    reserved: i64,
    cancelled: i64,
}

impl From<StoredSaga> for SagaOrder {
    fn from(r: StoredSaga) -> Self {
        SagaOrder {
            order_id: r.order_id,
            known: r.known != 0,
            customer_id: r.customer_id,
            currency: r.currency,
            amount_minor: r.amount_minor,
            card_token: r.card_token,
            reserved: r.reserved != 0,
            cancelled: r.cancelled != 0,
        }
    }
}

/// The columns of a saga row, as [`StoredSaga`] reads them.
const SAGA_COLUMNS: &str =
    "order_id, known, customer_id, currency, amount_minor, card_token, reserved, cancelled";

/// Records what `order.created` says of the order (`known`, customer, amount, card) and returns
/// the saga row as it is now, flags learnt earlier included: one upsert with `RETURNING`, no
/// second read; inside a consumer it also records the handled event ([`Tx::fetch_recording`]).
pub async fn saga_created(tx: &mut Tx, o: &SagaOrder) -> Result<SagaOrder> {
    let rows = tx.fetch_recording(&created_upsert(o, "")).await?;
    saga_row(&rows)?.ok_or(sqlx::Error::RowNotFound)
}

/// [`saga_created`] while the order cannot be charged yet, its stock not reserved (or it is
/// cancelled): the whole of the `order.created` step in one statement, what the step runs
/// without a transaction. `None`, and nothing changed, when the stock is reserved already: the
/// step then takes [`saga_created`] and the charge, in a transaction (run without one, this
/// call fails instead, and the step runs again in one).
pub async fn saga_created_unreserved(tx: &mut Tx, o: &SagaOrder) -> Result<Option<SagaOrder>> {
    let upsert = created_upsert(
        o,
        " WHERE saga_orders.reserved = 0 OR saga_orders.cancelled = 1",
    );
    saga_row(&tx.fetch_recording(&upsert).await?)
}

/// The upsert of what `order.created` says of `o`, its update done only under `condition` (a
/// `WHERE` clause, or empty).
fn created_upsert(o: &SagaOrder, condition: &str) -> Write {
    Write::new(format!(
        "INSERT INTO saga_orders (order_id, known, customer_id, currency, amount_minor, card_token, updated_at) VALUES ($1, 1, $2, $3, $4, $5, $6) \
         ON CONFLICT (order_id) DO UPDATE SET known = 1, customer_id = $2, currency = $3, amount_minor = $4, card_token = $5, updated_at = $6{condition} \
         RETURNING {SAGA_COLUMNS}"
    ))
    .text(&o.order_id)
    .text(&o.customer_id)
    .text(&o.currency)
    .int(o.amount_minor)
    .text(&o.card_token)
    .int(now_micros())
}

/// Sets the `reserved` (or, with `reserved = false`, the `cancelled`) flag of `order_id` and
/// returns the saga row as it is now: one upsert with `RETURNING`, which inside a consumer also
/// records the handled event.
pub async fn saga_flag(tx: &mut Tx, order_id: &str, reserved: bool) -> Result<SagaOrder> {
    let flag = if reserved { "reserved" } else { "cancelled" };
    let upsert = Write::new(format!(
        "INSERT INTO saga_orders (order_id, {flag}, updated_at) VALUES ($1, 1, $2) ON CONFLICT (order_id) DO UPDATE SET {flag} = 1, updated_at = $2 RETURNING {SAGA_COLUMNS}"
    ))
    .text(order_id)
    .int(now_micros());
    let rows = tx.fetch_recording(&upsert).await?;
    saga_row(&rows)?.ok_or(sqlx::Error::RowNotFound)
}

/// The saga row an upsert of it returned, if it returned one.
fn saga_row(rows: &[AnyRow]) -> Result<Option<SagaOrder>> {
    rows.first()
        .map(|row| Ok(StoredSaga::from_row(row)?.into()))
        .transpose()
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
    let row: Option<StoredSaga> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(order_id)
        .fetch_optional(c)
        .await?;
    Ok(row.map(SagaOrder::from))
}
