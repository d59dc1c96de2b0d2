//! The shop service's errors, turned into gRPC statuses in one place.

use mesh_runtime::DatabaseError;

/// What can go wrong in a shop RPC.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// A request field is missing or malformed; the message names it (e.g. `machine.slot_count`).
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No such store or machine; the message names it.
    #[error("{0} not found")]
    NotFound(String),
    /// The store or machine id is taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl ShopError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for ShopError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(DatabaseError::from(e))
    }
}

impl From<ShopError> for tonic::Status {
    fn from(e: ShopError) -> Self {
        match e {
            ShopError::InvalidArgument { .. } => tonic::Status::invalid_argument(e.to_string()),
            ShopError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            ShopError::AlreadyExists(_) => tonic::Status::already_exists(e.to_string()),
            ShopError::Database(d) => d.into(),
        }
    }
}
