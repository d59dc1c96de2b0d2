//! The inventory service's errors, turned into gRPC statuses in one place.

use mesh_runtime::DatabaseError;

/// What can go wrong in an inventory RPC.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A request field is missing or malformed; the message names it (e.g. `lines[1].quantity`).
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Not enough stock, or a reservation in the wrong state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No such reservation.
    #[error("reservation `{0}` not found")]
    NotFound(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl InventoryError {
    /// A missing or malformed `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for InventoryError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(DatabaseError::from(e))
    }
}

impl From<InventoryError> for tonic::Status {
    fn from(e: InventoryError) -> Self {
        match e {
            InventoryError::InvalidArgument { .. } => {
                tonic::Status::invalid_argument(e.to_string())
            }
            InventoryError::FailedPrecondition(_) => {
                tonic::Status::failed_precondition(e.to_string())
            }
            InventoryError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            InventoryError::Database(d) => d.into(),
        }
    }
}
