//! The catalog's SQL (portable: Postgres and SQLite): products and categories.

use std::collections::HashMap;

use mesh_contracts::common::v1::Money;
use mesh_contracts::product::v1::{Category, Product};
use mesh_runtime::outbox::Tx;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row as _};

use crate::error::ProductError;
use crate::page_token::After;

const COLUMNS: &str = "id, sku, name, description, category_id, currency, amount_minor, active, image_url, attributes, created_us, updated_us";

fn ts(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn product(row: &AnyRow) -> Result<Product, sqlx::Error> {
    let attributes: String = row.try_get("attributes")?;
    let active: i64 = row.try_get("active")?;
    Ok(Product {
        id: row.try_get("id")?,
        sku: row.try_get("sku")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        category_id: row
            .try_get::<Option<String>, _>("category_id")?
            .unwrap_or_default(),
        price: Some(Money {
            currency_code: row.try_get("currency")?,
            amount_minor: row.try_get("amount_minor")?,
        }),
        active: active != 0,
        image_url: row.try_get("image_url")?,
        attributes: serde_json::from_str::<HashMap<String, String>>(&attributes)
            .unwrap_or_default(),
        create_time: Some(ts(row.try_get("created_us")?)),
        update_time: Some(ts(row.try_get("updated_us")?)),
    })
}

/// The product `id`.
pub async fn get(pool: &AnyPool, id: &str) -> Result<Option<Product>, ProductError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM products WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(product).transpose()?)
}

/// The product `id` in `tx`.
pub async fn get_in(tx: &mut Tx, id: &str) -> Result<Option<Product>, ProductError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM products WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.as_ref().map(product).transpose()?)
}

/// Whether another product than `except` has `sku`.
pub async fn sku_taken(tx: &mut Tx, sku: &str, except: &str) -> Result<bool, ProductError> {
    let row = sqlx::query("SELECT id FROM products WHERE sku = $1 AND id <> $2")
        .bind(sku)
        .bind(except)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

/// Whether category `id` exists.
pub async fn category_exists(tx: &mut Tx, id: &str) -> Result<bool, ProductError> {
    let row = sqlx::query("SELECT id FROM categories WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

/// Inserts or replaces `p` (all columns).
pub async fn upsert(
    tx: &mut Tx,
    p: &Product,
    created_us: i64,
    updated_us: i64,
    insert: bool,
) -> Result<(), ProductError> {
    let price = p.price.clone().unwrap_or_default();
    let sql = if insert {
        "INSERT INTO products (id, sku, name, description, category_id, currency, amount_minor, active, image_url, attributes, created_us, updated_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    } else {
        "UPDATE products SET sku = $2, name = $3, description = $4, category_id = $5, currency = $6, amount_minor = $7, active = $8, image_url = $9, attributes = $10, created_us = $11, updated_us = $12 WHERE id = $1"
    };
    let category = (!p.category_id.is_empty()).then(|| p.category_id.clone());
    sqlx::query(sql)
        .bind(&p.id)
        .bind(&p.sku)
        .bind(&p.name)
        .bind(&p.description)
        .bind(category)
        .bind(&price.currency_code)
        .bind(price.amount_minor)
        .bind(i64::from(p.active))
        .bind(&p.image_url)
        .bind(serde_json::to_string(&p.attributes).unwrap_or_else(|_| "{}".into()))
        .bind(created_us)
        .bind(updated_us)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Deletes product `id`; `false` if there was none.
pub async fn delete(tx: &mut Tx, id: &str) -> Result<bool, ProductError> {
    let done = sqlx::query("DELETE FROM products WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Filters of a product listing.
#[derive(Debug, Default)]
pub struct Filter {
    /// Only this category.
    pub category_id: Option<String>,
    /// Case-insensitive substring of name, sku or description.
    pub query: Option<String>,
    /// Include inactive products.
    pub include_inactive: bool,
}

/// `%` and `_` escaped for LIKE ... ESCAPE '\'.
fn like_pattern(q: &str) -> String {
    let escaped = q
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// Up to `limit` products after `after`, ordered by name then id.
pub async fn list(
    pool: &AnyPool,
    filter: &Filter,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<Product>, ProductError> {
    let mut sql = format!("SELECT {COLUMNS} FROM products WHERE 1 = 1");
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if filter.category_id.is_some() {
        sql += &format!(" AND category_id = {}", next());
    }
    if filter.query.is_some() {
        let p = next();
        sql += &format!(
            " AND (LOWER(name) LIKE {p} ESCAPE '\\' OR LOWER(sku) LIKE {p} ESCAPE '\\' OR LOWER(description) LIKE {p} ESCAPE '\\')"
        );
    }
    if !filter.include_inactive {
        sql += " AND active = 1";
    }
    if after.is_some() {
        let (a, b) = (next(), next());
        sql += &format!(" AND (name > {a} OR (name = {a} AND id > {b}))");
    }
    sql += &format!(" ORDER BY name, id LIMIT {}", next());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    if let Some(c) = &filter.category_id {
        q = q.bind(c.clone());
    }
    if let Some(text) = &filter.query {
        q = q.bind(like_pattern(text));
    }
    if let Some(a) = after {
        q = q.bind(a.name.clone()).bind(a.id.clone());
    }
    let rows = q.bind(limit).fetch_all(pool).await?;
    Ok(rows.iter().map(product).collect::<Result<_, _>>()?)
}

fn category(row: &AnyRow) -> Result<Category, sqlx::Error> {
    Ok(Category {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        parent_id: row
            .try_get::<Option<String>, _>("parent_id")?
            .unwrap_or_default(),
        create_time: Some(ts(row.try_get("created_us")?)),
    })
}

/// Inserts a category.
pub async fn insert_category(
    tx: &mut Tx,
    c: &Category,
    created_us: i64,
) -> Result<(), ProductError> {
    let parent = (!c.parent_id.is_empty()).then(|| c.parent_id.clone());
    sqlx::query("INSERT INTO categories (id, name, parent_id, created_us) VALUES ($1, $2, $3, $4)")
        .bind(&c.id)
        .bind(&c.name)
        .bind(parent)
        .bind(created_us)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Up to `limit` categories after `after` (optionally children of `parent`), by name then id.
pub async fn list_categories(
    pool: &AnyPool,
    parent: Option<&str>,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<Category>, ProductError> {
    let mut sql = "SELECT id, name, parent_id, created_us FROM categories WHERE 1 = 1".to_string();
    let mut n = 0;
    if parent.is_some() {
        n += 1;
        sql += &format!(" AND parent_id = ${n}");
    }
    if after.is_some() {
        sql += &format!(
            " AND (name > ${a} OR (name = ${a} AND id > ${b}))",
            a = n + 1,
            b = n + 2
        );
        n += 2;
    }
    sql += &format!(" ORDER BY name, id LIMIT ${}", n + 1);
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    if let Some(p) = parent {
        q = q.bind(p.to_string());
    }
    if let Some(a) = after {
        q = q.bind(a.name.clone()).bind(a.id.clone());
    }
    let rows = q.bind(limit).fetch_all(pool).await?;
    Ok(rows.iter().map(category).collect::<Result<_, _>>()?)
}
