//! [`DatabaseError`]: what can go wrong with a service's database, and how each failure is
//! reported to a gRPC caller (`UNAVAILABLE` when the database cannot be reached).

use sqlx::migrate::MigrateError;

/// A failure of a service's database.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The database cannot be reached (connection refused, pool timed out, connection lost).
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A uniqueness constraint refused the write (e.g. two writers raced on one aggregate).
    #[error("conflicting write: {0}")]
    Conflict(#[source] sqlx::Error),
    /// Any other database error (a bug in a query, a constraint violation, ...).
    #[error("database error: {0}")]
    Query(#[source] sqlx::Error),
    /// A statement whose writes must change an exact number of rows
    /// ([`crate::sql_write::Write::required`]) changed another: it wrote nothing (joined to an
    /// event), or the caller's transaction must be rolled back (run on its own).
    #[error("a write changed another number of rows than its statement requires: {0}")]
    Unmet(String),
    /// Applying the migrations failed.
    #[error("applying migrations: {0}")]
    Migrate(#[from] MigrateError),
    /// The migrations a service declares are invalid (e.g. they reuse the runtime's versions).
    #[error("invalid migrations: {0}")]
    InvalidMigrations(String),
    /// The data directory of the SQLite files could not be created.
    #[error("creating the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The text a joined statement casts to an integer, failing, when a required write changed
/// another number of rows ([`crate::sql_write::Write::required`]); Postgres names it in its
/// error (`invalid input syntax for type integer: "..."`), by which the error is told apart.
pub(crate) const UNMET_MARKER: &str =
    "mesh: a write changed another number of rows than its statement requires; nothing was written";

impl DatabaseError {
    /// Whether the failure is transient (the database could not be reached).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<sqlx::Error> for DatabaseError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::Io(_)
            | E::Tls(_)
            | E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed
            | E::Protocol(_) => Self::Unavailable(e),
            E::Database(db) => {
                let code = db.code().unwrap_or_default();
                if db.is_unique_violation() {
                    Self::Conflict(e)
                } else if code == "22P02" && db.message().contains(UNMET_MARKER) {
                    Self::Unmet(db.message().to_string())
                } else if code.starts_with("08")
                    || code.starts_with("57P")
                    || code == "53300"
                    || code == "5"
                    || code == "6"
                {
                    // Postgres connection exceptions, admin shutdown, too many connections;
                    // SQLite BUSY / LOCKED.
                    Self::Unavailable(e)
                } else {
                    Self::Query(e)
                }
            }
            _ => Self::Query(e),
        }
    }
}

impl From<DatabaseError> for tonic::Status {
    fn from(e: DatabaseError) -> Self {
        match &e {
            DatabaseError::Unavailable(_) => tonic::Status::unavailable(format!(
                "the service's database is unavailable, retry later ({e})"
            )),
            DatabaseError::Conflict(_) | DatabaseError::Unmet(_) => tonic::Status::aborted(
                format!("a concurrent change conflicted with this one, retry ({e})"),
            ),
            _ => {
                tracing::error!(error = %e, "database error");
                tonic::Status::internal("internal database error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unavailable() {
        let status = tonic::Status::from(DatabaseError::from(sqlx::Error::PoolTimedOut));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("database is unavailable"));
        let status = tonic::Status::from(DatabaseError::from(sqlx::Error::RowNotFound));
        assert_eq!(status.code(), tonic::Code::Internal);
    }
}
