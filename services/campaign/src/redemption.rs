//! Redemptions, counted exactly once per campaign and order: a PriceCart with `reserve` holds
//! one for every applied campaign (HELD, with an expiry), `order.created` makes the holds of the
//! campaigns the order kept RESERVED, `order.confirmed` CONSUMES them and `order.cancelled`
//! RELEASES them; a hold no `order.created` followed is released when it expires.
//!
//! The counters live on the campaign row (`redemption_count`, `budget_used_minor`) and in
//! `customer_redemptions`; a hold takes them with conditional updates (`... WHERE
//! redemption_count < max_redemptions`), so concurrent holds serialize on the campaign's row
//! and a limit of N lets exactly N through. Every transition is conditional on the status it
//! leaves, so a redelivered event or a repeated call changes nothing.

use mesh_contracts::campaign::v1::RejectionReason;
use sqlx::AnyConnection;

use crate::error::CampaignError;
use crate::pricing::Applied;

type Result<T> = std::result::Result<T, CampaignError>;

/// Held by PriceCart, waiting for `order.created`.
pub const HELD: &str = "HELD";
/// The order exists.
pub const RESERVED: &str = "RESERVED";
/// The order is confirmed.
pub const CONSUMED: &str = "CONSUMED";
/// Given back (cancelled order, expired hold).
pub const RELEASED: &str = "RELEASED";

/// Takes one redemption of the campaign's counters (total, budget, this customer).
async fn take(
    conn: &mut AnyConnection,
    campaign_id: &str,
    customer_id: &str,
    discount: i64,
    enforce: bool,
) -> Result<Option<(RejectionReason, String)>> {
    let limit = if enforce {
        " AND (max_redemptions = 0 OR redemption_count < max_redemptions) \
          AND (budget_minor = 0 OR budget_used_minor + $2 <= budget_minor)"
    } else {
        " AND $2 = $2"
    };
    let done = sqlx::query(dyn_sql!(
        "UPDATE campaigns SET redemption_count = redemption_count + 1, \
         budget_used_minor = budget_used_minor + CASE WHEN budget_minor > 0 THEN $2 ELSE 0 END \
         WHERE id = $1{limit}"
    ))
    .bind(campaign_id)
    .bind(discount)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if done == 0 {
        let (max, count, budget, used): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT max_redemptions, redemption_count, budget_minor, budget_used_minor FROM campaigns WHERE id = $1",
        )
        .bind(campaign_id)
        .fetch_one(&mut *conn)
        .await?;
        return Ok(Some(if max > 0 && count >= max {
            (
                RejectionReason::LimitReached,
                format!("all {max} redemptions are used"),
            )
        } else {
            (
                RejectionReason::BudgetExhausted,
                format!(
                    "{} of its budget of {budget} is left, the discount would be {discount}",
                    (budget - used).max(0)
                ),
            )
        }));
    }
    if customer_id.is_empty() {
        return Ok(None);
    }
    let per_customer = if enforce {
        "WHERE (SELECT max_per_customer FROM campaigns WHERE id = $1) = 0 \
         OR customer_redemptions.used < (SELECT max_per_customer FROM campaigns WHERE id = $1)"
    } else {
        ""
    };
    let done = sqlx::query(dyn_sql!(
        "INSERT INTO customer_redemptions (campaign_id, customer_id, used) VALUES ($1, $2, 1) \
         ON CONFLICT (campaign_id, customer_id) DO UPDATE SET used = customer_redemptions.used + 1 {per_customer}"
    ))
    .bind(campaign_id)
    .bind(customer_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if done == 0 {
        return Ok(Some((
            RejectionReason::CustomerLimitReached,
            "this customer used the campaign as often as it allows".into(),
        )));
    }
    Ok(None)
}

