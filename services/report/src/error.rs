//! The report service's errors, turned into gRPC statuses in one place.

use mesh_runtime::DatabaseError;

/// What can go wrong in a report RPC.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A request field is missing or malformed; the message names it (e.g. `start_date`).
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another rebuild took over while this one ran.
    #[error("{0}")]
    Aborted(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl ReportError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for ReportError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(DatabaseError::from(e))
    }
}

impl From<ReportError> for tonic::Status {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::InvalidArgument { .. } => tonic::Status::invalid_argument(e.to_string()),
            ReportError::Aborted(_) => tonic::Status::aborted(e.to_string()),
            ReportError::Database(d) => d.into(),
        }
    }
}
