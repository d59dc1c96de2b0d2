//! The order service's SQL (portable: Postgres and SQLite). Every status change is one
//! conditional `UPDATE ... WHERE status IN (<allowed sources>)`: under concurrent writers (an
//! RPC, the sweeper and the saga's consumers on several replicas) the database re-checks the
//! condition on the row it locked, so an order leaves PENDING/RESERVED once and a final status
//! is never overwritten.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mesh_contracts::common::v1::{Money, PostalAddress};
use mesh_contracts::order::v1::{Order, OrderLine, OrderStatus, StatusChange};
use mesh_runtime::domain::time;
use mesh_runtime::outbox::{Event, Tx};
use mesh_runtime::sql_write::Write;
use prost::Message as _;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, FromRow as _};

use crate::error::OrderError;

type Result<T> = std::result::Result<T, OrderError>;

/// Statuses an order is still in flight in.
pub const OPEN: &[OrderStatus] = &[
    OrderStatus::Pending,
    OrderStatus::Reserved,
    OrderStatus::Paid,
];

pub use mesh_runtime::domain::time::now_us;
use mesh_runtime::domain::time::to_timestamp as ts;

fn money(currency: &str, minor: i64) -> Money {
    mesh_runtime::domain::money::to_money(currency, minor)
}

/// The stored name of a status.
pub fn status_name(s: OrderStatus) -> &'static str {
    s.as_str_name()
}

fn status_of(name: &str) -> OrderStatus {
    OrderStatus::from_str_name(name).unwrap_or(OrderStatus::Unspecified)
}

