//! A service's write handed to the outbox to be joined to an event's row
//! ([`crate::outbox::Tx::write_and_emit`], [`crate::Database::write_and_emit`]): its SQL with its
//! parameters numbered from `$1`, and the values to bind. On Postgres the outbox runs it as a
//! data-modifying `WITH` of the outbox insert (one statement for both); elsewhere on its own,
//! just before the insert, in the same transaction.
//!
//! The first write of a list is its gate: the event is emitted only if it changed a row. A
//! later write runs either way unless it is [`Write::gated`]: then it runs only if the gate
//! changed a row, which on Postgres the outbox adds to its `WHERE` clause.
//!
//! A write may read common table expressions of its own ([`Write::with`]: e.g. an `UPDATE` and
//! an `INSERT` of what it returned, read by a final `SELECT`); joined to another statement they
//! are hoisted into its `WITH` list, so their names must not be `w<n>`, `m`, `o` or `handled`.
//!
//! The first write may also return columns ([`Write::returning`], Postgres only): a gated write
//! after it can then read them from `w0` (`INSERT ... SELECT ... FROM w0`), e.g. a number the
//! first write assigned, which a separate read in the same statement would see stale.
//!
//! A write may also be required to change an exact number of rows ([`Write::required`]): joined
//! to an event on Postgres, the statement then fails as a whole, having written nothing, when it
//! changed another number ([`crate::storage::DatabaseError::Unmet`]). That makes a set of
//! conditional updates all-or-none in one statement (every line's stock held, or none), where
//! otherwise a transaction would check the count and roll back.
//!
//! The writes of one list must not change the same row: on Postgres they are one statement,
//! whose parts all see the snapshot it started with, and a row changed by two of them keeps one
//! of the changes only.

use sqlx::any::AnyArguments;
use sqlx::any::AnyRow;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection};

/// A value bound to a [`Write`]'s parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// A `TEXT` value.
    Text(String),
    /// A `BIGINT` value.
    Int(i64),
    /// A `TEXT` value or `NULL`.
    OptText(Option<String>),
}

/// One statement without a trailing `;`, whose parameters are `$1` to `$n` for its `n` values
/// in order. Joined to an event it is an `INSERT`, `UPDATE` or `DELETE` without `RETURNING`;
/// for [`crate::outbox::Tx::fetch_recording`] it is one with `RETURNING`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    ctes: String,
    sql: String,
    params: Vec<Param>,
    gated: bool,
    returning: Option<String>,
    required: Option<usize>,
}

