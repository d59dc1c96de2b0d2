//! The inventory's SQL (portable: Postgres and SQLite). Every change of `reserved` or `on_hand`
//! is one conditional `UPDATE` whose `WHERE` keeps `0 <= reserved <= on_hand`: under concurrent
//! writers the database re-checks the condition on the row it locked, so stock never goes
//! negative and the last unit is reserved once. Every time (`now`, `expires`, the `*_us`
//! columns) is in microseconds since the Unix epoch, the runtime's one unit
//! ([`mesh_runtime::domain::time`]).

use mesh_contracts::inventory::v1::{Reservation, ReservationStatus, StockLevel, StockLine};
use mesh_runtime::domain::time::to_timestamp;
use mesh_runtime::outbox::Tx;
use mesh_runtime::sql_write::Write;
use sqlx::AnyPool;

use crate::error::InventoryError;
use crate::validate::Line;

type Result<T> = std::result::Result<T, InventoryError>;

/// A `stock` row.
#[derive(sqlx::FromRow)]
struct StockRow {
    product_id: String,
    location_id: String,
    on_hand: i64,
    reserved: i64,
    updated_us: i64,
}

impl From<StockRow> for StockLevel {
    fn from(r: StockRow) -> Self {
        StockLevel {
            product_id: r.product_id,
            location_id: r.location_id,
            on_hand: r.on_hand,
            reserved: r.reserved,
            available: (r.on_hand - r.reserved).max(0),
            update_time: Some(to_timestamp(r.updated_us)),
        }
    }
}

/// A reservation joined with one of its lines (NULL line columns for one without lines).
#[derive(sqlx::FromRow)]
struct ReservationLineRow {
    id: String,
    reference_id: String,
    status: String,
    created_us: i64,
    expires_us: i64,
    updated_us: i64,
    product_id: Option<String>,
    location_id: Option<String>,
    quantity: Option<i64>,
}

/// The stock of `product` at `location` (zeros when never stocked).
pub async fn stock(pool: &AnyPool, product: &str, location: &str) -> Result<StockLevel> {
    let row: Option<StockRow> = sqlx::query_as("SELECT product_id, location_id, on_hand, reserved, updated_us FROM stock WHERE product_id = $1 AND location_id = $2")
        .bind(product)
        .bind(location)
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some(r) => r.into(),
        None => StockLevel {
            product_id: product.into(),
            location_id: location.into(),
            ..Default::default()
        },
    })
}

/// The stock of `product` at `location` in `tx`.
pub async fn stock_in(tx: &mut Tx, product: &str, location: &str) -> Result<StockLevel> {
    let row: Option<StockRow> = sqlx::query_as("SELECT product_id, location_id, on_hand, reserved, updated_us FROM stock WHERE product_id = $1 AND location_id = $2")
        .bind(product)
        .bind(location)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(match row {
        Some(r) => r.into(),
        None => StockLevel {
            product_id: product.into(),
            location_id: location.into(),
            ..Default::default()
        },
    })
}