/// Gives one redemption back to the campaign's counters.
async fn give_back(
    conn: &mut AnyConnection,
    campaign_id: &str,
    customer_id: &str,
    discount: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE campaigns SET redemption_count = redemption_count - 1, \
         budget_used_minor = budget_used_minor - CASE WHEN budget_minor > 0 THEN $2 ELSE 0 END \
         WHERE id = $1 AND redemption_count > 0",
    )
    .bind(campaign_id)
    .bind(discount)
    .execute(&mut *conn)
    .await?;
    if !customer_id.is_empty() {
        sqlx::query(
            "UPDATE customer_redemptions SET used = used - 1 WHERE campaign_id = $1 AND customer_id = $2 AND used > 0",
        )
        .bind(campaign_id)
        .bind(customer_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Holds a redemption of `applied` for `order_id` until `expires_us`. Already held (a repeated
/// call for the order): nothing more. `Some(reason)` when the limit, budget or the customer's
/// limit is used up; the caller then rolls its transaction back (nothing of this hold stays).
pub async fn hold(
    conn: &mut AnyConnection,
    applied: &Applied,
    order_id: &str,
    customer_id: &str,
    now_us: i64,
    expires_us: i64,
) -> Result<Option<(RejectionReason, String)>> {
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM redemptions WHERE campaign_id = $1 AND order_id = $2",
    )
    .bind(&applied.campaign_id)
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?;
    if status.as_deref().is_some_and(|s| s != RELEASED) {
        return Ok(None);
    }
    if let Some(refused) = take(
        conn,
        &applied.campaign_id,
        customer_id,
        applied.discount,
        true,
    )
    .await?
    {
        return Ok(Some(refused));
    }
    sqlx::query(
        "INSERT INTO redemptions (campaign_id, order_id, customer_id, status, discount_minor, expires_us, created_us, updated_us) \
         VALUES ($1, $2, $3, 'HELD', $4, $5, $6, $6) \
         ON CONFLICT (campaign_id, order_id) DO UPDATE SET status = 'HELD', customer_id = excluded.customer_id, \
         discount_minor = excluded.discount_minor, expires_us = excluded.expires_us, updated_us = excluded.updated_us",
    )
    .bind(&applied.campaign_id)
    .bind(order_id)
    .bind(customer_id)
    .bind(applied.discount)
    .bind(expires_us)
    .bind(now_us)
    .execute(&mut *conn)
    .await?;
    Ok(None)
}

/// Releases the redemption of (`campaign_id`, `order_id`) if it is in one of `from`; whether it
/// was.
async fn release(
    conn: &mut AnyConnection,
    campaign_id: &str,
    order_id: &str,
    from: &str,
    now_us: i64,
) -> Result<bool> {
    let row: Option<(String, i64)> = sqlx::query_as(dyn_sql!(
        "UPDATE redemptions SET status = 'RELEASED', expires_us = 0, updated_us = $3 \
         WHERE campaign_id = $1 AND order_id = $2 AND status IN ({from}) RETURNING customer_id, discount_minor"
    ))
    .bind(campaign_id)
    .bind(order_id)
    .bind(now_us)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((customer, discount)) = row else {
        return Ok(false);
    };
    give_back(conn, campaign_id, &customer, discount).await?;
    Ok(true)
}

async fn of_order(conn: &mut AnyConnection, order_id: &str) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as::<_, (String, String)>(
        "SELECT campaign_id, status FROM redemptions WHERE order_id = $1 ORDER BY campaign_id",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?)
}

/// What `order.created` does to one of the order's redemptions (by campaign id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreatedAction {
    /// A hold of a campaign the order kept becomes RESERVED.
    Reserve(String),
    /// A hold of a campaign the order did not keep is released and counted back.
    Release(String),
    /// A hold of a kept campaign expired before the event arrived: RESERVED again and counted
    /// again (the order has its discount).
    Retake(String),
}

impl CreatedAction {
    /// Whether it may run again after it ran, or after a crash cut it short, without changing
    /// what it did (one conditional update, no counter): only [`CreatedAction::Reserve`].
    pub fn repeatable(&self) -> bool {
        matches!(self, Self::Reserve(_))
    }
}

/// What `order.created` has to do to `order_id`'s redemptions, the order having kept the
/// campaigns `kept` (one read; nothing for an order without redemptions, or when the event was
/// handled before).
pub async fn order_created_actions(
    conn: &mut AnyConnection,
    order_id: &str,
    kept: &[String],
) -> Result<Vec<CreatedAction>> {
    Ok(of_order(conn, order_id)
        .await?
        .into_iter()
        .filter_map(|(campaign, status)| {
            let keep = kept.contains(&campaign);
            match status.as_str() {
                HELD if keep => Some(CreatedAction::Reserve(campaign)),
                HELD => Some(CreatedAction::Release(campaign)),
                RELEASED if keep => Some(CreatedAction::Retake(campaign)),
                _ => None,
            }
        })
        .collect())
}