impl Write {
    /// A write of `sql` (parameters `$1`, `$2`, ... bound in the order of the calls that add
    /// them).
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            ctes: String::new(),
            sql: sql.into(),
            params: Vec::new(),
            gated: false,
            returning: None,
            required: None,
        }
    }

    /// The statement `WITH ctes sql`: `ctes` is its list of `name AS (...)` (without the
    /// `WITH`), `sql` the statement that reads them; one numbering of parameters over both.
    pub fn with(ctes: impl Into<String>, sql: impl Into<String>) -> Self {
        Self {
            ctes: ctes.into(),
            ..Self::new(sql)
        }
    }

    /// Runs this write (not the first of its list) only if the first write changed a row. Its
    /// SQL must end with its `WHERE` clause (an `INSERT` as `INSERT ... SELECT ... WHERE 1 = 1`),
    /// which on Postgres gets `AND EXISTS (SELECT 1 FROM w0)` appended.
    pub fn gated(mut self) -> Self {
        self.gated = true;
        self
    }

    /// Whether it runs only if the first write of its list changed a row.
    pub(crate) fn is_gated(&self) -> bool {
        self.gated
    }

    /// Joined to an event on Postgres, returns `columns` (a `RETURNING` list) instead of
    /// nothing, so that the gated writes after it (it being the first of its list) can read
    /// them from `w0`. A write that reads `w0` runs only in that joined statement, so a list
    /// with one is for Postgres only.
    pub fn returning(mut self, columns: impl Into<String>) -> Self {
        self.returning = Some(columns.into());
        self
    }

    /// Requires it to change exactly `rows` rows: joined to an event on Postgres, the whole
    /// statement fails with [`crate::storage::DatabaseError::Unmet`] and writes nothing when it
    /// changed another number (its condition failed for some row, or it was gated off); run
    /// on its own, the call fails the same way after the write, in the caller's transaction,
    /// which must then be rolled back. A one-statement step's statement
    /// ([`crate::consumer::Step::OneStatement`]) failing so runs again in a transaction.
    pub fn required(mut self, rows: usize) -> Self {
        self.required = Some(rows);
        self
    }

    /// The number of rows it must change ([`Write::required`]).
    pub(crate) fn required_rows(&self) -> Option<usize> {
        self.required
    }

    /// What it returns joined to an event ([`Write::returning`]; `1` unless set).
    pub(crate) fn returned(&self) -> &str {
        self.returning.as_deref().unwrap_or("1")
    }

    /// Binds the next parameter to a text.
    pub fn text(mut self, value: impl Into<String>) -> Self {
        self.params.push(Param::Text(value.into()));
        self
    }

    /// Binds the next parameter to an integer.
    pub fn int(mut self, value: i64) -> Self {
        self.params.push(Param::Int(value));
        self
    }

    /// Binds the next parameter to a text or `NULL`.
    pub fn opt_text(mut self, value: Option<String>) -> Self {
        self.params.push(Param::OptText(value));
        self
    }

    /// How many parameters it binds.
    pub(crate) fn param_count(&self) -> usize {
        self.params.len()
    }

    /// Its SQL with every parameter `$k` renumbered `$(k + by)`, to follow `by` parameters of
    /// the statement it joins.
    pub(crate) fn shifted(&self, by: usize) -> String {
        shift_params(&self.sql, by)
    }

    /// Its common table expressions ([`Write::with`]) renumbered as [`Write::shifted`] does,
    /// each followed by `, ` to go before the joining statement's own; empty without them.
    pub(crate) fn shifted_ctes(&self, by: usize) -> String {
        if self.ctes.is_empty() {
            String::new()
        } else {
            format!("{}, ", shift_params(&self.ctes, by))
        }
    }

    /// Its SQL as run on its own (parameters from `$1`), its `WITH` list included.
    fn whole(&self) -> String {
        if self.ctes.is_empty() {
            self.sql.clone()
        } else {
            format!("WITH {} {}", self.ctes, self.sql)
        }
    }

    /// Runs it on its own on `conn` and returns the rows it returned (a statement with
    /// `RETURNING`, or a query).
    pub async fn fetch_all(&self, conn: &mut AnyConnection) -> Result<Vec<AnyRow>, sqlx::Error> {
        let query = self.bind_to(sqlx::query(sqlx::AssertSqlSafe(self.whole())));
        query.fetch_all(conn).await
    }

    /// Runs it on its own on `conn` (a transaction's, or a pooled connection); returns the
    /// number of rows it changed.
    pub async fn execute(&self, conn: &mut AnyConnection) -> Result<u64, sqlx::Error> {
        let query = self.bind_to(sqlx::query(sqlx::AssertSqlSafe(self.whole())));
        Ok(query.execute(conn).await?.rows_affected())
    }

    /// Binds its values, in order, to `query`.
    pub(crate) fn bind_to<'q>(
        &self,
        mut query: Query<'q, Any, AnyArguments>,
    ) -> Query<'q, Any, AnyArguments> {
        for p in &self.params {
            query = match p {
                Param::Text(v) => query.bind(v.clone()),
                Param::Int(v) => query.bind(*v),
                Param::OptText(v) => query.bind(v.clone()),
            };
        }
        query
    }
}

/// `sql` with every `$k` renumbered `$(k + by)`. The writes are the services' own statements,
/// which hold no `$` in a literal.
fn shift_params(sql: &str, by: usize) -> String {
    if by == 0 {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
            digits.push(d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(k) => out.push_str(&(k + by).to_string()),
            Err(_) => out.push_str(&digits),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_after_the_ones_before() {
        let w = Write::new("UPDATE t SET a = $1, b = $12 WHERE id = $2 AND c = '$'")
            .int(1)
            .text("x");
        assert_eq!(
            w.shifted(3),
            "UPDATE t SET a = $4, b = $15 WHERE id = $5 AND c = '$'"
        );
        assert_eq!(w.shifted(0), w.whole());
        assert_eq!(w.param_count(), 2);
    }

    #[test]
    fn common_table_expressions_run_before_the_statement_and_are_renumbered_with_it() {
        let w = Write::with(
            "u AS (UPDATE t SET a = $1 RETURNING id)",
            "SELECT id FROM u WHERE id <> $2",
        )
        .int(1)
        .text("x");
        assert_eq!(
            w.whole(),
            "WITH u AS (UPDATE t SET a = $1 RETURNING id) SELECT id FROM u WHERE id <> $2"
        );
        assert_eq!(
            w.shifted_ctes(2),
            "u AS (UPDATE t SET a = $3 RETURNING id), "
        );
        assert_eq!(w.shifted(2), "SELECT id FROM u WHERE id <> $4");
        assert_eq!(Write::new("SELECT 1").shifted_ctes(2), "");
    }
}
