//! The vm's SQL (portable: Postgres and SQLite): planograms, slots, restocks and vends.

use mesh_contracts::common::v1::Money;
use mesh_contracts::vm::v1::{Planogram, Slot, Vend, VendStatus};
use mesh_runtime::domain::time;
use mesh_runtime::outbox::Tx;
use sqlx::AnyPool;

use crate::error::VmError;

type Result<T> = std::result::Result<T, VmError>;

/// Now, in microseconds since the Unix epoch (the unit of every stored time).
pub fn now() -> i64 {
    time::now_us()
}

/// A `slots` row.
#[derive(sqlx::FromRow)]
struct SlotRow {
    code: String,
    product_id: String,
    currency: String,
    price_minor: i64,
    quantity: i64,
    capacity: i64,
}

impl From<SlotRow> for Slot {
    fn from(r: SlotRow) -> Self {
        Slot {
            code: r.code,
            price: (!r.product_id.is_empty()).then_some(Money {
                currency_code: r.currency,
                amount_minor: r.price_minor,
            }),
            product_id: r.product_id,
            quantity: r.quantity as i32,
            capacity: r.capacity as i32,
        }
    }
}

const SLOT_COLUMNS: &str = "code, product_id, currency, price_minor, quantity, capacity";

/// The planogram of `machine` (no slots, version 0, when never set).
pub async fn planogram(pool: &AnyPool, machine: &str) -> Result<Planogram> {
    let head: Option<(i64, i64)> =
        sqlx::query_as("SELECT version, updated_us FROM planograms WHERE machine_id = $1")
            .bind(machine)
            .fetch_optional(pool)
            .await?;
    let sql = format!("SELECT {SLOT_COLUMNS} FROM slots WHERE machine_id = $1 ORDER BY code");
    let rows: Vec<SlotRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(machine)
        .fetch_all(pool)
        .await?;
    let (version, updated) = match head {
        Some((version, updated_us)) => (version, Some(time::to_timestamp(updated_us))),
        None => (0, None),
    };
    Ok(Planogram {
        machine_id: machine.to_string(),
        slots: rows.into_iter().map(Slot::from).collect(),
        version,
        update_time: updated,
    })
}

/// Replaces the slots of `machine` and bumps its version.
pub async fn replace_planogram(
    tx: &mut Tx,
    machine: &str,
    store: &str,
    slots: &[Slot],
) -> Result<()> {
    let now = now();
    sqlx::query(
        "INSERT INTO planograms (machine_id, store_id, version, updated_us) VALUES ($1, $2, 1, $3) \
         ON CONFLICT (machine_id) DO UPDATE SET version = planograms.version + 1, store_id = $2, updated_us = $3",
    )
    .bind(machine)
    .bind(store)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM slots WHERE machine_id = $1")
        .bind(machine)
        .execute(&mut **tx)
        .await?;
    for s in slots {
        let price = s.price.clone().unwrap_or_default();
        sqlx::query(
            "INSERT INTO slots (machine_id, code, product_id, currency, price_minor, quantity, capacity) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(machine)
        .bind(&s.code)
        .bind(&s.product_id)
        .bind(&price.currency_code)
        .bind(price.amount_minor)
        .bind(i64::from(s.quantity))
        .bind(i64::from(s.capacity))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// One slot, in `tx`.
pub async fn slot(tx: &mut Tx, machine: &str, code: &str) -> Result<Option<Slot>> {
    let sql = format!("SELECT {SLOT_COLUMNS} FROM slots WHERE machine_id = $1 AND code = $2");
    let row: Option<SlotRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(machine)
        .bind(code)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(Slot::from))
}

/// The store of a machine with a planogram.
pub async fn store_of(tx: &mut Tx, machine: &str) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT store_id FROM planograms WHERE machine_id = $1")
            .bind(machine)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(row.map(|(store,)| store))
}

/// Adds `delta` units to a slot (never above capacity nor below 0); `false` if it would.
pub async fn add_units(tx: &mut Tx, machine: &str, code: &str, delta: i64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE slots SET quantity = quantity + $1 WHERE machine_id = $2 AND code = $3 \
         AND quantity + $1 >= 0 AND quantity + $1 <= capacity",
    )
    .bind(delta)
    .bind(machine)
    .bind(code)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 1 {
        sqlx::query(
            "UPDATE planograms SET version = version + 1, updated_us = $1 WHERE machine_id = $2",
        )
        .bind(now())
        .bind(machine)
        .execute(&mut **tx)
        .await?;
    }
    Ok(done.rows_affected() == 1)
}

