//! The catalog's SQL (portable: Postgres and SQLite): products and categories.

use std::collections::HashMap;

use mesh_contracts::common::v1::Money;
use mesh_contracts::product::v1::{Category, Product};
use mesh_runtime::domain::time;
use mesh_runtime::outbox::Tx;
use sqlx::AnyPool;

use crate::error::ProductError;

/// Where the next page of a name-ordered list starts: after the row with this name and id.
pub type After = (String, String);

const COLUMNS: &str = "id, sku, name, description, category_id, currency, amount_minor, active, image_url, attributes, created_us, updated_us";

/// A `products` row.
#[derive(sqlx::FromRow)]
struct ProductRow {
    id: String,
    sku: String,
    name: String,
    description: String,
    category_id: Option<String>,
    currency: String,
    amount_minor: i64,
    active: i64,
    image_url: String,
    attributes: String,
    created_us: i64,
    updated_us: i64,
}

impl From<ProductRow> for Product {
    fn from(r: ProductRow) -> Self {
        Product {
            id: r.id,
            sku: r.sku,
            name: r.name,
            description: r.description,
            category_id: r.category_id.unwrap_or_default(),
            price: Some(Money {
                currency_code: r.currency,
                amount_minor: r.amount_minor,
            }),
            active: r.active != 0,
            image_url: r.image_url,
            attributes: serde_json::from_str::<HashMap<String, String>>(&r.attributes)
                .unwrap_or_default(),
            create_time: Some(time::to_timestamp(r.created_us)),
            update_time: Some(time::to_timestamp(r.updated_us)),
        }
    }
}

/// The product `id`.
pub async fn get(pool: &AnyPool, id: &str) -> Result<Option<Product>, ProductError> {
    let row: Option<ProductRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM products WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Product::from))
}

/// The product `id` in `tx`.
pub async fn get_in(tx: &mut Tx, id: &str) -> Result<Option<Product>, ProductError> {
    let row: Option<ProductRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM products WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(Product::from))
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
    let mut q = sqlx::query_as::<_, ProductRow>(sqlx::AssertSqlSafe(sql));
    if let Some(c) = &filter.category_id {
        q = q.bind(c.clone());
    }
    if let Some(text) = &filter.query {
        q = q.bind(like_pattern(text));
    }
    if let Some((name, id)) = after {
        q = q.bind(name.clone()).bind(id.clone());
    }
    let rows = q.bind(limit).fetch_all(pool).await?;
    Ok(rows.into_iter().map(Product::from).collect())
}

/// A `categories` row.
#[derive(sqlx::FromRow)]
struct CategoryRow {
    id: String,
    name: String,
    parent_id: Option<String>,
    created_us: i64,
}

impl From<CategoryRow> for Category {
    fn from(r: CategoryRow) -> Self {
        Category {
            id: r.id,
            name: r.name,
            parent_id: r.parent_id.unwrap_or_default(),
            create_time: Some(time::to_timestamp(r.created_us)),
        }
    }
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
    let mut q = sqlx::query_as::<_, CategoryRow>(sqlx::AssertSqlSafe(sql));
    if let Some(p) = parent {
        q = q.bind(p.to_string());
    }
    if let Some((name, id)) = after {
        q = q.bind(name.clone()).bind(id.clone());
    }
    let rows = q.bind(limit).fetch_all(pool).await?;
    Ok(rows.into_iter().map(Category::from).collect())
}
