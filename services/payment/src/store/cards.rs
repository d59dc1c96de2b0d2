//! Card tokens: what the provider gave for a card, by our token.

use sqlx::AnyConnection;

use super::{Result, now_micros};

/// A stored card token.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CardRow {
    /// The token.
    pub token: String,
    /// The provider's reference of the card.
    pub provider_ref: String,
    /// Brand.
    pub brand: String,
    /// Last 4 digits.
    pub last4: String,
}

/// Stores a card token.
#[allow(clippy::too_many_arguments)]
pub async fn insert_card(
    c: &mut AnyConnection,
    card: &CardRow,
    exp_month: u32,
    exp_year: u32,
) -> Result<()> {
    sqlx::query("INSERT INTO cards (token, provider_ref, brand, last4, exp_month, exp_year, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(&card.token)
        .bind(&card.provider_ref)
        .bind(&card.brand)
        .bind(&card.last4)
        .bind(i64::from(exp_month))
        .bind(i64::from(exp_year))
        .bind(now_micros())
        .execute(c)
        .await?;
    Ok(())
}

/// The card of `token`, if known.
pub async fn card(c: &mut AnyConnection, token: &str) -> Result<Option<CardRow>> {
    sqlx::query_as("SELECT token, provider_ref, brand, last4 FROM cards WHERE token = $1")
        .bind(token)
        .fetch_optional(c)
        .await
}