/// Records a restock key; `false` when it was applied already.
pub async fn claim_restock(tx: &mut Tx, machine: &str, key: &str) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO restocks (machine_id, idempotency_key, created_us) VALUES ($1, $2, $3) \
         ON CONFLICT (machine_id, idempotency_key) DO NOTHING",
    )
    .bind(machine)
    .bind(key)
    .bind(now())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The stored name of a vend status.
pub fn status_name(s: VendStatus) -> &'static str {
    match s {
        VendStatus::Pending => "PENDING",
        VendStatus::Dispensed => "DISPENSED",
        VendStatus::Failed => "FAILED",
        VendStatus::PaymentDeclined => "PAYMENT_DECLINED",
        VendStatus::FailedRefunded => "FAILED_REFUNDED",
        VendStatus::Unspecified => "UNSPECIFIED",
    }
}

/// The status of a stored name.
pub fn status_of(name: &str) -> VendStatus {
    match name {
        "PENDING" => VendStatus::Pending,
        "DISPENSED" => VendStatus::Dispensed,
        "FAILED" => VendStatus::Failed,
        "PAYMENT_DECLINED" => VendStatus::PaymentDeclined,
        "FAILED_REFUNDED" => VendStatus::FailedRefunded,
        _ => VendStatus::Unspecified,
    }
}

/// A vend row: the message and the flow's private columns.
#[derive(Debug, Clone)]
pub struct VendRow {
    /// The vend as callers see it.
    pub vend: Vend,
    /// The owning store.
    pub store_id: String,
    /// The card token to charge.
    pub card_token: String,
    /// The next side effect (see `flow`).
    pub step: String,
    /// The final status the flow is heading to once compensation is done.
    pub final_status: String,
}

/// A `vends` row as stored.
#[derive(sqlx::FromRow)]
struct StoredVend {
    id: String,
    machine_id: String,
    store_id: String,
    slot: String,
    product_id: String,
    currency: String,
    price_minor: i64,
    idempotency_key: String,
    customer_id: String,
    card_token: String,
    status: String,
    step: String,
    failure_reason: String,
    final_status: String,
    reservation_id: String,
    payment_id: String,
    command_id: String,
    created_us: i64,
    updated_us: i64,
}

impl From<StoredVend> for VendRow {
    fn from(r: StoredVend) -> Self {
        VendRow {
            vend: Vend {
                id: r.id,
                machine_id: r.machine_id,
                slot: r.slot,
                product_id: r.product_id,
                price: Some(Money {
                    currency_code: r.currency,
                    amount_minor: r.price_minor,
                }),
                idempotency_key: r.idempotency_key,
                status: status_of(&r.status) as i32,
                failure_reason: r.failure_reason,
                reservation_id: r.reservation_id,
                payment_id: r.payment_id,
                command_id: r.command_id,
                customer_id: r.customer_id,
                create_time: Some(time::to_timestamp(r.created_us)),
                update_time: Some(time::to_timestamp(r.updated_us)),
            },
            store_id: r.store_id,
            card_token: r.card_token,
            step: r.step,
            final_status: r.final_status,
        }
    }
}

const VEND_COLUMNS: &str = "id, machine_id, store_id, slot, product_id, currency, price_minor, \
    idempotency_key, customer_id, card_token, status, step, failure_reason, final_status, \
    reservation_id, payment_id, command_id, created_us, updated_us";