fn in_list(statuses: &[OrderStatus]) -> String {
    statuses
        .iter()
        .map(|s| format!("'{}'", status_name(*s)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A priced line to store.
#[derive(Debug, Clone)]
pub struct NewLine {
    /// Product id.
    pub product_id: String,
    /// SKU at order time.
    pub sku: String,
    /// Name at order time.
    pub name: String,
    /// Units.
    pub quantity: i64,
    /// List unit price in minor units.
    pub unit_price_minor: i64,
    /// Discount on the line (campaign's), in minor units.
    pub discount_minor: i64,
}

/// An order to store as PENDING.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Order id.
    pub id: String,
    /// Customer.
    pub customer_id: String,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Fingerprint of the request (the same key with another request is refused).
    pub request_hash: String,
    /// Currency of every amount.
    pub currency_code: String,
    /// Lines.
    pub lines: Vec<NewLine>,
    /// Sum of line subtotals.
    pub subtotal_minor: i64,
    /// Sum of line discounts.
    pub discount_minor: i64,
    /// The campaigns that gave the discounts.
    pub applied_campaign_ids: Vec<String>,
    /// Campaign could not price the order: list prices, no discount.
    pub discounts_unavailable: bool,
    /// The store (empty: online).
    pub store_id: String,
    /// Amount to charge.
    pub total_minor: i64,
    /// Where to ship.
    pub shipping_address: PostalAddress,
    /// Promo code as entered.
    pub promo_code: String,
    /// Card token.
    pub card_token: String,
    /// Last 4 digits, when known.
    pub card_last4: String,
    /// Creation time, Unix µs.
    pub now_us: i64,
}

/// The writes that store `o` as PENDING with its lines and the first history entry: three
/// statements whatever the number of lines (the lines go in as one multi-row `INSERT`), which
/// the outbox joins to `order.created` ([`mesh_runtime::Database::write_and_emit`]: one
/// statement on Postgres). The order as written is [`NewOrder::written`] (nothing is read back).
pub fn insert_writes(o: &NewOrder) -> Vec<Write> {
    let address = STANDARD.encode(o.shipping_address.encode_to_vec());
    let order = Write::new(
        "INSERT INTO orders (id, customer_id, idempotency_key, request_hash, status, currency_code, \
         subtotal_minor, discount_minor, shipping_minor, total_minor, shipping_address, promo_code, \
         card_token, card_last4, payment_id, reservation_id, cancel_reason, created_at_us, updated_at_us, \
         applied_campaign_ids, discounts_unavailable, store_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $14, 0, $8, $9, $10, $11, $12, '', '', '', $13, $13, $15, $16, $17)",
    )
    .text(&o.id)
    .text(&o.customer_id)
    .text(&o.idempotency_key)
    .text(&o.request_hash)
    .text(status_name(OrderStatus::Pending))
    .text(&o.currency_code)
    .int(o.subtotal_minor)
    .int(o.total_minor)
    .text(address)
    .text(&o.promo_code)
    .text(&o.card_token)
    .text(&o.card_last4)
    .int(o.now_us)
    .int(o.discount_minor)
    .text(o.applied_campaign_ids.join(","))
    .int(i64::from(o.discounts_unavailable))
    .text(&o.store_id);
    let mut writes = vec![order];
    // At most 100 lines (validated): 800 parameters, under both databases' limits.
    if !o.lines.is_empty() {
        let values = (0..o.lines.len())
            .map(|i| {
                let p = 8 * i;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 7,
                    p + 8
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut lines = Write::new(format!(
            "INSERT INTO order_lines (order_id, line_no, product_id, sku, name, quantity, unit_price_minor, discount_minor) VALUES {values}"
        ));
        for (i, l) in o.lines.iter().enumerate() {
            lines = lines
                .text(&o.id)
                .int(i64::try_from(i).unwrap_or(i64::MAX))
                .text(&l.product_id)
                .text(&l.sku)
                .text(&l.name)
                .int(l.quantity)
                .int(l.unit_price_minor)
                .int(l.discount_minor);
        }
        writes.push(lines);
    }
    // The first entry of a new order's history is number 1 (the order's `history_seq` starts
    // at 1): no need to look for the last one.
    writes.push(
        Write::new(
            "INSERT INTO order_status_history (order_id, seq, status, reason, event_id, at_us) VALUES ($1, 1, $2, $3, '', $4)",
        )
        .text(&o.id)
        .text(status_name(OrderStatus::Pending))
        .text(PLACED)
        .int(o.now_us),
    );
    writes
}

/// The reason of an order's first history entry.
const PLACED: &str = "order placed";

impl NewOrder {
    /// The order as [`insert_writes`] writes it: PENDING, its lines, one history entry.
    pub fn written(&self) -> Order {
        let c = &self.currency_code;
        Order {
            id: self.id.clone(),
            customer_id: self.customer_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            status: OrderStatus::Pending as i32,
            lines: self
                .lines
                .iter()
                .map(|l| {
                    line(
                        c,
                        l.product_id.clone(),
                        l.sku.clone(),
                        l.name.clone(),
                        l.quantity,
                        l.unit_price_minor,
                        l.discount_minor,
                        0,
                    )
                })
                .collect(),
            subtotal: Some(money(c, self.subtotal_minor)),
            discount_total: Some(money(c, self.discount_minor)),
            shipping_total: Some(money(c, 0)),
            total: Some(money(c, self.total_minor)),
            shipping_address: Some(self.shipping_address.clone()),
            promo_code: self.promo_code.clone(),
            applied_campaign_ids: self.applied_campaign_ids.clone(),
            discounts_unavailable: self.discounts_unavailable,
            store_id: self.store_id.clone(),
            card_token: self.card_token.clone(),
            card_last4: self.card_last4.clone(),
            payment_id: String::new(),
            reservation_id: String::new(),
            cancel_reason: String::new(),
            status_history: vec![StatusChange {
                status: OrderStatus::Pending as i32,
                time: Some(ts(self.now_us)),
                reason: PLACED.into(),
                event_id: String::new(),
            }],
            create_time: Some(ts(self.now_us)),
            update_time: Some(ts(self.now_us)),
            refunds: Vec::new(),
            refunded_total: Some(money(c, 0)),
        }
    }
}

/// An order line as the API shows it.
#[allow(clippy::too_many_arguments)]
fn line(
    currency: &str,
    product_id: String,
    sku: String,
    name: String,
    quantity: i64,
    unit: i64,
    discount: i64,
    refunded_quantity: i64,
) -> OrderLine {
    let subtotal = unit.saturating_mul(quantity);
    OrderLine {
        product_id,
        sku,
        name,
        quantity,
        unit_price: Some(money(currency, unit)),
        subtotal: Some(money(currency, subtotal)),
        discount: Some(money(currency, discount)),
        total: Some(money(currency, subtotal - discount)),
        refunded_quantity,
    }
}

/// The order of `customer` under idempotency `key`: its id and request fingerprint.
pub async fn by_key(
    conn: &mut AnyConnection,
    customer: &str,
    key: &str,
) -> Result<Option<(String, String)>> {
    // Planned at each call, not once per connection: a plan cached while `orders` is empty (a
    // new deployment, a fresh bench database) ties the unique index with `orders_by_customer`
    // and may keep the latter, scanning all of the customer's orders (measured 0.3-1.5 ms per
    // call after a few thousand orders of one customer, against 0.02 ms by the unique index).
    Ok(sqlx::query_as(
        "SELECT id, request_hash FROM orders WHERE customer_id = $1 AND idempotency_key = $2",
    )
    .persistent(false)
    .bind(customer)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?)
}

/// What a transition sets besides the status.
#[derive(Debug, Default, Clone)]
pub struct Changes<'a> {
    /// The reservation id, when learnt.
    pub reservation_id: Option<&'a str>,
    /// The payment id, when learnt.
    pub payment_id: Option<&'a str>,
    /// The cancel reason, when cancelling.
    pub cancel_reason: Option<&'a str>,
}

/// Moves order `id` to `to` if its status is one of `from`, sets `changes`, and records the
/// history entry (numbered by the order's `history_seq`, which the update advances): one
/// statement on Postgres (the entry is a data-modifying `WITH` of the update), two elsewhere.
/// Returns the order as the update left it (read by `RETURNING` in the same statement; without
/// its lines and history), or `None` when the order is missing or in another status (nothing
/// changed). Inside a consumer on Postgres the statement also records the handled event
/// ([`Tx::fetch_recording`]), so a step that is this transition alone is one statement, which
/// runs without a transaction (`inventory.reserved`); in a step run so, a transition that
/// changes nothing fails the call, and the step runs again in a transaction.
#[allow(clippy::too_many_arguments)]
pub async fn transition(
    tx: &mut Tx,
    id: &str,
    from: &[OrderStatus],
    to: OrderStatus,
    changes: &Changes<'_>,
    reason: &str,
    event_id: &str,
    now: i64,
) -> Result<Option<Order>> {
    let step = Transition {
        id,
        from,
        to,
        changes,
        reason,
        event_id,
        now,
    };
    step.run_recording(tx).await
}

/// What [`Transition::emitting`] did.
#[derive(Debug)]
pub enum Emitted {
    /// The order moved, with its history entry and its event: the order as updated, with its
    /// lines.
    Moved(Box<Order>),
    /// The order is missing or in none of the statuses it may move from: nothing changed.
    NotMoved,
    /// The order changed between the read and the update (in a transaction; in a consumer's
    /// step run without one the call fails instead, and the step runs again in one): nothing
    /// changed, and the caller takes the general path.
    Raced,
}

/// One conditional status change with its history entry ([`transition`] runs one).
#[derive(Debug, Clone, Copy)]
pub struct Transition<'a> {
    /// The order.
    pub id: &'a str,
    /// The statuses it may move from.
    pub from: &'a [OrderStatus],
    /// The status it moves to.
    pub to: OrderStatus,
    /// What it sets besides the status.
    pub changes: &'a Changes<'a>,
    /// The history entry's reason.
    pub reason: &'a str,
    /// The history entry's event id.
    pub event_id: &'a str,
    /// When (µs).
    pub now: i64,
}

impl Transition<'_> {
    /// Runs it, returning the order with its lines too: on Postgres one statement (the lines
    /// joined to the updated row), elsewhere one more. `None` when nothing changed.
    pub async fn with_lines(&self, conn: &mut AnyConnection) -> Result<Option<Order>> {
        let Some((mut order, lines)) = self.run(conn, true).await? else {
            return Ok(None);
        };
        match lines {
            Some(lines) => order.lines = lines,
            None => fill_lines(conn, &mut order).await?,
        }
        Ok(Some(order))
    }

    /// Runs it with the event `event` builds from the order as the transition leaves it, on
    /// Postgres only and without a transaction of its own: a read of the order with its lines,
    /// then one statement for the update (done only if the order is as read), its history entry
    /// and the outbox row ([`Tx::write_and_emit`]; in a consumer's one-statement step run in
    /// autocommit, the handled record too). Only the reservation id of an open order changes
    /// under it (inventory's `inventory.reserved` may land between the read and the update), so
    /// the update is conditional on it as well as on the status.
    pub async fn emitting(
        &self,
        tx: &mut Tx,
        event: impl FnOnce(&Order) -> Event,
    ) -> Result<Emitted> {
        let read = with_lines(&format!(
            "(SELECT {ORDER_COLUMNS}, history_seq FROM orders WHERE id = $1)"
        ));
        let rows = sqlx::query(sqlx::AssertSqlSafe(read))
            .bind(self.id)
            .fetch_all(&mut **tx)
            .await?;
        let Some((mut order, lines)) = self.read(&rows, true)? else {
            return Ok(Emitted::NotMoved);
        };
        if !self.from.iter().any(|s| *s as i32 == order.status) {
            return Ok(Emitted::NotMoved);
        }
        let reservation = order.reservation_id.clone();
        order.lines = lines.unwrap_or_default();
        order.status = self.to as i32;
        order.update_time = Some(ts(self.now));
        if let Some(r) = self.changes.reservation_id {
            order.reservation_id = r.into();
        }
        if let Some(p) = self.changes.payment_id {
            order.payment_id = p.into();
        }
        if let Some(c) = self.changes.cancel_reason {
            order.cancel_reason = c.into();
        }
        let event = event(&order);
        Ok(
            match tx.write_and_emit(&self.writes(&reservation), event).await? {
                Some(_) => Emitted::Moved(Box::new(order)),
                None => Emitted::Raced,
            },
        )
    }
}

/// The row of a transition's update: the order, the number of its new history entry and, when
/// joined, one of its lines (the line columns are absent otherwise).
#[derive(sqlx::FromRow)]
struct TransitionRow {
    #[sqlx(flatten)]
    order: OrderRow,
    history_seq: i64,
    #[sqlx(default)]
    line_product_id: Option<String>,
    #[sqlx(default)]
    line_sku: Option<String>,
    #[sqlx(default)]
    line_name: Option<String>,
    #[sqlx(default)]
    line_quantity: Option<i64>,
    #[sqlx(default)]
    line_unit_price_minor: Option<i64>,
    #[sqlx(default)]
    line_discount_minor: Option<i64>,
    #[sqlx(default)]
    line_refunded_quantity: Option<i64>,
}

/// The `UPDATE` of a transition (parameters `$1`-`$6`), without its `RETURNING`.
fn transition_set(from: &[OrderStatus]) -> String {
    format!(
        "UPDATE orders SET status = $1, updated_at_us = $2, history_seq = history_seq + 1, \
         reservation_id = COALESCE($3, reservation_id), payment_id = COALESCE($4, payment_id), \
         cancel_reason = COALESCE($5, cancel_reason) \
         WHERE id = $6 AND status IN ({})",
        in_list(from)
    )
}

/// The `UPDATE` of a transition (parameters `$1`-`$6`), returning the order and its new
/// history number.
fn transition_update(from: &[OrderStatus]) -> String {
    format!(
        "{} RETURNING {ORDER_COLUMNS}, history_seq",
        transition_set(from)
    )
}

/// The history entry of the order a transition's update (`source`: a `WITH` of the statement
/// returning `id`, `history_seq`, `status` and `updated_at_us`) changed; the reason and the
/// event id are parameters `$reason` and `$reason + 1`.
fn history_from(source: &str, reason: usize) -> String {
    format!(
        "INSERT INTO order_status_history (order_id, seq, status, reason, event_id, at_us) \
         SELECT id, history_seq, status, ${reason}, ${}, updated_at_us FROM {source}",
        reason + 1
    )
}

/// The rows of `orders` (a relation returning [`ORDER_COLUMNS`] and `history_seq`: a `WITH`'s
/// name or a parenthesised `SELECT`), as `u`, each joined to its lines in order (one row per
/// line, [`LINE_COLUMNS`]; one row of `NULL` lines for an order without any).
fn with_lines(orders: &str) -> String {
    format!(
        "SELECT u.*, {LINE_COLUMNS} FROM {orders} u LEFT JOIN order_lines l ON l.order_id = u.id ORDER BY l.line_no"
    )
}

/// The line columns a joined transition returns (all `NULL` for an order without lines).
const LINE_COLUMNS: &str = "l.product_id AS line_product_id, l.sku AS line_sku, l.name AS line_name, \
    l.quantity AS line_quantity, l.unit_price_minor AS line_unit_price_minor, \
    l.discount_minor AS line_discount_minor, l.refunded_quantity AS line_refunded_quantity";

impl Transition<'_> {
    /// Its Postgres statement: the update and its history entry as `WITH`s of the `SELECT` of
    /// the updated row (joined to the order's lines with `lines`). The entry's number comes from
    /// the updated row (not a `MAX` over the history, which this statement's snapshot could read
    /// stale under a concurrent transition).
    fn joined(&self, lines: bool) -> Write {
        let update = transition_update(self.from);
        let select = if lines {
            with_lines("u")
        } else {
            "SELECT * FROM u".to_string()
        };
        let history = history_from("u", 7);
        self.bind_update(Write::with(
            format!("u AS ({update}), h AS ({history})"),
            select,
        ))
        .text(self.reason)
        .text(self.event_id)
    }

    /// `write` with the update's parameters `$1`-`$6` bound.
    fn bind_update(&self, write: Write) -> Write {
        write
            .text(status_name(self.to))
            .int(self.now)
            .opt_text(self.changes.reservation_id.map(str::to_string))
            .opt_text(self.changes.payment_id.map(str::to_string))
            .opt_text(self.changes.cancel_reason.map(str::to_string))
            .text(self.id)
    }

    /// Its Postgres writes for an event joined to them ([`Tx::write_and_emit`]): the update,
    /// done only while the order's reservation id is still `reservation` (what the caller read
    /// to build the event), returning what its history entry needs, and that entry, read from
    /// the update's row (`w0`).
    fn writes(&self, reservation: &str) -> [Write; 2] {
        let update = self
            .bind_update(Write::new(format!(
                "{} AND reservation_id = $7",
                transition_set(self.from)
            )))
            .text(reservation)
            .returning("id, history_seq, status, updated_at_us");
        let history = Write::new(format!("{} WHERE 1 = 1", history_from("w0", 1)))
            .text(self.reason)
            .text(self.event_id)
            .gated();
        [update, history]
    }

    /// Runs it; with `lines` on Postgres the order's lines come back too (`Some`), else `None`.
    async fn run(
        &self,
        conn: &mut AnyConnection,
        lines: bool,
    ) -> Result<Option<(Order, Option<Vec<OrderLine>>)>> {
        if conn.backend_name() == "PostgreSQL" {
            let rows = self.joined(lines).fetch_all(conn).await?;
            return self.read(&rows, lines);
        }
        let rows =
            sqlx::query_as::<_, TransitionRow>(sqlx::AssertSqlSafe(transition_update(self.from)))
                .bind(status_name(self.to))
                .bind(self.now)
                .bind(self.changes.reservation_id.map(str::to_string))
                .bind(self.changes.payment_id.map(str::to_string))
                .bind(self.changes.cancel_reason.map(str::to_string))
                .bind(self.id.to_string())
                .fetch_all(&mut *conn)
                .await?;
        let Some(first) = rows.into_iter().next() else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO order_status_history (order_id, seq, status, reason, event_id, at_us) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(self.id)
        .bind(first.history_seq)
        .bind(status_name(self.to))
        .bind(self.reason)
        .bind(self.event_id)
        .bind(self.now)
        .execute(&mut *conn)
        .await?;
        Ok(Some((Order::from(first.order), None)))
    }

    /// Runs it in `tx` (without the lines); on Postgres its one statement also records the
    /// consumer's handled event ([`Tx::fetch_recording`]), which makes it a one-statement step.
    async fn run_recording(&self, tx: &mut Tx) -> Result<Option<Order>> {
        if tx.backend_name() != "PostgreSQL" {
            return Ok(self.run(tx, false).await?.map(|(order, _)| order));
        }
        let rows = tx.fetch_recording(&self.joined(false)).await?;
        Ok(self.read(&rows, false)?.map(|(order, _)| order))
    }

    /// The order (and with `lines` its lines) from the rows of its Postgres statement.
    fn read(
        &self,
        rows: &[AnyRow],
        lines: bool,
    ) -> Result<Option<(Order, Option<Vec<OrderLine>>)>> {
        let rows = rows
            .iter()
            .map(TransitionRow::from_row)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let joined = lines.then(|| {
            rows.iter()
                .filter_map(|r| line_of(&r.order.currency_code, r))
                .collect()
        });
        Ok(rows
            .into_iter()
            .next()
            .map(|first| (Order::from(first.order), joined)))
    }
}

