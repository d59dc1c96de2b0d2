//! The report service's errors, turned into gRPC statuses in one place: the runtime's common
//! [`ServiceError`] and report's own case, a rebuild superseded by another.

use mesh_runtime::domain::ServiceError;

/// What can go wrong in a report RPC.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Bad input (naming the field), the database, ...
    #[error(transparent)]
    Common(#[from] ServiceError),
    /// Another rebuild took over while this one ran.
    #[error("{0}")]
    Superseded(String),
    /// A row of report's event history does not decode: `DATA_LOSS`.
    #[error("{0}")]
    Corrupt(String),
}

impl ReportError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::invalid(field, reason).into()
    }
}

mesh_runtime::from_database_errors!(ReportError);

impl From<ReportError> for tonic::Status {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Common(c) => c.into(),
            ReportError::Superseded(_) => tonic::Status::aborted(e.to_string()),
            ReportError::Corrupt(_) => tonic::Status::data_loss(e.to_string()),
        }
    }
}
