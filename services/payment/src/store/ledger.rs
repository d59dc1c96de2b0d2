//! The ledger: one transaction per charge and refund outcome, listed newest first.

use mesh_contracts::payment::v1::{Transaction, TransactionKind, TransactionStatus};
use mesh_runtime::sql_write::Write;
use sqlx::AnyConnection;

use super::{PaymentRow, Result, money, ts, tx_status_name, tx_status_of};

/// Appends a ledger entry.
#[allow(clippy::too_many_arguments)]
pub async fn append_transaction(
    c: &mut AnyConnection,
    id: &str,
    p: &PaymentRow,
    kind: TransactionKind,
    amount_minor: i64,
    status: TransactionStatus,
    reason: &str,
    reference: &str,
    now: i64,
) -> Result<()> {
    transaction_write(id, p, kind, amount_minor, status, reason, reference, now)
        .execute(c)
        .await?;
    Ok(())
}

/// The write that appends a ledger entry, [`Write::gated`] (written as `INSERT ... SELECT ...
/// WHERE 1 = 1`): joined after a payment's finish, it runs only if the finish changed the row.
#[allow(clippy::too_many_arguments)]
pub fn transaction_write(
    id: &str,
    p: &PaymentRow,
    kind: TransactionKind,
    amount_minor: i64,
    status: TransactionStatus,
    reason: &str,
    reference: &str,
    now: i64,
) -> Write {
    Write::new(
        "INSERT INTO transactions (id, payment_id, order_id, customer_id, kind, currency, amount_minor, status, reason, provider_reference, created_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 WHERE 1 = 1",
    )
    .text(id)
    .text(&p.id)
    .text(&p.order_id)
    .text(&p.customer_id)
    .text(match kind {
        TransactionKind::Refund => "REFUND",
        _ => "CHARGE",
    })
    .text(&p.currency)
    .int(amount_minor)
    .text(tx_status_name(status))
    .text(reason)
    .text(reference)
    .int(now)
    .gated()
}

/// Filters and position of a ledger listing.
#[derive(Debug, Default, Clone)]
pub struct TransactionFilter {
    /// Only this payment.
    pub payment_id: Option<String>,
    /// Only this order.
    pub order_id: Option<String>,
    /// Only this customer.
    pub customer_id: Option<String>,
    /// Created at or after (µs).
    pub start: Option<i64>,
    /// Created before (µs).
    pub end: Option<i64>,
    /// Before this (created_at, id), newest first.
    pub before: Option<(i64, String)>,
}

/// Up to `limit` ledger entries, newest first.
pub async fn transactions(
    c: &mut AnyConnection,
    f: &TransactionFilter,
    limit: i64,
) -> Result<Vec<(i64, Transaction)>> {
    let mut sql = "SELECT id, payment_id, order_id, kind, currency, amount_minor, status, reason, provider_reference, created_at FROM transactions WHERE 1 = 1".to_string();
    let mut n = 0;
    let mut p = || {
        n += 1;
        format!("${n}")
    };
    for (set, col) in [
        (f.payment_id.is_some(), "payment_id"),
        (f.order_id.is_some(), "order_id"),
        (f.customer_id.is_some(), "customer_id"),
    ] {
        if set {
            sql += &format!(" AND {col} = {}", p());
        }
    }
    if f.start.is_some() {
        sql += &format!(" AND created_at >= {}", p());
    }
    if f.end.is_some() {
        sql += &format!(" AND created_at < {}", p());
    }
    if f.before.is_some() {
        let (a, b) = (p(), p());
        sql += &format!(" AND (created_at < {a} OR (created_at = {a} AND id < {b}))");
    }
    sql += &format!(" ORDER BY created_at DESC, id DESC LIMIT {}", p());
    let mut q = sqlx::query_as::<_, StoredTransaction>(sqlx::AssertSqlSafe(sql));
    for v in [&f.payment_id, &f.order_id, &f.customer_id]
        .into_iter()
        .flatten()
    {
        q = q.bind(v.clone());
    }
    for v in [f.start, f.end].into_iter().flatten() {
        q = q.bind(v);
    }
    if let Some((a, b)) = &f.before {
        q = q.bind(*a).bind(b.clone());
    }
    let rows = q.bind(limit).fetch_all(c).await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.created_at, Transaction::from(r)))
        .collect())
}

/// A `transactions` row as listed.
#[derive(sqlx::FromRow)]
struct StoredTransaction {
    id: String,
    payment_id: String,
    order_id: String,
    kind: String,
    currency: String,
    amount_minor: i64,
    status: String,
    reason: String,
    provider_reference: String,
    created_at: i64,
}

impl From<StoredTransaction> for Transaction {
    fn from(r: StoredTransaction) -> Self {
        Transaction {
            id: r.id,
            payment_id: r.payment_id,
            order_id: r.order_id,
            kind: if r.kind == "REFUND" {
                TransactionKind::Refund
            } else {
                TransactionKind::Charge
            } as i32,
            amount: Some(money(&r.currency, r.amount_minor)),
            status: tx_status_of(&r.status) as i32,
            reason: r.reason,
            provider_reference: r.provider_reference,
            create_time: Some(ts(r.created_at)),
        }
    }
}