/// Holds `line.quantity` more units; `false` when fewer are available.
pub async fn hold(tx: &mut Tx, line: &Line, now: i64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE stock SET reserved = reserved + $1, updated_us = $2 WHERE product_id = $3 AND location_id = $4 AND on_hand - reserved >= $1",
    )
    .bind(line.quantity)
    .bind(now)
    .bind(&line.product_id)
    .bind(&line.location_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Returns `line.quantity` held units to available (release, expiry).
pub async fn unhold(tx: &mut Tx, line: &Line, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE stock SET reserved = reserved - $1, updated_us = $2 WHERE product_id = $3 AND location_id = $4 AND reserved >= $1",
    )
    .bind(line.quantity)
    .bind(now)
    .bind(&line.product_id)
    .bind(&line.location_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Turns `line.quantity` held units into a decrement of on-hand stock (commit).
pub async fn take(tx: &mut Tx, line: &Line, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE stock SET reserved = reserved - $1, on_hand = on_hand - $1, updated_us = $2 WHERE product_id = $3 AND location_id = $4 AND reserved >= $1 AND on_hand >= $1",
    )
    .bind(line.quantity)
    .bind(now)
    .bind(&line.product_id)
    .bind(&line.location_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How a set-based stock update changes each of its lines' row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockChange {
    /// Hold more units ([`hold`] for many lines).
    Hold,
    /// Give held units back ([`unhold`] for many lines).
    Unhold,
    /// Turn held units into sold ones ([`take`] for many lines).
    Take,
}

/// Lines per set-based stock statement: 3 parameters a line, far under both databases' limits.
const LINES_PER_STATEMENT: usize = 100;

/// The `UPDATE` applying `change` to `n` lines' stock rows (`UPDATE ... FROM (VALUES ...)`, on
/// both databases): `$1` is the time, then each line's product, location and quantity. Ends
/// with its `WHERE` clause.
fn change_sql(change: StockChange, n: usize) -> String {
    let values = (0..n)
        .map(|i| {
            let p = 3 * i + 1;
            format!("(${}, ${}, CAST(${} AS BIGINT))", p + 1, p + 2, p + 3)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let (set, condition) = match change {
        StockChange::Hold => (
            "reserved = stock.reserved + v.column3",
            "stock.on_hand - stock.reserved >= v.column3",
        ),
        StockChange::Unhold => (
            "reserved = stock.reserved - v.column3",
            "stock.reserved >= v.column3",
        ),
        StockChange::Take => (
            "reserved = stock.reserved - v.column3, on_hand = stock.on_hand - v.column3",
            "stock.reserved >= v.column3 AND stock.on_hand >= v.column3",
        ),
    };
    format!(
        "UPDATE stock SET {set}, updated_us = $1 FROM (VALUES {values}) AS v \
         WHERE stock.product_id = v.column1 AND stock.location_id = v.column2 AND {condition}"
    )
}

/// Applies `change` to the stock rows of `lines` (merged and sorted: [`crate::validate::merged`])
/// in one statement per 100 lines; returns the product ids of the rows it changed. A row whose
/// condition fails (not enough available, held or on hand) is left alone and not returned.
async fn change_all(
    tx: &mut Tx,
    change: StockChange,
    lines: &[Line],
    now: i64,
) -> Result<Vec<String>> {
    let mut held = Vec::with_capacity(lines.len());
    for chunk in lines.chunks(LINES_PER_STATEMENT) {
        let sql = format!(
            "{} RETURNING stock.product_id",
            change_sql(change, chunk.len())
        );
        let mut query = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql)).bind(now);
        for l in chunk {
            query = query
                .bind(&l.product_id)
                .bind(&l.location_id)
                .bind(l.quantity);
        }
        for (product_id,) in query.fetch_all(&mut **tx).await? {
            held.push(product_id);
        }
    }
    Ok(held)
}

/// [`change_all`] as writes to join to an event ([`Tx::write_and_emit`]), each
/// [`Write::gated`]: they run only if the list's first write changed a row.
pub fn change_writes(change: StockChange, lines: &[Line], now: i64) -> Vec<Write> {
    lines
        .chunks(LINES_PER_STATEMENT)
        .map(|chunk| change_write(change, chunk, now))
        .collect()
}

/// The [`Write::gated`] write of [`change_writes`] for one chunk of at most
/// [`LINES_PER_STATEMENT`] lines.
fn change_write(change: StockChange, chunk: &[Line], now: i64) -> Write {
    let mut w = Write::new(change_sql(change, chunk.len())).int(now);
    for l in chunk {
        w = w.text(&l.product_id).text(&l.location_id).int(l.quantity);
    }
    w.gated()
}

/// [`hold`] for every line of `lines` (merged and sorted) in one statement; returns the product
/// ids of the lines it held (all of them, unless some were short).
pub async fn hold_all(tx: &mut Tx, lines: &[Line], now: i64) -> Result<Vec<String>> {
    change_all(tx, StockChange::Hold, lines, now).await
}

/// [`unhold`] for every line of `lines` (merged and sorted) in one statement.
pub async fn unhold_all(tx: &mut Tx, lines: &[Line], now: i64) -> Result<()> {
    change_all(tx, StockChange::Unhold, lines, now)
        .await
        .map(drop)
}

/// Adds `delta` to on-hand stock; `false` when it would drop below what is reserved.
pub async fn adjust(
    tx: &mut Tx,
    product: &str,
    location: &str,
    delta: i64,
    now: i64,
) -> Result<bool> {
    if delta > 0 {
        sqlx::query(
            "INSERT INTO stock (product_id, location_id, on_hand, reserved, updated_us) VALUES ($1, $2, $3, 0, $4) \
             ON CONFLICT (product_id, location_id) DO UPDATE SET on_hand = stock.on_hand + $3, updated_us = $4",
        )
        .bind(product)
        .bind(location)
        .bind(delta)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        return Ok(true);
    }
    let done = sqlx::query(
        "UPDATE stock SET on_hand = on_hand + $1, updated_us = $2 WHERE product_id = $3 AND location_id = $4 AND on_hand + $1 >= reserved",
    )
    .bind(delta)
    .bind(now)
    .bind(product)
    .bind(location)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Filters and position of a stock listing.
#[derive(Debug, Default)]
pub struct StockFilter {
    /// Only this location.
    pub location_id: Option<String>,
    /// Only this product.
    pub product_id: Option<String>,
    /// Only levels with available at or below this.
    pub max_available: Option<i64>,
    /// Only the locations of these stores (their own, their machines') and `default`: a store
    /// staff member's scope.
    pub stores: Option<Vec<String>>,
    /// After this (location, product).
    pub after: Option<(String, String)>,
}

/// Up to `limit` stock levels, by location then product.
pub async fn list(pool: &AnyPool, f: &StockFilter, limit: i64) -> Result<Vec<StockLevel>> {
    let mut sql =
        "SELECT product_id, location_id, on_hand, reserved, updated_us FROM stock WHERE 1 = 1"
            .to_string();
    let mut n = 0;
    let mut p = || {
        n += 1;
        format!("${n}")
    };
    if f.location_id.is_some() {
        sql += &format!(" AND location_id = {}", p());
    }
    if f.product_id.is_some() {
        sql += &format!(" AND product_id = {}", p());
    }
    if f.max_available.is_some() {
        sql += &format!(" AND on_hand - reserved <= {}", p());
    }
    if let Some(stores) = &f.stores {
        sql += &format!(
            " AND (location_id = '{}'",
            crate::validate::DEFAULT_LOCATION
        );
        if !stores.is_empty() {
            let own: Vec<String> = stores.iter().map(|_| p()).collect();
            let machines: Vec<String> = stores.iter().map(|_| p()).collect();
            sql += &format!(
                " OR location_id IN ({}) OR location_id IN \
                 (SELECT location_id FROM location_stores WHERE store_id IN ({}))",
                own.join(", "),
                machines.join(", ")
            );
        }
        sql += ")";
    }
    if f.after.is_some() {
        let (a, b) = (p(), p());
        sql += &format!(" AND (location_id > {a} OR (location_id = {a} AND product_id > {b}))");
    }
    sql += &format!(" ORDER BY location_id, product_id LIMIT {}", p());
    let mut q = sqlx::query_as::<_, StockRow>(sqlx::AssertSqlSafe(sql));
    if let Some(v) = &f.location_id {
        q = q.bind(v.clone());
    }
    if let Some(v) = &f.product_id {
        q = q.bind(v.clone());
    }
    if let Some(v) = f.max_available {
        q = q.bind(v);
    }
    // The scope's stores twice: their own locations, then their machines'.
    for _ in 0..2 {
        for store in f.stores.iter().flatten() {
            q = q.bind(store.clone());
        }
    }
    if let Some((a, b)) = &f.after {
        q = q.bind(a.clone()).bind(b.clone());
    }
    let rows = q.bind(limit).fetch_all(pool).await?;
    Ok(rows.into_iter().map(StockLevel::from).collect())
}

/// The stored name of a status.
pub fn status_name(s: ReservationStatus) -> &'static str {
    match s {
        ReservationStatus::Active => "ACTIVE",
        ReservationStatus::Committed => "COMMITTED",
        ReservationStatus::Released => "RELEASED",
        ReservationStatus::Expired => "EXPIRED",
        ReservationStatus::Unspecified => "UNSPECIFIED",
    }
}

fn status_of(name: &str) -> ReservationStatus {
    match name {
        "ACTIVE" => ReservationStatus::Active,
        "COMMITTED" => ReservationStatus::Committed,
        "RELEASED" => ReservationStatus::Released,
        "EXPIRED" => ReservationStatus::Expired,
        _ => ReservationStatus::Unspecified,
    }
}

/// Inserts an ACTIVE reservation and its lines.
pub async fn insert_reservation(
    tx: &mut Tx,
    id: &str,
    reference: &str,
    lines: &[Line],
    now: i64,
    expires: i64,
) -> Result<()> {
    sqlx::query("INSERT INTO reservations (id, reference_id, status, created_us, expires_us, updated_us) VALUES ($1, $2, 'ACTIVE', $3, $4, $3)")
        .bind(id)
        .bind(reference)
        .bind(now)
        .bind(expires)
        .execute(&mut **tx)
        .await?;
    insert_lines(tx, id, lines).await
}

/// Inserts an ACTIVE reservation with reference `reference` unless that reference has one
/// already (`false`, nothing written): the saga's claim of the reference, without reading first.
pub async fn claim_reservation(
    tx: &mut Tx,
    id: &str,
    reference: &str,
    now: i64,
    expires: i64,
) -> Result<bool> {
    let done = sqlx::query("INSERT INTO reservations (id, reference_id, status, created_us, expires_us, updated_us) VALUES ($1, $2, 'ACTIVE', $3, $4, $3) ON CONFLICT (reference_id) DO NOTHING")
        .bind(id)
        .bind(reference)
        .bind(now)
        .bind(expires)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// What [`claim_order`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderClaim {
    /// The saga knows the order already (reserved, rejected, or cancelled before it arrived):
    /// nothing was written.
    Known,
    /// The order is claimed (its saga row RESERVED under the new reservation's id), but its
    /// reference has a reservation already (made through the RPC).
    ReferenceTaken,
    /// The order and its new ACTIVE reservation `id` are claimed.
    Claimed,
}

/// The saga row of order `$1` inserted RESERVED under reservation `$2` at `$3`, unless the saga
/// knows the order.
const SAGA_ROW: &str = "INSERT INTO saga_orders (order_id, state, reservation_id, updated_us) VALUES ($1, 'RESERVED', $2, $3) \
    ON CONFLICT (order_id) DO NOTHING";

/// Postgres: the ACTIVE reservation `$2` of reference `$1` (created at `$3`, expiring at `$4`)
/// inserted only if `claim` ([`SAGA_ROW`] `RETURNING 1`, a `WITH` of the same statement) did
/// insert, and unless the reference has a reservation already.
const RESERVATION_AFTER_CLAIM: &str = "INSERT INTO reservations (id, reference_id, status, created_us, expires_us, updated_us) \
    SELECT $2, $1, 'ACTIVE', $3, $4, $3 WHERE EXISTS (SELECT 1 FROM claim) \
    ON CONFLICT (reference_id) DO NOTHING";

/// The saga's claim of order `order` on `order.created`: its saga row inserted RESERVED under
/// reservation `id` unless the saga knows it, and then the reservation itself as
/// [`claim_reservation`] inserts it. On Postgres one statement (the reservation a
/// data-modifying `WITH` gated on the saga row's insert), elsewhere two.
pub async fn claim_order(
    tx: &mut Tx,
    order: &str,
    id: &str,
    now: i64,
    expires: i64,
) -> Result<OrderClaim> {
    if tx.backend_name() == "PostgreSQL" {
        let sql = format!(
            "WITH claim AS ({SAGA_ROW} RETURNING 1), r AS ({RESERVATION_AFTER_CLAIM} RETURNING 1) \
             SELECT (SELECT CAST(COUNT(*) AS BIGINT) FROM claim) AS claimed, (SELECT CAST(COUNT(*) AS BIGINT) FROM r) AS reserved"
        );
        let (claimed, reserved): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(order)
            .bind(id)
            .bind(now)
            .bind(expires)
            .fetch_one(&mut **tx)
            .await?;
        return Ok(match (claimed, reserved) {
            (0, _) => OrderClaim::Known,
            (_, 0) => OrderClaim::ReferenceTaken,
            _ => OrderClaim::Claimed,
        });
    }
    let claimed = sqlx::query(SAGA_ROW)
        .bind(order)
        .bind(id)
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if claimed == 0 {
        return Ok(OrderClaim::Known);
    }
    Ok(if claim_reservation(tx, id, order, now, expires).await? {
        OrderClaim::Claimed
    } else {
        OrderClaim::ReferenceTaken
    })
}

/// The saga's whole `order.created` for an order that reserves, as the writes of one statement
/// joined to `inventory.reserved` (Postgres: [`Tx::write_and_emit`], a one-statement step's
/// statement): the claim of the order and of its reservation `id` (the first write, which
/// changes a row only when both are new, as [`claim_order`]'s `Claimed`), every line of
/// `merged` held ([`hold_all`]), and the reservation's `lines`. Each hold is
/// [`Write::required`] to change all its lines' rows, so a line short of stock, a known order or
/// a taken reference make the statement write nothing at all, and the step runs in a
/// transaction, which tells those apart.
pub fn reserve_writes(
    order: &str,
    id: &str,
    lines: &[Line],
    merged: &[Line],
    now: i64,
    expires: i64,
) -> Vec<Write> {
    let claim = Write::with(
        format!("claim AS ({SAGA_ROW} RETURNING 1)"),
        RESERVATION_AFTER_CLAIM,
    )
    .text(order)
    .text(id)
    .int(now)
    .int(expires);
    let holds = merged
        .chunks(LINES_PER_STATEMENT)
        .map(|chunk| change_write(StockChange::Hold, chunk, now).required(chunk.len()));
    let lines = lines_writes(id, lines).into_iter().map(Write::gated);
    std::iter::once(claim).chain(holds).chain(lines).collect()
}

/// Deletes the reservation `id` that [`claim_reservation`] inserted in this transaction, before
/// it has lines (its order turned out short of stock).
pub async fn unclaim_reservation(tx: &mut Tx, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM reservations WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Inserts the lines of reservation `id`: one statement per 100 lines (one for any order the
/// saga sees), not one per line.
pub async fn insert_lines(tx: &mut Tx, id: &str, lines: &[Line]) -> Result<()> {
    for w in lines_writes(id, lines) {
        w.execute(tx).await?;
    }
    Ok(())
}

/// The writes of [`insert_lines`], to join to an event ([`Tx::write_and_emit`]).
pub fn lines_writes(id: &str, lines: &[Line]) -> Vec<Write> {
    let mut line_no = 0_i64;
    lines
        .chunks(LINES_PER_STATEMENT)
        .map(|chunk| {
            let values = (0..chunk.len())
                .map(|i| {
                    let p = 5 * i;
                    format!(
                        "(${}, CAST(${} AS BIGINT), ${}, ${}, CAST(${} AS BIGINT))",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            // `SELECT ... WHERE`, not `VALUES` alone, so that it can be gated (`reserve_writes`).
            let mut w = Write::new(format!(
                "INSERT INTO reservation_lines (reservation_id, line_no, product_id, location_id, quantity) \
                 SELECT * FROM (VALUES {values}) AS v WHERE 1 = 1"
            ));
            for l in chunk {
                w = w
                    .text(id)
                    .int(line_no)
                    .text(&l.product_id)
                    .text(&l.location_id)
                    .int(l.quantity);
                line_no += 1;
            }
            w
        })
        .collect()
}

/// The write that moves ACTIVE reservation `id` to `to` (it changes no row if the reservation
/// is no longer ACTIVE), to be the gate of a [`Tx::write_and_emit`].
pub fn transition(id: &str, to: ReservationStatus, now: i64) -> Write {
    Write::new(
        "UPDATE reservations SET status = $1, updated_us = $2 WHERE id = $3 AND status = 'ACTIVE'",
    )
    .text(status_name(to))
    .int(now)
    .text(id)
}

/// Reservation `id` (or, with `by_reference`, the one for reference `id`), with its lines, read
/// in one statement.
pub async fn reservation(tx: &mut Tx, id: &str, by_reference: bool) -> Result<Option<Reservation>> {
    let sql = if by_reference {
        "SELECT r.id, r.reference_id, r.status, r.created_us, r.expires_us, r.updated_us, l.product_id, l.location_id, l.quantity \
         FROM reservations r LEFT JOIN reservation_lines l ON l.reservation_id = r.id WHERE r.reference_id = $1 ORDER BY l.line_no"
    } else {
        "SELECT r.id, r.reference_id, r.status, r.created_us, r.expires_us, r.updated_us, l.product_id, l.location_id, l.quantity \
         FROM reservations r LEFT JOIN reservation_lines l ON l.reservation_id = r.id WHERE r.id = $1 ORDER BY l.line_no"
    };
    let rows: Vec<ReservationLineRow> = sqlx::query_as(sql).bind(id).fetch_all(&mut **tx).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let lines = rows
        .iter()
        // A reservation without lines comes as one row of NULL line columns.
        .filter_map(|r| {
            Some(StockLine {
                product_id: r.product_id.clone()?,
                location_id: r.location_id.clone().unwrap_or_default(),
                quantity: r.quantity.unwrap_or_default(),
            })
        })
        .collect();
    Ok(Some(Reservation {
        id: row.id.clone(),
        reference_id: row.reference_id.clone(),
        lines,
        status: status_of(&row.status) as i32,
        create_time: Some(to_timestamp(row.created_us)),
        expire_time: Some(to_timestamp(row.expires_us)),
        update_time: Some(to_timestamp(row.updated_us)),
    }))
}

/// Ids of up to `limit` ACTIVE reservations that expired at or before `now`.
pub async fn expired(pool: &AnyPool, now: i64, limit: i64) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM reservations WHERE status = 'ACTIVE' AND expires_us <= $1 ORDER BY expires_us LIMIT $2")
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// A recorded adjustment: its resulting on-hand and reserved units.
pub async fn adjustment_by_request(
    tx: &mut Tx,
    request_id: &str,
) -> Result<Option<(String, String, i64, i64)>> {
    Ok(sqlx::query_as(
        "SELECT product_id, location_id, on_hand, reserved FROM adjustments WHERE request_id = $1",
    )
    .bind(request_id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Records an adjustment.
#[allow(clippy::too_many_arguments)]
pub async fn insert_adjustment(
    tx: &mut Tx,
    request_id: Option<&str>,
    level: &StockLevel,
    delta: i64,
    reason: i32,
    note: &str,
    actor: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO adjustments (id, request_id, product_id, location_id, delta, reason, note, actor_id, on_hand, reserved, created_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(request_id.map(str::to_string))
    .bind(&level.product_id)
    .bind(&level.location_id)
    .bind(delta)
    .bind(i64::from(reason))
    .bind(note)
    .bind(actor)
    .bind(level.on_hand)
    .bind(level.reserved)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
