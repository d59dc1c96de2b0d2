//! The read side: each query reads the active generation in the statement that reads its rows
//! (`gen = (SELECT active_gen ...)`), so a rebuild's swap never shows a half of each. Sums are
//! cast to `BIGINT` (Postgres sums `BIGINT` into `NUMERIC`). Every value is a bound parameter;
//! the only text formatted into SQL is the fixed ranking clause.

use mesh_runtime::Database;
use sqlx::Row as _;

use crate::error::ReportError;

type Result<T> = std::result::Result<T, ReportError>;

/// One store's day in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalesRow {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Store id.
    pub store_id: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Confirmed web orders.
    pub orders: i64,
    /// Completed vends.
    pub vends: i64,
    /// Units sold.
    pub units: i64,
    /// Gross, discounts and refunds in minor units.
    pub gross: i64,
    /// Discounts.
    pub discount: i64,
    /// Refunds.
    pub refund: i64,
}

/// Sales per store and day between `start` and `end` (inclusive), of `store` or every store
/// (empty), ordered by day, store and currency.
pub async fn sales(db: &Database, store: &str, start: &str, end: &str) -> Result<Vec<SalesRow>> {
    let rows = sqlx::query(
        "SELECT day, store_id, currency, order_count, vend_count, units_sold, gross_minor, \
         discount_minor, refund_minor FROM report_sales_day WHERE gen = (SELECT active_gen FROM report_state WHERE id = 1) \
         AND day >= $1 AND day <= $2 AND ($3 = '' OR store_id = $3) \
         AND NOT (order_count = 0 AND vend_count = 0 AND units_sold = 0 AND gross_minor = 0 \
         AND discount_minor = 0 AND refund_minor = 0) \
         ORDER BY day, store_id, currency"
    )
    .bind(start)
    .bind(end)
    .bind(store)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .iter()
        .map(|r| SalesRow {
            day: r.get(0),
            store_id: r.get(1),
            currency: r.get(2),
            orders: r.get(3),
            vends: r.get(4),
            units: r.get(5),
            gross: r.get(6),
            discount: r.get(7),
            refund: r.get(8),
        })
        .collect())
}

/// One product's sales over a range, in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRow {
    /// Product id.
    pub product_id: String,
    /// Name as last seen ("" when never seen).
    pub name: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Units sold.
    pub units: i64,
    /// Revenue in minor units.
    pub revenue: i64,
}

/// The filter of a top-products query.
#[derive(Debug, Clone)]
pub struct TopFilter<'a> {
    /// First day.
    pub start: &'a str,
    /// Last day.
    pub end: &'a str,
    /// One store, or every store (empty).
    pub store: &'a str,
    /// Rank by revenue instead of units.
    pub by_revenue: bool,
}

/// Products ranked by units (or revenue), ties by the other measure then id; `limit` from
/// `offset`.
pub async fn top(
    db: &Database,
    f: &TopFilter<'_>,
    limit: i64,
    offset: i64,
) -> Result<Vec<ProductRow>> {
    let order = if f.by_revenue {
        "revenue DESC, units DESC"
    } else {
        "units DESC, revenue DESC"
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT d.product_id, d.currency, CAST(SUM(d.units) AS BIGINT) AS units, \
         CAST(SUM(d.revenue_minor) AS BIGINT) AS revenue, COALESCE((SELECT n.name FROM \
         report_product_name n WHERE n.gen = d.gen AND n.product_id = d.product_id), '') AS name \
         FROM report_product_day d WHERE d.gen = (SELECT active_gen FROM report_state WHERE id = 1) AND d.day >= $1 AND d.day <= $2 \
         AND ($3 = '' OR d.store_id = $3) GROUP BY d.gen, d.product_id, d.currency \
         ORDER BY {order}, d.product_id, d.currency LIMIT $4 OFFSET $5"
    )))
    .bind(f.start)
    .bind(f.end)
    .bind(f.store)
    .bind(limit)
    .bind(offset)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .iter()
        .map(|r| ProductRow {
            product_id: r.get(0),
            currency: r.get(1),
            units: r.get(2),
            revenue: r.get(3),
            name: r.get(4),
        })
        .collect())
}

/// One product's stock over the chosen locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockRow {
    /// Product id.
    pub product_id: String,
    /// Name as last seen.
    pub name: String,
    /// Units on hand.
    pub on_hand: i64,
    /// Units reserved.
    pub reserved: i64,
    /// Locations with units on hand.
    pub locations: i64,
    /// Units that left the shelf since `since` (inclusive).
    pub out_in_window: i64,
}

/// Stock per product at `location` (or summed over every location, empty), with the units that
/// left the shelf on or after day `since`; ordered by product id.
pub async fn stock(db: &Database, location: &str, since: &str) -> Result<Vec<StockRow>> {
    let rows = sqlx::query(
        "SELECT s.product_id, CAST(SUM(s.on_hand) AS BIGINT), CAST(SUM(s.reserved) AS BIGINT), \
         CAST(SUM(CASE WHEN s.on_hand > 0 THEN 1 ELSE 0 END) AS BIGINT), \
         COALESCE((SELECT n.name FROM report_product_name n WHERE n.gen = s.gen \
         AND n.product_id = s.product_id), ''), \
         CAST(COALESCE((SELECT SUM(o.units) FROM report_stock_out_day o WHERE o.gen = s.gen \
         AND o.product_id = s.product_id AND ($1 = '' OR o.location_id = $1) AND o.day >= $2), 0) \
         AS BIGINT) \
         FROM report_stock s WHERE s.gen = (SELECT active_gen FROM report_state WHERE id = 1) AND ($1 = '' OR s.location_id = $1) \
         GROUP BY s.gen, s.product_id ORDER BY s.product_id"
    )
    .bind(location)
    .bind(since)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .iter()
        .map(|r| StockRow {
            product_id: r.get(0),
            on_hand: r.get(1),
            reserved: r.get(2),
            locations: r.get(3),
            name: r.get(4),
            out_in_window: r.get(5),
        })
        .collect())
}

/// The newest event time applied (microseconds) and the number of events recorded.
pub async fn progress(db: &Database) -> Result<(Option<i64>, i64)> {
    let r = sqlx::query("SELECT newest_event_us, log_seq FROM report_state WHERE id = 1")
        .fetch_one(db.pool())
        .await?;
    Ok((r.get(0), r.get(1)))
}
