//! How each event changes the read models: the one place that folds events into rows, used by
//! the live consumer (into the active generation) and by a rebuild (into the shadow one), so
//! both give the same rows for the same events in the same order.
//!
//! - **sales by shop and day** (`report_sales_day`, `report_sale_ref`): `order.confirmed` counts
//!   a web order for store `online`, `vend.completed` a vend for the machine's store; gross is
//!   list price times units, discounts the order's discounts, refunds come from
//!   `payment.refunded` on the refund's day for the store of the sale it refunds (a refund that
//!   arrives before its sale, on another stream, counts online until the sale moves it);
//! - **top products** (`report_product_day`, `report_product_name`): units and line totals after
//!   discounts per product, store and day; names from `product.created` / `product.updated`;
//! - **stock** (`report_stock`, `report_stock_out_day`): on hand and reserved per location and
//!   product (`inventory.adjusted` carries the levels after the change; reserved, committed,
//!   released and expired lines move them), and the units that left the shelf per day
//!   (committed lines), for days of cover.
//!
//! Money is minor units in `i64`; a sum that would overflow refuses the event (dead letter)
//! rather than wrap.

use mesh_contracts::common::v1::Money;
use mesh_contracts::events::v1::{
    Envelope, InventoryAdjusted, InventoryCommitted, InventoryReleased,
    InventoryReservationExpired, InventoryReserved, OrderConfirmed, PaymentRefunded,
    ProductCreated, ProductUpdated, ReservedLine, VendCompleted,
};
use mesh_runtime::payload::{DecodePayload as _, PayloadError};
use sqlx::AnyConnection;
use sqlx::Row as _;

use crate::dates;

/// The store of web orders.
pub const ONLINE_STORE: &str = "online";

/// The generation each read model is written into; `None` leaves that model alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gens {
    /// Sales by shop and day.
    pub sales: Option<i64>,
    /// Top products.
    pub top: Option<i64>,
    /// Stock summary.
    pub stock: Option<i64>,
}

impl Gens {
    /// Every model in generation `gen`.
    pub fn all(gen_: i64) -> Self {
        Self {
            sales: Some(gen_),
            top: Some(gen_),
            stock: Some(gen_),
        }
    }
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event is malformed or its numbers do not fit: applying it again will not help.
    #[error("{0}")]
    Permanent(String),
    /// The database failed: try again.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

type Result<T> = std::result::Result<T, ApplyError>;

impl From<PayloadError> for ApplyError {
    fn from(e: PayloadError) -> Self {
        Self::Permanent(e.to_string())
    }
}

fn overflow(field: &str) -> ApplyError {
    ApplyError::Permanent(format!("{field}: amount out of range"))
}

/// One sale's contribution to a store's day.
#[derive(Debug, Default)]
struct SalesDelta<'a> {
    store: &'a str,
    currency: &'a str,
    orders: i64,
    vends: i64,
    units: i64,
    gross: i64,
    discount: i64,
    refund: i64,
}

