//! The campaign service's SQL (portable: Postgres and SQLite): campaigns and their codes,
//! the candidates of one cart, the product -> category map. Redemptions are in
//! [`crate::redemption`].

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mesh_contracts::campaign::v1::{Campaign, CampaignState};
use mesh_contracts::common::v1::Money;
use prost::Message as _;
use sqlx::AnyConnection;

use crate::error::CampaignError;
use crate::pricing::Candidate;
use mesh_runtime::domain::time;

type Result<T> = std::result::Result<T, CampaignError>;

const COLUMNS: &str = "id, spec, start_us, end_us, ended_us, max_redemptions, max_per_customer, \
     budget_currency, budget_minor, redemption_count, budget_used_minor, created_us, updated_us";

/// A stored campaign.
#[derive(Debug, Clone)]
pub struct Row {
    /// Id.
    pub id: String,
    /// The campaign as created (input fields only).
    pub spec: Campaign,
    /// Window start.
    pub start_us: i64,
    /// Window end (0 = open).
    pub end_us: i64,
    /// Ended at (0 = not ended).
    pub ended_us: i64,
    /// Redemptions held, reserved or consumed.
    pub redemption_count: i64,
    /// Budget used by them.
    pub budget_used: i64,
    /// Budget (0 = unlimited) and its currency.
    pub budget_minor: i64,
    /// The budget's currency.
    pub budget_currency: String,
    /// Created at.
    pub created_us: i64,
    /// Last change.
    pub updated_us: i64,
}

/// The derived state of a campaign at `now_us`.
pub fn state(start_us: i64, end_us: i64, ended_us: i64, now_us: i64) -> CampaignState {
    if ended_us > 0 || (end_us > 0 && end_us <= now_us) {
        CampaignState::Ended
    } else if start_us > now_us {
        CampaignState::Scheduled
    } else {
        CampaignState::Active
    }
}

/// A `campaigns` row as stored: the spec still encoded.
#[derive(sqlx::FromRow)]
struct Stored {
    id: String,
    spec: String,
    start_us: i64,
    end_us: i64,
    ended_us: i64,
    redemption_count: i64,
    budget_used_minor: i64,
    budget_minor: i64,
    budget_currency: String,
    created_us: i64,
    updated_us: i64,
}

impl Stored {
    /// The row with its spec decoded.
    fn decode(self) -> Result<Row> {
        let spec = STANDARD
            .decode(self.spec)
            .ok()
            .and_then(|b| Campaign::decode(b.as_slice()).ok())
            .ok_or_else(|| {
                CampaignError::Corrupt("a stored campaign's spec does not decode".into())
            })?;
        Ok(Row {
            id: self.id,
            spec,
            start_us: self.start_us,
            end_us: self.end_us,
            ended_us: self.ended_us,
            redemption_count: self.redemption_count,
            budget_used: self.budget_used_minor,
            budget_minor: self.budget_minor,
            budget_currency: self.budget_currency,
            created_us: self.created_us,
            updated_us: self.updated_us,
        })
    }
}

impl Row {
    /// The campaign as the API shows it at `now_us`.
    pub fn to_proto(&self, now_us: i64) -> Campaign {
        let mut c = self.spec.clone();
        c.id = self.id.clone();
        c.state = state(self.start_us, self.end_us, self.ended_us, now_us) as i32;
        c.redemption_count = self.redemption_count;
        c.budget_used = (self.budget_minor > 0).then(|| Money {
            currency_code: self.budget_currency.clone(),
            amount_minor: self.budget_used,
        });
        c.create_time = Some(time::to_timestamp(self.created_us));
        c.update_time = Some(time::to_timestamp(self.updated_us));
        c.ended_time = time::to_optional_timestamp(self.ended_us);
        c
    }

    /// The campaign as pricing needs it (`customer_count` filled in by the caller).
    pub fn candidate(&self) -> Candidate {
        Candidate {
            id: self.id.clone(),
            name: self.spec.name.clone(),
            start_us: self.start_us,
            end_us: self.end_us,
            ended_us: self.ended_us,
            priority: self.spec.priority,
            stackable: self.spec.stackable,
            codes: self.spec.promo_codes.clone(),
            rules: self.spec.rules.clone(),
            max_redemptions: self.spec.max_redemptions,
            redemption_count: self.redemption_count,
            max_per_customer: self.spec.max_redemptions_per_customer,
            customer_count: 0,
            budget: self.budget_minor,
            budget_currency: self.budget_currency.clone(),
            budget_used: self.budget_used,
        }
    }
}