/// Applies `order.created`'s `actions` (from [`order_created_actions`]). `false` when a hold
/// to reserve was no longer HELD (its expiry released it since the read): the event is to be
/// handled again, and the next read finds it RELEASED and retakes it.
pub async fn order_created(
    conn: &mut AnyConnection,
    order_id: &str,
    actions: &[CreatedAction],
    now_us: i64,
) -> Result<bool> {
    for action in actions {
        match action {
            CreatedAction::Reserve(campaign) => {
                let done = sqlx::query(
                    "UPDATE redemptions SET status = 'RESERVED', expires_us = 0, updated_us = $3 \
                     WHERE campaign_id = $1 AND order_id = $2 AND status = 'HELD'",
                )
                .bind(campaign)
                .bind(order_id)
                .bind(now_us)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if done == 0 {
                    return Ok(false);
                }
            }
            CreatedAction::Release(campaign) => {
                release(conn, campaign, order_id, "'HELD'", now_us).await?;
            }
            CreatedAction::Retake(campaign) => {
                let (customer, discount): (String, i64) = sqlx::query_as(
                    "UPDATE redemptions SET status = 'RESERVED', updated_us = $3 \
                     WHERE campaign_id = $1 AND order_id = $2 AND status = 'RELEASED' RETURNING customer_id, discount_minor",
                )
                .bind(campaign)
                .bind(order_id)
                .bind(now_us)
                .fetch_one(&mut *conn)
                .await?;
                tracing::warn!(order = order_id, campaign = %campaign, "a hold expired before order.created arrived; counted again, past the limit if it is full");
                take(conn, campaign, &customer, discount, false).await?;
            }
        }
    }
    Ok(true)
}

/// `order.confirmed`: the order's redemptions are CONSUMED.
pub async fn order_confirmed(conn: &mut AnyConnection, order_id: &str, now_us: i64) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE redemptions SET status = 'CONSUMED', expires_us = 0, updated_us = $2 \
         WHERE order_id = $1 AND status IN ('HELD', 'RESERVED')",
    )
    .bind(order_id)
    .bind(now_us)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// The campaigns of `order_id`'s redemptions that `order.cancelled` releases (one read; none
/// for an order without redemptions, or when the event was handled before).
pub async fn to_release(conn: &mut AnyConnection, order_id: &str) -> Result<Vec<String>> {
    Ok(of_order(conn, order_id)
        .await?
        .into_iter()
        .filter(|(_, status)| status != RELEASED)
        .map(|(campaign, _)| campaign)
        .collect())
}

/// `order.cancelled`: the redemptions of `campaigns` (from [`to_release`]) are RELEASED and
/// counted back.
pub async fn order_cancelled(
    conn: &mut AnyConnection,
    order_id: &str,
    campaigns: &[String],
    now_us: i64,
) -> Result<()> {
    for campaign in campaigns {
        release(
            conn,
            campaign,
            order_id,
            "'HELD', 'RESERVED', 'CONSUMED'",
            now_us,
        )
        .await?;
    }
    Ok(())
}

/// A PlaceOrder that held redemptions for `order_id` failed before the order was written: its
/// HELD redemptions are RELEASED and counted back now, not at their expiry. Returns how many.
pub async fn release_holds(conn: &mut AnyConnection, order_id: &str, now_us: i64) -> Result<u32> {
    let mut released = 0;
    for (campaign, status) in of_order(conn, order_id).await? {
        if status == HELD && release(conn, &campaign, order_id, "'HELD'", now_us).await? {
            released += 1;
        }
    }
    Ok(released)
}

/// Holds past their expiry (at most `limit`).
pub async fn expired(
    conn: &mut AnyConnection,
    now_us: i64,
    limit: i64,
) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as::<_, (String, String)>(
        "SELECT campaign_id, order_id FROM redemptions WHERE status = 'HELD' AND expires_us <= $1 \
         ORDER BY expires_us LIMIT $2",
    )
    .bind(now_us)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// Releases one expired hold (if it is still HELD); whether it was.
pub async fn expire(
    conn: &mut AnyConnection,
    campaign_id: &str,
    order_id: &str,
    now_us: i64,
) -> Result<bool> {
    release(conn, campaign_id, order_id, "'HELD'", now_us).await
}

/// The status of a redemption (tests, audits).
pub async fn status(
    conn: &mut AnyConnection,
    campaign_id: &str,
    order_id: &str,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT status FROM redemptions WHERE campaign_id = $1 AND order_id = $2",
    )
    .bind(campaign_id)
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?)
}

/// The redemptions `order_id` holds (HELD, RESERVED or CONSUMED) with their discounts: a
/// repeated PriceCart for the order must not count them against it.
pub async fn held_by_order(conn: &mut AnyConnection, order_id: &str) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as::<_, (String, i64)>(
        "SELECT campaign_id, discount_minor FROM redemptions WHERE order_id = $1 AND status <> 'RELEASED'",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?)
}