/// Applies `event` (at its time `time_us`) to the models of `gens`. Types no model uses are a
/// no-op.
pub async fn apply(
    conn: &mut AnyConnection,
    gens: Gens,
    event: &Envelope,
    time_us: i64,
) -> Result<()> {
    let day = dates::day_of(time_us);
    let event_type = event.r#type.as_str();
    match event_type {
        "order.confirmed" => order_confirmed(conn, gens, &day, event.decode_payload()?).await,
        "vend.completed" => vend_completed(conn, gens, &day, event.decode_payload()?).await,
        "payment.refunded" => {
            let Some(g) = gens.sales else { return Ok(()) };
            refunded(conn, g, &day, event.decode_payload()?).await
        }
        "product.created" | "product.updated" => {
            let Some(g) = gens.top else { return Ok(()) };
            let product = if event_type == "product.created" {
                event.decode_payload::<ProductCreated>()?.product
            } else {
                event.decode_payload::<ProductUpdated>()?.product
            };
            match product {
                Some(p) if !p.id.is_empty() => product_name(conn, g, &p.id, &p.name).await,
                _ => Err(ApplyError::Permanent(format!(
                    "{event_type} product.id: required"
                ))),
            }
        }
        "inventory.adjusted" => {
            let Some(g) = gens.stock else { return Ok(()) };
            let e: InventoryAdjusted = event.decode_payload()?;
            sqlx::query(
                "INSERT INTO report_stock (gen, location_id, product_id, on_hand, reserved) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (gen, location_id, product_id) \
                 DO UPDATE SET on_hand = excluded.on_hand, reserved = excluded.reserved",
            )
            .bind(g)
            .bind(&e.location_id)
            .bind(&e.product_id)
            .bind(e.on_hand)
            .bind((e.on_hand - e.available).max(0))
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
        "inventory.reserved" => {
            let Some(g) = gens.stock else { return Ok(()) };
            let e: InventoryReserved = event.decode_payload()?;
            stock_lines(conn, g, &e.lines, 0, 1, None).await
        }
        "inventory.committed" => {
            let Some(g) = gens.stock else { return Ok(()) };
            let e: InventoryCommitted = event.decode_payload()?;
            stock_lines(conn, g, &e.lines, -1, -1, Some(&day)).await
        }
        "inventory.released" => {
            let Some(g) = gens.stock else { return Ok(()) };
            let e: InventoryReleased = event.decode_payload()?;
            stock_lines(conn, g, &e.lines, 0, -1, None).await
        }
        "inventory.reservation_expired" => {
            let Some(g) = gens.stock else { return Ok(()) };
            let e: InventoryReservationExpired = event.decode_payload()?;
            stock_lines(conn, g, &e.lines, 0, -1, None).await
        }
        _ => Ok(()),
    }
}

fn amount(m: Option<&Money>) -> i64 {
    m.map_or(0, |m| m.amount_minor)
}

async fn order_confirmed(
    conn: &mut AnyConnection,
    gens: Gens,
    day: &str,
    e: OrderConfirmed,
) -> Result<()> {
    let currency = e
        .total
        .as_ref()
        .map(|m| m.currency_code.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| {
            e.lines
                .iter()
                .find_map(|l| l.unit_price.as_ref().map(|m| m.currency_code.clone()))
        })
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            ApplyError::Permanent("order.confirmed total.currency_code: required".into())
        })?;
    let (mut units, mut gross, mut line_discounts) = (0i64, 0i64, 0i64);
    for (i, l) in e.lines.iter().enumerate() {
        let price = amount(l.unit_price.as_ref());
        let list = price
            .checked_mul(l.quantity)
            .ok_or_else(|| overflow(&format!("order.confirmed lines[{i}].unit_price")))?;
        units = units
            .checked_add(l.quantity)
            .ok_or_else(|| overflow(&format!("order.confirmed lines[{i}].quantity")))?;
        gross = gross
            .checked_add(list)
            .ok_or_else(|| overflow("order.confirmed lines"))?;
        line_discounts = line_discounts
            .checked_add(amount(l.discount.as_ref()))
            .ok_or_else(|| overflow("order.confirmed lines"))?;
    }
    let discount = e
        .discount_total
        .as_ref()
        .map_or(line_discounts, |m| m.amount_minor);
    if let Some(g) = gens.sales {
        let delta = SalesDelta {
            store: ONLINE_STORE,
            currency: &currency,
            orders: 1,
            units,
            gross,
            discount,
            ..SalesDelta::default()
        };
        add_sales(conn, g, day, &delta).await?;
        sale_ref(conn, g, &e.order_id, ONLINE_STORE).await?;
    }
    if let Some(g) = gens.top {
        for l in &e.lines {
            let revenue = match &l.total {
                Some(t) => t.amount_minor,
                None => {
                    amount(l.unit_price.as_ref()).saturating_mul(l.quantity)
                        - amount(l.discount.as_ref())
                }
            };
            add_product(
                conn,
                g,
                day,
                ONLINE_STORE,
                &l.product_id,
                &currency,
                l.quantity,
                revenue,
            )
            .await?;
        }
    }
    Ok(())
}

async fn vend_completed(
    conn: &mut AnyConnection,
    gens: Gens,
    day: &str,
    e: VendCompleted,
) -> Result<()> {
    let price = e.price.unwrap_or_default();
    if price.currency_code.is_empty() {
        return Err(ApplyError::Permanent(
            "vend.completed price.currency_code: required".into(),
        ));
    }
    if e.store_id.is_empty() {
        return Err(ApplyError::Permanent(
            "vend.completed store_id: required".into(),
        ));
    }
    if let Some(g) = gens.sales {
        let delta = SalesDelta {
            store: &e.store_id,
            currency: &price.currency_code,
            vends: 1,
            units: 1,
            gross: price.amount_minor,
            ..SalesDelta::default()
        };
        add_sales(conn, g, day, &delta).await?;
        sale_ref(conn, g, &e.vend_id, &e.store_id).await?;
    }
    if let Some(g) = gens.top {
        add_product(
            conn,
            g,
            day,
            &e.store_id,
            &e.product_id,
            &price.currency_code,
            1,
            price.amount_minor,
        )
        .await?;
    }
    Ok(())
}

async fn refunded(conn: &mut AnyConnection, g: i64, day: &str, e: PaymentRefunded) -> Result<()> {
    let m = e.amount.unwrap_or_default();
    if m.currency_code.is_empty() {
        return Err(ApplyError::Permanent(
            "payment.refunded amount.currency_code: required".into(),
        ));
    }
    let store: Option<String> = sqlx::query_scalar(
        "SELECT store_id FROM report_sale_ref WHERE gen = $1 AND reference_id = $2",
    )
    .bind(g)
    .bind(&e.order_id)
    .fetch_optional(&mut *conn)
    .await?;
    let store = match store {
        Some(store) => store,
        None => {
            // The sale is not known yet (its stream is behind): count the refund online and
            // remember it, so the sale moves it to its store when it arrives.
            sqlx::query(
                "INSERT INTO report_refund_unplaced (gen, reference_id, day, currency, \
                 amount_minor) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (gen, reference_id, day, currency) DO UPDATE SET \
                 amount_minor = report_refund_unplaced.amount_minor + excluded.amount_minor",
            )
            .bind(g)
            .bind(&e.order_id)
            .bind(day)
            .bind(&m.currency_code)
            .bind(m.amount_minor)
            .execute(&mut *conn)
            .await?;
            ONLINE_STORE.to_string()
        }
    };
    let delta = SalesDelta {
        store: &store,
        currency: &m.currency_code,
        refund: m.amount_minor,
        ..SalesDelta::default()
    };
    add_sales(conn, g, day, &delta).await
}