/// Stores a new campaign `spec` (validated) under `id` with its codes; returns the row.
pub async fn insert(
    conn: &mut AnyConnection,
    id: &str,
    spec: &Campaign,
    now_us: i64,
) -> Result<Row> {
    let start_us = spec
        .start_time
        .as_ref()
        .map_or(Ok(0), |t| time::from_timestamp("campaign.start_time", t))?;
    let end_us = spec
        .end_time
        .as_ref()
        .map_or(Ok(0), |t| time::from_timestamp("campaign.end_time", t))?;
    let budget = spec.budget.clone().unwrap_or_default();
    let row: Stored = sqlx::query_as(dyn_sql!(
        "INSERT INTO campaigns (id, spec, automatic, start_us, end_us, max_redemptions, max_per_customer, \
         budget_currency, budget_minor, created_us, updated_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(STANDARD.encode(spec.encode_to_vec()))
    .bind(i64::from(spec.promo_codes.is_empty()))
    .bind(start_us)
    .bind(end_us)
    .bind(spec.max_redemptions)
    .bind(spec.max_redemptions_per_customer)
    .bind(budget.currency_code)
    .bind(budget.amount_minor)
    .bind(now_us)
    .fetch_one(&mut *conn)
    .await?;
    for code in &spec.promo_codes {
        sqlx::query("INSERT INTO campaign_codes (code, campaign_id) VALUES ($1, $2)")
            .bind(code)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    row.decode()
}

/// One campaign.
pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<Row>> {
    let row: Option<Stored> =
        sqlx::query_as(dyn_sql!("SELECT {COLUMNS} FROM campaigns WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(Stored::decode).transpose()
}

/// Ends `id` at `now_us` unless it ended already; `None` when it had (or does not exist).
pub async fn end(conn: &mut AnyConnection, id: &str, now_us: i64) -> Result<Option<Row>> {
    let row: Option<Stored> = sqlx::query_as(dyn_sql!(
        "UPDATE campaigns SET ended_us = $1, updated_us = $1 \
         WHERE id = $2 AND ended_us = 0 AND (end_us = 0 OR end_us > $1) RETURNING {COLUMNS}"
    ))
    .bind(now_us)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(Stored::decode).transpose()
}

/// A ListCampaigns page's filter.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this state (at `now_us`).
    pub state: Option<CampaignState>,
    /// Keyset: strictly older than this (created_us, id).
    pub before: Option<(i64, String)>,
    /// The time states are judged at.
    pub now_us: i64,
}

/// Campaigns newest first, at most `limit`.
pub async fn list(conn: &mut AnyConnection, f: &ListFilter, limit: i64) -> Result<Vec<Row>> {
    let state_sql = match f.state {
        None | Some(CampaignState::Unspecified) => "",
        Some(CampaignState::Scheduled) => " AND ended_us = 0 AND start_us > $1",
        Some(CampaignState::Active) => {
            " AND ended_us = 0 AND start_us <= $1 AND (end_us = 0 OR end_us > $1)"
        }
        Some(CampaignState::Ended) => " AND (ended_us > 0 OR (end_us > 0 AND end_us <= $1))",
    };
    let (at, id) = f.before.clone().unwrap_or((i64::MAX, String::new()));
    let keyset = if f.before.is_some() {
        " AND (created_us < $2 OR (created_us = $2 AND id < $3))"
    } else {
        " AND $2 = $2 AND $3 = $3"
    };
    let rows: Vec<Stored> = sqlx::query_as(dyn_sql!(
        "SELECT {COLUMNS} FROM campaigns WHERE 1 = 1{state_sql}{keyset} \
         ORDER BY created_us DESC, id DESC LIMIT $4"
    ))
    .bind(f.now_us)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter().map(Stored::decode).collect()
}

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The campaigns a cart at `at_us` may get: the automatic ones active then, and every one that
/// `codes` (upper case) name, whatever its state (so the answer can say why it did not apply).
/// With `customer_id`, each one's count of that customer's redemptions is filled in.
pub async fn candidates(
    conn: &mut AnyConnection,
    at_us: i64,
    codes: &[String],
    customer_id: &str,
) -> Result<Vec<Candidate>> {
    let by_code = if codes.is_empty() {
        String::new()
    } else {
        format!(
            " OR id IN (SELECT campaign_id FROM campaign_codes WHERE code IN ({}))",
            placeholders(2, codes.len())
        )
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM campaigns WHERE (automatic = 1 AND ended_us = 0 AND start_us <= $1 \
         AND (end_us = 0 OR end_us > $1)){by_code} ORDER BY id"
    );
    let mut query = sqlx::query_as::<_, Stored>(sqlx::AssertSqlSafe(sql)).bind(at_us);
    for c in codes {
        query = query.bind(c);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    let mut out: Vec<Candidate> = rows
        .into_iter()
        .map(|r| r.decode().map(|row| row.candidate()))
        .collect::<Result<_>>()?;
    if !customer_id.is_empty() && out.iter().any(|c| c.max_per_customer > 0) {
        let counts: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT campaign_id, used FROM customer_redemptions WHERE customer_id = $1",
        )
        .bind(customer_id)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        for c in &mut out {
            c.customer_count = counts.get(&c.id).copied().unwrap_or(0);
        }
    }
    Ok(out)
}

/// The categories campaign knows for `products` (from product's events).
pub async fn categories(
    conn: &mut AnyConnection,
    products: &[String],
) -> Result<BTreeMap<String, String>> {
    if products.is_empty() {
        return Ok(BTreeMap::new());
    }
    let sql = format!(
        "SELECT product_id, category_id FROM product_categories WHERE product_id IN ({})",
        placeholders(1, products.len())
    );
    let mut q = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql));
    for p in products {
        q = q.bind(p);
    }
    Ok(q.fetch_all(&mut *conn).await?.into_iter().collect())
}

/// Records `product`'s category (empty: none).
pub async fn set_category(
    conn: &mut AnyConnection,
    product: &str,
    category: &str,
    now_us: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO product_categories (product_id, category_id, updated_us) VALUES ($1, $2, $3) \
         ON CONFLICT (product_id) DO UPDATE SET category_id = excluded.category_id, updated_us = excluded.updated_us",
    )
    .bind(product)
    .bind(category)
    .bind(now_us)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Forgets a deleted product.
pub async fn forget_product(conn: &mut AnyConnection, product: &str) -> Result<()> {
    sqlx::query("DELETE FROM product_categories WHERE product_id = $1")
        .bind(product)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