/// The line a joined transition's row carries, if any.
fn line_of(currency: &str, r: &TransitionRow) -> Option<OrderLine> {
    Some(line(
        currency,
        r.line_product_id.clone()?,
        r.line_sku.clone()?,
        r.line_name.clone()?,
        r.line_quantity?,
        r.line_unit_price_minor?,
        r.line_discount_minor?,
        r.line_refunded_quantity?,
    ))
}

/// Records the reservation id of order `id` without changing its status (it arrived after the
/// order became final, or again). `false` when there is no such order.
pub async fn set_reservation(
    conn: &mut AnyConnection,
    id: &str,
    reservation: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE orders SET reservation_id = CASE WHEN reservation_id = '' THEN $1 ELSE reservation_id END WHERE id = $2",
    )
    .bind(reservation)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An `orders` row ([`ORDER_COLUMNS`]).
#[derive(sqlx::FromRow)]
struct OrderRow {
    id: String,
    customer_id: String,
    idempotency_key: String,
    status: String,
    currency_code: String,
    subtotal_minor: i64,
    discount_minor: i64,
    shipping_minor: i64,
    total_minor: i64,
    shipping_address: String,
    promo_code: String,
    card_token: String,
    card_last4: String,
    payment_id: String,
    reservation_id: String,
    cancel_reason: String,
    created_at_us: i64,
    updated_at_us: i64,
    applied_campaign_ids: String,
    discounts_unavailable: i64,
    store_id: String,
    refunded_minor: i64,
}

