//! The notification service's errors, turned into gRPC statuses in one place.

use mesh_runtime::DatabaseError;

/// What can go wrong in a notification RPC.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    /// A request field is missing or malformed; the message names it (e.g. `template.body`).
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The caller may not act on this user.
    #[error("{0}")]
    PermissionDenied(String),
    /// Not possible in the current state (e.g. no address for the channel).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl NotificationError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for NotificationError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(DatabaseError::from(e))
    }
}

impl From<NotificationError> for tonic::Status {
    fn from(e: NotificationError) -> Self {
        match e {
            NotificationError::InvalidArgument { .. } => {
                tonic::Status::invalid_argument(e.to_string())
            }
            NotificationError::PermissionDenied(_) => {
                tonic::Status::permission_denied(e.to_string())
            }
            NotificationError::FailedPrecondition(_) => {
                tonic::Status::failed_precondition(e.to_string())
            }
            NotificationError::Database(d) => d.into(),
        }
    }
}