async fn add_sales(conn: &mut AnyConnection, g: i64, day: &str, d: &SalesDelta<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO report_sales_day (gen, day, store_id, currency, order_count, vend_count, \
         units_sold, gross_minor, discount_minor, refund_minor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (gen, day, store_id, currency) DO UPDATE SET \
         order_count = report_sales_day.order_count + excluded.order_count, \
         vend_count = report_sales_day.vend_count + excluded.vend_count, \
         units_sold = report_sales_day.units_sold + excluded.units_sold, \
         gross_minor = report_sales_day.gross_minor + excluded.gross_minor, \
         discount_minor = report_sales_day.discount_minor + excluded.discount_minor, \
         refund_minor = report_sales_day.refund_minor + excluded.refund_minor",
    )
    .bind(g)
    .bind(day)
    .bind(d.store)
    .bind(d.currency)
    .bind(d.orders)
    .bind(d.vends)
    .bind(d.units)
    .bind(d.gross)
    .bind(d.discount)
    .bind(d.refund)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Remembers the store of sale `reference`, and moves refunds of it that arrived first from the
/// online store to that store.
async fn sale_ref(conn: &mut AnyConnection, g: i64, reference: &str, store: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO report_sale_ref (gen, reference_id, store_id) VALUES ($1, $2, $3) \
         ON CONFLICT (gen, reference_id) DO NOTHING",
    )
    .bind(g)
    .bind(reference)
    .bind(store)
    .execute(&mut *conn)
    .await?;
    let early = sqlx::query(
        "DELETE FROM report_refund_unplaced WHERE gen = $1 AND reference_id = $2 \
         RETURNING day, currency, amount_minor",
    )
    .bind(g)
    .bind(reference)
    .fetch_all(&mut *conn)
    .await?;
    if store == ONLINE_STORE {
        return Ok(());
    }
    for row in &early {
        let (day, currency, amount): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        for (s, refund) in [(ONLINE_STORE, -amount), (store, amount)] {
            let delta = SalesDelta {
                store: s,
                currency: &currency,
                refund,
                ..SalesDelta::default()
            };
            add_sales(conn, g, &day, &delta).await?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn add_product(
    conn: &mut AnyConnection,
    g: i64,
    day: &str,
    store: &str,
    product: &str,
    currency: &str,
    units: i64,
    revenue: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO report_product_day (gen, day, store_id, product_id, currency, units, \
         revenue_minor) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (gen, day, store_id, product_id, currency) DO UPDATE SET \
         units = report_product_day.units + excluded.units, \
         revenue_minor = report_product_day.revenue_minor + excluded.revenue_minor",
    )
    .bind(g)
    .bind(day)
    .bind(store)
    .bind(product)
    .bind(currency)
    .bind(units)
    .bind(revenue)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn product_name(conn: &mut AnyConnection, g: i64, id: &str, name: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO report_product_name (gen, product_id, name) VALUES ($1, $2, $3) \
         ON CONFLICT (gen, product_id) DO UPDATE SET name = excluded.name",
    )
    .bind(g)
    .bind(id)
    .bind(name)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves each line's units: `on_hand_sign` / `reserved_sign` times the quantity (reserved never
/// below zero); with `out_day`, also counts the units as having left the shelf that day.
async fn stock_lines(
    conn: &mut AnyConnection,
    g: i64,
    lines: &[ReservedLine],
    on_hand_sign: i64,
    reserved_sign: i64,
    out_day: Option<&str>,
) -> Result<()> {
    for l in lines {
        let q = l.quantity.max(0);
        sqlx::query(
            "INSERT INTO report_stock (gen, location_id, product_id, on_hand, reserved) \
             VALUES ($1, $2, $3, $4, $6) ON CONFLICT (gen, location_id, product_id) DO UPDATE SET \
             on_hand = report_stock.on_hand + excluded.on_hand, \
             reserved = CASE WHEN report_stock.reserved + $5 > 0 \
                        THEN report_stock.reserved + $5 ELSE 0 END",
        )
        .bind(g)
        .bind(&l.location_id)
        .bind(&l.product_id)
        .bind(on_hand_sign * q)
        .bind(reserved_sign * q)
        .bind((reserved_sign * q).max(0))
        .execute(&mut *conn)
        .await?;
        if let Some(day) = out_day {
            sqlx::query(
                "INSERT INTO report_stock_out_day (gen, location_id, product_id, day, units) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (gen, location_id, product_id, day) \
                 DO UPDATE SET units = report_stock_out_day.units + excluded.units",
            )
            .bind(g)
            .bind(&l.location_id)
            .bind(&l.product_id)
            .bind(day)
            .bind(q)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}