impl From<OrderRow> for Order {
    fn from(r: OrderRow) -> Self {
        let shipping_address = STANDARD
            .decode(&r.shipping_address)
            .ok()
            .and_then(|b| PostalAddress::decode(b.as_slice()).ok());
        let currency = r.currency_code;
        Order {
            id: r.id,
            customer_id: r.customer_id,
            idempotency_key: r.idempotency_key,
            status: status_of(&r.status) as i32,
            lines: Vec::new(),
            subtotal: Some(money(&currency, r.subtotal_minor)),
            discount_total: Some(money(&currency, r.discount_minor)),
            shipping_total: Some(money(&currency, r.shipping_minor)),
            total: Some(money(&currency, r.total_minor)),
            shipping_address,
            promo_code: r.promo_code,
            applied_campaign_ids: r
                .applied_campaign_ids
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            discounts_unavailable: r.discounts_unavailable != 0,
            store_id: r.store_id,
            card_token: r.card_token,
            card_last4: r.card_last4,
            payment_id: r.payment_id,
            reservation_id: r.reservation_id,
            cancel_reason: r.cancel_reason,
            status_history: Vec::new(),
            create_time: Some(ts(r.created_at_us)),
            update_time: Some(ts(r.updated_at_us)),
            refunds: Vec::new(),
            refunded_total: Some(money(&currency, r.refunded_minor)),
        }
    }
}