/// Inserts a new PENDING vend at step `step`; `false` when (machine, key) exists.
pub async fn insert_vend(tx: &mut Tx, v: &VendRow) -> Result<bool> {
    let price = v.vend.price.clone().unwrap_or_default();
    let now = now();
    let done = sqlx::query(
        "INSERT INTO vends (id, machine_id, store_id, slot, product_id, currency, price_minor, idempotency_key, \
         customer_id, card_token, status, step, failure_reason, final_status, reservation_id, payment_id, command_id, created_us, updated_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'PENDING', $11, '', '', '', '', '', $12, $12) \
         ON CONFLICT (machine_id, idempotency_key) DO NOTHING",
    )
    .bind(&v.vend.id)
    .bind(&v.vend.machine_id)
    .bind(&v.store_id)
    .bind(&v.vend.slot)
    .bind(&v.vend.product_id)
    .bind(&price.currency_code)
    .bind(price.amount_minor)
    .bind(&v.vend.idempotency_key)
    .bind(&v.vend.customer_id)
    .bind(&v.card_token)
    .bind(&v.step)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One vend by id.
pub async fn vend(pool: &AnyPool, id: &str) -> Result<Option<VendRow>> {
    let sql = format!("SELECT {VEND_COLUMNS} FROM vends WHERE id = $1");
    let row: Option<StoredVend> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(VendRow::from))
}

/// One vend by (machine, idempotency key).
pub async fn vend_by_key(pool: &AnyPool, machine: &str, key: &str) -> Result<Option<VendRow>> {
    let sql =
        format!("SELECT {VEND_COLUMNS} FROM vends WHERE machine_id = $1 AND idempotency_key = $2");
    let row: Option<StoredVend> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(machine)
        .bind(key)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(VendRow::from))
}

/// Ids of every PENDING vend, oldest first (the recovery sweep).
pub async fn pending_vends(pool: &AnyPool) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM vends WHERE status = 'PENDING' ORDER BY created_us, id")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Moves a PENDING vend to `step`, recording references and the reason and final status it
/// heads to; in `tx`.
pub async fn set_step(tx: &mut Tx, v: &VendRow) -> Result<()> {
    sqlx::query(
        "UPDATE vends SET step = $1, reservation_id = $2, payment_id = $3, command_id = $4, \
         failure_reason = $5, final_status = $6, updated_us = $7 WHERE id = $8 AND status = 'PENDING'",
    )
    .bind(&v.step)
    .bind(&v.vend.reservation_id)
    .bind(&v.vend.payment_id)
    .bind(&v.vend.command_id)
    .bind(&v.vend.failure_reason)
    .bind(&v.final_status)
    .bind(now())
    .bind(&v.vend.id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Makes a vend final with `status`; `false` when it was final already.
pub async fn finish(tx: &mut Tx, id: &str, status: VendStatus, reason: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE vends SET status = $1, step = 'DONE', failure_reason = $2, updated_us = $3 \
         WHERE id = $4 AND status = 'PENDING'",
    )
    .bind(status_name(status))
    .bind(reason)
    .bind(now())
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Up to `limit` vends, newest first, after (created_us, id) `after`.
pub async fn vends(
    pool: &AnyPool,
    machine: Option<&str>,
    status: Option<VendStatus>,
    after: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<Vend>> {
    let (after_t, after_id) = after.unwrap_or((i64::MAX, String::new()));
    let sql = format!(
        "SELECT {VEND_COLUMNS} FROM vends WHERE ($1 = '' OR machine_id = $1) AND ($2 = '' OR status = $2) \
         AND (created_us < $3 OR (created_us = $3 AND id < $4) OR $4 = '') AND created_us <= $3 \
         ORDER BY created_us DESC, id DESC LIMIT $5"
    );
    let rows: Vec<StoredVend> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(machine.unwrap_or(""))
        .bind(status.map(status_name).unwrap_or(""))
        .bind(after_t)
        .bind(after_id)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|r| VendRow::from(r).vend).collect())
}
