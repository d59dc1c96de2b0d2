//! The user service's errors, turned into gRPC statuses in one place.

use mesh_runtime::DatabaseError;

/// What can go wrong in a user RPC.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A request field is missing or malformed; the message names it (e.g.
    /// `user.addresses[0].postal_address.region_code`).
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No such profile, or one the caller may not see (another customer's: ids do not leak).
    #[error("user `{0}` not found")]
    NotFound(String),
    /// A profile with this id exists already.
    #[error("user `{0}` already exists")]
    AlreadyExists(String),
    /// The change does not fit the profile (e.g. store ids on a customer).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller's role does not allow this change.
    #[error("{0}")]
    PermissionDenied(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl UserError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for UserError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(DatabaseError::from(e))
    }
}

impl From<UserError> for tonic::Status {
    fn from(e: UserError) -> Self {
        match e {
            UserError::InvalidArgument { .. } => tonic::Status::invalid_argument(e.to_string()),
            UserError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            UserError::AlreadyExists(_) => tonic::Status::already_exists(e.to_string()),
            UserError::FailedPrecondition(_) => tonic::Status::failed_precondition(e.to_string()),
            UserError::PermissionDenied(_) => tonic::Status::permission_denied(e.to_string()),
            UserError::Database(d) => d.into(),
        }
    }
}