const ORDER_COLUMNS: &str = "id, customer_id, idempotency_key, status, currency_code, subtotal_minor, \
    discount_minor, shipping_minor, total_minor, shipping_address, promo_code, card_token, card_last4, \
    payment_id, reservation_id, cancel_reason, created_at_us, updated_at_us, applied_campaign_ids, \
    discounts_unavailable, store_id, refunded_minor";

/// Fills the lines of `order` (one statement).
pub async fn fill_lines(conn: &mut AnyConnection, order: &mut Order) -> Result<()> {
    let currency = order
        .total
        .as_ref()
        .map(|m| m.currency_code.clone())
        .unwrap_or_default();
    let rows: Vec<(String, String, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT product_id, sku, name, quantity, unit_price_minor, discount_minor, refunded_quantity FROM order_lines WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(&order.id)
    .fetch_all(&mut *conn)
    .await?;
    for (product_id, sku, name, quantity, unit, discount, refunded) in rows {
        order.lines.push(line(
            &currency, product_id, sku, name, quantity, unit, discount, refunded,
        ));
    }
    Ok(())
}

/// Fills the lines, history and refunds of `order` (refunds only of orders that can have any:
/// CONFIRMED or REFUNDED).
async fn details(conn: &mut AnyConnection, order: &mut Order) -> Result<()> {
    fill_lines(conn, order).await?;
    let status = OrderStatus::try_from(order.status).unwrap_or_default();
    if matches!(status, OrderStatus::Confirmed | OrderStatus::Refunded) {
        let currency = order
            .total
            .as_ref()
            .map(|m| m.currency_code.clone())
            .unwrap_or_default();
        order.refunds = crate::refund_store::of_order(conn, &order.id, &currency).await?;
    }
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT status, reason, event_id, at_us FROM order_status_history WHERE order_id = $1 ORDER BY seq",
    )
    .bind(&order.id)
    .fetch_all(&mut *conn)
    .await?;
    for (status, reason, event_id, at_us) in rows {
        order.status_history.push(StatusChange {
            status: status_of(&status) as i32,
            time: Some(ts(at_us)),
            reason,
            event_id,
        });
    }
    Ok(())
}

/// Locks order `id` until the transaction ends and returns it (without lines, history and
/// refunds): a no-op update, so concurrent refunds of one order serialize on its row (on SQLite
/// `BEGIN IMMEDIATE` serializes anyway). The lock and the read are one statement.
pub async fn lock(conn: &mut AnyConnection, id: &str) -> Result<Option<Order>> {
    let sql = format!(
        "UPDATE orders SET updated_at_us = updated_at_us WHERE id = $1 RETURNING {ORDER_COLUMNS}"
    );
    Ok(sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .map(Order::from))
}

/// Order `id` with its lines and history.
pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<Order>> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1");
    let Some(row) = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let mut order = Order::from(row);
    details(conn, &mut order).await?;
    Ok(Some(order))
}

/// Filters and position of a listing (newest first).
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// Only this customer's orders.
    pub customer_id: Option<String>,
    /// Only this status.
    pub status: Option<OrderStatus>,
    /// Only this store's orders ("" = online orders).
    pub store_id: Option<String>,
    /// Only online orders and those of these stores (a staff member's scope).
    pub stores: Option<Vec<String>>,
    /// Strictly older than this (created_at_us, id).
    pub before: Option<(i64, String)>,
}

/// Up to `limit` orders, newest first, with lines and history.
pub async fn list(conn: &mut AnyConnection, f: &ListFilter, limit: i64) -> Result<Vec<Order>> {
    let mut sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE 1 = 1");
    let mut n = 0;
    let mut p = || {
        n += 1;
        format!("${n}")
    };
    if f.customer_id.is_some() {
        sql += &format!(" AND customer_id = {}", p());
    }
    if f.status.is_some() {
        sql += &format!(" AND status = {}", p());
    }
    if f.store_id.is_some() {
        sql += &format!(" AND store_id = {}", p());
    }
    if let Some(stores) = &f.stores {
        // Online orders (no store) and the stores of the scope, as parameters.
        let mut listed = vec!["''".to_string()];
        listed.extend(stores.iter().map(|_| p()));
        sql += &format!(" AND store_id IN ({})", listed.join(", "));
    }
    if f.before.is_some() {
        let (a, b) = (p(), p());
        sql += &format!(" AND (created_at_us < {a} OR (created_at_us = {a} AND id < {b}))");
    }
    sql += &format!(" ORDER BY created_at_us DESC, id DESC LIMIT {}", p());
    let mut q = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(sql));
    if let Some(c) = &f.customer_id {
        q = q.bind(c.clone());
    }
    if let Some(s) = f.status {
        q = q.bind(status_name(s));
    }
    if let Some(store) = &f.store_id {
        q = q.bind(store.clone());
    }
    for store in f.stores.iter().flatten() {
        q = q.bind(store.clone());
    }
    if let Some((at, id)) = &f.before {
        q = q.bind(*at).bind(id.clone());
    }
    let rows = q.bind(limit).fetch_all(&mut *conn).await?;
    let mut orders: Vec<Order> = rows.into_iter().map(Order::from).collect();
    for o in &mut orders {
        details(conn, o).await?;
    }
    Ok(orders)
}

/// The creation time (Unix µs) of order `id`, for page tokens.
pub fn created_us(order: &Order) -> i64 {
    order
        .create_time
        .as_ref()
        .and_then(|t| time::from_timestamp("create_time", t).ok())
        .unwrap_or(0)
}

/// When the open orders were created, as the sweeper samples them on each scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOrders {
    /// `created_at_us` of the oldest open order; `None` when none is open.
    pub oldest_us: Option<i64>,
    /// `created_at_us` of the oldest open order once the `stragglers` oldest are set aside
    /// (the head of the saga's backlog); `None` when no more than that many are open.
    pub backlog_head_us: Option<i64>,
}

/// [`OpenOrders`] in one statement: the oldest by one probe of `orders_open_by_age` per open
/// status, the backlog's head by the open orders sorted by age.
pub async fn open_orders(conn: &mut AnyConnection, stragglers: i64) -> Result<OpenOrders> {
    let per_status = OPEN
        .iter()
        .map(|s| {
            format!(
                "SELECT MIN(created_at_us) AS m FROM orders WHERE status = '{}'",
                status_name(*s)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let sql = format!(
        "SELECT (SELECT MIN(m) FROM ({per_status}) AS open_orders) AS oldest, \
         (SELECT created_at_us FROM orders WHERE status IN ({}) \
          ORDER BY created_at_us LIMIT 1 OFFSET $1) AS head",
        in_list(OPEN)
    );
    let (oldest_us, backlog_head_us): (Option<i64>, Option<i64>) =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(stragglers)
            .fetch_one(&mut *conn)
            .await?;
    Ok(OpenOrders {
        oldest_us,
        backlog_head_us,
    })
}

/// Ids of up to `limit` open orders created at or before `cutoff_us`, oldest first.
pub async fn overdue(conn: &mut AnyConnection, cutoff_us: i64, limit: i64) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT id FROM orders WHERE status IN ({}) AND created_at_us <= $1 ORDER BY created_at_us LIMIT $2",
        in_list(OPEN)
    );
    let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(cutoff_us)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
